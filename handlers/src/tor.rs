//! The `tor:` handler (and `tcp = tor`) through a system tor, and onion-service listeners.
//!
//! Dialing goes through tor's SOCKS port with the host name left to tor. Listening adds an
//! onion service on tor's control port whose virtual port maps to a listener on 127.0.0.1;
//! its key is saved (mode `0600`) and given back at every start, so the `.onion` address
//! survives restarts. Streams from that listener go to the Tub's server side.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use folio_rpc::connector::{AcceptFuture, ConnectError, ConnectFuture, Listener};
use folio_rpc::{BoxStream, Hint};
use folio_transports::tor::{dial, Control, ControlPort, TorError};

use crate::tor_target::tor_target;
use crate::Handler;

/// Dials `tor:` hints (and `tcp:` hints routed over Tor) through a system tor's SOCKS port.
#[derive(Debug, Clone)]
pub struct TorHandler {
    socks: SocketAddr,
    control: Option<ControlPort>,
    timeout: Duration,
}

impl TorHandler {
    /// A handler using tor's SOCKS port at `socks`.
    pub fn new(socks: SocketAddr) -> Self {
        TorHandler {
            socks,
            control: None,
            timeout: Duration::from_secs(120),
        }
    }

    /// A handler for the tor whose control port is `control`: it asks tor where its SOCKS
    /// port is, and before each dial whether tor has finished bootstrapping, so that a dial
    /// made too early fails with tor's progress ("tor is bootstrapping: 45% (Loading relay
    /// descriptors)") instead of a bare SOCKS error. A [`ControlPort`] carries the password
    /// of a tor set up with `HashedControlPassword`; a bare address authenticates with
    /// `NULL` or `SAFECOOKIE` (see [`Control::connect`]).
    pub async fn from_control(control: impl Into<ControlPort>) -> Result<Self, TorError> {
        let control = control.into();
        let mut ctl = Control::connect(control.clone(), Duration::from_secs(30)).await?;
        let socks = ctl.socks_address().await?;
        Ok(TorHandler {
            socks,
            control: Some(control),
            timeout: Duration::from_secs(120),
        })
    }

    async fn check_bootstrapped(&self) -> Result<(), TorError> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        let mut ctl = Control::connect(control.clone(), Duration::from_secs(30)).await?;
        match ctl.bootstrap().await? {
            (100, _) => Ok(()),
            (p, summary) => Err(TorError::Unreachable {
                target: "the Tor network".into(),
                reason: format!("tor is bootstrapping: {p}% ({summary})"),
            }),
        }
    }
}

impl Handler for TorHandler {
    fn describe(&self) -> String {
        match &self.control {
            Some(c) => format!("tor (system tor, SOCKS at {}, control at {c})", self.socks),
            None => format!("tor (system tor, SOCKS at {})", self.socks),
        }
    }

    fn reveals_ip(&self) -> bool {
        false
    }

    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let (host, port) = tor_target(hint)?;
            let failed = |e: TorError| ConnectError::Failed {
                hint: hint.to_string(),
                source: Box::new(e),
            };
            self.check_bootstrapped().await.map_err(failed)?;
            let stream = dial(self.socks, &host, port, self.timeout)
                .await
                .map_err(failed)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Why an onion listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnionListenError {
    /// tor refused or failed.
    #[error(transparent)]
    Tor(#[from] TorError),
    /// The key file could not be read or written.
    #[error("cannot read or write the onion service key {path}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Accepts streams for a Tub at a persistent `.onion` address.
#[derive(Debug)]
pub struct OnionListener {
    _control: Control,
    local: tokio::net::TcpListener,
    onion: String,
    virtual_port: u16,
}

impl OnionListener {
    /// Adds an onion service on the tor whose control port is `control`, with the key saved
    /// at `key_path` (made and saved, mode `0600`, the first time), mapping `virtual_port` to
    /// a new listener on 127.0.0.1.
    pub async fn start(
        control: impl Into<ControlPort>,
        key_path: &Path,
        virtual_port: u16,
    ) -> Result<OnionListener, OnionListenError> {
        Self::start_on(control, key_path, virtual_port, 0).await
    }

    /// Like [`OnionListener::start`], with the listener on 127.0.0.1 at `local_port` (`0`:
    /// any free port), for a firewall or a tor that must know it in advance (Tahoe's
    /// `[tor] onion.local_port`).
    pub async fn start_on(
        control: impl Into<ControlPort>,
        key_path: &Path,
        virtual_port: u16,
        local_port: u16,
    ) -> Result<OnionListener, OnionListenError> {
        let key_err = |source| OnionListenError::Key {
            path: key_path.display().to_string(),
            source,
        };
        let saved = match crate::read_secret(key_path) {
            Ok(k) => Some(k),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(key_err(e)),
        };
        let mut ctl = Control::connect(control, Duration::from_secs(30)).await?;
        // With the same listen backlog as every TCP listener (tor delivers a burst of
        // onion streams as a burst of loopback connections).
        let spec = folio_transports::tcp::ListenSpec {
            addr: (std::net::Ipv4Addr::LOCALHOST, local_port).into(),
        };
        let local = folio_transports::tcp::listen(&spec)
            .await
            .map_err(|e| match e {
                folio_transports::tcp::TcpError::Bind { source, .. } => TorError::Io(source),
                other => TorError::Io(std::io::Error::other(other)),
            })?;
        let target = local.local_addr().map_err(TorError::Io)?;
        let (id, key) = ctl
            .add_onion(saved.as_deref(), virtual_port, target)
            .await?;
        if saved.is_none() {
            crate::write_secret(key_path, &key).map_err(key_err)?;
        }
        Ok(OnionListener {
            _control: ctl,
            local,
            onion: format!("{id}.onion"),
            virtual_port,
        })
    }

    /// The `.onion` name.
    pub fn onion(&self) -> &str {
        &self.onion
    }

    /// The local listener tor forwards the service's streams to (on 127.0.0.1).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.local.local_addr()
    }

    /// The hint to put in the Tub's location.
    pub fn hint(&self) -> Hint {
        Hint::Tor {
            onion: self.onion.clone(),
            port: self.virtual_port,
        }
    }
}

impl Listener for OnionListener {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (s, _) = self.local.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!("tor:{}:{}", self.onion, self.virtual_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_tcp_hint_refused_over_tor() {
        let h = TorHandler::new("127.0.0.1:9".parse().unwrap());
        let hint: Hint = "tcp:127.0.0.1:80".parse().unwrap();
        let e = h.connect(&hint).await.err().unwrap();
        assert!(
            e.to_string().contains("cannot be reached through Tor"),
            "{e}"
        );
    }

    /// A key file over the bound is refused before tor is asked anything (it used to be
    /// read whole, then handed to tor).
    #[tokio::test]
    async fn an_oversized_key_file_is_refused_unread() {
        let dir = std::env::temp_dir().join(format!("folio-onion-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tor_onion.privkey");
        std::fs::write(&path, vec![b'A'; 1024 * 1024]).unwrap();
        // Nothing listens on port 9 of 127.0.0.1 (discard): had the key been taken, the
        // error would be tor's.
        let control: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = OnionListener::start(control, &path, 3457)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OnionListenError::Key { source, .. }
                if source.kind() == std::io::ErrorKind::FileTooLarge),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
