//! Per-call deadlines and cancellation (docs/protocol.md §7): a call that gets no answer in
//! time fails with `DeadlineExceeded`, the callee stops the method and frees its slot, a
//! dropped caller cancels the callee's work, and a version-1 peer still interoperates.
//!
//! Every call that could hang on a build without deadlines is wrapped in a generous
//! `tokio::time::timeout`, so that such a build fails these tests instead of hanging them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Grid, Net};
use folio_rpc::{interface, CallError, Identity, Refusal, Tub, TubConfig, TypedRef};

const SHORT: Duration = Duration::from_millis(200);
/// Far longer than any call here should take: reaching it means a call hung.
const HUNG: Duration = Duration::from_secs(20);

#[interface(name = "test.sleeper.v1")]
pub trait Sleeper {
    /// Never returns; records that it started, and that its future was dropped.
    async fn hang(&self, tag: u64) -> Result<u64, String>;
    /// Returns `ms` after `ms` milliseconds.
    async fn nap(&self, ms: u64) -> Result<u64, String>;
    /// Waits until the test opens the gate.
    async fn gate(&self, tag: u64) -> Result<u64, String>;
    /// Returns at once.
    async fn quick(&self) -> Result<u64, String>;
    /// `hang`, one-way.
    #[oneway]
    async fn hang_oneway(&self, tag: u64);
}

#[derive(Default)]
struct State {
    started: Mutex<Vec<u64>>,
    dropped: Mutex<Vec<u64>>,
    gate: tokio::sync::Notify,
}

impl State {
    fn started(&self, tag: u64) -> bool {
        self.started.lock().unwrap().contains(&tag)
    }
    fn dropped(&self, tag: u64) -> bool {
        self.dropped.lock().unwrap().contains(&tag)
    }
}

/// Records in `State::dropped` that the future holding it was dropped.
struct DropFlag(Arc<State>, u64);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.lock().unwrap().push(self.1);
    }
}

struct Svc(Arc<State>);

impl Svc {
    async fn hang_forever(&self, tag: u64) {
        self.0.started.lock().unwrap().push(tag);
        let _flag = DropFlag(self.0.clone(), tag);
        std::future::pending::<()>().await;
    }
}

impl Sleeper for Svc {
    async fn hang(&self, tag: u64) -> Result<u64, String> {
        self.hang_forever(tag).await;
        unreachable!()
    }
    async fn nap(&self, ms: u64) -> Result<u64, String> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
    async fn gate(&self, tag: u64) -> Result<u64, String> {
        self.0.started.lock().unwrap().push(tag);
        let _flag = DropFlag(self.0.clone(), tag);
        self.0.gate.notified().await;
        Ok(tag)
    }
    async fn quick(&self) -> Result<u64, String> {
        Ok(7)
    }
    async fn hang_oneway(&self, tag: u64) {
        self.hang_forever(tag).await;
    }
}

/// A server Tub serving a `Sleeper` and a client Tub holding a handle to it.
struct Pair {
    _grid: Grid,
    server: Tub,
    client: Tub,
    state: Arc<State>,
    handle: SleeperRef,
}

async fn pair(server: TubConfig, client: TubConfig) -> Pair {
    let grid = Grid::new(Net::Mem);
    let s = grid.tub_with(Identity::generate().unwrap(), server).await;
    let c = grid.tub_with(Identity::generate().unwrap(), client).await;
    let state = Arc::new(State::default());
    let furl = s.register(SleeperRef::serve(Svc(state.clone()))).unwrap();
    let handle: SleeperRef = c.get(&furl).await.unwrap();
    Pair {
        _grid: grid,
        server: s,
        client: c,
        state,
        handle,
    }
}

fn config(
    call_timeout: Option<Duration>,
    max_call_duration: Option<Duration>,
    slots: usize,
) -> TubConfig {
    Grid::config()
        .call_timeout(call_timeout)
        .max_call_duration(max_call_duration)
        .max_inbound_calls(slots)
}

fn speaking_only_version_1(mut c: TubConfig) -> TubConfig {
    c.handshake.versions = (1, 1);
    c
}

async fn no_hang<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HUNG, f)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// The gap this closes: a method that never returns. The caller gets `DeadlineExceeded`
/// after its timeout, and the callee (whose own cap is far away) drops the method and gives
/// its only slot back, so the next call runs.
#[tokio::test]
async fn a_call_that_never_returns_fails_at_its_deadline_and_the_callee_stops_it() {
    let p = pair(
        config(None, Some(Duration::from_secs(600)), 1),
        config(Some(SHORT), None, 256),
    )
    .await;
    let started = Instant::now();
    let e = no_hang("hang", p.handle.hang(1)).await.unwrap_err();
    assert!(
        matches!(e, CallError::DeadlineExceeded(d) if d == SHORT),
        "{e}"
    );
    assert!(started.elapsed() >= SHORT, "{:?}", started.elapsed());
    assert!(p.state.started(1));
    eventually(10, "the callee drops the method's future", || {
        p.state.dropped(1)
    })
    .await;
    // One slot: it is free again, so this call runs.
    assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
    assert_eq!(p.client.connection_count(), 1, "the connection is unharmed");
}

/// A handle's own timeout beats the Tub's default, both ways; `None` means no deadline.
#[tokio::test]
async fn a_handles_timeout_overrides_the_tubs_default() {
    // The Tub has no deadline; the handle has one.
    let p = pair(config(None, None, 256), config(None, None, 256)).await;
    let short = p.handle.with_timeout(Some(SHORT));
    let e = no_hang("hang", short.hang(2)).await.unwrap_err();
    assert!(
        matches!(e, CallError::DeadlineExceeded(d) if d == SHORT),
        "{e}"
    );
    eventually(10, "the callee drops the method's future", || {
        p.state.dropped(2)
    })
    .await;
    // Through the trait, for generic code, the same.
    let short = TypedRef::with_timeout(&p.handle, Some(SHORT));
    let e = no_hang("hang", short.hang(3)).await.unwrap_err();
    assert!(matches!(e, CallError::DeadlineExceeded(_)), "{e}");
    // The original handle keeps the Tub's default: no deadline.
    assert_eq!(no_hang("nap", p.handle.nap(400)).await.unwrap(), 400);

    // The Tub has a deadline; the handle has none, or a longer one.
    let p = pair(config(None, None, 256), config(Some(SHORT), None, 256)).await;
    let e = no_hang("nap", p.handle.nap(600)).await.unwrap_err();
    assert!(
        matches!(e, CallError::DeadlineExceeded(d) if d == SHORT),
        "{e}"
    );
    let patient = p.handle.with_timeout(None);
    assert_eq!(no_hang("nap", patient.nap(600)).await.unwrap(), 600);
    let longer = p.handle.with_timeout(Some(Duration::from_secs(30)));
    assert_eq!(no_hang("nap", longer.nap(600)).await.unwrap(), 600);
}

/// A caller that drops its call (no deadline anywhere) cancels the callee's work: the
/// method's future is dropped and the slot is free again.
#[tokio::test]
async fn dropping_the_callers_future_cancels_the_callees_work() {
    let p = pair(config(None, None, 1), config(None, None, 256)).await;
    let h = p.handle.clone();
    let call = tokio::spawn(async move { h.hang(4).await });
    eventually(10, "the method starts", || p.state.started(4)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    eventually(10, "the callee drops the method's future", || {
        p.state.dropped(4)
    })
    .await;
    assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
}

/// A call cancelled while it waits for a slot never runs.
#[tokio::test]
async fn a_queued_call_cancelled_before_it_runs_never_runs() {
    let p = pair(config(None, None, 1), config(None, None, 256)).await;
    let h = p.handle.clone();
    let first = tokio::spawn(async move { h.gate(10).await });
    eventually(10, "the first call takes the only slot", || {
        p.state.started(10)
    })
    .await;
    let h = p.handle.clone();
    let queued = tokio::spawn(async move { h.hang(11).await });
    // Time for it to reach the callee and wait there.
    tokio::time::sleep(Duration::from_millis(100)).await;
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    // Time for the cancel to arrive, then the slot comes free.
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.state.gate.notify_one();
    assert_eq!(no_hang("the first call", first).await.unwrap().unwrap(), 10);
    // Calls start in arrival order: had the cancelled call stayed queued, it would have
    // taken the slot first, for good, and this one would never run.
    assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
    assert!(!p.state.started(11), "a cancelled queued call ran");
}

/// A version-1 callee is never sent the version-2 messages (it would have closed the
/// connection), and the caller's deadline still holds, on the caller's side only.
#[tokio::test]
async fn a_version_1_callee_interoperates_and_the_deadline_holds_locally() {
    let p = pair(
        speaking_only_version_1(config(None, None, 256)),
        config(Some(SHORT), None, 256),
    )
    .await;
    let e = no_hang("hang", p.handle.hang(20)).await.unwrap_err();
    assert!(
        matches!(e, CallError::DeadlineExceeded(d) if d == SHORT),
        "{e}"
    );
    // A dropped call is not cancelled either (version 1 has no way to say it).
    let h = p.handle.clone();
    let call = tokio::spawn(async move { h.hang(21).await });
    eventually(10, "the method starts", || p.state.started(21)).await;
    call.abort();
    let _ = call.await;
    assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
    assert_eq!(no_hang("nap", p.handle.nap(10)).await.unwrap(), 10);
    assert_eq!(p.client.connection_count(), 1, "the connection is unharmed");
    assert_eq!(p.server.connection_count(), 1);
    // Nobody told the callee: its methods run on (it has no cap here).
    assert!(!p.state.dropped(20) && !p.state.dropped(21));
}

/// The callee's own cap stops a call the caller still waits for, and says so with a
/// refusal; with callers of either version.
#[tokio::test]
async fn the_callees_cap_stops_a_call_and_answers_with_a_refusal() {
    for (tag, client) in [
        (30, config(None, None, 256)),
        (31, speaking_only_version_1(config(None, None, 256))),
        // A caller's longer deadline does not lift the callee's cap.
        (32, config(Some(Duration::from_secs(60)), None, 256)),
    ] {
        let p = pair(config(None, Some(SHORT), 1), client).await;
        let started = Instant::now();
        let e = no_hang("hang", p.handle.hang(tag)).await.unwrap_err();
        assert!(
            matches!(&e, CallError::Refused(Refusal::Failed(why)) if why.contains("did not finish within")),
            "{e}"
        );
        assert!(started.elapsed() >= SHORT);
        assert!(p.state.dropped(tag), "the method's future is dropped first");
        assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
    }
}

/// A one-way call that never returns holds its slot only until the callee's cap.
#[tokio::test]
async fn a_one_way_call_that_never_returns_is_stopped_by_the_callees_cap() {
    let p = pair(config(None, Some(SHORT), 1), config(None, None, 256)).await;
    p.handle.hang_oneway(40).await.unwrap();
    eventually(10, "the callee drops the one-way method", || {
        p.state.dropped(40)
    })
    .await;
    assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
}

/// A local object honours a handle's timeout too (it has no Tub default).
#[tokio::test]
async fn a_local_call_honours_the_handles_timeout() {
    let state = Arc::new(State::default());
    let local = SleeperRef::serve(Svc(state.clone()));
    assert_eq!(no_hang("nap", local.nap(10)).await.unwrap(), 10);
    let e = no_hang("hang", local.with_timeout(Some(SHORT)).hang(50))
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::DeadlineExceeded(_)), "{e}");
    assert!(state.dropped(50));
}

/// Deadlines of different lengths on one connection: a short one armed after a long one
/// still fires on time, and many at once all fire.
#[tokio::test]
async fn a_short_deadline_behind_a_long_one_fires_on_time() {
    let p = pair(
        config(None, None, 256),
        config(Some(Duration::from_secs(60)), None, 256),
    )
    .await;
    let h = p.handle.clone();
    let long = tokio::spawn(async move { h.nap(1500).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let short = p.handle.with_timeout(Some(SHORT));
    let e = no_hang("hang", short.hang(60)).await.unwrap_err();
    assert!(
        matches!(e, CallError::DeadlineExceeded(d) if d == SHORT),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the short deadline waited for the long one: {:?}",
        started.elapsed()
    );
    let many: Vec<_> = (0..20)
        .map(|i| {
            let h = short.clone();
            tokio::spawn(async move { h.hang(100 + i).await })
        })
        .collect();
    for call in many {
        let e = no_hang("hang", call).await.unwrap().unwrap_err();
        assert!(matches!(e, CallError::DeadlineExceeded(_)), "{e}");
    }
    assert_eq!(no_hang("the long call", long).await.unwrap().unwrap(), 1500);
}

/// A peer that answers nothing cannot hold our outbound slots for good: a call waiting for
/// a slot gives up at its deadline too.
#[tokio::test]
async fn a_call_waiting_for_an_outbound_slot_gives_up_at_its_deadline() {
    let client = (config(None, None, 256)).max_outbound_calls(1);
    let p = pair(config(None, None, 256), client).await;
    let h = p.handle.clone();
    let holder = tokio::spawn(async move { h.hang(70).await });
    eventually(10, "the first call holds the only slot", || {
        p.state.started(70)
    })
    .await;
    let started = Instant::now();
    let e = no_hang("quick", p.handle.with_timeout(Some(SHORT)).quick())
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::DeadlineExceeded(d) if d == SHORT),
        "{e}"
    );
    assert!(started.elapsed() >= SHORT);
    assert!(!holder.is_finished());
    holder.abort();
    let _ = holder.await;
    // The slot is back (and the cancelled call stopped): calls go through again.
    assert_eq!(no_hang("quick", p.handle.quick()).await.unwrap(), 7);
    eventually(10, "the callee drops the cancelled call", || {
        p.state.dropped(70)
    })
    .await;
}

/// The wire as a second implementation sees it (docs/protocol.md §7): a client built from
/// the public handshake API and hand-made frames, against a Tub serving a `Sleeper`.
mod wire {
    use super::*;
    use folio_rpc::frame::FrameReader;
    use folio_rpc::message::{decode, AnswerBody, GoodbyeReason, Message, RefDesc};
    use folio_rpc::{Established, HandshakeConfig, Handshaker, NoConnector};
    use tokio::io::DuplexStream;

    const NAME: &str = "sleeper-0123456789";

    async fn serve(state: Arc<State>) -> Tub {
        let tub = Tub::new(
            Identity::generate().unwrap(),
            Arc::new(NoConnector),
            config(None, None, 256),
        )
        .unwrap();
        tub.register_as(SleeperRef::serve(Svc(state)), NAME)
            .unwrap();
        tub
    }

    async fn connect(server: &Tub, versions: (u16, u16)) -> Established<DuplexStream> {
        let client = Handshaker::new(
            Arc::new(Identity::generate().unwrap()),
            HandshakeConfig::default().versions(versions),
        )
        .unwrap();
        let (a, b) = tokio::io::duplex(256 * 1024);
        let tub = server.clone();
        tokio::spawn(async move { tub.accept(b).await });
        no_hang("the handshake", client.connect(a, server.tubid()))
            .await
            .unwrap()
    }

    async fn next<R: tokio::io::AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Vec<u8> {
        no_hang("a frame", r.next_frame())
            .await
            .unwrap()
            .expect("a frame, not the end")
            .to_vec()
    }

    /// Resolves the Sleeper with call 1; returns its object id.
    async fn resolve(est: &mut Established<DuplexStream>) -> u64 {
        let args = postcard::to_allocvec(&(NAME,)).unwrap();
        let call = Message::Call {
            id: 1,
            target: 0,
            interface: "folio.root",
            method: "get_reference",
            args: &args,
            refs: vec![],
        };
        est.writer.send_message(&call).await.unwrap();
        let frame = next(&mut est.reader).await;
        match decode(&frame).unwrap() {
            Message::Answer {
                id: 1,
                body: AnswerBody::Ok { refs, .. },
            } => match refs.as_slice() {
                [RefDesc::Mine { id, .. }] => *id,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn call<'a>(id: u64, target: u64, method: &'a str, args: &'a [u8]) -> Message<'a> {
        Message::Call {
            id,
            target,
            interface: "test.sleeper.v1",
            method,
            args,
            refs: vec![],
        }
    }

    /// The next frame is the answer to call `id`, with value 7 (`quick`).
    async fn expect_quick_answer(est: &mut Established<DuplexStream>, id: u64) {
        let frame = next(&mut est.reader).await;
        match decode(&frame).unwrap() {
            Message::Answer {
                id: got,
                body: AnswerBody::Ok { value, .. },
            } => assert_eq!((got, value), (id, &[7u8][..]), "only the answer to {id}"),
            other => panic!("expected the answer to call {id} alone, got {other:?}"),
        }
    }

    /// A `TimedCall` past its time, and a cancelled running call, are stopped without an
    /// answer; the connection goes on.
    #[tokio::test]
    async fn a_timed_out_or_cancelled_call_is_stopped_without_an_answer() {
        let state = Arc::new(State::default());
        let server = serve(state.clone()).await;
        let mut est = connect(&server, (1, 2)).await;
        assert_eq!(est.info.version, 2);
        let target = resolve(&mut est).await;
        let timed = Message::TimedCall {
            id: 2,
            timeout_ms: 100,
            target,
            interface: "test.sleeper.v1",
            method: "hang",
            args: &[80],
            refs: vec![],
        };
        est.writer.send_message(&timed).await.unwrap();
        eventually(10, "the callee stops the call at its deadline", || {
            state.dropped(80)
        })
        .await;
        est.writer
            .send_message(&call(3, target, "hang", &[81]))
            .await
            .unwrap();
        eventually(10, "the method starts", || state.started(81)).await;
        est.writer
            .send_message(&Message::Cancel { id: 3 })
            .await
            .unwrap();
        eventually(10, "the callee stops the cancelled call", || {
            state.dropped(81)
        })
        .await;
        // A Cancel for a call that is over, or never was, is ignored.
        for id in [3, 99] {
            est.writer
                .send_message(&Message::Cancel { id })
                .await
                .unwrap();
        }
        // Nothing was sent for calls 2 and 3: the next frame answers call 4.
        est.writer
            .send_message(&call(4, target, "quick", &[]))
            .await
            .unwrap();
        expect_quick_answer(&mut est, 4).await;
    }

    /// A version-2 message on a version-1 connection is a protocol violation.
    #[tokio::test]
    async fn a_version_2_message_on_a_version_1_connection_is_refused() {
        let state = Arc::new(State::default());
        let server = serve(state.clone()).await;
        let mut est = connect(&server, (1, 1)).await;
        assert_eq!(est.info.version, 1);
        let target = resolve(&mut est).await;
        est.writer
            .send_message(&call(2, target, "quick", &[]))
            .await
            .unwrap();
        expect_quick_answer(&mut est, 2).await;
        est.writer
            .send_message(&Message::Cancel { id: 2 })
            .await
            .unwrap();
        let frame = next(&mut est.reader).await;
        match decode(&frame).unwrap() {
            Message::Goodbye {
                reason: GoodbyeReason::ProtocolViolation(why),
            } => assert!(why.contains("version-2 message"), "{why}"),
            other => panic!("expected a goodbye, got {other:?}"),
        }
    }
}

/// A cancelled queued call gives its place in the queue back at once: with a queue of one,
/// the call behind it is read and queued, and the reader goes on reading (here, the cancel
/// that frees the slot).
#[tokio::test]
async fn a_cancelled_queued_call_gives_its_place_in_the_queue_back() {
    let server = (config(None, None, 1)).max_queued_calls(1);
    let p = pair(server, config(None, None, 256)).await;
    let h = p.handle.clone();
    let first = tokio::spawn(async move { h.gate(90).await });
    eventually(10, "the first call takes the only slot", || {
        p.state.started(90)
    })
    .await;
    let h = p.handle.clone();
    let queued = tokio::spawn(async move { h.hang(91).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    queued.abort();
    let _ = queued.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Takes the queue's only place, if the cancelled call gave it back; otherwise the
    // reader stops here, waiting for room, and reads nothing more.
    let h = p.handle.clone();
    let quick = tokio::spawn(async move { h.quick().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Read only by a reader that is still reading: it stops the first call, whose slot
    // goes to `quick`.
    first.abort();
    let _ = first.await;
    assert_eq!(no_hang("quick", quick).await.unwrap().unwrap(), 7);
    assert!(p.state.dropped(90));
    assert!(!p.state.started(91), "a cancelled queued call ran");
}
