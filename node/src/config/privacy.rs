//! The privacy audit: [`NodeConfig::check_privacy`], what `reveal-IP-address = false` asks
//! for, and its error, [`PrivacyError`], listing every setting that would show this host's
//! IP address ([`PrivacyViolation`]).

use std::fmt;

use folio_handlers::TcpPolicy;
use folio_rpc::{Furl, Hint, TubId};
use folio_transports::tcp::ListenSpec;

use super::{Location, NodeConfig, TubPort};

/// One setting that would reveal this node's IP address (see [`NodeConfig::check_privacy`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyViolation {
    /// `[connections] tcp = tcp`.
    #[error(
        "tahoe.cfg line {line}: [connections] tcp = tcp dials tcp: hints directly, showing \
         servers this host's IP address; set `tcp = tor` (Tor carries them) or \
         `tcp = disabled`"
    )]
    DirectTcp {
        /// The line of `tcp`.
        line: usize,
    },
    /// `[connections] tcp` not set: the default is direct TCP.
    #[error(
        "[connections] tcp is not set, and the default is direct TCP, which shows servers \
         this host's IP address; add `tcp = tor` or `tcp = disabled` to [connections]"
    )]
    DefaultTcp,
    /// `tub.location` not set while `tub.port` listens: it means `AUTO`.
    #[error(
        "[node] tub.location is not set, which means AUTO: it would announce this host's IP \
         addresses; set it to the onion or I2P hints only (tor:NAME.onion:PORT, \
         i2p:NAME.b32.i2p), or set tub.port = disabled"
    )]
    MissingLocation,
    /// `tub.location` includes `AUTO` while `tub.port` listens.
    #[error(
        "tahoe.cfg line {line}: [node] tub.location includes AUTO, which announces this \
         host's IP addresses; list only tor: and i2p: hints"
    )]
    AutoLocation {
        /// The line of `tub.location`.
        line: usize,
    },
    /// `tub.location` has `tcp:` hints.
    #[error(
        "tahoe.cfg line {line}: [node] tub.location announces {}, and a tcp: hint names this \
         host's address; list only tor: and i2p: hints",
        join(.hints)
    )]
    TcpHints {
        /// The line of `tub.location`.
        line: usize,
        /// The `tcp:` hints.
        hints: Vec<Hint>,
    },
    /// `tub.location` has hints of types this build does not know.
    #[error(
        "tahoe.cfg line {line}: [node] tub.location announces {}, of a type this build does \
         not know, so it cannot tell whether it names this host; list only tor: and i2p: hints",
        join(.hints)
    )]
    UnknownHints {
        /// The line of `tub.location`.
        line: usize,
        /// The hints.
        hints: Vec<Hint>,
    },
    /// `tub.port` not set: TCP on all interfaces.
    #[error(
        "[node] tub.port is not set, which means TCP on all interfaces; set \
         tub.port = tcp:PORT:interface=127.0.0.1 (behind an onion service) or \
         tub.port = disabled"
    )]
    DefaultListener,
    /// `tub.port` listens on a non-loopback interface.
    #[error(
        "tahoe.cfg line {line}: [node] tub.port listens on {spec} ({}), where anyone who \
         finds this host can connect; listen on interface=127.0.0.1 (behind an onion \
         service) or set tub.port = disabled",
        if spec.addr.ip().is_unspecified() { "all interfaces" } else { "a non-loopback interface" }
    )]
    PublicListener {
        /// The line of `tub.port`.
        line: usize,
        /// The endpoint.
        spec: ListenSpec,
    },
    /// `web.port` listens on a non-loopback interface.
    #[error(
        "tahoe.cfg line {line}: [node] web.port listens on {spec} ({}), where anyone who \
         finds this host can use the node's web gateway and learn its IP address; listen on \
         interface=127.0.0.1 or set web.port = none",
        if spec.addr.ip().is_unspecified() { "all interfaces" } else { "a non-loopback interface" }
    )]
    PublicWebPort {
        /// The line of `web.port`.
        line: usize,
        /// The endpoint.
        spec: ListenSpec,
    },
    /// A `[server:...]` section with `tcp = tcp`.
    #[error(
        "tahoe.cfg line {line}: [server:{tubid}] tcp = tcp re-opens direct TCP for this \
         server; remove the line or set `tcp = tor` or `tcp = disabled`"
    )]
    ServerDirectTcp {
        /// The server.
        tubid: TubId,
        /// The line of its `tcp`.
        line: usize,
    },
    /// A `[server:...]` section with `tcp:` hints while TCP is disabled for it.
    #[error(
        "tahoe.cfg line {line}: [server:{tubid}] {key} has tcp: hints ({}), but TCP is \
         disabled for this server; remove them, or set `tcp = tor` in this section",
        join(.hints)
    )]
    ServerTcpHints {
        /// The server.
        tubid: TubId,
        /// The line of the key.
        line: usize,
        /// `hints` or `furl`.
        key: &'static str,
        /// The `tcp:` hints.
        hints: Vec<Hint>,
    },
}

/// Why a configuration with `reveal-IP-address = false` is refused: every offending setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PrivacyError {
    /// The line of `reveal-IP-address = false`, if it came from a file.
    pub line: Option<usize>,
    /// What is wrong, in file order as far as possible. Never empty.
    pub violations: Vec<PrivacyViolation>,
}

impl fmt::Display for PrivacyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reveal-IP-address = false")?;
        if let Some(l) = self.line {
            write!(f, " (tahoe.cfg line {l})")?;
        }
        let n = self.violations.len();
        write!(
            f,
            ", but {n} setting{} would reveal this node's IP address:",
            if n == 1 { "" } else { "s" }
        )?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

fn join(hints: &[Hint]) -> String {
    hints
        .iter()
        .map(Hint::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl NodeConfig {
    /// With `reveal-IP-address = false`, refuses every setting that would let a connection
    /// show this host's IP address: direct TCP (`[connections] tcp = tcp`, or not set), an
    /// `AUTO` or missing `tub.location` while `tub.port` listens, `tcp:` (or unknown) hints in
    /// `tub.location`, a TCP listener that is not on loopback (or `tub.port` not set), and
    /// `[server:...]` sections that re-open direct TCP or give `tcp:` hints while TCP is
    /// disabled for that server. Returns all of them at once. With `reveal-IP-address = true`
    /// there is nothing to check.
    pub fn check_privacy(&self) -> Result<(), PrivacyError> {
        if self.node.reveal_ip {
            return Ok(());
        }
        let mut v = Vec::new();
        let node_line = |k: &str| self.line("node", k).unwrap_or(0);

        // [node], in file order of its keys as far as it matters.
        let tcp_listens = match &self.node.tub_port {
            TubPort::Disabled => false,
            TubPort::Default => {
                v.push(PrivacyViolation::DefaultListener);
                true
            }
            TubPort::Listen(specs) => {
                for spec in specs {
                    if !spec.addr.ip().is_loopback() {
                        v.push(PrivacyViolation::PublicListener {
                            line: node_line("tub.port"),
                            spec: *spec,
                        });
                    }
                }
                true
            }
        };
        if let Some(spec) = &self.node.web_port {
            if !spec.addr.ip().is_loopback() {
                v.push(PrivacyViolation::PublicWebPort {
                    line: node_line("web.port"),
                    spec: *spec,
                });
            }
        }
        let hints: &[Hint] = match &self.node.tub_location {
            Location::Auto if tcp_listens => {
                match self.line("node", "tub.location") {
                    Some(line) => v.push(PrivacyViolation::AutoLocation { line }),
                    None => v.push(PrivacyViolation::MissingLocation),
                }
                &[]
            }
            Location::AutoAnd(h) => {
                if tcp_listens {
                    v.push(PrivacyViolation::AutoLocation {
                        line: node_line("tub.location"),
                    });
                }
                h
            }
            Location::Hints(h) => h,
            Location::Auto | Location::Disabled => &[],
        };
        let of_kind = |pred: &dyn Fn(&Hint) -> bool, hints: &[Hint]| -> Vec<Hint> {
            hints.iter().filter(|h| pred(h)).cloned().collect()
        };
        let tcp_hints = of_kind(&|h| matches!(h, Hint::Tcp { .. }), hints);
        if !tcp_hints.is_empty() {
            v.push(PrivacyViolation::TcpHints {
                line: node_line("tub.location"),
                hints: tcp_hints,
            });
        }
        let unknown = of_kind(&|h| matches!(h, Hint::Unknown(_)), hints);
        if !unknown.is_empty() {
            v.push(PrivacyViolation::UnknownHints {
                line: node_line("tub.location"),
                hints: unknown,
            });
        }

        // [connections].
        if self.connections.tcp == TcpPolicy::Direct {
            match self.line("connections", "tcp") {
                Some(line) => v.push(PrivacyViolation::DirectTcp { line }),
                None => v.push(PrivacyViolation::DefaultTcp),
            }
        }

        // [server:...]: an override must never re-open direct TCP.
        for o in &self.server_overrides {
            let name = format!("server:{}", o.tubid);
            let line = |k: &str| self.line(&name, k).unwrap_or(o.line);
            if o.tcp == Some(TcpPolicy::Direct) {
                v.push(PrivacyViolation::ServerDirectTcp {
                    tubid: o.tubid,
                    line: line("tcp"),
                });
            }
            if o.tcp.unwrap_or(self.connections.tcp) == TcpPolicy::Disabled {
                let sources: [(&'static str, &[Hint]); 2] = [
                    ("hints", o.hints.as_deref().unwrap_or(&[])),
                    ("furl", o.furl.as_ref().map(Furl::hints).unwrap_or(&[])),
                ];
                for (key, hints) in sources {
                    let tcp = of_kind(&|h| matches!(h, Hint::Tcp { .. }), hints);
                    if !tcp.is_empty() {
                        v.push(PrivacyViolation::ServerTcpHints {
                            tubid: o.tubid,
                            line: line(key),
                            key,
                            hints: tcp,
                        });
                    }
                }
            }
        }

        if v.is_empty() {
            Ok(())
        } else {
            Err(PrivacyError {
                line: self.line("node", "reveal-IP-address"),
                violations: v,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{furl_for, i2p, onion, tubid};

    fn privacy(text: &str) -> PrivacyError {
        let c = NodeConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        c.check_privacy().expect_err(text)
    }

    const PRIVATE: &str = "[node]\nreveal-IP-address = false\n";

    #[test]
    fn a_private_node_passes() {
        let o = onion();
        let ok = [
            format!("{PRIVATE}tub.port = disabled\ntub.location = disabled\n[connections]\ntcp = disabled\n"),
            format!("{PRIVATE}tub.port = disabled\n[connections]\ntcp = disabled\n"),
            format!(
                "{PRIVATE}tub.port = tcp:3457:interface=127.0.0.1,tcp:3458:interface=::1\n\
                 tub.location = tor:{o}:3457,i2p:{i2p}\n\
                 [connections]\ntcp = tor\n\
                 [tor]\nenabled = true\ncontrol.port = tcp:127.0.0.1:9051\n\
                 [i2p]\nenabled = true\n\
                 [server:{t}]\nhints = tcp:10.1.1.1:5\n",
                i2p = i2p(),
                t = tubid(7),
            ),
            // An onion service with AUTO and no TCP listener announces only the onion.
            format!(
                "{PRIVATE}tub.port = disabled\n[connections]\ntcp = disabled\n\
                 [tor]\nenabled = true\ncontrol.port = tcp:127.0.0.1:9051\nonion = true\n\
                 [server:{t}]\ntcp = tor\nhints = tcp:10.1.1.1:5\n",
                t = tubid(7),
            ),
        ];
        for text in ok {
            let c = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            c.check_privacy().unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        // Nothing to check when revealing the address is allowed.
        NodeConfig::default().check_privacy().unwrap();
    }

    #[test]
    fn privacy_refusals_name_the_setting_the_line_and_the_fix() {
        // Everything at once: defaults for tub.port, tub.location and tcp.
        let e = privacy(PRIVATE);
        assert_eq!(e.line, Some(2));
        assert_eq!(
            e.violations,
            [
                PrivacyViolation::DefaultListener,
                PrivacyViolation::MissingLocation,
                PrivacyViolation::DefaultTcp,
            ]
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "reveal-IP-address = false (tahoe.cfg line 2), but 3 settings would reveal \
                 this node's IP address:\n  - [node] tub.port is not set, which means TCP on \
                 all interfaces; set tub.port = tcp:PORT:interface=127.0.0.1"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("\n  - [node] tub.location is not set, which means AUTO"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "\n  - [connections] tcp is not set, and the default is direct TCP, which \
                 shows servers this host's IP address; add `tcp = tor` or `tcp = disabled`"
            ),
            "{msg}"
        );

        let base = |rest: &str| {
            format!(
                "{PRIVATE}tub.port = tcp:1:interface=127.0.0.1\ntub.location = tor:{}:1\n\
                 [connections]\ntcp = disabled\n{rest}",
                onion()
            )
        };
        // The web gateway: loopback passes, anything else is refused with its line.
        NodeConfig::parse(&base("").replace(
            "tcp:1:interface=127.0.0.1\n",
            "tcp:1:interface=127.0.0.1\nweb.port = tcp:3456:interface=127.0.0.1\n",
        ))
        .unwrap()
        .check_privacy()
        .unwrap();
        let e = privacy(&base("").replace(
            "tcp:1:interface=127.0.0.1\n",
            "tcp:1:interface=127.0.0.1\nweb.port = 3456\n",
        ));
        assert_eq!(e.violations.len(), 1, "{e}");
        assert!(
            e.to_string().contains(
                "tahoe.cfg line 4: [node] web.port listens on tcp:3456 (all interfaces), where \
                 anyone who finds this host can use the node's web gateway"
            ),
            "{e}"
        );

        let e = privacy(&base("").replace("tcp = disabled", "tcp = tcp"));
        assert_eq!(e.violations, [PrivacyViolation::DirectTcp { line: 6 }]);
        assert!(e.to_string().contains(
            "tahoe.cfg line 6: [connections] tcp = tcp dials tcp: hints directly, showing \
             servers this host's IP address; set `tcp = tor` (Tor carries them) or \
             `tcp = disabled`"
        ));
        assert!(e.to_string().contains("but 1 setting would"));

        let e = privacy(&base("").replace("tor:", "AUTO,tor:"));
        assert_eq!(e.violations, [PrivacyViolation::AutoLocation { line: 4 }]);
        assert!(e
            .to_string()
            .contains("tahoe.cfg line 4: [node] tub.location includes AUTO"));
        let auto_only = base("").replace(&format!("tor:{}:1", onion()), "AUTO");
        let e = privacy(&auto_only);
        assert_eq!(e.violations, [PrivacyViolation::AutoLocation { line: 4 }]);

        let e = privacy(&base("").replace("tor:", "tcp:example.org:9,x-new:q,tor:"));
        assert_eq!(e.violations.len(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains(
                "tahoe.cfg line 4: [node] tub.location announces tcp:example.org:9, and a tcp: \
                 hint names this host's address; list only tor: and i2p: hints"
            ),
            "{msg}"
        );
        assert!(msg.contains("tahoe.cfg line 4: [node] tub.location announces x-new:q, of a type"));

        let e = privacy(&base("").replace(
            "tcp:1:interface=127.0.0.1",
            "tcp:1,tcp:2:interface=10.0.0.1",
        ));
        let msg = e.to_string();
        assert_eq!(e.violations.len(), 2);
        assert!(
            msg.contains(
                "tahoe.cfg line 3: [node] tub.port listens on tcp:1 (all interfaces), where \
                 anyone who finds this host can connect; listen on interface=127.0.0.1"
            ),
            "{msg}"
        );
        assert!(msg.contains("listens on tcp:2:interface=10.0.0.1 (a non-loopback interface)"));

        let t = tubid(8);
        let e = privacy(&base(&format!("[server:{t}]\nnickname = s\ntcp = tcp\n")));
        assert_eq!(
            e.violations,
            [PrivacyViolation::ServerDirectTcp { tubid: t, line: 9 }]
        );
        assert!(e.to_string().contains(&format!(
            "tahoe.cfg line 9: [server:{t}] tcp = tcp re-opens direct TCP for this server"
        )));

        let e = privacy(&base(&format!(
            "[server:{t}]\nhints = tcp:10.0.0.9:1,tor:{}:2\nfurl = {}\n",
            onion(),
            furl_for(t, "tcp:b.example:2")
        )));
        let msg = e.to_string();
        assert_eq!(e.violations.len(), 2, "{msg}");
        assert!(
            msg.contains(&format!(
                "tahoe.cfg line 8: [server:{t}] hints has tcp: hints (tcp:10.0.0.9:1), but TCP \
                 is disabled for this server; remove them, or set `tcp = tor` in this section"
            )),
            "{msg}"
        );
        assert!(msg.contains("line 9: [server:"), "{msg}");
        // With `tcp = tor` for that server the hints go through Tor: fine.
        let ok = base(&format!(
            "[server:{t}]\nhints = tcp:10.0.0.9:1\ntcp = tor\n[tor]\nenabled = true\n\
             socks.port = tcp:127.0.0.1:9050\n"
        ));
        NodeConfig::parse(&ok).unwrap().check_privacy().unwrap();
    }
}
