//! How each refusal reaches the peer (docs/protocol.md §1 and §3, docs/handshake.md §6 and
//! §8), seen on the wire by a peer built from the public handshake API and hand-made frames,
//! as a second implementation would see it.

use std::sync::Arc;
use std::time::Duration;

use folio_rpc::frame::{FrameReader, FrameWriter};
use folio_rpc::message::{decode, AnswerBody, GoodbyeReason, Message};
use folio_rpc::prelude;
use folio_rpc::{
    Established, HandshakeConfig, HandshakeError, Handshaker, Hello, Identity, NoConnector,
    Refusal, TlsStream, Tub, TubConfig, TubId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn server_tub() -> Tub {
    Tub::new(
        Identity::generate().unwrap(),
        Arc::new(NoConnector),
        TubConfig::default(),
    )
    .unwrap()
}

fn handshaker() -> Handshaker {
    Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        HandshakeConfig::default(),
    )
    .unwrap()
}

/// A client connected to `server` by the reference handshake; the server side is the Tub's.
async fn connect(server: &Tub) -> Established<DuplexStream> {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let tub = server.clone();
    tokio::spawn(async move { tub.accept(b).await });
    timeout(WAIT, handshaker().connect(a, server.tubid()))
        .await
        .expect("the handshake in time")
        .expect("the handshake")
}

/// The postcard bytes of a call to the root's `get_reference(name)` whose reference table is
/// `refs`, the table's entries already encoded (the table is the call's last field).
fn root_call(id: u64, name: &str, refs: &[&[u8]]) -> Vec<u8> {
    let args = postcard::to_allocvec(&(name,)).unwrap();
    let mut bytes = postcard::to_allocvec(&Message::Call {
        id,
        target: 0,
        interface: "folio.root",
        method: "get_reference",
        args: &args,
        refs: Vec::new(),
    })
    .unwrap();
    assert_eq!(bytes.pop(), Some(0), "an empty reference table");
    bytes.push(refs.len() as u8);
    for r in refs {
        bytes.extend_from_slice(r);
    }
    bytes
}

/// Sends `payload` as one frame and returns the next message from the peer.
async fn exchange(est: &mut Established<DuplexStream>, payload: &[u8]) -> Vec<u8> {
    est.writer.send_frame(payload).await.unwrap();
    next_frame(&mut est.reader)
        .await
        .expect("a frame, not the end of the stream")
}

async fn next_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Option<Vec<u8>> {
    timeout(WAIT, r.next_frame())
        .await
        .expect("a frame or the end in time")
        .expect("a frame or a clean end")
        .map(<[u8]>::to_vec)
}

fn bad_reference(frame: &[u8], want_id: u64) -> String {
    match decode(frame).expect("a message") {
        Message::Answer {
            id,
            body: AnswerBody::Refused(Refusal::BadReference(why)),
        } if id == want_id => why,
        other => panic!("expected BadReference for call {want_id}, got {other:?}"),
    }
}

/// The connection still works: an unknown name is answered with the root's own error.
async fn still_answers(est: &mut Established<DuplexStream>, id: u64) {
    let frame = exchange(est, &root_call(id, "no-such-name", &[])).await;
    match decode(&frame).expect("a message") {
        Message::Answer {
            id: got,
            body: AnswerBody::AppError { value, .. },
        } => assert_eq!((got, value), (id, &[0u8][..]), "RootError::UnknownName"),
        other => panic!("expected the root's answer, got {other:?}"),
    }
}

/// A `Gift` whose FURL does not parse refuses the call with `BadReference`; the connection
/// stays up (a refused call never harms it).
#[tokio::test]
async fn a_gift_whose_furl_does_not_parse_refuses_only_the_call() {
    let server = server_tub();
    let mut est = connect(&server).await;
    for (id, furl) in [
        (1u64, "not a furl"),
        (2, "pb://abc@tcp:a:1/s"),
        (3, &*format!("folio://{}@tcp:a:0/s", TubId::from_spki(b"x"))),
    ] {
        // RefDesc::Gift is variant 2: the FURL's text, then the interface.
        let mut gift = vec![2];
        gift.extend(postcard::to_allocvec(&(furl, "test.any.v1")).unwrap());
        let frame = exchange(&mut est, &root_call(id, "x", &[&gift])).await;
        let why = bad_reference(&frame, id);
        assert!(why.contains("FURL"), "{furl}: {why}");
    }
    still_answers(&mut est, 4).await;
}

/// `Mine` and `Yours` with id 0 are refused: object 0 is the root, never passed as a
/// reference.
#[tokio::test]
async fn references_to_object_zero_are_refused() {
    let server = server_tub();
    let mut est = connect(&server).await;
    // Mine { id: 0, interface: "x" } and Yours { id: 0 }.
    for (id, entry) in [(1u64, &[0u8, 0, 1, b'x'][..]), (2, &[1, 0][..])] {
        let frame = exchange(&mut est, &root_call(id, "x", &[entry])).await;
        let why = bad_reference(&frame, id);
        assert!(why.contains("0"), "{why}");
    }
    still_answers(&mut est, 3).await;
}

/// A frame over the receiver's limit: `Goodbye(ProtocolViolation)` naming the sizes, then
/// close_notify (a clean end of stream).
#[tokio::test]
async fn an_oversized_frame_gets_a_goodbye_that_says_so() {
    let server = server_tub();
    let mut est = connect(&server).await;
    let limit = est.info.peer_hello.max_frame_len;
    est.writer
        .write_encoded(&(limit + 1).to_be_bytes())
        .await
        .unwrap();
    est.writer.flush().await.unwrap();
    let frame = next_frame(&mut est.reader)
        .await
        .expect("a goodbye before the close");
    match decode(&frame).expect("a message") {
        Message::Goodbye {
            reason: GoodbyeReason::ProtocolViolation(why),
        } => assert!(
            why.contains(&(limit + 1).to_string()) && why.contains(&limit.to_string()),
            "{why}"
        ),
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert!(next_frame(&mut est.reader).await.is_none(), "close_notify");
}

/// A frame that is not a message: `Goodbye(ProtocolViolation)`, then close_notify.
#[tokio::test]
async fn an_undecodable_message_gets_a_goodbye() {
    let server = server_tub();
    let mut est = connect(&server).await;
    let frame = exchange(&mut est, &[0xff]).await;
    assert!(
        matches!(
            decode(&frame),
            Ok(Message::Goodbye {
                reason: GoodbyeReason::ProtocolViolation(_)
            })
        ),
        "{frame:02x?}"
    );
    assert!(next_frame(&mut est.reader).await.is_none(), "close_notify");
}

type RawReader = FrameReader<ReadHalf<TlsStream<DuplexStream>>>;
type RawWriter = FrameWriter<WriteHalf<TlsStream<DuplexStream>>>;

/// A client made by hand: the prelude, then TLS with `config`, and nothing else yet.
async fn raw_client(server: &Tub, config: Arc<rustls::ClientConfig>) -> (RawReader, RawWriter) {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let tub = server.clone();
    tokio::spawn(async move { tub.accept(b).await });
    let target = server.tubid();
    a.write_all(&prelude::encode_request(&target))
        .await
        .unwrap();
    let mut answer = [0u8; prelude::ANSWER_LEN];
    a.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, prelude::encode_answer(prelude::Status::Proceed));
    let mut tls = TlsStream::client(a, config, &target).unwrap();
    timeout(WAIT, tls.handshake(1 << 16))
        .await
        .unwrap()
        .unwrap();
    let (r, w) = tokio::io::split(tls);
    (FrameReader::new(r, 1024), FrameWriter::new(w, 1024))
}

/// The server's answer to a hello: its first frame, which must be a refusal (`00`, then
/// `HelloRefusal`: `0 Malformed(str)`, `1 NotAdmitted(str)`). Returns the kind and the text.
async fn refusal(reader: &mut RawReader) -> (u8, String) {
    let frame = next_frame(reader)
        .await
        .expect("a refusal in place of the hello");
    assert_eq!(frame[0], 0, "a refusal starts with 00: {frame:02x?}");
    let (text, _rest): (String, _) = postcard::take_from_bytes(&frame[2..]).unwrap();
    assert!(next_frame(reader).await.is_none(), "then close_notify");
    (frame[1], text)
}

fn hello(id: &Identity) -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        tubid: id.tubid(),
        incarnation: [7; 16],
        connection_seq: 1,
        max_frame_len: 1 << 20,
    }
}

/// A malformed hello is refused with a reason the client can show, distinct from an
/// admission refusal.
#[tokio::test]
async fn a_malformed_hello_is_refused_with_a_reason() {
    let server = server_tub();
    let id = Identity::generate().unwrap();
    let cfg = folio_rpc::tls::client_config(&id).unwrap();
    let cases = [
        (
            Hello {
                max_frame_len: 10,
                ..hello(&id)
            },
            "frame limit 10",
        ),
        (
            Hello {
                min_version: 3,
                max_version: 2,
                ..hello(&id)
            },
            "3..=2",
        ),
        (
            Hello {
                min_version: 0,
                ..hello(&id)
            },
            "version 0",
        ),
        (
            Hello {
                tubid: TubId::from_spki(b"somebody else"),
                ..hello(&id)
            },
            "certificate",
        ),
    ];
    for (bad, expect) in cases {
        let (mut r, mut w) = raw_client(&server, cfg.clone()).await;
        w.send_message(&bad).await.unwrap();
        let (kind, text) = refusal(&mut r).await;
        assert_eq!(kind, 0, "Malformed: {text}");
        assert!(text.contains(expect), "{text} should say {expect:?}");
    }
}

/// A client that negotiates no ALPN gets the same kind of refusal, not a bare close.
#[tokio::test]
async fn a_client_without_alpn_is_refused_with_a_reason() {
    let server = server_tub();
    let id = Identity::generate().unwrap();
    let mut cfg = (*folio_rpc::tls::client_config(&id).unwrap()).clone();
    cfg.alpn_protocols.clear();
    let (mut r, _w) = raw_client(&server, Arc::new(cfg)).await;
    let (kind, text) = refusal(&mut r).await;
    assert_eq!(kind, 0, "Malformed: {text}");
    assert!(text.contains("folio/1"), "{text}");
}

/// A second attempt of a dial that already connected is not admitted, and the client is
/// told so: not the same error as a malformed hello, nor a bare close.
#[tokio::test]
async fn an_admission_refusal_says_so() {
    let server = server_tub();
    let client = handshaker();
    let dial = |seq| {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let tub = server.clone();
        let accepted = tokio::spawn(async move { tub.accept(b).await });
        let connecting = client.connect_with_seq(a, server.tubid(), seq);
        async move { (timeout(WAIT, connecting).await.unwrap(), accepted) }
    };
    let (first, _) = dial(1).await;
    let _first = first.expect("the first attempt is admitted");
    let (second, accepted) = dial(1).await;
    match second {
        Err(HandshakeError::NotAdmitted(why)) => assert!(why.contains("same dial"), "{why}"),
        other => panic!("expected NotAdmitted, got {other:?}"),
    }
    assert!(matches!(
        accepted.await.unwrap(),
        Err(HandshakeError::Refused(_))
    ));
    // A different dial is admitted (and then settled by the duplicate rule).
    let (third, _) = dial(2).await;
    third.expect("another dial is admitted");
}

/// The client's side of a malformed-hello refusal, with the reference client.
#[tokio::test]
async fn the_reference_client_reports_a_refused_hello() {
    let server = server_tub();
    let client = Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        // Announces a version 0 that no hello may carry.
        HandshakeConfig::default().versions((0, 1)),
    )
    .unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let tub = server.clone();
    tokio::spawn(async move { tub.accept(b).await });
    let got = timeout(WAIT, client.connect(a, server.tubid()))
        .await
        .unwrap();
    match got {
        Err(HandshakeError::HelloRefused(why)) => assert!(why.contains("version 0"), "{why}"),
        other => panic!("expected HelloRefused, got {other:?}"),
    }
}
