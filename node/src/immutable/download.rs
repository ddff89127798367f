//! Download: locating shares, verifying them, and decoding segments into a sink.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes::cipher::StreamCipher;
use futures_util::future::join_all;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::codec::{cipher, ciphertext_hasher, Codec};
use super::hash::Hash;
use super::layout::{verify_block, ShareError, ShareFront, ShareLayout, Ueb};
use super::{call, permuted, ChkCap, Phase, Progress, ReadCap};
use crate::broker::ConnectedServer;
use crate::storage::{BucketReaderRef, StorageIndex, MAX_CHUNK};

/// Bytes of blocks read ahead per share (at least one block).
const BLOCK_WINDOW: u64 = MAX_CHUNK;
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

/// A share a server listed, not yet read.
struct Candidate {
    server: usize,
    shnum: u16,
    reader: BucketReaderRef,
}

/// Why fetching from a share failed.
enum Fault {
    /// The server failed: drop all its shares.
    Server(String),
    /// The share's bytes are bad: report it, drop the share.
    Corrupt(String),
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

/// Bytes `[start, start + data.len())` of a share, with the next range maybe on its way.
#[derive(Default)]
struct Window {
    start: u64,
    data: Vec<u8>,
    next: Option<Prefetch>,
}

impl Window {
    fn covers(&self, offset: u64, len: u64) -> bool {
        offset >= self.start && offset + len <= self.start + self.data.len() as u64
    }

    fn slice(&self, offset: u64, len: u64) -> &[u8] {
        let a = (offset - self.start) as usize;
        &self.data[a..a + len as usize]
    }

    /// Makes `[offset, offset + want)` (`want >= len`) the window, from the prefetch if it
    /// is that range; a short answer is corruption.
    async fn load(
        &mut self,
        reader: &BucketReaderRef,
        offset: u64,
        want: u64,
    ) -> Result<(), Fault> {
        let data = match self.next.take() {
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

    fn prefetch(&mut self, reader: &BucketReaderRef, offset: u64, want: u64) {
        let reader = reader.clone();
        self.next = Some((
            offset,
            want,
            tokio::spawn(async move { read_range(&reader, offset, want).await }),
        ));
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some((_, _, task)) = self.next.take() {
            task.abort();
        }
    }
}

/// A share whose front checked out, in use.
struct Active {
    server: usize,
    shnum: u16,
    reader: BucketReaderRef,
    root: Hash,
    blocks: Window,
    levels: Vec<Window>,
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
        if !self.blocks.covers(offset, len) {
            let per = Self::per_window(layout);
            let first = seg - seg % per;
            let (start, want) = Self::window_range(layout, first);
            self.blocks.load(&self.reader, start, want).await?;
            let next = first + per;
            if next < layout.geometry.num_segments {
                let (s, w) = Self::window_range(layout, next);
                self.blocks.prefetch(&self.reader, s, w);
            }
        }
        let block = self.blocks.slice(offset, len).to_vec();
        // The sibling nodes, each level's window loaded as needed.
        let levels = &layout.tree_levels;
        for level in 0..levels.len() - 1 {
            if let Some(sib) = super::hash::sibling(levels, level, seg) {
                let at = layout.tree_node_offset(level, sib);
                if !self.levels[level].covers(at, 32) {
                    let first = sib & !1;
                    let count = TREE_WINDOW.min(levels[level] - first);
                    let start = layout.tree_node_offset(level, first);
                    self.levels[level]
                        .load(&self.reader, start, 32 * count)
                        .await?;
                }
            }
        }
        let verdict = verify_block(layout, &self.root, seg, &block, |level, index| {
            let at = layout.tree_node_offset(level, index);
            let mut h = [0u8; 32];
            h.copy_from_slice(self.levels[level].slice(at, 32));
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

    /// Asks every server for the storage index's shares.
    async fn locate(&mut self) {
        let si = self.si;
        let answers = join_all(
            self.servers
                .iter()
                .map(|s| async move { call(s.server.get_buckets(si)).await }),
        )
        .await;
        for (i, a) in answers.into_iter().enumerate() {
            match a {
                Ok(buckets) => {
                    for (shnum, reader) in buckets {
                        if shnum < self.cap.total && self.listed.insert((i, shnum)) {
                            self.candidates.push(Candidate {
                                server: i,
                                shnum,
                                reader,
                            });
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
    fn next_candidate(&mut self) -> Option<Candidate> {
        let in_use: BTreeSet<usize> = self.active.iter().map(|a| a.server).collect();
        let shnums: BTreeSet<u16> = self.active.iter().map(|a| a.shnum).collect();
        let k = self.cap.needed;
        let best = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| !shnums.contains(&c.shnum))
            .min_by_key(|(_, c)| {
                (
                    in_use.contains(&c.server),
                    c.shnum >= k,
                    self.rank[c.server],
                    c.shnum,
                )
            })
            .map(|(i, _)| i)?;
        Some(self.candidates.remove(best))
    }

    /// Brings the shares in use up to `k`, reading and checking fronts.
    async fn fill(&mut self, k: usize) -> Result<(), DownloadError> {
        while self.active.len() < k {
            let Some(c) = self.next_candidate() else {
                return Err(self.not_enough());
            };
            let front_len = ShareLayout::front_len(self.cap.total);
            let bytes = match read_range(&c.reader, 0, front_len).await {
                Ok(b) => b,
                Err(e) => {
                    self.server_failed(c.server, e);
                    continue;
                }
            };
            match ShareFront::decode_for(&bytes, self.cap, c.shnum) {
                Ok(front) => {
                    if self.ueb.is_none() {
                        self.ueb = Some(front.ueb);
                    }
                    let levels = front.layout.tree_levels.len() - 1;
                    self.active.push(Active {
                        server: c.server,
                        shnum: c.shnum,
                        reader: c.reader,
                        root: front.root,
                        blocks: Window::default(),
                        levels: (0..levels).map(|_| Window::default()).collect(),
                    });
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
