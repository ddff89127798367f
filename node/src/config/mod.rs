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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use folio_handlers::TcpPolicy;
use folio_rpc::{Furl, Hint, TubId};
use folio_transports::tcp::ListenSpec;

// The parts: `ini` reads lines, sections and keys (and knows which exist); `validate` turns
// each value into its setting and checks the settings together; `write` writes the file;
// `privacy` is the `reveal-IP-address = false` audit.
mod ini;
mod privacy;
mod validate;
mod write;

use ini::KNOWN_SECTIONS;
pub use privacy::{PrivacyError, PrivacyViolation};
pub(crate) use validate::parse_web_port;
pub use validate::{check_nickname_text, is_deceptive};

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
    /// `web.port`: where the web gateway (welcome page and web API) listens, one endpoint
    /// such as `tcp:3456:interface=127.0.0.1` (a bare port number means `tcp:PORT`, every
    /// interface, as in Tahoe). `None` (not set, or `none`): no web gateway.
    pub web_port: Option<ListenSpec>,
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
                web_port: None,
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

/// A value as shown in an error: escaped, at most 80 characters.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    //! Helpers shared by the tests of every part, and tests of the whole: reading, checking
    //! and writing together.

    use super::*;
    use std::path::Path;

    pub(super) fn tubid(byte: u8) -> TubId {
        TubId::from_bytes([byte; 32])
    }

    pub(super) fn furl_for(t: TubId, hints: &str) -> String {
        format!("folio://{t}@{hints}/swiss")
    }

    pub(super) fn onion() -> String {
        format!("{}.onion", "a".repeat(56))
    }

    pub(super) fn i2p() -> String {
        format!("{}.b32.i2p", "b".repeat(52))
    }

    /// The error message of a refused configuration.
    pub(super) fn refused(text: &str) -> String {
        match NodeConfig::parse(text) {
            Ok(c) => panic!("accepted:\n{text}\n{c:?}"),
            Err(e) => e.to_string(),
        }
    }

    pub(super) fn assert_refused(text: &str, expected: &[&str]) {
        let msg = refused(text);
        for part in expected {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }

    pub(super) fn example() -> String {
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

    /// xorshift64*: deterministic, no dependencies.
    pub(super) struct Rng(u64);

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

    pub(super) fn random_config(rng: &mut Rng) -> String {
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
}
