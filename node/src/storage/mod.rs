//! The storage server: immutable shares and mutable slots, over Folio interfaces.
//!
//! The semantics are those of Tahoe-LAFS's `RIStorageServer`: a client asks for *buckets*
//! ([`StorageServer::allocate_buckets`]), uploads each share through a [`BucketWriterRef`]
//! in chunks and closes it; anyone who knows the storage index reads shares back through
//! [`BucketReaderRef`]s ([`StorageServer::get_buckets`]). Mutable *slots* are updated with
//! test-and-set vectors under a write enabler
//! ([`StorageServer::slot_testv_and_readv_and_writev`]) and read with
//! [`StorageServer::slot_readv`].
//!
//! ```no_run
//! # async fn example(tub: folio_rpc::Tub) -> anyhow::Result<()> {
//! use folio_node::storage::{Storage, StorageConfig};
//! let storage = Storage::open(StorageConfig::new("/var/lib/tahoe/storage"))?;
//! let furl = tub.register_as(storage.serve(), "storage")?;
//! # Ok(()) }
//! ```
//!
//! ## Rules
//!
//! - Share numbers are 0 to 255 ([`MAX_SHNUM`]); others are refused
//!   ([`StorageError::BadShareNumber`]).
//! - A share that already exists is reported in `already_have` and not allocated; one that
//!   another allocation is uploading is neither reported nor allocated; one that would bring
//!   the free space (`statvfs`: `f_bavail * f_frsize`, less the space promised to uploads in
//!   progress) below [`StorageConfig::reserved_space`] is not allocated either. Shares left
//!   out are simply absent from the map of writers, as in Tahoe.
//! - **Client quota.** A client is the peer TubId of the connection a call arrives on. It may
//!   hold at most [`StorageConfig::max_space_per_client`] bytes at once: the sizes (plus
//!   headers) of its unfinished uploads, given back at close or abort, plus what its slot
//!   writes grew slots by, given back as its writes shrink or delete shares. An allocation or
//!   a slot write that would pass it is refused as a whole
//!   ([`StorageError::QuotaExceeded`]). TubIds cost nothing, so this bounds one connection's
//!   share, not one person's; the total is bounded by the free space above the reserve.
//!   Calls made in-process on a [`Storage`] are not charged.
//! - A write past the allocated size is refused ([`StorageError::WritePastEnd`]). Writes may
//!   overlap bytes already written only with the same bytes
//!   ([`StorageError::ConflictingWrite`] otherwise; nothing is written).
//! - `close()` **refuses a share with holes** ([`StorageError::Incomplete`]): every byte of
//!   the allocated size must have been written. The writer stays open; write the rest, or
//!   abort. (Tahoe accepts holes and reads them as zeros; a share with holes is corrupt, so
//!   it is not published here.)
//! - After `close()` or `abort()`, writes are refused ([`StorageError::AlreadyClosed`]).
//! - Calls to one bucket writer take effect in **arrival order** (each waits its turn on the
//!   writer's fair lock before doing anything), so writes and `close()` may be sent in one
//!   flight without waiting for answers.
//! - [`StorageServer::allocate_share`] allocates one share and types every refusal
//!   ([`StorageError::AlreadyHave`], [`StorageError::UploadInProgress`],
//!   [`StorageError::NoSpace`], ...), so that writes pipelined on its promised writer can
//!   only reach the share they were meant for.
//! - An upload that is not closed is aborted — its incoming file removed — when the uploader
//!   aborts it, when the server-side writer is dropped (the client released its
//!   reference, or its connection closed), or when the connection of the allocation's
//!   [`CanaryRef`] is lost. [`Storage::open`] removes whatever a crash left in `incoming/`.
//! - Each call moves at most [`MAX_CHUNK`] bytes of data (512 KiB: a Folio frame is at most
//!   1 MiB): per `write`, per `read`, per `slot_readv` answer (all shares together) and per
//!   `slot_testv_and_readv_and_writev` (test specimens plus written data; reads separately).
//!   Vectors hold at most [`MAX_VECTORS`] entries. Bigger requests are refused, not cut.
//! - Mutable updates follow Tahoe: the write enabler is checked against every existing share
//!   of the slot first ([`StorageError::BadWriteEnabler`]); then every test vector of every
//!   share is evaluated (equality; a missing share reads as empty); then the read vector is
//!   applied to **every** existing share (the answer comes back whether or not the tests
//!   passed); only if all tests passed are the writes applied, in order, after which
//!   `new_length` cuts the data (it only shrinks; `Some(0)` deletes the share). Leases are
//!   added or renewed on the shares written.
//! - `add_lease` adds a lease to (or renews the lease with the same renew secret on) every
//!   share of the storage index; an index without shares is not an error. Leases run
//!   [`StorageConfig::lease_duration`] (31 days); at most [`MAX_LEASES_PER_SHARE`] per share.
//!   Nothing expires leases yet (no garbage collector).
//!
//! ## On disk
//!
//! Under [`StorageConfig::dir`]:
//!
//! ```text
//! shares/<p>/<si>/<shnum>          a finished immutable share, or a mutable slot's share
//! shares/<p>/<si>/<shnum>.leases   the share's leases (JSON)
//! shares/<p>/<si>/<shnum>.tmp      a mutable share being replaced (ignored when listing)
//! shares/incoming/<p>/<si>/<shnum> an immutable share being uploaded
//! corruption-advisories/advisories.log   one line per advice received
//! ```
//!
//! `<si>` is the 16-byte storage index in RFC 4648 base32, lowercase, without padding
//! (26 characters of `a-z2-7`), `<p>` its first two characters, `<shnum>` the share number
//! in decimal without leading zeros. These are the only path components derived from
//! anything a client sends.
//!
//! **Immutable share file**: 32 bytes of magic (`"folio immutable share v1\n"` padded with
//! zero bytes), the data length as a big-endian u64, then the data (40-byte header). The
//! upload is written in place under `incoming/`; `close()` fsyncs it, writes the lease file,
//! renames it into `shares/<p>/<si>/`, and fsyncs that directory and its parent. A share is
//! visible to `get_buckets` only once renamed.
//!
//! **Mutable container**: 32 bytes of magic (`"folio mutable slot v1\n"` padded with zero
//! bytes), the 32-byte write enabler, the data length as a big-endian u64, then the data
//! (72-byte header; the file ends where the data does). Every update writes a complete new
//! container to `<shnum>.tmp`, fsyncs it and renames it over the old one, then fsyncs the
//! directory: a crash leaves the old container or the new one.
//!
//! In both kinds of share file the length field is believed only as far as the file goes: a
//! truncated or corrupt file whose header claims more holds just the bytes it has.
//!
//! **Lease file** (`<shnum>.leases`, replaced the same way):
//! `{"version": 1, "leases": [{"renew_secret": "<64 hex>", "cancel_secret": "<64 hex>",
//! "expires_at": <unix seconds>}, ...]}`.
//!
//! **Corruption advisories**: `<unix seconds> <immutable|mutable> <si> <shnum> <reason>`,
//! the reason cut to [`MAX_REASON_LEN`] characters and escaped onto one line. The file stops
//! growing at [`MAX_ADVISORY_LOG`] bytes (later advice is still logged through `tracing`).
//!
//! One process at a time may serve a storage directory.

mod disk;
mod immutable;
mod lease;
mod mutable;
mod quota;
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use folio_rpc::{interface, Bytes};
use serde::{Deserialize, Serialize};

pub use disk::si_b32;
pub use quota::MAX_TRACKED_CLIENTS;
use server::Inner;
pub use server::Storage;

/// A storage index: names the shares of one file (immutable) or one slot (mutable).
pub type StorageIndex = [u8; 16];
/// A lease's renew or cancel secret.
pub type LeaseSecret = [u8; 32];
/// The secret that allows writing to a mutable slot.
pub type WriteEnabler = [u8; 32];

/// The highest share number.
pub const MAX_SHNUM: u16 = 255;
/// The most data bytes one call reads or writes (a Folio frame is at most 1 MiB).
pub const MAX_CHUNK: u64 = 512 * 1024;
/// The most entries in one read, test or write vector.
pub const MAX_VECTORS: usize = 256;
/// The longest corruption reason recorded, in characters.
pub const MAX_REASON_LEN: usize = 1024;
/// The most leases one share holds.
pub const MAX_LEASES_PER_SHARE: usize = 64;
/// The size at which the corruption advisory log stops growing.
pub const MAX_ADVISORY_LOG: u64 = 16 * 1024 * 1024;
/// The most separate written ranges an upload may have at once (its writes, once merged).
pub const MAX_WRITTEN_RANGES: usize = 4096;
/// The default [`StorageConfig::max_space_per_client`]: 64 GiB.
pub const DEFAULT_SPACE_PER_CLIENT: u64 = 64 << 30;

/// What a storage server says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageVersion {
    /// The largest immutable share it would allocate now (the configured maximum, or less
    /// when the disk is fuller).
    pub maximum_immutable_share_size: u64,
    /// The largest mutable share it keeps.
    pub maximum_mutable_share_size: u64,
    /// Free space above the reserve, if the server can tell.
    pub available_space: Option<u64>,
    /// The most bytes one `read` or `slot_readv` returns.
    pub max_read_per_call: u64,
    /// The most bytes one `write` or `slot_testv_and_readv_and_writev` carries.
    pub max_write_per_call: u64,
    /// The most entries in one read, test or write vector.
    pub max_vectors_per_call: u32,
    /// The software (`folio-node/0.1.0`).
    pub application_version: String,
}

/// One equality test of a mutable share's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestVector {
    /// Where the compared bytes start.
    pub offset: u64,
    /// How many bytes to read (fewer at the end of the data; a missing share reads as empty).
    pub length: u64,
    /// What those bytes must equal.
    pub specimen: Bytes,
}

/// The tests and writes for one share of a slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestWriteVectors {
    /// All must pass (for every share of the call) before anything is written.
    pub test: Vec<TestVector>,
    /// `(offset, data)`, applied in order; a gap past the end reads as zeros.
    pub write: Vec<(u64, Bytes)>,
    /// Cuts the data to this length after the writes (only shrinks); `Some(0)` deletes the
    /// share.
    pub new_length: Option<u64>,
}

/// Why a storage operation was refused. Never carries a server path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StorageError {
    /// The write would end past the allocated size.
    #[error("a write of {length} bytes at offset {offset} ends past the allocated size {allocated_size}")]
    WritePastEnd {
        /// Where the write started.
        offset: u64,
        /// Its length.
        length: u64,
        /// The bucket's allocated size.
        allocated_size: u64,
    },
    /// The write overlaps bytes already written with different bytes.
    #[error("the write differs from bytes already written at offset {offset}")]
    ConflictingWrite {
        /// The first offset of the overlap that differs.
        offset: u64,
    },
    /// The bucket was closed or aborted.
    #[error("the bucket is already closed or aborted")]
    AlreadyClosed,
    /// `close()` with bytes never written.
    #[error("{missing} bytes of the share were never written")]
    Incomplete {
        /// Bytes of the allocated size not yet written.
        missing: u64,
    },
    /// The write enabler does not match the slot's.
    #[error("wrong write enabler for this slot")]
    BadWriteEnabler,
    /// The share would be larger than this server keeps.
    #[error("a share of {requested} bytes exceeds the maximum of {maximum}")]
    TooLarge {
        /// The size asked for.
        requested: u64,
        /// The largest allowed.
        maximum: u64,
    },
    /// Not enough space left above the reserve.
    #[error("not enough space on the storage server")]
    NoSpace,
    /// A share number above [`MAX_SHNUM`].
    #[error("share number {0} is out of range (0 to 255)")]
    BadShareNumber(u16),
    /// A read larger than [`MAX_CHUNK`] per call.
    #[error("a read of {requested} bytes exceeds the limit of {maximum} per call")]
    ReadTooLarge {
        /// Bytes asked for.
        requested: u64,
        /// The limit.
        maximum: u64,
    },
    /// A write larger than [`MAX_CHUNK`] per call.
    #[error("a write of {requested} bytes exceeds the limit of {maximum} per call")]
    WriteTooLarge {
        /// Bytes sent.
        requested: u64,
        /// The limit.
        maximum: u64,
    },
    /// Some other per-call bound was exceeded.
    #[error("too many {what} (at most {maximum})")]
    LimitExceeded {
        /// What there were too many of.
        what: String,
        /// The limit.
        maximum: u64,
    },
    /// The share number holds (or is uploading) a share of the other type.
    #[error("share {shnum} of this storage index is of the other share type")]
    ShareTypeConflict {
        /// The share.
        shnum: u16,
    },
    /// The share appeared while it was being uploaded.
    #[error("share {shnum} already exists")]
    ShareExists {
        /// The share.
        shnum: u16,
    },
    /// `advise_corrupt_share` takes `"immutable"` or `"mutable"`.
    #[error("the share type must be \"immutable\" or \"mutable\"")]
    BadShareType,
    /// The share already has the most leases it may hold.
    #[error("the share already holds {maximum} leases")]
    TooManyLeases {
        /// The limit.
        maximum: u32,
    },
    /// The server is configured read-only.
    #[error("this storage server accepts no writes")]
    ReadOnly,
    /// The server's filesystem failed (the detail is in the server's log).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// The calling client already holds so much space (promised to its unfinished uploads,
    /// plus what its slot writes grew) that this request would pass its quota
    /// ([`StorageConfig::max_space_per_client`]). Nothing was allocated or written.
    #[error(
        "client quota: this client holds {held} bytes, and {requested} more would pass its \
         limit of {maximum} bytes; finish or abort uploads first"
    )]
    QuotaExceeded {
        /// Bytes the client holds.
        held: u64,
        /// Bytes the refused request needed.
        requested: u64,
        /// The quota.
        maximum: u64,
    },
    /// `allocate_share`: the server already holds this finished share (the lease was
    /// added or renewed on it). Nothing was allocated.
    #[error("share {shnum} is already stored here")]
    AlreadyHave {
        /// The share.
        shnum: u16,
    },
    /// `allocate_share`: another allocation is uploading this share now. Nothing was
    /// allocated.
    #[error("share {shnum} is being uploaded by another allocation")]
    UploadInProgress {
        /// The share.
        shnum: u16,
    },
}

impl StorageError {
    /// An I/O failure during `what`. `io::Error`'s text names no path.
    fn io(what: &str, e: &io::Error) -> Self {
        StorageError::Io(format!("{what}: {e}"))
    }
}

/// The server side of Tahoe's `RIStorageServer`.
#[interface(name = "folio.storage.v1")]
pub trait StorageServer {
    /// Limits and free space.
    async fn get_version(&self) -> Result<StorageVersion, StorageError>;

    /// Asks for buckets to upload the shares `sharenums` of `storage_index`, each exactly
    /// `allocated_size` bytes. Returns the shares the server already has, and a writer per
    /// share allocated (shares neither returned nor allocated: uploading elsewhere, or no
    /// room). The lease is added to the existing shares and, at `close()`, to the new ones.
    /// The server watches `canary`: when its connection is lost, unclosed writers abort.
    async fn allocate_buckets(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        sharenums: BTreeSet<u16>,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<(BTreeSet<u16>, BTreeMap<u16, BucketWriterRef>), StorageError>;

    /// Adds a lease to every share of `storage_index`, or renews the one with this renew
    /// secret.
    async fn add_lease(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
    ) -> Result<(), StorageError>;

    /// Readers for the finished immutable shares of `storage_index`.
    async fn get_buckets(
        &self,
        storage_index: StorageIndex,
    ) -> Result<BTreeMap<u16, BucketReaderRef>, StorageError>;

    /// Tells the server that a share looks corrupt (`share_type`: `"immutable"` or
    /// `"mutable"`). Logged and recorded; nothing is deleted.
    async fn advise_corrupt_share(
        &self,
        share_type: String,
        storage_index: StorageIndex,
        shnum: u16,
        reason: String,
    ) -> Result<(), StorageError>;

    /// Reads `readv` (`(offset, length)` pairs) from the listed shares of a slot (every share
    /// when `shares` is empty). Missing shares are absent from the answer.
    async fn slot_readv(
        &self,
        storage_index: StorageIndex,
        shares: Vec<u16>,
        readv: Vec<(u64, u64)>,
    ) -> Result<BTreeMap<u16, Vec<Bytes>>, StorageError>;

    /// Test-and-set on a slot: `secrets` are `(write enabler, renew secret, cancel secret)`.
    /// Returns whether the tests passed (and the writes were applied), and `read_vector` as
    /// read from every existing share *before* any write.
    async fn slot_testv_and_readv_and_writev(
        &self,
        storage_index: StorageIndex,
        secrets: (WriteEnabler, LeaseSecret, LeaseSecret),
        tw_vectors: BTreeMap<u16, TestWriteVectors>,
        read_vector: Vec<(u64, u64)>,
    ) -> Result<(bool, BTreeMap<u16, Vec<Bytes>>), StorageError>;

    /// Asks for a bucket to upload the one share `shnum` of `storage_index`, exactly
    /// `allocated_size` bytes: [`StorageServer::allocate_buckets`] for one share, with every
    /// outcome but success typed as an error. Because the answer *is* the writer of that
    /// share or an error, never another share's writer, a client may send writes and
    /// `close()` on the promised writer in the same flight (promise pipelining): they reach
    /// share `shnum` or fail with the allocation. Refusals: [`StorageError::AlreadyHave`] (the
    /// lease was added to it, as `allocate_buckets` does), [`StorageError::UploadInProgress`],
    /// [`StorageError::NoSpace`], [`StorageError::ReadOnly`],
    /// [`StorageError::QuotaExceeded`], [`StorageError::TooLarge`],
    /// [`StorageError::BadShareNumber`]. Added after `allocate_buckets`: a server without it
    /// refuses the call as an unknown method, and clients fall back to `allocate_buckets`.
    async fn allocate_share(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        shnum: u16,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<BucketWriterRef, StorageError>;
}

/// Uploads one immutable share.
///
/// Calls to one writer take effect in the order they arrive: a client may send its writes
/// and `close()` (or `abort()`) without waiting for any answer, and the close sees every
/// write sent before it. (A `close()` that finds bytes missing is refused with
/// [`StorageError::Incomplete`] and the writer stays open, so even a server that ran them
/// out of order never publishes a share with holes.)
#[interface(name = "folio.storage.bucket-writer.v1")]
pub trait BucketWriter {
    /// Writes `data` (at most [`MAX_CHUNK`] bytes) at `offset`.
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), StorageError>;
    /// Finishes the share and makes it visible.
    async fn close(&self) -> Result<(), StorageError>;
    /// Abandons the upload.
    async fn abort(&self) -> Result<(), StorageError>;
}

/// Reads one finished immutable share.
#[interface(name = "folio.storage.bucket-reader.v1")]
pub trait BucketReader {
    /// Up to `length` bytes (at most [`MAX_CHUNK`]) at `offset`; fewer at the end.
    async fn read(&self, offset: u64, length: u64) -> Result<Bytes, StorageError>;
    /// The share's length.
    async fn size(&self) -> Result<u64, StorageError>;
}

/// Held by an uploading client; the server watches its connection.
#[interface(name = "folio.storage.canary.v1")]
pub trait Canary {
    /// Does nothing.
    async fn ping(&self) -> Result<(), StorageError>;
}

/// A [`Canary`] that does nothing but exist: pass `CanaryRef::serve(NullCanary)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullCanary;

impl Canary for NullCanary {
    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Where and how a storage server keeps its shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The storage directory (`<node>/storage`).
    pub dir: PathBuf,
    /// Free space to leave on the disk: shares that would eat into it are not allocated.
    pub reserved_space: u64,
    /// The largest immutable share accepted.
    pub max_immutable_share_size: u64,
    /// The largest mutable share accepted.
    pub max_mutable_share_size: u64,
    /// How long a lease runs from when it is added or renewed.
    pub lease_duration: Duration,
    /// Accept no new shares and no slot writes (reads, leases and advice still work).
    pub readonly: bool,
    /// The most space one client (the peer TubId of a connection) may hold at once: bytes
    /// promised to its unfinished uploads plus the growth of the slots it wrote. Going past
    /// it gives [`StorageError::QuotaExceeded`]. `[storage] max_space_per_client` in
    /// tahoe.cfg.
    pub max_space_per_client: u64,
}

impl StorageConfig {
    /// Defaults: no reserve, immutable shares up to 1 TiB, mutable ones up to Tahoe's
    /// 69,105,000 bytes, 31-day leases, writable, [`DEFAULT_SPACE_PER_CLIENT`] per client.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            dir: dir.into(),
            reserved_space: 0,
            max_immutable_share_size: 1 << 40,
            max_mutable_share_size: 69_105_000,
            lease_duration: Duration::from_secs(31 * 24 * 3600),
            readonly: false,
            max_space_per_client: DEFAULT_SPACE_PER_CLIENT,
        }
    }
}

impl Default for StorageConfig {
    /// [`StorageConfig::new`] with the relative directory `storage`.
    fn default() -> Self {
        StorageConfig::new("storage")
    }
}

/// Locks a std mutex, ignoring poisoning (the state stays consistent at every unlock).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 32 bytes of magic: `text` padded with zero bytes.
const fn magic(text: &[u8]) -> [u8; 32] {
    let mut m = [0u8; 32];
    let mut i = 0;
    while i < text.len() {
        m[i] = text[i];
        i += 1;
    }
    m
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("a storage task failed: {e}"))))
}
