//! Where Tor is asked to go for a hint: shared by the system-tor and embedded-arti handlers,
//! so both refuse the same addresses.

use std::net::IpAddr;

use folio_rpc::connector::ConnectError;
use folio_rpc::{Hint, Host};

/// Addresses that must never be sent to a Tor exit: they name the exit's own network.
fn local_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| local_address(IpAddr::V4(v4)))
        }
    }
}

/// Where a `tor:` hint, or a `tcp:` hint routed over Tor, asks Tor to go: the host as
/// given (resolved inside Tor) and the port. Numeric private and loopback addresses are
/// refused: sent to an exit they would name the exit's own network.
pub(crate) fn tor_target(hint: &Hint) -> Result<(String, u16), ConnectError> {
    match hint {
        Hint::Tor { onion, port } => Ok((onion.clone(), *port)),
        Hint::Tcp { host, port } => {
            let ip = match host {
                Host::Ipv4(a) => Some(IpAddr::V4(*a)),
                Host::Ipv6(a) => Some(IpAddr::V6(*a)),
                Host::Name(_) => None,
            };
            if ip.is_some_and(local_address) {
                return Err(ConnectError::Refused {
                    hint: hint.to_string(),
                    reason: "a private or loopback address cannot be reached through Tor".into(),
                });
            }
            Ok((host.to_dial_string(), *port))
        }
        other => Err(ConnectError::Unsupported {
            kind: other.kind().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_never_go_to_an_exit() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(local_address(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "2001:db8::1"] {
            assert!(!local_address(a.parse().unwrap()), "{a}");
        }
    }
}
