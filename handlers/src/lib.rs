//! # folio-handlers
//!
//! Connection handlers: the bridge from a FURL's hints to the transports. A [`Registry`]
//! maps each hint type (`tcp`, later `tor` and `i2p`) to a [`Handler`] and implements
//! `folio_rpc::Connector`, so a Tub can ask it for a byte stream to any hint. Hint types with
//! no handler are reported as unsupported and skipped by the dialer, never fatal. Removing
//! the `tcp` handler is how `tcp = disabled` is expressed.
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
#![warn(missing_docs)]

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
use folio_rpc::Hint;
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
    private: bool,
}

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
                self.routes.insert("tcp".into(), "tor".into());
                Ok(())
            }
            TcpPolicy::Disabled => {
                self.handlers.remove("tcp");
                Ok(())
            }
        }
    }

    /// Stops handling hints of type `kind`.
    pub fn disable(&mut self, kind: &str) {
        self.handlers.remove(kind);
        self.routes.remove(kind);
    }

    /// The handler for a hint, if its type has one (following a route such as `tcp = tor`).
    pub fn handler_for(&self, hint: &Hint) -> Option<&Arc<dyn Handler>> {
        match hint {
            Hint::Unknown(_) => None,
            _ => {
                let kind = hint.kind();
                let via = self.routes.get(kind).map(String::as_str).unwrap_or(kind);
                self.handlers.get(via)
            }
        }
    }

    /// Each hint type and what handles it, for status displays.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.handlers
            .iter()
            .map(|(k, h)| (k.clone(), h.describe()))
            .collect()
    }
}

impl Connector for Registry {
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        match self.handler_for(hint) {
            // Checked on every dial too, not only when handlers are installed.
            Some(h) if self.private && h.reveals_ip() => {
                let refused = ConnectError::Refused {
                    hint: hint.to_string(),
                    reason: "privacy mode forbids connections that reveal the IP address".into(),
                };
                Box::pin(async move { Err(refused) })
            }
            Some(h) => h.connect(hint),
            None if self.routes.contains_key(hint.kind()) => {
                let refused = ConnectError::Refused {
                    hint: hint.to_string(),
                    reason: format!(
                        "{} hints go through the {} handler, and none is configured",
                        hint.kind(),
                        self.routes[hint.kind()]
                    ),
                };
                Box::pin(async move { Err(refused) })
            }
            None => {
                let kind = hint.kind().to_string();
                Box::pin(async move { Err(ConnectError::Unsupported { kind }) })
            }
        }
    }

    fn handler_name(&self, hint: &Hint) -> Option<String> {
        self.handler_for(hint).map(|h| h.describe())
    }
}

/// Writes a key file readable by its owner only (see [`folio_rpc::identity::write_private`]).
#[cfg(any(feature = "tor-system", feature = "i2p"))]
pub(crate) fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    folio_rpc::identity::write_private(path, format!("{text}\n").as_bytes())
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

    #[tokio::test]
    async fn failed_dial_names_the_hint() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let hint: Hint = format!("tcp:127.0.0.1:{port}").parse().unwrap();
        let e = Registry::with_tcp().connect(&hint).await.err().unwrap();
        assert!(
            e.to_string().starts_with(&format!("tcp:127.0.0.1:{port}:")),
            "{e}"
        );
    }
}
