//! A Tub's identity: an Ed25519 key pair and a self-signed certificate over it.
//!
//! The certificate exists because TLS needs one; Folio trusts it only for the key inside.
//! Peers are authenticated by comparing the hash of that key with the expected [`TubId`]
//! (see `docs/handshake.md`), never by names, dates or issuers. The identity is stored as
//! one PEM file holding the private key (`PRIVATE KEY`, PKCS#8) followed by the certificate,
//! written with mode `0600`.

use std::fmt;
use std::io::Write;
use std::path::Path;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tubid::TubId;

/// The longest identity file [`Identity::load`] will read.
pub const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Why an identity could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key generation or certificate signing failed.
    #[error("could not generate the Tub key or certificate: {0}")]
    Generate(String),
    /// The PEM text is missing a block or holds a malformed one.
    #[error("malformed identity PEM: {0}")]
    Pem(String),
    /// The certificate carries a different key from the private key beside it.
    #[error("the certificate's key (Tub {cert}) does not match the private key (Tub {key})")]
    KeyMismatch {
        /// The TubId of the key in the certificate.
        cert: TubId,
        /// The TubId of the private key.
        key: TubId,
    },
    /// The file can be read by users other than its owner.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than any identity file.
    #[error("{path} is larger than an identity file can be (over {MAX_IDENTITY_FILE} bytes)")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// Reading or writing the file failed.
    #[error("cannot read or write the identity file {path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A Tub's key pair and certificate.
pub struct Identity {
    key: KeyPair,
    cert: CertificateDer<'static>,
    tubid: TubId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("tubid", &self.tubid)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a fresh Ed25519 key and a self-signed certificate for it.
    pub fn generate() -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::certify(key)
    }

    /// Issues a new certificate over this identity's key. The TubId does not change.
    pub fn renew_certificate(&self) -> Result<Self, IdentityError> {
        let key = KeyPair::try_from(&self.private_key_der())
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::certify(key)
    }

    fn certify(key: KeyPair) -> Result<Self, IdentityError> {
        let tubid = TubId::from_spki(&key.subject_public_key_info());
        // The names are informative only: verification looks at the key alone.
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("folio tub {tubid}"));
        params.distinguished_name = dn;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::from_parts(key, cert.der().clone())
    }

    fn from_parts(key: KeyPair, cert: CertificateDer<'static>) -> Result<Self, IdentityError> {
        let key_id = TubId::from_spki(&key.subject_public_key_info());
        let cert_id =
            TubId::from_certificate(&cert).map_err(|e| IdentityError::Pem(e.to_string()))?;
        if key_id != cert_id {
            return Err(IdentityError::KeyMismatch {
                cert: cert_id,
                key: key_id,
            });
        }
        Ok(Identity {
            key,
            cert,
            tubid: key_id,
        })
    }

    /// This Tub's identity.
    pub fn tubid(&self) -> TubId {
        self.tubid
    }

    /// The DER certificate presented in TLS.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, PKCS#8 DER, for building TLS configurations.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.serialize_der().into())
    }

    /// The identity as PEM: the private key, then the certificate.
    pub fn to_pem(&self) -> String {
        let mut out = self.key.serialize_pem();
        out.push_str(&pem_encode("CERTIFICATE", self.cert.as_ref()));
        out
    }

    /// Parses an identity written by [`Identity::to_pem`].
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let key_der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::Pem(format!("private key: {e}")))?;
        let key = KeyPair::try_from(&key_der)
            .map_err(|e| IdentityError::Pem(format!("private key: {e}")))?;
        let cert = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::Pem(format!("certificate: {e}")))?;
        Self::from_parts(key, cert)
    }

    /// Writes the identity to `path` with mode `0600`, replacing the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        write_private(path, self.to_pem().as_bytes()).map_err(|source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads an identity file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let name = path.display().to_string();
        let io = |source| IdentityError::Io {
            path: name.clone(),
            source,
        };
        // One open, and everything below is about that file: its mode from `fstat`, its
        // bytes read with the bound (a file that grows after a `metadata` call cannot get
        // past a bound checked there).
        let (bytes, meta) = read_bounded(path, MAX_IDENTITY_FILE).map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                IdentityError::TooLarge { path: name.clone() }
            } else {
                io(e)
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::InsecurePermissions { path: name, mode });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = String::from_utf8(bytes).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        })?;
        Self::from_pem(&text)
    }

    /// Loads the identity at `path`, or generates and saves one if there is no file.
    pub fn load_or_generate(path: &Path) -> Result<Self, IdentityError> {
        if path.exists() {
            Self::load(path)
        } else {
            let id = Self::generate()?;
            id.save(path)?;
            Ok(id)
        }
    }
}

/// Reads the whole file at `path`, refusing one of more than `max` bytes, and gives its
/// metadata too (from the open file, so it describes the bytes read).
///
/// The file is opened once and read through `take(max + 1)`: the bound holds however the
/// file changes between a `metadata` call and the read, and whatever it is (a FIFO or a
/// device yields at most `max + 1` bytes before it is refused). Over the bound, the error's
/// kind is [`std::io::ErrorKind::FileTooLarge`] and its text names the path and the bound.
/// Every small local file Folio reads (identities, FURL files, keys, secrets, caches) goes
/// through here.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    // The metadata's length is only a hint for the buffer (capped by the bound).
    let hint = meta.len().min(max.saturating_add(1)).min(1 << 20) as usize;
    let mut bytes = Vec::with_capacity(hint);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is over {max} bytes", path.display()),
        ));
    }
    Ok((bytes, meta))
}

/// [`read_bounded`] for a text file: its bytes as UTF-8 (else `InvalidData`).
pub fn read_text_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    let (bytes, _) = read_bounded(path, max)?;
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

/// Writes a secret (a key, a FURL) to `path`, readable by its owner only (mode `0600`),
/// replacing any previous file atomically (write to a temporary file, sync, rename).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn random_serial() -> [u8; 16] {
    let mut serial = crate::random_bytes::<16>();
    serial[0] &= 0x7f; // a positive INTEGER
    serial[0] |= 0x01; // and not a shorter one
    serial
}

/// `der` as a PEM block with `\n` line ends (as rcgen writes the key), by the `pem` crate
/// that rcgen already uses.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_tubid() {
        let id = Identity::generate().unwrap();
        let back = Identity::from_pem(&id.to_pem()).unwrap();
        assert_eq!(back.tubid(), id.tubid());
        assert_eq!(back.certificate(), id.certificate());
    }

    #[test]
    fn renewed_certificate_keeps_tubid() {
        let id = Identity::generate().unwrap();
        let renewed = id.renew_certificate().unwrap();
        assert_ne!(renewed.certificate(), id.certificate());
        assert_eq!(renewed.tubid(), id.tubid());
        assert_eq!(
            TubId::from_certificate(renewed.certificate()).unwrap(),
            id.tubid()
        );
    }

    #[test]
    fn distinct_identities() {
        assert_ne!(
            Identity::generate().unwrap().tubid(),
            Identity::generate().unwrap().tubid()
        );
    }

    #[test]
    fn refuses_mismatched_key_and_certificate() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let mixed = format!(
            "{}{}",
            a.key.serialize_pem(),
            pem_encode("CERTIFICATE", b.certificate())
        );
        assert!(matches!(
            Identity::from_pem(&mixed),
            Err(IdentityError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn refuses_garbage_pem() {
        assert!(matches!(
            Identity::from_pem("hello"),
            Err(IdentityError::Pem(_))
        ));
        let id = Identity::generate().unwrap();
        let key_only = id.key.serialize_pem();
        let err = Identity::from_pem(&key_only).unwrap_err().to_string();
        assert!(err.contains("certificate"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn save_is_0600_and_load_refuses_open_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("folio-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tub.pem");
        let id = Identity::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            Identity::load_or_generate(&path).unwrap().tubid(),
            id.tubid()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file whose size `metadata` reports as 0 but which yields more (a FIFO here; a file
    /// that grows between the check and the read is the same race): the old
    /// metadata-then-read check let it through, and the whole stream was read.
    #[cfg(unix)]
    #[test]
    fn load_reads_through_the_bound_whatever_metadata_said() {
        let dir = std::env::temp_dir().join(format!("folio-id-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tub.pem");
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let chunk = vec![b'A'; 64 * 1024];
                let mut sent = 0u64;
                // Stops when the reader has had enough and closes its end (EPIPE).
                while sent < 16 * MAX_IDENTITY_FILE && f.write_all(&chunk).is_ok() {
                    sent += chunk.len() as u64;
                }
                sent
            })
        };
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::TooLarge { .. }), "{err}");
        let sent = writer.join().unwrap();
        assert!(sent < 16 * MAX_IDENTITY_FILE, "the reader stopped early");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_bounded_takes_up_to_the_bound_and_refuses_more() {
        let dir = std::env::temp_dir().join(format!("folio-id-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, vec![1u8; 100]).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap().0.len(), 100);
        let err = read_bounded(&path, 99).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("over 99 bytes"), "{err}");
        std::fs::write(&path, vec![b'x'; MAX_IDENTITY_FILE as usize + 1]).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
