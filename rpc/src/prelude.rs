//! The plaintext prelude: the bytes before TLS.
//!
//! The client (the party that dialed) sends a request naming the Tub it wants; the server
//! (the party that accepted) answers with one status byte. The client does not wait for the
//! answer before sending its TLS ClientHello, so the prelude costs no extra round trip. Both
//! messages start with the same 8-byte magic, so each side can tell a Folio peer in the wrong
//! role (two clients: the bug of Tahoe-LAFS #2861) from something that is not Folio at all.
//!
//! ```text
//! request  = MAGIC "Q" version:u8 tubid_len:u8 tubid[tubid_len]      (client -> server)
//! answer   = MAGIC "A" version:u8 status:u8                          (server -> client)
//! MAGIC    = 89 46 4F 4C 49 4F 0D 0A   ("\x89FOLIO\r\n")
//! ```
//!
//! The decoders here are sans-I/O: they look at a buffer and either decode, ask for a number
//! of bytes in total, or refuse. The async side reads exactly that many, never more, so
//! nothing of the TLS stream that follows is consumed.

use crate::tubid::{TubId, TUBID_TEXT_LEN};

/// The 8 bytes every prelude message starts with. The high first byte catches 7-bit paths,
/// the CR LF catches line-ending translation (the PNG signature's trick).
pub const MAGIC: [u8; 8] = *b"\x89FOLIO\r\n";
/// The prelude version this build speaks.
pub const PRELUDE_VERSION: u8 = 1;
/// Kind byte of a request.
pub const KIND_REQUEST: u8 = b'Q';
/// Kind byte of an answer.
pub const KIND_ANSWER: u8 = b'A';
/// The longest request: magic, kind, version, length byte and a TubId.
pub const MAX_REQUEST_LEN: usize = MAGIC.len() + 3 + TUBID_TEXT_LEN;
/// The length of an answer.
pub const ANSWER_LEN: usize = MAGIC.len() + 3;

/// The server's verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Go ahead with TLS.
    Proceed = 0,
    /// This listener hosts no Tub with that TubId.
    UnknownTub = 1,
    /// The request's prelude version is not one the server speaks.
    UnsupportedVersion = 2,
    /// The server is refusing new connections (overloaded or shutting down).
    Busy = 3,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The prelude version the client speaks.
    pub version: u8,
    /// The Tub the client wants.
    pub target: TubId,
}

/// A decoded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The server's prelude version.
    pub version: u8,
    /// The verdict.
    pub status: Status,
}

/// What a prelude decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<T> {
    /// A complete message of this many bytes.
    Done(T, usize),
    /// At least this many bytes are needed in total.
    Need(usize),
}

/// Why a prelude was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreludeError {
    /// The bytes are not a Folio prelude.
    #[error("not a Folio peer: it sent {0}")]
    NotFolio(String),
    /// The bytes are a Folio request where an answer was expected: the peer also acted as
    /// the client.
    #[error("the peer also acted as Side::Client (both parties dialed, or a listener was given Side::Client)")]
    BothClients,
    /// The bytes are a Folio answer where a request was expected.
    #[error("the peer acted as Side::Server on a connection we accepted")]
    BothServers,
    /// A field holds an impossible value.
    #[error("malformed prelude: {0}")]
    Malformed(String),
}

/// Describes the first bytes of something that is not Folio, for an error message.
pub fn describe_foreign(bytes: &[u8]) -> String {
    const HTTP: [&[u8]; 9] = [
        b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"CONN", b"PATC", b"TRAC",
    ];
    if HTTP.iter().any(|m| bytes.starts_with(m)) {
        let line = bytes
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(bytes);
        return format!("an HTTP request ({:?})", String::from_utf8_lossy(line));
    }
    if bytes.len() >= 2 && bytes[0] == 0x16 && bytes[1] == 0x03 {
        return "a TLS ClientHello without the Folio prelude".into();
    }
    if bytes.starts_with(b"SSH-") {
        return "an SSH banner".into();
    }
    let hex: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", hex.join(" "))
}

/// Checks the magic and kind at the front of `buf`: `Ok(true)` when all 9 bytes are there
/// and right, `Ok(false)` when they are right so far, an error at the first wrong byte.
fn check_head(buf: &[u8], want: u8) -> Result<bool, PreludeError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(PreludeError::NotFolio(describe_foreign(buf)));
    }
    match buf.get(MAGIC.len()) {
        None => Ok(false),
        Some(&k) if k == want => Ok(true),
        Some(&KIND_REQUEST) => Err(PreludeError::BothClients),
        Some(&KIND_ANSWER) => Err(PreludeError::BothServers),
        Some(&k) => Err(PreludeError::Malformed(format!(
            "unknown message kind 0x{k:02x}"
        ))),
    }
}

/// Decodes a request at the front of `buf` (server side).
pub fn decode_request(buf: &[u8]) -> Result<Progress<Request>, PreludeError> {
    if !check_head(buf, KIND_REQUEST)? {
        return Ok(Progress::Need(MAGIC.len() + 3));
    }
    let (Some(&version), Some(&len)) = (buf.get(MAGIC.len() + 1), buf.get(MAGIC.len() + 2)) else {
        return Ok(Progress::Need(MAGIC.len() + 3));
    };
    if len as usize != TUBID_TEXT_LEN {
        // Checked whatever the version, so the request can never be longer than this.
        return Err(PreludeError::Malformed(format!(
            "TubId length {len}, expected {TUBID_TEXT_LEN}"
        )));
    }
    let total = MAGIC.len() + 3 + len as usize;
    let Some(text) = buf.get(MAGIC.len() + 3..total) else {
        return Ok(Progress::Need(total));
    };
    let target = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| PreludeError::Malformed("target TubId is not base32".into()))?;
    Ok(Progress::Done(Request { version, target }, total))
}

/// Decodes an answer at the front of `buf` (client side).
pub fn decode_answer(buf: &[u8]) -> Result<Progress<Answer>, PreludeError> {
    if !check_head(buf, KIND_ANSWER)? {
        return Ok(Progress::Need(ANSWER_LEN));
    }
    let (Some(&version), Some(&status)) = (buf.get(MAGIC.len() + 1), buf.get(MAGIC.len() + 2))
    else {
        return Ok(Progress::Need(ANSWER_LEN));
    };
    let status = match status {
        0 => Status::Proceed,
        1 => Status::UnknownTub,
        2 => Status::UnsupportedVersion,
        3 => Status::Busy,
        s => return Err(PreludeError::Malformed(format!("unknown status {s}"))),
    };
    Ok(Progress::Done(Answer { version, status }, ANSWER_LEN))
}

/// Encodes a request for `target`.
pub fn encode_request(target: &TubId) -> Vec<u8> {
    let text = target.to_string();
    let mut out = Vec::with_capacity(MAX_REQUEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[KIND_REQUEST, PRELUDE_VERSION, text.len() as u8]);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Encodes an answer.
pub fn encode_answer(status: Status) -> [u8; ANSWER_LEN] {
    let mut out = [0u8; ANSWER_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(&[KIND_ANSWER, PRELUDE_VERSION, status as u8]);
    out
}

/// What a server writes back to something that is not Folio before closing: an HTTP
/// response for an HTTP client (a browser, or a Foolscap client's `GET /id/...`), one
/// plain line otherwise.
/// `description` is what [`describe_foreign`] said of the bytes.
pub fn refusal_for(description: &str) -> &'static [u8] {
    if description.starts_with("an HTTP request") {
        b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nThis is a Folio RPC port; it does not speak HTTP or Foolscap.\n"
    } else {
        b"This is a Folio RPC port; see docs/handshake.md.\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tubid() -> TubId {
        TubId::from_spki(b"prelude")
    }

    #[test]
    fn request_round_trip_byte_by_byte() {
        let bytes = encode_request(&tubid());
        assert_eq!(bytes.len(), MAX_REQUEST_LEN);
        for n in 0..bytes.len() {
            match decode_request(&bytes[..n]).unwrap() {
                Progress::Need(need) => assert!(need > n && need <= bytes.len()),
                Progress::Done(..) => panic!("decoded from {n} bytes"),
            }
        }
        let want = Request {
            version: PRELUDE_VERSION,
            target: tubid(),
        };
        assert_eq!(
            decode_request(&bytes).unwrap(),
            Progress::Done(want, bytes.len())
        );
    }

    #[test]
    fn answer_round_trip() {
        for s in [
            Status::Proceed,
            Status::UnknownTub,
            Status::UnsupportedVersion,
            Status::Busy,
        ] {
            let bytes = encode_answer(s);
            let Progress::Done(a, n) = decode_answer(&bytes).unwrap() else {
                panic!()
            };
            assert_eq!((a.status, n), (s, ANSWER_LEN));
        }
        assert_eq!(
            decode_answer(&MAGIC[..3]).unwrap(),
            Progress::Need(ANSWER_LEN)
        );
    }

    #[test]
    fn foreign_bytes_refused_at_first_wrong_byte() {
        let e = decode_request(b"GET /id/abc HTTP/1.1\r\nHost: x\r\n").unwrap_err();
        assert_eq!(
            e,
            PreludeError::NotFolio("an HTTP request (\"GET /id/abc HTTP/1.1\")".into())
        );
        assert!(refusal_for(&describe_foreign(b"GET / HTTP/1.1")).starts_with(b"HTTP/1.0 400"));
        assert!(
            matches!(decode_request(&[0x16, 0x03, 0x01]), Err(PreludeError::NotFolio(m)) if m.contains("TLS"))
        );
        assert!(
            matches!(decode_request(&[0x00]), Err(PreludeError::NotFolio(m)) if m == "bytes 00")
        );
        assert!(!refusal_for(&describe_foreign(&[0])).starts_with(b"HTTP"));
    }

    #[test]
    fn wrong_role_is_named() {
        assert_eq!(
            decode_answer(&encode_request(&tubid())).unwrap_err(),
            PreludeError::BothClients
        );
        assert_eq!(
            decode_request(&encode_answer(Status::Proceed)).unwrap_err(),
            PreludeError::BothServers
        );
    }

    #[test]
    fn malformed_fields() {
        let mut bytes = encode_request(&tubid());
        bytes[10] = 200;
        assert!(matches!(
            decode_request(&bytes),
            Err(PreludeError::Malformed(_))
        ));
        let mut bytes = encode_request(&tubid());
        bytes[11] = b'1';
        assert!(matches!(
            decode_request(&bytes),
            Err(PreludeError::Malformed(_))
        ));
        let mut a = encode_answer(Status::Proceed);
        a[10] = 9;
        assert!(matches!(decode_answer(&a), Err(PreludeError::Malformed(_))));
        let mut k = encode_answer(Status::Proceed);
        k[8] = b'Z';
        assert!(matches!(decode_answer(&k), Err(PreludeError::Malformed(_))));
    }
}
