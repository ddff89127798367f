//! TCP: dial a host and port, listen on a port.
//!
//! Listen specifications use the endpoint syntax Tahoe-LAFS users know from `tub.port`:
//! `tcp:PORT` (all interfaces), `tcp:PORT:interface=ADDR`, with keyword forms
//! `tcp:port=PORT` accepted too. Port 0 asks the system for a free port.
//!
//! "All interfaces" means both address families: `tcp:PORT` (the same as
//! `tcp:PORT:interface=::`) binds one dual-stack IPv6 socket that also accepts IPv4, and falls
//! back to IPv4 alone on a host without IPv6. `tcp:PORT:interface=0.0.0.0` is IPv4 only.
//! [`auto_addresses`] says which of the host's addresses such a listener can be reached at.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::debug;

/// Why a TCP dial or listen failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The name did not resolve.
    #[error("cannot resolve {host}")]
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
    #[error("cannot connect to {addr}")]
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
    #[error("cannot listen on {addr}")]
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
        // `tcp:PORT` is every interface of both families: the unspecified IPv6 address.
        if ip.is_unspecified() && ip.is_ipv6() {
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
        let ip = interface.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        Ok(ListenSpec {
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// Binds a listening socket. For the unspecified IPv6 address (`tcp:PORT`), one dual-stack
/// socket that accepts IPv4 too; on a host that cannot make one (no IPv6), the unspecified
/// IPv4 address instead: the listener's `local_addr` says which.
pub async fn listen(spec: &ListenSpec) -> Result<TcpListener, TcpError> {
    let bind_error = |addr| move |source| TcpError::Bind { addr, source };
    if spec.addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        match dual_stack(spec.addr) {
            Ok(l) => return Ok(l),
            Err(e) if !no_ipv6(&e) => return Err(bind_error(spec.addr)(e)),
            Err(e) => {
                debug!(error = %e, "no dual-stack IPv6 socket: listening on IPv4 only");
                let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), spec.addr.port());
                return bound(v4, false).map_err(bind_error(v4));
            }
        }
    }
    bound(spec.addr, false).map_err(bind_error(spec.addr))
}

/// The listen backlog of every listening socket: the connections the kernel completes and
/// holds until they are accepted. tokio's `TcpListener::bind` asks for 128; a burst of dials
/// beyond that is dropped by the kernel and each dialer waits out a SYN retransmission (1 s,
/// then 3 s) before the Tub's own limits even see it. This matches the Tub's default
/// `max_pending_handshakes`; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 1024;

/// An IPv6 listening socket with `IPV6_V6ONLY` off, so IPv4 peers reach it too (as
/// IPv4-mapped addresses), whatever the system's default (`net.ipv6.bindv6only`).
fn dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    bound(addr, true)
}

/// A listening socket on `addr` with [`LISTEN_BACKLOG`]; with `dual`, an IPv6 one that
/// accepts IPv4 too.
fn bound(addr: SocketAddr, dual: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual {
        socket.set_only_v6(false)?;
    }
    // As tokio's and std's `bind` do: a restarted node gets its port back at once.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Whether `e` says this host has no (dual-stack) IPv6, rather than that the port is taken.
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EAFNOSUPPORT
                | libc::EPROTONOSUPPORT
                | libc::EADDRNOTAVAIL
                | libc::EINVAL
                | libc::ENOPROTOOPT
        )
    )
}

/// The addresses an `AUTO` location advertises for a TCP listener bound to `bound`, given
/// the host's interface addresses (as [`interface_addresses`] finds them).
///
/// - Bound to one address: that address, whatever it is.
/// - Bound to every IPv4 interface (`0.0.0.0`): each IPv4 address but loopback (an IPv6
///   address would be refused: the socket takes IPv4 only).
/// - Bound to every interface of both families (`::`, dual-stack; see [`listen`]): the same
///   IPv4 addresses, then each IPv6 address of global scope (see [`advertisable_ipv6`]).
/// - Nothing left: `127.0.0.1`, so that at least this host can reach the listener.
///
/// Each address once, IPv4 first, otherwise in the order given.
pub fn auto_addresses(bound: IpAddr, interfaces: &[IpAddr]) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let takes_ipv6 = bound.is_ipv6();
    let mut out: Vec<IpAddr> = Vec::new();
    let v4 = interfaces.iter().filter(|ip| match ip {
        IpAddr::V4(a) => {
            !a.is_loopback() && !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()
        }
        IpAddr::V6(_) => false,
    });
    let v6 = interfaces.iter().filter(|ip| match ip {
        IpAddr::V6(a) => takes_ipv6 && advertisable_ipv6(a),
        IpAddr::V4(_) => false,
    });
    for ip in v4.chain(v6) {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    if out.is_empty() {
        out.push(Ipv4Addr::LOCALHOST.into());
    }
    out
}

/// Whether an interface's IPv6 address is one to announce: a unicast address of global
/// scope. Refused: unspecified, loopback (`::1`), multicast, link-local (`fe80::/10`, which
/// means nothing without the interface it belongs to), the deprecated site-local
/// (`fec0::/10`), and IPv4-mapped or -compatible addresses (`::ffff:0:0/96`, `::/96`: IPv4
/// in disguise). Unique local addresses (`fc00::/7`) are kept, as the IPv4 private ranges
/// are: peers on the same network reach them.
pub fn advertisable_ipv6(a: &Ipv6Addr) -> bool {
    let first = a.segments()[0];
    let ipv4_inside =
        a.segments()[..5].iter().all(|&s| s == 0) && matches!(a.segments()[5], 0 | 0xffff);
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || first & 0xffc0 == 0xfe80
        || first & 0xffc0 == 0xfec0
        || ipv4_inside)
}

/// The IPv4 and IPv6 addresses of this host's interfaces (`getifaddrs`), each once, in the
/// order the system lists them; empty if it cannot tell.
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in if_addrs::get_if_addrs()
        .unwrap_or_default()
        .iter()
        .map(|i| i.ip())
    {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        let p = |s: &str| s.parse::<ListenSpec>().map(|l| l.addr);
        assert_eq!(p("tcp:3456").unwrap(), "[::]:3456".parse().unwrap());
        assert_eq!(
            p("tcp:3456:interface=0.0.0.0").unwrap(),
            "0.0.0.0:3456".parse().unwrap()
        );
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
        assert_eq!(
            "tcp:7:interface=::"
                .parse::<ListenSpec>()
                .unwrap()
                .to_string(),
            "tcp:7"
        );
        // IPv4 only stays IPv4 only through a round trip.
        let v4: ListenSpec = "tcp:7:interface=0.0.0.0".parse().unwrap();
        assert_eq!(v4.to_string(), "tcp:7:interface=0.0.0.0");
        assert_eq!(v4.to_string().parse::<ListenSpec>().unwrap(), v4);
    }

    /// The AUTO filter as a pure function. How it fails: collecting IPv4 only drops the
    /// global and unique-local IPv6 addresses from the `::` case; letting link-local,
    /// loopback, mapped or multicast addresses through, or announcing IPv6 for an IPv4-only
    /// socket, shows up in the exact lists below.
    #[test]
    fn auto_addresses_keep_global_ipv6_and_drop_local_scopes() {
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|s| s.parse().unwrap()).collect() };
        let host = ips(&[
            "127.0.0.1",
            "::1",
            "192.168.1.20",
            "fe80::1c2:3ff:fe04:506",
            "2a01:4f8:c17:1234::1",
            "fd12:3456:789a::20",
            "fec0::1",
            "::ffff:192.168.1.20",
            "::192.168.1.21",
            "ff02::1",
            "10.0.0.7",
            "2a01:4f8:c17:1234::1",
        ]);
        let all: IpAddr = Ipv6Addr::UNSPECIFIED.into();
        let v4_all: IpAddr = Ipv4Addr::UNSPECIFIED.into();
        assert_eq!(
            auto_addresses(all, &host),
            ips(&[
                "192.168.1.20",
                "10.0.0.7",
                "2a01:4f8:c17:1234::1",
                "fd12:3456:789a::20"
            ])
        );
        // An IPv4-only socket cannot take IPv6 peers: none is announced.
        assert_eq!(
            auto_addresses(v4_all, &host),
            ips(&["192.168.1.20", "10.0.0.7"])
        );
        // An IPv6-only host.
        assert_eq!(
            auto_addresses(all, &ips(&["127.0.0.1", "::1", "fe80::1", "2001:db8::5"])),
            ips(&["2001:db8::5"])
        );
        // Nothing but loopback and link-local: loopback IPv4, as before.
        for bound in [all, v4_all] {
            assert_eq!(
                auto_addresses(bound, &ips(&["127.0.0.1", "::1", "fe80::1"])),
                ips(&["127.0.0.1"])
            );
            assert_eq!(auto_addresses(bound, &[]), ips(&["127.0.0.1"]));
        }
        // A listener bound to one address announces exactly that one.
        for one in ["::1", "127.0.0.1", "2a01:4f8::9", "fe80::1"] {
            assert_eq!(auto_addresses(one.parse().unwrap(), &host), ips(&[one]));
        }
    }

    #[test]
    fn interface_addresses_include_loopback() {
        // Every Linux host has `lo` with 127.0.0.1: a reader that finds nothing is broken.
        let found = interface_addresses();
        assert!(found.contains(&Ipv4Addr::LOCALHOST.into()), "{found:?}");
    }

    /// `tcp:0` listens on both families: one socket takes a dial to 127.0.0.1 and one to
    /// `[::1]`. How it fails: binding `0.0.0.0` (IPv4 only, as before) refuses the IPv6 dial,
    /// and an IPv6-only socket refuses the IPv4 one. Needs IPv6 on loopback, and says so.
    #[tokio::test]
    async fn all_interfaces_means_both_families() {
        let listener = listen(&"tcp:0".parse().unwrap()).await.unwrap();
        let local = listener.local_addr().unwrap();
        assert!(
            local.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            "listening on {local}: this host has no IPv6 for the test"
        );
        for host in ["127.0.0.1", "::1"] {
            let (d, a) = tokio::join!(
                dial(host, local.port(), Duration::from_secs(5)),
                listener.accept()
            );
            d.unwrap_or_else(|e| panic!("dialing {host}: {e}"));
            let from = a.unwrap().1.ip();
            let from = match from {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(from),
                v4 => v4,
            };
            assert_eq!(from, host.parse::<IpAddr>().unwrap());
        }
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

    /// A burst of dials larger than tokio's default backlog (128) is completed by the kernel
    /// while nothing accepts, on a specific address as on the dual-stack one: no dialer waits
    /// out a SYN retransmission.
    #[tokio::test]
    async fn a_burst_of_dials_fits_the_listen_backlog() {
        for spec in ["tcp:0:interface=127.0.0.1", "tcp:0"] {
            let listener = listen(&spec.parse().unwrap()).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut held = Vec::new();
            for i in 0..400 {
                let dial = TcpStream::connect(("127.0.0.1", port));
                let s = tokio::time::timeout(Duration::from_millis(500), dial)
                    .await
                    .unwrap_or_else(|_| panic!("{spec}: dial {i} waited for the backlog"))
                    .unwrap();
                held.push(s);
            }
        }
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
