//! The caps of mutable files and directories, as text: `folio:MUT:…` and `folio:DIR:…`.
//!
//! | cap | file | directory | fields (lowercase unpadded base32) |
//! |---|---|---|---|
//! | write | `folio:MUT:W` | `folio:DIR:W` | the write secret (32 bytes) |
//! | read | `folio:MUT-RO:R:VK` | `folio:DIR-RO:R:VK` | the read key, the verifying key (32 each) |
//! | verify | `folio:MUT-V:SI:VK` | `folio:DIR-V:SI:VK` | the storage index (16), the verifying key (32) |
//!
//! Each cap yields the ones below it and nothing above ([`super::keys`]). A directory's caps
//! derive exactly as a file's; the prefix says how to read the content. Parsing is as strict
//! as for immutable caps: one spelling per cap (lowercase, no padding, zero trailing bits), the
//! exact field count and lengths, at most [`MAX_CAP_LEN`] characters. `MUT`, not Tahoe-LAFS's
//! `SSK`: the format is Folio's own, and Tahoe-LAFS cannot read it.

use std::fmt;
use std::str::FromStr;

use folio_rpc::TubId;

use super::keys;
use crate::immutable::{base32, CapError, MAX_CAP_LEN};
use crate::storage::StorageIndex;

/// What a mutable cap's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MutKind {
    /// A mutable file: its content is the bytes stored.
    File,
    /// A directory: its content is a list of entries.
    Dir,
}

impl MutKind {
    /// The word of its caps' prefixes.
    fn word(self) -> &'static str {
        match self {
            MutKind::File => "MUT",
            MutKind::Dir => "DIR",
        }
    }
}

/// Why a mutable cap's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutCapError {
    /// Not one of the six prefixes.
    #[error(
        "not a Folio mutable cap: it must start with \"folio:MUT:\", \"folio:MUT-RO:\", \
         \"folio:MUT-V:\", \"folio:DIR:\", \"folio:DIR-RO:\" or \"folio:DIR-V:\""
    )]
    UnknownPrefix,
    /// Longer than [`MAX_CAP_LEN`].
    #[error("the cap is {0} characters long, more than the {MAX_CAP_LEN} allowed")]
    TooLong(usize),
    /// The wrong number of fields after the prefix.
    #[error("a {what} cap has {expected} field(s) after its prefix, not {found}")]
    FieldCount {
        /// Which kind of cap.
        what: &'static str,
        /// How many it must have.
        expected: usize,
        /// How many it had.
        found: usize,
    },
    /// A field is not canonical lowercase unpadded base32 (the same refusal as
    /// [`CapError::Base32`]).
    #[error("the {field} is not canonical base32 (lowercase a-z2-7, no padding)")]
    Base32 {
        /// Which field.
        field: &'static str,
    },
    /// A field decodes to the wrong number of bytes (the same refusal as
    /// [`CapError::Length`]).
    #[error("the {field} is {found} bytes long, not {expected}")]
    Length {
        /// Which field.
        field: &'static str,
        /// What it must be.
        expected: usize,
        /// What it was.
        found: usize,
    },
}

/// A write cap: the write secret, from which everything else derives.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MutWriteCap {
    kind: MutKind,
    secret: [u8; 32],
}

/// A read cap: reads and verifies every version, writes nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MutReadCap {
    kind: MutKind,
    read_key: [u8; 32],
    verifying_key: [u8; 32],
}

/// A verify cap: finds and checks the shares, reads nothing (what a repairer holds).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MutVerifyCap {
    kind: MutKind,
    storage_index: StorageIndex,
    verifying_key: [u8; 32],
}

/// Any mutable cap.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum MutCap {
    /// Read and write.
    Write(MutWriteCap),
    /// Read only.
    Read(MutReadCap),
    /// Verify only.
    Verify(MutVerifyCap),
}

impl MutWriteCap {
    /// A new file or directory: a fresh random write secret.
    pub fn generate(kind: MutKind) -> MutWriteCap {
        MutWriteCap::from_secret(kind, crate::private::random_bytes())
    }

    /// The cap with this write secret.
    pub(crate) fn from_secret(kind: MutKind, secret: [u8; 32]) -> MutWriteCap {
        MutWriteCap { kind, secret }
    }

    /// File or directory.
    pub fn kind(&self) -> MutKind {
        self.kind
    }

    /// The read cap it yields.
    pub fn read_cap(&self) -> MutReadCap {
        MutReadCap {
            kind: self.kind,
            read_key: keys::read_key(&self.secret),
            verifying_key: keys::verifying_key(&self.secret),
        }
    }

    /// The verify cap it yields.
    pub fn verify_cap(&self) -> MutVerifyCap {
        self.read_cap().verify_cap()
    }

    /// The storage index of its slot.
    pub fn storage_index(&self) -> StorageIndex {
        keys::storage_index(&keys::read_key(&self.secret))
    }

    /// The write enabler of its slot on the server whose TubId is `server`.
    pub fn write_enabler(&self, server: &TubId) -> [u8; 32] {
        keys::write_enabler(&self.secret, server.as_bytes())
    }

    /// The key that seals the write caps of a directory's children (`DK`).
    pub(crate) fn dir_key(&self) -> [u8; 32] {
        keys::dir_key(&self.secret)
    }

    /// The key pair that signs its versions.
    pub(crate) fn signing_key(&self) -> ring::signature::Ed25519KeyPair {
        keys::signing_key(&self.secret)
    }
}

impl MutReadCap {
    /// File or directory.
    pub fn kind(&self) -> MutKind {
        self.kind
    }

    /// The data key of the version whose salt is `salt`.
    pub(crate) fn data_key(&self, salt: &[u8; 16]) -> [u8; 32] {
        keys::data_key(&self.read_key, salt)
    }

    /// The verify cap it yields.
    pub fn verify_cap(&self) -> MutVerifyCap {
        MutVerifyCap {
            kind: self.kind,
            storage_index: self.storage_index(),
            verifying_key: self.verifying_key,
        }
    }

    /// The storage index of its slot.
    pub fn storage_index(&self) -> StorageIndex {
        keys::storage_index(&self.read_key)
    }

    /// The key that checks the versions' signatures.
    pub fn verifying_key(&self) -> &[u8; 32] {
        &self.verifying_key
    }
}

impl MutVerifyCap {
    /// File or directory.
    pub fn kind(&self) -> MutKind {
        self.kind
    }

    /// The storage index of its slot.
    pub fn storage_index(&self) -> StorageIndex {
        self.storage_index
    }

    /// The key that checks the versions' signatures.
    pub fn verifying_key(&self) -> &[u8; 32] {
        &self.verifying_key
    }
}

impl MutCap {
    /// File or directory.
    pub fn kind(&self) -> MutKind {
        match self {
            MutCap::Write(c) => c.kind,
            MutCap::Read(c) => c.kind,
            MutCap::Verify(c) => c.kind,
        }
    }

    /// The storage index of its slot.
    pub fn storage_index(&self) -> StorageIndex {
        match self {
            MutCap::Write(c) => c.storage_index(),
            MutCap::Read(c) => c.storage_index(),
            MutCap::Verify(c) => c.storage_index,
        }
    }

    /// The read cap it yields (none from a verify cap).
    pub fn read_cap(&self) -> Option<MutReadCap> {
        match self {
            MutCap::Write(c) => Some(c.read_cap()),
            MutCap::Read(c) => Some(c.clone()),
            MutCap::Verify(_) => None,
        }
    }

    /// The verify cap it yields.
    pub fn verify_cap(&self) -> MutVerifyCap {
        match self {
            MutCap::Write(c) => c.verify_cap(),
            MutCap::Read(c) => c.verify_cap(),
            MutCap::Verify(c) => c.clone(),
        }
    }
}

/// Caps are secrets: their `Debug` shows the kind and the storage index only.
macro_rules! debug_without_secrets {
    ($($ty:ty),*) => {$(
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("kind", &self.kind())
                    .field("storage_index", &base32(&self.storage_index()))
                    .finish_non_exhaustive()
            }
        }
    )*};
}
debug_without_secrets!(MutWriteCap, MutReadCap, MutVerifyCap, MutCap);

/// Writes a cap's text: `folio:`, the kind's word and `role` (`""`, `"-RO"` or `"-V"`), then
/// each field in base32 after a colon.
fn write_cap(
    f: &mut fmt::Formatter<'_>,
    kind: MutKind,
    role: &str,
    fields: &[&[u8]],
) -> fmt::Result {
    write!(f, "folio:{}{role}", kind.word())?;
    for field in fields {
        write!(f, ":{}", base32(field))?;
    }
    Ok(())
}

impl fmt::Display for MutWriteCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_cap(f, self.kind, "", &[&self.secret])
    }
}

impl fmt::Display for MutReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_cap(f, self.kind, "-RO", &[&self.read_key, &self.verifying_key])
    }
}

impl fmt::Display for MutVerifyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_cap(
            f,
            self.kind,
            "-V",
            &[&self.storage_index, &self.verifying_key],
        )
    }
}

impl fmt::Display for MutCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MutCap::Write(c) => c.fmt(f),
            MutCap::Read(c) => c.fmt(f),
            MutCap::Verify(c) => c.fmt(f),
        }
    }
}

impl FromStr for MutCap {
    type Err = MutCapError;

    fn from_str(s: &str) -> Result<MutCap, MutCapError> {
        if s.len() > MAX_CAP_LEN {
            return Err(MutCapError::TooLong(s.len()));
        }
        let rest = s.strip_prefix("folio:").ok_or(MutCapError::UnknownPrefix)?;
        let (kind, rest) = if let Some(r) = rest.strip_prefix("MUT") {
            (MutKind::File, r)
        } else if let Some(r) = rest.strip_prefix("DIR") {
            (MutKind::Dir, r)
        } else {
            return Err(MutCapError::UnknownPrefix);
        };
        if let Some(w) = rest.strip_prefix(':') {
            let [secret] = fields(w, "write")?;
            return Ok(MutCap::Write(MutWriteCap {
                kind,
                secret: fixed(secret, "write secret")?,
            }));
        }
        if let Some(r) = rest.strip_prefix("-RO:") {
            let [read_key, vk] = fields(r, "read")?;
            return Ok(MutCap::Read(MutReadCap {
                kind,
                read_key: fixed(read_key, "read key")?,
                verifying_key: fixed(vk, "verifying key")?,
            }));
        }
        if let Some(v) = rest.strip_prefix("-V:") {
            let [si, vk] = fields(v, "verify")?;
            return Ok(MutCap::Verify(MutVerifyCap {
                kind,
                storage_index: fixed(si, "storage index")?,
                verifying_key: fixed(vk, "verifying key")?,
            }));
        }
        Err(MutCapError::UnknownPrefix)
    }
}

/// Exactly `N` colon-separated fields.
fn fields<'a, const N: usize>(
    text: &'a str,
    what: &'static str,
) -> Result<[&'a str; N], MutCapError> {
    let found: Vec<&str> = text.split(':').collect();
    let count = found.len();
    found.try_into().map_err(|_| MutCapError::FieldCount {
        what,
        expected: N,
        found: count,
    })
}

/// A base32 field of exactly `N` bytes, read as the immutable caps read theirs
/// ([`CapError::base32_field`]), its refusal mapped onto ours.
fn fixed<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], MutCapError> {
    CapError::base32_field(text, field).map_err(|e| match e {
        CapError::Length {
            field,
            expected,
            found,
        } => MutCapError::Length {
            field,
            expected,
            found,
        },
        // The only other way a field is refused: not canonical base32.
        _ => MutCapError::Base32 { field },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kat_cap(kind: MutKind) -> MutWriteCap {
        MutWriteCap::from_secret(kind, std::array::from_fn(|i| i as u8))
    }

    /// The caps of the known-answer secret (docs/design/mutable-files-kat.py).
    #[test]
    fn known_answers() {
        let w = kat_cap(MutKind::File);
        assert_eq!(
            w.to_string(),
            "folio:MUT:aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
        );
        assert_eq!(
            w.read_cap().to_string(),
            "folio:MUT-RO:mlcooj2wkduujtemre4ytz7gcfhsgyfod7tetxxftmsaaznorupq:\
             ooa6hfq5yod3dhx7imbzmodo6vpq3fmsy7rojxazvexsgvpwjqua"
        );
        assert_eq!(
            w.verify_cap().to_string(),
            "folio:MUT-V:45inu73c2symh4rjwafv34fdmm:\
             ooa6hfq5yod3dhx7imbzmodo6vpq3fmsy7rojxazvexsgvpwjqua"
        );
        // A directory's caps are the same keys under another prefix.
        let d = kat_cap(MutKind::Dir);
        assert_eq!(
            d.read_cap().to_string(),
            w.read_cap().to_string().replace("folio:MUT-", "folio:DIR-")
        );
        assert_eq!(d.storage_index(), w.storage_index());
        let server = TubId::from_bytes([0x42; 32]);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&w.write_enabler(&server)),
            "a62a5ad2657ceaaacee2cd86c5f82091579ae31d06fbcb477b1e24de9aeb3fd5"
        );
    }

    #[test]
    fn the_chain_goes_one_way_and_agrees_with_itself() {
        for kind in [MutKind::File, MutKind::Dir] {
            let w = MutWriteCap::generate(kind);
            let r = w.read_cap();
            let v = w.verify_cap();
            assert_eq!(r.verify_cap(), v);
            assert_eq!(r.storage_index(), w.storage_index());
            assert_eq!(v.storage_index(), w.storage_index());
            assert_eq!(r.verifying_key(), v.verifying_key());
            let caps = [
                MutCap::Write(w.clone()),
                MutCap::Read(r.clone()),
                MutCap::Verify(v),
            ];
            for cap in &caps {
                let text = cap.to_string();
                assert_eq!(&text.parse::<MutCap>().unwrap(), cap, "{text}");
                assert!(text.len() <= MAX_CAP_LEN);
                assert_eq!(cap.kind(), kind);
                assert_eq!(cap.storage_index(), w.storage_index());
            }
            assert_eq!(caps[0].read_cap(), Some(r.clone()));
            assert_eq!(caps[1].read_cap(), Some(r));
            assert_eq!(caps[2].read_cap(), None);
            // Nothing below the write cap shows its secret.
            let secret = base32(&w.secret);
            for cap in &caps[1..] {
                assert!(!cap.to_string().contains(&secret));
                assert!(!format!("{cap:?}").contains(&secret));
            }
            assert!(!format!("{w:?}").contains(&secret));
        }
        assert_ne!(
            MutWriteCap::generate(MutKind::File),
            MutWriteCap::generate(MutKind::File)
        );
    }

    #[test]
    fn refusals() {
        let w = kat_cap(MutKind::File).to_string();
        let r = kat_cap(MutKind::Dir).read_cap().to_string();
        let e = |s: &str| s.parse::<MutCap>().unwrap_err();
        assert_eq!(e(""), MutCapError::UnknownPrefix);
        assert_eq!(e("folio:CHK:a:b:3:10:5"), MutCapError::UnknownPrefix);
        assert_eq!(e("folio:SSK:aaaa"), MutCapError::UnknownPrefix);
        assert_eq!(e("folio:MUT-X:aaaa"), MutCapError::UnknownPrefix);
        assert_eq!(e("folio:mut:aaaa"), MutCapError::UnknownPrefix);
        assert_eq!(
            e(&format!("{w}:extra")),
            MutCapError::FieldCount {
                what: "write",
                expected: 1,
                found: 2
            }
        );
        let (head, _) = r.rsplit_once(':').unwrap();
        assert_eq!(
            e(head),
            MutCapError::FieldCount {
                what: "read",
                expected: 2,
                found: 1
            }
        );
        assert_eq!(
            e(&w.to_ascii_uppercase().replace("FOLIO:MUT:", "folio:MUT:")),
            MutCapError::Base32 {
                field: "write secret"
            }
        );
        assert_eq!(
            e(&format!("{w}====")),
            MutCapError::Base32 {
                field: "write secret"
            }
        );
        // Non-zero trailing bits would be a second spelling of the same bytes.
        let mut other = w.clone();
        let last = other.pop().unwrap();
        assert!(last == 'a' || last == 'q', "one data bit, four zero bits");
        other.push(if last == 'a' { 'b' } else { 'r' });
        assert!(matches!(e(&other), MutCapError::Base32 { .. }));
        assert_eq!(
            e(&format!("folio:MUT:{}", base32(&[1; 16]))),
            MutCapError::Length {
                field: "write secret",
                expected: 32,
                found: 16
            }
        );
        assert_eq!(
            e(&format!(
                "folio:DIR-V:{}:{}",
                base32(&[1; 32]),
                base32(&[2; 32])
            )),
            MutCapError::Length {
                field: "storage index",
                expected: 16,
                found: 32
            }
        );
        assert_eq!(e(&"a".repeat(300)), MutCapError::TooLong(300));
    }
}
