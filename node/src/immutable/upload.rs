//! Upload: server selection, the encoding pipeline, and the writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::IntoFuture;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_rpc::{Bytes, CallError, ErrorChain, Refusal};
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::cap::{base32, storage_index_for};
use super::codec::{derive_key, encode_source, plaintext_hasher, EncodeSummary, ShareWrite};
use super::flow::Flow;
use super::hash::{tagged, Hash, TAG_LEASE_CANCEL, TAG_LEASE_RENEW};
use super::layout::{Geometry, ShareLayout};
use super::{
    bounded, call, permuted, ChkCap, EncodingParams, ParamsError, Phase, Progress, ReadCap,
    UploadSource, MAX_FILE_SIZE,
};
use crate::broker::ConnectedServer;
use crate::storage::{
    BucketWriterRef, CanaryRef, NullCanary, StorageError, StorageIndex, MAX_CHUNK,
};

/// Segments encoded ahead of the writes.
const PIPELINE_DEPTH: usize = 2;
/// Writes queued per share (waiting for room in the server's window).
const SHARE_QUEUE: usize = 2;
/// The largest share uploaded in one flight with its allocation (one write): files of one
/// segment whose shares are at most this big are encoded in memory before placement.
const SMALL_SHARE_MAX: u64 = MAX_CHUNK;
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
/// Fails, with every bucket aborted, when fewer than `params.happy` servers can hold shares
/// (except that a small file's shares are closed in the same flight as their allocation: those
/// the servers accepted stay; see [round trips](crate::immutable#round-trips)).
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
            .map_err(|e| {
                UploadError::Internal(format!("the hashing task failed: {}", ErrorChain(&e)))
            })??
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
    // A small file is encoded in memory first; then each share is allocated, written and
    // closed in one flight, so the whole upload takes one round (one round trip when the
    // servers accept).
    let small = if g.num_segments == 1 && layout.end <= SMALL_SHARE_MAX {
        Some(encode_small(source.clone(), g, key, plaintext_hash).await?)
    } else {
        None
    };
    // A large one is written behind its allocations, on the promised writers, when every
    // server of the first round takes its share; else it is placed first, as below.
    let speculated = match small {
        Some(_) => None,
        None => {
            speculative_push(
                servers,
                params,
                &si,
                lease_secret,
                layout.end,
                (source.clone(), g, key, plaintext_hash),
                progress,
            )
            .await
        }
    };
    let (placement, summary, placement_time, pushed_at) = match speculated {
        Some(r) => {
            let (placement, summary, placement_time) = r?;
            (placement, summary, placement_time, placed_at)
        }
        None => {
            place_then_push(
                servers,
                params,
                &si,
                lease_secret,
                (source, g, key, plaintext_hash),
                small,
                progress,
                placed_at,
            )
            .await?
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

/// What the encoder needs: the source, the geometry, the key and the plaintext hash.
type Encoding<S> = (Arc<S>, Geometry, [u8; 32], Hash);

/// Server selection, then the writes (a small file's shares go out with their
/// allocations). Returns the placement, the encoding's summary, the selection's duration and
/// when the writes began. Fails, with every bucket aborted, below happiness.
#[allow(clippy::too_many_arguments)]
async fn place_then_push<S: UploadSource>(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    (source, g, key, plaintext_hash): Encoding<S>,
    small: Option<(Vec<Vec<u8>>, EncodeSummary)>,
    progress: &Arc<Progress>,
    placed_at: Instant,
) -> Result<(Placement, EncodeSummary, Duration, Instant), UploadError> {
    let layout = ShareLayout::new(g);
    let (mut placement, rtts) = match &small {
        Some((shares, _)) => place_small(servers, params, si, lease_secret, shares).await,
        None => place(servers, params, si, lease_secret, layout.end).await,
    };
    let happiness = placement.happiness();
    progress.set_servers(happiness, placement.shares().len());
    if happiness < params.happy as usize {
        let full = placement.full.len();
        let failed = placement.failed.len();
        placement.abort_all().await;
        info!(si = %base32(si), happiness, happy = params.happy, "upload refused: not happy");
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
    let r = match small {
        Some((_, summary)) => {
            progress.add_done(g.size);
            Ok(summary)
        }
        None => {
            let flows = flows_for(&placement, &rtts);
            let r = push(
                &mut placement,
                &flows,
                source,
                g,
                key,
                plaintext_hash,
                params,
                progress,
            )
            .await;
            let windows: Vec<(&str, u64)> = flows
                .iter()
                .map(|(&i, f)| (servers[i].nickname.as_str(), f.window()))
                .collect();
            debug!(?windows, "write windows at the end (bytes per server)");
            r
        }
    };
    match r {
        Ok(summary) => Ok((placement, summary, placement_time, pushed_at)),
        Err(e) => {
            placement.abort_all().await;
            Err(e)
        }
    }
}

/// A large file's first round of server selection with the writes behind it: every share
/// of the first round is asked for at once (`allocate_share`), and its writes go out on
/// the promised writer without waiting for the answer, so the upload spends no round trip
/// on selection. When every server of the round takes its share, that is the upload;
/// when any does not (full, already holding it, busy, failed, or a server from before
/// `allocate_share`), the pipelined writes on its promise are refused, everything is
/// stopped and aborted, and `None` sends the upload the ordinary way (selection first):
/// a refusal costs one round trip and what was sent meanwhile. A file the servers already
/// hold is such a case (its first round answers "already have").
async fn speculative_push<S: UploadSource>(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    share_size: u64,
    (source, g, key, plaintext_hash): Encoding<S>,
    progress: &Arc<Progress>,
) -> Option<Result<(Placement, EncodeSummary, Duration), UploadError>> {
    let started = Instant::now();
    let mut p = Placement::new(servers, si);
    let all: BTreeSet<u16> = (0..params.total).collect();
    let round = plan_round(
        &p.order,
        &all,
        &BTreeSet::new(),
        &|_| true,
        &BTreeSet::new(),
    );
    let covered: BTreeSet<u16> = round.iter().map(|(_, n)| *n).collect();
    if covered.len() < usize::from(params.total) || max_matching(&round) < usize::from(params.happy)
    {
        return None;
    }
    let mut promises = Vec::with_capacity(round.len());
    for &(i, n) in &round {
        let server = &servers[i];
        let (renew, cancel) = lease_secrets(server, si, lease_secret);
        let promise = bounded(server.server.allocate_share_promise(
            *si,
            renew,
            cancel,
            n,
            share_size,
            CanaryRef::serve(NullCanary),
        ))
        .await;
        match promise {
            Ok(promise) => {
                p.writers.insert(
                    n,
                    Held {
                        server: i,
                        writer: promise.reference(),
                    },
                );
                promises.push((i, promise));
            }
            Err(e) => {
                debug!(server = %server.nickname, error = %ErrorChain(&e), "no pipelined allocation");
                p.abort_all().await;
                return None;
            }
        }
    }
    let mut per_server: BTreeMap<usize, u64> = BTreeMap::new();
    for &(i, _) in &round {
        *per_server.entry(i).or_default() += 1;
    }
    let flows: BTreeMap<usize, Arc<Flow>> = per_server
        .into_iter()
        .map(|(i, n)| (i, Flow::new(2 * MAX_CHUNK * n)))
        .collect();
    progress.set_servers(round.len(), round.len());
    progress.set_phase(Phase::Pushing);
    let answers = join_all(promises.into_iter().map(|(i, promise)| async move {
        let answer = bounded(IntoFuture::into_future(promise)).await;
        (i, answer, started.elapsed())
    }));
    let outcome = {
        let pushing = push(
            &mut p,
            &flows,
            source,
            g,
            key,
            plaintext_hash,
            params,
            progress,
        );
        tokio::pin!(pushing);
        tokio::pin!(answers);
        let mut pushed = None;
        let answers = loop {
            tokio::select! {
                biased;
                a = &mut answers => break a,
                r = &mut pushing, if pushed.is_none() => pushed = Some(r),
            }
        };
        let refused = answers
            .iter()
            .find_map(|(i, a, _)| a.as_ref().err().map(|e| (*i, e)));
        match refused {
            Some((i, e)) => {
                debug!(server = %servers[i].nickname, error = %ErrorChain(e), "a pipelined allocation was refused: placing first");
                None
            }
            None => {
                for (i, _, rtt) in &answers {
                    if let Some(f) = flows.get(i) {
                        f.note_rtt(*rtt);
                    }
                }
                let placement_time = answers.iter().map(|(_, _, t)| *t).max().unwrap_or_default();
                let r = match pushed {
                    Some(r) => r,
                    None => pushing.await,
                };
                Some((r, placement_time))
            }
        }
    };
    match outcome {
        // Dropping the push above stopped the encoder and the writers' tasks.
        None => {
            p.abort_all().await;
            None
        }
        Some((Ok(summary), placement_time)) => Some(Ok((p, summary, placement_time))),
        Some((Err(e), _)) => {
            p.abort_all().await;
            Some(Err(e))
        }
    }
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
    /// (server, share) pairs written and closed during selection (small files).
    closed: Vec<(usize, u16)>,
    /// (server, share) pairs the servers already had.
    have: Vec<(usize, u16)>,
    /// Servers whose calls failed.
    failed: Vec<(usize, String)>,
    /// Servers that allocated nothing when asked.
    full: BTreeSet<usize>,
}

impl Placement {
    fn new(servers: &[ConnectedServer], si: &StorageIndex) -> Placement {
        Placement {
            order: permuted(servers, si),
            writers: BTreeMap::new(),
            closed: Vec::new(),
            have: Vec::new(),
            failed: Vec::new(),
            full: BTreeSet::new(),
        }
    }

    fn edges(&self) -> Vec<(usize, u16)> {
        let dead: BTreeSet<usize> = self.failed.iter().map(|(s, _)| *s).collect();
        self.writers
            .iter()
            .map(|(n, h)| (h.server, *n))
            .chain(self.closed.iter().copied())
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
                let mut uploaded: Vec<u16> = self
                    .writers
                    .iter()
                    .filter(|(_, h)| h.server == i)
                    .map(|(n, _)| *n)
                    .chain(self.closed.iter().filter(|(s, _)| *s == i).map(|(_, n)| *n))
                    .collect();
                uploaded.sort_unstable();
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
pub(crate) fn max_matching(edges: &[(usize, u16)]) -> usize {
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

/// What one server said to a request for one share.
enum Alloc {
    /// A writer for the share.
    Writer(BucketWriterRef),
    /// The server already holds the share (its lease was renewed).
    Have,
    /// The server takes no (more) shares: full, read-only, over the client's quota.
    Full(String),
    /// The share is being uploaded to that server by someone else.
    Busy,
    /// The call failed: the server is not usable.
    Failed(String),
}

/// Asks `server` for a bucket for share `shnum` (`allocate_share`; `allocate_buckets` for
/// one share on a server that predates it). Also gives the call's duration: it carries
/// almost no data, so it measures the link's round trip.
async fn allocate_one(
    server: &ConnectedServer,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    shnum: u16,
    size: u64,
) -> (Alloc, Duration) {
    let (renew, cancel) = lease_secrets(server, si, lease_secret);
    let started = Instant::now();
    let answer = bounded(server.server.allocate_share(
        *si,
        renew,
        cancel,
        shnum,
        size,
        CanaryRef::serve(NullCanary),
    ))
    .await;
    let outcome = match answer {
        Ok(w) => Alloc::Writer(w),
        Err(CallError::Refused(Refusal::UnknownMethod { .. })) => {
            allocate_legacy(server, si, renew, cancel, shnum, size).await
        }
        Err(e) => refusal(e, shnum),
    };
    (outcome, started.elapsed())
}

/// The lease secrets for `server`.
pub(crate) fn lease_secrets(
    server: &ConnectedServer,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
) -> ([u8; 32], [u8; 32]) {
    (
        tagged(TAG_LEASE_RENEW, &[lease_secret, si, &server.key]),
        tagged(TAG_LEASE_CANCEL, &[lease_secret, si, &server.key]),
    )
}

/// What `allocate_share`'s error means for the placement of `shnum`.
fn refusal(e: CallError<StorageError>, shnum: u16) -> Alloc {
    match e {
        CallError::App(StorageError::AlreadyHave { shnum: n }) if n == shnum => Alloc::Have,
        CallError::App(StorageError::UploadInProgress { .. }) => Alloc::Busy,
        CallError::App(
            e @ (StorageError::NoSpace
            | StorageError::ReadOnly
            | StorageError::QuotaExceeded { .. }
            | StorageError::TooLarge { .. }),
        ) => Alloc::Full(e.to_string()),
        other => Alloc::Failed(call_error_text(other)),
    }
}

fn call_error_text(e: CallError<StorageError>) -> String {
    match e {
        CallError::App(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// `allocate_buckets` for the one share `shnum`, for servers without `allocate_share`.
async fn allocate_legacy(
    server: &ConnectedServer,
    si: &StorageIndex,
    renew: [u8; 32],
    cancel: [u8; 32],
    shnum: u16,
    size: u64,
) -> Alloc {
    let answer = call(server.server.allocate_buckets(
        *si,
        renew,
        cancel,
        BTreeSet::from([shnum]),
        size,
        CanaryRef::serve(NullCanary),
    ))
    .await;
    match answer {
        Err(e) => Alloc::Failed(e),
        Ok((have, mut writers)) => match writers.remove(&shnum) {
            Some(w) => Alloc::Writer(w),
            None if have.contains(&shnum) => Alloc::Have,
            // allocate_buckets does not say why: no room, or uploading elsewhere.
            None => Alloc::Full("the server allocated nothing".into()),
        },
    }
}

/// The next round of requests: which server to ask for which share.
///
/// Servers that hold nothing yet come first (one share each, in permuted order: that is
/// what makes an upload happy); the shares left over are spread evenly over every server
/// that holds or is being asked for a share, in permuted order. A (server, share) pair is
/// never asked twice. Everything is asked at once, so a round costs one round trip
/// whatever the number of servers (server selection used to ask one server at a time).
pub(crate) fn plan_round(
    order: &[usize],
    unplaced: &BTreeSet<u16>,
    holding: &BTreeSet<usize>,
    usable: &dyn Fn(usize) -> bool,
    asked: &BTreeSet<(usize, u16)>,
) -> Vec<(usize, u16)> {
    let mut left: Vec<u16> = unplaced.iter().copied().collect();
    let mut out = Vec::new();
    let mut servers: Vec<usize> = Vec::new();
    for &i in order.iter().filter(|&&i| usable(i)) {
        if holding.contains(&i) {
            servers.push(i);
            continue;
        }
        if let Some(pos) = left.iter().position(|&n| !asked.contains(&(i, n))) {
            out.push((i, left.remove(pos)));
            servers.push(i);
        }
    }
    let count = servers.len();
    for (pos, &i) in servers.iter().enumerate() {
        if left.is_empty() {
            break;
        }
        let per = left.len().div_ceil(count - pos);
        let mut given = 0;
        let mut k = 0;
        while given < per && k < left.len() {
            if asked.contains(&(i, left[k])) || out.contains(&(i, left[k])) {
                k += 1;
                continue;
            }
            out.push((i, left.remove(k)));
            given += 1;
        }
    }
    out
}

/// Server selection by rounds of [`plan_round`]: asks, in each round, every server for its
/// shares at once with `ask(server, shnum)`, and records the answers in `p`, until every
/// share is placed or nothing is left to ask.
async fn place_rounds<F, Fut>(
    servers: &[ConnectedServer],
    total: u16,
    p: &mut Placement,
    ask: F,
) -> Vec<(usize, Duration)>
where
    F: Fn(usize, u16) -> Fut,
    Fut: std::future::Future<Output = (Placed, Duration)>,
{
    let mut unplaced: BTreeSet<u16> = (0..total).collect();
    let mut asked: BTreeSet<(usize, u16)> = BTreeSet::new();
    let mut rtts = Vec::new();
    let order = p.order.clone();
    loop {
        let holding: BTreeSet<usize> = p.edges().into_iter().map(|(s, _)| s).collect();
        let dead: BTreeSet<usize> = p.failed.iter().map(|(s, _)| *s).collect();
        let usable = |i: usize| !dead.contains(&i) && !p.full.contains(&i);
        let round = plan_round(&order, &unplaced, &holding, &usable, &asked);
        if round.is_empty() {
            break;
        }
        asked.extend(round.iter().copied());
        let answers = join_all(round.iter().map(|&(i, n)| ask(i, n))).await;
        for (&(i, n), (placed, rtt)) in round.iter().zip(answers) {
            rtts.push((i, rtt));
            match placed {
                Placed::Writer(writer) => {
                    unplaced.remove(&n);
                    p.writers.insert(n, Held { server: i, writer });
                }
                Placed::Closed => {
                    unplaced.remove(&n);
                    p.closed.push((i, n));
                }
                Placed::Have => {
                    unplaced.remove(&n);
                    p.have.push((i, n));
                }
                Placed::Full(e) => {
                    debug!(server = %servers[i].nickname, shnum = n, error = %e, "no room");
                    p.full.insert(i);
                }
                Placed::Busy => {
                    debug!(server = %servers[i].nickname, shnum = n, "share uploading elsewhere");
                }
                Placed::Failed(e) => {
                    debug!(server = %servers[i].nickname, error = %e, "allocation failed");
                    p.fail_server(i, e);
                }
            }
        }
    }
    // A server that refused a later share (full, over quota) keeps the ones it took, but is
    // only "full" for the report when it holds nothing.
    let holding: BTreeSet<usize> = p.edges().into_iter().map(|(s, _)| s).collect();
    p.full.retain(|i| !holding.contains(i));
    // Writers on servers that failed later in selection are of no use.
    let dead: BTreeSet<usize> = p.failed.iter().map(|(s, _)| *s).collect();
    p.writers.retain(|_, h| !dead.contains(&h.server));
    rtts
}

/// How one (server, share) request ended.
enum Placed {
    /// Allocated; the writer is ours to fill.
    Writer(BucketWriterRef),
    /// Allocated, written and closed in one flight (small files).
    Closed,
    /// The server already had it.
    Have,
    /// The server takes no more shares.
    Full(String),
    /// Someone else is uploading it there.
    Busy,
    /// The server failed.
    Failed(String),
}

impl From<Alloc> for Placed {
    fn from(a: Alloc) -> Placed {
        match a {
            Alloc::Writer(w) => Placed::Writer(w),
            Alloc::Have => Placed::Have,
            Alloc::Full(e) => Placed::Full(e),
            Alloc::Busy => Placed::Busy,
            Alloc::Failed(e) => Placed::Failed(e),
        }
    }
}

/// Server selection for a file whose shares are streamed afterwards.
async fn place(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    share_size: u64,
) -> (Placement, Vec<(usize, Duration)>) {
    let mut p = Placement::new(servers, si);
    let rtts = place_rounds(servers, params.total, &mut p, |i, n| async move {
        let (a, rtt) = allocate_one(&servers[i], si, lease_secret, n, share_size).await;
        (Placed::from(a), rtt)
    })
    .await;
    (p, rtts)
}

/// Allocates share `shnum` on `server`, writes `data` to it and closes it, in one flight:
/// the writes and the close are pipelined on the promised writer of `allocate_share`, so
/// they leave together with the allocation and the whole costs one round trip. That is safe
/// because `allocate_share`'s answer is the writer of share `shnum` or an error (then the
/// pipelined calls are refused, and nothing is written), and because the server runs a
/// writer's calls in arrival order (see [`BucketWriter`](crate::storage::BucketWriter)).
async fn put_share(
    server: &ConnectedServer,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    shnum: u16,
    data: &[u8],
) -> (Placed, Duration) {
    let (renew, cancel) = lease_secrets(server, si, lease_secret);
    let size = data.len() as u64;
    let started = Instant::now();
    let promise = match bounded(server.server.allocate_share_promise(
        *si,
        renew,
        cancel,
        shnum,
        size,
        CanaryRef::serve(NullCanary),
    ))
    .await
    {
        Ok(p) => p,
        Err(e) => return (refusal(e, shnum).into(), started.elapsed()),
    };
    let writer: BucketWriterRef = promise.reference();
    let mut writes = Vec::new();
    for (i, chunk) in data.chunks(MAX_CHUNK as usize).enumerate() {
        let offset = i as u64 * MAX_CHUNK;
        writes.push(bounded(writer.write_promise(offset, Bytes(chunk.to_vec()))).await);
    }
    let close = bounded(writer.close_promise()).await;
    let allocated = bounded(IntoFuture::into_future(promise)).await;
    let rtt = started.elapsed();
    let writer = match allocated {
        Ok(w) => w,
        // A server from before `allocate_share` (its pipelined calls were refused too).
        Err(CallError::Refused(Refusal::UnknownMethod { .. })) => {
            return match allocate_legacy(server, si, renew, cancel, shnum, size).await {
                Alloc::Writer(w) => (finished(&w, write_and_close(&w, data).await).await, rtt),
                other => (other.into(), rtt),
            };
        }
        Err(e) => return (refusal(e, shnum).into(), rtt),
    };
    let outcome = async {
        for w in writes {
            bounded(IntoFuture::into_future(w?)).await?;
        }
        bounded(IntoFuture::into_future(close?)).await
    }
    .await;
    let outcome = match outcome {
        Ok(()) => Ok(()),
        // Only if the writes and the close ran out of order (see `write_and_close`).
        Err(CallError::App(StorageError::Incomplete { .. })) => {
            bounded(writer.close()).await.map_err(call_error_text)
        }
        Err(e) => Err(call_error_text(e)),
    };
    (finished(&writer, outcome).await, rtt)
}

/// A share written and closed, or why not (then its upload is aborted).
async fn finished(writer: &BucketWriterRef, outcome: Result<(), String>) -> Placed {
    match outcome {
        Ok(()) => Placed::Closed,
        Err(e) => {
            // Best effort: the server also aborts it when the writer is released.
            let _ = call(writer.abort()).await;
            Placed::Failed(e)
        }
    }
}

/// Sends every write of `data` and the close back to back, then waits for the answers.
async fn write_and_close(writer: &BucketWriterRef, data: &[u8]) -> Result<(), String> {
    type Call = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), CallError<StorageError>>> + Send>,
    >;
    let mut calls: Vec<Call> = Vec::new();
    for (i, chunk) in data.chunks(MAX_CHUNK as usize).enumerate() {
        let (w, bytes) = (writer.clone(), Bytes(chunk.to_vec()));
        let offset = i as u64 * MAX_CHUNK;
        calls.push(Box::pin(
            async move { bounded(w.write(offset, bytes)).await },
        ));
    }
    let w = writer.clone();
    calls.push(Box::pin(async move { bounded(w.close()).await }));
    // `join_all` polls each call once, in order, before awaiting any: they go out in order.
    let mut results = join_all(calls).await;
    let closed = results.pop().expect("the close is there");
    for r in results {
        r.map_err(call_error_text)?;
    }
    match closed {
        // A server that runs a writer's calls out of order may see the close first; it
        // refuses the close then (nothing is published), and now every write is in.
        Err(CallError::App(StorageError::Incomplete { .. })) => {
            bounded(writer.close()).await.map_err(call_error_text)
        }
        other => other.map_err(call_error_text),
    }
}

enum Cmd {
    Write(u64, Vec<u8>),
    Close,
}

/// What a call of a share's writer task gave.
enum Answer {
    Write,
    Close(Result<(), CallError<StorageError>>),
}

/// Performs one share's writes, as many in flight as its server's window allows, then
/// closes it. The close goes right behind the last write, without waiting for the writes'
/// answers: the server runs them in arrival order.
async fn share_task(
    writer: BucketWriterRef,
    flow: Arc<Flow>,
    mut rx: mpsc::Receiver<Cmd>,
) -> Result<(), String> {
    type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, String>> + Send>>;
    let mut in_flight: FuturesUnordered<Call> = FuturesUnordered::new();
    let mut closing = false;
    let mut closed = None;
    loop {
        tokio::select! {
            // The calls first: a call pushed last time round is polled (so sent) before the
            // next command is taken, which keeps them in order on the wire.
            biased;
            Some(r) = in_flight.next(), if !in_flight.is_empty() => match r? {
                Answer::Write => {}
                Answer::Close(r) => closed = Some(r),
            },
            cmd = async {
                flow.room(MAX_CHUNK).await;
                rx.recv().await
            }, if !closing => match cmd {
                Some(Cmd::Write(offset, data)) => {
                    let ticket = flow.take(data.len() as u64);
                    let w = writer.clone();
                    in_flight.push(Box::pin(async move {
                        call(w.write(offset, Bytes(data))).await?;
                        ticket.delivered();
                        Ok(Answer::Write)
                    }));
                }
                Some(Cmd::Close) => {
                    closing = true;
                    let w = writer.clone();
                    in_flight.push(Box::pin(async move {
                        Ok(Answer::Close(bounded(w.close()).await))
                    }));
                }
                None => return Ok(()),
            },
            else => break,
        }
    }
    match closed {
        // Every write has been answered by now: see `write_and_close`.
        Some(Err(CallError::App(StorageError::Incomplete { .. }))) => {
            bounded(writer.close()).await.map_err(call_error_text)
        }
        Some(r) => r.map_err(call_error_text),
        None => Err("the share was never closed".into()),
    }
}

struct Running {
    server: usize,
    tx: mpsc::Sender<Cmd>,
    task: JoinHandle<Result<(), String>>,
}

/// A share's writer task does not outlive the push that started it (a push given up half
/// way, as a refused speculative one is, stops its writers).
impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A batch of writes from the encoder, and how much plaintext it covers.
struct Batch {
    writes: Vec<ShareWrite>,
    plaintext: u64,
}

/// A window per server holding writers, sized at first from the allocation calls' round
/// trips, at least two chunks per share in flight (as before windows were measured).
fn flows_for(placement: &Placement, rtts: &[(usize, Duration)]) -> BTreeMap<usize, Arc<Flow>> {
    let mut shares: BTreeMap<usize, u64> = BTreeMap::new();
    for h in placement.writers.values() {
        *shares.entry(h.server).or_default() += 1;
    }
    shares
        .into_iter()
        .map(|(server, n)| {
            let flow = Flow::new(2 * MAX_CHUNK * n);
            for (_, rtt) in rtts.iter().filter(|(s, _)| *s == server) {
                flow.note_rtt(*rtt);
            }
            (server, flow)
        })
        .collect()
}

/// Encodes a small file entirely in memory: every share's bytes (indexed by share number)
/// and the UEB.
async fn encode_small(
    source: Arc<impl UploadSource>,
    g: Geometry,
    key: [u8; 32],
    plaintext_hash: Hash,
) -> Result<(Vec<Vec<u8>>, EncodeSummary), UploadError> {
    tokio::task::spawn_blocking(move || {
        let mut shares: Vec<Vec<u8>> = vec![Vec::new(); g.total as usize];
        let summary = encode_source(
            &*source,
            g,
            &key,
            &plaintext_hash,
            MAX_CHUNK as usize,
            &mut |writes, _| {
                for w in writes {
                    let s = &mut shares[w.shnum as usize];
                    let end = w.offset as usize + w.data.len();
                    if s.len() < end {
                        s.resize(end, 0);
                    }
                    s[w.offset as usize..end].copy_from_slice(&w.data);
                }
                true
            },
        )?;
        Ok((shares, summary))
    })
    .await
    .map_err(|e| UploadError::Internal(format!("the encoding task failed: {}", ErrorChain(&e))))?
}

/// Server selection for a small file, whose shares are already encoded: each request
/// allocates, writes and closes its share in one flight.
///
/// Unlike a streamed upload, a small upload that ends below happiness leaves behind the
/// shares that servers accepted: they were closed in the same flight as their allocation,
/// before anyone knew how many servers would accept. They are complete, verified,
/// leased shares of the file (a later upload of it finds them as already there).
async fn place_small(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    shares: &[Vec<u8>],
) -> (Placement, Vec<(usize, Duration)>) {
    let mut p = Placement::new(servers, si);
    let rtts = place_rounds(servers, params.total, &mut p, |i, n| async move {
        put_share(&servers[i], si, lease_secret, n, &shares[n as usize]).await
    })
    .await;
    (p, rtts)
}

/// Pass 2: runs the encoder and the share writers; closes every share.
#[allow(clippy::too_many_arguments)]
async fn push(
    placement: &mut Placement,
    flows: &BTreeMap<usize, Arc<Flow>>,
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
            let flow = flows
                .get(&h.server)
                .cloned()
                .unwrap_or_else(|| Flow::new(2 * MAX_CHUNK));
            let task = tokio::spawn(share_task(h.writer.clone(), flow, rx));
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
        let summary = encoder.await.map_err(|e| {
            UploadError::Internal(format!("the encoding task failed: {}", ErrorChain(&e)))
        })??;
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
    let Some(mut r) = running.remove(&shnum) else {
        return Ok(());
    };
    let error = match (&mut r.task).await {
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
