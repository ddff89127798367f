//! `tahoe.cfg`: reading, validating and writing the node configuration.
//!
//! The file uses Tahoe-LAFS's section and key names wherever the meaning is the same, read by
//! a small strict INI reader of our own:
//!
//! - a line is blank, a comment (`#` or `;` as its first non-blank character), a section
//!   header `[section]`, or `key = value`; surrounding whitespace is ignored;
//! - there are no inline comments (a value containing ` #` or ` ;` is refused, except a
//!   nickname, taken literally), no continuation lines, and no `key: value` form;
//! - key names match case-insensitively (as Python's `configparser` does for Tahoe); section
//!   names are case-sensitive;
//! - an unknown section or key, a repeated section or key, a key before any section, and an
//!   empty value (other than `nickname`) are refused, each naming its line and what is
//!   allowed;
//! - the file is at most [`MAX_CFG_LEN`] bytes, a line at most [`MAX_LINE_LEN`] and a value at
//!   most [`MAX_VALUE_LEN`]; [`NodeConfig::load`] refuses anything that is not UTF-8.
//!
//! ```
//! use folio_node::config::{Location, NodeConfig, TubPort};
//! let cfg = NodeConfig::parse("[node]\nnickname = alice\ntub.port = tcp:3456\n").unwrap();
//! assert_eq!(cfg.node.nickname, "alice");
//! assert!(matches!(cfg.node.tub_port, TubPort::Listen(ref v) if v.len() == 1));
//! assert_eq!(cfg.node.tub_location, Location::Auto);
//! assert_eq!(cfg.line("node", "tub.port"), Some(3));
//! assert_eq!(NodeConfig::parse(&cfg.to_cfg_string()).unwrap(), cfg);
//! ```
//!
//! [`NodeConfig::check_privacy`] is the `reveal-IP-address = false` audit: it lists every
//! setting that would let a connection show this host's IP address.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use folio_handlers::TcpPolicy;
use folio_rpc::furl::MAX_HINTS;
use folio_rpc::{ErrorChain, Furl, Hint, TubId};
use folio_transports::tcp::ListenSpec;

/// The largest `tahoe.cfg` accepted, in bytes.
pub const MAX_CFG_LEN: usize = 64 * 1024;
/// The longest line accepted, in bytes.
pub const MAX_LINE_LEN: usize = 8 * 1024;
/// The longest value accepted, in bytes (leaves room on the line for the canonical form).
pub const MAX_VALUE_LEN: usize = 4096;
/// The longest nickname, in characters.
pub const MAX_NICKNAME_CHARS: usize = 64;
/// The most endpoints `tub.port` may list.
pub const MAX_LISTEN: usize = 16;
/// The most introducers `[client]` may name.
pub const MAX_INTRODUCERS: usize = 32;
/// The largest `shares.total`.
pub const MAX_SHARES: u16 = 256;
/// The default `[tor] onion.private_key_file`, relative to the base directory.
pub const DEFAULT_TOR_ONION_KEY: &str = "private/tor_onion.privkey";
/// The default `[tor] onion.external_port` (the port in the onion hint; Tahoe's choice too).
pub const DEFAULT_ONION_PORT: u16 = 3457;
/// The default `[i2p] dest.private_key_file`, relative to the base directory.
pub const DEFAULT_I2P_DEST_KEY: &str = "private/i2p_dest.privkey";
/// The usual SAM bridge of a local I2P router (i2pd's and Java I2P's default): what
/// `sam.port` names when a node uses one. With no `sam.port`, the node runs an embedded
/// router instead.
pub const DEFAULT_SAM_PORT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 7656);

const NODE_KEYS: &[&str] = &["nickname", "reveal-IP-address", "tub.port", "tub.location"];
const CONNECTIONS_KEYS: &[&str] = &["tcp"];
const TOR_KEYS: &[&str] = &[
    "enabled",
    "launch",
    "control.port",
    "socks.port",
    "tor.executable",
    "onion",
    "onion.local_port",
    "onion.external_port",
    "onion.private_key_file",
    "arti.network",
];
const I2P_KEYS: &[&str] = &[
    "enabled",
    "sam.port",
    "dest",
    "dest.port",
    "dest.private_key_file",
    "inbound.length",
    "outbound.length",
    "inbound.quantity",
    "outbound.quantity",
    "router.network",
    "router.reseed",
];
const CLIENT_KEYS: &[&str] = &[
    "introducer.furl",
    "shares.needed",
    "shares.happy",
    "shares.total",
    "max_servers",
];
const STORAGE_KEYS: &[&str] = &[
    "enabled",
    "reserved_space",
    "storage_dir",
    "max_space_per_client",
];
const INTRODUCER_KEYS: &[&str] = &[
    "max_announcements",
    "max_announcements_per_peer",
    "max_announcements_per_key",
    "max_subscribers",
    "delivery_timeout",
];
const SERVER_KEYS: &[&str] = &["nickname", "furl", "hints", "tcp"];
const KNOWN_SECTIONS: &str =
    "[node], [connections], [tor], [i2p], [client], [storage], [introducer], [server:TUBID]";

/// The largest `[client] max_servers`.
pub const MAX_MAX_SERVERS: u64 = 100_000;
/// The largest `[introducer] max_announcements` and `max_subscribers`.
pub const MAX_INTRODUCER_TABLE: u64 = 1_000_000;
/// The longest `[introducer] delivery_timeout`, in seconds.
pub const MAX_DELIVERY_TIMEOUT_SECS: u64 = 3600;

// ---------------------------------------------------------------------------------------------
// The typed configuration.

/// The whole of `tahoe.cfg`, parsed and checked.
///
/// Equality compares settings only: [`NodeConfig::lines`] and [`ServerOverride::line`] say
/// where the settings came from and are not part of the value, so a configuration equals its
/// own [`to_cfg_string`](NodeConfig::to_cfg_string) read back.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[connections]`.
    pub connections: ConnectionsSection,
    /// `[tor]`.
    pub tor: TorSection,
    /// `[i2p]`.
    pub i2p: I2pSection,
    /// `[client]`.
    pub client: ClientSection,
    /// `[storage]`.
    pub storage: StorageSection,
    /// `[introducer]`: the limits of an introducer node (other nodes ignore it).
    pub introducer: IntroducerSection,
    /// `[server:TUBID]` sections, in file order.
    pub server_overrides: Vec<ServerOverride>,
    /// The line of each setting read, keyed by (section, key) with the key spelled as in
    /// this module's documentation (`reveal-IP-address`, `introducer.NAME.furl` in
    /// lowercase); a section header's line is under the key `""`. Server sections are named
    /// `server:TUBID`. Empty for a configuration built in code.
    pub lines: BTreeMap<(String, String), usize>,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    /// `nickname`: shown to other nodes; at most [`MAX_NICKNAME_CHARS`] printable characters.
    /// Default empty.
    pub nickname: String,
    /// `reveal-IP-address`: `false` asks for [`NodeConfig::check_privacy`]. Default `true`.
    pub reveal_ip: bool,
    /// `tub.port`: where to listen for TCP connections.
    pub tub_port: TubPort,
    /// `tub.location`: the connection hints this node announces.
    pub tub_location: Location,
}

/// `[node] tub.port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TubPort {
    /// Not set: TCP on all interfaces, on a port the system picks.
    Default,
    /// `disabled`: no TCP listener (an onion service or I2P destination may still listen).
    Disabled,
    /// Comma-separated endpoints (`tcp:3456`, `tcp:3456:interface=127.0.0.1`; a bare port
    /// number means `tcp:PORT`, as in Tahoe). Never empty, at most [`MAX_LISTEN`], no repeats.
    Listen(Vec<ListenSpec>),
}

/// `[node] tub.location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Not set, or `AUTO`: announce what the listeners find (the host's addresses for TCP,
    /// the onion and I2P addresses for those listeners).
    Auto,
    /// `disabled`: announce nothing (nothing listens).
    Disabled,
    /// Exactly these hints (`tcp:example.org:3456,tor:NAME.onion:3457,i2p:NAME.b32.i2p`).
    /// Never empty when parsed; an empty list is written as `disabled`.
    Hints(Vec<Hint>),
    /// `AUTO` listed with other hints, as Tahoe allows (`AUTO,tcp:example.org:3456` for a
    /// port forwarded through NAT): what `Auto` finds, plus these hints. Never empty.
    AutoAnd(Vec<Hint>),
}

/// `[connections]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionsSection {
    /// `tcp = tcp|tor|disabled`: how `tcp:` hints are dialed. Default `tcp` (direct).
    pub tcp: TcpPolicy,
}

/// `[tor]`.
///
/// Unlike Tahoe, `enabled` defaults to `false`: Folio does not guess at a SOCKS port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorSection {
    /// `enabled`: dial `tor:` hints (and `tcp:` ones with `tcp = tor`) through Tor: a launched
    /// tor (`launch`), a running one (`control.port` or `socks.port`), or with none of
    /// those the embedded Tor client (arti; its state in `private/arti`). Default `false`.
    pub enabled: bool,
    /// `launch`: the node starts its own tor. Excludes `control.port` and `socks.port`.
    /// Default `false`.
    pub launch: bool,
    /// `control.port = tcp:HOST:PORT` (numeric HOST): a running tor's control port.
    pub control_port: Option<SocketAddr>,
    /// `socks.port = tcp:HOST:PORT` (numeric HOST): a running tor's SOCKS port.
    pub socks_port: Option<SocketAddr>,
    /// `tor.executable`: the tor to launch (default: `tor` on the `PATH`).
    pub executable: Option<PathBuf>,
    /// `onion`: listen on an onion service. Needs `enabled`, and `control.port`, `launch` or
    /// the embedded client (not a SOCKS port alone). Default `false`.
    pub onion: bool,
    /// `onion.local_port`: the port on 127.0.0.1 a system or launched tor forwards the onion
    /// service's streams to (Tahoe's key; when unset the node picks a free one). Ignored,
    /// with a warning, by the embedded client, which has no local port.
    pub onion_local_port: Option<u16>,
    /// `onion.external_port`: the port in the onion hint. Default [`DEFAULT_ONION_PORT`].
    pub onion_external_port: u16,
    /// `onion.private_key_file`: the onion service key, relative to the base directory
    /// unless absolute. Default [`DEFAULT_TOR_ONION_KEY`].
    pub onion_private_key_file: PathBuf,
    /// `arti.network`: for test networks only, a file describing a private Tor network
    /// (`folio_transports::tor_network`) for the embedded client to join instead of the
    /// public one; relative to the base directory unless absolute. Only with the embedded
    /// client (none of `launch`, `control.port`, `socks.port`).
    pub arti_network: Option<PathBuf>,
}

/// `[i2p]`.
///
/// Unlike Tahoe, `enabled` defaults to `false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I2pSection {
    /// `enabled`: dial `i2p:` hints through the SAM bridge. Default `false`.
    pub enabled: bool,
    /// `sam.port = tcp:HOST:PORT` (numeric HOST): the SAM bridge of a running I2P router
    /// (i2pd's is usually [`DEFAULT_SAM_PORT`]). Unset (the default): the node runs an
    /// embedded I2P router (emissary), its state in `private/i2p-router`.
    pub sam_port: Option<SocketAddr>,
    /// `dest`: listen on an I2P destination. Needs `enabled`. Default `false`.
    pub dest: bool,
    /// `dest.port`: Tahoe's I2P port. Read, and ignored with a warning: SAM 3.1 streams (all
    /// i2pd 2.45 offers) carry no port, so Folio's `i2p:` hints have none.
    pub dest_port: Option<u16>,
    /// `dest.private_key_file`: the destination's key, relative to the base directory
    /// unless absolute. Default [`DEFAULT_I2P_DEST_KEY`].
    pub dest_private_key_file: PathBuf,
    /// `inbound.length`: hops in inbound tunnels, 0 to 7 (default: the router's).
    pub inbound_length: Option<u8>,
    /// `outbound.length`: hops in outbound tunnels, 0 to 7.
    pub outbound_length: Option<u8>,
    /// `inbound.quantity`: inbound tunnels, 1 to 16.
    pub inbound_quantity: Option<u8>,
    /// `outbound.quantity`: outbound tunnels, 1 to 16.
    pub outbound_quantity: Option<u8>,
    /// `router.network`: for test networks only, a file describing a private I2P network
    /// (`folio_transports::i2p_embedded::Network::from_file`: its network id and the
    /// RouterInfo files of its routers) for the embedded router to join, so that no reseed
    /// is attempted; relative to the base directory unless absolute. Only with the embedded
    /// router (no `sam.port`). Without it the embedded router joins the public I2P network,
    /// starting from the netDb it keeps in `private/i2p-router/netdb/` and reseeding over
    /// HTTPS when that holds too few routers.
    pub router_network: Option<PathBuf>,
    /// `router.reseed`: the embedded router's reseed servers (`https://` URLs, comma
    /// separated, at most [`MAX_I2P_RESEED_SERVERS`]), instead of the I2P reseed servers
    /// built in; empty: those. Not with `router.network` (a test network never reseeds);
    /// unused with `sam.port` (that router reseeds by itself).
    pub router_reseed: Vec<String>,
}

/// The most `[i2p] router.reseed` servers.
pub const MAX_I2P_RESEED_SERVERS: usize = 32;

/// `[i2p] router.reseed`: comma-separated `https://` URLs, each of printable ASCII with no
/// space or comma, at most 256 bytes, and (with the embedded router built in) one the
/// reseeder itself accepts (`folio_transports::i2p_embedded::reseed::target`: a host that
/// is a DNS name or an IP address, a port of 1 to 65535, no query, no user info).
fn parse_reseed_servers(v: &str) -> Result<Vec<String>, String> {
    let servers: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if servers.is_empty() {
        return Err("expected https:// URLs, comma separated".into());
    }
    if servers.len() > MAX_I2P_RESEED_SERVERS {
        return Err(format!("at most {MAX_I2P_RESEED_SERVERS} reseed servers"));
    }
    for s in &servers {
        let host = s.strip_prefix("https://").unwrap_or("");
        if host.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(format!("{s:?} is not an https:// URL"));
        }
        #[cfg(feature = "i2p-embedded")]
        folio_transports::i2p_embedded::reseed::target(s)
            .map_err(|_| format!("{s:?} is not an https://host[:port]/[path/] URL"))?;
    }
    Ok(servers)
}

/// `[client]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSection {
    /// `introducer.furl` (named `default`) and `introducer.NAME.furl` (NAME: 1 to 32 of
    /// `a-z 0-9 _ -`), in file order; at most [`MAX_INTRODUCERS`].
    pub introducers: Vec<(String, Furl)>,
    /// `shares.needed` (k): shares needed to read a file. Default 3.
    pub shares_needed: u16,
    /// `shares.happy`: servers that must hold shares for an upload to succeed. Default 7.
    pub shares_happy: u16,
    /// `shares.total` (N): shares made of each file. Default 10. Always
    /// `1 <= needed <= happy <= total <= 256`.
    pub shares_total: u16,
    /// `max_servers`: the most announcements (so the most storage servers) this node holds
    /// and dials, heard from introducers or cached; newer announcements of those held are
    /// still taken. 1 to [`MAX_MAX_SERVERS`]. Default
    /// [`MAX_HELD_ANNOUNCEMENTS`](crate::introducer::MAX_HELD_ANNOUNCEMENTS) (1000).
    pub max_servers: u64,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSection {
    /// `enabled`: run a storage server. Default `true`.
    pub enabled: bool,
    /// `reserved_space`: bytes of the volume to leave free, written as a number with an
    /// optional unit as Tahoe's `parse_abbreviated_size` reads it (`k`/`M`/`G`/`T`/`P`/`E`
    /// and `kB`… are powers of 1000, `KiB`/`MiB`… powers of 1024, any case). Default 0.
    pub reserved_space: u64,
    /// `storage_dir`: where shares live, relative to the base directory unless absolute.
    /// Default: `BASEDIR/storage`.
    pub storage_dir: Option<PathBuf>,
    /// `max_space_per_client`: the most space one client (one peer TubId) may hold at once
    /// in promises to its unfinished uploads plus the growth of the mutable slots it wrote,
    /// written like `reserved_space`; at least 1. Default
    /// [`DEFAULT_SPACE_PER_CLIENT`](crate::storage::DEFAULT_SPACE_PER_CLIENT) (64 GiB).
    pub max_space_per_client: u64,
}

/// `[introducer]`: the limits of an introducer node ([`IntroducerLimits`](crate::introducer::IntroducerLimits)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroducerSection {
    /// `max_announcements`: announcements held in all. 1 to [`MAX_INTRODUCER_TABLE`].
    /// Default 10000.
    pub max_announcements: u64,
    /// `max_announcements_per_peer`: new announcements one peer (connection TubId) may have
    /// published and held. 1 to `max_announcements`. Default 16.
    pub max_announcements_per_peer: u64,
    /// `max_announcements_per_key`: announcements held for one signing key (one per
    /// service). 1 to `max_announcements`. Default 16.
    pub max_announcements_per_key: u64,
    /// `max_subscribers`: subscriptions held. 1 to [`MAX_INTRODUCER_TABLE`]. Default 10000.
    pub max_subscribers: u64,
    /// `delivery_timeout`: seconds one batch may take to reach a subscriber. 1 to
    /// [`MAX_DELIVERY_TIMEOUT_SECS`]. Default 60.
    pub delivery_timeout_secs: u64,
}

impl IntroducerSection {
    /// The introducer's limits.
    pub fn limits(&self) -> crate::introducer::IntroducerLimits {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        crate::introducer::IntroducerLimits {
            max_announcements: n(self.max_announcements),
            max_per_peer: n(self.max_announcements_per_peer),
            max_per_key: n(self.max_announcements_per_key),
            max_subscribers: n(self.max_subscribers),
            delivery_timeout: std::time::Duration::from_secs(self.delivery_timeout_secs),
        }
    }
}

impl Default for IntroducerSection {
    /// The defaults of [`IntroducerLimits`](crate::introducer::IntroducerLimits).
    fn default() -> Self {
        let d = crate::introducer::IntroducerLimits::default();
        IntroducerSection {
            max_announcements: d.max_announcements as u64,
            max_announcements_per_peer: d.max_per_peer as u64,
            max_announcements_per_key: d.max_per_key as u64,
            max_subscribers: d.max_subscribers as u64,
            delivery_timeout_secs: d.delivery_timeout.as_secs(),
        }
    }
}

/// A `[server:TUBID]` section: local settings for one storage server.
///
/// Equality ignores [`line`](ServerOverride::line).
#[derive(Debug, Clone)]
pub struct ServerOverride {
    /// The server, from the section name.
    pub tubid: TubId,
    /// The line of the section header (0 when built in code).
    pub line: usize,
    /// `nickname`: a local name for the server (same rules as `[node] nickname`).
    pub nickname: Option<String>,
    /// `furl`: the server's storage FURL; its TubId must be the section's. The node connects
    /// to it from the start, with or without an introducer (Tahoe's static servers), and
    /// ignores announcements for this TubId.
    pub furl: Option<Furl>,
    /// `hints`: comma-separated hints that replace the ones announced for this server (or
    /// those of `furl`).
    pub hints: Option<Vec<Hint>>,
    /// `tcp = tcp|tor|disabled`: how this server's `tcp:` hints are dialed (default: the
    /// `[connections]` policy). The node makes it the handler registry's rule for this
    /// TubId, so every dial to the server follows it.
    pub tcp: Option<TcpPolicy>,
}

impl PartialEq for ServerOverride {
    fn eq(&self, other: &Self) -> bool {
        let ServerOverride {
            tubid,
            line: _,
            nickname,
            furl,
            hints,
            tcp,
        } = self;
        *tubid == other.tubid
            && *nickname == other.nickname
            && *furl == other.furl
            && *hints == other.hints
            && *tcp == other.tcp
    }
}

impl Eq for ServerOverride {}

impl PartialEq for NodeConfig {
    fn eq(&self, other: &Self) -> bool {
        let NodeConfig {
            node,
            connections,
            tor,
            i2p,
            client,
            storage,
            introducer,
            server_overrides,
            lines: _,
        } = self;
        *node == other.node
            && *connections == other.connections
            && *tor == other.tor
            && *i2p == other.i2p
            && *client == other.client
            && *storage == other.storage
            && *introducer == other.introducer
            && *server_overrides == other.server_overrides
    }
}

impl Eq for NodeConfig {}

impl Default for NodeConfig {
    /// What an empty `tahoe.cfg` means.
    fn default() -> Self {
        NodeConfig {
            node: NodeSection {
                nickname: String::new(),
                reveal_ip: true,
                tub_port: TubPort::Default,
                tub_location: Location::Auto,
            },
            connections: ConnectionsSection {
                tcp: TcpPolicy::Direct,
            },
            tor: TorSection {
                enabled: false,
                launch: false,
                control_port: None,
                socks_port: None,
                executable: None,
                onion: false,
                onion_local_port: None,
                onion_external_port: DEFAULT_ONION_PORT,
                onion_private_key_file: PathBuf::from(DEFAULT_TOR_ONION_KEY),
                arti_network: None,
            },
            i2p: I2pSection {
                enabled: false,
                sam_port: None,
                dest: false,
                dest_port: None,
                dest_private_key_file: PathBuf::from(DEFAULT_I2P_DEST_KEY),
                inbound_length: None,
                outbound_length: None,
                inbound_quantity: None,
                outbound_quantity: None,
                router_network: None,
                router_reseed: Vec::new(),
            },
            client: ClientSection {
                introducers: Vec::new(),
                shares_needed: 3,
                shares_happy: 7,
                shares_total: 10,
                max_servers: crate::introducer::MAX_HELD_ANNOUNCEMENTS as u64,
            },
            storage: StorageSection {
                enabled: true,
                reserved_space: 0,
                storage_dir: None,
                max_space_per_client: crate::storage::DEFAULT_SPACE_PER_CLIENT,
            },
            introducer: IntroducerSection::default(),
            server_overrides: Vec::new(),
            lines: BTreeMap::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why `tahoe.cfg` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error(
        "{} is not UTF-8 text (line {line} has an invalid byte at offset {offset}); \
         save it as UTF-8",
        path.display()
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The line holding the first invalid byte.
        line: usize,
        /// The byte offset of the first invalid byte.
        offset: usize,
    },
    /// The file is larger than [`MAX_CFG_LEN`].
    #[error("tahoe.cfg is {len} bytes; the limit is {MAX_CFG_LEN}")]
    TooLarge {
        /// Its size.
        len: u64,
    },
    /// Something is wrong on one line.
    #[error("tahoe.cfg line {line}: {problem}")]
    At {
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        problem: Problem,
    },
    /// Something is wrong that no line can be blamed for (only for configurations built in
    /// code and passed to [`NodeConfig::validate`]).
    #[error("tahoe.cfg: {0}")]
    Whole(Problem),
}

impl ConfigError {
    /// The line blamed, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::At { line, .. } | ConfigError::NotUtf8 { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// What is wrong with `tahoe.cfg` (the part of a [`ConfigError`] after the line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A line over [`MAX_LINE_LEN`].
    #[error("the line is {len} bytes long; the limit is {MAX_LINE_LEN}")]
    LineTooLong {
        /// Its length.
        len: usize,
    },
    /// Neither blank, comment, section header nor `key = value`.
    #[error("expected `[section]`, `key = value`, or a comment starting with # or ;{hint}")]
    Syntax {
        /// More advice.
        hint: &'static str,
    },
    /// A section this build does not know.
    #[error("unknown section [{name}] (known sections: {KNOWN_SECTIONS})")]
    UnknownSection {
        /// The name, escaped.
        name: String,
    },
    /// A `[server:...]` section whose name is not a TubId.
    #[error("[server:{name}]: the section name must be server: and a TubId: {reason}")]
    ServerName {
        /// The text after `server:`, escaped.
        name: String,
        /// Why it is not a TubId.
        reason: folio_rpc::tubid::TubIdError,
    },
    /// A section header seen before.
    #[error("section [{name}] appears twice (first at line {first}); merge the two")]
    DuplicateSection {
        /// The name.
        name: String,
        /// The first header's line.
        first: usize,
    },
    /// A key before any section header.
    #[error("`{key}` is outside any section; put it under a [section] header")]
    OutsideSection {
        /// The key, escaped.
        key: String,
    },
    /// A key the section does not have.
    #[error("unknown key `{key}` in [{section}] (known keys: {known})")]
    UnknownKey {
        /// The section.
        section: String,
        /// The key, escaped.
        key: String,
        /// The section's keys.
        known: String,
    },
    /// A key seen before in the same section.
    #[error("`{key}` appears twice in [{section}] (first at line {first})")]
    DuplicateKey {
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The first one's line.
        first: usize,
    },
    /// `key =` with nothing after it.
    #[error("`{key}` in [{section}] is empty; remove the line to use the default")]
    Empty {
        /// The section.
        section: String,
        /// The key.
        key: String,
    },
    /// A value that does not parse or is out of range.
    #[error(
        "bad value {}for `{key}` in [{section}]: {reason}",
        value.as_ref().map(|v| format!("`{v}` ")).unwrap_or_default()
    )]
    Value {
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The value, escaped and shortened; `None` for FURLs, which hold secrets.
        value: Option<String>,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// Settings that contradict each other or are missing a companion.
    #[error("{0}")]
    Conflict(String),
    /// [`NodeConfig::validate`]: writing and reading back gives a different configuration.
    #[error(
        "the configuration does not survive writing and reading back \
         (a value holds something the file format cannot carry)"
    )]
    NotRepresentable,
}

/// One setting that would reveal this node's IP address (see [`NodeConfig::check_privacy`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyViolation {
    /// `[connections] tcp = tcp`.
    #[error(
        "tahoe.cfg line {line}: [connections] tcp = tcp dials tcp: hints directly, showing \
         servers this host's IP address; set `tcp = tor` (Tor carries them) or \
         `tcp = disabled`"
    )]
    DirectTcp {
        /// The line of `tcp`.
        line: usize,
    },
    /// `[connections] tcp` not set: the default is direct TCP.
    #[error(
        "[connections] tcp is not set, and the default is direct TCP, which shows servers \
         this host's IP address; add `tcp = tor` or `tcp = disabled` to [connections]"
    )]
    DefaultTcp,
    /// `tub.location` not set while `tub.port` listens: it means `AUTO`.
    #[error(
        "[node] tub.location is not set, which means AUTO: it would announce this host's IP \
         addresses; set it to the onion or I2P hints only (tor:NAME.onion:PORT, \
         i2p:NAME.b32.i2p), or set tub.port = disabled"
    )]
    MissingLocation,
    /// `tub.location` includes `AUTO` while `tub.port` listens.
    #[error(
        "tahoe.cfg line {line}: [node] tub.location includes AUTO, which announces this \
         host's IP addresses; list only tor: and i2p: hints"
    )]
    AutoLocation {
        /// The line of `tub.location`.
        line: usize,
    },
    /// `tub.location` has `tcp:` hints.
    #[error(
        "tahoe.cfg line {line}: [node] tub.location announces {}, and a tcp: hint names this \
         host's address; list only tor: and i2p: hints",
        join(.hints)
    )]
    TcpHints {
        /// The line of `tub.location`.
        line: usize,
        /// The `tcp:` hints.
        hints: Vec<Hint>,
    },
    /// `tub.location` has hints of types this build does not know.
    #[error(
        "tahoe.cfg line {line}: [node] tub.location announces {}, of a type this build does \
         not know, so it cannot tell whether it names this host; list only tor: and i2p: hints",
        join(.hints)
    )]
    UnknownHints {
        /// The line of `tub.location`.
        line: usize,
        /// The hints.
        hints: Vec<Hint>,
    },
    /// `tub.port` not set: TCP on all interfaces.
    #[error(
        "[node] tub.port is not set, which means TCP on all interfaces; set \
         tub.port = tcp:PORT:interface=127.0.0.1 (behind an onion service) or \
         tub.port = disabled"
    )]
    DefaultListener,
    /// `tub.port` listens on a non-loopback interface.
    #[error(
        "tahoe.cfg line {line}: [node] tub.port listens on {spec} ({}), where anyone who \
         finds this host can connect; listen on interface=127.0.0.1 (behind an onion \
         service) or set tub.port = disabled",
        if spec.addr.ip().is_unspecified() { "all interfaces" } else { "a non-loopback interface" }
    )]
    PublicListener {
        /// The line of `tub.port`.
        line: usize,
        /// The endpoint.
        spec: ListenSpec,
    },
    /// A `[server:...]` section with `tcp = tcp`.
    #[error(
        "tahoe.cfg line {line}: [server:{tubid}] tcp = tcp re-opens direct TCP for this \
         server; remove the line or set `tcp = tor` or `tcp = disabled`"
    )]
    ServerDirectTcp {
        /// The server.
        tubid: TubId,
        /// The line of its `tcp`.
        line: usize,
    },
    /// A `[server:...]` section with `tcp:` hints while TCP is disabled for it.
    #[error(
        "tahoe.cfg line {line}: [server:{tubid}] {key} has tcp: hints ({}), but TCP is \
         disabled for this server; remove them, or set `tcp = tor` in this section",
        join(.hints)
    )]
    ServerTcpHints {
        /// The server.
        tubid: TubId,
        /// The line of the key.
        line: usize,
        /// `hints` or `furl`.
        key: &'static str,
        /// The `tcp:` hints.
        hints: Vec<Hint>,
    },
}

/// Why a configuration with `reveal-IP-address = false` is refused: every offending setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PrivacyError {
    /// The line of `reveal-IP-address = false`, if it came from a file.
    pub line: Option<usize>,
    /// What is wrong, in file order as far as possible. Never empty.
    pub violations: Vec<PrivacyViolation>,
}

impl fmt::Display for PrivacyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reveal-IP-address = false")?;
        if let Some(l) = self.line {
            write!(f, " (tahoe.cfg line {l})")?;
        }
        let n = self.violations.len();
        write!(
            f,
            ", but {n} setting{} would reveal this node's IP address:",
            if n == 1 { "" } else { "s" }
        )?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

fn join(hints: &[Hint]) -> String {
    hints
        .iter()
        .map(Hint::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value as shown in an error: escaped, at most 80 characters.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Value parsers. Each returns the reason a value is refused, naming what is allowed.

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false (yes/no, on/off and 1/0 are accepted too)".into()),
    }
}

fn parse_uint(v: &str, max: u64) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| *n <= max)
}

fn parse_port(v: &str) -> Result<u16, String> {
    match parse_uint(v, 65535) {
        Some(p) if p > 0 => Ok(p as u16),
        _ => Err("expected a port number from 1 to 65535".into()),
    }
}

fn parse_small(v: &str, lo: u8, hi: u8) -> Result<u8, String> {
    match parse_uint(v, u64::from(hi)) {
        Some(n) if n >= u64::from(lo) => Ok(n as u8),
        _ => Err(format!("expected a number from {lo} to {hi}")),
    }
}

fn parse_count(v: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match parse_uint(v, hi) {
        Some(n) if n >= lo => Ok(n),
        _ => Err(format!("expected a number from {lo} to {hi}")),
    }
}

fn parse_shares(v: &str) -> Result<u16, String> {
    match parse_uint(v, u64::from(MAX_SHARES)) {
        Some(n) if n > 0 => Ok(n as u16),
        _ => Err(format!("expected a number from 1 to {MAX_SHARES}")),
    }
}

const SIZE_HELP: &str = "expected a number of bytes with an optional unit, such as 5G or \
                         500MiB (k/M/G/T/P/E and kB/MB/… are powers of 1000, \
                         KiB/MiB/… powers of 1024)";

/// Tahoe's `parse_abbreviated_size`: `^(\d+)([KMGTPE]?I?B?)$`, any case, with `I` only after
/// a unit letter.
fn parse_size(v: &str) -> Result<u64, String> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = v.split_at(digits);
    if num.is_empty() {
        return Err(SIZE_HELP.into());
    }
    let unit = unit.to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit);
    let (letter, binary) = match unit.strip_suffix('I') {
        Some(l) if !l.is_empty() => (l, true),
        Some(_) => return Err(SIZE_HELP.into()),
        None => (unit, false),
    };
    let power = match letter {
        "" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        "E" => 6,
        _ => return Err(SIZE_HELP.into()),
    };
    let base: u64 = if binary { 1024 } else { 1000 };
    let too_big = || format!("{v} is more than {} bytes", u64::MAX);
    let mut n: u64 = 0;
    for b in num.bytes() {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(too_big)?;
    }
    n.checked_mul(base.pow(power)).ok_or_else(too_big)
}

/// The shortest exact way to write `n` bytes that [`parse_size`] reads back.
fn format_size(n: u64) -> String {
    let mut best = n.to_string();
    for (base, suffix) in [(1000u64, ""), (1024, "iB")] {
        for (power, letter) in ["K", "M", "G", "T", "P", "E"].iter().enumerate() {
            let unit = base.pow(power as u32 + 1);
            if n != 0 && n.is_multiple_of(unit) {
                let text = format!("{}{letter}{suffix}", n / unit);
                if text.len() < best.len() {
                    best = text;
                }
            }
        }
    }
    best
}

/// `tcp:HOST:PORT` with a numeric HOST (`127.0.0.1`, `[::1]`).
fn parse_endpoint(v: &str) -> Result<SocketAddr, String> {
    const HELP: &str = "expected tcp:HOST:PORT with a numeric HOST, such as \
                        tcp:127.0.0.1:9051 or tcp:[::1]:9051";
    let rest = v.strip_prefix("tcp:").ok_or(HELP)?;
    let (host, port) = rest.rsplit_once(':').ok_or(HELP)?;
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(h) => h.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
        None => host.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
    };
    let ip = ip.ok_or_else(|| {
        if host.eq_ignore_ascii_case("localhost") {
            "write 127.0.0.1 rather than localhost (HOST must be a numeric address)".to_string()
        } else {
            HELP.to_string()
        }
    })?;
    Ok(SocketAddr::new(ip, parse_port(port)?))
}

fn write_endpoint(a: &SocketAddr) -> String {
    // SocketAddr brackets IPv6 addresses; addresses parsed here carry no scope or flow.
    format!("tcp:{}", SocketAddr::new(a.ip(), a.port()))
}

fn parse_path(v: &str) -> Result<PathBuf, String> {
    if v.chars().any(char::is_control) {
        return Err("a path cannot hold control characters".into());
    }
    Ok(PathBuf::from(v))
}

/// Characters a nickname may not hold besides controls: invisible and direction-changing
/// marks (which let one name pose as another) and line separators. Announcements are held to
/// the same rule.
pub fn is_deceptive(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn check_nickname(v: &str) -> Result<String, String> {
    check_nickname_text(v).map(|()| v.to_string())
}

/// The nickname rule, for `tahoe.cfg` and for announced nicknames alike: at most
/// [`MAX_NICKNAME_CHARS`] characters, none of them a control, invisible or
/// direction-changing character ([`is_deceptive`]). The error says what is allowed.
pub fn check_nickname_text(v: &str) -> Result<(), String> {
    if v.chars().count() > MAX_NICKNAME_CHARS {
        return Err(format!(
            "a nickname is at most {MAX_NICKNAME_CHARS} characters"
        ));
    }
    if v.chars().any(|c| c.is_control() || is_deceptive(c)) {
        return Err(
            "a nickname holds printable characters only (no control, invisible or \
                    direction-changing characters)"
                .into(),
        );
    }
    Ok(())
}

fn parse_policy(v: &str) -> Result<TcpPolicy, String> {
    match v {
        "tcp" => Ok(TcpPolicy::Direct),
        "tor" => Ok(TcpPolicy::Tor),
        "disabled" => Ok(TcpPolicy::Disabled),
        _ => Err("expected tcp (direct connections), tor or disabled".into()),
    }
}

fn policy_str(p: TcpPolicy) -> &'static str {
    match p {
        TcpPolicy::Direct => "tcp",
        TcpPolicy::Tor => "tor",
        TcpPolicy::Disabled => "disabled",
    }
}

/// Splits a comma-separated list, trimming each entry; refuses empty entries.
fn split_list(v: &str) -> Result<Vec<&str>, String> {
    let items: Vec<&str> = v.split(',').map(str::trim).collect();
    if let Some(i) = items.iter().position(|s| s.is_empty()) {
        return Err(format!(
            "entry {} of the comma-separated list is empty",
            i + 1
        ));
    }
    Ok(items)
}

fn parse_hint_list(items: &[&str]) -> Result<Vec<Hint>, String> {
    if items.len() > MAX_HINTS {
        return Err(format!("{} hints; the limit is {MAX_HINTS}", items.len()));
    }
    let mut hints: Vec<Hint> = Vec::with_capacity(items.len());
    for item in items {
        let h: Hint = item.parse().map_err(|e| {
            format!(
                "hint `{}`: {e} (hints look like tcp:example.org:3456, \
                 tor:NAME.onion:3457, i2p:NAME.b32.i2p)",
                shown(item)
            )
        })?;
        if let Hint::Unknown(text) = &h {
            // Foolscap's old untyped form, which Tahoe reads as TCP; here it would parse as a
            // hint of an unknown type named after the host.
            if let Some((host, port)) = text.split_once(':') {
                let hostlike = host.contains('.') || host.eq_ignore_ascii_case("localhost");
                if hostlike && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "hint `{}` is Foolscap's old HOST:PORT form; write tcp:{}",
                        shown(item),
                        shown(item)
                    ));
                }
            }
        }
        if hints.contains(&h) {
            return Err(format!("hint `{}` is listed twice", shown(item)));
        }
        hints.push(h);
    }
    Ok(hints)
}

fn parse_hints(v: &str) -> Result<Vec<Hint>, String> {
    parse_hint_list(&split_list(v)?)
}

fn parse_location(v: &str) -> Result<Location, String> {
    if v == "disabled" {
        return Ok(Location::Disabled);
    }
    let items = split_list(v)?;
    let autos = items.iter().filter(|s| **s == "AUTO").count();
    if autos > 1 {
        return Err("AUTO is listed twice".into());
    }
    if items.contains(&"disabled") {
        return Err("disabled cannot be combined with hints; use it alone".into());
    }
    if let Some(s) = items
        .iter()
        .find(|s| s.eq_ignore_ascii_case("auto") && **s != "AUTO")
    {
        return Err(format!("write AUTO in capitals, not `{}`", shown(s)));
    }
    let rest: Vec<&str> = items.into_iter().filter(|s| *s != "AUTO").collect();
    let hints = parse_hint_list(&rest)?;
    Ok(match (autos, hints.is_empty()) {
        (1, true) => Location::Auto,
        (1, false) => Location::AutoAnd(hints),
        _ => Location::Hints(hints),
    })
}

fn parse_tub_port(v: &str) -> Result<TubPort, String> {
    if v == "disabled" {
        return Ok(TubPort::Disabled);
    }
    let items = split_list(v)?;
    if items.len() > MAX_LISTEN {
        return Err(format!(
            "{} endpoints; the limit is {MAX_LISTEN}",
            items.len()
        ));
    }
    let mut specs: Vec<ListenSpec> = Vec::with_capacity(items.len());
    for item in items {
        // Tahoe reads a bare port number as tcp:PORT.
        let text = if !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()) {
            format!("tcp:{item}")
        } else {
            item.to_string()
        };
        let spec: ListenSpec = text.parse().map_err(|e| {
            format!(
                "{e} (expected disabled, or endpoints like tcp:3456 or \
                 tcp:3456:interface=127.0.0.1, separated by commas)"
            )
        })?;
        if specs.contains(&spec) {
            return Err(format!("endpoint `{}` is listed twice", shown(item)));
        }
        specs.push(spec);
    }
    Ok(TubPort::Listen(specs))
}

fn parse_furl(v: &str) -> Result<Furl, String> {
    v.parse::<Furl>()
        .map_err(|e| format!("not a valid FURL: {}", ErrorChain(&e)))
}

fn valid_introducer_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn has_inline_comment(v: &str) -> bool {
    v.as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_whitespace() && (w[1] == b'#' || w[1] == b';'))
}

// ---------------------------------------------------------------------------------------------
// Reading.

#[derive(Clone, Copy)]
enum Section {
    Node,
    Connections,
    Tor,
    I2p,
    Client,
    Storage,
    Introducer,
    Server(usize),
}

fn section_keys(s: Section) -> &'static [&'static str] {
    match s {
        Section::Node => NODE_KEYS,
        Section::Connections => CONNECTIONS_KEYS,
        Section::Tor => TOR_KEYS,
        Section::I2p => I2P_KEYS,
        Section::Client => CLIENT_KEYS,
        Section::Storage => STORAGE_KEYS,
        Section::Introducer => INTRODUCER_KEYS,
        Section::Server(_) => SERVER_KEYS,
    }
}

impl NodeConfig {
    /// Reads `tahoe.cfg` from text. Never panics; refuses anything not described in the
    /// [module documentation](self), naming the line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CFG_LEN {
            return Err(ConfigError::TooLarge {
                len: text.len() as u64,
            });
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut cfg = NodeConfig::default();
        let mut current: Option<(Section, String)> = None;
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let at = |problem| ConfigError::At { line, problem };
            if raw.len() > MAX_LINE_LEN {
                return Err(at(Problem::LineTooLong { len: raw.len() }));
            }
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            if let Some(inner) = t.strip_prefix('[') {
                let name = inner.strip_suffix(']').ok_or(at(Problem::Syntax {
                    hint: " (a section header is `[name]` alone on its line)",
                }))?;
                current = Some(cfg.open_section(name, line).map_err(at)?);
                continue;
            }
            let Some((key, value)) = t.split_once('=') else {
                let hint = if raw.starts_with(char::is_whitespace) {
                    " (continuation lines are not supported: keep each value on one line)"
                } else {
                    ""
                };
                return Err(at(Problem::Syntax { hint }));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(at(Problem::Syntax {
                    hint: " (the key before `=` is empty)",
                }));
            }
            let Some((section, name)) = &current else {
                return Err(at(Problem::OutsideSection { key: shown(key) }));
            };
            cfg.set(*section, name, key, value, line).map_err(at)?;
        }
        cfg.check().map_err(|(line, problem)| match line {
            Some(line) => ConfigError::At { line, problem },
            None => ConfigError::Whole(problem),
        })?;
        Ok(cfg)
    }

    /// Reads `tahoe.cfg` from a file: at most [`MAX_CFG_LEN`] bytes of UTF-8, then
    /// [`parse`](Self::parse).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_CFG_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() > MAX_CFG_LEN {
            let len = std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(bytes.len() as u64);
            return Err(ConfigError::TooLarge { len });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..offset]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            ConfigError::NotUtf8 {
                path: path.to_path_buf(),
                line,
                offset,
            }
        })?;
        Self::parse(&text)
    }

    /// The line a setting came from: `section` as written in the file (`node`,
    /// `server:TUBID`), `key` as spelled in the module documentation, `""` for the section
    /// header.
    pub fn line(&self, section: &str, key: &str) -> Option<usize> {
        self.lines
            .get(&(section.to_string(), key.to_string()))
            .copied()
    }

    fn open_section(&mut self, name: &str, line: usize) -> Result<(Section, String), Problem> {
        let mut server = None;
        let section = match name {
            "node" => Section::Node,
            "connections" => Section::Connections,
            "tor" => Section::Tor,
            "i2p" => Section::I2p,
            "client" => Section::Client,
            "storage" => Section::Storage,
            "introducer" => Section::Introducer,
            _ => match name.strip_prefix("server:") {
                Some(id) => {
                    let tubid: TubId = id.parse().map_err(|reason| Problem::ServerName {
                        name: shown(id),
                        reason,
                    })?;
                    server = Some(tubid);
                    Section::Server(self.server_overrides.len())
                }
                None => return Err(Problem::UnknownSection { name: shown(name) }),
            },
        };
        let k = (name.to_string(), String::new());
        if let Some(first) = self.lines.get(&k) {
            return Err(Problem::DuplicateSection {
                name: name.to_string(),
                first: *first,
            });
        }
        if let Some(tubid) = server {
            self.server_overrides.push(ServerOverride {
                tubid,
                line,
                nickname: None,
                furl: None,
                hints: None,
                tcp: None,
            });
        }
        self.lines.insert(k, line);
        Ok((section, name.to_string()))
    }

    fn set(
        &mut self,
        section: Section,
        name: &str,
        key: &str,
        value: &str,
        line: usize,
    ) -> Result<(), Problem> {
        let keys = section_keys(section);
        let lower = key.to_ascii_lowercase();
        let canonical: String = match keys.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            Some(k) => k.to_string(),
            None => match (section, introducer_name(&lower)) {
                (Section::Client, Some(_)) => lower.clone(),
                _ => {
                    let mut known = keys.join(", ");
                    if let Section::Client = section {
                        known = "introducer.furl, introducer.NAME.furl, shares.needed, \
                                 shares.happy, shares.total, max_servers"
                            .into();
                    }
                    return Err(Problem::UnknownKey {
                        section: name.to_string(),
                        key: shown(key),
                        known,
                    });
                }
            },
        };
        let k = (name.to_string(), canonical.clone());
        if let Some(first) = self.lines.get(&k) {
            return Err(Problem::DuplicateKey {
                section: name.to_string(),
                key: canonical,
                first: *first,
            });
        }
        let is_nickname = canonical == "nickname";
        let is_furl = canonical.ends_with("furl");
        if value.is_empty() && !(is_nickname && matches!(section, Section::Node)) {
            return Err(Problem::Empty {
                section: name.to_string(),
                key: canonical,
            });
        }
        let bad = |reason: String| Problem::Value {
            section: name.to_string(),
            key: canonical.clone(),
            value: (!is_furl).then(|| shown(value)),
            reason,
        };
        if value.len() > MAX_VALUE_LEN {
            return Err(bad(format!(
                "the value is {} bytes; the limit is {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        if !is_nickname && has_inline_comment(value) {
            return Err(bad(
                "comments go on their own line (a value cannot hold ` #` or ` ;`)".into(),
            ));
        }
        self.assign(section, &canonical, value).map_err(bad)?;
        self.lines.insert(k, line);
        Ok(())
    }

    fn assign(&mut self, section: Section, key: &str, v: &str) -> Result<(), String> {
        match section {
            Section::Node => {
                let n = &mut self.node;
                match key {
                    "nickname" => n.nickname = check_nickname(v)?,
                    "reveal-IP-address" => n.reveal_ip = parse_bool(v)?,
                    "tub.port" => n.tub_port = parse_tub_port(v)?,
                    _ => n.tub_location = parse_location(v)?,
                }
            }
            Section::Connections => self.connections.tcp = parse_policy(v)?,
            Section::Tor => {
                let t = &mut self.tor;
                match key {
                    "enabled" => t.enabled = parse_bool(v)?,
                    "launch" => t.launch = parse_bool(v)?,
                    "control.port" => t.control_port = Some(parse_endpoint(v)?),
                    "socks.port" => t.socks_port = Some(parse_endpoint(v)?),
                    "tor.executable" => t.executable = Some(parse_path(v)?),
                    "onion" => t.onion = parse_bool(v)?,
                    "onion.local_port" => t.onion_local_port = Some(parse_port(v)?),
                    "onion.external_port" => t.onion_external_port = parse_port(v)?,
                    "onion.private_key_file" => t.onion_private_key_file = parse_path(v)?,
                    _ => t.arti_network = Some(parse_path(v)?),
                }
            }
            Section::I2p => {
                let t = &mut self.i2p;
                match key {
                    "enabled" => t.enabled = parse_bool(v)?,
                    "sam.port" => t.sam_port = Some(parse_endpoint(v)?),
                    "router.network" => t.router_network = Some(parse_path(v)?),
                    "router.reseed" => t.router_reseed = parse_reseed_servers(v)?,
                    "dest" => t.dest = parse_bool(v)?,
                    "dest.port" => t.dest_port = Some(parse_port(v)?),
                    "dest.private_key_file" => t.dest_private_key_file = parse_path(v)?,
                    "inbound.length" => t.inbound_length = Some(parse_small(v, 0, 7)?),
                    "outbound.length" => t.outbound_length = Some(parse_small(v, 0, 7)?),
                    "inbound.quantity" => t.inbound_quantity = Some(parse_small(v, 1, 16)?),
                    _ => t.outbound_quantity = Some(parse_small(v, 1, 16)?),
                }
            }
            Section::Client => {
                let c = &mut self.client;
                match key {
                    "shares.needed" => c.shares_needed = parse_shares(v)?,
                    "shares.happy" => c.shares_happy = parse_shares(v)?,
                    "shares.total" => c.shares_total = parse_shares(v)?,
                    "max_servers" => c.max_servers = parse_count(v, 1, MAX_MAX_SERVERS)?,
                    _ => {
                        let name = introducer_name(key).unwrap_or("default");
                        if name != "default" && !valid_introducer_name(name) {
                            return Err(format!(
                                "the introducer name `{}` must be 1 to 32 of a-z 0-9 _ -",
                                shown(name)
                            ));
                        }
                        if key != "introducer.furl" && name == "default" {
                            return Err("the name `default` belongs to introducer.furl; \
                                        use that key or pick another name"
                                .into());
                        }
                        if c.introducers.len() >= MAX_INTRODUCERS {
                            return Err(format!("more than {MAX_INTRODUCERS} introducers"));
                        }
                        c.introducers.push((name.to_string(), parse_furl(v)?));
                    }
                }
            }
            Section::Storage => {
                let s = &mut self.storage;
                match key {
                    "enabled" => s.enabled = parse_bool(v)?,
                    "reserved_space" => s.reserved_space = parse_size(v)?,
                    "max_space_per_client" => {
                        s.max_space_per_client = parse_size(v)?;
                        if s.max_space_per_client == 0 {
                            return Err("a client needs some space: expected at least 1 byte \
                                        (such as 64GiB)"
                                .into());
                        }
                    }
                    _ => s.storage_dir = Some(parse_path(v)?),
                }
            }
            Section::Introducer => {
                let t = &mut self.introducer;
                let table = |v| parse_count(v, 1, MAX_INTRODUCER_TABLE);
                match key {
                    "max_announcements" => t.max_announcements = table(v)?,
                    "max_announcements_per_peer" => t.max_announcements_per_peer = table(v)?,
                    "max_announcements_per_key" => t.max_announcements_per_key = table(v)?,
                    "max_subscribers" => t.max_subscribers = table(v)?,
                    _ => {
                        t.delivery_timeout_secs = parse_count(v, 1, MAX_DELIVERY_TIMEOUT_SECS)
                            .map_err(|e| format!("{e} (seconds)"))?
                    }
                }
            }
            Section::Server(i) => {
                let s = &mut self.server_overrides[i];
                match key {
                    "nickname" => s.nickname = Some(check_nickname(v)?),
                    "furl" => s.furl = Some(parse_furl(v)?),
                    "hints" => s.hints = Some(parse_hints(v)?),
                    _ => s.tcp = Some(parse_policy(v)?),
                }
            }
        }
        Ok(())
    }

    /// Rules between settings. Returns the line to blame (the later or more specific
    /// setting) and the problem.
    fn check(&self) -> Result<(), (Option<usize>, Problem)> {
        let l = |s: &str, k: &str| self.line(s, k);
        let at = |s: &str, k: &str| l(s, k).map(|n| format!(" (line {n})")).unwrap_or_default();
        let fail = |line: Option<usize>, msg: String| Err((line, Problem::Conflict(msg)));
        let (node, tor, i2p) = (&self.node, &self.tor, &self.i2p);

        // Listening and announcing.
        let tcp_listens = !matches!(node.tub_port, TubPort::Disabled);
        let listens = tcp_listens || tor.onion || i2p.dest;
        match &node.tub_location {
            Location::Disabled if listens => {
                let why = if tcp_listens {
                    format!("tub.port{} listens", at("node", "tub.port"))
                } else if tor.onion {
                    format!("[tor] onion = true{}", at("tor", "onion"))
                } else {
                    format!("[i2p] dest = true{}", at("i2p", "dest"))
                };
                return fail(
                    l("node", "tub.location"),
                    format!(
                        "tub.location = disabled, but {why}: a node that listens must say \
                         where (use AUTO or hints), or stop listening"
                    ),
                );
            }
            Location::Hints(_) | Location::AutoAnd(_) if !listens => {
                return fail(
                    l("node", "tub.location"),
                    format!(
                        "tub.location announces hints, but nothing listens (tub.port = \
                         disabled{}, no [tor] onion, no [i2p] dest); set \
                         tub.location = disabled",
                        at("node", "tub.port")
                    ),
                );
            }
            _ => {}
        }

        // Tor.
        if tor.launch && tor.control_port.is_some() {
            return fail(
                l("tor", "control.port"),
                format!(
                    "[tor] launch = true{} and control.port cannot go together: a launched \
                     tor has its own control port; remove one of them",
                    at("tor", "launch")
                ),
            );
        }
        if tor.launch && tor.socks_port.is_some() {
            return fail(
                l("tor", "socks.port"),
                format!(
                    "[tor] launch = true{} and socks.port cannot go together: a launched tor \
                     has its own SOCKS port; remove one of them",
                    at("tor", "launch")
                ),
            );
        }
        if tor.arti_network.is_some()
            && (tor.launch || tor.control_port.is_some() || tor.socks_port.is_some())
        {
            return fail(
                l("tor", "arti.network"),
                "[tor] arti.network is for the embedded Tor client, which a launched or running \
                 tor (launch, control.port, socks.port) replaces; remove one of them"
                    .into(),
            );
        }
        if tor.onion && !tor.enabled {
            return fail(
                l("tor", "onion"),
                format!(
                    "[tor] onion = true needs [tor] enabled = true{}",
                    at("tor", "enabled")
                ),
            );
        }
        if tor.onion && !tor.launch && tor.control_port.is_none() && tor.socks_port.is_some() {
            return fail(
                l("tor", "onion"),
                "[tor] onion = true needs control.port (a running tor's control port) or \
                 launch = true to make the onion service: a SOCKS port cannot; or remove \
                 socks.port to use the embedded Tor client"
                    .into(),
            );
        }
        let tor_needed = |line: Option<usize>, what: String| {
            fail(
                line,
                format!(
                    "{what} needs Tor, but [tor] is not enabled{}; set [tor] enabled = true \
                     (the embedded Tor client, or a tor's control.port, socks.port, or \
                     launch = true)",
                    at("tor", "enabled")
                ),
            )
        };
        if self.connections.tcp == TcpPolicy::Tor && !tor.enabled {
            return tor_needed(l("connections", "tcp"), "[connections] tcp = tor".into());
        }

        // I2P.
        if !i2p.router_reseed.is_empty() && i2p.router_network.is_some() {
            return fail(
                l("i2p", "router.reseed"),
                "[i2p] router.reseed is for the embedded I2P router on the public network: a \
                 test network (router.network) never reseeds; remove one of them"
                    .into(),
            );
        }
        if i2p.router_network.is_some() && i2p.sam_port.is_some() {
            return fail(
                l("i2p", "router.network"),
                "[i2p] router.network is for the embedded I2P router, which a running router's \
                 SAM bridge (sam.port) replaces; remove one of them"
                    .into(),
            );
        }
        if i2p.dest && !i2p.enabled {
            return fail(
                l("i2p", "dest"),
                format!(
                    "[i2p] dest = true needs [i2p] enabled = true{}",
                    at("i2p", "enabled")
                ),
            );
        }

        // Shares.
        let c = &self.client;
        let pairs = [
            (
                "shares.needed",
                c.shares_needed,
                "shares.happy",
                c.shares_happy,
            ),
            (
                "shares.happy",
                c.shares_happy,
                "shares.total",
                c.shares_total,
            ),
        ];
        for (ak, a, bk, b) in pairs {
            if a > b {
                let line = l("client", ak).max(l("client", bk));
                return fail(
                    line,
                    format!(
                        "[client] shares must satisfy 1 <= shares.needed <= shares.happy <= \
                         shares.total <= {MAX_SHARES}, but {ak} = {a}{} is more than \
                         {bk} = {b}{}",
                        at("client", ak),
                        at("client", bk)
                    ),
                );
            }
        }

        // Introducer limits: the per-publisher ones within the whole.
        let intro = &self.introducer;
        for (key, v) in [
            (
                "max_announcements_per_peer",
                intro.max_announcements_per_peer,
            ),
            ("max_announcements_per_key", intro.max_announcements_per_key),
        ] {
            if v > intro.max_announcements {
                let line = l("introducer", key).max(l("introducer", "max_announcements"));
                return fail(
                    line,
                    format!(
                        "[introducer] {key} = {v}{} is more than max_announcements = {}{}",
                        at("introducer", key),
                        intro.max_announcements,
                        at("introducer", "max_announcements")
                    ),
                );
            }
        }

        // Servers.
        for s in &self.server_overrides {
            let name = format!("server:{}", s.tubid);
            if let Some(f) = &s.furl {
                if f.tubid() != s.tubid {
                    return fail(
                        l(&name, "furl"),
                        format!(
                            "[{name}] furl names another server ({}); a server section's \
                             FURL must have the section's TubId",
                            f.tubid()
                        ),
                    );
                }
            }
            if s.tcp == Some(TcpPolicy::Tor) && !tor.enabled {
                return tor_needed(l(&name, "tcp"), format!("[{name}] tcp = tor"));
            }
        }
        Ok(())
    }

    /// Checks a configuration built in code: it must write as a file that reads back as the
    /// same configuration (and so passes every check [`parse`](Self::parse) makes).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let back = Self::parse(&self.to_cfg_string())?;
        if back == *self {
            Ok(())
        } else {
            Err(ConfigError::Whole(Problem::NotRepresentable))
        }
    }
}

fn introducer_name(lower_key: &str) -> Option<&str> {
    lower_key.strip_prefix("introducer.")?.strip_suffix(".furl")
}

// ---------------------------------------------------------------------------------------------
// Writing.

const HEADER: &str = "\
# tahoe.cfg: the configuration of a Folio node (Tahoe-LAFS section and key names).
# Each line is `[section]`, `key = value`, or a comment starting with # or ; (comments go
# on their own line). Unknown sections and keys are refused. A commented-out key shows
# its default or an example.
";

struct Writer(String);

impl Writer {
    fn section(&mut self, name: &str, about: &str) {
        self.0.push('\n');
        self.comment(about);
        self.0.push_str(&format!("[{name}]\n"));
    }

    fn comment(&mut self, text: &str) {
        for l in text.lines() {
            self.0.push_str("# ");
            self.0.push_str(l);
            self.0.push('\n');
        }
    }

    /// `key = value` when set, else `#key = example`.
    fn key(&mut self, key: &str, value: Option<String>, example: &str) {
        match value {
            Some(v) => self.0.push_str(&format!("{key} = {v}\n")),
            None => self.0.push_str(&format!("#{key} = {example}\n")),
        }
    }
}

fn bool_str(b: bool) -> String {
    if b { "true" } else { "false" }.to_string()
}

/// `Some(text)` when `value` differs from `default`.
fn unless<T: PartialEq>(value: &T, default: &T, text: impl FnOnce(&T) -> String) -> Option<String> {
    (value != default).then(|| text(value))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

impl NodeConfig {
    /// Writes the configuration as a commented, canonical `tahoe.cfg`: settings that differ
    /// from their defaults as `key = value`, the others commented out. A configuration read by
    /// [`parse`](Self::parse) writes as a file that reads back equal (when the written file
    /// stays within [`MAX_CFG_LEN`]); for one built in code, [`validate`](Self::validate)
    /// checks that.
    pub fn to_cfg_string(&self) -> String {
        let d = NodeConfig::default();
        let mut w = Writer(HEADER.to_string());

        let n = &self.node;
        w.section("node", "This node.");
        w.comment("A name shown to other nodes: at most 64 printable characters.");
        w.key(
            "nickname",
            (!n.nickname.is_empty()).then(|| n.nickname.clone()),
            "",
        );
        w.comment(
            "false: never reveal this host's IP address. Connections then go through Tor or\n\
             I2P only, and the node refuses to start with any setting that would reveal it.",
        );
        w.key(
            "reveal-IP-address",
            unless(&n.reveal_ip, &d.node.reveal_ip, |b| bool_str(*b)),
            "true",
        );
        w.comment(
            "Where to listen for TCP: `disabled`, or endpoints separated by commas, such as\n\
             tcp:3456 (all interfaces) or tcp:3456:interface=127.0.0.1. Default: TCP on all\n\
             interfaces, on a port the system picks.",
        );
        w.key(
            "tub.port",
            match &n.tub_port {
                TubPort::Default => None,
                TubPort::Disabled => Some("disabled".into()),
                TubPort::Listen(specs) => Some(list(specs)),
            },
            "tcp:3456",
        );
        w.comment(
            "The hints this node announces: AUTO (the listeners' own addresses), `disabled`,\n\
             or hints such as tcp:example.org:3456, tor:NAME.onion:3457, i2p:NAME.b32.i2p,\n\
             separated by commas (AUTO may be one of them). Default: AUTO.",
        );
        w.key(
            "tub.location",
            match &n.tub_location {
                Location::Auto => None,
                Location::Disabled => Some("disabled".into()),
                Location::Hints(h) if h.is_empty() => Some("disabled".into()),
                Location::Hints(h) => Some(list(h)),
                Location::AutoAnd(h) => Some(format!("AUTO,{}", list(h))),
            },
            "AUTO",
        );

        w.section("connections", "How connection hints are dialed.");
        w.comment("tcp: hints: `tcp` (directly), `tor` (through Tor), or `disabled` (skipped).");
        w.key(
            "tcp",
            unless(&self.connections.tcp, &d.connections.tcp, |p| {
                policy_str(*p).into()
            }),
            "tcp",
        );

        let t = &self.tor;
        w.section(
            "tor",
            "Tor: for tor: hints, for `tcp = tor`, and for an onion service.",
        );
        w.comment(
            "Use Tor. With none of launch, control.port and socks.port: the embedded Tor\n\
             client (arti), state in private/arti.",
        );
        w.key(
            "enabled",
            unless(&t.enabled, &d.tor.enabled, |b| bool_str(*b)),
            "false",
        );
        w.comment("Start a tor of our own (tor.executable, default `tor` on the PATH).");
        w.key(
            "launch",
            unless(&t.launch, &d.tor.launch, |b| bool_str(*b)),
            "false",
        );
        w.key(
            "tor.executable",
            t.executable.as_deref().map(path_str),
            "/usr/bin/tor",
        );
        w.comment("A running tor's control and SOCKS ports (numeric addresses).");
        w.key(
            "control.port",
            t.control_port.as_ref().map(write_endpoint),
            "tcp:127.0.0.1:9051",
        );
        w.key(
            "socks.port",
            t.socks_port.as_ref().map(write_endpoint),
            "tcp:127.0.0.1:9050",
        );
        w.comment(
            "Listen on an onion service (the embedded client, control.port or launch).\n\
             The key file (not with the embedded client, whose key is in private/arti) is\n\
             relative to the node's directory.",
        );
        w.key(
            "onion",
            unless(&t.onion, &d.tor.onion, |b| bool_str(*b)),
            "false",
        );
        w.key(
            "onion.local_port",
            t.onion_local_port.map(|p| p.to_string()),
            "3457",
        );
        w.key(
            "onion.external_port",
            unless(&t.onion_external_port, &d.tor.onion_external_port, |p| {
                p.to_string()
            }),
            &DEFAULT_ONION_PORT.to_string(),
        );
        w.key(
            "onion.private_key_file",
            unless(
                &t.onion_private_key_file,
                &d.tor.onion_private_key_file,
                |p| path_str(p),
            ),
            DEFAULT_TOR_ONION_KEY,
        );
        w.comment(
            "Test networks only: a private Tor network for the embedded client to join\n\
             (one relay per line: [v3ident=HEX] rsa=HEX ed=BASE64 orport=IP:PORT).",
        );
        w.key(
            "arti.network",
            t.arti_network.as_deref().map(path_str),
            "/path/to/network.txt",
        );

        let i = &self.i2p;
        w.section(
            "i2p",
            "I2P: for i2p: hints and a destination. Through a running router's SAM bridge\n\
             (sam.port), or, with no sam.port, an embedded I2P router (state in\n\
             private/i2p-router).",
        );
        w.key(
            "enabled",
            unless(&i.enabled, &d.i2p.enabled, |b| bool_str(*b)),
            "false",
        );
        w.key(
            "sam.port",
            i.sam_port.as_ref().map(write_endpoint),
            &write_endpoint(&DEFAULT_SAM_PORT),
        );
        w.comment(
            "Test networks only, with the embedded router: a private I2P network to join\n\
             (lines `net_id N` and `router PATH-TO-routerInfo.dat`); it never reseeds. Without\n\
             it the embedded router joins the public network, from its netDb in\n\
             private/i2p-router/netdb/, reseeding over HTTPS when that knows too few routers.",
        );
        w.key(
            "router.network",
            i.router_network.as_deref().map(path_str),
            "/path/to/i2p-network.txt",
        );
        w.comment(
            "The embedded router's reseed servers (https:// URLs, comma separated), instead\n\
             of the I2P reseed servers built in. On the public network the embedded router\n\
             connects to the reseed servers (HTTPS, names looked up with the system's DNS)\n\
             and to I2P peers directly from this host's IP address, as every I2P router\n\
             does: they learn that this IP runs I2P. --hide-ip still holds: the node's FURL\n\
             names only its I2P destination, which nothing links to this IP address.",
        );
        w.key(
            "router.reseed",
            (!i.router_reseed.is_empty()).then(|| i.router_reseed.join(",")),
            "https://reseed.example/,https://reseed2.example:8443/",
        );
        w.comment(
            "Listen on an I2P destination. The key file is relative to the node's directory.",
        );
        w.key(
            "dest",
            unless(&i.dest, &d.i2p.dest, |b| bool_str(*b)),
            "false",
        );
        w.key("dest.port", i.dest_port.map(|p| p.to_string()), "3457");
        w.key(
            "dest.private_key_file",
            unless(
                &i.dest_private_key_file,
                &d.i2p.dest_private_key_file,
                |p| path_str(p),
            ),
            DEFAULT_I2P_DEST_KEY,
        );
        w.comment("Tunnel hops (0 to 7) and tunnel counts (1 to 16). Default: the router's.");
        for (key, v) in [
            ("inbound.length", i.inbound_length),
            ("outbound.length", i.outbound_length),
            ("inbound.quantity", i.inbound_quantity),
            ("outbound.quantity", i.outbound_quantity),
        ] {
            w.key(
                key,
                v.map(|v| v.to_string()),
                if key.ends_with("length") { "3" } else { "2" },
            );
        }

        let c = &self.client;
        w.section("client", "Using the grid.");
        w.comment(
            "Introducers: introducer.furl, and more as introducer.NAME.furl (NAME: a-z 0-9 _ -).",
        );
        if c.introducers.is_empty() {
            w.key("introducer.furl", None, "folio://TUBID@HINTS/SWISSNUM");
        }
        for (name, furl) in &c.introducers {
            let key = if name == "default" {
                "introducer.furl".to_string()
            } else {
                format!("introducer.{name}.furl")
            };
            w.key(&key, Some(furl.to_string()), "");
        }
        w.comment(
            "Erasure coding: any shares.needed of shares.total shares rebuild a file; an\n\
             upload succeeds once shares.happy servers hold shares.\n\
             1 <= shares.needed <= shares.happy <= shares.total <= 256.",
        );
        for (key, v, dv) in [
            ("shares.needed", c.shares_needed, d.client.shares_needed),
            ("shares.happy", c.shares_happy, d.client.shares_happy),
            ("shares.total", c.shares_total, d.client.shares_total),
        ] {
            w.key(key, unless(&v, &dv, |v| v.to_string()), &dv.to_string());
        }
        w.comment(
            "The most storage servers to learn from introducers (and dial); announcements\n\
             from new servers past it are ignored.",
        );
        w.key(
            "max_servers",
            unless(&c.max_servers, &d.client.max_servers, |n| n.to_string()),
            &d.client.max_servers.to_string(),
        );

        let s = &self.storage;
        w.section("storage", "The storage server.");
        w.key(
            "enabled",
            unless(&s.enabled, &d.storage.enabled, |b| bool_str(*b)),
            "true",
        );
        w.comment(
            "Space to leave free on the volume: bytes, or with a unit (5G, 500MiB; k/M/G/T\n\
             are powers of 1000, KiB/MiB/GiB/TiB powers of 1024).",
        );
        w.key(
            "reserved_space",
            unless(&s.reserved_space, &d.storage.reserved_space, |n| {
                format_size(*n)
            }),
            "0",
        );
        w.comment("Where shares are kept, relative to the node's directory. Default: storage.");
        w.key(
            "storage_dir",
            s.storage_dir.as_deref().map(path_str),
            "storage",
        );
        w.comment(
            "The most space one client (one peer TubId) may hold at once: promised to its\n\
             unfinished uploads, plus what its mutable slot writes grew. Same units as\n\
             reserved_space.",
        );
        w.key(
            "max_space_per_client",
            unless(
                &s.max_space_per_client,
                &d.storage.max_space_per_client,
                |n| format_size(*n),
            ),
            &format_size(d.storage.max_space_per_client),
        );

        let i = &self.introducer;
        if *i != d.introducer {
            let di = &d.introducer;
            w.section(
                "introducer",
                "Limits of an introducer node (other nodes ignore this section).",
            );
            for (key, v, dv) in [
                (
                    "max_announcements",
                    i.max_announcements,
                    di.max_announcements,
                ),
                (
                    "max_announcements_per_peer",
                    i.max_announcements_per_peer,
                    di.max_announcements_per_peer,
                ),
                (
                    "max_announcements_per_key",
                    i.max_announcements_per_key,
                    di.max_announcements_per_key,
                ),
                ("max_subscribers", i.max_subscribers, di.max_subscribers),
                (
                    "delivery_timeout",
                    i.delivery_timeout_secs,
                    di.delivery_timeout_secs,
                ),
            ] {
                w.key(key, unless(&v, &dv, |v| v.to_string()), &dv.to_string());
            }
        }

        if !self.server_overrides.is_empty() {
            w.0.push('\n');
            w.comment(
                "Local settings for particular storage servers: nickname, furl (with the\n\
                 section's TubId), hints (replacing the announced ones), tcp = tcp|tor|disabled.",
            );
        }
        for o in &self.server_overrides {
            w.0.push_str(&format!("\n[server:{}]\n", o.tubid));
            if let Some(n) = &o.nickname {
                w.key("nickname", Some(n.clone()), "");
            }
            if let Some(f) = &o.furl {
                w.key("furl", Some(f.to_string()), "");
            }
            if let Some(h) = &o.hints {
                w.key("hints", Some(list(h)), "");
            }
            if let Some(p) = o.tcp {
                w.key("tcp", Some(policy_str(p).into()), "");
            }
        }
        w.0
    }
}

// ---------------------------------------------------------------------------------------------
// Privacy.

impl NodeConfig {
    /// With `reveal-IP-address = false`, refuses every setting that would let a connection
    /// show this host's IP address: direct TCP (`[connections] tcp = tcp`, or not set), an
    /// `AUTO` or missing `tub.location` while `tub.port` listens, `tcp:` (or unknown) hints in
    /// `tub.location`, a TCP listener that is not on loopback (or `tub.port` not set), and
    /// `[server:...]` sections that re-open direct TCP or give `tcp:` hints while TCP is
    /// disabled for that server. Returns all of them at once. With `reveal-IP-address = true`
    /// there is nothing to check.
    pub fn check_privacy(&self) -> Result<(), PrivacyError> {
        if self.node.reveal_ip {
            return Ok(());
        }
        let mut v = Vec::new();
        let node_line = |k: &str| self.line("node", k).unwrap_or(0);

        // [node], in file order of its keys as far as it matters.
        let tcp_listens = match &self.node.tub_port {
            TubPort::Disabled => false,
            TubPort::Default => {
                v.push(PrivacyViolation::DefaultListener);
                true
            }
            TubPort::Listen(specs) => {
                for spec in specs {
                    if !spec.addr.ip().is_loopback() {
                        v.push(PrivacyViolation::PublicListener {
                            line: node_line("tub.port"),
                            spec: *spec,
                        });
                    }
                }
                true
            }
        };
        let hints: &[Hint] = match &self.node.tub_location {
            Location::Auto if tcp_listens => {
                match self.line("node", "tub.location") {
                    Some(line) => v.push(PrivacyViolation::AutoLocation { line }),
                    None => v.push(PrivacyViolation::MissingLocation),
                }
                &[]
            }
            Location::AutoAnd(h) => {
                if tcp_listens {
                    v.push(PrivacyViolation::AutoLocation {
                        line: node_line("tub.location"),
                    });
                }
                h
            }
            Location::Hints(h) => h,
            Location::Auto | Location::Disabled => &[],
        };
        let of_kind = |pred: &dyn Fn(&Hint) -> bool, hints: &[Hint]| -> Vec<Hint> {
            hints.iter().filter(|h| pred(h)).cloned().collect()
        };
        let tcp_hints = of_kind(&|h| matches!(h, Hint::Tcp { .. }), hints);
        if !tcp_hints.is_empty() {
            v.push(PrivacyViolation::TcpHints {
                line: node_line("tub.location"),
                hints: tcp_hints,
            });
        }
        let unknown = of_kind(&|h| matches!(h, Hint::Unknown(_)), hints);
        if !unknown.is_empty() {
            v.push(PrivacyViolation::UnknownHints {
                line: node_line("tub.location"),
                hints: unknown,
            });
        }

        // [connections].
        if self.connections.tcp == TcpPolicy::Direct {
            match self.line("connections", "tcp") {
                Some(line) => v.push(PrivacyViolation::DirectTcp { line }),
                None => v.push(PrivacyViolation::DefaultTcp),
            }
        }

        // [server:...]: an override must never re-open direct TCP.
        for o in &self.server_overrides {
            let name = format!("server:{}", o.tubid);
            let line = |k: &str| self.line(&name, k).unwrap_or(o.line);
            if o.tcp == Some(TcpPolicy::Direct) {
                v.push(PrivacyViolation::ServerDirectTcp {
                    tubid: o.tubid,
                    line: line("tcp"),
                });
            }
            if o.tcp.unwrap_or(self.connections.tcp) == TcpPolicy::Disabled {
                let sources: [(&'static str, &[Hint]); 2] = [
                    ("hints", o.hints.as_deref().unwrap_or(&[])),
                    ("furl", o.furl.as_ref().map(Furl::hints).unwrap_or(&[])),
                ];
                for (key, hints) in sources {
                    let tcp = of_kind(&|h| matches!(h, Hint::Tcp { .. }), hints);
                    if !tcp.is_empty() {
                        v.push(PrivacyViolation::ServerTcpHints {
                            tubid: o.tubid,
                            line: line(key),
                            key,
                            hints: tcp,
                        });
                    }
                }
            }
        }

        if v.is_empty() {
            Ok(())
        } else {
            Err(PrivacyError {
                line: self.line("node", "reveal-IP-address"),
                violations: v,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tubid(byte: u8) -> TubId {
        TubId::from_bytes([byte; 32])
    }

    fn furl_for(t: TubId, hints: &str) -> String {
        format!("folio://{t}@{hints}/swiss")
    }

    fn onion() -> String {
        format!("{}.onion", "a".repeat(56))
    }

    fn i2p() -> String {
        format!("{}.b32.i2p", "b".repeat(52))
    }

    /// The error message of a refused configuration.
    fn refused(text: &str) -> String {
        match NodeConfig::parse(text) {
            Ok(c) => panic!("accepted:\n{text}\n{c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_refused(text: &str, expected: &[&str]) {
        let msg = refused(text);
        for part in expected {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }

    fn example() -> String {
        let intro = furl_for(tubid(1), "tcp:intro.example.org:3458");
        let second = furl_for(tubid(2), &format!("tor:{}:3457", onion()));
        let server = furl_for(tubid(3), "tcp:10.0.0.3:4000");
        format!(
            "# A node.\n\
             [node]\n\
             nickname = alice's node #1\n\
             reveal-IP-address = yes\n\
             tub.port = tcp:3456,tcp:3457:interface=127.0.0.1\n\
             tub.location = AUTO,tcp:example.org:3456\n\
             \n\
             [connections]\n\
             tcp = tor\n\
             \n\
             ; Tor through a running daemon.\n\
             [tor]\n\
             enabled = true\n\
             control.port = tcp:127.0.0.1:9051\n\
             socks.port = tcp:[::1]:9050\n\
             onion = true\n\
             onion.local_port = 3457\n\
             onion.external_port = 80\n\
             onion.private_key_file = private/onion.key\n\
             \n\
             [i2p]\n\
             enabled = 1\n\
             sam.port = tcp:127.0.0.1:7657\n\
             dest = on\n\
             dest.port = 9\n\
             inbound.length = 0\n\
             outbound.length = 7\n\
             inbound.quantity = 1\n\
             outbound.quantity = 16\n\
             \n\
             [client]\n\
             introducer.furl = {intro}\n\
             introducer.second-one.furl = {second}\n\
             shares.needed = 2\n\
             shares.happy = 5\n\
             shares.total = 6\n\
             \n\
             [storage]\n\
             enabled = false\n\
             reserved_space = 5GiB\n\
             storage_dir = /srv/shares\n\
             \n\
             [server:{t3}]\n\
             nickname = bob\n\
             furl = {server}\n\
             hints = tcp:10.0.0.3:4000, i2p:{i2p}\n\
             tcp = tcp\n",
            t3 = tubid(3),
            i2p = i2p(),
        )
    }

    #[test]
    fn the_example_parses_to_the_expected_values() {
        let c = NodeConfig::parse(&example()).unwrap();
        assert_eq!(c.node.nickname, "alice's node #1");
        assert!(c.node.reveal_ip);
        assert_eq!(
            c.node.tub_port,
            TubPort::Listen(vec![
                "tcp:3456".parse().unwrap(),
                "tcp:3457:interface=127.0.0.1".parse().unwrap()
            ])
        );
        assert_eq!(
            c.node.tub_location,
            Location::AutoAnd(vec!["tcp:example.org:3456".parse().unwrap()])
        );
        assert_eq!(c.connections.tcp, TcpPolicy::Tor);
        assert!(c.tor.enabled && c.tor.onion && !c.tor.launch);
        assert_eq!(c.tor.control_port, Some("127.0.0.1:9051".parse().unwrap()));
        assert_eq!(c.tor.socks_port, Some("[::1]:9050".parse().unwrap()));
        assert_eq!(c.tor.onion_local_port, Some(3457));
        assert_eq!(c.tor.onion_external_port, 80);
        assert_eq!(c.tor.onion_private_key_file, Path::new("private/onion.key"));
        assert_eq!(c.tor.executable, None);
        assert!(c.i2p.enabled && c.i2p.dest);
        assert_eq!(c.i2p.sam_port, Some("127.0.0.1:7657".parse().unwrap()));
        assert_eq!(c.i2p.dest_port, Some(9));
        assert_eq!(c.i2p.dest_private_key_file, Path::new(DEFAULT_I2P_DEST_KEY));
        assert_eq!(
            (
                c.i2p.inbound_length,
                c.i2p.outbound_length,
                c.i2p.inbound_quantity,
                c.i2p.outbound_quantity
            ),
            (Some(0), Some(7), Some(1), Some(16))
        );
        let names: Vec<&str> = c
            .client
            .introducers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["default", "second-one"]);
        assert_eq!(c.client.introducers[0].1.tubid(), tubid(1));
        assert_eq!(c.client.introducers[1].1.tubid(), tubid(2));
        assert_eq!(
            (
                c.client.shares_needed,
                c.client.shares_happy,
                c.client.shares_total
            ),
            (2, 5, 6)
        );
        assert!(!c.storage.enabled);
        assert_eq!(c.storage.reserved_space, 5 << 30);
        assert_eq!(
            c.storage.storage_dir.as_deref(),
            Some(Path::new("/srv/shares"))
        );
        assert_eq!(c.server_overrides.len(), 1);
        let s = &c.server_overrides[0];
        assert_eq!(s.tubid, tubid(3));
        assert_eq!(s.line, 43);
        assert_eq!(s.nickname.as_deref(), Some("bob"));
        assert_eq!(s.furl.as_ref().unwrap().tubid(), tubid(3));
        assert_eq!(s.hints.as_ref().unwrap().len(), 2);
        assert_eq!(s.tcp, Some(TcpPolicy::Direct));
        // Line numbers.
        assert_eq!(c.line("node", ""), Some(2));
        assert_eq!(c.line("node", "reveal-IP-address"), Some(4));
        assert_eq!(c.line("tor", "control.port"), Some(14));
        assert_eq!(c.line("client", "introducer.second-one.furl"), Some(33));
        assert_eq!(c.line(&format!("server:{}", tubid(3)), "tcp"), Some(47));
        assert_eq!(c.line("storage", "nope"), None);
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let d = NodeConfig::default();
        assert_eq!(NodeConfig::parse("").unwrap(), d);
        assert_eq!(NodeConfig::parse("\n# only a comment\n\n").unwrap(), d);
        assert!(d.node.reveal_ip);
        assert_eq!(d.node.tub_port, TubPort::Default);
        assert_eq!(d.node.tub_location, Location::Auto);
        assert_eq!(d.connections.tcp, TcpPolicy::Direct);
        assert_eq!(d.i2p.sam_port, None);
        assert_eq!(
            d.tor.onion_private_key_file,
            Path::new("private/tor_onion.privkey")
        );
        assert_eq!(
            (
                d.client.shares_needed,
                d.client.shares_happy,
                d.client.shares_total
            ),
            (3, 7, 10)
        );
        assert!(d.storage.enabled);
        assert_eq!(d.storage.reserved_space, 0);
    }

    #[test]
    fn lexical_details() {
        // CRLF, a BOM, indentation, case-insensitive keys, spaces around `=` optional.
        let c = NodeConfig::parse(
            "\u{feff}[node]\r\n  Reveal-IP-Address=FALSE\r\n\tNICKNAME =  x y \r\n[connections]\ntcp=disabled\n\
             [node-not]\n",
        );
        let e = c.unwrap_err().to_string();
        assert!(
            e.starts_with("tahoe.cfg line 6: unknown section [node-not]"),
            "{e}"
        );
        let c = NodeConfig::parse(
            "[node]\r\n  Reveal-IP-Address=FALSE\r\n\tNICKNAME =  x y \r\ntub.port=disabled\n",
        )
        .unwrap();
        assert!(!c.node.reveal_ip);
        assert_eq!(c.node.nickname, "x y");
        assert_eq!(c.line("node", "reveal-IP-address"), Some(2));
        // An absent location with nothing listening announces nothing.
        assert_eq!(c.node.tub_location, Location::Auto);
        // An empty nickname is allowed; other empty values are not.
        assert_eq!(
            NodeConfig::parse("[node]\nnickname =\n")
                .unwrap()
                .node
                .nickname,
            ""
        );
        // `=` inside a value is part of it.
        let c = NodeConfig::parse("[node]\nnickname = a=b\n").unwrap();
        assert_eq!(c.node.nickname, "a=b");
        // Empty sections are fine.
        assert_eq!(
            NodeConfig::parse("[tor]\n[i2p]\n[storage]\n").unwrap(),
            NodeConfig::default()
        );
    }

    #[test]
    fn structural_refusals_name_the_line() {
        assert_refused(
            "[node]\nnickname = a\n\n\n\n\nfoo = 1\n",
            &[
                "tahoe.cfg line 7: unknown key `foo` in [node] (known keys: nickname, \
               reveal-IP-address, tub.port, tub.location)",
            ],
        );
        assert_refused(
            "\n[helper]\n",
            &[
                "tahoe.cfg line 2: unknown section [helper] (known sections: [node], \
               [connections], [tor], [i2p], [client], [storage], [introducer], \
               [server:TUBID])",
            ],
        );
        assert_refused(
            "[client]\nhelper.furl = x\n",
            &[
                "line 2: unknown key `helper.furl` in [client] (known keys: introducer.furl, \
               introducer.NAME.furl, shares.needed",
            ],
        );
        assert_refused(
            "[node]\nnickname = a\nNickname = b\n",
            &["tahoe.cfg line 3: `nickname` appears twice in [node] (first at line 2)"],
        );
        assert_refused(
            "[node]\n[tor]\n[node]\n",
            &["tahoe.cfg line 3: section [node] appears twice (first at line 1); merge"],
        );
        assert_refused(
            "# c\nnickname = a\n[node]\n",
            &["tahoe.cfg line 2: `nickname` is outside any section; put it under a [section]"],
        );
        assert_refused(
            "[node]\njust words\n",
            &["tahoe.cfg line 2: expected `[section]`, `key = value`, or a comment"],
        );
        assert_refused(
            "[node]\ntub.location = tcp:a:1,\n  tcp:b:2\n",
            &[
                "line 2: bad value",
                "entry 2 of the comma-separated list is empty",
            ],
        );
        assert_refused(
            "[node]\ntub.port = tcp:1\n  more\n",
            &["line 3: expected", "continuation lines are not supported"],
        );
        assert_refused("[node\n", &["line 1: expected", "alone on its line"]);
        assert_refused("[node] # c\n", &["line 1: expected"]);
        assert_refused(
            "[node]\n= 3\n",
            &["line 2: expected", "the key before `=` is empty"],
        );
        assert_refused(
            "[node]\ntub.port =\n",
            &["tahoe.cfg line 2: `tub.port` in [node] is empty; remove the line"],
        );
        assert_refused(
            "[storage]\nreserved_space = 1G # one gig\n",
            &[
                "line 2: bad value `1G # one gig` for `reserved_space` in [storage]: \
               comments go on their own line",
            ],
        );
        assert_refused(
            &format!("[node]\nnickname = {}\n", "x".repeat(MAX_LINE_LEN)),
            &["tahoe.cfg line 2: the line is 8203 bytes long; the limit is 8192"],
        );
        assert_refused(
            &format!("[node]\ntub.location = {}\n", "x".repeat(MAX_VALUE_LEN + 1)),
            &[
                "line 2: bad value",
                "the value is 4097 bytes; the limit is 4096",
            ],
        );
        let big = format!("[node]\n{}", "# padding\n".repeat(MAX_CFG_LEN / 10 + 1));
        assert_refused(&big, &["tahoe.cfg is 65547 bytes; the limit is 65536"]);
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        assert_refused(
            "[node]\nreveal-IP-address = maybe\n",
            &[
                "tahoe.cfg line 2: bad value `maybe` for `reveal-IP-address` in [node]: \
               expected true or false",
            ],
        );
        assert_refused(
            "[storage]\nenabled = 2\n",
            &["line 2: bad value `2` for `enabled` in [storage]: expected true or false"],
        );
        assert_refused(
            "[storage]\nreserved_space = 5 GB\n",
            &[
                "line 2: bad value `5 GB` for `reserved_space`",
                "such as 5G or 500MiB",
            ],
        );
        for bad in ["G", "5X", "5I", "5IB", "5GBB", "-5", "5.5G", "0x10"] {
            assert_refused(
                &format!("[storage]\nreserved_space = {bad}\n"),
                &["line 2: bad value", "powers of 1024"],
            );
        }
        assert_refused(
            "[storage]\nreserved_space = 18446744073709551616\n",
            &[
                "line 2: bad value",
                "is more than 18446744073709551615 bytes",
            ],
        );
        assert_refused(
            "[storage]\nreserved_space = 19E\n",
            &["line 2: bad value", "19E is more than"],
        );
        // A bad FURL: the reason, never the value (a FURL is a secret).
        let msg = refused("[client]\nintroducer.furl = pb://secretsecret@tcp:a:1/swiss\n");
        assert!(
            msg.starts_with(
                "tahoe.cfg line 2: bad value for `introducer.furl` in [client]: not a valid \
                 FURL: not a Folio FURL"
            ),
            "{msg}"
        );
        assert!(!msg.contains("secretsecret"), "{msg}");
        assert_refused(
            &format!(
                "[client]\nintroducer.Bad.Name.furl = {}\n",
                furl_for(tubid(1), "")
            ),
            &[
                "line 2: bad value for `introducer.bad.name.furl`",
                "`bad.name` must be 1 to 32",
            ],
        );
        assert_refused(
            &format!(
                "[client]\nintroducer.default.furl = {}\n",
                furl_for(tubid(1), "")
            ),
            &["line 2: bad value", "belongs to introducer.furl"],
        );
        assert_refused(
            "[client]\nshares.total = 257\n",
            &["line 2: bad value `257` for `shares.total` in [client]: expected a number from 1 to 256"],
        );
        assert_refused(
            "[client]\nshares.needed = 0\n",
            &["line 2:", "from 1 to 256"],
        );
        assert_refused(
            "[client]\nshares.needed = +3\n",
            &["line 2:", "from 1 to 256"],
        );
        assert_refused(
            "[tor]\nonion.external_port = 0\n",
            &["line 2: bad value `0` for `onion.external_port` in [tor]: expected a port number from 1 to 65535"],
        );
        assert_refused("[i2p]\ninbound.length = 8\n", &["line 2:", "from 0 to 7"]);
        assert_refused(
            "[i2p]\noutbound.quantity = 0\n",
            &["line 2:", "from 1 to 16"],
        );
        assert_refused(
            "[tor]\ncontrol.port = tcp:localhost:9051\n",
            &["line 2: bad value", "write 127.0.0.1 rather than localhost"],
        );
        for bad in [
            "9051",
            "tcp:127.0.0.1",
            "tcp:::1:9051",
            "tcp:127.0.0.1:0",
            "unix:/x",
        ] {
            assert_refused(
                &format!("[tor]\nsocks.port = {bad}\n"),
                &["line 2: bad value", "socks.port"],
            );
        }
        assert_refused(
            "[connections]\ntcp = direct\n",
            &["line 2: bad value `direct` for `tcp` in [connections]: expected tcp (direct connections), tor or disabled"],
        );
        assert_refused(
            "[node]\ntub.port = udp:1\n",
            &[
                "line 2: bad value `udp:1` for `tub.port`",
                "it must start with",
            ],
        );
        assert_refused(
            "[node]\ntub.port = tcp:1,tcp:port=1\n",
            &["line 2:", "listed twice"],
        );
        assert_refused(
            &format!(
                "[node]\ntub.port = {}\n",
                vec!["tcp:1"; MAX_LISTEN + 1].join(",")
            ),
            &["line 2:", "17 endpoints; the limit is 16"],
        );
        assert_refused(
            "[node]\ntub.location = auto\n",
            &["line 2: bad value `auto`", "write AUTO in capitals"],
        );
        assert_refused(
            "[node]\ntub.location = AUTO,AUTO\n",
            &["line 2:", "AUTO is listed twice"],
        );
        assert_refused(
            "[node]\ntub.location = disabled,tcp:a:1\n",
            &["line 2:", "disabled cannot be combined"],
        );
        assert_refused(
            "[node]\ntub.location = example.org:3456\n",
            &["line 2:", "hint `example.org:3456` is Foolscap's old HOST:PORT form; write tcp:example.org:3456"],
        );
        assert_refused(
            "[node]\ntub.location = tcp\n",
            &[
                "line 2:",
                "hint `tcp`",
                "hints look like tcp:example.org:3456",
            ],
        );
        assert_refused(
            "[node]\ntub.location = tcp:a:1,tcp:A:1\n",
            &["line 2:", "listed twice"],
        );
        assert_refused(
            "[node]\nnickname = a\u{7}b\n",
            &[
                "line 2: bad value `a\\u{7}b` for `nickname`",
                "printable characters only",
            ],
        );
        assert_refused(
            "[node]\nnickname = a\u{202e}b\n",
            &["line 2:", "direction-changing"],
        );
        assert_refused(
            &format!("[node]\nnickname = {}\n", "é".repeat(65)),
            &["line 2:", "at most 64 characters"],
        );
        assert_refused(
            "[storage]\nstorage_dir = a\u{1}b\n",
            &["line 2:", "control characters"],
        );
        assert_refused(
            "[server:abc]\n",
            &["tahoe.cfg line 1: [server:abc]: the section name must be server: and a TubId"],
        );
        let t = tubid(4);
        assert_refused(
            &format!("[server:{t}]\n[server:{t}]\n"),
            &[
                "tahoe.cfg line 2: section [server:",
                "appears twice (first at line 1)",
            ],
        );
        assert_refused(
            &format!("[server:{t}]\nhints = tcp:a\n"),
            &[
                "line 2: bad value `tcp:a` for `hints` in [server:",
                "expected HOST:PORT",
            ],
        );
        assert_refused(
            &format!("[server:{t}]\nnickname =\n"),
            &["line 2: `nickname` in [server:", "is empty"],
        );
    }

    #[test]
    fn sizes_like_tahoe() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("123", 123),
            ("5B", 5),
            ("1k", 1000),
            ("1K", 1000),
            ("1kB", 1000),
            ("2M", 2_000_000),
            ("2mb", 2_000_000),
            ("3G", 3_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 10u64.pow(15)),
            ("18E", 18 * 10u64.pow(18)),
            ("1KiB", 1024),
            ("1Ki", 1024),
            ("1kib", 1024),
            ("5MiB", 5 << 20),
            ("5GiB", 5 << 30),
            ("2TiB", 2 << 40),
            ("15EiB", 15 << 60),
            ("18446744073709551615", u64::MAX),
            ("00012", 12),
        ];
        for (text, n) in cases {
            assert_eq!(parse_size(text), Ok(*n), "{text}");
            let written = format_size(*n);
            assert_eq!(parse_size(&written), Ok(*n), "{text} -> {written}");
        }
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(5_000_000_000), "5G");
        assert_eq!(format_size(5 << 30), "5GiB");
        assert_eq!(format_size(1024), "1024");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(1000), "1K");
        assert_eq!(format_size(1536), "1536");
        assert!(parse_size("16EiB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cross_checks() {
        assert_refused(
            "[tor]\nenabled = true\nlaunch = true\ncontrol.port = tcp:127.0.0.1:9051\n",
            &["tahoe.cfg line 4: [tor] launch = true (line 3) and control.port cannot go together"],
        );
        assert_refused(
            "[tor]\nenabled = true\nsocks.port = tcp:127.0.0.1:9050\nlaunch = true\n",
            &["tahoe.cfg line 3: [tor] launch = true (line 4) and socks.port cannot go together"],
        );
        assert_refused(
            "[tor]\nenabled = true\ncontrol.port = tcp:127.0.0.1:9051\narti.network = net.txt\n",
            &["tahoe.cfg line 4: [tor] arti.network is for the embedded Tor client"],
        );
        assert_refused(
            "[i2p]\nenabled = true\nsam.port = tcp:127.0.0.1:7656\nrouter.network = net.txt\n",
            &["tahoe.cfg line 4: [i2p] router.network is for the embedded I2P router"],
        );
        assert_refused(
            "[i2p]\nenabled = true\nrouter.network = net.txt\nrouter.reseed = https://r.example/\n",
            &["tahoe.cfg line 4: [i2p] router.reseed is for the embedded I2P router on the public"],
        );
        #[cfg(feature = "i2p-embedded")]
        for bad in [
            "https://r.example:99999/",
            "https://r.example:0/",
            "https://u@r.example/",
        ] {
            let e = NodeConfig::parse(&format!("[i2p]\nrouter.reseed = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("line 2"), "{bad}: {e}");
        }
        for bad in ["http://r.example/", "https://", "https://a b/", ","] {
            let e = NodeConfig::parse(&format!("[i2p]\nrouter.reseed = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("line 2"), "{bad}: {e}");
        }
        assert_refused(
            "[tor]\nonion = true\n",
            &["tahoe.cfg line 2: [tor] onion = true needs [tor] enabled = true"],
        );
        assert_refused(
            "[tor]\nonion = true\nenabled = true\nsocks.port = tcp:127.0.0.1:9050\n",
            &[
                "tahoe.cfg line 2: [tor] onion = true needs control.port",
                "a SOCKS port cannot",
            ],
        );
        assert_refused(
            "[connections]\ntcp = tor\n",
            &["tahoe.cfg line 2: [connections] tcp = tor needs Tor, but [tor] is not enabled"],
        );
        assert_refused(
            "[tor]\nenabled = false\n[connections]\ntcp = tor\n",
            &["tahoe.cfg line 4: [connections] tcp = tor needs Tor, but [tor] is not enabled (line 2)"],
        );
        let t = tubid(5);
        assert_refused(
            &format!("[server:{t}]\ntcp = tor\n"),
            &["tahoe.cfg line 2: [server:", "] tcp = tor needs Tor"],
        );
        assert_refused(
            "[i2p]\ndest = true\n",
            &["tahoe.cfg line 2: [i2p] dest = true needs [i2p] enabled = true"],
        );
        assert_refused(
            "[client]\nshares.needed = 5\nshares.happy = 4\n",
            &[
                "tahoe.cfg line 3: [client] shares must satisfy 1 <= shares.needed <= \
               shares.happy <= shares.total <= 256, but shares.needed = 5 (line 2) is more \
               than shares.happy = 4 (line 3)",
            ],
        );
        assert_refused(
            "[client]\nshares.total = 5\n",
            &[
                "tahoe.cfg line 2: [client] shares must",
                "but shares.happy = 7 is more than \
               shares.total = 5 (line 2)",
            ],
        );
        assert_refused(
            "[client]\nshares.needed = 11\n",
            &[
                "tahoe.cfg line 2:",
                "shares.needed = 11 (line 2) is more than shares.happy = 7",
            ],
        );
        assert_refused(
            &format!("[server:{t}]\nfurl = {}\n", furl_for(tubid(6), "tcp:a:1")),
            &["tahoe.cfg line 2: [server:", "] furl names another server"],
        );
        assert_refused(
            "[node]\ntub.location = disabled\n",
            &["tahoe.cfg line 2: tub.location = disabled, but tub.port listens"],
        );
        assert_refused(
            "[node]\ntub.port = disabled\ntub.location = tcp:a:1\n",
            &[
                "tahoe.cfg line 3: tub.location announces hints, but nothing listens \
               (tub.port = disabled (line 2)",
            ],
        );
        assert_refused(
            "[node]\ntub.port = disabled\ntub.location = disabled\n\
             [tor]\nenabled = true\ncontrol.port = tcp:127.0.0.1:9051\nonion = true\n",
            &["tahoe.cfg line 3: tub.location = disabled, but [tor] onion = true (line 7)"],
        );
        // What is allowed.
        for ok in [
            "[node]\ntub.port = disabled\ntub.location = disabled\n".to_string(),
            "[node]\ntub.port = disabled\ntub.location = AUTO\n".to_string(),
            "[node]\ntub.port = 3456\n".to_string(),
            format!(
                "[node]\ntub.port = disabled\ntub.location = tor:{}:3457\n[tor]\nenabled = \
                 true\ncontrol.port = tcp:127.0.0.1:9051\nonion = true\n",
                onion()
            ),
            "[tor]\nenabled = true\nlaunch = true\nonion = true\ntor.executable = /opt/tor\n"
                .to_string(),
            "[client]\nshares.needed = 1\nshares.happy = 1\nshares.total = 1\n".to_string(),
            "[client]\nshares.needed = 256\nshares.happy = 256\nshares.total = 256\n".to_string(),
        ] {
            NodeConfig::parse(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            NodeConfig::parse("[node]\ntub.port = 3456\n")
                .unwrap()
                .node
                .tub_port,
            TubPort::Listen(vec!["tcp:3456".parse().unwrap()])
        );
    }

    fn privacy(text: &str) -> PrivacyError {
        let c = NodeConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        c.check_privacy().expect_err(text)
    }

    const PRIVATE: &str = "[node]\nreveal-IP-address = false\n";

    #[test]
    fn a_private_node_passes() {
        let o = onion();
        let ok = [
            format!("{PRIVATE}tub.port = disabled\ntub.location = disabled\n[connections]\ntcp = disabled\n"),
            format!("{PRIVATE}tub.port = disabled\n[connections]\ntcp = disabled\n"),
            format!(
                "{PRIVATE}tub.port = tcp:3457:interface=127.0.0.1,tcp:3458:interface=::1\n\
                 tub.location = tor:{o}:3457,i2p:{i2p}\n\
                 [connections]\ntcp = tor\n\
                 [tor]\nenabled = true\ncontrol.port = tcp:127.0.0.1:9051\n\
                 [i2p]\nenabled = true\n\
                 [server:{t}]\nhints = tcp:10.1.1.1:5\n",
                i2p = i2p(),
                t = tubid(7),
            ),
            // An onion service with AUTO and no TCP listener announces only the onion.
            format!(
                "{PRIVATE}tub.port = disabled\n[connections]\ntcp = disabled\n\
                 [tor]\nenabled = true\ncontrol.port = tcp:127.0.0.1:9051\nonion = true\n\
                 [server:{t}]\ntcp = tor\nhints = tcp:10.1.1.1:5\n",
                t = tubid(7),
            ),
        ];
        for text in ok {
            let c = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            c.check_privacy().unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        // Nothing to check when revealing the address is allowed.
        NodeConfig::default().check_privacy().unwrap();
    }

    #[test]
    fn privacy_refusals_name_the_setting_the_line_and_the_fix() {
        // Everything at once: defaults for tub.port, tub.location and tcp.
        let e = privacy(PRIVATE);
        assert_eq!(e.line, Some(2));
        assert_eq!(
            e.violations,
            [
                PrivacyViolation::DefaultListener,
                PrivacyViolation::MissingLocation,
                PrivacyViolation::DefaultTcp,
            ]
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "reveal-IP-address = false (tahoe.cfg line 2), but 3 settings would reveal \
                 this node's IP address:\n  - [node] tub.port is not set, which means TCP on \
                 all interfaces; set tub.port = tcp:PORT:interface=127.0.0.1"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("\n  - [node] tub.location is not set, which means AUTO"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "\n  - [connections] tcp is not set, and the default is direct TCP, which \
                 shows servers this host's IP address; add `tcp = tor` or `tcp = disabled`"
            ),
            "{msg}"
        );

        let base = |rest: &str| {
            format!(
                "{PRIVATE}tub.port = tcp:1:interface=127.0.0.1\ntub.location = tor:{}:1\n\
                 [connections]\ntcp = disabled\n{rest}",
                onion()
            )
        };
        let e = privacy(&base("").replace("tcp = disabled", "tcp = tcp"));
        assert_eq!(e.violations, [PrivacyViolation::DirectTcp { line: 6 }]);
        assert!(e.to_string().contains(
            "tahoe.cfg line 6: [connections] tcp = tcp dials tcp: hints directly, showing \
             servers this host's IP address; set `tcp = tor` (Tor carries them) or \
             `tcp = disabled`"
        ));
        assert!(e.to_string().contains("but 1 setting would"));

        let e = privacy(&base("").replace("tor:", "AUTO,tor:"));
        assert_eq!(e.violations, [PrivacyViolation::AutoLocation { line: 4 }]);
        assert!(e
            .to_string()
            .contains("tahoe.cfg line 4: [node] tub.location includes AUTO"));
        let auto_only = base("").replace(&format!("tor:{}:1", onion()), "AUTO");
        let e = privacy(&auto_only);
        assert_eq!(e.violations, [PrivacyViolation::AutoLocation { line: 4 }]);

        let e = privacy(&base("").replace("tor:", "tcp:example.org:9,x-new:q,tor:"));
        assert_eq!(e.violations.len(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains(
                "tahoe.cfg line 4: [node] tub.location announces tcp:example.org:9, and a tcp: \
                 hint names this host's address; list only tor: and i2p: hints"
            ),
            "{msg}"
        );
        assert!(msg.contains("tahoe.cfg line 4: [node] tub.location announces x-new:q, of a type"));

        let e = privacy(&base("").replace(
            "tcp:1:interface=127.0.0.1",
            "tcp:1,tcp:2:interface=10.0.0.1",
        ));
        let msg = e.to_string();
        assert_eq!(e.violations.len(), 2);
        assert!(
            msg.contains(
                "tahoe.cfg line 3: [node] tub.port listens on tcp:1 (all interfaces), where \
                 anyone who finds this host can connect; listen on interface=127.0.0.1"
            ),
            "{msg}"
        );
        assert!(msg.contains("listens on tcp:2:interface=10.0.0.1 (a non-loopback interface)"));

        let t = tubid(8);
        let e = privacy(&base(&format!("[server:{t}]\nnickname = s\ntcp = tcp\n")));
        assert_eq!(
            e.violations,
            [PrivacyViolation::ServerDirectTcp { tubid: t, line: 9 }]
        );
        assert!(e.to_string().contains(&format!(
            "tahoe.cfg line 9: [server:{t}] tcp = tcp re-opens direct TCP for this server"
        )));

        let e = privacy(&base(&format!(
            "[server:{t}]\nhints = tcp:10.0.0.9:1,tor:{}:2\nfurl = {}\n",
            onion(),
            furl_for(t, "tcp:b.example:2")
        )));
        let msg = e.to_string();
        assert_eq!(e.violations.len(), 2, "{msg}");
        assert!(
            msg.contains(&format!(
                "tahoe.cfg line 8: [server:{t}] hints has tcp: hints (tcp:10.0.0.9:1), but TCP \
                 is disabled for this server; remove them, or set `tcp = tor` in this section"
            )),
            "{msg}"
        );
        assert!(msg.contains("line 9: [server:"), "{msg}");
        // With `tcp = tor` for that server the hints go through Tor: fine.
        let ok = base(&format!(
            "[server:{t}]\nhints = tcp:10.0.0.9:1\ntcp = tor\n[tor]\nenabled = true\n\
             socks.port = tcp:127.0.0.1:9050\n"
        ));
        NodeConfig::parse(&ok).unwrap().check_privacy().unwrap();
    }

    #[test]
    fn the_example_round_trips() {
        let c = NodeConfig::parse(&example()).unwrap();
        let text = c.to_cfg_string();
        let back = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, c);
        assert_eq!(back.to_cfg_string(), text, "writing is canonical");
        assert!(text.starts_with("# tahoe.cfg: the configuration of a Folio node"));
        assert!(text.contains("\nreserved_space = 5GiB\n"), "{text}");
        assert!(text.contains("\n#reveal-IP-address = true\n"), "{text}");
        assert!(
            text.contains("\ntub.location = AUTO,tcp:example.org:3456\n"),
            "{text}"
        );
        assert!(text.contains("\nsocks.port = tcp:[::1]:9050\n"), "{text}");
        c.validate().unwrap();
        // The default writes as a file of comments and headers only.
        let d = NodeConfig::default().to_cfg_string();
        assert!(d
            .lines()
            .all(|l| l.is_empty() || l.starts_with('#') || l.starts_with('[')));
        assert_eq!(NodeConfig::parse(&d).unwrap(), NodeConfig::default());
    }

    #[test]
    fn configurations_built_in_code() {
        let mut c = NodeConfig::default();
        c.node.nickname = "ok".into();
        c.node.tub_port = TubPort::Disabled;
        c.node.tub_location = Location::Hints(Vec::new());
        c.client.introducers = vec![(
            "default".into(),
            furl_for(tubid(1), "tcp:a:1").parse().unwrap(),
        )];
        // An empty hint list is written as `disabled`.
        let back = NodeConfig::parse(&c.to_cfg_string()).unwrap();
        assert_eq!(back.node.tub_location, Location::Disabled);
        c.node.tub_location = Location::Disabled;
        c.validate().unwrap();
        // A nickname that would inject lines.
        c.node.nickname = "x\n[tor]\nenabled = true".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("tahoe.cfg line "), "{e}");
        c.node.nickname = "x".into();
        c.client.shares_needed = 9;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("shares must satisfy"));
    }

    /// xorshift64*: deterministic, no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[(self.next() % items.len() as u64) as usize]
        }

        fn chance(&mut self, in_ten: u64) -> bool {
            self.next() % 10 < in_ten
        }
    }

    fn random_config(rng: &mut Rng) -> String {
        let o = onion();
        let i = i2p();
        let f1 = furl_for(tubid(1), "tcp:a.example:1");
        let f2 = furl_for(tubid(2), &format!("tor:{o}:2,i2p:{i}"));
        let values: Vec<(&str, &str, Vec<String>)> = vec![
            (
                "node",
                "nickname",
                vec!["".into(), "alice".into(), "Ünïcode ☃ #1".into()],
            ),
            (
                "node",
                "reveal-IP-address",
                vec!["true".into(), "no".into(), "0".into()],
            ),
            (
                "node",
                "tub.port",
                vec![
                    "disabled".into(),
                    "tcp:0".into(),
                    "3456".into(),
                    "tcp:port=9:interface=[::1], tcp:10:interface=0.0.0.0".into(),
                ],
            ),
            (
                "node",
                "tub.location",
                vec![
                    "AUTO".into(),
                    "disabled".into(),
                    format!("tor:{o}:3457"),
                    format!("tcp:[::ffff:1:2]:9,AUTO,i2p:{i}:7,x:y"),
                ],
            ),
            (
                "connections",
                "tcp",
                vec!["tcp".into(), "tor".into(), "disabled".into()],
            ),
            ("tor", "enabled", vec!["true".into(), "false".into()]),
            ("tor", "launch", vec!["true".into(), "off".into()]),
            ("tor", "control.port", vec!["tcp:127.0.0.1:9051".into()]),
            ("tor", "socks.port", vec!["tcp:[::1]:9050".into()]),
            ("tor", "tor.executable", vec!["/usr/sbin/tor".into()]),
            ("tor", "onion", vec!["true".into(), "false".into()]),
            ("tor", "onion.local_port", vec!["1".into(), "65535".into()]),
            (
                "tor",
                "onion.external_port",
                vec!["3457".into(), "80".into()],
            ),
            (
                "tor",
                "onion.private_key_file",
                vec!["private/tor_onion.privkey".into(), "k".into()],
            ),
            ("i2p", "enabled", vec!["yes".into(), "no".into()]),
            (
                "i2p",
                "sam.port",
                vec!["tcp:127.0.0.1:7656".into(), "tcp:10.0.0.1:1".into()],
            ),
            ("i2p", "dest", vec!["true".into(), "false".into()]),
            ("i2p", "dest.port", vec!["5".into()]),
            ("i2p", "dest.private_key_file", vec!["/abs/key".into()]),
            ("i2p", "inbound.length", vec!["0".into(), "3".into()]),
            ("i2p", "outbound.quantity", vec!["16".into()]),
            (
                "i2p",
                "router.network",
                vec!["net.txt".into(), "/abs/net.txt".into()],
            ),
            (
                "i2p",
                "router.reseed",
                vec![
                    "https://a.example/".into(),
                    "https://a.example/,https://127.0.0.1:8443/x/".into(),
                ],
            ),
            ("client", "introducer.furl", vec![f1.clone()]),
            ("client", "introducer.b.furl", vec![f2.clone()]),
            ("client", "introducer.a_1.furl", vec![f1]),
            ("client", "shares.needed", vec!["1".into(), "3".into()]),
            ("client", "shares.happy", vec!["3".into(), "7".into()]),
            (
                "client",
                "shares.total",
                vec!["7".into(), "10".into(), "256".into()],
            ),
            ("storage", "enabled", vec!["false".into()]),
            (
                "storage",
                "reserved_space",
                vec![
                    "0".into(),
                    "1000".into(),
                    "1024".into(),
                    "3kB".into(),
                    "77777".into(),
                ],
            ),
            ("storage", "storage_dir", vec!["shares".into()]),
            (
                "storage",
                "max_space_per_client",
                vec!["1".into(), "5GiB".into(), "64GiB".into()],
            ),
            ("client", "max_servers", vec!["1".into(), "1000".into()]),
            (
                "introducer",
                "max_announcements",
                vec!["1".into(), "10000".into(), "50".into()],
            ),
            (
                "introducer",
                "max_announcements_per_peer",
                vec!["1".into(), "16".into()],
            ),
            ("introducer", "max_announcements_per_key", vec!["2".into()]),
            ("introducer", "max_subscribers", vec!["7".into()]),
            (
                "introducer",
                "delivery_timeout",
                vec!["1".into(), "3600".into()],
            ),
        ];
        let mut sections: Vec<&str> = vec![
            "node",
            "connections",
            "tor",
            "i2p",
            "client",
            "storage",
            "introducer",
        ];
        // Shuffle the section order.
        for k in (1..sections.len()).rev() {
            let j = (rng.next() % (k as u64 + 1)) as usize;
            sections.swap(k, j);
        }
        let mut out = String::new();
        for s in sections {
            out.push_str(&format!("[{s}]\n"));
            for (sec, key, vals) in &values {
                if *sec == s && rng.chance(6) {
                    out.push_str(&format!("{key} = {}\n", rng.pick(vals)));
                }
            }
        }
        for n in 0..rng.next() % 3 {
            let t = tubid(20 + n as u8);
            out.push_str(&format!("[server:{t}]\n"));
            if rng.chance(5) {
                out.push_str("nickname = s\n");
            }
            if rng.chance(5) {
                out.push_str(&format!("furl = {}\n", furl_for(t, "tcp:s.example:1")));
            }
            if rng.chance(5) {
                out.push_str(&format!(
                    "hints = {}\n",
                    rng.pick(&["tcp:1.2.3.4:5", "i2p:x.i2p"])
                ));
            }
            if rng.chance(5) {
                out.push_str(&format!(
                    "tcp = {}\n",
                    rng.pick(&["tcp", "tor", "disabled"])
                ));
            }
        }
        out
    }

    #[test]
    fn resource_limits_are_read_bounded_and_written_back() {
        let c = NodeConfig::parse(
            "[client]\nmax_servers = 50\n[storage]\nmax_space_per_client = 5GiB\n\
             [introducer]\nmax_announcements = 100\nmax_announcements_per_peer = 2\n\
             MAX_announcements_per_key = 3\nmax_subscribers = 9\ndelivery_timeout = 10\n",
        )
        .unwrap();
        assert_eq!(c.client.max_servers, 50);
        assert_eq!(c.storage.max_space_per_client, 5 << 30);
        let limits = c.introducer.limits();
        assert_eq!(
            limits,
            crate::introducer::IntroducerLimits {
                max_announcements: 100,
                max_per_peer: 2,
                max_per_key: 3,
                max_subscribers: 9,
                delivery_timeout: std::time::Duration::from_secs(10),
            }
        );
        assert_eq!(c.line("introducer", "max_announcements_per_key"), Some(8));
        let written = c.to_cfg_string();
        assert!(written.contains("\n[introducer]\n"), "{written}");
        assert_eq!(NodeConfig::parse(&written).unwrap(), c);
        // The defaults are the library's, and an unchanged [introducer] is not written.
        let d = NodeConfig::default();
        assert_eq!(
            d.introducer.limits(),
            crate::introducer::IntroducerLimits::default()
        );
        assert_eq!(
            d.storage.max_space_per_client,
            crate::storage::DEFAULT_SPACE_PER_CLIENT
        );
        assert!(!d.to_cfg_string().contains("[introducer]"));

        assert_refused(
            "[introducer]\nmax_announcements = 0\n",
            &[
                "line 2: bad value `0` for `max_announcements` in [introducer]: expected a \
               number from 1 to 1000000",
            ],
        );
        assert_refused(
            "[introducer]\ndelivery_timeout = 3601\n",
            &[
                "line 2: bad value `3601` for `delivery_timeout`",
                "1 to 3600 (seconds)",
            ],
        );
        assert_refused(
            "[introducer]\nmax_announcements = 10\n\nmax_announcements_per_peer = 11\n",
            &[
                "line 4:",
                "[introducer] max_announcements_per_peer = 11 (line 4) is more than \
                 max_announcements = 10 (line 2)",
            ],
        );
        assert_refused(
            "[introducer]\nmax_announcements_per_key = 10001\n",
            &[
                "max_announcements_per_key = 10001 (line 2) is more than max_announcements = \
               10000",
            ],
        );
        assert_refused(
            "[introducer]\nmax_peers = 1\n",
            &[
                "unknown key `max_peers` in [introducer] (known keys: max_announcements, \
               max_announcements_per_peer, max_announcements_per_key, max_subscribers, \
               delivery_timeout)",
            ],
        );
        assert_refused(
            "[client]\nmax_servers = 100001\n",
            &[
                "line 2: bad value `100001` for `max_servers` in [client]: expected a number \
               from 1 to 100000",
            ],
        );
        assert_refused(
            "[storage]\nmax_space_per_client = 0\n",
            &[
                "line 2: bad value `0` for `max_space_per_client`",
                "at least 1 byte",
            ],
        );
        assert_refused(
            "[storage]\nmax_space_per_client = lots\n",
            &["line 2: bad value `lots` for `max_space_per_client`", "5G"],
        );
    }

    #[test]
    fn random_configurations_round_trip() {
        let mut rng = Rng(0x5eed_f011_0000_0001);
        let mut accepted = 0;
        for _ in 0..2000 {
            let text = random_config(&mut rng);
            let Ok(c) = NodeConfig::parse(&text) else {
                continue;
            };
            accepted += 1;
            let written = c.to_cfg_string();
            let back = NodeConfig::parse(&written)
                .unwrap_or_else(|e| panic!("{e}\n--- input\n{text}\n--- written\n{written}"));
            assert_eq!(back, c, "--- input\n{text}\n--- written\n{written}");
            assert_eq!(back.to_cfg_string(), written);
            // The privacy check never panics and is deterministic.
            assert_eq!(c.check_privacy().is_ok(), back.check_privacy().is_ok());
        }
        assert!(
            accepted > 200,
            "only {accepted} of 2000 random configurations parsed"
        );
    }

    #[test]
    fn mangled_input_never_panics() {
        let seed = example();
        let mut rng = Rng(42);
        let specials = [
            "[", "]", "=", "\n", "#", ",", ":", "\u{0}", "é", "AUTO", "server:", " ",
        ];
        for _ in 0..3000 {
            let mut s: Vec<char> = seed.chars().collect();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % (s.len() as u64 + 1)) as usize;
                match rng.next() % 3 {
                    0 if at < s.len() => {
                        s.remove(at);
                    }
                    1 => {
                        for c in rng.pick(&specials).chars().rev() {
                            s.insert(at, c);
                        }
                    }
                    _ => {
                        let c = char::from_u32((rng.next() % 0x250) as u32).unwrap_or('x');
                        s.insert(at, c);
                    }
                }
            }
            let text: String = s.into_iter().collect();
            if let Ok(c) = NodeConfig::parse(&text) {
                let written = c.to_cfg_string();
                assert_eq!(NodeConfig::parse(&written).unwrap(), c, "{text}");
                let _ = c.check_privacy();
            }
        }
    }

    #[test]
    fn load_refuses_what_is_not_utf8_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tahoe.cfg");
        std::fs::write(&p, b"[node]\nnickname = caf\xe9\n").unwrap();
        let e = NodeConfig::load(&p).unwrap_err();
        assert_eq!(e.line(), Some(2));
        let msg = e.to_string();
        assert!(
            msg.contains("is not UTF-8 text (line 2 has an invalid byte at offset 21)"),
            "{msg}"
        );
        std::fs::write(&p, vec![b'#'; MAX_CFG_LEN + 1]).unwrap();
        assert_eq!(
            NodeConfig::load(&p).unwrap_err().to_string(),
            "tahoe.cfg is 65537 bytes; the limit is 65536"
        );
        std::fs::write(&p, example()).unwrap();
        assert_eq!(
            NodeConfig::load(&p).unwrap(),
            NodeConfig::parse(&example()).unwrap()
        );
        let missing = dir.path().join("nope.cfg");
        let msg = NodeConfig::load(&missing).unwrap_err().to_string();
        assert!(
            msg.starts_with("cannot read ") && msg.contains("nope.cfg"),
            "{msg}"
        );
    }
}
