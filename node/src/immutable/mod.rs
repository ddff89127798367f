//! Immutable files on the grid: upload a file as erasure-coded, encrypted shares on storage
//! servers, and download it back, in the manner of Tahoe-LAFS's CHK files.
//!
//! ```no_run
//! # async fn example(node: &folio_node::broker::StorageBroker) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use folio_node::immutable::{download, upload, EncodingParams, FileSource, Progress};
//! let servers = node.connected();
//! let params = EncodingParams::new(3, 7, 10)?;
//! let (convergence, lease) = ([0u8; 32], [1u8; 32]); // from the node's private/ directory
//! let source = FileSource::open("photo.jpg")?;
//! let report = upload(&servers, &params, &convergence, &lease, source, Progress::new()).await?;
//! println!("{}", report.cap); // folio:CHK:...
//! let mut out = tokio::fs::File::create("copy.jpg").await?;
//! download(&servers, &report.cap, &mut out, Progress::new()).await?;
//! # Ok(()) }
//! ```
//!
//! # What happens
//!
//! **Upload** ([`upload`]) reads the source twice. The first pass hashes the plaintext; the
//! AES key derives from the node's convergence secret, the encoding parameters and that
//! hash (*convergent encryption*: the same file uploaded with the same secret and
//! parameters gets the same key, so the same storage index and the same cap). The storage
//! index derives from the key. Servers are put in the *permuted order* of the storage
//! index and asked for shares ([server selection](#server-selection)). The second pass
//! streams: per segment, read, encrypt, erasure-code into N blocks, hash the blocks, and
//! write them, with a bounded pipeline between the encoding thread and the writes. Then
//! the hash trees and the URI extension block (UEB) are written and every bucket closed.
//! A *small* file (one segment, shares of at most 512 KiB) is encoded in memory before
//! server selection instead, and each share is allocated, written and closed in one flight
//! ([round trips](#round-trips)).
//!
//! **Download** ([`download`]) asks every server for the storage index's shares and, in
//! the same flight, for the *head* of the first share each lists (its front — header, UEB,
//! root, chain — and, as far as one read carries, the blocks that follow: all of a small
//! share). It takes shares in preference order — distinct servers first, then the
//! *primary* shares `0..k` (which need no decoding) — reads the fronts it does not have
//! yet (all at once), and checks each against the cap. It then goes through the segments a
//! window at a time (up to 512 KiB of blocks per share, windows read ahead as far as the
//! server's window allows, and a small block hash tree read whole): it fetches the k
//! shares' blocks, verifies each against its share's block hash tree, decodes the window's
//! segments (in one erasure decode when a primary share is missing), decrypts, and writes
//! to the sink. A block that fails verification is reported to its server with
//! `advise_corrupt_share` and its share replaced by another; a server that fails loses all
//! its shares. At the end the ciphertext hash is checked.
//!
//! Encoding runs on two threads: one reads, hashes, encrypts and erasure-codes segments,
//! the other hashes blocks into the block trees and assembles writes; each share has a
//! writer task with a short queue, and as many writes in flight as its server's window
//! allows.
//!
//! Memory does not grow with the file: upload holds a handful of segments' blocks (each
//! segment's are `segment_size * N / k` bytes) in its bounded queues, a write buffer
//! (≤ 512 KiB) per share, at most [`WINDOW_BUDGET`] (8 MiB) of writes in flight per server,
//! and one pending node plus an 8 KiB buffer per block tree level per share; download holds
//! per share in use a read window (≤ 512 KiB) and its head, at most [`WINDOW_BUDGET`] of
//! reads ahead per server, the block tree when it is at most 512 KiB (else 8 KiB per tree
//! level), and a decoded window.
//!
//! # Round trips
//!
//! On Tor or I2P a round trip costs 0.3–3 s, so the transfers spend them only where an
//! answer is needed before anything else can be sent:
//!
//! - **Small upload: one round trip.** Per share, `allocate_share`, the write and the
//!   close go out in one flight, the write and the close pipelined on the promised writer
//!   (promise pipelining, `folio_rpc::promise`): `allocate_share` answers with that share's
//!   writer or a typed refusal, so a pipelined write can never land in another share, and
//!   the server runs a writer's calls in arrival order, so the close sees the write. All
//!   servers are asked at once. Refusals fall back: a share already there counts as placed
//!   ([`StorageError::AlreadyHave`](crate::storage::StorageError::AlreadyHave)); one
//!   refused goes to the servers that accepted, in another round. Because the closes leave
//!   before anyone knows how many servers accept, a small upload that ends below
//!   happiness leaves the shares it closed (complete and leased); a streamed upload leaves
//!   nothing.
//! - **Large upload: no round trip of its own before the writes.** Every share of the
//!   first round of server selection is asked for at once, and its writes follow on the
//!   promised writer at once, as many in flight per server as its window allows; each
//!   close goes right behind its share's last write. If every server of that round takes
//!   its share, that is the upload. If any does not (full, read-only, busy, already
//!   holding the share, failed, or from before `allocate_share`), its pipelined writes are
//!   refused, everything sent is aborted (no partial upload stays), and the upload starts
//!   again the ordinary way: rounds of allocations first, then the writes. So a refusal
//!   costs one round trip and the bytes sent meanwhile, and an upload of a file the
//!   servers already hold costs two round trips instead of one.
//! - **Download: one round trip** for a small file (the listing and the heads in one
//!   flight); for a large one, the same flight also asks each of the first k servers for
//!   its share's blocks, up to [`WINDOW_BUDGET`] (for the layout the default segment size
//!   gives), and the later reads follow as the windows allow.
//! - **Windows** ([`WINDOW_BUDGET`]): each server's bytes in flight are sized from the
//!   round trip and delivery rate measured on its link, to its bandwidth-delay product,
//!   starting as TCP's slow start does and bounded by the budget; on a LAN they stay at
//!   two 512 KiB calls per share, as before.
//! - A server from before `allocate_share` answers it with an unknown-method refusal; the
//!   upload then uses `allocate_buckets` for that share (one round trip more). A peer that
//!   does not speak protocol version 3 runs pipelined calls one round trip later.
//!
//! # Parameters
//!
//! k ([`EncodingParams::needed`]), happy and N come from `[client] shares.*`. The segment
//! size of a file of `size` bytes is the smaller of `size` rounded up to a multiple of k and
//! [`EncodingParams::max_segment_size`] (default 128 KiB) rounded *down* to a multiple of
//! `64 k` (but at least `64 k`); see [`EncodingParams::segment_size_for`]. Files of at
//! most [`EncodingParams::max_inline`] bytes (default and maximum [`LIT_MAX`] = 55) are
//! not uploaded: their cap holds them (`folio:LIT:`). **Every empty file is a LIT cap.**
//!
//! # Cryptography
//!
//! `H(tag; x1, ..., xn)` is SHA-256 over `u64be(len(tag)) ‖ tag ‖ u64be(len(x1)) ‖ x1 ‖
//! ...` (ring). The tags are `folio:chk:<use>:v1`:
//!
//! | value | definition |
//! |---|---|
//! | plaintext hash | `H(plaintext; file)` |
//! | key (32 bytes) | `H(key; convergence secret, u16be k, u16be N, u64be segment size, plaintext hash)` |
//! | storage index | first 16 bytes of `H(storage-index; key)` |
//! | ciphertext | AES-256-CTR of the file under the key, 128-bit big-endian counter from 0 (IV zero: each key encrypts one plaintext) |
//! | ciphertext hash | `H(ciphertext; ciphertext)` |
//! | block tree leaf | `H(block; block)` |
//! | block tree node | `H(block-node; left, right)` |
//! | share tree leaf | `H(share-leaf; u16be shnum, share's block tree root)` |
//! | share tree node | `H(share-node; left, right)` |
//! | UEB hash | `H(ueb; the 104 UEB bytes)` |
//! | server order | servers sorted by `H(permute; storage index, permutation seed)` |
//! | lease secrets | `H(lease-renew; lease secret, storage index, server key)`, likewise `lease-cancel` |
//!
//! Trees: level 0 holds the leaves; each level above pairs neighbours, and the last node of
//! an odd-sized level is carried up unchanged (the shape depends only on the leaf count).
//!
//! # Encoding
//!
//! The ciphertext is cut into segments of the segment size (the last one shorter). Each
//! segment of `L` bytes is zero-padded to `k * B` bytes, `B = ceil(L / k)` rounded up to a
//! multiple of 64, and cut into k blocks of `B` bytes: blocks `0..k` (the *primary*
//! shares). Blocks `k..N` are the `N - k` recovery shards of Leopard-RS over GF(2^16) as
//! `reed-solomon-simd` 3 computes them (none when k = N). Block `i` of every segment goes
//! to share `i`. The true sizes follow from the UEB, so decoding cuts the padding off.
//!
//! # Read cap
//!
//! `folio:CHK:<key>:<ueb hash>:<k>:<N>:<size>` — the key and UEB hash in RFC 4648 base32,
//! lowercase, unpadded, with zero trailing bits (52 characters each); k, N and size in
//! decimal without leading zeros. `1 <= k <= N <= 256`, `1 <= size <= 2^48`.
//! `folio:LIT:<data base32>` holds up to 55 bytes (`folio:LIT:` alone is the empty file).
//! Parsing ([`ReadCap::from_str`](std::str::FromStr)) refuses anything else: another
//! prefix, a field too many or too few, uppercase, padding, non-zero trailing bits, leading
//! zeros, signs, out-of-range values.
//!
//! # Share layout
//!
//! Each share is one bucket on a storage server (all shares of a file have the same size);
//! integers are big-endian:
//!
//! | offset | length | content |
//! |---|---|---|
//! | 0 | 64 | header: `"folioCHK"`, u16 version = 1, u16 share number, 4 zero bytes, then u64 offsets of the UEB (64), the root (168), the chain (200), the blocks, the block tree, and the end |
//! | 64 | 104 | UEB: `"folioUEB"`, u16 version = 1, u16 k, u16 N, 2 zero bytes, u64 size, u64 segment size, u64 segment count, share tree root (32), ciphertext hash (32) |
//! | 168 | 32 | the root of this share's block hash tree |
//! | 200 | 32 × ceil(log2 N) | share hash chain: per share tree level, the sibling needed to climb from this share's leaf, or 32 zero bytes where the node is carried |
//! | blocks | (S − 1) × B + B_tail | block `i` at `blocks + i × B` (B of a full segment) |
//! | tree | 32 × nodes | the block hash tree below its root, level by level from the leaves; each level's nodes in order |
//!
//! Everything follows from the UEB and the share number ([`ShareLayout`]); a reader checks
//! the header against it. The front (header to chain, at most 456 bytes) comes in one
//! read. **Verification chain**: the cap's UEB hash verifies the UEB; the UEB's share tree
//! root verifies the share's root through its chain; the root verifies each block through
//! the block tree; the UEB's ciphertext hash checks the whole file at the end.
//!
//! # Server selection
//!
//! Servers are taken in permuted order, in rounds, every request of a round sent at once
//! (`allocate_share`, one per share). In the first round each server is asked for one share
//! not yet placed, and the shares left over (when there are fewer servers than shares) are
//! spread evenly over the same servers; shares a server already has count as placed. Each
//! later round gives the shares still unplaced to servers that hold nothing yet, then
//! spreads the rest over those that accepted; a server that refuses for lack of room is
//! asked no more, and no server is asked twice for the same share. *Happiness* is
//! the size of a maximum matching between servers and the shares they hold or accepted
//! (Tahoe's "servers of happiness"). Below `shares.happy` the upload is refused and every
//! bucket writer aborted, so nothing is left behind. A server that fails while the shares
//! are written loses its shares; the upload goes on while happiness holds, and is
//! otherwise aborted. Shares that could not be placed anywhere are not written.
//!
//! Every remote call is bounded by [`CALL_TIMEOUT`].

mod cap;
mod codec;
mod download;
mod flow;
pub(crate) mod hash;
mod layout;
mod upload;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use cap::{base32, CapError, ChkCap, ReadCap, CHK_PREFIX, LIT_PREFIX, MAX_CAP_LEN};
pub use download::{download, CorruptShare, DownloadError, DownloadReport};
pub use flow::{INITIAL_WINDOW, WINDOW_BUDGET};
pub use hash::Hash;
pub use layout::{
    parse_share, verify_block, Geometry, ShareError, ShareFront, ShareHeader, ShareLayout, Ueb,
    BLOCK_ALIGN, HEADER_LEN, UEB_LEN,
};
pub use upload::{
    encode_in_memory, encode_shares, upload, ServerShares, UploadError, UploadReport,
};
// For mutable files, whose versions are CHK files under a key of their own.
pub(crate) use codec::{cipher, SegmentCoder, ShareAssembler, ShareWrite};
pub(crate) use download::decode_in_memory;
pub(crate) use upload::{lease_secrets, max_matching, plan_round};

/// The most shares of a file (N).
pub const MAX_SHARES: usize = 256;
/// The largest file (256 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 48;
/// The largest segment size.
pub const MAX_SEGMENT_SIZE: u64 = 8 << 20;
/// The default maximum segment size (128 KiB, as Tahoe).
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 << 10;
/// The largest file a LIT cap holds (as Tahoe).
pub const LIT_MAX: usize = 55;
/// The bound on every call to a storage server.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why encoding parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// Not `1 <= k <= happy <= N <= 256`.
    #[error("shares must satisfy 1 <= needed <= happy <= total <= {MAX_SHARES}; got needed={needed}, happy={happy}, total={total}")]
    Shares {
        /// k.
        needed: u16,
        /// happy.
        happy: u16,
        /// N.
        total: u16,
    },
    /// Segment size 0 or above [`MAX_SEGMENT_SIZE`].
    #[error("the maximum segment size must be between 1 and {MAX_SEGMENT_SIZE}; got {0}")]
    SegmentSize(u64),
    /// Inline limit above [`LIT_MAX`].
    #[error("files of at most {LIT_MAX} bytes can be inline; got max_inline={0}")]
    Inline(u64),
}

/// How files are encoded: the `[client] shares.*` settings and the segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodingParams {
    /// k (`shares.needed`): shares needed to read the file.
    pub needed: u16,
    /// `shares.happy`: distinct servers that must hold shares for an upload to succeed.
    pub happy: u16,
    /// N (`shares.total`): shares made.
    pub total: u16,
    /// The largest segment (default [`DEFAULT_SEGMENT_SIZE`]).
    pub max_segment_size: u64,
    /// Files of at most this many bytes get a LIT cap (default and maximum [`LIT_MAX`];
    /// 0 uploads every non-empty file).
    pub max_inline: u64,
}

impl Default for EncodingParams {
    /// Tahoe's defaults: 3 of 10, happy 7, 128 KiB segments.
    fn default() -> Self {
        EncodingParams {
            needed: 3,
            happy: 7,
            total: 10,
            max_segment_size: DEFAULT_SEGMENT_SIZE,
            max_inline: LIT_MAX as u64,
        }
    }
}

impl EncodingParams {
    /// k-of-N with `happy`, default segment size and inline limit.
    pub fn new(needed: u16, happy: u16, total: u16) -> Result<Self, ParamsError> {
        let p = EncodingParams {
            needed,
            happy,
            total,
            ..Default::default()
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let (k, h, n) = (self.needed, self.happy, self.total);
        if !(1 <= k && k <= h && h <= n && n as usize <= MAX_SHARES) {
            return Err(ParamsError::Shares {
                needed: k,
                happy: h,
                total: n,
            });
        }
        if self.max_segment_size == 0 || self.max_segment_size > MAX_SEGMENT_SIZE {
            return Err(ParamsError::SegmentSize(self.max_segment_size));
        }
        if self.max_inline > LIT_MAX as u64 {
            return Err(ParamsError::Inline(self.max_inline));
        }
        Ok(())
    }

    /// The segment size of a file of `size` bytes: `size` rounded up to a multiple of k, or
    /// [`EncodingParams::max_segment_size`] rounded down to a multiple of `64 k` (at least
    /// `64 k`), whichever is smaller. Full segments then need no padding.
    pub fn segment_size_for(&self, size: u64) -> u64 {
        let k = self.needed.max(1) as u64;
        let unit = BLOCK_ALIGN * k;
        let full = (self.max_segment_size / unit).max(1) * unit;
        full.min(size.max(1).div_ceil(k) * k)
    }
}

/// What an upload reads: a length and random access, read twice (once to hash, once to
/// encode). Reads happen on a blocking thread.
pub trait UploadSource: Send + Sync + 'static {
    /// The number of bytes.
    fn len(&self) -> u64;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `offset` (all of them, or an error).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

fn slice_read(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).ok().filter(|&s| s <= data.len());
    match start.and_then(|s| data.get(s..s + buf.len())) {
        Some(src) => {
            buf.copy_from_slice(src);
            Ok(())
        }
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

impl UploadSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        slice_read(self, offset, buf)
    }
}

impl UploadSource for Arc<[u8]> {
    fn len(&self) -> u64 {
        (**self).len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        slice_read(self, offset, buf)
    }
}

impl UploadSource for &'static [u8] {
    fn len(&self) -> u64 {
        (**self).len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        slice_read(self, offset, buf)
    }
}

/// A file as an upload source; its length is taken when it is opened. A file that changes
/// between the two passes fails the upload ([`UploadError::SourceChanged`]).
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

impl FileSource {
    /// Opens `path` for reading.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        FileSource::new(std::fs::File::open(path)?)
    }

    /// Uses an open file (read from offset 0, whatever its position).
    pub fn new(file: std::fs::File) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl UploadSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }
}

/// What a transfer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Not started.
    Starting = 0,
    /// Upload: hashing the plaintext for the key.
    Hashing = 1,
    /// Upload: asking servers for buckets.
    Placing = 2,
    /// Upload: encoding and writing shares.
    Pushing = 3,
    /// Upload: writing hash trees and closing buckets.
    Closing = 4,
    /// Download: asking servers for shares.
    Locating = 5,
    /// Download: fetching, verifying and decoding segments.
    Fetching = 6,
    /// Finished.
    Done = 7,
    /// Failed.
    Failed = 8,
}

/// A transfer's progress, updated as it runs; share it (`Arc`) with whoever shows it.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    total: AtomicU64,
    hashed: AtomicU64,
    done: AtomicU64,
    servers: AtomicU64,
    shares: AtomicU64,
}

/// A copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// What the transfer is doing.
    pub phase: Phase,
    /// The file's size.
    pub bytes_total: u64,
    /// Upload: bytes hashed by the first pass.
    pub bytes_hashed: u64,
    /// Upload: bytes encoded and handed to the servers' writers; download: bytes written
    /// to the sink.
    pub bytes_done: u64,
    /// Servers holding (upload) or serving (download) shares.
    pub servers: u64,
    /// Shares placed (upload) or in use (download).
    pub shares: u64,
}

impl Progress {
    /// A fresh progress record.
    pub fn new() -> Arc<Progress> {
        Arc::default()
    }

    /// The current state.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let phase = match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Hashing,
            2 => Phase::Placing,
            3 => Phase::Pushing,
            4 => Phase::Closing,
            5 => Phase::Locating,
            6 => Phase::Fetching,
            7 => Phase::Done,
            8 => Phase::Failed,
            _ => Phase::Starting,
        };
        ProgressSnapshot {
            phase,
            bytes_total: self.total.load(Ordering::Relaxed),
            bytes_hashed: self.hashed.load(Ordering::Relaxed),
            bytes_done: self.done.load(Ordering::Relaxed),
            servers: self.servers.load(Ordering::Relaxed),
            shares: self.shares.load(Ordering::Relaxed),
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }
    fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
    fn add_hashed(&self, n: u64) {
        self.hashed.fetch_add(n, Ordering::Relaxed);
    }
    fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn set_servers(&self, servers: usize, shares: usize) {
        self.servers.store(servers as u64, Ordering::Relaxed);
        self.shares.store(shares as u64, Ordering::Relaxed);
    }
}

/// Servers in the permuted order of `si`: indices into `servers`.
pub(crate) fn permuted(servers: &[crate::broker::ConnectedServer], si: &[u8; 16]) -> Vec<usize> {
    let mut order: Vec<(Hash, usize)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                hash::tagged(hash::TAG_PERMUTE, &[si, &s.permutation_seed]),
                i,
            )
        })
        .collect();
    order.sort();
    order.into_iter().map(|(_, i)| i).collect()
}

/// Runs `fut` bounded by [`CALL_TIMEOUT`], folding every failure into a string.
pub(crate) async fn call<T, E: std::fmt::Display + std::fmt::Debug>(
    fut: impl std::future::Future<Output = Result<T, folio_rpc::CallError<E>>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(folio_rpc::CallError::App(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
}

/// Runs a storage call bounded by [`CALL_TIMEOUT`], keeping its typed error.
pub(crate) async fn bounded<T>(
    fut: impl std::future::Future<
        Output = Result<T, folio_rpc::CallError<crate::storage::StorageError>>,
    >,
) -> Result<T, folio_rpc::CallError<crate::storage::StorageError>> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or(Err(folio_rpc::CallError::DeadlineExceeded(CALL_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        assert_eq!(
            EncodingParams::default(),
            EncodingParams::new(3, 7, 10).unwrap()
        );
        assert!(EncodingParams::new(0, 1, 1).is_err());
        assert!(EncodingParams::new(3, 2, 10).is_err());
        assert!(EncodingParams::new(3, 11, 10).is_err());
        assert!(EncodingParams::new(1, 257, 257).is_err());
        assert!(EncodingParams::new(256, 256, 256).is_ok());
        let p = EncodingParams::default();
        assert_eq!(p.segment_size_for(1), 3);
        assert_eq!(p.segment_size_for(56), 57);
        assert_eq!(p.segment_size_for(100 << 20), 130_944);
        assert_eq!(130_944 % (64 * 3), 0);
        let one = EncodingParams {
            max_segment_size: 1,
            ..p
        };
        assert_eq!(one.segment_size_for(1 << 20), 192);
        for size in [1u64, 2, 55, 56, 1000, 130_944, 130_945, 1 << 30] {
            let s = p.segment_size_for(size);
            Geometry::new(3, 10, size, s).unwrap();
        }
    }

    #[test]
    fn sources_read_exactly() {
        let v = vec![1u8, 2, 3, 4];
        let mut buf = [0u8; 2];
        v.read_at(2, &mut buf).unwrap();
        assert_eq!(buf, [3, 4]);
        assert!(v.read_at(3, &mut buf).is_err());
        assert!(v.read_at(u64::MAX, &mut buf).is_err());
    }
}
