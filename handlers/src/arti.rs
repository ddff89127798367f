//! The `tor:` handler (and `tcp = tor`) through an embedded arti client, and its onion-service
//! listener (cargo feature `tor-arti`). No tor daemon is needed.
//!
//! One [`ArtiTor`] serves both: make it once with [`ArtiTor::start`] (it bootstraps in the
//! background), hand a clone to [`ArtiHandler`] for dialing and to [`ArtiOnionListener`] for
//! listening. The onion service's key lives in arti's keystore under the state directory, so
//! its `.onion` address survives restarts.
//!
//! ```no_run
//! use std::sync::Arc;
//! use folio_handlers::arti::{ArtiHandler, ArtiOnionListener};
//! use folio_handlers::{Registry, TcpPolicy};
//! use folio_transports::arti::{ArtiOptions, ArtiTor};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tor = ArtiTor::start(&ArtiOptions::new("private/arti"))?;
//! let mut registry = Registry::private();
//! registry.set("tor", Arc::new(ArtiHandler::new(tor.clone())))?;
//! registry.set_tcp_policy(TcpPolicy::Tor)?;
//! let listener = ArtiOnionListener::start(&tor, "folio", 3457)?;
//! println!("reachable at {}", listener.hint());
//! # Ok(()) }
//! ```

use std::time::Duration;

use folio_rpc::connector::{AcceptFuture, ConnectError, ConnectFuture, Listener};
use folio_rpc::{BoxStream, Hint};
use folio_transports::arti::ArtiOnionService;
pub use folio_transports::arti::{ArtiError, ArtiOptions, ArtiTor};

use crate::tor_target::tor_target;
use crate::Handler;

/// Dials `tor:` hints (and `tcp:` hints routed over Tor) through an embedded arti client.
#[derive(Debug, Clone)]
pub struct ArtiHandler {
    tor: ArtiTor,
    timeout: Duration,
}

impl ArtiHandler {
    /// A handler dialing through `tor`, giving up on a stream after two minutes.
    pub fn new(tor: ArtiTor) -> Self {
        ArtiHandler {
            tor,
            timeout: Duration::from_secs(120),
        }
    }

    /// The embedded client.
    pub fn tor(&self) -> &ArtiTor {
        &self.tor
    }
}

impl Handler for ArtiHandler {
    fn describe(&self) -> String {
        format!("tor (embedded arti, {})", self.tor.status())
    }

    fn reveals_ip(&self) -> bool {
        false
    }

    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let (host, port) = tor_target(hint)?;
            let stream = self
                .tor
                .connect(&host, port, self.timeout)
                .await
                .map_err(|e| ConnectError::Failed {
                    hint: hint.to_string(),
                    source: Box::new(e),
                })?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Accepts streams for a Tub at a persistent `.onion` address served by arti.
#[derive(Debug)]
pub struct ArtiOnionListener {
    service: ArtiOnionService,
}

impl ArtiOnionListener {
    /// Runs the onion service `nickname` of `tor` (its key made the first time and kept in
    /// arti's keystore), accepting streams to `virtual_port`. The service publishes its
    /// descriptor once `tor` has bootstrapped; the address is known at once.
    pub fn start(
        tor: &ArtiTor,
        nickname: &str,
        virtual_port: u16,
    ) -> Result<ArtiOnionListener, ArtiError> {
        Ok(ArtiOnionListener {
            service: tor.onion_service(nickname, virtual_port)?,
        })
    }

    /// The `.onion` name.
    pub fn onion(&self) -> &str {
        self.service.onion()
    }

    /// The hint to put in the Tub's location.
    pub fn hint(&self) -> Hint {
        Hint::Tor {
            onion: self.service.onion().to_string(),
            port: self.service.virtual_port(),
        }
    }

    /// The service's state (publishing, running, or its problem).
    pub fn status(&self) -> String {
        self.service.status()
    }
}

impl Listener for ArtiOnionListener {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let s = self.service.accept().await.map_err(std::io::Error::other)?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!(
            "tor:{}:{} (embedded arti)",
            self.service.onion(),
            self.service.virtual_port()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_before_bootstrap_says_so() {
        let dir = std::env::temp_dir().join(format!("folio-arti-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let mut opts = ArtiOptions::new(&dir);
        // A private network whose only cache does not exist: bootstrapping cannot finish.
        let mut net = folio_transports::arti::PrivateNetwork::default();
        net.authorities.push("0".repeat(40));
        net.fallbacks.push(folio_transports::arti::Fallback::new(
            "1".repeat(40),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "127.0.0.1:9".parse().unwrap(),
        ));
        opts.network = Some(net);
        let tor = ArtiTor::start(&opts).expect("arti starts");
        let h = ArtiHandler::new(tor);
        assert!(
            h.describe().starts_with("tor (embedded arti, "),
            "{}",
            h.describe()
        );
        let onion = folio_transports::arti::onion_address(&opts, "peer").unwrap();
        let hint: Hint = format!("tor:{onion}:3457").parse().unwrap();
        let e = folio_rpc::ErrorChain(&h.connect(&hint).await.err().unwrap()).to_string();
        assert!(e.contains("is bootstrapping"), "{e}");
        // A loopback tcp: hint is refused before arti is asked.
        let local: Hint = "tcp:127.0.0.1:80".parse().unwrap();
        let e = folio_rpc::ErrorChain(&h.connect(&local).await.err().unwrap()).to_string();
        assert!(e.contains("cannot be reached through Tor"), "{e}");
        drop(h);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn onion_address_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("folio-arti-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let opts = ArtiOptions::new(&dir);
        let a = folio_transports::arti::onion_address(&opts, "folio").unwrap();
        assert!(a.ends_with(".onion") && a.len() == 62, "{a}");
        assert_eq!(
            folio_transports::arti::onion_address(&opts, "folio").unwrap(),
            a
        );
        assert_ne!(
            folio_transports::arti::onion_address(&opts, "other").unwrap(),
            a
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
