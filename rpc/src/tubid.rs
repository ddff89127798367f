//! The TubId: the stable name of a Tub, derived from its public key.
//!
//! A TubId is `SHA-256("folio-tubid-v1" || 0x00 || SubjectPublicKeyInfo DER)`, written as 52
//! characters of lowercase, unpadded RFC 4648 base32.
//!
//! The SubjectPublicKeyInfo is hashed exactly as the certificate carries it, never re-encoded,
//! and only the one encoding each accepted key type has ([`check_spki`]) is accepted: so one
//! key has one TubId, and any implementation can compute it from the certificate's bytes.
//!
//! Foolscap names a Tub by the SHA-1 of its whole certificate, so renewing the certificate (a
//! new validity period, a new serial number) silently changes the Tub's identity and breaks
//! every FURL that names it. Folio hashes only the public key: the certificate is a carrier
//! for the key, and a renewed certificate over the same key keeps the same TubId. SHA-256
//! replaces SHA-1, whose collision resistance is broken; the domain-separation prefix makes
//! a TubId useless as a hash of the same key in any other protocol.

use std::fmt;
use std::str::FromStr;

use crate::base32::ENCODING as BASE32;
use ring::digest;
use rustls::pki_types::CertificateDer;

/// The number of bytes in a TubId.
pub const TUBID_LEN: usize = 32;

/// The number of base32 characters in a written TubId.
pub const TUBID_TEXT_LEN: usize = 52;

const DOMAIN: &[u8] = b"folio-tubid-v1\0";

/// The identity of a Tub: a hash of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TubId([u8; TUBID_LEN]);

/// Why a string or certificate did not yield a TubId.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TubIdError {
    /// The text is not 52 characters long.
    #[error("a TubId is {TUBID_TEXT_LEN} base32 characters, this one has {0}")]
    Length(usize),
    /// The text holds a character outside lowercase base32.
    #[error("a TubId is lowercase base32 (a-z, 2-7): {0}")]
    Alphabet(String),
    /// The certificate could not be parsed to find its public key.
    #[error("the certificate could not be parsed: {0}")]
    Certificate(String),
    /// The certificate's key is not one Folio accepts, or not in its one accepted encoding.
    #[error("{0}")]
    UnsupportedKey(String),
}

/// The kinds of key a Tub may have (docs/handshake.md §4), with the TLS 1.3 signature
/// schemes each signs its handshakes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519 (RFC 8410): `ed25519`.
    Ed25519,
    /// ECDSA on P-256, uncompressed point: `ecdsa_secp256r1_sha256`.
    EcdsaP256,
    /// ECDSA on P-384, uncompressed point: `ecdsa_secp384r1_sha384`.
    EcdsaP384,
    /// RSA (`rsaEncryption`) of 2048 to 8192 bits: `rsa_pss_rsae_sha256/384/512`.
    Rsa {
        /// The modulus length.
        bits: usize,
    },
}

/// DER of the `AlgorithmIdentifier` contents of each accepted key type (RFC 8410, RFC 5480,
/// RFC 3279), and of some refused ones, to name them.
const ALG_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const ALG_EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];
const ALG_EC_P384: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];
const ALG_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
const ALG_ED448: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x71];
const ALG_EC_P521: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23,
];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Reads one DER element with tag `tag` from the front of `input`: its contents and what
/// follows. Only the definite, shortest length forms DER allows are accepted.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if t != tag {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            if b < 0x80 {
                return None;
            }
            (b as usize, rest)
        }
        0x82 => {
            let b = rest.get(..2)?;
            let len = u16::from_be_bytes([b[0], b[1]]) as usize;
            if len < 0x100 {
                return None;
            }
            (len, &rest[2..])
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The length in bits of a DER INTEGER's contents if it is positive and minimally encoded.
fn positive_integer_bits(int: &[u8]) -> Option<usize> {
    let (&first, rest) = int.split_first()?;
    let (top, rest) = match first {
        0 => {
            let (&next, rest) = rest.split_first()?;
            if next < 0x80 {
                return None; // a needless leading zero
            }
            (next, rest)
        }
        0x80.. => return None, // negative
        b => (b, rest),
    };
    Some(rest.len() * 8 + (8 - top.leading_zeros() as usize))
}

/// Checks that `spki` (a DER SubjectPublicKeyInfo, outer SEQUENCE included) is a key Folio
/// accepts, in the one encoding it accepts for that key (docs/handshake.md §4):
///
/// - Ed25519: algorithm `1.3.101.112` with no parameters, a 32-byte key;
/// - ECDSA: algorithm `id-ecPublicKey` with the named curve P-256 or P-384, and the point
///   uncompressed (`04 || X || Y`);
/// - RSA: algorithm `rsaEncryption` with NULL parameters, an `RSAPublicKey` of minimally
///   encoded positive integers, and a modulus of 2048 to 8192 bits.
///
/// The key's mathematical validity (a point on the curve, a usable exponent) is left to the
/// TLS handshake's signature check, which no invalid key passes.
pub fn check_spki(spki: &[u8]) -> Result<KeyKind, TubIdError> {
    let refuse = |why: &str| Err(TubIdError::UnsupportedKey(why.to_string()));
    let Some((body, [])) = der_element(spki, 0x30) else {
        return refuse("the SubjectPublicKeyInfo is not one DER SEQUENCE");
    };
    let Some((alg, rest)) = der_element(body, 0x30) else {
        return refuse("the SubjectPublicKeyInfo has no AlgorithmIdentifier");
    };
    let Some((bits, [])) = der_element(rest, 0x03) else {
        return refuse("the SubjectPublicKeyInfo has no key BIT STRING, or bytes after it");
    };
    let Some((&0, key)) = bits.split_first() else {
        return refuse("the key BIT STRING has unused bits");
    };
    match alg {
        ALG_ED25519 if key.len() == 32 => Ok(KeyKind::Ed25519),
        ALG_EC_P256 if key.len() == 65 && key[0] == 4 => Ok(KeyKind::EcdsaP256),
        ALG_EC_P384 if key.len() == 97 && key[0] == 4 => Ok(KeyKind::EcdsaP384),
        ALG_EC_P256 | ALG_EC_P384 if matches!(key.first(), Some(2 | 3)) => {
            refuse("the EC point is compressed; Folio accepts only uncompressed points")
        }
        ALG_ED25519 | ALG_EC_P256 | ALG_EC_P384 => refuse("the key has the wrong length"),
        ALG_RSA => {
            let rsa = der_element(key, 0x30).and_then(|(seq, rest)| {
                let (n, seq) = der_element(seq, 0x02)?;
                let (e, seq) = der_element(seq, 0x02)?;
                let bits = positive_integer_bits(n)?;
                positive_integer_bits(e)?;
                (rest.is_empty() && seq.is_empty()).then_some(bits)
            });
            match rsa {
                Some(bits @ 2048..=8192) => Ok(KeyKind::Rsa { bits }),
                Some(bits) => Err(TubIdError::UnsupportedKey(format!(
                    "an RSA key of {bits} bits; Folio accepts 2048 to 8192"
                ))),
                None => refuse("the RSA key is not a DER RSAPublicKey of positive integers"),
            }
        }
        ALG_ED448 => refuse("an Ed448 key; Folio accepts Ed25519, ECDSA P-256 or P-384, RSA"),
        ALG_EC_P521 => {
            refuse("an ECDSA P-521 key; Folio accepts Ed25519, ECDSA P-256 or P-384, RSA")
        }
        _ if alg.starts_with(OID_EC_PUBLIC_KEY) => {
            refuse("an EC key on a curve other than P-256 or P-384 (named as Folio requires)")
        }
        _ => refuse("a key algorithm Folio does not accept (Ed25519, ECDSA P-256 or P-384, RSA)"),
    }
}

impl TubId {
    /// Derives the TubId of a DER-encoded SubjectPublicKeyInfo.
    pub fn from_spki(spki_der: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(DOMAIN);
        ctx.update(spki_der);
        let mut out = [0u8; TUBID_LEN];
        out.copy_from_slice(ctx.finish().as_ref());
        TubId(out)
    }

    /// Derives the TubId of the key inside an X.509 certificate: the hash of its
    /// SubjectPublicKeyInfo exactly as the certificate carries it.
    ///
    /// Only the public key matters: dates, names and extensions are ignored. A key Folio does
    /// not accept, or one not in its accepted encoding, is refused ([`check_spki`]): it
    /// could never authenticate a connection, and a key must not have two TubIds.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, TubIdError> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| TubIdError::Certificate(format!("{e:?}")))?;
        // webpki keeps the SPKI's contents and wraps them in a SEQUENCE again; DER allows one
        // length form only, so these are the certificate's own bytes.
        let spki = parsed.subject_public_key_info();
        check_spki(spki.as_ref())?;
        Ok(Self::from_spki(spki.as_ref()))
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; TUBID_LEN] {
        &self.0
    }

    /// Builds a TubId from raw hash bytes.
    pub fn from_bytes(bytes: [u8; TUBID_LEN]) -> Self {
        TubId(bytes)
    }
}

impl fmt::Display for TubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32.encode(&self.0))
    }
}

impl fmt::Debug for TubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TubId({self})")
    }
}

impl FromStr for TubId {
    type Err = TubIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != TUBID_TEXT_LEN {
            return Err(TubIdError::Length(s.len()));
        }
        let mut out = [0u8; TUBID_LEN];
        match BASE32.decode_mut(s.as_bytes(), &mut out) {
            Ok(_) => Ok(TubId(out)),
            Err(_) => Err(TubIdError::Alphabet(s.to_string())),
        }
    }
}

impl serde::Serialize for TubId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TubId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TubId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{TUBID_LEN} bytes of TubId")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<TubId, E> {
                let arr: [u8; TUBID_LEN] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(TubId(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let id = TubId::from_spki(b"some key");
        let text = id.to_string();
        assert_eq!(text.len(), TUBID_TEXT_LEN);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(text.parse::<TubId>().unwrap(), id);
    }

    #[test]
    fn refuses_bad_text() {
        let id = TubId::from_spki(b"k").to_string();
        assert_eq!("abc".parse::<TubId>().unwrap_err(), TubIdError::Length(3));
        let upper = id.to_uppercase();
        assert!(matches!(
            upper.parse::<TubId>(),
            Err(TubIdError::Alphabet(_))
        ));
        let mut bad = id.clone().into_bytes();
        bad[0] = b'1';
        assert!(String::from_utf8(bad).unwrap().parse::<TubId>().is_err());
        // 52 characters carry 260 bits: the last 4 must be zero (one canonical spelling).
        let mut last = id.into_bytes();
        last[51] = if last[51] == b'b' { b'c' } else { b'b' };
        assert!(String::from_utf8(last).unwrap().parse::<TubId>().is_err());
    }

    fn seq(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    fn spki(alg: &[u8], key: &[u8]) -> Vec<u8> {
        let bits = [&[0u8][..], key].concat();
        seq(0x30, &[seq(0x30, alg), seq(0x03, &bits)].concat())
    }

    /// An RSA key with a modulus of `bits` bits (not a real key: its shape is what counts).
    fn rsa(bits: usize) -> Vec<u8> {
        let mut n = vec![0u8];
        n.push(0x80 | 1);
        n.resize(bits / 8 + 1, 0xab);
        let key = seq(0x30, &[seq(0x02, &n), seq(0x02, &[1, 0, 1])].concat());
        spki(ALG_RSA, &key)
    }

    #[test]
    fn accepted_keys_have_one_encoding() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(
            check_spki(&ed.subject_public_key_info()),
            Ok(KeyKind::Ed25519)
        );
        assert_eq!(
            check_spki(&p256.subject_public_key_info()),
            Ok(KeyKind::EcdsaP256)
        );
        assert_eq!(
            check_spki(&p384.subject_public_key_info()),
            Ok(KeyKind::EcdsaP384)
        );
        assert_eq!(check_spki(&rsa(2048)), Ok(KeyKind::Rsa { bits: 2048 }));
        assert_eq!(check_spki(&rsa(8192)), Ok(KeyKind::Rsa { bits: 8192 }));

        let refused = |spki: &[u8], says: &str| match check_spki(spki) {
            Err(TubIdError::UnsupportedKey(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("expected a refusal saying {says:?}, got {other:?}"),
        };
        // The same P-256 key with its point compressed.
        let raw = p256.der_bytes();
        let compressed = [&[2 + (raw[64] & 1)][..], &raw[1..33]].concat();
        refused(&spki(ALG_EC_P256, &compressed), "compressed");
        refused(&rsa(1024), "1024 bits");
        refused(&rsa(8200), "8200 bits");
        refused(&spki(ALG_ED448, &[1; 57]), "Ed448");
        refused(&spki(ALG_EC_P521, &[4; 133]), "P-521");
        refused(&spki(ALG_ED25519, &[1; 31]), "length");
        // Ed25519 with NULL parameters: another encoding of the same key.
        let ed_null = [ALG_ED25519, &[0x05, 0x00]].concat();
        refused(&spki(&ed_null, ed.der_bytes()), "does not accept");
        // RSA with a needless leading zero in the modulus.
        let mut n = vec![0u8, 0, 0x80 | 1];
        n.resize(258, 0xab);
        let key = seq(0x30, &[seq(0x02, &n), seq(0x02, &[1, 0, 1])].concat());
        refused(&spki(ALG_RSA, &key), "RSAPublicKey");
        // A length written in a longer form than DER allows, and bytes after the SEQUENCE.
        let good = ed.subject_public_key_info();
        let long = [&[0x30, 0x81][..], &good[1..]].concat();
        refused(&long, "one DER SEQUENCE");
        refused(&[&good[..], &[0][..]].concat(), "one DER SEQUENCE");
    }

    #[test]
    fn the_certificate_s_own_spki_bytes_are_hashed() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert!(cert.der().windows(spki.len()).any(|w| w == spki));
        assert_eq!(
            TubId::from_certificate(cert.der()).unwrap(),
            TubId::from_spki(&spki)
        );
    }

    #[test]
    fn domain_separated() {
        let mut plain = [0u8; 32];
        plain.copy_from_slice(digest::digest(&digest::SHA256, b"k").as_ref());
        assert_ne!(TubId::from_spki(b"k").as_bytes(), &plain);
    }
}
