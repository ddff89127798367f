//! Leases: who wants a share kept, and until when. One JSON file beside each share.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::disk::{ct_eq, now_secs, remove_if_present, replace_file, share_name};
use super::{LeaseSecret, StorageError, MAX_LEASES_PER_SHARE};

/// One lease as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    pub renew_secret: LeaseSecret,
    pub cancel_secret: LeaseSecret,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Lease {
    /// A lease with these secrets that runs for `duration` from now.
    pub fn new(renew: LeaseSecret, cancel: LeaseSecret, duration: std::time::Duration) -> Self {
        Lease {
            renew_secret: renew,
            cancel_secret: cancel,
            expires_at: now_secs().saturating_add(duration.as_secs()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<LeaseRecord>,
}

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    renew_secret: String,
    cancel_secret: String,
    expires_at: u64,
}

/// `<bucket dir>/<shnum>.leases`.
pub(super) fn lease_path(dir: &Path, shnum: u16) -> PathBuf {
    dir.join(format!("{}.leases", share_name(shnum)))
}

fn decode_secret(s: &str) -> Option<LeaseSecret> {
    data_encoding::HEXLOWER
        .decode(s.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

/// The largest lease file read: 64 leases take about 13 KiB; a larger file is not one this
/// server wrote, and is treated as unreadable.
const MAX_LEASE_FILE: u64 = 1024 * 1024;

/// The leases on one share. A missing file holds none; an unreadable one (or one over
/// [`MAX_LEASE_FILE`]) is logged and treated as holding none.
pub(super) fn load(dir: &Path, shnum: u16) -> Vec<Lease> {
    let path = lease_path(dir, shnum);
    let bytes = match folio_rpc::identity::read_bounded(&path, MAX_LEASE_FILE) {
        Ok((b, _)) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read lease file");
            return Vec::new();
        }
    };
    let parsed: Option<Vec<Lease>> = serde_json::from_slice::<LeaseFile>(&bytes)
        .ok()
        .filter(|f| f.version == 1)
        .and_then(|f| {
            f.leases
                .into_iter()
                .map(|r| {
                    Some(Lease {
                        renew_secret: decode_secret(&r.renew_secret)?,
                        cancel_secret: decode_secret(&r.cancel_secret)?,
                        expires_at: r.expires_at,
                    })
                })
                .collect()
        });
    parsed.unwrap_or_else(|| {
        warn!(path = %path.display(), "lease file does not parse; ignored");
        Vec::new()
    })
}

fn store(dir: &Path, shnum: u16, leases: &[Lease]) -> io::Result<()> {
    let file = LeaseFile {
        version: 1,
        leases: leases
            .iter()
            .map(|l| LeaseRecord {
                renew_secret: data_encoding::HEXLOWER.encode(&l.renew_secret),
                cancel_secret: data_encoding::HEXLOWER.encode(&l.cancel_secret),
                expires_at: l.expires_at,
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
    replace_file(&lease_path(dir, shnum), &json)
}

/// Gives a new share its first lease (whatever a crash may have left under the name).
pub(super) fn create(dir: &Path, shnum: u16, lease: &Lease) -> Result<(), StorageError> {
    store(dir, shnum, std::slice::from_ref(lease))
        .map_err(|e| StorageError::io("writing a lease", &e))
}

/// Adds `lease` to a share, or renews the lease with the same renew secret (its expiry only
/// ever moves later). Refuses a new lease beyond [`MAX_LEASES_PER_SHARE`].
pub(super) fn add_or_renew(dir: &Path, shnum: u16, lease: &Lease) -> Result<(), StorageError> {
    let mut leases = load(dir, shnum);
    let count = leases.len();
    match leases
        .iter_mut()
        .find(|l| ct_eq(&l.renew_secret, &lease.renew_secret))
    {
        Some(existing) => existing.expires_at = existing.expires_at.max(lease.expires_at),
        None if count >= MAX_LEASES_PER_SHARE => {
            return Err(StorageError::TooManyLeases {
                maximum: MAX_LEASES_PER_SHARE as u32,
            })
        }
        None => leases.push(lease.clone()),
    }
    store(dir, shnum, &leases).map_err(|e| StorageError::io("writing a lease", &e))
}

/// Removes a share's lease file.
pub(super) fn remove(dir: &Path, shnum: u16) -> io::Result<()> {
    remove_if_present(&lease_path(dir, shnum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn add_renew_and_bound() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), 3).is_empty());
        let mut a = Lease::new([1; 32], [2; 32], Duration::from_secs(100));
        add_or_renew(d.path(), 3, &a).unwrap();
        assert_eq!(load(d.path(), 3), vec![a.clone()]);
        // Renewal with the same renew secret moves the expiry later, never earlier.
        a.expires_at += 50;
        add_or_renew(d.path(), 3, &a).unwrap();
        let earlier = Lease {
            expires_at: 1,
            ..a.clone()
        };
        add_or_renew(d.path(), 3, &earlier).unwrap();
        assert_eq!(load(d.path(), 3), vec![a.clone()]);
        for i in 1..MAX_LEASES_PER_SHARE {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64).to_be_bytes());
            add_or_renew(d.path(), 3, &Lease::new(s, s, Duration::ZERO)).unwrap();
        }
        assert_eq!(load(d.path(), 3).len(), MAX_LEASES_PER_SHARE);
        assert!(matches!(
            add_or_renew(d.path(), 3, &Lease::new([9; 32], [9; 32], Duration::ZERO)),
            Err(StorageError::TooManyLeases { .. })
        ));
        // Renewing an existing lease still works at the limit.
        add_or_renew(d.path(), 3, &a).unwrap();
        create(d.path(), 3, &a).unwrap();
        assert_eq!(load(d.path(), 3), vec![a.clone()]);
        remove(d.path(), 3).unwrap();
        assert!(load(d.path(), 3).is_empty());
    }

    #[test]
    fn garbage_lease_file_reads_as_none() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(lease_path(d.path(), 0), b"not json").unwrap();
        assert!(load(d.path(), 0).is_empty());
    }
}
