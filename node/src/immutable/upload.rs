//! Upload: server selection, the encoding pipeline, and the writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_rpc::Bytes;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::cap::storage_index_for;
use super::codec::{derive_key, encode_source, plaintext_hasher, EncodeSummary, ShareWrite};
use super::hash::{tagged, Hash, TAG_LEASE_CANCEL, TAG_LEASE_RENEW};
use super::layout::{Geometry, ShareLayout};
use super::{
    call, permuted, ChkCap, EncodingParams, ParamsError, Phase, Progress, ReadCap, UploadSource,
    MAX_FILE_SIZE,
};
use crate::broker::ConnectedServer;
use crate::storage::{BucketWriterRef, CanaryRef, NullCanary, StorageIndex, MAX_CHUNK};

/// Segments encoded ahead of the writes.
const PIPELINE_DEPTH: usize = 2;
/// Writes queued per share.
const SHARE_QUEUE: usize = 2;
/// Writes in flight per share.
const IN_FLIGHT: usize = 2;
/// The read size of the hashing pass.
const HASH_CHUNK: usize = 1 << 20;

/// Why an upload failed. Whenever it fails after buckets were allocated, every writer not
/// yet closed was aborted.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The parameters are out of range.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// The file is larger than [`MAX_FILE_SIZE`].
    #[error("the file is {0} bytes, more than the {MAX_FILE_SIZE} allowed")]
    TooLarge(u64),
    /// Reading the source failed.
    #[error("reading the file failed: {0}")]
    Source(#[source] io::Error),
    /// The source's bytes changed between the hashing pass and the encoding pass.
    #[error("the file changed while it was being uploaded")]
    SourceChanged,
    /// Too few servers could take shares.
    #[error(
        "found {found} servers that can take shares, need happy={happy} \
         ({servers} servers asked: {failed} failed, {full} had no room)"
    )]
    NotHappy {
        /// Distinct servers in a maximum server-to-share matching.
        found: usize,
        /// `shares.happy`.
        happy: u16,
        /// Servers asked.
        servers: usize,
        /// Servers whose calls failed.
        failed: usize,
        /// Servers that allocated nothing.
        full: usize,
    },
    /// Servers failed while shares were written, leaving too few.
    #[error(
        "servers failed during the upload: {found} servers still hold shares, need \
         happy={happy} (last error: {last_error})"
    )]
    LostServers {
        /// Distinct servers left in a maximum matching.
        found: usize,
        /// `shares.happy`.
        happy: u16,
        /// The last failure.
        last_error: String,
    },
    /// An internal task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The shares one server holds after an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerShares {
    /// Its nickname.
    pub nickname: String,
    /// Its key.
    pub key: [u8; 32],
    /// Shares written to it.
    pub uploaded: Vec<u16>,
    /// Shares it already had.
    pub already_had: Vec<u16>,
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct UploadReport {
    /// The read cap.
    pub cap: ReadCap,
    /// The file's size.
    pub size: u64,
    /// The storage index (none for a LIT cap).
    pub storage_index: Option<StorageIndex>,
    /// Servers holding shares, in permuted order.
    pub servers: Vec<ServerShares>,
    /// Distinct servers in a maximum server-to-share matching (Tahoe's happiness).
    pub happiness: usize,
    /// Distinct shares on the grid.
    pub shares_placed: usize,
    /// Servers that failed (nickname, error).
    pub failed_servers: Vec<(String, String)>,
    /// The hashing pass.
    pub hash_time: Duration,
    /// Server selection.
    pub placement_time: Duration,
    /// Encoding, writing and closing.
    pub push_time: Duration,
    /// The whole upload.
    pub total_time: Duration,
}

/// Uploads `source` as an immutable file, k-of-N as `params` says, and returns its cap.
///
/// Files of at most `params.max_inline` bytes (every empty file) get a LIT cap and touch no
/// server. Otherwise the key derives from `convergence_secret`, the parameters and the
/// plaintext; leases derive from `lease_secret`, the storage index and each server's key.
/// Fails, with every bucket aborted, when fewer than `params.happy` servers can hold shares.
pub async fn upload(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    convergence_secret: &[u8; 32],
    lease_secret: &[u8; 32],
    source: impl UploadSource,
    progress: Arc<Progress>,
) -> Result<UploadReport, UploadError> {
    let r = upload_inner(
        servers,
        params,
        convergence_secret,
        lease_secret,
        source,
        &progress,
    )
    .await;
    progress.set_phase(if r.is_ok() {
        Phase::Done
    } else {
        Phase::Failed
    });
    r
}

async fn upload_inner(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    convergence_secret: &[u8; 32],
    lease_secret: &[u8; 32],
    source: impl UploadSource,
    progress: &Arc<Progress>,
) -> Result<UploadReport, UploadError> {
    let started = Instant::now();
    params.validate()?;
    let size = source.len();
    progress.set_total(size);
    if size > MAX_FILE_SIZE {
        return Err(UploadError::TooLarge(size));
    }
    if size <= params.max_inline {
        let mut data = vec![0u8; size as usize];
        source.read_at(0, &mut data).map_err(UploadError::Source)?;
        progress.add_done(size);
        return Ok(UploadReport {
            cap: ReadCap::Lit(data),
            size,
            storage_index: None,
            servers: Vec::new(),
            happiness: 0,
            shares_placed: 0,
            failed_servers: Vec::new(),
            hash_time: Duration::ZERO,
            placement_time: Duration::ZERO,
            push_time: Duration::ZERO,
            total_time: started.elapsed(),
        });
    }
    let source = Arc::new(source);

    // Pass 1: the plaintext hash, for the key.
    progress.set_phase(Phase::Hashing);
    let plaintext_hash = {
        let (source, progress) = (source.clone(), progress.clone());
        tokio::task::spawn_blocking(move || hash_source(&*source, &progress))
            .await
            .map_err(|e| UploadError::Internal(format!("the hashing task failed: {e}")))??
    };
    let hash_time = started.elapsed();
    let g = Geometry::new(
        params.needed,
        params.total,
        size,
        params.segment_size_for(size),
    )
    .map_err(|e| UploadError::Internal(e.to_string()))?;
    let key = derive_key(convergence_secret, &g, &plaintext_hash);
    let si = storage_index_for(&key);
    let layout = ShareLayout::new(g);

    // Server selection.
    progress.set_phase(Phase::Placing);
    let placed_at = Instant::now();
    let mut placement = place(servers, params, &si, lease_secret, layout.end).await;
    let happiness = placement.happiness();
    progress.set_servers(happiness, placement.shares().len());
    if happiness < params.happy as usize {
        let full = placement.full.len();
        let failed = placement.failed.len();
        placement.abort_all().await;
        info!(si = %base32(&si), happiness, happy = params.happy, "upload refused: not happy");
        return Err(UploadError::NotHappy {
            found: happiness,
            happy: params.happy,
            servers: servers.len(),
            failed,
            full,
        });
    }
    let placement_time = placed_at.elapsed();

    // Pass 2: encode and write.
    progress.set_phase(Phase::Pushing);
    let pushed_at = Instant::now();
    let r = push(
        &mut placement,
        source,
        g,
        key,
        plaintext_hash,
        params,
        progress,
    )
    .await;
    let summary = match r {
        Ok(s) => s,
        Err(e) => {
            placement.abort_all().await;
            return Err(e);
        }
    };
    let push_time = pushed_at.elapsed();
    let happiness = placement.happiness();
    let cap = ReadCap::Chk(ChkCap {
        key,
        ueb_hash: summary.ueb.hash(),
        needed: g.needed,
        total: g.total,
        size,
    });
    let report = UploadReport {
        cap,
        size,
        storage_index: Some(si),
        servers: placement.report(servers),
        happiness,
        shares_placed: placement.shares().len(),
        failed_servers: placement
            .failed
            .iter()
            .map(|(i, e)| (servers[*i].nickname.clone(), e.clone()))
            .collect(),
        hash_time,
        placement_time,
        push_time,
        total_time: started.elapsed(),
    };
    progress.set_servers(happiness, report.shares_placed);
    info!(
        si = %base32(&si),
        size,
        happiness,
        shares = report.shares_placed,
        "uploaded"
    );
    Ok(report)
}

fn base32(b: &[u8]) -> String {
    super::cap::base32(b)
}

fn hash_source(source: &dyn UploadSource, progress: &Progress) -> Result<Hash, UploadError> {
    let size = source.len();
    let mut h = plaintext_hasher(size);
    let mut buf = vec![0u8; HASH_CHUNK.min(size as usize)];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        source
            .read_at(at, &mut buf[..n])
            .map_err(UploadError::Source)?;
        h.update(&buf[..n]);
        at += n as u64;
        progress.add_hashed(n as u64);
    }
    Ok(h.finish())
}

/// One bucket writer we hold.
struct Held {
    server: usize,
    writer: BucketWriterRef,
}

/// The outcome of server selection, kept up to date as servers fail.
struct Placement {
    order: Vec<usize>,
    writers: BTreeMap<u16, Held>,
    /// (server, share) pairs the servers already had.
    have: Vec<(usize, u16)>,
    /// Servers whose calls failed.
    failed: Vec<(usize, String)>,
    /// Servers that allocated nothing when asked.
    full: BTreeSet<usize>,
}

impl Placement {
    fn edges(&self) -> Vec<(usize, u16)> {
        let dead: BTreeSet<usize> = self.failed.iter().map(|(s, _)| *s).collect();
        self.writers
            .iter()
            .map(|(n, h)| (h.server, *n))
            .chain(self.have.iter().copied())
            .filter(|(s, _)| !dead.contains(s))
            .collect()
    }

    fn happiness(&self) -> usize {
        max_matching(&self.edges())
    }

    fn shares(&self) -> BTreeSet<u16> {
        self.edges().into_iter().map(|(_, n)| n).collect()
    }

    fn fail_server(&mut self, server: usize, error: String) {
        if !self.failed.iter().any(|(s, _)| *s == server) {
            self.failed.push((server, error));
        }
    }

    /// Aborts every writer still held (best effort, concurrently, bounded).
    async fn abort_all(&mut self) {
        let writers = std::mem::take(&mut self.writers);
        join_all(writers.values().map(|h| call(h.writer.abort()))).await;
    }

    fn report(&self, servers: &[ConnectedServer]) -> Vec<ServerShares> {
        let dead: BTreeSet<usize> = self.failed.iter().map(|(s, _)| *s).collect();
        self.order
            .iter()
            .filter(|i| !dead.contains(i))
            .filter_map(|&i| {
                let uploaded: Vec<u16> = self
                    .writers
                    .iter()
                    .filter(|(_, h)| h.server == i)
                    .map(|(n, _)| *n)
                    .collect();
                let already_had: Vec<u16> = self
                    .have
                    .iter()
                    .filter(|(s, _)| *s == i)
                    .map(|(_, n)| *n)
                    .collect();
                (!uploaded.is_empty() || !already_had.is_empty()).then(|| ServerShares {
                    nickname: servers[i].nickname.clone(),
                    key: servers[i].key,
                    uploaded,
                    already_had,
                })
            })
            .collect()
    }
}

/// The size of a maximum matching between servers and shares (Kuhn's augmenting paths).
fn max_matching(edges: &[(usize, u16)]) -> usize {
    let mut adj: BTreeMap<usize, Vec<u16>> = BTreeMap::new();
    for &(s, n) in edges {
        adj.entry(s).or_default().push(n);
    }
    let mut owner: BTreeMap<u16, usize> = BTreeMap::new();
    fn augment(
        s: usize,
        adj: &BTreeMap<usize, Vec<u16>>,
        owner: &mut BTreeMap<u16, usize>,
        seen: &mut BTreeSet<u16>,
    ) -> bool {
        for &n in adj.get(&s).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(n) {
                let free = match owner.get(&n) {
                    None => true,
                    Some(&o) => augment(o, adj, owner, seen),
                };
                if free {
                    owner.insert(n, s);
                    return true;
                }
            }
        }
        false
    }
    adj.keys()
        .filter(|&&s| augment(s, &adj, &mut owner, &mut BTreeSet::new()))
        .count()
}

/// Asks `server` for buckets for `shares`; keeps only what was asked for.
async fn allocate(
    server: &ConnectedServer,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    shares: BTreeSet<u16>,
    size: u64,
) -> Result<(BTreeSet<u16>, BTreeMap<u16, BucketWriterRef>), String> {
    let renew = tagged(TAG_LEASE_RENEW, &[lease_secret, si, &server.key]);
    let cancel = tagged(TAG_LEASE_CANCEL, &[lease_secret, si, &server.key]);
    let (have, writers) = call(server.server.allocate_buckets(
        *si,
        renew,
        cancel,
        shares.clone(),
        size,
        CanaryRef::serve(NullCanary),
    ))
    .await?;
    let have = have.intersection(&shares).copied().collect();
    let writers = writers
        .into_iter()
        .filter(|(n, _)| shares.contains(n))
        .collect();
    Ok((have, writers))
}

/// Server selection: one share per server in permuted order, then the rest spread over
/// the servers that accepted.
async fn place(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    share_size: u64,
) -> Placement {
    let mut p = Placement {
        order: permuted(servers, si),
        writers: BTreeMap::new(),
        have: Vec::new(),
        failed: Vec::new(),
        full: BTreeSet::new(),
    };
    let mut unplaced: BTreeSet<u16> = (0..params.total).collect();
    let mut accepting: Vec<usize> = Vec::new();
    let order = p.order.clone();
    for &i in &order {
        let Some(&next) = unplaced.iter().next() else {
            break;
        };
        let ask = BTreeSet::from([next]);
        match allocate(&servers[i], si, lease_secret, ask, share_size).await {
            Err(e) => {
                debug!(server = %servers[i].nickname, error = %e, "allocate_buckets failed");
                p.fail_server(i, e);
            }
            Ok((have, writers)) => {
                if writers.is_empty() && have.is_empty() {
                    p.full.insert(i);
                    continue;
                }
                if !writers.is_empty() {
                    accepting.push(i);
                }
                for n in have {
                    unplaced.remove(&n);
                    p.have.push((i, n));
                }
                for (n, writer) in writers {
                    unplaced.remove(&n);
                    p.writers.insert(n, Held { server: i, writer });
                }
            }
        }
    }
    // The rest, spread evenly over the servers that took a share.
    while !unplaced.is_empty() && !accepting.is_empty() {
        let mut still = Vec::new();
        let round = accepting.clone();
        for (pos, &i) in round.iter().enumerate() {
            if unplaced.is_empty() {
                still.push(i);
                continue;
            }
            let per = unplaced.len().div_ceil(round.len() - pos);
            let ask: BTreeSet<u16> = unplaced.iter().copied().take(per).collect();
            match allocate(&servers[i], si, lease_secret, ask, share_size).await {
                Err(e) => p.fail_server(i, e),
                Ok((have, writers)) => {
                    let took = !writers.is_empty();
                    for n in have {
                        unplaced.remove(&n);
                        p.have.push((i, n));
                    }
                    for (n, writer) in writers {
                        unplaced.remove(&n);
                        p.writers.insert(n, Held { server: i, writer });
                    }
                    if took {
                        still.push(i);
                    }
                }
            }
        }
        accepting = still;
    }
    // Writers on servers that failed later in selection are of no use.
    let dead: BTreeSet<usize> = p.failed.iter().map(|(s, _)| *s).collect();
    let lost: Vec<u16> = p
        .writers
        .iter()
        .filter(|(_, h)| dead.contains(&h.server))
        .map(|(n, _)| *n)
        .collect();
    for n in lost {
        p.writers.remove(&n);
    }
    p
}

enum Cmd {
    Write(u64, Vec<u8>),
    Close,
}

/// Performs one share's writes in order (a few in flight), then closes it.
async fn share_task(writer: BucketWriterRef, mut rx: mpsc::Receiver<Cmd>) -> Result<(), String> {
    let mut in_flight = FuturesUnordered::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Write(offset, data) => {
                while in_flight.len() >= IN_FLIGHT {
                    in_flight.next().await.unwrap_or(Ok(()))?;
                }
                let w = writer.clone();
                in_flight.push(async move { call(w.write(offset, Bytes(data))).await });
            }
            Cmd::Close => {
                while let Some(r) = in_flight.next().await {
                    r?;
                }
                return call(writer.close()).await;
            }
        }
    }
    Ok(())
}

struct Running {
    server: usize,
    tx: mpsc::Sender<Cmd>,
    task: JoinHandle<Result<(), String>>,
}

/// A batch of writes from the encoder, and how much plaintext it covers.
struct Batch {
    writes: Vec<ShareWrite>,
    plaintext: u64,
}

/// Pass 2: runs the encoder and the share writers; closes every share.
async fn push(
    placement: &mut Placement,
    source: Arc<impl UploadSource>,
    g: Geometry,
    key: [u8; 32],
    plaintext_hash: Hash,
    params: &EncodingParams,
    progress: &Progress,
) -> Result<EncodeSummary, UploadError> {
    let mut running: BTreeMap<u16, Running> = placement
        .writers
        .iter()
        .map(|(&n, h)| {
            let (tx, rx) = mpsc::channel(SHARE_QUEUE);
            let task = tokio::spawn(share_task(h.writer.clone(), rx));
            (
                n,
                Running {
                    server: h.server,
                    tx,
                    task,
                },
            )
        })
        .collect();
    let (tx, mut rx) = mpsc::channel::<Batch>(PIPELINE_DEPTH);
    let encoder = tokio::task::spawn_blocking(move || {
        encode_source(
            &*source,
            g,
            &key,
            &plaintext_hash,
            MAX_CHUNK as usize,
            &mut |writes, plaintext| tx.blocking_send(Batch { writes, plaintext }).is_ok(),
        )
    });
    let result = async {
        while let Some(batch) = rx.recv().await {
            let mut failed = Vec::new();
            for w in batch.writes {
                if let Some(r) = running.get(&w.shnum) {
                    if r.tx.send(Cmd::Write(w.offset, w.data)).await.is_err() {
                        failed.push(w.shnum);
                    }
                }
            }
            for n in failed {
                lose_share(placement, &mut running, n, params).await?;
            }
            progress.add_done(batch.plaintext);
        }
        let summary = encoder
            .await
            .map_err(|e| UploadError::Internal(format!("the encoding task failed: {e}")))??;
        progress.set_phase(Phase::Closing);
        for r in running.values() {
            // A task that already ended reports why when joined below.
            let _ = r.tx.send(Cmd::Close).await;
        }
        let shnums: Vec<u16> = running.keys().copied().collect();
        let outcomes = join_all(running.values_mut().map(|r| &mut r.task)).await;
        for (n, outcome) in shnums.iter().zip(outcomes) {
            let outcome =
                outcome.unwrap_or_else(|e| Err(format!("the share's writer task failed: {e}")));
            match outcome {
                Ok(()) => {
                    // Closed: it stays on the grid whatever happens next.
                    running.remove(n);
                }
                Err(e) => {
                    let server = running.remove(n).map(|r| r.server).unwrap_or(usize::MAX);
                    note_failure(placement, *n, server, e, params)?;
                }
            }
        }
        Ok(summary)
    }
    .await;
    if result.is_err() {
        for r in running.values() {
            r.task.abort();
        }
    }
    result
}

/// A share's writer task ended early: find out why and drop the share.
async fn lose_share(
    placement: &mut Placement,
    running: &mut BTreeMap<u16, Running>,
    shnum: u16,
    params: &EncodingParams,
) -> Result<(), UploadError> {
    let Some(r) = running.remove(&shnum) else {
        return Ok(());
    };
    let error = match r.task.await {
        Ok(Err(e)) => e,
        Ok(Ok(())) => "the share's writer stopped".into(),
        Err(e) => format!("the share's writer task failed: {e}"),
    };
    note_failure(placement, shnum, r.server, error, params)
}

/// Drops a failed share (and its server); fails the upload if happiness is lost.
fn note_failure(
    placement: &mut Placement,
    shnum: u16,
    server: usize,
    error: String,
    params: &EncodingParams,
) -> Result<(), UploadError> {
    warn!(shnum, error = %error, "a share could not be written; dropping its server");
    placement.writers.remove(&shnum);
    placement.fail_server(server, error.clone());
    let found = placement.happiness();
    if found < params.happy as usize {
        return Err(UploadError::LostServers {
            found,
            happy: params.happy,
            last_error: error,
        });
    }
    Ok(())
}

/// Encodes `source` as [`upload`] would, without any server: returns the cap and hands
/// every share write to `write(shnum, offset, bytes)` as it is made (writes of one share
/// do not overlap and together cover it; share `n`'s front, at offset 0, comes last).
/// Streaming, with the memory bounds of [`upload`]. For tools, benchmarks and tests.
pub fn encode_shares(
    params: &EncodingParams,
    convergence_secret: &[u8; 32],
    source: &dyn UploadSource,
    write: &mut dyn FnMut(u16, u64, &[u8]),
) -> Result<ReadCap, UploadError> {
    params.validate()?;
    let size = source.len();
    if size > MAX_FILE_SIZE {
        return Err(UploadError::TooLarge(size));
    }
    if size <= params.max_inline {
        let mut data = vec![0u8; size as usize];
        source.read_at(0, &mut data).map_err(UploadError::Source)?;
        return Ok(ReadCap::Lit(data));
    }
    let plaintext_hash = hash_source(source, &Progress::default())?;
    let g = Geometry::new(
        params.needed,
        params.total,
        size,
        params.segment_size_for(size),
    )
    .map_err(|e| UploadError::Internal(e.to_string()))?;
    let key = derive_key(convergence_secret, &g, &plaintext_hash);
    let summary = encode_source(
        source,
        g,
        &key,
        &plaintext_hash,
        MAX_CHUNK as usize,
        &mut |writes, _| {
            for w in writes {
                write(w.shnum, w.offset, &w.data);
            }
            true
        },
    )?;
    Ok(ReadCap::Chk(ChkCap {
        key,
        ueb_hash: summary.ueb.hash(),
        needed: g.needed,
        total: g.total,
        size,
    }))
}

/// Encodes `data` entirely in memory: the cap and the bytes of all N shares (indexed by
/// share number; none for a LIT cap). Small files only: everything is held.
pub fn encode_in_memory(
    params: &EncodingParams,
    convergence_secret: &[u8; 32],
    data: &[u8],
) -> Result<(ReadCap, Vec<Vec<u8>>), UploadError> {
    let mut shares: Vec<Vec<u8>> = Vec::new();
    let source: Arc<[u8]> = data.into();
    let cap = encode_shares(
        params,
        convergence_secret,
        &source,
        &mut |shnum, offset, bytes| {
            let n = shnum as usize;
            if shares.len() <= n {
                shares.resize(n + 1, Vec::new());
            }
            let s = &mut shares[n];
            let end = offset as usize + bytes.len();
            if s.len() < end {
                s.resize(end, 0);
            }
            s[offset as usize..end].copy_from_slice(bytes);
        },
    )?;
    Ok((cap, shares))
}

#[cfg(test)]
mod tests {
    use super::super::layout::{parse_share, ShareError, ShareFront};
    use super::*;

    #[test]
    fn matching() {
        assert_eq!(max_matching(&[]), 0);
        assert_eq!(max_matching(&[(0, 0), (1, 0), (2, 0)]), 1);
        assert_eq!(max_matching(&[(0, 0), (0, 1), (1, 0)]), 2);
        assert_eq!(max_matching(&[(0, 0), (0, 1), (1, 1), (2, 1), (2, 2)]), 3);
        let many: Vec<(usize, u16)> = (0..10).map(|i| (i, i as u16)).collect();
        assert_eq!(max_matching(&many), 10);
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[test]
    fn in_memory_shares_parse_and_agree() {
        for (k, n) in [(3u16, 7u16), (1, 1), (3, 3), (2, 9)] {
            in_memory_case(k, n);
        }
    }

    fn in_memory_case(k: u16, n: u16) {
        let params = EncodingParams {
            max_segment_size: 1000,
            max_inline: 0,
            ..EncodingParams::new(k, k, n).unwrap()
        };
        for len in [1usize, 56, 191, 192, 193, 576, 577, 5000] {
            let d = data(len);
            let (cap, shares) = encode_in_memory(&params, &[1; 32], &d).unwrap();
            let ReadCap::Chk(chk) = &cap else {
                panic!("a CHK cap")
            };
            assert_eq!(shares.len(), n as usize);
            for (i, s) in shares.iter().enumerate() {
                let front = parse_share(s).unwrap();
                assert_eq!(front.header.shnum as usize, i);
                assert_eq!(front.ueb.hash(), chk.ueb_hash);
                ShareFront::decode_for(s, chk, i as u16).unwrap();
                if n > 1 {
                    let other = (i as u16 + 1) % n;
                    assert_eq!(
                        ShareFront::decode_for(s, chk, other).unwrap_err(),
                        ShareError::WrongShareNumber {
                            expected: other,
                            found: i as u16
                        }
                    );
                }
            }
            // Same input, same cap; another secret, another cap.
            assert_eq!(encode_in_memory(&params, &[1; 32], &d).unwrap().0, cap);
            assert_ne!(encode_in_memory(&params, &[2; 32], &d).unwrap().0, cap);
        }
    }

    #[test]
    fn every_flipped_bit_region_is_caught() {
        let params = EncodingParams {
            max_segment_size: 192,
            max_inline: 0,
            ..EncodingParams::new(3, 3, 5).unwrap()
        };
        let (cap, shares) = encode_in_memory(&params, &[1; 32], &data(2000)).unwrap();
        let ReadCap::Chk(chk) = &cap else {
            panic!("a CHK cap")
        };
        let share = &shares[2];
        // Flip one bit at a spread of offsets: every one is refused by one check or another.
        for at in (0..share.len()).step_by(7) {
            let mut bad = share.clone();
            bad[at] ^= 0x10;
            let front = ShareFront::decode_for(&bad, chk, 2);
            let full = parse_share(&bad);
            assert!(
                front.is_err() || full.is_err(),
                "a flipped bit at {at} of {} went unnoticed",
                share.len()
            );
        }
        // Truncated and extended shares.
        assert!(matches!(
            parse_share(&share[..share.len() - 1]),
            Err(ShareError::Short { .. })
        ));
        let mut long = share.clone();
        long.push(0);
        assert!(matches!(parse_share(&long), Err(ShareError::Long { .. })));
    }
}
