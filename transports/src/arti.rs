//! Tor through an embedded [arti](https://gitlab.torproject.org/tpo/core/arti) client (cargo
//! feature `tor-arti`): no tor daemon to install, configure or keep running.
//!
//! - **dial**: [`ArtiTor::connect`] opens a Tor stream to `host:port`; the host name (a
//!   `.onion` name or a DNS name) is resolved inside Tor, never locally;
//! - **listen**: [`ArtiTor::onion_service`] runs an onion service whose identity key lives in
//!   arti's keystore under the state directory, named by a nickname, so its `.onion` address
//!   survives restarts. [`onion_address`] makes (or reads) that key without touching the
//!   network, so a node knows its address before it first runs.
//!
//! Bootstrapping starts when the client is made and runs in the background (retrying after a
//! failure); [`ArtiTor::status`] says where it is, and a dial made before it is done fails at
//! once with that status rather than hanging.
//!
//! Arti's `DataStream` buffers partial cells until flushed; Folio's TLS layer flushes after
//! each batch of frames, so nothing waits in that buffer.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::config::dir::FallbackDir;
use arti_client::config::onion_service::OnionServiceConfigBuilder;
use arti_client::config::{TorClientConfig, TorClientConfigBuilder};
use arti_client::{DataStream, TorClient};
use futures::{Stream, StreamExt};
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{RunningOnionService, StreamRequest};
use tor_llcrypto::pk::ed25519::Ed25519Identity;
use tor_llcrypto::pk::rsa::RsaIdentity;
use tor_proto::stream::IncomingStreamRequest;

pub use crate::tor_network::{Fallback, PrivateNetwork};

type Runtime = tor_rtcompat::PreferredRuntime;

/// Where arti keeps its files, and which Tor network it joins.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ArtiOptions {
    /// Persistent state: guards, and the keystore holding onion-service identity keys. Keep
    /// it private (mode `0700`); arti refuses a directory others can write to.
    pub state_dir: PathBuf,
    /// The directory cache (consensus, descriptors): safe to delete.
    pub cache_dir: PathBuf,
    /// `None`: the public Tor network. `Some`: a private network (tests, chutney-style).
    pub network: Option<PrivateNetwork>,
}

impl ArtiOptions {
    /// The public Tor network, with state and cache under `dir` (`dir/state`, `dir/cache`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        ArtiOptions {
            state_dir: dir.join("state"),
            cache_dir: dir.join("cache"),
            network: None,
        }
    }
}

/// What went wrong with the embedded Tor client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtiError {
    /// The configuration was refused.
    #[error("arti configuration: {0}")]
    Config(String),
    /// The client could not be created (state directory, keystore, permissions).
    #[error("arti could not start: {0}")]
    Start(String),
    /// Still bootstrapping: no stream can be opened yet.
    #[error("Tor (embedded arti) is bootstrapping: {0}")]
    Bootstrapping(String),
    /// Bootstrapping did not finish in the time allowed.
    #[error("Tor (embedded arti) did not bootstrap within {after:?}: {status}")]
    BootstrapTimeout {
        /// The time allowed.
        after: Duration,
        /// Where bootstrapping was.
        status: String,
    },
    /// Tor could not open the stream.
    #[error("Tor (embedded arti) could not reach {target}: {reason}")]
    Unreachable {
        /// host:port asked for.
        target: String,
        /// arti's reason.
        reason: String,
    },
    /// Opening the stream took too long.
    #[error("Tor (embedded arti) did not reach {target} within {after:?}")]
    Timeout {
        /// host:port asked for.
        target: String,
        /// The time allowed.
        after: Duration,
    },
    /// The onion service could not be set up, or stopped.
    #[error("onion service {nickname}: {reason}")]
    Onion {
        /// The service's nickname.
        nickname: String,
        /// What went wrong.
        reason: String,
    },
}

fn config(opts: &ArtiOptions) -> Result<TorClientConfig, ArtiError> {
    let bad = |what: &str, v: &str| ArtiError::Config(format!("{what} {v:?} is not valid"));
    let mut b = TorClientConfigBuilder::from_directories(&opts.state_dir, &opts.cache_dir);
    if let Some(net) = &opts.network {
        if net.authorities.is_empty() || net.fallbacks.is_empty() {
            return Err(ArtiError::Config(
                "a private network needs at least one authority and one fallback cache".into(),
            ));
        }
        let mut v3idents = Vec::new();
        for a in &net.authorities {
            v3idents.push(RsaIdentity::from_hex(a).ok_or_else(|| bad("authority v3ident", a))?);
        }
        let mut fallbacks = Vec::new();
        for f in &net.fallbacks {
            let mut fb = FallbackDir::builder();
            fb.rsa_identity(RsaIdentity::from_hex(&f.rsa).ok_or_else(|| bad("RSA id", &f.rsa))?)
                .ed_identity(
                    Ed25519Identity::from_base64(&f.ed25519)
                        .ok_or_else(|| bad("Ed25519 id", &f.ed25519))?,
                );
            fb.orports().push(f.orport);
            fallbacks.push(fb);
        }
        let tor_net = b.tor_network();
        tor_net.authorities().set_v3idents(v3idents);
        tor_net.set_fallback_caches(fallbacks);
        b.path_rules()
            .ipv4_subnet_family_prefix(33)
            .ipv6_subnet_family_prefix(129);
    }
    b.build().map_err(|e| ArtiError::Config(e.to_string()))
}

fn service_config(nickname: &str) -> Result<tor_hsservice::OnionServiceConfig, ArtiError> {
    let err = |reason: String| ArtiError::Onion {
        nickname: nickname.to_string(),
        reason,
    };
    OnionServiceConfigBuilder::default()
        .nickname(
            nickname
                .parse()
                .map_err(|e| err(format!("not a valid nickname: {e}")))?,
        )
        .build()
        .map_err(|e| err(e.to_string()))
}

fn hsid_text(hsid: tor_hscrypto::pk::HsId) -> String {
    use safelog::DisplayRedacted as _;
    hsid.display_unredacted().to_string()
}

/// The `.onion` name of the service `nickname` in the keystore of `opts`, making its key
/// first if there is none. Touches no network: a node learns its address at creation.
pub fn onion_address(opts: &ArtiOptions, nickname: &str) -> Result<String, ArtiError> {
    let cfg = config(opts)?;
    let svc = TorClient::<Runtime>::create_onion_service(&cfg, service_config(nickname)?)
        .map_err(|e| ArtiError::Start(e.to_string()))?;
    let hsid = svc
        .generate_identity_key(Default::default())
        .map_err(|e| ArtiError::Onion {
            nickname: nickname.to_string(),
            reason: format!("identity key: {e}"),
        })?;
    Ok(hsid_text(hsid))
}

/// An embedded Tor client. Cloning shares it.
#[derive(Clone)]
pub struct ArtiTor {
    client: Arc<TorClient<Runtime>>,
    last_failure: Arc<Mutex<Option<String>>>,
    _bootstrapper: Arc<BootstrapTask>,
}

struct BootstrapTask(tokio::task::JoinHandle<()>);

impl Drop for BootstrapTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for ArtiTor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtiTor")
            .field("status", &self.status())
            .finish()
    }
}

/// How long to wait after a failed bootstrap before trying again.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(10);

impl ArtiTor {
    /// Makes the client and starts bootstrapping it in the background. Must be called inside
    /// a tokio runtime.
    ///
    /// arti's TLS to relays uses rustls's process-wide `CryptoProvider`; if the application
    /// has installed none, this installs *ring*'s (rustls cannot pick one by itself once both
    /// of its providers are compiled in, as they are beside `folio-rpc`'s post-quantum key
    /// exchange).
    pub fn start(opts: &ArtiOptions) -> Result<ArtiTor, ArtiError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race to another installer is fine: some provider is then installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let cfg = config(opts)?;
        let client = TorClient::builder()
            .config(cfg)
            .create_unbootstrapped()
            .map_err(|e| ArtiError::Start(e.to_string()))?;
        let last_failure = Arc::new(Mutex::new(None));
        let task = {
            let client = client.clone();
            let last_failure = last_failure.clone();
            tokio::spawn(async move {
                loop {
                    match client.bootstrap().await {
                        Ok(()) => {
                            tracing::info!("arti bootstrapped");
                            *last_failure.lock().expect("not poisoned") = None;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "arti bootstrap failed; retrying");
                            *last_failure.lock().expect("not poisoned") = Some(e.to_string());
                            tokio::time::sleep(BOOTSTRAP_RETRY).await;
                        }
                    }
                }
            })
        };
        Ok(ArtiTor {
            client,
            last_failure,
            _bootstrapper: Arc::new(BootstrapTask(task)),
        })
    }

    /// Whether the client can carry traffic.
    pub fn ready(&self) -> bool {
        self.client.bootstrap_status().ready_for_traffic()
    }

    /// Where bootstrapping is, for people: "bootstrapped", or arti's progress and what
    /// blocks it, and the last failure if one is being retried.
    pub fn status(&self) -> String {
        let st = self.client.bootstrap_status();
        if st.ready_for_traffic() {
            return "bootstrapped".into();
        }
        // Its Display leads with the percentage ("8%: handshaking with Tor relays; ...").
        let progress = st.to_string();
        match &*self.last_failure.lock().expect("not poisoned") {
            Some(e) => format!("{progress}; last attempt failed: {e}; retrying"),
            None => progress,
        }
    }

    /// Waits until the client can carry traffic, for at most `timeout`.
    pub async fn wait_bootstrapped(&self, timeout: Duration) -> Result<(), ArtiError> {
        let mut events = self.client.bootstrap_events();
        let wait = async {
            while !self.ready() {
                if events.next().await.is_none() {
                    break;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) if self.ready() => Ok(()),
            _ => Err(ArtiError::BootstrapTimeout {
                after: timeout,
                status: self.status(),
            }),
        }
    }

    /// Opens a Tor stream to `host:port` (a `.onion` name, a DNS name or an address, sent to
    /// Tor as given), giving up after `timeout`. Fails at once while bootstrapping.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<DataStream, ArtiError> {
        if !self.ready() {
            return Err(ArtiError::Bootstrapping(self.status()));
        }
        let target = format!("{host}:{port}");
        match tokio::time::timeout(timeout, self.client.connect((host, port))).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ArtiError::Unreachable {
                target,
                reason: e.to_string(),
            }),
            Err(_) => Err(ArtiError::Timeout {
                target,
                after: timeout,
            }),
        }
    }

    /// Runs the onion service `nickname` (its key made and kept in the keystore the first
    /// time), accepting streams to `virtual_port` only.
    pub fn onion_service(
        &self,
        nickname: &str,
        virtual_port: u16,
    ) -> Result<ArtiOnionService, ArtiError> {
        let err = |reason: String| ArtiError::Onion {
            nickname: nickname.to_string(),
            reason,
        };
        let (running, requests) = self
            .client
            .launch_onion_service(service_config(nickname)?)
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("disabled in the configuration".into()))?;
        let onion = running
            .onion_address()
            .map(hsid_text)
            .ok_or_else(|| err("no identity key".into()))?;
        Ok(ArtiOnionService {
            nickname: nickname.to_string(),
            onion,
            virtual_port,
            requests: Box::pin(tor_hsservice::handle_rend_requests(requests)),
            running,
            _tor: self.clone(),
        })
    }
}

/// A running onion service of an [`ArtiTor`]. Dropping it stops the service.
pub struct ArtiOnionService {
    nickname: String,
    onion: String,
    virtual_port: u16,
    requests: Pin<Box<dyn Stream<Item = StreamRequest> + Send>>,
    running: Arc<RunningOnionService>,
    _tor: ArtiTor,
}

impl std::fmt::Debug for ArtiOnionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtiOnionService")
            .field("onion", &self.onion)
            .field("virtual_port", &self.virtual_port)
            .finish()
    }
}

impl ArtiOnionService {
    /// The `.onion` name.
    pub fn onion(&self) -> &str {
        &self.onion
    }

    /// The port clients connect to.
    pub fn virtual_port(&self) -> u16 {
        self.virtual_port
    }

    /// The service's state, for people (publishing descriptors, running, broken and why).
    pub fn status(&self) -> String {
        let st = self.running.status();
        match st.current_problem() {
            Some(p) => format!("{:?}: {p:?}", st.state()),
            None => format!("{:?}", st.state()),
        }
    }

    /// The next stream a client opened to the virtual port. Streams to other ports (and
    /// non-`BEGIN` requests) are refused the way every onion service refuses them.
    pub async fn accept(&mut self) -> Result<DataStream, ArtiError> {
        loop {
            let Some(req) = self.requests.next().await else {
                return Err(ArtiError::Onion {
                    nickname: self.nickname.clone(),
                    reason: "the service stopped".into(),
                });
            };
            let wanted = matches!(req.request(),
                IncomingStreamRequest::Begin(b) if b.port() == self.virtual_port);
            if !wanted {
                let _ = req.reject(End::new_with_reason(EndReason::DONE)).await;
                continue;
            }
            match req.accept(Connected::new_empty()).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    tracing::debug!(error = %e, onion = %self.onion, "a stream went away before it was accepted");
                }
            }
        }
    }
}
