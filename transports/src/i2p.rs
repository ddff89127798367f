//! I2P through a SAM v3.1 bridge (i2pd's or Java I2P's), with a small client of our own.
//!
//! SAM is a line protocol over TCP to the router's bridge. A **session** is a local I2P
//! destination, alive while its control connection stays open; each stream then uses a fresh
//! TCP connection to the bridge:
//!
//! - **dial**: `STREAM CONNECT` on a new bridge connection, which then carries the stream;
//! - **listen**: `STREAM ACCEPT` on a new bridge connection, which waits for an inbound stream
//!   and then carries it. The socket was opened *by us*, outbound, yet the stream on it was
//!   *accepted*: Folio hands it to the server side of the handshake (Tahoe-LAFS #2861).
//!
//! Why not `yosemite`: i2pd 2.45 (Debian bookworm) needs `i2cp.leaseSetType=1` on
//! `SESSION CREATE`, which yosemite cannot send, and a configurable bridge host. See
//! `../shared/recipes/i2pd-offline.md` for the router behaviour this client was written against.
//!
//! Replies are parsed by [`parse_reply`], which never panics and bounds every line, and read
//! off the socket by [`read_reply`]. A reply normally ends with a newline; emissary 0.4's
//! bridge sends some refusals (`SESSION STATUS RESULT=DUPLICATE_DEST`, `... DUPLICATE_ID`,
//! `STREAM STATUS RESULT=CANT_REACH_PEER`) with none and closes the socket at once, so a
//! refusal cut short by the close is still taken as the bridge's answer ([`final_reply`]):
//! `CANT_REACH_PEER` stays [`SamError::CantReachPeer`], not a "closed mid-reply".

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// The longest SAM reply line accepted (a private destination with certificate is ~900
/// characters; a reply carrying one is well under 4 KiB).
pub const MAX_LINE: usize = 4096;

/// Where the bridge is and how sessions are made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SamConfig {
    /// The bridge's TCP address (i2pd's default is 127.0.0.1:7656).
    pub bridge: SocketAddr,
    /// Hops in inbound tunnels (0 for tests on one router; 3 is I2P's default).
    pub inbound_length: u8,
    /// Hops in outbound tunnels.
    pub outbound_length: u8,
    /// Parallel inbound tunnels.
    pub inbound_quantity: u8,
    /// Parallel outbound tunnels.
    pub outbound_quantity: u8,
    /// Other `key=value` session options, sent as given (for example `i2cp.leaseSetType=1`,
    /// which i2pd 2.45 needs for streams between two local destinations).
    pub extra_options: Vec<(String, String)>,
    /// Time allowed for `SESSION CREATE` (i2pd 2.45 takes 20 s).
    pub session_timeout: Duration,
    /// Time allowed for other exchanges with the bridge.
    pub timeout: Duration,
    /// How long [`Session::create`] with a saved key keeps retrying while the bridge answers
    /// `DUPLICATE_DEST`: the key's previous session is still being torn down (emissary 0.4
    /// waits up to 60 s for its streams to close). Retried every [`DUPLICATE_DEST_RETRY`].
    pub duplicate_dest_wait: Duration,
}

/// How often [`Session::create`] asks again while the bridge answers `DUPLICATE_DEST`.
pub const DUPLICATE_DEST_RETRY: Duration = Duration::from_secs(1);

impl Default for SamConfig {
    fn default() -> Self {
        SamConfig {
            bridge: SocketAddr::from(([127, 0, 0, 1], 7656)),
            inbound_length: 3,
            outbound_length: 3,
            inbound_quantity: 2,
            outbound_quantity: 2,
            extra_options: vec![("i2cp.leaseSetType".into(), "1".into())],
            session_timeout: Duration::from_secs(90),
            timeout: Duration::from_secs(60),
            duplicate_dest_wait: Duration::from_secs(90),
        }
    }
}

impl SamConfig {
    /// The defaults ([`SamConfig::default`]: 3-hop tunnels, two of each) with the bridge at
    /// `bridge`.
    pub fn new(bridge: SocketAddr) -> Self {
        SamConfig {
            bridge,
            ..SamConfig::default()
        }
    }

    /// Zero-hop tunnels, one of each: what a test router with no peers can build (i2pd).
    /// emissary's bridge refuses 0-hop tunnels by closing the connection without a reply
    /// ([`SamError::Closed`]); give it at least one hop.
    pub fn zero_hop(bridge: SocketAddr) -> Self {
        SamConfig {
            bridge,
            inbound_length: 0,
            outbound_length: 0,
            inbound_quantity: 1,
            outbound_quantity: 1,
            ..SamConfig::default()
        }
    }

    fn options(&self) -> String {
        let mut out = format!(
            "inbound.length={} outbound.length={} inbound.quantity={} outbound.quantity={}",
            self.inbound_length,
            self.outbound_length,
            self.inbound_quantity,
            self.outbound_quantity
        );
        for (k, v) in &self.extra_options {
            out.push_str(&format!(" {k}={v}"));
        }
        out
    }
}

/// What went wrong with the bridge or the I2P network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SamError {
    /// Nothing answers at the bridge address.
    #[error(
        "SAM bridge at {addr} refused the connection (is i2pd, or I2P with SAM enabled, running?)"
    )]
    BridgeUnreachable {
        /// The bridge address.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// The bridge speaks no SAM version this client does (3.1).
    #[error("the SAM bridge at {0} does not speak SAM 3.1 (NOVERSION)")]
    NoVersion(SocketAddr),
    /// The destination could not be reached (no lease set found, or it refused).
    #[error("I2P destination {dest} cannot be reached (CANT_REACH_PEER{})", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    CantReachPeer {
        /// The destination, shortened.
        dest: String,
        /// The bridge's message, if any.
        message: Option<String>,
    },
    /// The destination or private key is malformed.
    #[error("the SAM bridge rejected the destination or key as invalid (INVALID_KEY){}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    InvalidKey(Option<String>),
    /// The bridge refused an operation with this result code.
    #[error("the SAM bridge answered {result} to {what}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        /// The command.
        what: &'static str,
        /// The RESULT= value.
        result: String,
        /// The MESSAGE= value, if any.
        message: Option<String>,
    },
    /// An exchange took too long.
    #[error("the SAM bridge at {addr} did not answer {what} within {after:?}")]
    Timeout {
        /// The bridge.
        addr: SocketAddr,
        /// The command.
        what: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The bridge closed the connection before a whole reply (emissary, for one, closes
    /// without a word when asked for 0-hop tunnels).
    #[error("the SAM bridge closed the connection {}", if partial.is_empty() { "without a reply".to_string() } else { format!("mid-reply, after {partial:?}") })]
    Closed {
        /// What it had sent of the unfinished line (at most 80 characters of it).
        partial: String,
    },
    /// The bridge sent something that is not a SAM reply.
    #[error("malformed SAM reply: {0}")]
    Protocol(String),
    /// The connection to the bridge failed.
    #[error("SAM bridge connection failed")]
    Io(#[from] std::io::Error),
}

/// A parsed reply line: `TOPIC KIND KEY=VALUE ...` (values may be quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reply {
    /// For example `HELLO`, `SESSION`, `STREAM`.
    pub topic: String,
    /// For example `REPLY`, `STATUS`.
    pub kind: String,
    /// The `KEY=VALUE` pairs.
    pub fields: BTreeMap<String, String>,
}

impl Reply {
    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Parses one reply line (without its newline). Never panics; refuses lines over
/// [`MAX_LINE`], unterminated quotes, and duplicate keys.
pub fn parse_reply(line: &str) -> Result<Reply, SamError> {
    if line.len() > MAX_LINE {
        return Err(SamError::Protocol(format!("a {}-byte line", line.len())));
    }
    let mut rest = line.trim_end_matches('\r').trim_start();
    let mut word = || -> Option<String> {
        let end = rest.find(' ').unwrap_or(rest.len());
        let w = &rest[..end];
        rest = rest[end..].trim_start();
        (!w.is_empty()).then(|| w.to_string())
    };
    let topic = word().ok_or_else(|| SamError::Protocol("an empty line".into()))?;
    let kind = word().ok_or_else(|| SamError::Protocol(format!("{topic:?} with no reply kind")))?;
    let mut fields = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = match rest.find(['=', ' ']) {
            Some(i) if rest.as_bytes()[i] == b'=' => (&rest[..i], &rest[i + 1..]),
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if key.is_empty() {
            return Err(SamError::Protocol(format!(
                "a value with no key in {line:?}"
            )));
        }
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let close = q
                .find('"')
                .ok_or_else(|| SamError::Protocol(format!("an unterminated quote in {line:?}")))?;
            (q[..close].to_string(), &q[close + 1..])
        } else if after.starts_with(' ') || after.is_empty() {
            (String::new(), after)
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if fields.insert(key.to_string(), value).is_some() {
            return Err(SamError::Protocol(format!("key {key} given twice")));
        }
        rest = after.trim_start();
    }
    Ok(Reply {
        topic,
        kind,
        fields,
    })
}

/// Reads one line, byte by byte, so that nothing after it (stream data) is consumed. Returns
/// the line (without its newline) and whether a newline ended it; `false` means the bridge
/// closed the connection after those bytes.
async fn read_line_or_close<S>(s: &mut S) -> Result<(Vec<u8>, bool), SamError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut line = Vec::with_capacity(128);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Ok((line, false));
        }
        if b[0] == b'\n' {
            return Ok((line, true));
        }
        if line.len() >= MAX_LINE {
            return Err(SamError::Protocol(format!(
                "a reply line over {MAX_LINE} bytes"
            )));
        }
        line.push(b[0]);
    }
}

fn utf8(line: Vec<u8>) -> Result<String, SamError> {
    String::from_utf8(line).map_err(|_| SamError::Protocol("a reply that is not UTF-8".into()))
}

/// The bridge's unfinished last line, as [`SamError::Closed`] (shortened for the message).
fn closed(partial: &str) -> SamError {
    let mut shown: String = partial.chars().take(80).collect();
    if shown.len() < partial.len() {
        shown.push('…');
    }
    SamError::Closed { partial: shown }
}

/// What a bridge that closed the connection after `partial` (no newline) answered: a reply
/// only when `partial` parses as one whose `RESULT` is present, not empty and not `OK`. A
/// refusal carries nothing Folio goes on to use (emissary 0.4 ends `DUPLICATE_DEST`,
/// `DUPLICATE_ID` and `CANT_REACH_PEER` this way and closes), while a cut `OK` could be a
/// truncated destination or key, and its connection cannot carry a stream anyway: that, an
/// empty line, or anything else is [`SamError::Closed`]. Never panics.
pub fn final_reply(partial: &str) -> Result<Reply, SamError> {
    match parse_reply(partial) {
        Ok(reply)
            if reply
                .get("RESULT")
                .is_some_and(|r| !r.is_empty() && r != "OK") =>
        {
            Ok(reply)
        }
        _ => Err(closed(partial)),
    }
}

/// Reads one reply off a bridge connection: a line ended by a newline, or a refusal the
/// bridge sent without one before closing ([`final_reply`]). Reads byte by byte and never
/// past the newline, so the stream's own bytes that follow an `OK` stay unread.
pub async fn read_reply<S>(s: &mut S) -> Result<Reply, SamError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let (line, ended) = read_line_or_close(s).await?;
    let line = utf8(line)?;
    if ended {
        parse_reply(&line)
    } else {
        final_reply(&line)
    }
}

/// Reads one whole line (the peer's destination after `STREAM ACCEPT`).
async fn read_line<S>(s: &mut S) -> Result<String, SamError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let (line, ended) = read_line_or_close(s).await?;
    let line = utf8(line)?;
    if ended {
        Ok(line)
    } else {
        Err(closed(&line))
    }
}

fn check(reply: &Reply, what: &'static str, dest: Option<&str>) -> Result<(), SamError> {
    let message = reply.get("MESSAGE").map(str::to_string);
    match reply.get("RESULT") {
        Some("OK") => Ok(()),
        Some("CANT_REACH_PEER") | Some("PEER_NOT_FOUND") => Err(SamError::CantReachPeer {
            dest: short(dest.unwrap_or("?")),
            message,
        }),
        Some("INVALID_KEY") => Err(SamError::InvalidKey(message)),
        Some(other) => Err(SamError::Refused {
            what,
            result: other.to_string(),
            message,
        }),
        None => Err(SamError::Protocol(format!(
            "{what}: no RESULT in the reply"
        ))),
    }
}

fn short(dest: &str) -> String {
    if dest.len() > 24 {
        format!("{}…", &dest[..24])
    } else {
        dest.to_string()
    }
}

/// One command/reply exchange on a bridge connection, within `after`.
async fn exchange<S>(
    s: &mut S,
    addr: SocketAddr,
    command: &str,
    what: &'static str,
    after: Duration,
) -> Result<Reply, SamError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let fut = async {
        // One write: i2pd 2.45 treats a command split across reads as malformed.
        s.write_all(format!("{command}\n").as_bytes()).await?;
        s.flush().await?;
        read_reply(s).await
    };
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| SamError::Timeout { addr, what, after })?
}

/// Opens a bridge connection and says HELLO (SAM 3.1).
async fn open(cfg: &SamConfig) -> Result<TcpStream, SamError> {
    let addr = cfg.bridge;
    let mut s = tokio::time::timeout(cfg.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SamError::Timeout {
            addr,
            what: "the connection",
            after: cfg.timeout,
        })?
        .map_err(|source| SamError::BridgeUnreachable { addr, source })?;
    let _ = s.set_nodelay(true);
    let reply = exchange(
        &mut s,
        addr,
        "HELLO VERSION MIN=3.1 MAX=3.1",
        "HELLO",
        cfg.timeout,
    )
    .await?;
    if reply.get("RESULT") == Some("NOVERSION") {
        return Err(SamError::NoVersion(addr));
    }
    check(&reply, "HELLO", None)?;
    Ok(s)
}

/// A new private destination (Ed25519): `(public, private)` in I2P base64.
pub async fn generate_destination(cfg: &SamConfig) -> Result<(String, String), SamError> {
    let mut s = open(cfg).await?;
    let reply = exchange(
        &mut s,
        cfg.bridge,
        "DEST GENERATE SIGNATURE_TYPE=7",
        "DEST GENERATE",
        cfg.timeout,
    )
    .await?;
    match (reply.get("PUB"), reply.get("PRIV")) {
        (Some(p), Some(k)) if !p.is_empty() && !k.is_empty() => Ok((p.to_string(), k.to_string())),
        _ => Err(SamError::Protocol("DEST REPLY without PUB and PRIV".into())),
    }
}

/// The `.b32.i2p` address of a public destination in I2P base64.
pub fn b32_address(public_dest: &str) -> Result<String, SamError> {
    let mut spec = data_encoding::Specification::new();
    spec.symbols
        .push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~");
    spec.padding = Some('=');
    let b64 = spec
        .encoding()
        .map_err(|e| SamError::Protocol(e.to_string()))?;
    let raw = b64
        .decode(public_dest.as_bytes())
        .map_err(|e| SamError::Protocol(format!("a destination that is not I2P base64: {e}")))?;
    let hash = ring::digest::digest(&ring::digest::SHA256, &raw);
    let mut b32 = data_encoding::BASE32_NOPAD.encode(hash.as_ref());
    b32.make_ascii_lowercase();
    Ok(format!("{b32}.b32.i2p"))
}

/// Which destination a session uses.
#[derive(Clone, PartialEq, Eq)]
pub enum Destination {
    /// A fresh, throwaway one (for dialing).
    Transient,
    /// A saved private key (for a listener whose address must survive restarts).
    Private(String),
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Transient => f.write_str("Transient"),
            Destination::Private(_) => f.write_str("Private(..)"),
        }
    }
}

/// A SAM STREAM session: a local destination, alive while this value lives.
#[derive(Debug)]
pub struct Session {
    cfg: SamConfig,
    id: String,
    public: String,
    address: String,
    _control: TcpStream,
}

impl Session {
    /// Creates a session (i2pd 2.45 takes 20 s to answer). With a saved key, a
    /// `DUPLICATE_DEST` answer (the key's previous session, on this bridge, is still being
    /// torn down) is retried every [`DUPLICATE_DEST_RETRY`] for up to
    /// [`SamConfig::duplicate_dest_wait`]; after that it is returned as
    /// [`SamError::Refused`].
    pub async fn create(cfg: &SamConfig, destination: Destination) -> Result<Session, SamError> {
        let deadline = tokio::time::Instant::now() + cfg.duplicate_dest_wait;
        let mut tries = 0u32;
        loop {
            match Session::create_once(cfg, &destination).await {
                Err(SamError::Refused { result, .. })
                    if result == "DUPLICATE_DEST"
                        && matches!(destination, Destination::Private(_))
                        && tokio::time::Instant::now() + DUPLICATE_DEST_RETRY < deadline =>
                {
                    tries += 1;
                    if tries == 1 {
                        debug!(
                            "the SAM bridge still holds this key's previous session \
                             (DUPLICATE_DEST): retrying for up to {:?}",
                            cfg.duplicate_dest_wait
                        );
                    }
                    tokio::time::sleep(DUPLICATE_DEST_RETRY).await;
                }
                other => return other,
            }
        }
    }

    async fn create_once(cfg: &SamConfig, destination: &Destination) -> Result<Session, SamError> {
        let mut control = open(cfg).await?;
        let suffix: u64 = rand_suffix();
        let id = format!("folio-{suffix:016x}");
        let dest = match destination {
            Destination::Transient => "TRANSIENT".to_string(),
            Destination::Private(k) => k.clone(),
        };
        let command = format!(
            "SESSION CREATE STYLE=STREAM ID={id} DESTINATION={dest} SIGNATURE_TYPE=7 {}",
            cfg.options()
        );
        debug!(%id, "creating SAM session");
        let reply = exchange(
            &mut control,
            cfg.bridge,
            &command,
            "SESSION CREATE",
            cfg.session_timeout,
        )
        .await?;
        check(&reply, "SESSION CREATE", None)?;
        let lookup = exchange(
            &mut control,
            cfg.bridge,
            "NAMING LOOKUP NAME=ME",
            "NAMING LOOKUP",
            cfg.timeout,
        )
        .await?;
        check(&lookup, "NAMING LOOKUP", None)?;
        let public = lookup
            .get("VALUE")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SamError::Protocol("NAMING REPLY without VALUE".into()))?
            .to_string();
        let address = b32_address(&public)?;
        debug!(%id, %address, "SAM session ready");
        Ok(Session {
            cfg: cfg.clone(),
            id,
            public,
            address,
            _control: control,
        })
    }

    /// This session's `.b32.i2p` address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// This session's public destination (I2P base64).
    pub fn public_destination(&self) -> &str {
        &self.public
    }

    /// Opens a stream to `dest` (a `.b32.i2p` name or a base64 destination).
    pub async fn connect(&self, dest: &str) -> Result<TcpStream, SamError> {
        let mut s = open(&self.cfg).await?;
        let command = format!(
            "STREAM CONNECT ID={} DESTINATION={dest} SILENT=false",
            self.id
        );
        let reply = exchange(
            &mut s,
            self.cfg.bridge,
            &command,
            "STREAM CONNECT",
            self.cfg.timeout,
        )
        .await?;
        check(&reply, "STREAM CONNECT", Some(dest))?;
        Ok(s)
    }

    /// Waits for the next inbound stream. The returned socket is one this process opened to
    /// the bridge; the stream on it was *accepted* from `peer`.
    pub async fn accept(&self) -> Result<(TcpStream, String), SamError> {
        let mut s = open(&self.cfg).await?;
        let command = format!("STREAM ACCEPT ID={} SILENT=false", self.id);
        let reply = exchange(
            &mut s,
            self.cfg.bridge,
            &command,
            "STREAM ACCEPT",
            self.cfg.timeout,
        )
        .await?;
        check(&reply, "STREAM ACCEPT", None)?;
        // Then, when a stream arrives, its peer's destination on a line of its own (SAM 3.1:
        // no FROM_PORT/TO_PORT), and after that the stream's bytes. No timeout: a listener waits.
        let peer = read_line(&mut s).await?;
        let peer = peer.split(' ').next().unwrap_or("").to_string();
        Ok((s, peer))
    }
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    // The session id only needs to be unique on this bridge.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t;
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        let r = parse_reply("HELLO REPLY RESULT=OK VERSION=3.1").unwrap();
        assert_eq!((r.topic.as_str(), r.kind.as_str()), ("HELLO", "REPLY"));
        assert_eq!(r.get("RESULT"), Some("OK"));
        assert_eq!(r.get("VERSION"), Some("3.1"));
        let r =
            parse_reply("STREAM STATUS RESULT=I2P_ERROR MESSAGE=\"no lease set here\"\r").unwrap();
        assert_eq!(r.get("MESSAGE"), Some("no lease set here"));
        let r = parse_reply("DEST REPLY PUB=abc~-= PRIV=x=y").unwrap();
        assert_eq!(r.get("PUB"), Some("abc~-="));
        assert_eq!(r.get("PRIV"), Some("x=y"));
        let r = parse_reply("SESSION STATUS RESULT=OK FLAG").unwrap();
        assert_eq!(r.get("FLAG"), Some(""));
    }

    #[test]
    fn refuses_malformed_replies() {
        assert!(parse_reply("").is_err());
        assert!(parse_reply("HELLO").is_err());
        assert!(parse_reply("A B MESSAGE=\"open").is_err());
        assert!(parse_reply("A B =x").is_err());
        assert!(parse_reply("A B K=1 K=2").is_err());
        assert!(parse_reply(&"x".repeat(MAX_LINE + 1)).is_err());
    }

    #[test]
    fn result_codes_become_clear_errors() {
        let r = parse_reply("STREAM STATUS RESULT=CANT_REACH_PEER").unwrap();
        let e = check(
            &r,
            "STREAM CONNECT",
            Some("abcdefghijklmnopqrstuvwxyz0123456789.b32.i2p"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be reached"), "{e}");
        let r = parse_reply("STREAM STATUS RESULT=INVALID_KEY").unwrap();
        assert!(matches!(
            check(&r, "x", None),
            Err(SamError::InvalidKey(None))
        ));
        let r = parse_reply("SESSION STATUS RESULT=DUPLICATED_ID").unwrap();
        assert!(check(&r, "SESSION CREATE", None)
            .unwrap_err()
            .to_string()
            .contains("DUPLICATED_ID"));
    }

    const BRIDGE: &str = "127.0.0.1:7656";

    /// A command answered by `answer` (no newline), then the bridge closes: what emissary 0.4
    /// does for these refusals.
    async fn answered_then_closed(command: &str, answer: &str) -> Result<Reply, SamError> {
        let mut bridge = tokio_test::io::Builder::new()
            .write(format!("{command}\n").as_bytes())
            .read(answer.as_bytes())
            .build();
        exchange(
            &mut bridge,
            BRIDGE.parse().unwrap(),
            command,
            "test",
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn refusals_without_a_newline_keep_their_meaning() {
        let r = answered_then_closed(
            "STREAM CONNECT ID=x DESTINATION=y.b32.i2p SILENT=false",
            "STREAM STATUS RESULT=CANT_REACH_PEER",
        )
        .await
        .unwrap();
        assert!(matches!(
            check(&r, "STREAM CONNECT", Some("y.b32.i2p")),
            Err(SamError::CantReachPeer { .. })
        ));
        for code in ["DUPLICATE_DEST", "DUPLICATE_ID"] {
            let r = answered_then_closed(
                "SESSION CREATE STYLE=STREAM ID=x DESTINATION=TRANSIENT",
                &format!("SESSION STATUS RESULT={code}"),
            )
            .await
            .unwrap();
            match check(&r, "SESSION CREATE", None) {
                Err(SamError::Refused { what, result, .. }) => {
                    assert_eq!((what, result.as_str()), ("SESSION CREATE", code))
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        // A quoted message, cut short by the close, is no reply.
        let e = answered_then_closed("X", "STREAM STATUS RESULT=I2P_ERROR MESSAGE=\"no lea")
            .await
            .unwrap_err();
        assert!(matches!(e, SamError::Closed { .. }), "{e}");
    }

    #[tokio::test]
    async fn only_a_refusal_may_end_without_a_newline() {
        // An OK cut short could be a truncated key or destination: never taken.
        for partial in [
            "",
            "HELLO REPLY RESULT=OK VERSION=3.1",
            "DEST REPLY PUB=abc PRIV=de",
            "SESSION STATUS",
            "SESSION STATUS RESULT=",
        ] {
            let e = answered_then_closed("HELLO VERSION", partial)
                .await
                .unwrap_err();
            assert!(
                matches!(&e, SamError::Closed { partial: p } if p == partial),
                "{e:?}"
            );
        }
        let e = answered_then_closed("HELLO VERSION", "").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the SAM bridge closed the connection without a reply"
        );
        let long = format!("SESSION STATUS RESULT=OK DESTINATION={}", "A".repeat(900));
        let e = answered_then_closed("X", &long).await.unwrap_err();
        assert!(e.to_string().len() < 200, "the message is shortened: {e}");
        // With a newline, a reply is a reply, and nothing after it is read.
        let mut bridge = tokio_test::io::Builder::new()
            .read(b"STREAM STATUS RESULT=OK\nstream bytes")
            .build();
        let r = read_reply(&mut bridge).await.unwrap();
        assert_eq!(r.get("RESULT"), Some("OK"));
        let mut rest = Vec::new();
        bridge.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"stream bytes");
    }

    /// A bridge on 127.0.0.1 that plays `script`: for each connection in turn, answers HELLO,
    /// then for each (expected command prefix, answer) reads one line and writes the answer
    /// exactly as given (with or without a newline); then closes.
    async fn scripted_bridge(script: Vec<Vec<(&'static str, String)>>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for exchanges in script {
                let (mut s, _) = l.accept().await.unwrap();
                let mut all = vec![(
                    "HELLO VERSION",
                    "HELLO REPLY RESULT=OK VERSION=3.1\n".into(),
                )];
                all.extend(exchanges);
                for (expect, answer) in all {
                    let line = read_line(&mut s).await.unwrap();
                    assert!(line.starts_with(expect), "{line:?}, expected {expect:?}");
                    s.write_all(answer.as_bytes()).await.unwrap();
                }
                // Dropping `s` closes the connection, as emissary does after these answers.
            }
        });
        addr
    }

    #[tokio::test]
    async fn sessions_and_streams_report_the_bridges_refusals() {
        let cfg = |bridge| SamConfig {
            bridge,
            timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(5),
            ..SamConfig::default()
        };
        // DUPLICATE_DEST is retried for duplicate_dest_wait, then reported as it is.
        let bridge = scripted_bridge(vec![vec![(
            "SESSION CREATE",
            "SESSION STATUS RESULT=DUPLICATE_DEST".into(),
        )]])
        .await;
        let no_wait = SamConfig {
            duplicate_dest_wait: Duration::ZERO,
            ..cfg(bridge)
        };
        let e = Session::create(&no_wait, Destination::Private("k".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, SamError::Refused { result, .. } if result == "DUPLICATE_DEST"),
            "{e:?}"
        );

        let public = "A".repeat(516);
        let bridge = scripted_bridge(vec![
            vec![
                ("SESSION CREATE", "SESSION STATUS RESULT=OK\n".into()),
                (
                    "NAMING LOOKUP NAME=ME",
                    format!("NAMING REPLY RESULT=OK NAME=ME VALUE={public}\n"),
                ),
            ],
            vec![(
                "STREAM CONNECT",
                "STREAM STATUS RESULT=CANT_REACH_PEER".into(),
            )],
        ])
        .await;
        let session = Session::create(&cfg(bridge), Destination::Transient)
            .await
            .unwrap();
        let e = session
            .connect("abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst.b32.i2p")
            .await
            .unwrap_err();
        assert!(matches!(e, SamError::CantReachPeer { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot be reached"), "{e}");
    }

    /// A key whose previous session the bridge is still tearing down: `DUPLICATE_DEST` (as
    /// emissary sends it, no newline, then closed) twice, then the session is made.
    #[tokio::test]
    async fn a_saved_key_waits_out_duplicate_dest() {
        let public = "A".repeat(516);
        let duplicate = vec![(
            "SESSION CREATE",
            "SESSION STATUS RESULT=DUPLICATE_DEST".to_string(),
        )];
        let bridge = scripted_bridge(vec![
            duplicate.clone(),
            duplicate,
            vec![
                ("SESSION CREATE", "SESSION STATUS RESULT=OK\n".into()),
                (
                    "NAMING LOOKUP NAME=ME",
                    format!("NAMING REPLY RESULT=OK NAME=ME VALUE={public}\n"),
                ),
            ],
        ])
        .await;
        let cfg = SamConfig {
            bridge,
            timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(5),
            duplicate_dest_wait: Duration::from_secs(10),
            ..SamConfig::default()
        };
        let t = std::time::Instant::now();
        let session = Session::create(&cfg, Destination::Private("k".into()))
            .await
            .expect("made once the old session is gone");
        assert_eq!(session.public_destination(), public);
        let waited = t.elapsed();
        assert!(
            waited >= 2 * DUPLICATE_DEST_RETRY && waited < 5 * DUPLICATE_DEST_RETRY,
            "{waited:?}"
        );
    }

    #[test]
    fn b32_of_a_destination() {
        // 387 bytes of zeros, I2P base64: the b32 is the SHA-256 of the raw bytes.
        let raw = vec![0u8; 387];
        let b64 = data_encoding::BASE64
            .encode(&raw)
            .replace('+', "-")
            .replace('/', "~");
        let addr = b32_address(&b64).unwrap();
        let mut want = data_encoding::BASE32_NOPAD
            .encode(ring::digest::digest(&ring::digest::SHA256, &raw).as_ref());
        want.make_ascii_lowercase();
        assert_eq!(addr, format!("{want}.b32.i2p"));
        assert_eq!(addr.len(), 52 + ".b32.i2p".len());
        assert!(b32_address("not base64!").is_err());
    }

    #[tokio::test]
    async fn bridge_not_running_says_so() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = generate_destination(&SamConfig::zero_hop(addr))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "SAM bridge at {addr} refused the connection (is i2pd"
            )),
            "{e}"
        );
    }
}
