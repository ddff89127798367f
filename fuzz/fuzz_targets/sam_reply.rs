//! SAM bridge replies, as a line and as the bytes a bridge sends.
//!
//! 1. The input as one reply line to `parse_reply`: the parser never panics, refuses
//!    over-long lines, and what it accepts has a topic, a kind and non-empty keys.
//! 2. The input as everything a bridge sends before it closes the connection, read by
//!    `read_reply` (over an in-memory reader, polled once: reading from memory never waits):
//!    a line ended by a newline is exactly `parse_reply` of that line, and nothing after the
//!    newline is consumed (it is the stream's data); with no newline, the bytes are a reply
//!    only if they parse as one whose `RESULT` is present, not empty and not `OK` (emissary
//!    0.4 ends `DUPLICATE_DEST`, `DUPLICATE_ID` and `CANT_REACH_PEER` that way and closes), and
//!    `final_reply` agrees.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use folio_transports::i2p::{final_reply, parse_reply, read_reply, Reply, SamError, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fn check_reply(line: &str, reply: &Reply) {
    assert!(line.len() <= MAX_LINE);
    assert!(!reply.topic.is_empty() && !reply.kind.is_empty());
    assert!(!reply.topic.contains(' ') && !reply.kind.contains(' '));
    assert!(reply
        .fields
        .keys()
        .all(|k| !k.is_empty() && !k.contains(' ')));
}

fn as_line(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reply) = parse_reply(line) {
        check_reply(line, &reply);
    }
}

fn as_stream(data: &[u8]) {
    let mut rest: &[u8] = data;
    let result = {
        let fut = pin!(read_reply(&mut rest));
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("reading from memory waited"),
        }
    };
    let newline = data.iter().position(|&b| b == b'\n');
    match newline {
        Some(i) if i <= MAX_LINE => {
            // Exactly the bytes through the newline are read.
            assert_eq!(rest, &data[i + 1..]);
            let expected = std::str::from_utf8(&data[..i])
                .ok()
                .map(|line| (line, parse_reply(line)));
            match (&result, expected) {
                (Ok(reply), Some((line, Ok(want)))) => {
                    assert_eq!(reply, &want);
                    check_reply(line, reply);
                }
                (Err(_), Some((_, Err(_)))) | (Err(_), None) => {}
                (r, e) => panic!("read_reply {r:?} but the line gives {e:?}"),
            }
        }
        Some(_) => {
            // Over-long before its newline: refused without reading past the limit.
            assert!(matches!(result, Err(SamError::Protocol(_))), "{result:?}");
            assert!(data.len() - rest.len() <= MAX_LINE + 1);
        }
        None if data.len() > MAX_LINE => {
            assert!(matches!(result, Err(SamError::Protocol(_))), "{result:?}");
        }
        None => {
            // The bridge closed after `data` (no newline).
            assert!(rest.is_empty());
            match (std::str::from_utf8(data), &result) {
                (Ok(line), Ok(reply)) => {
                    check_reply(line, reply);
                    let result = reply.get("RESULT");
                    assert!(
                        result.is_some_and(|r| !r.is_empty() && r != "OK"),
                        "{reply:?}"
                    );
                    assert_eq!(&final_reply(line).unwrap(), reply);
                }
                (Ok(line), Err(e)) => {
                    assert!(matches!(e, SamError::Closed { .. }), "{e:?}");
                    assert!(final_reply(line).is_err());
                    // The message shows at most 80 characters of what was sent.
                    // (Debug escapes a char as at most 10.)
                    assert!(e.to_string().chars().count() <= 80 * 10 + 100, "{e}");
                }
                (Err(_), r) => assert!(matches!(r, Err(SamError::Protocol(_))), "{r:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    as_line(data);
    as_stream(data);
});
