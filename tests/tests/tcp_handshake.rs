//! Handshakes over real TCP on 127.0.0.1 and `[::1]`: two tasks through the handler
//! registry, and two separate processes.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use folio_handlers::Registry;
use folio_rpc::{Connector, Furl, HandshakeConfig, Handshaker, Hint, Identity, Side, Swissnum};
use folio_tests::ChildGuard;
use folio_transports::tcp;

#[tokio::test]
async fn two_tasks_over_tcp_through_the_registry() {
    let server = Arc::new(
        Handshaker::new(
            Arc::new(Identity::generate().unwrap()),
            HandshakeConfig::default(),
        )
        .unwrap(),
    );
    let client = Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        HandshakeConfig::default(),
    )
    .unwrap();
    let listener = tcp::listen(&"tcp:0:interface=127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    // A FURL with an unusable hint first: it is skipped, the TCP hint works.
    let furl: Furl = format!(
        "folio://{}@x-later:1,tcp:127.0.0.1:{port}/obj",
        server.tubid()
    )
    .parse()
    .unwrap();

    let srv = server.clone();
    let accept_task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = srv.accept(stream).await.unwrap();
        let n: u64 = conn.reader.next_message().await.unwrap().unwrap();
        conn.writer.send_message(&(n * 2)).await.unwrap();
        conn.info
    });

    let registry = Registry::with_tcp();
    let mut conn = None;
    for hint in furl.hints() {
        match registry.connect(hint).await {
            Ok(stream) => {
                conn = Some(client.connect(stream, furl.tubid()).await.unwrap());
                break;
            }
            Err(e) => assert!(matches!(hint, Hint::Unknown(_)), "{hint}: {e}"),
        }
    }
    let mut conn = conn.expect("the tcp hint connects");
    conn.writer.send_message(&21u64).await.unwrap();
    let answer: u64 = conn.reader.next_message().await.unwrap().unwrap();
    assert_eq!(answer, 42);
    let server_info = tokio::time::timeout(Duration::from_secs(10), accept_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server_info.side, Side::Server);
    assert_eq!(server_info.peer, client.tubid());
    assert_eq!(conn.info.peer, server.tubid());
}

const PEER: &str = env!("CARGO_BIN_EXE_folio-handshake-peer");

/// Starts `folio-handshake-peer listen` with its identity in `dir`, and returns it, its
/// output, and the FURL it printed first.
fn listening_peer(dir: &std::path::Path) -> (ChildGuard, folio_tests::Lines, String) {
    listening_peer_on(dir, "tcp:0:interface=127.0.0.1")
}

/// [`listening_peer`] on the listen specification `spec`.
fn listening_peer_on(
    dir: &std::path::Path,
    spec: &str,
) -> (ChildGuard, folio_tests::Lines, String) {
    let mut cmd = Command::new(PEER);
    cmd.args(["listen", dir.join("server.pem").to_str().unwrap(), spec]);
    let mut peer = ChildGuard::spawn("listening peer", cmd).unwrap();
    let lines = peer.lines();
    let first = lines.next_within(Duration::from_secs(30));
    let furl = first
        .strip_prefix("FURL ")
        .expect("the listener prints its FURL first")
        .to_string();
    (peer, lines, furl)
}

#[test]
fn two_processes_over_tcp() {
    let dir = std::env::temp_dir().join(format!("folio-2proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut server, server_lines, furl) = listening_peer(&dir);
    let furl = furl.as_str();
    let parsed: Furl = furl.parse().unwrap();
    assert_eq!(parsed.swissnum().as_str().len(), 32);
    // The identity file was written 0600 and names the same Tub as the FURL.
    let saved = Identity::load(&dir.join("server.pem")).unwrap();
    assert_eq!(saved.tubid(), parsed.tubid());

    let mut dial_cmd = Command::new(PEER);
    dial_cmd.args(["dial", dir.join("client.pem").to_str().unwrap(), furl]);
    let mut client = ChildGuard::spawn("dialing peer", dial_cmd).unwrap();
    let client_lines = client.lines();
    let reply = client_lines.next_within(Duration::from_secs(30));
    let client_tub = Identity::load(&dir.join("client.pem")).unwrap().tubid();
    assert_eq!(reply, format!("REPLY pong: ping from {client_tub}"));
    let said = server_lines.next_within(Duration::from_secs(30));
    assert_eq!(
        said,
        format!("PEER {client_tub} SAID ping from {client_tub}")
    );
    assert!(client.wait_timeout(Duration::from_secs(30)).success());
    assert!(server.wait_timeout(Duration::from_secs(30)).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dialing_a_furl_for_the_wrong_tub_fails_clearly_across_processes() {
    let dir = std::env::temp_dir().join(format!("folio-2proc-wrong-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut server, _lines, furl) = listening_peer(&dir);
    let furl: Furl = furl.parse().unwrap();
    // Same address, another Tub's id.
    let other = Identity::generate().unwrap().tubid();
    let wrong = Furl::new(other, furl.hints().to_vec(), Swissnum::random());
    let out = Command::new(PEER)
        .args([
            "dial",
            dir.join("client.pem").to_str().unwrap(),
            &wrong.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong Tub"), "{stderr}");
    assert!(!server.wait_timeout(Duration::from_secs(30)).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// IPv6 end to end across processes: a peer listens on `[::1]` only, its FURL carries a
/// `tcp:[::1]:PORT` hint, and another process dials it through the handler registry.
///
/// How it fails: a listener that cannot bind an IPv6 interface, a FURL that cannot carry (or
/// print, or parse) a bracketed IPv6 hint, or a TCP handler that cannot dial one: the
/// listener then exits with an error, the hint check fails, or the dialer reports that no
/// hint worked. The listener reports the peer's address, which must be `[::1]`. A host
/// without IPv6 on loopback fails the test, loudly.
#[test]
fn two_processes_over_ipv6_loopback() {
    let dir = std::env::temp_dir().join(format!("folio-2proc-v6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut server, server_lines, furl) = listening_peer_on(&dir, "tcp:0:interface=::1");
    let parsed: Furl = furl.parse().unwrap();
    let [Hint::Tcp { host, port }] = parsed.hints() else {
        panic!("one tcp hint expected in {furl}")
    };
    assert_eq!(host.to_string(), "[::1]", "{furl}");
    assert!(furl.contains(&format!("@tcp:[::1]:{port}/")), "{furl}");

    let mut dial_cmd = Command::new(PEER);
    dial_cmd.args(["dial", dir.join("client.pem").to_str().unwrap(), &furl]);
    let mut client = ChildGuard::spawn("dialing peer", dial_cmd).unwrap();
    let client_lines = client.lines();
    let reply = client_lines.next_within(Duration::from_secs(30));
    let client_tub = Identity::load(&dir.join("client.pem")).unwrap().tubid();
    assert_eq!(reply, format!("REPLY pong: ping from {client_tub}"));
    let said = server_lines.next_within(Duration::from_secs(30));
    assert_eq!(
        said,
        format!("PEER {client_tub} SAID ping from {client_tub}")
    );
    let from = server_lines.next_within(Duration::from_secs(30));
    let from: std::net::SocketAddr = from
        .strip_prefix("FROM ")
        .unwrap_or_else(|| panic!("a FROM line, not {from:?}"))
        .parse()
        .unwrap();
    assert_eq!(from.ip(), std::net::Ipv6Addr::LOCALHOST);
    assert!(client.wait_timeout(Duration::from_secs(30)).success());
    assert!(server.wait_timeout(Duration::from_secs(30)).success());
    std::fs::remove_dir_all(&dir).unwrap();
}
