//! Privacy mode: with `tcp = tor` or `tcp = disabled`, or in a private registry, dialing a
//! FURL whose hints are all `tcp:` never opens a direct TCP connection. A listener on
//! 127.0.0.1 counts every connection that reaches it, to prove it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use folio_handlers::{Registry, TcpHandler, TcpPolicy};
use folio_rpc::{Furl, Identity, Swissnum, Tub, TubConfig};

/// A TCP listener that counts the connections it receives (and closes them at once).
async fn recorder() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, count)
}

fn furl_to(port: u16) -> Furl {
    let tubid = Identity::generate().unwrap().tubid();
    format!(
        "folio://{tubid}@tcp:127.0.0.1:{port},tcp:localhost:{port}/{}",
        Swissnum::random()
    )
    .parse()
    .unwrap()
}

async fn dial_with(registry: Registry, port: u16) -> String {
    let cfg = TubConfig::default().dial_timeout(Duration::from_secs(5));
    let tub = Tub::new(Identity::generate().unwrap(), Arc::new(registry), cfg).unwrap();
    let e = tub
        .get_reference(&furl_to(port))
        .await
        .unwrap_err()
        .to_string();
    // Whatever the outcome, give a stray connection time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    e
}

#[tokio::test]
async fn the_recorder_sees_direct_connections() {
    let (port, count) = recorder().await;
    let e = dial_with(Registry::with_tcp(), port).await;
    assert!(
        count.load(Ordering::SeqCst) >= 1,
        "a direct dial reaches the recorder ({e})"
    );
}

#[tokio::test]
async fn private_registry_never_opens_direct_tcp() {
    let (port, count) = recorder().await;
    let mut private = Registry::private();
    assert!(private.is_private());
    let e = private
        .set("tcp", Arc::new(TcpHandler::default()))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("would reveal this host's IP address"),
        "{e}"
    );
    assert!(private.set_tcp_policy(TcpPolicy::Direct).is_err());
    let e = dial_with(private, port).await;
    assert!(e.contains("no usable hint"), "{e}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "no direct connection was opened"
    );
}

#[tokio::test]
async fn tcp_over_tor_without_tor_refuses_instead_of_going_direct() {
    let (port, count) = recorder().await;
    let mut private = Registry::private();
    private.set_tcp_policy(TcpPolicy::Tor).unwrap();
    let e = dial_with(private, port).await;
    assert!(
        e.contains("go through the tor handler, and none is configured"),
        "{e}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tcp_disabled_opens_nothing() {
    let (port, count) = recorder().await;
    let mut registry = Registry::with_tcp();
    registry.set_tcp_policy(TcpPolicy::Disabled).unwrap();
    let e = dial_with(registry, port).await;
    assert!(e.contains("no usable hint"), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

/// A rule for one peer (`[server:TUBID] tcp` in a node): the Tub hands the connector the
/// TubId of the FURL it dials, so `tcp = disabled` for that peer opens nothing to it, while
/// the same hints in another peer's FURL are dialed directly.
#[tokio::test]
async fn a_peer_of_its_own_tcp_disabled_is_never_dialed() {
    let (port, count) = recorder().await;
    let blocked = furl_to(port);
    let mut registry = Registry::with_tcp();
    registry
        .set_peer_tcp_policy(blocked.tubid(), TcpPolicy::Disabled)
        .unwrap();
    let cfg = TubConfig::default().dial_timeout(Duration::from_secs(5));
    let tub = Tub::new(Identity::generate().unwrap(), Arc::new(registry), cfg).unwrap();
    let e = tub.get_reference(&blocked).await.unwrap_err().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(e.contains("tcp = disabled for this peer"), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 0);

    let e = tub.get_reference(&furl_to(port)).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        count.load(Ordering::SeqCst) >= 1,
        "another peer is dialed ({e})"
    );
}
