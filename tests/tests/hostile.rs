//! Hostile peers against a Tub listening on 127.0.0.1.
//!
//! - Reference floods: a peer that makes the server export more objects than `max_exports`,
//!   or sends it more references than `max_imports`, gets a clear refusal naming the limit;
//!   the server's tables for that connection stay at the limit, and a second, well-behaved
//!   client keeps being served during and after the flood.
//! - Disconnects in every phase: part of the prelude, after the ClientHello, in the middle of
//!   the TLS handshake, before and inside the hello, inside a frame, and in the middle of a
//!   call (fast, slow, and with calls queued behind a slow one). The server notices each at
//!   once (long before any timeout), logs why, forgets the connection and its state, and a
//!   fresh client is served afterwards. The one exception: while a full queue holds the
//!   reader back, the server does not read that peer and finds it gone only when a slot
//!   frees or a keepalive ping fails (both checked).
//!
//! The server's reasons are read from its `tracing` output, captured for the whole binary.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use folio_handlers::Registry;
use folio_rpc::frame::{encode_frame, FrameReader, FrameWriter};
use folio_rpc::message::{self, AnswerBody, Message, RefDesc, ROOT_OBJECT};
use folio_rpc::{
    interface, prelude, CallError, Furl, HandshakeConfig, Handshaker, Identity, Refusal, TlsStream,
    Tub, TubConfig, TubId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------------
// The service under attack.

#[interface(name = "test.hostile.factory.v1")]
pub trait Factory {
    async fn ping(&self, n: u64) -> Result<u64, String>;
    /// A fresh object on every call.
    async fn make(&self) -> Result<ThingRef, String>;
    /// `n` fresh objects in one answer.
    async fn make_many(&self, n: u32) -> Result<Vec<ThingRef>, String>;
    /// Keeps every reference it is given; returns how many it holds.
    async fn keep(&self, things: Vec<ThingRef>) -> Result<u64, String>;
    /// Looks at the references and lets them go.
    async fn count(&self, things: Vec<ThingRef>) -> Result<u64, String>;
    /// Lets go of every kept reference; returns how many there were.
    async fn clear(&self) -> Result<u64, String>;
    /// Waits until the gate opens.
    async fn slow(&self, tag: u64) -> Result<u64, String>;
}

#[interface(name = "test.hostile.thing.v1")]
pub trait Thing {
    async fn id(&self) -> Result<u64, String>;
}

/// What one side's objects have been through.
struct State {
    /// Thing objects alive (created here and not yet dropped).
    things_live: AtomicUsize,
    next_thing: AtomicU64,
    kept: Mutex<Vec<ThingRef>>,
    gate: tokio::sync::watch::Sender<bool>,
    slow_started: AtomicUsize,
    slow_finished: AtomicUsize,
    /// Futures of `slow` dropped, whether they finished or were cancelled.
    slow_dropped: AtomicUsize,
}

impl State {
    fn new() -> Arc<State> {
        Arc::new(State {
            things_live: AtomicUsize::new(0),
            next_thing: AtomicU64::new(1),
            kept: Mutex::new(Vec::new()),
            gate: tokio::sync::watch::channel(false).0,
            slow_started: AtomicUsize::new(0),
            slow_finished: AtomicUsize::new(0),
            slow_dropped: AtomicUsize::new(0),
        })
    }

    fn thing(self: &Arc<Self>) -> ThingRef {
        self.things_live.fetch_add(1, Ordering::SeqCst);
        ThingRef::serve(ThingImpl {
            id: self.next_thing.fetch_add(1, Ordering::SeqCst),
            state: self.clone(),
        })
    }

    fn live(&self) -> usize {
        self.things_live.load(Ordering::SeqCst)
    }
}

struct ThingImpl {
    id: u64,
    state: Arc<State>,
}

impl Drop for ThingImpl {
    fn drop(&mut self) {
        self.state.things_live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Thing for ThingImpl {
    async fn id(&self) -> Result<u64, String> {
        Ok(self.id)
    }
}

struct FactoryImpl(Arc<State>);

impl Factory for FactoryImpl {
    async fn ping(&self, n: u64) -> Result<u64, String> {
        Ok(n)
    }
    async fn make(&self) -> Result<ThingRef, String> {
        Ok(self.0.thing())
    }
    async fn make_many(&self, n: u32) -> Result<Vec<ThingRef>, String> {
        Ok((0..n).map(|_| self.0.thing()).collect())
    }
    async fn keep(&self, things: Vec<ThingRef>) -> Result<u64, String> {
        let mut kept = self.0.kept.lock().unwrap();
        kept.extend(things);
        Ok(kept.len() as u64)
    }
    async fn count(&self, things: Vec<ThingRef>) -> Result<u64, String> {
        Ok(things.len() as u64)
    }
    async fn clear(&self) -> Result<u64, String> {
        let gone = std::mem::take(&mut *self.0.kept.lock().unwrap());
        Ok(gone.len() as u64)
    }
    async fn slow(&self, tag: u64) -> Result<u64, String> {
        struct Dropped(Arc<State>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.slow_dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
        let _dropped = Dropped(self.0.clone());
        self.0.slow_started.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.0.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        self.0.slow_finished.fetch_add(1, Ordering::SeqCst);
        Ok(tag)
    }
}

// ---------------------------------------------------------------------------------------------
// Harness: the server, clients, bounded waits, the server's log.

const SWISSNUM: &str = "factory";
const THING: &str = "test.hostile.thing.v1";
const FACTORY: &str = "test.hostile.factory.v1";
/// Every handshake phase gets this long; every disconnect must be noticed far sooner.
const PHASE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to notice a disconnect.
const NOTICE: Duration = Duration::from_secs(5);
const STEP: Duration = Duration::from_secs(10);

struct Server {
    tub: Tub,
    furl: Furl,
    state: Arc<State>,
    addr: SocketAddr,
}

fn config() -> TubConfig {
    TubConfig::default()
        .handshake(
            HandshakeConfig::default()
                .prelude_timeout(PHASE_TIMEOUT)
                .tls_timeout(PHASE_TIMEOUT)
                .hello_timeout(PHASE_TIMEOUT),
        )
        .dial_timeout(STEP)
}

async fn server(cfg: TubConfig) -> Server {
    log_mark(); // start capturing before anything happens
    let (tub, addr) = folio_tests::tubs::listening_tub(cfg).await;
    let state = State::new();
    let furl = tub
        .register_as(FactoryRef::serve(FactoryImpl(state.clone())), SWISSNUM)
        .unwrap();
    Server {
        tub,
        furl,
        state,
        addr,
    }
}

fn client_tub() -> Tub {
    Tub::new(
        Identity::generate().unwrap(),
        Arc::new(Registry::with_tcp()),
        TubConfig::default().dial_timeout(STEP),
    )
    .unwrap()
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A brand-new client Tub reaches the server, completes a call, and leaves cleanly.
async fn fresh_client_is_served(s: &Server) {
    let client = client_tub();
    let f: FactoryRef = within("a fresh client reaches the server", client.get(&s.furl))
        .await
        .expect("a fresh client reaches the server");
    let n = within("a fresh client's call", f.ping(42)).await;
    assert_eq!(n.unwrap(), 42);
    client.shutdown().await;
}

/// The server's `tracing` output (folio_rpc at debug level), for the whole test binary.
fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("folio_rpc=debug"))
            .with_ansi(false)
            .with_writer(move || Sink(buf))
            .try_init()
            .expect("no other subscriber in this binary");
        buf
    })
}

fn log_lines() -> Vec<String> {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Where the log is now.
fn log_mark() -> usize {
    log_lines().len()
}

/// Waits for a log line after `mark` that contains every one of `parts`.
async fn logged_since(mark: usize, parts: &[&str]) -> String {
    let deadline = Instant::now() + NOTICE;
    loop {
        let lines = log_lines();
        if let Some(l) = lines
            .iter()
            .skip(mark)
            .find(|l| parts.iter().all(|p| l.contains(p)))
        {
            return l.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "no log line with {parts:?} within {NOTICE:?}; since the mark:\n{}",
                lines[mark.min(lines.len())..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// postcard's unsigned varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A peer that speaks the protocol by hand over a completed handshake: it sends exactly the
/// frames a test writes and never anything else (no decrefs, no pongs).
struct RawPeer {
    reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: FrameWriter<WriteHalf<TlsStream<TcpStream>>>,
    tubid: TubId,
    next_id: u64,
}

#[derive(Debug)]
enum Body {
    Ok(Vec<u8>, Vec<RefDesc>),
    AppError,
    Refused(Refusal),
}

#[derive(Debug)]
enum Got {
    Answer(u64, Body),
    Decref(u64, u64),
    Other(String),
}

impl RawPeer {
    async fn connect(s: &Server) -> RawPeer {
        let hs = Handshaker::new(
            Arc::new(Identity::generate().unwrap()),
            HandshakeConfig::default(),
        )
        .unwrap();
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let est = within("the raw peer's handshake", hs.connect(tcp, s.tub.tubid()))
            .await
            .expect("the raw peer's handshake");
        RawPeer {
            reader: est.reader,
            writer: est.writer,
            tubid: hs.tubid(),
            next_id: 1,
        }
    }

    async fn send(&mut self, msg: &Message<'_>) {
        let frame = encode_frame(msg, self.writer.max_len()).unwrap();
        self.send_bytes(&frame).await;
    }

    /// Any bytes inside the TLS stream (a frame, or part of one), flushed.
    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_encoded(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    async fn call(&mut self, target: u64, method: &str, args: &[u8], refs: Vec<RefDesc>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let interface = if target == ROOT_OBJECT {
            "folio.root"
        } else {
            FACTORY
        };
        self.send(&Message::Call {
            id,
            target,
            interface,
            method,
            args,
            refs,
        })
        .await;
        id
    }

    async fn recv(&mut self) -> Got {
        let frame = within("a frame from the server", self.reader.next_frame())
            .await
            .expect("a frame from the server")
            .expect("the server closed the connection");
        match message::decode(frame).expect("the server sends valid messages") {
            Message::Answer { id, body } => Got::Answer(
                id,
                match body {
                    AnswerBody::Ok { value, refs } => Body::Ok(value.to_vec(), refs),
                    AnswerBody::AppError { .. } => Body::AppError,
                    AnswerBody::Refused(r) => Body::Refused(r),
                },
            ),
            Message::Decref { target, count } => Got::Decref(target, count),
            other => Got::Other(format!("{other:?}")),
        }
    }

    /// Reads until the answer to call `id`; returns it with the decrefs that came first.
    async fn answer(&mut self, id: u64) -> (Body, Vec<(u64, u64)>) {
        let mut decrefs = Vec::new();
        loop {
            match self.recv().await {
                Got::Answer(got, body) if got == id => return (body, decrefs),
                Got::Decref(target, count) => decrefs.push((target, count)),
                Got::Answer(other, body) => panic!("answer {other} ({body:?}) before answer {id}"),
                Got::Other(m) => panic!("unexpected while waiting for answer {id}: {m}"),
            }
        }
    }

    /// Resolves the factory's swissnum on the root: its export id on this connection.
    async fn factory(&mut self) -> u64 {
        let mut args = Vec::new();
        varint(SWISSNUM.len() as u64, &mut args);
        args.extend_from_slice(SWISSNUM.as_bytes());
        let id = self.call(ROOT_OBJECT, "get_reference", &args, vec![]).await;
        match self.answer(id).await.0 {
            Body::Ok(_, refs) => match refs.as_slice() {
                [RefDesc::Mine { id, interface }] if interface == FACTORY => *id,
                other => panic!("the root answered {other:?}"),
            },
            other => panic!("the root answered {other:?}"),
        }
    }
}

/// `keep`/`count` arguments naming references 0..n of the call's table.
fn ref_list_args(n: usize) -> Vec<u8> {
    let mut args = Vec::new();
    varint(n as u64, &mut args);
    for i in 0..n {
        varint(i as u64, &mut args);
    }
    args
}

/// A well-behaved client that calls the server over and over until told to stop; every call
/// must succeed (the task panics otherwise). Counts its rounds in `rounds`.
struct GoodClient {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(Tub, FactoryRef)>,
}

impl GoodClient {
    async fn start(furl: Furl) -> GoodClient {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(good_client_loop(furl, stop.clone(), rounds.clone()));
        let g = GoodClient { stop, rounds, task };
        g.progresses("the good client starts").await;
        g
    }

    /// Waits until the good client completes three more rounds (it is being served now).
    async fn progresses(&self, what: &str) {
        let from = self.rounds.load(Ordering::SeqCst);
        let what = format!("the good client is served: {what}");
        eventually(NOTICE, &what, || {
            self.task.is_finished() || self.rounds.load(Ordering::SeqCst) >= from + 3
        })
        .await;
        assert!(
            !self.task.is_finished(),
            "{what}: its task ended (a call failed)"
        );
    }

    async fn stop(self) -> (Tub, FactoryRef, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let (tub, f) = within("the good client stops", self.task)
            .await
            .expect("every call of the good client succeeded");
        (tub, f, self.rounds.load(Ordering::SeqCst))
    }
}

async fn good_client_loop(
    furl: Furl,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> (Tub, FactoryRef) {
    let tub = client_tub();
    let f: FactoryRef = within("the good client connects", tub.get(&furl))
        .await
        .expect("the good client connects");
    let mine = State::new();
    let mut rounds = 0u64;
    while !stop.load(Ordering::SeqCst) {
        assert_eq!(within("ping", f.ping(rounds)).await.unwrap(), rounds);
        // A fresh object from the server, used and released ...
        let t = within("make", f.make())
            .await
            .expect("the good client's make");
        within("thing", t.id()).await.unwrap();
        drop(t);
        // ... and two of ours, sent and released.
        let sent = within("count", f.count(vec![mine.thing(), mine.thing()])).await;
        assert_eq!(sent.expect("the good client's count"), 2);
        rounds += 1;
        count.store(rounds, Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
    (tub, f)
}

// ---------------------------------------------------------------------------------------------
// 1. Reference floods.

/// A client that keeps every fresh reference it is handed makes the server export up to
/// `max_exports` objects on its connection and not one more: each further answer that would
/// export one is refused with `Refusal::Failed` naming the limit, the connection stays up,
/// released references make room again, a refused multi-reference answer leaves nothing
/// behind, and another client is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_flood_stops_at_max_exports() {
    const MAX: usize = 64;
    let s = server(config().max_exports(MAX)).await;
    let good = GoodClient::start(s.furl.clone()).await;

    let hostile = client_tub();
    let f: FactoryRef = within("get", hostile.get(&s.furl)).await.unwrap();
    let peer = hostile.tubid();
    let base = s.tub.exports_to(&peer);
    assert_eq!(base, 1, "the factory itself is exported to the client");

    let limit_msg = format!("this connection already exports {MAX} objects (the limit)");
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..4 * MAX {
        match within("make", f.make()).await {
            Ok(t) => held.push(t),
            Err(CallError::Refused(Refusal::Failed(m))) if m == limit_msg => refused += 1,
            Err(e) => panic!("unexpected error from an export flood: {e:?}"),
        }
        assert!(s.tub.exports_to(&peer) <= MAX);
    }
    assert_eq!(
        held.len(),
        MAX - base,
        "every export up to the limit succeeds"
    );
    assert_eq!(refused, 4 * MAX - (MAX - base));
    assert_eq!(s.tub.exports_to(&peer), MAX);
    good.progresses("the flooding connection is at max_exports")
        .await;

    // The flooding client's connection is still up, for calls and for what it holds.
    assert_eq!(within("ping", f.ping(5)).await.unwrap(), 5);
    assert!(within("thing", held[0].id()).await.unwrap() >= 1);

    // Releasing three makes room for exactly three.
    held.truncate(held.len() - 3);
    eventually(NOTICE, "three exports released", || {
        s.tub.exports_to(&peer) == MAX - 3
    })
    .await;
    // An answer carrying five new references does not fit: refused whole, and the three it
    // managed to export before failing are rolled back.
    match within("make_many", f.make_many(5)).await {
        Err(CallError::Refused(Refusal::Failed(m))) => assert_eq!(m, limit_msg),
        other => panic!("make_many(5) over the limit: {other:?}"),
    }
    assert_eq!(s.tub.exports_to(&peer), MAX - 3);
    let three = within("make_many", f.make_many(3))
        .await
        .expect("exactly fits");
    assert_eq!(three.len(), 3);
    assert_eq!(s.tub.exports_to(&peer), MAX);
    held.extend(three);
    assert!(matches!(
        within("make", f.make()).await,
        Err(CallError::Refused(Refusal::Failed(m))) if m == limit_msg
    ));
    let flood_time = started.elapsed();

    // The other client was served throughout, and still is.
    good.progresses("after the flood").await;
    let (good_tub, gf, rounds) = good.stop().await;
    let t = within("make", gf.make())
        .await
        .expect("the good client after the flood");
    assert_eq!(
        s.tub.exports_to(&good_tub.tubid()),
        2,
        "its factory and this one"
    );
    drop(t);
    assert_eq!(s.tub.connection_count(), 2);
    // What the server holds is exactly what it exports: the objects of every refused
    // answer were dropped, and so was everything the good client let go.
    eventually(NOTICE, "the server holds only the exported Things", || {
        s.state.live() == held.len() && s.tub.exports_to(&good_tub.tubid()) == 1
    })
    .await;

    // The flood's objects live exactly as long as the flooding connection.
    assert_eq!(held.len(), MAX - base);
    hostile.shutdown().await;
    eventually(NOTICE, "the flooding connection closes", || {
        s.tub.connection_count() == 1 && s.tub.exports_to(&peer) == 0
    })
    .await;
    drop(held);
    good_tub.shutdown().await;
    eventually(NOTICE, "every Thing the server made is dropped", || {
        s.state.live() == 0 && s.tub.connection_count() == 0
    })
    .await;
    fresh_client_is_served(&s).await;
    eprintln!(
        "export flood: {} calls, {refused} refused, in {flood_time:?}; the good client did {rounds} rounds meanwhile",
        4 * MAX + 3
    );
}

/// A client that sends fresh references of its own, which the server keeps, makes the server
/// import up to `max_imports` of them on its connection and not one more: a call that carries
/// a new one beyond the limit is refused with `Refusal::BadReference` naming the limit, every
/// reference of the refused call is released again (the sender's export table comes back to
/// exactly what the server holds), a reference the server already holds still passes, and
/// another client is served throughout. The other way round, a client at its own import
/// limit refuses an answer full of new references, and the server's export table for it
/// comes back to where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_flood_stops_at_max_imports() {
    const MAX: usize = 64;
    let s = server(config().max_imports(MAX)).await;
    let server_id = s.tub.tubid();
    let good = GoodClient::start(s.furl.clone()).await;

    let hostile = client_tub();
    let f: FactoryRef = within("get", hostile.get(&s.furl)).await.unwrap();
    let mine = State::new();
    let fresh = |n: usize| (0..n).map(|_| mine.thing()).collect::<Vec<_>>();
    let limit_msg =
        format!("the peer sent more than {MAX} references on this connection (the limit)");
    let started = Instant::now();

    // 60 fresh references in six calls: all imported and kept.
    let first = mine.thing();
    assert_eq!(
        within("keep", f.keep(vec![first.clone()])).await.unwrap(),
        1
    );
    for i in 1..6 {
        let kept = within("keep", f.keep(fresh(10))).await.unwrap();
        assert_eq!(kept, 1 + 10 * i);
    }
    assert_eq!(within("keep", f.keep(fresh(9))).await.unwrap(), 60);
    assert_eq!(hostile.exports_to(&server_id), 60);

    // Ten more do not fit (the server gets four in, then refuses the fifth): the call is
    // refused, the method never runs, and every one of the ten is released again.
    match within("keep", f.keep(fresh(10))).await {
        Err(CallError::Refused(Refusal::BadReference(m))) => assert_eq!(m, limit_msg),
        other => panic!("keep(10) over the limit: {other:?}"),
    }
    eventually(
        NOTICE,
        "the refused call's references are all released",
        || hostile.exports_to(&server_id) == 60 && mine.live() == 60,
    )
    .await;

    // Exactly four more fit.
    assert_eq!(within("keep", f.keep(fresh(4))).await.unwrap(), 64);
    assert_eq!(hostile.exports_to(&server_id), MAX);
    // A reference the server already holds is no new import: it passes at the limit.
    assert_eq!(
        within("keep", f.keep(vec![first.clone()])).await.unwrap(),
        65
    );
    assert_eq!(hostile.exports_to(&server_id), MAX);
    // One new one is refused, and released.
    match within("keep", f.keep(fresh(1))).await {
        Err(CallError::Refused(Refusal::BadReference(m))) => assert_eq!(m, limit_msg),
        other => panic!("keep(1) at the limit: {other:?}"),
    }
    eventually(NOTICE, "the refused reference is released", || {
        hostile.exports_to(&server_id) == MAX && mine.live() == MAX
    })
    .await;
    good.progresses("the flooding connection is at max_imports")
        .await;
    // The connection is up; calls without references pass.
    assert_eq!(within("ping", f.ping(9)).await.unwrap(), 9);
    assert_eq!(s.tub.connection_count(), 2);

    // Once the server lets go, the client's table drains and new references are taken again.
    assert_eq!(within("clear", f.clear()).await.unwrap(), 65);
    eventually(NOTICE, "everything the server held is released", || {
        hostile.exports_to(&server_id) == 0 && mine.live() == 1 // `first`, held here
    })
    .await;
    assert_eq!(within("keep", f.keep(fresh(10))).await.unwrap(), 10);
    assert_eq!(within("clear", f.clear()).await.unwrap(), 10);
    let flood_time = started.elapsed();

    // The well-behaved client was served throughout, and still is.
    good.progresses("after the flood").await;
    let (good_tub, gf, rounds) = good.stop().await;
    assert_eq!(
        within("count", gf.count(vec![mine.thing()])).await.unwrap(),
        1
    );
    eventually(NOTICE, "the good client's references are released", || {
        good_tub.exports_to(&server_id) == 0
    })
    .await;

    // The other direction: a client whose own max_imports is small refuses an answer that
    // carries more new references than it may take. What the server exported for that
    // answer is released again: its table for the client is back to the factory alone.
    let small = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(Registry::with_tcp()),
        TubConfig::default().max_imports(8).dial_timeout(STEP),
    )
    .unwrap();
    let sf: FactoryRef = within("get", small.get(&s.furl)).await.unwrap();
    assert_eq!(s.tub.exports_to(&small.tubid()), 1);
    match within("make_many", sf.make_many(12)).await {
        Err(CallError::Refused(Refusal::BadReference(m))) => assert_eq!(
            m,
            "the peer sent more than 8 references on this connection (the limit)"
        ),
        other => panic!("an answer over the client's import limit: {other:?}"),
    }
    eventually(NOTICE, "the refused answer's exports are released", || {
        s.tub.exports_to(&small.tubid()) == 1
    })
    .await;
    let seven = within("make_many", sf.make_many(7)).await.expect("fits");
    assert_eq!(s.tub.exports_to(&small.tubid()), 8);
    drop(seven);

    for t in [&hostile, &good_tub, &small] {
        t.shutdown().await;
    }
    eventually(
        NOTICE,
        "every connection closed, every Thing dropped",
        || s.tub.connection_count() == 0 && s.state.live() == 0,
    )
    .await;
    fresh_client_is_served(&s).await;
    eprintln!(
        "import flood: done in {flood_time:?}; the good client did {rounds} rounds meanwhile"
    );
}

/// On the wire: one call whose reference table names 100 new objects, with `max_imports` 64.
/// The server refuses it with `BadReference` and releases every one of the 100 (a `Decref`
/// for each, count 1, before the refusal), keeps none of them (exactly 64 new ones fit in the
/// next call), refuses and releases the 65th, and serves a fresh client meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reference_table_over_max_imports() {
    const MAX: usize = 64;
    const SENT: u64 = 100;
    let s = server(config().max_imports(MAX)).await;
    let limit_msg =
        format!("the peer sent more than {MAX} references on this connection (the limit)");
    let mine = |ids: std::ops::Range<u64>| -> Vec<RefDesc> {
        ids.map(|id| RefDesc::Mine {
            id,
            interface: THING.into(),
        })
        .collect()
    };
    let mut raw = RawPeer::connect(&s).await;
    let factory = raw.factory().await;

    let id = raw
        .call(
            factory,
            "keep",
            &ref_list_args(SENT as usize),
            mine(1000..1000 + SENT),
        )
        .await;
    let (body, decrefs) = raw.answer(id).await;
    match body {
        Body::Refused(Refusal::BadReference(m)) => assert_eq!(m, limit_msg),
        other => panic!("a table of {SENT} new references: {other:?}"),
    }
    let mut released: Vec<u64> = decrefs
        .iter()
        .map(|&(target, count)| {
            assert_eq!(count, 1, "each was sent once");
            target
        })
        .collect();
    released.sort_unstable();
    assert_eq!(
        released,
        (1000..1000 + SENT).collect::<Vec<_>>(),
        "every reference of the refused call is released"
    );

    // The server kept none of them: exactly MAX new ones fit now, and are kept.
    let id = raw
        .call(
            factory,
            "keep",
            &ref_list_args(MAX),
            mine(2000..2000 + MAX as u64),
        )
        .await;
    let (body, decrefs) = raw.answer(id).await;
    assert!(decrefs.is_empty(), "kept references are not released");
    match body {
        Body::Ok(value, refs) => {
            assert_eq!(value, [MAX as u8], "the server holds {MAX}");
            assert!(refs.is_empty());
        }
        other => panic!("keep({MAX}): {other:?}"),
    }
    // The next new one is refused and released.
    let id = raw
        .call(factory, "keep", &ref_list_args(1), mine(3000..3001))
        .await;
    let (body, decrefs) = raw.answer(id).await;
    assert!(
        matches!(&body, Body::Refused(Refusal::BadReference(m)) if *m == limit_msg),
        "{body:?}"
    );
    assert_eq!(decrefs, [(3000, 1)]);

    // The connection still works, and other clients are served.
    let mut args = Vec::new();
    varint(77, &mut args);
    let id = raw.call(factory, "ping", &args, vec![]).await;
    assert!(matches!(raw.answer(id).await.0, Body::Ok(v, _) if v == [77]));
    fresh_client_is_served(&s).await;
    drop(raw);
    eventually(NOTICE, "the raw peer's connection is forgotten", || {
        s.tub.connection_count() == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Disconnects in every phase.

/// The first bytes a real Folio client sends to `target`: the prelude request and, in the same
/// write, its TLS ClientHello.
async fn client_first_flight(target: TubId) -> Vec<u8> {
    let hs = Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        HandshakeConfig::default(),
    )
    .unwrap();
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let client = tokio::spawn(async move {
        let _ = hs.connect(a, target).await;
    });
    let flight = read_first_flight(&mut b).await;
    client.abort();
    flight
}

/// Reads a prelude request and the TLS record behind it.
async fn read_first_flight(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    const P: usize = prelude::MAX_REQUEST_LEN;
    let mut buf = vec![0u8; P + 5];
    within("the client's first flight", r.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(buf[P], 0x16, "a TLS handshake record follows the prelude");
    let len = u16::from_be_bytes([buf[P + 3], buf[P + 4]]) as usize;
    let mut record = vec![0u8; len];
    within("the ClientHello", r.read_exact(&mut record))
        .await
        .unwrap();
    buf.extend_from_slice(&record);
    buf
}

/// Sends `bytes` on a fresh TCP connection, then closes it.
async fn send_and_close(s: &Server, bytes: &[u8]) {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    drop(tcp);
}

/// A real client whose bytes pass through us. Its first flight reaches the server whole; once
/// it has the server's whole flight and answers it, only `extra` bytes of that answer are
/// passed on, and the connection is cut.
async fn cut_in_tls(s: &Server, extra: usize) {
    let hs = Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        HandshakeConfig::default(),
    )
    .unwrap();
    let target = s.tub.tubid();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = tokio::spawn(async move {
        let _ = hs.connect(a, target).await;
    });
    let (mut from_client, mut to_client) = tokio::io::split(b);
    let (mut from_server, mut to_server) = TcpStream::connect(s.addr).await.unwrap().into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let first = read_first_flight(&mut from_client).await;
    to_server.write_all(&first).await.unwrap();
    // The client speaks again only once the server's flight has reached it.
    let mut buf = vec![0u8; 16 * 1024];
    let n = within("the client's second flight", from_client.read(&mut buf))
        .await
        .unwrap();
    assert!(
        n > extra,
        "the client's second flight ({n} bytes) is longer than {extra}"
    );
    to_server.write_all(&buf[..extra]).await.unwrap();
    drop(to_server);
    down.abort();
    client.abort();
}

/// Completes the prelude and TLS by hand, then sends `bytes` inside TLS and leaves, with or
/// without a TLS close_notify.
async fn after_tls(s: &Server, bytes: &[u8], close_notify: bool) {
    let target = s.tub.tubid();
    let id = Identity::generate().unwrap();
    let cfg = folio_rpc::tls::client_config(&id).unwrap();
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&prelude::encode_request(&target))
        .await
        .unwrap();
    let mut answer = [0u8; prelude::ANSWER_LEN];
    within("the prelude answer", tcp.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, prelude::encode_answer(prelude::Status::Proceed));
    let mut tls = TlsStream::client(tcp, cfg, &target).unwrap();
    within("TLS", tls.handshake(1 << 16)).await.unwrap();
    if !bytes.is_empty() {
        tls.write_all(bytes).await.unwrap();
        tls.flush().await.unwrap();
    }
    if close_notify {
        tls.shutdown().await.unwrap();
    }
    drop(tls);
}

/// Runs one disconnect against the server and checks its aftermath: the server logs the
/// failed handshake with the expected reason within `NOTICE` (the phase timeouts are 20 s, so
/// a timeout cannot pass for noticing), admits no connection, logs nothing else, and serves a
/// fresh client afterwards. Returns how long the server took to notice.
async fn handshake_case(
    s: &Server,
    name: &str,
    expect: &str,
    hostile: impl std::future::Future<Output = ()>,
) -> Duration {
    let mark = log_mark();
    let t = Instant::now();
    within(name, hostile).await;
    let line = logged_since(mark, &["inbound handshake failed", expect]).await;
    let noticed = t.elapsed();
    assert_eq!(
        s.tub.connection_count(),
        0,
        "{name}: no connection admitted"
    );
    fresh_client_is_served(s).await;
    eventually(NOTICE, "the fresh client's connection closes", || {
        s.tub.connection_count() == 0
    })
    .await;
    let failures: Vec<String> = log_lines()
        .into_iter()
        .skip(mark)
        .filter(|l| l.contains("inbound handshake failed"))
        .collect();
    assert_eq!(
        failures,
        std::slice::from_ref(&line),
        "{name}: exactly one failed handshake"
    );
    eprintln!("{name}: noticed in {noticed:?}: {}", line.trim());
    noticed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_in_every_handshake_phase() {
    let s = server(config()).await;
    let request = prelude::encode_request(&s.tub.tubid());
    let flight = client_first_flight(s.tub.tubid()).await;
    assert_eq!(flight[..request.len()], request[..]);
    const PRELUDE: &str = "the peer closed the connection during the prelude phase";
    const TLS: &str = "the peer closed the connection during the TLS phase";
    const HELLO: &str = "the peer closed the connection during the hello phase";
    let mut slowest = Duration::ZERO;

    // The prelude, cut after k of its 63 bytes (0: connect and leave).
    for k in [0, 1, 4, 7, 8, 9, 10, 11, 12, 40, 62] {
        let name = format!("prelude: {k} of {} bytes", request.len());
        let d = handshake_case(&s, &name, PRELUDE, send_and_close(&s, &request[..k])).await;
        slowest = slowest.max(d);
    }
    // The whole prelude and nothing more: the server has answered, and waits in TLS.
    let d = handshake_case(&s, "prelude only", TLS, send_and_close(&s, &request)).await;
    slowest = slowest.max(d);
    // Half a ClientHello; then a whole one, and gone.
    let half = &flight[..request.len() + 5 + (flight.len() - request.len() - 5) / 2];
    let d = handshake_case(&s, "half a ClientHello", TLS, send_and_close(&s, half)).await;
    slowest = slowest.max(d);
    let d = handshake_case(
        &s,
        "after the ClientHello",
        TLS,
        send_and_close(&s, &flight),
    )
    .await;
    slowest = slowest.max(d);
    // Mid-handshake: the server's flight is out, the client's answer never arrives, or only
    // its first 3 bytes.
    for extra in [0, 3] {
        let name = format!("mid-TLS: {extra} bytes of the client's second flight");
        let d = handshake_case(&s, &name, TLS, cut_in_tls(&s, extra)).await;
        slowest = slowest.max(d);
    }
    // TLS complete; the hello never comes, or comes in part, with or without close_notify.
    let mut partial_hello = vec![0, 0, 0, 55, 1, 1, 32];
    partial_hello.extend_from_slice(&[0xab; 17]);
    for (name, bytes, close_notify) in [
        ("before the hello, no close_notify", &[][..], false),
        ("before the hello, close_notify", &[][..], true),
        ("2 bytes of the hello's header", &[0, 0][..], false),
        (
            "24 of the hello's 59 bytes, no close_notify",
            &partial_hello[..],
            false,
        ),
        (
            "24 of the hello's 59 bytes, close_notify",
            &partial_hello[..],
            true,
        ),
    ] {
        let d = handshake_case(&s, name, HELLO, after_tls(&s, bytes, close_notify)).await;
        slowest = slowest.max(d);
    }
    assert!(slowest < NOTICE);
    eprintln!("handshake disconnects: the slowest was noticed in {slowest:?}");
}

/// After the handshake: the peer announces a frame and leaves inside it. The server closes the
/// connection with a reason that says so, forgets it, and serves a fresh client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_inside_a_frame() {
    let s = server(config()).await;
    let mut frame = 1000u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x55; 100]);
    let big = {
        let mut b = (900 * 1024u32).to_be_bytes().to_vec();
        b.resize(4 + 64 * 1024, 0x55);
        b
    };
    let cases: [(&str, &[u8], bool, &[&str]); 5] = [
        (
            "header and 100 of 1000 bytes, close_notify",
            &frame,
            true,
            &["read failed: the stream ended inside a frame (104 of 1004 bytes)"],
        ),
        (
            "2 of 4 header bytes, close_notify",
            &frame[..2],
            true,
            &["read failed: the stream ended inside a frame (2 of 4 bytes)"],
        ),
        (
            "64 KiB of a 900 KiB frame, close_notify",
            &big,
            true,
            &["read failed: the stream ended inside a frame (65540 of 921604 bytes)"],
        ),
        (
            "header and 100 of 1000 bytes, no close_notify",
            &frame,
            false,
            &["read failed", "close_notify"],
        ),
        (
            "3 of 4 header bytes, no close_notify",
            &frame[..3],
            false,
            &["read failed", "close_notify"],
        ),
    ];
    for (name, bytes, close_notify, expect) in cases {
        let mark = log_mark();
        let mut raw = RawPeer::connect(&s).await;
        let peer = raw.tubid.to_string();
        eventually(NOTICE, "the raw peer is connected", || {
            s.tub.connection_count() == 1
        })
        .await;
        let t = Instant::now();
        raw.send_bytes(bytes).await;
        if close_notify {
            raw.writer.shutdown().await.unwrap();
        }
        drop(raw);
        let mut parts = vec!["connection closed", peer.as_str()];
        parts.extend_from_slice(expect);
        let line = logged_since(mark, &parts).await;
        eventually(NOTICE, "the connection is forgotten", || {
            s.tub.connection_count() == 0
        })
        .await;
        let noticed = t.elapsed();
        fresh_client_is_served(&s).await;
        eventually(NOTICE, "the fresh client's connection closes", || {
            s.tub.connection_count() == 0
        })
        .await;
        eprintln!("mid-frame, {name}: noticed in {noticed:?}: {}", line.trim());
    }
}

/// The peer leaves in the middle of calls: right after sending one; while a slow method runs
/// (holding an object the server exported to it); and while a slow method holds the only
/// inbound slot with the queue full behind it and more calls unread in the socket. Each time
/// the server closes and forgets the connection, releases what it exported on it, drops the
/// orphaned methods' futures once they end (their answers go nowhere, without error), and
/// serves a fresh client.
///
/// In the last case the server has stopped reading that peer (backpressure), so it cannot see
/// the close until a slot comes free: the test opens the gate after 2 s and requires the
/// clean-up from then on; it prints whether the close was seen earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_in_the_middle_of_a_call() {
    let s = server(config().max_inbound_calls(1).max_queued_calls(1)).await;
    let st = &s.state;
    let tag = |n: u64| {
        let mut a = Vec::new();
        varint(n, &mut a);
        a
    };

    // (a) A call, and gone before its answer.
    let mark = log_mark();
    let mut raw = RawPeer::connect(&s).await;
    let peer = raw.tubid.to_string();
    let factory = raw.factory().await;
    raw.call(factory, "ping", &tag(7), vec![]).await;
    drop(raw);
    let line = logged_since(mark, &["connection closed", &peer]).await;
    eventually(NOTICE, "(a) the connection is forgotten", || {
        s.tub.connection_count() == 0
    })
    .await;
    eprintln!("mid-call (a), gone before the answer: {}", line.trim());
    fresh_client_is_served(&s).await;

    // (b) A slow call: the method is still running when the peer leaves.
    let mark = log_mark();
    let mut raw = RawPeer::connect(&s).await;
    let peer = raw.tubid.to_string();
    let factory = raw.factory().await;
    let id = raw.call(factory, "make", &[], vec![]).await;
    assert!(matches!(raw.answer(id).await.0, Body::Ok(_, refs) if refs.len() == 1));
    assert_eq!(st.live(), 1, "one object exported to the raw peer");
    raw.call(factory, "slow", &tag(1), vec![]).await;
    eventually(NOTICE, "(b) the slow method starts", || {
        st.slow_started.load(Ordering::SeqCst) == 1
    })
    .await;
    let t = Instant::now();
    drop(raw);
    let line = logged_since(mark, &["connection closed", &peer]).await;
    eventually(NOTICE, "(b) connection forgotten, exports released", || {
        s.tub.connection_count() == 0 && st.live() == 0
    })
    .await;
    eprintln!(
        "mid-call (b), slow method running: noticed in {:?}: {}",
        t.elapsed(),
        line.trim()
    );
    assert_eq!(
        st.slow_finished.load(Ordering::SeqCst),
        0,
        "the gate is shut"
    );
    fresh_client_is_served(&s).await;
    st.gate.send_replace(true);
    eventually(
        NOTICE,
        "(b) the orphaned method's future is dropped",
        || st.slow_dropped.load(Ordering::SeqCst) == 1,
    )
    .await;
    st.gate.send_replace(false);
    assert_eq!(s.tub.connection_count(), 0, "its answer revives nothing");
    fresh_client_is_served(&s).await;

    // (c) One slow call running (the only slot), one queued (the whole queue), two more
    // sent behind them: the server has stopped reading this peer when it leaves.
    let mark = log_mark();
    let mut raw = RawPeer::connect(&s).await;
    let peer = raw.tubid.to_string();
    let factory = raw.factory().await;
    let id = raw.call(factory, "make", &[], vec![]).await;
    assert!(matches!(raw.answer(id).await.0, Body::Ok(_, refs) if refs.len() == 1));
    assert_eq!(st.live(), 1, "one object exported to the raw peer");
    let before = st.slow_started.load(Ordering::SeqCst);
    for n in 1..=4 {
        raw.call(factory, "slow", &tag(n), vec![]).await;
    }
    eventually(NOTICE, "(c) the first slow method starts", || {
        st.slow_started.load(Ordering::SeqCst) == before + 1
    })
    .await;
    let t = Instant::now();
    drop(raw);
    // Give the server a moment in which it could notice without any slot coming free.
    let noticed_while_full = timeout(Duration::from_secs(2), async {
        while s.tub.connection_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    st.gate.send_replace(true);
    let line = logged_since(mark, &["connection closed", &peer]).await;
    eventually(NOTICE, "(c) connection forgotten, exports released", || {
        s.tub.connection_count() == 0 && st.live() == 0
    })
    .await;
    let noticed = t.elapsed();
    eventually(
        NOTICE,
        "(c) every started method's future is dropped",
        || st.slow_dropped.load(Ordering::SeqCst) == st.slow_started.load(Ordering::SeqCst),
    )
    .await;
    let ran = st.slow_started.load(Ordering::SeqCst) - before;
    eprintln!(
        "mid-call (c), slot and queue full: noticed in {noticed:?} (before a slot came free: \
         {noticed_while_full}); {ran} of the 4 calls ran: {}",
        line.trim()
    );
    fresh_client_is_served(&s).await;
    eventually(NOTICE, "no connection left", || {
        s.tub.connection_count() == 0
    })
    .await;
}

/// The case the reader cannot see by itself: a slow method holds the only slot, the queue is
/// full, and the peer leaves. With a keepalive configured, the server's ping finds the dead
/// stream while the method still runs: the connection is closed and forgotten, its exports
/// released, the queued call and the unread ones are dropped without ever running, and the
/// orphaned method's answer is discarded when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_behind_backpressure_is_found_by_keepalive() {
    let s = server(
        config()
            .max_inbound_calls(1)
            .max_queued_calls(1)
            .keepalive(Some(Duration::from_millis(100))),
    )
    .await;
    let st = &s.state;
    let mark = log_mark();
    let mut raw = RawPeer::connect(&s).await;
    let peer = raw.tubid.to_string();
    let factory = raw.factory().await;
    let id = raw.call(factory, "make", &[], vec![]).await;
    assert!(matches!(raw.answer(id).await.0, Body::Ok(_, refs) if refs.len() == 1));
    for n in 1..=4u8 {
        raw.call(factory, "slow", &[n], vec![]).await;
    }
    eventually(NOTICE, "the first slow method starts", || {
        st.slow_started.load(Ordering::SeqCst) == 1
    })
    .await;
    let t = Instant::now();
    drop(raw);
    let line = logged_since(mark, &["connection closed", &peer, "write failed"]).await;
    eventually(NOTICE, "connection forgotten, exports released", || {
        s.tub.connection_count() == 0 && st.live() == 0
    })
    .await;
    let noticed = t.elapsed();
    assert_eq!(
        st.slow_finished.load(Ordering::SeqCst),
        0,
        "the gate is shut"
    );
    fresh_client_is_served(&s).await;
    st.gate.send_replace(true);
    eventually(NOTICE, "the orphaned method's future is dropped", || {
        st.slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    // Give a wrongly kept queued call the time to start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        st.slow_started.load(Ordering::SeqCst),
        1,
        "no call of the dead peer starts after the close"
    );
    assert_eq!(s.tub.connection_count(), 0);
    eprintln!(
        "dead peer behind backpressure: found by keepalive in {noticed:?}: {}",
        line.trim()
    );
}
