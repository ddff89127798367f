//! FURLs and connection hints.
//!
//! A FURL names one object on one Tub and says where to look for the Tub:
//!
//! ```text
//! folio://TUBID@HINT,HINT,.../SWISSNUM
//! ```
//!
//! The scheme is `folio`, not Foolscap's `pb`: Folio speaks postcard, not banana, so a Python
//! Foolscap tool must never take a Folio FURL for one of its own. The hint list may be empty
//! (a Tub that only dials out). Hints are tried in parallel; types this build does not know
//! parse as [`Hint::Unknown`] and are skipped when dialing, never fatal.
//!
//! | hint | meaning |
//! |---|---|
//! | `tcp:HOST:PORT` | direct TCP; `HOST` is a DNS name, an IPv4 address or `[IPv6]` |
//! | `tor:NAME.onion:PORT` | a Tor v3 onion service |
//! | `i2p:NAME.i2p[:PORT]` | an I2P destination (`.b32.i2p` or an address-book name) |
//!
//! `docs/furl.md` is the exact grammar this module implements, edge by edge.
//!
//! ```
//! use folio_rpc::furl::{Furl, Hint};
//! let text = "folio://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@tcp:[::1]:4455,x-new:1/introducer";
//! let furl: Furl = text.parse().unwrap();
//! assert_eq!(furl.hints().len(), 2);
//! assert!(matches!(furl.hints()[1], Hint::Unknown(_)));
//! assert_eq!(furl.to_string(), text);
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::base32::{self, ENCODING as BASE32};
use crate::tubid::{TubId, TubIdError};

/// The FURL scheme, with its separator.
pub const SCHEME: &str = "folio://";
/// The longest FURL accepted, in bytes; checked before anything else.
pub const MAX_FURL_LEN: usize = 4096;
/// The most hints a FURL may carry.
pub const MAX_HINTS: usize = 32;
/// The longest swissnum accepted.
pub const MAX_SWISSNUM_LEN: usize = 256;
/// Random bits in a generated swissnum.
pub const SWISSNUM_BITS: usize = 160;

/// Why a FURL or hint did not parse. Each variant names the offending piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FurlError {
    /// Longer than [`MAX_FURL_LEN`].
    #[error("FURL is {0} bytes; the limit is {MAX_FURL_LEN}")]
    TooLong(usize),
    /// Does not start with `folio://`.
    #[error("not a Folio FURL: it must start with \"folio://\"{hint}")]
    Scheme {
        /// Extra advice (a Foolscap `pb://` FURL, for instance).
        hint: &'static str,
    },
    /// Missing the `@` between TubId and hints.
    #[error("FURL has no '@' between the TubId and the hints")]
    MissingAt,
    /// Missing the `/` before the swissnum.
    #[error("FURL has no '/' before the swissnum")]
    MissingSlash,
    /// The TubId is malformed.
    #[error("malformed TubId in the FURL")]
    TubId(#[from] TubIdError),
    /// The swissnum is empty, too long or holds a character outside `A-Za-z0-9._~-`.
    #[error(
        "FURL swissnum {0:?} must be 1 to {MAX_SWISSNUM_LEN} characters of A-Z a-z 0-9 . _ ~ -"
    )]
    Swissnum(String),
    /// More than [`MAX_HINTS`] hints.
    #[error("FURL has {0} hints; the limit is {MAX_HINTS}")]
    TooManyHints(usize),
    /// One hint is malformed.
    #[error("hint {index} ({text:?}): {reason}")]
    Hint {
        /// Position in the hint list, from 0.
        index: usize,
        /// The hint as written.
        text: String,
        /// What is wrong with it.
        reason: HintError,
    },
}

/// What is wrong with one hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    /// An empty hint (two commas in a row, for example).
    #[error("empty hint")]
    Empty,
    /// No `TYPE:` prefix.
    #[error("no hint type: hints look like TYPE:..., for example tcp:example.org:3456")]
    NoType,
    /// A character that cannot appear in a hint (`,`, `/`, `@`, whitespace, control).
    #[error("character {0:?} cannot appear in a hint")]
    BadChar(char),
    /// The port is missing, not a number, or 0.
    #[error("port {0:?} must be a number from 1 to 65535")]
    Port(String),
    /// The host part is missing the port separator.
    #[error("expected {0}")]
    Shape(&'static str),
    /// The host is not a valid DNS name, IPv4 address or bracketed IPv6 address.
    #[error("host {0:?} is not a DNS name, an IPv4 address or an [IPv6] address")]
    Host(String),
    /// A `tor:` hint that does not name a v3 onion service.
    #[error("{0:?} is not a v3 onion address (56 base32 characters, then .onion)")]
    Onion(String),
    /// An `i2p:` hint that does not name an I2P destination.
    #[error("{0:?} is not an I2P address (NAME.i2p, or 52+ base32 characters then .b32.i2p)")]
    I2p(String),
}

/// A host in a `tcp:` hint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lowercased.
    Name(String),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written in brackets).
    Ipv6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

impl Host {
    /// The host as a resolver or socket address wants it (IPv6 without brackets).
    pub fn to_dial_string(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ipv4(a) => a.to_string(),
            Host::Ipv6(a) => a.to_string(),
        }
    }
}

/// One place to look for a Tub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hint {
    /// `tcp:HOST:PORT`.
    Tcp {
        /// The host.
        host: Host,
        /// The port.
        port: u16,
    },
    /// `tor:NAME.onion:PORT` (v3 onion service; `onion` is the full lowercase name).
    Tor {
        /// `<56 base32 chars>.onion`.
        onion: String,
        /// The virtual port.
        port: u16,
    },
    /// `i2p:NAME.i2p[:PORT]`.
    I2p {
        /// The destination name, lowercase, ending in `.i2p`.
        addr: String,
        /// The I2P port, if given.
        port: Option<u16>,
    },
    /// A hint type this build does not know; kept verbatim and skipped when dialing.
    Unknown(String),
}

impl Hint {
    /// The hint's type word: `tcp`, `tor`, `i2p`, or the unknown type's own prefix.
    pub fn kind(&self) -> &str {
        match self {
            Hint::Tcp { .. } => "tcp",
            Hint::Tor { .. } => "tor",
            Hint::I2p { .. } => "i2p",
            Hint::Unknown(s) => s.split(':').next().unwrap_or(""),
        }
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Hint::Tor { onion, port } => write!(f, "tor:{onion}:{port}"),
            Hint::I2p { addr, port: None } => write!(f, "i2p:{addr}"),
            Hint::I2p {
                addr,
                port: Some(p),
            } => write!(f, "i2p:{addr}:{p}"),
            Hint::Unknown(s) => f.write_str(s),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, HintError> {
    // Digits only: no sign, no spaces; at most five of them so parsing cannot overflow.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HintError::Port(s.to_string()));
    }
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(HintError::Port(s.to_string())),
    }
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens (underscores are
/// tolerated, as resolvers do), at most 253 bytes. Returned lowercased.
fn parse_dns_name(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    for label in s.split('.') {
        let b = label.as_bytes();
        if b.is_empty() || b.len() > 63 || b[0] == b'-' || b[b.len() - 1] == b'-' {
            return None;
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return None;
        }
    }
    // An all-numeric final label would be a malformed IPv4 address, not a name.
    let last = s.rsplit('.').next().unwrap_or("");
    if last.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

fn parse_host(s: &str) -> Result<Host, HintError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| HintError::Host(s.to_string()))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::Ipv6)
            .map_err(|_| HintError::Host(s.to_string()));
    }
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Ok(Host::Ipv4(v4));
    }
    parse_dns_name(s)
        .map(Host::Name)
        .ok_or_else(|| HintError::Host(s.to_string()))
}

fn parse_onion(s: &str) -> Result<String, HintError> {
    let lower = s.to_ascii_lowercase();
    match lower.strip_suffix(".onion") {
        Some(label) if label.len() == 56 && base32::is_alphabet(label) => Ok(lower),
        _ => Err(HintError::Onion(s.to_string())),
    }
}

fn parse_i2p(s: &str) -> Result<String, HintError> {
    let lower = s.to_ascii_lowercase();
    let ok = if let Some(b32) = lower.strip_suffix(".b32.i2p") {
        // 52 characters for a plain destination hash; longer for encrypted lease sets.
        b32.len() >= 52 && base32::is_alphabet(b32)
    } else {
        lower.ends_with(".i2p") && parse_dns_name(&lower).is_some()
    };
    if ok {
        Ok(lower)
    } else {
        Err(HintError::I2p(s.to_string()))
    }
}

/// Splits `rest` into `HOST:PORT`, where HOST may be `[IPv6]`.
fn split_host_port(rest: &str) -> Result<(&str, &str), HintError> {
    if rest.starts_with('[') {
        let close = rest
            .find(']')
            .ok_or(HintError::Shape("a ']' closing the IPv6 address"))?;
        let (host, after) = rest.split_at(close + 1);
        let port = after
            .strip_prefix(':')
            .ok_or(HintError::Shape("HOST:PORT"))?;
        Ok((host, port))
    } else {
        rest.rsplit_once(':')
            .filter(|(h, _)| !h.contains(':'))
            .ok_or(HintError::Shape("HOST:PORT"))
    }
}

impl FromStr for Hint {
    type Err = HintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(HintError::Empty);
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, ',' | '/' | '@') || c.is_whitespace() || c.is_control())
        {
            return Err(HintError::BadChar(c));
        }
        let (kind, rest) = s.split_once(':').ok_or(HintError::NoType)?;
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(HintError::NoType);
        }
        match kind {
            "tcp" => {
                let (host, port) = split_host_port(rest)?;
                Ok(Hint::Tcp {
                    host: parse_host(host)?,
                    port: parse_port(port)?,
                })
            }
            "tor" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or(HintError::Shape("tor:NAME.onion:PORT"))?;
                Ok(Hint::Tor {
                    onion: parse_onion(host)?,
                    port: parse_port(port)?,
                })
            }
            "i2p" => {
                let (addr, port) = match rest.split_once(':') {
                    Some((a, p)) => (a, Some(parse_port(p)?)),
                    None => (rest, None),
                };
                Ok(Hint::I2p {
                    addr: parse_i2p(addr)?,
                    port,
                })
            }
            _ => Ok(Hint::Unknown(s.to_string())),
        }
    }
}

/// The secret part of a FURL: whoever knows it may call the object.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Swissnum(String);

impl Swissnum {
    /// A fresh swissnum of [`SWISSNUM_BITS`] random bits, in base32.
    pub fn random() -> Self {
        Swissnum(BASE32.encode(&crate::random_bytes::<{ SWISSNUM_BITS / 8 }>()))
    }

    /// A chosen name (for `register_as`), checked like a parsed swissnum.
    pub fn new(name: &str) -> Result<Self, FurlError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_SWISSNUM_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
        if ok {
            Ok(Swissnum(name.to_string()))
        } else {
            Err(FurlError::Swissnum(name.to_string()))
        }
    }

    /// The swissnum's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Swissnum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Swissnum {
    // A swissnum is a secret: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Swissnum(..)")
    }
}

/// A reference to one object on one Tub, with the places to find the Tub.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Furl {
    tubid: TubId,
    hints: Vec<Hint>,
    swissnum: Swissnum,
}

impl Furl {
    /// Assembles a FURL.
    pub fn new(tubid: TubId, hints: Vec<Hint>, swissnum: Swissnum) -> Self {
        Furl {
            tubid,
            hints,
            swissnum,
        }
    }

    /// The Tub that hosts the object.
    pub fn tubid(&self) -> TubId {
        self.tubid
    }

    /// Where to look for the Tub, in the order written.
    pub fn hints(&self) -> &[Hint] {
        &self.hints
    }

    /// The object's secret name on that Tub.
    pub fn swissnum(&self) -> &Swissnum {
        &self.swissnum
    }
}

impl Furl {
    /// Writes the FURL to `path` (one line, mode `0600`: whoever reads a FURL can use the
    /// object), replacing the file atomically.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::identity::write_private(path, format!("{self}\n").as_bytes())
    }

    /// Reads a FURL written by [`Furl::save`] (surrounding whitespace is ignored). The file
    /// is read through a bound of [`MAX_FURL_LEN`] + 2 bytes (a line ending).
    pub fn load(path: &std::path::Path) -> std::io::Result<Furl> {
        const MAX_FURL_FILE: u64 = MAX_FURL_LEN as u64 + 2;
        // Read with the bound, not checked with `metadata` first: a file that grows in
        // between cannot get past it.
        let text = crate::identity::read_text_bounded(path, MAX_FURL_FILE).map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is too large to hold a FURL", path.display()),
                )
            } else {
                e
            }
        })?;
        text.trim().parse().map_err(|e: FurlError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

impl fmt::Display for Furl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@", self.tubid)?;
        for (i, h) in self.hints.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{h}")?;
        }
        write!(f, "/{}", self.swissnum)
    }
}

impl fmt::Debug for Furl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Furl({SCHEME}{}@", self.tubid)?;
        for (i, h) in self.hints.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{h}")?;
        }
        f.write_str("/..)")
    }
}

impl FromStr for Furl {
    type Err = FurlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_FURL_LEN {
            return Err(FurlError::TooLong(s.len()));
        }
        let body = match s.strip_prefix(SCHEME) {
            Some(b) => b,
            None if s.starts_with("pb://") || s.starts_with("pbu://") => {
                return Err(FurlError::Scheme {
                    hint: " (this is a Foolscap FURL; Folio cannot speak Foolscap's wire)",
                })
            }
            None => return Err(FurlError::Scheme { hint: "" }),
        };
        let (tubid, rest) = body.split_once('@').ok_or(FurlError::MissingAt)?;
        let (hints, swiss) = rest.split_once('/').ok_or(FurlError::MissingSlash)?;
        let tubid: TubId = tubid.parse()?;
        let swissnum = Swissnum::new(swiss)?;
        let mut parsed = Vec::new();
        if !hints.is_empty() {
            let count = hints.split(',').count();
            if count > MAX_HINTS {
                return Err(FurlError::TooManyHints(count));
            }
            for (index, text) in hints.split(',').enumerate() {
                let hint = text.parse().map_err(|reason| FurlError::Hint {
                    index,
                    text: text.to_string(),
                    reason,
                })?;
                parsed.push(hint);
            }
        }
        let furl = Furl::new(tubid, parsed, swissnum);
        // Written back, an address may take more room than it did (IPv4-mapped IPv6 is
        // printed in dotted form): refuse a FURL whose canonical text would be over the limit,
        // so that every FURL this accepts can be sent and parsed again.
        let canonical = furl.to_string().len();
        if canonical > MAX_FURL_LEN {
            return Err(FurlError::TooLong(canonical));
        }
        Ok(furl)
    }
}

impl serde::Serialize for Furl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Furl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONION: &str = "vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd.onion";

    fn tubid() -> TubId {
        TubId::from_spki(b"furl tests")
    }

    fn furl(hints: &str, swiss: &str) -> String {
        format!("folio://{}@{hints}/{swiss}", tubid())
    }

    #[test]
    fn round_trips() {
        let i2p_b32 = format!("{}.b32.i2p", "a".repeat(52));
        for hints in [
            "".to_string(),
            "tcp:example.org:3456".to_string(),
            "tcp:127.0.0.1:1,tcp:[::1]:65535,tcp:[2001:db8::1]:80".to_string(),
            format!("tor:{ONION}:3457"),
            format!("i2p:{i2p_b32}"),
            format!("i2p:{i2p_b32}:7"),
            "i2p:grid.i2p:5".to_string(),
            "quic:1.2.3.4:5,tcp:a.b:6".to_string(),
        ] {
            let text = furl(&hints, "swiss-Num_1.~");
            let parsed: Furl = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.tubid(), tubid());
        }
    }

    #[test]
    fn hint_values() {
        let f: Furl = furl(
            &format!("tcp:[::1]:80,tcp:Example.ORG:1,tor:{ONION}:9,x:y"),
            "s",
        )
        .parse()
        .unwrap();
        assert_eq!(
            f.hints()[0],
            Hint::Tcp {
                host: Host::Ipv6(Ipv6Addr::LOCALHOST),
                port: 80
            }
        );
        assert_eq!(
            f.hints()[1],
            Hint::Tcp {
                host: Host::Name("example.org".into()),
                port: 1
            }
        );
        assert_eq!(f.hints()[2].kind(), "tor");
        assert_eq!(f.hints()[3], Hint::Unknown("x:y".into()));
        assert_eq!(f.hints()[3].kind(), "x");
        assert_eq!(f.swissnum().as_str(), "s");
    }

    #[test]
    fn random_swissnums_are_160_bits() {
        let a = Swissnum::random();
        assert_eq!(a.as_str().len(), 32); // 160 bits / 5 bits per character
        assert_ne!(a, Swissnum::random());
        assert_eq!(format!("{a:?}"), "Swissnum(..)");
    }

    fn hint_err(h: &str) -> HintError {
        match furl(h, "s").parse::<Furl>() {
            Err(FurlError::Hint { reason, .. }) => reason,
            other => panic!("{h}: expected a hint error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_hints_say_what_is_wrong() {
        assert_eq!(hint_err("tcp:host"), HintError::Shape("HOST:PORT"));
        assert_eq!(hint_err("tcp:host:0"), HintError::Port("0".into()));
        assert_eq!(hint_err("tcp:host:65536"), HintError::Port("65536".into()));
        assert_eq!(hint_err("tcp:host:+80"), HintError::Port("+80".into()));
        assert_eq!(hint_err("tcp:host:"), HintError::Port("".into()));
        assert_eq!(hint_err("tcp::::1:80"), HintError::Shape("HOST:PORT"));
        assert_eq!(
            hint_err("tcp:[::1:80"),
            HintError::Shape("a ']' closing the IPv6 address")
        );
        assert_eq!(hint_err("tcp:[::1]80"), HintError::Shape("HOST:PORT"));
        assert_eq!(hint_err("tcp:[nope]:80"), HintError::Host("[nope]".into()));
        assert_eq!(
            hint_err("tcp:-bad.org:80"),
            HintError::Host("-bad.org".into())
        );
        assert_eq!(
            hint_err("tcp:1.2.3.999:80"),
            HintError::Host("1.2.3.999".into())
        );
        assert_eq!(hint_err("tcp:a..b:80"), HintError::Host("a..b".into()));
        assert_eq!(
            hint_err("tor:example.org:80"),
            HintError::Onion("example.org".into())
        );
        assert_eq!(
            hint_err("tor:abc.onion:80"),
            HintError::Onion("abc.onion".into())
        );
        assert_eq!(
            hint_err("i2p:example.org"),
            HintError::I2p("example.org".into())
        );
        assert_eq!(
            hint_err("i2p:abc.b32.i2p"),
            HintError::I2p("abc.b32.i2p".into())
        );
        assert_eq!(hint_err("nocolon"), HintError::NoType);
        assert_eq!(hint_err("TCP:a:1"), HintError::NoType);
        assert_eq!(hint_err("tcp:a b:1"), HintError::BadChar(' '));
        assert_eq!(hint_err("tcp:a:1,,tcp:b:2"), HintError::Empty);
        assert!(matches!(
            furl("tcp:a:1,bad", "s").parse::<Furl>(),
            Err(FurlError::Hint { index: 1, .. })
        ));
    }

    #[test]
    fn malformed_furls_say_what_is_wrong() {
        let t = tubid();
        assert!(matches!(
            format!("pb://{t}@tcp:a:1/s").parse::<Furl>(),
            Err(FurlError::Scheme { hint }) if hint.contains("Foolscap")
        ));
        assert!(matches!(
            "http://x".parse::<Furl>(),
            Err(FurlError::Scheme { .. })
        ));
        assert_eq!(
            format!("folio://{t}tcp:a:1/s").parse::<Furl>(),
            Err(FurlError::MissingAt)
        );
        assert_eq!(
            format!("folio://{t}@tcp:a:1").parse::<Furl>(),
            Err(FurlError::MissingSlash)
        );
        assert!(matches!(
            "folio://short@tcp:a:1/s".parse::<Furl>(),
            Err(FurlError::TubId(TubIdError::Length(5)))
        ));
        assert!(matches!(
            furl("tcp:a:1", "").parse::<Furl>(),
            Err(FurlError::Swissnum(_))
        ));
        assert!(matches!(
            furl("tcp:a:1", "a/b").parse::<Furl>(),
            Err(FurlError::Swissnum(_))
        ));
        assert!(matches!(
            furl("tcp:a:1", &"s".repeat(MAX_SWISSNUM_LEN + 1)).parse::<Furl>(),
            Err(FurlError::Swissnum(_))
        ));
        let many = vec!["tcp:a:1"; MAX_HINTS + 1].join(",");
        assert_eq!(
            furl(&many, "s").parse::<Furl>(),
            Err(FurlError::TooManyHints(MAX_HINTS + 1))
        );
        let long = "x".repeat(MAX_FURL_LEN + 1);
        assert_eq!(
            long.parse::<Furl>(),
            Err(FurlError::TooLong(MAX_FURL_LEN + 1))
        );
    }

    /// The edges docs/furl.md states.
    #[test]
    fn grammar_edges() {
        let t = tubid();
        let parses_as = |hints: &str, canonical: &str| {
            let f: Furl = furl(hints, "s")
                .parse()
                .unwrap_or_else(|e| panic!("{hints}: {e}"));
            assert_eq!(f.to_string(), furl(canonical, "s"), "{hints}");
        };
        // Written back in canonical form: names and onion/I2P addresses lowercased, a DNS
        // name's final dot dropped, addresses in their standard text, ports without zeros.
        parses_as("tcp:Example.ORG.:080", "tcp:example.org:80");
        parses_as(
            "tcp:[0:0::1]:1,tcp:[2001:DB8::A]:2",
            "tcp:[::1]:1,tcp:[2001:db8::a]:2",
        );
        parses_as("tcp:[::ffff:1.2.3.4]:1", "tcp:[::ffff:1.2.3.4]:1");
        parses_as("tcp:[::1.2.3.4]:1", "tcp:[::102:304]:1");
        parses_as("tcp:_srv.a-b.example:1", "tcp:_srv.a-b.example:1");
        parses_as(
            &format!("tor:{}:9", ONION.to_uppercase()),
            &format!("tor:{ONION}:9"),
        );
        let b32 = "a".repeat(60);
        parses_as(
            &format!("i2p:{}.B32.I2P:7", b32.to_uppercase()),
            &format!("i2p:{b32}.b32.i2p:7"),
        );
        parses_as("i2p:b32.i2p", "i2p:b32.i2p");
        // An unknown hint is kept as written, any character but the forbidden ones.
        parses_as("x-new.2:Zé~[]:?", "x-new.2:Zé~[]:?");
        // The empty hint list.
        assert!(furl("", "s").parse::<Furl>().unwrap().hints().is_empty());

        assert_eq!(hint_err("tcp:a:1,"), HintError::Empty);
        assert_eq!(hint_err(",tcp:a:1"), HintError::Empty);
        assert_eq!(hint_err(","), HintError::Empty);
        assert_eq!(hint_err("tcp:a@b:1"), HintError::BadChar('@'));
        assert_eq!(hint_err("tcp:a\u{0}:1"), HintError::BadChar('\u{0}'));
        assert_eq!(hint_err("tcp:a\u{a0}:1"), HintError::BadChar('\u{a0}'));
        assert_eq!(hint_err(":a"), HintError::NoType);
        assert_eq!(hint_err("x_y:a"), HintError::NoType);
        assert_eq!(
            hint_err("tcp:01.2.3.4:1"),
            HintError::Host("01.2.3.4".into())
        );
        assert_eq!(hint_err("tcp:1.2.3:1"), HintError::Host("1.2.3".into()));
        assert_eq!(
            hint_err("tcp:[fe80::1%eth0]:1"),
            HintError::Host("[fe80::1%eth0]".into())
        );
        assert_eq!(
            hint_err("tcp:[1.2.3.4]:1"),
            HintError::Host("[1.2.3.4]".into())
        );
        assert_eq!(hint_err("tcp:a:000080"), HintError::Port("000080".into()));
        let label = "a".repeat(64);
        assert_eq!(hint_err(&format!("tcp:{label}:1")), HintError::Host(label));
        let name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(name.len(), 254);
        assert_eq!(hint_err(&format!("tcp:{name}:1")), HintError::Host(name));
        assert_eq!(
            hint_err(&format!("tor:{ONION}")),
            HintError::Shape("tor:NAME.onion:PORT")
        );
        assert_eq!(
            hint_err(&format!("tor:www.{ONION}:1")),
            HintError::Onion(format!("www.{ONION}"))
        );
        assert_eq!(hint_err("i2p:grid.i2p:0"), HintError::Port("0".into()));
        // A name ending in .b32.i2p is a destination hash or nothing.
        assert_eq!(
            hint_err("i2p:x.b32.i2p"),
            HintError::I2p("x.b32.i2p".into())
        );
        assert_eq!(
            hint_err("i2p:grid.i2p."),
            HintError::I2p("grid.i2p.".into())
        );
        assert_eq!(
            hint_err(&format!("i2p:{}.b32.i2p", "a".repeat(51))),
            HintError::I2p(format!("{}.b32.i2p", "a".repeat(51)))
        );
        let max = vec!["tcp:a:1"; MAX_HINTS].join(",");
        assert_eq!(
            furl(&max, "s").parse::<Furl>().unwrap().hints().len(),
            MAX_HINTS
        );

        // The scheme and the TubId are lowercase only; the swissnum is case-sensitive.
        assert!(matches!(
            format!("FOLIO://{t}@/s").parse::<Furl>(),
            Err(FurlError::Scheme { .. })
        ));
        assert!(matches!(
            format!("folio://{}@/s", t.to_string().to_uppercase()).parse::<Furl>(),
            Err(FurlError::TubId(TubIdError::Alphabet(_)))
        ));
        let upper: Furl = furl("", "S").parse().unwrap();
        assert_ne!(upper, furl("", "s").parse().unwrap());
        for bad in ["a%20b", "a+b", "é", "a b"] {
            assert!(
                matches!(furl("", bad).parse::<Furl>(), Err(FurlError::Swissnum(_))),
                "{bad}"
            );
        }
        let longest = "s".repeat(MAX_SWISSNUM_LEN);
        assert!(furl("", &longest).parse::<Furl>().is_ok());
        // The first '@' ends the TubId and the first '/' after it ends the hints.
        assert_eq!(
            format!("folio://{t}@tcp:a:1/s/t").parse::<Furl>(),
            Err(FurlError::Swissnum("s/t".into()))
        );
    }

    #[test]
    fn canonical_text_stays_within_the_limit() {
        // Found by the furl_parse fuzz target: "::ffff:0:0" prints as "::ffff:0.0.0.0".
        let head = format!("folio://{}@tcp:[::ffff:0:0]:1,x:", tubid());
        let pad = MAX_FURL_LEN - head.len() - "/s".len();
        let text = format!("{head}{}/s", "y".repeat(pad));
        assert_eq!(text.len(), MAX_FURL_LEN);
        assert_eq!(
            text.parse::<Furl>(),
            Err(FurlError::TooLong(MAX_FURL_LEN + 4))
        );
    }

    #[test]
    fn serde_round_trip() {
        let f: Furl = furl("tcp:a.b:1", "xyz").parse().unwrap();
        let bytes = postcard::to_allocvec(&f).unwrap();
        assert_eq!(postcard::from_bytes::<Furl>(&bytes).unwrap(), f);
        let t = postcard::to_allocvec(&tubid()).unwrap();
        assert_eq!(postcard::from_bytes::<TubId>(&t).unwrap(), tubid());
    }

    /// `Furl::load` reads through its bound: a FURL file that yields more than a FURL and a
    /// line ending is refused, even when `metadata` said it was empty (a FIFO here; a file
    /// that grows between a size check and the read is the same race, which the old
    /// metadata-then-read check let through).
    #[cfg(unix)]
    #[test]
    fn load_reads_through_its_bound() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("folio-furl-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = furl("tcp:example.org:3456", "abcdefghijklmnopqrstuvwxyz234567");
        let saved = dir.join("saved.furl");
        let f: Furl = text.parse().unwrap();
        f.save(&saved).unwrap();
        assert_eq!(Furl::load(&saved).unwrap(), f);

        let fifo = dir.join("fifo.furl");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let writer = {
            let (fifo, text) = (fifo.clone(), text.clone());
            std::thread::spawn(move || {
                let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                // A valid FURL, then more blank space than a FURL file may hold.
                let _ = out.write_all(text.as_bytes());
                let _ = out.write_all(&vec![b' '; 2 * MAX_FURL_LEN]);
            })
        };
        let err = Furl::load(&fifo).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("too large to hold a FURL"),
            "{err}"
        );
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
