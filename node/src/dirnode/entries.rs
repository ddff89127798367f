//! A directory's content: the plaintext of the mutable file behind a `DIR` cap.
//!
//! Big-endian, one encoding per directory:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `folioDIR` |
//! | 2 | format version, 1 |
//! | 2 | zero |
//! | 4 | the number of entries |
//! | … | the entries, in strictly ascending order of their names' bytes |
//!
//! Each entry:
//!
//! | bytes | field |
//! |---|---|
//! | 2 + n | the name: 1 to 255 bytes of UTF-8, no `/`, NUL, other C0 control or DEL, not `.` or `..` |
//! | 2 + r | the child's **read-only** cap text (`LIT`, `CHK`, `MUT-RO` or `DIR-RO`), 1 to 256 bytes |
//! | 2 + w | the child's sealed write cap: empty, or (only for a `MUT-RO`/`DIR-RO` child) a 16-byte salt then the child's write cap text encrypted with AES-256-CTR under `EK = H("folio:dir:entry-key:v1"; DK, salt)`, where `DK = H("folio:dir:writecap-key:v1"; W)` comes from the directory's own write secret `W` |
//! | 33 | metadata: flags (bit 0: the size is known, bit 1: the mtime is known; the others zero), then `link_created`, `link_modified`, `mtime` and `size` (unix seconds, bytes), each 8 bytes; a field whose flag is clear is zero |
//!
//! A read-only viewer (holding `R`, not `W`) can list the directory and read every child,
//! but has no `DK`: the children's write caps stay sealed. The encoder never puts a write
//! cap in the read-cap field, and the decoder refuses one there. [`Dir::decode`] reads
//! untrusted bytes: it checks every length before slicing, never allocates more entries
//! than the bytes can hold, never panics, and accepts only the canonical encoding
//! (`encode(decode(b)) == b`).

use std::collections::BTreeMap;
use std::fmt;

use aes::cipher::StreamCipher as _;

use crate::caps::Cap;
use crate::immutable::MAX_CAP_LEN;
use crate::mutable::{MutCap, MutWriteCap};

const MAGIC: &[u8; 8] = b"folioDIR";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 16;
/// The smallest entry: one-byte name, one-byte cap, no seal, metadata.
const MIN_ENTRY: usize = 2 + 1 + 2 + 1 + 2 + META_LEN;
const META_LEN: usize = 33;
const SALT_LEN: usize = 16;
/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// The most entries a directory may hold.
pub const MAX_DIR_ENTRIES: usize = 65_535;

/// Why a directory's content or an operation on it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    /// Not a Folio directory.
    #[error("not a Folio directory (its first bytes are not \"folioDIR\")")]
    Magic,
    /// A format this code does not read.
    #[error("directory format version {0} is not known (this reads version {VERSION})")]
    Version(u16),
    /// The bytes end inside a field.
    #[error("the directory ends inside {0}")]
    Truncated(&'static str),
    /// More bytes than the entries.
    #[error("{0} bytes follow the last entry")]
    Trailing(usize),
    /// More entries than allowed, or than the bytes could hold.
    #[error("the directory claims {0} entries, more than it can hold")]
    Count(u64),
    /// A name that is not allowed.
    #[error("entry name {name:?}: {reason}")]
    Name {
        /// The name (lossy, for the message).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Names out of order or repeated.
    #[error("entry {0:?} is out of order or repeated")]
    Order(String),
    /// A child cap that cannot be read or may not be there.
    #[error("entry {name:?}: {reason}")]
    Child {
        /// The entry.
        name: String,
        /// What is wrong with its cap.
        reason: String,
    },
    /// Metadata that is not canonical.
    #[error("entry {0:?}: metadata with unknown flags, or a value without its flag")]
    Metadata(String),
    /// A write cap was given for a directory opened read-only.
    #[error("this directory was opened read-only: it cannot hold a write cap")]
    ReadOnly,
    /// The sealed write cap does not open to the entry's own write cap.
    #[error("entry {0:?}: the sealed write cap does not belong to the entry's read cap")]
    SealMismatch(String),
}

/// A valid entry name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `name` against the rules above.
    pub fn new(name: &str) -> Result<Name, DirError> {
        let bad = |reason| DirError::Name {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("a name is not empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("a name is at most 255 bytes"));
        }
        if name == "." || name == ".." {
            return Err(bad("`.` and `..` are not names"));
        }
        if name.contains('/') {
            return Err(bad("a name has no `/`"));
        }
        if name.chars().any(|c| c.is_ascii_control()) {
            return Err(bad("a name has no control characters"));
        }
        Ok(Name(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a directory records about a child.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metadata {
    /// When the link was made (unix seconds).
    pub link_created: u64,
    /// When it was last changed.
    pub link_modified: u64,
    /// The child's modification time, if known.
    pub mtime: Option<u64>,
    /// The child's size in bytes, if known.
    pub size: Option<u64>,
}

/// A write cap sealed under the directory's key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedWriteCap {
    salt: [u8; SALT_LEN],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedWriteCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedWriteCap({} bytes)", self.ciphertext.len())
    }
}

/// One child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its read-only cap.
    pub read_cap: Cap,
    /// Its write cap, sealed (mutable children reached with write authority only).
    pub sealed: Option<SealedWriteCap>,
    /// What is recorded about it.
    pub meta: Metadata,
}

/// The key that seals a directory's children's write caps: only its write cap yields it.
#[derive(Clone)]
pub struct DirKey([u8; 32]);

impl DirKey {
    /// The key of the directory `cap` writes.
    pub fn of(cap: &MutWriteCap) -> DirKey {
        DirKey(cap.dir_key())
    }

    fn entry_key(&self, salt: &[u8; SALT_LEN]) -> [u8; 32] {
        crate::mutable::entry_key(&self.0, salt)
    }
}

impl fmt::Debug for DirKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirKey(..)")
    }
}

/// A directory's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dir {
    /// The children, by name.
    pub entries: BTreeMap<Name, Entry>,
}

fn seal_xor(key: &[u8; 32], data: &mut [u8]) {
    crate::immutable::cipher(key).apply_keystream(data);
}

impl Dir {
    /// An empty directory.
    pub fn new() -> Dir {
        Dir::default()
    }

    /// Links `child` as `name`, replacing what was there. A write cap is stored as its read
    /// cap plus the write cap sealed under `dk`; without `dk` (a directory opened
    /// read-only) a write cap is refused. A verify cap is refused: it cannot be read.
    pub fn set(
        &mut self,
        name: Name,
        child: &Cap,
        dk: Option<&DirKey>,
        meta: Metadata,
    ) -> Result<(), DirError> {
        let child_error = |reason: &str| DirError::Child {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let read_cap = child
            .read_only()
            .ok_or_else(|| child_error("a verify cap cannot be linked: it reads nothing"))?;
        let sealed = match child {
            Cap::Mutable(MutCap::Write(w)) => {
                let dk = dk.ok_or(DirError::ReadOnly)?;
                let salt = crate::private::random_bytes::<SALT_LEN>();
                let mut ciphertext = w.to_string().into_bytes();
                seal_xor(&dk.entry_key(&salt), &mut ciphertext);
                Some(SealedWriteCap { salt, ciphertext })
            }
            _ => None,
        };
        self.entries.insert(
            name,
            Entry {
                read_cap,
                sealed,
                meta,
            },
        );
        Ok(())
    }

    /// The write cap of `name`'s child, unsealed with `dk`: `None` when there is no such
    /// entry or it holds no write cap.
    pub fn write_cap(&self, name: &Name, dk: &DirKey) -> Option<Result<Cap, DirError>> {
        let entry = self.entries.get(name)?;
        let sealed = entry.sealed.as_ref()?;
        let mut text = sealed.ciphertext.clone();
        seal_xor(&dk.entry_key(&sealed.salt), &mut text);
        let mismatch = || DirError::SealMismatch(name.to_string());
        let opened = String::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<Cap>().ok())
            .filter(|c| c.is_write() && c.read_only().as_ref() == Some(&entry.read_cap));
        Some(opened.ok_or_else(mismatch))
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.entries.len() * 200);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (name, e) in &self.entries {
            put_field(&mut out, name.0.as_bytes());
            put_field(&mut out, e.read_cap.to_string().as_bytes());
            match &e.sealed {
                Some(s) => {
                    out.extend_from_slice(&((SALT_LEN + s.ciphertext.len()) as u16).to_be_bytes());
                    out.extend_from_slice(&s.salt);
                    out.extend_from_slice(&s.ciphertext);
                }
                None => out.extend_from_slice(&[0, 0]),
            }
            let m = &e.meta;
            let flags = u8::from(m.size.is_some()) | (u8::from(m.mtime.is_some()) << 1);
            out.push(flags);
            for v in [
                m.link_created,
                m.link_modified,
                m.mtime.unwrap_or(0),
                m.size.unwrap_or(0),
            ] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out
    }

    /// Reads and checks a directory's content.
    pub fn decode(b: &[u8]) -> Result<Dir, DirError> {
        let mut r = Reader { b, at: 0 };
        if r.take(8, "the header")? != MAGIC {
            return Err(DirError::Magic);
        }
        let version = r.u16("the header")?;
        if version != VERSION {
            return Err(DirError::Version(version));
        }
        if r.u16("the header")? != 0 {
            return Err(DirError::Version(version));
        }
        let count = u64::from(r.u32("the header")?);
        let left = (b.len() - r.at) as u64;
        if count > MAX_DIR_ENTRIES as u64 || count * MIN_ENTRY as u64 > left {
            return Err(DirError::Count(count));
        }
        let mut dir = Dir::new();
        let mut last: Option<Vec<u8>> = None;
        for _ in 0..count {
            let raw_name = r.field("an entry name")?;
            let lossy = String::from_utf8_lossy(raw_name).into_owned();
            let name = std::str::from_utf8(raw_name)
                .map_err(|_| DirError::Name {
                    name: lossy.clone(),
                    reason: "a name is UTF-8",
                })
                .and_then(Name::new)?;
            if last.as_deref().is_some_and(|l| l >= raw_name) {
                return Err(DirError::Order(lossy));
            }
            last = Some(raw_name.to_vec());
            let child = |reason: String| DirError::Child {
                name: lossy.clone(),
                reason,
            };
            let cap_text = r.field("a child cap")?;
            if cap_text.is_empty() || cap_text.len() > MAX_CAP_LEN {
                return Err(child("a child cap is 1 to 256 bytes".into()));
            }
            let read_cap: Cap = std::str::from_utf8(cap_text)
                .map_err(|_| child("the child cap is not text".into()))?
                .parse()
                .map_err(|e| child(format!("the child cap: {e}")))?;
            if read_cap.read_only().as_ref() != Some(&read_cap) {
                return Err(child(
                    "only a read-only cap may be stored in the clear".into(),
                ));
            }
            let sealed = r.field("a sealed write cap")?;
            let sealed = match sealed.len() {
                0 => None,
                n if n > SALT_LEN && n <= SALT_LEN + MAX_CAP_LEN => {
                    if !matches!(read_cap, Cap::Mutable(_)) {
                        return Err(child("only a mutable child has a write cap".into()));
                    }
                    let mut salt = [0u8; SALT_LEN];
                    salt.copy_from_slice(&sealed[..SALT_LEN]);
                    Some(SealedWriteCap {
                        salt,
                        ciphertext: sealed[SALT_LEN..].to_vec(),
                    })
                }
                _ => return Err(child("a sealed write cap is 17 to 272 bytes".into())),
            };
            let flags = r.take(1, "metadata")?[0];
            let mut v = [0u64; 4];
            for x in &mut v {
                *x = r.u64("metadata")?;
            }
            let [link_created, link_modified, mtime, size] = v;
            let (has_size, has_mtime) = (flags & 1 != 0, flags & 2 != 0);
            if flags & !3 != 0 || (!has_size && size != 0) || (!has_mtime && mtime != 0) {
                return Err(DirError::Metadata(lossy));
            }
            dir.entries.insert(
                name,
                Entry {
                    read_cap,
                    sealed,
                    meta: Metadata {
                        link_created,
                        link_modified,
                        mtime: has_mtime.then_some(mtime),
                        size: has_size.then_some(size),
                    },
                },
            );
        }
        if r.at != b.len() {
            return Err(DirError::Trailing(b.len() - r.at));
        }
        Ok(dir)
    }
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DirError> {
        let end = self.at.checked_add(n).ok_or(DirError::Truncated(what))?;
        let s = self.b.get(self.at..end).ok_or(DirError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DirError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DirError> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DirError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }

    fn field(&mut self, what: &'static str) -> Result<&'a [u8], DirError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutable::MutKind;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn sample(dk: &DirKey) -> (Dir, Vec<MutWriteCap>) {
        let file = MutWriteCap::generate(MutKind::File);
        let sub = MutWriteCap::generate(MutKind::Dir);
        let mut d = Dir::new();
        let meta = Metadata {
            link_created: 1_765_000_000,
            link_modified: 1_765_000_001,
            mtime: Some(1_700_000_000),
            size: Some(12),
        };
        d.set(
            name("a.txt"),
            &"folio:LIT:nbswy3dp".parse().unwrap(),
            None,
            meta,
        )
        .unwrap();
        d.set(
            name("notes"),
            &Cap::Mutable(MutCap::Write(file.clone())),
            Some(dk),
            meta,
        )
        .unwrap();
        d.set(
            name("sub dir ✓"),
            &Cap::Mutable(MutCap::Write(sub.clone())),
            Some(dk),
            Metadata::default(),
        )
        .unwrap();
        (d, vec![file, sub])
    }

    #[test]
    fn round_trip_and_unseal() {
        let me = MutWriteCap::generate(MutKind::Dir);
        let dk = DirKey::of(&me);
        let (d, children) = sample(&dk);
        let bytes = d.encode();
        let back = Dir::decode(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.encode(), bytes, "one encoding");
        let w = back.write_cap(&name("notes"), &dk).unwrap().unwrap();
        assert_eq!(w.to_string(), children[0].to_string());
        assert!(back.write_cap(&name("a.txt"), &dk).is_none());
        let other = DirKey::of(&MutWriteCap::generate(MutKind::Dir));
        assert_eq!(
            back.write_cap(&name("notes"), &other),
            Some(Err(DirError::SealMismatch("notes".into())))
        );
        // Read-only: no write cap may be set.
        let mut ro = back.clone();
        assert_eq!(
            ro.set(
                name("x"),
                &Cap::Mutable(MutCap::Write(children[0].clone())),
                None,
                Metadata::default()
            ),
            Err(DirError::ReadOnly)
        );
    }

    /// What a read-only holder decrypts contains no write-cap bytes of any child, in any
    /// form: not the write secret's base32, the write cap's text, nor the directory key.
    #[test]
    fn a_read_only_view_holds_no_write_cap_bytes() {
        let me = MutWriteCap::generate(MutKind::Dir);
        let dk = DirKey::of(&me);
        let (d, children) = sample(&dk);
        let plaintext = d.encode();
        let contains = |needle: &[u8]| plaintext.windows(needle.len()).any(|w| w == needle);
        for c in &children {
            let text = c.to_string();
            assert!(!contains(text.as_bytes()), "{text} in the clear");
            let secret_b32 = text.rsplit(':').next().unwrap();
            assert!(!contains(secret_b32.as_bytes()));
        }
        assert!(!contains(&dk.0));
        assert!(!contains(me.to_string().as_bytes()));
    }

    #[test]
    fn refusals() {
        let dk = DirKey::of(&MutWriteCap::generate(MutKind::Dir));
        let (d, children) = sample(&dk);
        let good = d.encode();
        assert_eq!(
            Dir::decode(&good[..15]),
            Err(DirError::Truncated("the header"))
        );
        let mut bad = good.clone();
        bad[0] = b'F';
        assert_eq!(Dir::decode(&bad), Err(DirError::Magic));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Dir::decode(&long), Err(DirError::Trailing(1)));
        // A huge count in a short input: refused before any allocation.
        let mut huge = good[..16].to_vec();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Dir::decode(&huge), Err(DirError::Count(_))));
        for cut in 16..good.len() {
            assert!(Dir::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Names.
        for n in ["", ".", "..", "a/b", "nul\0", "del\u{7f}", &"x".repeat(256)] {
            assert!(Name::new(n).is_err(), "{n:?}");
        }
        // Entries out of order, repeated, or with a write cap in the clear.
        let entry = |n: &str, cap: &str| {
            let mut e = Vec::new();
            put_field(&mut e, n.as_bytes());
            put_field(&mut e, cap.as_bytes());
            e.extend_from_slice(&[0, 0]);
            e.extend_from_slice(&[0; META_LEN]);
            e
        };
        let dir_of = |entries: &[Vec<u8>]| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[0, 1, 0, 0]);
            b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for e in entries {
                b.extend_from_slice(e);
            }
            b
        };
        let lit = "folio:LIT:nbswy3dp";
        assert!(Dir::decode(&dir_of(&[entry("a", lit), entry("b", lit)])).is_ok());
        assert!(matches!(
            Dir::decode(&dir_of(&[entry("b", lit), entry("a", lit)])),
            Err(DirError::Order(_))
        ));
        assert!(matches!(
            Dir::decode(&dir_of(&[entry("a", lit), entry("a", lit)])),
            Err(DirError::Order(_))
        ));
        let write = children[0].to_string();
        assert!(matches!(
            Dir::decode(&dir_of(&[entry("a", &write)])),
            Err(DirError::Child { .. })
        ));
        let verify = children[0].verify_cap().to_string();
        assert!(matches!(
            Dir::decode(&dir_of(&[entry("a", &verify)])),
            Err(DirError::Child { .. })
        ));
        // A seal on an immutable child; metadata with a value but no flag.
        let mut sealed_lit = entry("a", lit);
        let at = sealed_lit.len() - META_LEN - 2;
        sealed_lit.splice(at..at + 2, [0, 17].into_iter().chain([0u8; 17]));
        assert!(matches!(
            Dir::decode(&dir_of(&[sealed_lit])),
            Err(DirError::Child { .. })
        ));
        let mut unflagged = entry("a", lit);
        let end = unflagged.len();
        unflagged[end - 1] = 5;
        assert!(matches!(
            Dir::decode(&dir_of(&[unflagged])),
            Err(DirError::Metadata(_))
        ));
    }

    /// The sealed write cap of the design's example (docs/design/mutable-files.md §2):
    /// AES-256-CTR under EK(salt 0x09 × 16) of the directory W = 0..32, over the file write
    /// cap of W = 0..32.
    #[test]
    fn known_answer_of_the_seal() {
        let w = MutWriteCap::from_secret(MutKind::Dir, std::array::from_fn(|i| i as u8));
        let dk = DirKey::of(&w);
        let key = dk.entry_key(&[9; 16]);
        let mut text = b"folio:MUT:aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq".to_vec();
        seal_xor(&key, &mut text);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&text),
            "de985f872bb6d97e051b88d2119319a2afb0e16152a1956825c81055770e64f33e582fe7ae59873aca66f108ea3f6770102a992f12e1b3d8955f1c3cc77a"
        );
    }
}
