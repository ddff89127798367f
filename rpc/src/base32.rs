//! Lowercase, unpadded RFC 4648 base32 (`a-z2-7`): how Folio writes TubIds and swissnums,
//! and how the node writes caps, storage indexes and keys. One definition for all of them,
//! strict in one way: every byte string has exactly one spelling, so the unused trailing
//! bits must be zero and uppercase or padding is refused.
//!
//! ```
//! use folio_rpc::base32;
//! assert_eq!(base32::encode(b"folio"), "mzxwy2lp");
//! assert_eq!(base32::decode("mzxwy2lp").as_deref(), Some(&b"folio"[..]));
//! assert_eq!(base32::decode("MZXWY2LP"), None); // uppercase
//! assert_eq!(base32::encode(b"f"), "my");
//! assert_eq!(base32::decode("mz"), None); // the same byte, with non-zero trailing bits
//! ```

use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};

/// The encoding itself, for callers that decode into a buffer of their own
/// (`decode_mut`) or need the decoded length first.
pub static ENCODING: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = true;
    spec.encoding().expect("a valid base32 specification")
});

/// `bytes` in lowercase unpadded base32.
pub fn encode(bytes: &[u8]) -> String {
    ENCODING.encode(bytes)
}

/// The bytes `text` spells; `None` unless it is the one canonical spelling of them.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    ENCODING.decode(text.as_bytes()).ok()
}

/// Whether every character of `text` is in the alphabet (`a-z2-7`), whatever its length.
pub fn is_alphabet(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}
