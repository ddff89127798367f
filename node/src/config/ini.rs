//! The INI reader: `tahoe.cfg`'s lines, comments, section headers and `key = value` pairs;
//! which sections and keys exist, their case rules, repeats, empty values, the size limits,
//! and the line each setting came from ([`NodeConfig::parse`], [`NodeConfig::load`],
//! [`NodeConfig::line`]). Each value is handed to the typed validation in
//! [`validate`](super::validate).

use std::io::Read;
use std::path::Path;

use folio_rpc::TubId;

use super::{
    shown, ConfigError, NodeConfig, Problem, ServerOverride, MAX_CFG_LEN, MAX_LINE_LEN,
    MAX_VALUE_LEN,
};

const NODE_KEYS: &[&str] = &[
    "nickname",
    "reveal-IP-address",
    "tub.port",
    "tub.location",
    "web.port",
];
const CONNECTIONS_KEYS: &[&str] = &["tcp"];
const TOR_KEYS: &[&str] = &[
    "enabled",
    "launch",
    "control.port",
    "socks.port",
    "tor.executable",
    "onion",
    "onion.local_port",
    "onion.external_port",
    "onion.private_key_file",
    "arti.network",
];
const I2P_KEYS: &[&str] = &[
    "enabled",
    "sam.port",
    "dest",
    "dest.port",
    "dest.private_key_file",
    "inbound.length",
    "outbound.length",
    "inbound.quantity",
    "outbound.quantity",
    "router.network",
    "router.reseed",
];
const CLIENT_KEYS: &[&str] = &[
    "introducer.furl",
    "shares.needed",
    "shares.happy",
    "shares.total",
    "max_servers",
];
const STORAGE_KEYS: &[&str] = &[
    "enabled",
    "reserved_space",
    "storage_dir",
    "max_space_per_client",
];
const INTRODUCER_KEYS: &[&str] = &[
    "max_announcements",
    "max_announcements_per_peer",
    "max_announcements_per_key",
    "max_subscribers",
    "delivery_timeout",
];
const SERVER_KEYS: &[&str] = &["nickname", "furl", "hints", "tcp"];
pub(super) const KNOWN_SECTIONS: &str =
    "[node], [connections], [tor], [i2p], [client], [storage], [introducer], [server:TUBID]";

fn has_inline_comment(v: &str) -> bool {
    v.as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_whitespace() && (w[1] == b'#' || w[1] == b';'))
}

pub(super) fn introducer_name(lower_key: &str) -> Option<&str> {
    lower_key.strip_prefix("introducer.")?.strip_suffix(".furl")
}

#[derive(Clone, Copy)]
pub(super) enum Section {
    Node,
    Connections,
    Tor,
    I2p,
    Client,
    Storage,
    Introducer,
    Server(usize),
}

fn section_keys(s: Section) -> &'static [&'static str] {
    match s {
        Section::Node => NODE_KEYS,
        Section::Connections => CONNECTIONS_KEYS,
        Section::Tor => TOR_KEYS,
        Section::I2p => I2P_KEYS,
        Section::Client => CLIENT_KEYS,
        Section::Storage => STORAGE_KEYS,
        Section::Introducer => INTRODUCER_KEYS,
        Section::Server(_) => SERVER_KEYS,
    }
}

impl NodeConfig {
    /// Reads `tahoe.cfg` from text. Never panics; refuses anything not described in the
    /// [module documentation](super), naming the line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CFG_LEN {
            return Err(ConfigError::TooLarge {
                len: text.len() as u64,
            });
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut cfg = NodeConfig::default();
        let mut current: Option<(Section, String)> = None;
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let at = |problem| ConfigError::At { line, problem };
            if raw.len() > MAX_LINE_LEN {
                return Err(at(Problem::LineTooLong { len: raw.len() }));
            }
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            if let Some(inner) = t.strip_prefix('[') {
                let name = inner.strip_suffix(']').ok_or(at(Problem::Syntax {
                    hint: " (a section header is `[name]` alone on its line)",
                }))?;
                current = Some(cfg.open_section(name, line).map_err(at)?);
                continue;
            }
            let Some((key, value)) = t.split_once('=') else {
                let hint = if raw.starts_with(char::is_whitespace) {
                    " (continuation lines are not supported: keep each value on one line)"
                } else {
                    ""
                };
                return Err(at(Problem::Syntax { hint }));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(at(Problem::Syntax {
                    hint: " (the key before `=` is empty)",
                }));
            }
            let Some((section, name)) = &current else {
                return Err(at(Problem::OutsideSection { key: shown(key) }));
            };
            cfg.set(*section, name, key, value, line).map_err(at)?;
        }
        cfg.check().map_err(|(line, problem)| match line {
            Some(line) => ConfigError::At { line, problem },
            None => ConfigError::Whole(problem),
        })?;
        Ok(cfg)
    }

    /// Reads `tahoe.cfg` from a file: at most [`MAX_CFG_LEN`] bytes of UTF-8, then
    /// [`parse`](Self::parse).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_CFG_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() > MAX_CFG_LEN {
            let len = std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(bytes.len() as u64);
            return Err(ConfigError::TooLarge { len });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..offset]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            ConfigError::NotUtf8 {
                path: path.to_path_buf(),
                line,
                offset,
            }
        })?;
        Self::parse(&text)
    }

    /// The line a setting came from: `section` as written in the file (`node`,
    /// `server:TUBID`), `key` as spelled in the module documentation, `""` for the section
    /// header.
    pub fn line(&self, section: &str, key: &str) -> Option<usize> {
        self.lines
            .get(&(section.to_string(), key.to_string()))
            .copied()
    }

    fn open_section(&mut self, name: &str, line: usize) -> Result<(Section, String), Problem> {
        let mut server = None;
        let section = match name {
            "node" => Section::Node,
            "connections" => Section::Connections,
            "tor" => Section::Tor,
            "i2p" => Section::I2p,
            "client" => Section::Client,
            "storage" => Section::Storage,
            "introducer" => Section::Introducer,
            _ => match name.strip_prefix("server:") {
                Some(id) => {
                    let tubid: TubId = id.parse().map_err(|reason| Problem::ServerName {
                        name: shown(id),
                        reason,
                    })?;
                    server = Some(tubid);
                    Section::Server(self.server_overrides.len())
                }
                None => return Err(Problem::UnknownSection { name: shown(name) }),
            },
        };
        let k = (name.to_string(), String::new());
        if let Some(first) = self.lines.get(&k) {
            return Err(Problem::DuplicateSection {
                name: name.to_string(),
                first: *first,
            });
        }
        if let Some(tubid) = server {
            self.server_overrides.push(ServerOverride {
                tubid,
                line,
                nickname: None,
                furl: None,
                hints: None,
                tcp: None,
            });
        }
        self.lines.insert(k, line);
        Ok((section, name.to_string()))
    }

    fn set(
        &mut self,
        section: Section,
        name: &str,
        key: &str,
        value: &str,
        line: usize,
    ) -> Result<(), Problem> {
        let keys = section_keys(section);
        let lower = key.to_ascii_lowercase();
        let canonical: String = match keys.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            Some(k) => k.to_string(),
            None => match (section, introducer_name(&lower)) {
                (Section::Client, Some(_)) => lower.clone(),
                _ => {
                    let mut known = keys.join(", ");
                    if let Section::Client = section {
                        known = "introducer.furl, introducer.NAME.furl, shares.needed, \
                                 shares.happy, shares.total, max_servers"
                            .into();
                    }
                    return Err(Problem::UnknownKey {
                        section: name.to_string(),
                        key: shown(key),
                        known,
                    });
                }
            },
        };
        let k = (name.to_string(), canonical.clone());
        if let Some(first) = self.lines.get(&k) {
            return Err(Problem::DuplicateKey {
                section: name.to_string(),
                key: canonical,
                first: *first,
            });
        }
        let is_nickname = canonical == "nickname";
        let is_furl = canonical.ends_with("furl");
        if value.is_empty() && !(is_nickname && matches!(section, Section::Node)) {
            return Err(Problem::Empty {
                section: name.to_string(),
                key: canonical,
            });
        }
        let bad = |reason: String| Problem::Value {
            section: name.to_string(),
            key: canonical.clone(),
            value: (!is_furl).then(|| shown(value)),
            reason,
        };
        if value.len() > MAX_VALUE_LEN {
            return Err(bad(format!(
                "the value is {} bytes; the limit is {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        if !is_nickname && has_inline_comment(value) {
            return Err(bad(
                "comments go on their own line (a value cannot hold ` #` or ` ;`)".into(),
            ));
        }
        self.assign(section, &canonical, value).map_err(bad)?;
        self.lines.insert(k, line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_refused, example};
    use crate::config::{Location, NodeConfig};

    #[test]
    fn lexical_details() {
        // CRLF, a BOM, indentation, case-insensitive keys, spaces around `=` optional.
        let c = NodeConfig::parse(
            "\u{feff}[node]\r\n  Reveal-IP-Address=FALSE\r\n\tNICKNAME =  x y \r\n[connections]\ntcp=disabled\n\
             [node-not]\n",
        );
        let e = c.unwrap_err().to_string();
        assert!(
            e.starts_with("tahoe.cfg line 6: unknown section [node-not]"),
            "{e}"
        );
        let c = NodeConfig::parse(
            "[node]\r\n  Reveal-IP-Address=FALSE\r\n\tNICKNAME =  x y \r\ntub.port=disabled\n",
        )
        .unwrap();
        assert!(!c.node.reveal_ip);
        assert_eq!(c.node.nickname, "x y");
        assert_eq!(c.line("node", "reveal-IP-address"), Some(2));
        // An absent location with nothing listening announces nothing.
        assert_eq!(c.node.tub_location, Location::Auto);
        // An empty nickname is allowed; other empty values are not.
        assert_eq!(
            NodeConfig::parse("[node]\nnickname =\n")
                .unwrap()
                .node
                .nickname,
            ""
        );
        // `=` inside a value is part of it.
        let c = NodeConfig::parse("[node]\nnickname = a=b\n").unwrap();
        assert_eq!(c.node.nickname, "a=b");
        // Empty sections are fine.
        assert_eq!(
            NodeConfig::parse("[tor]\n[i2p]\n[storage]\n").unwrap(),
            NodeConfig::default()
        );
    }

    #[test]
    fn structural_refusals_name_the_line() {
        assert_refused(
            "[node]\nnickname = a\n\n\n\n\nfoo = 1\n",
            &[
                "tahoe.cfg line 7: unknown key `foo` in [node] (known keys: nickname, \
               reveal-IP-address, tub.port, tub.location, web.port)",
            ],
        );
        assert_refused(
            "\n[helper]\n",
            &[
                "tahoe.cfg line 2: unknown section [helper] (known sections: [node], \
               [connections], [tor], [i2p], [client], [storage], [introducer], \
               [server:TUBID])",
            ],
        );
        assert_refused(
            "[client]\nhelper.furl = x\n",
            &[
                "line 2: unknown key `helper.furl` in [client] (known keys: introducer.furl, \
               introducer.NAME.furl, shares.needed",
            ],
        );
        assert_refused(
            "[node]\nnickname = a\nNickname = b\n",
            &["tahoe.cfg line 3: `nickname` appears twice in [node] (first at line 2)"],
        );
        assert_refused(
            "[node]\n[tor]\n[node]\n",
            &["tahoe.cfg line 3: section [node] appears twice (first at line 1); merge"],
        );
        assert_refused(
            "# c\nnickname = a\n[node]\n",
            &["tahoe.cfg line 2: `nickname` is outside any section; put it under a [section]"],
        );
        assert_refused(
            "[node]\njust words\n",
            &["tahoe.cfg line 2: expected `[section]`, `key = value`, or a comment"],
        );
        assert_refused(
            "[node]\ntub.location = tcp:a:1,\n  tcp:b:2\n",
            &[
                "line 2: bad value",
                "entry 2 of the comma-separated list is empty",
            ],
        );
        assert_refused(
            "[node]\ntub.port = tcp:1\n  more\n",
            &["line 3: expected", "continuation lines are not supported"],
        );
        assert_refused("[node\n", &["line 1: expected", "alone on its line"]);
        assert_refused("[node] # c\n", &["line 1: expected"]);
        assert_refused(
            "[node]\n= 3\n",
            &["line 2: expected", "the key before `=` is empty"],
        );
        assert_refused(
            "[node]\ntub.port =\n",
            &["tahoe.cfg line 2: `tub.port` in [node] is empty; remove the line"],
        );
        assert_refused(
            "[storage]\nreserved_space = 1G # one gig\n",
            &[
                "line 2: bad value `1G # one gig` for `reserved_space` in [storage]: \
               comments go on their own line",
            ],
        );
        assert_refused(
            &format!("[node]\nnickname = {}\n", "x".repeat(MAX_LINE_LEN)),
            &["tahoe.cfg line 2: the line is 8203 bytes long; the limit is 8192"],
        );
        assert_refused(
            &format!("[node]\ntub.location = {}\n", "x".repeat(MAX_VALUE_LEN + 1)),
            &[
                "line 2: bad value",
                "the value is 4097 bytes; the limit is 4096",
            ],
        );
        let big = format!("[node]\n{}", "# padding\n".repeat(MAX_CFG_LEN / 10 + 1));
        assert_refused(&big, &["tahoe.cfg is 65547 bytes; the limit is 65536"]);
    }

    #[test]
    fn load_refuses_what_is_not_utf8_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tahoe.cfg");
        std::fs::write(&p, b"[node]\nnickname = caf\xe9\n").unwrap();
        let e = NodeConfig::load(&p).unwrap_err();
        assert_eq!(e.line(), Some(2));
        let msg = e.to_string();
        assert!(
            msg.contains("is not UTF-8 text (line 2 has an invalid byte at offset 21)"),
            "{msg}"
        );
        std::fs::write(&p, vec![b'#'; MAX_CFG_LEN + 1]).unwrap();
        assert_eq!(
            NodeConfig::load(&p).unwrap_err().to_string(),
            "tahoe.cfg is 65537 bytes; the limit is 65536"
        );
        std::fs::write(&p, example()).unwrap();
        assert_eq!(
            NodeConfig::load(&p).unwrap(),
            NodeConfig::parse(&example()).unwrap()
        );
        let missing = dir.path().join("nope.cfg");
        let msg = NodeConfig::load(&missing).unwrap_err().to_string();
        assert!(
            msg.starts_with("cannot read ") && msg.contains("nope.cfg"),
            "{msg}"
        );
    }
}
