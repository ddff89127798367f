//! Typed validation: the value parsers (each refusal says what is allowed), the dispatch of
//! each key of a section to its parser and field ([`NodeConfig::assign`]), the rules between
//! settings ([`NodeConfig::check`]), and [`NodeConfig::validate`] for configurations built in
//! code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use folio_handlers::TcpPolicy;
use folio_rpc::furl::MAX_HINTS;
use folio_rpc::{ErrorChain, Furl, Hint};
use folio_transports::tcp::ListenSpec;

use super::ini::{introducer_name, Section};
use super::{
    shown, ConfigError, Location, NodeConfig, Problem, TubPort, MAX_DELIVERY_TIMEOUT_SECS,
    MAX_I2P_RESEED_SERVERS, MAX_INTRODUCERS, MAX_INTRODUCER_TABLE, MAX_LISTEN, MAX_MAX_SERVERS,
    MAX_NICKNAME_CHARS, MAX_SHARES,
};

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

/// `[node] web.port`: `none`, or one endpoint (a bare port number means `tcp:PORT`).
pub(crate) fn parse_web_port(v: &str) -> Result<Option<ListenSpec>, String> {
    if v == "none" {
        return Ok(None);
    }
    let text = if v.bytes().all(|b| b.is_ascii_digit()) {
        format!("tcp:{v}")
    } else {
        v.to_string()
    };
    text.parse().map(Some).map_err(|e| {
        format!(
            "{e} (expected none, or one endpoint like tcp:3456:interface=127.0.0.1; the web \
             gateway listens on one port)"
        )
    })
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

// ---------------------------------------------------------------------------------------------
// Settings: each key to its field, then the rules between them.

impl NodeConfig {
    pub(super) fn assign(&mut self, section: Section, key: &str, v: &str) -> Result<(), String> {
        match section {
            Section::Node => {
                let n = &mut self.node;
                match key {
                    "nickname" => n.nickname = check_nickname(v)?,
                    "reveal-IP-address" => n.reveal_ip = parse_bool(v)?,
                    "tub.port" => n.tub_port = parse_tub_port(v)?,
                    "web.port" => n.web_port = parse_web_port(v)?,
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
    pub(super) fn check(&self) -> Result<(), (Option<usize>, Problem)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_refused, furl_for, onion, refused, tubid};
    use crate::config::write::format_size;

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
}
