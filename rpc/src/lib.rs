//! # folio-rpc
//!
//! The core of Folio, a capability-RPC framework in the style of Foolscap: Tubs with TLS
//! identities, FURLs, remote references, typed calls, references passed in arguments and
//! results, one connection per pair of Tubs, reconnection and connection status, over
//! **any** byte stream.
//!
//! The rule this crate exists to enforce: **the TLS role is the negotiation role, given
//! explicitly.** The party that dialed runs [`Handshaker::connect`] ([`Side::Client`]); the
//! party that accepted runs [`Handshaker::accept`] ([`Side::Server`]). A [`Tub`] hands streams
//! from its [`Connector`] to the first and streams from its [`Listener`]s to the second.
//! Nothing looks at a socket to decide, so an I2P listener whose streams arrive over an
//! outbound connection to its SAM bridge speaks TLS as a server, and Tahoe-LAFS #2861 cannot
//! happen.
//!
//! ## Embedding Folio in a daemon
//!
//! Declare an interface once; export an object; call it from anywhere that holds its FURL.
//! (`folio-handlers` supplies the TCP connector and listener; Tor and I2P plug in the same way.)
//!
//! ```
//! use std::sync::Arc;
//! use folio_handlers::{Registry, TcpListener};
//! use folio_rpc::{interface, Host, Identity, Tub, TubConfig};
//!
//! #[interface(name = "example.clock.v1")]
//! pub trait Clock {
//!     async fn now(&self) -> Result<u64, String>;
//! }
//!
//! struct SystemClock;
//! impl Clock for SystemClock {
//!     async fn now(&self) -> Result<u64, String> {
//!         Ok(std::time::UNIX_EPOCH.elapsed().map_err(|e| e.to_string())?.as_secs())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The daemon: a Tub that listens on TCP and exports one object under a stable name.
//! let tcp = Arc::new(Registry::with_tcp());
//! let daemon = Tub::new(Identity::generate()?, tcp.clone(), TubConfig::default())?;
//! let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse()?).await?;
//! daemon.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
//! daemon.listen(listener);
//! let furl = daemon.register_as(ClockRef::serve(SystemClock), "clock")?;
//!
//! // Anyone holding the FURL: a Tub of their own, and typed calls.
//! let client = Tub::new(Identity::generate()?, tcp, TubConfig::default())?;
//! let clock: ClockRef = client.get(&furl).await?;
//! assert!(clock.now().await? > 0);
//! # Ok(()) }
//! ```
//!
//! `rpc/examples/greeter.rs` is a two-terminal version with a method that returns a reference.
//! `docs/protocol.md` specifies the object protocol; `docs/handshake.md` the handshake.
//!
//! ## Modules
//!
//! | module | owns |
//! |---|---|
//! | [`tub`] | the Tub: exports, listeners, dialing, one connection per peer, status |
//! | [`object`] | references (local, remote, gifts), dispatch, typed errors |
//! | [`promise`] | promise pipelining: calling a reference before the answer that carries it arrives |
//! | [`message`] | the object protocol's messages |
//! | [`reconnector`] | keeping a connection to a FURL up |
//! | [`tubid`] | the TubId: a hash of the public key |
//! | [`identity`] | key pair + self-signed certificate, PEM files with mode 0600 |
//! | [`furl`] | FURLs and connection hints |
//! | [`prelude`] | the plaintext bytes before TLS |
//! | [`tls`] | rustls driven over any stream, TubId-pinning verifiers |
//! | [`handshake`] | prelude → TLS → hello, each phase bounded |
//! | [`frame`] | length-delimited postcard frames with a checked maximum |
//! | [`connector`] | the traits through which a Tub gets streams: `Connector`, `Listener` |
//!
//! ## The handshake on its own
//!
//! ```
//! use std::sync::Arc;
//! use folio_rpc::{HandshakeConfig, Handshaker, Identity, Side};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let alice = Handshaker::new(Arc::new(Identity::generate().unwrap()), HandshakeConfig::default()).unwrap();
//! let bob = Handshaker::new(Arc::new(Identity::generate().unwrap()), HandshakeConfig::default()).unwrap();
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let (dialed, accepted) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
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
// On docs.rs (`--cfg docsrs`, nightly rustdoc), every feature-gated item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Chainable setters for a config struct, one per public field: the structs are
/// `#[non_exhaustive]` (a field added in a minor release breaks nobody), so they are made
/// with `default()` and these, e.g. `TubConfig::default().max_connections(64)`.
macro_rules! config_setters {
    ($ty:ident { $($field:ident: $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!(
                    "Sets [`", stringify!($field), "`](", stringify!($ty), "::",
                    stringify!($field), "), for chaining."
                )]
                #[must_use]
                pub fn $field(mut self, $field: $t) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}

pub mod base32;
pub mod bytes;
mod connection;
pub mod connector;
mod error_chain;
pub mod frame;
pub mod furl;
pub mod handshake;
pub mod identity;
mod limit;
pub mod message;
pub mod object;
mod outbox;
pub mod prelude;
pub mod promise;
pub mod reconnector;
pub mod tls;
pub mod tub;
pub mod tubid;

pub use bytes::Bytes;
pub use connector::{BoxStream, ByteStream, ConnectError, Connector, Listener, NoConnector};
pub use error_chain::ErrorChain;
pub use furl::{Furl, Hint, Host, Swissnum};
pub use handshake::{
    ConnectionInfo, Established, HandshakeConfig, HandshakeError, Handshaker, Hello, Phase,
};
pub use identity::{Identity, IdentityError};
pub use object::{
    serve_per_call, CallContext, CallError, Disconnect, Dispatch, ObjectRef, ProtocolError,
    Refusal, Reply, ReplyFuture, TypedRef,
};
pub use promise::Promise;
pub use reconnector::{ReconnectPolicy, Reconnector, ReconnectorState, ReconnectorStatus};
pub use tls::{Side, TlsStream};
pub use tub::{
    HintStatus, ListenerHandle, ListenerStatus, PeerStatus, ReferenceError, RegisterError, Tub,
    TubConfig, TubError, TubLoad, EVICT_PENDING_AFTER, LISTENER_RETRY_MAX, LISTENER_RETRY_MIN,
    SHED_TIME,
};
pub use tubid::TubId;

/// Declares a Folio interface: one trait gives a typed handle and server dispatch.
///
/// ```ignore
/// #[folio_rpc::interface(name = "tahoe.storage.v1")]   // the wire name; defaults to the trait's
/// pub trait Storage {
///     async fn allocate(&self, index: Vec<u8>, shares: Vec<u8>) -> Result<Vec<BucketWriterRef>, StorageError>;
///     #[oneway]
///     async fn advise_corrupt(&self, index: Vec<u8>, reason: String);
/// }
/// ```
///
/// generates
///
/// - the trait, each `async fn` becoming `fn … -> impl Future<Output = …> + Send` (implement
///   it with `async fn`; implementations must be `Send + Sync + 'static`);
/// - `StorageRef`, a cloneable handle to a local or remote object with one async method per
///   trait method returning `Result<T, CallError<E>>` (one-way methods return once queued);
///   `StorageRef::serve(impl)` wraps a local implementation, and the handle can be registered
///   with [`Tub::register`] or passed inside arguments and results (it implements serde and
///   [`TypedRef`]); `StorageRef::with_timeout(Some(d))` is the same handle with another call
///   timeout than the Tub's `call_timeout` ([`ObjectRef::with_timeout`]). The names `serve`,
///   `object_ref` and `with_timeout` are taken, so no method may have them;
/// - `StorageServer<T>`, the [`Dispatch`] implementation.
///
/// Methods take `&self` and owned parameters that implement serde; they return
/// `Result<T, E>` with `T` and `E` serde types (`E` is the method's own error, delivered as
/// [`CallError::App`]), or nothing when marked `#[oneway]`.
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
