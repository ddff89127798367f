//! Promise pipelining (docs/protocol.md §8): calls sent to a reference that an answer still
//! on its way will carry. They are held by the callee until that answer exists, then run in
//! order; they fail with `Refusal::Broken` when the promised call fails; a lost connection,
//! a deadline, a cancel and a flood each end them as specified; what the callee keeps goes
//! with the caller's `Finish`; and a peer of an older version still gets every call right.
//!
//! Every wait is bounded by `HUNG`, so that a build that holds a call for ever fails here
//! instead of hanging.

mod common;

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Grid, Net};
use folio_rpc::{
    interface, CallError, Identity, ProtocolError, ReferenceError, Refusal, Tub, TubConfig,
    TypedRef,
};

const HUNG: Duration = Duration::from_secs(20);

#[interface(name = "test.pipe.dir.v1")]
pub trait Dir {
    /// A file named `name`, once the test opens the gate (if `gated`). Fails for "missing".
    async fn open(&self, name: String, gated: bool) -> Result<FileRef, String>;
    /// Two files, in order.
    async fn pair(&self) -> Result<(FileRef, FileRef), String>;
    /// A subdirectory.
    async fn sub(&self, name: String) -> Result<DirRef, String>;
}

#[interface(name = "test.pipe.file.v1")]
pub trait File {
    /// Appends `n` to the file's log; returns the log's length.
    async fn append(&self, n: u64) -> Result<usize, String>;
    /// The file's name.
    async fn name(&self) -> Result<String, String>;
    /// Appends `n`, one-way.
    #[oneway]
    async fn note(&self, n: u64);
}

#[derive(Default)]
struct State {
    /// Every append, as (file name, n), in the order they ran.
    log: Mutex<Vec<(String, u64)>>,
    gate: tokio::sync::Notify,
    opened: Mutex<Vec<String>>,
}

impl State {
    fn log_of(&self, name: &str) -> Vec<u64> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(f, _)| f == name)
            .map(|(_, n)| *n)
            .collect()
    }
}

struct DirSvc(Arc<State>, String);
struct FileSvc(Arc<State>, String);

impl Dir for DirSvc {
    async fn open(&self, name: String, gated: bool) -> Result<FileRef, String> {
        if gated {
            self.0.gate.notified().await;
        }
        self.0.opened.lock().unwrap().push(name.clone());
        if name == "missing" {
            return Err(format!("no file {name}"));
        }
        Ok(FileRef::serve(FileSvc(
            self.0.clone(),
            format!("{}{name}", self.1),
        )))
    }
    async fn pair(&self) -> Result<(FileRef, FileRef), String> {
        Ok((
            FileRef::serve(FileSvc(self.0.clone(), "first".into())),
            FileRef::serve(FileSvc(self.0.clone(), "second".into())),
        ))
    }
    async fn sub(&self, name: String) -> Result<DirRef, String> {
        Ok(DirRef::serve(DirSvc(
            self.0.clone(),
            format!("{}{name}/", self.1),
        )))
    }
}

impl File for FileSvc {
    async fn append(&self, n: u64) -> Result<usize, String> {
        let mut log = self.0.log.lock().unwrap();
        log.push((self.1.clone(), n));
        Ok(log.iter().filter(|(f, _)| *f == self.1).count())
    }
    async fn name(&self) -> Result<String, String> {
        Ok(self.1.clone())
    }
    async fn note(&self, n: u64) {
        self.0.log.lock().unwrap().push((self.1.clone(), n));
    }
}

struct Pair {
    grid: Grid,
    server: Tub,
    client: Tub,
    state: Arc<State>,
    dir: DirRef,
    furl: folio_rpc::Furl,
}

async fn pair_with(server: TubConfig, client: TubConfig) -> Pair {
    let grid = Grid::new(Net::Mem);
    let s = grid.tub_with(Identity::generate().unwrap(), server).await;
    let c = grid.tub_with(Identity::generate().unwrap(), client).await;
    let state = Arc::new(State::default());
    let furl = s
        .register(DirRef::serve(DirSvc(state.clone(), String::new())))
        .unwrap();
    let dir: DirRef = c.get(&furl).await.unwrap();
    Pair {
        grid,
        server: s,
        client: c,
        state,
        dir,
        furl,
    }
}

async fn pair() -> Pair {
    pair_with(Grid::config(), Grid::config()).await
}

fn versions(max: u16) -> TubConfig {
    let mut c = Grid::config();
    c.handshake.versions = (1, max);
    c
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HUNG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test]
async fn pipelined_calls_wait_for_the_answer_and_run_in_order() {
    let p = pair().await;
    let promise = p.dir.open_promise("a".into(), true).await.unwrap();
    let file = promise.reference();
    // Sent now, before the answer exists: the server holds them.
    let calls = (1..=5).map(|n| {
        let f = file.clone();
        tokio::spawn(async move { f.append(n).await })
    });
    let calls: Vec<_> = calls.collect();
    eventually(5, "the pipelined calls are held by the server", || {
        p.server.load().held_calls == 5
    })
    .await;
    assert!(
        p.state.log_of("a").is_empty(),
        "nothing ran before the answer"
    );
    assert!(!promise.is_settled());
    p.state.gate.notify_one();
    let mut lens = Vec::new();
    for c in calls {
        lens.push(bounded("a pipelined call", c).await.unwrap().unwrap());
    }
    lens.sort();
    assert_eq!(lens, [1, 2, 3, 4, 5]);
    assert_eq!(
        p.state.log_of("a"),
        [1, 2, 3, 4, 5],
        "they ran in the order sent"
    );
    // Awaiting the promise gives the reference itself; it names the same object.
    let real = bounded("the promise", promise.into_future()).await.unwrap();
    assert_eq!(real.name().await.unwrap(), "a");
    assert_eq!(p.server.load().held_calls, 0);
}

#[tokio::test]
async fn write_then_close_in_one_flight_keeps_their_order() {
    // The order of calls sent one after another on a promise, awaited together.
    let p = pair().await;
    let file = p
        .dir
        .open_promise("b".into(), false)
        .await
        .unwrap()
        .reference();
    let (x, y, z) = tokio::join!(file.append(1), file.append(2), file.append(3));
    assert_eq!((x.unwrap(), y.unwrap(), z.unwrap()), (1, 2, 3));
    assert_eq!(p.state.log_of("b"), [1, 2, 3]);
    file.note(4).await.unwrap();
    eventually(5, "the one-way call ran", || p.state.log_of("b").len() == 4).await;
}

#[tokio::test]
async fn a_failed_promise_breaks_the_calls_sent_to_it() {
    let p = pair().await;
    let promise = p.dir.open_promise("missing".into(), true).await.unwrap();
    let file = promise.reference();
    let call = tokio::spawn(async move { file.append(1).await });
    eventually(5, "the pipelined call is held", || {
        p.server.load().held_calls == 1
    })
    .await;
    p.state.gate.notify_one();
    match bounded("the broken call", call).await.unwrap() {
        Err(CallError::Refused(Refusal::Broken(why))) => {
            assert!(why.contains("returned its own error"), "{why}")
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    match bounded("the promise", promise.into_future()).await {
        Err(CallError::App(e)) => assert_eq!(e, "no file missing"),
        other => panic!("expected the app error, got {other:?}"),
    }
    assert!(p.state.log_of("missing").is_empty());
    // A call on the broken promise after it settled fails the same way, without the network.
    let promise = p.dir.open_promise("missing".into(), false).await.unwrap();
    let file = promise.reference();
    let _ = file.resolved().await;
    assert!(matches!(
        file.append(2).await,
        Err(CallError::Refused(Refusal::Broken(_)))
    ));
}

#[tokio::test]
async fn references_beyond_the_answer_or_of_another_interface_are_broken() {
    let p = pair().await;
    let promise = p.dir.pair_promise().await.unwrap();
    let first: FileRef = promise.reference_at(0);
    let second: FileRef = promise.reference_at(1);
    let third: FileRef = promise.reference_at(2);
    let not_a_dir: DirRef = promise.reference_at(0);
    assert_eq!(first.name().await.unwrap(), "first");
    assert_eq!(second.name().await.unwrap(), "second");
    match third.name().await {
        Err(CallError::Refused(Refusal::Broken(why))) => assert!(why.contains("index 2"), "{why}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(matches!(
        not_a_dir.sub("x".into()).await,
        Err(CallError::Refused(_))
    ));
    let (a, b) = promise.await.unwrap();
    assert_eq!(
        (a.name().await.unwrap(), b.name().await.unwrap()),
        ("first".into(), "second".into())
    );
}

#[tokio::test]
async fn promises_chain() {
    let p = pair().await;
    let sub = p.dir.sub_promise("x".into()).await.unwrap().reference();
    let subsub = sub.sub_promise("y".into()).await.unwrap().reference();
    let file = subsub
        .open_promise("f".into(), false)
        .await
        .unwrap()
        .reference();
    assert_eq!(bounded("the chain", file.append(9)).await.unwrap(), 1);
    assert_eq!(p.state.log_of("x/y/f"), [9]);
}

#[tokio::test]
async fn a_disconnect_fails_the_calls_that_wait() {
    let p = pair().await;
    let file = p
        .dir
        .open_promise("c".into(), true)
        .await
        .unwrap()
        .reference();
    let f = file.clone();
    let call = tokio::spawn(async move { f.append(1).await });
    eventually(5, "the pipelined call is held", || {
        p.server.load().held_calls == 1
    })
    .await;
    p.client.disconnect(&p.server.tubid());
    match bounded("the call on a lost connection", call)
        .await
        .unwrap()
    {
        Err(CallError::Disconnected(_)) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    eventually(5, "the server let go of the held call", || {
        p.server.load().held_calls == 0
    })
    .await;
    p.state.gate.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        p.state.log_of("c").is_empty(),
        "a held call never runs after a disconnect"
    );
    // The promised handle fails the same way.
    assert!(matches!(
        file.append(2).await,
        Err(CallError::Disconnected(_))
    ));
}

#[tokio::test]
async fn kept_answers_go_with_finish_and_promised_references_are_released() {
    let p = pair().await;
    let peer = p.client.tubid();
    let before = p.server.exports_to(&peer);
    {
        let promise = p.dir.open_promise("d".into(), false).await.unwrap();
        let file = promise.reference();
        assert_eq!(file.append(1).await.unwrap(), 1);
        let real = promise.await.unwrap();
        assert_eq!(real.append(2).await.unwrap(), 2);
        assert_eq!(p.server.exports_to(&peer), before + 1);
    }
    eventually(5, "the file is released by the client's decref", || {
        p.server.exports_to(&peer) == before
    })
    .await;
    eventually(5, "the kept answer is forgotten at Finish", || {
        p.server.load().kept_answers == 0 && p.client.load().unfinished_promises == 0
    })
    .await;
    // An ordinary call is neither marked nor kept.
    let file = p.dir.open("e".into(), false).await.unwrap();
    file.append(1).await.unwrap();
    assert_eq!(p.server.load().kept_answers, 0);
}

#[tokio::test]
async fn a_flood_of_pipelined_calls_is_held_to_its_bound() {
    let mut server = Grid::config();
    server.max_held_calls = 8;
    let p = pair_with(server, Grid::config()).await;
    let file = p
        .dir
        .open_promise("f".into(), true)
        .await
        .unwrap()
        .reference();
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let f = file.clone();
            tokio::spawn(async move { f.append(n).await })
        })
        .collect();
    eventually(5, "eight calls are held", || {
        p.server.load().held_calls == 8
    })
    .await;
    // The rest were refused at once, unrun, and sent again once the answer came.
    p.state.gate.notify_one();
    for c in calls {
        bounded("a call of the flood", c).await.unwrap().unwrap();
    }
    assert_eq!(p.state.log_of("f").len(), 20);
    assert_eq!(p.server.load().held_calls, 0);
}

#[tokio::test]
async fn a_held_call_can_time_out_and_be_cancelled() {
    let p = pair().await;
    let file = p
        .dir
        .open_promise("g".into(), true)
        .await
        .unwrap()
        .reference();
    // Its caller gives up while it is held: it never runs.
    let short = file.with_timeout(Some(Duration::from_millis(100)));
    assert!(matches!(
        bounded("a held call with a deadline", short.append(1)).await,
        Err(CallError::DeadlineExceeded(_))
    ));
    // (It stays held, and is dropped when its promise resolves: no timer per held call.)
    assert_eq!(p.server.load().held_calls, 1);
    // Dropped while held: cancelled, so it never runs either.
    let f = file.clone();
    let dropped = tokio::spawn(async move { f.append(2).await });
    eventually(5, "the call is held", || p.server.load().held_calls == 2).await;
    dropped.abort();
    eventually(5, "the cancel reached the held call", || {
        p.server.load().held_calls == 1
    })
    .await;
    p.state.gate.notify_one();
    assert_eq!(bounded("a later call", file.append(3)).await.unwrap(), 1);
    assert_eq!(p.state.log_of("g"), [3]);
}

#[tokio::test]
async fn older_peers_get_the_calls_once_the_answer_is_in() {
    for max in [1, 2] {
        let p = pair_with(versions(max), Grid::config()).await;
        let file = p
            .dir
            .open_promise(format!("v{max}"), false)
            .await
            .unwrap()
            .reference();
        assert_eq!(
            bounded("a call to an older peer", file.append(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(p.state.log_of(&format!("v{max}")), [1]);
        assert_eq!(p.server.load().kept_answers, 0);
        // And a first call through get_promised on a new connection, which goes out
        // behind the hello before the client knows the peer's version.
        let other = p.grid.tub().await;
        let dir: DirRef = other.get_promised(&p.furl);
        let file = dir.open(format!("w{max}"), false).await.unwrap();
        assert_eq!(file.append(5).await.unwrap(), 1);
    }
}

#[tokio::test]
async fn get_promised_calls_behind_the_hello_and_reports_bad_furls() {
    let p = pair().await;
    let other = p.grid.tub().await;
    let dir: DirRef = other.get_promised(&p.furl);
    assert_eq!(
        other.connection_count(),
        0,
        "no network before the first call"
    );
    let file = dir.open("h".into(), false).await.unwrap();
    assert_eq!(file.append(1).await.unwrap(), 1);
    // The same handle keeps working, and resolves to the object.
    assert!(dir.resolved().await.is_ok());
    let file = dir.open("h".into(), false).await.unwrap();
    assert_eq!(file.append(2).await.unwrap(), 2);
    // A FURL naming no object: calls fail and say so.
    let mut bad = p.furl.to_string();
    bad.replace_range(bad.len() - 4.., "zzzz");
    let bad: folio_rpc::Furl = bad.parse().unwrap();
    let fresh = p.grid.tub().await;
    let nothing: DirRef = fresh.get_promised(&bad);
    match nothing.open("x".into(), false).await {
        Err(CallError::Refused(Refusal::Broken(why))) => {
            assert!(why.contains("get_reference"), "{why}")
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(nothing.resolved().await.is_err());
}

#[tokio::test]
async fn a_call_on_an_unreachable_furl_says_why_in_a_type() {
    let p = pair().await;
    let hint = p.furl.hints()[0].to_string();
    let gone: folio_rpc::Furl = p
        .furl
        .to_string()
        .replace(&hint, "mem:nobody-listens-here")
        .parse()
        .unwrap();
    let fresh = p.grid.tub().await;
    let dir: DirRef = fresh.get_promised(&gone);
    match dir.open("x".into(), false).await {
        Err(CallError::Unreachable(ReferenceError::Unreachable { tubid, attempts })) => {
            assert_eq!(tubid, p.furl.tubid());
            assert_eq!(attempts.len(), 1, "{attempts:?}");
            assert!(attempts[0].1.contains("nothing listens"), "{attempts:?}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // The call was never sent, so it never ran.
    let e = dir.open("x".into(), false).await.unwrap_err();
    assert!(!e.may_have_run(), "{e}");
}

#[tokio::test]
async fn local_objects_keep_promises_too() {
    let state = Arc::new(State::default());
    let dir = DirRef::serve(DirSvc(state.clone(), String::new()));
    let promise = dir.open_promise("l".into(), false).await.unwrap();
    assert!(promise.is_settled());
    assert_eq!(promise.reference().append(1).await.unwrap(), 1);
    assert_eq!(promise.await.unwrap().append(2).await.unwrap(), 2);
}

#[tokio::test]
async fn an_unresolved_promise_cannot_be_passed_in_arguments() {
    #[interface(name = "test.pipe.holder.v1")]
    pub trait Holder {
        async fn hold(&self, f: FileRef) -> Result<(), String>;
    }
    struct H;
    impl Holder for H {
        async fn hold(&self, _f: FileRef) -> Result<(), String> {
            Ok(())
        }
    }
    let p = pair().await;
    let holder_furl = p.server.register(HolderRef::serve(H)).unwrap();
    let holder: HolderRef = p.client.get(&holder_furl).await.unwrap();
    let promise = p.dir.open_promise("i".into(), true).await.unwrap();
    match holder.hold(promise.reference()).await {
        Err(CallError::Protocol(ProtocolError::Arguments(why))) => {
            assert!(why.contains("resolved"), "{why}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    p.state.gate.notify_one();
    let file = promise.reference().resolved().await.unwrap();
    holder.hold(file.clone()).await.unwrap();
    // Once settled, the promised handle itself may be passed: the reference goes.
    holder.hold(promise.reference()).await.unwrap();
}

/// A hostile caller's call sent to its own promise is refused, not held for ever (found by
/// the tub_server fuzz target): written as raw frames, since Folio's caller cannot send it.
#[tokio::test]
async fn a_call_sent_to_its_own_promise_is_refused() {
    use folio_rpc::message::{decode, promise_target, AnswerBody, Message, PROMISE_MARK};
    use folio_rpc::{HandshakeConfig, Handshaker};
    let p = pair().await;
    let client = Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        HandshakeConfig::default(),
    )
    .unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = p.server.clone();
    let accept = tokio::spawn(async move { server.accept(b).await });
    let mut est = client.connect(a, p.server.tubid()).await.unwrap();
    accept.await.unwrap().unwrap();
    let id = PROMISE_MARK | 7;
    for timeout_ms in [None, Some(60_000)] {
        let target = promise_target(id, 0).unwrap();
        let msg = match timeout_ms {
            None => Message::Call {
                id,
                target,
                interface: "test.pipe.file.v1",
                method: "name",
                args: &[],
                refs: vec![],
            },
            Some(timeout_ms) => Message::TimedCall {
                id,
                timeout_ms,
                target,
                interface: "test.pipe.file.v1",
                method: "name",
                args: &[],
                refs: vec![],
            },
        };
        let frame = folio_rpc::frame::encode_frame(&msg, u32::MAX).unwrap();
        est.writer.write_encoded(&frame).await.unwrap();
        est.writer.flush().await.unwrap();
        let answer = bounded("the refusal", est.reader.next_frame()).await;
        match decode(answer.unwrap().unwrap()).unwrap() {
            Message::Answer {
                id: got,
                body: AnswerBody::Refused(Refusal::Broken(why)),
            } => {
                assert_eq!(got, id);
                assert!(why.contains("own promise"), "{why}");
            }
            other => panic!("expected a Broken refusal, got {other:?}"),
        }
        assert_eq!(p.server.load().held_calls, 0);
        let finish = Message::Finish { id };
        let frame = folio_rpc::frame::encode_frame(&finish, u32::MAX).unwrap();
        est.writer.write_encoded(&frame).await.unwrap();
        est.writer.flush().await.unwrap();
    }
    eventually(5, "the kept answers are finished", || {
        p.server.load().kept_answers == 0
    })
    .await;
}
