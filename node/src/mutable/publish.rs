//! Creating a mutable file and publishing new versions of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use folio_rpc::{Bytes, CallError, TubId};
use futures_util::future::join_all;
use tracing::{debug, info};

use super::cap::{MutKind, MutWriteCap};
use super::servermap::{Mode, ServerMap, VersionId};
use super::share::{SignedPrefix, PREFIX_LEN};
use super::version::{encode_version, max_mutable_size};
use super::MutableError;
use crate::broker::ConnectedServer;
use crate::immutable::{
    bounded, lease_secrets, max_matching, permuted, plan_round, EncodingParams,
};
use crate::storage::{StorageError, StorageIndex, TestVector, TestWriteVectors};

/// How long a writer that finds an unrecoverable version newer than its base waits before
/// looking again: if nothing changed by then, that version was abandoned (its writer died)
/// and is overwritten.
pub const SETTLE: Duration = Duration::from_secs(10);
/// How long a read's servermap may be reused by a write based on it.
pub const MAP_FRESH: Duration = Duration::from_secs(5);

/// The identity a server's write enabler is bound to: its TubId (the same for every client),
/// or for an in-process reference its announcement key.
fn server_id(server: &ConnectedServer) -> TubId {
    server
        .server
        .object_ref()
        .tubid()
        .unwrap_or_else(|| TubId::from_bytes(server.key))
}

/// What one test-and-set write of one share did.
#[derive(Debug)]
enum Outcome {
    Written,
    /// The test failed: the share's first bytes were these.
    Conflict(Vec<u8>),
    /// The server has no room.
    Full(String),
    /// The server failed (or refused this slot's write enabler).
    Failed(String),
}

/// Writes `share` as share `shnum` on `server` if its first [`PREFIX_LEN`] bytes are still
/// `expected` (empty: the share must not exist).
async fn write_share(
    server: &ConnectedServer,
    cap: &MutWriteCap,
    si: &StorageIndex,
    lease_secret: &[u8; 32],
    shnum: u16,
    expected: &[u8],
    share: &[u8],
) -> Outcome {
    let (renew, cancel) = lease_secrets(server, si, lease_secret);
    let we = cap.write_enabler(&server_id(server));
    let tw = TestWriteVectors {
        test: vec![TestVector {
            offset: 0,
            length: PREFIX_LEN as u64,
            specimen: Bytes(expected.to_vec()),
        }],
        write: vec![(0, Bytes(share.to_vec()))],
        new_length: Some(share.len() as u64),
    };
    let call = server.server.slot_testv_and_readv_and_writev(
        *si,
        (we, renew, cancel),
        BTreeMap::from([(shnum, tw)]),
        vec![(0, PREFIX_LEN as u64)],
    );
    match bounded(call).await {
        Ok((true, _)) => Outcome::Written,
        Ok((false, mut reads)) => Outcome::Conflict(
            reads
                .remove(&shnum)
                .and_then(|mut v| v.pop())
                .map(|b| b.0)
                .unwrap_or_default(),
        ),
        Err(CallError::App(
            e @ (StorageError::NoSpace
            | StorageError::ReadOnly
            | StorageError::QuotaExceeded { .. }
            | StorageError::TooLarge { .. }),
        )) => Outcome::Full(e.to_string()),
        Err(e) => Outcome::Failed(folio_rpc::ErrorChain(&e).to_string()),
    }
}

/// Which phase of a write found another writer's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UcwPhase {
    /// The servermap showed a newer version than the one this write was based on.
    Servermap,
    /// The first share written (the claim) had changed since the servermap.
    Claim,
    /// A later share had changed.
    Publish,
}

/// An uncoordinated write: another writer changed the file while this write ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncoordinated {
    /// Where it was found.
    pub phase: UcwPhase,
    /// The server holding the share that changed.
    pub server: String,
    /// The share.
    pub shnum: u16,
    /// The sequence number this write was based on (0: none).
    pub expected: u64,
    /// The sequence number found there (`None`: a share that is not a valid version).
    pub found: Option<u64>,
    /// Shares this write had written when it stopped.
    pub written: usize,
    /// Shares it meant to write.
    pub planned: usize,
}

impl std::error::Error for Uncoordinated {}

impl fmt::Display for Uncoordinated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uncoordinated write: another writer changed this file while this write ran: \
             share {} on server '{}' holds ",
            self.shnum, self.server
        )?;
        match self.found {
            Some(n) => write!(f, "version {n}")?,
            None => write!(f, "something else")?,
        }
        if self.expected == 0 {
            write!(f, ", and this write found no version to build on")?;
        } else {
            write!(
                f,
                ", not version {} that this write was based on",
                self.expected
            )?;
        }
        if self.written == 0 {
            write!(f, ". Nothing was written; read the file again and retry")
        } else {
            write!(
                f,
                ". This write had replaced {} of {} shares; readers get the newest version \
                 with enough shares",
                self.written, self.planned
            )
        }
    }
}

/// What a publish (or a create) did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    /// The version written.
    pub version: VersionId,
    /// Its signed prefix.
    pub prefix: SignedPrefix,
    /// Distinct servers in a maximum server-to-share matching of the new version.
    pub happiness: usize,
    /// (server nickname, share number) of every share written.
    pub written: Vec<(String, u16)>,
    /// Servers that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Write flights after the servermap (the claim is the first).
    pub flights: usize,
    /// Things a user should know (an update that was not crash-safe, say).
    pub notes: Vec<String>,
}

/// Where a publish starts from.
#[derive(Debug, Clone)]
pub enum Base {
    /// Replace whatever version is newest now.
    Current,
    /// Replace the version read (a read-modify-write); the map is reused when it is
    /// recent.
    Read(VersionId, Box<ServerMap>),
}

/// One share to write: where, and what its first bytes must be (empty: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    server: usize,
    shnum: u16,
    expected: Vec<u8>,
}

/// Creates a new mutable file (or directory, by `kind`) holding `plaintext` as version 1.
/// One round trip when the servers take the shares.
pub async fn create(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    lease_secret: &[u8; 32],
    kind: MutKind,
    plaintext: &[u8],
) -> Result<(MutWriteCap, PublishReport), MutableError> {
    params
        .validate()
        .map_err(|e| MutableError::Params(e.to_string()))?;
    check_size(params, plaintext.len())?;
    let cap = MutWriteCap::generate(kind);
    let si = cap.storage_index();
    let salt = crate::private::random_bytes::<16>();
    let (prefix, shares) = encode_version(&cap, params, 1, salt, plaintext)
        .map_err(|e| MutableError::Params(e.to_string()))?;
    // Rounds of placement, as an immutable upload's: a refused share goes elsewhere.
    let order = permuted(servers, &si);
    let mut unplaced: BTreeSet<u16> = (0..params.total).collect();
    let mut asked: BTreeSet<(usize, u16)> = BTreeSet::new();
    let mut placed: Vec<(usize, u16)> = Vec::new();
    let mut full: BTreeSet<usize> = BTreeSet::new();
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    let mut flights = 0;
    loop {
        let holding: BTreeSet<usize> = placed.iter().map(|(s, _)| *s).collect();
        let usable = |i: usize| !full.contains(&i) && !failed.contains_key(&i);
        let round = plan_round(&order, &unplaced, &holding, &usable, &asked);
        if round.is_empty() {
            break;
        }
        flights += 1;
        asked.extend(round.iter().copied());
        let outcomes = join_all(round.iter().map(|&(i, n)| {
            write_share(
                &servers[i],
                &cap,
                &si,
                lease_secret,
                n,
                &[],
                &shares[n as usize],
            )
        }))
        .await;
        for (&(i, n), o) in round.iter().zip(outcomes) {
            match o {
                Outcome::Written => {
                    unplaced.remove(&n);
                    placed.push((i, n));
                }
                Outcome::Full(e) => {
                    debug!(server = %servers[i].nickname, error = %e, "no room for a mutable share");
                    full.insert(i);
                }
                // A share of a slot nobody else can name: the server is not behaving.
                Outcome::Conflict(_) => {
                    failed.insert(i, "a share of a brand-new slot already existed".into());
                }
                Outcome::Failed(e) => {
                    failed.insert(i, e);
                }
            }
        }
    }
    let happiness = max_matching(&placed);
    let failed: Vec<(String, String)> = failed
        .into_iter()
        .map(|(i, e)| (servers[i].nickname.clone(), e))
        .collect();
    if happiness < usize::from(params.happy) {
        return Err(not_happy(
            happiness,
            params,
            servers.len(),
            failed.len(),
            None,
        ));
    }
    info!(si = %crate::immutable::base32(&si), happiness, "mutable file created");
    Ok((
        cap,
        PublishReport {
            version: prefix.version(),
            prefix,
            happiness,
            written: placed
                .iter()
                .map(|&(i, n)| (servers[i].nickname.clone(), n))
                .collect(),
            failed,
            flights,
            notes: Vec::new(),
        },
    ))
}

/// The error of a write that `found` servers hold, below `params.happy`.
fn not_happy(
    found: usize,
    params: &EncodingParams,
    servers: usize,
    failed: usize,
    published: Option<u64>,
) -> MutableError {
    MutableError::NotHappy {
        found,
        happy: params.happy,
        servers,
        failed,
        published,
    }
}

fn check_size(params: &EncodingParams, len: usize) -> Result<(), MutableError> {
    let maximum = max_mutable_size(params);
    if len as u64 > maximum {
        return Err(MutableError::TooLarge {
            size: len as u64,
            maximum,
            needed: params.needed,
        });
    }
    Ok(())
}

/// Publishes `plaintext` as the next version of the file `cap` writes, over `base`. Three
/// round trips when nobody else writes: the servermap, one share (the claim, which decides
/// between writers that saw the same map), then the rest. Every share is replaced only if
/// it is still what the servermap saw; a share someone else changed ends the write with
/// [`MutableError::Uncoordinated`]. The flights are ordered so that at every point the old
/// version or the new one has k shares: a writer killed at any moment leaves one of them
/// readable.
pub async fn publish(
    servers: &[ConnectedServer],
    params: &EncodingParams,
    lease_secret: &[u8; 32],
    cap: &MutWriteCap,
    plaintext: &[u8],
    base: Base,
    settle: Duration,
) -> Result<PublishReport, MutableError> {
    params
        .validate()
        .map_err(|e| MutableError::Params(e.to_string()))?;
    let vc = cap.verify_cap();
    let si = cap.storage_index();
    let mut exclude: BTreeSet<usize> = BTreeSet::new();
    let (mut base_version, mut map) = match base {
        // A read's map is reused while fresh, if it heard from every server.
        Base::Read(v, map) if map.made.elapsed() < MAP_FRESH && map.unheard.is_empty() => {
            (Some(v), *map)
        }
        Base::Read(v, _) => (
            Some(v),
            ServerMap::update(servers, &vc, Mode::Write, &exclude).await,
        ),
        Base::Current => {
            let map = ServerMap::update(servers, &vc, Mode::Write, &exclude).await;
            (map.best().map(|(v, _)| v), map)
        }
    };
    let mut notes = Vec::new();
    // A failed claim (a server error, not a conflict) maps again without that server, twice.
    for attempt in 0..3 {
        if attempt > 0 {
            map = ServerMap::update(servers, &vc, Mode::Write, &exclude).await;
        }
        // Pre-check: a valid version above the base means someone else wrote. Any
        // recoverable one: the base is stale.
        if let Some(v) = recoverable_above(&map, base_version.as_ref()) {
            return Err(ucw_from_map(servers, &map, &v, base_version.as_ref()));
        }
        let above = newest_above(&map, base_version.as_ref());
        if let Some(v) = above {
            let seen_before = shares_of(&map, &v);
            if map.recoverable(&v) {
                return Err(ucw_from_map(servers, &map, &v, base_version.as_ref()));
            }
            // Unrecoverable: a write in progress, or one abandoned. Look again later.
            debug!(
                seqnum = v.seqnum,
                "an unrecoverable newer version: waiting to see if it grows"
            );
            tokio::time::sleep(settle.max(4 * map.rtt_max)).await;
            map = ServerMap::update(servers, &vc, Mode::Write, &exclude).await;
            if newest_above(&map, base_version.as_ref()) != Some(v)
                || shares_of(&map, &v) != seen_before
            {
                return Err(ucw_from_map(servers, &map, &v, base_version.as_ref()));
            }
            notes.push(format!(
                "version {} was left unfinished by a writer that stopped; it is replaced",
                v.seqnum
            ));
        }
        let base_prefix = base_version.and_then(|v| map.versions().get(&v).map(|(p, _)| *p));
        let (k, n) = match base_prefix {
            Some(p) => (p.needed, p.total),
            None => (params.needed, params.total),
        };
        let params = EncodingParams {
            needed: k,
            total: n,
            happy: params.happy.min(n).max(k),
            ..*params
        };
        check_size(&params, plaintext.len())?;
        let seqnum = map.newest_seqnum() + 1;
        if seqnum > super::MAX_SEQNUM {
            return Err(MutableError::Params(
                "the sequence number is exhausted".into(),
            ));
        }
        let salt = crate::private::random_bytes::<16>();
        let (prefix, shares) = encode_version(cap, &params, seqnum, salt, plaintext)
            .map_err(|e| MutableError::Params(e.to_string()))?;
        let targets = targets(servers, &map, n);
        let claim = claim_of(servers, &map, base_version.as_ref(), &targets, k);
        let Some(claim) = claim else {
            return Err(not_happy(0, &params, servers.len(), map.failed.len(), None));
        };
        let planned = targets.len();
        let base_distinct = base_version.map_or(0, |v| {
            shares_of(&map, &v)
                .into_iter()
                .map(|(_, n)| n)
                .collect::<BTreeSet<u16>>()
                .len()
        });
        if !targets[claim].expected.is_empty() && base_distinct + 1 < 2 * usize::from(k) {
            notes.push(format!(
                "the old version had only {base_distinct} shares and no free server: this \
                 update was not crash-safe"
            ));
        }
        let mut w = Writer {
            servers,
            cap,
            si: &si,
            lease_secret,
            shares: &shares,
            written: Vec::new(),
            failed: map.failed.iter().cloned().collect(),
            conflict: None,
            flights: 0,
        };
        // The claim alone.
        let claim_target = targets[claim].clone();
        match w.flight(std::slice::from_ref(&claim_target)).await.pop() {
            Some(Outcome::Written) => {}
            Some(Outcome::Conflict(found)) => {
                return Err(MutableError::Uncoordinated(Box::new(Uncoordinated {
                    phase: UcwPhase::Claim,
                    server: servers[claim_target.server].nickname.clone(),
                    shnum: claim_target.shnum,
                    expected: base_version.map_or(0, |v| v.seqnum),
                    found: found_seqnum(&found),
                    written: 0,
                    planned,
                })));
            }
            _ => {
                exclude.insert(claim_target.server);
                base_version = base_version.or(map.best().map(|(v, _)| v));
                continue;
            }
        }
        let mut left: Vec<Target> = targets
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != claim)
            .map(|(_, t)| t)
            .collect();
        let base_shares: Vec<(usize, u16)> = base_version
            .map(|v| shares_of(&map, &v).into_iter().collect())
            .unwrap_or_default();
        while !left.is_empty() && w.conflict.is_none() {
            let (flight, safe) = plan_flight(&left, &base_shares, &w.written, k);
            if !safe {
                notes.push(format!(
                    "the old version had only {k} shares and no free server: this update was \
                     not crash-safe"
                ));
            }
            left.retain(|t| !flight.contains(t));
            let outcomes = w.flight(&flight).await;
            // A share that had no room goes to another server that answered the map.
            let mut again = Vec::new();
            for (t, o) in flight.iter().zip(outcomes) {
                if let Outcome::Full(_) = o {
                    if t.expected.is_empty() {
                        again.push(t.shnum);
                    }
                }
            }
            if !again.is_empty() && w.conflict.is_none() {
                let holding: BTreeSet<usize> = w.written.iter().map(|(s, _)| *s).collect();
                let dead: BTreeSet<usize> = w.failed.keys().copied().collect();
                let asked: BTreeSet<(usize, u16)> =
                    flight.iter().map(|t| (t.server, t.shnum)).collect();
                let usable = |i: usize| {
                    map.answered.contains(&i)
                        && !dead.contains(&i)
                        && !map.shares.iter().any(|s| s.server == i)
                };
                let order = permuted(servers, &si);
                let unplaced: BTreeSet<u16> = again.into_iter().collect();
                for (server, shnum) in plan_round(&order, &unplaced, &holding, &usable, &asked) {
                    left.push(Target {
                        server,
                        shnum,
                        expected: Vec::new(),
                    });
                }
            }
        }
        if let Some((t, found)) = w.conflict.take() {
            return Err(MutableError::Uncoordinated(Box::new(Uncoordinated {
                phase: UcwPhase::Publish,
                server: servers[t.server].nickname.clone(),
                shnum: t.shnum,
                expected: base_version.map_or(0, |v| v.seqnum),
                found: found_seqnum(&found),
                written: w.written.len(),
                planned,
            })));
        }
        let happiness = max_matching(&w.written);
        let failed: Vec<(String, String)> = w
            .failed
            .iter()
            .map(|(i, e)| (servers[*i].nickname.clone(), e.clone()))
            .collect();
        if happiness < usize::from(params.happy) {
            return Err(not_happy(
                happiness,
                &params,
                servers.len(),
                failed.len(),
                Some(seqnum),
            ));
        }
        info!(si = %crate::immutable::base32(&si), seqnum, happiness, "mutable file published");
        return Ok(PublishReport {
            version: prefix.version(),
            prefix,
            happiness,
            written: w
                .written
                .iter()
                .map(|&(i, n)| (servers[i].nickname.clone(), n))
                .collect(),
            failed,
            flights: w.flights,
            notes,
        });
    }
    Err(not_happy(0, params, servers.len(), exclude.len(), None))
}

/// The flights' state.
struct Writer<'a> {
    servers: &'a [ConnectedServer],
    cap: &'a MutWriteCap,
    si: &'a StorageIndex,
    lease_secret: &'a [u8; 32],
    shares: &'a [Vec<u8>],
    written: Vec<(usize, u16)>,
    failed: BTreeMap<usize, String>,
    conflict: Option<(Target, Vec<u8>)>,
    flights: usize,
}

impl Writer<'_> {
    /// Sends every target of a flight at once and records what each did.
    async fn flight(&mut self, flight: &[Target]) -> Vec<Outcome> {
        self.flights += 1;
        let outcomes = join_all(flight.iter().map(|t| {
            write_share(
                &self.servers[t.server],
                self.cap,
                self.si,
                self.lease_secret,
                t.shnum,
                &t.expected,
                &self.shares[t.shnum as usize],
            )
        }))
        .await;
        for (t, o) in flight.iter().zip(&outcomes) {
            match o {
                Outcome::Written => self.written.push((t.server, t.shnum)),
                Outcome::Conflict(found) => {
                    if self.conflict.is_none() {
                        self.conflict = Some((t.clone(), found.clone()));
                    }
                }
                Outcome::Full(e) => {
                    debug!(server = %self.servers[t.server].nickname, error = %e, "no room for a mutable share");
                }
                Outcome::Failed(e) => {
                    self.failed.insert(t.server, e.clone());
                }
            }
        }
        outcomes
    }
}

/// The highest valid version above `base` (any valid version when there is no base).
fn newest_above(map: &ServerMap, base: Option<&VersionId>) -> Option<VersionId> {
    map.versions()
        .into_keys()
        .next_back()
        .filter(|v| base.is_none_or(|b| v > b))
}

/// The highest recoverable version above `base` (none when there is no base: any version
/// is then new to this writer only if it is not recoverable).
fn recoverable_above(map: &ServerMap, base: Option<&VersionId>) -> Option<VersionId> {
    let base = base?;
    map.versions()
        .into_iter()
        .rev()
        .take_while(|(v, _)| v > base)
        .find(|(_, (p, shares))| shares.len() >= usize::from(p.needed))
        .map(|(v, _)| v)
}

/// The (server, share number) pairs holding `v`.
fn shares_of(map: &ServerMap, v: &VersionId) -> BTreeSet<(usize, u16)> {
    map.shares
        .iter()
        .filter(|s| s.header.is_some_and(|h| h.prefix.version() == *v))
        .map(|s| (s.server, s.shnum))
        .collect()
}

fn found_seqnum(prefix_bytes: &[u8]) -> Option<u64> {
    SignedPrefix::decode(prefix_bytes).ok().map(|p| p.seqnum)
}

fn ucw_from_map(
    servers: &[ConnectedServer],
    map: &ServerMap,
    v: &VersionId,
    base: Option<&VersionId>,
) -> MutableError {
    let (server, shnum) = shares_of(map, v).into_iter().next().unwrap_or((0, 0));
    MutableError::Uncoordinated(Box::new(Uncoordinated {
        phase: UcwPhase::Servermap,
        server: servers
            .get(server)
            .map_or(String::new(), |s| s.nickname.clone()),
        shnum,
        expected: base.map_or(0, |b| b.seqnum),
        found: Some(v.seqnum),
        written: 0,
        planned: 0,
    }))
}

/// Every share the new version writes: each share number below N seen on a server that
/// answered (tested against what was seen there), and each share number nobody holds,
/// placed on servers holding nothing of the slot (tested absent).
fn targets(servers: &[ConnectedServer], map: &ServerMap, n: u16) -> Vec<Target> {
    let failed: BTreeSet<usize> = map.failed.iter().map(|(i, _)| *i).collect();
    let mut out: Vec<Target> = map
        .shares
        .iter()
        .filter(|s| s.shnum < n && !failed.contains(&s.server))
        .map(|s| Target {
            server: s.server,
            shnum: s.shnum,
            expected: s.prefix_bytes.clone(),
        })
        .collect();
    let held: BTreeSet<u16> = out.iter().map(|t| t.shnum).collect();
    let unplaced: BTreeSet<u16> = (0..n).filter(|s| !held.contains(s)).collect();
    if !unplaced.is_empty() {
        let order = permuted(servers, &map.si);
        let holding: BTreeSet<usize> = out.iter().map(|t| t.server).collect();
        let usable =
            |i: usize| map.answered.contains(&i) && !map.shares.iter().any(|s| s.server == i);
        let mut asked: BTreeSet<(usize, u16)> = BTreeSet::new();
        let mut left = unplaced;
        // Empty servers first; then, if shares are left, servers that already hold some.
        for pass in 0..2 {
            let usable = |i: usize| usable(i) || (pass == 1 && map.answered.contains(&i));
            for (server, shnum) in plan_round(&order, &left, &holding, &usable, &asked) {
                asked.insert((server, shnum));
                left.remove(&shnum);
                out.push(Target {
                    server,
                    shnum,
                    expected: Vec::new(),
                });
            }
        }
    }
    out
}

/// The index in `targets` of the claim: the first server in permuted order holding a share
/// of the base version, its lowest such share. Two writers with the same map choose the
/// same claim, and the server's lock lets exactly one of them through. When the base has
/// few shares (fewer than `2k - 1`), or there is none, the first share tested absent.
fn claim_of(
    servers: &[ConnectedServer],
    map: &ServerMap,
    base: Option<&VersionId>,
    targets: &[Target],
    k: u16,
) -> Option<usize> {
    let rank: BTreeMap<usize, usize> = permuted(servers, &map.si)
        .into_iter()
        .enumerate()
        .map(|(r, i)| (i, r))
        .collect();
    let base_shares = base.map(|v| shares_of(map, v)).unwrap_or_default();
    let distinct: BTreeSet<u16> = base_shares.iter().map(|(_, n)| *n).collect();
    let by_rank = |t: &Target| (rank.get(&t.server).copied().unwrap_or(usize::MAX), t.shnum);
    let pick = |keep: &dyn Fn(&Target) -> bool| {
        targets
            .iter()
            .enumerate()
            .filter(|(_, t)| keep(t))
            .min_by_key(|(_, t)| by_rank(t))
            .map(|(i, _)| i)
    };
    if distinct.len() + 1 >= 2 * usize::from(k) {
        if let Some(i) = pick(&|t| base_shares.contains(&(t.server, t.shnum))) {
            return Some(i);
        }
    }
    pick(&|t| t.expected.is_empty()).or_else(|| pick(&|_| true))
}

/// The next flight out of `left`, and whether it is crash-safe: whatever part of it lands,
/// the old version (`base`, less the shares already overwritten) or the new one (`written`)
/// keeps k distinct shares.
///
/// - Once the new version has k shares, everything left is safe.
/// - While `o + n >= 2k - 1` (`o` old shares left, `n` new ones written), a flight whose
///   shares each add a share number the new version lacks is safe: each landed share adds
///   one to `n` and takes at most one from `o`, so one of them stays at least k.
/// - Otherwise, shares tested absent (they take nothing from the old version), and
///   overwrites while the old version would keep k shares even if all of them landed.
/// - If none of that is possible, everything left, unsafe.
fn plan_flight(
    left: &[Target],
    base: &[(usize, u16)],
    written: &[(usize, u16)],
    k: u16,
) -> (Vec<Target>, bool) {
    let k = usize::from(k);
    let new: BTreeSet<u16> = written.iter().map(|(_, n)| *n).collect();
    let old_left = |overwritten: &dyn Fn(&(usize, u16)) -> bool| -> usize {
        base.iter()
            .filter(|p| !written.contains(p) && !overwritten(p))
            .map(|(_, n)| *n)
            .collect::<BTreeSet<u16>>()
            .len()
    };
    if new.len() >= k {
        return (left.to_vec(), true);
    }
    let o = old_left(&|_| false);
    if o + new.len() + 1 >= 2 * k {
        let mut numbers = new.clone();
        let flight: Vec<Target> = left
            .iter()
            .filter(|t| numbers.insert(t.shnum))
            .cloned()
            .collect();
        if !flight.is_empty() {
            return (flight, true);
        }
    }
    let mut flight: Vec<Target> = left
        .iter()
        .filter(|t| t.expected.is_empty())
        .cloned()
        .collect();
    for t in left.iter().filter(|t| !t.expected.is_empty()) {
        let with: Vec<(usize, u16)> = flight
            .iter()
            .chain(std::iter::once(t))
            .map(|t| (t.server, t.shnum))
            .collect();
        if old_left(&|p| with.contains(p)) >= k {
            flight.push(t.clone());
        }
    }
    if flight.is_empty() {
        return (left.to_vec(), false);
    }
    (flight, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(server: usize, shnum: u16, absent: bool) -> Target {
        Target {
            server,
            shnum,
            expected: if absent { Vec::new() } else { vec![1] },
        }
    }

    /// Every subset of a flight that lands leaves k shares of the old or the new version.
    fn always_recoverable(
        flight: &[Target],
        base: &[(usize, u16)],
        written: &[(usize, u16)],
        k: usize,
    ) -> bool {
        let n = flight.len().min(16);
        (0u32..1 << n).all(|mask| {
            let landed: Vec<(usize, u16)> = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| (flight[i].server, flight[i].shnum))
                .chain(written.iter().copied())
                .collect();
            let old: BTreeSet<u16> = base
                .iter()
                .filter(|p| !landed.contains(p))
                .map(|(_, n)| *n)
                .collect();
            let new: BTreeSet<u16> = landed.iter().map(|(_, n)| *n).collect();
            old.len() >= k || new.len() >= k
        })
    }

    /// Every plan that calls itself safe is, for small k and old-version sizes, with and
    /// without free servers; with the defaults a publish takes the claim and one flight.
    #[test]
    fn flights_that_say_they_are_safe_are() {
        for k in 1..=4usize {
            for o in k..=8usize {
                for free in 0..=3usize {
                    // The old version: share i on server i. Free servers after those.
                    let base: Vec<(usize, u16)> = (0..o).map(|i| (i, i as u16)).collect();
                    let mut left: Vec<Target> = (0..o).map(|i| t(i, i as u16, false)).collect();
                    left.extend((0..free).map(|j| t(o + j, (o + j) as u16, true)));
                    // The claim, as `claim_of` picks it: an old share when there are
                    // 2k - 1 of them, else a free slot; with neither, the update cannot
                    // be crash-safe from its first share on.
                    let at = if o + 1 >= 2 * k || free == 0 { 0 } else { o };
                    let claim = left.remove(at);
                    let mut written = vec![(claim.server, claim.shnum)];
                    if !always_recoverable(&[], &base, &written, k) {
                        assert!(o == k && free == 0, "k={k} o={o} free={free}");
                        continue;
                    }
                    let mut flights = 0;
                    while !left.is_empty() {
                        let (flight, safe) = plan_flight(&left, &base, &written, k as u16);
                        assert!(!flight.is_empty());
                        if safe {
                            assert!(
                                always_recoverable(&flight, &base, &written, k),
                                "k={k} o={o} free={free}: {flight:?} after {written:?}"
                            );
                        }
                        left.retain(|x| !flight.contains(x));
                        written.extend(flight.iter().map(|x| (x.server, x.shnum)));
                        flights += 1;
                        assert!(flights < 20);
                    }
                }
            }
        }
        // The default 3-of-10 over ten shares: one flight after the claim.
        let base: Vec<(usize, u16)> = (0..10).map(|i| (i, i as u16)).collect();
        let left: Vec<Target> = (1..10).map(|i| t(i, i as u16, false)).collect();
        let (flight, safe) = plan_flight(&left, &base, &[(0, 0)], 3);
        assert!(safe);
        assert_eq!(flight.len(), 9);
    }

    #[test]
    fn an_old_version_of_exactly_k_shares_with_no_room_is_written_unsafely() {
        let base: Vec<(usize, u16)> = (0..3).map(|i| (i, i as u16)).collect();
        let left: Vec<Target> = (1..3).map(|i| t(i, i as u16, false)).collect();
        let (flight, safe) = plan_flight(&left, &base, &[(0, 0)], 3);
        assert!(!safe);
        assert_eq!(flight.len(), 2);
    }

    #[test]
    fn the_uncoordinated_write_error_says_what_happened() {
        let e = Uncoordinated {
            phase: UcwPhase::Claim,
            server: "storage4".into(),
            shnum: 3,
            expected: 5,
            found: Some(6),
            written: 0,
            planned: 10,
        };
        assert_eq!(
            e.to_string(),
            "uncoordinated write: another writer changed this file while this write ran: \
             share 3 on server 'storage4' holds version 6, not version 5 that this write \
             was based on. Nothing was written; read the file again and retry"
        );
    }
}
