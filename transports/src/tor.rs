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
pub enum TorError {
    /// Nothing answers at the SOCKS port.
    #[error("tor's SOCKS port at {addr} refused the connection: is tor running with SocksPort {port}? ({source})", port = addr.port())]
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
    #[error("tor's control port at {addr} refused the connection: is tor running with ControlPort {port}? ({source})", port = addr.port())]
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
    /// No authentication method this client supports.
    #[error(
        "tor's control port wants authentication this client cannot do ({0}); allow NULL or COOKIE"
    )]
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
    #[error("tor connection: {0}")]
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

/// A connection to tor's control port.
#[derive(Debug)]
pub struct Control {
    io: BufReader<TcpStream>,
    timeout: Duration,
}

impl Control {
    /// Connects and authenticates (NULL, or COOKIE from the cookie file tor names).
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Control, TorError> {
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
        };
        let info = c.command("PROTOCOLINFO 1", "PROTOCOLINFO").await?;
        let auth = info
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("AUTH METHODS="))
            .unwrap_or("")
            .to_string();
        let methods: Vec<&str> = auth.split(' ').next().unwrap_or("").split(',').collect();
        if methods.contains(&"NULL") {
            c.command("AUTHENTICATE", "AUTHENTICATE").await?;
        } else if methods.contains(&"COOKIE") {
            let path = auth
                .split("COOKIEFILE=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .ok_or_else(|| TorError::Auth("COOKIE without COOKIEFILE".into()))?;
            let cookie = std::fs::read(path)?;
            let hex: String = cookie.iter().map(|b| format!("{b:02x}")).collect();
            c.command(&format!("AUTHENTICATE {hex}"), "AUTHENTICATE")
                .await?;
        } else {
            return Err(TorError::Auth(auth));
        }
        Ok(c)
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
