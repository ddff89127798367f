//! Regression test for Tahoe-LAFS #2861, built on purpose.
//!
//! An I2P listener reaches its SAM bridge by an *outbound* TCP connection and receives inbound
//! streams over it. Foolscap took the TLS role from the socket's direction, so both ends spoke
//! TLS as clients and every I2P connection failed. Here both parties hold sockets opened by
//! `connect()`, joined by a relay on 127.0.0.1 that plays the SAM bridge; the accepting party is
//! given `Side::Server` (through `Handshaker::accept`) and the handshake completes. Two parties
//! that both act as clients fail fast with an error that names the mistake.

use std::sync::Arc;
use std::time::Duration;

use folio_rpc::{HandshakeConfig, HandshakeError, Handshaker, Identity, Side};
use tokio::net::{TcpListener, TcpStream};

/// Accepts exactly two connections and splices them together, like a SAM bridge does for an
/// accepted I2P stream.
async fn relay() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut first, &mut second).await;
    });
    (addr, task)
}

fn handshaker() -> Handshaker {
    let cfg = HandshakeConfig::default()
        .prelude_timeout(Duration::from_secs(5))
        .tls_timeout(Duration::from_secs(5))
        .hello_timeout(Duration::from_secs(5));
    Handshaker::new(Arc::new(Identity::generate().unwrap()), cfg).unwrap()
}

#[tokio::test]
async fn accepting_party_on_an_outbound_socket_is_the_tls_server() {
    let (addr, relay_task) = relay().await;
    let (listener_tub, dialer_tub) = (handshaker(), handshaker());

    // Both sockets are outbound: neither party called accept() on a TCP listener.
    let listener_side_socket = TcpStream::connect(addr).await.unwrap();
    let dialer_side_socket = TcpStream::connect(addr).await.unwrap();

    let (accepted, dialed) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            listener_tub.accept(listener_side_socket),
            dialer_tub.connect(dialer_side_socket, listener_tub.tubid())
        )
    })
    .await
    .expect("the handshake must not hang");
    let (mut accepted, mut dialed) = (accepted.unwrap(), dialed.unwrap());
    assert_eq!(accepted.info.side, Side::Server);
    assert_eq!(dialed.info.side, Side::Client);
    assert_eq!(accepted.info.peer, dialer_tub.tubid());
    assert_eq!(dialed.info.peer, listener_tub.tubid());

    dialed.writer.send_message(&"over the relay").await.unwrap();
    let got: String = accepted.reader.next_message().await.unwrap().unwrap();
    assert_eq!(got, "over the relay");
    accepted.writer.send_message(&"and back").await.unwrap();
    let got: String = dialed.reader.next_message().await.unwrap().unwrap();
    assert_eq!(got, "and back");

    drop((accepted, dialed));
    relay_task.await.unwrap();
}

#[tokio::test]
async fn two_clients_over_the_relay_fail_fast_and_say_why() {
    let (addr, relay_task) = relay().await;
    let (a, b) = (handshaker(), handshaker());
    let sa = TcpStream::connect(addr).await.unwrap();
    let sb = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    // The Foolscap mistake: the listener also takes the client role.
    let (x, y) = tokio::join!(a.connect(sa, b.tubid()), b.connect(sb, a.tubid()));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "detected without a timeout"
    );
    for r in [x, y] {
        let e = r.unwrap_err();
        assert!(matches!(e, HandshakeError::BothClients), "{e}");
        assert!(e.to_string().contains("Side::Server"), "{e}");
    }
    relay_task.await.unwrap();
}
