//! Immutable shares: allocation, bucket writers (uploads under `incoming/`) and readers.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use folio_rpc::Bytes;
use tracing::{debug, info, warn};

use super::disk::{bucket_dir, list_shares, read_at_most, share_name, si_b32, sync_dir};
use super::lease::{self, Lease};
use super::quota::Charge;
use super::{
    lock, BucketReader, BucketWriter, CanaryRef, Inner, StorageError, StorageIndex, MAX_CHUNK,
    MAX_WRITTEN_RANGES,
};

/// Bytes before an immutable share's data: [`MAGIC`], then the data length (u64 big-endian).
pub(super) const HEADER_LEN: u64 = 40;
/// The first 32 bytes of every immutable share file.
pub(super) const MAGIC: [u8; 32] = super::magic(b"folio immutable share v1\n");

fn header(data_len: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..32].copy_from_slice(&MAGIC);
    h[32..].copy_from_slice(&data_len.to_be_bytes());
    h
}

/// The data length of an immutable share file, or `None` if the file is something else.
/// The length is the header's, as far as the file holds it: a length field that claims more
/// (a truncated or corrupt file) must not send reads past the end of the file, nor overflow
/// offsets past the header into it.
pub(super) fn read_header(file: &File) -> io::Result<Option<u64>> {
    let h = read_at_most(file, 0, HEADER_LEN as usize)?;
    if h.len() != HEADER_LEN as usize || h[..32] != MAGIC {
        return Ok(None);
    }
    let claimed = u64::from_be_bytes(h[32..40].try_into().expect("8 bytes"));
    let in_file = file.metadata()?.len().saturating_sub(HEADER_LEN);
    Ok(Some(claimed.min(in_file)))
}

/// Disjoint, non-adjacent byte ranges `[start, end)` already written, keyed by start.
#[derive(Debug, Default)]
pub(super) struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// The parts of `[start, end)` already written.
    pub fn overlaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, &e)| e > start)
            .map(|(&s, &e)| (s.max(start), e.min(end)))
            .collect();
        out.reverse();
        out
    }

    /// Whether `[start, end)` overlaps or touches a written range (adding it would not make
    /// a new range).
    pub fn touches(&self, start: u64, end: u64) -> bool {
        self.0
            .range(..=end)
            .next_back()
            .is_some_and(|(_, &e)| e >= start)
    }

    /// Records `[start, end)` as written.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let merged: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        let (mut s, mut e) = (start, end);
        for (ms, me) in merged {
            self.0.remove(&ms);
            s = s.min(ms);
            e = e.max(me);
        }
        self.0.insert(s, e);
    }

    /// Bytes written in all.
    pub fn covered(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// Number of separate ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// An upload's state. The incoming file is opened for each operation, not held: a client
/// with many open uploads must not use up the server's file descriptors.
enum WriterState {
    Open { written: Ranges },
    Closed,
    Aborted,
}

/// One share being uploaded. Shared by the served [`Writer`] and the canary's observer.
pub(super) struct WriterShared {
    storage: Arc<Inner>,
    si: StorageIndex,
    shnum: u16,
    allocated_size: u64,
    incoming: PathBuf,
    lease: Lease,
    /// Held while the upload lives, as Tahoe holds the uploader's canary.
    _canary: CanaryRef,
    state: Mutex<WriterState>,
    /// Taken first by every call on the writer, before its first other `.await`. The RPC
    /// layer starts calls in arrival order but then runs them concurrently; tokio's mutex
    /// is fair (FIFO), and a call's first poll queues it for the lock, so the calls take
    /// effect in arrival order. That is what lets a client send `write, write, ..., close`
    /// in one flight: without it the close could run before the last write, and be refused
    /// as incomplete.
    turn: tokio::sync::Mutex<()>,
}

impl WriterShared {
    fn write_blocking(&self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let end = offset + data.len() as u64; // checked by the caller
        let mut st = lock(&self.state);
        let WriterState::Open { written } = &mut *st else {
            return Err(StorageError::AlreadyClosed);
        };
        if data.is_empty() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.incoming)
            .map_err(|e| StorageError::io("opening an incoming share", &e))?;
        for (a, b) in written.overlaps(offset, end) {
            let have = read_at_most(&file, HEADER_LEN + a, (b - a) as usize)
                .map_err(|e| StorageError::io("reading back a share", &e))?;
            if have[..] != data[(a - offset) as usize..(b - offset) as usize] {
                warn!(si = %si_b32(&self.si), shnum = self.shnum, offset = a, "conflicting write refused");
                return Err(StorageError::ConflictingWrite { offset: a });
            }
        }
        if written.len() >= MAX_WRITTEN_RANGES && !written.touches(offset, end) {
            return Err(StorageError::LimitExceeded {
                what: "separately written ranges in one share".into(),
                maximum: MAX_WRITTEN_RANGES as u64,
            });
        }
        file.write_all_at(data, HEADER_LEN + offset)
            .map_err(|e| StorageError::io("writing a share", &e))?;
        written.insert(offset, end);
        debug!(si = %si_b32(&self.si), shnum = self.shnum, offset, len = data.len(), "share write");
        Ok(())
    }

    /// Makes the share visible: fsync, lease file, rename into place, fsync the directories.
    /// The caller holds the storage index's lock.
    fn close_blocking(&self) -> Result<(), StorageError> {
        let mut st = lock(&self.state);
        let WriterState::Open { written } = &*st else {
            return Err(StorageError::AlreadyClosed);
        };
        let covered = written.covered();
        if covered != self.allocated_size {
            return Err(StorageError::Incomplete {
                missing: self.allocated_size - covered,
            });
        }
        let si = si_b32(&self.si);
        let final_dir = bucket_dir(&self.storage.shares, &self.si);
        let final_path = final_dir.join(share_name(self.shnum));
        let fail = |st: &mut WriterState, err: StorageError| {
            *st = WriterState::Aborted;
            self.storage
                .forget_upload(&self.si, self.shnum, &self.incoming, true);
            warn!(si = %si, shnum = self.shnum, error = %err, "close failed; upload aborted");
            Err(err)
        };
        if let Err(e) = File::open(&self.incoming).and_then(|f| f.sync_all()) {
            return fail(&mut st, StorageError::io("syncing a share", &e));
        }
        if let Err(e) = fs::create_dir_all(&final_dir) {
            return fail(&mut st, StorageError::io("creating a bucket directory", &e));
        }
        if final_path.exists() {
            // Only a mutable slot created meanwhile under the same index can be here.
            return fail(&mut st, StorageError::ShareExists { shnum: self.shnum });
        }
        if let Err(e) = lease::create(&final_dir, self.shnum, &self.lease) {
            return fail(&mut st, e);
        }
        if let Err(e) = fs::rename(&self.incoming, &final_path) {
            let _ = lease::remove(&final_dir, self.shnum);
            return fail(&mut st, StorageError::io("moving a share into place", &e));
        }
        *st = WriterState::Closed;
        self.storage
            .forget_upload(&self.si, self.shnum, &self.incoming, false);
        let synced = sync_dir(&final_dir).and_then(|()| {
            sync_dir(
                final_dir
                    .parent()
                    .expect("bucket directories have a parent"),
            )
        });
        if let Err(e) = synced {
            warn!(si = %si, shnum = self.shnum, error = %e, "cannot sync the bucket directory");
            return Err(StorageError::io("syncing a bucket directory", &e));
        }
        info!(si = %si, shnum = self.shnum, size = self.allocated_size, "share closed");
        Ok(())
    }

    /// Abandons the upload if it is still open: the incoming file goes away.
    pub(super) fn abort(&self, why: &str) {
        let mut st = lock(&self.state);
        if !matches!(*st, WriterState::Open { .. }) {
            return;
        }
        *st = WriterState::Aborted; // closes the file
        self.storage
            .forget_upload(&self.si, self.shnum, &self.incoming, true);
        info!(si = %si_b32(&self.si), shnum = self.shnum, why, "upload aborted");
    }
}

/// The served bucket writer. Dropping it (the client released its reference, or the
/// connection went away) aborts an unclosed upload.
pub(super) struct Writer(pub(super) Arc<WriterShared>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort("the writer was released before close");
    }
}

impl BucketWriter for Writer {
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), StorageError> {
        // First, before any other `.await`: see `WriterShared::turn`.
        let _turn = self.0.turn.lock().await;
        let len = data.len() as u64;
        if len > MAX_CHUNK {
            return Err(StorageError::WriteTooLarge {
                requested: len,
                maximum: MAX_CHUNK,
            });
        }
        let allocated_size = self.0.allocated_size;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > allocated_size)
        {
            return Err(StorageError::WritePastEnd {
                offset,
                length: len,
                allocated_size,
            });
        }
        let shared = self.0.clone();
        super::blocking(move || shared.write_blocking(offset, &data)).await
    }

    async fn close(&self) -> Result<(), StorageError> {
        let _turn = self.0.turn.lock().await;
        let _guard = self.0.storage.lock_si(self.0.si).await;
        let shared = self.0.clone();
        super::blocking(move || shared.close_blocking()).await
    }

    async fn abort(&self) -> Result<(), StorageError> {
        let _turn = self.0.turn.lock().await;
        let shared = self.0.clone();
        super::blocking(move || {
            shared.abort("the uploader asked");
            Ok(())
        })
        .await
    }
}

/// Why [`allocate`] left a share out (neither allocated nor already there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skipped {
    /// Another allocation is uploading it.
    Uploading,
    /// It would not fit above the reserve (or the server is read-only).
    NoRoom,
}

/// What [`allocate`] gives back.
pub(super) struct Allocation {
    pub already_have: BTreeSet<u16>,
    pub writers: BTreeMap<u16, Writer>,
    /// The shares asked for that are in neither of the above, and why.
    pub skipped: BTreeMap<u16, Skipped>,
}

/// Tahoe's `allocate_buckets`, on disk. The caller holds the storage index's lock.
///
/// `need` bytes per share are promised, and charged to `client`: if a share the server would
/// allocate does not fit in the client's quota, the whole call is refused
/// ([`StorageError::QuotaExceeded`]) and nothing stays allocated.
pub(super) fn allocate(
    storage: &Arc<Inner>,
    si: StorageIndex,
    lease: Lease,
    sharenums: &BTreeSet<u16>,
    allocated_size: u64,
    canary: &CanaryRef,
    client: Option<folio_rpc::TubId>,
) -> Result<Allocation, StorageError> {
    let final_dir = bucket_dir(&storage.shares, &si);
    let existing = list_shares(&final_dir).map_err(|e| StorageError::io("listing a bucket", &e))?;
    for (&shnum, path) in &existing {
        if is_immutable(path) {
            if let Err(e) = lease::add_or_renew(&final_dir, shnum, &lease) {
                warn!(si = %si_b32(&si), shnum, error = %e, "lease not added to an existing share");
            }
        }
    }
    let mut out = Allocation {
        already_have: BTreeSet::new(),
        writers: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    let need = allocated_size.saturating_add(HEADER_LEN);
    let mut active = lock(&storage.active);
    let mut remaining = storage.space_for_new_shares(active.values().map(|(n, _)| n).sum());
    let incoming_dir = bucket_dir(&storage.incoming, &si);
    let mut failure = None;
    for &shnum in sharenums {
        if existing.contains_key(&shnum) {
            out.already_have.insert(shnum);
            continue;
        }
        let Entry::Vacant(slot) = active.entry((si, shnum)) else {
            debug!(si = %si_b32(&si), shnum, "share is already being uploaded; not allocated");
            out.skipped.insert(shnum, Skipped::Uploading);
            continue;
        };
        if remaining < need {
            info!(si = %si_b32(&si), shnum, need, remaining, "no room for share; not allocated");
            out.skipped.insert(shnum, Skipped::NoRoom);
            continue;
        }
        if let Err(e) = lock(&storage.quotas).take(client, need, Charge::Promise) {
            failure = Some(e);
            break;
        }
        let path = incoming_dir.join(share_name(shnum));
        let created = fs::create_dir_all(&incoming_dir).and_then(|()| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.write_all_at(&header(allocated_size), 0)
        });
        match created {
            Ok(()) => {}
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot create an incoming share");
                let _ = fs::remove_file(&path);
                lock(&storage.quotas).give_back(client, need, Charge::Promise);
                failure = Some(StorageError::io("creating an incoming share", &e));
                break;
            }
        }
        slot.insert((need, client));
        remaining -= need;
        let shared = Arc::new(WriterShared {
            storage: storage.clone(),
            si,
            shnum,
            allocated_size,
            incoming: path,
            lease: lease.clone(),
            _canary: canary.clone(),
            state: Mutex::new(WriterState::Open {
                written: Ranges::default(),
            }),
            turn: tokio::sync::Mutex::new(()),
        });
        out.writers.insert(shnum, Writer(shared));
    }
    // Writers abort on drop, which takes `active`: release it first.
    drop(active);
    match failure {
        Some(e) => Err(e), // `out` drops here, aborting what was allocated
        None => Ok(out),
    }
}

fn is_immutable(path: &Path) -> bool {
    File::open(path)
        .and_then(|f| read_header(&f))
        .is_ok_and(|h| h.is_some())
}

/// A served reader of one finished immutable share.
pub(super) struct Reader {
    path: PathBuf,
    data_len: u64,
}

impl BucketReader for Reader {
    async fn read(&self, offset: u64, length: u64) -> Result<Bytes, StorageError> {
        if length > MAX_CHUNK {
            return Err(StorageError::ReadTooLarge {
                requested: length,
                maximum: MAX_CHUNK,
            });
        }
        if offset >= self.data_len {
            return Ok(Bytes::default());
        }
        let n = length.min(self.data_len - offset) as usize;
        let path = self.path.clone();
        super::blocking(move || {
            let file = File::open(&path).map_err(|e| StorageError::io("opening a share", &e))?;
            read_at_most(&file, HEADER_LEN + offset, n)
                .map(Bytes)
                .map_err(|e| StorageError::io("reading a share", &e))
        })
        .await
    }

    async fn size(&self) -> Result<u64, StorageError> {
        Ok(self.data_len)
    }
}

/// The finished immutable shares of a storage index, as readers.
pub(super) fn readers(
    storage: &Inner,
    si: &StorageIndex,
) -> Result<Vec<(u16, Reader)>, StorageError> {
    let dir = bucket_dir(&storage.shares, si);
    let shares = list_shares(&dir).map_err(|e| StorageError::io("listing a bucket", &e))?;
    let mut out = Vec::new();
    for (shnum, path) in shares {
        match File::open(&path).and_then(|f| read_header(&f)) {
            Ok(Some(data_len)) => out.push((shnum, Reader { path, data_len })),
            Ok(None) => {} // a mutable slot's share
            Err(e) => warn!(path = %path.display(), error = %e, "cannot open a share"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_overlap() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.len(), 2);
        assert_eq!(r.overlaps(0, 10), vec![]);
        assert_eq!(r.overlaps(15, 35), vec![(15, 20), (30, 35)]);
        assert_eq!(r.overlaps(0, 100), vec![(10, 20), (30, 40)]);
        assert!(r.touches(20, 25));
        assert!(r.touches(25, 30));
        assert!(!r.touches(21, 29));
        r.insert(20, 30); // adjacent on both sides: one range
        assert_eq!(r.len(), 1);
        assert_eq!(r.covered(), 30);
        r.insert(5, 50);
        assert_eq!(r.overlaps(0, 100), vec![(5, 50)]);
        assert_eq!(r.covered(), 45);
        r.insert(7, 7);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn header_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0");
        let mut file = header(1234).to_vec();
        file.resize(file.len() + 1234, 7);
        fs::write(&p, &file).unwrap();
        assert_eq!(read_header(&File::open(&p).unwrap()).unwrap(), Some(1234));
        // A header that claims more than the file holds is believed only as far as the file.
        fs::write(&p, &file[..HEADER_LEN as usize + 10]).unwrap();
        assert_eq!(read_header(&File::open(&p).unwrap()).unwrap(), Some(10));
        fs::write(&p, b"short").unwrap();
        assert_eq!(read_header(&File::open(&p).unwrap()).unwrap(), None);
    }

    /// Found by the `mutable_container` fuzz target: a share whose length field claims up to
    /// `u64::MAX`. A read near the end of that claimed length overflowed the file offset (a
    /// panic with overflow checks; without them it wrapped around into the header).
    #[tokio::test]
    async fn a_length_field_past_the_end_of_the_file_reads_only_the_file() {
        use crate::storage::{Storage, StorageConfig, StorageServer};
        let d = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(d.path())).unwrap();
        let si = [9u8; 16];
        let bucket = bucket_dir(&d.path().join("shares"), &si);
        fs::create_dir_all(&bucket).unwrap();
        let mut file = header(u64::MAX - 2).to_vec();
        file.extend_from_slice(b"data");
        fs::write(bucket.join("0"), &file).unwrap();
        let readers = storage.get_buckets(si).await.unwrap();
        let r = &readers[&0];
        assert_eq!(r.size().await.unwrap(), 4);
        assert_eq!(r.read(0, 100).await.unwrap(), Bytes(b"data".to_vec()));
        assert_eq!(r.read(u64::MAX - 10, 8).await.unwrap(), Bytes::default());
        assert_eq!(r.read(u64::MAX - 39, 8).await.unwrap(), Bytes::default());
    }
}
