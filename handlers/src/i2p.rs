//! The `i2p:` handler and listener, through a SAM v3.1 bridge.
//!
//! Listening uses a session with a **saved private key**, so the Tub's `i2p:` address is the
//! same after a restart; its streams arrive over connections this process opened to the
//! bridge, and are handed to the Tub as accepted streams (`Side::Server`), which is exactly
//! the case Foolscap got wrong (Tahoe-LAFS #2861). A listener restarted on a bridge that
//! still holds the key's previous session waits out `DUPLICATE_DEST` (bounded by
//! `SamConfig::duplicate_dest_wait`).
//!
//! **Dialing uses a transient session that is thrown away when it cannot reach a peer.** A
//! router keeps, per local destination, the LeaseSet it looked up for a peer (until it
//! expires, 10 min) and its encrypted (ECIES-ratchet) session with that peer; emissary drops
//! the latter only after 8 min without sending, and every retry counts as sending. So once a
//! peer restarts with the same key, the session that talked to its previous instance gets
//! `CANT_REACH_PEER` for as long as it keeps trying, while a fresh session reaches it at once
//! (`../shared/recipes/emissary-spike/README.md` §5). The handler therefore dials from one
//! transient session, made on first use, and **retires it after `CANT_REACH_PEER` toward a
//! peer it had reached before** (or a bridge that went away, closed, or timed out): the next
//! dial makes a new one. A peer the session never reached leaves it no stale state, so a
//! `CANT_REACH_PEER` toward it (a peer that is down, or whose LeaseSet has not spread yet)
//! keeps the session: retiring on those made a grid that was still starting churn through
//! sessions, each needing new tunnels. A retired
//! session is not closed under the streams it carries: each stream holds it, and it ends
//! with the last of them. The persistent key is never used for dialing, so a listener's
//! restart never leaves the listener itself with stale state about its peers.
//!
//! Measured on a private emissary network (tests/tests/i2p_embedded.rs): a listener restarted
//! with its saved key, on the same router or with its router restarted, is reached again
//! 15.2–15.4 s after it is back: one `CANT_REACH_PEER` (12.5 s), the caller's retry delay,
//! and a new session.
//!
//! Known router quirk (i2pd 2.45, Debian bookworm), which this does not cure: a
//! `SESSION CREATE` with the key of a destination the router still holds answers at once,
//! handing back that destination; once streams had flowed through the old session, streams to
//! the new one are never delivered. `STREAM CONNECT` to it succeeds (so no `CANT_REACH_PEER`
//! comes and no session is retired), and every handshake then times out with nothing
//! received, from the old dialing session and from one that never talked to it alike
//! (`a_listener_restarted_on_the_same_i2pd`, ignored). A listener restarted against the
//! *same running i2pd* keeps its address but is not reachable until the router drops the old
//! destination; restarting the router works.
//!
//! Over I2P a vanished peer can also leave our side of a stream open: give Tubs a keepalive
//! and `disconnect_timeout`.

use std::collections::HashSet;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use folio_rpc::connector::{AcceptFuture, ConnectError, ConnectFuture, Listener};
use folio_rpc::{BoxStream, ErrorChain, Hint};
use folio_transports::i2p::{generate_destination, Destination, SamConfig, SamError, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::Handler;

/// Dials `i2p:` hints through a SAM bridge, from a transient session that is retired after
/// `CANT_REACH_PEER` toward a peer it had reached (see the module documentation).
#[derive(Debug)]
pub struct I2pHandler {
    cfg: SamConfig,
    session: Mutex<Option<Arc<Dialer>>>,
    sessions_made: AtomicU64,
    /// Whose bridge it is, for [`Handler::describe`].
    router: &'static str,
}

impl I2pHandler {
    /// A handler using the bridge and tunnel options in `cfg`.
    pub fn new(cfg: SamConfig) -> Self {
        I2pHandler {
            cfg,
            session: Mutex::new(None),
            sessions_made: AtomicU64::new(0),
            router: "",
        }
    }

    /// A handler using the SAM bridge of this process's embedded router (`cfg` from
    /// `EmbeddedRouter::sam_config`); the same as [`I2pHandler::new`] but for what
    /// [`Handler::describe`] says: "i2p (embedded router, SAM bridge at …)".
    pub fn embedded(cfg: SamConfig) -> Self {
        I2pHandler {
            router: "embedded router, ",
            ..I2pHandler::new(cfg)
        }
    }

    /// Creates the dialing session now instead of on the first dial (i2pd 2.45 takes 20 s to
    /// create one, so a node starting up may want to pay that early, in parallel).
    pub async fn prepare(&self) -> Result<(), SamError> {
        self.session().await.map(|_| ())
    }

    /// How many dialing sessions this handler has made (a new one after each retirement).
    pub fn sessions_made(&self) -> u64 {
        self.sessions_made.load(Ordering::Relaxed)
    }

    async fn session(&self) -> Result<Arc<Dialer>, SamError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(Dialer {
            session: Arc::new(Session::create(&self.cfg, Destination::Transient).await?),
            reached: std::sync::Mutex::new(HashSet::new()),
        });
        self.sessions_made.fetch_add(1, Ordering::Relaxed);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Retires `failed` if it is still the dialing session (a concurrent dial may already
    /// have replaced it): the next dial makes a new one.
    async fn retire(&self, failed: &Arc<Dialer>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
            *slot = None;
        }
    }
}

/// The dialing session, and the peers it has reached (about which its router keeps state).
#[derive(Debug)]
struct Dialer {
    session: Arc<Session>,
    reached: std::sync::Mutex<HashSet<String>>,
}

impl Dialer {
    fn reached(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.reached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a failed `STREAM CONNECT` to a peer calls for a new dialing session: the peer,
/// reached from this session before, cannot be reached from it now (its state about the
/// peer may be stale: the peer may have restarted), or the session's bridge went away,
/// closed the connection or stopped answering.
fn retires_session(e: &SamError, reached_before: bool) -> bool {
    match e {
        SamError::CantReachPeer { .. } => reached_before,
        SamError::BridgeUnreachable { .. }
        | SamError::Io(_)
        | SamError::Closed { .. }
        | SamError::Timeout { .. } => true,
        _ => false,
    }
}

/// A dialed stream, holding its session: a retired session ends with its last stream.
struct DialedStream {
    stream: TcpStream,
    _session: Arc<Session>,
}

impl AsyncRead for DialedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for DialedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Handler for I2pHandler {
    fn describe(&self) -> String {
        // The dialing session's state, without waiting: a dial holds the lock while it
        // makes one.
        let session = match self.session.try_lock() {
            Ok(slot) => match slot.as_ref() {
                Some(d) => format!("dialing session open, {} peers reached", d.reached().len()),
                None if self.sessions_made() == 0 => "no dialing session yet".to_string(),
                None => "dialing session retired, a new one at the next dial".to_string(),
            },
            Err(_) => "dialing session being made".to_string(),
        };
        format!(
            "i2p ({}SAM bridge at {}; {session})",
            self.router, self.cfg.bridge
        )
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
            let dialer = self.session().await.map_err(failed)?;
            match dialer.session.connect(addr).await {
                Ok(stream) => {
                    dialer.reached().insert(addr.clone());
                    Ok(Box::new(DialedStream {
                        stream,
                        _session: dialer.session.clone(),
                    }) as BoxStream)
                }
                Err(e) => {
                    let reached_before = dialer.reached().contains(addr.as_str());
                    if retires_session(&e, reached_before) {
                        tracing::debug!(
                            peer = %addr,
                            "retiring the I2P dialing session after: {}",
                            ErrorChain(&e)
                        );
                        self.retire(&dialer).await;
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
#[non_exhaustive]
pub enum I2pListenError {
    /// The SAM bridge refused or failed.
    #[error(transparent)]
    Sam(#[from] SamError),
    /// The key file could not be read or written.
    #[error("cannot read or write the I2P destination key {path}")]
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
                .map_err(|e| std::io::Error::other(ErrorChain(&e).to_string()))?;
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
        let cfg = SamConfig::new("127.0.0.1:9".parse().unwrap());
        let err = I2pListener::start(&cfg, &path).await.err().unwrap();
        assert!(
            matches!(&err, I2pListenError::Key { source, .. }
                if source.kind() == std::io::ErrorKind::FileTooLarge),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
