//! I2P reseed files (`i2pseeds.su3`): a signed header around a zip archive of RouterInfo
//! files, as the reseed servers serve them (format: geti2p.net's "Software Update / su3"
//! specification).
//!
//! [`decode_reseed`] takes the bytes of a file fetched from a server that is treated as
//! hostile: it checks the header, verifies the RSA-4096/SHA-512 signature against a set of
//! [`TrustedSigners`] (the reseed operators' certificates, bundled; callers may add more)
//! and only then reads the zip archive, with hard bounds:
//!
//! | bound | value |
//! |---|---|
//! | whole su3 file | [`MAX_SU3_FILE`] |
//! | zip entries | [`MAX_ENTRIES`] |
//! | one entry, inflated | [`MAX_ENTRY_SIZE`] |
//! | all entries, inflated | [`MAX_TOTAL_INFLATED`] |
//!
//! Every entry is inflated into a buffer of at most its declared size plus one byte, and
//! must inflate to exactly that size with the CRC-32 it declares. The zip reader is this
//! module's own (about 150 lines): reseed archives use only the plain zip subset (stored or
//! deflated entries, no zip64, no encryption), and a reader that handles only that subset,
//! from a byte slice, with every offset checked, is easier to bound and to fuzz than the
//! `zip` crate (which would add about ten crates and read through `Seek`). Inflating is
//! `flate2`'s, already in the graph.
//!
//! The signature is PKCS#1 v1.5 *without* the DigestInfo prefix over the SHA-512 of
//! everything before it (what Java I2P's `RSA_SHA512_4096` su3 signer produces and what
//! i2pd and emissary check), verified with the `rsa` crate; `ring` cannot verify an
//! unprefixed signature. Certificates are parsed with `rustls-webpki`. Certificate validity
//! dates are not checked, as I2P routers do not check them: a reseed signer's key is
//! pinned by its presence in the bundle.
//!
//! Nothing here panics on any input; every failure is a typed [`Su3Error`].

use std::collections::HashMap;
use std::io::Read;

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// The largest su3 file accepted (reseed files are 50–150 KiB).
pub const MAX_SU3_FILE: usize = 4 * 1024 * 1024;
/// The most zip entries read.
pub const MAX_ENTRIES: usize = 1024;
/// The largest RouterInfo entry, inflated (RouterInfos are 1–2 KiB).
pub const MAX_ENTRY_SIZE: u64 = 64 * 1024;
/// The most bytes all entries may inflate to together.
pub const MAX_TOTAL_INFLATED: u64 = 8 * 1024 * 1024;
/// The su3 signature type of RSA-4096 with SHA-512, the one reseed files use.
pub const SIG_RSA_SHA512_4096: u16 = 6;

const MAGIC: &[u8; 6] = b"I2Psu3";
const HEADER_LEN: usize = 40;
const FILE_TYPE_ZIP: u8 = 0;
const CONTENT_TYPE_RESEED: u8 = 3;
const RSA_4096_BYTES: usize = 512;

/// What is wrong with a reseed file or a signer certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Su3Error {
    /// Over [`MAX_SU3_FILE`].
    #[error("su3 file of {0} bytes; at most {MAX_SU3_FILE} are read")]
    TooLarge(usize),
    /// Shorter than its header says.
    #[error("su3 file truncated ({0})")]
    Truncated(&'static str),
    /// Not an su3 file.
    #[error("not an su3 file (bad magic)")]
    BadMagic,
    /// An su3 format version other than 0.
    #[error("su3 format version {0} (only 0 is known)")]
    FormatVersion(u8),
    /// A signature type other than RSA-4096/SHA-512.
    #[error("su3 signature type {0} (reseed files use {SIG_RSA_SHA512_4096}, RSA-4096/SHA-512)")]
    SignatureType(u16),
    /// A signature length that does not fit the signer's key.
    #[error("su3 signature of {0} bytes (RSA-4096 takes {RSA_4096_BYTES})")]
    SignatureLength(usize),
    /// Not zip-packed reseed data.
    #[error("su3 file of file type {file_type} and content type {content_type}, not reseed data (zip, 3)")]
    NotReseedData {
        /// The header's file type (0 is zip).
        file_type: u8,
        /// The header's content type (3 is reseed data).
        content_type: u8,
    },
    /// Bytes after the signature.
    #[error("{0} bytes after the su3 signature")]
    TrailingBytes(usize),
    /// The signer is not among the trusted ones.
    #[error("su3 signer {0:?} is not a trusted reseed signer")]
    UnknownSigner(String),
    /// The signature does not verify with the signer's key.
    #[error("su3 signature does not verify with {0:?}'s key")]
    BadSignature(String),
    /// A signer certificate or key that cannot be used.
    #[error("reseed signer certificate or key: {0}")]
    BadKey(String),
    /// The zip archive inside is malformed or over a bound.
    #[error("malformed reseed archive")]
    Zip(#[from] ZipError),
}

/// What is wrong with the zip archive of a reseed file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZipError {
    /// No end-of-central-directory record.
    #[error("no end of central directory")]
    NoEnd,
    /// A multi-disk or zip64 archive.
    #[error("multi-disk or zip64 archive")]
    Unsupported,
    /// More entries than [`MAX_ENTRIES`].
    #[error("{0} entries; at most {MAX_ENTRIES} are read")]
    TooManyEntries(usize),
    /// A record runs past the archive, or a signature is wrong.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// An encrypted entry.
    #[error("encrypted entry")]
    Encrypted,
    /// A compression method other than stored (0) or deflate (8).
    #[error("compression method {0}")]
    Method(u16),
    /// An entry over [`MAX_ENTRY_SIZE`] inflated.
    #[error("entry of {0} bytes; at most {MAX_ENTRY_SIZE}")]
    EntryTooLarge(u64),
    /// Entries inflating past [`MAX_TOTAL_INFLATED`] together.
    #[error("entries inflate past {MAX_TOTAL_INFLATED} bytes")]
    TotalTooLarge,
    /// An entry that does not inflate to its declared size and CRC-32.
    #[error("entry {0:?} does not inflate to its declared size and CRC-32")]
    Corrupt(String),
}

/// One RouterInfo file from a reseed archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterInfoFile {
    /// Its name in the archive (`routerInfo-<hash>.dat`).
    pub name: String,
    /// Its bytes: not parsed here (emissary parses RouterInfos with its own bounded parser).
    pub bytes: Vec<u8>,
}

/// A verified reseed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReseedFile {
    /// Who signed it (a key of [`TrustedSigners`]).
    pub signer: String,
    /// The version string of its header (a timestamp, by convention).
    pub version: String,
    /// Its RouterInfo files (entries named `routerInfo-*.dat`; other entries are skipped).
    pub router_infos: Vec<RouterInfoFile>,
}

/// The header fields of an su3 file and the slices they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Su3<'a> {
    /// Signature type.
    pub sig_type: u16,
    /// File type (0: zip).
    pub file_type: u8,
    /// Content type (3: reseed data).
    pub content_type: u8,
    /// The version field, NUL padding removed.
    pub version: &'a [u8],
    /// The signer id.
    pub signer: &'a [u8],
    /// The content (a zip archive, for reseed data).
    pub content: &'a [u8],
    /// What the signature covers: everything before it.
    pub signed: &'a [u8],
    /// The signature.
    pub signature: &'a [u8],
}

/// Splits an su3 file into its parts, checking only lengths, magic and format version.
pub fn parse_su3(bytes: &[u8]) -> Result<Su3<'_>, Su3Error> {
    if bytes.len() > MAX_SU3_FILE {
        return Err(Su3Error::TooLarge(bytes.len()));
    }
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or(Su3Error::Truncated("header"))?;
    if &header[0..6] != MAGIC {
        return Err(Su3Error::BadMagic);
    }
    if header[7] != 0 {
        return Err(Su3Error::FormatVersion(header[7]));
    }
    let be16 = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let sig_type = be16(8);
    let sig_len = usize::from(be16(10));
    let version_len = usize::from(header[13]);
    let signer_len = usize::from(header[15]);
    let mut content_len = [0u8; 8];
    content_len.copy_from_slice(&header[16..24]);
    // Over the file bound means over the file: a truncated file, whatever the u64 says.
    let content_len = usize::try_from(u64::from_be_bytes(content_len))
        .ok()
        .filter(|&n| n <= MAX_SU3_FILE)
        .ok_or(Su3Error::Truncated("content"))?;
    let mut at = HEADER_LEN;
    let mut take = |n: usize, what: &'static str| {
        let end = at.checked_add(n).ok_or(Su3Error::Truncated(what))?;
        let part = bytes.get(at..end).ok_or(Su3Error::Truncated(what))?;
        at = end;
        Ok::<_, Su3Error>(part)
    };
    let version = take(version_len, "version")?;
    let signer = take(signer_len, "signer id")?;
    let content = take(content_len, "content")?;
    let signed_len = HEADER_LEN + version_len + signer_len + content_len;
    let signature = take(sig_len, "signature")?;
    if at != bytes.len() {
        return Err(Su3Error::TrailingBytes(bytes.len() - at));
    }
    let version_end = version
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(version.len());
    Ok(Su3 {
        sig_type,
        file_type: header[25],
        content_type: header[27],
        version: &version[..version_end],
        signer,
        content,
        signed: &bytes[..signed_len],
        signature,
    })
}

/// The reseed signers whose files are accepted: signer id (`name@mail.i2p`) to RSA key.
#[derive(Clone, Default)]
pub struct TrustedSigners {
    keys: HashMap<String, RsaPublicKey>,
}

impl std::fmt::Debug for TrustedSigners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.signers().collect();
        ids.sort_unstable();
        f.debug_tuple("TrustedSigners").field(&ids).finish()
    }
}

macro_rules! bundled {
    ($id:literal, $file:literal) => {
        (
            $id,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/data/i2p-reseed-certificates/",
                $file
            )),
        )
    };
}

/// The reseed signer certificates bundled in this crate (`data/i2p-reseed-certificates/`,
/// from Debian's i2pd 2.45.1 package; see the README there): signer id and PEM.
pub const BUNDLED_SIGNERS: &[(&str, &[u8])] = &[
    bundled!("acetone@mail.i2p", "acetone_at_mail.i2p.crt"),
    bundled!("creativecowpat@mail.i2p", "creativecowpat_at_mail.i2p.crt"),
    bundled!("echelon3@mail.i2p", "echelon3_at_mail.i2p.crt"),
    bundled!("hankhill19580@gmail.com", "hankhill19580_at_gmail.com.crt"),
    bundled!("hiduser0@mail.i2p", "hiduser0_at_mail.i2p.crt"),
    bundled!("hottuna@mail.i2p", "hottuna_at_mail.i2p.crt"),
    bundled!("i2p-reseed@mk16.de", "i2p-reseed_at_mk16.de.crt"),
    bundled!("igor@novg.net", "igor_at_novg.net.crt"),
    bundled!("lazygravy@mail.i2p", "lazygravy_at_mail.i2p.crt"),
    bundled!("orignal@mail.i2p", "orignal_at_mail.i2p.crt"),
    bundled!("r4sas-reseed@mail.i2p", "r4sas-reseed_at_mail.i2p.crt"),
    bundled!("rambler@mail.i2p", "rambler_at_mail.i2p.crt"),
    bundled!("reseed@diva.exchange", "reseed_at_diva.exchange.crt"),
];

impl TrustedSigners {
    /// No signer at all (tests add their own).
    pub fn none() -> Self {
        TrustedSigners::default()
    }

    /// The public network's reseed signers ([`BUNDLED_SIGNERS`]).
    pub fn bundled() -> Self {
        let mut signers = TrustedSigners::none();
        for (id, pem) in BUNDLED_SIGNERS {
            // Checked by this module's tests: every bundled certificate loads.
            if let Err(e) = signers.add_pem(id, pem) {
                tracing::warn!(signer = id, "bundled reseed certificate skipped: {e}");
            }
        }
        signers
    }

    /// Trusts `signer_id` with the RSA-4096 key of a PEM certificate (`.crt`).
    pub fn add_pem(&mut self, signer_id: &str, pem: &[u8]) -> Result<(), Su3Error> {
        let der = CertificateDer::from_pem_slice(pem)
            .map_err(|e| Su3Error::BadKey(format!("{signer_id}: not a PEM certificate ({e})")))?;
        self.add_der(signer_id, &der)
    }

    /// Trusts `signer_id` with the RSA-4096 key of a DER certificate.
    pub fn add_der(&mut self, signer_id: &str, der: &[u8]) -> Result<(), Su3Error> {
        let bad = |why: String| Su3Error::BadKey(format!("{signer_id}: {why}"));
        let der = CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| bad(format!("not an X.509 certificate ({e:?})")))?;
        let spki = cert.subject_public_key_info();
        let key = RsaPublicKey::from_public_key_der(spki.as_ref())
            .map_err(|e| bad(format!("not an RSA key ({e})")))?;
        if key.size() != RSA_4096_BYTES {
            return Err(bad(format!(
                "an RSA key of {} bits, not 4096",
                key.size() * 8
            )));
        }
        self.keys.insert(signer_id.to_string(), key);
        Ok(())
    }

    /// The trusted signer ids.
    pub fn signers(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    fn verify(&self, su3: &Su3<'_>) -> Result<String, Su3Error> {
        let signer = String::from_utf8_lossy(su3.signer).into_owned();
        if su3.sig_type != SIG_RSA_SHA512_4096 {
            return Err(Su3Error::SignatureType(su3.sig_type));
        }
        let key = self
            .keys
            .get(&signer)
            .ok_or_else(|| Su3Error::UnknownSigner(signer.clone()))?;
        if su3.signature.len() != key.size() {
            return Err(Su3Error::SignatureLength(su3.signature.len()));
        }
        let hash = ring::digest::digest(&ring::digest::SHA512, su3.signed);
        key.verify(Pkcs1v15Sign::new_unprefixed(), hash.as_ref(), su3.signature)
            .map_err(|_| Su3Error::BadSignature(signer.clone()))?;
        Ok(signer)
    }
}

/// Verifies a reseed file and extracts its RouterInfo files, within this module's bounds.
pub fn decode_reseed(bytes: &[u8], trusted: &TrustedSigners) -> Result<ReseedFile, Su3Error> {
    let su3 = parse_su3(bytes)?;
    if (su3.file_type, su3.content_type) != (FILE_TYPE_ZIP, CONTENT_TYPE_RESEED) {
        return Err(Su3Error::NotReseedData {
            file_type: su3.file_type,
            content_type: su3.content_type,
        });
    }
    let signer = trusted.verify(&su3)?;
    let router_infos = read_zip(su3.content)?;
    Ok(ReseedFile {
        signer,
        version: String::from_utf8_lossy(su3.version).into_owned(),
        router_infos,
    })
}

/// Whether a zip entry name is a RouterInfo file's: `routerInfo-<I2P base64>.dat`, no path.
fn router_info_name(name: &str) -> bool {
    name.strip_prefix("routerInfo-")
        .and_then(|n| n.strip_suffix(".dat"))
        .is_some_and(|hash| {
            !hash.is_empty()
                && hash.len() <= 64
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'~' | b'='))
        })
}

fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `zip[at..at + len]`, or [`ZipError::Malformed`] naming `what`.
fn slice<'a>(
    zip: &'a [u8],
    at: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], ZipError> {
    at.checked_add(len)
        .and_then(|end| zip.get(at..end))
        .ok_or(ZipError::Malformed(what))
}

/// Reads the RouterInfo entries of a zip archive (the content of a reseed file), within
/// [`MAX_ENTRIES`], [`MAX_ENTRY_SIZE`] and [`MAX_TOTAL_INFLATED`]. Entries not named
/// `routerInfo-*.dat` (directories, anything else) are skipped; a malformed one fails the
/// whole archive. Public for the fuzz target: [`decode_reseed`] calls it only on signed
/// content.
pub fn read_zip(zip: &[u8]) -> Result<Vec<RouterInfoFile>, ZipError> {
    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;
    // The end-of-central-directory record: 22 bytes and a comment of up to 64 KiB.
    if zip.len() < 22 {
        return Err(ZipError::NoEnd);
    }
    let lowest = zip.len().saturating_sub(22 + 0xffff);
    let eocd = (lowest..=zip.len() - 22)
        .rev()
        .find(|&i| le32(zip, i) == EOCD)
        .ok_or(ZipError::NoEnd)?;
    let end = &zip[eocd..eocd + 22];
    let (disk, cd_disk) = (le16(end, 4), le16(end, 6));
    let (here, entries) = (le16(end, 8), le16(end, 10));
    let (cd_size, cd_offset) = (le32(end, 12), le32(end, 16));
    if disk != 0 || cd_disk != 0 || here != entries || entries == 0xffff || cd_offset == u32::MAX {
        return Err(ZipError::Unsupported);
    }
    let entries = usize::from(entries);
    if entries > MAX_ENTRIES {
        return Err(ZipError::TooManyEntries(entries));
    }
    let (cd_offset, cd_size) = (cd_offset as usize, cd_size as usize);
    if cd_offset.checked_add(cd_size).is_none_or(|e| e > eocd) {
        return Err(ZipError::Malformed("central directory"));
    }
    let mut out = Vec::with_capacity(entries.min(256));
    let mut total: u64 = 0;
    let mut at = cd_offset;
    for _ in 0..entries {
        let c = slice(zip, at, 46, "central directory entry")?;
        if le32(c, 0) != CENTRAL {
            return Err(ZipError::Malformed("central directory entry"));
        }
        let (flags, method) = (le16(c, 8), le16(c, 10));
        let crc = le32(c, 16);
        let (csize, usize_) = (le32(c, 20), le32(c, 24));
        let (name_len, extra_len, comment_len) = (
            usize::from(le16(c, 28)),
            usize::from(le16(c, 30)),
            usize::from(le16(c, 32)),
        );
        let local_at = le32(c, 42) as usize;
        let name = slice(zip, at + 46, name_len, "entry name")?;
        at = at + 46 + name_len + extra_len + comment_len;
        if at > cd_offset + cd_size {
            return Err(ZipError::Malformed("central directory entry"));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if !router_info_name(&name) {
            tracing::debug!(name, "reseed archive entry skipped: not a RouterInfo file");
            continue;
        }
        if flags & 1 != 0 {
            return Err(ZipError::Encrypted);
        }
        if csize == u32::MAX || usize_ == u32::MAX {
            return Err(ZipError::Unsupported);
        }
        let size = u64::from(usize_);
        if size > MAX_ENTRY_SIZE {
            return Err(ZipError::EntryTooLarge(size));
        }
        total += size;
        if total > MAX_TOTAL_INFLATED {
            return Err(ZipError::TotalTooLarge);
        }
        let local = slice(zip, local_at, 30, "local header")?;
        if le32(local, 0) != LOCAL {
            return Err(ZipError::Malformed("local header"));
        }
        let data_at = local_at + 30 + usize::from(le16(local, 26)) + usize::from(le16(local, 28));
        let data = slice(zip, data_at, csize as usize, "entry data")?;
        if data_at + data.len() > cd_offset {
            return Err(ZipError::Malformed("entry data"));
        }
        // At most the declared size plus one byte is inflated: one more shows a lie.
        let mut bytes = Vec::with_capacity(size as usize);
        let read = match method {
            0 => std::io::Read::take(data, size + 1).read_to_end(&mut bytes),
            8 => flate2::read::DeflateDecoder::new(data)
                .take(size + 1)
                .read_to_end(&mut bytes),
            m => return Err(ZipError::Method(m)),
        };
        let mut check = flate2::Crc::new();
        check.update(&bytes);
        if read.is_err() || bytes.len() as u64 != size || check.sum() != crc {
            return Err(ZipError::Corrupt(name));
        }
        out.push(RouterInfoFile { name, bytes });
    }
    Ok(out)
}

/// Packs RouterInfo files (`(name, bytes)`, names `routerInfo-*.dat`) into a reseed file
/// signed with an RSA-4096 key (PKCS#8 PEM) as `signer_id`, the way a reseed server does:
/// for tests and private networks. The entries are deflated.
pub fn write_reseed(
    router_infos: &[(String, Vec<u8>)],
    signer_id: &str,
    key_pem: &[u8],
    version: &str,
) -> Result<Vec<u8>, Su3Error> {
    let key_der = PrivatePkcs8KeyDer::from_pem_slice(key_pem)
        .map_err(|e| Su3Error::BadKey(format!("not a PKCS#8 PEM key ({e})")))?;
    let key = RsaPrivateKey::from_pkcs8_der(key_der.secret_pkcs8_der())
        .map_err(|e| Su3Error::BadKey(format!("not an RSA key ({e})")))?;
    if key.size() != RSA_4096_BYTES {
        return Err(Su3Error::BadKey("not an RSA-4096 key".into()));
    }
    let zip = write_zip(router_infos, true);
    let (version, signer) = (version.as_bytes(), signer_id.as_bytes());
    if version.len() > 255 || signer.len() > 255 {
        return Err(Su3Error::BadKey(
            "version or signer id over 255 bytes".into(),
        ));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 16 + signer.len() + zip.len() + 512);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&SIG_RSA_SHA512_4096.to_be_bytes());
    out.extend_from_slice(&(RSA_4096_BYTES as u16).to_be_bytes());
    let version_len = version.len().max(16);
    out.extend_from_slice(&[0, version_len as u8, 0, signer.len() as u8]);
    out.extend_from_slice(&(zip.len() as u64).to_be_bytes());
    out.extend_from_slice(&[0, FILE_TYPE_ZIP, 0, CONTENT_TYPE_RESEED]);
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(version);
    out.resize(out.len() + version_len - version.len(), 0);
    out.extend_from_slice(signer);
    out.extend_from_slice(&zip);
    let hash = ring::digest::digest(&ring::digest::SHA512, &out);
    let signature = key
        .sign(Pkcs1v15Sign::new_unprefixed(), hash.as_ref())
        .map_err(|e| Su3Error::BadKey(format!("signing failed ({e})")))?;
    out.extend_from_slice(&signature);
    Ok(out)
}

/// A zip archive of `files`, deflated or stored (for [`write_reseed`] and tests).
pub fn write_zip(files: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, bytes) in files {
        let data = if deflate {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = e.write_all(bytes);
            e.finish().unwrap_or_default()
        } else {
            bytes.clone()
        };
        let mut crc = flate2::Crc::new();
        crc.update(bytes);
        let method: u16 = if deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&method.to_le_bytes());
            v.extend_from_slice(&[0; 4]); // time, date
            v.extend_from_slice(&crc.sum().to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0; 8]); // comment len, disk, internal, external attrs
        central.extend_from_slice(&[0; 2]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let n = files.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = include_bytes!("../../testdata/reseed-test-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("../../testdata/other-test-key.pem");
    const CERT: &[u8] = include_bytes!("../../testdata/test-reseed_at_folio.invalid.crt");
    const SIGNER: &str = "test-reseed@folio.invalid";

    fn trusted() -> TrustedSigners {
        let mut t = TrustedSigners::none();
        t.add_pem(SIGNER, CERT).unwrap();
        t
    }

    fn routers(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("routerInfo-r{i}AAA~=.dat"), vec![i as u8; 1000 + i]))
            .collect()
    }

    #[test]
    fn every_bundled_certificate_loads() {
        let t = TrustedSigners::bundled();
        assert_eq!(t.signers().count(), BUNDLED_SIGNERS.len());
        assert!(t.signers().any(|s| s == "orignal@mail.i2p"));
    }

    /// Each bundled signer id is its certificate file's name (`id` with `@` as `_at_`, then
    /// `.crt`, as I2P routers name them), and every certificate file there is bundled.
    #[test]
    fn bundled_signers_match_their_files() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/i2p-reseed-certificates");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".crt"))
            .collect();
        files.sort();
        let mut named: Vec<String> = BUNDLED_SIGNERS
            .iter()
            .map(|(id, pem)| {
                let file = format!("{}.crt", id.replace('@', "_at_"));
                assert_eq!(
                    std::fs::read(dir.join(&file)).unwrap(),
                    *pem,
                    "{id}: {file}"
                );
                file
            })
            .collect();
        named.sort();
        assert_eq!(named, files);
    }

    #[test]
    fn a_good_file_decodes() {
        let files = routers(5);
        let su3 = write_reseed(&files, SIGNER, KEY, "1765000000").unwrap();
        let got = decode_reseed(&su3, &trusted()).unwrap();
        assert_eq!(got.signer, SIGNER);
        assert_eq!(got.version, "1765000000");
        let want: Vec<_> = files
            .into_iter()
            .map(|(name, bytes)| RouterInfoFile { name, bytes })
            .collect();
        assert_eq!(got.router_infos, want);
        // Stored (not deflated) entries read as well; other names are skipped.
        let mut files = routers(2);
        files.push(("README.txt".into(), b"hi".to_vec()));
        files.push(("sub/routerInfo-x.dat".into(), b"hi".to_vec()));
        let got = read_zip(&write_zip(&files, false)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].bytes, files[1].1);
    }

    #[test]
    fn zero_entries_is_an_empty_file() {
        let su3 = write_reseed(&[], SIGNER, KEY, "1").unwrap();
        let got = decode_reseed(&su3, &trusted()).unwrap();
        assert!(got.router_infos.is_empty());
    }

    #[test]
    fn signatures_are_checked() {
        let su3 = write_reseed(&routers(3), SIGNER, KEY, "1").unwrap();
        // Any changed byte of the signed part, or of the signature, fails.
        for i in [
            0x30,
            HEADER_LEN + 16 + SIGNER.len() + 30,
            su3.len() - 600,
            su3.len() - 1,
        ] {
            let mut bad = su3.clone();
            bad[i] ^= 0x40;
            let e = decode_reseed(&bad, &trusted()).unwrap_err();
            assert_eq!(e, Su3Error::BadSignature(SIGNER.into()), "byte {i}");
        }
        let mut bad = su3.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(
            decode_reseed(&bad, &trusted()).unwrap_err(),
            Su3Error::BadSignature(SIGNER.into())
        );
        // Signed by another key under the same name.
        let forged = write_reseed(&routers(3), SIGNER, OTHER_KEY, "1").unwrap();
        assert_eq!(
            decode_reseed(&forged, &trusted()).unwrap_err(),
            Su3Error::BadSignature(SIGNER.into())
        );
        // A signer nobody trusts, and the bundled set does not trust the test signer.
        let stranger = write_reseed(&routers(3), "mallory@mail.i2p", KEY, "1").unwrap();
        assert_eq!(
            decode_reseed(&stranger, &trusted()).unwrap_err(),
            Su3Error::UnknownSigner("mallory@mail.i2p".into())
        );
        assert_eq!(
            decode_reseed(&su3, &TrustedSigners::bundled()).unwrap_err(),
            Su3Error::UnknownSigner(SIGNER.into())
        );
        // Another signature type.
        let mut other = su3.clone();
        other[9] = 4;
        assert_eq!(
            decode_reseed(&other, &trusted()).unwrap_err(),
            Su3Error::SignatureType(4)
        );
        // Not reseed data (content type 1: a router update).
        let mut update = su3;
        update[27] = 1;
        assert!(matches!(
            decode_reseed(&update, &trusted()).unwrap_err(),
            Su3Error::NotReseedData {
                content_type: 1,
                ..
            }
        ));
    }

    #[test]
    fn truncated_and_oversized_files_are_refused() {
        let su3 = write_reseed(&routers(3), SIGNER, KEY, "1").unwrap();
        for n in [0, 5, 39, 40, 60, su3.len() / 2, su3.len() - 1] {
            let e = decode_reseed(&su3[..n], &trusted()).unwrap_err();
            assert!(
                matches!(e, Su3Error::Truncated(_) | Su3Error::BadMagic),
                "{n}: {e}"
            );
        }
        let mut long = su3.clone();
        long.push(0);
        assert_eq!(
            decode_reseed(&long, &trusted()).unwrap_err(),
            Su3Error::TrailingBytes(1)
        );
        let mut huge_content = su3.clone();
        huge_content[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            parse_su3(&huge_content).unwrap_err(),
            Su3Error::Truncated("content")
        );
        let big = vec![0u8; MAX_SU3_FILE + 1];
        assert_eq!(
            decode_reseed(&big, &trusted()).unwrap_err(),
            Su3Error::TooLarge(MAX_SU3_FILE + 1)
        );
        let mut magic = su3;
        magic[0] = b'X';
        assert_eq!(parse_su3(&magic).unwrap_err(), Su3Error::BadMagic);
    }

    #[test]
    fn zip_bounds_hold() {
        // An entry that inflates past its declared size (a zip bomb's trick): corrupt, and
        // only declared + 1 bytes were inflated.
        let bomb = write_zip(&[("routerInfo-a.dat".into(), vec![0u8; 60_000])], true);
        let mut lying = bomb.clone();
        let cd = le32(&lying, lying.len() - 6) as usize;
        lying[cd + 24..cd + 28].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            read_zip(&lying).unwrap_err(),
            ZipError::Corrupt("routerInfo-a.dat".into())
        );
        // An entry declared over 64 KiB.
        let big = write_zip(&[("routerInfo-a.dat".into(), vec![0u8; 70_000])], true);
        assert_eq!(read_zip(&big).unwrap_err(), ZipError::EntryTooLarge(70_000));
        // Many entries, each allowed, together over the total bound.
        let many: Vec<_> = (0..(MAX_TOTAL_INFLATED / MAX_ENTRY_SIZE + 1))
            .map(|i| {
                (
                    format!("routerInfo-{i}.dat"),
                    vec![0u8; MAX_ENTRY_SIZE as usize],
                )
            })
            .collect();
        assert_eq!(
            read_zip(&write_zip(&many, true)).unwrap_err(),
            ZipError::TotalTooLarge
        );
        // Too many entries.
        let lots: Vec<_> = (0..MAX_ENTRIES + 1)
            .map(|i| (format!("routerInfo-{i}.dat"), vec![]))
            .collect();
        assert_eq!(
            read_zip(&write_zip(&lots, false)).unwrap_err(),
            ZipError::TooManyEntries(MAX_ENTRIES + 1)
        );
        // A wrong CRC, an unknown method, encryption, and no end record.
        let good = write_zip(&[("routerInfo-a.dat".into(), b"abc".to_vec())], false);
        let cd = le32(&good, good.len() - 6) as usize;
        let mut crc = good.clone();
        crc[cd + 16] ^= 1;
        assert!(matches!(read_zip(&crc), Err(ZipError::Corrupt(_))));
        let mut method = good.clone();
        method[cd + 10] = 12;
        assert_eq!(read_zip(&method).unwrap_err(), ZipError::Method(12));
        let mut enc = good.clone();
        enc[cd + 8] = 1;
        assert_eq!(read_zip(&enc).unwrap_err(), ZipError::Encrypted);
        assert_eq!(
            read_zip(&good[..good.len() - 1]).unwrap_err(),
            ZipError::NoEnd
        );
        // Offsets pointing outside the archive.
        let mut off = good;
        off[cd + 42..cd + 46].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_zip(&off), Err(ZipError::Malformed(_))));
    }

    #[test]
    fn keys_other_than_rsa_4096_are_refused() {
        let mut t = TrustedSigners::none();
        assert!(matches!(
            t.add_pem("x", b"not pem"),
            Err(Su3Error::BadKey(_))
        ));
        // An ECDSA P-256 certificate (the test reseed server's CA).
        let ec = include_bytes!("../../testdata/reseed-test-ca.crt");
        assert!(matches!(t.add_pem("x", ec), Err(Su3Error::BadKey(_))));
        assert_eq!(t.signers().count(), 0);
    }
}
