//! The storage broker: the client's view of the grid.
//!
//! It takes `storage` announcements (from the introducer client, heard or cached), keeps one
//! reconnecting connection to each announced server — the Tub shares one connection per
//! peer, whoever else uses it — and reports each server's state for `tahoe status`. A newer
//! announcement with another FURL replaces the old connection; `[server:TUBID]` sections in
//! `tahoe.cfg` override the hints a server announced.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use folio_rpc::{
    Furl, Hint, ReconnectPolicy, Reconnector, ReconnectorState, Side, Tub, TubId, TypedRef,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::introducer::{AnnouncementSink, Verified};
use crate::storage::StorageServerRef;

/// One storage server as `tahoe status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The nickname it announced (or the one `tahoe.cfg` gives it).
    pub nickname: String,
    /// Its TubId.
    pub tubid: String,
    /// Whether a connection is up.
    pub connected: bool,
    /// The handler that carried the connection ("tcp (direct)", "tor (system tor)", ...).
    pub handler: Option<String>,
    /// The hint the connection was made through.
    pub winning_hint: Option<String>,
    /// Connected since (seconds since the Unix epoch).
    pub since: Option<u64>,
    /// When data last arrived (seconds since the Unix epoch).
    pub last_received: Option<u64>,
    /// Why the last attempt or connection failed.
    pub last_error: Option<String>,
    /// When the next attempt starts (seconds since the Unix epoch).
    pub next_attempt: Option<u64>,
    /// The software version it announced.
    pub version: String,
    /// The announcement's sequence number.
    pub seqnum: u64,
    /// Its permutation seed, base32.
    pub permutation_seed: Option<String>,
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A per-server override from `tahoe.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The server.
    pub tubid: TubId,
    /// A nickname to show instead of the announced one.
    pub nickname: Option<String>,
    /// Hints to dial instead of the announced ones.
    pub hints: Option<Vec<Hint>>,
}

struct Entry {
    ann: Verified,
    furl: Furl,
    reconnector: Reconnector,
    server: Arc<Mutex<Option<StorageServerRef>>>,
}

/// Keeps a connection to every announced storage server.
pub struct StorageBroker {
    tub: Tub,
    policy: ReconnectPolicy,
    overrides: Vec<Override>,
    servers: Mutex<BTreeMap<[u8; 32], Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected storage server, for the upload and download paths.
#[derive(Clone)]
pub struct ConnectedServer {
    /// Its announcement key: the server's identity on the grid.
    pub key: [u8; 32],
    /// Its nickname.
    pub nickname: String,
    /// Its permutation seed.
    pub permutation_seed: [u8; 32],
    /// The live reference.
    pub server: StorageServerRef,
}

impl StorageBroker {
    /// A broker dialing through `tub`.
    pub fn new(tub: Tub, policy: ReconnectPolicy, overrides: Vec<Override>) -> Arc<Self> {
        Arc::new(StorageBroker {
            tub,
            policy,
            overrides,
            servers: Mutex::default(),
        })
    }

    /// The sink to give the introducer client.
    pub fn sink(self: &Arc<Self>) -> AnnouncementSink {
        let me = Arc::downgrade(self);
        Arc::new(move |v: &Verified| {
            if let Some(b) = me.upgrade() {
                b.offer(v);
            }
        })
    }

    /// Takes a verified announcement: starts, keeps or replaces the server's connection.
    pub fn offer(&self, v: &Verified) {
        if v.ann.service != "storage" {
            return;
        }
        let Some(mut furl) = v.furl() else {
            warn!(nickname = %v.ann.nickname, "storage announcement without a FURL; ignored");
            return;
        };
        if let Some(o) = self.overrides.iter().find(|o| o.tubid == furl.tubid()) {
            if let Some(h) = &o.hints {
                furl = Furl::new(furl.tubid(), h.clone(), furl.swissnum().clone());
            }
        }
        let mut servers = lock(&self.servers);
        if let Some(e) = servers.get_mut(&v.key) {
            if v.ann.seqnum <= e.ann.ann.seqnum {
                return;
            }
            if e.furl == furl {
                e.ann = v.clone();
                return;
            }
            e.reconnector.stop();
        }
        info!(nickname = %v.ann.nickname, server = %furl.tubid(), "connecting to storage server");
        let server: Arc<Mutex<Option<StorageServerRef>>> = Arc::default();
        let slot = server.clone();
        let reconnector = self.tub.connect_to(furl.clone(), self.policy, move |r| {
            match StorageServerRef::from_object_ref(r) {
                Ok(s) => *lock(&slot) = Some(s),
                Err(e) => warn!(error = %e, "announced FURL is not a storage server"),
            }
        });
        servers.insert(
            v.key,
            Entry {
                ann: v.clone(),
                furl,
                reconnector,
                server,
            },
        );
    }

    /// Every known server and its state, sorted by nickname.
    pub fn status(&self) -> Vec<ServerStatus> {
        let peers = self.tub.connection_status();
        let servers = lock(&self.servers);
        let mut out: Vec<ServerStatus> = servers
            .values()
            .map(|e| {
                let tubid = e.furl.tubid();
                let rs = e.reconnector.status();
                let peer = peers.iter().find(|p| p.tubid == tubid);
                let local = tubid == self.tub.tubid();
                let (connected, since, next_attempt) = match rs.state {
                    ReconnectorState::Connected { since } => (true, Some(unix_secs(since)), None),
                    ReconnectorState::Waiting { next_attempt } => {
                        (false, None, Some(unix_secs(next_attempt)))
                    }
                    _ => (false, None, None),
                };
                let nickname = self
                    .overrides
                    .iter()
                    .find(|o| o.tubid == tubid)
                    .and_then(|o| o.nickname.clone())
                    .unwrap_or_else(|| e.ann.ann.nickname.clone());
                ServerStatus {
                    nickname,
                    tubid: tubid.to_string(),
                    connected,
                    handler: if local {
                        Some("local (this node)".into())
                    } else {
                        peer.and_then(|p| match (&p.handler, p.side) {
                            (Some(h), _) => Some(h.clone()),
                            // The server dialed us first; the Tub shares that connection.
                            (None, Some(Side::Server)) if p.connected => {
                                Some("incoming (the server dialed us)".into())
                            }
                            _ => None,
                        })
                    },
                    winning_hint: peer.and_then(|p| p.winning_hint.clone()),
                    since,
                    last_received: peer.and_then(|p| p.last_received).map(unix_secs),
                    last_error: rs
                        .last_error
                        .clone()
                        .or_else(|| peer.and_then(|p| p.last_error.clone())),
                    next_attempt,
                    version: e.ann.ann.version.clone(),
                    seqnum: e.ann.ann.seqnum,
                    permutation_seed: e
                        .ann
                        .ann
                        .permutation_seed
                        .map(|s| crate::private::base32(&s)),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.nickname, &a.tubid).cmp(&(&b.nickname, &b.tubid)));
        out
    }

    /// The servers connected now, with their references.
    pub fn connected(&self) -> Vec<ConnectedServer> {
        lock(&self.servers)
            .values()
            .filter(|e| {
                matches!(
                    e.reconnector.status().state,
                    ReconnectorState::Connected { .. }
                )
            })
            .filter_map(|e| {
                let server = lock(&e.server).clone()?;
                Some(ConnectedServer {
                    key: e.ann.key,
                    nickname: e.ann.ann.nickname.clone(),
                    permutation_seed: e.ann.ann.permutation_seed.unwrap_or(e.ann.key),
                    server,
                })
            })
            .collect()
    }

    /// Stops every reconnector.
    pub fn stop(&self) {
        for e in lock(&self.servers).values() {
            e.reconnector.stop();
        }
    }
}
