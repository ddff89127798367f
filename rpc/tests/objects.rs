//! The object model end to end, over real TCP on 127.0.0.1 and over in-memory streams:
//! every test below runs twice (`::tcp` and `::mem`).

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Grid, Net};
use folio_rpc::message::GoodbyeReason;
use folio_rpc::{
    interface, Bytes, CallError, Disconnect, Identity, ObjectRef, ReconnectPolicy,
    ReconnectorState, Refusal, Tub, TubConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CalcError {
    #[error("division by zero")]
    DivideByZero,
    #[error("{0}")]
    Other(String),
}

/// A calculator with references in and out.
#[interface(name = "test.calc.v1")]
pub trait Calc {
    /// Adds.
    async fn add(&self, a: u64, b: u64) -> Result<u64, CalcError>;
    async fn div(&self, a: u64, b: u64) -> Result<u64, CalcError>;
    /// Returns a new counter object.
    async fn counter(&self, start: u64) -> Result<CounterRef, CalcError>;
    /// Calls `who` back with `n`, then returns.
    async fn subscribe(&self, who: WatcherRef, n: u64) -> Result<(), CalcError>;
    async fn slow(&self, ms: u64) -> Result<u64, CalcError>;
    /// Returns a new counter after a while.
    async fn late_counter(&self, ms: u64) -> Result<CounterRef, CalcError>;
    /// Gives the reference back as it came.
    async fn echo(&self, c: CounterRef) -> Result<CounterRef, CalcError>;
    /// Calls `incr` on a counter that may live on a third Tub.
    async fn bump(&self, c: CounterRef) -> Result<u64, CalcError>;
    #[oneway]
    async fn note(&self, text: String);
}

#[interface(name = "test.counter.v1")]
pub trait Counter {
    async fn incr(&self) -> Result<u64, CalcError>;
}

#[interface(name = "test.watcher.v1")]
pub trait Watcher {
    async fn notify(&self, n: u64) -> Result<(), CalcError>;
}

#[derive(Default)]
struct CalcImpl {
    running: AtomicUsize,
    max_running: AtomicUsize,
    notes: Mutex<Vec<String>>,
}

impl Calc for Arc<CalcImpl> {
    async fn add(&self, a: u64, b: u64) -> Result<u64, CalcError> {
        a.checked_add(b).ok_or(CalcError::Other("overflow".into()))
    }
    async fn div(&self, a: u64, b: u64) -> Result<u64, CalcError> {
        a.checked_div(b).ok_or(CalcError::DivideByZero)
    }
    async fn counter(&self, start: u64) -> Result<CounterRef, CalcError> {
        Ok(CounterRef::serve(CounterImpl(AtomicU64::new(start))))
    }
    async fn subscribe(&self, who: WatcherRef, n: u64) -> Result<(), CalcError> {
        who.notify(n)
            .await
            .map_err(|e| CalcError::Other(e.to_string()))
    }
    async fn slow(&self, ms: u64) -> Result<u64, CalcError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(ms)
    }
    async fn late_counter(&self, ms: u64) -> Result<CounterRef, CalcError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(CounterRef::serve(CounterImpl(AtomicU64::new(0))))
    }
    async fn echo(&self, c: CounterRef) -> Result<CounterRef, CalcError> {
        Ok(c)
    }
    async fn bump(&self, c: CounterRef) -> Result<u64, CalcError> {
        c.incr().await.map_err(|e| CalcError::Other(e.to_string()))
    }
    async fn note(&self, text: String) {
        self.notes.lock().unwrap().push(text);
    }
}

/// Payloads both ways, for the write paths.
#[interface(name = "test.blob.v1")]
pub trait Blob {
    /// Gives the bytes back.
    async fn echo(&self, data: Bytes) -> Result<Bytes, CalcError>;
    /// Has `back` echo the bytes, and returns what it answered.
    async fn relay(&self, back: BlobRef, data: Bytes) -> Result<Bytes, CalcError>;
}

struct BlobImpl;

impl Blob for BlobImpl {
    async fn echo(&self, data: Bytes) -> Result<Bytes, CalcError> {
        Ok(data)
    }
    async fn relay(&self, back: BlobRef, data: Bytes) -> Result<Bytes, CalcError> {
        back.echo(data)
            .await
            .map_err(|e| CalcError::Other(e.to_string()))
    }
}

struct CounterImpl(AtomicU64);

impl Counter for CounterImpl {
    async fn incr(&self) -> Result<u64, CalcError> {
        Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

struct WatcherImpl(Arc<Mutex<Vec<u64>>>);

impl Watcher for WatcherImpl {
    async fn notify(&self, n: u64) -> Result<(), CalcError> {
        self.0.lock().unwrap().push(n);
        Ok(())
    }
}

/// A server Tub exporting a calculator, and a client Tub holding a reference to it.
async fn pair(grid: &Grid) -> (Tub, Tub, Arc<CalcImpl>, CalcRef) {
    let (server, client) = (grid.tub().await, grid.tub().await);
    let calc = Arc::new(CalcImpl::default());
    let furl = server.register(CalcRef::serve(calc.clone())).unwrap();
    let r: CalcRef = client.get(&furl).await.unwrap();
    (server, client, calc, r)
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(super::Net::Tcp))
                    .await
                    .expect("test timed out");
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mem() {
                tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(super::Net::Mem))
                    .await
                    .expect("test timed out");
            }
        })*
    };
}

both!(
    call_and_answer,
    application_error,
    undeclared_method_and_bad_arguments,
    reference_returned_then_called,
    callback_reference,
    decref_reaches_the_exporter,
    reference_goes_home,
    gift_to_a_third_tub,
    gifts_can_be_refused,
    crossfire_ends_with_one_connection,
    restarted_peer_replaces_the_connection,
    disconnect_fails_pending_calls_and_fires_observers_once,
    reconnector_reconnects_and_reset_shortens_the_wait,
    call_flood_is_bounded,
    oneway_calls,
    one_connection_per_peer_and_status,
    dead_hint_beside_a_good_one,
    persisted_furl_survives_a_restart,
    keepalive_and_disconnect_timeout,
    parallel_hints_to_one_tub_end_with_one_connection,
    callbacks_beyond_the_inbound_bound_do_not_deadlock,
    references_in_refused_and_abandoned_calls_are_released,
    payloads_of_every_size_arrive_whole_from_every_writer,
);

/// `len` bytes that say which call they belong to.
fn payload(tag: u64, len: usize) -> Bytes {
    let seed = tag.to_le_bytes();
    Bytes::from(
        (0..len)
            .map(|i| seed[i % 8] ^ (i / 8) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Every way a frame can be written: a lone caller writing its own call (small, and too large
/// for the stream to take at once, which leaves the rest to the writer task), many callers
/// batched by the writer task, the reader writing the answers of one read, and calls back
/// from a method on a task of its own, all at once on two workers.
async fn payloads_of_every_size_arrive_whole_from_every_writer(net: Net) {
    let grid = Grid::new(net);
    let (server, client) = (grid.tub().await, grid.tub().await);
    let furl = server.register(BlobRef::serve(BlobImpl)).unwrap();
    let blob: BlobRef = client.get(&furl).await.unwrap();
    let sizes = [0, 1, 100, 5_000, 70_000, 300_000, 900_000];
    // One caller at a time: each call is written by its caller.
    for (i, &len) in sizes.iter().chain(sizes.iter().rev()).enumerate() {
        let data = payload(i as u64, len);
        assert_eq!(blob.echo(data.clone()).await.unwrap(), data, "size {len}");
    }
    // Many at once, some of them calling back into the client.
    let back = BlobRef::serve(BlobImpl);
    let mut tasks = Vec::new();
    for t in 0..12u64 {
        let (blob, back) = (blob.clone(), back.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let tag = t * 1000 + i;
                let len = sizes[((t + i) % sizes.len() as u64) as usize];
                let data = payload(tag, len);
                let got = match (t + i) % 3 {
                    0 => blob.relay(back.clone(), data.clone()).await,
                    _ => blob.echo(data.clone()).await,
                };
                assert_eq!(got.unwrap(), data, "call {tag}, {len} bytes");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        (client.connection_count(), server.connection_count()),
        (1, 1)
    );
}

async fn call_and_answer(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, _calc, r) = pair(&grid).await;
    assert_eq!(r.add(2, 3).await.unwrap(), 5);
    // Many calls outstanding on one connection.
    let calls: Vec<_> = (0..100u64)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.add(i, i).await.unwrap() })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), 2 * i as u64);
    }
}

async fn application_error(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, _calc, r) = pair(&grid).await;
    match r.div(1, 0).await {
        Err(CallError::App(CalcError::DivideByZero)) => {}
        other => panic!("expected the method's own error, got {other:?}"),
    }
    assert_eq!(r.div(9, 3).await.unwrap(), 3);
}

async fn undeclared_method_and_bad_arguments(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, _calc, r) = pair(&grid).await;
    let raw: &ObjectRef = r.object_ref();
    let e = raw
        .call::<_, u64, CalcError>(CalcRef::INTERFACE, "multiply", &(1u64, 2u64))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Refused(Refusal::UnknownMethod { method, .. }) if method == "multiply"),
        "{e}"
    );
    let e = raw
        .call::<_, u64, CalcError>(CalcRef::INTERFACE, "add", &("two", "three"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Refused(Refusal::BadArguments { method, .. }) if method == "add"),
        "{e}"
    );
    let e = raw
        .call::<_, u64, CalcError>(CalcRef::INTERFACE, "add", &(1u64,))
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::Refused(Refusal::BadArguments { .. })),
        "{e}"
    );
    let e = raw
        .call::<_, u64, CalcError>("test.other.v1", "add", &(1u64, 2u64))
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::Refused(Refusal::WrongInterface { .. })),
        "{e}"
    );
    // The connection is unharmed.
    assert_eq!(r.add(20, 22).await.unwrap(), 42);
}

async fn reference_returned_then_called(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, _calc, r) = pair(&grid).await;
    let counter = r.counter(10).await.unwrap();
    assert!(!counter.object_ref().is_local());
    assert_eq!(counter.incr().await.unwrap(), 11);
    assert_eq!(counter.incr().await.unwrap(), 12);
    let other = r.counter(0).await.unwrap();
    assert_eq!(other.incr().await.unwrap(), 1);
}

async fn callback_reference(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, _calc, r) = pair(&grid).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = WatcherRef::serve(WatcherImpl(seen.clone()));
    r.subscribe(watcher.clone(), 7).await.unwrap();
    r.subscribe(watcher, 8).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![7, 8]);
}

async fn decref_reaches_the_exporter(net: Net) {
    let grid = Grid::new(net);
    let (server, client, _calc, r) = pair(&grid).await;
    let base = server.exports_to(&client.tubid());
    let a = r.counter(0).await.unwrap();
    let b = r.counter(0).await.unwrap();
    assert_eq!(server.exports_to(&client.tubid()), base + 2);
    let a2 = a.clone();
    drop(a);
    assert_eq!(
        a2.incr().await.unwrap(),
        1,
        "a clone keeps the reference alive"
    );
    drop(a2);
    eventually(10, "the first counter is released", || {
        server.exports_to(&client.tubid()) == base + 1
    })
    .await;
    drop(b);
    eventually(10, "both counters are released", || {
        server.exports_to(&client.tubid()) == base
    })
    .await;
}

async fn reference_goes_home(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, _calc, r) = pair(&grid).await;
    let mine = CounterRef::serve(CounterImpl(AtomicU64::new(100)));
    let back = r.echo(mine).await.unwrap();
    assert!(
        back.object_ref().is_local(),
        "a reference sent home resolves to the local object"
    );
    assert_eq!(back.incr().await.unwrap(), 101);
    // And the server sees our counter as remote, and can call it.
    assert_eq!(r.bump(back).await.unwrap(), 102);
}

async fn gift_to_a_third_tub(net: Net) {
    let grid = Grid::new(net);
    let (_s, client, _calc, r) = pair(&grid).await;
    let third = grid.tub().await;
    let counter_furl = third
        .register(CounterRef::serve(CounterImpl(AtomicU64::new(0))))
        .unwrap();
    let counter: CounterRef = client.get(&counter_furl).await.unwrap();
    assert_eq!(counter.incr().await.unwrap(), 1);
    // The server receives a reference to an object on the third Tub, and calls it there.
    assert_eq!(r.bump(counter.clone()).await.unwrap(), 2);
    assert_eq!(counter.incr().await.unwrap(), 3);
}

async fn gifts_can_be_refused(net: Net) {
    let grid = Grid::new(net);
    let strict = grid
        .tub_with(
            Identity::generate().unwrap(),
            Grid::config().accept_gifts(false),
        )
        .await;
    let client = grid.tub().await;
    let third = grid.tub().await;
    let furl = strict
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let r: CalcRef = client.get(&furl).await.unwrap();
    let counter: CounterRef = client
        .get(
            &third
                .register(CounterRef::serve(CounterImpl(AtomicU64::new(0))))
                .unwrap(),
        )
        .await
        .unwrap();
    let e = r.bump(counter).await.unwrap_err();
    assert!(
        matches!(&e, CallError::Refused(Refusal::BadReference(m)) if m.contains("gifts")),
        "{e}"
    );
    assert_eq!(r.add(1, 1).await.unwrap(), 2);
}

async fn crossfire_ends_with_one_connection(net: Net) {
    let grid = Grid::new(net);
    for _ in 0..5 {
        let (a, b) = (grid.tub().await, grid.tub().await);
        let fa = a
            .register(CalcRef::serve(Arc::new(CalcImpl::default())))
            .unwrap();
        let fb = b
            .register(CalcRef::serve(Arc::new(CalcImpl::default())))
            .unwrap();
        let (ra, rb) = tokio::join!(b.get::<CalcRef>(&fa), a.get::<CalcRef>(&fb));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        eventually(10, "one connection on each side", || {
            a.connection_count() == 1 && b.connection_count() == 1
        })
        .await;
        let (ia, ib) = (
            a.connection_info(&b.tubid()).unwrap(),
            b.connection_info(&a.tubid()).unwrap(),
        );
        assert_ne!(ia.side, ib.side, "both ends kept the same connection");
        // Recorded traffic between two Folio Tubs is protected by the hybrid group.
        #[cfg(feature = "post-quantum")]
        for info in [&ia, &ib] {
            assert_eq!(info.key_exchange, Some(rustls::NamedGroup::X25519MLKEM768));
        }
        // References made on the losing connection are re-made by the caller; fresh ones work.
        let ra = match ra.add(1, 1).await {
            Ok(_) => ra,
            Err(_) => b.get::<CalcRef>(&fa).await.unwrap(),
        };
        let rb = match rb.add(1, 1).await {
            Ok(_) => rb,
            Err(_) => a.get::<CalcRef>(&fb).await.unwrap(),
        };
        assert_eq!(ra.add(2, 2).await.unwrap(), 4);
        assert_eq!(rb.add(3, 3).await.unwrap(), 6);
    }
}

async fn restarted_peer_replaces_the_connection(net: Net) {
    let grid = Grid::new(net);
    let client = grid.tub().await;
    let server_pem = Identity::generate().unwrap().to_pem();
    let old = grid
        .tub_with(Identity::from_pem(&server_pem).unwrap(), Grid::config())
        .await;
    let furl = old
        .register_as(CalcRef::serve(Arc::new(CalcImpl::default())), "calc")
        .unwrap();
    let r: CalcRef = client.get(&furl).await.unwrap();
    let lost = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = lost.clone();
    r.object_ref()
        .on_disconnect(move |why| l.lock().unwrap().push(why.to_string()));
    let old_incarnation = client
        .connection_info(&old.tubid())
        .unwrap()
        .peer_hello
        .incarnation;

    // The same identity starts again elsewhere (a new incarnation) and calls the client,
    // while the client still holds the old connection.
    let new = grid
        .tub_with(Identity::from_pem(&server_pem).unwrap(), Grid::config())
        .await;
    assert_eq!(new.tubid(), old.tubid());
    let cfurl = client
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let back: CalcRef = new.get(&cfurl).await.unwrap();
    assert_eq!(back.add(1, 2).await.unwrap(), 3);
    eventually(10, "the old connection is replaced", || {
        lost.lock().unwrap().len() == 1
    })
    .await;
    assert!(
        lost.lock().unwrap()[0].contains("restarted"),
        "{:?}",
        lost.lock().unwrap()
    );
    let info = client.connection_info(&old.tubid()).unwrap();
    assert_ne!(info.peer_hello.incarnation, old_incarnation);
    assert_eq!(client.connection_count(), 1);
    old.shutdown().await;
}

async fn disconnect_fails_pending_calls_and_fires_observers_once(net: Net) {
    let grid = Grid::new(net);
    let (server, client, _calc, r) = pair(&grid).await;
    let fired = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let f = fired.clone();
        r.object_ref().on_disconnect(move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        });
    }
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.slow(30_000).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    server.shutdown().await;
    for p in pending {
        let e = p.await.unwrap().unwrap_err();
        // The server said goodbye before it closed: the calls say so, in a type.
        assert!(
            matches!(
                e,
                CallError::Disconnected(Disconnect::PeerGoodbye(GoodbyeReason::Shutdown))
            ),
            "{e}"
        );
        assert!(e.may_have_run());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pending calls fail at once"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        fired.load(Ordering::SeqCst),
        2,
        "each observer fires exactly once"
    );
    // An observer added after the fact fires once, right away.
    let late = fired.clone();
    r.object_ref().on_disconnect(move |_| {
        late.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(fired.load(Ordering::SeqCst), 3);
    assert!(matches!(r.add(1, 1).await, Err(CallError::Disconnected(_))));
    assert_eq!(client.connection_count(), 0);
}

async fn reconnector_reconnects_and_reset_shortens_the_wait(net: Net) {
    let grid = Grid::new(net);
    let client = grid.tub().await;
    let pem = Identity::generate().unwrap().to_pem();
    let server = grid
        .tub_at(
            Identity::from_pem(&pem).unwrap(),
            Grid::config(),
            "fixed",
            0,
        )
        .await;
    let furl = server
        .register_as(CalcRef::serve(Arc::new(CalcImpl::default())), "calc")
        .unwrap();
    let port = match furl.hints()[0] {
        folio_rpc::Hint::Tcp { port, .. } => port,
        _ => 0,
    };
    let connects = Arc::new(AtomicUsize::new(0));
    let c = connects.clone();
    let policy = ReconnectPolicy::default()
        .initial(Duration::from_millis(50))
        .max(Duration::from_millis(200));
    let rec = client.connect_to(furl.clone(), policy, move |r| {
        let calc = folio_rpc::TypedRef::from_object_ref(r).map(|c: CalcRef| c);
        assert!(calc.is_ok());
        c.fetch_add(1, Ordering::SeqCst);
    });
    eventually(10, "first connection", || {
        connects.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(matches!(
        rec.status().state,
        ReconnectorState::Connected { .. }
    ));

    // The server goes away and comes back at the same place with the same identity.
    server.shutdown().await;
    grid.unplug(&furl);
    eventually(10, "the reconnector notices", || {
        !matches!(rec.status().state, ReconnectorState::Connected { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rec.status().last_error.is_some());
    let server = grid
        .tub_at(
            Identity::from_pem(&pem).unwrap(),
            Grid::config(),
            "fixed",
            port,
        )
        .await;
    server
        .register_as(CalcRef::serve(Arc::new(CalcImpl::default())), "calc")
        .unwrap();
    eventually(10, "reconnected", || connects.load(Ordering::SeqCst) == 2).await;
    rec.stop();

    // With a long backoff, reset() retries at once.
    let slow = ReconnectPolicy::default()
        .initial(Duration::from_secs(300))
        .max(Duration::from_secs(300));
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let rec = client.connect_to(furl.clone(), slow, move |_| {
        n2.fetch_add(1, Ordering::SeqCst);
    });
    eventually(10, "connected", || n.load(Ordering::SeqCst) == 1).await;
    client.disconnect(&server.tubid());
    eventually(10, "waiting", || {
        matches!(rec.status().state, ReconnectorState::Waiting { .. })
    })
    .await;
    rec.reset();
    eventually(10, "reset reconnects long before the backoff", || {
        n.load(Ordering::SeqCst) == 2
    })
    .await;
    rec.stop();
}

async fn call_flood_is_bounded(net: Net) {
    let grid = Grid::new(net);
    let server = grid
        .tub_with(
            Identity::generate().unwrap(),
            Grid::config().max_inbound_calls(4),
        )
        .await;
    let client = grid.tub().await;
    let calc = Arc::new(CalcImpl::default());
    let furl = server.register(CalcRef::serve(calc.clone())).unwrap();
    let r: CalcRef = client.get(&furl).await.unwrap();
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.slow(20).await.unwrap() })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 20);
    }
    let max = calc.max_running.load(Ordering::SeqCst);
    assert!(max <= 4, "at most 4 calls ran at once, saw {max}");
    assert!(max >= 2, "calls did run concurrently ({max})");
}

async fn oneway_calls(net: Net) {
    let grid = Grid::new(net);
    let (_s, _c, calc, r) = pair(&grid).await;
    r.note("first".into()).await.unwrap();
    r.note("second".into()).await.unwrap();
    // In-order delivery: an answered call after the notes means the notes arrived first.
    r.add(0, 0).await.unwrap();
    eventually(5, "notes delivered in order", || {
        *calc.notes.lock().unwrap() == vec!["first".to_string(), "second".to_string()]
    })
    .await;
}

async fn one_connection_per_peer_and_status(net: Net) {
    let grid = Grid::new(net);
    let (server, client) = (grid.tub().await, grid.tub().await);
    let f1 = server
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let f2 = server
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let (r1, r2) = tokio::join!(client.get::<CalcRef>(&f1), client.get::<CalcRef>(&f2));
    r1.unwrap().add(1, 1).await.unwrap();
    r2.unwrap().add(1, 1).await.unwrap();
    assert_eq!(client.connection_count(), 1);
    let status = client.connection_status();
    assert_eq!(status.len(), 1);
    let s = &status[0];
    assert!(s.connected);
    assert_eq!(s.tubid, server.tubid());
    assert_eq!(
        s.winning_hint.as_deref(),
        Some(f1.hints()[0].to_string().as_str())
    );
    assert_eq!(s.side, Some(folio_rpc::Side::Client));
    assert!(s.established_at.is_some() && s.last_received.is_some());
    assert_eq!(s.hints[0].status, "connected");
    // A Tub calling its own FURL needs no network.
    let own = server.get::<CalcRef>(&f1).await.unwrap();
    assert!(own.object_ref().is_local());
    assert_eq!(own.add(2, 2).await.unwrap(), 4);
}

async fn dead_hint_beside_a_good_one(net: Net) {
    let grid = Grid::new(net);
    let (server, client) = (grid.tub().await, grid.tub().await);
    let good = server
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let dead = match net {
        Net::Tcp => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            format!("tcp:127.0.0.1:{port}")
        }
        Net::Mem => "mem:nobody-here".to_string(),
    };
    let text = good
        .to_string()
        .replacen('@', &format!("@{dead},x-future:9,"), 1);
    let furl: folio_rpc::Furl = text.parse().unwrap();
    assert_eq!(furl.hints().len(), 3);
    let r: CalcRef = client.get(&furl).await.unwrap();
    assert_eq!(r.add(1, 2).await.unwrap(), 3);
    let s = &client.connection_status()[0];
    let by_hint = |h: &str| {
        s.hints
            .iter()
            .find(|x| x.hint == h)
            .map(|x| x.status.clone())
            .unwrap_or_default()
    };
    assert!(
        by_hint("x-future:9").starts_with("skipped"),
        "{:?}",
        s.hints
    );
    let d = by_hint(&dead);
    assert!(d.starts_with("failed") || d.starts_with("cancelled"), "{d}");
    assert_eq!(by_hint(&good.hints()[0].to_string()), "connected");

    // No usable hint at all: a clear error.
    let stranger = Identity::generate().unwrap().tubid();
    let none: folio_rpc::Furl = format!("folio://{stranger}@x-future:1/abc")
        .parse()
        .unwrap();
    let e = client.get_reference(&none).await.unwrap_err();
    assert!(e.to_string().contains("no usable hint"), "{e}");
}

/// Hints are raced, not tried in turn: with a *silent* hint first (a listener that accepts
/// and never answers, so its handshake would hang until the dial timeout) and a good hint
/// second, `get` completes in a small fraction of the dial timeout, the silent attempt is
/// reported as cancelled, and its socket is closed rather than left to time out.
///
/// How it fails: dialing hints one after another waits the whole dial timeout (20 s) on the
/// silent hint first, which the elapsed-time bound refuses; not cancelling the losers leaves
/// the silent hint "negotiating" (status) and its socket open (no EOF at the listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_hint_first_is_cancelled_when_a_good_hint_wins() {
    use tokio::io::AsyncReadExt;
    let grid = Grid::new(Net::Tcp);
    let server = grid.tub().await;
    let dial_timeout = Duration::from_secs(20);
    let client = grid
        .tub_with(
            Identity::generate().unwrap(),
            Grid::config().dial_timeout(dial_timeout),
        )
        .await;
    let good = server
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();

    // The silent listener: accepts, reads whatever comes, never writes. It reports each
    // accepted connection, and when the dialer closed it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_hint = format!("tcp:127.0.0.1:{}", silent.local_addr().unwrap().port());
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, c) = (accepted.clone(), closed.clone());
    let silent_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = silent.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                // Ok(_) at EOF, Err on a reset: either way the dialer let go.
                let _ = s.read_to_end(&mut sink).await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });

    let text = good
        .to_string()
        .replacen('@', &format!("@{silent_hint},"), 1);
    let furl: folio_rpc::Furl = text.parse().unwrap();
    assert_eq!(
        furl.hints()[0].to_string(),
        silent_hint,
        "the silent hint is first"
    );
    let t0 = std::time::Instant::now();
    let r: CalcRef = tokio::time::timeout(dial_timeout * 2, client.get(&furl))
        .await
        .expect("get gave up")
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took < dial_timeout / 8,
        "connecting took {took:?}: the silent hint held up the good one (dial timeout {dial_timeout:?})"
    );
    assert_eq!(r.add(2, 3).await.unwrap(), 5);

    let s = client
        .connection_status()
        .into_iter()
        .find(|s| s.tubid == server.tubid())
        .unwrap();
    let by_hint = |h: &str| {
        s.hints
            .iter()
            .find(|x| x.hint == h)
            .map(|x| x.status.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        by_hint(&silent_hint),
        "cancelled: another hint connected first",
        "{:?}",
        s.hints
    );
    assert_eq!(by_hint(&good.hints()[0].to_string()), "connected");
    assert_eq!(
        s.winning_hint.as_deref(),
        Some(good.hints()[0].to_string().as_str())
    );

    // The silent hint was really dialed (in parallel), and its socket was closed when the
    // attempt was cancelled, long before the dial timeout.
    eventually(5, "the silent listener to see the dial", || {
        accepted.load(Ordering::SeqCst) >= 1
    })
    .await;
    eventually(5, "the cancelled attempt to close its socket", || {
        closed.load(Ordering::SeqCst) == accepted.load(Ordering::SeqCst)
    })
    .await;
    silent_task.abort();
}

async fn persisted_furl_survives_a_restart(net: Net) {
    let grid = Grid::new(net);
    let dir = std::env::temp_dir().join(format!("folio-furl-{}-{:?}", std::process::id(), net));
    std::fs::create_dir_all(&dir).unwrap();
    let (id_path, furl_path) = (dir.join("tub.pem"), dir.join("calc.furl"));
    let first = grid
        .tub_at(
            Identity::load_or_generate(&id_path).unwrap(),
            Grid::config(),
            "stable",
            0,
        )
        .await;
    let furl = first
        .register_as(CalcRef::serve(Arc::new(CalcImpl::default())), "calc")
        .unwrap();
    furl.save(&furl_path).unwrap();
    let port = match furl.hints()[0] {
        folio_rpc::Hint::Tcp { port, .. } => port,
        _ => 0,
    };
    first.shutdown().await;
    grid.unplug(&furl);
    drop(first);

    // A new process: the same identity file, the same place, the same name.
    let second = grid
        .tub_at(
            Identity::load(&id_path).unwrap(),
            Grid::config(),
            "stable",
            port,
        )
        .await;
    let again = second
        .register_as(CalcRef::serve(Arc::new(CalcImpl::default())), "calc")
        .unwrap();
    let saved = folio_rpc::Furl::load(&furl_path).unwrap();
    assert_eq!(again, saved);
    let client = grid.tub().await;
    let r: CalcRef = client.get(&saved).await.unwrap();
    assert_eq!(r.add(1, 1).await.unwrap(), 2);
    // Unregistered, the name is gone; the reference already held keeps working.
    assert!(second.unregister("calc"));
    let e = client.get_reference(&saved).await.unwrap_err();
    assert!(
        matches!(e, folio_rpc::ReferenceError::UnknownName(_)),
        "{e}"
    );
    assert_eq!(r.add(2, 2).await.unwrap(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn keepalive_and_disconnect_timeout(net: Net) {
    let grid = Grid::new(net);
    let lively = Grid::config()
        .keepalive(Some(Duration::from_millis(50)))
        .disconnect_timeout(Some(Duration::from_millis(300)));
    // Two Tubs that ping each other stay connected through long silences.
    let server = grid
        .tub_with(Identity::generate().unwrap(), lively.clone())
        .await;
    let client = grid
        .tub_with(Identity::generate().unwrap(), lively.clone())
        .await;
    let furl = server
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let r: CalcRef = client.get(&furl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        r.add(1, 1).await.unwrap(),
        2,
        "keepalive kept the idle connection up"
    );

    // A peer that completes the handshake and then goes silent is dropped at the timeout.
    let silent =
        folio_rpc::Handshaker::new(Arc::new(Identity::generate().unwrap()), Default::default())
            .unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (est, accepted) = tokio::join!(silent.connect(a, server.tubid()), server.accept(b));
    let _est = est.unwrap();
    accepted.unwrap();
    let lost_at = std::time::Instant::now();
    eventually(5, "the silent peer is dropped", || {
        server.connection_info(&silent.tubid()).is_none()
    })
    .await;
    let waited = lost_at.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "not before the timeout ({waited:?})"
    );
    // The silent peer is told why, then the stream ends.
    let mut est = _est;
    use folio_rpc::message::{decode, GoodbyeReason, Message};
    let mut pings = 0;
    loop {
        let frame = est
            .reader
            .next_frame()
            .await
            .unwrap()
            .expect("a goodbye frame");
        match decode(frame).unwrap() {
            Message::Ping { .. } => pings += 1,
            Message::Goodbye { reason } => {
                assert_eq!(reason, GoodbyeReason::Timeout);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pings >= 1,
        "the silent peer was pinged before being dropped"
    );
    assert!(est.reader.next_frame().await.unwrap().is_none());
}

// Parameter names that the generated code must not capture.
#[interface(name = "test.hygiene.v1")]
pub trait Hygiene {
    async fn r#type(
        &self,
        this: u8,
        ctx: u8,
        method: u8,
        args: u8,
        result: u8,
    ) -> Result<u8, CalcError>;
}

struct HygieneImpl;

impl Hygiene for HygieneImpl {
    async fn r#type(
        &self,
        this: u8,
        ctx: u8,
        method: u8,
        args: u8,
        result: u8,
    ) -> Result<u8, CalcError> {
        Ok(this + ctx + method + args + result)
    }
}

#[tokio::test]
async fn generated_code_is_hygienic() {
    let tub = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(folio_rpc::NoConnector),
        TubConfig::default(),
    )
    .unwrap();
    let furl = tub.register(HygieneRef::serve(HygieneImpl)).unwrap();
    let h: HygieneRef = tub.get(&furl).await.unwrap();
    assert_eq!(h.r#type(1, 2, 3, 4, 5).await.unwrap(), 15);
    let raw = h
        .object_ref()
        .call::<_, u8, CalcError>("test.hygiene.v1", "type", &(1u8, 1u8, 1u8, 1u8, 1u8))
        .await;
    assert_eq!(raw.unwrap(), 5, "the wire name of r#type is \"type\"");
}

/// A peer that sends pings but never reads the pongs is cut off once the unread bytes reach
/// the write budget, instead of being buffered without limit.
#[tokio::test]
async fn peer_that_never_reads_is_cut_off() {
    let server = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(folio_rpc::NoConnector),
        TubConfig::default().max_write_queue(4096),
    )
    .unwrap();
    let rude =
        folio_rpc::Handshaker::new(Arc::new(Identity::generate().unwrap()), Default::default())
            .unwrap();
    let (a, b) = tokio::io::duplex(16 * 1024);
    let (est, accepted) = tokio::join!(rude.connect(a, server.tubid()), server.accept(b));
    accepted.unwrap();
    let mut est = est.unwrap();
    let flood = async {
        for nonce in 0..200_000u64 {
            if est
                .writer
                .send_message(&folio_rpc::message::Message::Ping { nonce })
                .await
                .is_err()
            {
                return nonce;
            }
        }
        200_000
    };
    let t0 = std::time::Instant::now();
    let sent = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the flood ends");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "cut off at once, not after a linger"
    );
    assert!(
        sent < 200_000,
        "the server hung up before the whole flood was sent ({sent} pings)"
    );
    assert!(server.connection_info(&rude.tubid()).is_none());
}

async fn parallel_hints_to_one_tub_end_with_one_connection(net: Net) {
    let grid = Grid::new(net);
    for _ in 0..10 {
        let (server, client) = (grid.tub().await, grid.tub().await);
        grid.add_hint(&server).await;
        grid.add_hint(&server).await;
        let furl = server
            .register(CalcRef::serve(Arc::new(CalcImpl::default())))
            .unwrap();
        assert_eq!(furl.hints().len(), 3);
        let r: CalcRef = client.get(&furl).await.unwrap();
        assert_eq!(r.add(1, 1).await.unwrap(), 2);
        // Whatever the order the attempts finished in, both ends kept the same connection,
        // and it stays up.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(r.add(2, 2).await.unwrap(), 4);
        assert_eq!(
            (client.connection_count(), server.connection_count()),
            (1, 1)
        );
        let (c, s) = (
            client.connection_info(&server.tubid()).unwrap(),
            server.connection_info(&client.tubid()).unwrap(),
        );
        assert_eq!(c.local_hello.connection_seq, s.peer_hello.connection_seq);
        assert_eq!(
            (c.side, s.side),
            (folio_rpc::Side::Client, folio_rpc::Side::Server)
        );
    }
}

async fn callbacks_beyond_the_inbound_bound_do_not_deadlock(net: Net) {
    let grid = Grid::new(net);
    let tight = Grid::config().max_inbound_calls(2).max_queued_calls(64);
    let server = grid
        .tub_with(Identity::generate().unwrap(), tight.clone())
        .await;
    let client = grid.tub_with(Identity::generate().unwrap(), tight).await;
    let furl = server
        .register(CalcRef::serve(Arc::new(CalcImpl::default())))
        .unwrap();
    let r: CalcRef = client.get(&furl).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = WatcherRef::serve(WatcherImpl(seen.clone()));
    // 20 calls whose methods each call back into the caller and wait for the answer, against
    // a server that runs 2 calls at a time: the callbacks' answers arrive behind queued calls,
    // and must still be read. (Before the call queue, this deadlocked.)
    let calls: Vec<_> = (0..20u64)
        .map(|n| {
            let (r, w) = (r.clone(), watcher.clone());
            tokio::spawn(async move { r.subscribe(w, n).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

async fn references_in_refused_and_abandoned_calls_are_released(net: Net) {
    let grid = Grid::new(net);
    let (server, client, _calc, r) = pair(&grid).await;
    // A refused call's arguments carried a reference: the refusing side still imports it and
    // releases it, so the caller's export goes away.
    let mine = CounterRef::serve(CounterImpl(AtomicU64::new(0)));
    let e = r
        .object_ref()
        .call::<_, u64, CalcError>(CalcRef::INTERFACE, "no_such_method", &(mine,))
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::Refused(Refusal::UnknownMethod { .. })),
        "{e}"
    );
    eventually(10, "the refused call's reference is released", || {
        client.exports_to(&server.tubid()) == 0
    })
    .await;

    // A caller that gives up on a call whose answer carries a reference: the reference is
    // imported when the answer arrives anyway, and released.
    let base = server.exports_to(&client.tubid());
    let abandoned = tokio::time::timeout(Duration::from_millis(20), r.late_counter(200)).await;
    assert!(abandoned.is_err(), "the caller gave up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually(10, "the abandoned answer's reference is released", || {
        server.exports_to(&client.tubid()) == base
    })
    .await;
    assert_eq!(r.add(1, 1).await.unwrap(), 2);
}
