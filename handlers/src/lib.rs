//! # folio-handlers
//!
//! Connection handlers: the bridge from a FURL's hints to the transports. A [`Registry`]
//! maps each hint type (`tcp`, `tor`, `i2p`) to a [`Handler`] and implements
//! `folio_rpc::Connector`, so a Tub can ask it for a byte stream to any hint. Hint types with
//! no handler are reported as unsupported and skipped by the dialer, never fatal. Removing
//! the `tcp` handler is how `tcp = disabled` is expressed.
//!
//! How `tcp:` hints are dialed can also be set for one peer, keyed by the TubId of the FURL
//! being dialed ([`Registry::set_peer_tcp_policy`], a node's `[server:TUBID] tcp`): the Tub
//! hands that TubId to [`Connector::connect_for`], so the rule holds for every dial to that
//! peer, whichever part of the program asked for it.
//!
//! ```
//! use folio_handlers::Registry;
//! use folio_rpc::{Connector, Hint};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::with_tcp();
//! let hint: Hint = "quic:example.org:1".parse().unwrap();
//! let err = registry.connect(&hint).await.err().unwrap();
//! assert!(err.to_string().contains("no connection handler"));
//! # }
//! ```
//!
//! ## Tor and I2P
//!
//! With the default features, `tor:` hints go through a system tor ([`tor::TorHandler`],
//! SOCKS5 found through its control port) and `i2p:` hints through a SAM v3.1 bridge
//! ([`i2p::I2pHandler`]: an i2pd, or with feature `i2p-embedded` an embedded emissary
//! router); feature `tor-arti` adds an embedded arti client (`arti::ArtiHandler`). A
//! registry in privacy mode ([`Registry::private`]) refuses every handler that would reveal
//! the host's IP address, so a program that must hide it cannot dial `tcp:` hints directly
//! by mistake:
//!
//! ```no_run
//! # #[cfg(all(feature = "tor-system", feature = "i2p"))]
//! # async fn hidden() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use folio_handlers::{i2p::I2pHandler, tor::TorHandler, Registry, TcpHandler};
//! use folio_transports::i2p::SamConfig;
//!
//! let mut registry = Registry::private();
//! // A system tor's control port (127.0.0.1:9051): its SOCKS port is asked for there.
//! let tor = TorHandler::from_control("127.0.0.1:9051".parse::<std::net::SocketAddr>()?).await?;
//! registry.set("tor", Arc::new(tor))?;
//! // An i2pd (or other SAM v3.1 bridge) on 127.0.0.1:7656.
//! let sam = SamConfig::new("127.0.0.1:7656".parse()?);
//! registry.set("i2p", Arc::new(I2pHandler::new(sam)))?;
//! // Direct TCP would reveal the IP address: refused.
//! assert!(registry.set("tcp", Arc::new(TcpHandler::default())).is_err());
//! // `registry` is a `folio_rpc::Connector`: `Tub::new` takes it (in an `Arc`) to dial with.
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
// On docs.rs (`--cfg docsrs`, nightly rustdoc), every feature-gated item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tor-arti")]
pub mod arti;
#[cfg(feature = "i2p")]
pub mod i2p;
#[cfg(feature = "tor-system")]
pub mod tor;
#[cfg(any(feature = "tor-system", feature = "tor-arti"))]
mod tor_target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use folio_rpc::connector::{AcceptFuture, ConnectError, ConnectFuture, Connector, Listener};
use folio_rpc::{Hint, TubId};
use folio_transports::tcp::{ListenSpec, TcpError};

/// One way of turning hints of one type into byte streams.
pub trait Handler: Send + Sync {
    /// What this handler is, for connection status ("tcp (direct)", for example).
    fn describe(&self) -> String;

    /// Opens a stream for `hint`, which has this handler's type.
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a>;

    /// Whether a connection made by this handler can reveal this host's IP address to the
    /// peer or the network (a direct TCP connection does; Tor and I2P do not). A private
    /// registry refuses such handlers.
    fn reveals_ip(&self) -> bool;
}

/// How `tcp:` hints are dialed (`[connections] tcp = ...` in `tahoe.cfg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpPolicy {
    /// Direct TCP connections.
    Direct,
    /// Through the Tor handler (its exit reaches the host).
    Tor,
    /// Not at all: `tcp:` hints are skipped.
    Disabled,
}

/// A handler or route refused by the registry's privacy mode.
#[derive(Debug, thiserror::Error)]
#[error("privacy mode: {0}")]
pub struct PolicyError(String);

/// Direct TCP connections for `tcp:` hints.
#[derive(Debug, Clone)]
pub struct TcpHandler {
    timeout: Duration,
}

impl TcpHandler {
    /// A handler whose dials give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TcpHandler { timeout }
    }
}

impl Default for TcpHandler {
    fn default() -> Self {
        TcpHandler::new(Duration::from_secs(30))
    }
}

impl Handler for TcpHandler {
    fn describe(&self) -> String {
        "tcp (direct)".into()
    }

    fn reveals_ip(&self) -> bool {
        true
    }

    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let Hint::Tcp { host, port } = hint else {
                return Err(ConnectError::Unsupported {
                    kind: hint.kind().to_string(),
                });
            };
            let stream = folio_transports::tcp::dial(&host.to_dial_string(), *port, self.timeout)
                .await
                .map_err(|e| ConnectError::Failed {
                    hint: hint.to_string(),
                    source: Box::new(e),
                })?;
            Ok(Box::new(stream) as folio_rpc::BoxStream)
        })
    }
}

/// Hint type → handler, under a policy.
///
/// A **private** registry ([`Registry::private`]) never opens a connection that could reveal
/// the host's IP address: it refuses to hold a handler that [`Handler::reveals_ip`], and
/// checks again on every dial. The flag cannot be cleared; the node's `--hide-ip` /
/// `reveal-IP-address = false` builds on it, so a configuration mistake cannot undo it.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    /// Hint types dialed by another type's handler (`tcp = tor`: "tcp" → "tor").
    routes: BTreeMap<String, String>,
    /// How `tcp:` hints are dialed for particular peers, overriding the rule above.
    peer_tcp: BTreeMap<TubId, PeerTcp>,
    private: bool,
}

/// A peer's own rule for `tcp:` hints.
#[derive(Clone)]
enum PeerTcp {
    /// Direct TCP, whatever the registry-wide rule.
    Direct(Arc<dyn Handler>),
    /// Through the `tor` handler.
    Tor,
    /// Not at all: refused, naming the rule.
    Disabled,
}

/// What the registry does with one hint.
enum Route<'r> {
    /// This handler dials it.
    Handler(&'r Arc<dyn Handler>),
    /// It goes through another type's handler (`via`), and there is none.
    NoHandlerFor(&'r str),
    /// A per-peer `tcp = disabled`.
    PeerDisabled,
    /// Its type has no handler.
    Unsupported,
}

/// The handler `tcp = tor` routes `tcp:` hints through.
const TOR: &str = "tor";

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.handlers.iter().map(|(k, h)| (k, h.describe())))
            .finish()
    }
}

impl Registry {
    /// A registry with no handlers: every hint is unsupported.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// A registry in privacy mode, for life: no handler that reveals the IP address.
    pub fn private() -> Self {
        Registry {
            private: true,
            ..Registry::default()
        }
    }

    /// A registry with the direct TCP handler for `tcp:` hints.
    pub fn with_tcp() -> Self {
        let mut r = Registry::empty();
        r.set("tcp", Arc::new(TcpHandler::default()))
            .expect("a non-private registry takes any handler");
        r
    }

    /// Whether this registry is in privacy mode.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Uses `handler` for hints of type `kind`, replacing any other. A private registry
    /// refuses a handler that reveals the IP address.
    pub fn set(&mut self, kind: &str, handler: Arc<dyn Handler>) -> Result<(), PolicyError> {
        if self.private && handler.reveals_ip() {
            return Err(PolicyError(format!(
                "{} would reveal this host's IP address; it cannot handle {kind:?} hints here",
                handler.describe()
            )));
        }
        self.handlers.insert(kind.to_string(), handler);
        Ok(())
    }

    /// Sets how `tcp:` hints are dialed. `Direct` is refused in privacy mode.
    pub fn set_tcp_policy(&mut self, policy: TcpPolicy) -> Result<(), PolicyError> {
        self.routes.remove("tcp");
        match policy {
            TcpPolicy::Direct => self.set("tcp", Arc::new(TcpHandler::default())),
            TcpPolicy::Tor => {
                self.handlers.remove("tcp");
                self.routes.insert("tcp".into(), TOR.into());
                Ok(())
            }
            TcpPolicy::Disabled => {
                self.handlers.remove("tcp");
                Ok(())
            }
        }
    }

    /// Sets how `tcp:` hints are dialed for the peer whose TubId is `peer` (the TubId of the
    /// FURL being dialed), overriding [`set_tcp_policy`](Self::set_tcp_policy) for that peer
    /// only. `Direct` is refused in privacy mode. A `Disabled` peer's `tcp:` hints are
    /// refused with a reason that names the rule, rather than skipped in silence.
    pub fn set_peer_tcp_policy(
        &mut self,
        peer: TubId,
        policy: TcpPolicy,
    ) -> Result<(), PolicyError> {
        let rule = match policy {
            TcpPolicy::Direct => {
                let direct: Arc<dyn Handler> = Arc::new(TcpHandler::default());
                if self.private {
                    return Err(PolicyError(format!(
                        "{} would reveal this host's IP address; it cannot handle tcp hints \
                         for {peer} here",
                        direct.describe()
                    )));
                }
                PeerTcp::Direct(direct)
            }
            TcpPolicy::Tor => PeerTcp::Tor,
            TcpPolicy::Disabled => PeerTcp::Disabled,
        };
        self.peer_tcp.insert(peer, rule);
        Ok(())
    }

    /// Stops handling hints of type `kind`.
    pub fn disable(&mut self, kind: &str) {
        self.handlers.remove(kind);
        self.routes.remove(kind);
    }

    /// What happens to `hint` on the way to `peer` (any peer when `None`).
    fn route(&self, peer: Option<TubId>, hint: &Hint) -> Route<'_> {
        if let Hint::Unknown(_) = hint {
            return Route::Unsupported;
        }
        let kind = hint.kind();
        let own = match (hint, peer.and_then(|p| self.peer_tcp.get(&p))) {
            (Hint::Tcp { .. }, Some(rule)) => Some(rule),
            _ => None,
        };
        let via = match own {
            Some(PeerTcp::Direct(h)) => return Route::Handler(h),
            Some(PeerTcp::Disabled) => return Route::PeerDisabled,
            Some(PeerTcp::Tor) => Some(TOR),
            None => self.routes.get(kind).map(String::as_str),
        };
        match (self.handlers.get(via.unwrap_or(kind)), via) {
            (Some(h), _) => Route::Handler(h),
            (None, Some(via)) => Route::NoHandlerFor(via),
            (None, None) => Route::Unsupported,
        }
    }

    /// The handler for a hint, if its type has one (following a route such as `tcp = tor`).
    /// Per-peer rules are not consulted: see [`handler_for_peer`](Self::handler_for_peer).
    pub fn handler_for(&self, hint: &Hint) -> Option<&Arc<dyn Handler>> {
        match self.route(None, hint) {
            Route::Handler(h) => Some(h),
            _ => None,
        }
    }

    /// The handler for a hint of a FURL whose TubId is `peer`, following that peer's own
    /// rule for `tcp:` hints if it has one.
    pub fn handler_for_peer(&self, peer: TubId, hint: &Hint) -> Option<&Arc<dyn Handler>> {
        match self.route(Some(peer), hint) {
            Route::Handler(h) => Some(h),
            _ => None,
        }
    }

    /// Each hint type and what handles it, for status displays.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.handlers
            .iter()
            .map(|(k, h)| (k.clone(), h.describe()))
            .collect()
    }

    fn dial<'a>(&'a self, peer: Option<TubId>, hint: &'a Hint) -> ConnectFuture<'a> {
        let refused = |reason: String| {
            let e = ConnectError::Refused {
                hint: hint.to_string(),
                reason,
            };
            Box::pin(async move { Err(e) }) as ConnectFuture<'a>
        };
        match self.route(peer, hint) {
            // Checked on every dial too, not only when handlers are installed.
            Route::Handler(h) if self.private && h.reveals_ip() => {
                refused("privacy mode forbids connections that reveal the IP address".into())
            }
            Route::Handler(h) => h.connect(hint),
            Route::NoHandlerFor(via) => refused(format!(
                "{} hints go through the {via} handler, and none is configured",
                hint.kind(),
            )),
            Route::PeerDisabled => {
                refused("tcp = disabled for this peer: its tcp hints are never dialed".into())
            }
            Route::Unsupported => {
                let kind = hint.kind().to_string();
                Box::pin(async move { Err(ConnectError::Unsupported { kind }) })
            }
        }
    }
}

impl Connector for Registry {
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        self.dial(None, hint)
    }

    fn handler_name(&self, hint: &Hint) -> Option<String> {
        self.handler_for(hint).map(|h| h.describe())
    }

    fn connect_for<'a>(&'a self, peer: TubId, hint: &'a Hint) -> ConnectFuture<'a> {
        self.dial(Some(peer), hint)
    }

    fn handler_name_for(&self, peer: TubId, hint: &Hint) -> Option<String> {
        self.handler_for_peer(peer, hint).map(|h| h.describe())
    }
}

/// Writes a key file readable by its owner only (see [`folio_rpc::identity::write_private`]).
#[cfg(any(feature = "tor-system", feature = "i2p"))]
pub(crate) fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    folio_rpc::identity::write_private(path, format!("{text}\n").as_bytes())
}

/// The largest key file read back (an onion service key or an I2P private destination):
/// far more than either (`ED25519-V3:` and 88 base64 characters; about 900 base64
/// characters).
pub const MAX_KEY_FILE: u64 = 8 * 1024;

/// Reads a key file written by [`write_secret`], trimmed, through the bound
/// [`MAX_KEY_FILE`] (a larger file is refused, not read whole).
#[cfg(any(feature = "tor-system", feature = "i2p"))]
pub(crate) fn read_secret(path: &std::path::Path) -> std::io::Result<String> {
    folio_rpc::identity::read_text_bounded(path, MAX_KEY_FILE).map(|k| k.trim().to_string())
}

/// A TCP listener for a Tub: every connection it accepts is handed to the server side of
/// the handshake (`Tub::listen`).
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    spec: ListenSpec,
}

impl TcpListener {
    /// Binds `spec` (`tcp:PORT` or `tcp:PORT:interface=ADDR`).
    pub async fn bind(spec: &ListenSpec) -> Result<Self, TcpError> {
        let inner = folio_transports::tcp::listen(spec).await?;
        let spec = ListenSpec {
            addr: inner.local_addr().unwrap_or(spec.addr),
        };
        Ok(TcpListener { inner, spec })
    }

    /// Where it listens (with the real port when the spec asked for port 0).
    pub fn local_spec(&self) -> ListenSpec {
        self.spec
    }

    /// The `tcp:HOST:PORT` hint a peer would use to reach it at `host`.
    pub fn hint_for(&self, host: folio_rpc::Host) -> Hint {
        Hint::Tcp {
            host,
            port: self.spec.addr.port(),
        }
    }
}

impl Listener for TcpListener {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (stream, _) = self.inner.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as folio_rpc::BoxStream)
        })
    }

    fn describe(&self) -> String {
        self.spec.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_hint_reaches_a_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hint: Hint = format!("tcp:127.0.0.1:{}", l.local_addr().unwrap().port())
            .parse()
            .unwrap();
        let registry = Registry::with_tcp();
        let (dialed, accepted) = tokio::join!(registry.connect(&hint), l.accept());
        let (mut dialed, mut accepted) = (dialed.unwrap(), accepted.unwrap().0);
        dialed.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[tokio::test]
    async fn unknown_and_disabled_hints_are_unsupported() {
        let mut registry = Registry::with_tcp();
        let unknown: Hint = "x-future:1".parse().unwrap();
        assert!(matches!(
            registry.connect(&unknown).await,
            Err(ConnectError::Unsupported { kind }) if kind == "x-future"
        ));
        registry.disable("tcp");
        let tcp: Hint = "tcp:127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            registry.connect(&tcp).await,
            Err(ConnectError::Unsupported { kind }) if kind == "tcp"
        ));
        assert!(registry.describe().is_empty());
    }

    /// A handler that opens nothing and says which handler it is.
    struct Named(&'static str);

    impl Handler for Named {
        fn describe(&self) -> String {
            self.0.into()
        }
        fn reveals_ip(&self) -> bool {
            false
        }
        fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
            let e = ConnectError::Failed {
                hint: hint.to_string(),
                source: format!("reached {}", self.0).into(),
            };
            Box::pin(async move { Err(e) })
        }
    }

    #[tokio::test]
    async fn a_peer_can_have_its_own_tcp_rule() {
        let (routed, disabled, direct, other) = (
            TubId::from_bytes([1; 32]),
            TubId::from_bytes([2; 32]),
            TubId::from_bytes([3; 32]),
            TubId::from_bytes([4; 32]),
        );
        let mut registry = Registry::with_tcp();
        registry.set("tor", Arc::new(Named("fake tor"))).unwrap();
        registry
            .set_peer_tcp_policy(routed, TcpPolicy::Tor)
            .unwrap();
        registry
            .set_peer_tcp_policy(disabled, TcpPolicy::Disabled)
            .unwrap();
        let tcp: Hint = "tcp:example.org:1".parse().unwrap();
        let tor: Hint = format!("tor:{}.onion:1", "a".repeat(56)).parse().unwrap();

        let name = |r: &Registry, peer, hint| r.handler_name_for(peer, hint);
        assert_eq!(name(&registry, routed, &tcp).as_deref(), Some("fake tor"));
        assert_eq!(
            name(&registry, other, &tcp).as_deref(),
            Some("tcp (direct)")
        );
        assert_eq!(name(&registry, disabled, &tcp), None);
        assert_eq!(name(&registry, disabled, &tor).as_deref(), Some("fake tor"));
        // The peer-blind methods keep the registry-wide rule.
        assert_eq!(registry.handler_name(&tcp).as_deref(), Some("tcp (direct)"));

        let e = registry.connect_for(routed, &tcp).await.err().unwrap();
        let why = folio_rpc::ErrorChain(&e).to_string();
        assert!(why.contains("reached fake tor"), "{why}");
        let e = registry.connect_for(disabled, &tcp).await.err().unwrap();
        assert!(
            matches!(&e, ConnectError::Refused { reason, .. } if reason.contains("tcp = disabled for this peer")),
            "{e}"
        );

        // A peer's direct rule holds where the registry-wide rule is Tor; a private
        // registry refuses it.
        registry.set_tcp_policy(TcpPolicy::Tor).unwrap();
        registry
            .set_peer_tcp_policy(direct, TcpPolicy::Direct)
            .unwrap();
        assert_eq!(
            name(&registry, direct, &tcp).as_deref(),
            Some("tcp (direct)")
        );
        assert_eq!(name(&registry, other, &tcp).as_deref(), Some("fake tor"));
        let mut private = Registry::private();
        let e = private
            .set_peer_tcp_policy(direct, TcpPolicy::Direct)
            .unwrap_err();
        assert!(
            e.to_string().contains("reveal this host's IP address"),
            "{e}"
        );

        // Tor for one peer with no tor handler: refused, not sent direct.
        let mut no_tor = Registry::with_tcp();
        no_tor.set_peer_tcp_policy(routed, TcpPolicy::Tor).unwrap();
        let e = no_tor.connect_for(routed, &tcp).await.err().unwrap();
        assert!(
            e.to_string()
                .contains("go through the tor handler, and none is configured"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn failed_dial_names_the_hint() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let hint: Hint = format!("tcp:127.0.0.1:{port}").parse().unwrap();
        let e = Registry::with_tcp().connect(&hint).await.err().unwrap();
        // What failed at this level, and why one level down (the source, not repeated).
        assert_eq!(
            e.to_string(),
            format!("cannot connect to tcp:127.0.0.1:{port}")
        );
        let why = std::error::Error::source(&e).expect("the TCP error is the source");
        assert_eq!(
            why.to_string(),
            format!("cannot connect to 127.0.0.1:{port}")
        );
        let io = why
            .source()
            .expect("the I/O error is the TCP error's source");
        // The whole chain, each level once.
        assert_eq!(
            folio_rpc::ErrorChain(&e).to_string(),
            format!("cannot connect to tcp:127.0.0.1:{port}: {why}: {io}")
        );
    }
}
