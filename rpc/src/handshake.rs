//! The Folio handshake: prelude, TLS 1.3, hello.
//!
//! [`Handshaker::connect`] runs the client path (for a stream this party dialed) and
//! [`Handshaker::accept`] the server path (for a stream this party accepted). Which one runs
//! is the caller's decision, made from who initiated the *Folio* connection, not from the
//! socket: an I2P listener's streams arrive over an outbound socket to the SAM bridge and
//! still go to `accept`. Each phase has its own timeout and byte bound (see
//! [`HandshakeConfig`]), and each failure has its own [`HandshakeError`] variant.
//!
//! `docs/handshake.md` is the byte-level specification of everything in this module.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tracing::{debug, info_span, Instrument};

use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::identity::Identity;
use crate::prelude::{self, PreludeError, Progress, Status};
use crate::tls::{self, HandshakeTooLarge, Side, TlsStream, TubIdMismatch};
use crate::tubid::TubId;

/// The highest protocol version this build speaks (negotiated in the hello). Version 2 is
/// version 1 plus call deadlines and cancellation (`TimedCall`, `Cancel`: docs/protocol.md
/// §7); version 3 adds promise pipelining (promise targets, `Finish`, `Refusal::Broken`:
/// §8). A later version only adds messages, so a message of version N means the same in
/// every version above N.
pub const PROTOCOL_VERSION: u16 = 3;
/// The lowest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The largest hello frame accepted.
pub const MAX_HELLO_LEN: u32 = 1024;
/// The smallest frame limit a peer may announce.
pub const MIN_FRAME_LIMIT: u32 = 4096;

/// The three phases of the handshake, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The plaintext prelude.
    Prelude,
    /// The TLS 1.3 handshake.
    Tls,
    /// The encrypted hello exchange.
    Hello,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Prelude => "prelude",
            Phase::Tls => "TLS",
            Phase::Hello => "hello",
        })
    }
}

/// Limits on one handshake. Every phase is bounded in time and in bytes.
///
/// Start from [`HandshakeConfig::default()`] and change what you need with the chainable setters
/// (one per field) or by assigning the public fields; `#[non_exhaustive]`, so that a new
/// field is not a breaking change.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Time for the prelude: the server waiting for the request, the client for the answer.
    pub prelude_timeout: Duration,
    /// Time for the TLS handshake.
    pub tls_timeout: Duration,
    /// Time for the hello exchange.
    pub hello_timeout: Duration,
    /// Most TLS bytes read from the peer before the TLS handshake completes.
    pub max_tls_handshake_bytes: usize,
    /// Largest frame this party accepts after the handshake (announced in its hello).
    pub max_frame_len: u32,
    /// Protocol versions offered, lowest and highest.
    pub versions: (u16, u16),
}

config_setters!(HandshakeConfig {
    prelude_timeout: Duration,
    tls_timeout: Duration,
    hello_timeout: Duration,
    max_tls_handshake_bytes: usize,
    max_frame_len: u32,
    versions: (u16, u16),
});

impl Default for HandshakeConfig {
    fn default() -> Self {
        // Generous enough for Tor and I2P round trips of a few seconds each.
        HandshakeConfig {
            prelude_timeout: Duration::from_secs(30),
            tls_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(30),
            max_tls_handshake_bytes: 16 * 1024,
            max_frame_len: 1024 * 1024,
            versions: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        }
    }
}

/// What each party says first inside TLS.
///
/// Encoded with postcard as the payload of the first frame in each direction. Fields are only
/// ever appended; a decoder ignores bytes after the fields it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version spoken.
    pub min_version: u16,
    /// Highest protocol version spoken.
    pub max_version: u16,
    /// The TubId the sender claims; must match its certificate.
    pub tubid: TubId,
    /// Random per Tub start: a new value means the peer restarted.
    pub incarnation: [u8; 16],
    /// The dialer's count of connections it has opened (0 from a server): lets a peer tell
    /// the newer of two connections from the same incarnation.
    pub connection_seq: u64,
    /// The largest frame the sender accepts.
    pub max_frame_len: u32,
}

impl Hello {
    /// Decodes a hello, ignoring trailing bytes (fields added by later versions).
    pub fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        let (hello, _rest) = postcard::take_from_bytes::<Hello>(bytes)
            .map_err(|e| HandshakeError::BadHello(e.to_string()))?;
        if hello.min_version == 0 {
            // A first byte 00 marks a refusal instead (see `HelloRefusal`).
            return Err(HandshakeError::BadHello(
                "version 0 does not exist: protocol versions count from 1".into(),
            ));
        }
        if hello.min_version > hello.max_version {
            return Err(HandshakeError::BadHello(format!(
                "version range {}..={} is empty",
                hello.min_version, hello.max_version
            )));
        }
        if hello.max_frame_len < MIN_FRAME_LIMIT {
            return Err(HandshakeError::BadHello(format!(
                "frame limit {} is below the minimum {MIN_FRAME_LIMIT}",
                hello.max_frame_len
            )));
        }
        Ok(hello)
    }
}

/// What a server sends in place of its hello when it refuses a client after TLS
/// (docs/handshake.md §6.3): a frame whose payload is the byte `00` (which no hello can start
/// with: a hello's first field is a version, at least 1), then this, postcard-encoded.
/// Receivers ignore bytes after it; variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloRefusal {
    /// The client broke the handshake's rules: its hello does not decode or is out of range,
    /// claims another TubId than its certificate's, or ALPN `folio/1` was not negotiated.
    Malformed(String),
    /// The client's hello is fine, but the server's admission check refused it (another
    /// attempt of the same dial is already connected; the Tub is shutting down).
    NotAdmitted(String),
}

/// The longest reason a refusal carries, in bytes: the frame stays well within the hello's
/// limit ([`MAX_HELLO_LEN`]).
const MAX_REFUSAL_TEXT: usize = 960;

impl HelloRefusal {
    /// The refusal's frame payload: `00`, then the refusal. Long reasons are cut short.
    pub fn encode(&self) -> Vec<u8> {
        let cut = |s: &str| {
            let mut end = s.len().min(MAX_REFUSAL_TEXT);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        };
        let short = match self {
            HelloRefusal::Malformed(s) => HelloRefusal::Malformed(cut(s)),
            HelloRefusal::NotAdmitted(s) => HelloRefusal::NotAdmitted(cut(s)),
        };
        let mut out = vec![0];
        out.extend(postcard::to_allocvec(&short).expect("a refusal always encodes"));
        out
    }

    /// Decodes a refusal's frame payload (`00` first); `None` if it is not one this build
    /// understands.
    pub fn decode(payload: &[u8]) -> Option<HelloRefusal> {
        let rest = payload.strip_prefix(&[0])?;
        postcard::take_from_bytes(rest).ok().map(|(r, _)| r)
    }

    /// The refusal a server sends for its own handshake error, if the error is one it
    /// tells the client about.
    fn for_error(e: &HandshakeError) -> Option<HelloRefusal> {
        match e {
            HandshakeError::BadHello(why) => Some(HelloRefusal::Malformed(why.clone())),
            HandshakeError::ClaimMismatch { claimed, actual } => Some(HelloRefusal::Malformed(
                format!("the hello claims Tub {claimed}, but the certificate is Tub {actual}"),
            )),
            HandshakeError::Refused(why) => Some(HelloRefusal::NotAdmitted(why.clone())),
            _ => None,
        }
    }
}

/// Why a handshake failed. Each variant says what happened, not only that it did.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A phase took longer than its timeout.
    #[error("timed out after {after:?} in the {phase} phase{}", timeout_hint(*phase))]
    Timeout {
        /// The phase.
        phase: Phase,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer is not a Folio peer.
    #[error("not a Folio peer: it sent {0}")]
    NotFolio(String),
    /// Both parties acted as the client.
    #[error("both parties acted as Side::Client: the accepting party must use Side::Server (see Tahoe-LAFS #2861)")]
    BothClients,
    /// Both parties acted as the server.
    #[error("the peer acted as Side::Server on a connection this party accepted")]
    BothServers,
    /// The Tub asked for is not hosted here (server) or there (client).
    #[error("wrong Tub: the listener does not host Tub {0}")]
    UnknownTub(TubId),
    /// The server does not speak the client's prelude version.
    #[error("the peer does not speak prelude version {0}")]
    UnsupportedPrelude(u8),
    /// The server refused new connections.
    #[error("the peer is busy and refused the connection")]
    Busy,
    /// This party (as server) refused the connection after reading the client's hello.
    #[error("connection refused: {0}")]
    Refused(String),
    /// The prelude was malformed.
    #[error("malformed prelude: {0}")]
    MalformedPrelude(String),
    /// The server's key is not the one the FURL names.
    #[error("certificate mismatch: {0}")]
    CertificateMismatch(TubIdMismatch),
    /// TLS failed for another reason (an alert, a bad signature, no common parameters).
    #[error("TLS failed")]
    Tls(#[source] rustls::Error),
    /// The peer sent too many bytes during the TLS handshake.
    #[error("the peer sent more than {0} bytes of TLS handshake")]
    TlsTooLarge(usize),
    /// The version ranges do not overlap.
    #[error("no common protocol version: this party speaks {ours:?}, the peer {theirs:?}")]
    NoCommonVersion {
        /// Our range.
        ours: (u16, u16),
        /// The peer's range.
        theirs: (u16, u16),
    },
    /// The peer's hello claims a TubId other than its certificate's.
    #[error("the peer claims to be Tub {claimed} but its certificate is Tub {actual}")]
    ClaimMismatch {
        /// What the hello says.
        claimed: TubId,
        /// What the certificate says.
        actual: TubId,
    },
    /// The peer's hello is malformed or out of bounds.
    #[error("malformed hello: {0}")]
    BadHello(String),
    /// The server refused this party's hello as malformed (client side; the server saw
    /// [`HandshakeError::BadHello`] or [`HandshakeError::ClaimMismatch`]).
    #[error("the peer refused our hello: {0}")]
    HelloRefused(String),
    /// The server's admission check refused this party (client side; the server saw
    /// [`HandshakeError::Refused`]).
    #[error("the peer did not admit the connection: {0}")]
    NotAdmitted(String),
    /// The client presented no certificate (server side). A Folio client always has one: its
    /// key cannot sign with any scheme this party offered.
    #[error(
        "the client presented no certificate: its key is not of a type Folio accepts \
         (Ed25519, ECDSA P-256 or P-384, RSA of 2048 to 8192 bits; handshake.md §4)"
    )]
    NoCertificate,
    /// The peer's certificate carries a key of a type, or in an encoding, Folio does not
    /// accept (the peer was sent the alert `unsupported_certificate`).
    #[error(
        "the peer's certificate key is not one Folio accepts (Ed25519; ECDSA P-256 or P-384 \
         with an uncompressed point; RSA of 2048 to 8192 bits; handshake.md §4)"
    )]
    UnsupportedKey,
    /// The peer closed the stream.
    #[error("the peer closed the connection during the {0} phase")]
    Closed(Phase),
    /// The stream failed.
    #[error("I/O error in the {phase} phase")]
    Io {
        /// The phase.
        phase: Phase,
        /// The error.
        source: io::Error,
    },
    /// The local identity could not be turned into a TLS configuration.
    #[error("local TLS configuration is unusable")]
    Config(#[source] rustls::Error),
}

fn timeout_hint(phase: Phase) -> &'static str {
    match phase {
        Phase::Prelude => {
            " (the peer sent nothing Folio could use; is it also acting as Side::Server?)"
        }
        _ => "",
    }
}

impl HandshakeError {
    fn io(phase: Phase, e: io::Error) -> Self {
        use io::ErrorKind::*;
        if matches!(
            e.kind(),
            UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted
        ) {
            return HandshakeError::Closed(phase);
        }
        if let Some(t) = tls::tls_error(&e) {
            match t {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                    if let Some(m) = o.0.downcast_ref::<TubIdMismatch>() {
                        return HandshakeError::CertificateMismatch(m.clone());
                    }
                }
                // Folio checks no key usage: this is its refusal of the key (tls.rs).
                rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose) => {
                    return HandshakeError::UnsupportedKey
                }
                rustls::Error::NoCertificatesPresented => return HandshakeError::NoCertificate,
                _ => {}
            }
            return HandshakeError::Tls(t.clone());
        }
        if let Some(big) = e
            .get_ref()
            .and_then(|r| r.downcast_ref::<HandshakeTooLarge>())
        {
            return HandshakeError::TlsTooLarge(big.0);
        }
        HandshakeError::Io { phase, source: e }
    }

    fn frame(phase: Phase, e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Self::io(phase, e),
            FrameError::Truncated { .. } => HandshakeError::Closed(phase),
            other => HandshakeError::BadHello(other.to_string()),
        }
    }

    /// The phase the error belongs to, where it has one.
    pub fn phase(&self) -> Option<Phase> {
        use HandshakeError::*;
        match self {
            Timeout { phase, .. } | Io { phase, .. } | Closed(phase) => Some(*phase),
            NotFolio(_)
            | BothClients
            | BothServers
            | UnknownTub(_)
            | UnsupportedPrelude(_)
            | Busy
            | MalformedPrelude(_) => Some(Phase::Prelude),
            CertificateMismatch(_) | Tls(_) | TlsTooLarge(_) | NoCertificate | UnsupportedKey => {
                Some(Phase::Tls)
            }
            NoCommonVersion { .. }
            | ClaimMismatch { .. }
            | BadHello(_)
            | HelloRefused(_)
            | NotAdmitted(_)
            | Refused(_) => Some(Phase::Hello),
            Config(_) => None,
        }
    }
}

impl From<PreludeError> for HandshakeError {
    fn from(e: PreludeError) -> Self {
        match e {
            PreludeError::NotFolio(s) => HandshakeError::NotFolio(s),
            PreludeError::BothClients => HandshakeError::BothClients,
            PreludeError::BothServers => HandshakeError::BothServers,
            PreludeError::Malformed(s) => HandshakeError::MalformedPrelude(s),
        }
    }
}

/// What both parties know once the handshake has succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The role this party played.
    pub side: Side,
    /// This party's Tub (for a server hosting several, the one the client asked for).
    pub local: TubId,
    /// The peer's Tub, proven by its key.
    pub peer: TubId,
    /// The negotiated protocol version.
    pub version: u16,
    /// The hello this party sent.
    pub local_hello: Hello,
    /// The hello the peer sent.
    pub peer_hello: Hello,
    /// The TLS key exchange group negotiated (`X25519MLKEM768` between two Folio builds
    /// with the `post-quantum` feature; see [`crate::tls::key_exchange_groups`]).
    pub key_exchange: Option<rustls::NamedGroup>,
}

/// An authenticated connection: frames in, frames out.
pub struct Established<S> {
    /// Incoming frames, limited to this party's `max_frame_len`.
    pub reader: FrameReader<ReadHalf<TlsStream<S>>>,
    /// Outgoing frames, limited to the peer's `max_frame_len`.
    pub writer: FrameWriter<WriteHalf<TlsStream<S>>>,
    /// Who is on each end.
    pub info: ConnectionInfo,
}

impl<S> fmt::Debug for Established<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Runs handshakes for one local Tub (dialing) and any number of hosted Tubs (accepting).
pub struct Handshaker {
    local: Arc<Identity>,
    client_config: Arc<rustls::ClientConfig>,
    hosted: RwLock<HashMap<TubId, Arc<rustls::ServerConfig>>>,
    incarnation: [u8; 16],
    connection_seq: AtomicU64,
    config: HandshakeConfig,
}

impl fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshaker")
            .field("local", &self.local.tubid())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Handshaker {
    /// A handshaker that dials as `identity` and accepts connections for it.
    pub fn new(identity: Arc<Identity>, config: HandshakeConfig) -> Result<Self, HandshakeError> {
        let client_config = tls::client_config(&identity).map_err(HandshakeError::Config)?;
        let hs = Handshaker {
            local: identity.clone(),
            client_config,
            hosted: RwLock::new(HashMap::new()),
            incarnation: crate::random_bytes(),
            connection_seq: AtomicU64::new(0),
            config,
        };
        hs.host(&identity)?;
        Ok(hs)
    }

    /// Also accepts connections for another Tub on the same listeners.
    pub fn host(&self, identity: &Identity) -> Result<(), HandshakeError> {
        let cfg = tls::server_config(identity).map_err(HandshakeError::Config)?;
        self.hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(identity.tubid(), cfg);
        Ok(())
    }

    /// Stops accepting connections for a hosted Tub.
    pub fn unhost(&self, tubid: &TubId) {
        self.hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tubid);
    }

    /// The Tub this handshaker dials as.
    pub fn tubid(&self) -> TubId {
        self.local.tubid()
    }

    /// This process's incarnation, sent in every hello.
    pub fn incarnation(&self) -> [u8; 16] {
        self.incarnation
    }

    /// The limits in force.
    pub fn config(&self) -> &HandshakeConfig {
        &self.config
    }

    fn hello(&self, tubid: TubId, connection_seq: u64) -> Hello {
        Hello {
            min_version: self.config.versions.0,
            max_version: self.config.versions.1,
            tubid,
            incarnation: self.incarnation,
            connection_seq,
            max_frame_len: self.config.max_frame_len,
        }
    }

    /// The client path, for a stream this party opened to reach Tub `target`.
    pub async fn connect<S>(&self, io: S, target: TubId) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let seq = self.next_connection_seq();
        self.connect_with_seq(io, target, seq).await
    }

    /// The next dial's `connection_seq`. Every attempt of one dial (one per hint, run in
    /// parallel) carries the same number, so the server keeps just one of them.
    pub fn next_connection_seq(&self) -> u64 {
        self.connection_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The client path with a `connection_seq` from [`Handshaker::next_connection_seq`].
    pub async fn connect_with_seq<S>(
        &self,
        io: S,
        target: TubId,
        seq: u64,
    ) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let span = info_span!("handshake", side = "client", peer = %target);
        let (est, _) = self
            .run_client(io, &target, seq, &[])
            .instrument(span)
            .await?;
        Ok(est)
    }

    /// The client path, with `early` (whole frames, each with its length prefix) sent in the
    /// same write as this party's hello, before the server's hello arrives (handshake.md
    /// §6.2). They are sent only if every frame is a message of the lowest protocol version
    /// this party offers, so that what they mean cannot depend on the negotiation (later
    /// versions only add messages), and only if every frame's payload is within
    /// [`MIN_FRAME_LIMIT`], the least limit a server may announce; the flag says whether
    /// they were.
    pub(crate) async fn connect_early<S>(
        &self,
        io: S,
        target: TubId,
        seq: u64,
        early: &[u8],
    ) -> Result<(Established<S>, bool), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let span = info_span!("handshake", side = "client", peer = %target);
        self.run_client(io, &target, seq, early)
            .instrument(span)
            .await
    }

    /// Whether `early` may follow this party's hello (see [`Handshaker::connect_early`]).
    fn may_send_early(&self, early: &[u8]) -> bool {
        if early.is_empty() {
            return false;
        }
        let decoder = crate::frame::FrameDecoder::new(MIN_FRAME_LIMIT);
        let mut rest = early;
        while !rest.is_empty() {
            match decoder.decode(rest) {
                Ok(crate::frame::Decoded::Frame { len }) => {
                    let payload = &rest[crate::frame::HEADER_LEN..crate::frame::HEADER_LEN + len];
                    match crate::message::decode(payload) {
                        Ok(m) if m.min_version() <= self.config.versions.0 => {}
                        _ => return false,
                    }
                    rest = &rest[crate::frame::HEADER_LEN + len..]
                }
                _ => return false,
            }
        }
        true
    }

    /// The server path, for a stream this party accepted (whatever opened the socket).
    pub async fn accept<S>(&self, io: S) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.accept_with(io, &|_| Ok(())).await
    }

    /// The server path, with `admit` deciding, once the client's hello is known, whether to
    /// go on (the Tub refuses a second connection from the same dial this way). A refused
    /// client sees the stream close instead of a hello.
    pub async fn accept_with<S>(
        &self,
        io: S,
        admit: &Admit<'_>,
    ) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.run_server(io, admit, false).await
    }

    async fn run_client<S>(
        &self,
        io: S,
        target: &TubId,
        seq: u64,
        early: &[u8],
    ) -> Result<(Established<S>, bool), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let cfg = &self.config;
        let early = if self.may_send_early(early) {
            early
        } else {
            &[]
        };
        let mut tls = TlsStream::client(io, self.client_config.clone(), target)
            .map_err(HandshakeError::Config)?;
        // Prelude: the request and the ClientHello leave together; then wait for the answer.
        let mut first = prelude::encode_request(target);
        tls.take_pending_tls(&mut first);
        let answer = timed(Phase::Prelude, cfg.prelude_timeout, async {
            let io = tls.get_mut();
            io.write_all(&first)
                .await
                .map_err(|e| HandshakeError::io(Phase::Prelude, e))?;
            io.flush()
                .await
                .map_err(|e| HandshakeError::io(Phase::Prelude, e))?;
            read_prelude(io, prelude::decode_answer, prelude::ANSWER_LEN).await
        })
        .await?;
        match answer.status {
            Status::Proceed => {}
            Status::UnknownTub => return Err(HandshakeError::UnknownTub(*target)),
            Status::UnsupportedVersion => {
                return Err(HandshakeError::UnsupportedPrelude(prelude::PRELUDE_VERSION))
            }
            Status::Busy => return Err(HandshakeError::Busy),
        }
        debug!("prelude accepted");
        let hello = self.hello(self.local.tubid(), seq);
        let est = self
            .finish(
                tls,
                Side::Client,
                self.local.tubid(),
                hello,
                None,
                HelloWith::Early(early),
            )
            .await?;
        Ok((est, !early.is_empty()))
    }

    /// The server path of [`Handshaker::accept_with`]. With `hold_hello`, this party's hello
    /// is held in the returned writer ([`FrameWriter::into_parts`]) to leave with the
    /// connection's first write: with the answer to a call the client sent behind its own
    /// hello, in one segment. Whoever takes that writer must write (and flush) soon, even if
    /// it has nothing else to send.
    pub(crate) async fn run_server<S>(
        &self,
        io: S,
        admit: &Admit<'_>,
        hold_hello: bool,
    ) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let span = info_span!("handshake", side = "server");
        self.server_phases(io, admit, hold_hello)
            .instrument(span)
            .await
    }

    async fn server_phases<S>(
        &self,
        mut io: S,
        admit: &Admit<'_>,
        hold_hello: bool,
    ) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let cfg = &self.config;
        let request = timed(Phase::Prelude, cfg.prelude_timeout, async {
            read_prelude(&mut io, prelude::decode_request, prelude::MAX_REQUEST_LEN).await
        })
        .await;
        let request = match request {
            Ok(r) => r,
            Err(HandshakeError::NotFolio(what)) => {
                // Tell a person (or a browser) what this port is, then close.
                refuse(&mut io, prelude::refusal_for(&what), cfg.prelude_timeout).await;
                return Err(HandshakeError::NotFolio(what));
            }
            Err(e) => return Err(e),
        };
        if request.version != prelude::PRELUDE_VERSION {
            let answer = prelude::encode_answer(Status::UnsupportedVersion);
            refuse(&mut io, &answer, cfg.prelude_timeout).await;
            return Err(HandshakeError::UnsupportedPrelude(request.version));
        }
        let server_config = self
            .hosted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.target)
            .cloned();
        let Some(server_config) = server_config else {
            let answer = prelude::encode_answer(Status::UnknownTub);
            refuse(&mut io, &answer, cfg.prelude_timeout).await;
            return Err(HandshakeError::UnknownTub(request.target));
        };
        debug!(target_tub = %request.target, "prelude accepted");
        let mut tls = TlsStream::server(io, server_config).map_err(HandshakeError::Config)?;
        // The answer waits for the ServerHello (the ClientHello came with the request, so it
        // is ready at once) and leaves in the same write: one TCP segment, not two. A
        // ClientHello rustls refuses gets the answer and then its alert.
        tls.queue_raw(&prelude::encode_answer(Status::Proceed));
        let hello = self.hello(request.target, 0);
        let with = if hold_hello {
            HelloWith::Held
        } else {
            HelloWith::Nothing
        };
        self.finish(tls, Side::Server, request.target, hello, Some(admit), with)
            .await
    }

    /// The TLS and hello phases, the same for both sides.
    async fn finish<S>(
        &self,
        mut tls: TlsStream<S>,
        side: Side,
        local: TubId,
        hello: Hello,
        admit: Option<&Admit<'_>>,
        with: HelloWith<'_>,
    ) -> Result<Established<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let cfg = &self.config;
        let max = cfg.max_tls_handshake_bytes;
        timed(Phase::Tls, cfg.tls_timeout, async {
            let done = if side == Side::Client {
                // The client's Finished waits for its hello, written below without any
                // wait in between: both leave in one write and one TCP segment, not two.
                tls.handshake_holding_last_flight(max).await
            } else {
                tls.handshake(max).await
            };
            done.map_err(|e| HandshakeError::io(Phase::Tls, e))
        })
        .await?;
        if tls.connection().alpn_protocol() != Some(tls::ALPN) {
            // A client that offered other protocols got the alert no_application_protocol
            // from TLS; one that offered none, or a server that chose none, is told here.
            let refusal = match side {
                Side::Server => HelloRefusal::Malformed(format!(
                    "ALPN {} was not negotiated",
                    String::from_utf8_lossy(tls::ALPN)
                ))
                .encode(),
                Side::Client => Vec::new(),
            };
            let mut frame = Vec::new();
            if !refusal.is_empty() {
                frame.extend_from_slice(&(refusal.len() as u32).to_be_bytes());
                frame.extend_from_slice(&refusal);
            }
            // The client's Finished, held until now, leaves before its close_notify.
            refuse(&mut tls, &frame, cfg.hello_timeout).await;
            return Err(HandshakeError::Tls(rustls::Error::NoApplicationProtocol));
        }
        let peer = tls
            .peer_tubid()
            .ok_or_else(|| HandshakeError::Tls(rustls::Error::NoCertificatesPresented))?;
        let key_exchange = tls
            .connection()
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        debug!(peer = %peer, ?key_exchange, "TLS established");

        let (r, w) = tokio::io::split(tls);
        let mut reader = FrameReader::new(r, MAX_HELLO_LEN);
        let mut writer = FrameWriter::new(w, MAX_HELLO_LEN);
        // The client speaks first; the server answers once it has read (and admitted) the
        // client's hello. The client's hello follows its TLS Finished, so this costs no
        // round trip.
        let ours = (hello.min_version, hello.max_version);
        let outcome = timed(Phase::Hello, cfg.hello_timeout, async {
            if side == Side::Client {
                // The client's early frames, if any, leave in the same write as its hello.
                let early = match with {
                    HelloWith::Early(early) => early,
                    _ => &[],
                };
                writer
                    .send_message_then(&hello, early)
                    .await
                    .map_err(|e| HandshakeError::frame(Phase::Hello, e))?;
            }
            let peer_hello = match reader.next_frame().await {
                // A server's refusal in place of its hello.
                Ok(Some(bytes)) if side == Side::Client && bytes.first() == Some(&0) => {
                    return Err(match HelloRefusal::decode(bytes) {
                        Some(HelloRefusal::Malformed(why)) => HandshakeError::HelloRefused(why),
                        Some(HelloRefusal::NotAdmitted(why)) => HandshakeError::NotAdmitted(why),
                        None => HandshakeError::BadHello(format!(
                            "a refusal this build does not understand: {:02x?}",
                            &bytes[..bytes.len().min(16)]
                        )),
                    });
                }
                Ok(Some(bytes)) => Hello::decode(bytes)?,
                Ok(None) => return Err(HandshakeError::Closed(Phase::Hello)),
                Err(e) => return Err(HandshakeError::frame(Phase::Hello, e)),
            };
            if peer_hello.tubid != peer {
                return Err(HandshakeError::ClaimMismatch {
                    claimed: peer_hello.tubid,
                    actual: peer,
                });
            }
            let version = negotiate(ours, (peer_hello.min_version, peer_hello.max_version));
            if side == Side::Server {
                if let (Ok(version), Some(admit)) = (&version, admit) {
                    let info = ConnectionInfo {
                        side,
                        local,
                        peer,
                        version: *version,
                        local_hello: hello.clone(),
                        peer_hello: peer_hello.clone(),
                        key_exchange,
                    };
                    if let Err(reason) = admit(&info) {
                        return Err(HandshakeError::Refused(reason));
                    }
                }
                // Sent even without a common version, so the client can say so too.
                if matches!(with, HelloWith::Held) && version.is_ok() {
                    writer
                        .hold_message(&hello)
                        .map_err(|e| HandshakeError::frame(Phase::Hello, e))?;
                } else {
                    writer
                        .send_message(&hello)
                        .await
                        .map_err(|e| HandshakeError::frame(Phase::Hello, e))?;
                }
            }
            Ok((peer_hello, version?))
        })
        .await;
        let (peer_hello, version) = match outcome {
            Ok(o) => o,
            Err(e) => {
                // A server tells the client why it refuses its hello, in place of its own
                // hello; either side then closes with close_notify. A stream that failed or
                // timed out has nobody left to tell.
                if !matches!(
                    e,
                    HandshakeError::Closed(_)
                        | HandshakeError::Io { .. }
                        | HandshakeError::Timeout { .. }
                ) {
                    let refusal = match side {
                        Side::Server => HelloRefusal::for_error(&e),
                        Side::Client => None,
                    };
                    let _ = tokio::time::timeout(cfg.hello_timeout, async {
                        if let Some(refusal) = refusal {
                            let _ = writer.send_frame(&refusal.encode()).await;
                        }
                        let _ = writer.shutdown().await;
                    })
                    .await;
                }
                return Err(e);
            }
        };
        reader.set_max_len(cfg.max_frame_len);
        writer.set_max_len(peer_hello.max_frame_len);
        debug!(version, "handshake complete");
        Ok(Established {
            reader,
            writer,
            info: ConnectionInfo {
                side,
                local,
                peer,
                version,
                local_hello: hello,
                peer_hello,
                key_exchange,
            },
        })
    }
}

/// What goes with this party's hello.
#[derive(Clone, Copy)]
enum HelloWith<'a> {
    /// Nothing: the hello is written and flushed alone.
    Nothing,
    /// The client's early frames, in the same write.
    Early(&'a [u8]),
    /// Nothing yet: the server's hello is held in the writer, to leave with the
    /// connection's first write.
    Held,
}

/// Writes a refusal and closes, giving up silently if the peer does not take it in time:
/// the caller reports the reason for the refusal, not the fate of the courtesy message.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, message: &[u8], within: Duration) {
    let _ = tokio::time::timeout(within, async {
        let _ = io.write_all(message).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// The admission check a server runs on a client's hello (see [`Handshaker::accept_with`]).
pub type Admit<'a> = dyn Fn(&ConnectionInfo) -> Result<(), String> + Send + Sync + 'a;

/// The highest version both ranges contain.
pub fn negotiate(ours: (u16, u16), theirs: (u16, u16)) -> Result<u16, HandshakeError> {
    let high = ours.1.min(theirs.1);
    if high >= ours.0.max(theirs.0) {
        Ok(high)
    } else {
        Err(HandshakeError::NoCommonVersion { ours, theirs })
    }
}

async fn timed<T>(
    phase: Phase,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout { phase, after }),
    }
}

/// Reads one prelude message, asking the stream for exactly the bytes the decoder needs so
/// that nothing after the prelude is consumed.
async fn read_prelude<S, T>(
    io: &mut S,
    decode: fn(&[u8]) -> Result<Progress<T>, PreludeError>,
    max: usize,
) -> Result<T, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; prelude::MAX_REQUEST_LEN];
    let mut filled = 0;
    loop {
        match decode(&buf[..filled])? {
            Progress::Done(msg, _) => return Ok(msg),
            Progress::Need(need) => {
                let need = need.min(max);
                let n = io
                    .read(&mut buf[filled..need])
                    .await
                    .map_err(|e| HandshakeError::io(Phase::Prelude, e))?;
                if n == 0 {
                    return Err(HandshakeError::Closed(Phase::Prelude));
                }
                filled += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshaker() -> Handshaker {
        let id = Arc::new(Identity::generate().unwrap());
        Handshaker::new(id, HandshakeConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn certificate_mismatch_names_both_tubs() {
        let (alice, bob) = (handshaker(), handshaker());
        let impostor = Identity::generate().unwrap();
        // A listener that answers for Bob's TubId but holds another key.
        bob.hosted
            .write()
            .unwrap()
            .insert(bob.tubid(), tls::server_config(&impostor).unwrap());
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (c, s) = tokio::join!(alice.connect(a, bob.tubid()), bob.accept(b));
        match c {
            Err(HandshakeError::CertificateMismatch(m)) => {
                assert_eq!((m.expected, m.actual), (bob.tubid(), impostor.tubid()));
            }
            other => panic!("expected a certificate mismatch, got {other:?}"),
        }
        // The server learns of it from the client's alert.
        let s = s.unwrap_err();
        assert!(matches!(s, HandshakeError::Tls(_)), "{s}");
    }

    #[tokio::test]
    async fn hello_claiming_another_tub_is_refused() {
        let (alice, bob) = (handshaker(), handshaker());
        let liar = TubId::from_spki(b"somebody else");
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let target = bob.tubid();
        let client = async {
            a.write_all(&prelude::encode_request(&target))
                .await
                .unwrap();
            let mut answer = [0u8; prelude::ANSWER_LEN];
            a.read_exact(&mut answer).await.unwrap();
            let tls = TlsStream::client(a, alice.client_config.clone(), &target).unwrap();
            alice
                .finish(
                    tls,
                    Side::Client,
                    liar,
                    alice.hello(liar, 1),
                    None,
                    HelloWith::Nothing,
                )
                .await
        };
        let (_c, s) = tokio::join!(client, bob.accept(b));
        match s {
            Err(HandshakeError::ClaimMismatch { claimed, actual }) => {
                assert_eq!((claimed, actual), (liar, alice.tubid()));
            }
            other => panic!("expected a claim mismatch, got {other:?}"),
        }
    }

    #[test]
    fn hello_decoding_is_strict_but_extensible() {
        let hs = handshaker();
        let hello = hs.hello(hs.tubid(), 7);
        let mut bytes = postcard::to_allocvec(&hello).unwrap();
        assert_eq!(Hello::decode(&bytes).unwrap(), hello);
        bytes.extend_from_slice(b"a field from version 2");
        assert_eq!(Hello::decode(&bytes).unwrap(), hello);
        assert!(Hello::decode(&bytes[..5]).is_err());
        let tiny = Hello {
            max_frame_len: 10,
            ..hello.clone()
        };
        let e = Hello::decode(&postcard::to_allocvec(&tiny).unwrap()).unwrap_err();
        assert!(e.to_string().contains("frame limit"));
        let empty = Hello {
            min_version: 3,
            max_version: 2,
            ..hello
        };
        assert!(Hello::decode(&postcard::to_allocvec(&empty).unwrap()).is_err());
    }

    #[test]
    fn a_refusal_is_told_apart_from_a_hello() {
        // docs/handshake.md §6.1's example.
        let r = HelloRefusal::NotAdmitted("busy".into());
        assert_eq!(r.encode(), [0x00, 0x01, 0x04, b'b', b'u', b's', b'y']);
        assert_eq!(HelloRefusal::decode(&r.encode()), Some(r.clone()));
        // Later versions may append fields; an unknown kind is not understood.
        assert_eq!(
            HelloRefusal::decode(&[&r.encode()[..], &[9, 9]].concat()),
            Some(r)
        );
        assert_eq!(HelloRefusal::decode(&[0x00, 0x07, 0x00]), None);
        // A long reason is cut (at a character boundary) to fit the hello's limit.
        let long = HelloRefusal::Malformed("é".repeat(1000)).encode();
        assert!(long.len() <= MAX_HELLO_LEN as usize, "{}", long.len());
        assert!(matches!(
            HelloRefusal::decode(&long),
            Some(HelloRefusal::Malformed(s)) if s.len() == MAX_REFUSAL_TEXT
        ));
        // No hello starts with 00: version 0 does not exist.
        let hs = handshaker();
        let zero = Hello {
            min_version: 0,
            ..hs.hello(hs.tubid(), 1)
        };
        let bytes = postcard::to_allocvec(&zero).unwrap();
        assert_eq!(bytes[0], 0);
        let e = Hello::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("version 0"), "{e}");
    }

    #[test]
    fn hello_wire_bytes_match_the_spec() {
        // The worked example in docs/handshake.md.
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            tubid: TubId::from_bytes([0xab; 32]),
            incarnation: [0x11; 16],
            connection_seq: 1,
            max_frame_len: 1024 * 1024,
        };
        let mut want = vec![0x01, 0x01, 0x20];
        want.extend_from_slice(&[0xab; 32]);
        want.extend_from_slice(&[0x11; 16]);
        want.extend_from_slice(&[0x01, 0x80, 0x80, 0x40]);
        assert_eq!(postcard::to_allocvec(&hello).unwrap(), want);
        assert_eq!(want.len(), 55);
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate((1, 1), (1, 1)).unwrap(), 1);
        assert_eq!(negotiate((1, 4), (2, 3)).unwrap(), 3);
        assert_eq!(negotiate((3, 4), (1, 5)).unwrap(), 4);
        assert!(negotiate((1, 2), (3, 4)).is_err());
    }

    /// Frames behind the hello must mean the same whatever version is negotiated: messages
    /// of the lowest version offered only (handshake.md §6.2).
    #[test]
    fn early_frames_are_messages_of_the_lowest_version_offered() {
        use crate::message::Message;
        let frame = |m: &Message<'_>| crate::frame::encode_frame(m, MIN_FRAME_LIMIT).unwrap();
        let call = frame(&Message::Call {
            id: 1,
            target: 0,
            interface: "folio.root",
            method: "get_reference",
            args: &[],
            refs: vec![],
        });
        let timed = frame(&Message::TimedCall {
            id: 1,
            timeout_ms: 1000,
            target: 0,
            interface: "folio.root",
            method: "get_reference",
            args: &[],
            refs: vec![],
        });
        let with = |versions| {
            let id = Arc::new(Identity::generate().unwrap());
            let config = HandshakeConfig {
                versions,
                ..HandshakeConfig::default()
            };
            Handshaker::new(id, config).unwrap()
        };
        let (v1_2, v2) = (with((1, 2)), with((2, 2)));
        assert!(v1_2.may_send_early(&call));
        assert!(!v1_2.may_send_early(&timed));
        assert!(!v1_2.may_send_early(&[call.clone(), timed.clone()].concat()));
        assert!(v2.may_send_early(&timed));
        assert!(v2.may_send_early(&call));
        assert!(!v1_2.may_send_early(&call[..call.len() - 1]));
    }
}
