//! The key derivations of the mutable cap chain.
//!
//! `H(tag; parts…)` is the tagged SHA-256 of immutable files (`immutable::hash::tagged`:
//! the tag and each part prefixed by its length as a big-endian u64). Every value below is
//! 32 bytes unless said otherwise, and every step is one way: a hash, or Ed25519's public key
//! from its secret.
//!
//! | value | definition |
//! |---|---|
//! | write secret `W` | 32 random bytes, made once when the file is created: the write cap |
//! | signing seed `S` | `H("folio:mut:signing-seed:v1"; W)`: the Ed25519 secret key (RFC 8032) |
//! | verifying key `VK` | the Ed25519 public key of `S` |
//! | read key `R` | `H("folio:mut:read-key:v1"; W)` |
//! | storage index `SI` | the first 16 bytes of `H("folio:mut:storage-index:v1"; R)` |
//! | write-enabler master `WEM` | `H("folio:mut:write-enabler-master:v1"; W)` |
//! | write enabler for a server | `H("folio:mut:write-enabler:v1"; WEM, the server's TubId)` |
//! | data key of a version | `H("folio:mut:data-key:v1"; R, salt)`, a fresh 16-byte salt per version |
//! | directory seal key `DK` | `H("folio:dir:writecap-key:v1"; W)`, for directories only |
//! | entry key | `H("folio:dir:entry-key:v1"; DK, entry salt)`, a 16-byte salt per entry |
//!
//! So a read cap (`R`, `VK`) gives the storage index and the data keys but not `W`, `S`,
//! `WEM` or `DK`; a verify cap (`SI`, `VK`) only finds and checks shares. The storage index
//! comes from the read side, as in Tahoe-LAFS, and its tag differs from the immutable one, so
//! the two kinds never share an index.

use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::immutable::hash::tagged;
use crate::storage::StorageIndex;

const TAG_SIGNING_SEED: &str = "folio:mut:signing-seed:v1";
const TAG_READ_KEY: &str = "folio:mut:read-key:v1";
const TAG_STORAGE_INDEX: &str = "folio:mut:storage-index:v1";
const TAG_WRITE_ENABLER_MASTER: &str = "folio:mut:write-enabler-master:v1";
const TAG_WRITE_ENABLER: &str = "folio:mut:write-enabler:v1";
const TAG_DATA_KEY: &str = "folio:mut:data-key:v1";
const TAG_DIR_KEY: &str = "folio:dir:writecap-key:v1";
const TAG_ENTRY_KEY: &str = "folio:dir:entry-key:v1";

/// The signing seed `S` of the file whose write secret is `w`.
pub(crate) fn signing_seed(w: &[u8; 32]) -> [u8; 32] {
    tagged(TAG_SIGNING_SEED, &[w])
}

/// The Ed25519 key pair that signs the file's versions.
pub(crate) fn signing_key(w: &[u8; 32]) -> Ed25519KeyPair {
    // Any 32 bytes are a valid Ed25519 secret key (RFC 8032 hashes and clamps them), so this
    // cannot fail for a 32-byte seed.
    Ed25519KeyPair::from_seed_unchecked(&signing_seed(w))
        .expect("every 32-byte seed is an Ed25519 secret key")
}

/// The verifying key `VK`: the public half of [`signing_key`].
pub(crate) fn verifying_key(w: &[u8; 32]) -> [u8; 32] {
    let mut vk = [0u8; 32];
    vk.copy_from_slice(signing_key(w).public_key().as_ref());
    vk
}

/// The read key `R`.
pub(crate) fn read_key(w: &[u8; 32]) -> [u8; 32] {
    tagged(TAG_READ_KEY, &[w])
}

/// The storage index of the file whose read key is `r`.
pub(crate) fn storage_index(r: &[u8; 32]) -> StorageIndex {
    let h = tagged(TAG_STORAGE_INDEX, &[r]);
    let mut si = [0u8; 16];
    si.copy_from_slice(&h[..16]);
    si
}

/// The write-enabler master `WEM`, from which each server's write enabler derives.
pub(crate) fn write_enabler_master(w: &[u8; 32]) -> [u8; 32] {
    tagged(TAG_WRITE_ENABLER_MASTER, &[w])
}

/// The write enabler the server with TubId `server` keeps for this file's slot: only a
/// holder of the write cap can compute it, and it differs per server, so one server cannot
/// use what it was given to write on another.
pub(crate) fn write_enabler(w: &[u8; 32], server: &[u8; 32]) -> [u8; 32] {
    tagged(TAG_WRITE_ENABLER, &[&write_enabler_master(w), server])
}

/// The AES-256 key of the version encrypted with `salt`.
pub(crate) fn data_key(r: &[u8; 32], salt: &[u8; 16]) -> [u8; 32] {
    tagged(TAG_DATA_KEY, &[r, salt])
}

/// A directory's seal key `DK`, under which its children's write caps are stored.
pub(crate) fn dir_key(w: &[u8; 32]) -> [u8; 32] {
    tagged(TAG_DIR_KEY, &[w])
}

/// The key that seals one entry's child write cap, with that entry's salt.
pub(crate) fn entry_key(dk: &[u8; 32], salt: &[u8; 16]) -> [u8; 32] {
    tagged(TAG_ENTRY_KEY, &[dk, salt])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(text.as_bytes()).unwrap()
    }

    /// Known answers, computed independently with Python's `hashlib` and `cryptography`
    /// (docs/design/mutable-files-kat.py): `W` = bytes 0..32, a server TubId of 32 bytes
    /// 0x42, a version salt of 16 bytes 0x07, an entry salt of 16 bytes 0x09.
    #[test]
    fn known_answers() {
        let w: [u8; 32] = std::array::from_fn(|i| i as u8);
        let r = read_key(&w);
        let cases: [(&str, Vec<u8>, &str); 9] = [
            (
                "S",
                signing_seed(&w).to_vec(),
                "a58260bcd6e9e36ae0e23123bd8a57cd0073003c206271a9c03cc58b3edbacdc",
            ),
            (
                "VK",
                verifying_key(&w).to_vec(),
                "7381e3961dc387b19eff430396386ef55f0d9592c7e2e4dc19a92f2355f64c28",
            ),
            (
                "R",
                r.to_vec(),
                "62c4e7275650e944cc8c893989e7e6114f2360ae1fe649dee59b240065ae8d1f",
            ),
            (
                "SI",
                storage_index(&r).to_vec(),
                "e750da7f62d4b0c3f229b00b5df0a363",
            ),
            (
                "WEM",
                write_enabler_master(&w).to_vec(),
                "ba04631dedeafba66979981c4fa2f6553d67d26a5353893a76b81014fe15fafc",
            ),
            (
                "WE",
                write_enabler(&w, &[0x42; 32]).to_vec(),
                "a62a5ad2657ceaaacee2cd86c5f82091579ae31d06fbcb477b1e24de9aeb3fd5",
            ),
            (
                "K",
                data_key(&r, &[7; 16]).to_vec(),
                "1e4617061a2ccf4557f6184fabe1277442ab4e9020ef2b891c17e0b6508e39ac",
            ),
            (
                "DK",
                dir_key(&w).to_vec(),
                "32dcb526ecd4f1ad356efe91a863ae60ea017274ac1a5c097d4c0a5a608c8392",
            ),
            (
                "EK",
                entry_key(&dir_key(&w), &[9; 16]).to_vec(),
                "1077b06855dc262329dd4e1824137c9caaf98f76ee99af224abb5ad9b84a4a9f",
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, hex(want), "{name}");
        }
        // ring's Ed25519 signs as the independent implementation does (RFC 8032 signatures
        // are deterministic): the message is the one the design's signed-prefix example gives.
        let m = hex("0b3a1564df439d5515bb15bc59693225300294a781181cd05298eeb869aad9dc");
        assert_eq!(
            signing_key(&w).sign(&m).as_ref(),
            hex(
                "ddbe8fa5ddd31815f44d48b3e5823d892d32b1086226a0334dd548408872a4df\
                 f00e99cfc428b8ebd46dc0c471337c1de6432661776316696618688e4d59dc05"
            )
        );
    }

    #[test]
    fn each_server_gets_its_own_write_enabler() {
        let w = [5u8; 32];
        assert_ne!(write_enabler(&w, &[1; 32]), write_enabler(&w, &[2; 32]));
        assert_ne!(
            write_enabler(&w, &[1; 32]),
            write_enabler(&[6; 32], &[1; 32])
        );
    }
}
