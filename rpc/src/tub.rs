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

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use crate::connection::{ConnShared, EarlyCall, Writers};
use crate::connector::{ConnectError, Connector, Listener};
use crate::error_chain::ErrorChain;
use crate::furl::{Furl, FurlError, Hint, Swissnum};
use crate::handshake::{ConnectionInfo, Established, HandshakeConfig, HandshakeError, Handshaker};
use crate::identity::Identity;
use crate::message::GoodbyeReason;
use crate::message::ROOT_OBJECT;
use crate::object::{
    CallContext, CallError, CallTimeout, Disconnect, Dispatch, LazyRef, ObjectRef, RefKind,
    Refusal, ReplyFuture, TypedRef,
};
use crate::promise::{Promise, PromiseCell, PromisedRef};
use crate::reconnector::{ReconnectPolicy, Reconnector};
use crate::tls::Side;
use crate::tubid::TubId;

/// A Tub's limits and policies.
///
/// Start from [`TubConfig::default()`] and change what you need with the chainable setters
/// (one per field) or by assigning the public fields; `#[non_exhaustive]`, so that a new
/// field is not a breaking change.
#[non_exhaustive]
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
    /// How long a call waits for its answer before failing with
    /// `CallError::DeadlineExceeded`, unless its handle says otherwise
    /// (`ObjectRef::with_timeout`); `None` waits until the answer comes or the connection is
    /// lost. A peer that speaks protocol version 2 is told the timeout with the call and
    /// stops the method when it passes (docs/protocol.md §7). Default 300 s: a hundred of
    /// the slowest round trips over Tor or I2P (about 3 s), so far beyond any answer that is
    /// still coming, yet a peer that stops answering calls cannot hold a caller, or an
    /// outbound slot, for more than five minutes.
    pub call_timeout: Option<Duration>,
    /// The longest an inbound call may run (counted from its arrival, time spent waiting for
    /// a slot included) before it is stopped and answered with `Refusal::Failed`; a caller's
    /// shorter timeout stops it earlier, without an answer. One-way calls are stopped
    /// silently. `None`: only the caller's timeout applies (and none for a caller that sets
    /// none, or speaks protocol version 1). Default 600 s: twice the default `call_timeout`,
    /// so a caller's own timeout decides, and a method stuck for good holds its slot for ten
    /// minutes at most.
    pub max_call_duration: Option<Duration>,
    /// Inbound streams that may be in the handshake at once (from the first byte to the
    /// hello). When a stream arrives with this many under way, the one that has waited
    /// longest for its peer is closed to make room if it has waited [`EVICT_PENDING_AFTER`]
    /// (it is stalling, or on a very slow link); otherwise the new stream is answered with
    /// the prelude status `Busy` and closed, before any TLS work. So a burst is shed early
    /// and cheaply, and a crowd of stalled handshakes cannot keep a prompt client out.
    pub max_pending_handshakes: usize,
    /// Connections this Tub holds at once, inbound and outbound together (a replacement for
    /// a peer's existing connection does not count twice). When a new one would exceed it,
    /// an idle inbound connection, chosen at random, is closed to make room; for a
    /// connection this Tub dialed itself, a busy inbound one if none is idle. Connections
    /// this Tub dialed are never closed to make room. With no connection to close, an
    /// inbound peer is refused at the hello and our own dial fails.
    pub max_connections: usize,
    /// Bytes all connections together may hold in their write queues and in the arguments of
    /// inbound calls waiting for a slot: the Tub-wide budget over the per-connection bounds
    /// above, which would otherwise multiply by `max_connections`. Every connection may
    /// always have one frame queued either way, so each makes progress. When the budget is
    /// full, a reader with calls queued stops reading until they start; our own calls wait
    /// for room; and a frame a peer provoked closes the connection whose peer has left the
    /// most unread.
    pub max_buffered_bytes: usize,
    /// Protocol version 3 (promise pipelining): answers to one peer's promise-able calls
    /// kept for the calls it pipelines on them, from the call's arrival until the peer's
    /// `Finish`. A promise-able call beyond it is run as an ordinary call, and calls sent to
    /// its promise are refused (`Refusal::Broken`). Folio's own callers keep at most 1024
    /// unfinished, so they never meet it.
    pub max_kept_answers: usize,
    /// Protocol version 3: calls from one peer that may wait for a promised answer that does
    /// not exist yet (their arguments count against `max_queued_call_bytes` and
    /// `max_buffered_bytes` as well). Beyond it such a call is refused (`Refusal::Broken`)
    /// rather than read no further: the answer it waits for may need frames behind it.
    /// They wait as long as the promised call takes, which `max_call_duration` bounds.
    pub max_held_calls: usize,
    /// How long [`Tub::shutdown`] waits for its connections to finish closing: each writes
    /// what was queued, its `Goodbye(Shutdown)` and the TLS close_notify, and shuts its
    /// stream, all connections at once. Past it `shutdown` returns anyway, so a peer that
    /// does not read cannot hold it; a connection still closing then is cut when its task
    /// ends (when the runtime goes, at the latest), and its peer sees the stream end without
    /// a goodbye. Default 5 s: a goodbye needs no round trip, only room in the stream's send
    /// buffer, so a peer that reads lets its connection finish in milliseconds even over Tor
    /// or I2P; 5 s is also what the writer gives the TLS shutdown itself.
    pub shutdown_grace: Duration,
}

config_setters!(TubConfig {
    handshake: HandshakeConfig,
    max_inbound_calls: usize,
    max_queued_calls: usize,
    max_queued_call_bytes: usize,
    max_outbound_calls: usize,
    max_exports: usize,
    max_imports: usize,
    accept_gifts: bool,
    keepalive: Option<Duration>,
    disconnect_timeout: Option<Duration>,
    dial_timeout: Duration,
    max_write_queue: usize,
    call_timeout: Option<Duration>,
    max_call_duration: Option<Duration>,
    max_pending_handshakes: usize,
    max_connections: usize,
    max_buffered_bytes: usize,
    max_kept_answers: usize,
    max_held_calls: usize,
    shutdown_grace: Duration,
});

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
            // Two keepalive pings unanswered: a silent or trickling peer is let go.
            disconnect_timeout: Some(Duration::from_secs(600)),
            dial_timeout: Duration::from_secs(120),
            max_write_queue: 16 * 1024 * 1024,
            call_timeout: Some(Duration::from_secs(300)),
            max_call_duration: Some(Duration::from_secs(600)),
            max_pending_handshakes: 1024,
            max_connections: 4096,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_kept_answers: 4096,
            max_held_calls: 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why a FURL could not be turned into a reference.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum RegisterError {
    /// Only objects in this process can be registered.
    #[error("only a local object can be registered under a FURL")]
    NotLocal,
    /// The name is not a valid swissnum.
    #[error(transparent)]
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

/// A Tub's load and what its limits turned away (see [`Tub::load`]). Counts are since the
/// Tub started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TubLoad {
    /// Connections held (at most `max_connections`, one over while a full Tub's own dial
    /// finds nothing to close).
    pub connections: usize,
    /// Bytes held in write queues and queued inbound calls, all connections together (at
    /// most `max_buffered_bytes`, plus one frame per connection).
    pub buffered_bytes: usize,
    /// Inbound handshakes under way (at most `max_pending_handshakes`).
    pub pending_handshakes: usize,
    /// Inbound handshakes closed to make room for a newer one.
    pub evicted_handshakes: u64,
    /// Inbound streams answered `Busy`.
    pub busy_answers: u64,
    /// Inbound streams closed without an answer (more were arriving than could be answered).
    pub dropped_unanswered: u64,
    /// Connections closed to make room for another.
    pub closed_for_room: u64,
    /// Dials under way, or waited for, by peer.
    pub dial_locks: usize,
    /// Entries in the status table ([`Tub::connection_status`]).
    pub peer_status: usize,
    /// Answers kept for calls peers may pipeline on them, all connections together (at most
    /// `max_kept_answers` per connection; each goes when its caller sends `Finish`).
    pub kept_answers: usize,
    /// Calls waiting for a promised answer that does not exist yet, all connections
    /// together (at most `max_held_calls` per connection).
    pub held_calls: usize,
    /// Our own promise-able calls whose `Finish` is not sent yet, all connections together.
    pub unfinished_promises: usize,
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
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum RootError {
    #[error("no object is registered under this name")]
    UnknownName,
}

pub(crate) const ROOT_INTERFACE: &str = "folio.root";

/// What a new connection carried behind our hello: the FURL's resolution (where its
/// answer will land), and whether a call pipelined on it went too.
pub(crate) struct Early {
    pub(crate) resolve: Arc<PromiseCell>,
    pub(crate) call_sent: bool,
}

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
    /// The bytes every connection's write queue and inbound call queue hold, together.
    budget: Arc<crate::outbox::Budget>,
    /// The connections' writer tasks that have not ended (what [`Tub::shutdown`] waits for).
    writers: Arc<Writers>,
    /// Inbound streams in the handshake now (at most `max_pending_handshakes`), oldest first.
    pending_handshakes: Mutex<PendingHandshakes>,
    /// Streams being answered `Busy` now (at most `max_pending_handshakes` as well; beyond
    /// that a stream is closed without an answer).
    shedding: Arc<std::sync::atomic::AtomicUsize>,
    /// Streams answered `Busy`, and those closed unanswered, since the Tub started.
    busy_answers: std::sync::atomic::AtomicU64,
    dropped_unanswered: std::sync::atomic::AtomicU64,
    /// Connections closed to make room for another.
    closed_for_room: std::sync::atomic::AtomicU64,
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
                    s.last_error = conn.closed_reason().map(|d| d.to_string());
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
        early_call: Option<EarlyCall>,
    ) -> (Arc<ConnShared>, Option<Early>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (conn, start) = ConnShared::create(
            est,
            self.me.clone(),
            self.config.clone(),
            self.budget.clone(),
            self.writers.clone(),
            hint.clone(),
        );
        // Registered before the connection is visible: its own calls are numbered after it.
        let mut early = early_resolve.then(|| {
            let call_sent = early_call.is_some();
            Early {
                resolve: conn.expect_early(early_call.map(|c| c.completion)),
                call_sent,
            }
        });
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            conn.close(Disconnect::Shutdown, Some(GoodbyeReason::Shutdown));
            start();
            return (conn, None);
        }
        let peer = conn.info.peer;
        if self.live_connection(&peer).is_none() {
            // Admission made room already; this covers our own dials and admissions that
            // raced each other. A full Tub with nothing to close keeps the new connection
            // anyway: it was admitted, and is one over the limit only until one closes.
            if let Err(why) = self.make_room(conn.info.side) {
                debug!(%peer, "{why}");
            }
        }
        let mut conns = lock(&self.connections);
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            // Shut down since the look above, and `shutdown` may have collected the
            // connections to close already: looked at again under the lock it collects them
            // under, so that no connection is left open behind it.
            drop(conns);
            conn.close(Disconnect::Shutdown, Some(GoodbyeReason::Shutdown));
            start();
            return (conn, None);
        }
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
            loser.close(
                Disconnect::Replaced(why.to_string()),
                Some(GoodbyeReason::Duplicate),
            );
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

    /// A place among the pending handshakes, if there is one, or if one of them has been
    /// waiting for its peer for [`EVICT_PENDING_AFTER`]: the one that has waited longest is
    /// told to stop.
    fn pending_unit(&self) -> Option<PendingTicket> {
        let mut p = lock(&self.pending_handshakes);
        if p.by_age.len() >= self.config.max_pending_handshakes.max(1) {
            let now = p.clock.now_ms();
            let stalled = p
                .by_age
                .iter()
                .filter_map(|(&id, e)| e.waiting.waited_ms(now).map(|w| (w, std::cmp::Reverse(id))))
                .max();
            // (Of those that have waited as long, the oldest.)
            match stalled {
                Some((waited, std::cmp::Reverse(id)))
                    if waited >= EVICT_PENDING_AFTER.as_millis() as u64 =>
                {
                    let entry = p.by_age.remove(&id).expect("present");
                    entry.stop.notify_one();
                    p.evicted += 1;
                }
                _ => return None,
            }
        }
        let id = p.next;
        p.next += 1;
        let stop = Arc::new(tokio::sync::Notify::new());
        let waiting = Arc::new(Waiting {
            clock: p.clock,
            since_ms: std::sync::atomic::AtomicU64::new(0),
            total_ms: std::sync::atomic::AtomicU64::new(0),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        p.by_age.insert(
            id,
            PendingEntry {
                stop: stop.clone(),
                waiting: waiting.clone(),
            },
        );
        Some(PendingTicket {
            tub: self.me.clone(),
            id,
            stop,
            waiting,
        })
    }

    /// A unit of the limit on streams being answered `Busy`, if one is free (and counted as
    /// answered).
    fn shedding_unit(&self) -> Option<Counted> {
        let unit = Counted::take(&self.shedding, self.config.max_pending_handshakes)?;
        self.busy_answers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(unit)
    }

    fn count_dropped(&self) {
        self.dropped_unanswered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn shed_reason(&self) -> String {
        format!(
            "{} inbound handshakes are under way (the limit)",
            self.config.max_pending_handshakes.max(1)
        )
    }

    /// Keeps the status table bounded: it holds every live connection and the peers this
    /// Tub dialed that are gone (for status displays). Past twice `max_connections` entries,
    /// departed peers are forgotten until it is back to `max_connections`; a peer dialed
    /// again gets a fresh entry.
    fn prune_status(&self, status: &mut HashMap<TubId, PeerStatus>) {
        let max = self.config.max_connections.max(1);
        if status.len() <= 2 * max {
            return;
        }
        let gone: Vec<TubId> = status
            .values()
            .filter(|s| !s.connected)
            .map(|s| s.tubid)
            .take(status.len() - max)
            .collect();
        for tubid in gone {
            status.remove(&tubid);
        }
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
        mut call: Option<EarlyCall>,
    ) -> Result<(Arc<ConnShared>, Option<Early>), ReferenceError> {
        let tubid = furl.tubid();
        // The resolution is promise-able only with a call pipelined on it (and that call goes
        // only if the resolution does).
        let swissnum = furl.swissnum().as_str();
        let mut early = match &call {
            Some(c) => crate::connection::early_resolution(swissnum, true).map(|mut e| {
                e.extend_from_slice(&c.frame);
                e
            }),
            None => None,
        };
        if early.is_none() {
            call = None;
            early = crate::connection::early_resolution(swissnum, false);
        }
        let early = early.unwrap_or_default();
        {
            let mut status = lock(&self.status);
            self.prune_status(&mut status);
            status
                .entry(tubid)
                .or_insert_with(|| empty_status(tubid))
                .hints
                .clear();
        }
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
                    let call = call.take().filter(|_| early_sent);
                    return Ok(self.adopt(est, Some(text), handler, early_sent, call));
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
    pub(crate) async fn connection_to(
        &self,
        furl: &Furl,
        call: Option<EarlyCall>,
    ) -> Result<(Arc<ConnShared>, Option<Early>), ReferenceError> {
        let tubid = furl.tubid();
        if let Some(c) = self.live_connection(&tubid) {
            return Ok((c, None));
        }
        let dial_lock = lock(&self.dial_locks).entry(tubid).or_default().clone();
        let result = {
            let _one_dialer = dial_lock.lock().await;
            self.connection_to_locked(furl, call).await
        };
        // The lock's entry goes once nobody else holds or waits for it, so the table holds
        // only the dials under way.
        let mut locks = lock(&self.dial_locks);
        if locks
            .get(&tubid)
            .is_some_and(|l| Arc::ptr_eq(l, &dial_lock) && Arc::strong_count(l) == 2)
        {
            locks.remove(&tubid);
        }
        result
    }

    async fn connection_to_locked(
        &self,
        furl: &Furl,
        call: Option<EarlyCall>,
    ) -> Result<(Arc<ConnShared>, Option<Early>), ReferenceError> {
        let tubid = furl.tubid();
        if let Some(c) = self.live_connection(&tubid) {
            return Ok((c, None));
        }
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ReferenceError::Shutdown);
        }
        // A full Tub with nothing it may close fails before dialing, not after the peer has
        // done its part. (Room is made once the new connection is up: see adopt.)
        if let Err(reason) = self.room_victim(Side::Client) {
            return Err(ReferenceError::Failed { tubid, reason });
        }
        match self.dial(furl, call).await {
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
            drop(conns);
            // A new peer: it needs a place of its own.
            return self.make_room(Side::Server);
        };
        if old.info.peer_hello.incarnation == new.peer_hello.incarnation
            && dial_key(&old.info) == dial_key(new)
        {
            return Err("another attempt of the same dial is already connected".into());
        }
        Ok(())
    }

    /// Makes room for one more connection if this Tub holds `max_connections`: closes an
    /// idle inbound connection, chosen at random (a peer cannot make its own connections
    /// look fresher than an honest peer's to keep them); for a connection this Tub dials
    /// (`side` is `Client`), a busy inbound one if none is idle. Connections this Tub
    /// dialed are never closed for room. Errs when there is nothing to close.
    fn make_room(&self, side: Side) -> Result<(), String> {
        let Some(victim) = self.room_victim(side)? else {
            return Ok(());
        };
        let max = self.config.max_connections.max(1);
        debug!(peer = %victim.info.peer, "closing a connection to make room");
        self.closed_for_room
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        victim.close(
            Disconnect::MadeRoom(max),
            Some(crate::connection::room_goodbye(&victim.info)),
        );
        Ok(())
    }

    /// The connection whose peer has left the most bytes unread, if any has left any.
    pub(crate) fn heaviest_writer(&self) -> Option<Arc<ConnShared>> {
        let conns: Vec<_> = lock(&self.connections).values().cloned().collect();
        conns
            .into_iter()
            .map(|c| (c.unwritten(), c))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)
            .map(|(_, c)| c)
    }

    /// The connection [`TubInner::make_room`] would close: `None` if there is room.
    fn room_victim(&self, side: Side) -> Result<Option<Arc<ConnShared>>, String> {
        let max = self.config.max_connections.max(1);
        let conns = lock(&self.connections);
        if conns.len() < max {
            return Ok(None);
        }
        let inbound = || {
            conns
                .values()
                .filter(|c| c.info.side == Side::Server && c.closed_reason().is_none())
        };
        let idle: Vec<_> = inbound().filter(|c| c.is_idle()).collect();
        let candidates = if idle.is_empty() && side == Side::Client {
            inbound().collect()
        } else {
            idle
        };
        if candidates.is_empty() {
            return Err(format!(
                "this Tub holds {max} connections (its limit) and none of them may be closed \
                 to make room"
            ));
        }
        Ok(Some(candidates[random_index(candidates.len())].clone()))
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
            let (conn, early) = tub.connection_to(furl, None).await?;
            let result: Result<ObjectRef, CallError<RootError>> = match early {
                // A new connection: the call went out behind our hello.
                Some(early) => Promise::<ObjectRef, RootError>::new(early.resolve).await,
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
                    reason: ErrorChain(&e).to_string(),
                }),
            };
        }
    }
}

impl LazyRef {
    /// The reference last reached, if its connection is live (and, for a promise, it has
    /// not failed). A promise that has settled with its reference is replaced by it.
    fn cached(&self) -> Option<ObjectRef> {
        let mut cached = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        let r = cached.clone()?;
        let live = match &r.0 {
            RefKind::Remote(inner) => inner.conn.closed_reason().is_none(),
            RefKind::Promise(p) => match p.settled_reference() {
                Some(Ok(real)) => {
                    if let RefKind::Remote(inner) = &real.0 {
                        let _ = inner.furl.set(self.furl.clone());
                    }
                    *cached = Some(real.clone());
                    return Some(real).filter(|r| match &r.0 {
                        RefKind::Remote(inner) => inner.conn.closed_reason().is_none(),
                        _ => true,
                    });
                }
                Some(Err(_)) => false,
                None => p.conn().is_some_and(|c| c.closed_reason().is_none()),
            },
            _ => true,
        };
        live.then_some(r)
    }

    fn remember(&self, r: &ObjectRef) {
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
    }

    /// What a call on this reference is sent to: the reference last reached if its
    /// connection is live; else, over a live version-3 connection, the promise of the
    /// FURL's resolution, sent now (calls pipelined on it leave with it); else the
    /// reference, once reached.
    pub(crate) async fn target<E>(&self) -> Result<ObjectRef, CallError<E>> {
        if let Some(r) = self.cached() {
            return Ok(r);
        }
        let tub = self
            .tub
            .upgrade()
            .ok_or(CallError::Unreachable(ReferenceError::Shutdown))?;
        let tubid = self.furl.tubid();
        let conn = (tubid != tub.handshaker.tubid())
            .then(|| tub.live_connection(&tubid))
            .flatten()
            .filter(|c| c.info.version >= 3);
        if let Some(conn) = conn {
            let swissnum = self.furl.swissnum().as_str();
            let cell = conn
                .start_promise(
                    ROOT_OBJECT,
                    ROOT_INTERFACE,
                    "get_reference",
                    &(swissnum,),
                    CallTimeout::TubDefault,
                    None,
                )
                .await?;
            let r = ObjectRef::new(RefKind::Promise(Arc::new(PromisedRef {
                cell,
                index: 0,
                interface: self.interface.clone(),
            })));
            self.remember(&r);
            return Ok(r);
        }
        let r = Box::pin(TubInner::get_reference(&tub, &self.furl))
            .await
            .map_err(CallError::Unreachable)?;
        r.check_interface(&self.interface)
            .map_err(|e| CallError::Unreachable(ReferenceError::WrongInterface(e)))?;
        self.remember(&r);
        Ok(r)
    }

    /// Makes the first call on this reference when there is no connection to its Tub yet:
    /// dials with the FURL's resolution and this call, pipelined on it, behind our hello
    /// (protocol.md §5, §8). `None` when that does not apply (a connection exists or was
    /// made meanwhile, the call carries references or is too large for early data): the
    /// caller then sends it the ordinary way.
    pub(crate) async fn call_behind_hello<A, T, E>(
        &self,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
    ) -> Option<Result<T, CallError<E>>>
    where
        A: Serialize,
        T: DeserializeOwned + Send + 'static,
        E: DeserializeOwned + Send + 'static,
    {
        if self.cached().is_some() {
            return None;
        }
        let tub = self.tub.upgrade()?;
        let tubid = self.furl.tubid();
        if tubid == tub.handshaker.tubid() || tub.live_connection(&tubid).is_some() {
            return None;
        }
        let frame = crate::connection::early_pipelined_call(interface, method, args)?;
        let timeout = timeout.or(tub.config.call_timeout);
        let (completion, answer) = crate::connection::early_completion::<T, E>(timeout);
        let call = EarlyCall { frame, completion };
        let (conn, early) = match Box::pin(tub.connection_to(&self.furl, Some(call))).await {
            Ok(c) => c,
            Err(e) => return Some(Err(CallError::Unreachable(e))),
        };
        let early = early.filter(|e| e.call_sent)?;
        let promised = PromisedRef {
            cell: early.resolve,
            index: 0,
            interface: self.interface.clone(),
        };
        let promised = Arc::new(promised);
        self.remember(&ObjectRef::new(RefKind::Promise(promised.clone())));
        let result = answer.await;
        // Refused unrun: a peer below version 3 knows no promise targets (UnknownObject), or
        // the promise gave no object of the peer's (Broken). Sent to the reference now.
        let unrun = match &result {
            Err(CallError::Refused(Refusal::UnknownObject { .. })) => conn.info.version < 3,
            Err(CallError::Refused(Refusal::Broken(_))) => true,
            _ => false,
        };
        if !unrun {
            return Some(result);
        }
        let real = match promised.wait::<E>().await {
            Ok(real) => real,
            Err(e) => return Some(Err(e)),
        };
        Some(
            Box::pin(ObjectRef(real.0, CallTimeout::Set(timeout)).call(interface, method, args))
                .await,
        )
    }
}

/// A random index below `n` (n > 0).
fn random_index(n: usize) -> usize {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system's generator does not fail on the platforms Folio runs on; if it did, the
    // first candidate is as good a choice as any.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    (u64::from_le_bytes(bytes) % n as u64) as usize
}

/// How long, in all, an inbound handshake may wait for its peer (the server has asked the
/// stream for bytes and none came; a peer that trickles bytes waits between them) before a newcomer may take its place when `max_pending_handshakes`
/// are under way. An honest client waits about one round trip in all; a handshake that is
/// slow because this Tub is busy (its CPU, not the peer) waits for nothing and is never
/// chosen. So a crowd of stalled handshakes gives way to prompt clients, however fast it is
/// renewed, while a burst of honest ones is not cut short.
pub const EVICT_PENDING_AFTER: Duration = Duration::from_millis(250);

/// Milliseconds since a Tub started: cheap timestamps for its pending handshakes.
#[derive(Clone, Copy)]
struct Clock(std::time::Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(std::time::Instant::now())
    }
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// The inbound handshakes under way, by arrival.
#[derive(Default)]
struct PendingHandshakes {
    next: u64,
    clock: Clock,
    by_age: std::collections::BTreeMap<u64, PendingEntry>,
    /// Handshakes stopped to make room, since the Tub started.
    evicted: u64,
}

struct PendingEntry {
    /// Notified when the handshake must stop to make room for a newer one.
    stop: Arc<tokio::sync::Notify>,
    waiting: Arc<Waiting>,
}

/// How long a pending handshake has waited for its peer, in all: a peer that trickles its
/// bytes waits as long as one that sends nothing.
struct Waiting {
    clock: Clock,
    /// 1 + the `clock` millisecond at which the current wait for the peer began; 0 while
    /// the handshake is not waiting for the peer.
    since_ms: std::sync::atomic::AtomicU64,
    /// The waits that have ended, in milliseconds.
    total_ms: std::sync::atomic::AtomicU64,
    /// The handshake is over: nothing is recorded any more.
    done: std::sync::atomic::AtomicBool,
}

impl Waiting {
    /// How long it has waited for the peer by `now`, in all, if it is waiting now (a
    /// handshake the Tub itself is working on is never a candidate).
    fn waited_ms(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        match self.since_ms.load(Relaxed) {
            0 => None,
            since => Some(self.total_ms.load(Relaxed) + now.saturating_sub(since - 1)),
        }
    }
}

/// An inbound stream during its handshake: records when reading from the peer waits (see
/// [`EVICT_PENDING_AFTER`]). Once the handshake is over it only passes bytes through.
struct Watched<S> {
    inner: S,
    waiting: Arc<Waiting>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let w = &self.waiting;
        if !w.done.load(Relaxed) {
            let since = w.since_ms.load(Relaxed);
            if r.is_pending() {
                if since == 0 {
                    w.since_ms.store(w.clock.now_ms() + 1, Relaxed);
                }
            } else if since != 0 {
                let waited = w.clock.now_ms().saturating_sub(since - 1);
                w.total_ms.fetch_add(waited, Relaxed);
                w.since_ms.store(0, Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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

/// A place among a Tub's pending handshakes, given back when dropped.
struct PendingTicket {
    tub: Weak<TubInner>,
    id: u64,
    /// Notified when the handshake must stop to make room for a newer one.
    stop: Arc<tokio::sync::Notify>,
    waiting: Arc<Waiting>,
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        self.waiting
            .done
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(tub) = self.tub.upgrade() {
            lock(&tub.pending_handshakes).by_age.remove(&self.id);
        }
    }
}

/// One unit of a Tub-wide count bounded by a limit, given back when dropped.
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    /// Takes a unit of `count` if it is below `max` (at least 1).
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Counted> {
        use std::sync::atomic::Ordering::SeqCst;
        count
            .fetch_update(SeqCst, SeqCst, |n| (n < max.max(1)).then_some(n + 1))
            .ok()
            .map(|_| Counted(count.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The longest a stream answered `Busy` is kept: to write the answer, and then to read what
/// the client sent (its request and ClientHello) so that the close is a clean one and the
/// answer is not lost to a reset.
pub const SHED_TIME: Duration = Duration::from_secs(1);

/// Answers `Busy` on a stream this Tub has no room to handshake, without waiting for its
/// request (the answer does not depend on it), then closes it (handshake.md §3).
async fn shed<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, _unit: Counted) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(SHED_TIME, async {
        let answer = crate::prelude::encode_answer(crate::prelude::Status::Busy);
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        // What the client sent is read and dropped, at most 64 KiB (the request and a
        // ClientHello are well under it), until it closes too.
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A dial error's text with its causes, without "cannot connect to HINT" when that is the
/// hint tried (the status shows the hint already).
fn without_hint(hint: &str, e: &DialFailure) -> String {
    match e {
        DialFailure::Connect(ConnectError::Failed { hint: h, source }) if h == hint => {
            ErrorChain(&**source).to_string()
        }
        e => ErrorChain(e).to_string(),
    }
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
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

/// The first wait of a listener before it calls `accept` again after a failure.
pub const LISTENER_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait of a listener between failed `accept`s (the wait doubles from
/// [`LISTENER_RETRY_MIN`]).
pub const LISTENER_RETRY_MAX: Duration = Duration::from_secs(5);

/// How a listener fares ([`ListenerHandle::status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStatus {
    /// Whether it still accepts (false once stopped, or once its Tub shut down).
    pub running: bool,
    /// Streams accepted so far.
    pub accepted: u64,
    /// Failed `accept`s so far.
    pub failures: u64,
    /// Failed `accept`s since the last stream accepted (0 while it works).
    pub consecutive_failures: u64,
    /// The last failure's error, if any failed.
    pub last_error: Option<String>,
}

/// A listener [`Tub::listen`] started: stop it, wait for it to end, see how it fares.
/// Clones refer to the same listener; dropping every handle leaves it running.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    shared: Arc<ListenerShared>,
}

#[derive(Debug)]
struct ListenerShared {
    describe: String,
    state: Mutex<ListenerStatus>,
    done: tokio::sync::Notify,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ListenerShared {
    fn accepted(&self) {
        let mut st = lock(&self.state);
        st.accepted += 1;
        st.consecutive_failures = 0;
    }

    /// Counts a failure; true when it deserves a warning (the first of a run, or a new
    /// error).
    fn failed(&self, why: &str) -> bool {
        let mut st = lock(&self.state);
        st.failures += 1;
        st.consecutive_failures += 1;
        let new = st.consecutive_failures == 1 || st.last_error.as_deref() != Some(why);
        st.last_error = Some(why.to_string());
        new
    }
}

/// Marks the listener stopped when its task ends, however it ends (stopped, aborted by a
/// shutdown, or its runtime gone).
struct RunningGuard(Arc<ListenerShared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        lock(&self.0.state).running = false;
        self.0.done.notify_waiters();
    }
}

impl ListenerHandle {
    /// What the listener listens on (its [`Listener::describe`]).
    pub fn describe(&self) -> &str {
        &self.shared.describe
    }

    /// How it fares now.
    pub fn status(&self) -> ListenerStatus {
        lock(&self.shared.state).clone()
    }

    /// Whether it still accepts.
    pub fn is_running(&self) -> bool {
        lock(&self.shared.state).running
    }

    /// Stops accepting: the listener is dropped (which closes its socket or session).
    /// Connections it accepted stay up. Idempotent.
    pub fn stop(&self) {
        if let Some(task) = lock(&self.shared.task).as_ref() {
            task.abort();
        }
    }

    /// Waits until the listener has stopped ([`ListenerHandle::stop`], [`Tub::shutdown`]).
    pub async fn stopped(&self) {
        loop {
            let notified = self.shared.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_running() {
                return;
            }
            notified.await;
        }
    }
}

/// Why a Tub could not be made ([`Tub::new`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TubError {
    /// The identity's key or certificate could not be made into a TLS configuration.
    #[error("the identity cannot be used for TLS: {0}")]
    Tls(rustls::Error),
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
    ) -> Result<Tub, TubError> {
        let handshaker =
            Handshaker::new(Arc::new(identity), config.handshake.clone()).map_err(|e| match e {
                HandshakeError::Config(e) => TubError::Tls(e),
                // Handshaker::new fails only on the TLS configuration.
                other => TubError::Tls(rustls::Error::General(other.to_string())),
            })?;
        let budget = Arc::new(crate::outbox::Budget::new(config.max_buffered_bytes));
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
            pending_handshakes: Mutex::default(),
            budget: budget.clone(),
            writers: Arc::default(),
            shedding: Arc::default(),
            busy_answers: Default::default(),
            dropped_unanswered: Default::default(),
            closed_for_room: Default::default(),
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

    /// A typed handle to the object a FURL names, at once and without the network: the
    /// FURL is reached on the handle's first call, and that call does not wait for it. On a
    /// new connection the call goes out right behind our hello, pipelined on the FURL's
    /// resolution (protocol.md §8), so its answer comes three round trips after the dial
    /// starts with TCP (where [`Tub::get`] and then a call take four); on a live connection
    /// the resolution and the call leave together. If the FURL cannot be reached, or names
    /// no object, or one of another interface, its calls fail and say why
    /// ([`CallError::Unreachable`], or [`Refusal::Broken`]); `resolved()` (of
    /// [`TypedRef`]) reaches it and reports that before any call. Once its connection is
    /// lost, the next call reaches the FURL again.
    pub fn get_promised<T: TypedRef>(&self, furl: &Furl) -> T {
        let lazy = LazyRef {
            furl: furl.clone(),
            interface: T::INTERFACE.to_string(),
            tub: Arc::downgrade(&self.inner),
            resolved: Mutex::new(None),
        };
        T::from_object_ref(ObjectRef::new(RefKind::Furl(Arc::new(lazy))))
            .unwrap_or_else(|_| unreachable!("the lazy reference names T's interface"))
    }

    /// Runs the server side of the handshake on a stream that was accepted, then serves it.
    ///
    /// With `max_pending_handshakes` streams already in the handshake, the stream is
    /// answered `Busy` and closed instead, and this returns [`HandshakeError::Refused`].
    pub async fn accept<S>(&self, stream: S) -> Result<ConnectionInfo, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.inner.pending_unit() {
            Some(unit) => self.accept_counted(stream, unit).await,
            None => {
                let why = self.inner.shed_reason();
                match self.inner.shedding_unit() {
                    Some(unit) => shed(stream, unit).await,
                    None => self.inner.count_dropped(),
                }
                Err(HandshakeError::Refused(why))
            }
        }
    }

    async fn accept_counted<S>(
        &self,
        stream: S,
        pending: PendingTicket,
    ) -> Result<ConnectionInfo, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        let admit = |info: &ConnectionInfo| inner.admit(info);
        let stream = Watched {
            inner: stream,
            waiting: pending.waiting.clone(),
        };
        let est = tokio::select! {
            est = inner.handshaker.run_server(stream, &admit, true) => est?,
            _ = pending.stop.notified() => {
                return Err(HandshakeError::Refused(format!(
                    "closed after waiting {EVICT_PENDING_AFTER:?} or more for the peer in the \
                     handshake, to make room for another ({} handshakes are under way, the \
                     limit)",
                    inner.config.max_pending_handshakes.max(1)
                )));
            }
        };
        drop(pending);
        let info = est.info.clone();
        self.inner.adopt(est, None, None, false, None);
        Ok(info)
    }

    /// Accepts every stream `listener` yields, each as `Side::Server`, until
    /// [`ListenerHandle::stop`] or [`Tub::shutdown`]; the handle also tells how it fares.
    /// Dropping the handle leaves the listener running.
    ///
    /// Each stream is handshaken on a task of its own, at most `max_pending_handshakes` at
    /// once. Beyond that a stream is answered `Busy` (on a task that lives at most
    /// [`SHED_TIME`]), and beyond as many again it is closed at once. When `accept` fails
    /// (a file-descriptor limit, a vanished SAM bridge), the listener waits before it
    /// tries again: 100 ms, doubling to at most [`LISTENER_RETRY_MAX`], back to 100 ms after
    /// a stream is accepted; it logs a warning when a run of failures starts or its error
    /// changes, not at every retry.
    pub fn listen(&self, mut listener: impl Listener) -> ListenerHandle {
        let tub = self.clone();
        let desc = listener.describe();
        let shared = Arc::new(ListenerShared {
            describe: desc.clone(),
            state: Mutex::new(ListenerStatus {
                running: true,
                ..ListenerStatus::default()
            }),
            done: tokio::sync::Notify::new(),
            task: Mutex::new(None),
        });
        let watch = shared.clone();
        // Owned by the task's future from the start: a task aborted before it ever ran
        // still marks the listener stopped.
        let running = RunningGuard(shared.clone());
        let task = tokio::spawn(
            async move {
                let _running = running;
                let mut backoff = LISTENER_RETRY_MIN;
                loop {
                    match listener.accept().await {
                        Ok(stream) => {
                            backoff = LISTENER_RETRY_MIN;
                            watch.accepted();
                            if let Some(unit) = tub.inner.pending_unit() {
                                let tub = tub.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = tub.accept_counted(stream, unit).await {
                                        debug!("inbound handshake failed: {}", ErrorChain(&e));
                                    }
                                });
                            } else if let Some(unit) = tub.inner.shedding_unit() {
                                debug!("{}: answering Busy", tub.inner.shed_reason());
                                tokio::spawn(shed(stream, unit));
                            } else {
                                debug!("{}: closing at once", tub.inner.shed_reason());
                                tub.inner.count_dropped();
                                drop(stream);
                            }
                        }
                        Err(e) => {
                            let why = ErrorChain(&e).to_string();
                            if watch.failed(&why) {
                                warn!("listener failed: {why} (retrying, at most every {LISTENER_RETRY_MAX:?})");
                            } else {
                                debug!("listener failed again: {why}");
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(LISTENER_RETRY_MAX);
                        }
                    }
                }
            }
            .instrument(info_span!("listener", on = %desc)),
        );
        *lock(&shared.task) = Some(task.abort_handle());
        lock(&self.inner.listeners).push(task);
        ListenerHandle { shared }
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

    /// How loaded this Tub is, and what its limits have turned away since it started.
    pub fn load(&self) -> TubLoad {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = &self.inner;
        let conns: Vec<_> = lock(&inner.connections).values().cloned().collect();
        let (mut kept_answers, mut held_calls, mut unfinished_promises) = (0, 0, 0);
        for c in &conns {
            let (k, h, u) = c.promise_load();
            kept_answers += k;
            held_calls += h;
            unfinished_promises += u;
        }
        let pending = lock(&inner.pending_handshakes);
        TubLoad {
            connections: lock(&inner.connections).len(),
            buffered_bytes: inner.budget.used(),
            pending_handshakes: pending.by_age.len(),
            evicted_handshakes: pending.evicted,
            busy_answers: inner.busy_answers.load(Relaxed),
            dropped_unanswered: inner.dropped_unanswered.load(Relaxed),
            closed_for_room: inner.closed_for_room.load(Relaxed),
            dial_locks: lock(&inner.dial_locks).len(),
            peer_status: lock(&inner.status).len(),
            kept_answers,
            held_calls,
            unfinished_promises,
        }
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
            c.close(Disconnect::ClosedLocally, Some(GoodbyeReason::Shutdown));
        }
    }

    /// Stops listening (the listening sockets are closed when this returns), closes every
    /// connection with `Goodbye(Shutdown)`, and waits until each has written it: what was
    /// queued, the goodbye and the TLS close_notify written, and the stream shut (connections
    /// closed earlier and still saying goodbye are waited for too). The connections finish
    /// at once, each on its own task; the wait ends when the last has, or after
    /// [`TubConfig::shutdown_grace`] (5 s by default), whichever comes first, so a peer that
    /// does not read cannot hold it longer.
    ///
    /// A process may therefore exit as soon as this returns: its peers see
    /// `Disconnect::PeerGoodbye(GoodbyeReason::Shutdown)`, not a stream cut short (only the
    /// connections still closing when the grace ran out are cut, when the runtime goes).
    /// Calls pending on the connections fail at once, not when this returns. Later calls of
    /// `shutdown` wait the same way.
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
            c.close(Disconnect::Shutdown, Some(GoodbyeReason::Shutdown));
        }
        let grace = self.inner.config.shutdown_grace;
        let writers = &self.inner.writers;
        if tokio::time::timeout(grace, writers.all_ended())
            .await
            .is_err()
        {
            debug!(
                left = writers.live(),
                "shutdown: connections still closing after {grace:?} (peers not reading?)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::NoConnector;
    use crate::message::{decode, AnswerBody, Message};

    /// The early resolution's id when no call is pipelined on it.
    const EARLY_ID: u64 = 1;
    use crate::object::RefDesc;

    /// A listener whose `accept` fails `failures` times, then yields in-memory streams
    /// (whose far ends it drops: the handshakes fail, which is not what is tested here).
    struct Flaky {
        failures: u32,
        accepts: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Listener for Flaky {
        fn accept(&mut self) -> crate::connector::AcceptFuture<'_> {
            Box::pin(async move {
                self.accepts
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if self.failures > 0 {
                    self.failures -= 1;
                    return Err(std::io::Error::other("too many open files"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                let (a, _b) = tokio::io::duplex(1024);
                Ok(Box::new(a) as crate::connector::BoxStream)
            })
        }

        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    /// A listener's handle sees it fail, back off, recover, and stop.
    #[tokio::test(start_paused = true)]
    async fn a_listener_backs_off_and_its_handle_sees_and_stops_it() {
        let tub = Tub::new(
            Identity::generate().unwrap(),
            Arc::new(NoConnector),
            TubConfig::default(),
        )
        .unwrap();
        let accepts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let handle = tub.listen(Flaky {
            failures: 8,
            accepts: accepts.clone(),
        });
        assert_eq!(handle.describe(), "flaky");
        // 100 ms, 200, 400, ... 5 s, 5 s: eight failures take 100+200+400+800+1600+3200
        // +5000+5000 ms = 16.3 s of (paused) time, where a fixed 100 ms would take 0.8 s.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let early = handle.status();
        assert_eq!(early.failures, 4, "{early:?}");
        assert_eq!(early.consecutive_failures, 4);
        assert_eq!(early.last_error.as_deref(), Some("too many open files"));
        assert!(early.running);
        tokio::time::sleep(Duration::from_secs(16)).await;
        let later = handle.status();
        assert_eq!(later.failures, 8, "{later:?}");
        assert!(later.accepted > 0, "{later:?}");
        assert_eq!(
            later.consecutive_failures, 0,
            "an accepted stream ends the run"
        );
        handle.stop();
        tokio::time::timeout(Duration::from_secs(1), handle.stopped())
            .await
            .expect("a stopped listener says so");
        assert!(!handle.is_running());
        let n = accepts.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            accepts.load(std::sync::atomic::Ordering::SeqCst),
            n,
            "no accept after stop"
        );
        // A second listener ends with its Tub.
        let other = tub.listen(Flaky {
            failures: 0,
            accepts: Arc::new(Default::default()),
        });
        tub.shutdown().await;
        tokio::time::timeout(Duration::from_secs(1), other.stopped())
            .await
            .expect("a Tub's shutdown stops its listeners");
    }

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
        let early = crate::connection::early_resolution(furl.swissnum().as_str(), false).unwrap();
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
                id: EARLY_ID,
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
