//! The description of a private Tor network (a test network of your own authorities and
//! relays), for an embedded client that must join it instead of the public Tor network.
//!
//! It is read from a small text file, one relay per line, `key=value` words in any order
//! (a leading name and unknown keys are ignored, so the lines tor test-network scripts write
//! can be used as they are):
//!
//! ```text
//! # name   v3ident=<40 hex>  rsa=<40 hex>  ed=<base64>  orport=IP:PORT
//! auth0 v3ident=3F7A...  rsa=9C1E...  ed=qWx0...  orport=127.0.0.1:5000 dirport=127.0.0.1:5100
//! relay3 rsa=77D0...  ed=Zk3P...  orport=127.0.0.1:5003
//! ```
//!
//! A line with `v3ident` is a directory authority, and also a cache to bootstrap from; a line
//! without it is a cache only. [`PrivateNetwork::parse`] never panics, bounds the input, and
//! names the line of any mistake. This module is compiled without the `tor-arti` feature, so
//! the parser can be tested and fuzzed without building arti.

use std::net::SocketAddr;

/// The largest network file accepted.
pub const MAX_NETWORK_FILE: usize = 64 * 1024;
/// The most relays (lines) a network file may list.
pub const MAX_NETWORK_RELAYS: usize = 256;

/// A private Tor network: its directory authorities and the caches a client bootstraps from.
/// Every relay of such a network usually shares one host, so a client joining one also lifts
/// the rule that relays in the same /16 are one family (which would leave no usable path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrivateNetwork {
    /// The authorities' v3 identities (40 hex digits, tor's `v3ident`).
    pub authorities: Vec<String>,
    /// Directory caches to bootstrap from (arti does not fall back to the authorities by
    /// itself, so they are listed here too).
    pub fallbacks: Vec<Fallback>,
}

/// A directory cache a client may bootstrap from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fallback {
    /// The relay's RSA identity fingerprint (40 hex digits).
    pub rsa: String,
    /// The relay's Ed25519 identity (base64 without padding, as in tor's
    /// `fingerprint-ed25519`).
    pub ed25519: String,
    /// Its OR port.
    pub orport: SocketAddr,
}

impl Fallback {
    /// A cache by its identities (not checked here; [`PrivateNetwork::parse`]'s input is)
    /// and its OR port.
    pub fn new(rsa: impl Into<String>, ed25519: impl Into<String>, orport: SocketAddr) -> Self {
        Fallback {
            rsa: rsa.into(),
            ed25519: ed25519.into(),
            orport,
        }
    }
}

/// Why a network description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The file is larger than [`MAX_NETWORK_FILE`].
    #[error("the network file is {0} bytes; the limit is {MAX_NETWORK_FILE}")]
    TooLarge(usize),
    /// More relays than [`MAX_NETWORK_RELAYS`].
    #[error("the network file lists more than {MAX_NETWORK_RELAYS} relays")]
    TooManyRelays,
    /// A line is malformed.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No line has a `v3ident`.
    #[error("the network file names no directory authority (no line with v3ident=)")]
    NoAuthority,
}

fn hex_id(what: &str, v: &str) -> Result<String, String> {
    if v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_uppercase())
    } else {
        Err(format!("{what}={v:?} is not 40 hex digits"))
    }
}

fn ed_id(v: &str) -> Result<String, String> {
    // 32 bytes in unpadded base64: 43 characters, the last holding 2 bits.
    let ok = v.len() == 43
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "ed={v:?} is not an Ed25519 identity (43 base64 characters)"
        ))
    }
}

impl PrivateNetwork {
    /// Reads a network description (see the module docs).
    pub fn parse(text: &str) -> Result<PrivateNetwork, NetworkError> {
        if text.len() > MAX_NETWORK_FILE {
            return Err(NetworkError::TooLarge(text.len()));
        }
        let mut net = PrivateNetwork::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if net.fallbacks.len() == MAX_NETWORK_RELAYS {
                return Err(NetworkError::TooManyRelays);
            }
            let bad = |reason: String| NetworkError::Line {
                line: i + 1,
                reason,
            };
            let (mut v3ident, mut rsa, mut ed, mut orport) = (None, None, None, None);
            for word in line.split_whitespace() {
                let Some((k, v)) = word.split_once('=') else {
                    continue; // the relay's name
                };
                let slot = match k {
                    "v3ident" => &mut v3ident,
                    "rsa" => &mut rsa,
                    "ed" => &mut ed,
                    "orport" => &mut orport,
                    _ => continue,
                };
                if slot.replace(v).is_some() {
                    return Err(bad(format!("{k}= is given twice")));
                }
            }
            let need = |k: &str, v: Option<&str>| -> Result<String, NetworkError> {
                v.map(str::to_string).ok_or_else(|| {
                    bad(format!("no {k}= (every relay needs rsa=, ed= and orport=)"))
                })
            };
            let rsa = hex_id("rsa", &need("rsa", rsa)?).map_err(bad)?;
            let ed25519 = ed_id(&need("ed", ed)?).map_err(bad)?;
            let orport_text = need("orport", orport)?;
            let orport: SocketAddr = orport_text
                .parse()
                .map_err(|_| bad(format!("orport={orport_text:?} is not IP:PORT")))?;
            if let Some(v) = v3ident {
                net.authorities.push(hex_id("v3ident", v).map_err(bad)?);
            }
            net.fallbacks.push(Fallback {
                rsa,
                ed25519,
                orport,
            });
        }
        if net.authorities.is_empty() {
            return Err(NetworkError::NoAuthority);
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "qWx0AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/A";

    #[test]
    fn reads_the_lines_test_scripts_write() {
        let text = format!(
            "# a comment\n\nauth0 v3ident={a} rsa={b} ed={ED} orport=127.0.0.1:5000 dirport=127.0.0.1:5100\n\
             relay3 rsa={c} ed={ED} orport=127.0.0.1:5003\n",
            a = "3f".repeat(20),
            b = "9C".repeat(20),
            c = "77".repeat(20)
        );
        let net = PrivateNetwork::parse(&text).unwrap();
        assert_eq!(net.authorities, vec!["3F".repeat(20)]);
        assert_eq!(net.fallbacks.len(), 2);
        assert_eq!(net.fallbacks[1].orport, "127.0.0.1:5003".parse().unwrap());
    }

    #[test]
    fn refusals_name_the_line() {
        let rsa = "9C".repeat(20);
        let cases = [
            (
                format!("a v3ident=xyz rsa={rsa} ed={ED} orport=127.0.0.1:1"),
                "line 1: v3ident=",
            ),
            (format!("\nrsa={rsa} ed={ED}"), "line 2: no orport="),
            (
                format!("rsa={rsa} ed=short orport=127.0.0.1:1 v3ident={rsa}"),
                "not an Ed25519",
            ),
            (format!("rsa={rsa} rsa={rsa}"), "given twice"),
            (
                format!("v3ident={rsa} rsa={rsa} ed={ED} orport=localhost:1"),
                "not IP:PORT",
            ),
            (
                format!("rsa={rsa} ed={ED} orport=127.0.0.1:1"),
                "no directory authority",
            ),
        ];
        for (text, needle) in cases {
            let e = PrivateNetwork::parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let big = "#".repeat(MAX_NETWORK_FILE + 1);
        assert!(matches!(
            PrivateNetwork::parse(&big),
            Err(NetworkError::TooLarge(_))
        ));
        let many = format!("rsa={rsa} ed={ED} orport=127.0.0.1:1\n").repeat(MAX_NETWORK_RELAYS + 1);
        assert_eq!(
            PrivateNetwork::parse(&many),
            Err(NetworkError::TooManyRelays)
        );
    }
}
