//! The writer: [`NodeConfig::to_cfg_string`], a commented, canonical `tahoe.cfg` that the
//! reader reads back as the same configuration, and the formatting of values it needs.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use folio_handlers::TcpPolicy;

use super::{
    Location, NodeConfig, TubPort, DEFAULT_I2P_DEST_KEY, DEFAULT_ONION_PORT, DEFAULT_SAM_PORT,
    DEFAULT_TOR_ONION_KEY,
};

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

/// The shortest exact way to write `n` bytes that
/// [`parse_size`](super::validate::parse_size) reads back.
pub(super) fn format_size(n: u64) -> String {
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

fn write_endpoint(a: &SocketAddr) -> String {
    // SocketAddr brackets IPv6 addresses; addresses `parse_endpoint` reads carry no scope or flow.
    format!("tcp:{}", SocketAddr::new(a.ip(), a.port()))
}

fn policy_str(p: TcpPolicy) -> &'static str {
    match p {
        TcpPolicy::Direct => "tcp",
        TcpPolicy::Tor => "tor",
        TcpPolicy::Disabled => "disabled",
    }
}

impl NodeConfig {
    /// Writes the configuration as a commented, canonical `tahoe.cfg`: settings that differ
    /// from their defaults as `key = value`, the others commented out. A configuration read by
    /// [`parse`](Self::parse) writes as a file that reads back equal (when the written file
    /// stays within [`MAX_CFG_LEN`](super::MAX_CFG_LEN)); for one built in code, [`validate`](Self::validate)
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
            "Where the web gateway (the welcome page and the web API) listens: `none`, or one\n\
             endpoint such as tcp:3456:interface=127.0.0.1. Anyone who can reach it can use\n\
             every capability the node is given: keep it on loopback. Default: none.",
        );
        w.key(
            "web.port",
            n.web_port.as_ref().map(ToString::to_string),
            "tcp:3456:interface=127.0.0.1",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::example;

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
}
