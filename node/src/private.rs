//! The node's `private/` directory: everything that must not leave the machine.
//!
//! | file | what |
//! |---|---|
//! | `node.pem` | the Tub identity (key and self-signed certificate); the TubId is derived from it |
//! | `node.privkey` | the Ed25519 seed that signs this node's announcements (`v0-` + base32) |
//! | `secret` | the lease secret, from which per-file renew and cancel secrets derive |
//! | `convergence` | the convergence secret mixed into every content key |
//! | `announcement-seqnum` | the last sequence number this node announced with |
//! | `storage.furl`, `introducer.furl`, `control.furl` | the node's own FURLs |
//! | `introducer_cache.json` | the last announcements heard, used while introducers are down |
//! | `tor_onion.privkey`, `i2p_dest.privkey` | onion service and I2P destination keys |
//! | `tor_control_password` | a running tor's control-port password (`HashedControlPassword`), when it has one |
//!
//! The directory is created `0700` and every file in it `0600`; a directory or file that
//! others can read is refused rather than used.

use std::path::{Path, PathBuf};

use folio_rpc::identity::write_private;
use folio_rpc::{Furl, Identity, IdentityError, Swissnum};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Why a file in `private/` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// Reading or writing failed.
    #[error("cannot read or write {path}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file exists but does not hold what it should.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Other users can read the directory or a file in it.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod go-rwx {path}`")]
    TooOpen {
        /// The file or directory.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The Tub identity could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The Ed25519 key that signs this node's announcements.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(v0-{})", base32(&self.public()))
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> SigningKey {
        Self::from_seed(random_bytes())
    }

    /// The key for a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32-byte seed is an Ed25519 key");
        SigningKey { pair, seed }
    }

    /// The public half: what announcements are attributed to.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    fn to_text(&self) -> String {
        format!("v0-{}\n", base32(&self.seed))
    }

    fn from_text(text: &str) -> Option<SigningKey> {
        let b = unbase32(text.trim().strip_prefix("v0-")?)?;
        Some(Self::from_seed(b.try_into().ok()?))
    }
}

/// Lowercase unpadded base32, as TubIds are written (`folio_rpc::base32`).
pub fn base32(bytes: &[u8]) -> String {
    folio_rpc::base32::encode(bytes)
}

/// The inverse of [`base32`]; `None` unless the text is its one canonical spelling
/// (lowercase, no padding, zero trailing bits).
pub fn unbase32(text: &str) -> Option<Vec<u8>> {
    folio_rpc::base32::decode(text)
}

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random source failed");
    out
}

/// The largest file [`PrivateDir::read`] takes: keys, secrets, sequence numbers, FURLs and
/// the tor control password are all far smaller.
pub const MAX_PRIVATE_FILE: u64 = 64 * 1024;

/// The file in `private/` holding a running tor's control-port password.
pub const TOR_CONTROL_PASSWORD: &str = "tor_control_password";

/// The longest control-port password accepted, in bytes.
pub const MAX_PASSWORD: usize = 1024;

/// A password that `Debug` never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Takes the first line of `text` (without its line ending) as a password; an empty one,
    /// or one over [`MAX_PASSWORD`] bytes, is refused.
    pub fn parse(text: &str) -> Result<Password, String> {
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err("the password is empty".into());
        }
        if line.len() > MAX_PASSWORD {
            return Err(format!("the password is over {MAX_PASSWORD} bytes"));
        }
        Ok(Password(line.to_string()))
    }

    /// Reads a password file: its first line, read with a bound.
    pub fn read_file(path: &Path) -> Result<Password, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut text = String::new();
        file.take(MAX_PASSWORD as u64 + 2)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Password::parse(&text)
    }

    /// The password.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(hidden)")
    }
}

/// A node's `private/` directory.
#[derive(Debug, Clone)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Makes `BASEDIR/private` (mode `0700`) and fills it with fresh keys and secrets.
    pub fn create(basedir: &Path) -> Result<PrivateDir, PrivateError> {
        let path = basedir.join("private");
        let io = |source| PrivateError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&path).map_err(io)?;
        let dir = PrivateDir { path };
        Identity::generate()?.save(&dir.file("node.pem"))?;
        dir.write("node.privkey", SigningKey::generate().to_text().as_bytes())?;
        dir.write(
            "secret",
            format!("{}\n", base32(&random_bytes::<32>())).as_bytes(),
        )?;
        dir.write(
            "convergence",
            format!("{}\n", base32(&random_bytes::<32>())).as_bytes(),
        )?;
        Ok(dir)
    }

    /// Opens an existing `BASEDIR/private`, refusing one that others can read.
    pub fn open(basedir: &Path) -> Result<PrivateDir, PrivateError> {
        let path = basedir.join("private");
        let meta = std::fs::metadata(&path).map_err(|source| PrivateError::Io {
            path: path.display().to_string(),
            source,
        })?;
        check_mode(&path, &meta)?;
        Ok(PrivateDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file (`0600`, atomically).
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<(), PrivateError> {
        let path = self.file(name);
        write_private(&path, contents).map_err(|source| PrivateError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a file, or `None` when it does not exist. Refuses files others can read, and
    /// files of more than [`MAX_PRIVATE_FILE`] bytes (read through that bound, so a file
    /// that grows while it is read cannot get past it).
    pub fn read(&self, name: &str) -> Result<Option<String>, PrivateError> {
        let max = MAX_PRIVATE_FILE;
        let path = self.file(name);
        let (bytes, meta) = match folio_rpc::identity::read_bounded(&path, max) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(self.corrupt(name, &format!("larger than {max} bytes")))
            }
            Err(source) => {
                return Err(PrivateError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        check_mode(&path, &meta)?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| self.corrupt(name, "not UTF-8 text"))
    }

    /// The control-port password of a running tor (`private/tor_control_password`), if the
    /// node was given one.
    pub fn tor_control_password(&self) -> Result<Option<Password>, PrivateError> {
        self.read(TOR_CONTROL_PASSWORD)?
            .map(|text| Password::parse(&text).map_err(|e| self.corrupt(TOR_CONTROL_PASSWORD, &e)))
            .transpose()
    }

    fn corrupt(&self, name: &str, reason: &str) -> PrivateError {
        PrivateError::Corrupt {
            path: self.file(name).display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn required(&self, name: &str) -> Result<String, PrivateError> {
        self.read(name)?
            .ok_or_else(|| self.corrupt(name, "missing (was the node made with `tahoe create-*`?)"))
    }

    /// The Tub identity. `Identity::load` reads `node.pem` once, through its own bound
    /// (`MAX_IDENTITY_FILE`), and checks its mode.
    pub fn identity(&self) -> Result<Identity, PrivateError> {
        match Identity::load(&self.file("node.pem")) {
            Err(IdentityError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(self.corrupt(
                    "node.pem",
                    "missing (was the node made with `tahoe create-*`?)",
                ))
            }
            loaded => Ok(loaded?),
        }
    }

    /// The announcement signing key.
    pub fn signing_key(&self) -> Result<SigningKey, PrivateError> {
        let text = self.required("node.privkey")?;
        SigningKey::from_text(&text)
            .ok_or_else(|| self.corrupt("node.privkey", "not a `v0-` base32 Ed25519 seed"))
    }

    fn secret(&self, name: &str) -> Result<[u8; 32], PrivateError> {
        let text = self.required(name)?;
        unbase32(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.corrupt(name, "not 32 bytes of base32"))
    }

    /// The lease secret.
    pub fn lease_secret(&self) -> Result<[u8; 32], PrivateError> {
        self.secret("secret")
    }

    /// The convergence secret.
    pub fn convergence_secret(&self) -> Result<[u8; 32], PrivateError> {
        self.secret("convergence")
    }

    /// The next announcement sequence number: one more than the last one used, saved before
    /// it is returned so that a restart never announces an old number again.
    pub fn next_seqnum(&self) -> Result<u64, PrivateError> {
        let last = match self.read("announcement-seqnum")? {
            None => 0,
            Some(t) => t
                .trim()
                .parse::<u64>()
                .map_err(|_| self.corrupt("announcement-seqnum", "not a number"))?,
        };
        let next = last
            .checked_add(1)
            .ok_or_else(|| self.corrupt("announcement-seqnum", "exhausted"))?;
        self.write("announcement-seqnum", format!("{next}\n").as_bytes())?;
        Ok(next)
    }

    /// The swissnum saved in the FURL file `name`, or a fresh one (saved with the FURL by
    /// [`PrivateDir::save_furl`]). Reusing it keeps a service's FURL stable across restarts.
    pub fn swissnum_for(&self, name: &str) -> Result<Swissnum, PrivateError> {
        match self.read(name)? {
            None => Ok(Swissnum::random()),
            Some(text) => text
                .trim()
                .parse::<Furl>()
                .map(|f| f.swissnum().clone())
                .map_err(|e| self.corrupt(name, &e.to_string())),
        }
    }

    /// Saves one of the node's FURLs.
    pub fn save_furl(&self, name: &str, furl: &Furl) -> Result<(), PrivateError> {
        self.write(name, format!("{furl}\n").as_bytes())
    }
}

fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), PrivateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PrivateError::TooOpen {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open_gives_the_same_keys() {
        let base = tempfile::tempdir().unwrap();
        let made = PrivateDir::create(base.path()).unwrap();
        let opened = PrivateDir::open(base.path()).unwrap();
        assert_eq!(
            made.identity().unwrap().tubid(),
            opened.identity().unwrap().tubid()
        );
        assert_eq!(
            made.signing_key().unwrap().public(),
            opened.signing_key().unwrap().public()
        );
        assert_ne!(
            opened.lease_secret().unwrap(),
            opened.convergence_secret().unwrap()
        );
        assert_eq!(opened.next_seqnum().unwrap(), 1);
        assert_eq!(opened.next_seqnum().unwrap(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn private_dir_is_owner_only_and_open_modes_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = PrivateDir::create(base.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key = dir.file("node.privkey");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = dir.signing_key().unwrap_err().to_string();
        assert!(err.contains("readable by other users"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(PrivateDir::open(base.path()).is_err());
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        let k = SigningKey::generate();
        let sig = k.sign(b"hello");
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k.public());
        assert!(pk.verify(b"hello", &sig).is_ok());
        assert!(pk.verify(b"hellO", &sig).is_err());
        let again = SigningKey::from_text(&k.to_text()).unwrap();
        assert_eq!(again.public(), k.public());
    }

    /// Every file of `private/` is read through a bound: a file too large is refused as such,
    /// not read whole first (the old `read` had no bound at all).
    #[test]
    fn files_over_the_bound_are_refused_without_reading_them_whole() {
        let base = tempfile::tempdir().unwrap();
        let dir = PrivateDir::create(base.path()).unwrap();
        let mut big = SigningKey::generate().to_text().into_bytes();
        big.resize(MAX_PRIVATE_FILE as usize + 1, b' ');
        dir.write("node.privkey", &big).unwrap();
        let err = dir.signing_key().unwrap_err().to_string();
        assert!(
            err.contains(&format!("larger than {MAX_PRIVATE_FILE} bytes")),
            "{err}"
        );
        // At the bound exactly, the file is read (and its trailing blanks ignored).
        big.truncate(MAX_PRIVATE_FILE as usize);
        dir.write("node.privkey", &big).unwrap();
        dir.signing_key().unwrap();
        // node.pem goes through Identity::load's bound.
        dir.write("node.pem", &vec![b'-'; 1024 * 1024]).unwrap();
        let err = dir.identity().unwrap_err();
        assert!(
            matches!(err, PrivateError::Identity(IdentityError::TooLarge { .. })),
            "{err}"
        );
    }
}
