//! # folio-rpc
//!
//! The core of Folio, a capability-RPC framework in the style of Foolscap: Tub identities,
//! FURLs, and an authenticated, framed connection over **any** byte stream.
//!
//! The rule this crate exists to enforce: **the TLS role is the negotiation role, given
//! explicitly.** The party that dialed runs [`Handshaker::connect`] ([`Side::Client`]); the
//! party that accepted runs [`Handshaker::accept`] ([`Side::Server`]). Nothing looks at a
//! socket to decide, so an I2P listener whose streams arrive over an outbound connection to
//! its SAM bridge speaks TLS as a server, and Tahoe-LAFS #2861 cannot happen.
//!
//! | module | owns |
//! |---|---|
//! | [`tubid`] | the TubId: a hash of the public key |
//! | [`identity`] | key pair + self-signed certificate, PEM files with mode 0600 |
//! | [`furl`] | FURLs and connection hints |
//! | [`prelude`] | the plaintext bytes before TLS |
//! | [`tls`] | rustls driven over any stream, TubId-pinning verifiers |
//! | [`handshake`] | prelude → TLS → hello, each phase bounded |
//! | [`frame`] | length-delimited postcard frames with a checked maximum |
//! | [`connector`] | the trait through which a Tub asks for a stream to a hint |
//!
//! ```
//! use std::sync::Arc;
//! use folio_rpc::{HandshakeConfig, Handshaker, Identity, Side};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let alice = Handshaker::new(Arc::new(Identity::generate().unwrap()), HandshakeConfig::default()).unwrap();
//! let bob = Handshaker::new(Arc::new(Identity::generate().unwrap()), HandshakeConfig::default()).unwrap();
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let bob_id = bob.tubid();
//! let (dialed, accepted) = tokio::join!(alice.connect(a, bob_id), bob.accept(b));
//! let (mut dialed, mut accepted) = (dialed.unwrap(), accepted.unwrap());
//! assert_eq!((dialed.info.side, accepted.info.side), (Side::Client, Side::Server));
//! assert_eq!(accepted.info.peer, alice.tubid());
//!
//! dialed.writer.send_message(&"ping").await.unwrap();
//! let got: String = accepted.reader.next_message().await.unwrap().unwrap();
//! assert_eq!(got, "ping");
//! # }
//! ```
#![warn(missing_docs)]

mod connection;
pub mod connector;
pub mod frame;
pub mod furl;
pub mod handshake;
pub mod identity;
pub mod message;
pub mod object;
pub mod prelude;
pub mod reconnector;
pub mod tls;
pub mod tub;
pub mod tubid;

pub use connector::{BoxStream, ByteStream, ConnectError, Connector, Listener, NoConnector};
pub use furl::{Furl, Hint, Host, Swissnum};
pub use handshake::{
    ConnectionInfo, Established, HandshakeConfig, HandshakeError, Handshaker, Hello, Phase,
};
pub use identity::{Identity, IdentityError};
pub use object::{
    CallContext, CallError, Dispatch, ObjectRef, Refusal, Reply, ReplyFuture, TypedRef,
};
pub use reconnector::{ReconnectPolicy, Reconnector, ReconnectorState, ReconnectorStatus};
pub use tls::{Side, TlsStream};
pub use tub::{HintStatus, PeerStatus, ReferenceError, RegisterError, Tub, TubConfig};
pub use tubid::TubId;

pub use folio_rpc_macros::interface;

#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system random number generator failed");
    out
}
