//! `Tub::shutdown` says goodbye before it returns: a process may exit right after it and its
//! peers still learn why, while a peer that does not read cannot hold the shutdown past
//! `TubConfig::shutdown_grace`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Grid, Net};
use folio_rpc::message::{GoodbyeReason, Message};
use folio_rpc::{interface, CallError, Disconnect, Handshaker, Identity, Tub, TubConfig};

#[interface(name = "test.shutdown.v1")]
pub trait Waiter {
    /// Answers never.
    async fn wait(&self) -> Result<u64, String>;
}

struct WaiterImpl(Arc<AtomicUsize>);

impl Waiter for WaiterImpl {
    async fn wait(&self) -> Result<u64, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A daemon that exits as soon as `shutdown().await` returns: its Tub, listener, connection
/// tasks and streams all go with its runtime at once. Its peers, over real TCP, still get its
/// `Goodbye(Shutdown)`, every one of them.
#[tokio::test]
async fn peers_get_the_goodbye_of_a_process_that_exits_right_after_shutdown() {
    const PEERS: usize = 4;
    let running = Arc::new(AtomicUsize::new(0));
    let (furl_tx, furl_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = {
        let running = running.clone();
        std::thread::spawn(move || {
            // One thread, as a small daemon's: nothing runs while `shutdown` is not waiting.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let grid = Grid::new(Net::Tcp);
                let tub = grid.tub().await;
                let furl = tub.register(WaiterRef::serve(WaiterImpl(running))).unwrap();
                furl_tx.send(furl).unwrap();
                go_rx.await.unwrap();
                tub.shutdown().await;
                drop(tub);
            });
            // The process exits: every task still on the runtime is dropped, unpolled.
            drop(rt);
        })
    };
    let furl = furl_rx.await.unwrap();
    let grid = Grid::new(Net::Tcp);
    let mut clients = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..PEERS {
        let client = grid.tub().await;
        let w: WaiterRef = client.get(&furl).await.unwrap();
        calls.push(tokio::spawn(async move { w.wait().await }));
        clients.push(client);
    }
    eventually(10, "every call runs on the daemon", || {
        running.load(Ordering::SeqCst) == PEERS
    })
    .await;
    go_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || daemon.join().unwrap())
        .await
        .unwrap();
    for call in calls {
        let e = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ends with the daemon")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                e,
                CallError::Disconnected(Disconnect::PeerGoodbye(GoodbyeReason::Shutdown))
            ),
            "{e}"
        );
    }
}

/// A peer that never reads, with the stream to it full: its connection cannot say goodbye,
/// and the shutdown waits for it `shutdown_grace`, no longer.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_cannot_hold_a_shutdown_past_its_grace() {
    const GRACE: Duration = Duration::from_secs(3);
    let server = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(folio_rpc::NoConnector),
        TubConfig::default().shutdown_grace(GRACE),
    )
    .unwrap();
    assert_eq!(TubConfig::default().shutdown_grace, Duration::from_secs(5));
    let deaf =
        Handshaker::new(Arc::new(Identity::generate().unwrap()), Default::default()).unwrap();
    let (a, b) = tokio::io::duplex(4096);
    let (est, accepted) = tokio::join!(deaf.connect(a, server.tubid()), server.accept(b));
    accepted.unwrap();
    // Kept to the end: the stream stays open, and is never read.
    let mut est = est.unwrap();
    // Pings whose pongs fill the stream to the peer, and then the server's write queue.
    for nonce in 0..2_000u64 {
        est.writer
            .send_message(&Message::Ping { nonce })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        server.load().buffered_bytes > 0,
        "pongs wait for the peer to read"
    );
    assert_eq!(server.connection_count(), 1);
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), server.shutdown())
        .await
        .expect("the shutdown ends");
    let took = started.elapsed();
    assert!(
        took >= GRACE,
        "the shutdown waited for the goodbye, up to the grace: {took:?}"
    );
    assert!(
        took < GRACE + Duration::from_secs(1),
        "and no longer: {took:?}"
    );
    assert_eq!(server.connection_count(), 0);
    drop(est);
}
