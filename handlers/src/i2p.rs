//! The `i2p:` handler and listener, through a SAM v3.1 bridge.
//!
//! Dialing uses one transient session per handler, made on first use (and made again if the
//! bridge went away). Listening uses a session with a **saved private key**, so the Tub's
//! `i2p:` address is the same after a restart; its streams arrive over connections this
//! process opened to the bridge, and are handed to the Tub as accepted streams
//! (`Side::Server`), which is exactly the case Foolscap got wrong (Tahoe-LAFS #2861).
//!
//! Known router quirk (i2pd 2.45, Debian bookworm): a `SESSION CREATE` with the key of a
//! destination the router still holds reuses that destination; if streams had flowed through
//! the old session, streams to the new one are never delivered. A listener restarted against
//! the *same running router* keeps its address but is not reachable until the router drops the
//! old destination (restarting the router works). Over I2P a vanished peer can also leave our
//! side of a stream open: give Tubs a keepalive and `disconnect_timeout`.

use std::path::Path;
use std::sync::Arc;

use folio_rpc::connector::{AcceptFuture, ConnectError, ConnectFuture, Listener};
use folio_rpc::{BoxStream, Hint};
use folio_transports::i2p::{generate_destination, Destination, SamConfig, SamError, Session};
use tokio::sync::Mutex;

use crate::Handler;

/// Dials `i2p:` hints through a SAM bridge.
#[derive(Debug)]
pub struct I2pHandler {
    cfg: SamConfig,
    session: Mutex<Option<Arc<Session>>>,
}

impl I2pHandler {
    /// A handler using the bridge and tunnel options in `cfg`.
    pub fn new(cfg: SamConfig) -> Self {
        I2pHandler {
            cfg,
            session: Mutex::new(None),
        }
    }

    /// Creates the dialing session now instead of on the first dial (i2pd 2.45 takes 20 s to
    /// create one, so a node starting up may want to pay that early, in parallel).
    pub async fn prepare(&self) -> Result<(), SamError> {
        self.session().await.map(|_| ())
    }

    async fn session(&self) -> Result<Arc<Session>, SamError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(Session::create(&self.cfg, Destination::Transient).await?);
        *slot = Some(s.clone());
        Ok(s)
    }

    async fn forget_session(&self) {
        *self.session.lock().await = None;
    }
}

impl Handler for I2pHandler {
    fn describe(&self) -> String {
        format!("i2p (SAM bridge at {})", self.cfg.bridge)
    }

    fn reveals_ip(&self) -> bool {
        // Only the local SAM bridge sees our address; peers see an I2P destination.
        false
    }

    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let Hint::I2p { addr, .. } = hint else {
                return Err(ConnectError::Unsupported {
                    kind: hint.kind().to_string(),
                });
            };
            let failed = |e: SamError| ConnectError::Failed {
                hint: hint.to_string(),
                source: Box::new(e),
            };
            let session = self.session().await.map_err(failed)?;
            match session.connect(addr).await {
                Ok(stream) => Ok(Box::new(stream) as BoxStream),
                Err(e) => {
                    // A session whose bridge went away is made afresh next time.
                    if matches!(
                        e,
                        SamError::BridgeUnreachable { .. }
                            | SamError::Io(_)
                            | SamError::Closed { .. }
                    ) {
                        self.forget_session().await;
                    }
                    Err(failed(e))
                }
            }
        })
    }
}

/// Accepts I2P streams for a Tub at a persistent `.b32.i2p` address.
#[derive(Debug)]
pub struct I2pListener {
    session: Arc<Session>,
}

/// Why an I2P listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum I2pListenError {
    /// The SAM bridge refused or failed.
    #[error("{0}")]
    Sam(#[from] SamError),
    /// The key file could not be read or written.
    #[error("I2P destination key {path}: {source}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl I2pListener {
    /// Starts a session for the destination whose private key is saved at `key_path`,
    /// generating and saving one (mode `0600`) the first time.
    pub async fn start(cfg: &SamConfig, key_path: &Path) -> Result<I2pListener, I2pListenError> {
        let key_err = |source| I2pListenError::Key {
            path: key_path.display().to_string(),
            source,
        };
        let key = match crate::read_secret(key_path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (_public, private) = generate_destination(cfg).await?;
                crate::write_secret(key_path, &private).map_err(key_err)?;
                private
            }
            Err(e) => return Err(key_err(e)),
        };
        let session = Session::create(cfg, Destination::Private(key)).await?;
        Ok(I2pListener {
            session: Arc::new(session),
        })
    }

    /// The `.b32.i2p` address peers reach this listener at.
    pub fn address(&self) -> &str {
        self.session.address()
    }

    /// The hint to put in the Tub's location.
    pub fn hint(&self) -> Hint {
        Hint::I2p {
            addr: self.session.address().to_string(),
            port: None,
        }
    }
}

impl Listener for I2pListener {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (stream, _peer) = self
                .session
                .accept()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!("i2p:{}", self.session.address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file over the bound is refused before the SAM bridge is asked anything (it used
    /// to be read whole, then handed to the bridge).
    #[tokio::test]
    async fn an_oversized_key_file_is_refused_unread() {
        let dir = std::env::temp_dir().join(format!("folio-i2p-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i2p_dest.privkey");
        std::fs::write(&path, vec![b'A'; 1024 * 1024]).unwrap();
        // Nothing listens on port 9 of 127.0.0.1 (discard): had the key been taken, the
        // error would be the bridge's.
        let cfg = SamConfig {
            bridge: "127.0.0.1:9".parse().unwrap(),
            ..SamConfig::default()
        };
        let err = I2pListener::start(&cfg, &path).await.err().unwrap();
        assert!(
            matches!(&err, I2pListenError::Key { source, .. }
                if source.kind() == std::io::ErrorKind::FileTooLarge),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
