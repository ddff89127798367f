//! TCP: dial a host and port, listen on a port.
//!
//! Listen specifications use the endpoint syntax Tahoe-LAFS users know from `tub.port`:
//! `tcp:PORT` (all interfaces), `tcp:PORT:interface=ADDR`, with keyword forms
//! `tcp:port=PORT` accepted too. Port 0 asks the system for a free port.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::debug;

/// Why a TCP dial or listen failed.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The name resolved to no address.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// Every address refused or failed; the last error is kept.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Its error.
        source: io::Error,
    },
    /// The dial did not complete in time.
    #[error("connecting to {host}:{port} timed out after {after:?}")]
    Timeout {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The time allowed.
        after: Duration,
    },
    /// The listen specification is malformed.
    #[error("bad TCP listen specification {spec:?}: {reason}")]
    Spec {
        /// The text.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

/// Connects to `host:port`, trying each resolved address in turn until one answers, all
/// within `timeout`. `host` is a DNS name or an IP address (IPv6 without brackets).
pub async fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, TcpError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || TcpError::Timeout {
        host: host.to_string(),
        port,
        after: timeout,
    };
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| TcpError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        debug!(%addr, "dialing");
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(stream)) => {
                // Calls are small and latency-bound: do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => last = Some(TcpError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| TcpError::NoAddress(host.to_string())))
}

/// Where to listen for TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    /// The address and port to bind.
    pub addr: SocketAddr,
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.addr.ip();
        if ip.is_unspecified() && ip.is_ipv4() {
            write!(f, "tcp:{}", self.addr.port())
        } else {
            write!(f, "tcp:{}:interface={}", self.addr.port(), ip)
        }
    }
}

impl FromStr for ListenSpec {
    type Err = TcpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| TcpError::Spec {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("tcp:")
            .ok_or_else(|| bad("it must start with \"tcp:\""))?;
        let mut port = None;
        let mut interface = None;
        // Interface values may be IPv6 addresses, which contain ':'. Split on ':' only where
        // a new keyword or the port begins.
        let mut parts: Vec<String> = Vec::new();
        for piece in rest.split(':') {
            let starts_field =
                parts.is_empty() || piece.starts_with("interface=") || piece.starts_with("port=");
            match parts.last_mut() {
                Some(last) if !starts_field => {
                    last.push(':');
                    last.push_str(piece);
                }
                _ => parts.push(piece.to_string()),
            }
        }
        for (i, part) in parts.iter().enumerate() {
            if let Some(v) = part.strip_prefix("interface=") {
                let v = v.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = v
                    .parse()
                    .map_err(|_| bad("interface= must be an IP address"))?;
                if interface.replace(ip).is_some() {
                    return Err(bad("interface= given twice"));
                }
            } else {
                let v = part
                    .strip_prefix("port=")
                    .unwrap_or(if i == 0 { part } else { "" });
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 5 {
                    return Err(bad("the port must be a number from 0 to 65535"));
                }
                let p: u16 = v
                    .parse()
                    .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
                if port.replace(p).is_some() {
                    return Err(bad("the port is given twice"));
                }
            }
        }
        let port = port.ok_or_else(|| bad("no port"))?;
        let ip = interface.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ListenSpec {
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// Binds a listening socket.
pub async fn listen(spec: &ListenSpec) -> Result<TcpListener, TcpError> {
    TcpListener::bind(spec.addr)
        .await
        .map_err(|source| TcpError::Bind {
            addr: spec.addr,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        let p = |s: &str| s.parse::<ListenSpec>().map(|l| l.addr);
        assert_eq!(p("tcp:3456").unwrap(), "0.0.0.0:3456".parse().unwrap());
        assert_eq!(
            p("tcp:0:interface=127.0.0.1").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            p("tcp:port=80:interface=::1").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            p("tcp:80:interface=[::1]").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            p("tcp:interface=10.0.0.1:port=9").unwrap(),
            "10.0.0.1:9".parse().unwrap()
        );
        for bad in [
            "3456",
            "tcp:",
            "tcp:x",
            "tcp:65536",
            "tcp:-1",
            "tcp:1:interface=nope",
            "tcp:1:2",
            "tcp:1:port=2",
            "tcp:interface=::1",
        ] {
            assert!(p(bad).is_err(), "{bad} should be refused");
        }
        let spec: ListenSpec = "tcp:80:interface=::1".parse().unwrap();
        assert_eq!(spec.to_string(), "tcp:80:interface=::1");
        assert_eq!("tcp:7".parse::<ListenSpec>().unwrap().to_string(), "tcp:7");
    }

    #[tokio::test]
    async fn dial_refused_port_names_the_address() {
        // Bind then drop to find a port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = dial("127.0.0.1", port, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, TcpError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")));
    }

    #[tokio::test]
    async fn dial_by_name_and_listen() {
        let listener = listen(&"tcp:0:interface=127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (d, a) = tokio::join!(
            dial("localhost", port, Duration::from_secs(5)),
            listener.accept()
        );
        let d = d.unwrap();
        assert!(d.nodelay().unwrap());
        assert_eq!(a.unwrap().1.port(), d.local_addr().unwrap().port());
    }

    #[tokio::test]
    async fn unresolvable_name_is_reported() {
        let e = dial("no-such-host.invalid", 80, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(e, TcpError::Resolve { .. } | TcpError::Timeout { .. }),
            "{e}"
        );
    }
}
