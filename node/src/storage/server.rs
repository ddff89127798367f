//! The [`Storage`] server: its shared state, and the [`StorageServer`] methods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use folio_rpc::{Bytes, TubId};
use tracing::{debug, info, warn};

use super::quota::{Charge, Quotas};
use super::{
    blocking, disk, immutable, lease, lock, mutable, si_b32, BucketReaderRef, BucketWriterRef,
    CanaryRef, LeaseSecret, StorageConfig, StorageError, StorageIndex, StorageServer,
    StorageServerRef, StorageServerServer, StorageVersion, TestWriteVectors, WriteEnabler,
    MAX_ADVISORY_LOG, MAX_CHUNK, MAX_REASON_LEN, MAX_SHNUM, MAX_VECTORS,
};

/// A storage server over one directory. Cheap to clone; implements [`StorageServer`].
///
/// Calls made on a `Storage` directly are this process's own and have no client quota;
/// [`Storage::serve`] gives each remote call a view charged to its caller
/// ([`Storage::as_client`]).
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
    /// Whom this view's calls are charged to (see `quota.rs`).
    client: Option<TubId>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("dir", &self.inner.config.dir)
            .finish_non_exhaustive()
    }
}

/// The bytes promised to one upload in progress, and the client they are charged to.
pub(super) type Promise = (u64, Option<TubId>);

/// The state shared by the server, its writers and its readers.
pub(super) struct Inner {
    pub(super) config: StorageConfig,
    /// `<dir>/shares`.
    pub(super) shares: PathBuf,
    /// `<dir>/shares/incoming`.
    pub(super) incoming: PathBuf,
    /// `<dir>/corruption-advisories`.
    advisories: PathBuf,
    /// Uploads in progress, with the bytes promised to each and the client they are charged
    /// to. Also serializes creating and removing files and directories under `incoming/`.
    pub(super) active: Mutex<HashMap<(StorageIndex, u16), Promise>>,
    /// The space each client holds. Taken after `active` when both are.
    pub(super) quotas: Mutex<Quotas>,
    /// One lock per storage index with an operation in progress: allocation, close, slot
    /// updates and leases of one index happen one at a time.
    si_locks: Mutex<HashMap<StorageIndex, Arc<tokio::sync::Mutex<()>>>>,
    advisory_log: Mutex<()>,
}

/// Holds one storage index's lock; removes the map entry when nobody else wants it.
pub(super) struct SiGuard {
    inner: Arc<Inner>,
    si: StorageIndex,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for SiGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = lock(&self.inner.si_locks);
        // The map's reference and ours: nobody waits.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.si);
        }
    }
}

impl Inner {
    pub(super) async fn lock_si(self: &Arc<Self>, si: StorageIndex) -> SiGuard {
        let m = lock(&self.si_locks).entry(si).or_default().clone();
        let guard = m.clone().lock_owned().await;
        SiGuard {
            inner: self.clone(),
            si,
            lock: m,
            guard: Some(guard),
        }
    }

    /// Free space above the reserve, if `statvfs` works.
    pub(super) fn available_space(&self) -> Option<u64> {
        disk::disk_available(&self.shares).map(|a| a.saturating_sub(self.config.reserved_space))
    }

    /// Bytes that new shares may take: free space above the reserve, less `promised` to
    /// uploads in progress. Zero when read-only. Without `statvfs`, unlimited unless a
    /// reserve is configured.
    pub(super) fn space_for_new_shares(&self, promised: u64) -> u64 {
        if self.config.readonly {
            return 0;
        }
        match self.available_space() {
            Some(a) => a.saturating_sub(promised),
            None if self.config.reserved_space == 0 => u64::MAX,
            None => 0,
        }
    }

    /// Ends an upload's bookkeeping: optionally removes its incoming file, forgets it, and
    /// removes its incoming directories if they are empty.
    pub(super) fn forget_upload(
        &self,
        si: &StorageIndex,
        shnum: u16,
        incoming: &Path,
        remove: bool,
    ) {
        let mut active = lock(&self.active);
        if remove {
            if let Err(e) = disk::remove_if_present(incoming) {
                warn!(path = %incoming.display(), error = %e, "cannot remove an incoming share");
            }
        }
        if let Some((promised, client)) = active.remove(&(*si, shnum)) {
            lock(&self.quotas).give_back(client, promised, Charge::Promise);
        }
        if let Some(bucket) = incoming.parent() {
            if std::fs::remove_dir(bucket).is_ok() {
                if let Some(prefix) = bucket.parent() {
                    let _ = std::fs::remove_dir(prefix);
                }
            }
        }
    }

    fn record_advisory(&self, line: &str) -> io::Result<()> {
        let _g = lock(&self.advisory_log);
        let path = self.advisories.join("advisories.log");
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len >= MAX_ADVISORY_LOG {
            warn!("the corruption advisory log is full; advice not recorded");
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }
}

impl Storage {
    /// Opens (creating if needed) the storage directory, and removes every upload a crash
    /// or an earlier run left unfinished in `shares/incoming/`. Blocking filesystem work.
    pub fn open(config: StorageConfig) -> io::Result<Storage> {
        let shares = config.dir.join("shares");
        let incoming = shares.join("incoming");
        let advisories = config.dir.join("corruption-advisories");
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", config.dir.display()))
        };
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)
                .map_err(|e| ctx("cannot clear incoming uploads in", e))?;
            info!(dir = %config.dir.display(), "removed unfinished uploads");
        }
        for d in [&shares, &incoming, &advisories] {
            std::fs::create_dir_all(d)
                .map_err(|e| ctx("cannot create the storage layout in", e))?;
        }
        disk::sync_dir(&shares).map_err(|e| ctx("cannot sync", e))?;
        info!(dir = %config.dir.display(), reserved_space = config.reserved_space, "storage opened");
        let quotas = Mutex::new(Quotas::new(config.max_space_per_client));
        Ok(Storage {
            client: None,
            inner: Arc::new(Inner {
                config,
                shares,
                incoming,
                advisories,
                active: Mutex::new(HashMap::new()),
                quotas,
                si_locks: Mutex::new(HashMap::new()),
                advisory_log: Mutex::new(()),
            }),
        })
    }

    /// A reference to this server, to register on a Tub. Each call it serves runs on
    /// [`Storage::as_client`] of the peer it came from, so that the space it takes is charged
    /// to that client ([`StorageConfig::max_space_per_client`]).
    pub fn serve(&self) -> StorageServerRef {
        let inner = self.inner.clone();
        folio_rpc::serve_per_call(move |ctx| {
            Arc::new(StorageServerServer(Storage {
                inner: inner.clone(),
                client: ctx.peer(),
            }))
        })
    }

    /// This server as seen by `client`: the space its calls take is charged to it.
    pub fn as_client(&self, client: TubId) -> Storage {
        Storage {
            inner: self.inner.clone(),
            client: Some(client),
        }
    }

    /// The bytes `client` holds against its quota: promised to its unfinished uploads, plus
    /// the growth of the slots it wrote.
    pub fn client_usage(&self, client: &TubId) -> u64 {
        lock(&self.inner.quotas).held(client)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// Free space above the reserve, if the filesystem says.
    pub fn available_space(&self) -> Option<u64> {
        self.inner.available_space()
    }

    /// Uploads in progress.
    pub fn uploads_in_progress(&self) -> usize {
        lock(&self.inner.active).len()
    }
}

fn check_shnum(n: u16) -> Result<(), StorageError> {
    if n > MAX_SHNUM {
        Err(StorageError::BadShareNumber(n))
    } else {
        Ok(())
    }
}

fn check_count(what: &str, n: usize) -> Result<(), StorageError> {
    if n > MAX_VECTORS {
        return Err(StorageError::LimitExceeded {
            what: what.to_string(),
            maximum: MAX_VECTORS as u64,
        });
    }
    Ok(())
}

/// A read vector's entries each fit in one call (the total is checked against the shares).
fn check_read_vector(readv: &[(u64, u64)]) -> Result<(), StorageError> {
    check_count("read vector entries", readv.len())?;
    match readv.iter().map(|&(_, l)| l).find(|&l| l > MAX_CHUNK) {
        Some(l) => Err(StorageError::ReadTooLarge {
            requested: l,
            maximum: MAX_CHUNK,
        }),
        None => Ok(()),
    }
}

impl Storage {
    /// `allocate_buckets` and `allocate_share`: checks the request, allocates under the
    /// storage index's lock, and has the writers abort when the canary's connection is
    /// lost.
    async fn allocate(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        sharenums: BTreeSet<u16>,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<immutable::Allocation, StorageError> {
        for &n in &sharenums {
            check_shnum(n)?;
        }
        let maximum = self.inner.config.max_immutable_share_size;
        if allocated_size > maximum {
            return Err(StorageError::TooLarge {
                requested: allocated_size,
                maximum,
            });
        }
        let si = si_b32(&storage_index);
        let _guard = self.inner.lock_si(storage_index).await;
        let inner = self.inner.clone();
        let lease = lease::Lease::new(renew_secret, cancel_secret, inner.config.lease_duration);
        let watched = canary.clone();
        let requested = sharenums.len();
        let client = self.client;
        let alloc = blocking(move || {
            immutable::allocate(
                &inner,
                storage_index,
                lease,
                &sharenums,
                allocated_size,
                &canary,
                client,
            )
        })
        .await?;
        let weak: Vec<Weak<immutable::WriterShared>> = alloc
            .writers
            .values()
            .map(|w| Arc::downgrade(&w.0))
            .collect();
        if !weak.is_empty() {
            watched.object_ref().on_disconnect(move |why| {
                for w in weak.iter().filter_map(Weak::upgrade) {
                    w.abort(&format!("the uploader's connection was lost: {why}"));
                }
            });
        }
        info!(
            si = %si,
            allocated_size,
            requested,
            already_have = alloc.already_have.len(),
            allocated = alloc.writers.len(),
            "allocate"
        );
        Ok(alloc)
    }
}

impl StorageServer for Storage {
    async fn get_version(&self) -> Result<StorageVersion, StorageError> {
        let inner = self.inner.clone();
        let available = blocking(move || Ok(inner.available_space())).await?;
        let config = &self.inner.config;
        let max_imm = match available {
            _ if config.readonly => 0,
            Some(a) => a.min(config.max_immutable_share_size),
            None => config.max_immutable_share_size,
        };
        Ok(StorageVersion {
            maximum_immutable_share_size: max_imm,
            maximum_mutable_share_size: self.inner.config.max_mutable_share_size,
            available_space: available,
            max_read_per_call: MAX_CHUNK,
            max_write_per_call: MAX_CHUNK,
            max_vectors_per_call: MAX_VECTORS as u32,
            application_version: format!("folio-node/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    async fn allocate_buckets(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        sharenums: BTreeSet<u16>,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<(BTreeSet<u16>, BTreeMap<u16, BucketWriterRef>), StorageError> {
        let alloc = self
            .allocate(
                storage_index,
                renew_secret,
                cancel_secret,
                sharenums,
                allocated_size,
                canary,
            )
            .await?;
        let writers = alloc
            .writers
            .into_iter()
            .map(|(n, w)| (n, BucketWriterRef::serve(w)))
            .collect();
        Ok((alloc.already_have, writers))
    }

    async fn add_lease(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
    ) -> Result<(), StorageError> {
        let _guard = self.inner.lock_si(storage_index).await;
        let inner = self.inner.clone();
        blocking(move || {
            let lease = lease::Lease::new(renew_secret, cancel_secret, inner.config.lease_duration);
            let dir = disk::bucket_dir(&inner.shares, &storage_index);
            let shares =
                disk::list_shares(&dir).map_err(|e| StorageError::io("listing a bucket", &e))?;
            for &shnum in shares.keys() {
                lease::add_or_renew(&dir, shnum, &lease)?;
            }
            debug!(si = %si_b32(&storage_index), shares = shares.len(), "add_lease");
            Ok(())
        })
        .await
    }

    async fn get_buckets(
        &self,
        storage_index: StorageIndex,
    ) -> Result<BTreeMap<u16, BucketReaderRef>, StorageError> {
        let inner = self.inner.clone();
        let readers = blocking(move || immutable::readers(&inner, &storage_index)).await?;
        debug!(si = %si_b32(&storage_index), shares = readers.len(), "get_buckets");
        Ok(readers
            .into_iter()
            .map(|(n, r)| (n, BucketReaderRef::serve(r)))
            .collect())
    }

    async fn advise_corrupt_share(
        &self,
        share_type: String,
        storage_index: StorageIndex,
        shnum: u16,
        reason: String,
    ) -> Result<(), StorageError> {
        if share_type != "immutable" && share_type != "mutable" {
            return Err(StorageError::BadShareType);
        }
        check_shnum(shnum)?;
        let reason: String = reason.chars().take(MAX_REASON_LEN).collect();
        let reason = reason.escape_debug().to_string();
        let si = si_b32(&storage_index);
        warn!(share_type = %share_type, si = %si, shnum, reason = %reason, "client advises a corrupt share");
        let line = format!("{} {share_type} {si} {shnum} {reason}\n", disk::now_secs());
        let inner = self.inner.clone();
        blocking(move || {
            inner
                .record_advisory(&line)
                .map_err(|e| StorageError::io("recording the advice", &e))
        })
        .await
    }

    async fn slot_readv(
        &self,
        storage_index: StorageIndex,
        shares: Vec<u16>,
        readv: Vec<(u64, u64)>,
    ) -> Result<BTreeMap<u16, Vec<Bytes>>, StorageError> {
        check_count("share numbers", shares.len())?;
        for &n in &shares {
            check_shnum(n)?;
        }
        check_read_vector(&readv)?;
        let inner = self.inner.clone();
        blocking(move || {
            mutable::readv(
                &inner,
                &storage_index,
                &shares.into_iter().collect(),
                &readv,
            )
        })
        .await
    }

    async fn slot_testv_and_readv_and_writev(
        &self,
        storage_index: StorageIndex,
        secrets: (WriteEnabler, LeaseSecret, LeaseSecret),
        tw_vectors: BTreeMap<u16, TestWriteVectors>,
        read_vector: Vec<(u64, u64)>,
    ) -> Result<(bool, BTreeMap<u16, Vec<Bytes>>), StorageError> {
        check_read_vector(&read_vector)?;
        let (mut carried, mut tested) = (0u64, 0u64);
        for (&n, tw) in &tw_vectors {
            check_shnum(n)?;
            check_count("test vector entries", tw.test.len())?;
            check_count("write vector entries", tw.write.len())?;
            for t in &tw.test {
                tested = tested.saturating_add(t.length);
                carried = carried.saturating_add(t.specimen.len() as u64);
            }
            for (_, d) in &tw.write {
                carried = carried.saturating_add(d.len() as u64);
            }
        }
        if tested > MAX_CHUNK {
            return Err(StorageError::ReadTooLarge {
                requested: tested,
                maximum: MAX_CHUNK,
            });
        }
        if carried > MAX_CHUNK {
            return Err(StorageError::WriteTooLarge {
                requested: carried,
                maximum: MAX_CHUNK,
            });
        }
        let writes = tw_vectors
            .values()
            .any(|tw| !tw.write.is_empty() || tw.new_length.is_some());
        if writes && self.inner.config.readonly {
            return Err(StorageError::ReadOnly);
        }
        let (write_enabler, renew, cancel) = secrets;
        let _guard = self.inner.lock_si(storage_index).await;
        let inner = self.inner.clone();
        let client = self.client;
        blocking(move || {
            let lease = lease::Lease::new(renew, cancel, inner.config.lease_duration);
            mutable::testv_and_readv_and_writev(
                &inner,
                &storage_index,
                &write_enabler,
                &lease,
                &tw_vectors,
                &read_vector,
                client,
            )
        })
        .await
    }

    async fn allocate_share(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        shnum: u16,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<BucketWriterRef, StorageError> {
        let mut alloc = self
            .allocate(
                storage_index,
                renew_secret,
                cancel_secret,
                BTreeSet::from([shnum]),
                allocated_size,
                canary,
            )
            .await?;
        if let Some(w) = alloc.writers.remove(&shnum) {
            return Ok(BucketWriterRef::serve(w));
        }
        if alloc.already_have.contains(&shnum) {
            return Err(StorageError::AlreadyHave { shnum });
        }
        Err(match alloc.skipped.get(&shnum) {
            Some(immutable::Skipped::Uploading) => StorageError::UploadInProgress { shnum },
            _ if self.inner.config.readonly => StorageError::ReadOnly,
            _ => StorageError::NoSpace,
        })
    }
}
