//! The servermap (which server holds which share of which version) and retrieving the
//! newest recoverable version.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use folio_rpc::CallError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::cap::{MutReadCap, MutVerifyCap};
use super::share::{MutShareHeader, SignedPrefix, HEADER_LEN, PREFIX_LEN};
use super::version::{decode_version, parse_mut_share};
use super::MutableError;
use crate::broker::ConnectedServer;
use crate::immutable::{bounded, call, permuted, Hash};
use crate::storage::{StorageError, StorageIndex};

/// The first read of every share: enough for a small version's whole share, so that a
/// small file or directory arrives in the servermap's round trip.
pub const FIRST_READ: u64 = 64 * 1024;
/// A read stops waiting for slow servers this long (or twice the slowest answer so far, if
/// more) after a version became recoverable.
pub const READ_GRACE: Duration = Duration::from_secs(2);

/// A version: ordered by sequence number first, so readers agree on the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId {
    /// The sequence number.
    pub seqnum: u64,
    /// The UEB hash of its body.
    pub ueb_hash: Hash,
    /// Its salt.
    pub salt: [u8; 16],
}

impl SignedPrefix {
    /// The version this prefix names.
    pub fn version(&self) -> VersionId {
        VersionId {
            seqnum: self.seqnum,
            ueb_hash: self.ueb_hash,
            salt: self.salt,
        }
    }
}

/// What the servermap update is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Find the newest recoverable version soon: stop waiting for slow servers once one is
    /// recoverable ([`READ_GRACE`]).
    Read,
    /// Hear from every server (each bounded by the call timeout): a writer must know every
    /// share it may overwrite.
    Write,
}

/// One share seen by the servermap update.
#[derive(Debug, Clone)]
pub struct ShareSeen {
    /// The server (an index into the servers the map was made from).
    pub server: usize,
    /// The share number the server listed.
    pub shnum: u16,
    /// Its first bytes as seen (at most [`PREFIX_LEN`]): what a writer's test compares.
    pub prefix_bytes: Vec<u8>,
    /// Its header, if it decoded, named this share and its signature verified.
    pub header: Option<MutShareHeader>,
    /// What the first read returned (the whole share when it was small enough).
    pub bytes: Vec<u8>,
}

/// Which servers hold which shares of a slot, as one round of reads found them.
#[derive(Debug, Clone)]
pub struct ServerMap {
    /// The slot.
    pub si: StorageIndex,
    /// Every share seen.
    pub shares: Vec<ShareSeen>,
    /// Servers that answered (holding shares or not).
    pub answered: BTreeSet<usize>,
    /// Servers whose reads failed, with why.
    pub failed: Vec<(usize, String)>,
    /// Servers not waited for (a read that found its version before they answered).
    pub unheard: BTreeSet<usize>,
    /// The slowest answer.
    pub rtt_max: Duration,
    /// When the map was made.
    pub made: Instant,
}

impl ServerMap {
    /// Reads the first [`FIRST_READ`] bytes of every share of the slot `cap` names from
    /// every server at once, and checks each header's signature. `exclude`d servers are
    /// not asked.
    pub async fn update(
        servers: &[ConnectedServer],
        cap: &MutVerifyCap,
        mode: Mode,
        exclude: &BTreeSet<usize>,
    ) -> ServerMap {
        let si = cap.storage_index();
        let started = Instant::now();
        let mut map = ServerMap {
            si,
            shares: Vec::new(),
            answered: BTreeSet::new(),
            failed: Vec::new(),
            unheard: BTreeSet::new(),
            rtt_max: Duration::ZERO,
            made: started,
        };
        let mut asks: FuturesUnordered<_> = permuted(servers, &si)
            .into_iter()
            .filter(|i| !exclude.contains(i))
            .map(|i| async move { (i, read_heads(&servers[i], &si).await) })
            .collect();
        let mut waiting: BTreeSet<usize> = (0..servers.len())
            .filter(|i| !exclude.contains(i))
            .collect();
        let mut deadline: Option<Instant> = None;
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, asks.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => asks.next().await,
            };
            let Some((i, answer)) = next else { break };
            waiting.remove(&i);
            map.rtt_max = map.rtt_max.max(started.elapsed());
            match answer {
                Ok(reads) => {
                    map.answered.insert(i);
                    for (shnum, bytes) in reads {
                        map.shares.push(seen(cap, i, shnum, bytes));
                    }
                }
                Err(e) => {
                    debug!(server = %servers[i].nickname, error = %e, "slot read failed");
                    map.failed.push((i, e));
                }
            }
            if mode == Mode::Read && deadline.is_none() && map.best().is_some() {
                deadline = Some(Instant::now() + READ_GRACE.max(2 * map.rtt_max));
            }
        }
        map.unheard = waiting;
        map
    }

    /// The valid shares of each version: share number → servers holding it.
    pub fn versions(&self) -> BTreeMap<VersionId, (SignedPrefix, BTreeMap<u16, Vec<usize>>)> {
        let mut out: BTreeMap<VersionId, (SignedPrefix, BTreeMap<u16, Vec<usize>>)> =
            BTreeMap::new();
        for s in &self.shares {
            let Some(h) = &s.header else { continue };
            let entry = out
                .entry(h.prefix.version())
                .or_insert_with(|| (h.prefix, BTreeMap::new()));
            entry.1.entry(s.shnum).or_default().push(s.server);
        }
        out
    }

    /// Whether `v` has k distinct shares on the map.
    pub fn recoverable(&self, v: &VersionId) -> bool {
        self.versions()
            .get(v)
            .is_some_and(|(p, shares)| shares.len() >= usize::from(p.needed))
    }

    /// The newest recoverable version.
    pub fn best(&self) -> Option<(VersionId, SignedPrefix)> {
        self.versions()
            .into_iter()
            .rev()
            .find(|(_, (p, shares))| shares.len() >= usize::from(p.needed))
            .map(|(v, (p, _))| (v, p))
    }

    /// The highest sequence number of any valid share (0 when there is none).
    pub fn newest_seqnum(&self) -> u64 {
        self.shares
            .iter()
            .filter_map(|s| s.header.map(|h| h.prefix.seqnum))
            .max()
            .unwrap_or(0)
    }

    /// Shares whose header did not verify (corrupt, or written by someone without the key).
    pub fn invalid(&self) -> impl Iterator<Item = &ShareSeen> {
        self.shares.iter().filter(|s| s.header.is_none())
    }
}

fn seen(cap: &MutVerifyCap, server: usize, shnum: u16, bytes: Vec<u8>) -> ShareSeen {
    let header = MutShareHeader::decode(&bytes)
        .ok()
        .filter(|h| h.shnum == shnum && h.verify(cap).is_ok());
    ShareSeen {
        server,
        shnum,
        prefix_bytes: bytes[..bytes.len().min(PREFIX_LEN)].to_vec(),
        header,
        bytes,
    }
}

/// The first bytes of every share of the slot on one server; a server that holds too many
/// large shares for one answer ([`StorageError::ReadTooLarge`]) is asked for the headers
/// alone.
async fn read_heads(
    server: &ConnectedServer,
    si: &StorageIndex,
) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let first = bounded(server.server.slot_readv(*si, vec![], vec![(0, FIRST_READ)])).await;
    let reads = match first {
        Err(CallError::App(StorageError::ReadTooLarge { .. })) => {
            call(
                server
                    .server
                    .slot_readv(*si, vec![], vec![(0, HEADER_LEN as u64)]),
            )
            .await?
        }
        other => other.map_err(|e| folio_rpc::ErrorChain(&e).to_string())?,
    };
    Ok(reads
        .into_iter()
        .map(|(shnum, mut v)| (shnum, v.pop().map(|b| b.0).unwrap_or_default()))
        .collect())
}

/// A version read back.
#[derive(Debug, Clone)]
pub struct Retrieved {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Its version.
    pub version: VersionId,
    /// Its signed prefix.
    pub prefix: SignedPrefix,
    /// The servermap the read was made from (a later write may start from it).
    pub map: ServerMap,
    /// Shares found corrupt, as (server nickname, share number, reason).
    pub corrupt: Vec<(String, u16, String)>,
    /// The shares decoded: (server nickname, share number).
    pub used: Vec<(String, u16)>,
}

/// Reads the newest recoverable version of the file `cap` names.
pub async fn retrieve(
    servers: &[ConnectedServer],
    cap: &MutReadCap,
) -> Result<Retrieved, MutableError> {
    let vc = cap.verify_cap();
    let mut corrupt: Vec<(String, u16, String)> = Vec::new();
    let mut bad: BTreeSet<(usize, u16)> = BTreeSet::new();
    // A version can change under a read (a writer replaces its shares): map again, twice.
    for _ in 0..3 {
        let map = ServerMap::update(servers, &vc, Mode::Read, &BTreeSet::new()).await;
        let Some((version, prefix)) = map.best() else {
            return Err(unrecoverable(servers, &map));
        };
        let rank: BTreeMap<usize, usize> = permuted(servers, &map.si)
            .into_iter()
            .enumerate()
            .map(|(r, i)| (i, r))
            .collect();
        let k = usize::from(prefix.needed);
        let want = HEADER_LEN as u64 + body_len_of(&map, &version);
        // Candidates: primary shares first, then by server rank.
        let mut candidates: Vec<&ShareSeen> = map
            .shares
            .iter()
            .filter(|s| s.header.is_some_and(|h| h.prefix.version() == version))
            .filter(|s| !bad.contains(&(s.server, s.shnum)))
            .collect();
        candidates.sort_by_key(|s| (s.shnum >= prefix.needed, rank[&s.server], s.shnum));
        let mut good: Vec<(u16, Vec<u8>, usize)> = Vec::new();
        let mut front = None;
        let mut next = 0;
        while good.len() < k && next < candidates.len() {
            // The next shares to fetch: as many as are still missing, distinct numbers.
            let mut batch: Vec<&ShareSeen> = Vec::new();
            while good.len() + batch.len() < k && next < candidates.len() {
                let c = candidates[next];
                next += 1;
                let have = good.iter().any(|(n, _, _)| *n == c.shnum)
                    || batch.iter().any(|b| b.shnum == c.shnum);
                if !have {
                    batch.push(c);
                }
            }
            let fetched = futures_util::future::join_all(batch.iter().map(|c| async {
                if c.bytes.len() as u64 == want {
                    return Ok(c.bytes.clone());
                }
                read_whole(&servers[c.server], &map.si, c.shnum, want).await
            }))
            .await;
            for (c, r) in batch.iter().zip(fetched) {
                let bytes = match r {
                    Ok(b) => b,
                    Err(e) => {
                        debug!(server = %servers[c.server].nickname, error = %e, "share read failed");
                        continue;
                    }
                };
                match parse_mut_share(&bytes, &vc, c.shnum) {
                    Ok((h, f)) if h.prefix == prefix => {
                        front = front.or(f);
                        good.push((c.shnum, bytes, c.server));
                    }
                    // Replaced since the map was made: a writer is at work.
                    Ok(_) => {}
                    Err(e) => {
                        let reason = e.to_string();
                        warn!(server = %servers[c.server].nickname, shnum = c.shnum, %reason, "corrupt mutable share");
                        bad.insert((c.server, c.shnum));
                        corrupt.push((servers[c.server].nickname.clone(), c.shnum, reason.clone()));
                        advise_corrupt(&servers[c.server], map.si, c.shnum, reason);
                    }
                }
            }
        }
        if good.len() < k {
            continue;
        }
        let shares: Vec<(u16, &[u8])> = good.iter().map(|(n, b, _)| (*n, b.as_slice())).collect();
        let plaintext =
            decode_version(cap, &prefix, front.as_ref(), &shares).map_err(MutableError::Decode)?;
        let used = good
            .iter()
            .map(|(n, _, s)| (servers[*s].nickname.clone(), *n))
            .collect();
        return Ok(Retrieved {
            plaintext,
            version,
            prefix,
            map,
            corrupt,
            used,
        });
    }
    let map = ServerMap::update(servers, &vc, Mode::Read, &BTreeSet::new()).await;
    Err(unrecoverable(servers, &map))
}

fn body_len_of(map: &ServerMap, v: &VersionId) -> u64 {
    map.shares
        .iter()
        .filter_map(|s| s.header)
        .find(|h| h.prefix.version() == *v)
        .map_or(0, |h| h.body_len)
}

/// Why no version could be read.
pub(crate) fn unrecoverable(servers: &[ConnectedServer], map: &ServerMap) -> MutableError {
    if map.shares.is_empty() {
        return MutableError::NotFound {
            servers: servers.len(),
            failed: map.failed.len(),
        };
    }
    let versions = map.versions();
    let newest = versions.iter().next_back();
    MutableError::Unrecoverable {
        newest_seqnum: newest.map_or(0, |(v, _)| v.seqnum),
        found: newest.map_or(0, |(_, (_, s))| s.len()),
        needed: newest.map_or(0, |(_, (p, _))| p.needed),
        invalid: map.invalid().count(),
        failed: map.failed.len(),
    }
}

/// One whole share (`len` bytes, at most one storage call).
async fn read_whole(
    server: &ConnectedServer,
    si: &StorageIndex,
    shnum: u16,
    len: u64,
) -> Result<Vec<u8>, String> {
    let mut reads = call(server.server.slot_readv(*si, vec![shnum], vec![(0, len)])).await?;
    reads
        .remove(&shnum)
        .and_then(|mut v| v.pop())
        .map(|b| b.0)
        .ok_or_else(|| format!("share {shnum} is gone"))
}

/// Tells a server, in the background, that one of its shares is corrupt.
pub(crate) fn advise_corrupt(
    server: &ConnectedServer,
    si: StorageIndex,
    shnum: u16,
    reason: String,
) {
    let s = server.server.clone();
    tokio::spawn(async move {
        let _ = call(s.advise_corrupt_share("mutable".into(), si, shnum, reason)).await;
    });
}
