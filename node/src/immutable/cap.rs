//! Read capabilities: `folio:CHK:...` and `folio:LIT:...`, parsed strictly.

use std::fmt;
use std::str::FromStr;

use super::hash::{tagged, Hash, TAG_STORAGE_INDEX};
use super::{LIT_MAX, MAX_FILE_SIZE, MAX_SHARES};
use crate::storage::StorageIndex;

/// The prefix of a CHK read cap.
pub const CHK_PREFIX: &str = "folio:CHK:";
/// The prefix of a literal (inline) cap.
pub const LIT_PREFIX: &str = "folio:LIT:";
/// The longest cap text accepted (a CHK cap is at most 10 + 52 + 1 + 52 + 1 + 3 + 1 + 3 + 1
/// + 15 = 139 characters; a LIT cap at most 10 + 88).
pub const MAX_CAP_LEN: usize = 256;

/// Lowercase unpadded base32, as caps spell keys and hashes: `folio_rpc::base32`, whose
/// unused trailing bits must be zero, so each byte string has exactly one spelling.
pub fn base32(bytes: &[u8]) -> String {
    folio_rpc::base32::encode(bytes)
}

/// Why a cap string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// Neither `folio:CHK:` nor `folio:LIT:`.
    #[error("not a Folio file cap: it must start with \"{CHK_PREFIX}\" or \"{LIT_PREFIX}\"")]
    UnknownPrefix,
    /// Longer than [`MAX_CAP_LEN`].
    #[error("the cap is {0} characters long, more than the {MAX_CAP_LEN} allowed")]
    TooLong(usize),
    /// A CHK cap has 5 fields after its prefix.
    #[error("a CHK cap has 5 fields after \"{CHK_PREFIX}\" (key:ueb-hash:k:N:size), not {0}")]
    FieldCount(usize),
    /// A field is not canonical lowercase unpadded base32.
    #[error("the {field} is not canonical base32 (lowercase a-z2-7, no padding)")]
    Base32 {
        /// Which field.
        field: &'static str,
    },
    /// A field decodes to the wrong number of bytes.
    #[error("the {field} is {found} bytes long, not {expected}")]
    Length {
        /// Which field.
        field: &'static str,
        /// What it must be.
        expected: usize,
        /// What it was.
        found: usize,
    },
    /// A number is not plain decimal (digits only, no leading zero, fits 64 bits).
    #[error("{field} is not a canonical decimal number")]
    Number {
        /// Which field.
        field: &'static str,
    },
    /// `k` or `N` outside `1 <= k <= N <= 256`.
    #[error("share counts must satisfy 1 <= k <= N <= {MAX_SHARES}; got k={needed}, N={total}")]
    Shares {
        /// k.
        needed: u64,
        /// N.
        total: u64,
    },
    /// A CHK size of 0 (empty files are LIT caps) or above [`MAX_FILE_SIZE`].
    #[error("a CHK file size must be between 1 and {MAX_FILE_SIZE}; got {0}")]
    Size(u64),
    /// LIT data longer than [`LIT_MAX`].
    #[error("a LIT cap holds at most {LIT_MAX} bytes; this one holds {0}")]
    LitTooLong(usize),
}

/// A CHK read cap: what it takes to find, verify and decrypt an immutable file.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChkCap {
    /// The AES-256 key.
    pub key: [u8; 32],
    /// The hash of the URI extension block.
    pub ueb_hash: Hash,
    /// k: shares needed.
    pub needed: u16,
    /// N: shares made.
    pub total: u16,
    /// The file's size in bytes (at least 1).
    pub size: u64,
}

impl ChkCap {
    /// The storage index: the first 16 bytes of `H("folio:chk:storage-index:v1"; key)`.
    pub fn storage_index(&self) -> StorageIndex {
        storage_index_for(&self.key)
    }
}

/// The storage index of the file with this key.
pub(crate) fn storage_index_for(key: &[u8; 32]) -> StorageIndex {
    let h = tagged(TAG_STORAGE_INDEX, &[key]);
    let mut si = [0u8; 16];
    si.copy_from_slice(&h[..16]);
    si
}

impl fmt::Debug for ChkCap {
    /// Shows the storage index, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChkCap")
            .field("storage_index", &base32(&self.storage_index()))
            .field("needed", &self.needed)
            .field("total", &self.total)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A read cap for an immutable file.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ReadCap {
    /// A file on the grid.
    Chk(ChkCap),
    /// A small file held in the cap itself (at most [`LIT_MAX`] bytes; every empty file).
    Lit(Vec<u8>),
}

impl fmt::Debug for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadCap::Chk(c) => c.fmt(f),
            ReadCap::Lit(d) => write!(f, "Lit({} bytes)", d.len()),
        }
    }
}

impl ReadCap {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            ReadCap::Chk(c) => c.size,
            ReadCap::Lit(d) => d.len() as u64,
        }
    }

    /// The storage index, for a CHK cap.
    pub fn storage_index(&self) -> Option<StorageIndex> {
        match self {
            ReadCap::Chk(c) => Some(c.storage_index()),
            ReadCap::Lit(_) => None,
        }
    }
}

impl fmt::Display for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadCap::Chk(c) => write!(
                f,
                "{CHK_PREFIX}{}:{}:{}:{}:{}",
                base32(&c.key),
                base32(&c.ueb_hash),
                c.needed,
                c.total,
                c.size
            ),
            ReadCap::Lit(d) => write!(f, "{LIT_PREFIX}{}", base32(d)),
        }
    }
}

impl FromStr for ReadCap {
    type Err = CapError;

    fn from_str(s: &str) -> Result<ReadCap, CapError> {
        if s.len() > MAX_CAP_LEN {
            return Err(CapError::TooLong(s.len()));
        }
        if let Some(rest) = s.strip_prefix(LIT_PREFIX) {
            let data = unbase32(rest, "LIT data")?;
            if data.len() > LIT_MAX {
                return Err(CapError::LitTooLong(data.len()));
            }
            return Ok(ReadCap::Lit(data));
        }
        let rest = s.strip_prefix(CHK_PREFIX).ok_or(CapError::UnknownPrefix)?;
        let fields: Vec<&str> = rest.split(':').collect();
        let [key, ueb, k, n, size] = fields[..] else {
            return Err(CapError::FieldCount(fields.len()));
        };
        let key: [u8; 32] = CapError::base32_field(key, "key")?;
        let ueb_hash: Hash = CapError::base32_field(ueb, "UEB hash")?;
        let needed = decimal(k, "k")?;
        let total = decimal(n, "N")?;
        let size = decimal(size, "size")?;
        if needed < 1 || needed > total || total > MAX_SHARES as u64 {
            return Err(CapError::Shares { needed, total });
        }
        if size == 0 || size > MAX_FILE_SIZE {
            return Err(CapError::Size(size));
        }
        Ok(ReadCap::Chk(ChkCap {
            key,
            ueb_hash,
            needed: needed as u16,
            total: total as u16,
            size,
        }))
    }
}

fn unbase32(text: &str, field: &'static str) -> Result<Vec<u8>, CapError> {
    // The encoding's alphabet is lowercase only, so uppercase is refused here too.
    folio_rpc::base32::decode(text).ok_or(CapError::Base32 { field })
}

impl CapError {
    /// The cap field `field`, exactly `N` bytes in canonical lowercase unpadded base32 (no
    /// padding, zero trailing bits): refused as [`CapError::Base32`] or [`CapError::Length`],
    /// and in no other way. The one strict field decoder of every cap parser: the mutable
    /// caps' (`crate::mutable`) maps these two refusals onto its own error's. (An associated
    /// function because this module is private: `CapError` is the way in from there.)
    pub(crate) fn base32_field<const N: usize>(
        text: &str,
        field: &'static str,
    ) -> Result<[u8; N], CapError> {
        let bytes = unbase32(text, field)?;
        let found = bytes.len();
        bytes.try_into().map_err(|_| CapError::Length {
            field,
            expected: N,
            found,
        })
    }
}

fn decimal(text: &str, field: &'static str) -> Result<u64, CapError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(CapError::Number { field });
    }
    text.parse().map_err(|_| CapError::Number { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chk() -> ReadCap {
        ReadCap::Chk(ChkCap {
            key: [7; 32],
            ueb_hash: [9; 32],
            needed: 3,
            total: 10,
            size: 12345,
        })
    }

    #[test]
    fn round_trips() {
        for cap in [
            chk(),
            ReadCap::Lit(Vec::new()),
            ReadCap::Lit(b"hello".to_vec()),
            ReadCap::Lit(vec![0xff; LIT_MAX]),
        ] {
            let text = cap.to_string();
            assert_eq!(text.parse::<ReadCap>().unwrap(), cap, "{text}");
        }
        assert_eq!(ReadCap::Lit(Vec::new()).to_string(), "folio:LIT:");
        let text = chk().to_string();
        assert!(text.starts_with("folio:CHK:"));
        assert_eq!(text.split(':').count(), 7);
    }

    #[test]
    fn refusals() {
        let good = chk().to_string();
        let parts: Vec<&str> = good.split(':').collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            p.join(":")
        };
        let e = |s: &str| s.parse::<ReadCap>().unwrap_err();
        assert_eq!(e("URI:CHK:a:b:3:10:5"), CapError::UnknownPrefix);
        assert_eq!(e(""), CapError::UnknownPrefix);
        assert_eq!(e(&format!("{good}:extra")), CapError::FieldCount(6));
        assert_eq!(e(&format!("{good}\n")), CapError::Number { field: "size" });
        assert_eq!(e(&with(6, "")), CapError::Number { field: "size" });
        assert_eq!(e(&with(6, "012")), CapError::Number { field: "size" });
        assert_eq!(e(&with(6, "+12")), CapError::Number { field: "size" });
        assert_eq!(
            e(&with(6, "99999999999999999999999")),
            CapError::Number { field: "size" }
        );
        assert_eq!(e(&with(6, "0")), CapError::Size(0));
        assert_eq!(
            e(&with(6, &(MAX_FILE_SIZE + 1).to_string())),
            CapError::Size(MAX_FILE_SIZE + 1)
        );
        assert_eq!(
            e(&with(4, "11")),
            CapError::Shares {
                needed: 11,
                total: 10
            }
        );
        assert_eq!(
            e(&with(4, "0")),
            CapError::Shares {
                needed: 0,
                total: 10
            }
        );
        assert_eq!(
            e(&with(5, "257")),
            CapError::Shares {
                needed: 3,
                total: 257
            }
        );
        let upper = parts[2].to_ascii_uppercase();
        assert_eq!(e(&with(2, &upper)), CapError::Base32 { field: "key" });
        assert_eq!(
            e(&with(2, &format!("{}====", parts[2]))),
            CapError::Base32 { field: "key" }
        );
        assert_eq!(e(&with(2, "1")), CapError::Base32 { field: "key" });
        // Non-zero trailing bits: a second spelling of the same bytes.
        let mut last = parts[3].to_string();
        let c = last.pop().unwrap();
        assert!(c == 'a' || c == 'q', "one data bit, four zero bits");
        last.push(if c == 'a' { 'b' } else { 'r' });
        assert_eq!(e(&with(3, &last)), CapError::Base32 { field: "UEB hash" });
        assert_eq!(
            e(&with(2, &base32(&[1; 16]))),
            CapError::Length {
                field: "key",
                expected: 32,
                found: 16
            }
        );
        assert_eq!(
            e(&format!("{LIT_PREFIX}{}", base32(&[0; LIT_MAX + 1]))),
            CapError::LitTooLong(LIT_MAX + 1)
        );
        assert_eq!(
            e(&format!("{LIT_PREFIX}ABC")),
            CapError::Base32 { field: "LIT data" }
        );
        assert!(matches!(e(&"x".repeat(300)), CapError::TooLong(300)));
    }
}
