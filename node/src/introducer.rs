//! The introducer: signed announcements, published by nodes and fanned out to subscribers.
//!
//! A node announces its services (a storage server's FURL and permutation seed, its nickname
//! and version) in an [`Announcement`], signed with the Ed25519 key in `private/node.privkey`.
//! The signature covers `b"folio-announcement-v1\0"` followed by the postcard encoding of the
//! announcement, which travels as opaque bytes so that every party verifies exactly what was
//! signed before decoding it ([`SignedAnnouncement::verify`]).
//!
//! The [`IntroducerService`] verifies each published announcement, keeps only the highest
//! sequence number per (service, key) — an older or replayed one is ignored and logged — and
//! calls every subscriber of that service back through the [`SubscriberRef`] it passed to
//! `subscribe`. A subscriber that joins late gets every current announcement at once.
//! What it holds is bounded ([`IntroducerLimits`], from `[introducer]` in tahoe.cfg): in all,
//! per signing key, and per publishing peer — each new (service, key) is charged to the TubId
//! of the connection that published it first. Updates of what it holds are always taken.
//! Keys and TubIds cost nothing to make, so the per-publisher bounds limit one connection,
//! not one person; docs/limits.md says what a hostile publisher can still do.
//!
//! The [`IntroducerClient`] keeps a reconnecting connection to each configured introducer,
//! publishes and subscribes again after every reconnection, verifies what it hears (it
//! trusts the introducer for availability only, never for content), and caches the
//! announcements so that a restarted node finds its servers while the introducers are down.
//! It holds at most [`ClientOptions::max_announcements`] (`[client] max_servers`), and only
//! of the services it subscribed to, so a hostile introducer cannot make it dial without end.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use folio_rpc::{
    interface, Bytes, Furl, ReconnectPolicy, Reconnector, ReconnectorStatus, TubId, TypedRef,
};
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::private::SigningKey;

/// What every signature covers before the announcement's bytes.
pub const SIGNATURE_CONTEXT: &[u8] = b"folio-announcement-v1\0";
/// The largest encoded announcement accepted.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 8 * 1024;
/// The most announcements one `announce` call may carry.
pub const MAX_BATCH: usize = 256;

/// What a node says about one of its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The service: `storage` for storage servers.
    pub service: String,
    /// The node's nickname, for people.
    pub nickname: String,
    /// The software that runs it (`folio-tahoe/0.1.0`).
    pub version: String,
    /// Grows with every new announcement from the same key; the highest one wins.
    pub seqnum: u64,
    /// Random: two announcements never have the same bytes.
    pub nonce: [u8; 16],
    /// The service's FURL (for storage: the storage server).
    pub furl: Option<String>,
    /// Orders this server in the per-file permutation (storage only).
    pub permutation_seed: Option<[u8; 32]>,
}

/// An announcement as it travels: the signed bytes, the signature, the signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    /// The postcard encoding of an [`Announcement`].
    pub body: Bytes,
    /// The Ed25519 signature over [`SIGNATURE_CONTEXT`] + `body` (64 bytes).
    pub signature: Bytes,
    /// The signer's Ed25519 public key.
    pub key: [u8; 32],
}

/// An announcement whose signature and contents were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Who signed it.
    pub key: [u8; 32],
    /// What it says.
    pub ann: Announcement,
    /// The original, to pass on.
    pub signed: SignedAnnouncement,
}

impl Verified {
    /// The announced FURL, parsed.
    pub fn furl(&self) -> Option<Furl> {
        self.ann.furl.as_deref().and_then(|f| f.parse().ok())
    }
}

/// Why an announcement was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AnnouncementError {
    /// No signature, or not 64 bytes.
    #[error("the announcement is not signed")]
    Unsigned,
    /// The signature does not match the key and the bytes.
    #[error("bad signature")]
    BadSignature,
    /// The bytes are not an announcement.
    #[error("undecodable announcement: {0}")]
    Malformed(String),
    /// Too many bytes.
    #[error("announcement of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A field is out of bounds.
    #[error("invalid announcement field {field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Announcement {
    /// Signs the announcement.
    pub fn sign(&self, key: &SigningKey) -> SignedAnnouncement {
        let body = postcard::to_allocvec(self).expect("announcements always encode");
        let mut msg = SIGNATURE_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        SignedAnnouncement {
            body: Bytes(body),
            signature: Bytes(key.sign(&msg).to_vec()),
            key: key.public(),
        }
    }

    /// Decodes and checks the bytes of an announcement whose signature holds. (Exposed for
    /// the fuzz target; [`SignedAnnouncement::verify`] is the way in.)
    pub fn from_signed_bytes(body: &[u8]) -> Result<Announcement, AnnouncementError> {
        if body.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnouncementError::TooLarge(body.len()));
        }
        let ann: Announcement =
            postcard::from_bytes(body).map_err(|e| AnnouncementError::Malformed(e.to_string()))?;
        ann.check()?;
        Ok(ann)
    }

    fn check(&self) -> Result<(), AnnouncementError> {
        let invalid = |field: &str, reason: &str| {
            Err(AnnouncementError::Invalid {
                field: field.to_string(),
                reason: reason.to_string(),
            })
        };
        let s = &self.service;
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid("service", "must be 1-64 of [a-z0-9-]");
        }
        // The same rule as `[node] nickname` in tahoe.cfg: what `tahoe status` shows must not
        // pose as another name (invisible or direction-changing characters).
        if let Err(reason) = crate::config::check_nickname_text(&self.nickname) {
            return invalid("nickname", &reason);
        }
        if self.version.len() > 128
            || self
                .version
                .chars()
                .any(|c| c.is_control() || crate::config::is_deceptive(c))
        {
            return invalid(
                "version",
                "at most 128 bytes of printable characters (no control, invisible or \
                 direction-changing characters)",
            );
        }
        if let Some(f) = &self.furl {
            if let Err(e) = f.parse::<Furl>() {
                return invalid("furl", &e.to_string());
            }
        }
        Ok(())
    }
}

impl SignedAnnouncement {
    /// Checks the size, the signature and then the contents, in that order: nothing is
    /// decoded before the signature holds.
    pub fn verify(&self) -> Result<Verified, AnnouncementError> {
        if self.body.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnouncementError::TooLarge(self.body.len()));
        }
        if self.signature.len() != 64 {
            return Err(AnnouncementError::Unsigned);
        }
        let mut msg = SIGNATURE_CONTEXT.to_vec();
        msg.extend_from_slice(&self.body);
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(&msg, &self.signature)
            .map_err(|_| AnnouncementError::BadSignature)?;
        let ann = Announcement::from_signed_bytes(&self.body)?;
        Ok(Verified {
            key: self.key,
            ann,
            signed: self.clone(),
        })
    }
}

/// What the introducer did with a published announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishOutcome {
    /// Stored and passed on to subscribers.
    Accepted,
    /// Not newer than the one held (sequence number `current`): ignored.
    Stale {
        /// The sequence number the introducer holds for this (service, key).
        current: u64,
    },
}

/// Errors of the introducer interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum IntroducerError {
    /// The announcement was refused.
    #[error("{0}")]
    Announcement(AnnouncementError),
    /// The introducer holds as many announcements or subscribers as it is configured to.
    #[error("introducer full: {0}")]
    Full(String),
    /// The service name is not valid.
    #[error("invalid service name")]
    BadService,
    /// Too many announcements in one call.
    #[error("batch of {0} announcements exceeds {MAX_BATCH}")]
    BatchTooLarge(usize),
    /// The publisher (`by`: `"connection"`, the peer that published, or `"key"`, the signing
    /// key) already holds as many announcements as one may; updates of those it holds are
    /// still accepted.
    #[error("this {by} already holds {maximum} announcements, the most one {by} may hold")]
    PublisherFull {
        /// `"connection"` or `"key"`.
        by: String,
        /// The limit.
        maximum: u64,
    },
}

/// The introducer, as publishers and subscribers call it.
#[interface(name = "folio.introducer.v1")]
pub trait Introducer {
    /// Publishes a signed announcement.
    async fn publish(&self, ann: SignedAnnouncement) -> Result<PublishOutcome, IntroducerError>;
    /// Asks to be called back with every current and future announcement of `service`.
    async fn subscribe(
        &self,
        subscriber: SubscriberRef,
        service: String,
    ) -> Result<(), IntroducerError>;
}

/// A subscriber, as the introducer calls it back.
#[interface(name = "folio.introducer.subscriber.v1")]
pub trait Subscriber {
    /// New or updated announcements.
    async fn announce(&self, anns: Vec<SignedAnnouncement>) -> Result<(), IntroducerError>;
}

/// Limits of an introducer. The node sets them from the `[introducer]` section of
/// `tahoe.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroducerLimits {
    /// Announcements held, over all services and keys.
    pub max_announcements: usize,
    /// Announcements first published by one peer (the TubId of the connection that
    /// published them), over all services and keys. A TubId costs nothing, so this bounds
    /// what one connection can take, not what one person can.
    pub max_per_peer: usize,
    /// Announcements held for one signing key (one per service).
    pub max_per_key: usize,
    /// Subscriptions held.
    pub max_subscribers: usize,
    /// How long one batch may take to reach a subscriber before that delivery is dropped
    /// (the subscriber stays; it missed the batch and gets the current set when it
    /// subscribes again). Bounds the deliveries in flight to a subscriber that never answers.
    pub delivery_timeout: Duration,
}

impl Default for IntroducerLimits {
    fn default() -> Self {
        IntroducerLimits {
            max_announcements: 10_000,
            max_per_peer: 16,
            max_per_key: 16,
            max_subscribers: 10_000,
            delivery_timeout: Duration::from_secs(60),
        }
    }
}

struct Subscription {
    service: String,
    peer: Option<TubId>,
    sub: SubscriberRef,
}

#[derive(Default)]
struct IntroducerState {
    anns: BTreeMap<(String, [u8; 32]), Verified>,
    /// Announcements held per publishing peer: each is charged to the peer that first
    /// published its (service, key); updates do not move the charge. No entry is zero.
    per_peer: HashMap<TubId, usize>,
    /// Announcements held per signing key. No entry is zero.
    per_key: HashMap<[u8; 32], usize>,
    subs: HashMap<u64, Subscription>,
}

/// The introducer service. Serve it with [`IntroducerService::serve`].
#[derive(Clone)]
pub struct IntroducerService {
    state: Arc<Mutex<IntroducerState>>,
    next_id: Arc<AtomicU64>,
    limits: IntroducerLimits,
    in_flight: Arc<AtomicUsize>,
}

impl IntroducerService {
    /// An empty introducer.
    pub fn new(limits: IntroducerLimits) -> Self {
        IntroducerService {
            state: Arc::default(),
            next_id: Arc::default(),
            limits,
            in_flight: Arc::default(),
        }
    }

    /// A reference to register on a Tub. Each call it serves knows the peer it came from,
    /// to which the announcements that call publishes are charged
    /// ([`IntroducerLimits::max_per_peer`]).
    pub fn serve(&self) -> IntroducerRef {
        // Each call runs on a [`FromPeer`] made for it: the service learns who publishes.
        let svc = self.clone();
        folio_rpc::serve_per_call(move |ctx| {
            Arc::new(IntroducerServer(FromPeer {
                svc: svc.clone(),
                peer: ctx.peer(),
            }))
        })
    }

    /// The announcements held, for status displays.
    pub fn announcements(&self) -> Vec<Verified> {
        lock(&self.state).anns.values().cloned().collect()
    }

    /// How many announcements are charged to `peer`.
    pub fn held_by_peer(&self, peer: &TubId) -> usize {
        lock(&self.state).per_peer.get(peer).copied().unwrap_or(0)
    }

    /// The number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.state).subs.len()
    }

    /// Deliveries to subscribers not yet finished (each is one task).
    pub fn deliveries_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn deliver(&self, sub: SubscriberRef, anns: Vec<SignedAnnouncement>) {
        let in_flight = self.in_flight.clone();
        let timeout = self.limits.delivery_timeout;
        in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            for chunk in anns.chunks(MAX_BATCH) {
                match tokio::time::timeout(timeout, sub.announce(chunk.to_vec())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(error = %e, "subscriber did not take announcements");
                        break;
                    }
                    Err(_) => {
                        warn!(
                            subscriber = ?sub.object_ref().tubid(),
                            ?timeout,
                            "a subscriber did not take announcements in time; dropped the delivery"
                        );
                        break;
                    }
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn valid_service(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The introducer as one call sees it: `peer` is the calling Tub (`None` in-process).
struct FromPeer {
    svc: IntroducerService,
    peer: Option<TubId>,
}

impl Introducer for FromPeer {
    async fn publish(&self, ann: SignedAnnouncement) -> Result<PublishOutcome, IntroducerError> {
        self.svc.publish_from(self.peer, ann)
    }

    async fn subscribe(
        &self,
        subscriber: SubscriberRef,
        service: String,
    ) -> Result<(), IntroducerError> {
        self.svc.subscribe(subscriber, service).await
    }
}

impl IntroducerService {
    /// Publishes `ann` on behalf of `peer` (`None`: from this process, charged to nobody).
    ///
    /// A new (service, key) is taken only while the introducer holds fewer than
    /// `max_announcements`, the key fewer than `max_per_key` and the peer fewer than
    /// `max_per_peer`. A newer announcement for a (service, key) already held is always
    /// taken, whoever passes it on: the signature says who it is from.
    pub fn publish_from(
        &self,
        peer: Option<TubId>,
        ann: SignedAnnouncement,
    ) -> Result<PublishOutcome, IntroducerError> {
        let v = ann.verify().map_err(|e| {
            warn!(error = %e, publisher = ?peer, "refused an announcement");
            IntroducerError::Announcement(e)
        })?;
        let key = (v.ann.service.clone(), v.key);
        let limits = &self.limits;
        let targets = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            if let Some(cur) = st.anns.get_mut(&key) {
                if v.ann.seqnum <= cur.ann.seqnum {
                    info!(
                        service = %v.ann.service,
                        nickname = %v.ann.nickname,
                        seqnum = v.ann.seqnum,
                        current = cur.ann.seqnum,
                        "ignored an announcement that is not newer than the one held (replayed or old)"
                    );
                    return Ok(PublishOutcome::Stale {
                        current: cur.ann.seqnum,
                    });
                }
                *cur = v.clone();
            } else {
                if st.anns.len() >= limits.max_announcements {
                    warn!(held = st.anns.len(), publisher = ?peer, "introducer full: refused a new announcement");
                    return Err(IntroducerError::Full(format!(
                        "{} announcements",
                        st.anns.len()
                    )));
                }
                let full = |by: &str, maximum: usize| {
                    warn!(publisher = ?peer, by, maximum, nickname = %v.ann.nickname, "refused a new announcement: publisher limit");
                    Err(IntroducerError::PublisherFull {
                        by: by.into(),
                        maximum: maximum as u64,
                    })
                };
                if st.per_key.get(&v.key).copied().unwrap_or(0) >= limits.max_per_key {
                    return full("key", limits.max_per_key);
                }
                if let Some(p) = &peer {
                    if st.per_peer.get(p).copied().unwrap_or(0) >= limits.max_per_peer {
                        return full("connection", limits.max_per_peer);
                    }
                    *st.per_peer.entry(*p).or_default() += 1;
                }
                *st.per_key.entry(v.key).or_default() += 1;
                st.anns.insert(key, v.clone());
            }
            info!(service = %v.ann.service, nickname = %v.ann.nickname, seqnum = v.ann.seqnum, publisher = ?peer, "announcement accepted");
            st.subs
                .values()
                .filter(|s| s.service == v.ann.service)
                .map(|s| s.sub.clone())
                .collect::<Vec<_>>()
        };
        for sub in targets {
            self.deliver(sub, vec![v.signed.clone()]);
        }
        Ok(PublishOutcome::Accepted)
    }
}

impl Introducer for IntroducerService {
    /// Publishes as this process (charged to no peer). Remote callers reach
    /// [`IntroducerService::publish_from`] with their TubId through [`IntroducerService::serve`].
    async fn publish(&self, ann: SignedAnnouncement) -> Result<PublishOutcome, IntroducerError> {
        self.publish_from(None, ann)
    }

    async fn subscribe(
        &self,
        subscriber: SubscriberRef,
        service: String,
    ) -> Result<(), IntroducerError> {
        if !valid_service(&service) {
            return Err(IntroducerError::BadService);
        }
        let peer = subscriber.object_ref().tubid();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let current = {
            let mut st = lock(&self.state);
            // One subscription per (peer, service): a re-subscription replaces the old one.
            st.subs
                .retain(|_, s| !(s.peer.is_some() && s.peer == peer && s.service == service));
            if st.subs.len() >= self.limits.max_subscribers {
                return Err(IntroducerError::Full(format!(
                    "{} subscribers",
                    st.subs.len()
                )));
            }
            st.subs.insert(
                id,
                Subscription {
                    service: service.clone(),
                    peer,
                    sub: subscriber.clone(),
                },
            );
            st.anns
                .values()
                .filter(|v| v.ann.service == service)
                .map(|v| v.signed.clone())
                .collect::<Vec<_>>()
        };
        let state = self.state.clone();
        subscriber.object_ref().on_disconnect(move |_| {
            lock(&state).subs.remove(&id);
        });
        info!(%service, subscriber = ?peer, held = current.len(), "subscribed");
        if !current.is_empty() {
            self.deliver(subscriber, current);
        }
        Ok(())
    }
}

/// Called with each new or updated verified announcement a client hears.
pub type AnnouncementSink = Arc<dyn Fn(&Verified) + Send + Sync>;

struct ClientState {
    anns: Mutex<BTreeMap<(String, [u8; 32]), Verified>>,
    /// The services subscribed to: announcements of others are not held.
    services: Vec<String>,
    sink: AnnouncementSink,
    cache: Option<PathBuf>,
    /// One cache writer at a time (they share a temporary file name).
    saving: Mutex<()>,
    /// The most (service, key) pairs held: a hostile introducer cannot make a client hold,
    /// cache and dial without end.
    max: usize,
}

/// The default of [`ClientOptions::max_announcements`] (`[client] max_servers`): the most
/// announcements (distinct service and key) a client holds, and so the most storage servers
/// it dials. Newer versions of those it holds are still taken.
pub const MAX_HELD_ANNOUNCEMENTS: usize = 1_000;

impl ClientState {
    /// Keeps `v` if it is newer than what is held; tells the sink.
    fn offer(&self, v: Verified) -> bool {
        if !self.services.contains(&v.ann.service) {
            debug!(service = %v.ann.service, "ignored an announcement of a service not subscribed to");
            return false;
        }
        let key = (v.ann.service.clone(), v.key);
        {
            let mut anns = lock(&self.anns);
            if let Some(cur) = anns.get(&key) {
                if v.ann.seqnum <= cur.ann.seqnum {
                    return false;
                }
            } else if anns.len() >= self.max {
                warn!(
                    held = anns.len(),
                    nickname = %v.ann.nickname,
                    "ignored an announcement from a new key: holding as many as allowed"
                );
                return false;
            }
            anns.insert(key, v.clone());
        }
        (self.sink)(&v);
        true
    }

    fn save_cache(&self) {
        let Some(path) = &self.cache else { return };
        let _one_at_a_time = lock(&self.saving);
        let text = encode_cache(lock(&self.anns).values().map(|v| &v.signed));
        if let Err(e) = folio_rpc::identity::write_private(path, text.as_bytes()) {
            warn!(path = %path.display(), error = %e, "could not save the announcement cache");
        }
    }
}

/// One cached announcement, hex-encoded for people who look at the file.
#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    body: String,
    signature: String,
}

impl From<&SignedAnnouncement> for CacheEntry {
    fn from(s: &SignedAnnouncement) -> Self {
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        CacheEntry {
            key: hex(&s.key),
            body: hex(&s.body),
            signature: hex(&s.signature),
        }
    }
}

impl CacheEntry {
    fn decode(&self) -> Option<SignedAnnouncement> {
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).ok();
        Some(SignedAnnouncement {
            key: hex(&self.key)?.try_into().ok()?,
            body: Bytes(hex(&self.body)?),
            signature: Bytes(hex(&self.signature)?),
        })
    }
}

/// The text of an announcement cache holding `anns`, as a node writes
/// `private/introducer_cache.json`: a JSON array of `{"key", "body", "signature"}` objects,
/// each field in lowercase hex. (Public for the fuzz target.)
#[doc(hidden)]
pub fn encode_cache<'a>(anns: impl IntoIterator<Item = &'a SignedAnnouncement>) -> String {
    let entries: Vec<CacheEntry> = anns.into_iter().map(CacheEntry::from).collect();
    serde_json::to_string_pretty(&entries).expect("cache entries encode")
}

/// Reads an announcement cache's text: every entry whose fields decode, in order and not
/// yet verified; or why the text is not a cache. (Public for the fuzz target.)
#[doc(hidden)]
pub fn decode_cache(text: &str) -> Result<Vec<SignedAnnouncement>, String> {
    let entries: Vec<CacheEntry> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(entries.iter().filter_map(CacheEntry::decode).collect())
}

/// The largest announcement cache read at start.
const MAX_CACHE_BYTES: u64 = 16 * 1024 * 1024;

struct ClientSubscriber(Arc<ClientState>);

impl Subscriber for ClientSubscriber {
    async fn announce(&self, anns: Vec<SignedAnnouncement>) -> Result<(), IntroducerError> {
        if anns.len() > MAX_BATCH {
            return Err(IntroducerError::BatchTooLarge(anns.len()));
        }
        let mut changed = false;
        for a in anns {
            match a.verify() {
                Ok(v) => changed |= self.0.offer(v),
                // The introducer passes on what it verified; a bad one here means a bad
                // introducer. Skip it and keep the rest.
                Err(e) => warn!(error = %e, "refused an announcement from the introducer"),
            }
        }
        if changed {
            self.0.save_cache();
        }
        Ok(())
    }
}

/// One introducer as the client sees it.
#[derive(Debug, Clone)]
pub struct IntroducerConnection {
    /// The name in `tahoe.cfg` (`default` for `introducer.furl`).
    pub name: String,
    /// The introducer's FURL.
    pub furl: Furl,
    /// What the reconnector is doing.
    pub status: ReconnectorStatus,
}

/// What a node publishes and subscribes to.
pub struct ClientOptions {
    /// The introducers, by name.
    pub introducers: Vec<(String, Furl)>,
    /// Announcements to publish on every (re)connection.
    pub publish: Vec<SignedAnnouncement>,
    /// Services to subscribe to.
    pub subscribe: Vec<String>,
    /// Where to cache announcements (`private/introducer_cache.json`).
    pub cache: Option<PathBuf>,
    /// How to reconnect.
    pub policy: ReconnectPolicy,
    /// The most announcements (distinct service and key) held, heard or cached: so the most
    /// servers dialed. Default [`MAX_HELD_ANNOUNCEMENTS`]; the node takes `[client]
    /// max_servers`.
    pub max_announcements: usize,
}

/// A node's link to its introducers.
pub struct IntroducerClient {
    conns: Vec<(String, Reconnector)>,
    state: Arc<ClientState>,
}

impl IntroducerClient {
    /// Loads the cache (passing each verified entry to `sink`), then connects to every
    /// introducer, publishing and subscribing after each connection.
    pub fn start(
        tub: &folio_rpc::Tub,
        opts: ClientOptions,
        sink: AnnouncementSink,
    ) -> IntroducerClient {
        let state = Arc::new(ClientState {
            anns: Mutex::default(),
            services: opts.subscribe.clone(),
            sink,
            cache: opts.cache.clone(),
            saving: Mutex::new(()),
            max: opts.max_announcements,
        });
        if let Some(path) = &opts.cache {
            let loaded = load_cache(path);
            let mut n = 0;
            for v in loaded {
                n += usize::from(state.offer(v));
            }
            if n > 0 {
                info!(announcements = n, "loaded the announcement cache");
            }
        }
        let subscriber = SubscriberRef::serve(ClientSubscriber(state.clone()));
        let publish = Arc::new(opts.publish);
        let services = Arc::new(opts.subscribe);
        let mut conns = Vec::new();
        for (name, furl) in opts.introducers {
            let (publish, services, subscriber) =
                (publish.clone(), services.clone(), subscriber.clone());
            let label = name.clone();
            let rc = tub.connect_to(furl, opts.policy, move |r| {
                let intro = match IntroducerRef::from_object_ref(r) {
                    Ok(i) => i,
                    Err(e) => {
                        warn!(introducer = %label, error = %e, "not an introducer");
                        return;
                    }
                };
                let (publish, services, subscriber, label) = (
                    publish.clone(),
                    services.clone(),
                    subscriber.clone(),
                    label.clone(),
                );
                tokio::spawn(async move {
                    // Every publish and subscribe goes out at once, back to back on the new
                    // connection, and their answers come back together: one round trip in
                    // all, where one call after another cost one each (on Tor, 0.3 s or
                    // more apiece). None depends on another's answer.
                    let publishing = futures_util::future::join_all(publish.iter().map(|ann| {
                        let (intro, label) = (&intro, &label);
                        async move {
                            match intro.publish(ann.clone()).await {
                                Ok(outcome) => {
                                    debug!(introducer = %label, ?outcome, "published")
                                }
                                Err(e) => {
                                    warn!(introducer = %label, error = %e, "publishing failed")
                                }
                            }
                        }
                    }));
                    let subscribing =
                        futures_util::future::join_all(services.iter().map(|service| {
                            let (intro, label, subscriber) = (&intro, &label, &subscriber);
                            async move {
                                if let Err(e) =
                                    intro.subscribe(subscriber.clone(), service.clone()).await
                                {
                                    warn!(introducer = %label, error = %e, "subscribing failed");
                                }
                            }
                        }));
                    futures_util::future::join(publishing, subscribing).await;
                    info!(introducer = %label, "published and subscribed");
                });
            });
            conns.push((name, rc));
        }
        IntroducerClient { conns, state }
    }

    /// Each introducer and its connection state.
    pub fn connections(&self) -> Vec<IntroducerConnection> {
        self.conns
            .iter()
            .map(|(name, rc)| IntroducerConnection {
                name: name.clone(),
                furl: rc.furl().clone(),
                status: rc.status(),
            })
            .collect()
    }

    /// Every announcement held (heard or cached).
    pub fn announcements(&self) -> Vec<Verified> {
        lock(&self.state.anns).values().cloned().collect()
    }

    /// Stops reconnecting.
    pub fn stop(&self) {
        for (_, rc) in &self.conns {
            rc.stop();
        }
    }
}

fn load_cache(path: &std::path::Path) -> Vec<Verified> {
    // Read through the bound (not checked with `metadata` first, which a growing file gets
    // past).
    let text = match folio_rpc::identity::read_text_bounded(path, MAX_CACHE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            warn!(path = %path.display(), "announcement cache too large; ignored");
            return Vec::new();
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the announcement cache");
            return Vec::new();
        }
    };
    let signed = match decode_cache(&text) {
        Ok(s) => s,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "announcement cache unreadable; ignored");
            return Vec::new();
        }
    };
    signed
        .into_iter()
        .filter_map(|s| match s.verify() {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(error = %e, "dropped a cached announcement");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(seqnum: u64) -> Announcement {
        Announcement {
            service: "storage".into(),
            nickname: "alpha".into(),
            version: "folio-tahoe/test".into(),
            seqnum,
            nonce: [7; 16],
            furl: None,
            permutation_seed: Some([1; 32]),
        }
    }

    #[test]
    fn signed_announcements_verify_and_tampering_is_caught() {
        let key = SigningKey::generate();
        let s = ann(3).sign(&key);
        assert_eq!(s.verify().unwrap().ann, ann(3));

        let mut forged = s.clone();
        let last = forged.body.len() - 1;
        forged.body[last] ^= 1;
        assert_eq!(forged.verify(), Err(AnnouncementError::BadSignature));

        let mut other_key = s.clone();
        other_key.key = SigningKey::generate().public();
        assert_eq!(other_key.verify(), Err(AnnouncementError::BadSignature));

        let mut unsigned = s.clone();
        unsigned.signature = Bytes(Vec::new());
        assert_eq!(unsigned.verify(), Err(AnnouncementError::Unsigned));
    }

    #[test]
    fn invalid_fields_are_refused_even_when_signed() {
        let key = SigningKey::generate();
        let mut a = ann(1);
        a.service = "Storage Server".into();
        assert!(matches!(
            a.sign(&key).verify(),
            Err(AnnouncementError::Invalid { field, .. }) if field == "service"
        ));
        let mut a = ann(1);
        a.furl = Some("http://example.org/".into());
        assert!(matches!(
            a.sign(&key).verify(),
            Err(AnnouncementError::Invalid { field, .. }) if field == "furl"
        ));
        let mut a = ann(1);
        a.nickname = "bell\u{7}".into();
        assert!(a.sign(&key).verify().is_err());
        // tahoe.cfg's nickname rule: no invisible or direction-changing characters.
        for bad in ["a\u{202e}b", "a\u{200b}", "\u{2068}x"] {
            let mut a = ann(1);
            a.nickname = bad.into();
            assert!(matches!(
                a.sign(&key).verify(),
                Err(AnnouncementError::Invalid { field, .. }) if field == "nickname"
            ));
            let mut a = ann(1);
            a.version = bad.into();
            assert!(matches!(
                a.sign(&key).verify(),
                Err(AnnouncementError::Invalid { field, .. }) if field == "version"
            ));
        }
    }

    #[test]
    fn a_client_holds_a_bounded_number_of_keys_but_takes_updates() {
        let seen = Arc::new(Mutex::new(0usize));
        let s = seen.clone();
        let state = ClientState {
            anns: Mutex::default(),
            services: vec!["storage".into()],
            sink: Arc::new(move |_: &Verified| *lock(&s) += 1),
            cache: None,
            saving: Mutex::new(()),
            max: 3,
        };
        let keys: Vec<SigningKey> = (0..4).map(|_| SigningKey::generate()).collect();
        for k in &keys {
            state.offer(ann(1).sign(k).verify().unwrap());
        }
        assert_eq!(lock(&state.anns).len(), 3);
        assert_eq!(*lock(&seen), 3);
        // A newer announcement from a key already held is still taken.
        assert!(state.offer(ann(2).sign(&keys[0]).verify().unwrap()));
        assert!(!state.offer(ann(2).sign(&keys[3]).verify().unwrap()));
        assert_eq!(*lock(&seen), 4);
    }

    #[test]
    fn cache_entries_round_trip() {
        let s = ann(9).sign(&SigningKey::generate());
        let e = CacheEntry::from(&s);
        assert_eq!(e.decode().unwrap(), s);
    }
}
