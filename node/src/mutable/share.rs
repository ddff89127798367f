//! The signed header of a mutable share.
//!
//! Every share of a version starts with the same 80-byte **signed prefix**, then the writer's
//! Ed25519 signature over it and the share's own fields: 160 bytes in all, big-endian.
//!
//! | offset | bytes | field | signed |
//! |---|---|---|---|
//! | 0 | 8 | magic `folioMUT` | ✓ |
//! | 8 | 2 | format version, 1 | ✓ |
//! | 10 | 2 | k, shares needed | ✓ |
//! | 12 | 2 | N, shares made (`1 <= k <= N <= 256`) | ✓ |
//! | 14 | 2 | zero | ✓ |
//! | 16 | 8 | sequence number, `1 ..= 2^62` | ✓ |
//! | 24 | 16 | salt of this version (its data key is `H(R, salt)`) | ✓ |
//! | 40 | 8 | the plaintext's length | ✓ |
//! | 48 | 32 | the UEB hash of the encrypted body; all zero exactly when the length is 0 | ✓ |
//! | 80 | 64 | Ed25519 signature by the file's signing key over `H("folio:mut:signature:v1"; SI, bytes 0..80)` | |
//! | 144 | 2 | share number, below N | |
//! | 146 | 6 | zero | |
//! | 152 | 8 | the body's length: 0 exactly when the plaintext's length is 0, at most 524,128 | |
//!
//! The body that follows (not read here) is an immutable share of the encrypted content.
//! The signature binds the version to the storage index, so a share cannot be replayed into
//! another slot; the prefix is also what a writer's test-and-set compares to detect a
//! version written by someone else since it looked. The sequence number's bound leaves room
//! to add one without overflow, and the body's bound keeps a whole share within one storage
//! call (`MAX_CHUNK`).
//!
//! [`MutShareHeader::decode`] reads untrusted bytes: it checks every field, allocates
//! nothing and never panics; it does not check the signature ([`MutShareHeader::verify`]
//! does, with the verifying key from a cap).

use ring::signature::{UnparsedPublicKey, ED25519};

use super::cap::{MutVerifyCap, MutWriteCap};
use crate::immutable::hash::{tagged, Hash};
use crate::immutable::MAX_SHARES;
use crate::storage::{StorageIndex, MAX_CHUNK};

/// The bytes of the signed prefix.
pub const PREFIX_LEN: usize = 80;
/// The bytes of the whole header.
pub const HEADER_LEN: usize = 160;
/// The highest sequence number a version may carry.
pub const MAX_SEQNUM: u64 = 1 << 62;
/// The longest body: a share must fit one storage call.
pub const MAX_BODY_LEN: u64 = MAX_CHUNK - HEADER_LEN as u64;
/// The longest plaintext a header may announce (each of at most 256 shares carries at most
/// [`MAX_BODY_LEN`] bytes of it).
pub const MAX_SIZE: u64 = MAX_SHARES as u64 * MAX_BODY_LEN;

const MAGIC: &[u8; 8] = b"folioMUT";
const VERSION: u16 = 1;
const TAG_SIGNATURE: &str = "folio:mut:signature:v1";

/// Why a share header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareHeaderError {
    /// Fewer bytes than the header.
    #[error("a mutable share header is {HEADER_LEN} bytes; only {0} were given")]
    Short(usize),
    /// Not a Folio mutable share.
    #[error("not a Folio mutable share (its first bytes are not \"folioMUT\")")]
    Magic,
    /// A format this code does not read.
    #[error("mutable share format version {0} is not known (this reads version {VERSION})")]
    Version(u16),
    /// A reserved field is not zero.
    #[error("a reserved field of the share header is not zero")]
    Reserved,
    /// k and N out of range.
    #[error("share counts must satisfy 1 <= k <= N <= {MAX_SHARES}; got k={needed}, N={total}")]
    Shares {
        /// k.
        needed: u16,
        /// N.
        total: u16,
    },
    /// A share number not below N.
    #[error("share number {shnum} is not below N={total}")]
    ShareNumber {
        /// The share number.
        shnum: u16,
        /// N.
        total: u16,
    },
    /// A sequence number out of range.
    #[error("sequence number {0} is outside 1..=2^62")]
    Seqnum(u64),
    /// A plaintext length out of range.
    #[error("the announced length {0} exceeds the {MAX_SIZE} a mutable file may have")]
    Size(u64),
    /// A body length out of range.
    #[error("the body length {0} exceeds the {MAX_BODY_LEN} a share may carry")]
    BodyLength(u64),
    /// The plaintext length, the UEB hash and the body length disagree about emptiness.
    #[error(
        "an empty version has no UEB hash and no body, and only an empty one: \
         length {size}, UEB hash {}, body length {body_len}",
        if *.ueb_zero { "all zero" } else { "set" }
    )]
    Emptiness {
        /// The plaintext length.
        size: u64,
        /// Whether the UEB hash is all zero.
        ueb_zero: bool,
        /// The body length.
        body_len: u64,
    },
    /// The signature does not verify with the cap's key.
    #[error("the share's signature does not verify with the cap's verifying key")]
    BadSignature,
}

/// The fields every share of one version shares, and the writer signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignedPrefix {
    /// k.
    pub needed: u16,
    /// N.
    pub total: u16,
    /// The version's sequence number.
    pub seqnum: u64,
    /// The version's salt.
    pub salt: [u8; 16],
    /// The plaintext's length.
    pub size: u64,
    /// The UEB hash of the encrypted body (zero for an empty version).
    pub ueb_hash: Hash,
}

/// A share's whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MutShareHeader {
    /// The version's signed fields.
    pub prefix: SignedPrefix,
    /// The writer's signature over the prefix and the storage index.
    pub signature: [u8; 64],
    /// This share's number.
    pub shnum: u16,
    /// The length of the body that follows the header.
    pub body_len: u64,
}

impl SignedPrefix {
    /// The 80 bytes of the prefix.
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut b = [0u8; PREFIX_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_be_bytes());
        b[10..12].copy_from_slice(&self.needed.to_be_bytes());
        b[12..14].copy_from_slice(&self.total.to_be_bytes());
        b[16..24].copy_from_slice(&self.seqnum.to_be_bytes());
        b[24..40].copy_from_slice(&self.salt);
        b[40..48].copy_from_slice(&self.size.to_be_bytes());
        b[48..80].copy_from_slice(&self.ueb_hash);
        b
    }

    /// Reads and checks the first [`PREFIX_LEN`] bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<SignedPrefix, ShareHeaderError> {
        let Some(b) = b.get(..PREFIX_LEN) else {
            return Err(ShareHeaderError::Short(b.len()));
        };
        if &b[0..8] != MAGIC {
            return Err(ShareHeaderError::Magic);
        }
        let version = u16_at(b, 8);
        if version != VERSION {
            return Err(ShareHeaderError::Version(version));
        }
        if b[14..16] != [0, 0] {
            return Err(ShareHeaderError::Reserved);
        }
        let (needed, total) = (u16_at(b, 10), u16_at(b, 12));
        if needed < 1 || needed > total || usize::from(total) > MAX_SHARES {
            return Err(ShareHeaderError::Shares { needed, total });
        }
        let seqnum = u64_at(b, 16);
        if !(1..=MAX_SEQNUM).contains(&seqnum) {
            return Err(ShareHeaderError::Seqnum(seqnum));
        }
        let size = u64_at(b, 40);
        if size > MAX_SIZE {
            return Err(ShareHeaderError::Size(size));
        }
        Ok(SignedPrefix {
            needed,
            total,
            seqnum,
            salt: b[24..40].try_into().expect("16 bytes"),
            size,
            ueb_hash: b[48..80].try_into().expect("32 bytes"),
        })
    }

    /// What the writer signs: the prefix, bound to the slot's storage index.
    pub fn message(&self, si: &StorageIndex) -> Hash {
        tagged(TAG_SIGNATURE, &[si, &self.encode()])
    }
}

impl MutShareHeader {
    /// The header of share `shnum` of the version `prefix`, signed with `cap`'s key.
    pub fn signed(
        prefix: SignedPrefix,
        cap: &MutWriteCap,
        shnum: u16,
        body_len: u64,
    ) -> MutShareHeader {
        let message = prefix.message(&cap.storage_index());
        let mut signature = [0u8; 64];
        signature.copy_from_slice(cap.signing_key().sign(&message).as_ref());
        MutShareHeader {
            prefix,
            signature,
            shnum,
            body_len,
        }
    }

    /// The 160 bytes of the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..PREFIX_LEN].copy_from_slice(&self.prefix.encode());
        b[80..144].copy_from_slice(&self.signature);
        b[144..146].copy_from_slice(&self.shnum.to_be_bytes());
        b[152..160].copy_from_slice(&self.body_len.to_be_bytes());
        b
    }

    /// Reads and checks the first [`HEADER_LEN`] bytes of `b` (what follows is the body).
    /// The signature is not checked: see [`MutShareHeader::verify`].
    pub fn decode(b: &[u8]) -> Result<MutShareHeader, ShareHeaderError> {
        let Some(b) = b.get(..HEADER_LEN) else {
            return Err(ShareHeaderError::Short(b.len()));
        };
        let prefix = SignedPrefix::decode(b)?;
        if b[146..152] != [0; 6] {
            return Err(ShareHeaderError::Reserved);
        }
        let shnum = u16_at(b, 144);
        if shnum >= prefix.total {
            return Err(ShareHeaderError::ShareNumber {
                shnum,
                total: prefix.total,
            });
        }
        let body_len = u64_at(b, 152);
        if body_len > MAX_BODY_LEN {
            return Err(ShareHeaderError::BodyLength(body_len));
        }
        let ueb_zero = prefix.ueb_hash == [0; 32];
        let empty = prefix.size == 0;
        if ueb_zero != empty || (body_len == 0) != empty {
            return Err(ShareHeaderError::Emptiness {
                size: prefix.size,
                ueb_zero,
                body_len,
            });
        }
        Ok(MutShareHeader {
            prefix,
            signature: b[80..144].try_into().expect("64 bytes"),
            shnum,
            body_len,
        })
    }

    /// Checks the signature with the verifying key and storage index of `cap`.
    pub fn verify(&self, cap: &MutVerifyCap) -> Result<(), ShareHeaderError> {
        let message = self.prefix.message(&cap.storage_index());
        UnparsedPublicKey::new(&ED25519, cap.verifying_key())
            .verify(&message, &self.signature)
            .map_err(|_| ShareHeaderError::BadSignature)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutable::MutKind;

    fn hex(text: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(text.as_bytes()).unwrap()
    }

    fn kat_cap() -> MutWriteCap {
        MutWriteCap::from_secret(MutKind::File, std::array::from_fn(|i| i as u8))
    }

    fn empty_version() -> SignedPrefix {
        SignedPrefix {
            needed: 3,
            total: 10,
            seqnum: 1,
            salt: [7; 16],
            size: 0,
            ueb_hash: [0; 32],
        }
    }

    /// The prefix, message and signature of the design's example, computed independently
    /// (docs/design/mutable-files-kat.py).
    #[test]
    fn known_answers() {
        let prefix = empty_version();
        assert_eq!(
            prefix.encode().to_vec(),
            hex("666f6c696f4d555400010003000a00000000000000000001\
                 07070707070707070707070707070707\
                 0000000000000000\
                 0000000000000000000000000000000000000000000000000000000000000000")
        );
        let cap = kat_cap();
        assert_eq!(
            prefix.message(&cap.storage_index()).to_vec(),
            hex("0b3a1564df439d5515bb15bc59693225300294a781181cd05298eeb869aad9dc")
        );
        let header = MutShareHeader::signed(prefix, &cap, 4, 0);
        assert_eq!(
            header.signature.to_vec(),
            hex(
                "ddbe8fa5ddd31815f44d48b3e5823d892d32b1086226a0334dd548408872a4df\
                 f00e99cfc428b8ebd46dc0c471337c1de6432661776316696618688e4d59dc05"
            )
        );
    }

    #[test]
    fn headers_round_trip_and_verify_only_for_their_slot() {
        let cap = kat_cap();
        let prefix = SignedPrefix {
            size: 12_345,
            ueb_hash: [9; 32],
            seqnum: MAX_SEQNUM - 1,
            ..empty_version()
        };
        let header = MutShareHeader::signed(prefix, &cap, 9, 4_321);
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(b"the body follows");
        let back = MutShareHeader::decode(&bytes).unwrap();
        assert_eq!(back, header);
        back.verify(&cap.verify_cap()).unwrap();
        // Another file's key, or the same prefix in another slot, does not verify.
        let other = MutWriteCap::from_secret(MutKind::File, [1; 32]);
        assert_eq!(
            back.verify(&other.verify_cap()),
            Err(ShareHeaderError::BadSignature)
        );
        // Any change to a signed byte that still decodes breaks the signature: k (3 -> 2),
        // the seqnum, the salt, the size, the UEB hash.
        for at in [8 + 3, 16 + 7, 24, 40 + 7, 79] {
            let mut b = bytes.clone();
            b[at] ^= 1;
            let h = MutShareHeader::decode(&b).unwrap_or_else(|e| panic!("byte {at}: {e}"));
            assert_eq!(
                h.verify(&cap.verify_cap()),
                Err(ShareHeaderError::BadSignature),
                "byte {at}"
            );
        }
    }

    /// Headers written and signed by the independent Python implementation (the fuzz seeds,
    /// made as docs/design/mutable-files-kat.py computes) read and verify here.
    #[test]
    fn headers_signed_elsewhere_verify() {
        let seeds: [&[u8]; 2] = [
            include_bytes!("../../../fuzz/seeds/share_decode/mut_header_empty"),
            include_bytes!("../../../fuzz/seeds/share_decode/mut_header_body"),
        ];
        for bytes in seeds {
            let h = MutShareHeader::decode(bytes).unwrap();
            h.verify(&kat_cap().verify_cap()).unwrap();
            assert_eq!(h.encode()[..], bytes[..HEADER_LEN]);
        }
    }

    #[test]
    fn refusals() {
        let cap = kat_cap();
        let good = MutShareHeader::signed(empty_version(), &cap, 2, 0).encode();
        let with = |at: usize, v: &[u8]| {
            let mut b = good;
            b[at..at + v.len()].copy_from_slice(v);
            MutShareHeader::decode(&b).unwrap_err()
        };
        assert_eq!(
            MutShareHeader::decode(&good[..159]),
            Err(ShareHeaderError::Short(159))
        );
        assert_eq!(SignedPrefix::decode(&[]), Err(ShareHeaderError::Short(0)));
        assert_eq!(with(0, b"folioCHK"), ShareHeaderError::Magic);
        assert_eq!(with(8, &2u16.to_be_bytes()), ShareHeaderError::Version(2));
        assert_eq!(with(15, &[1]), ShareHeaderError::Reserved);
        assert_eq!(with(150, &[1]), ShareHeaderError::Reserved);
        assert_eq!(
            with(10, &11u16.to_be_bytes()),
            ShareHeaderError::Shares {
                needed: 11,
                total: 10
            }
        );
        assert_eq!(
            with(10, &[0, 0, 1, 1]),
            ShareHeaderError::Shares {
                needed: 0,
                total: 257
            }
        );
        assert_eq!(
            with(144, &10u16.to_be_bytes()),
            ShareHeaderError::ShareNumber {
                shnum: 10,
                total: 10
            }
        );
        assert_eq!(with(16, &0u64.to_be_bytes()), ShareHeaderError::Seqnum(0));
        assert_eq!(
            with(16, &(MAX_SEQNUM + 1).to_be_bytes()),
            ShareHeaderError::Seqnum(MAX_SEQNUM + 1)
        );
        assert_eq!(
            with(40, &(MAX_SIZE + 1).to_be_bytes()),
            ShareHeaderError::Size(MAX_SIZE + 1)
        );
        assert_eq!(
            with(152, &(MAX_BODY_LEN + 1).to_be_bytes()),
            ShareHeaderError::BodyLength(MAX_BODY_LEN + 1)
        );
        // Emptiness: all three agree, or the header is refused.
        assert!(matches!(
            with(40, &5u64.to_be_bytes()),
            ShareHeaderError::Emptiness { size: 5, .. }
        ));
        assert!(matches!(
            with(48, &[1]),
            ShareHeaderError::Emptiness { size: 0, .. }
        ));
        assert!(matches!(
            with(152, &7u64.to_be_bytes()),
            ShareHeaderError::Emptiness { body_len: 7, .. }
        ));
    }
}
