//! The storage broker: the client's view of the grid.
//!
//! It takes `storage` announcements (from the introducer client, heard or cached), keeps one
//! reconnecting connection to each announced server — the Tub shares one connection per
//! peer, whoever else uses it — and reports each server's state for `tahoe status`. A newer
//! announcement with another FURL replaces the old connection.
//!
//! `[server:TUBID]` sections in `tahoe.cfg` are local word about one server ([`Override`]):
//!
//! - `nickname` replaces the announced one in the status;
//! - `hints` replace the hints of the FURL dialed (announced or configured);
//! - `furl` makes it a *configured* server (Tahoe's static server list): the broker connects
//!   to it from the start, with or without an introducer, and ignores announcements that name
//!   its TubId, so an introducer cannot redirect it. Having no announcement, it has no
//!   announcement key: its key (for lease secrets) and permutation seed are derived from its
//!   TubId ([`configured_key`]), so a client that knows it this way may place shares on it in
//!   another order than a client that knows it by announcement (downloads ask every server);
//! - `tcp` is not the broker's: the node gives it to the handler registry as a rule for that
//!   TubId (`Registry::set_peer_tcp_policy`), so every dial to the server follows it, whoever
//!   asks for the connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use folio_rpc::{
    Furl, Hint, ReconnectPolicy, Reconnector, ReconnectorState, Side, Tub, TubId, TypedRef,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

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
    /// Whether `tahoe.cfg` names it (`[server:TUBID] furl`) rather than an announcement.
    pub configured: bool,
    /// The free space it last reported (`get_version`), if asked since it connected
    /// ([`StorageBroker::refresh_space`]) and it could tell.
    pub available_space: Option<u64>,
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
    /// Hints to dial instead of the announced (or configured) ones.
    pub hints: Option<Vec<Hint>>,
    /// The server's storage FURL: connect to it without waiting for an announcement, and
    /// ignore announcements for its TubId.
    pub furl: Option<Furl>,
}

/// The stand-in announcement key of a server `tahoe.cfg` names by FURL: a hash of its TubId,
/// used where an announced server's key is (the broker's table, lease secrets, the
/// permutation seed).
pub fn configured_key(tubid: &TubId) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"folio-configured-server-v1\0");
    ctx.update(tubid.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Where the broker learned of a server.
enum Origin {
    /// A verified `storage` announcement.
    Announced(Box<Verified>),
    /// `[server:TUBID] furl`, under this stand-in key.
    Configured { key: [u8; 32] },
}

/// A server's free space as it last said, and when it was asked.
type SpaceSlot = Arc<Mutex<Option<(Instant, Option<u64>)>>>;

struct Entry {
    origin: Origin,
    furl: Furl,
    reconnector: Reconnector,
    server: Arc<Mutex<Option<StorageServerRef>>>,
    /// The free space the server reported, and when it was asked.
    space: SpaceSlot,
}

impl Entry {
    fn key(&self) -> [u8; 32] {
        match &self.origin {
            Origin::Announced(v) => v.key,
            Origin::Configured { key } => *key,
        }
    }

    fn announced(&self) -> Option<&Verified> {
        match &self.origin {
            Origin::Announced(v) => Some(v),
            Origin::Configured { .. } => None,
        }
    }

    fn permutation_seed(&self) -> [u8; 32] {
        self.announced()
            .and_then(|v| v.ann.permutation_seed)
            .unwrap_or_else(|| self.key())
    }
}

/// How long [`StorageBroker::refresh_space`] waits for one server.
pub const SPACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a connection to every announced storage server.
pub struct StorageBroker {
    tub: Tub,
    policy: ReconnectPolicy,
    overrides: Vec<Override>,
    servers: Mutex<BTreeMap<[u8; 32], Entry>>,
}

/// Locks `m`, even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    /// A broker dialing through `tub`, connected at once to every server `overrides` gives a
    /// FURL for. Needs a tokio runtime.
    pub fn new(tub: Tub, policy: ReconnectPolicy, overrides: Vec<Override>) -> Arc<Self> {
        let broker = Arc::new(StorageBroker {
            tub,
            policy,
            overrides,
            servers: Mutex::default(),
        });
        let mut servers = lock(&broker.servers);
        for o in &broker.overrides {
            let Some(furl) = &o.furl else { continue };
            let furl = broker.with_override(furl.clone());
            let key = configured_key(&o.tubid);
            info!(server = %o.tubid, "connecting to a storage server named in tahoe.cfg");
            let entry = broker.connect(Origin::Configured { key }, furl);
            servers.insert(key, entry);
        }
        drop(servers);
        broker
    }

    /// `furl` with the hints `tahoe.cfg` gives its server, if any.
    fn with_override(&self, furl: Furl) -> Furl {
        match self.overrides.iter().find(|o| o.tubid == furl.tubid()) {
            Some(Override { hints: Some(h), .. }) => {
                Furl::new(furl.tubid(), h.clone(), furl.swissnum().clone())
            }
            _ => furl,
        }
    }

    /// The nickname `tahoe.cfg` gives the server, else the one it announced.
    fn nickname(&self, e: &Entry) -> String {
        self.overrides
            .iter()
            .find(|o| o.tubid == e.furl.tubid())
            .and_then(|o| o.nickname.clone())
            .or_else(|| e.announced().map(|v| v.ann.nickname.clone()))
            .unwrap_or_default()
    }

    /// Starts keeping a connection to `furl`.
    fn connect(&self, origin: Origin, furl: Furl) -> Entry {
        let server: Arc<Mutex<Option<StorageServerRef>>> = Arc::default();
        let slot = server.clone();
        let reconnector = self.tub.connect_to(furl.clone(), self.policy, move |r| {
            match StorageServerRef::from_object_ref(r) {
                Ok(s) => *lock(&slot) = Some(s),
                Err(e) => warn!(error = %e, "the FURL is not a storage server's"),
            }
        });
        Entry {
            origin,
            furl,
            reconnector,
            server,
            space: Arc::default(),
        }
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
        let Some(furl) = v.furl() else {
            warn!(nickname = %v.ann.nickname, "storage announcement without a FURL; ignored");
            return;
        };
        let tubid = furl.tubid();
        if self
            .overrides
            .iter()
            .any(|o| o.tubid == tubid && o.furl.is_some())
        {
            debug!(nickname = %v.ann.nickname, server = %tubid,
                "announcement for a server tahoe.cfg names by FURL; the configured FURL is kept");
            return;
        }
        let furl = self.with_override(furl);
        let mut servers = lock(&self.servers);
        if let Some(e) = servers.get_mut(&v.key) {
            let Origin::Announced(old) = &mut e.origin else {
                return; // a key equal to a configured server's stand-in: not a real key
            };
            if v.ann.seqnum <= old.ann.seqnum {
                return;
            }
            if e.furl == furl {
                **old = v.clone();
                return;
            }
            e.reconnector.stop();
        }
        info!(nickname = %v.ann.nickname, server = %tubid, "connecting to storage server");
        let entry = self.connect(Origin::Announced(Box::new(v.clone())), furl);
        servers.insert(v.key, entry);
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
                let ann = e.announced().map(|v| &v.ann);
                let nickname = self.nickname(e);
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
                    version: ann.map(|a| a.version.clone()).unwrap_or_default(),
                    seqnum: ann.map(|a| a.seqnum).unwrap_or(0),
                    permutation_seed: match &e.origin {
                        Origin::Announced(v) => v.ann.permutation_seed,
                        Origin::Configured { .. } => Some(e.permutation_seed()),
                    }
                    .map(|s| crate::private::base32(&s)),
                    configured: ann.is_none(),
                    available_space: if connected {
                        lock(&e.space).and_then(|(_, s)| s)
                    } else {
                        None
                    },
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
                    key: e.key(),
                    nickname: self.nickname(e),
                    permutation_seed: e.permutation_seed(),
                    server,
                })
            })
            .collect()
    }

    /// Asks every connected server whose free space is unknown or older than `max_age` for
    /// it (`get_version`, each within [`SPACE_TIMEOUT`], all at once), for
    /// [`ServerStatus::available_space`]. A server that does not answer keeps what it said
    /// before and is asked again after `max_age` too.
    pub async fn refresh_space(&self, max_age: Duration) {
        let due: Vec<(StorageServerRef, SpaceSlot)> = lock(&self.servers)
            .values()
            .filter(|e| {
                matches!(
                    e.reconnector.status().state,
                    ReconnectorState::Connected { .. }
                )
            })
            .filter(|e| !matches!(*lock(&e.space), Some((at, _)) if at.elapsed() < max_age))
            .filter_map(|e| Some((lock(&e.server).clone()?, e.space.clone())))
            .collect();
        let asks = due.into_iter().map(|(server, slot)| async move {
            let answer = tokio::time::timeout(SPACE_TIMEOUT, server.get_version()).await;
            let mut slot = lock(&slot);
            let before = slot.and_then(|(_, s)| s);
            // Asked now either way: a server that fails is asked again in `max_age`, not
            // at every look at the welcome page.
            *slot = Some((
                Instant::now(),
                match answer {
                    Ok(Ok(v)) => v.available_space,
                    _ => before,
                },
            ));
        });
        futures_util::future::join_all(asks).await;
    }

    /// Stops every reconnector.
    pub fn stop(&self) {
        for e in lock(&self.servers).values() {
            e.reconnector.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introducer::Announcement;
    use crate::private::SigningKey;
    use folio_rpc::{Identity, NoConnector, TubConfig};

    fn furl(tubid: TubId, hints: &str) -> Furl {
        format!("folio://{tubid}@{hints}/{}", "s".repeat(32))
            .parse()
            .unwrap()
    }

    fn announce(furl: &Furl, seqnum: u64) -> Verified {
        Announcement {
            service: "storage".into(),
            nickname: "announced".into(),
            version: "folio-tahoe/test".into(),
            seqnum,
            nonce: [7; 16],
            furl: Some(furl.to_string()),
            permutation_seed: Some([1; 32]),
        }
        .sign(&SigningKey::generate())
        .verify()
        .unwrap()
    }

    /// A server `tahoe.cfg` names by FURL is known from the start, and an announcement for
    /// its TubId changes nothing: the introducer cannot redirect it.
    #[tokio::test]
    async fn a_configured_server_is_known_at_once_and_kept() {
        let tub = Tub::new(
            Identity::generate().unwrap(),
            Arc::new(NoConnector),
            TubConfig::default(),
        )
        .unwrap();
        let (configured, other) = (TubId::from_bytes([3; 32]), TubId::from_bytes([4; 32]));
        let mine = furl(configured, "tcp:127.0.0.1:1");
        let broker = StorageBroker::new(
            tub,
            ReconnectPolicy::default(),
            vec![Override {
                tubid: configured,
                nickname: None,
                hints: Some(vec!["tcp:127.0.0.1:2".parse().unwrap()]),
                furl: Some(mine.clone()),
            }],
        );
        let st = broker.status();
        assert_eq!(st.len(), 1);
        assert!(st[0].configured);
        assert_eq!(st[0].tubid, configured.to_string());
        // `hints` apply to a configured FURL too.
        let dialed = lock(&broker.servers)[&configured_key(&configured)]
            .furl
            .clone();
        assert_eq!(dialed, furl(configured, "tcp:127.0.0.1:2"));

        broker.offer(&announce(&furl(configured, "tcp:10.9.9.9:9"), 5));
        broker.offer(&announce(&furl(other, "tcp:127.0.0.1:3"), 1));
        let st = broker.status();
        assert_eq!(st.len(), 2, "{st:?}");
        let kept = st.iter().find(|s| s.configured).unwrap();
        assert_eq!(kept.tubid, configured.to_string());
        assert_eq!(kept.nickname, "");
        let servers = lock(&broker.servers);
        assert_eq!(servers[&configured_key(&configured)].furl, dialed);
        drop(servers);
        broker.stop();
    }
}
