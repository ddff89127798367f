//! The Tub: an identity, the objects it exports, the listeners it accepts from (as
//! `Side::Server`), the connector it dials with (as `Side::Client`), and at most one live
//! connection per peer Tub.
//!
//! ## One connection per pair of Tubs
//!
//! Every reference to any object on a peer shares the peer's connection. When a second
//! connection to the same peer completes (both Tubs dialed at once, or a peer reconnected), the
//! same rule runs on both ends, so both keep the same one and close the other with
//! `Goodbye(Duplicate)`:
//!
//! 1. if the peer's incarnation differs, the newer connection wins (the peer restarted);
//! 2. otherwise, if both were dialed by the same Tub, the one with the higher
//!    `connection_seq` wins (the dialer's newer attempt);
//! 3. otherwise the connection dialed by the Tub with the greater TubId (compared as bytes)
//!    wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use crate::connection::ConnShared;
use crate::connector::{ConnectError, Connector, Listener};
use crate::furl::{Furl, FurlError, Hint, Swissnum};
use crate::handshake::{ConnectionInfo, Established, HandshakeConfig, HandshakeError, Handshaker};
use crate::identity::Identity;
use crate::message::GoodbyeReason;
use crate::object::{
    CallContext, CallError, Dispatch, ObjectRef, RefKind, Refusal, ReplyFuture, TypedRef,
};
use crate::reconnector::{ReconnectPolicy, Reconnector};
use crate::tls::Side;
use crate::tubid::TubId;

/// A Tub's limits and policies.
#[derive(Debug, Clone)]
pub struct TubConfig {
    /// Handshake timeouts and sizes.
    pub handshake: HandshakeConfig,
    /// Calls from one peer that may run at once; later ones wait in arrival order.
    pub max_inbound_calls: usize,
    /// Calls from one peer that may wait for a slot; beyond it (or `max_queued_call_bytes`
    /// of their arguments) the connection stops reading.
    pub max_queued_calls: usize,
    /// Argument bytes of the calls waiting for a slot.
    pub max_queued_call_bytes: usize,
    /// Calls to one peer that may await answers at once; beyond it callers wait.
    pub max_outbound_calls: usize,
    /// Objects one connection may export (references we sent).
    pub max_exports: usize,
    /// References one connection may import (references the peer sent).
    pub max_imports: usize,
    /// Accept third-party references (FURL gifts) in arguments and results.
    pub accept_gifts: bool,
    /// Ping a peer that has sent nothing for this long.
    pub keepalive: Option<Duration>,
    /// Drop a connection on which nothing has arrived for this long.
    pub disconnect_timeout: Option<Duration>,
    /// Time allowed for connecting to one hint and completing the handshake.
    pub dial_timeout: Duration,
    /// Bytes that may wait to be written to one connection. Our calls wait for room; a peer
    /// that provokes more (by not reading its answers) is disconnected.
    pub max_write_queue: usize,
}

impl Default for TubConfig {
    fn default() -> Self {
        TubConfig {
            handshake: HandshakeConfig::default(),
            max_inbound_calls: 256,
            max_queued_calls: 4096,
            max_queued_call_bytes: 16 * 1024 * 1024,
            max_outbound_calls: 4096,
            max_exports: 65_536,
            max_imports: 65_536,
            accept_gifts: true,
            keepalive: Some(Duration::from_secs(240)),
            disconnect_timeout: None,
            dial_timeout: Duration::from_secs(120),
            max_write_queue: 16 * 1024 * 1024,
        }
    }
}

/// Why a FURL could not be turned into a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// No hint of the FURL has a handler.
    #[error("no usable hint for Tub {tubid} ({detail})")]
    NoUsableHints {
        /// The Tub.
        tubid: TubId,
        /// Why each hint was skipped.
        detail: String,
    },
    /// Every usable hint failed.
    #[error("cannot reach Tub {tubid}: {}", attempts.iter().map(|(h, e)| format!("{h}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable {
        /// The Tub.
        tubid: TubId,
        /// Each hint tried and how it failed.
        attempts: Vec<(String, String)>,
    },
    /// The Tub has no object under the FURL's swissnum.
    #[error("Tub {0} has no object for this FURL")]
    UnknownName(TubId),
    /// The object exists but has another interface than the one asked for.
    #[error("{0}")]
    WrongInterface(Refusal),
    /// Resolving the FURL on the connection failed.
    #[error("asking Tub {tubid} for the object failed: {reason}")]
    Failed {
        /// The Tub.
        tubid: TubId,
        /// What went wrong.
        reason: String,
    },
    /// This Tub has shut down.
    #[error("the Tub has shut down")]
    Shutdown,
}

/// Why an object could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Only objects in this process can be registered.
    #[error("only a local object can be registered under a FURL")]
    NotLocal,
    /// The name is not a valid swissnum.
    #[error("{0}")]
    BadName(#[from] FurlError),
}

/// What is known about the connection to one peer, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub tubid: TubId,
    /// Whether a connection is up.
    pub connected: bool,
    /// Each hint of the last dial and what became of it.
    pub hints: Vec<HintStatus>,
    /// The hint whose handshake won, if this Tub dialed.
    pub winning_hint: Option<String>,
    /// The handler that carried the winning hint.
    pub handler: Option<String>,
    /// Which side this Tub played on the live connection.
    pub side: Option<Side>,
    /// When the live connection was established.
    pub established_at: Option<SystemTime>,
    /// When data last arrived on it.
    pub last_received: Option<SystemTime>,
    /// Why the last connection or attempt ended.
    pub last_error: Option<String>,
}

/// One hint's progress: "connecting", "negotiating", "connected", "failed: ...",
/// "skipped: ...", "cancelled".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintStatus {
    /// The hint as written in the FURL.
    pub hint: String,
    /// What happened to it.
    pub status: String,
}

/// The root object of every connection: resolves swissnums to objects.
pub(crate) struct Root(pub(crate) Weak<TubInner>);

/// The root object's error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RootError {
    UnknownName,
}

pub(crate) const ROOT_INTERFACE: &str = "folio.root";

/// Where the answer to a FURL's resolution sent behind our hello will arrive.
type EarlyResolve = crate::connection::Answer<ObjectRef, RootError>;

impl Dispatch for Root {
    fn interface(&self) -> &'static str {
        ROOT_INTERFACE
    }

    fn call(
        self: Arc<Self>,
        method: &str,
        args: &[u8],
        ctx: CallContext,
    ) -> Result<ReplyFuture, Refusal> {
        match method {
            "get_reference" => {
                let (name,): (String,) = ctx.decode_args(method, args)?;
                let found = self.0.upgrade().and_then(|t| t.lookup(&name));
                let reply = match found {
                    Some(obj) => ctx.encode_reply::<_, RootError>(Ok(ObjectRef::local(obj))),
                    None => ctx.encode_reply::<ObjectRef, _>(Err(RootError::UnknownName)),
                };
                Ok(Box::pin(async move { reply }))
            }
            _ => Err(Refusal::UnknownMethod {
                interface: ROOT_INTERFACE.into(),
                method: method.into(),
            }),
        }
    }
}

pub(crate) struct TubInner {
    me: Weak<TubInner>,
    handshaker: Handshaker,
    connector: Arc<dyn Connector>,
    config: Arc<TubConfig>,
    registry: Mutex<HashMap<String, Arc<dyn Dispatch>>>,
    location: Mutex<Vec<Hint>>,
    connections: Mutex<HashMap<TubId, Arc<ConnShared>>>,
    dial_locks: Mutex<HashMap<TubId, Arc<tokio::sync::Mutex<()>>>>,
    status: Mutex<HashMap<TubId, PeerStatus>>,
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Whether the keepalive task (one per Tub, for all its connections) has started.
    keepalive_started: std::sync::atomic::AtomicBool,
    shut_down: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key of the duplicate-connection rule: who dialed, and their attempt number.
fn dial_key(info: &ConnectionInfo) -> (TubId, u64) {
    match info.side {
        Side::Client => (info.local, info.local_hello.connection_seq),
        Side::Server => (info.peer, info.peer_hello.connection_seq),
    }
}

/// Whether `new` replaces `old` (both to the same peer). The same answer on both ends.
pub(crate) fn new_connection_wins(new: &ConnectionInfo, old: &ConnectionInfo) -> bool {
    if new.peer_hello.incarnation != old.peer_hello.incarnation {
        return true;
    }
    let (new_dialer, new_seq) = dial_key(new);
    let (old_dialer, old_seq) = dial_key(old);
    if new_dialer != old_dialer {
        new_dialer > old_dialer
    } else {
        new_seq > old_seq
    }
}

impl TubInner {
    fn arc(&self) -> Arc<TubInner> {
        self.me.upgrade().expect("the Tub is alive while in use")
    }

    fn lookup(&self, name: &str) -> Option<Arc<dyn Dispatch>> {
        lock(&self.registry).get(name).cloned()
    }

    fn live_connection(&self, tubid: &TubId) -> Option<Arc<ConnShared>> {
        lock(&self.connections)
            .get(tubid)
            .filter(|c| c.closed_reason().is_none())
            .cloned()
    }

    /// Called by a connection as it closes.
    pub(crate) fn forget_connection(&self, conn: &ConnShared) {
        let peer = conn.info.peer;
        let mut conns = lock(&self.connections);
        if conns
            .get(&peer)
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), conn))
        {
            conns.remove(&peer);
            drop(conns);
            let mut status = lock(&self.status);
            if let Some(s) = status.get_mut(&peer) {
                if s.hints.is_empty() {
                    // A peer that only ever dialed us: nothing worth keeping once it is gone,
                    // and anyone can make new identities.
                    status.remove(&peer);
                } else {
                    s.connected = false;
                    s.last_error = conn.closed_reason();
                }
            }
        }
    }

    /// Starts a connection's tasks and applies the duplicate rule. Returns the surviving one,
    /// and, if `early_resolve` says the FURL's resolution went out behind our hello and the
    /// new connection survived, where its answer will arrive.
    fn adopt<S>(
        &self,
        est: Established<S>,
        hint: Option<String>,
        handler: Option<String>,
        early_resolve: bool,
    ) -> (Arc<ConnShared>, Option<EarlyResolve>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (conn, start) =
            ConnShared::create(est, self.me.clone(), self.config.clone(), hint.clone());
        // Registered before the connection is visible: its own calls are numbered after it.
        let mut early = early_resolve.then(|| conn.expect_early_answer());
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            conn.close("the Tub shut down", Some(GoodbyeReason::Shutdown));
            start();
            return (conn, None);
        }
        let peer = conn.info.peer;
        let mut conns = lock(&self.connections);
        let (winner, loser, why) = match conns.get(&peer).filter(|c| c.closed_reason().is_none()) {
            None => (conn.clone(), None, ""),
            Some(old) if new_connection_wins(&conn.info, &old.info) => {
                let why = if conn.info.peer_hello.incarnation != old.info.peer_hello.incarnation {
                    "replaced: the peer restarted"
                } else {
                    "replaced by a newer connection to the same Tub"
                };
                (conn.clone(), Some(old.clone()), why)
            }
            Some(old) => (
                old.clone(),
                Some(conn.clone()),
                "another connection to the same Tub won",
            ),
        };
        conns.insert(peer, winner.clone());
        drop(conns);
        if Arc::ptr_eq(&winner, &conn) {
            let mut status = lock(&self.status);
            let s = status.entry(peer).or_insert_with(|| empty_status(peer));
            s.connected = true;
            s.side = Some(conn.info.side);
            s.established_at = Some(conn.established_at);
            if conn.info.side == Side::Client {
                s.winning_hint = hint;
                s.handler = handler;
            } else {
                s.winning_hint = None;
                s.handler = None;
            }
        }
        if let Some(loser) = loser {
            debug!(%peer, why, "duplicate connection");
            loser.close(why, Some(GoodbyeReason::Duplicate));
        }
        start();
        self.start_keepalive();
        if !Arc::ptr_eq(&winner, &conn) {
            // The early answer would come on the connection that lost: resolve on the winner.
            early = None;
        }
        (winner, early)
    }

    /// Starts the Tub's keepalive task with its first connection, if the configuration asks
    /// for keepalives or a disconnect timeout. One task and one timer serve every connection
    /// (a task per connection cost a spawn and a timer on every connect); it stops when the
    /// Tub is dropped or shut down.
    fn start_keepalive(&self) {
        let Some(tick) = crate::connection::keepalive_tick(&self.config) else {
            return;
        };
        if self
            .keepalive_started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let weak = self.me.clone();
        tokio::spawn(async move {
            let mut nonce = 0u64;
            loop {
                tokio::time::sleep(tick).await;
                let Some(tub) = weak.upgrade() else { return };
                if tub.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let conns: Vec<_> = lock(&tub.connections).values().cloned().collect();
                drop(tub);
                nonce += 1;
                for c in conns {
                    c.keepalive_check(nonce);
                }
            }
        });
    }

    fn set_hint_status(&self, tubid: TubId, hint: &str, status: String) {
        let mut all = lock(&self.status);
        let s = all.entry(tubid).or_insert_with(|| empty_status(tubid));
        match s.hints.iter_mut().find(|h| h.hint == hint) {
            Some(h) => h.status = status,
            None => s.hints.push(HintStatus {
                hint: hint.to_string(),
                status,
            }),
        }
    }

    /// Dials every usable hint at once; the first completed handshake wins. The FURL's
    /// resolution goes out behind our hello on every attempt (protocol.md §5), and the
    /// surviving connection comes back with where its answer will arrive.
    async fn dial(
        &self,
        furl: &Furl,
    ) -> Result<(Arc<ConnShared>, Option<EarlyResolve>), ReferenceError> {
        let tubid = furl.tubid();
        let early = postcard::to_allocvec(&(furl.swissnum().as_str(),))
            .ok()
            .and_then(|args| crate::connection::early_root_call("get_reference", &args))
            .unwrap_or_default();
        lock(&self.status)
            .entry(tubid)
            .or_insert_with(|| empty_status(tubid))
            .hints
            .clear();
        // Every hint goes to the connector, even types this crate does not know: an embedder's
        // connector may handle its own. Unsupported ones come back at once and are skipped.
        // One sequence number for every attempt of this dial: the server admits only the
        // first of them to arrive, so both ends keep the same one.
        let seq = self.handshaker.next_connection_seq();
        let attempt = |hint: &Hint| {
            let text = hint.to_string();
            let tub = self.arc();
            let hint = hint.clone();
            let early = early.clone();
            let span = info_span!("dial", peer = %tubid, hint = %text);
            async move {
                tub.set_hint_status(tubid, &text, "connecting".into());
                let handler = tub.connector.handler_name_for(tubid, &hint);
                let attempt = async {
                    let stream = tub.connector.connect_for(tubid, &hint).await?;
                    tub.set_hint_status(tubid, &text, "negotiating".into());
                    let est = tub
                        .handshaker
                        .connect_early(stream, tubid, seq, &early)
                        .await?;
                    Ok::<_, DialFailure>(est)
                };
                let result = match tokio::time::timeout(tub.config.dial_timeout, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(DialFailure::Timeout(tub.config.dial_timeout)),
                };
                // Each attempt records its own end, whatever order they are collected in.
                match &result {
                    Ok(_) => {}
                    Err(DialFailure::Connect(ConnectError::Unsupported { kind })) => {
                        let why = format!("skipped: no handler for {kind:?} hints");
                        tub.set_hint_status(tubid, &text, why);
                    }
                    Err(e) => tub.set_hint_status(
                        tubid,
                        &text,
                        format!("failed: {}", without_hint(&text, e)),
                    ),
                }
                (text, handler, result)
            }
            .instrument(span)
        };
        let mut attempts = JoinSet::new();
        // A FURL with one hint (the common case) is dialed on this task: no spawn.
        let mut only = match furl.hints() {
            [] => {
                return Err(ReferenceError::NoUsableHints {
                    tubid,
                    detail: "the FURL has no hints".into(),
                })
            }
            [hint] => Some(attempt(hint).await),
            hints => {
                for hint in hints {
                    attempts.spawn(attempt(hint));
                }
                None
            }
        };
        let mut failures = Vec::new();
        let mut skipped = Vec::new();
        loop {
            let (text, handler, result) = match only.take() {
                Some(outcome) => outcome,
                None => match attempts.join_next().await {
                    Some(Ok(outcome)) => outcome,
                    Some(Err(_)) => continue,
                    None => break,
                },
            };
            match result {
                Ok((est, early_sent)) => {
                    attempts.abort_all();
                    if let Some(s) = lock(&self.status).get_mut(&tubid) {
                        for h in &mut s.hints {
                            if h.hint != text
                                && matches!(h.status.as_str(), "connecting" | "negotiating")
                            {
                                h.status = "cancelled: another hint connected first".into();
                            }
                        }
                    }
                    self.set_hint_status(tubid, &text, "connected".into());
                    return Ok(self.adopt(est, Some(text), handler, early_sent));
                }
                Err(DialFailure::Connect(ConnectError::Unsupported { .. })) => {
                    skipped.push(format!("{text}: no handler"));
                }
                Err(e) => {
                    let why = without_hint(&text, &e);
                    failures.push((text, why));
                }
            }
        }
        if failures.is_empty() {
            return Err(ReferenceError::NoUsableHints {
                tubid,
                detail: skipped.join("; "),
            });
        }
        let mut status = lock(&self.status);
        if let Some(s) = status.get_mut(&tubid) {
            s.last_error = Some(
                failures
                    .iter()
                    .map(|(h, e)| format!("{h}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        Err(ReferenceError::Unreachable {
            tubid,
            attempts: failures,
        })
    }

    /// The live connection to `furl`'s Tub, dialing if there is none; a new connection comes
    /// with the answer to `furl`'s resolution on the way, if it went out early.
    async fn connection_to(
        &self,
        furl: &Furl,
    ) -> Result<(Arc<ConnShared>, Option<EarlyResolve>), ReferenceError> {
        let tubid = furl.tubid();
        if let Some(c) = self.live_connection(&tubid) {
            return Ok((c, None));
        }
        let dial_lock = lock(&self.dial_locks).entry(tubid).or_default().clone();
        let _one_dialer = dial_lock.lock().await;
        if let Some(c) = self.live_connection(&tubid) {
            return Ok((c, None));
        }
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ReferenceError::Shutdown);
        }
        match self.dial(furl).await {
            // The peer dialed us meanwhile (and its connection won): use that one.
            Err(e) => self.live_connection(&tubid).map(|c| (c, None)).ok_or(e),
            ok => ok,
        }
    }

    /// The server's admission rule, run on a client's hello: refuse a second connection from
    /// the same dial (same incarnation, same dialer sequence) while the first is live. Every
    /// other duplicate is settled by the rule in [`new_connection_wins`] once established.
    fn admit(&self, new: &ConnectionInfo) -> Result<(), String> {
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the Tub is shutting down".into());
        }
        let conns = lock(&self.connections);
        let Some(old) = conns.get(&new.peer).filter(|c| c.closed_reason().is_none()) else {
            return Ok(());
        };
        if old.info.peer_hello.incarnation == new.peer_hello.incarnation
            && dial_key(&old.info) == dial_key(new)
        {
            return Err("another attempt of the same dial is already connected".into());
        }
        Ok(())
    }

    pub(crate) async fn get_reference(
        tub: &Arc<TubInner>,
        furl: &Furl,
    ) -> Result<ObjectRef, ReferenceError> {
        if furl.tubid() == tub.handshaker.tubid() {
            return tub
                .lookup(furl.swissnum().as_str())
                .map(ObjectRef::local)
                .ok_or(ReferenceError::UnknownName(furl.tubid()));
        }
        // A connection lost to the duplicate rule while resolving is retried on the winner.
        let mut tries = 0;
        loop {
            tries += 1;
            let (conn, early) = tub.connection_to(furl).await?;
            let result: Result<ObjectRef, CallError<RootError>> = match early {
                // A new connection: the call went out behind our hello.
                Some(answer) => answer.await,
                None => {
                    conn.remote_root()
                        .call(
                            ROOT_INTERFACE,
                            "get_reference",
                            &(furl.swissnum().as_str(),),
                        )
                        .await
                }
            };
            return match result {
                Ok(r) => {
                    if let RefKind::Remote(inner) = &r.0 {
                        let _ = inner.furl.set(furl.clone());
                    }
                    Ok(r)
                }
                Err(CallError::App(RootError::UnknownName)) => {
                    Err(ReferenceError::UnknownName(furl.tubid()))
                }
                Err(CallError::Disconnected(_)) if tries < 3 => continue,
                Err(e) => Err(ReferenceError::Failed {
                    tubid: furl.tubid(),
                    reason: e.to_string(),
                }),
            };
        }
    }
}

/// A dial error's text without the hint it starts with (the status shows the hint already).
fn without_hint(hint: &str, e: &DialFailure) -> String {
    let text = e.to_string();
    text.strip_prefix(hint)
        .and_then(|t| t.strip_prefix(": "))
        .map(str::to_string)
        .unwrap_or(text)
}

fn empty_status(tubid: TubId) -> PeerStatus {
    PeerStatus {
        tubid,
        connected: false,
        hints: Vec::new(),
        winning_hint: None,
        handler: None,
        side: None,
        established_at: None,
        last_received: None,
        last_error: None,
    }
}

#[derive(Debug, thiserror::Error)]
enum DialFailure {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

/// A Tub: identity, exported objects, listeners, connector, connections.
///
/// Cloning a `Tub` gives another handle to the same Tub.
#[derive(Clone)]
pub struct Tub {
    inner: Arc<TubInner>,
}

impl std::fmt::Debug for Tub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tub")
            .field("tubid", &self.tubid())
            .finish_non_exhaustive()
    }
}

impl Tub {
    /// A Tub with this identity that dials through `connector`.
    pub fn new(
        identity: Identity,
        connector: Arc<dyn Connector>,
        config: TubConfig,
    ) -> Result<Tub, HandshakeError> {
        let handshaker = Handshaker::new(Arc::new(identity), config.handshake.clone())?;
        let inner = Arc::new_cyclic(|me| TubInner {
            me: me.clone(),
            handshaker,
            connector,
            config: Arc::new(config),
            registry: Mutex::new(HashMap::new()),
            location: Mutex::new(Vec::new()),
            connections: Mutex::new(HashMap::new()),
            dial_locks: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            keepalive_started: std::sync::atomic::AtomicBool::new(false),
            shut_down: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Tub { inner })
    }

    /// This Tub's identity.
    pub fn tubid(&self) -> TubId {
        self.inner.handshaker.tubid()
    }

    /// This process's incarnation (changes at every start).
    pub fn incarnation(&self) -> [u8; 16] {
        self.inner.handshaker.incarnation()
    }

    /// Sets the hints written into this Tub's FURLs (where peers should look for it).
    pub fn set_location(&self, hints: Vec<Hint>) {
        *lock(&self.inner.location) = hints;
    }

    /// The hints written into this Tub's FURLs.
    pub fn location(&self) -> Vec<Hint> {
        lock(&self.inner.location).clone()
    }

    /// The FURL of the object registered under `name`, with the current location.
    pub fn furl_for(&self, name: &str) -> Result<Furl, FurlError> {
        Ok(Furl::new(
            self.tubid(),
            self.location(),
            Swissnum::new(name)?,
        ))
    }

    /// Registers a local object under a fresh random swissnum and returns its FURL.
    pub fn register(&self, obj: impl Into<ObjectRef>) -> Result<Furl, RegisterError> {
        self.register_as(obj, Swissnum::random().as_str())
    }

    /// Registers a local object under a chosen name (the same FURL across restarts, as long
    /// as the identity and location are the same).
    pub fn register_as(
        &self,
        obj: impl Into<ObjectRef>,
        name: &str,
    ) -> Result<Furl, RegisterError> {
        let RefKind::Local(d) = obj.into().0 else {
            return Err(RegisterError::NotLocal);
        };
        let furl = self.furl_for(name)?;
        lock(&self.inner.registry).insert(name.to_string(), d);
        Ok(furl)
    }

    /// Removes the object registered under `name`. References already handed out keep working.
    pub fn unregister(&self, name: &str) -> bool {
        lock(&self.inner.registry).remove(name).is_some()
    }

    /// Reaches the object a FURL names. A FURL of this Tub resolves without the network.
    pub async fn get_reference(&self, furl: &Furl) -> Result<ObjectRef, ReferenceError> {
        TubInner::get_reference(&self.inner, furl).await
    }

    /// Reaches the object a FURL names, as a typed handle.
    pub async fn get<T: TypedRef>(&self, furl: &Furl) -> Result<T, ReferenceError> {
        let r = self.get_reference(furl).await?;
        T::from_object_ref(r).map_err(ReferenceError::WrongInterface)
    }

    /// Runs the server side of the handshake on a stream that was accepted, then serves it.
    pub async fn accept<S>(&self, stream: S) -> Result<ConnectionInfo, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        let est = inner
            .handshaker
            .run_server(stream, &|info| inner.admit(info), true)
            .await?;
        let info = est.info.clone();
        self.inner.adopt(est, None, None, false);
        Ok(info)
    }

    /// Accepts every stream `listener` yields, each as `Side::Server`.
    pub fn listen(&self, mut listener: impl Listener) {
        let tub = self.clone();
        let desc = listener.describe();
        let task = tokio::spawn(
            async move {
                loop {
                    match listener.accept().await {
                        Ok(stream) => {
                            let tub = tub.clone();
                            tokio::spawn(async move {
                                if let Err(e) = tub.accept(stream).await {
                                    debug!("inbound handshake failed: {e}");
                                }
                            });
                        }
                        Err(e) => {
                            warn!("listener failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            .instrument(info_span!("listener", on = %desc)),
        );
        lock(&self.inner.listeners).push(task);
    }

    /// Keeps a connection to `furl` up: calls `on_connect` with a fresh reference after each
    /// (re)connection, and retries with capped, jittered exponential backoff.
    pub fn connect_to(
        &self,
        furl: Furl,
        policy: ReconnectPolicy,
        on_connect: impl Fn(ObjectRef) + Send + Sync + 'static,
    ) -> Reconnector {
        Reconnector::start(self.inner.me.clone(), furl, policy, Box::new(on_connect))
    }

    /// The status of every peer this Tub has connected to or tried to.
    pub fn connection_status(&self) -> Vec<PeerStatus> {
        let live: Vec<(TubId, SystemTime)> = lock(&self.inner.connections)
            .iter()
            .filter(|(_, c)| c.closed_reason().is_none())
            .map(|(t, c)| (*t, c.last_received()))
            .collect();
        let mut out: Vec<PeerStatus> = lock(&self.inner.status).values().cloned().collect();
        for s in &mut out {
            s.last_received = live.iter().find(|(t, _)| *t == s.tubid).map(|(_, at)| *at);
        }
        out.sort_by_key(|s| s.tubid);
        out
    }

    /// The number of live connections (one per peer).
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.connections)
            .values()
            .filter(|c| c.closed_reason().is_none())
            .count()
    }

    /// Information about the live connection to `peer`, if there is one.
    pub fn connection_info(&self, peer: &TubId) -> Option<ConnectionInfo> {
        self.inner.live_connection(peer).map(|c| c.info.clone())
    }

    /// Objects exported to `peer` on the live connection (references we sent and it holds).
    pub fn exports_to(&self, peer: &TubId) -> usize {
        self.inner
            .live_connection(peer)
            .map(|c| c.export_count())
            .unwrap_or(0)
    }

    /// Closes the live connection to `peer`, as if the network had dropped it.
    pub fn disconnect(&self, peer: &TubId) {
        if let Some(c) = self.inner.live_connection(peer) {
            c.close("closed locally", Some(GoodbyeReason::Shutdown));
        }
    }

    /// Stops listening (the listening sockets are closed when this returns) and closes every
    /// connection with a goodbye.
    pub async fn shutdown(&self) {
        self.inner
            .shut_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let listeners: Vec<_> = lock(&self.inner.listeners).drain(..).collect();
        for l in &listeners {
            l.abort();
        }
        for l in listeners {
            let _ = l.await;
        }
        let conns: Vec<_> = lock(&self.inner.connections).values().cloned().collect();
        for c in conns {
            c.close("the Tub shut down", Some(GoodbyeReason::Shutdown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::NoConnector;
    use crate::message::{decode, AnswerBody, Message};
    use crate::object::RefDesc;

    /// A Tub's hello is held back until its first write, so the answer to a resolution that
    /// came behind the client's hello leaves with it: one write, one TLS record.
    #[tokio::test]
    async fn the_hello_and_the_early_answer_leave_together() {
        hello_and_early_answer_in_one_write().await;
    }

    /// The same on a runtime with several threads, where the connection's writer task runs
    /// beside its reader: every time, not only when the reader happens to run first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hello_and_the_early_answer_leave_together_on_any_runtime() {
        for _ in 0..40 {
            hello_and_early_answer_in_one_write().await;
        }
    }

    async fn hello_and_early_answer_in_one_write() {
        let server = Tub::new(
            Identity::generate().unwrap(),
            Arc::new(NoConnector),
            TubConfig::default(),
        )
        .unwrap();
        let furl = server
            .register_as(
                // Any object will do: another Tub's root, which knows no names.
                ObjectRef::local(Arc::new(Root(Weak::new()))),
                "some-object-name",
            )
            .unwrap();
        let client =
            Handshaker::new(Arc::new(Identity::generate().unwrap()), Default::default()).unwrap();
        let args = postcard::to_allocvec(&(furl.swissnum().as_str(),)).unwrap();
        let early = crate::connection::early_root_call("get_reference", &args).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let b = CountWrites {
            inner: b,
            writes: writes.clone(),
        };
        let (connected, accepted) = tokio::join!(
            client.connect_early(a, server.tubid(), 1, &early),
            server.accept(b)
        );
        accepted.unwrap();
        let (mut est, sent) = connected.unwrap();
        assert!(sent, "a one-version client sends its early frames");
        let frame = est.reader.next_frame().await.unwrap().unwrap();
        match decode(frame).unwrap() {
            Message::Answer {
                id: 1,
                body: AnswerBody::Ok { refs, .. },
            } => assert!(matches!(refs.as_slice(), [RefDesc::Mine { .. }])),
            other => panic!("expected the answer to call 1, got {other:?}"),
        }
        // The server wrote twice: its TLS flight (with the prelude answer), then its hello
        // and the answer together. (A write is counted once it has returned, which on
        // another thread may be just after the client has read it.)
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while lock(&writes).len() < 2 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the server's second write is counted");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let writes = lock(&writes).clone();
        assert_eq!(writes.len(), 2, "the server's writes: {writes:?}");
    }

    /// Dials `0` over an in-memory stream, whatever the hint.
    struct ToTub(Tub);

    impl crate::connector::Connector for ToTub {
        fn connect<'a>(&'a self, _hint: &'a Hint) -> crate::connector::ConnectFuture<'a> {
            Box::pin(async move {
                let (a, b) = tokio::io::duplex(64 * 1024);
                let server = self.0.clone();
                tokio::spawn(async move { server.accept(b).await });
                Ok(Box::new(a) as crate::connector::BoxStream)
            })
        }
    }

    /// An object whose method `wait` answers once its gate opens.
    struct Gate(tokio::sync::Notify);

    impl Dispatch for Gate {
        fn interface(&self) -> &'static str {
            "test.gate.v1"
        }

        fn call(
            self: Arc<Self>,
            _method: &str,
            _args: &[u8],
            ctx: crate::object::CallContext,
        ) -> Result<crate::object::ReplyFuture, crate::object::Refusal> {
            Ok(Box::pin(async move {
                self.0.notified().await;
                ctx.encode_reply::<u64, ()>(Ok(7))
            }))
        }
    }

    /// A call still running when its connection closes keeps its slot until it ends, and
    /// gives it back then, once.
    #[tokio::test]
    async fn a_call_running_at_the_close_gives_its_slot_back_once() {
        let new_tub = |connector: Arc<dyn crate::connector::Connector>| {
            Tub::new(
                Identity::generate().unwrap(),
                connector,
                TubConfig::default(),
            )
            .unwrap()
        };
        let server = new_tub(Arc::new(NoConnector));
        server.set_location(vec!["tcp:127.0.0.1:9".parse().unwrap()]);
        let gate = Arc::new(Gate(tokio::sync::Notify::new()));
        let furl = server.register(ObjectRef::local(gate.clone())).unwrap();
        let client = new_tub(Arc::new(ToTub(server.clone())));
        let obj = client.get_reference(&furl).await.unwrap();
        let call =
            tokio::spawn(async move { obj.call::<(), u64, ()>("test.gate.v1", "wait", &()).await });
        let conn = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let conn = lock(&server.inner.connections).values().next().cloned();
                if let Some(c) = conn.filter(|c| c.running_calls() == 1) {
                    return c;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the call is running on the server");
        server.disconnect(&client.tubid());
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), call)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(result, Err(CallError::Disconnected(_))),
            "{result:?}"
        );
        assert_eq!(conn.running_calls(), 1, "the running call keeps its slot");
        gate.0.notify_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while conn.running_calls() != 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the slot comes back when the call ends");
    }

    /// A stream that records the size of every write.
    struct CountWrites<S> {
        inner: S,
        writes: Arc<Mutex<Vec<usize>>>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountWrites<S> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for CountWrites<S> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
            if let std::task::Poll::Ready(Ok(n)) = &r {
                lock(&self.writes).push(*n);
            }
            r
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }
}
