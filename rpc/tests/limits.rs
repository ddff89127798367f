//! The Tub-wide bounds (docs/limits.md): pending handshakes, connections in total, and the
//! bookkeeping a Tub keeps per peer. Each test drives a Tub past one bound over real TCP on
//! 127.0.0.1 and checks what the bound promises.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Grid, Net};
use folio_rpc::connector::ConnectFuture;
use folio_rpc::message::GoodbyeReason;
use folio_rpc::prelude::{self, ANSWER_LEN};
use folio_rpc::{
    interface, Bytes, Connector, Disconnect, Furl, Hint, Identity, ReferenceError, Tub, TubConfig,
    EVICT_PENDING_AFTER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An object whose `hold` answers once its gate opens: a call in progress for as long as a
/// test wants.
#[interface(name = "test.limits.gate.v1")]
pub trait Gate {
    async fn hold(&self) -> Result<u64, String>;
    async fn ping(&self) -> Result<u64, String>;
    /// `n` bytes.
    async fn big(&self, n: u64) -> Result<Bytes, String>;
}

struct GateImpl {
    open: tokio::sync::Semaphore,
    holding: AtomicUsize,
}

impl Gate for Arc<GateImpl> {
    async fn hold(&self) -> Result<u64, String> {
        self.holding.fetch_add(1, Ordering::SeqCst);
        let _ = self.open.acquire().await.map_err(|e| e.to_string())?;
        Ok(1)
    }
    async fn ping(&self) -> Result<u64, String> {
        Ok(2)
    }
    async fn big(&self, n: u64) -> Result<Bytes, String> {
        Ok(Bytes(vec![7; n as usize]))
    }
}

fn gate() -> Arc<GateImpl> {
    Arc::new(GateImpl {
        open: tokio::sync::Semaphore::new(0),
        holding: AtomicUsize::new(0),
    })
}

fn config(f: impl FnOnce(&mut TubConfig)) -> TubConfig {
    let mut c = Grid::config();
    f(&mut c);
    c
}

fn addr_of(tub: &Tub) -> std::net::SocketAddr {
    match &tub.location()[0] {
        folio_rpc::Hint::Tcp { port, .. } => ([127, 0, 0, 1], *port).into(),
        other => panic!("not a TCP hint: {other}"),
    }
}

/// Reads the prelude answer a server sends on `s`, if it sends one within 5 s.
async fn answer_on(s: &mut TcpStream) -> Option<[u8; ANSWER_LEN]> {
    let mut answer = [0u8; ANSWER_LEN];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer)).await {
        Ok(Ok(_)) => Some(answer),
        _ => None,
    }
}

/// Gap 1: with `max_pending_handshakes` streams stalled in the handshake, a burst of new
/// ones is answered `Busy` at once (before any TLS work), and once the stalled ones have
/// been at it for `EVICT_PENDING_AFTER`, a prompt client takes the place of one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_pending_cap_is_answered_busy_and_a_prompt_client_still_gets_in() {
    let grid = Grid::new(Net::Tcp);
    let server = grid
        .tub_with(
            Identity::generate().unwrap(),
            config(|c| c.max_pending_handshakes = 4),
        )
        .await;
    let furl = server.register(GateRef::serve(gate())).unwrap();
    let addr = addr_of(&server);

    // Four stalled handshakes: a prelude request, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&prelude::encode_request(&server.tubid()))
            .await
            .unwrap();
        stalled.push(s);
    }
    eventually(5, "four handshakes under way", || {
        server.load().pending_handshakes == 4
    })
    .await;

    // A burst of ten more, at once: each is answered Busy.
    let mut busy = 0;
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&prelude::encode_request(&server.tubid()))
            .await
            .unwrap();
        let answer = answer_on(&mut s).await.expect("an answer, at once");
        match prelude::decode_answer(&answer) {
            Ok(prelude::Progress::Done(a, _)) if a.status == prelude::Status::Busy => busy += 1,
            other => panic!("expected Busy, got {other:?}"),
        }
    }
    assert_eq!(busy, 10);
    assert_eq!(server.load().busy_answers, 10);
    assert_eq!(server.load().pending_handshakes, 4, "the stalled ones stay");

    // Once they have stalled for long enough, a real client gets in, in place of one.
    tokio::time::sleep(EVICT_PENDING_AFTER + Duration::from_millis(100)).await;
    let client = grid.tub().await;
    let g: GateRef = client
        .get(&furl)
        .await
        .expect("the prompt client is served");
    assert_eq!(g.ping().await.unwrap(), 2);
    let load = server.load();
    assert_eq!(load.evicted_handshakes, 1, "{load:?}");
    // The one closed for it is the oldest: its stream ends.
    let mut first = stalled.remove(0);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("the oldest stalled stream is closed")
        .ok();
    assert!(rest.len() <= ANSWER_LEN, "no TLS was sent to it: {rest:?}");
}

/// Gap 1: trickling bytes does not keep a stalled handshake's place. The time a handshake
/// has waited for its peer adds up across its bytes, so a slowloris peer that sends one
/// byte every 100 ms is closed for a prompt client like a silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_handshake_gives_way_to_a_prompt_client() {
    let grid = Grid::new(Net::Tcp);
    let server = grid
        .tub_with(
            Identity::generate().unwrap(),
            config(|c| c.max_pending_handshakes = 1),
        )
        .await;
    let furl = server.register(GateRef::serve(gate())).unwrap();
    let mut slow = TcpStream::connect(addr_of(&server)).await.unwrap();
    let request = prelude::encode_request(&server.tubid());
    let trickle = tokio::spawn(async move {
        for b in request {
            if slow.write_all(&[b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    tokio::time::sleep(EVICT_PENDING_AFTER * 3).await;
    let client = grid.tub().await;
    let g: GateRef = client
        .get(&furl)
        .await
        .expect("the prompt client is served");
    assert_eq!(g.ping().await.unwrap(), 2);
    trickle.abort();
}

/// Gap 1, the other end: more streams than can even be answered are closed at once, and
/// counted. (Answering `Busy` is itself bounded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_told_busy_gets_a_clear_error() {
    let grid = Grid::new(Net::Tcp);
    let server = grid
        .tub_with(
            Identity::generate().unwrap(),
            config(|c| c.max_pending_handshakes = 1),
        )
        .await;
    let furl = server.register(GateRef::serve(gate())).unwrap();
    let mut s = TcpStream::connect(addr_of(&server)).await.unwrap();
    s.write_all(&prelude::encode_request(&server.tubid()))
        .await
        .unwrap();
    eventually(5, "one handshake under way", || {
        server.load().pending_handshakes == 1
    })
    .await;
    let client = grid.tub().await;
    let err = client.get::<GateRef>(&furl).await.unwrap_err();
    assert!(
        err.to_string().contains("busy"),
        "the dialer is told the server is busy: {err}"
    );
    drop(s);
}

/// Gap 2: a full Tub closes an idle inbound connection (and only an idle one) for a new
/// peer, and refuses the new peer when every inbound connection is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tub_closes_an_idle_inbound_connection_and_never_a_busy_one_for_a_peer() {
    let grid = Grid::new(Net::Tcp);
    let server = grid
        .tub_with(
            Identity::generate().unwrap(),
            config(|c| c.max_connections = 3),
        )
        .await;
    let g = gate();
    let furl = server.register(GateRef::serve(g.clone())).unwrap();

    // Two busy peers (a call in progress each) and one idle one.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let client = grid.tub().await;
        let r: GateRef = client.get(&furl).await.unwrap();
        let call = tokio::spawn({
            let r = r.clone();
            async move { r.hold().await }
        });
        busy.push((client, r, call));
    }
    eventually(5, "two calls held", || {
        g.holding.load(Ordering::SeqCst) == 2
    })
    .await;
    let idle_client = grid.tub().await;
    let idle: GateRef = idle_client.get(&furl).await.unwrap();
    assert_eq!(idle.ping().await.unwrap(), 2);
    assert_eq!(server.connection_count(), 3);

    // A fourth peer: the idle one makes room.
    let fourth = grid.tub().await;
    let r4: GateRef = fourth.get(&furl).await.expect("room is made for it");
    assert_eq!(r4.ping().await.unwrap(), 2);
    // (The close happened before this asks: `disconnected` must still answer.)
    let why = tokio::time::timeout(Duration::from_secs(5), idle.object_ref().disconnected())
        .await
        .expect("the idle connection is closed");
    // The server said why in its goodbye (protocol version 2's `Full`).
    assert!(
        matches!(why, Disconnect::PeerGoodbye(GoodbyeReason::Full)),
        "{why}"
    );
    eprintln!("the idle peer was told: {why}");
    assert_eq!(server.load().closed_for_room, 1);
    assert_eq!(server.connection_count(), 3);

    // Now the fourth is idle too, so a fifth takes its place; then, with the fourth's call
    // held, every inbound connection is busy and a sixth is refused.
    let fifth = grid.tub().await;
    let r5: GateRef = fifth.get(&furl).await.unwrap();
    let _held5 = tokio::spawn({
        let r5 = r5.clone();
        async move { r5.hold().await }
    });
    eventually(5, "three calls held", || {
        g.holding.load(Ordering::SeqCst) == 3
    })
    .await;
    let sixth = grid.tub().await;
    let err = sixth.get::<GateRef>(&furl).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    // The busy ones are all still there and their calls complete.
    g.open.add_permits(10);
    for (_, _, call) in busy {
        assert_eq!(call.await.unwrap().unwrap(), 1);
    }
}

/// Gap 2, our own dials: a full Tub makes room for a connection it dials itself by closing
/// an inbound one, busy if need be, and never one it dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tubs_own_dial_closes_an_inbound_connection() {
    let grid = Grid::new(Net::Tcp);
    let node = grid
        .tub_with(
            Identity::generate().unwrap(),
            config(|c| c.max_connections = 2),
        )
        .await;
    let g = gate();
    let node_furl = node.register(GateRef::serve(g.clone())).unwrap();

    // The node dials one server of its own.
    let server_a = grid.tub().await;
    let a_furl = server_a.register(GateRef::serve(gate())).unwrap();
    let a: GateRef = node.get(&a_furl).await.unwrap();
    // An inbound peer with a call in progress.
    let peer = grid.tub().await;
    let p: GateRef = peer.get(&node_furl).await.unwrap();
    let _held = tokio::spawn({
        let p = p.clone();
        async move { p.hold().await }
    });
    eventually(5, "the call is held", || {
        g.holding.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(node.connection_count(), 2);

    // The node dials a second server: the busy inbound peer goes, its own server stays.
    let server_b = grid.tub().await;
    let b_furl = server_b.register(GateRef::serve(gate())).unwrap();
    let b: GateRef = node.get(&b_furl).await.expect("our own dial gets in");
    assert_eq!(b.ping().await.unwrap(), 2);
    tokio::time::timeout(Duration::from_secs(5), p.object_ref().disconnected())
        .await
        .expect("the inbound peer was closed");
    assert_eq!(a.ping().await.unwrap(), 2, "the server we dialed is kept");

    // With only connections it dialed, a third dial fails before dialing, with a reason.
    let server_c = grid.tub().await;
    let c_furl = server_c.register(GateRef::serve(gate())).unwrap();
    match node.get::<GateRef>(&c_furl).await {
        Err(ReferenceError::Failed { reason, .. }) => {
            assert!(reason.contains("limit"), "{reason}")
        }
        other => panic!("expected a refusal for want of room, got {other:?}"),
    }
    assert_eq!(a.ping().await.unwrap(), 2);
    assert_eq!(b.ping().await.unwrap(), 2);
}

/// Gap 6: a Tub's per-peer bookkeeping does not grow with every peer it ever dialed. The
/// dial locks go when the dials end, and the status of departed peers is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_many_peers_leaves_bounded_bookkeeping() {
    let grid = Grid::new(Net::Tcp);
    let client = grid
        .tub_with(
            Identity::generate().unwrap(),
            config(|c| c.max_connections = 4),
        )
        .await;
    // 40 Tubs nobody listens for: each dial fails, and leaves its status behind.
    for _ in 0..40 {
        let nobody = Identity::generate().unwrap();
        let furl: Furl = format!("folio://{}@tcp:127.0.0.1:1/abc", nobody.tubid())
            .parse()
            .unwrap();
        assert!(client.get_reference(&furl).await.is_err());
    }
    let load = client.load();
    assert_eq!(load.dial_locks, 0, "no dial is under way: {load:?}");
    assert!(
        load.peer_status <= 2 * 4 + 1,
        "status of departed peers is pruned: {load:?}"
    );
    // A live peer among them keeps its entry.
    let server = grid.tub().await;
    let furl = server.register(GateRef::serve(gate())).unwrap();
    let g: GateRef = client.get(&furl).await.unwrap();
    for _ in 0..20 {
        let nobody = Identity::generate().unwrap();
        let furl: Furl = format!("folio://{}@tcp:127.0.0.1:1/abc", nobody.tubid())
            .parse()
            .unwrap();
        let _ = client.get_reference(&furl).await;
    }
    assert!(client
        .connection_status()
        .iter()
        .any(|s| s.tubid == server.tubid() && s.connected));
    assert!(client.load().peer_status <= 2 * 4 + 1);
    assert_eq!(g.ping().await.unwrap(), 2);
}

/// Gap 5: a library user's Tub lets go of a silent peer by default.
#[test]
fn a_default_tub_drops_a_silent_peer() {
    let c = TubConfig::default();
    let timeout = c
        .disconnect_timeout
        .expect("a disconnect timeout by default");
    let keepalive = c.keepalive.expect("keepalive pings by default");
    assert!(
        timeout >= 2 * keepalive,
        "a peer gets two pings before it is dropped: {timeout:?} vs {keepalive:?}"
    );
}

/// A stream whose reading can be stopped: a peer that stops reading its answers.
struct Pausable {
    inner: tokio::io::DuplexStream,
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Pausable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.paused.load(Ordering::SeqCst) {
            // Never woken: this reader has stopped for good.
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Pausable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Dials one Tub over a small in-memory pipe whose client end can stop reading.
struct PausableConnector {
    server: Tub,
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl Connector for PausableConnector {
    fn connect<'a>(&'a self, _hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let server = self.server.clone();
            tokio::spawn(async move { server.accept(b).await });
            Ok(Box::new(Pausable {
                inner: a,
                paused: self.paused.clone(),
            }) as folio_rpc::BoxStream)
        })
    }
}

/// Gap 2, bytes: the connections' write queues share the Tub's `max_buffered_bytes`. Peers
/// that stop reading their answers fill it; then the one that has left the most unread is
/// closed, the Tub never holds much more than its budget, and a peer that reads is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stop_reading_share_one_budget_and_the_heaviest_goes() {
    const BUDGET: usize = 2 << 20;
    let server = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(folio_rpc::NoConnector),
        config(|c| c.max_buffered_bytes = BUDGET),
    )
    .unwrap();
    server.set_location(vec!["tcp:127.0.0.1:9".parse().unwrap()]);
    let furl = server.register(GateRef::serve(gate())).unwrap();

    let mut stalled = Vec::new();
    for _ in 0..3 {
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = Tub::new(
            Identity::generate().unwrap(),
            Arc::new(PausableConnector {
                server: server.clone(),
                paused: paused.clone(),
            }),
            config(|_| {}),
        )
        .unwrap();
        let g: GateRef = client.get(&furl).await.unwrap();
        assert_eq!(g.ping().await.unwrap(), 2);
        // It stops reading, and asks for 20 answers of 256 KiB: 5 MiB each, under the
        // 16 MiB a connection may queue, over the Tub's 2 MiB for all of them.
        paused.store(true, Ordering::SeqCst);
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.big(256 << 10).await })
            })
            .collect();
        stalled.push((client, g, calls));
    }
    let mut most = 0;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            most = most.max(server.load().buffered_bytes);
            if server.load().connections < 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "a peer that does not read was closed");
    // (Each connection may always have one frame queued.)
    assert!(
        most <= BUDGET + 3 * (257 << 10),
        "the Tub held {most} bytes for peers that do not read"
    );
    // A peer that reads is served meanwhile, and its answers fit.
    let reader = grid_tub_reading(&server).await;
    let g: GateRef = reader.get(&furl).await.unwrap();
    for _ in 0..4 {
        assert_eq!(g.big(256 << 10).await.unwrap().0.len(), 256 << 10);
    }
    let load = server.load();
    assert!(load.buffered_bytes <= BUDGET + 3 * (257 << 10), "{load:?}");
    // Once every stalled peer is gone, nothing stays counted.
    for (client, _, calls) in stalled {
        server.disconnect(&client.tubid());
        for c in calls {
            c.abort();
        }
    }
    // (A connection closed with a goodbye gives its writer 10 s to deliver it.)
    eventually(20, "the budget is given back", || {
        server.load().buffered_bytes == 0
    })
    .await;
}

/// A client of `server` over an in-memory pipe that keeps reading.
async fn grid_tub_reading(server: &Tub) -> Tub {
    Tub::new(
        Identity::generate().unwrap(),
        Arc::new(PausableConnector {
            server: server.clone(),
            paused: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }),
        config(|_| {}),
    )
    .unwrap()
}
