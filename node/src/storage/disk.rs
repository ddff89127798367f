//! Paths, durable file updates and free space: the filesystem under the storage server.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StorageIndex;

/// The storage index as a path component: RFC 4648 base32, lowercase, no padding (26
/// characters from `a-z2-7`). The only way client input becomes part of a path.
pub fn si_b32(si: &StorageIndex) -> String {
    folio_rpc::base32::encode(si)
}

/// `<root>/<first two characters>/<base32 storage index>`.
pub(super) fn bucket_dir(root: &Path, si: &StorageIndex) -> PathBuf {
    let b32 = si_b32(si);
    root.join(&b32[..2]).join(&b32)
}

/// A share's file name: its number in decimal (`0` to `255`).
pub(super) fn share_name(shnum: u16) -> String {
    shnum.to_string()
}

/// The share files in a bucket directory, by share number. Names that are not a share number
/// in canonical decimal form (lease files, temporary files) are skipped. A missing directory
/// holds no shares.
pub(super) fn list_shares(dir: &Path) -> io::Result<BTreeMap<u16, PathBuf>> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(n) = name.parse::<u16>() else { continue };
        if n <= super::MAX_SHNUM && share_name(n) == name {
            out.insert(n, entry.path());
        }
    }
    Ok(out)
}

/// Flushes a directory's entries (new, renamed and removed names) to disk.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `contents`, crash-safely: a temporary file beside it, written and
/// fsynced, renamed over it, then the directory fsynced.
pub(super) fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all_at(contents, 0)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The temporary name used while replacing `path`: `<name>.tmp` in the same directory.
pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Removes a file; one that is already gone is fine.
pub(super) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads up to `len` bytes at `offset`, fewer at the end of the file.
pub(super) fn read_at_most(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Bytes available to unprivileged users on the filesystem holding `path`
/// (`f_bavail * f_frsize`), or `None` if `statvfs` fails.
pub(super) fn disk_available(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Compares two secrets in time independent of where they differ.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Current time as seconds since the Unix epoch.
pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_index_encoding() {
        let si = [0u8; 16];
        assert_eq!(si_b32(&si), "aaaaaaaaaaaaaaaaaaaaaaaaaa");
        let si = [0xffu8; 16];
        let s = si_b32(&si);
        assert_eq!(s.len(), 26);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        let dir = bucket_dir(Path::new("/r"), &si);
        assert_eq!(dir, Path::new("/r").join(&s[..2]).join(&s));
    }

    #[test]
    fn only_canonical_share_names_are_listed() {
        let d = tempfile::tempdir().unwrap();
        for name in [
            "0", "7", "255", "256", "007", "3.leases", "4.tmp", "x", "+1",
        ] {
            fs::write(d.path().join(name), b"").unwrap();
        }
        let got: Vec<u16> = list_shares(d.path()).unwrap().into_keys().collect();
        assert_eq!(got, vec![0, 7, 255]);
        assert!(list_shares(&d.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn replace_is_atomic_and_reads_are_short_at_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        replace_file(&p, b"hello").unwrap();
        replace_file(&p, b"world!").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"world!");
        assert!(!tmp_path(&p).exists());
        let f = File::open(&p).unwrap();
        assert_eq!(read_at_most(&f, 4, 10).unwrap(), b"d!");
        assert_eq!(read_at_most(&f, 40, 10).unwrap(), b"");
        assert!(disk_available(d.path()).unwrap() > 0);
    }
}
