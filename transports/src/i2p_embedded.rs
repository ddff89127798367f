//! An embedded I2P router (cargo feature `i2p-embedded`):
//! [emissary](https://github.com/altonen/emissary)'s `emissary-core` 0.4, run inside the
//! process on its own thread, so that I2P needs no i2pd, as Tor needs no tor with the
//! embedded arti client.
//!
//! ```no_run
//! use folio_transports::i2p::{Destination, Session};
//! use folio_transports::i2p_embedded::{EmbeddedRouter, Network, RouterOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let seeds = vec!["net/routerInfo-0.dat".into(), "net/routerInfo-1.dat".into()];
//! let router = EmbeddedRouter::start(RouterOptions::new(
//!     "private/i2p-router",
//!     Network::Private { net_id: 77, seeds },
//! ))?;
//! // Folio's own SAM client, pointed at the router's bridge on 127.0.0.1.
//! let session = Session::create(&router.sam_config(), Destination::Transient).await?;
//! println!("{} via {:?}", session.address(), router.sam());
//! router.stop()?;
//! # Ok(()) }
//! ```
//!
//! # Talking to it: its SAM bridge on 127.0.0.1
//!
//! Folio opens and accepts I2P streams through the router's SAMv3 bridge, bound on
//! 127.0.0.1 at a port the caller picks (or any free one), with the same client
//! ([`crate::i2p`]) it uses for i2pd. emissary-core 0.4 has no in-process client API: its
//! `destination` module, which a stream API would sit on, is private; applications reach a
//! router through SAMv3 or I2CP. SAM over loopback costs one local TCP connection per stream
//! and a line of text per command, nothing next to an I2P round trip (0.3–3 s), and it means
//! one I2P client in Folio instead of two: the embedded router and i2pd take the same
//! commands, the handler and listener in `folio-handlers` work unchanged, and a listener
//! still receives its streams over connections it opened (`STREAM ACCEPT`), handed to the
//! Tub as `Side::Server` (Tahoe-LAFS #2861). The bridge is untrusted like any other: its
//! replies are parsed with bounds ([`crate::i2p::read_reply`]).
//!
//! # Runtime: our own adapter, not `emissary-util`
//!
//! emissary-core is generic over a `Runtime` (sockets, timers, tasks, gzip).
//! `emissary-util` 0.4 provides a tokio one, but its dependencies are not optional: `reqwest`
//! with `native-tls` (OpenSSL: `libssl-dev` and `pkg-config` to build, libssl to run),
//! `igd-next` and `natpmp` (UPnP and NAT-PMP port mapping), `netdev`, `rsa`, `x509-parser`,
//! `zip`, `toml`, `tempfile`, and tokio with every feature. They serve HTTPS reseeding and
//! port mapping. A private network needs neither, and a Folio node must not map ports behind
//! the operator's back. The adapter here (`i2p_embedded/runtime.rs`, under 400 lines with its
//! tests) needs tokio, `socket2` (already used for TCP), `flate2`, `rand` 0.10 and `futures`
//! (all three already in the graph through arti or emissary-core), and it adds three bounds
//! emissary-util lacks: listeners on loopback only, dialing held to loopback on a private
//! network, and gzip output bounded (see that file).
//!
//! Build cost, measured on 2026-12-06 on this project's 2-core machine while other builds
//! ran (load 4–8; the CPU times are the steadier figures):
//!
//! | | crates | clean build |
//! |---|---|---|
//! | this crate with `i2p-embedded`: emissary-core + our adapter, from nothing | emissary-core's graph is 108 crates; 35 are new to Folio's workspace (arti, rustls and tokio bring the rest) | debug 1 min 13 s wall, 82 s CPU; release 5 min 11 s wall, 189 s CPU |
//! | of which folio-transports itself, where the router is compiled (it is generic over the runtime) | | debug 19 s (9 s without the feature); release 2 min 01 s wall, 74 s CPU (14 s CPU without) |
//! | emissary-core + emissary-util, tokio "full", tracing-subscriber (the spike, release, from nothing) | 271 built (emissary-util alone adds 146 to emissary-core's graph; about 50 new to Folio's: reqwest, hyper, h2, native-tls and openssl-sys, libz-sys, igd-next, natpmp, netdev, x509-parser, zip, ...) | 4 min 01 s wall, 337 s CPU; needs `libssl-dev` and `pkg-config` installed |
//! | the reseeder added (HTTPS, su3), debug, from nothing, measured the same way: `cargo build -p folio-transports --features i2p-embedded` at the commit before it and after | 143 → 170 crates built (+27: hyper, hyper-util, http, http-body(-util), httparse, want, try-lock, atomic-waker, tokio-rustls, rustls, rustls-pki-types, rustls-webpki, webpki-roots, rsa, num-bigint-dig, pkcs1, pkcs8, ...; all but 8 were already in the workspace through folio-rpc or arti) | 80 s → 86 s user CPU, 11 s → 14 s system; wall 115 s → 307 s, not comparable (load 4 → 6–8) |
//!
//! So the router costs about 60 s of CPU in every release build of folio-transports, and
//! about 10 s in a clean debug one (incremental debug rebuilds after an edit elsewhere in the
//! crate reuse it). Moving the router into a crate of its own would confine that cost to
//! edits of the router itself.
//!
//! # Reseeding, and the netDb
//!
//! On the public network ([`Network::Public`], or any router given
//! [`RouterOptions::reseed`]) the router starts from the RouterInfos kept in its netDb
//! (`<dir>/netdb/`, [`netdb`]); when those are fewer than [`Reseed::reseed_below`] (50: the
//! first start), it first reseeds as I2P routers do ([`reseed`]): `GET
//! <server>/i2pseeds.su3` over HTTPS from the I2P reseed servers, in random order, until 100
//! distinct RouterInfos are in hand or 5 servers were tried; each file is a signed su3
//! archive ([`su3`]) whose RSA-4096/SHA-512 signature must verify against a reseed signer's
//! certificate bundled with this crate. What a reseed brings is saved before the router
//! starts, and what the router learns later is saved by emissary's storage hook (every 15
//! minutes), so a restarted router starts from its netDb and does not reseed; RouterInfos
//! not saved again for 72 hours are dropped as stale, so a router that was off for days
//! reseeds. If a reseed gives nothing and the router knows no router at all, it does not
//! start ([`EmbeddedI2pError::Reseed`]).
//!
//! A private network's routers ([`Network::Private`]) do not reseed by default
//! ([`RouterOptions::new`] gives them no [`RouterOptions::reseed`]; their seeds are their
//! network file's). A test network may give one a reseed pointing at its own reseed server,
//! but only on loopback: a private network's router refuses to start with a reseed server
//! whose host is not a loopback IP address ([`EmbeddedI2pError::PrivateReseed`]), as it
//! dials only loopback addresses.
//!
//! On the public network the router is an ordinary I2P router, and so not hidden itself:
//! reseeding connects to the reseed servers (HTTPS, names looked up through the system's
//! resolver) from the host's IP address, and the router then connects to I2P peers directly
//! from it, as i2pd or Java I2P do; peers learn that this IP address runs an I2P router
//! (emissary publishes no address for it, since it listens on loopback only, but every peer
//! it dials sees the address it dials from). What stays hidden is which destinations it
//! hosts: a node's FURL names its `.b32.i2p` destination, reached through tunnels, never
//! the host's IP address.
//!
//! This is what emissary-util's `Reseeder` does, written here on what Folio already builds
//! instead of its reqwest and OpenSSL: hyper's HTTP/1 client (hyper, hyper-util,
//! http-body-util: 8 crates new to the workspace with webpki-roots) over tokio-rustls with
//! *ring*, the web PKI roots of `webpki-roots`, `rsa` for the signature (already in the graph
//! through arti; *ring* cannot check the unprefixed PKCS#1 signature su3 uses),
//! `rustls-webpki` for the certificates, and a bounded zip reader of our own (see [`su3`] for
//! why not the `zip` crate).
//!
//! # State, kept across restarts
//!
//! In the directory the caller gives ([`RouterOptions::dir`], created mode `0700`):
//!
//! - `router.keys` (mode `0600`): the router's static (X25519) and signing (Ed25519) keys
//!   and its NTCP2 key and IV, made on first start;
//! - `routerInfo.dat`: the router's own RouterInfo, written on every start. emissary pads a
//!   new identity with random bytes, so the keys alone do not give the same router id: the
//!   saved RouterInfo does. It is checked before use (it must parse, and carry this router's
//!   keys); one that does not is ignored with a warning, and the router starts with a new id;
//! - `netdb/routerInfo-<hash>.dat` (with [`RouterOptions::reseed`] only): the other routers'
//!   RouterInfos, from reseeds and from the network ([`netdb`] gives the bounds).
//!
//! Every file is read with a bound ([`MAX_KEYS_FILE`], [`MAX_ROUTER_INFO_FILE`]); RouterInfo
//! bytes (our own and the seeds, which are local files a peer may have influenced) are parsed
//! by emissary's own bounded parser, and a seed that does not parse is skipped by emissary.
//!
//! # Threads, and stopping
//!
//! Each router runs on a thread of its own with a current-thread tokio runtime. emissary's
//! `Router` is a future, but `Router::new` also spawns the SAM server, the netDb, the tunnel
//! manager and more as separate tasks: dropping only the router future would leave them
//! running with their ports bound. [`EmbeddedRouter::stop`] (and dropping it) ends the
//! thread's runtime, which drops every task and closes every socket; the same ports can be
//! bound again at once. Every wait (start, stop) is bounded.

pub mod netdb;
pub mod reseed;
mod runtime;
pub mod su3;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emissary_core::crypto::{SigningPrivateKey, StaticPrivateKey};
use emissary_core::events::Event;
use emissary_core::primitives::RouterInfo;
use emissary_core::router::Router;
use emissary_core::{
    BandwidthConfig, Config, Ntcp2Config, SamConfig as EmissarySam, TransitConfig,
};

use netdb::{NetDb, NetDbStorage};
use reseed::{Reseed, ReseedError};
use runtime::TokioRuntime;
pub use runtime::MAX_GZIP_OUTPUT;

use crate::i2p::SamConfig;

/// The largest `router.keys` file read.
pub const MAX_KEYS_FILE: u64 = 1024;
/// The largest RouterInfo file read (ours or a seed); RouterInfos are 1–2 KiB.
pub const MAX_ROUTER_INFO_FILE: u64 = 64 * 1024;
/// The most seed RouterInfo files read.
pub const MAX_SEEDS: usize = 1024;
/// The public I2P network's id.
pub const PUBLIC_NET_ID: u8 = 2;

const KEYS_MAGIC: &[u8] = b"folio-i2p-router-keys-v1\n";
const KEYS_LEN: usize = 32 + 32 + 32 + 16;

/// Which I2P network the router joins, and the RouterInfos it starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Network {
    /// A private network, all on 127.0.0.1 (tests, demos): its own network id, local peer
    /// addresses allowed, tunnels through routers that share an address allowed, NTCP2
    /// published on 127.0.0.1, and dialing held to loopback. Seeded from the other routers'
    /// RouterInfo files; nothing is fetched unless [`RouterOptions::reseed`] names a reseed
    /// server, which must then be on a loopback IP address.
    Private {
        /// The network id (the public network is 2; NTCP2 refuses peers of another id).
        net_id: u8,
        /// The other routers' RouterInfo files (`routerInfo-*.dat`).
        seeds: Vec<PathBuf>,
    },
    /// The public I2P network (id 2). Starts from its saved netDb, and reseeds over HTTPS
    /// when that holds too few RouterInfos ([`RouterOptions::reseed`], on by default for
    /// this network; see the module documentation). The router's NTCP2 port is not
    /// published (it listens on loopback only), so it reaches peers by dialing out, from the
    /// host's IP address. Not tested against the real network: the machine this was written
    /// on has no internet (reseeding is tested against a local HTTPS server, and the su3
    /// decoder against files signed with a test key, not against a file from a real reseed
    /// server), and whether the public network serves a router that takes no inbound
    /// connections well is still to be seen.
    Public {
        /// More RouterInfo files to start from (none needed).
        seeds: Vec<PathBuf>,
    },
}

/// The largest network file ([`Network::from_file`]) read.
pub const MAX_NETWORK_FILE: u64 = 256 * 1024;

impl Network {
    /// Reads a private network's description (for tests and demos; what
    /// `tests/src/i2pnet.rs` writes): its network id, and the RouterInfo files to seed from,
    /// relative to the file's own directory unless absolute. One item a line; `#` starts a
    /// comment:
    ///
    /// ```text
    /// net_id 77
    /// router router-0/routerInfo.dat
    /// router /var/tmp/net/router-1/routerInfo.dat
    /// ```
    ///
    /// Read with a bound ([`MAX_NETWORK_FILE`], at most [`MAX_SEEDS`] routers); the
    /// RouterInfo files themselves are read when the router starts.
    pub fn from_file(path: &Path) -> Result<Network, EmbeddedI2pError> {
        let bad = |line: usize, reason: String| EmbeddedI2pError::NetworkFile {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let bytes = read_bounded(path, MAX_NETWORK_FILE).map_err(|e| bad(0, e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| bad(0, "not UTF-8 text".into()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (mut net_id, mut seeds) = (None, Vec::new());
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim();
            match key {
                "net_id" => {
                    let id: u8 = value
                        .parse()
                        .map_err(|_| bad(n, format!("net_id {value:?} is not 0 to 255")))?;
                    if id == PUBLIC_NET_ID {
                        return Err(bad(
                            n,
                            format!(
                                "net_id {id} is the public network's; a private one needs another"
                            ),
                        ));
                    }
                    if net_id.replace(id).is_some() {
                        return Err(bad(n, "net_id given twice".into()));
                    }
                }
                "router" if !value.is_empty() => {
                    if seeds.len() == MAX_SEEDS {
                        return Err(bad(n, format!("more than {MAX_SEEDS} routers")));
                    }
                    seeds.push(base.join(value));
                }
                _ => return Err(bad(n, "expected `net_id N` or `router PATH`".to_string())),
            }
        }
        let net_id = net_id.ok_or_else(|| bad(0, "no net_id line".into()))?;
        if seeds.is_empty() {
            return Err(bad(0, "no router line: nothing to join".into()));
        }
        Ok(Network::Private { net_id, seeds })
    }
}

/// How to run an embedded router.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterOptions {
    /// Where its keys and RouterInfo are kept (created, mode `0700`).
    pub dir: PathBuf,
    /// The network and its seeds.
    pub network: Network,
    /// The NTCP2 port on 127.0.0.1 (`0`: any free port, a new one each start).
    pub ntcp2_port: u16,
    /// The SAM bridge's port on 127.0.0.1 (`0`: any free port; read it back with
    /// [`EmbeddedRouter::sam`]).
    pub sam_port: u16,
    /// Run a SAM bridge at all (routers of a test network that host no destinations do not).
    pub sam: bool,
    /// Be a floodfill (store and answer netDb lookups): for the core of a private network.
    pub floodfill: bool,
    /// Carry other routers' tunnels. Off for a router that hosts Folio's destinations: no
    /// other router's tunnels then run through it, so restarting it breaks nobody's tunnels.
    pub transit: bool,
    /// Time allowed for the router to start (keys, ports, RouterInfo, and saving what a
    /// reseed brought to the netDb); a reseed before it has its own bound,
    /// [`Reseed::max_duration`].
    pub start_timeout: Duration,
    /// Time allowed for the router's thread to end once asked to stop.
    pub stop_timeout: Duration,
    /// The name of the router's thread (and so of its log lines, with `with_thread_names`).
    pub thread_name: String,
    /// Where the router's `tracing` events go: set as the default subscriber of its thread
    /// (every task of the router runs there). `None`: the process's global subscriber.
    pub log: Option<tracing::Dispatch>,
    /// Reseeding, and with it the netDb kept in `<dir>/netdb/`: when set, the router loads
    /// the RouterInfos saved there, reseeds over HTTPS when they are fewer than
    /// [`Reseed::reseed_below`], and saves what it learns. [`RouterOptions::new`] sets
    /// [`Reseed::public`] for [`Network::Public`] and `None` for a private network (whose
    /// seeds are its network file's: nothing is fetched or kept). A test network may set
    /// one that points at its own reseed server on a loopback IP address; a private
    /// network's router with any other reseed server does not start
    /// ([`EmbeddedI2pError::PrivateReseed`]).
    pub reseed: Option<Reseed>,
    /// The most bytes per second the router moves, in and out together (emissary's
    /// bandwidth limit). Past it emissary drops messages without a word, and each message
    /// a stream loses costs that stream emissary's initial retransmission timeout (9 s):
    /// emissary's own default, 1 MB/s, made every 1 MiB transfer stall (docs/performance.md).
    /// [`RouterOptions::new`] sets [`DEFAULT_BANDWIDTH`].
    pub bandwidth: u64,
}

/// [`RouterOptions::bandwidth`]'s default: 100 MB/s, in effect no limit on a host's own
/// traffic (a router that carries no transit tunnels moves only its own).
pub const DEFAULT_BANDWIDTH: u64 = 100_000_000;

impl RouterOptions {
    /// A router that hosts Folio's destinations: SAM bridge on, transit off, not a floodfill,
    /// any free ports, 30 s to start and 10 s to stop.
    pub fn new(dir: impl Into<PathBuf>, network: Network) -> Self {
        RouterOptions {
            dir: dir.into(),
            ntcp2_port: 0,
            sam_port: 0,
            sam: true,
            floodfill: false,
            transit: false,
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            thread_name: "i2p-router".into(),
            log: None,
            bandwidth: DEFAULT_BANDWIDTH,
            reseed: match network {
                Network::Public { .. } => Some(Reseed::public()),
                Network::Private { .. } => None,
            },
            network,
        }
    }
}

/// What went wrong with an embedded router.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedI2pError {
    /// The state directory or a file in it could not be read or written.
    #[error("cannot read or write the embedded I2P router's state file {path}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A seed RouterInfo file could not be read (missing, or over [`MAX_ROUTER_INFO_FILE`]).
    #[error("cannot read the I2P seed RouterInfo {path}")]
    Seed {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A network file ([`Network::from_file`]) that cannot be read or is malformed.
    #[error("I2P network file {path}{}: {reason}", if *line > 0 { format!(" line {line}") } else { String::new() })]
    NetworkFile {
        /// The file.
        path: PathBuf,
        /// The line (1-based; 0 for the whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// More seed files than [`MAX_SEEDS`].
    #[error("{0} seed RouterInfo files; at most {MAX_SEEDS} are read")]
    TooManySeeds(usize),
    /// emissary refused to start (a port in use, most often).
    #[error("the embedded I2P router did not start: {reason} (NTCP2 port {ntcp2_port}, SAM port {sam_port}; 0 = any)")]
    Start {
        /// emissary's error.
        reason: String,
        /// The NTCP2 port asked for.
        ntcp2_port: u16,
        /// The SAM port asked for.
        sam_port: u16,
    },
    /// Starting took longer than allowed.
    #[error("the embedded I2P router did not start within {0:?}")]
    StartTimeout(Duration),
    /// The router's thread could not be made.
    #[error("the embedded I2P router's thread: {0}")]
    Thread(std::io::Error),
    /// The router knew no RouterInfo (no seed, an empty netDb) and reseeding gave none.
    #[error("the embedded I2P router has no router to start from")]
    Reseed(#[from] ReseedError),
    /// A private network's router was given a reseed server that is not on a loopback IP
    /// address (a private network's router reaches nothing else).
    #[error("reseed server {0:?} is not on a loopback IP address, and a private I2P network's router reseeds only from one")]
    PrivateReseed(String),
    /// The router's thread did not end in time after it was asked to stop (it is left to
    /// end on its own).
    #[error("the embedded I2P router did not stop within {0:?}")]
    StopTimeout(Duration),
}

/// What the router last reported (sampled every half second).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStatus {
    /// Routers it has a transport connection with.
    pub connected_routers: usize,
    /// Tunnels built so far. emissary updates this in steps of about 10 s: it is no
    /// readiness signal (a SAM `SESSION CREATE` that succeeds is).
    pub tunnels_built: usize,
    /// Tunnel builds that failed.
    pub tunnel_build_failures: usize,
    /// Transit tunnels it carries.
    pub transit_tunnels: usize,
    /// The router future ended on its own (it should not).
    pub exited: bool,
}

/// The router's keys, kept in `router.keys`.
#[derive(Clone)]
struct Keys {
    static_key: [u8; 32],
    signing_key: [u8; 32],
    ntcp2_key: [u8; 32],
    ntcp2_iv: [u8; 16],
}

impl Keys {
    fn random() -> Keys {
        use rand::Rng as _;
        let mut b = [0u8; KEYS_LEN];
        rand::rng().fill_bytes(&mut b);
        Keys::from_bytes(&b).expect("KEYS_LEN bytes")
    }

    fn from_bytes(b: &[u8]) -> Option<Keys> {
        if b.len() != KEYS_LEN {
            return None;
        }
        Some(Keys {
            static_key: b[0..32].try_into().ok()?,
            signing_key: b[32..64].try_into().ok()?,
            ntcp2_key: b[64..96].try_into().ok()?,
            ntcp2_iv: b[96..112].try_into().ok()?,
        })
    }

    fn to_file(&self) -> Vec<u8> {
        [
            KEYS_MAGIC,
            &self.static_key[..],
            &self.signing_key[..],
            &self.ntcp2_key[..],
            &self.ntcp2_iv[..],
        ]
        .concat()
    }

    /// Reads `path`, or makes new keys and saves them there (mode `0600`).
    fn load_or_create(path: &Path) -> Result<Keys, EmbeddedI2pError> {
        let state = |source| EmbeddedI2pError::State {
            path: path.to_path_buf(),
            source,
        };
        match read_bounded(path, MAX_KEYS_FILE) {
            Ok(bytes) => bytes
                .strip_prefix(KEYS_MAGIC)
                .and_then(Keys::from_bytes)
                .ok_or_else(|| {
                    state(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a Folio I2P router key file (refusing to replace it: move it away \
                         to start with a new router identity)",
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = Keys::random();
                write_file(path, &keys.to_file()).map_err(state)?;
                Ok(keys)
            }
            Err(e) => Err(state(e)),
        }
    }

    /// Whether `router_info` parses and carries these keys: only then is it our identity.
    fn own(&self, router_info: &[u8]) -> Result<(), String> {
        let ri = RouterInfo::parse::<TokioRuntime>(router_info)
            .map_err(|e| format!("does not parse ({e:?})"))?;
        let static_public = StaticPrivateKey::from_bytes(self.static_key).public();
        let signing_public = SigningPrivateKey::from(self.signing_key).public();
        let bytes = |k: &dyn AsRef<[u8]>| k.as_ref().to_vec();
        if bytes(ri.identity.static_key()) != bytes(&static_public)
            || bytes(ri.identity.signing_key()) != bytes(&signing_public)
        {
            return Err("belongs to another router (its keys are not ours)".into());
        }
        Ok(())
    }
}

/// The file name a RouterInfo is kept under, `routerInfo-<I2P base64 of its hash>.dat` (the
/// name reseed archives and netDbs use); `None` if the bytes are no RouterInfo (parsed by
/// emissary's bounded parser).
pub fn router_info_file_name(router_info: &[u8]) -> Option<String> {
    let ri = RouterInfo::parse::<TokioRuntime>(router_info).ok()?;
    netdb::file_name(&emissary_core::crypto::base64_encode(
        ri.identity.id().to_vec(),
    ))
}

/// Reads at most `max` bytes of `path`, refusing a larger file (`FileTooLarge`).
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("over {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Writes `path` atomically (a temporary file, synced, renamed), mode `0600`.
fn write_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Whether a reseed server URL names a loopback IP address (`https://127.0.0.1:PORT/`,
/// `https://[::1]:PORT/`); a name, even `localhost`, is not one.
fn is_loopback_server(server: &str) -> bool {
    reseed::target(server)
        .ok()
        .and_then(|(host, _, _)| host.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

fn read_seeds(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, EmbeddedI2pError> {
    if paths.len() > MAX_SEEDS {
        return Err(EmbeddedI2pError::TooManySeeds(paths.len()));
    }
    paths
        .iter()
        .map(|p| {
            read_bounded(p, MAX_ROUTER_INFO_FILE).map_err(|source| EmbeddedI2pError::Seed {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

/// A running embedded router. Dropping it stops it (bounded, as [`EmbeddedRouter::stop`]).
#[derive(Debug)]
pub struct EmbeddedRouter {
    router_id: String,
    router_info: Vec<u8>,
    router_info_path: PathBuf,
    ntcp2: SocketAddr,
    sam: Option<SocketAddr>,
    private: bool,
    status: Arc<Mutex<RouterStatus>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop_timeout: Duration,
    known_at_start: usize,
    reseeded: Option<usize>,
}

/// What the router thread reports once the router is built: its RouterInfo, id, SAM
/// address, NTCP2 port, and how many RouterInfos a reseed brought (`None`: no reseed).
struct Built {
    router_info: Vec<u8>,
    router_id: String,
    sam: Option<SocketAddr>,
    ntcp2_port: Option<u16>,
    reseeded: Option<usize>,
}

enum StartFailure {
    Router(String),
    Reseed(ReseedError),
}

type Started = Result<Built, StartFailure>;

/// A reseed to make before the router starts, and where to keep what it brings.
struct ReseedPlan {
    reseed: Reseed,
    netdb: NetDb,
}

impl EmbeddedRouter {
    /// Starts a router on a new thread and returns once it is listening (its ports bound,
    /// its RouterInfo made and saved), within [`RouterOptions::start_timeout`]. Joining the
    /// network goes on in the background: a SAM `SESSION CREATE` that succeeds is the sign
    /// it is usable.
    pub fn start(opts: RouterOptions) -> Result<EmbeddedRouter, EmbeddedI2pError> {
        // A private network's router reaches only loopback; so does its reseed.
        if let (Network::Private { .. }, Some(reseed)) = (&opts.network, &opts.reseed) {
            if let Some(server) = reseed.servers.iter().find(|s| !is_loopback_server(s)) {
                return Err(EmbeddedI2pError::PrivateReseed(server.clone()));
            }
        }
        let state = |path: &Path, source| EmbeddedI2pError::State {
            path: path.to_path_buf(),
            source,
        };
        create_private_dir(&opts.dir).map_err(|e| state(&opts.dir, e))?;
        let keys = Keys::load_or_create(&opts.dir.join("router.keys"))?;
        let router_info_path = opts.dir.join("routerInfo.dat");
        let own = match read_bounded(&router_info_path, MAX_ROUTER_INFO_FILE) {
            Ok(ri) => match keys.own(&ri) {
                Ok(()) => Some(ri),
                Err(why) => {
                    tracing::warn!(
                        path = %router_info_path.display(),
                        "ignoring the saved RouterInfo, which {why}: this router gets a new id"
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(state(&router_info_path, e)),
        };
        let (net_id, mut seeds, private) = match &opts.network {
            Network::Private { net_id, seeds } => (*net_id, read_seeds(seeds)?, true),
            Network::Public { seeds } => (PUBLIC_NET_ID, read_seeds(seeds)?, false),
        };
        // The netDb kept from earlier runs (fresh RouterInfos only: stale ones are deleted),
        // and a reseed if it and the seeds hold too few routers.
        let mut storage: Option<Arc<dyn emissary_core::runtime::Storage>> = None;
        let mut plan = None;
        if let Some(reseed) = &opts.reseed {
            let dir = opts.dir.join("netdb");
            let netdb = NetDb::open(&dir).map_err(|e| state(&dir, e))?;
            let saved = netdb.load().map_err(|e| state(&dir, e))?;
            tracing::info!(routers = saved.len(), dir = %dir.display(), "I2P netDb loaded");
            seeds.extend(saved);
            storage = Some(Arc::new(NetDbStorage::new(netdb.clone())));
            if seeds.len() < reseed.reseed_below {
                plan = Some(ReseedPlan {
                    reseed: reseed.clone(),
                    netdb,
                });
            }
        }
        let known_at_start = seeds.len();
        let config = Config {
            net_id: Some(net_id),
            floodfill: opts.floodfill,
            allow_local: private,
            insecure_tunnels: private,
            caps: private.then(|| if opts.floodfill { "XfR" } else { "XR" }.to_string()),
            ntcp2: Some(Ntcp2Config {
                ipv4: true,
                ipv4_host: Some(Ipv4Addr::LOCALHOST),
                ipv6: false,
                ipv6_host: None,
                port: opts.ntcp2_port,
                // Published only on a private network: on the public one, 127.0.0.1 is no
                // address for peers.
                publish: private,
                key: keys.ntcp2_key,
                iv: keys.ntcp2_iv,
                ml_kem: None,
                disable_pq: false,
            }),
            ssu2: None,
            samv3_config: opts.sam.then(|| EmissarySam {
                tcp_port: opts.sam_port,
                udp_port: 0,
                host: "127.0.0.1".to_string(),
            }),
            i2cp_config: None,
            routers: seeds,
            router_info: own,
            static_key: Some(keys.static_key),
            signing_key: Some(keys.signing_key),
            transit: opts.transit.then_some(TransitConfig {
                max_tunnels: Some(5000),
            }),
            refresh_interval: Some(1),
            bandwidth: Some(BandwidthConfig {
                bandwidth: usize::try_from(opts.bandwidth).unwrap_or(usize::MAX),
                ..BandwidthConfig::default()
            }),
            ..Default::default()
        };

        let status = Arc::new(Mutex::new(RouterStatus::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_status = status.clone();
        let start_timeout = opts.start_timeout;
        // A reseed comes first, bounded by its own timeouts; saving it to the netDb and
        // building the router share the start timeout.
        let wait = start_timeout
            .saturating_add(
                plan.as_ref()
                    .map_or(Duration::ZERO, |p| p.reseed.max_duration()),
            )
            .saturating_add(Duration::from_secs(1));
        let log = opts.log.clone();
        let thread = std::thread::Builder::new()
            .name(opts.thread_name.clone())
            .spawn(move || {
                let _log = log.map(|d| tracing::dispatcher::set_default(&d));
                if private {
                    runtime::dial_loopback_only();
                }
                run_router(
                    config,
                    (storage, plan),
                    start_timeout,
                    ready_tx,
                    stop_rx,
                    thread_status,
                );
            })
            .map_err(EmbeddedI2pError::Thread)?;
        let mut router = EmbeddedRouter {
            router_id: String::new(),
            router_info: Vec::new(),
            router_info_path,
            ntcp2: (Ipv4Addr::LOCALHOST, opts.ntcp2_port).into(),
            sam: None,
            private,
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
            stop_timeout: opts.stop_timeout,
            known_at_start,
            reseeded: None,
        };
        // The thread bounds the reseed and Router::new; a little more here for the thread.
        let started = ready_rx
            .recv_timeout(wait)
            .map_err(|_| EmbeddedI2pError::StartTimeout(wait))?;
        let built = started.map_err(|failure| match failure {
            StartFailure::Router(reason) => EmbeddedI2pError::Start {
                reason,
                ntcp2_port: opts.ntcp2_port,
                sam_port: opts.sam_port,
            },
            StartFailure::Reseed(e) => EmbeddedI2pError::Reseed(e),
        })?;
        write_file(&router.router_info_path, &built.router_info)
            .map_err(|e| state(&router.router_info_path, e))?;
        router.router_info = built.router_info;
        router.router_id = built.router_id;
        router.sam = built.sam;
        router.reseeded = built.reseeded;
        if let Some(port) = built.ntcp2_port {
            router.ntcp2.set_port(port);
        }
        Ok(router)
    }

    /// The SAM bridge's address (on 127.0.0.1), if it runs one.
    pub fn sam(&self) -> Option<SocketAddr> {
        self.sam
    }

    /// The NTCP2 address (127.0.0.1 and its port).
    pub fn ntcp2(&self) -> SocketAddr {
        self.ntcp2
    }

    /// The router's id (base64 of its identity hash).
    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// The router's own RouterInfo, as saved in its state directory: a seed for the other
    /// routers of a private network.
    pub fn router_info(&self) -> &[u8] {
        &self.router_info
    }

    /// Where the router's RouterInfo is saved.
    pub fn router_info_path(&self) -> &Path {
        &self.router_info_path
    }

    /// How many RouterInfos the router knew before any reseed (its seeds and saved netDb).
    pub fn known_at_start(&self) -> usize {
        self.known_at_start
    }

    /// How many RouterInfos a reseed at this start brought (`None`: it did not reseed,
    /// having enough, or having no [`RouterOptions::reseed`]).
    pub fn reseeded(&self) -> Option<usize> {
        self.reseeded
    }

    /// What the router last reported.
    pub fn status(&self) -> RouterStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How Folio's SAM client should use this router's bridge: 1-hop tunnels on a private
    /// network (emissary refuses 0-hop ones; with every router on one host, more hops hide
    /// nothing), I2P's usual 3 hops on the public one; 60 s for a session, 30 s for the rest.
    /// Panics if the router runs no SAM bridge ([`RouterOptions::sam`]).
    pub fn sam_config(&self) -> SamConfig {
        let bridge = self.sam.expect("this router runs no SAM bridge");
        let (length, quantity) = if self.private { (1, 1) } else { (3, 2) };
        SamConfig {
            bridge,
            inbound_length: length,
            outbound_length: length,
            inbound_quantity: quantity,
            outbound_quantity: quantity,
            session_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            ..SamConfig::default()
        }
    }

    /// Stops the router: its runtime ends, every task it spawned is dropped and every port
    /// it held is closed. Waits at most [`RouterOptions::stop_timeout`].
    pub fn stop(mut self) -> Result<(), EmbeddedI2pError> {
        self.stop_now()
    }

    fn stop_now(&mut self) -> Result<(), EmbeddedI2pError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + self.stop_timeout;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(EmbeddedI2pError::StopTimeout(self.stop_timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
        Ok(())
    }
}

impl Drop for EmbeddedRouter {
    fn drop(&mut self) {
        if let Err(e) = self.stop_now() {
            tracing::warn!("{e}");
        }
    }
}

/// The core of a small private I2P network on 127.0.0.1, for demos (`tahoe demo
/// --network=i2p`): 3 floodfills and a relay, with the settings of
/// `../shared/recipes/emissary-spike/README.md` (the same as `tests/src/i2pnet.rs`, which
/// adds log capture and client routers for the tests): each router started once to make its
/// RouterInfo, then again with its own and every other one's (full seeding; the floodfills
/// cannot answer lookups for about 10 s otherwise), NTCP2 on ports picked free at the first
/// start and kept. Routers that host destinations (the nodes' own embedded routers) join it
/// through [`PrivateNetwork::network_file`]. Dropping it stops every router.
#[derive(Debug)]
pub struct PrivateNetwork {
    routers: Vec<EmbeddedRouter>,
    network_file: PathBuf,
}

impl PrivateNetwork {
    /// Floodfills in the network.
    pub const FLOODFILLS: usize = 3;
    /// Relays (neither floodfill nor hosting destinations).
    pub const RELAYS: usize = 1;

    /// Starts the network, its state under `dir` (created), with network id `net_id` (not
    /// [`PUBLIC_NET_ID`]). Each router start is bounded as [`EmbeddedRouter::start`]; the
    /// network is usable a few seconds later (a SAM `SESSION CREATE` on a router that
    /// joins it is the sign).
    pub fn start(dir: &Path, net_id: u8) -> Result<PrivateNetwork, EmbeddedI2pError> {
        let n = Self::FLOODFILLS + Self::RELAYS;
        let options = |i: usize, port: u16, seeds: Vec<PathBuf>| {
            let mut o = RouterOptions::new(
                dir.join(format!("router-{i}")),
                Network::Private { net_id, seeds },
            );
            o.ntcp2_port = port;
            o.sam = false;
            o.floodfill = i < Self::FLOODFILLS;
            o.transit = true;
            o.thread_name = format!("i2p-net-{i}");
            o
        };
        // Phase 1: keys, RouterInfos and ports.
        let mut ports = Vec::with_capacity(n);
        let mut files = Vec::with_capacity(n);
        for i in 0..n {
            let r = EmbeddedRouter::start(options(i, 0, vec![]))?;
            ports.push(r.ntcp2().port());
            files.push(r.router_info_path().to_path_buf());
            r.stop()?;
        }
        // Phase 2: the same routers, every one seeded with every other one.
        let mut routers = Vec::with_capacity(n);
        for (i, &port) in ports.iter().enumerate() {
            let seeds = (0..n)
                .filter(|&j| j != i)
                .map(|j| files[j].clone())
                .collect();
            routers.push(EmbeddedRouter::start(options(i, port, seeds))?);
        }
        let network_file = dir.join("i2p-network.txt");
        let mut text = format!("# Folio's private I2P network (tahoe demo)\nnet_id {net_id}\n");
        for f in &files {
            text.push_str(&format!("router {}\n", f.display()));
        }
        std::fs::write(&network_file, text).map_err(|source| EmbeddedI2pError::State {
            path: network_file.clone(),
            source,
        })?;
        Ok(PrivateNetwork {
            routers,
            network_file,
        })
    }

    /// The network file ([`Network::from_file`]) for a router joining this network.
    pub fn network_file(&self) -> &Path {
        &self.network_file
    }

    /// The routers' NTCP2 addresses (127.0.0.1).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.routers.iter().map(EmbeddedRouter::ntcp2).collect()
    }

    /// Stops every router (each bounded by its stop timeout).
    pub fn stop(self) -> Result<(), EmbeddedI2pError> {
        let mut first = Ok(());
        for r in self.routers {
            if let Err(e) = r.stop() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// The router thread: start the router, report, run it until asked to stop, then drop the
/// whole runtime (and with it every task the router spawned).
fn run_router(
    mut config: Config,
    (storage, plan): (
        Option<Arc<dyn emissary_core::runtime::Storage>>,
        Option<ReseedPlan>,
    ),
    start_timeout: Duration,
    ready: std::sync::mpsc::Sender<Started>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    status: Arc<Mutex<RouterStatus>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StartFailure::Router(format!("no tokio runtime: {e}"))));
            return;
        }
    };
    rt.block_on(async move {
        let mut reseeded = None;
        let mut to_save = None;
        if let Some(plan) = plan {
            match reseed::reseed(&plan.reseed).await {
                Ok(files) => {
                    tracing::info!(routers = files.len(), "I2P reseed done");
                    reseeded = Some(files.len());
                    config.routers.extend(files.iter().map(|f| f.bytes.clone()));
                    to_save = Some((plan.netdb, files));
                }
                Err(e) if config.routers.is_empty() => {
                    let _ = ready.send(Err(StartFailure::Reseed(e)));
                    return;
                }
                Err(e) => tracing::warn!(
                    known = config.routers.len(),
                    "I2P reseed failed; starting from the routers already known: {}",
                    crate::error_chain(&e)
                ),
            }
        }
        // From here on, the start timeout: saving the reseed (off this thread, so that a slow
        // disk holds up nothing else) and building the router share it.
        let deadline = tokio::time::Instant::now() + start_timeout;
        if let Some((netdb, files)) = to_save {
            let dir = netdb.dir().to_path_buf();
            let save = tokio::task::spawn_blocking(move || {
                netdb.save(files.iter().map(|f| (f.name.as_str(), f.bytes.as_slice())))
            });
            match tokio::time::timeout_at(deadline, save).await {
                Ok(Ok(Ok(saved))) => tracing::debug!(saved, "I2P reseed saved to the netDb"),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(dir = %dir.display(), "I2P reseed not saved to the netDb: {e}")
                }
                Ok(Err(e)) => {
                    tracing::warn!(dir = %dir.display(), "I2P reseed not saved to the netDb: {e}")
                }
                Err(_) => tracing::warn!(
                    dir = %dir.display(),
                    "saving the I2P reseed to the netDb took the whole start timeout"
                ),
            }
        }
        let built =
            tokio::time::timeout_at(deadline, Router::<TokioRuntime>::new(config, None, storage))
                .await;
        let (router, mut events, router_info) = match built {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = ready.send(Err(StartFailure::Router(e.to_string())));
                return;
            }
            Err(_) => {
                let _ = ready.send(Err(StartFailure::Router(format!(
                    "not built within {start_timeout:?}"
                ))));
                return;
            }
        };
        let info = router.protocol_address_info();
        let started = Built {
            router_info,
            router_id: router.router_id().to_string(),
            sam: info.sam_tcp,
            ntcp2_port: info.ntcp2_port,
            reseeded,
        };
        if ready.send(Ok(started)).is_err() {
            return; // the caller gave up waiting
        }
        let mut router = std::pin::pin!(router);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut router => {
                    status.lock().unwrap_or_else(|p| p.into_inner()).exited = true;
                    tracing::warn!("the embedded I2P router ended by itself");
                    break;
                }
                _ = &mut stop => break,
                _ = tick.tick() => {
                    while let Some(event) = events.router_status() {
                        if let Event::RouterStatus { transport, tunnel, transit, .. } = event {
                            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                            s.connected_routers = transport.num_connected_routers;
                            s.tunnels_built = tunnel.num_tunnels_built;
                            s.tunnel_build_failures = tunnel.num_tunnel_build_failures;
                            s.transit_tunnels = transit.num_tunnels;
                        }
                    }
                }
            }
        }
    });
    // Dropping the runtime drops every task the router spawned (SAM server, netDb, tunnel
    // manager, ...) and so closes their sockets.
    rt.shutdown_timeout(Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_network_file() {
        let dir = scratch("netfile");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("i2p-network.txt");
        std::fs::write(
            &file,
            "# a test network\nnet_id 77\nrouter r0/routerInfo.dat  # first\n\nrouter /abs/ri.dat\n",
        )
        .unwrap();
        assert_eq!(
            Network::from_file(&file).unwrap(),
            Network::Private {
                net_id: 77,
                seeds: vec![dir.join("r0/routerInfo.dat"), PathBuf::from("/abs/ri.dat")]
            }
        );
        for (text, says) in [
            ("router a\n", "no net_id"),
            ("net_id 77\n", "no router"),
            ("net_id 2\nrouter a\n", "line 1: net_id 2 is the public"),
            ("net_id 300\nrouter a\n", "line 1: net_id \"300\""),
            ("net_id 7\nnet_id 8\n", "line 2: net_id given twice"),
            ("net_id 7\nreseed https://x\n", "line 2: expected"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = Network::from_file(&file).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        std::fs::write(&file, vec![b'#'; MAX_NETWORK_FILE as usize + 1]).unwrap();
        assert!(Network::from_file(&file).is_err());
        let e = Network::from_file(&dir.join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("folio-i2p-embedded-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn free(port: u16) -> bool {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    }

    /// Keys and RouterInfo survive a restart (same router id), only loopback is bound, and
    /// stopping frees both ports at once.
    #[test]
    fn keeps_its_identity_and_frees_its_ports() {
        let dir = scratch("identity");
        let network = Network::Private {
            net_id: 77,
            seeds: vec![],
        };
        let first = EmbeddedRouter::start(RouterOptions::new(&dir, network.clone())).unwrap();
        let (id, sam, ntcp2) = (
            first.router_id().to_string(),
            first.sam().unwrap(),
            first.ntcp2(),
        );
        assert!(sam.ip().is_loopback() && ntcp2.ip().is_loopback());
        assert!(ntcp2.port() != 0 && sam.port() != 0);
        assert!(
            !free(ntcp2.port()) && !free(sam.port()),
            "both ports are held"
        );
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("router.keys")), 0o600);
        let t = Instant::now();
        first.stop().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(free(ntcp2.port()) && free(sam.port()), "ports freed");

        let mut opts = RouterOptions::new(&dir, network.clone());
        opts.ntcp2_port = ntcp2.port();
        opts.sam_port = sam.port();
        let again = EmbeddedRouter::start(opts).unwrap();
        assert_eq!(again.router_id(), id, "the same router id after a restart");
        assert_eq!((again.sam(), again.ntcp2()), (Some(sam), ntcp2));
        drop(again);
        assert!(
            free(ntcp2.port()) && free(sam.port()),
            "dropping stops it too"
        );

        // A RouterInfo that is not ours (or not one at all) is ignored: a new id.
        std::fs::write(dir.join("routerInfo.dat"), b"garbage").unwrap();
        let other = EmbeddedRouter::start(RouterOptions::new(&dir, network.clone())).unwrap();
        assert_ne!(other.router_id(), id);
        drop(other);
        // A key file that is not one is refused, not replaced.
        std::fs::write(dir.join("router.keys"), b"not keys").unwrap();
        let e = EmbeddedRouter::start(RouterOptions::new(&dir, network)).unwrap_err();
        let chain = crate::error_chain(&e);
        assert!(chain.contains("not a Folio I2P router key file"), "{chain}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A router with no seeds reseeds from an HTTPS server, keeps what it got in its netDb,
    /// and after a restart starts from that netDb without reseeding; with nothing known and
    /// no reseed server answering, it does not start, saying why.
    #[test]
    fn reseeds_once_then_starts_from_its_netdb() {
        let dir = scratch("reseed");
        // Two routers' RouterInfos, packed into a reseed file signed with the test key.
        let mut files = Vec::new();
        for i in 0..2 {
            let r = EmbeddedRouter::start(RouterOptions::new(
                dir.join(format!("peer-{i}")),
                Network::Private {
                    net_id: 77,
                    seeds: vec![],
                },
            ))
            .unwrap();
            let name = router_info_file_name(r.router_info()).unwrap();
            assert!(name.len() > 50 && name.contains(r.router_id()), "{name}");
            files.push((name, r.router_info().to_vec()));
            r.stop().unwrap();
        }
        let key = include_bytes!("../testdata/reseed-test-key.pem");
        let cert = include_bytes!("../testdata/test-reseed_at_folio.invalid.crt");
        let su3 = su3::write_reseed(&files, "test-reseed@folio.invalid", key, "1").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt
            .block_on(reseed::ReseedServer::start(
                200,
                su3,
                include_bytes!("../testdata/reseed-server.crt"),
                include_bytes!("../testdata/reseed-server-key.pem"),
            ))
            .unwrap();
        let mut signers = su3::TrustedSigners::none();
        signers.add_pem("test-reseed@folio.invalid", cert).unwrap();
        let reseed = Reseed {
            servers: vec![server.url().to_string()],
            signers,
            web_pki_roots: false,
            extra_roots: reseed::certificates_from_pem(include_bytes!(
                "../testdata/reseed-test-ca.crt"
            ))
            .unwrap(),
            min_routers: 2,
            reseed_below: 2,
            max_servers: 1,
            connect_timeout: Duration::from_secs(5),
            server_timeout: Duration::from_secs(20),
        };
        let opts = |reseed: &Reseed| {
            let mut o = RouterOptions::new(
                dir.join("me"),
                Network::Private {
                    net_id: 77,
                    seeds: vec![],
                },
            );
            o.reseed = Some(reseed.clone());
            o
        };
        let first = EmbeddedRouter::start(opts(&reseed)).unwrap();
        assert_eq!((first.known_at_start(), first.reseeded()), (0, Some(2)));
        assert_eq!(server.requests(), 1);
        let netdb = NetDb::open(&dir.join("me/netdb")).unwrap();
        let mut saved = netdb.load().unwrap();
        saved.sort();
        let mut want: Vec<_> = files.iter().map(|(_, b)| b.clone()).collect();
        want.sort();
        assert_eq!(saved, want, "the reseed is kept in the netDb");
        first.stop().unwrap();

        let again = EmbeddedRouter::start(opts(&reseed)).unwrap();
        assert_eq!((again.known_at_start(), again.reseeded()), (2, None));
        assert_eq!(server.requests(), 1, "no second reseed");
        again.stop().unwrap();

        // Nothing known, and the reseed server gone: a clear refusal.
        drop(server);
        std::fs::remove_dir_all(dir.join("me/netdb")).unwrap();
        let e = EmbeddedRouter::start(opts(&reseed)).unwrap_err();
        assert!(matches!(e, EmbeddedI2pError::Reseed(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A private network's router refuses, before anything else, a reseed server that is not
    /// on a loopback IP address.
    #[test]
    fn a_private_network_reseeds_only_from_loopback() {
        assert!(is_loopback_server("https://127.0.0.1:8443/"));
        assert!(is_loopback_server("https://127.0.0.2/seed/"));
        assert!(is_loopback_server("https://[::1]:8443/"));
        for not in [
            "https://localhost:8443/",
            "https://10.0.0.1/",
            "https://reseed.example/",
            "http://127.0.0.1/",
            "not a URL",
        ] {
            assert!(!is_loopback_server(not), "{not}");
        }
        let dir = scratch("private-reseed");
        let mut reseed = Reseed::public();
        reseed.servers = vec![
            "https://127.0.0.1:1/".into(),
            "https://reseed.example/".into(),
        ];
        let mut o = RouterOptions::new(
            &dir,
            Network::Private {
                net_id: 77,
                seeds: vec![],
            },
        );
        o.reseed = Some(reseed);
        let e = EmbeddedRouter::start(o).unwrap_err();
        assert!(
            matches!(&e, EmbeddedI2pError::PrivateReseed(s) if s == "https://reseed.example/"),
            "{e}"
        );
        assert!(!dir.exists(), "refused before anything was written");
    }

    #[test]
    fn files_are_read_with_bounds_and_errors_say_which() {
        let dir = scratch("bounds");
        create_private_dir(&dir).unwrap();
        let big = dir.join("big.dat");
        std::fs::write(&big, vec![0u8; MAX_ROUTER_INFO_FILE as usize + 1]).unwrap();
        let opts =
            |seeds| RouterOptions::new(dir.join("r"), Network::Private { net_id: 77, seeds });
        let e = EmbeddedRouter::start(opts(vec![big.clone()])).unwrap_err();
        assert!(
            matches!(&e, EmbeddedI2pError::Seed { path, source }
                if path == &big && source.kind() == std::io::ErrorKind::FileTooLarge),
            "{e}"
        );
        let e = EmbeddedRouter::start(opts(vec![dir.join("missing.dat")])).unwrap_err();
        assert!(e.to_string().contains("missing.dat"), "{e}");
        let e = EmbeddedRouter::start(opts(vec![big; MAX_SEEDS + 1])).unwrap_err();
        assert!(matches!(e, EmbeddedI2pError::TooManySeeds(_)), "{e}");
        // A seed that is no RouterInfo is emissary's to skip: the router starts.
        let junk = dir.join("junk.dat");
        std::fs::write(&junk, b"\x00\x01 not a router info").unwrap();
        EmbeddedRouter::start(opts(vec![junk]))
            .unwrap()
            .stop()
            .unwrap();
        // A port in use: a clear error naming it.
        let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let mut o = opts(vec![]);
        o.sam_port = port;
        let e = EmbeddedRouter::start(o).unwrap_err();
        assert!(
            matches!(e, EmbeddedI2pError::Start { .. })
                && e.to_string().contains(&format!("SAM port {port}")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
