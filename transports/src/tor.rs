//! Tor through a system `tor`: streams through its SOCKS5 port, onion services through its
//! control port.
//!
//! - **dial**: SOCKS5 `CONNECT` with the host name left to tor (so `.onion` names and DNS are
//!   resolved inside Tor, never locally), through `tokio-socks`;
//! - **listen**: a local TCP listener on 127.0.0.1 plus `ADD_ONION` on the control port, which
//!   maps the onion service's virtual port to it. The key is saved by the caller and given
//!   back at every start (`ADD_ONION ED25519-V3:<key>`), so the `.onion` address survives
//!   restarts. The onion service lives as long as the control connection.
//!
//! Control replies are parsed by [`parse_control_reply`], which never panics and bounds lines.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest control reply line accepted.
pub const MAX_CONTROL_LINE: usize = 8192;
/// The most lines in one control reply.
pub const MAX_CONTROL_LINES: usize = 64;

/// What went wrong talking to tor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorError {
    /// Nothing answers at the SOCKS port.
    #[error("tor's SOCKS port at {addr} refused the connection (is tor running with SocksPort {port}?)", port = addr.port())]
    SocksUnreachable {
        /// The SOCKS address.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// tor could not open the stream (the SOCKS reply's reason).
    #[error("tor could not reach {target}: {reason}")]
    Unreachable {
        /// host:port asked for.
        target: String,
        /// tor's reason.
        reason: String,
    },
    /// Nothing answers at the control port.
    #[error("tor's control port at {addr} refused the connection (is tor running with ControlPort {port}?)", port = addr.port())]
    ControlUnreachable {
        /// The control address.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// The control port refused a command.
    #[error("tor's control port answered {code} to {what}: {message}")]
    Refused {
        /// The command.
        what: &'static str,
        /// The status code.
        code: u16,
        /// tor's message.
        message: String,
    },
    /// Authentication to the control port failed or cannot be done safely.
    #[error("tor control authentication: {0}")]
    Auth(String),
    /// A malformed reply.
    #[error("malformed reply from tor: {0}")]
    Protocol(String),
    /// An exchange took too long.
    #[error("tor did not answer {what} within {after:?}")]
    Timeout {
        /// The command.
        what: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The connection failed.
    #[error("tor connection failed")]
    Io(#[from] std::io::Error),
}

/// Opens a stream to `host:port` through tor's SOCKS port, letting tor resolve the name.
pub async fn dial(
    socks: SocketAddr,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, TorError> {
    let target = format!("{host}:{port}");
    let fut = tokio_socks::tcp::Socks5Stream::connect(socks, (host, port));
    let stream = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| TorError::Timeout {
            what: "a SOCKS connect",
            after: timeout,
        })?
        .map_err(|e| match e {
            tokio_socks::Error::Io(source)
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                TorError::SocksUnreachable {
                    addr: socks,
                    source,
                }
            }
            tokio_socks::Error::ProxyServerUnreachable => TorError::SocksUnreachable {
                addr: socks,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            },
            other => TorError::Unreachable {
                target: target.clone(),
                reason: other.to_string(),
            },
        })?;
    let stream = stream.into_inner();
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One control reply: its status code and its lines (without the `250-` prefixes).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlReply {
    /// The status code (250 is success).
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

impl ControlReply {
    /// The value of the first `KEY=value` line.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Parses the lines of one reply (each without CRLF). Every line is `CODE` + `-`, ` ` or `+`
/// + text; the reply ends at the line with ` `. Never panics.
pub fn parse_control_reply(lines: &[String]) -> Result<ControlReply, TorError> {
    let mut code = None;
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.len() > MAX_CONTROL_LINE {
            return Err(TorError::Protocol(format!("a {}-byte line", line.len())));
        }
        let (head, text) = match (line.get(..3), line.get(3..4), line.get(4..)) {
            (Some(h), Some("-" | " " | "+"), Some(t)) => (h, t),
            (Some(h), None, None) if i == lines.len() - 1 => (h, ""),
            _ => return Err(TorError::Protocol(format!("line {line:?}"))),
        };
        // Exactly three digits, 100 to 999 ("054" or "+12" are not status codes).
        let digits = head.as_bytes();
        if !digits.iter().all(u8::is_ascii_digit) || digits[0] == b'0' {
            return Err(TorError::Protocol(format!("status {head:?}")));
        }
        let c: u16 = head
            .parse()
            .map_err(|_| TorError::Protocol(format!("status {head:?}")))?;
        if *code.get_or_insert(c) != c {
            return Err(TorError::Protocol("mixed status codes in one reply".into()));
        }
        out.push(text.to_string());
    }
    Ok(ControlReply {
        code: code.ok_or_else(|| TorError::Protocol("an empty reply".into()))?,
        lines: out,
    })
}

/// Parses a bootstrap status such as
/// `NOTICE BOOTSTRAP PROGRESS=45 TAG=loading_descriptors SUMMARY="Loading relay descriptors"`.
pub fn parse_bootstrap(value: &str) -> Result<(u8, String), TorError> {
    let progress = value
        .split(' ')
        .find_map(|w| w.strip_prefix("PROGRESS="))
        .and_then(|p| p.parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .ok_or_else(|| TorError::Protocol(format!("bootstrap status {value:?}")))?;
    let summary = value
        .split("SUMMARY=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string();
    Ok((progress, summary))
}

/// A tor control port, and the secret the operator gave for it (if any).
///
/// The password is used only when tor offers `HASHEDPASSWORD`. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlPort {
    /// Where the control port listens.
    pub addr: SocketAddr,
    /// The password of a tor set up with `HashedControlPassword`.
    pub password: Option<String>,
}

impl ControlPort {
    /// A control port at `addr` with no password (`NULL` or `SAFECOOKIE` authentication).
    pub fn new(addr: SocketAddr) -> Self {
        ControlPort {
            addr,
            password: None,
        }
    }

    /// The same port, authenticating with `password` when tor asks for one.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
}

impl From<SocketAddr> for ControlPort {
    fn from(addr: SocketAddr) -> Self {
        ControlPort::new(addr)
    }
}

impl std::fmt::Debug for ControlPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPort")
            .field("addr", &self.addr)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl std::fmt::Display for ControlPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// How a [`Control`] connection proved itself to tor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// tor asked for nothing (`NULL`).
    Null,
    /// `SAFECOOKIE`: tor proved it knows the cookie before the client's proof was sent.
    SafeCookie,
    /// `HASHEDPASSWORD`, with the operator's password.
    Password,
}

/// What `PROTOCOLINFO` says about authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthInfo {
    /// The methods tor accepts (`NULL`, `HASHEDPASSWORD`, `COOKIE`, `SAFECOOKIE`, ...).
    pub methods: Vec<String>,
    /// The cookie file tor names, unescaped.
    pub cookie_file: Option<String>,
}

impl AuthInfo {
    fn offers(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// The length of tor's authentication cookie and of each `SAFECOOKIE` nonce.
pub const COOKIE_LEN: usize = 32;

const SERVER_TO_CONTROLLER: &[u8] = b"Tor safe cookie authentication server-to-controller hash";
const CONTROLLER_TO_SERVER: &[u8] = b"Tor safe cookie authentication controller-to-server hash";

/// Reads the `AUTH METHODS=... [COOKIEFILE="..."]` line of a `PROTOCOLINFO` reply. Never
/// panics; a reply with no `AUTH` line or a malformed quoted string is an error.
pub fn parse_auth_info(reply: &ControlReply) -> Result<AuthInfo, TorError> {
    let line = reply
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("AUTH METHODS="))
        .ok_or_else(|| TorError::Protocol("PROTOCOLINFO without AUTH METHODS".into()))?;
    let (methods, rest) = line.split_once(' ').unwrap_or((line, ""));
    let methods: Vec<String> = methods
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    let cookie_file = match rest.trim_start().strip_prefix("COOKIEFILE=") {
        Some(quoted) => Some(unquote(quoted)?),
        None => None,
    };
    Ok(AuthInfo {
        methods,
        cookie_file,
    })
}

/// The content of a control-spec `QuotedString` at the start of `s` (backslash escapes
/// `\\`, `\"`, `\n`, `\r`, `\t` and three-digit octal).
fn unquote(s: &str) -> Result<String, TorError> {
    let bad = || TorError::Protocol(format!("a malformed quoted string {s:?}"));
    let mut chars = s.strip_prefix('"').ok_or_else(bad)?.chars();
    let mut out = Vec::new();
    loop {
        match chars.next().ok_or_else(bad)? {
            '"' => break,
            '\\' => match chars.next().ok_or_else(bad)? {
                c @ ('\\' | '"' | '\'') => out.push(c as u8),
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                d @ '0'..='3' => {
                    let mut v = d as u32 - '0' as u32;
                    for _ in 0..2 {
                        let c = chars.next().ok_or_else(bad)?;
                        v = v * 8 + c.to_digit(8).ok_or_else(bad)?;
                    }
                    out.push(v as u8);
                }
                _ => return Err(bad()),
            },
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Reads `SERVERHASH=<64 hex> SERVERNONCE=<64 hex>` from an `AUTHCHALLENGE` reply: the
/// server's hash and nonce. Never panics.
pub fn parse_auth_challenge(
    reply: &ControlReply,
) -> Result<([u8; COOKIE_LEN], [u8; COOKIE_LEN]), TorError> {
    let line = reply
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("AUTHCHALLENGE "))
        .ok_or_else(|| TorError::Protocol("an AUTHCHALLENGE reply without its line".into()))?;
    let field = |key: &str| -> Result<[u8; COOKIE_LEN], TorError> {
        let hex = line
            .split(' ')
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| TorError::Protocol(format!("AUTHCHALLENGE without {key}")))?;
        let mut out = [0; COOKIE_LEN];
        if hex.len() != 2 * COOKIE_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TorError::Protocol(format!(
                "AUTHCHALLENGE {key} is not {} hex digits",
                2 * COOKIE_LEN
            )));
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| TorError::Protocol(format!("AUTHCHALLENGE {key} is not hex")))?;
        }
        Ok(out)
    };
    Ok((field("SERVERHASH")?, field("SERVERNONCE")?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Reads tor's cookie file: a regular file of exactly [`COOKIE_LEN`] bytes, read with that
/// bound and opened without blocking (a FIFO or device named by a hostile control port
/// cannot stall or flood the reader). Blocking work: call it off the async threads.
fn read_cookie(path: &str) -> Result<[u8; COOKIE_LEN], TorError> {
    use std::io::Read;
    let err = |reason: String| TorError::Auth(format!("cookie file {path:?}: {reason}"));
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = opts.open(path).map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mut cookie = Vec::with_capacity(COOKIE_LEN + 1);
    file.take(COOKIE_LEN as u64 + 1)
        .read_to_end(&mut cookie)
        .map_err(|e| err(e.to_string()))?;
    cookie
        .try_into()
        .map_err(|c: Vec<u8>| err(format!("{} bytes, not {COOKIE_LEN}", c.len())))
}

/// A connection to tor's control port.
#[derive(Debug)]
pub struct Control {
    io: BufReader<TcpStream>,
    timeout: Duration,
    method: AuthMethod,
}

impl Control {
    /// Connects and authenticates, treating whatever answers as possibly hostile:
    ///
    /// - `NULL` when tor asks for nothing;
    /// - `HASHEDPASSWORD` when tor offers it and `port` has a password (which goes to
    ///   whatever listens at `port`: the operator named it);
    /// - `SAFECOOKIE` otherwise: the challenge is sent before the cookie file that tor names
    ///   is even read, the file must be exactly 32 bytes, and the client's proof is sent only
    ///   after tor has proved that it knows the cookie. Nothing of the file is ever sent.
    ///
    /// Plain `COOKIE`, which sends the file's bytes to whoever answers, is never used: a
    /// port offering only that is refused.
    pub async fn connect(
        port: impl Into<ControlPort>,
        timeout: Duration,
    ) -> Result<Control, TorError> {
        let port = port.into();
        let addr = port.addr;
        let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| TorError::Timeout {
                what: "the control connection",
                after: timeout,
            })?
            .map_err(|source| TorError::ControlUnreachable { addr, source })?;
        let mut c = Control {
            io: BufReader::new(s),
            timeout,
            method: AuthMethod::Null,
        };
        let info = c.command("PROTOCOLINFO 1", "PROTOCOLINFO").await?;
        let auth = parse_auth_info(&info)?;
        c.method = if auth.offers("NULL") {
            c.command("AUTHENTICATE", "AUTHENTICATE").await?;
            AuthMethod::Null
        } else if let (true, Some(password)) = (auth.offers("HASHEDPASSWORD"), &port.password) {
            c.command(
                &format!("AUTHENTICATE {}", hex(password.as_bytes())),
                "AUTHENTICATE",
            )
            .await?;
            AuthMethod::Password
        } else if auth.offers("SAFECOOKIE") {
            let file = auth.cookie_file.clone().ok_or_else(|| {
                TorError::Auth("tor offers SAFECOOKIE but names no COOKIEFILE".into())
            })?;
            c.safe_cookie(file).await?;
            AuthMethod::SafeCookie
        } else if auth.offers("HASHEDPASSWORD") {
            return Err(TorError::Auth(
                "tor's control port wants its password (HashedControlPassword) and none was \
                 given"
                    .into(),
            ));
        } else if auth.offers("COOKIE") {
            return Err(TorError::Auth(
                "tor's control port offers COOKIE but not SAFECOOKIE; Folio never sends a \
                 cookie file to a port that has not proved it knows it (a hostile port could \
                 name any file). Use a tor that offers SAFECOOKIE (0.2.3 or later) or a \
                 control password"
                    .into(),
            ));
        } else {
            return Err(TorError::Auth(format!(
                "tor's control port offers only {:?}; Folio authenticates with NULL, \
                 SAFECOOKIE or HASHEDPASSWORD",
                auth.methods
            )));
        };
        Ok(c)
    }

    /// How this connection authenticated.
    pub fn auth_method(&self) -> AuthMethod {
        self.method
    }

    async fn safe_cookie(&mut self, cookie_file: String) -> Result<(), TorError> {
        use ring::rand::SecureRandom;
        let mut client_nonce = [0u8; COOKIE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut client_nonce)
            .map_err(|_| TorError::Auth("no randomness for the client nonce".into()))?;
        // The challenge goes first, so that a port which cannot answer it learns nothing,
        // not even whether the file it named exists.
        let reply = self
            .command(
                &format!("AUTHCHALLENGE SAFECOOKIE {}", hex(&client_nonce)),
                "AUTHCHALLENGE",
            )
            .await?;
        let (server_hash, server_nonce) = parse_auth_challenge(&reply)?;
        let after = self.timeout;
        let cookie = tokio::time::timeout(
            after,
            tokio::task::spawn_blocking(move || read_cookie(&cookie_file)),
        )
        .await
        .map_err(|_| TorError::Timeout {
            what: "reading tor's cookie file",
            after,
        })?
        .map_err(|e| TorError::Auth(format!("reading tor's cookie file: {e}")))??;
        let mut message = Vec::with_capacity(3 * COOKIE_LEN);
        message.extend_from_slice(&cookie);
        message.extend_from_slice(&client_nonce);
        message.extend_from_slice(&server_nonce);
        let server_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SERVER_TO_CONTROLLER);
        ring::hmac::verify(&server_key, &message, &server_hash).map_err(|_| {
            TorError::Auth(
                "the control port's SAFECOOKIE server hash is wrong: whatever listens there \
                 does not know tor's cookie (is it tor?)"
                    .into(),
            )
        })?;
        let client_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, CONTROLLER_TO_SERVER);
        let client_hash = ring::hmac::sign(&client_key, &message);
        self.command(
            &format!("AUTHENTICATE {}", hex(client_hash.as_ref())),
            "AUTHENTICATE",
        )
        .await?;
        Ok(())
    }

    /// Sends one command and reads its reply; a non-250 reply is an error.
    pub async fn command(
        &mut self,
        line: &str,
        what: &'static str,
    ) -> Result<ControlReply, TorError> {
        let after = self.timeout;
        let fut = async {
            self.io
                .get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await?;
            let mut lines = Vec::new();
            loop {
                let mut raw = Vec::new();
                let n = (&mut self.io)
                    .take(MAX_CONTROL_LINE as u64 + 2)
                    .read_until(b'\n', &mut raw)
                    .await?;
                if n == 0 {
                    return Err(TorError::Protocol(
                        "tor closed the control connection".into(),
                    ));
                }
                if !raw.ends_with(b"\n") {
                    return Err(TorError::Protocol(format!(
                        "a line over {MAX_CONTROL_LINE} bytes"
                    )));
                }
                let text = String::from_utf8(raw)
                    .map_err(|_| TorError::Protocol("a reply that is not UTF-8".into()))?;
                let text = text.trim_end_matches(['\r', '\n']).to_string();
                let last = text.as_bytes().get(3).is_none_or(|b| *b == b' ');
                lines.push(text);
                if last {
                    break;
                }
                if lines.len() >= MAX_CONTROL_LINES {
                    return Err(TorError::Protocol("a reply of too many lines".into()));
                }
            }
            parse_control_reply(&lines)
        };
        let reply = tokio::time::timeout(after, fut)
            .await
            .map_err(|_| TorError::Timeout { what, after })??;
        if reply.code != 250 {
            return Err(TorError::Refused {
                what,
                code: reply.code,
                message: reply.lines.join(" "),
            });
        }
        Ok(reply)
    }

    /// The address of tor's first SOCKS listener (`GETINFO net/listeners/socks`).
    pub async fn socks_address(&mut self) -> Result<SocketAddr, TorError> {
        let reply = self
            .command("GETINFO net/listeners/socks", "GETINFO net/listeners/socks")
            .await?;
        let value = reply
            .value("net/listeners/socks")
            .ok_or_else(|| TorError::Protocol("GETINFO without net/listeners/socks".into()))?;
        let first = value.split(' ').next().unwrap_or("").trim_matches('"');
        first.parse().map_err(|_| {
            TorError::Protocol(format!(
                "tor has no usable SOCKS listener ({value:?}); set SocksPort"
            ))
        })
    }

    /// How far tor has bootstrapped: `(percent, summary)`, from
    /// `GETINFO status/bootstrap-phase`.
    pub async fn bootstrap(&mut self) -> Result<(u8, String), TorError> {
        let reply = self
            .command(
                "GETINFO status/bootstrap-phase",
                "GETINFO status/bootstrap-phase",
            )
            .await?;
        let value = reply
            .value("status/bootstrap-phase")
            .ok_or_else(|| TorError::Protocol("GETINFO without status/bootstrap-phase".into()))?;
        parse_bootstrap(value)
    }

    /// Adds an onion service mapping `virtual_port` to `target`. `key` is a saved
    /// `ED25519-V3:...` key, or `None` for a new one. Returns `(service_id, key)`.
    pub async fn add_onion(
        &mut self,
        key: Option<&str>,
        virtual_port: u16,
        target: SocketAddr,
    ) -> Result<(String, String), TorError> {
        let key_arg = key.unwrap_or("NEW:ED25519-V3");
        let reply = self
            .command(
                &format!("ADD_ONION {key_arg} Port={virtual_port},{target}"),
                "ADD_ONION",
            )
            .await?;
        let id = reply
            .value("ServiceID")
            .ok_or_else(|| TorError::Protocol("ADD_ONION without ServiceID".into()))?
            .to_string();
        let key = match (key, reply.value("PrivateKey")) {
            (Some(k), _) => k.to_string(),
            (None, Some(k)) => k.to_string(),
            (None, None) => {
                return Err(TorError::Protocol(
                    "ADD_ONION NEW without PrivateKey".into(),
                ))
            }
        };
        Ok((id, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_control_replies() {
        let r = parse_control_reply(&lines(&[
            "250-ServiceID=abc",
            "250-PrivateKey=ED25519-V3:xyz=",
            "250 OK",
        ]))
        .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.value("ServiceID"), Some("abc"));
        assert_eq!(r.value("PrivateKey"), Some("ED25519-V3:xyz="));
        let r = parse_control_reply(&lines(&["552 Unrecognized option"])).unwrap();
        assert_eq!(r.code, 552);
        assert!(parse_control_reply(&[]).is_err());
        assert!(parse_control_reply(&lines(&["25"])).is_err());
        assert!(parse_control_reply(&lines(&["abc OK"])).is_err());
        assert!(parse_control_reply(&lines(&["250-a", "551 b"])).is_err());
        // Found by the tor_control_reply fuzz target: not three digits from 100 to 999.
        assert!(parse_control_reply(&lines(&["054 U04"])).is_err());
        assert!(parse_control_reply(&lines(&["+12 x"])).is_err());
    }

    #[test]
    fn parses_bootstrap_status() {
        let v = "NOTICE BOOTSTRAP PROGRESS=45 TAG=loading_descriptors SUMMARY=\"Loading relay descriptors\"";
        assert_eq!(
            parse_bootstrap(v).unwrap(),
            (45, "Loading relay descriptors".to_string())
        );
        assert_eq!(
            parse_bootstrap("NOTICE BOOTSTRAP PROGRESS=100 TAG=done")
                .unwrap()
                .0,
            100
        );
        assert!(parse_bootstrap("NOTICE BOOTSTRAP PROGRESS=101").is_err());
        assert!(parse_bootstrap("garbage").is_err());
    }

    /// A fake control port on 127.0.0.1 that answers each command line with `answer` and
    /// records every byte it receives.
    async fn fake_control(
        answer: impl Fn(&str) -> String + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let mut received = Vec::new();
            loop {
                let mut line = Vec::new();
                if s.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return received;
                }
                received.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let reply = answer(&text);
                if s.get_mut().write_all(reply.as_bytes()).await.is_err() {
                    return received;
                }
            }
        });
        (addr, task)
    }

    fn secret_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("folio-torctl-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, bytes).unwrap();
        f
    }

    fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::sign(&key, &parts.concat()).as_ref().to_vec()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_port_offering_only_cookie_never_gets_the_file() {
        // 32 bytes, like a cookie, so nothing but the method protects it.
        let secret = b"private key bytes, 32 of them!!!";
        let path = secret_file("cookie", secret);
        let info = format!(
            "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE COOKIEFILE=\"{}\"\r\n250 OK\r\n",
            path.display()
        );
        let (addr, seen) = fake_control(move |_| info.clone()).await;
        let e = Control::connect(addr, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("offers COOKIE but not SAFECOOKIE"), "{e}");
        let seen = seen.await.unwrap();
        let text = String::from_utf8_lossy(&seen).to_uppercase();
        assert_eq!(text, "PROTOCOLINFO 1\r\n", "sent more than PROTOCOLINFO");
        assert!(!text.contains(&hex(secret)));
    }

    #[tokio::test]
    async fn a_wrong_safecookie_server_hash_is_refused_before_any_proof() {
        let secret = [7u8; COOKIE_LEN];
        let path = secret_file("safecookie-wrong", &secret);
        let info = format!(
            "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE=\"{}\"\r\n250 OK\r\n",
            path.display()
        );
        // A port that does not know the cookie: any server hash it makes up is wrong.
        let (addr, seen) = fake_control(move |line| {
            if line.starts_with("PROTOCOLINFO") {
                info.clone()
            } else if line.starts_with("AUTHCHALLENGE") {
                format!(
                    "250 AUTHCHALLENGE SERVERHASH={} SERVERNONCE={}\r\n",
                    "AB".repeat(32),
                    "CD".repeat(32)
                )
            } else {
                "250 OK\r\n".into()
            }
        })
        .await;
        let e = Control::connect(addr, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("server hash is wrong"), "{e}");
        let seen = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(!seen.contains("AUTHENTICATE"), "a proof was sent: {seen}");
        assert!(!seen.to_uppercase().contains(&hex(&secret)));
    }

    #[tokio::test]
    async fn safecookie_follows_the_control_spec() {
        let cookie = [0x5au8; COOKIE_LEN];
        let path = secret_file("safecookie-right", &cookie);
        let info = format!(
            "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE=\"{}\"\r\n250-VERSION Tor=\"0.4.8.16\"\r\n250 OK\r\n",
            path.display()
        );
        let server_nonce = [0x11u8; COOKIE_LEN];
        let expected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let want = expected.clone();
        let (addr, seen) = fake_control(move |line| {
            if line.starts_with("PROTOCOLINFO") {
                info.clone()
            } else if let Some(nonce) = line.strip_prefix("AUTHCHALLENGE SAFECOOKIE ") {
                let client_nonce = unhex(nonce);
                assert_eq!(client_nonce.len(), COOKIE_LEN);
                let parts: [&[u8]; 3] = [&cookie, &client_nonce, &server_nonce];
                *want.lock().unwrap() = hmac(CONTROLLER_TO_SERVER, &parts);
                format!(
                    "250 AUTHCHALLENGE SERVERHASH={} SERVERNONCE={}\r\n",
                    hex(&hmac(SERVER_TO_CONTROLLER, &parts)),
                    hex(&server_nonce)
                )
            } else if let Some(proof) = line.strip_prefix("AUTHENTICATE ") {
                if unhex(proof) == *want.lock().unwrap() {
                    "250 OK\r\n".into()
                } else {
                    "515 Authentication failed\r\n".into()
                }
            } else {
                "510 Unrecognized command\r\n".into()
            }
        })
        .await;
        let c = Control::connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.auth_method(), AuthMethod::SafeCookie);
        drop(c);
        let seen = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(!seen.to_uppercase().contains(&hex(&cookie)));
        assert_eq!(expected.lock().unwrap().len(), 32);
    }

    #[tokio::test]
    async fn a_cookie_file_that_is_not_32_bytes_is_refused() {
        for (name, bytes) in [("short", &[1u8; 31][..]), ("long", &[1u8; 4096][..])] {
            let path = secret_file(name, bytes);
            let e = read_cookie(path.to_str().unwrap()).unwrap_err().to_string();
            assert!(e.contains("not 32"), "{e}");
        }
        let e = read_cookie("/dev/zero").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_cookie("/nonexistent/cookie").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cookie"), "{e}");
    }

    #[tokio::test]
    async fn a_password_is_sent_only_when_tor_asks_for_one() {
        let info = "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=HASHEDPASSWORD\r\n250 OK\r\n";
        let (addr, seen) = fake_control(move |line| {
            if line.starts_with("PROTOCOLINFO") {
                info.into()
            } else if line == format!("AUTHENTICATE {}", hex(b"hunter2")) {
                "250 OK\r\n".into()
            } else {
                "515 Authentication failed\r\n".into()
            }
        })
        .await;
        let c = Control::connect(
            ControlPort::new(addr).with_password("hunter2"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(c.auth_method(), AuthMethod::Password);
        drop(c);
        seen.await.unwrap();
        // With no password configured, the refusal says what is missing.
        let (addr, _seen) = fake_control(move |_| info.into()).await;
        let e = Control::connect(addr, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("wants its password"), "{e}");
        // And a password is never sent to a port that asks for nothing.
        let (addr, seen) = fake_control(|line| {
            if line.starts_with("PROTOCOLINFO") {
                "250-AUTH METHODS=NULL\r\n250 OK\r\n".into()
            } else {
                "250 OK\r\n".into()
            }
        })
        .await;
        let port = ControlPort::new(addr).with_password("hunter2");
        assert!(!format!("{port:?}").contains("hunter2"));
        let c = Control::connect(port, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.auth_method(), AuthMethod::Null);
        drop(c);
        let seen = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(!seen.contains(&hex(b"hunter2")), "{seen}");
    }

    #[test]
    fn parses_protocolinfo_and_authchallenge() {
        let r = parse_control_reply(&lines(&[
            "250-PROTOCOLINFO 1",
            r#"250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/var/run/tor/a \"b\"\\c\101""#,
            "250 OK",
        ]))
        .unwrap();
        let a = parse_auth_info(&r).unwrap();
        assert_eq!(a.methods, ["COOKIE", "SAFECOOKIE"]);
        assert_eq!(a.cookie_file.as_deref(), Some(r#"/var/run/tor/a "b"\cA"#));
        for bad in [
            r#"AUTH METHODS=COOKIE COOKIEFILE="/x"#,
            r#"AUTH METHODS=COOKIE COOKIEFILE=/x"#,
            r#"AUTH METHODS=COOKIE COOKIEFILE="\q""#,
            r#"AUTH METHODS=COOKIE COOKIEFILE="\47""#,
        ] {
            let r = ControlReply {
                code: 250,
                lines: vec![bad.to_string()],
            };
            assert!(parse_auth_info(&r).is_err(), "{bad}");
        }
        let hash = "0A".repeat(32);
        let nonce = "0b".repeat(32);
        let r = ControlReply {
            code: 250,
            lines: vec![format!(
                "AUTHCHALLENGE SERVERHASH={hash} SERVERNONCE={nonce}"
            )],
        };
        assert_eq!(parse_auth_challenge(&r).unwrap(), ([10; 32], [11; 32]));
        for bad in [
            format!("AUTHCHALLENGE SERVERHASH={hash}"),
            format!(
                "AUTHCHALLENGE SERVERHASH={} SERVERNONCE={nonce}",
                "0A".repeat(31)
            ),
            format!(
                "AUTHCHALLENGE SERVERHASH=+{} SERVERNONCE={nonce}",
                &hash[1..]
            ),
            format!(
                "AUTHCHALLENGE SERVERHASH={}é SERVERNONCE={nonce}",
                &hash[2..]
            ),
        ] {
            let r = ControlReply {
                code: 250,
                lines: vec![bad.clone()],
            };
            assert!(parse_auth_challenge(&r).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn missing_tor_says_so() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = dial(addr, "example.onion", 80, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is tor running"), "{e}");
        let e = Control::connect(addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("control port") && e.to_string().contains("is tor running"),
            "{e}"
        );
    }
}
