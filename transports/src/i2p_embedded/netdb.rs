//! The router's netDb on disk: the RouterInfos it knows, kept across restarts in
//! `<router dir>/netdb/routerInfo-<hash>.dat` (one file each, mode `0600`), so that a
//! restarted router starts from them instead of reseeding.
//!
//! Written from two places: the RouterInfos a reseed brought (saved before the router
//! starts, within its start timeout), and emissary's
//! [`Storage`] hook, which hands over the RouterInfos the router discovered since its
//! previous backup (emissary calls it every 15 minutes; the files are written on a thread
//! of their own, never on the router's). Router profiles (emissary's
//! per-peer statistics) are not kept: a restarted router learns them again.
//!
//! Bounds: at most [`MAX_NETDB_ROUTERS`] files are kept or read, each at most
//! [`MAX_ROUTER_INFO_FILE`] bytes; at most [`MAX_NETDB_SCAN`] directory entries are looked
//! at; a file name is written only in the exact shape `routerInfo-<I2P base64>.dat`, so a
//! name from a peer cannot leave the directory. The bytes are parsed only by emissary's own
//! bounded RouterInfo parser when the router starts; one that does not parse is skipped.
//!
//! Staleness: a file not written for [`MAX_ROUTER_INFO_AGE`] (72 h, by its modification
//! time; a router that is still known is saved again by the storage hook) is deleted when
//! the netDb is loaded, and is not counted: a node that was off for days reseeds rather than
//! start from routers that have mostly changed address or left. When the store is full, a
//! new RouterInfo replaces the oldest file.
//!
//! The netDb is a cache: a file is written to a temporary name and renamed, not synced, so
//! a save costs no `fsync` per file. After a crash a file may be
//! missing or empty; an empty or truncated one is a RouterInfo that does not parse, which
//! emissary skips.

use std::collections::{HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use emissary_core::runtime::Storage;

use super::{create_private_dir, read_bounded, MAX_ROUTER_INFO_FILE};

/// The most RouterInfo files kept (and read at start).
pub const MAX_NETDB_ROUTERS: usize = 2000;
/// The most directory entries looked at when loading or saving.
pub const MAX_NETDB_SCAN: usize = 4 * MAX_NETDB_ROUTERS;
/// A RouterInfo file older than this (by modification time) is stale: deleted at load.
pub const MAX_ROUTER_INFO_AGE: Duration = Duration::from_secs(72 * 3600);

/// A netDb directory.
#[derive(Debug, Clone)]
pub struct NetDb {
    dir: PathBuf,
    /// [`MAX_NETDB_ROUTERS`]; smaller in tests.
    max_routers: usize,
}

/// The file name for a RouterInfo of router `hash` (I2P base64), if `hash` has that shape.
pub fn file_name(hash: &str) -> Option<String> {
    let ok = !hash.is_empty()
        && hash.len() <= 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'~' | b'='));
    ok.then(|| format!("routerInfo-{hash}.dat"))
}

fn is_router_info_file(name: &str) -> bool {
    name.strip_prefix("routerInfo-")
        .and_then(|n| n.strip_suffix(".dat"))
        .and_then(file_name)
        .is_some()
}

/// A temporary file of an interrupted save: `.routerInfo-<hash>.dat.<pid>-<n>.tmp`.
fn is_temporary_file(name: &str) -> bool {
    name.starts_with(".routerInfo-") && name.ends_with(".tmp")
}

/// Writes `path` through a temporary file renamed into place, mode `0600`, not synced.
fn write_cache_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let write = || {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&tmp)?.write_all(contents)?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Whether a file last written at `modified` is stale at `now` (a time in the future is not).
fn is_stale(modified: SystemTime, now: SystemTime) -> bool {
    now.duration_since(modified)
        .is_ok_and(|age| age > MAX_ROUTER_INFO_AGE)
}

impl NetDb {
    /// The netDb in `dir` (created, mode `0700`).
    pub fn open(dir: &Path) -> std::io::Result<NetDb> {
        create_private_dir(dir)?;
        Ok(NetDb {
            dir: dir.to_path_buf(),
            max_routers: MAX_NETDB_ROUTERS,
        })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The RouterInfo files among the first [`MAX_NETDB_SCAN`] entries, with their
    /// modification times (a file whose time cannot be read is left out). With `clean`,
    /// temporary files of an interrupted save are deleted.
    fn scan(&self, clean: bool) -> std::io::Result<Vec<(String, SystemTime)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.take(MAX_NETDB_SCAN) {
            // One entry that cannot be read is skipped, not the whole netDb.
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), "netDb entry skipped: {e}");
                    continue;
                }
            };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if clean && is_temporary_file(&name) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if !is_router_info_file(&name) {
                continue;
            }
            match entry.metadata().and_then(|m| m.modified()) {
                Ok(modified) => files.push((name, modified)),
                Err(e) => tracing::warn!(file = name, "netDb file skipped: {e}"),
            }
        }
        Ok(files)
    }

    /// The fresh RouterInfo files, newest first, at most [`MAX_NETDB_ROUTERS`]; stale ones
    /// ([`MAX_ROUTER_INFO_AGE`]) are deleted.
    fn fresh(&self) -> std::io::Result<Vec<String>> {
        let now = SystemTime::now();
        let mut fresh = Vec::new();
        for (name, modified) in self.scan(true)? {
            if is_stale(modified, now) {
                let path = self.dir.join(&name);
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(file = name, "stale netDb file deleted"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "stale netDb file not deleted: {e}")
                    }
                }
            } else {
                fresh.push((modified, name));
            }
        }
        fresh.sort_unstable_by(|a, b| b.cmp(a));
        fresh.truncate(self.max_routers);
        Ok(fresh.into_iter().map(|(_, name)| name).collect())
    }

    /// How many fresh RouterInfo files it holds (at most [`MAX_NETDB_ROUTERS`] counted);
    /// stale ones are deleted.
    pub fn count(&self) -> std::io::Result<usize> {
        Ok(self.fresh()?.len())
    }

    /// Reads its fresh RouterInfo files, the newest [`MAX_NETDB_ROUTERS`] (in name order),
    /// deleting stale ones ([`MAX_ROUTER_INFO_AGE`]); a file over the size bound or
    /// unreadable is skipped with a warning.
    pub fn load(&self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut names = self.fresh()?;
        names.sort_unstable();
        let mut out = Vec::new();
        for name in names {
            let path = self.dir.join(&name);
            match read_bounded(&path, MAX_ROUTER_INFO_FILE) {
                Ok(bytes) => out.push(bytes),
                Err(e) => tracing::warn!(path = %path.display(), "netDb file skipped: {e}"),
            }
        }
        Ok(out)
    }

    /// Saves RouterInfos (`(file name, bytes)`; names not of the shape
    /// `routerInfo-<hash>.dat`, or bytes over [`MAX_ROUTER_INFO_FILE`], are skipped),
    /// keeping at most [`MAX_NETDB_ROUTERS`] files: when the store is full, a new one
    /// replaces the oldest file not written by this save (and is dropped only if every kept
    /// file was). Returns how many were written.
    pub fn save<'a>(
        &self,
        router_infos: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> std::io::Result<usize> {
        let mut existing = self.scan(false)?;
        existing.sort_unstable_by_key(|e| e.1);
        let mut present: HashSet<String> = existing.iter().map(|(n, _)| n.clone()).collect();
        let mut oldest: VecDeque<String> = existing.into_iter().map(|(n, _)| n).collect();
        let mut saved_now = HashSet::new();
        let mut written = 0;
        'each: for (name, bytes) in router_infos {
            if !is_router_info_file(name) || bytes.len() as u64 > MAX_ROUTER_INFO_FILE {
                tracing::debug!(name, "not saved to the netDb: not a RouterInfo file");
                continue;
            }
            if !present.contains(name) {
                while present.len() >= self.max_routers {
                    let Some(old) = oldest.pop_front() else {
                        break 'each;
                    };
                    if saved_now.contains(&old) {
                        continue;
                    }
                    match std::fs::remove_file(self.dir.join(&old)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    present.remove(&old);
                }
            }
            write_cache_file(&self.dir.join(name), bytes)?;
            present.insert(name.to_string());
            saved_now.insert(name.to_string());
            written += 1;
        }
        Ok(written)
    }
}

/// What emissary hands the storage hook: (router hash, RouterInfo, profile).
type RouterRecords = Vec<(String, Option<Vec<u8>>, emissary_core::Profile)>;

/// emissary's storage hook, writing into a [`NetDb`].
///
/// emissary calls the hook from a task on the router's own single-threaded runtime, so the
/// writing (up to [`NetDb::max_routers`] files, each written and renamed) happens on a
/// thread of its own: the router's tunnels and streams do not wait for the disk. A save
/// asked for while the previous one still runs is skipped (the next one, 15 minutes
/// later in emissary 0.4, carries the same routers).
pub(super) struct NetDbStorage {
    db: NetDb,
    saving: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NetDbStorage {
    pub(super) fn new(db: NetDb) -> NetDbStorage {
        NetDbStorage {
            db,
            saving: Default::default(),
        }
    }
}

/// Writes the RouterInfos of `routers` (those with a well-formed hash) into `db`.
fn save_records(db: &NetDb, routers: RouterRecords) {
    let files: Vec<(String, Vec<u8>)> = routers
        .into_iter()
        .filter_map(|(hash, ri, _profile)| Some((file_name(&hash)?, ri?)))
        .collect();
    match db.save(files.iter().map(|(n, b)| (n.as_str(), b.as_slice()))) {
        Ok(n) => tracing::debug!(saved = n, "netDb saved"),
        Err(e) => tracing::warn!(dir = %db.dir.display(), "netDb not saved: {e}"),
    }
}

impl Storage for NetDbStorage {
    fn save_to_disk(&self, routers: RouterRecords) {
        use std::sync::atomic::Ordering;
        if self.saving.swap(true, Ordering::SeqCst) {
            tracing::debug!("the previous netDb save still runs; this one is skipped");
            return;
        }
        let (db, saving) = (self.db.clone(), self.saving.clone());
        let spawned = std::thread::Builder::new()
            .name("i2p-netdb-save".into())
            .spawn(move || {
                save_records(&db, routers);
                saving.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.saving.store(false, Ordering::SeqCst);
            tracing::warn!("netDb not saved: no thread to save it on: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> emissary_core::Profile {
        emissary_core::Profile {
            last_activity: std::time::Duration::ZERO,
            last_declined: None,
            last_dial_failure: None,
            num_accepted: 0,
            num_connection: 0,
            num_dial_failures: 0,
            num_lookup_failures: 0,
            num_lookup_no_responses: 0,
            num_lookup_successes: 0,
            num_rejected: 0,
            num_selected: 0,
            num_test_failures: 0,
            num_test_successes: 0,
            num_unaswered: 0,
        }
    }

    #[test]
    fn saves_and_loads_within_bounds() {
        let dir = std::env::temp_dir().join(format!("folio-netdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = NetDb::open(&dir).unwrap();
        let written = db
            .save([
                ("routerInfo-aa~=.dat", &b"one"[..]),
                ("routerInfo-../../x.dat", b"escape"),
                ("other.dat", b"x"),
                (
                    "routerInfo-bb.dat",
                    &vec![0u8; MAX_ROUTER_INFO_FILE as usize + 1][..],
                ),
                ("routerInfo-cc.dat", b"two"),
            ])
            .unwrap();
        assert_eq!(written, 2);
        assert_eq!(db.load().unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
        // Stray files are not read; an oversized one is skipped.
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::write(
            dir.join("routerInfo-dd.dat"),
            vec![0u8; MAX_ROUTER_INFO_FILE as usize + 1],
        )
        .unwrap();
        assert_eq!(db.load().unwrap().len(), 2);
        assert_eq!(db.count().unwrap(), 3);
        // The storage hook names files by router hash; a malformed hash is dropped. It saves
        // on a thread of its own: wait for it (bounded).
        NetDbStorage::new(db.clone()).save_to_disk(vec![
            ("ee".into(), Some(b"three".to_vec()), profile()),
            ("ff".into(), None, profile()),
            ("g/h".into(), Some(b"x".to_vec()), profile()),
        ]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.count().unwrap() < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "the save did not finish"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            std::fs::read(dir.join("routerInfo-ee.dat")).unwrap(),
            b"three"
        );
        assert_eq!(db.count().unwrap(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_files_are_dropped_and_the_oldest_replaced() {
        let dir = std::env::temp_dir().join(format!("folio-netdb-age-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut db = NetDb::open(&dir).unwrap();
        db.max_routers = 3;
        let file = |n: &str| dir.join(format!("routerInfo-{n}.dat"));
        let age = |n: &str, hours: u64| {
            std::fs::File::options()
                .write(true)
                .open(file(n))
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(hours * 3600))
                .unwrap()
        };
        let save = |names: &[&str]| {
            let files: Vec<(String, Vec<u8>)> = names
                .iter()
                .map(|n| (format!("routerInfo-{n}.dat"), n.as_bytes().to_vec()))
                .collect();
            db.save(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
                .unwrap()
        };
        assert_eq!(save(&["a", "b", "c"]), 3);
        age("a", 50);
        age("b", 2);
        age("c", 1);
        // Full: a new one replaces the oldest; one already kept is written over.
        assert_eq!(save(&["d", "c"]), 2);
        assert!(!file("a").exists() && file("b").exists());
        // A batch larger than the store keeps its first ones, never evicting its own.
        assert_eq!(save(&["e", "f", "g", "h"]), 3);
        let mut kept: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            ["routerInfo-e.dat", "routerInfo-f.dat", "routerInfo-g.dat"]
        );
        // Over 72 hours old: deleted at load, and not counted; so is a temporary leftover.
        age("e", 73);
        std::fs::write(dir.join(".routerInfo-f.dat.1-0.tmp"), b"x").unwrap();
        assert_eq!(db.load().unwrap(), vec![b"f".to_vec(), b"g".to_vec()]);
        assert!(!file("e").exists());
        assert!(!dir.join(".routerInfo-f.dat.1-0.tmp").exists());
        assert_eq!(db.count().unwrap(), 2);
        // Past the bound, the newest are loaded.
        age("f", 3);
        db.max_routers = 1;
        assert_eq!(db.load().unwrap(), vec![b"g".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
