//! A running node: `tahoe run BASEDIR`.
//!
//! [`Node::start`] reads `tahoe.cfg` and `private/`, refuses a configuration that could
//! reveal the IP address of a node that must hide it, builds the handler registry and the
//! Tub, starts the listeners (TCP, onion service, I2P destination), and then the services:
//! an introducer (a node made with `create-introducer`), or a storage server, the
//! introducer client and the storage broker. It also opens the control port that
//! `tahoe status` reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use folio_handlers::{Registry, TcpListener};
use folio_rpc::{
    ErrorChain, Furl, Hint, Host, ReconnectPolicy, ReconnectorState, Swissnum, Tub, TubConfig,
};
use folio_transports::tcp::ListenSpec;
use tracing::{info, warn};

use crate::broker::{unix_secs, Override, StorageBroker};
use crate::config::{Location, NodeConfig, TubPort};
use crate::control::{
    Control, ControlError, ControlRef, IntroducerStatus, Listing, NodeStatus, ProgressRef, SinkRef,
    TransferProgress, TransferReport, UploadRef,
};
use crate::files::{Files, Reporter};
use crate::immutable::EncodingParams;
use crate::introducer::{Announcement, ClientOptions, IntroducerClient, IntroducerService};
use crate::private::{random_bytes, PrivateDir};
use crate::web::{Gateway, Web, WebListener};
use folio_transports::tor::ControlPort;
use folio_transports::tor_launch::{LaunchOptions, LaunchedTor};

/// The software version nodes announce.
pub const VERSION: &str = concat!("folio-tahoe/", env!("CARGO_PKG_VERSION"));

/// The file whose presence marks a base directory as an introducer's (Tahoe's name).
pub const INTRODUCER_MARKER: &str = "tahoe-introducer.tac";
/// The file a running node's web gateway URL is written to (Tahoe's name).
pub const NODE_URL: &str = "node.url";
/// The file whose presence marks a base directory as a client or storage node's.
pub const CLIENT_MARKER: &str = "tahoe-client.tac";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `BASEDIR` is not a node directory.
    #[error("{0} is not a node directory (no {CLIENT_MARKER} or {INTRODUCER_MARKER}); make one with `tahoe create-node`, `create-client` or `create-introducer`")]
    NotANode(String),
    /// `tahoe.cfg` is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The configuration would reveal the IP address of a node that must hide it.
    #[error("refusing to start: {0}")]
    Privacy(crate::config::PrivacyError),
    /// A file in `private/` is missing or wrong.
    #[error(transparent)]
    Private(#[from] crate::private::PrivateError),
    /// A handler could not be set up.
    #[error("{0}")]
    Handler(String),
    /// A listener could not start.
    #[error("{0}")]
    Listen(String),
    /// The storage server could not start.
    #[error("storage: {0}")]
    Storage(String),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// A running node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    tub: Tub,
    kind: &'static str,
    nickname: String,
    hide_ip: bool,
    listeners: Vec<String>,
    /// Asked afresh for each status: a handler's description can change (Tor bootstrapping).
    registry: Arc<Registry>,
    introducer: Option<IntroducerService>,
    client: Option<IntroducerClient>,
    broker: Option<Arc<StorageBroker>>,
    storage_enabled: bool,
    control_furl: Furl,
    basedir: PathBuf,
    files: Option<Files>,
    launched_tor: std::sync::Mutex<Option<LaunchedTor>>,
    /// The embedded I2P router (`[i2p] enabled` with no `sam.port`), stopped at shutdown.
    embedded_i2p: std::sync::Mutex<Option<EmbeddedI2p>>,
    /// The web gateway (`[node] web.port`), stopped at shutdown.
    web: std::sync::Mutex<Option<Web>>,
}

/// The Tub settings of a node: keepalives, and a disconnect timeout because over Tor and
/// I2P a vanished peer can leave a stream open on our side indefinitely. A storage server or
/// introducer serves many clients: it holds up to 16,384 connections (docs/performance.md
/// measures 10,000 idle ones on two cores).
pub fn node_tub_config() -> TubConfig {
    TubConfig::default()
        .keepalive(Some(Duration::from_secs(60)))
        .disconnect_timeout(Some(Duration::from_secs(180)))
        .max_connections(16_384)
        // The control object's `download` and `finish` run as long as a whole transfer
        // over Tor or I2P takes, beyond any fixed cap; every other call a node serves ends
        // by itself or at its caller's deadline (protocol version 2), and what a node's
        // methods wait for (calls to peers) has its own `call_timeout`.
        .max_call_duration(None)
}

/// How a node reconnects to its introducers and storage servers.
pub fn node_reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::default().max(Duration::from_secs(300))
}

impl Node {
    /// Starts the node in `basedir`.
    pub async fn start(basedir: &Path) -> Result<Node, StartError> {
        let kind = if basedir.join(INTRODUCER_MARKER).exists() {
            "introducer"
        } else if basedir.join(CLIENT_MARKER).exists() {
            "node"
        } else {
            return Err(StartError::NotANode(basedir.display().to_string()));
        };
        let cfg = NodeConfig::load(&basedir.join("tahoe.cfg"))?;
        let hide_ip = !cfg.node.reveal_ip;
        if hide_ip {
            cfg.check_privacy().map_err(StartError::Privacy)?;
        }
        let private = PrivateDir::open(basedir)?;
        let identity = private.identity()?;

        let tor_password = private.tor_control_password()?;
        let (registry, tor, i2p) = build_registry(&cfg, basedir, hide_ip, tor_password).await?;
        let registry = Arc::new(registry);
        let tub = Tub::new(identity, registry.clone(), node_tub_config())
            .map_err(|e| StartError::Other(format!("making the Tub: {}", ErrorChain(&e))))?;
        info!(tubid = %tub.tubid(), kind, "starting");

        let mut listeners = Vec::new();
        let mut auto_hints = Vec::new();
        start_listeners(
            &cfg,
            basedir,
            &tor,
            i2p.sam.as_ref(),
            &tub,
            &mut listeners,
            &mut auto_hints,
        )
        .await?;
        let location = match &cfg.node.tub_location {
            Location::Disabled => Vec::new(),
            Location::Hints(h) => h.clone(),
            Location::Auto => auto_hints,
            Location::AutoAnd(extra) => {
                let mut h = auto_hints;
                h.extend(extra.iter().cloned());
                h
            }
        };
        tub.set_location(location.clone());

        // Services.
        let (mut introducer, mut client, mut broker, mut storage_enabled, mut files) =
            (None, None, None, false, None);
        if kind == "introducer" {
            let limits = cfg.introducer.limits();
            info!(?limits, "introducer limits ([introducer] in tahoe.cfg)");
            let svc = IntroducerService::new(limits);
            let name = private.swissnum_for("introducer.furl")?;
            let furl = tub
                .register_as(svc.serve(), name.as_str())
                .map_err(|e| StartError::Other(e.to_string()))?;
            private.save_furl("introducer.furl", &furl)?;
            info!(%furl, "introducer ready (FURL also in private/introducer.furl)");
            introducer = Some(svc);
        } else {
            if cfg.line("introducer", "").is_some() {
                warn!("tahoe.cfg has an [introducer] section, which only an introducer node (create-introducer) reads; ignored");
            }
            let mut publish = Vec::new();
            if cfg.storage.enabled {
                if location.is_empty() {
                    return Err(StartError::Storage(
                        "a storage server needs a location peers can reach: set [node] tub.port and tub.location, or `[storage] enabled = false`".into(),
                    ));
                }
                let furl = start_storage(&cfg, basedir, &tub, &private)?;
                let key = private.signing_key()?;
                let ann = Announcement {
                    service: "storage".into(),
                    nickname: cfg.node.nickname.clone(),
                    version: VERSION.into(),
                    seqnum: private.next_seqnum()?,
                    nonce: random_bytes(),
                    furl: Some(furl.to_string()),
                    permutation_seed: Some(permutation_seed(&key.public())),
                };
                publish.push(ann.sign(&key));
                storage_enabled = true;
            }
            let overrides = cfg
                .server_overrides
                .iter()
                .map(|o| Override {
                    tubid: o.tubid,
                    nickname: o.nickname.clone(),
                    hints: o.hints.clone(),
                    furl: o.furl.clone(),
                })
                .collect();
            // `[server:TUBID] tcp` is not in the override: build_registry made it the
            // registry's rule for that TubId, which every dial to the server follows.
            let b = StorageBroker::new(tub.clone(), node_reconnect_policy(), overrides);
            if cfg.client.introducers.is_empty() {
                warn!("no introducer configured ([client] introducer.furl): this node will only know the servers named by [server:TUBID] furl and those in its announcement cache");
            }
            let c = IntroducerClient::start(
                &tub,
                ClientOptions {
                    introducers: cfg.client.introducers.clone(),
                    publish,
                    subscribe: vec!["storage".into()],
                    cache: Some(private.file("introducer_cache.json")),
                    policy: node_reconnect_policy(),
                    max_announcements: usize::try_from(cfg.client.max_servers)
                        .unwrap_or(usize::MAX),
                },
                b.sink(),
            );
            let params = EncodingParams::new(
                cfg.client.shares_needed,
                cfg.client.shares_happy,
                cfg.client.shares_total,
            )
            .map_err(|e| StartError::Other(format!("[client] shares.*: {}", ErrorChain(&e))))?;
            let tmp = basedir.join("tmp");
            // Spools left by a crash.
            if let Ok(entries) = std::fs::read_dir(&tmp) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("upload-") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            files = Some(Files {
                broker: b.clone(),
                params,
                private: private.clone(),
                tmp,
                recent: Arc::default(),
            });
            client = Some(c);
            broker = Some(b);
        }

        // The control port, on loopback only.
        let _ = std::fs::remove_file(private.file("control.furl"));
        let spec: ListenSpec = "tcp:0:interface=127.0.0.1"
            .parse()
            .map_err(|e| StartError::Listen(format!("control port: {}", ErrorChain(&e))))?;
        let ctl = TcpListener::bind(&spec)
            .await
            .map_err(|e| StartError::Listen(format!("control port: {}", ErrorChain(&e))))?;
        let ctl_hint = ctl.hint_for(Host::Ipv4([127, 0, 0, 1].into()));
        tub.listen(ctl);
        let swiss = Swissnum::random();
        let control_furl = Furl::new(tub.tubid(), vec![ctl_hint], swiss.clone());

        // The web gateway's port, bound now so that a port in use stops the start here.
        let _ = std::fs::remove_file(basedir.join(NODE_URL));
        let web_listener = match &cfg.node.web_port {
            Some(spec) => Some(WebListener::bind(spec).await.map_err(|e| {
                StartError::Listen(format!(
                    "{}; choose another port in [node] web.port (tcp:0:interface=127.0.0.1 \
                     lets the system pick one) or set web.port = none",
                    ErrorChain(&e)
                ))
            })?),
            None => None,
        };
        if web_listener
            .as_ref()
            .is_some_and(|l| !l.local_addr().ip().is_loopback())
        {
            warn!(
                "the web gateway listens beyond loopback: anyone who can reach it can use \
                 every capability given to it"
            );
        }

        let node = Node {
            inner: Arc::new(Inner {
                tub: tub.clone(),
                kind,
                nickname: cfg.node.nickname.clone(),
                hide_ip,
                listeners,
                registry,
                introducer,
                client,
                broker,
                storage_enabled,
                control_furl: control_furl.clone(),
                basedir: basedir.to_path_buf(),
                files,
                launched_tor: std::sync::Mutex::new(tor.launched),
                embedded_i2p: std::sync::Mutex::new(i2p.router),
                web: std::sync::Mutex::new(None),
            }),
        };
        tub.register_as(
            ControlRef::serve(ControlObject(Arc::downgrade(&node.inner))),
            swiss.as_str(),
        )
        .map_err(|e| StartError::Other(e.to_string()))?;
        private.save_furl("control.furl", &control_furl)?;
        if let Some(listener) = web_listener {
            let weak = Arc::downgrade(&node.inner);
            let gateway = Gateway::new(
                Box::new(move || weak.upgrade().map(|i| status_of(&i))),
                node.inner.files.clone(),
                node.inner.broker.clone(),
            );
            let web = listener.serve(gateway);
            let url_file = basedir.join(NODE_URL);
            std::fs::write(&url_file, format!("{}\n", web.url())).map_err(|e| {
                StartError::Other(format!(
                    "writing {}: {}",
                    url_file.display(),
                    ErrorChain(&e)
                ))
            })?;
            *crate::broker::lock(&node.inner.web) = Some(web);
        }
        Ok(node)
    }

    /// The node's Tub.
    pub fn tub(&self) -> &Tub {
        &self.inner.tub
    }

    /// The storage broker (client and storage nodes).
    pub fn broker(&self) -> Option<&Arc<StorageBroker>> {
        self.inner.broker.as_ref()
    }

    /// The control FURL (also in `private/control.furl`).
    pub fn control_furl(&self) -> &Furl {
        &self.inner.control_furl
    }

    /// Uploads the file at `path` to the grid (a client or storage node).
    pub async fn upload_path(
        &self,
        path: &Path,
        progress: Arc<dyn Fn(TransferProgress) + Send + Sync>,
    ) -> Result<TransferReport, ControlError> {
        let files = self.inner.files.as_ref().ok_or(ControlError::NotAClient)?;
        files.upload_path(path, Reporter::Local(progress)).await
    }

    /// Downloads the file `cap` names into `out`.
    pub async fn download_to<W: tokio::io::AsyncWrite + Unpin + Send>(
        &self,
        cap: &str,
        out: W,
        progress: Arc<dyn Fn(TransferProgress) + Send + Sync>,
    ) -> Result<TransferReport, ControlError> {
        let files = self.inner.files.as_ref().ok_or(ControlError::NotAClient)?;
        files.download_to(cap, out, Reporter::Local(progress)).await
    }

    /// The node's files and directories on the grid (a client or storage node).
    pub fn files(&self) -> Result<&Files, ControlError> {
        self.inner.files.as_ref().ok_or(ControlError::NotAClient)
    }

    /// What the node sees.
    pub fn status(&self) -> NodeStatus {
        status_of(&self.inner)
    }

    /// Stops reconnecting, closes every connection and listener.
    pub async fn shutdown(&self) {
        if let Some(c) = &self.inner.client {
            c.stop();
        }
        if let Some(b) = &self.inner.broker {
            b.stop();
        }
        let web = crate::broker::lock(&self.inner.web).take();
        if let Some(web) = web {
            web.stop().await;
            let _ = std::fs::remove_file(self.inner.basedir.join(NODE_URL));
        }
        self.inner.tub.shutdown().await;
        let tor = crate::broker::lock(&self.inner.launched_tor).take();
        if let Some(mut tor) = tor {
            tor.stop().await;
        }
        let router = crate::broker::lock(&self.inner.embedded_i2p).take();
        if let Some(router) = router {
            // The goodbyes just sent are in the router's hands, not yet through its tunnels:
            // a moment for them to leave, so peers learn at once that this node stopped
            // instead of after their disconnect timeout.
            tokio::time::sleep(EMBEDDED_I2P_GOODBYE_GRACE).await;
            stop_embedded_i2p(router).await;
        }
        let _ = std::fs::remove_file(self.inner.basedir.join("private").join("control.furl"));
        info!("stopped");
    }
}

fn status_of(inner: &Inner) -> NodeStatus {
    let introducers = inner
        .client
        .as_ref()
        .map(|c| {
            c.connections()
                .into_iter()
                .map(|ic| {
                    let (connected, since, next_attempt) = match ic.status.state {
                        ReconnectorState::Connected { since } => {
                            (true, Some(unix_secs(since)), None)
                        }
                        ReconnectorState::Waiting { next_attempt } => {
                            (false, None, Some(unix_secs(next_attempt)))
                        }
                        _ => (false, None, None),
                    };
                    IntroducerStatus {
                        name: ic.name,
                        tubid: ic.furl.tubid().to_string(),
                        connected,
                        since,
                        last_error: ic.status.last_error,
                        next_attempt,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    NodeStatus {
        kind: inner.kind.into(),
        nickname: inner.nickname.clone(),
        tubid: inner.tub.tubid().to_string(),
        version: VERSION.into(),
        location: inner.tub.location().iter().map(Hint::to_string).collect(),
        listeners: inner.listeners.clone(),
        handlers: inner.registry.describe(),
        hide_ip: inner.hide_ip,
        introducers,
        storage_servers: inner
            .broker
            .as_ref()
            .map(|b| b.status())
            .unwrap_or_default(),
        storage_enabled: inner.storage_enabled,
        announcements: inner
            .introducer
            .as_ref()
            .map(|i| (i.announcements().len() as u64, i.subscriber_count() as u64)),
    }
}

struct ControlObject(std::sync::Weak<Inner>);

impl Control for ControlObject {
    async fn status(&self) -> Result<NodeStatus, ControlError> {
        let inner = self.0.upgrade().ok_or(ControlError::ShuttingDown)?;
        Ok(status_of(&inner))
    }

    async fn upload(&self) -> Result<UploadRef, ControlError> {
        let inner = self.0.upgrade().ok_or(ControlError::ShuttingDown)?;
        let files = inner.files.as_ref().ok_or(ControlError::NotAClient)?;
        Ok(UploadRef::serve(files.spool().await?))
    }

    async fn download(
        &self,
        cap: String,
        sink: SinkRef,
        progress: ProgressRef,
    ) -> Result<TransferReport, ControlError> {
        let files = {
            let inner = self.0.upgrade().ok_or(ControlError::ShuttingDown)?;
            inner.files.clone().ok_or(ControlError::NotAClient)?
        };
        files.download_to_sink(&cap, sink, progress).await
    }

    async fn list(&self, root: String, path: Vec<String>) -> Result<Listing, ControlError> {
        self.files()?.list(&root, &path).await
    }

    async fn mkdir(&self, root: Option<String>, path: Vec<String>) -> Result<String, ControlError> {
        self.files()?.mkdir(root.as_deref(), &path).await
    }

    async fn link(
        &self,
        root: String,
        path: Vec<String>,
        cap: String,
        replace: bool,
    ) -> Result<(), ControlError> {
        self.files()?.link(&root, &path, &cap, replace).await
    }

    async fn unlink(&self, root: String, path: Vec<String>) -> Result<String, ControlError> {
        self.files()?.unlink(&root, &path).await
    }

    async fn rename(
        &self,
        from: (String, Vec<String>),
        to: (String, Vec<String>),
    ) -> Result<(), ControlError> {
        self.files()?
            .rename((&from.0, &from.1), (&to.0, &to.1))
            .await
    }
}

impl ControlObject {
    /// The node's file side, without keeping the node alive across the call's await.
    fn files(&self) -> Result<Files, ControlError> {
        let inner = self.0.upgrade().ok_or(ControlError::ShuttingDown)?;
        inner.files.clone().ok_or(ControlError::NotAClient)
    }
}

/// A storage server's permutation seed: a hash of its announcement key.
pub fn permutation_seed(key: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"folio-permutation-seed-v1\0");
    ctx.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// How the node launches its own tor (`[tor] launch = true`): `tor.executable` or `tor`,
/// state in `private/tor-statedir`.
pub fn tor_launch_options(cfg: &NodeConfig, basedir: &Path) -> LaunchOptions {
    let mut opts = LaunchOptions::new(basedir.join("private").join("tor-statedir"));
    if let Some(exe) = &cfg.tor.executable {
        opts.executable = exe.clone();
    }
    opts
}

/// Where the embedded Tor client keeps its state and cache: `private/arti` (its keystore
/// holds the onion service's key).
#[cfg(feature = "tor-arti")]
pub fn arti_options(basedir: &Path) -> folio_transports::arti::ArtiOptions {
    folio_transports::arti::ArtiOptions::new(basedir.join("private").join("arti"))
}

/// The nickname of the node's onion service in the embedded client's keystore.
#[cfg(feature = "tor-arti")]
pub const ARTI_ONION_NICKNAME: &str = "folio";

/// The Tor the node uses, if any: a tor it launched, a running tor's control port, or the
/// embedded client.
#[derive(Default)]
struct TorRuntime {
    launched: Option<LaunchedTor>,
    control: Option<ControlPort>,
    #[cfg(feature = "tor-arti")]
    arti: Option<folio_transports::arti::ArtiTor>,
}

/// The embedded I2P router's type (a type with no values when built without it).
#[cfg(feature = "i2p-embedded")]
type EmbeddedI2p = folio_transports::i2p_embedded::EmbeddedRouter;
#[cfg(not(feature = "i2p-embedded"))]
type EmbeddedI2p = std::convert::Infallible;

/// The I2P the node uses, if any: the SAM bridge, and the embedded router behind it when
/// there is no `sam.port`.
#[derive(Default)]
struct I2pRuntime {
    sam: Option<folio_transports::i2p::SamConfig>,
    router: Option<EmbeddedI2p>,
}

/// How long a stopping node keeps its embedded I2P router running after its Tub has said
/// goodbye to its peers, so that the goodbyes get through the router's tunnels.
pub const EMBEDDED_I2P_GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Where the embedded I2P router keeps its keys, RouterInfo and netDb: `private/i2p-router`.
pub fn i2p_router_dir(basedir: &Path) -> PathBuf {
    basedir.join("private").join("i2p-router")
}

/// Starts the embedded I2P router (`[i2p] enabled` with no `sam.port`) and returns it with
/// its SAM bridge's settings: on the private network `[i2p] router.network` describes (no
/// reseed), or else on the public I2P network, from the netDb kept in
/// `private/i2p-router/netdb/`, reseeding over HTTPS (from `[i2p] router.reseed`, or the
/// I2P reseed servers built in) when that knows too few routers.
#[cfg(feature = "i2p-embedded")]
async fn embedded_i2p(
    cfg: &NodeConfig,
    basedir: &Path,
) -> Result<(folio_transports::i2p::SamConfig, EmbeddedI2p), StartError> {
    use folio_transports::i2p_embedded::{EmbeddedRouter, Network, RouterOptions};
    let network = match &cfg.i2p.router_network {
        Some(file) => Network::from_file(&basedir.join(file)).map_err(|e| {
            StartError::Handler(format!("[i2p] router.network: {}", ErrorChain(&e)))
        })?,
        None => Network::Public { seeds: vec![] },
    };
    let public = matches!(network, Network::Public { .. });
    let mut opts = RouterOptions::new(i2p_router_dir(basedir), network);
    opts.thread_name = "i2p-router".into();
    if let Some(reseed) = opts.reseed.as_mut() {
        if !cfg.i2p.router_reseed.is_empty() {
            reseed.servers = cfg.i2p.router_reseed.clone();
        }
    }
    let router = tokio::task::spawn_blocking(move || EmbeddedRouter::start(opts))
        .await
        .map_err(|e| {
            StartError::Other(format!(
                "the embedded I2P router's start: {}",
                ErrorChain(&e)
            ))
        })?
        .map_err(|e| StartError::Handler(format!("i2p (embedded router): {}", ErrorChain(&e))))?;
    info!(
        router_id = %router.router_id(),
        sam = ?router.sam(),
        ntcp2 = %router.ntcp2(),
        known_routers = router.known_at_start(),
        reseeded = ?router.reseeded(),
        "started the embedded I2P router ({})",
        if public { "public network" } else { "private network" }
    );
    Ok((tunnel_options(cfg, router.sam_config()), router))
}

#[cfg(not(feature = "i2p-embedded"))]
async fn embedded_i2p(
    _cfg: &NodeConfig,
    _basedir: &Path,
) -> Result<(folio_transports::i2p::SamConfig, EmbeddedI2p), StartError> {
    Err(StartError::Handler(
        "[i2p] enabled with no sam.port needs the embedded I2P router, and this tahoe was \
         built without it (cargo feature i2p-embedded): set [i2p] sam.port to a running I2P \
         router's SAM bridge"
            .into(),
    ))
}

#[cfg(feature = "i2p-embedded")]
async fn stop_embedded_i2p(router: EmbeddedI2p) {
    match tokio::task::spawn_blocking(move || router.stop()).await {
        Ok(Ok(())) => info!("stopped the embedded I2P router"),
        Ok(Err(e)) => warn!("the embedded I2P router: {}", ErrorChain(&e)),
        Err(e) => warn!("stopping the embedded I2P router: {e}"),
    }
}

#[cfg(not(feature = "i2p-embedded"))]
async fn stop_embedded_i2p(router: EmbeddedI2p) {
    match router {}
}

/// The registry, the Tor it dials through, and its I2P.
async fn build_registry(
    cfg: &NodeConfig,
    basedir: &Path,
    hide_ip: bool,
    tor_password: Option<crate::private::Password>,
) -> Result<(Registry, TorRuntime, I2pRuntime), StartError> {
    let policy = |e: folio_handlers::PolicyError| StartError::Handler(e.to_string());
    let mut reg = if hide_ip {
        Registry::private()
    } else {
        Registry::with_tcp()
    };
    let mut tor = TorRuntime {
        control: cfg.tor.control_port.map(|addr| match &tor_password {
            Some(p) => ControlPort::new(addr).with_password(p.expose()),
            None => ControlPort::new(addr),
        }),
        ..TorRuntime::default()
    };
    if cfg.tor.enabled && cfg.tor.launch {
        let launched = LaunchedTor::start(&tor_launch_options(cfg, basedir))
            .await
            .map_err(|e| {
                StartError::Handler(format!("tor: [tor] launch = true: {}", ErrorChain(&e)))
            })?;
        info!(control = %launched.control(), pid = ?launched.pid(), "launched tor");
        tor.control = Some(ControlPort::new(launched.control()));
        tor.launched = Some(launched);
    }
    if cfg.tor.enabled {
        let handler: Arc<dyn folio_handlers::Handler> = if let Some(control) = &tor.control {
            Arc::new(
                folio_handlers::tor::TorHandler::from_control(control.clone())
                    .await
                    .map_err(|e| {
                        let which = if tor.launched.is_some() {
                            "of the tor this node launched"
                        } else {
                            "([tor] control.port)"
                        };
                        StartError::Handler(format!(
                            "tor: the control port {control} {which}: {}",
                            ErrorChain(&e)
                        ))
                    })?,
            )
        } else if let Some(socks) = cfg.tor.socks_port {
            Arc::new(folio_handlers::tor::TorHandler::new(socks))
        } else {
            embedded_tor(cfg, basedir, &mut tor)?
        };
        reg.set("tor", handler).map_err(policy)?;
    }
    let mut i2p = I2pRuntime::default();
    if cfg.i2p.enabled {
        let handler = match sam_config(cfg) {
            Some(sam) => {
                i2p.sam = Some(sam.clone());
                folio_handlers::i2p::I2pHandler::new(sam)
            }
            None => {
                let (sam, router) = embedded_i2p(cfg, basedir).await?;
                i2p.sam = Some(sam.clone());
                i2p.router = Some(router);
                folio_handlers::i2p::I2pHandler::embedded(sam)
            }
        };
        reg.set("i2p", Arc::new(handler)).map_err(policy)?;
    }
    reg.set_tcp_policy(cfg.connections.tcp).map_err(policy)?;
    // `[server:TUBID] tcp`: a rule for dials to that TubId only, whoever asks for them.
    for o in &cfg.server_overrides {
        if let Some(p) = o.tcp {
            reg.set_peer_tcp_policy(o.tubid, p)
                .map_err(|e| StartError::Handler(format!("[server:{}] tcp: {e}", o.tubid)))?;
        }
    }
    Ok((reg, tor, i2p))
}

/// The handler for `[tor] enabled = true` with no tor named: the embedded client, which
/// starts bootstrapping now.
#[cfg(feature = "tor-arti")]
fn embedded_tor(
    cfg: &NodeConfig,
    basedir: &Path,
    tor: &mut TorRuntime,
) -> Result<Arc<dyn folio_handlers::Handler>, StartError> {
    let mut opts = arti_options(basedir);
    if let Some(file) = &cfg.tor.arti_network {
        let path = basedir.join(file);
        let failed = |e: &dyn std::fmt::Display| {
            StartError::Handler(format!("[tor] arti.network {}: {e}", path.display()))
        };
        // Read through the parser's own bound (a larger file is refused, not read whole).
        let max = folio_transports::tor_network::MAX_NETWORK_FILE as u64;
        let text = folio_rpc::identity::read_text_bounded(&path, max).map_err(|e| failed(&e))?;
        let net =
            folio_transports::tor_network::PrivateNetwork::parse(&text).map_err(|e| failed(&e))?;
        opts.network = Some(net);
    }
    let arti = folio_transports::arti::ArtiTor::start(&opts)
        .map_err(|e| StartError::Handler(format!("tor (embedded): {}", ErrorChain(&e))))?;
    info!(
        private_network = opts.network.is_some(),
        "started the embedded Tor client"
    );
    tor.arti = Some(arti.clone());
    Ok(Arc::new(folio_handlers::arti::ArtiHandler::new(arti)))
}

#[cfg(not(feature = "tor-arti"))]
fn embedded_tor(
    _cfg: &NodeConfig,
    _basedir: &Path,
    _tor: &mut TorRuntime,
) -> Result<Arc<dyn folio_handlers::Handler>, StartError> {
    Err(StartError::Handler(
        "[tor] enabled = true with no control.port, socks.port or launch needs the embedded \
         Tor client, and this tahoe was built without it (cargo feature tor-arti)"
            .into(),
    ))
}

/// The onion service of the embedded client (`[tor] onion = true` with no tor named).
#[cfg(feature = "tor-arti")]
fn embedded_onion(
    cfg: &NodeConfig,
    tor: &TorRuntime,
) -> Result<(Hint, String, Box<dyn folio_rpc::Listener>), StartError> {
    if let Some(p) = cfg.tor.onion_local_port {
        warn!(
            onion_local_port = p,
            "[tor] onion.local_port is ignored: the embedded Tor client hands streams over \
             in-process, with no local port"
        );
    }
    let arti = tor.arti.as_ref().ok_or_else(|| {
        StartError::Listen("[tor] onion = true needs Tor: set [tor] enabled = true".into())
    })?;
    let l = folio_handlers::arti::ArtiOnionListener::start(
        arti,
        ARTI_ONION_NICKNAME,
        cfg.tor.onion_external_port,
    )
    .map_err(|e| {
        StartError::Listen(format!(
            "onion service (embedded Tor client): {}",
            ErrorChain(&e)
        ))
    })?;
    Ok((l.hint(), l.onion().to_string(), Box::new(l)))
}

#[cfg(not(feature = "tor-arti"))]
fn embedded_onion(
    _cfg: &NodeConfig,
    _tor: &TorRuntime,
) -> Result<(Hint, String, Box<dyn folio_rpc::Listener>), StartError> {
    Err(StartError::Listen(
        "[tor] onion = true needs [tor] control.port or launch (this tahoe was built \
         without the embedded Tor client)"
            .into(),
    ))
}

/// The SAM settings from `[i2p]` for a running router's bridge (`sam.port`); `None` when
/// the node runs the embedded router (no `sam.port`).
pub fn sam_config(cfg: &NodeConfig) -> Option<folio_transports::i2p::SamConfig> {
    let bridge = cfg.i2p.sam_port?;
    Some(tunnel_options(
        cfg,
        folio_transports::i2p::SamConfig::new(bridge),
    ))
}

/// `sam` with `[i2p]`'s tunnel lengths and quantities, where set.
pub fn tunnel_options(
    cfg: &NodeConfig,
    mut sam: folio_transports::i2p::SamConfig,
) -> folio_transports::i2p::SamConfig {
    if let Some(v) = cfg.i2p.inbound_length {
        sam.inbound_length = v;
    }
    if let Some(v) = cfg.i2p.outbound_length {
        sam.outbound_length = v;
    }
    if let Some(v) = cfg.i2p.inbound_quantity {
        sam.inbound_quantity = v;
    }
    if let Some(v) = cfg.i2p.outbound_quantity {
        sam.outbound_quantity = v;
    }
    sam
}

async fn start_listeners(
    cfg: &NodeConfig,
    basedir: &Path,
    tor: &TorRuntime,
    i2p_sam: Option<&folio_transports::i2p::SamConfig>,
    tub: &Tub,
    listeners: &mut Vec<String>,
    auto_hints: &mut Vec<Hint>,
) -> Result<(), StartError> {
    let specs: Vec<ListenSpec> = match &cfg.node.tub_port {
        TubPort::Disabled => Vec::new(),
        TubPort::Listen(specs) => specs.clone(),
        TubPort::Default => vec!["tcp:0".parse().expect("a valid listen spec")],
    };
    for spec in specs {
        let l = TcpListener::bind(&spec).await.map_err(|e| {
            StartError::Listen(format!("[node] tub.port {spec}: {}", ErrorChain(&e)))
        })?;
        let bound = l.local_spec();
        for ip in auto_addresses(&bound) {
            auto_hints.push(l.hint_for(ip));
        }
        listeners.push(bound.to_string());
        info!(on = %bound, "listening");
        tub.listen(l);
    }
    if cfg.tor.onion {
        let (hint, describe, listener): (Hint, String, Box<dyn folio_rpc::Listener>) =
            if let Some(control) = tor.control.clone() {
                let key = basedir.join(&cfg.tor.onion_private_key_file);
                let port = cfg.tor.onion_external_port;
                let local = cfg.tor.onion_local_port.unwrap_or(0);
                let l = folio_handlers::tor::OnionListener::start_on(control, &key, port, local)
                    .await
                    .map_err(|e| {
                        StartError::Listen(format!("onion service: {}", ErrorChain(&e)))
                    })?;
                (l.hint(), l.onion().to_string(), Box::new(l))
            } else {
                embedded_onion(cfg, tor)?
            };
        auto_hints.push(hint.clone());
        listeners.push(hint.to_string());
        info!(onion = %describe, "listening as an onion service");
        tub.listen(listener);
    }
    if cfg.i2p.dest {
        if let Some(p) = cfg.i2p.dest_port {
            warn!(
                dest_port = p,
                "[i2p] dest.port is ignored: SAM 3.1 streams (all i2pd 2.45 offers) carry no \
                 port, so the i2p: hint has none"
            );
        }
        let key = basedir.join(&cfg.i2p.dest_private_key_file);
        let sam = i2p_sam.ok_or_else(|| {
            StartError::Listen("[i2p] dest = true needs [i2p] enabled = true".into())
        })?;
        let l = folio_handlers::i2p::I2pListener::start(sam, &key)
            .await
            .map_err(|e| StartError::Listen(format!("I2P destination: {}", ErrorChain(&e))))?;
        auto_hints.push(l.hint());
        listeners.push(l.hint().to_string());
        info!(address = %l.address(), "listening on I2P");
        tub.listen(l);
    }
    Ok(())
}

/// The hosts an `AUTO` location advertises for a TCP listener (see
/// [`folio_transports::tcp::auto_addresses`]: the listener's own address when it is bound to
/// one, else this host's addresses the socket can take, global IPv6 included).
fn auto_addresses(spec: &ListenSpec) -> Vec<Host> {
    let interfaces = folio_transports::tcp::interface_addresses();
    folio_transports::tcp::auto_addresses(spec.addr.ip(), &interfaces)
        .into_iter()
        .map(host_of)
        .collect()
}

fn host_of(ip: std::net::IpAddr) -> Host {
    match ip {
        std::net::IpAddr::V4(a) => Host::Ipv4(a),
        std::net::IpAddr::V6(a) => Host::Ipv6(a),
    }
}

fn start_storage(
    cfg: &NodeConfig,
    basedir: &Path,
    tub: &Tub,
    private: &PrivateDir,
) -> Result<Furl, StartError> {
    let dir = cfg
        .storage
        .storage_dir
        .clone()
        .map(|d| if d.is_absolute() { d } else { basedir.join(d) })
        .unwrap_or_else(|| basedir.join("storage"));
    let storage = crate::storage::Storage::open(crate::storage::StorageConfig {
        dir,
        reserved_space: cfg.storage.reserved_space,
        max_space_per_client: cfg.storage.max_space_per_client,
        ..Default::default()
    })
    .map_err(|e| StartError::Storage(e.to_string()))?;
    let name = private.swissnum_for("storage.furl")?;
    let furl = tub
        .register_as(storage.serve(), name.as_str())
        .map_err(|e| StartError::Other(e.to_string()))?;
    private.save_furl("storage.furl", &furl)?;
    Ok(furl)
}
