//! # folio-transports
//!
//! Byte streams for Folio. This crate opens and accepts connections and knows nothing of
//! FURLs, TLS or RPC: `folio-handlers` maps hints onto it, and `folio-rpc` runs the handshake
//! over whatever stream comes back.
//!
//! TCP ([`tcp`]); I2P through a SAM v3.1 bridge (`i2p`, cargo feature `i2p`, on by default),
//! which may be an embedded emissary router (`i2p_embedded`, feature `i2p-embedded`, off by
//! default);
//! Tor through a system tor's SOCKS and control ports (`tor`, `tor_launch`, feature
//! `tor-system`, on by default) or an embedded arti client (`arti`, feature `tor-arti`, off by
//! default).
//!
//! ```
//! use folio_transports::tcp::{self, ListenSpec};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let spec: ListenSpec = "tcp:0:interface=127.0.0.1".parse().unwrap();
//! let listener = tcp::listen(&spec).await.unwrap();
//! let port = listener.local_addr().unwrap().port();
//! let (dialed, accepted) = tokio::join!(
//!     tcp::dial("127.0.0.1", port, Duration::from_secs(5)),
//!     listener.accept(),
//! );
//! assert!(dialed.is_ok() && accepted.is_ok());
//! # }
//! ```
//!
//! Tor and I2P are byte streams like TCP, through a local daemon (or an embedded one):
//!
//! ```no_run
//! # #[cfg(all(feature = "tor-system", feature = "i2p"))]
//! # async fn hidden(onion: &str, peer: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use folio_transports::i2p::{Destination, SamConfig, Session};
//! use folio_transports::tor;
//! use std::time::Duration;
//!
//! // Through a system tor's SOCKS port to `onion` (a `.onion` name); tor resolves it.
//! let socks = "127.0.0.1:9050".parse()?;
//! let _stream = tor::dial(socks, onion, 80, Duration::from_secs(60)).await?;
//!
//! // Through a SAM v3.1 bridge (an i2pd, or the embedded router of feature `i2p-embedded`):
//! // a session is a local destination (a transient one is thrown away with it); `peer` is
//! // a `.b32.i2p` address.
//! let sam = SamConfig::new("127.0.0.1:7656".parse()?);
//! let session = Session::create(&sam, Destination::Transient).await?;
//! let _stream = session.connect(peer).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
// On docs.rs (`--cfg docsrs`, nightly rustdoc), every feature-gated item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tor-arti")]
pub mod arti;
#[cfg(feature = "i2p")]
pub mod i2p;
#[cfg(feature = "i2p-embedded")]
pub mod i2p_embedded;
pub mod tcp;
#[cfg(feature = "tor-system")]
pub mod tor;
#[cfg(feature = "tor-system")]
pub mod tor_launch;
pub mod tor_network;

/// `e` and its sources as `outer: inner: innermost`, for errors kept as text (reseed
/// failures) and logs: the errors here follow the rule that a message does not repeat its
/// source. (folio-rpc's `ErrorChain` does the same; this crate does not depend on folio-rpc.)
#[cfg(feature = "i2p-embedded")]
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    // A bound, in case a chain loops.
    for _ in 0..16 {
        let Some(e) = next else { break };
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}
