//! A Tub's server side, fed what a hostile client sends over an in-memory stream
//! (`tokio::io::duplex`).
//!
//! A fuzz input alone cannot get past TLS (the server would need a handshake signed with a
//! real key), so the target has two layers. The first byte `m` of the input chooses the mode,
//! `(m & 0x7f) % 3`, and the rest `r` is what the client sends:
//!
//! - `0` **raw**: `r` is written to the socket in three chunks: the prelude, then TLS records.
//!   Covers the prelude decoder, its refusals, the TLS record layer and the handshake bounds.
//! - `1` **stream**: a real client handshake (fixed throwaway identities, the keys of
//!   `seeds/identity_pem/`), then `r` is written *inside* TLS in three chunks: frame headers
//!   and payloads as the server's `FrameReader` sees them.
//! - `2` **frames**: a real handshake, then `r` is split at every [`SEP`] (four `0xf5` bytes)
//!   and each piece is sent as one frame: the payloads the message decoder and dispatch see.
//!
//! After the handshake the server exports a `fuzz.calc.v1` object under the swissnum `obj`:
//! a call of `get_reference("obj")` on the root (object 0) exports it as object 1. Its methods
//! take and return references, call back into the client (`bump`, answered by the input's own
//! `Answer` frames, or not), hold references (`keep`/`forget`), sleep, never return until
//! stopped (`hang`), and produce answers over the client's 4 KiB frame limit (`repeat`). The
//! Tub's limits are small, so that the queue, export and import bounds are reachable in a few
//! kilobytes, and its `max_call_duration` is short, so that calls stopped by a caller's
//! deadline (`TimedCall`), by a `Cancel` (running or queued) and by the cap itself all happen
//! within a run. The handshake negotiates protocol version 3, so those messages are read, and
//! so are promise pipelining's (docs/protocol.md §8): promise-able calls (ids with
//! `PROMISE_MARK`), calls sent to promise targets, and `Finish`. For those the object returns
//! references after a sleep (`later`, `sub`: calls pipelined on them are held meanwhile), two
//! at once (`two`: targets of index 1, and beyond), fails (`fail`) or never answers
//! (`hang_ref`: its promise breaks at `max_call_duration`); the Tub keeps at most 8 answers and
//! holds at most 4 calls, so both bounds are met within a few kilobytes.
//!
//! If `m & 0x80`, the client shuts its write side after `r` (TLS close_notify); otherwise the
//! stream stays open and the server's timeouts run. If `m & 0x7f >= 3` (modes 1 and 2; the
//! mode is still `(m & 0x7f) % 3`), a client that did not close then stays idle for 120 s
//! (virtual) before the server is shut down.
//!
//! Everything runs on a current-thread runtime with paused time: timers fire as soon as
//! nothing else can run, so timeouts cost nothing and every await below is bounded in virtual
//! time; a hang is reported as a panic. Invariants, beyond not panicking:
//! - `Tub::accept` returns within the handshake's timeouts, whatever the bytes;
//! - a real client's handshake succeeds (modes 1 and 2);
//! - after the input the server has 0 or 1 connection, exports no more than its limit, and
//!   keeps no more answers and holds no more pipelined calls than its limits
//!   (`Tub::load()`);
//! - an idle client's connection (`m & 0x7f >= 3`) holds no pipelined call once 120 s have
//!   passed: every promised call ends within `max_call_duration` once it runs, and the calls
//!   queued or held before it are bounded, so no call waits for a promise for ever;
//! - a client that closed its side (`m & 0x80`, modes 1 and 2) is dropped within bounded time
//!   (every method of the served object is bounded, by itself or by `max_call_duration`, so
//!   no backpressure can last);
//! - `Tub::shutdown` completes in bounded time, leaves no connection, no kept answer and no
//!   held call (`Tub::load()`), and the server closes its end of the stream within bounded
//!   time.
//!
//! Seeds (`seeds/tub_server/`) are real traffic: a real client Tub talks to the server through
//! a TLS-terminating proxy that records what the client sends (the scenarios are those of
//! `seeds::Scenario`; `pipeline`'s first call went out behind the hello). Regenerate them with
//! (the fuzzer exits once they are written):
//!
//! ```sh
//! FOLIO_FUZZ_WRITE_SEEDS=$PWD/fuzz/seeds/tub_server RUSTC_BOOTSTRAP=1 \
//!   cargo fuzz run --fuzz-dir fuzz tub_server -- -runs=0
//! ```
#![no_main]

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use folio_fuzz::{
    bounded, identity, runtime, settle, short_handshake, split_frames, CLIENT_PEM, SEP, SERVER_PEM,
};
use folio_rpc::connector::ConnectFuture;
use folio_rpc::{
    interface, BoxStream, Connector, Established, HandshakeConfig, Handshaker, Hint, NoConnector,
    Tub, TubConfig,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;

/// The swissnum the served object is registered under.
const OBJECT_NAME: &str = "obj";
const DUPLEX: usize = 64 * 1024;
const MAX_EXPORTS: usize = 16;
/// How long the served object waits for the client to answer a callback.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the server lets a call run: a `hang` ends within it.
const MAX_CALL_DURATION: Duration = Duration::from_secs(3);
/// Answers kept for calls pipelined on them (protocol version 3), and calls held waiting for
/// one: small, so that both bounds are reached in a few kilobytes.
const MAX_KEPT_ANSWERS: usize = 8;
const MAX_HELD_CALLS: usize = 4;
/// How long an idle client (`m & 0x7f >= 3`) waits before the server must hold no call: every
/// call ends within `MAX_CALL_DURATION` once it runs, at most `max_inbound_calls` run at
/// once and `max_queued_calls + MAX_HELD_CALLS` wait, so this is far beyond the longest a
/// held call can wait for its promise.
const IDLE: Duration = Duration::from_secs(120);

#[interface(name = "fuzz.calc.v1")]
pub trait Calc {
    async fn add(&self, a: u64, b: u64) -> Result<u64, String>;
    /// A new counter object, exported by the answer.
    async fn counter(&self, start: u64) -> Result<CounterRef, String>;
    /// The reference back as it came.
    async fn echo(&self, c: CounterRef) -> Result<CounterRef, String>;
    /// Calls `incr` on `c` (the client's object, or a gift): a call from server to client.
    async fn bump(&self, c: CounterRef) -> Result<u64, String>;
    /// Holds `c` until `forget`.
    async fn keep(&self, c: CounterRef) -> Result<u64, String>;
    async fn forget(&self) -> Result<u64, String>;
    /// Sleeps (at most a second).
    async fn slow(&self, ms: u64) -> Result<u64, String>;
    /// `text` `times` times (at most 64 KiB): large answers.
    async fn repeat(&self, text: String, times: u32) -> Result<String, String>;
    #[oneway]
    async fn note(&self, text: String);
    /// Never returns: stopped by the caller's deadline, a `Cancel`, or `MAX_CALL_DURATION`.
    async fn hang(&self) -> Result<u64, String>;
    /// `hang`, one-way: stopped by `MAX_CALL_DURATION`.
    #[oneway]
    async fn hang_oneway(&self);
    /// A new counter (from 0) after sleeping (at most a second): calls pipelined on its
    /// promise are held meanwhile.
    async fn later(&self, ms: u64) -> Result<CounterRef, String>;
    /// Fails after sleeping (at most a second): a broken promise.
    async fn fail(&self, ms: u64) -> Result<CounterRef, String>;
    /// Two new counters (from 0 and 100): references at index 0 and 1.
    async fn two(&self) -> Result<(CounterRef, CounterRef), String>;
    /// A new calc object after sleeping (at most a second): promises on promised references.
    async fn sub(&self, ms: u64) -> Result<CalcRef, String>;
    /// Never returns a counter: the promise breaks at `MAX_CALL_DURATION` (or a deadline or
    /// `Cancel`), with calls held on it.
    async fn hang_ref(&self) -> Result<CounterRef, String>;
}

#[interface(name = "fuzz.counter.v1")]
pub trait Counter {
    async fn incr(&self) -> Result<u64, String>;
}

#[derive(Default)]
struct CalcImpl {
    kept: Mutex<Vec<CounterRef>>,
}

impl Calc for CalcImpl {
    async fn add(&self, a: u64, b: u64) -> Result<u64, String> {
        a.checked_add(b).ok_or_else(|| "overflow".to_string())
    }
    async fn counter(&self, start: u64) -> Result<CounterRef, String> {
        Ok(CounterRef::serve(CounterImpl(Mutex::new(start))))
    }
    async fn echo(&self, c: CounterRef) -> Result<CounterRef, String> {
        Ok(c)
    }
    async fn bump(&self, c: CounterRef) -> Result<u64, String> {
        match tokio::time::timeout(CALLBACK_TIMEOUT, c.incr()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer".into()),
        }
    }
    async fn keep(&self, c: CounterRef) -> Result<u64, String> {
        let mut kept = self.kept.lock().unwrap();
        kept.push(c);
        Ok(kept.len() as u64)
    }
    async fn forget(&self) -> Result<u64, String> {
        let dropped = std::mem::take(&mut *self.kept.lock().unwrap());
        Ok(dropped.len() as u64)
    }
    async fn slow(&self, ms: u64) -> Result<u64, String> {
        let ms = ms.min(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
    async fn repeat(&self, text: String, times: u32) -> Result<String, String> {
        let times = (times as usize).min((64 * 1024) / text.len().max(1));
        Ok(text.repeat(times))
    }
    async fn note(&self, _text: String) {}
    async fn hang(&self) -> Result<u64, String> {
        std::future::pending().await
    }
    async fn hang_oneway(&self) {
        std::future::pending::<()>().await
    }
    async fn later(&self, ms: u64) -> Result<CounterRef, String> {
        tokio::time::sleep(Duration::from_millis(ms.min(1000))).await;
        Ok(CounterRef::serve(CounterImpl(Mutex::new(0))))
    }
    async fn fail(&self, ms: u64) -> Result<CounterRef, String> {
        tokio::time::sleep(Duration::from_millis(ms.min(1000))).await;
        Err("no counter".into())
    }
    async fn two(&self) -> Result<(CounterRef, CounterRef), String> {
        Ok((
            CounterRef::serve(CounterImpl(Mutex::new(0))),
            CounterRef::serve(CounterImpl(Mutex::new(100))),
        ))
    }
    async fn sub(&self, ms: u64) -> Result<CalcRef, String> {
        tokio::time::sleep(Duration::from_millis(ms.min(1000))).await;
        Ok(CalcRef::serve(CalcImpl::default()))
    }
    async fn hang_ref(&self) -> Result<CounterRef, String> {
        std::future::pending().await
    }
}

struct CounterImpl(Mutex<u64>);

impl Counter for CounterImpl {
    async fn incr(&self) -> Result<u64, String> {
        let mut n = self.0.lock().unwrap();
        *n = n.wrapping_add(1);
        Ok(*n)
    }
}

/// The fuzzing client's handshake: the smallest frame limit, so large answers hit it.
fn client_handshake() -> HandshakeConfig {
    short_handshake().max_frame_len(folio_rpc::handshake::MIN_FRAME_LIMIT)
}

fn server_tub() -> Tub {
    let config = TubConfig::default()
        .handshake(short_handshake())
        .max_inbound_calls(4)
        .max_queued_calls(8)
        .max_queued_call_bytes(16 * 1024)
        .max_outbound_calls(4)
        .max_exports(MAX_EXPORTS)
        .max_imports(16)
        .accept_gifts(true)
        .keepalive(Some(Duration::from_secs(30)))
        .disconnect_timeout(None)
        .dial_timeout(Duration::from_secs(1))
        .max_write_queue(64 * 1024)
        .call_timeout(Some(CALLBACK_TIMEOUT))
        .max_call_duration(Some(MAX_CALL_DURATION))
        .max_kept_answers(MAX_KEPT_ANSWERS)
        .max_held_calls(MAX_HELD_CALLS);
    let tub = Tub::new(identity(SERVER_PEM), Arc::new(NoConnector), config).unwrap();
    tub.set_location(vec!["mem:server".parse().unwrap()]);
    tub
}

fn thirds(bytes: &[u8]) -> std::slice::Chunks<'_, u8> {
    bytes.chunks(bytes.len().div_ceil(3).max(1))
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FOLIO_FUZZ_WRITE_SEEDS") {
            runtime().block_on(seeds::write(Path::new(&dir)));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&m, rest)) = data.split_first() else {
            return;
        };
        let close = m & 0x80 != 0;
        let idle = (m & 0x7f) >= 3;
        runtime().block_on(async {
            match (m & 0x7f) % 3 {
                0 => raw(rest, close).await,
                1 => after_handshake(rest, false, close, idle).await,
                _ => after_handshake(rest, true, close, idle).await,
            }
        });
    }
);

/// Mode 0: bytes on the socket, before any handshake.
async fn raw(bytes: &[u8], close: bool) {
    let server = server_tub();
    let (client_end, server_end) = tokio::io::duplex(DUPLEX);
    let tub = server.clone();
    let accept = tokio::spawn(async move { tub.accept(server_end).await });
    let (mut from_server, mut to_server) = tokio::io::split(client_end);
    let drain = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut tokio::io::sink()).await;
    });
    bounded("writing the input", 60, async {
        for chunk in thirds(bytes) {
            if to_server.write_all(chunk).await.is_err() {
                break;
            }
            settle().await;
        }
        if close {
            let _ = to_server.shutdown().await;
        }
    })
    .await;
    // Prelude, refusal, answer, TLS, hello: five phases of at most 1 s each.
    let accepted = bounded("Tub::accept", 10, accept).await.unwrap();
    assert!(server.connection_count() <= usize::from(accepted.is_ok()));
    finish(&server, drain).await;
    drop(to_server);
}

/// Modes 1 and 2: a real handshake, then the input inside TLS.
async fn after_handshake(input: &[u8], as_frames: bool, close: bool, idle: bool) {
    let server = server_tub();
    server
        .register_as(CalcRef::serve(CalcImpl::default()), OBJECT_NAME)
        .unwrap();
    let client = Handshaker::new(Arc::new(identity(CLIENT_PEM)), client_handshake()).unwrap();
    let (client_end, server_end) = tokio::io::duplex(DUPLEX);
    let tub = server.clone();
    let accept = tokio::spawn(async move { tub.accept(server_end).await });
    let est = bounded(
        "the client handshake",
        10,
        client.connect(client_end, server.tubid()),
    )
    .await
    .expect("a real client's handshake failed");
    let info = bounded("Tub::accept", 10, accept)
        .await
        .unwrap()
        .expect("the server refused a real client");
    assert_eq!(info.peer, client.tubid());
    assert_eq!(server.connection_count(), 1);
    let Established {
        mut reader,
        mut writer,
        ..
    } = est;
    // Read (and ignore) what the server sends, as a client that never answers would.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = reader.next_frame().await {} });

    bounded("sending the input", 600, async {
        if as_frames {
            for payload in split_frames(input) {
                if writer.send_frame(payload).await.is_err() {
                    break;
                }
                settle().await;
            }
        } else {
            for chunk in thirds(input) {
                if writer.write_encoded(chunk).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
                settle().await;
            }
        }
        if close {
            let _ = writer.shutdown().await;
        }
    })
    .await;
    settle().await;
    let load = server.load();
    assert!(
        load.kept_answers <= MAX_KEPT_ANSWERS && load.held_calls <= MAX_HELD_CALLS,
        "{} answers kept and {} calls held, over the limits",
        load.kept_answers,
        load.held_calls
    );
    if close {
        bounded("dropping a client that closed", 600, async {
            while server.connection_count() != 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .await;
    } else if idle {
        // Every promise-able call has ended by now, so no call waits for one.
        tokio::time::sleep(IDLE).await;
        let held = server.load().held_calls;
        assert_eq!(held, 0, "{held} calls still held {IDLE:?} after the input");
    }
    assert!(server.exports_to(&client.tubid()) <= MAX_EXPORTS);
    finish(&server, drain).await;
    drop(writer);
}

/// The end of every run: at most one connection, and a shutdown that closes it, in bounded
/// time, all the way to the stream.
async fn finish(server: &Tub, drain: JoinHandle<()>) {
    let n = server.connection_count();
    assert!(n <= 1, "{n} connections from one client");
    bounded("Tub::shutdown", 10, server.shutdown()).await;
    assert_eq!(
        server.connection_count(),
        0,
        "a connection survived shutdown"
    );
    let load = server.load();
    assert_eq!(
        (load.kept_answers, load.held_calls),
        (0, 0),
        "answers kept or calls held after shutdown"
    );
    // The writer gets 10 s to say goodbye and 5 s to close TLS.
    bounded("the server closing its end of the stream", 60, drain)
        .await
        .unwrap();
}

/// Seeds from real traffic (see the header comment).
mod seeds {
    use super::*;
    use folio_rpc::prelude;

    /// What a client sent, as the server got it.
    #[derive(Default)]
    struct Capture {
        /// Every byte on the socket, prelude and TLS records.
        wire: Mutex<Vec<u8>>,
        /// The frame payloads after the handshake.
        frames: Mutex<Vec<Vec<u8>>>,
    }

    /// Records what is read from a stream.
    struct Recorder {
        io: DuplexStream,
        capture: Arc<Capture>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.io).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = polled {
                let got = &buf.filled()[before..];
                self.capture.wire.lock().unwrap().extend_from_slice(got);
            }
            polled
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Dials the server through a proxy that terminates the client's TLS with the server's
    /// key, opens its own connection to the server with the client's key, and forwards frames.
    struct ProxyConnector {
        server: Tub,
        capture: Arc<Capture>,
    }

    impl Connector for ProxyConnector {
        fn connect<'a>(&'a self, _hint: &'a Hint) -> ConnectFuture<'a> {
            Box::pin(async move {
                let (client_end, proxy_end) = tokio::io::duplex(DUPLEX);
                let recorder = Recorder {
                    io: proxy_end,
                    capture: self.capture.clone(),
                };
                tokio::spawn(proxy(self.server.clone(), recorder, self.capture.clone()));
                Ok(Box::new(client_end) as BoxStream)
            })
        }
    }

    async fn proxy(server: Tub, from_client: Recorder, capture: Arc<Capture>) {
        let front =
            Handshaker::new(Arc::new(identity(SERVER_PEM)), HandshakeConfig::default()).unwrap();
        let back = Handshaker::new(Arc::new(identity(CLIENT_PEM)), client_handshake()).unwrap();
        let front = front
            .accept(from_client)
            .await
            .expect("proxy: client handshake");
        let (up, down) = tokio::io::duplex(DUPLEX);
        let tub = server.clone();
        tokio::spawn(async move { tub.accept(down).await.expect("server handshake") });
        let back = back
            .connect(up, server.tubid())
            .await
            .expect("proxy: server handshake");
        let (mut cr, mut cw) = (front.reader, front.writer);
        let (mut sr, mut sw) = (back.reader, back.writer);
        let upstream = async {
            while let Ok(Some(f)) = cr.next_frame().await {
                capture.frames.lock().unwrap().push(f.to_vec());
                if sw.send_frame(f).await.is_err() {
                    break;
                }
            }
            let _ = sw.shutdown().await;
        };
        let downstream = async {
            while let Ok(Some(f)) = sr.next_frame().await {
                if cw.send_frame(f).await.is_err() {
                    break;
                }
            }
            let _ = cw.shutdown().await;
        };
        tokio::join!(upstream, downstream);
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Scenario {
        /// `get_reference` on the root, then the reference is dropped (a decref).
        Root,
        /// A typed call.
        Call,
        /// A reference passed in arguments, returned, called back (the client answers).
        PassRef,
        /// A reference returned, called, and dropped: its decref.
        ReturnedRef,
        /// A one-way call.
        Oneway,
        /// References held and released by the server; an answer over the frame limit;
        /// calls queued behind slow ones.
        Limits,
        /// A call, then the client Tub shuts down: its goodbye.
        Goodbye,
        /// Deadlines and cancellation: a `TimedCall` whose deadline passes, a running call
        /// and a queued call cancelled, a call stopped by the server's cap, a one-way call
        /// that hangs.
        Deadline,
        /// Promise pipelining (protocol version 3), on a connection whose first call goes out
        /// behind the hello (`get_promised`): calls held on a promise and delivered in order,
        /// one-way calls on a promise, chains, a failed promise, two references and an index
        /// beyond them, a flood beyond `max_held_calls`, more promises than
        /// `max_kept_answers`, held calls whose deadline passes or that are cancelled, a
        /// promise broken by `max_call_duration`.
        Pipeline,
        /// Everything above in one session, ending in a goodbye.
        All,
    }

    fn broken<T: std::fmt::Debug>(r: &Result<T, folio_rpc::CallError<String>>) -> bool {
        matches!(
            r,
            Err(folio_rpc::CallError::Refused(folio_rpc::Refusal::Broken(_)))
        )
    }

    /// Lets the client's decrefs (and `Finish`es) of what a step dropped reach the server, so
    /// that the next step has room under `MAX_EXPORTS`.
    async fn released() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    async fn pipeline(calc: &CalcRef) {
        use folio_rpc::CallError;
        {
            // Held while `later` sleeps, then run in the order sent, before its answer goes.
            let promise = calc.later_promise(200).await.unwrap();
            let c = promise.reference();
            let calls: Vec<_> = (0..3)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move { c.incr().await })
                })
                .collect();
            let mut got = Vec::new();
            for call in calls {
                got.push(call.await.unwrap().unwrap());
            }
            assert_eq!(got, [1, 2, 3]);
            let real = promise.await.unwrap();
            assert_eq!(real.incr().await.unwrap(), 4);
        }
        released().await;
        {
            // A one-way call on a promise, and a chain: promises on promised references.
            let sub = calc.sub_promise(100).await.unwrap().reference();
            sub.note("held".into()).await.unwrap();
            let subsub = sub.sub_promise(100).await.unwrap().reference();
            let counter = subsub.later_promise(100).await.unwrap().reference();
            assert_eq!(counter.incr().await.unwrap(), 1);
        }
        released().await;
        {
            // A failed promise: the call sent to it is refused unrun.
            let failed = calc.fail_promise(100).await.unwrap();
            assert!(broken(&failed.reference().incr().await));
            assert!(matches!(failed.await, Err(CallError::App(_))));
        }
        {
            // Two references, one beyond them, and one of another interface, all pipelined.
            let pair = calc.two_promise().await.unwrap();
            let (first, second, beyond): (CounterRef, CounterRef, CounterRef) = (
                pair.reference_at(0),
                pair.reference_at(1),
                pair.reference_at(2),
            );
            let wrong: CalcRef = pair.reference_at(1);
            let (a, b, c, d) =
                tokio::join!(first.incr(), second.incr(), beyond.incr(), wrong.add(1, 2));
            assert_eq!((a.unwrap(), b.unwrap()), (1, 101));
            assert!(broken(&c), "{c:?}");
            assert!(d.is_err());
        }
        released().await;
        {
            // A flood: more calls on one promise than the server holds. Those refused are
            // sent again once the answer is in.
            let flood = calc.later_promise(500).await.unwrap().reference();
            let calls: Vec<_> = (0..2 * MAX_HELD_CALLS)
                .map(|_| {
                    let c = flood.clone();
                    tokio::spawn(async move { c.incr().await })
                })
                .collect();
            for c in calls {
                c.await.unwrap().unwrap();
            }
        }
        released().await;
        {
            // More promises at once than the server keeps answers for.
            let mut promises = Vec::new();
            for _ in 0..MAX_KEPT_ANSWERS + 2 {
                promises.push(calc.later_promise(300).await.unwrap());
            }
            let calls: Vec<_> = promises
                .iter()
                .map(|p| {
                    let c: CounterRef = p.reference();
                    tokio::spawn(async move { c.incr().await })
                })
                .collect();
            for c in calls {
                assert_eq!(c.await.unwrap().unwrap(), 1);
            }
        }
        released().await;
        {
            // A held call whose caller's deadline passes, and one cancelled (its future
            // dropped): neither runs.
            let gated = calc.later_promise(500).await.unwrap().reference();
            let short = gated.with_timeout(Some(Duration::from_millis(100)));
            assert!(matches!(
                short.incr().await,
                Err(CallError::DeadlineExceeded(_))
            ));
            let g = gated.clone();
            let dropped = tokio::spawn(async move { g.incr().await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            dropped.abort();
            settle().await;
            assert_eq!(gated.incr().await.unwrap(), 1);
        }
        released().await;
        {
            // A promise broken by the server's cap, with a call held on it.
            let hung = calc.hang_ref_promise().await.unwrap();
            assert!(broken(&hung.reference().incr().await));
            assert!(matches!(hung.await, Err(CallError::Refused(_))));
        }
    }

    async fn session(scenario: Scenario) -> Arc<Capture> {
        use Scenario::*;
        let server = server_tub();
        let furl = server
            .register_as(CalcRef::serve(CalcImpl::default()), OBJECT_NAME)
            .unwrap();
        let capture = Arc::new(Capture::default());
        let connector = ProxyConnector {
            server: server.clone(),
            capture: capture.clone(),
        };
        let client = Tub::new(
            identity(CLIENT_PEM),
            Arc::new(connector),
            TubConfig::default(),
        )
        .unwrap();
        let calc: CalcRef = if scenario == Pipeline {
            // No network yet: the first (ordinary) call goes out behind the hello, pipelined
            // on the FURL's resolution. (A `_promise` call on this handle would wait for it.)
            let calc: CalcRef = client.get_promised(&furl);
            let c = calc.counter(7).await.unwrap();
            assert_eq!(c.incr().await.unwrap(), 8);
            calc
        } else {
            client.get(&furl).await.expect("get")
        };
        let all = scenario == All;
        if scenario == Call || scenario == Goodbye || all {
            assert_eq!(calc.add(2, 3).await.unwrap(), 5);
        }
        if scenario == PassRef || all {
            let mine = CounterRef::serve(CounterImpl(Mutex::new(10)));
            let back = calc.echo(mine.clone()).await.unwrap();
            assert_eq!(back.incr().await.unwrap(), 11);
            assert_eq!(calc.bump(mine.clone()).await.unwrap(), 12);
        }
        if scenario == ReturnedRef || all {
            let c = calc.counter(5).await.unwrap();
            assert_eq!(c.incr().await.unwrap(), 6);
            drop(c);
            settle().await;
        }
        if scenario == Oneway || all {
            calc.note("hello".into()).await.unwrap();
        }
        if scenario == Deadline || all {
            // Timed out by the caller: the server drops it at the same deadline, silently.
            let short = calc.with_timeout(Some(Duration::from_millis(100)));
            assert!(matches!(
                short.hang().await,
                Err(folio_rpc::CallError::DeadlineExceeded(_))
            ));
            // Four hang (every slot taken), a fifth waits; the fifth and one running are
            // cancelled by dropping their callers.
            let patient = calc.with_timeout(None);
            let calls: Vec<_> = (0..5)
                .map(|_| {
                    let c = patient.clone();
                    tokio::spawn(async move { c.hang().await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(100)).await;
            calls[4].abort();
            calls[0].abort();
            settle().await;
            // The others are stopped by the server's cap, and told so.
            for c in calls.into_iter().skip(1).take(3) {
                assert!(matches!(
                    c.await.unwrap(),
                    Err(folio_rpc::CallError::Refused(_))
                ));
            }
            calc.hang_oneway().await.unwrap();
            assert_eq!(calc.add(1, 1).await.unwrap(), 2);
        }
        if scenario == Pipeline || all {
            pipeline(&calc).await;
        }
        if scenario == Limits || all {
            let mine = CounterRef::serve(CounterImpl(Mutex::new(0)));
            assert_eq!(calc.keep(mine.clone()).await.unwrap(), 1);
            assert_eq!(calc.keep(mine.clone()).await.unwrap(), 2);
            assert_eq!(calc.forget().await.unwrap(), 2);
            assert!(calc.repeat("0123456789".into(), 1000).await.is_err());
            let slow: Vec<_> = (0..6u64)
                .map(|i| {
                    let calc = calc.clone();
                    tokio::spawn(async move { calc.slow(100 * i).await })
                })
                .collect();
            for s in slow {
                s.await.unwrap().unwrap();
            }
        }
        drop(calc);
        settle().await;
        if matches!(scenario, Goodbye | All) {
            client.shutdown().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        capture
    }

    fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    pub async fn write(dir: &Path) {
        use Scenario::*;
        std::fs::create_dir_all(dir).unwrap();
        let put = |name: &str, mode: u8, body: &[u8]| {
            let mut bytes = vec![mode];
            bytes.extend_from_slice(body);
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let scenarios = [
            ("root", Root),
            ("call", Call),
            ("pass_ref", PassRef),
            ("returned_ref", ReturnedRef),
            ("oneway", Oneway),
            ("limits", Limits),
            ("goodbye", Goodbye),
            ("deadline", Deadline),
            ("pipeline", Pipeline),
            ("all", All),
        ];
        for (name, scenario) in scenarios {
            let capture = session(scenario).await;
            let frames = capture.frames.lock().unwrap().clone();
            eprintln!("{name}:");
            for f in &frames {
                let msg = folio_rpc::message::decode(f).expect("a real client's message");
                eprintln!("  {msg:?}");
                assert!(
                    !f.windows(SEP.len()).any(|w| w == SEP),
                    "a payload contains the separator"
                );
            }
            put(&format!("frames_{name}"), 0x02, &frames.join(SEP));
            if matches!(scenario, Call | Pipeline | All) {
                put(&format!("stream_{name}"), 0x01, &framed(&frames));
            }
            if matches!(scenario, Pipeline | All) {
                // Then idle until every held call must have ended.
                put(&format!("frames_{name}_idle"), 0x05, &frames.join(SEP));
            }
            if scenario == Pipeline {
                put("frames_pipeline_then_close", 0x82, &frames.join(SEP));
            }
            if scenario == All {
                put("frames_all_then_close", 0x82, &frames.join(SEP));
                put("stream_all_then_close", 0x81, &framed(&frames));
                let wire = capture.wire.lock().unwrap().clone();
                // The prelude request, then the ClientHello record (5-byte header + length).
                let request = prelude::encode_request(&identity(SERVER_PEM).tubid());
                assert!(wire.starts_with(&request));
                let at = request.len();
                let record = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
                put("raw_request", 0x00, &request);
                put("raw_first_flight", 0x80, &wire[..at + 5 + record]);
                put("raw_whole_session", 0x80, &wire);
            }
        }
        put("raw_http", 0x80, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        put("frames_bad_message", 0x02, &[0xff; 3]);
        eprintln!("seeds written to {}", dir.display());
    }
}
