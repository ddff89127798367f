//! Download: locating shares, verifying them, and decoding segments into a sink.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes::cipher::StreamCipher;
use folio_rpc::CallError;
use futures_util::future::join_all;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::codec::{cipher, ciphertext_hasher, Codec};
use super::flow::{Flow, Ticket, WINDOW_BUDGET};
use super::hash::Hash;
use super::layout::{verify_block, Geometry, ShareError, ShareFront, ShareLayout, Ueb};
use super::{bounded, call, permuted, ChkCap, Phase, Progress, ReadCap};
use crate::broker::ConnectedServer;
use crate::storage::{BucketReaderRef, StorageError, StorageIndex, MAX_CHUNK};

/// Bytes of blocks per read (at least one block).
const BLOCK_WINDOW: u64 = MAX_CHUNK;
/// The most block windows read ahead per share (the server's window usually says fewer).
const MAX_AHEAD: usize = 32;
/// A block tree this small is read whole, in one read started with the first blocks, rather
/// than one level at a time (a round trip per level before the first block could be
/// checked).
const WHOLE_TREE_MAX: u64 = MAX_CHUNK;
/// Heads up to this size are read from every server at once with the listing (for a small
/// file, the whole share); larger ones only from the first k servers in permuted order.
const SPECULATIVE_HEAD_MAX: u64 = 64 * 1024;
/// Block tree nodes read at once per level.
const TREE_WINDOW: u64 = 256;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Fewer than k good shares could be found.
    #[error(
        "found {found} shares of {total} (need {needed}) on {servers} servers; \
         {failed} of {asked} servers failed or could not be reached, {corrupt} shares were corrupt"
    )]
    NotEnoughShares {
        /// Distinct good shares found.
        found: usize,
        /// N.
        total: u16,
        /// k.
        needed: u16,
        /// Servers holding those shares.
        servers: usize,
        /// Servers asked.
        asked: usize,
        /// Servers that failed.
        failed: usize,
        /// Shares found corrupt.
        corrupt: usize,
    },
    /// The UEB matches the cap's hash but cannot be used: the cap names a bad file.
    #[error("the file's UEB is unusable: {0}")]
    BadUeb(ShareError),
    /// The decoded ciphertext does not match the UEB's hash (the sink got bad bytes).
    #[error("the downloaded ciphertext does not match its hash: the output is wrong")]
    CiphertextMismatch,
    /// Writing to the sink failed.
    #[error("writing the output failed: {0}")]
    Write(#[source] std::io::Error),
}

/// A share found corrupt (and reported to its server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptShare {
    /// The server's nickname.
    pub server: String,
    /// The share.
    pub shnum: u16,
    /// What was wrong.
    pub reason: String,
}

/// What a download did.
#[derive(Debug, Clone, Default)]
pub struct DownloadReport {
    /// Bytes written.
    pub size: u64,
    /// Servers that served blocks, with the shares read from each.
    pub servers_used: Vec<(String, Vec<u16>)>,
    /// Shares found corrupt.
    pub corrupt: Vec<CorruptShare>,
    /// Servers that failed (nickname, error).
    pub failed_servers: Vec<(String, String)>,
    /// Asking servers for shares.
    pub locate_time: Duration,
    /// The whole download.
    pub total_time: Duration,
}

/// Downloads the file `cap` names from `servers` into `sink`, streaming: every block is
/// verified against the cap before it is decoded; corrupt shares are reported to their
/// servers and replaced. The sink is flushed at the end, not shut down.
///
/// A LIT cap is written out without asking any server.
pub async fn download<W: AsyncWrite + Unpin + Send + ?Sized>(
    servers: &[ConnectedServer],
    cap: &ReadCap,
    sink: &mut W,
    progress: Arc<Progress>,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    progress.set_total(cap.size());
    let mut ended = Ended {
        progress: &progress,
        ended: false,
    };
    let r = match cap {
        ReadCap::Lit(data) => {
            async {
                sink.write_all(data).await.map_err(DownloadError::Write)?;
                sink.flush().await.map_err(DownloadError::Write)?;
                progress.add_done(data.len() as u64);
                Ok(DownloadReport {
                    size: data.len() as u64,
                    ..Default::default()
                })
            }
            .await
        }
        ReadCap::Chk(chk) => {
            let mut d = Downloader::new(servers, chk, &progress);
            let r = d.run(sink).await;
            d.abandon();
            r
        }
    };
    ended.ended = true;
    progress.set_phase(if r.is_ok() {
        Phase::Done
    } else {
        Phase::Failed
    });
    r.map(|mut rep| {
        rep.total_time = started.elapsed();
        rep
    })
}

/// Marks a download that is dropped before it ends (its reader went away) as failed, so
/// that whoever shows its progress does not show it running forever.
struct Ended<'a> {
    progress: &'a Progress,
    ended: bool,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.progress.set_phase(Phase::Failed);
        }
    }
}

/// A share a server listed, not yet read.
struct Candidate {
    server: usize,
    shnum: u16,
    reader: BucketReaderRef,
    /// Its first bytes, if they came with the listing.
    head: Option<Vec<u8>>,
    /// Reads of what follows the head, sent with the listing (see [`speculative_reads`]).
    ahead: Vec<Prefetch>,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        for (_, _, task) in self.ahead.drain(..) {
            task.abort();
        }
    }
}

/// Why fetching from a share failed.
enum Fault {
    /// The server failed: drop all its shares.
    Server(String),
    /// The share's bytes are bad: report it, drop the share.
    Corrupt(String),
}

/// Asks `server` for its shares of `si`, and, pipelined on the answer's first reference, for
/// the first `head_len` bytes of that share: both leave in one flight, so the first
/// blocks of a small file come with the listing, one round trip in all. Reads are harmless,
/// so reading whatever share comes first is safe; which share it was is known once the
/// listing arrives. Gives the listing, the head (if the server listed a share and the read
/// succeeded), and the time the listing took (a round trip).
async fn locate_one(
    server: &ConnectedServer,
    si: StorageIndex,
    head_len: u64,
    extra: &[(u64, u64)],
) -> (
    Result<BTreeMap<u16, BucketReaderRef>, String>,
    Option<Vec<u8>>,
    Vec<Prefetch>,
    Duration,
) {
    let started = Instant::now();
    let listing = match bounded(server.server.get_buckets_promise(si)).await {
        Ok(p) => p,
        Err(e) => return (Err(call_error_text(e)), None, Vec::new(), started.elapsed()),
    };
    let first: BucketReaderRef = listing.reference_at(0);
    let read = bounded(first.read_promise(0, head_len.min(MAX_CHUNK))).await;
    let mut more = Vec::new();
    for &(offset, len) in extra {
        more.push((offset, len, bounded(first.read_promise(offset, len)).await));
    }
    let buckets = bounded(IntoFuture::into_future(listing)).await;
    let rtt = started.elapsed();
    let buckets = match buckets {
        Ok(b) => b,
        Err(e) => return (Err(call_error_text(e)), None, Vec::new(), rtt),
    };
    let ahead = if buckets.is_empty() {
        Vec::new()
    } else {
        more.into_iter()
            .filter_map(|(offset, len, p)| {
                let p = p.ok()?;
                let task = tokio::spawn(async move {
                    bounded(IntoFuture::into_future(p))
                        .await
                        .map(|b| b.0)
                        .map_err(call_error_text)
                });
                Some((offset, len, task))
            })
            .collect()
    };
    let head = match read {
        Ok(p) if !buckets.is_empty() => bounded(IntoFuture::into_future(p)).await.ok().map(|b| b.0),
        _ => None,
    };
    (Ok(buckets), head, ahead, rtt)
}

fn call_error_text(e: CallError<StorageError>) -> String {
    match e {
        CallError::App(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Reads `len` bytes at `offset` in calls of at most [`MAX_CHUNK`]; fewer at the end.
async fn read_range(reader: &BucketReaderRef, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let at = offset + out.len() as u64;
        let want = (len - out.len() as u64).min(MAX_CHUNK);
        let got = call(reader.read(at, want)).await?;
        if got.len() as u64 > want {
            return Err(format!(
                "the server returned {} bytes for a read of {want}",
                got.len()
            ));
        }
        let short = (got.len() as u64) < want;
        out.extend_from_slice(&got);
        if short {
            break;
        }
    }
    Ok(out)
}

/// A read running in the background: its offset, its length, and the task.
type Prefetch = (u64, u64, JoinHandle<Result<Vec<u8>, String>>);

/// Starts reading `[offset, offset + want)`, counted in `flow` until answered.
fn spawn_read(reader: &BucketReaderRef, ticket: Ticket, offset: u64, want: u64) -> Prefetch {
    let reader = reader.clone();
    let task = tokio::spawn(async move {
        let data = read_range(&reader, offset, want).await?;
        ticket.delivered();
        Ok(data)
    });
    (offset, want, task)
}

/// Bytes `[start, start + data.len())` of a share.
#[derive(Default)]
struct Window {
    start: u64,
    data: Vec<u8>,
}

impl Window {
    fn covers(&self, offset: u64, len: u64) -> bool {
        offset >= self.start && offset + len <= self.start + self.data.len() as u64
    }

    fn slice(&self, offset: u64, len: u64) -> &[u8] {
        let a = (offset - self.start) as usize;
        &self.data[a..a + len as usize]
    }

    /// Makes `[offset, offset + want)` the window, from `ready` if it is that read; a short
    /// answer is corruption.
    async fn load(
        &mut self,
        reader: &BucketReaderRef,
        ready: Option<Prefetch>,
        offset: u64,
        want: u64,
    ) -> Result<(), Fault> {
        let data = match ready {
            Some((o, w, task)) if o == offset && w == want => task
                .await
                .unwrap_or_else(|e| Err(format!("a read task failed: {e}"))),
            other => {
                if let Some((_, _, task)) = other {
                    task.abort();
                }
                read_range(reader, offset, want).await
            }
        }
        .map_err(Fault::Server)?;
        if (data.len() as u64) < want {
            return Err(Fault::Corrupt(format!(
                "the share is truncated: {} bytes at offset {offset} where {want} were expected",
                data.len()
            )));
        }
        self.start = offset;
        self.data = data;
        Ok(())
    }
}

/// A share whose front checked out, in use.
struct Active {
    server: usize,
    shnum: u16,
    reader: BucketReaderRef,
    root: Hash,
    /// The server's window (shared by the shares read from it).
    flow: Arc<Flow>,
    /// The share's first bytes, as read with its front (all of a small share).
    head: Window,
    /// The whole block tree, when it is small enough to read at once.
    tree: Window,
    /// The block tree read in the background.
    tree_ahead: Option<Prefetch>,
    blocks: Window,
    /// Block windows read ahead, in order, with the first segment of each.
    ///
    /// Those sent with the listing hold a ticket of the server's window from when they are
    /// adopted (they were sent before the window existed); it is given back, without a
    /// sample, when they are used.
    ahead: VecDeque<(u64, Prefetch, Option<Ticket>)>,
    /// The first segment of the next block window to read ahead.
    next_window: u64,
    levels: Vec<Window>,
}

impl Drop for Active {
    fn drop(&mut self) {
        for (_, (_, _, task), _) in self.ahead.drain(..) {
            task.abort();
        }
        if let Some((_, _, task)) = self.tree_ahead.take() {
            task.abort();
        }
    }
}

impl Active {
    /// Segments per block window.
    fn per_window(layout: &ShareLayout) -> u64 {
        (BLOCK_WINDOW / layout.geometry.block_size_for(layout.geometry.segment_size)).max(1)
    }

    /// The byte range of the window of segments starting at `first`.
    fn window_range(layout: &ShareLayout, first: u64) -> (u64, u64) {
        let last = (first + Self::per_window(layout)).min(layout.geometry.num_segments) - 1;
        let (start, _) = layout.block_range(first);
        let (end_at, end_len) = layout.block_range(last);
        (start, end_at + end_len - start)
    }

    /// A share whose front (and `head`) checked out: starts reading ahead what the head
    /// does not hold, the whole block tree if it is small, and block windows as far as the
    /// server's window allows.
    fn new(mut c: Candidate, front: &ShareFront, head: Vec<u8>, flow: Arc<Flow>) -> Active {
        let layout = &front.layout;
        let levels = layout.tree_levels.len() - 1;
        let per = Self::per_window(layout);
        let mut next_window = 0;
        while next_window < layout.geometry.num_segments {
            let (start, want) = Self::window_range(layout, next_window);
            if start + want > head.len() as u64 {
                break;
            }
            next_window += per;
        }
        // Reads sent with the listing, for the layout the downloader guessed: those that are
        // the real layout's tree or next windows are used; any others are dropped.
        let mut sent: VecDeque<Prefetch> = std::mem::take(&mut c.ahead).into();
        let tree_len = layout.end - layout.tree_offset;
        let mut tree_ahead = None;
        if tree_len > 0 && tree_len <= WHOLE_TREE_MAX && layout.end > head.len() as u64 {
            let sent_tree = sent
                .iter()
                .position(|(o, w, _)| *o == layout.tree_offset && *w == tree_len);
            tree_ahead = Some(match sent_tree.and_then(|i| sent.remove(i)) {
                Some(read) => read,
                None => {
                    let ticket = flow.take(tree_len);
                    spawn_read(&c.reader, ticket, layout.tree_offset, tree_len)
                }
            });
        }
        let mut ahead = VecDeque::new();
        while let Some(read) = sent.pop_front() {
            // Past the last window (the head held the rest) every read sent is unused; the
            // range of a window that does not exist is not computed.
            if next_window >= layout.geometry.num_segments
                || (read.0, read.1) != Self::window_range(layout, next_window)
            {
                read.2.abort();
                continue;
            }
            let (_, want) = Self::window_range(layout, next_window);
            let ticket = flow.take(want);
            ahead.push_back((next_window, read, Some(ticket)));
            next_window += per;
        }
        let mut a = Active {
            server: c.server,
            shnum: c.shnum,
            reader: c.reader.clone(),
            root: front.root,
            flow,
            head: Window {
                start: 0,
                data: head,
            },
            tree: Window::default(),
            tree_ahead,
            blocks: Window::default(),
            ahead,
            next_window,
            levels: (0..levels).map(|_| Window::default()).collect(),
        };
        a.read_ahead(layout);
        a
    }

    /// Starts reading the next block windows: always one (as a LAN needs), more while the
    /// server's window has room, at most [`MAX_AHEAD`].
    fn read_ahead(&mut self, layout: &ShareLayout) {
        let per = Self::per_window(layout);
        while self.next_window < layout.geometry.num_segments && self.ahead.len() < MAX_AHEAD {
            let (start, want) = Self::window_range(layout, self.next_window);
            let ticket = if self.ahead.is_empty() {
                self.flow.take(want)
            } else {
                match self.flow.try_take(want) {
                    Some(t) => t,
                    None => break,
                }
            };
            let read = spawn_read(&self.reader, ticket, start, want);
            self.ahead.push_back((self.next_window, read, None));
            self.next_window += per;
        }
    }

    /// The share's bytes `[offset, offset + len)` if a window holds them.
    fn bytes(&self, level: Option<usize>, offset: u64, len: u64) -> Option<&[u8]> {
        let own = match level {
            None => &self.blocks,
            Some(l) => &self.levels[l],
        };
        [&self.head, &self.tree, own]
            .into_iter()
            .find(|w| w.covers(offset, len))
            .map(|w| w.slice(offset, len))
    }

    /// The blocks of segments `first..last`, each verified.
    async fn blocks(
        &mut self,
        layout: &ShareLayout,
        first: u64,
        last: u64,
    ) -> Result<Vec<Vec<u8>>, Fault> {
        let mut out = Vec::with_capacity((last - first) as usize);
        for seg in first..last {
            out.push(self.block(layout, seg).await?);
        }
        Ok(out)
    }

    /// Segment `seg`'s block, verified against this share's root.
    async fn block(&mut self, layout: &ShareLayout, seg: u64) -> Result<Vec<u8>, Fault> {
        let (offset, len) = layout.block_range(seg);
        if self.bytes(None, offset, len).is_none() {
            let per = Self::per_window(layout);
            let first = seg - seg % per;
            let (start, want) = Self::window_range(layout, first);
            // Read-ahead of windows before this one is of no use now.
            while self.ahead.front().is_some_and(|(f, _, _)| *f < first) {
                if let Some((_, (_, _, task), _)) = self.ahead.pop_front() {
                    task.abort();
                }
            }
            let ready = match self.ahead.front() {
                Some((f, _, _)) if *f == first => self.ahead.pop_front().map(|(_, r, _)| r),
                _ => None,
            };
            if ready.is_none() && self.next_window <= first {
                self.next_window = first + per;
            }
            self.blocks.load(&self.reader, ready, start, want).await?;
            self.read_ahead(layout);
        }
        let block = self
            .bytes(None, offset, len)
            .expect("the window was just loaded")
            .to_vec();
        // The sibling nodes, each level's window loaded as needed.
        let levels = &layout.tree_levels;
        for level in 0..levels.len() - 1 {
            if let Some(sib) = super::hash::sibling(levels, level, seg) {
                let at = layout.tree_node_offset(level, sib);
                if self.bytes(Some(level), at, 32).is_some() {
                    continue;
                }
                if let Some(read) = self.tree_ahead.take() {
                    let (offset, want) = (read.0, read.1);
                    self.tree
                        .load(&self.reader, Some(read), offset, want)
                        .await?;
                    if self.bytes(Some(level), at, 32).is_some() {
                        continue;
                    }
                }
                let first = sib & !1;
                let count = TREE_WINDOW.min(levels[level] - first);
                let start = layout.tree_node_offset(level, first);
                self.levels[level]
                    .load(&self.reader, None, start, 32 * count)
                    .await?;
            }
        }
        let verdict = verify_block(layout, &self.root, seg, &block, |level, index| {
            let at = layout.tree_node_offset(level, index);
            let mut h = [0u8; 32];
            h.copy_from_slice(self.bytes(Some(level), at, 32).ok_or(())?);
            Ok::<Hash, ()>(h)
        })
        .unwrap_or(Err(ShareError::BlockMismatch { segment: seg }));
        verdict.map_err(|e| Fault::Corrupt(e.to_string()))?;
        Ok(block)
    }
}

/// The ciphertext of segments `first..` (each cut to its true length) from k shares' blocks
/// of those segments. Without every primary share, the blocks of all the segments are
/// decoded in one call: the code works position by position on 64-byte units, and every
/// block is a multiple of 64 bytes, so decoding the concatenation decodes each block.
fn decode_batch(
    codec: &mut Codec,
    layout: &ShareLayout,
    first: u64,
    blocks: Vec<(u16, Vec<Vec<u8>>)>,
) -> Result<Vec<Vec<u8>>, String> {
    let g = &layout.geometry;
    let k = g.needed as usize;
    let count = blocks.first().map_or(0, |(_, b)| b.len());
    let lens: Vec<usize> = (0..count)
        .map(|i| g.block_len(first + i as u64) as usize)
        .collect();
    let mut segments: Vec<Vec<u8>> = lens.iter().map(|l| Vec::with_capacity(k * l)).collect();
    let primaries = blocks.iter().all(|(n, _)| (*n as usize) < k);
    if primaries {
        let mut by_index: Vec<&Vec<Vec<u8>>> = vec![&blocks[0].1; k];
        for (n, b) in &blocks {
            by_index[*n as usize] = b;
        }
        for (i, seg) in segments.iter_mut().enumerate() {
            for b in &by_index {
                seg.extend_from_slice(&b[i]);
            }
        }
    } else {
        let total: usize = lens.iter().sum();
        let joined: Vec<(u16, Vec<u8>)> =
            blocks.into_iter().map(|(n, b)| (n, b.concat())).collect();
        let out = codec.decode(&joined, total)?;
        let mut at = 0;
        for (i, seg) in segments.iter_mut().enumerate() {
            for j in 0..k {
                let base = j * total + at;
                seg.extend_from_slice(&out[base..base + lens[i]]);
            }
            at += lens[i];
        }
    }
    for (i, seg) in segments.iter_mut().enumerate() {
        seg.truncate(g.segment_len(first + i as u64) as usize);
    }
    Ok(segments)
}

/// The plaintext of the file `cap` names, from k or more of its shares held whole in memory,
/// each already checked against `cap` (with [`parse_share`](super::layout::parse_share) and
/// [`ShareFront::decode_for`]): erasure-decodes every segment, checks the ciphertext against
/// the UEB's hash and decrypts. For mutable files, whose versions are small enough to hold.
pub(crate) fn decode_in_memory(
    cap: &ChkCap,
    front: &ShareFront,
    shares: &[(u16, &[u8])],
) -> Result<Vec<u8>, DownloadError> {
    let layout = &front.layout;
    let g = layout.geometry;
    let k = g.needed as usize;
    let mut picked: Vec<(u16, &[u8])> = Vec::with_capacity(k);
    for &(n, b) in shares {
        if picked.len() < k && !picked.iter().any(|(m, _)| *m == n) && b.len() as u64 >= layout.end
        {
            picked.push((n, b));
        }
    }
    if picked.len() < k {
        return Err(DownloadError::NotEnoughShares {
            found: picked.len(),
            total: cap.total,
            needed: cap.needed,
            servers: 0,
            asked: 0,
            failed: 0,
            corrupt: 0,
        });
    }
    let blocks: Vec<(u16, Vec<Vec<u8>>)> = picked
        .iter()
        .map(|(n, b)| {
            let per_segment = (0..g.num_segments)
                .map(|seg| {
                    let (off, len) = layout.block_range(seg);
                    b[off as usize..(off + len) as usize].to_vec()
                })
                .collect();
            (*n, per_segment)
        })
        .collect();
    let mut codec = Codec::new(g.needed, g.total);
    let segments = decode_batch(&mut codec, layout, 0, blocks).map_err(|e| {
        DownloadError::BadUeb(ShareError::Invalid {
            what: "erasure coding",
            detail: e,
        })
    })?;
    let mut plaintext = segments.concat();
    let mut ciphertext = ciphertext_hasher(g.size);
    ciphertext.update(&plaintext);
    if ciphertext.finish() != front.ueb.ciphertext_hash {
        return Err(DownloadError::CiphertextMismatch);
    }
    cipher(&cap.key).apply_keystream(&mut plaintext);
    Ok(plaintext)
}

struct Downloader<'a> {
    servers: &'a [ConnectedServer],
    cap: &'a ChkCap,
    si: StorageIndex,
    progress: &'a Progress,
    /// Servers in permuted order: rank of each server index.
    rank: Vec<usize>,
    candidates: Vec<Candidate>,
    active: Vec<Active>,
    /// (server, shnum) of every share listed.
    listed: BTreeSet<(usize, u16)>,
    dead: BTreeSet<usize>,
    corrupt_set: BTreeSet<(usize, u16)>,
    report: DownloadReport,
    used: BTreeSet<(usize, u16)>,
    ueb: Option<Ueb>,
    /// Each server's read window, measured from its answers.
    flows: BTreeMap<usize, Arc<Flow>>,
    /// How much of each share to read with its front (see [`head_len`]).
    head_len: u64,
}

/// How many bytes of a share to read first: the front, and as much of what follows as one
/// read carries and the file probably needs — a small file's whole share, or a large one's
/// first block window — so that the first blocks come with the front, not one round trip
/// later. The segment size is not in the cap; the guess assumes the default
/// (`EncodingParams::segment_size_for`). A wrong guess costs nothing but unused bytes: the
/// front is always there, and the reads that follow are made from the share's real layout.
fn head_len(cap: &ChkCap) -> u64 {
    let front = ShareLayout::front_len(cap.total);
    let guess = guessed_layout(cap)
        .map(|layout| {
            if layout.geometry.num_segments == 1 {
                layout.end
            } else {
                let (start, want) = Active::window_range(&layout, 0);
                start + want
            }
        })
        .unwrap_or(front);
    guess.clamp(front, MAX_CHUNK.max(front))
}

/// The layout of the cap's shares if the file was uploaded with the default segment size.
fn guessed_layout(cap: &ChkCap) -> Option<ShareLayout> {
    let params = super::EncodingParams {
        needed: cap.needed,
        happy: cap.needed,
        total: cap.total,
        ..Default::default()
    };
    Geometry::new(
        cap.needed,
        cap.total,
        cap.size,
        params.segment_size_for(cap.size),
    )
    .ok()
    .map(ShareLayout::new)
}

/// Reads to send with the listing, behind the head, to the servers that get a whole head:
/// the block tree (when it is read whole) and the block windows after the head, as far as
/// a server's whole [`WINDOW_BUDGET`] goes, for the guessed layout (see [`head_len`]).
/// Without them a large download would ask for its blocks only once the listing came back,
/// and the links would idle for that round trip. They take the whole budget, not the
/// [`INITIAL_WINDOW`](super::flow::INITIAL_WINDOW) of later reads, because no further read is asked for until every
/// head has come back and been checked, and a server answers a connection's calls as they
/// complete: a head may come back after all of them, and the links idle from then until
/// the next reads' answers (a round trip). With the budget, a share of up to 8 MiB (a file
/// of 24 MiB at 3-of-10) is all asked for in the first flight. A wrong guess wastes those
/// bytes, nothing else: the reads that are not the real layout's are dropped when the
/// share's front has been checked.
fn speculative_reads(cap: &ChkCap, head_len: u64) -> Vec<(u64, u64)> {
    let Some(layout) = guessed_layout(cap) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let tree_len = layout.end - layout.tree_offset;
    if tree_len > 0 && tree_len <= WHOLE_TREE_MAX && layout.end > head_len {
        out.push((layout.tree_offset, tree_len));
    }
    let per = Active::per_window(&layout);
    let mut budget = WINDOW_BUDGET.saturating_sub(head_len);
    let mut first = 0;
    while first < layout.geometry.num_segments {
        let (start, want) = Active::window_range(&layout, first);
        first += per;
        if start + want <= head_len {
            continue;
        }
        if want > budget {
            break;
        }
        budget -= want;
        out.push((start, want));
    }
    out
}

impl<'a> Downloader<'a> {
    fn new(servers: &'a [ConnectedServer], cap: &'a ChkCap, progress: &'a Progress) -> Self {
        let si = cap.storage_index();
        let mut rank = vec![0; servers.len()];
        for (r, i) in permuted(servers, &si).into_iter().enumerate() {
            rank[i] = r;
        }
        Downloader {
            servers,
            cap,
            si,
            progress,
            rank,
            candidates: Vec::new(),
            active: Vec::new(),
            listed: BTreeSet::new(),
            dead: BTreeSet::new(),
            corrupt_set: BTreeSet::new(),
            report: DownloadReport::default(),
            used: BTreeSet::new(),
            ueb: None,
            flows: BTreeMap::new(),
            head_len: head_len(cap),
        }
    }

    async fn run<W: AsyncWrite + Unpin + Send + ?Sized>(
        &mut self,
        sink: &mut W,
    ) -> Result<DownloadReport, DownloadError> {
        self.progress.set_phase(Phase::Locating);
        let located = Instant::now();
        self.locate().await;
        self.report.locate_time = located.elapsed();
        self.progress.set_phase(Phase::Fetching);
        let k = self.cap.needed as usize;
        self.fill(k).await?;
        let ueb = self.ueb.expect("a share was accepted, so the UEB is known");
        let layout = ShareLayout::new(ueb.geometry);
        let g = ueb.geometry;
        let mut codec = Codec::new(g.needed, g.total);
        let mut cipher = cipher(&self.cap.key);
        let mut ciphertext = ciphertext_hasher(g.size);
        // Segments go in batches, one block window per share: one erasure decode per batch.
        let per = Active::per_window(&layout);
        let mut first = 0;
        while first < g.num_segments {
            let last = (first + per).min(g.num_segments);
            let blocks = loop {
                self.fill(k).await?;
                let results = join_all(
                    self.active
                        .iter_mut()
                        .map(|a| a.blocks(&layout, first, last)),
                )
                .await;
                let mut blocks = Vec::with_capacity(k);
                let mut faults = Vec::new();
                for (i, r) in results.into_iter().enumerate() {
                    match r {
                        Ok(b) => blocks.push((self.active[i].shnum, b)),
                        Err(f) => faults.push((i, f)),
                    }
                }
                if faults.is_empty() {
                    break blocks;
                }
                // Drop the failed shares, highest position first.
                for (i, fault) in faults.into_iter().rev() {
                    let a = self.active.remove(i);
                    match fault {
                        Fault::Corrupt(reason) => self.corrupt(a.server, a.shnum, reason).await,
                        Fault::Server(e) => self.server_failed(a.server, e),
                    }
                }
            };
            for a in &self.active {
                self.used.insert((a.server, a.shnum));
            }
            let segments = decode_batch(&mut codec, &layout, first, blocks).map_err(|e| {
                DownloadError::BadUeb(ShareError::Invalid {
                    what: "erasure coding",
                    detail: e,
                })
            })?;
            for mut segment in segments {
                ciphertext.update(&segment);
                cipher.apply_keystream(&mut segment);
                sink.write_all(&segment)
                    .await
                    .map_err(DownloadError::Write)?;
                self.progress.add_done(segment.len() as u64);
            }
            first = last;
        }
        if ciphertext.finish() != ueb.ciphertext_hash {
            return Err(DownloadError::CiphertextMismatch);
        }
        sink.flush().await.map_err(DownloadError::Write)?;
        let mut used: Vec<(String, Vec<u16>)> = Vec::new();
        let mut by_server: Vec<(usize, Vec<u16>)> = Vec::new();
        for &(s, n) in &self.used {
            match by_server.iter_mut().find(|(x, _)| *x == s) {
                Some((_, v)) => v.push(n),
                None => by_server.push((s, vec![n])),
            }
        }
        by_server.sort_by_key(|(s, _)| self.rank[*s]);
        for (s, v) in by_server {
            used.push((self.servers[s].nickname.clone(), v));
        }
        self.report.servers_used = used;
        self.report.size = g.size;
        let windows: Vec<(&str, u64)> = self
            .flows
            .iter()
            .map(|(&i, f)| (self.servers[i].nickname.as_str(), f.window()))
            .collect();
        debug!(?windows, "read windows at the end (bytes per server)");
        info!(
            si = %super::cap::base32(&self.si),
            size = g.size,
            corrupt = self.report.corrupt.len(),
            "downloaded"
        );
        Ok(std::mem::take(&mut self.report))
    }

    /// Stops read-ahead.
    fn abandon(&mut self) {
        self.active.clear();
    }

    /// Asks every server for the storage index's shares, and for the head of the first
    /// share each lists, in the same flight (see [`locate_one`]).
    async fn locate(&mut self) {
        let si = self.si;
        let k = self.cap.needed as usize;
        let front = ShareLayout::front_len(self.cap.total);
        // Which servers get a whole head read: all, when heads are small; otherwise the
        // first k in permuted order (where an upload put the primary shares 0..k), and the
        // others only the front, so that a large file does not read N windows to use k.
        let whole_head = |rank: usize| self.head_len <= SPECULATIVE_HEAD_MAX || rank < k;
        let extra = speculative_reads(self.cap, self.head_len);
        let answers = join_all(self.servers.iter().enumerate().map(|(i, s)| {
            let (len, extra) = if whole_head(self.rank[i]) {
                (self.head_len, &extra[..])
            } else {
                (front, &[][..])
            };
            locate_one(s, si, len, extra)
        }))
        .await;
        for (i, (a, head, ahead, rtt)) in answers.into_iter().enumerate() {
            match a {
                Ok(buckets) => {
                    // One read ahead per share, as before windows were measured, to start.
                    let flow = Flow::new(MAX_CHUNK);
                    flow.note_rtt(rtt);
                    self.flows.insert(i, flow);
                    // The pipelined read went to reference 0 of the answer: the share with
                    // the lowest number.
                    let (mut head, mut ahead) = (head, Some(ahead));
                    for (shnum, reader) in buckets {
                        let head = head.take();
                        let ahead = ahead.take().unwrap_or_default();
                        if shnum < self.cap.total && self.listed.insert((i, shnum)) {
                            self.candidates.push(Candidate {
                                server: i,
                                shnum,
                                reader,
                                head,
                                ahead,
                            });
                        } else {
                            for (_, _, task) in ahead {
                                task.abort();
                            }
                        }
                    }
                }
                Err(e) => {
                    debug!(server = %self.servers[i].nickname, error = %e, "get_buckets failed");
                    self.server_failed(i, e);
                }
            }
        }
        debug!(
            si = %super::cap::base32(&si),
            shares = self.candidates.len(),
            "located shares"
        );
    }

    fn server_failed(&mut self, server: usize, error: String) {
        if self.dead.insert(server) {
            warn!(server = %self.servers[server].nickname, error = %error, "server failed");
            self.report
                .failed_servers
                .push((self.servers[server].nickname.clone(), error));
        }
        self.active.retain(|a| a.server != server);
        self.candidates.retain(|c| c.server != server);
    }

    /// Records a corrupt share and tells its server.
    async fn corrupt(&mut self, server: usize, shnum: u16, reason: String) {
        warn!(
            server = %self.servers[server].nickname,
            shnum,
            reason = %reason,
            "corrupt share"
        );
        self.corrupt_set.insert((server, shnum));
        self.report.corrupt.push(CorruptShare {
            server: self.servers[server].nickname.clone(),
            shnum,
            reason: reason.clone(),
        });
        let s = &self.servers[server].server;
        if let Err(e) =
            call(s.advise_corrupt_share("immutable".into(), self.si, shnum, reason)).await
        {
            debug!(error = %e, "advise_corrupt_share failed");
        }
    }

    /// Takes the best unread candidate: a server not in use, a primary share, an early
    /// server in permuted order.
    fn next_candidate(&mut self, picked: &[Candidate]) -> Option<Candidate> {
        let in_use: BTreeSet<usize> = self
            .active
            .iter()
            .map(|a| a.server)
            .chain(picked.iter().map(|c| c.server))
            .collect();
        let shnums: BTreeSet<u16> = self
            .active
            .iter()
            .map(|a| a.shnum)
            .chain(picked.iter().map(|c| c.shnum))
            .collect();
        let k = self.cap.needed;
        let best = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| !shnums.contains(&c.shnum))
            .min_by_key(|(_, c)| {
                (
                    c.head.is_none(),
                    in_use.contains(&c.server),
                    c.shnum >= k,
                    self.rank[c.server],
                    c.shnum,
                )
            })
            .map(|(i, _)| i)?;
        Some(self.candidates.remove(best))
    }

    /// Brings the shares in use up to `k`, reading and checking fronts: the fronts (and
    /// heads, see [`head_len`]) of all the shares missing are read at once.
    async fn fill(&mut self, k: usize) -> Result<(), DownloadError> {
        while self.active.len() < k {
            let mut picked = Vec::new();
            while self.active.len() + picked.len() < k {
                match self.next_candidate(&picked) {
                    Some(c) => picked.push(c),
                    None => break,
                }
            }
            if picked.is_empty() {
                return Err(self.not_enough());
            }
            let head_len = self.head_len;
            let heads = join_all(picked.iter_mut().map(|c| {
                let known = c.head.take();
                let reader = c.reader.clone();
                async move {
                    match known {
                        Some(h) => Ok(h),
                        None => read_range(&reader, 0, head_len).await,
                    }
                }
            }))
            .await;
            for (c, head) in picked.into_iter().zip(heads) {
                if self.dead.contains(&c.server) {
                    continue;
                }
                let bytes = match head {
                    Ok(b) => b,
                    Err(e) => {
                        self.server_failed(c.server, e);
                        continue;
                    }
                };
                self.accept(c, bytes).await?;
            }
        }
        Ok(())
    }

    /// Checks a candidate's front against the cap and puts the share in use, or records
    /// why not.
    async fn accept(&mut self, c: Candidate, bytes: Vec<u8>) -> Result<(), DownloadError> {
        match ShareFront::decode_for(&bytes, self.cap, c.shnum) {
            Ok(front) => {
                if self.ueb.is_none() {
                    self.ueb = Some(front.ueb);
                }
                let flow = self
                    .flows
                    .entry(c.server)
                    .or_insert_with(|| Flow::new(MAX_CHUNK))
                    .clone();
                self.active.push(Active::new(c, &front, bytes, flow));
                self.progress.set_servers(
                    self.active
                        .iter()
                        .map(|a| a.server)
                        .collect::<BTreeSet<_>>()
                        .len(),
                    self.active.len(),
                );
            }
            // The UEB hashes to the cap's hash but is unusable: no share can help.
            Err(e @ (ShareError::CapMismatch(_) | ShareError::Invalid { .. }))
                if self.ueb_is_bad(&bytes) =>
            {
                return Err(DownloadError::BadUeb(e));
            }
            Err(e) => self.corrupt(c.server, c.shnum, e.to_string()).await,
        }
        Ok(())
    }

    /// Whether the share's UEB bytes match the cap (so its defects are the cap's).
    fn ueb_is_bad(&self, front: &[u8]) -> bool {
        use super::layout::{ROOT_OFFSET, UEB_OFFSET};
        let Some(ueb) = front.get(UEB_OFFSET as usize..ROOT_OFFSET as usize) else {
            return false;
        };
        super::hash::tagged(super::hash::TAG_UEB, &[ueb]) == self.cap.ueb_hash
            && Ueb::decode(ueb).map_or(true, |u| u.check_cap(self.cap).is_err())
    }

    fn not_enough(&self) -> DownloadError {
        let good: BTreeSet<(usize, u16)> = self
            .listed
            .iter()
            .copied()
            .filter(|(s, n)| !self.dead.contains(s) && !self.corrupt_set.contains(&(*s, *n)))
            .collect();
        let found: BTreeSet<u16> = good.iter().map(|(_, n)| *n).collect();
        let servers: BTreeSet<usize> = good.iter().map(|(s, _)| *s).collect();
        DownloadError::NotEnoughShares {
            found: found.len(),
            total: self.cap.total,
            needed: self.cap.needed,
            servers: servers.len(),
            asked: self.servers.len(),
            failed: self.dead.len(),
            corrupt: self.corrupt_set.len(),
        }
    }
}
