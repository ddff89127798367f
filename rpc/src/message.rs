//! The messages of the object protocol: the payloads of the frames that follow the hello.
//!
//! Every frame after the hello carries exactly one [`Message`], postcard-encoded. Variants are
//! numbered by their position (postcard writes the variant index as a varint), so new variants
//! are only ever appended. `docs/protocol.md` specifies each one.
//!
//! The payload fields (`args`, `value`) are encoded with `serialize_bytes`
//! (`serde_bytes`), not as serde's per-byte sequence: the same wire bytes, one
//! copy. Decoding borrows them from the frame.

use serde::{Deserialize, Serialize};

pub use crate::object::RefDesc;
use crate::object::Refusal;

/// The object id of a connection's root object, through which FURLs are resolved.
pub const ROOT_OBJECT: u64 = 0;

/// One message of the object protocol. Borrowed fields point into the received frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Call method `method` of interface `interface` on the receiver's object `target`;
    /// answer with an [`Message::Answer`] carrying the same `id`.
    Call {
        /// Chosen by the caller, unique among its outstanding calls on this connection.
        id: u64,
        /// An object the receiver exported on this connection (0: the root).
        target: u64,
        /// The interface the caller believes the object has.
        #[serde(borrow)]
        interface: &'a str,
        /// The method name.
        #[serde(borrow)]
        method: &'a str,
        /// The arguments: a postcard-encoded tuple.
        #[serde(borrow, with = "serde_bytes")]
        args: &'a [u8],
        /// The references inside the arguments, indexed from the payload.
        refs: Vec<RefDesc>,
    },
    /// Like `Call`, but no answer is wanted, and none is sent, not even a refusal.
    Oneway {
        /// The receiver's object.
        target: u64,
        /// The interface.
        #[serde(borrow)]
        interface: &'a str,
        /// The method.
        #[serde(borrow)]
        method: &'a str,
        /// The arguments.
        #[serde(borrow, with = "serde_bytes")]
        args: &'a [u8],
        /// The references inside the arguments.
        refs: Vec<RefDesc>,
    },
    /// The outcome of a call.
    Answer {
        /// The call's id.
        id: u64,
        /// What happened.
        #[serde(borrow)]
        body: AnswerBody<'a>,
    },
    /// The sender dropped its last handle to `count` receipts of the receiver's export `target`.
    Decref {
        /// The receiver's object.
        target: u64,
        /// How many times the sender had received the reference.
        count: u64,
    },
    /// Keepalive: answer with a `Pong` carrying the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender is closing the connection, and why.
    Goodbye {
        /// Why.
        reason: GoodbyeReason,
    },
    /// Protocol version 2: a [`Message::Call`] whose caller stops waiting for the answer
    /// `timeout_ms` milliseconds after it sent the call. The receiver stops the method once
    /// that long has passed since it received the call, and sends no answer then
    /// (docs/protocol.md §7). Never sent on a version-1 connection.
    TimedCall {
        /// As in `Call`.
        id: u64,
        /// How long the caller waits, in milliseconds, counted by the receiver from the
        /// moment it receives this message. At least 1.
        timeout_ms: u64,
        /// As in `Call`.
        target: u64,
        /// As in `Call`.
        #[serde(borrow)]
        interface: &'a str,
        /// As in `Call`.
        #[serde(borrow)]
        method: &'a str,
        /// As in `Call`.
        #[serde(borrow, with = "serde_bytes")]
        args: &'a [u8],
        /// As in `Call`.
        refs: Vec<RefDesc>,
    },
    /// Protocol version 2: the sender no longer waits for the answer to its call `id`. The
    /// receiver drops the call if it is still waiting to run, stops it if it is running, and
    /// sends no answer; it ignores an id it does not know (docs/protocol.md §7). Never sent
    /// on a version-1 connection.
    Cancel {
        /// The abandoned call's id.
        id: u64,
    },
    /// Protocol version 3: the sender will name its call `id` (a promise-able call: `id`
    /// carries [`PROMISE_MARK`]) in no more targets. The receiver forgets what it kept of
    /// that call's answer for calls pipelined on it (docs/protocol.md §8). Sent once per
    /// promise-able call, once its answer arrived or its caller gave up. Never sent on a
    /// connection of a lower version.
    Finish {
        /// The promise-able call's id.
        id: u64,
    },
}

/// Protocol version 3: the bit that marks a call's `id` as **promise-able** (its caller
/// may pipeline calls on its answer, and the receiver keeps what it needs of the answer
/// until [`Message::Finish`]), and a call's `target` as a **promise target** (see
/// [`promise_target`]). Export ids never have it.
pub const PROMISE_MARK: u64 = 1 << 63;

/// The largest number a promise-able call's id may carry beside [`PROMISE_MARK`]: it must
/// fit in a promise target's 47 bits.
pub const MAX_PROMISE_NUMBER: u64 = (1 << 47) - 1;

/// The target that names "reference `index` of the answer to the promise-able call `id`"
/// (protocol version 3): `PROMISE_MARK | number << 16 | index`, where `number` is `id`
/// without its mark. `None` if `id` is not promise-able, its number is over
/// [`MAX_PROMISE_NUMBER`], or `index` is over 65,535.
pub fn promise_target(id: u64, index: u32) -> Option<u64> {
    let number = id.checked_sub(PROMISE_MARK)?;
    if number > MAX_PROMISE_NUMBER || index > u32::from(u16::MAX) {
        return None;
    }
    Some(PROMISE_MARK | number << 16 | u64::from(index))
}

/// The promise-able call id and reference index a promise target names, or `None` for an
/// ordinary target (an export id, or the root).
pub fn parse_promise_target(target: u64) -> Option<(u64, u32)> {
    if target & PROMISE_MARK == 0 {
        return None;
    }
    let number = (target & !PROMISE_MARK) >> 16;
    Some((PROMISE_MARK | number, (target & 0xffff) as u32))
}

impl Message<'_> {
    /// The lowest protocol version in which this message may be sent.
    pub fn min_version(&self) -> u16 {
        match self {
            Message::TimedCall { .. }
            | Message::Cancel { .. }
            | Message::Goodbye {
                reason: GoodbyeReason::Full,
            } => 2,
            Message::Finish { .. } => 3,
            _ => 1,
        }
    }
}

/// The outcome of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerBody<'a> {
    /// The method returned `Ok`.
    Ok {
        /// The postcard-encoded value.
        #[serde(borrow, with = "serde_bytes")]
        value: &'a [u8],
        /// The references inside it.
        refs: Vec<RefDesc>,
    },
    /// The method returned its own error.
    AppError {
        /// The postcard-encoded error value.
        #[serde(borrow, with = "serde_bytes")]
        value: &'a [u8],
        /// The references inside it.
        refs: Vec<RefDesc>,
    },
    /// The call was refused before or after the method ran.
    Refused(Refusal),
}

/// Why a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// Another connection between the same two Tubs won (see the duplicate rule).
    Duplicate,
    /// The Tub is shutting down.
    Shutdown,
    /// The peer broke the protocol.
    ProtocolViolation(String),
    /// Nothing arrived from the peer within the disconnect timeout.
    Timeout,
    /// The sender holds as many connections as it allows, and closed this one (idle, or one
    /// it accepted) to make room for another. Protocol version 2; a version-1 peer is sent
    /// `Shutdown` instead. Dialing again later is fine.
    Full,
}

impl std::fmt::Display for GoodbyeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoodbyeReason::Duplicate => {
                f.write_str("replaced by another connection to the same Tub")
            }
            GoodbyeReason::Shutdown => f.write_str("the Tub shut down"),
            GoodbyeReason::ProtocolViolation(s) => write!(f, "protocol violation: {s}"),
            GoodbyeReason::Timeout => f.write_str("nothing received within the disconnect timeout"),
            GoodbyeReason::Full => f.write_str(
                "closed to make room for another connection (the peer holds its maximum)",
            ),
        }
    }
}

/// Decodes a message, refusing trailing bytes.
pub fn decode(frame: &[u8]) -> Result<Message<'_>, postcard::Error> {
    let (msg, rest) = postcard::take_from_bytes::<Message<'_>>(frame)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_trailing_bytes() {
        let msgs = [
            Message::Call {
                id: 7,
                target: 3,
                interface: "i",
                method: "m",
                args: &[1, 2],
                refs: vec![RefDesc::Yours { id: 4 }],
            },
            Message::Answer {
                id: 7,
                body: AnswerBody::Refused(Refusal::UnknownObject { target: 9 }),
            },
            Message::Decref {
                target: 1,
                count: 2,
            },
            Message::Goodbye {
                reason: GoodbyeReason::Duplicate,
            },
            Message::TimedCall {
                id: 7,
                timeout_ms: 300_000,
                target: 3,
                interface: "i",
                method: "m",
                args: &[1, 2],
                refs: vec![RefDesc::Yours { id: 4 }],
            },
            Message::Cancel { id: 7 },
        ];
        for m in msgs {
            let mut bytes = postcard::to_allocvec(&m).unwrap();
            assert_eq!(decode(&bytes).unwrap(), m);
            bytes.push(0);
            assert!(decode(&bytes).is_err());
        }
    }

    /// The messages as they were derived before their payloads went through
    /// `serialize_bytes`: serde's sequence encoding of `&[u8]`, the reference wire form.
    mod as_sequence {
        use super::super::RefDesc;
        use serde::Serialize;

        // Only the variants with payloads; those after them do not shift their indices.
        #[derive(Serialize)]
        pub enum Message<'a> {
            Call {
                id: u64,
                target: u64,
                interface: &'a str,
                method: &'a str,
                args: &'a [u8],
                refs: Vec<RefDesc>,
            },
            Oneway {
                target: u64,
                interface: &'a str,
                method: &'a str,
                args: &'a [u8],
                refs: Vec<RefDesc>,
            },
            Answer {
                id: u64,
                body: AnswerBody<'a>,
            },
        }

        #[derive(Serialize)]
        pub enum AnswerBody<'a> {
            Ok { value: &'a [u8], refs: Vec<RefDesc> },
            AppError { value: &'a [u8], refs: Vec<RefDesc> },
        }
    }

    #[test]
    fn payloads_keep_the_wire_form_of_a_sequence() {
        for len in [0usize, 1, 127, 128, 300, 65_536 + 9] {
            let p: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let refs = vec![RefDesc::Yours { id: 4 }];
            let pairs = [
                (
                    Message::Call {
                        id: 7,
                        target: 3,
                        interface: "i",
                        method: "m",
                        args: &p,
                        refs: refs.clone(),
                    },
                    as_sequence::Message::Call {
                        id: 7,
                        target: 3,
                        interface: "i",
                        method: "m",
                        args: &p,
                        refs: refs.clone(),
                    },
                ),
                (
                    Message::Oneway {
                        target: 3,
                        interface: "i",
                        method: "m",
                        args: &p,
                        refs: refs.clone(),
                    },
                    as_sequence::Message::Oneway {
                        target: 3,
                        interface: "i",
                        method: "m",
                        args: &p,
                        refs: refs.clone(),
                    },
                ),
                (
                    Message::Answer {
                        id: 300,
                        body: AnswerBody::Ok {
                            value: &p,
                            refs: refs.clone(),
                        },
                    },
                    as_sequence::Message::Answer {
                        id: 300,
                        body: as_sequence::AnswerBody::Ok {
                            value: &p,
                            refs: refs.clone(),
                        },
                    },
                ),
                (
                    Message::Answer {
                        id: 1,
                        body: AnswerBody::AppError {
                            value: &p,
                            refs: vec![],
                        },
                    },
                    as_sequence::Message::Answer {
                        id: 1,
                        body: as_sequence::AnswerBody::AppError {
                            value: &p,
                            refs: vec![],
                        },
                    },
                ),
            ];
            for (m, reference) in pairs {
                let bytes = postcard::to_allocvec(&m).unwrap();
                assert_eq!(bytes, postcard::to_allocvec(&reference).unwrap(), "{len}");
                let back = decode(&bytes).unwrap();
                assert_eq!(back, m);
                // The payload is a slice of the frame, not a copy.
                if let Message::Call { args: b, .. }
                | Message::Oneway { args: b, .. }
                | Message::Answer {
                    body: AnswerBody::Ok { value: b, .. } | AnswerBody::AppError { value: b, .. },
                    ..
                } = back
                {
                    assert!(len == 0 || bytes.as_ptr_range().contains(&b.as_ptr()));
                }
            }
        }
    }

    #[test]
    fn longer_varints_than_needed_are_accepted_up_to_the_type_s_maximum() {
        // docs/protocol.md §1: `Ping { nonce: 0 }` is `04 00`; a receiver also takes the
        // same value written longer, up to 10 bytes for a u64, but not beyond.
        assert_eq!(decode(&[4, 0]).unwrap(), Message::Ping { nonce: 0 });
        assert_eq!(decode(&[4, 0x80, 0]).unwrap(), Message::Ping { nonce: 0 });
        let mut ten = vec![4];
        ten.extend_from_slice(&[0x80; 9]);
        ten.push(0);
        assert_eq!(decode(&ten).unwrap(), Message::Ping { nonce: 0 });
        let mut eleven = ten.clone();
        eleven.insert(1, 0x80);
        assert!(decode(&eleven).is_err());
        // The variant index is a varint too.
        assert_eq!(decode(&[0x84, 0, 0]).unwrap(), Message::Ping { nonce: 0 });
    }

    #[test]
    fn wire_bytes_of_a_call() {
        // docs/protocol.md's example.
        let m = Message::Call {
            id: 1,
            target: 0,
            interface: "folio.root",
            method: "get_reference",
            args: &[0x02, b'h', b'i'],
            refs: vec![],
        };
        let mut want = vec![0x00, 0x01, 0x00, 0x0a];
        want.extend_from_slice(b"folio.root");
        want.push(0x0d);
        want.extend_from_slice(b"get_reference");
        want.extend_from_slice(&[0x03, 0x02, b'h', b'i', 0x00]);
        assert_eq!(postcard::to_allocvec(&m).unwrap(), want);
    }

    #[test]
    fn wire_bytes_of_the_version_2_messages() {
        // docs/protocol.md §7's examples: the variants come after the seven of version 1.
        let m = Message::TimedCall {
            id: 2,
            timeout_ms: 300_000,
            target: 1,
            interface: "i",
            method: "m",
            args: &[0x05],
            refs: vec![],
        };
        let want = [
            0x07, 0x02, 0xe0, 0xa7, 0x12, 0x01, 0x01, b'i', 0x01, b'm', 0x01, 0x05, 0x00,
        ];
        assert_eq!(postcard::to_allocvec(&m).unwrap(), want);
        assert_eq!(decode(&want).unwrap(), m);
        assert_eq!(m.min_version(), 2);
        let c = Message::Cancel { id: 2 };
        assert_eq!(postcard::to_allocvec(&c).unwrap(), [0x08, 0x02]);
        assert_eq!(c.min_version(), 2);
        assert_eq!(Message::Ping { nonce: 0 }.min_version(), 1);
        let full = Message::Goodbye {
            reason: GoodbyeReason::Full,
        };
        assert_eq!(full.min_version(), 2);
        assert_eq!(postcard::to_allocvec(&full).unwrap(), [6, 4]);
    }

    #[test]
    fn wire_bytes_of_the_version_3_messages() {
        // docs/protocol.md §8's examples.
        let id = PROMISE_MARK | 1;
        let f = Message::Finish { id };
        let mark_1 = [0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        let mut want = vec![0x09];
        want.extend_from_slice(&mark_1);
        assert_eq!(postcard::to_allocvec(&f).unwrap(), want);
        assert_eq!(decode(&want).unwrap(), f);
        assert_eq!(f.min_version(), 3);
        // Reference 0 of the answer to call PROMISE_MARK | 1.
        let target = promise_target(id, 0).unwrap();
        assert_eq!(target, 0x8000_0000_0001_0000);
        assert_eq!(parse_promise_target(target), Some((id, 0)));
        assert_eq!(parse_promise_target(0x8000_0000_0001_0002), Some((id, 2)));
        assert_eq!(parse_promise_target(7), None);
        // Not promise-able, or out of range.
        assert_eq!(promise_target(1, 0), None);
        assert_eq!(
            promise_target(PROMISE_MARK | (MAX_PROMISE_NUMBER + 1), 0),
            None
        );
        assert_eq!(promise_target(id, 65_536), None);
        let top = PROMISE_MARK | MAX_PROMISE_NUMBER;
        let t = promise_target(top, 65_535).unwrap();
        assert_eq!(t, u64::MAX);
        assert_eq!(parse_promise_target(t), Some((top, 65_535)));
    }
}
