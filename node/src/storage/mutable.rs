//! Mutable slots: containers with a write enabler, read and updated by test-and-set.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use folio_rpc::Bytes;
use tracing::{info, warn};

use super::disk::{
    bucket_dir, ct_eq, list_shares, read_at_most, remove_if_present, si_b32, sync_dir, tmp_path,
};
use super::lease::{self, Lease};
use super::quota::Charge;
use super::{lock, Inner, StorageError, StorageIndex, TestWriteVectors, WriteEnabler};

/// Bytes before a slot's data: [`MAGIC`], the write enabler (32 bytes), the data length
/// (u64 big-endian).
pub(super) const HEADER_LEN: u64 = 72;
/// The first 32 bytes of every mutable container.
pub(super) const MAGIC: [u8; 32] = super::magic(b"folio mutable slot v1\n");

/// One share of a slot, as found on disk.
pub(super) struct SlotShare {
    path: PathBuf,
    file: File,
    write_enabler: WriteEnabler,
    data_len: u64,
}

impl SlotShare {
    fn open(path: PathBuf) -> io::Result<Option<SlotShare>> {
        let file = File::open(&path)?;
        let h = read_at_most(&file, 0, HEADER_LEN as usize)?;
        if h.len() != HEADER_LEN as usize || h[..32] != MAGIC {
            return Ok(None);
        }
        // The data is what the header says, as far as the file holds it. A length field that
        // claims more (a truncated or corrupt file) must not send reads, or the copy an update
        // makes, past the end of the file, nor overflow offsets past the header into it.
        let in_file = file.metadata()?.len().saturating_sub(HEADER_LEN);
        let claimed = u64::from_be_bytes(h[64..72].try_into().expect("8 bytes"));
        Ok(Some(SlotShare {
            path,
            file,
            write_enabler: h[32..64].try_into().expect("32 bytes"),
            data_len: claimed.min(in_file),
        }))
    }

    /// The data at `[offset, offset + length)`, shorter at the end of the data.
    fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>, StorageError> {
        let n = clipped(self.data_len, offset, length);
        if n == 0 {
            return Ok(Vec::new());
        }
        read_at_most(&self.file, HEADER_LEN + offset, n as usize)
            .map_err(|e| StorageError::io("reading a slot", &e))
    }

    fn readv(&self, readv: &[(u64, u64)]) -> Result<Vec<Bytes>, StorageError> {
        readv
            .iter()
            .map(|&(o, l)| self.read(o, l).map(Bytes))
            .collect()
    }
}

/// How many bytes a read of `length` at `offset` returns from `data_len` bytes.
fn clipped(data_len: u64, offset: u64, length: u64) -> u64 {
    data_len.saturating_sub(offset).min(length)
}

/// The slot's shares, and the share numbers held by files that are not mutable containers.
fn open_slot(dir: &Path) -> Result<(BTreeMap<u16, SlotShare>, BTreeSet<u16>), StorageError> {
    let mut slots = BTreeMap::new();
    let mut others = BTreeSet::new();
    let files = list_shares(dir).map_err(|e| StorageError::io("listing a bucket", &e))?;
    for (shnum, path) in files {
        match SlotShare::open(path) {
            Ok(Some(s)) => {
                slots.insert(shnum, s);
            }
            Ok(None) => {
                others.insert(shnum);
            }
            Err(e) => return Err(StorageError::io("opening a slot", &e)),
        }
    }
    Ok((slots, others))
}

/// Refuses reads whose answer would not fit in one call.
fn check_read_total<'a>(
    shares: impl Iterator<Item = &'a SlotShare>,
    readv: &[(u64, u64)],
) -> Result<(), StorageError> {
    let total = shares
        .map(|s| {
            readv
                .iter()
                .map(|&(o, l)| clipped(s.data_len, o, l))
                .sum::<u64>()
        })
        .sum::<u64>();
    if total > super::MAX_CHUNK {
        return Err(StorageError::ReadTooLarge {
            requested: total,
            maximum: super::MAX_CHUNK,
        });
    }
    Ok(())
}

/// Tahoe's `slot_readv`: `readv` applied to the listed shares (all when `shares` is empty);
/// shares that do not exist are left out.
pub(super) fn readv(
    storage: &Inner,
    si: &StorageIndex,
    shares: &BTreeSet<u16>,
    readv: &[(u64, u64)],
) -> Result<BTreeMap<u16, Vec<Bytes>>, StorageError> {
    let (mut slots, _) = open_slot(&bucket_dir(&storage.shares, si))?;
    if !shares.is_empty() {
        slots.retain(|n, _| shares.contains(n));
    }
    check_read_total(slots.values(), readv)?;
    slots
        .iter()
        .map(|(&n, s)| Ok((n, s.readv(readv)?)))
        .collect()
}

/// What one share's update will do.
enum Plan {
    Nothing,
    Delete,
    Write { new_len: u64 },
}

/// Tahoe's `slot_testv_and_readv_and_writev`. The caller holds the storage index's lock
/// and has checked the sizes of the vectors.
pub(super) fn testv_and_readv_and_writev(
    storage: &Inner,
    si: &StorageIndex,
    write_enabler: &WriteEnabler,
    lease: &Lease,
    tw_vectors: &BTreeMap<u16, TestWriteVectors>,
    read_vector: &[(u64, u64)],
    client: Option<folio_rpc::TubId>,
) -> Result<(bool, BTreeMap<u16, Vec<Bytes>>), StorageError> {
    let dir = bucket_dir(&storage.shares, si);
    let (slots, others) = open_slot(&dir)?;
    let si_s = si_b32(si);
    {
        let active = lock(&storage.active);
        for &shnum in tw_vectors.keys() {
            if others.contains(&shnum) || active.contains_key(&(*si, shnum)) {
                return Err(StorageError::ShareTypeConflict { shnum });
            }
        }
    }
    if slots
        .values()
        .any(|s| !ct_eq(&s.write_enabler, write_enabler))
    {
        warn!(si = %si_s, "wrong write enabler; slot update refused");
        return Err(StorageError::BadWriteEnabler);
    }
    check_read_total(slots.values(), read_vector)?;

    let mut passed = true;
    for (shnum, tw) in tw_vectors {
        for t in &tw.test {
            let have = match slots.get(shnum) {
                Some(s) => s.read(t.offset, t.length)?,
                None => Vec::new(), // a missing share reads as empty
            };
            if have != t.specimen.0 {
                passed = false;
            }
        }
    }
    let reads: BTreeMap<u16, Vec<Bytes>> = slots
        .iter()
        .map(|(&n, s)| Ok((n, s.readv(read_vector)?)))
        .collect::<Result<_, StorageError>>()?;
    if !passed {
        info!(si = %si_s, "slot test vectors failed; nothing written");
        return Ok((false, reads));
    }

    // Plan every share before touching any, so that a refusal writes nothing.
    let max = storage.config.max_mutable_share_size;
    let mut plans = Vec::new();
    let (mut growth, mut shrink) = (0u64, 0u64);
    for (&shnum, tw) in tw_vectors {
        let current = slots.get(&shnum);
        let cur_len = current.map_or(0, |s| s.data_len);
        let plan = if tw.new_length == Some(0) {
            if let Some(cur) = current {
                shrink = shrink.saturating_add(cur.data_len + HEADER_LEN);
                Plan::Delete
            } else {
                Plan::Nothing
            }
        } else if tw.write.is_empty() && tw.new_length.is_none_or(|n| n >= cur_len) {
            Plan::Nothing // tests only (or a missing share with nothing to write)
        } else {
            let mut len = cur_len;
            for (offset, data) in &tw.write {
                let end = offset
                    .checked_add(data.len() as u64)
                    .ok_or(StorageError::TooLarge {
                        requested: u64::MAX,
                        maximum: max,
                    })?;
                len = len.max(end);
            }
            if let Some(n) = tw.new_length {
                len = len.min(n); // new_length only shrinks, as in Tahoe
            }
            if len > max {
                return Err(StorageError::TooLarge {
                    requested: len,
                    maximum: max,
                });
            }
            let header = if current.is_none() { HEADER_LEN } else { 0 };
            growth = growth.saturating_add(len.saturating_sub(cur_len) + header);
            shrink = shrink.saturating_add(cur_len.saturating_sub(len));
            Plan::Write { new_len: len }
        };
        plans.push((shnum, plan));
    }
    if growth > 0 && storage.space_for_new_shares(0) < growth {
        info!(si = %si_s, growth, "no room for the slot update");
        return Err(StorageError::NoSpace);
    }
    // Charged before writing; given back as far as the update shrinks shares, once it is
    // written. A failure half-way keeps the charge (the space may be taken).
    lock(&storage.quotas).take(client, growth, Charge::SlotGrowth)?;

    let mut changed = false;
    for (shnum, plan) in plans {
        let tw = &tw_vectors[&shnum];
        let path = dir.join(super::disk::share_name(shnum));
        match plan {
            Plan::Nothing => {}
            Plan::Delete => {
                remove_if_present(&path).map_err(|e| StorageError::io("deleting a share", &e))?;
                lease::remove(&dir, shnum).map_err(|e| StorageError::io("deleting a lease", &e))?;
                changed = true;
                info!(si = %si_s, shnum, "slot share deleted");
            }
            Plan::Write { new_len } => {
                if !dir.is_dir() {
                    fs::create_dir_all(&dir)
                        .and_then(|()| {
                            sync_dir(dir.parent().expect("bucket directories have a parent"))
                        })
                        .map_err(|e| StorageError::io("creating a bucket directory", &e))?;
                }
                let current = slots.get(&shnum);
                write_share(&path, current, write_enabler, tw, new_len)
                    .map_err(|e| StorageError::io("writing a slot", &e))?;
                let leased = match current {
                    Some(_) => lease::add_or_renew(&dir, shnum, lease),
                    None => lease::create(&dir, shnum, lease),
                };
                if let Err(e) = leased {
                    warn!(si = %si_s, shnum, error = %e, "lease not added to a slot share");
                }
                changed = true;
                info!(si = %si_s, shnum, len = new_len, created = current.is_none(), "slot share written");
            }
        }
    }
    lock(&storage.quotas).give_back(client, shrink, Charge::SlotGrowth);
    if changed {
        sync_dir(&dir).map_err(|e| StorageError::io("syncing a bucket directory", &e))?;
        // An emptied bucket goes away (prefix directories stay).
        if list_shares(&dir).is_ok_and(|s| s.is_empty()) {
            let _ = fs::remove_dir(&dir);
        }
    }
    Ok((true, reads))
}

/// Writes the updated container beside the old one and renames it over: a crash leaves
/// either the old container or the new one.
fn write_share(
    path: &Path,
    current: Option<&SlotShare>,
    write_enabler: &WriteEnabler,
    tw: &TestWriteVectors,
    new_len: u64,
) -> io::Result<()> {
    let tmp = tmp_path(path);
    let file = match current {
        Some(s) => {
            fs::copy(&s.path, &tmp)?;
            let f = OpenOptions::new().write(true).open(&tmp)?;
            // Bytes past the data (none in files we wrote) must not reappear as data.
            f.set_len(HEADER_LEN + s.data_len)?;
            f
        }
        None => {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            let mut h = [0u8; HEADER_LEN as usize];
            h[..32].copy_from_slice(&MAGIC);
            h[32..64].copy_from_slice(write_enabler);
            f.write_all_at(&h, 0)?;
            f
        }
    };
    for (offset, data) in &tw.write {
        // Writes are applied in order, then the data is cut at `new_len`.
        if *offset >= new_len {
            continue;
        }
        let n = (new_len - offset).min(data.len() as u64) as usize;
        file.write_all_at(&data[..n], HEADER_LEN + offset)?;
    }
    file.write_all_at(&new_len.to_be_bytes(), 64)?;
    file.set_len(HEADER_LEN + new_len)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Storage, StorageConfig, StorageServer};

    /// Found by the `mutable_container` fuzz target: a container whose length field claims
    /// more than the file holds (up to `u64::MAX`). A read near the end of that claimed
    /// length overflowed the file offset (a panic with overflow checks; without them it
    /// wrapped around into the header, write enabler included), and an update tried to
    /// grow the copy to the claimed length.
    #[tokio::test]
    async fn a_length_field_past_the_end_of_the_file_reads_only_the_file() {
        let d = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(d.path())).unwrap();
        let si = [9u8; 16];
        let bucket = bucket_dir(&d.path().join("shares"), &si);
        fs::create_dir_all(&bucket).unwrap();
        let we = [0x42; 32];
        for claimed in [u64::MAX, u64::MAX - 3, 1000] {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&we);
            file.extend_from_slice(&claimed.to_be_bytes());
            file.extend_from_slice(b"data");
            fs::write(bucket.join("0"), &file).unwrap();
            let readv = vec![(0, 10), (u64::MAX - 8, 8), (u64::MAX - 71, 32), (2, 8)];
            let reads = storage.slot_readv(si, vec![], readv).await.unwrap();
            let want = [&b"data"[..], b"", b"", b"ta"].map(|b| Bytes(b.to_vec()));
            assert_eq!(reads[&0], want, "a length field of {claimed}");

            // An update copies what the file holds and leaves a well-formed container.
            let tw = TestWriteVectors {
                test: Vec::new(),
                write: vec![(2, Bytes(b"TA!".to_vec()))],
                new_length: None,
            };
            let secrets = (we, [1; 32], [2; 32]);
            let tw = BTreeMap::from([(0, tw)]);
            let (passed, _) = storage
                .slot_testv_and_readv_and_writev(si, secrets, tw, Vec::new())
                .await
                .unwrap();
            assert!(passed);
            let after = fs::read(bucket.join("0")).unwrap();
            assert_eq!(after[64..72], 5u64.to_be_bytes());
            assert_eq!(&after[72..], b"daTA!");
        }
    }
}
