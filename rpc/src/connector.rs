//! The seam between the RPC layer and the networks: a Tub asks a [`Connector`] for a byte
//! stream to a hint, and hands whatever stream it gets to the client side of the handshake.
//!
//! `folio-rpc` knows no transport. `folio-handlers` implements [`Connector`] for TCP, Tor and
//! I2P; an embedder can implement it for anything that yields a byte stream.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::furl::Hint;
use crate::tubid::TubId;

/// Any bidirectional byte stream a handshake can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// A boxed byte stream, as connectors return them.
pub type BoxStream = Box<dyn ByteStream>;

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BoxStream, ConnectError>> + Send + 'a>>;

/// Why no stream could be opened for a hint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No handler for this hint type: the hint is skipped, never fatal to a FURL.
    #[error("no connection handler for {kind:?} hints")]
    Unsupported {
        /// The hint type.
        kind: String,
    },
    /// Policy forbids this hint (direct TCP while hiding the IP address, for example).
    #[error("hint {hint} refused by policy: {reason}")]
    Refused {
        /// The hint.
        hint: String,
        /// The rule that refused it.
        reason: String,
    },
    /// The handler tried and failed.
    #[error("cannot connect to {hint}")]
    Failed {
        /// The hint.
        hint: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Opens byte streams to hints. Streams it returns are always used as [`crate::Side::Client`].
pub trait Connector: Send + Sync {
    /// Opens a stream to `hint`.
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a>;

    /// What would carry `hint` ("tcp (direct)", "tor (system tor)", ...), for status displays.
    fn handler_name(&self, hint: &Hint) -> Option<String> {
        Some(hint.kind().to_string())
    }

    /// Opens a stream to `hint` of a FURL whose TubId is `peer`. A Tub dials through this
    /// method, so a connector can apply a per-peer policy (a node's `[server:TUBID] tcp`);
    /// the default ignores `peer`.
    fn connect_for<'a>(&'a self, peer: TubId, hint: &'a Hint) -> ConnectFuture<'a> {
        let _ = peer;
        self.connect(hint)
    }

    /// [`handler_name`](Self::handler_name) for a hint of a FURL whose TubId is `peer`.
    fn handler_name_for(&self, peer: TubId, hint: &Hint) -> Option<String> {
        let _ = peer;
        self.handler_name(hint)
    }
}

/// The future a [`Listener`] returns.
pub type AcceptFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + 'a>>;

/// A source of accepted byte streams (a TCP listener, an onion service, a SAM session that
/// accepts). Streams it yields are always used as [`crate::Side::Server`], whatever opened
/// their sockets.
pub trait Listener: Send + 'static {
    /// The next accepted stream.
    fn accept(&mut self) -> AcceptFuture<'_>;

    /// What this listener is, for logs and status ("tcp:3456", "i2p:...b32.i2p").
    fn describe(&self) -> String;
}

/// A boxed listener is a listener, so callers can choose one at run time (an onion service
/// through a system tor or through an embedded client, say) and hand it to a Tub.
impl<L: Listener + ?Sized> Listener for Box<L> {
    fn accept(&mut self) -> AcceptFuture<'_> {
        (**self).accept()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// A connector that opens nothing: for Tubs that only accept, or only call themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoConnector;

impl Connector for NoConnector {
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        let kind = hint.kind().to_string();
        Box::pin(async move { Err(ConnectError::Unsupported { kind }) })
    }
}
