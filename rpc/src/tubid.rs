//! The TubId: the stable name of a Tub, derived from its public key.
//!
//! A TubId is `SHA-256("folio-tubid-v1" || 0x00 || SubjectPublicKeyInfo DER)`, written as 52
//! characters of lowercase, unpadded RFC 4648 base32.
//!
//! Foolscap names a Tub by the SHA-1 of its whole certificate, so renewing the certificate (a
//! new validity period, a new serial number) silently changes the Tub's identity and breaks
//! every FURL that names it. Folio hashes only the public key: the certificate is a carrier
//! for the key, and a renewed certificate over the same key keeps the same TubId. SHA-256
//! replaces SHA-1, whose collision resistance is broken; the domain-separation prefix makes
//! a TubId useless as a hash of the same key in any other protocol.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use ring::digest;
use rustls::pki_types::CertificateDer;

/// The number of bytes in a TubId.
pub const TUBID_LEN: usize = 32;

/// The number of base32 characters in a written TubId.
pub const TUBID_TEXT_LEN: usize = 52;

const DOMAIN: &[u8] = b"folio-tubid-v1\0";

/// Lowercase, unpadded RFC 4648 base32 that refuses non-canonical trailing bits.
pub(crate) static BASE32: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = true;
    spec.encoding().expect("a valid base32 specification")
});

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

    /// Derives the TubId of the key inside an X.509 certificate.
    ///
    /// Only the public key matters: dates, names and extensions are ignored.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, TubIdError> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| TubIdError::Certificate(format!("{e:?}")))?;
        Ok(Self::from_spki(parsed.subject_public_key_info().as_ref()))
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

    #[test]
    fn domain_separated() {
        let mut plain = [0u8; 32];
        plain.copy_from_slice(digest::digest(&digest::SHA256, b"k").as_ref());
        assert_ne!(TubId::from_spki(b"k").as_bytes(), &plain);
    }
}
