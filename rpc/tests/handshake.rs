//! The handshake over in-memory streams (`tokio::io::duplex`) and scripted mock I/O
//! (`tokio-test`): the success path and every refusal path, each with its own error.

use std::sync::Arc;
use std::time::Duration;

use folio_rpc::handshake::MAX_HELLO_LEN;
use folio_rpc::prelude::{self, Status};
use folio_rpc::{
    HandshakeConfig, HandshakeError, Handshaker, Identity, Phase, Side, TlsStream, TubId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_test::io::Builder;

fn handshaker() -> Handshaker {
    handshaker_with(HandshakeConfig::default())
}

fn handshaker_with(cfg: HandshakeConfig) -> Handshaker {
    Handshaker::new(Arc::new(Identity::generate().unwrap()), cfg).unwrap()
}

fn short_timeouts() -> HandshakeConfig {
    HandshakeConfig::default()
        .prelude_timeout(Duration::from_secs(2))
        .tls_timeout(Duration::from_secs(2))
        .hello_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn handshake_succeeds_and_frames_flow_both_ways() {
    let (alice, bob) = (handshaker(), handshaker());
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, s) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert_eq!(c.info.side, Side::Client);
    assert_eq!(s.info.side, Side::Server);
    assert_eq!((c.info.local, c.info.peer), (alice.tubid(), bob.tubid()));
    assert_eq!((s.info.local, s.info.peer), (bob.tubid(), alice.tubid()));
    assert_eq!(c.info.version, folio_rpc::handshake::PROTOCOL_VERSION);
    assert_eq!(s.info.peer_hello.incarnation, alice.incarnation());
    assert_eq!(c.info.peer_hello.incarnation, bob.incarnation());
    assert_eq!(c.info.local_hello.connection_seq, 1);
    assert_eq!(s.info.peer_hello.connection_seq, 1);

    c.writer.send_message(&(1u8, "to server")).await.unwrap();
    s.writer.send_message(&(2u8, "to client")).await.unwrap();
    let got: (u8, String) = s.reader.next_message().await.unwrap().unwrap();
    assert_eq!(got, (1, "to server".into()));
    let got: (u8, String) = c.reader.next_message().await.unwrap().unwrap();
    assert_eq!(got, (2, "to client".into()));

    // A large frame crosses many TLS records intact.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (sent, got) = tokio::join!(c.writer.send_frame(&big), s.reader.next_frame());
    sent.unwrap();
    assert_eq!(got.unwrap().unwrap(), &big[..]);

    // A clean close reads as end of stream, not an error.
    c.writer.shutdown().await.unwrap();
    assert!(s.reader.next_frame().await.unwrap().is_none());
}

#[tokio::test]
async fn one_listener_serves_several_tubs() {
    let (alice, host) = (handshaker(), handshaker());
    let second = Identity::generate().unwrap();
    host.host(&second).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, s) = tokio::join!(alice.connect(a, second.tubid()), host.accept(b));
    assert_eq!(c.unwrap().info.peer, second.tubid());
    assert_eq!(s.unwrap().info.local, second.tubid());

    host.unhost(&second.tubid());
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, _) = tokio::join!(alice.connect(a, second.tubid()), host.accept(b));
    assert!(matches!(c, Err(HandshakeError::UnknownTub(t)) if t == second.tubid()));
}

#[tokio::test]
async fn wrong_tub_is_refused_in_the_prelude() {
    let (alice, bob) = (handshaker(), handshaker());
    let nobody = TubId::from_spki(b"nobody");
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, s) = tokio::join!(alice.connect(a, nobody), bob.accept(b));
    let c = c.unwrap_err();
    assert!(
        matches!(c, HandshakeError::UnknownTub(t) if t == nobody),
        "{c}"
    );
    assert!(c.to_string().contains("wrong Tub"));
    assert!(matches!(s.unwrap_err(), HandshakeError::UnknownTub(t) if t == nobody));
}

#[tokio::test]
async fn two_clients_fail_fast_with_a_clear_error() {
    let (alice, bob) = (handshaker(), handshaker());
    let (a, b) = tokio::io::duplex(64 * 1024);
    let started = std::time::Instant::now();
    let (x, y) = tokio::join!(alice.connect(a, bob.tubid()), bob.connect(b, alice.tubid()));
    assert!(matches!(x, Err(HandshakeError::BothClients)));
    assert!(matches!(y, Err(HandshakeError::BothClients)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "must not wait for a timeout"
    );
    assert!(x.unwrap_err().to_string().contains("Side::Server"));
}

#[tokio::test(start_paused = true)]
async fn two_servers_time_out_in_the_prelude() {
    let (alice, bob) = (
        handshaker_with(short_timeouts()),
        handshaker_with(short_timeouts()),
    );
    let (mut a, mut b) = tokio::io::duplex(64 * 1024);
    let (x, y) = tokio::join!(alice.accept(&mut a), bob.accept(&mut b));
    for r in [x, y] {
        let e = r.unwrap_err();
        assert!(
            matches!(
                e,
                HandshakeError::Timeout {
                    phase: Phase::Prelude,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("Side::Server"));
    }
}

#[tokio::test]
async fn http_request_gets_an_http_refusal() {
    let bob = handshaker();
    // The server reads only as far as the first wrong byte allows (11 bytes here).
    let io = Builder::new()
        .read(b"GET /id/xyz")
        .write(prelude::refusal_for("an HTTP request"))
        .build();
    let e = bob.accept(io).await.unwrap_err();
    assert!(
        matches!(&e, HandshakeError::NotFolio(m) if m.contains("HTTP request")),
        "{e}"
    );
    assert!(e.to_string().contains("GET /id/xyz"));
}

#[tokio::test]
async fn garbage_gets_a_plain_refusal() {
    let bob = handshaker();
    let junk = [0x13u8, 0x37, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4];
    let io = Builder::new()
        .read(&junk)
        .write(prelude::refusal_for("bytes"))
        .build();
    let e = bob.accept(io).await.unwrap_err();
    assert!(
        matches!(&e, HandshakeError::NotFolio(m) if m.starts_with("bytes 13 37 de ad")),
        "{e}"
    );
}

#[tokio::test]
async fn bare_tls_client_is_named() {
    let bob = handshaker();
    let io = Builder::new()
        .read(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .write(prelude::refusal_for("TLS"))
        .build();
    let e = bob.accept(io).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("TLS ClientHello without the Folio prelude"),
        "{e}"
    );
}

#[tokio::test]
async fn truncated_prelude_is_a_close_not_a_hang() {
    let bob = handshaker();
    let io = Builder::new().read(&prelude::MAGIC[..5]).build();
    assert!(matches!(
        bob.accept(io).await,
        Err(HandshakeError::Closed(Phase::Prelude))
    ));

    // The client side: the server's answer stops half-way.
    let alice = handshaker();
    let target = TubId::from_spki(b"t");
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = async move {
        let mut req = vec![0u8; prelude::MAX_REQUEST_LEN];
        b.read_exact(&mut req).await.unwrap();
        b.write_all(&prelude::encode_answer(Status::Proceed)[..4])
            .await
            .unwrap();
        drop(b);
    };
    let (c, ()) = tokio::join!(alice.connect(a, target), server);
    assert!(matches!(c, Err(HandshakeError::Closed(Phase::Prelude))));
}

#[tokio::test]
async fn malformed_and_unsupported_preludes() {
    let bob = handshaker();
    let mut req = prelude::encode_request(&bob.tubid());
    req[10] = 99; // a TubId length that cannot be
    let io = Builder::new().read(&req[..11]).build();
    assert!(matches!(
        bob.accept(io).await,
        Err(HandshakeError::MalformedPrelude(_))
    ));

    let mut req = prelude::encode_request(&bob.tubid());
    req[9] = 9; // a prelude version from the future
    let io = Builder::new()
        .read(&req[..11])
        .read(&req[11..])
        .write(&prelude::encode_answer(Status::UnsupportedVersion))
        .build();
    assert!(matches!(
        bob.accept(io).await,
        Err(HandshakeError::UnsupportedPrelude(9))
    ));
}

#[tokio::test]
async fn busy_server_answer_is_reported() {
    let alice = handshaker();
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = async move {
        let mut req = vec![0u8; prelude::MAX_REQUEST_LEN];
        b.read_exact(&mut req).await.unwrap();
        b.write_all(&prelude::encode_answer(Status::Busy))
            .await
            .unwrap();
        b
    };
    let (c, _b) = tokio::join!(alice.connect(a, TubId::from_spki(b"x")), server);
    assert!(matches!(c, Err(HandshakeError::Busy)));
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out_in_each_phase() {
    // Sends nothing at all: the prelude times out.
    let bob = handshaker_with(short_timeouts());
    let (_a, b) = tokio::io::duplex(1024);
    let e = bob.accept(b).await.unwrap_err();
    assert!(
        matches!(e, HandshakeError::Timeout { phase: Phase::Prelude, after } if after == Duration::from_secs(2))
    );

    // Sends a valid request, then stops: TLS times out.
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    a.write_all(&prelude::encode_request(&bob.tubid()))
        .await
        .unwrap();
    let e = bob.accept(b).await.unwrap_err();
    assert!(
        matches!(
            e,
            HandshakeError::Timeout {
                phase: Phase::Tls,
                ..
            }
        ),
        "{e}"
    );

    // A client whose server never answers: the prelude times out on the client side too.
    let alice = handshaker_with(short_timeouts());
    let (a, _b) = tokio::io::duplex(64 * 1024);
    let e = alice.connect(a, bob.tubid()).await.unwrap_err();
    assert!(
        matches!(
            e,
            HandshakeError::Timeout {
                phase: Phase::Prelude,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn peer_that_stops_after_tls_times_out_in_hello() {
    let bob = handshaker_with(short_timeouts());
    let client_id = Arc::new(Identity::generate().unwrap());
    let cfg = folio_rpc::tls::client_config(&client_id).unwrap();
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let target = bob.tubid();
    let peer = async move {
        a.write_all(&prelude::encode_request(&target))
            .await
            .unwrap();
        let mut answer = [0u8; prelude::ANSWER_LEN];
        a.read_exact(&mut answer).await.unwrap();
        let mut tls = TlsStream::client(a, cfg, &target).unwrap();
        tls.handshake(1 << 16).await.unwrap();
        // ... and never sends a hello.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(tls);
    };
    let (e, ()) = tokio::join!(bob.accept(b), peer);
    let e = e.unwrap_err();
    assert!(
        matches!(
            e,
            HandshakeError::Timeout {
                phase: Phase::Hello,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn oversized_hello_is_refused_before_buffering() {
    let bob = handshaker();
    let client_id = Arc::new(Identity::generate().unwrap());
    let cfg = folio_rpc::tls::client_config(&client_id).unwrap();
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let target = bob.tubid();
    let peer = async move {
        a.write_all(&prelude::encode_request(&target))
            .await
            .unwrap();
        let mut answer = [0u8; prelude::ANSWER_LEN];
        a.read_exact(&mut answer).await.unwrap();
        let mut tls = TlsStream::client(a, cfg, &target).unwrap();
        tls.handshake(1 << 16).await.unwrap();
        // A frame header announcing 4 GiB - 1.
        tls.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        tls.flush().await.unwrap();
        tls
    };
    let (e, _tls) = tokio::join!(bob.accept(b), peer);
    let e = e.unwrap_err();
    assert!(
        matches!(&e, HandshakeError::BadHello(m) if m.contains(&MAX_HELLO_LEN.to_string())),
        "{e}"
    );
}

#[tokio::test]
async fn oversized_frame_after_handshake_is_refused() {
    let (alice, bob) = (handshaker(), handshaker());
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, s) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    // The writer refuses to exceed the limit the peer announced ...
    let limit = s.info.local_hello.max_frame_len as usize;
    assert!(c.writer.send_frame(&vec![0; limit + 1]).await.is_err());
    // ... and a peer that ignores it is refused by the reader from the header alone.
    c.writer.set_max_len(u32::MAX);
    let sender = tokio::spawn(async move {
        let _ = c.writer.send_frame(&vec![0; limit + 1]).await;
    });
    let e = s.reader.next_frame().await.unwrap_err();
    assert!(e.to_string().contains("exceeds"), "{e}");
    sender.abort();
}

#[tokio::test]
async fn no_common_version_is_named_on_both_sides() {
    let alice = handshaker_with(HandshakeConfig::default().versions((4, 5)));
    let bob = handshaker();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, s) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
    assert!(matches!(
        c,
        Err(HandshakeError::NoCommonVersion {
            ours: (4, 5),
            theirs: (1, 3)
        })
    ));
    assert!(matches!(
        s,
        Err(HandshakeError::NoCommonVersion {
            ours: (1, 3),
            theirs: (4, 5)
        })
    ));
}

#[tokio::test]
async fn overlapping_versions_pick_the_highest_common() {
    let alice = handshaker_with(HandshakeConfig::default().versions((1, 5)));
    let bob = handshaker_with(HandshakeConfig::default().versions((1, 3)));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, s) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
    assert_eq!((c.unwrap().info.version, s.unwrap().info.version), (3, 3));
}

#[tokio::test]
async fn tls_handshake_byte_bound() {
    let alice = handshaker();
    let bob = handshaker_with(HandshakeConfig::default().max_tls_handshake_bytes(64));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_c, s) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
    assert!(matches!(s, Err(HandshakeError::TlsTooLarge(64))));
}

#[tokio::test]
async fn peer_closing_mid_tls_is_reported() {
    let bob = handshaker();
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    a.write_all(&prelude::encode_request(&bob.tubid()))
        .await
        .unwrap();
    a.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap(); // half a TLS record header
    a.shutdown().await.unwrap(); // end of stream, but the answer can still be delivered
    let e = bob.accept(b).await.unwrap_err();
    assert!(matches!(e, HandshakeError::Closed(Phase::Tls)), "{e}");
    drop(a);
}
