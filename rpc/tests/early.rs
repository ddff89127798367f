//! A FURL's resolution on a new connection rides behind the client's hello (docs/protocol.md
//! §5, docs/handshake.md §6.2), seen on the wire by a server built from the public handshake
//! API, as a second implementation would see it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TcpConnector;
use folio_rpc::frame::encode_frame;
use folio_rpc::message::{decode, promise_target, AnswerBody, Message, PROMISE_MARK};
use folio_rpc::{Furl, Handshaker, Identity, ReferenceError, Swissnum, Tub, TubConfig};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// The next frame from the client, decoded and checked to be a `get_reference` on the root;
/// returns its call id and the name it asks for.
async fn next_resolution<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut folio_rpc::frame::FrameReader<R>,
) -> (u64, String) {
    let frame = timeout(WAIT, reader.next_frame())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("not the end of the stream");
    match decode(frame).expect("a message") {
        // On a live connection of protocol version 2 the call carries the caller's timeout.
        Message::Call {
            id,
            target,
            interface,
            method,
            args,
            refs,
        }
        | Message::TimedCall {
            id,
            target,
            interface,
            method,
            args,
            refs,
            ..
        } => {
            assert_eq!(
                (target, interface, method),
                (0, "folio.root", "get_reference")
            );
            assert!(refs.is_empty());
            let (name,): (String,) = postcard::from_bytes(args).expect("one string argument");
            (id, name)
        }
        other => panic!("expected the resolution, got {other:?}"),
    }
}

#[tokio::test]
async fn resolution_leaves_with_the_hello_and_later_calls_are_numbered_after_it() {
    let server =
        Handshaker::new(Arc::new(Identity::generate().unwrap()), Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hint: folio_rpc::Hint = format!("tcp:127.0.0.1:{port}").parse().unwrap();
    let furl = |name: &str| {
        Furl::new(
            server.tubid(),
            vec![hint.clone()],
            Swissnum::new(name).unwrap(),
        )
    };
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(TcpConnector),
        TubConfig::default(),
    )
    .unwrap();

    let first = furl("first-name-0123456789");
    let resolving = tokio::spawn({
        let (client, first) = (client.clone(), first.clone());
        async move { client.get_reference(&first).await }
    });
    let (stream, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut est = timeout(WAIT, server.accept(stream))
        .await
        .unwrap()
        .expect("the handshake");
    // The call came in the client's last write of the handshake: it is buffered already,
    // before the server has sent anything after its TLS flight.
    assert!(
        est.reader.frame_buffered(),
        "the resolution arrived with the client's hello"
    );
    let (id, name) = next_resolution(&mut est.reader).await;
    // An ordinary call: nothing is pipelined on it (protocol.md §5, §8).
    assert_eq!((id, name.as_str()), (1, "first-name-0123456789"));

    // The name is unknown here (RootError::UnknownName is variant 0).
    let answer = Message::Answer {
        id,
        body: AnswerBody::AppError {
            value: &[0],
            refs: Vec::new(),
        },
    };
    est.writer
        .write_encoded(&encode_frame(&answer, u32::MAX).unwrap())
        .await
        .unwrap();
    est.writer.flush().await.unwrap();
    let got = timeout(WAIT, resolving).await.unwrap().unwrap();
    assert!(
        matches!(got, Err(ReferenceError::UnknownName(t)) if t == server.tubid()),
        "{got:?}"
    );

    // On the live connection a resolution is an ordinary call, numbered after the early one.
    let second = furl("second-name-0123456789");
    let resolving = tokio::spawn({
        let client = client.clone();
        async move { client.get_reference(&second).await }
    });
    let (id, name) = next_resolution(&mut est.reader).await;
    assert_eq!((id, name.as_str()), (2, "second-name-0123456789"));
    resolving.abort();
}

#[tokio::test]
async fn fresh_connections_resolve_known_and_unknown_names() {
    // Tub to Tub over TCP: a fresh connection resolves a registered name and an unknown one.
    let server = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(TcpConnector),
        TubConfig::default(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    server.set_location(vec![format!("tcp:127.0.0.1:{port}").parse().unwrap()]);
    server.listen(common::TcpL(listener));
    #[folio_rpc::interface(name = "test.early.v1")]
    pub trait Early {
        async fn twice(&self, n: u64) -> Result<u64, ()>;
    }
    struct E;
    impl Early for E {
        async fn twice(&self, n: u64) -> Result<u64, ()> {
            Ok(2 * n)
        }
    }
    let furl = server.register_as(EarlyRef::serve(E), "early").unwrap();
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(TcpConnector),
        TubConfig::default(),
    )
    .unwrap();
    let r: EarlyRef = timeout(WAIT, client.get(&furl)).await.unwrap().unwrap();
    assert_eq!(r.twice(21).await.unwrap(), 42);

    // A fresh client asking for a name the server does not have.
    let other = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(TcpConnector),
        TubConfig::default(),
    )
    .unwrap();
    let missing = Furl::new(
        server.tubid(),
        furl.hints().to_vec(),
        Swissnum::new("no-such-name-0123456789").unwrap(),
    );
    let got = timeout(WAIT, other.get_reference(&missing)).await.unwrap();
    assert!(
        matches!(got, Err(ReferenceError::UnknownName(_))),
        "{got:?}"
    );
    // The connection stays up and serves the next resolution as an ordinary call.
    let r: EarlyRef = timeout(WAIT, other.get(&furl)).await.unwrap().unwrap();
    assert_eq!(r.twice(5).await.unwrap(), 10);
    assert_eq!(other.connection_count(), 1);
}

#[folio_rpc::interface(name = "test.early.clock.v1")]
pub trait Clock {
    async fn now(&self, zone: String) -> Result<u64, String>;
}

#[tokio::test]
async fn a_first_call_rides_behind_the_hello_pipelined_on_the_resolution() {
    // Tub::get_promised's first call on a new connection (protocol.md §5, §8), as a second
    // implementation's server sees it: the resolution, promise-able, then the call, sent to
    // reference 0 of the resolution's answer, both in the client's first flight.
    let server =
        Handshaker::new(Arc::new(Identity::generate().unwrap()), Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hint: folio_rpc::Hint = format!("tcp:127.0.0.1:{port}").parse().unwrap();
    let furl = Furl::new(
        server.tubid(),
        vec![hint],
        Swissnum::new("clock-0123456789abcdef").unwrap(),
    );
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(TcpConnector),
        TubConfig::default(),
    )
    .unwrap();
    let clock: ClockRef = client.get_promised(&furl);
    let calling = tokio::spawn(async move { clock.now("utc".into()).await });
    let (stream, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut est = timeout(WAIT, server.accept(stream))
        .await
        .unwrap()
        .expect("the handshake");
    assert!(est.reader.frame_buffered(), "the calls came with the hello");
    let (id, name) = next_resolution(&mut est.reader).await;
    assert_eq!(
        (id, name.as_str()),
        (PROMISE_MARK | 1, "clock-0123456789abcdef")
    );
    let frame = timeout(WAIT, est.reader.next_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match decode(frame).unwrap() {
        Message::Call {
            id: 2,
            target,
            interface: "test.early.clock.v1",
            method: "now",
            refs,
            ..
        } => {
            assert_eq!(target, promise_target(PROMISE_MARK | 1, 0).unwrap());
            assert_eq!(target, 0x8000_0000_0001_0000);
            assert!(refs.is_empty());
        }
        other => panic!("expected the pipelined call, got {other:?}"),
    }
    // This server speaks version 3: it answers the resolution with its object (export 1,
    // whose `now` it runs) and then the pipelined call, as its objects would.
    let resolution = Message::Answer {
        id: PROMISE_MARK | 1,
        body: AnswerBody::Ok {
            value: &[0],
            refs: vec![folio_rpc::message::RefDesc::Mine {
                id: 1,
                interface: "test.early.clock.v1".into(),
            }],
        },
    };
    let answer = Message::Answer {
        id: 2,
        body: AnswerBody::Ok {
            value: &[42],
            refs: Vec::new(),
        },
    };
    for m in [resolution, answer] {
        est.writer
            .write_encoded(&encode_frame(&m, u32::MAX).unwrap())
            .await
            .unwrap();
    }
    est.writer.flush().await.unwrap();
    let got = timeout(WAIT, calling).await.unwrap().unwrap();
    assert_eq!(got.unwrap(), 42);
    // The client is done with the promise: its Finish follows.
    let frame = timeout(WAIT, est.reader.next_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        decode(frame).unwrap(),
        Message::Finish {
            id: PROMISE_MARK | 1
        }
    );
}
