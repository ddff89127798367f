//! In-memory TLS over any byte stream, with the role given explicitly.
//!
//! rustls is a sans-I/O state machine (`read_tls` / `process_new_packets` / `write_tls`);
//! [`TlsStream`] drives it over any `AsyncRead + AsyncWrite`. The TLS role comes only from the
//! [`Side`] the caller passes: nothing here looks at the stream to guess it. That is the rule
//! that makes Tahoe-LAFS #2861 (an I2P listener speaking TLS as a client on the outbound
//! socket to its SAM bridge) impossible by construction.
//!
//! Authentication: TLS 1.3 only, both sides present a self-signed certificate, and a
//! certificate is accepted when the hash of its key is the TubId expected (client) or
//! whatever TubId it is (server, which learns the client's). The self-signature itself is not
//! checked: possession of the key is proven by the TLS CertificateVerify signature, which is.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::identity::Identity;
use crate::tubid::TubId;

/// The ALPN protocol name both sides must agree on.
pub const ALPN: &[u8] = b"folio/1";

/// Which TLS role this party plays. Given by the caller, never inferred from the socket:
/// the party that dialed a FURL is the client, the party that accepted is the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Dialed the connection (sends the prelude request and the TLS ClientHello).
    Client,
    /// Accepted the connection (answers the prelude, acts as TLS server).
    Server,
}

/// A certificate did not carry the key the connection expected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("expected Tub {expected}, but the peer's certificate key is Tub {actual}")]
pub struct TubIdMismatch {
    /// The TubId from the FURL.
    pub expected: TubId,
    /// The TubId of the key the peer presented.
    pub actual: TubId,
}

pub(crate) static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| Arc::new(provider()));

/// The cryptography of every Folio TLS connection: the TLS 1.3 suites and key exchange
/// groups of docs/handshake.md §4, in that order.
///
/// *ring* does everything but one thing: with the `post-quantum` feature (on by default),
/// the hybrid X25519MLKEM768 group comes from aws-lc-rs and is offered first, so traffic
/// recorded today stays private against a future quantum computer as long as either half
/// holds. rustls sends an X25519 key share beside the hybrid one (the hybrid's classical half),
/// so a peer without ML-KEM answers at once, with no HelloRetryRequest and no extra round
/// trip. The record layer stays *ring*'s: on this project's machines its AES-GCM moved bulk
/// data about a third faster than aws-lc-rs's (docs/performance.md).
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as suite, default_provider, kx_group as kx};
    CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            #[cfg(feature = "post-quantum")]
            rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
            kx::X25519,
            kx::SECP256R1,
            kx::SECP384R1,
        ],
        ..default_provider()
    }
}

/// The key exchange groups this build offers, in order of preference.
pub fn key_exchange_groups() -> Vec<rustls::NamedGroup> {
    PROVIDER.kx_groups.iter().map(|g| g.name()).collect()
}

fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    &PROVIDER.signature_verification_algorithms
}

/// The signature schemes a Folio party lists in its ClientHello and CertificateRequest
/// (`signature_algorithms`), in this order (docs/handshake.md §4.2). The first six are those a
/// peer may sign its CertificateVerify with, one per key type Folio accepts
/// ([`crate::tubid::check_spki`]); the three `rsa_pkcs1` ones are listed only because TLS 1.3
/// lets them describe signatures inside certificates, which Folio never checks: a
/// CertificateVerify that uses them is refused, as TLS 1.3 requires. Written out rather than
/// taken from the crypto provider, so that the wire does not change with it.
pub const SIGNATURE_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// The name under which a client connection is made. SNI is disabled, so it never leaves
/// this process: it only carries the expected TubId to the verifier.
pub(crate) fn server_name_for(tubid: &TubId) -> ServerName<'static> {
    ServerName::try_from(format!("{tubid}.tub.folio.invalid"))
        .expect("a base32 TubId is a valid DNS label")
}

fn expected_from_name(name: &ServerName<'_>) -> Option<TubId> {
    match name {
        ServerName::DnsName(d) => d.as_ref().split('.').next()?.parse().ok(),
        _ => None,
    }
}

fn peer_tubid(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<TubId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "a Folio peer presents exactly one certificate".into(),
        ));
    }
    TubId::from_certificate(end_entity).map_err(|e| match e {
        // The alert `unsupported_certificate` says what is wrong; rustls sends it for this
        // error (which Folio has no other use for: it checks no key usage).
        crate::tubid::TubIdError::UnsupportedKey(why) => {
            debug!(why, "the peer's certificate key is refused");
            rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose)
        }
        _ => rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
    })
}

/// Client side: accepts the server only if its key hashes to the TubId being dialed.
#[derive(Debug)]
struct PinnedServerVerifier;

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = expected_from_name(server_name)
            .ok_or_else(|| rustls::Error::General("no expected TubId".into()))?;
        let actual = peer_tubid(end_entity, intermediates)?;
        if actual != expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(TubIdMismatch {
                    expected,
                    actual,
                }))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIGNATURE_SCHEMES.to_vec()
    }
}

/// Server side: requires a client certificate and accepts any well-formed one; the
/// client's TubId is read from it after the handshake.
#[derive(Debug)]
struct AnyTubClientVerifier;

impl ClientCertVerifier for AnyTubClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        peer_tubid(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIGNATURE_SCHEMES.to_vec()
    }
}

/// The TLS client configuration for an identity (shared by every dial it makes).
pub fn client_config(identity: &Identity) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    client_config_with(PROVIDER.clone(), identity)
}

fn client_config_with(
    provider: Arc<CryptoProvider>,
    identity: &Identity,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier))
        .with_client_auth_cert(
            vec![identity.certificate().clone()],
            identity.private_key_der(),
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The TLS server configuration for an identity.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    server_config_with(PROVIDER.clone(), identity)
}

fn server_config_with(
    provider: Arc<CryptoProvider>,
    identity: &Identity,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyTubClientVerifier))
        .with_single_cert(
            vec![identity.certificate().clone()],
            identity.private_key_der(),
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// A TLS session driven over any byte stream.
#[derive(Debug)]
pub struct TlsStream<S> {
    io: S,
    conn: rustls::Connection,
    side: Side,
    /// TLS bytes read while the handshake was still running.
    handshake_bytes: usize,
    close_notify_sent: bool,
    /// Bytes that go on the stream ahead of any TLS record (the server's prelude answer).
    /// rustls's records are appended here and leave with them.
    raw_out: Vec<u8>,
    /// `raw_out` holds only queued raw bytes, which wait for TLS records to go with.
    raw_out_waits: bool,
}

/// Adapts a polled `AsyncRead` to `std::io::Read` for `read_tls`.
struct SyncReader<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncReader<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Adapts a polled `AsyncWrite` to `std::io::Write` for `write_tls`.
struct SyncWriter<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncWrite + Unpin> Write for SyncWriter<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Recovers the rustls error that an I/O error from [`TlsStream`] wraps, if any.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Starts a client session that expects the server's key to hash to `expected`.
    pub fn client(
        io: S,
        config: Arc<rustls::ClientConfig>,
        expected: &TubId,
    ) -> Result<Self, rustls::Error> {
        let conn = rustls::ClientConnection::new(config, server_name_for(expected))?;
        Ok(Self::with_connection(io, conn.into(), Side::Client))
    }

    /// Starts a server session.
    pub fn server(io: S, config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        let conn = rustls::ServerConnection::new(config)?;
        Ok(Self::with_connection(io, conn.into(), Side::Server))
    }

    fn with_connection(io: S, conn: rustls::Connection, side: Side) -> Self {
        TlsStream {
            io,
            conn,
            side,
            handshake_bytes: 0,
            close_notify_sent: false,
            raw_out: Vec::new(),
            raw_out_waits: false,
        }
    }

    /// The role this party plays.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The rustls session (for the peer certificate, ALPN, cipher suite).
    pub fn connection(&self) -> &rustls::Connection {
        &self.conn
    }

    /// The TubId of the peer's certificate, once the handshake has completed.
    pub fn peer_tubid(&self) -> Option<TubId> {
        let certs = self.conn.peer_certificates()?;
        TubId::from_certificate(certs.first()?).ok()
    }

    /// The underlying byte stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying byte stream, for writing the plaintext prelude.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Moves the TLS bytes rustls has ready (the ClientHello) into `out`, so they can leave
    /// in the same write as the prelude.
    pub(crate) fn take_pending_tls(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Queues bytes to be written on the stream, unencrypted, with the next TLS records
    /// (which they precede). The server's prelude answer goes this way, so that it leaves
    /// with the ServerHello in one write and one TCP segment instead of a write of its own.
    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        self.raw_out.extend_from_slice(bytes);
        self.raw_out_waits = true;
    }

    /// Encrypted bytes rustls has produced but not yet written (a ClientHello, for example).
    /// Writes them to the stream without flushing.
    pub(crate) fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() || (!self.raw_out.is_empty() && !self.raw_out_waits) {
            match self.write_io(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn read_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut reader = SyncReader {
            io: &mut self.io,
            cx,
        };
        let n = match self.conn.read_tls(&mut reader) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if self.conn.is_handshaking() {
            self.handshake_bytes += n;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Try to tell the peer why (rustls queued an alert), then report.
            let _ = self.write_io(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }

    fn write_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if !self.raw_out.is_empty() {
            return self.write_raw_out(cx);
        }
        let mut writer = SyncWriter {
            io: &mut self.io,
            cx,
        };
        match self.conn.write_tls(&mut writer) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Writes the queued raw bytes with whatever TLS records rustls has ready behind them.
    fn write_raw_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while self.conn.wants_write() {
            // Writing into a `Vec` cannot fail.
            self.conn.write_tls(&mut self.raw_out)?;
            self.raw_out_waits = false;
        }
        let n = match Pin::new(&mut self.io).poll_write(cx, &self.raw_out) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if n == self.raw_out.len() {
            // Only the handshake uses this buffer: do not keep its capacity for the
            // connection's life.
            self.raw_out = Vec::new();
        } else {
            self.raw_out.drain(..n);
        }
        Poll::Ready(Ok(n))
    }

    /// Runs the TLS handshake to completion, reading at most `max_bytes` from the peer.
    /// (Reading or writing also completes it; this form bounds it and reports errors early.)
    pub async fn handshake(&mut self, max_bytes: usize) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx, max_bytes, true)).await
    }

    /// Like [`TlsStream::handshake`], but leaves the last flight (the client's Finished)
    /// queued: the caller's first write sends it, in the same syscall and TCP segment as that
    /// write's records. The caller must write (or flush) at once, or the peer waits.
    pub(crate) async fn handshake_holding_last_flight(
        &mut self,
        max_bytes: usize,
    ) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx, max_bytes, false)).await
    }

    /// Drives the TLS handshake to completion, reading at most `max_bytes` from the peer;
    /// `send_last_flight` says whether to write what completing it left queued.
    pub(crate) fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        send_last_flight: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.is_handshaking() {
                if !send_last_flight {
                    return Poll::Ready(Ok(()));
                }
                // Flush the last flight (the client's Finished) before reporting success.
                return match self.poll_write_pending(cx) {
                    Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_flush(cx),
                    other => other,
                };
            }
            if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
                return Poll::Ready(Err(e));
            }
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.conn.wants_read() {
                // Output is pending on a slow stream; poll_write_pending registered the waker.
                return Poll::Pending;
            }
            match self.read_io(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    )))
                }
                Poll::Ready(Ok(_)) => {
                    if self.handshake_bytes > max_bytes {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            HandshakeTooLarge(max_bytes),
                        )));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if self.raw_out_waits => {
                    // Raw bytes wait for records only while the peer's input is at hand. A
                    // client that waits for the prelude answer before its ClientHello (which
                    // the spec forbids, but costs nothing to tolerate) gets it now.
                    self.raw_out_waits = false;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The peer sent more handshake bytes than allowed.
#[derive(Debug, thiserror::Error)]
#[error("the TLS handshake exceeded {0} bytes")]
pub(crate) struct HandshakeTooLarge(pub(crate) usize);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Reading never writes, not even what rustls queued in answer to what it read (a
            // KeyUpdate of its own, which TLS 1.3 lets wait for our next record): a stream
            // split between a reader task and a writer task keeps one waker for write
            // readiness, and a write attempted here with the reader's waker would take that
            // slot from the writer. When the transport is full, the writer would then never
            // be woken to finish, and the connection would stall for good.
            match this.read_io(cx) {
                // End of the byte stream: the reader now reports a clean close (close_notify
                // seen) or UnexpectedEof (truncation), so go round once more.
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Seals records straight from the pieces (rustls copies each byte once, into the
    /// record it is sealed in), so the connection's frames and the large payloads kept
    /// beside them need not be gathered into one buffer first. (`poll_write` is this with
    /// one piece.)
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let empty = bufs.iter().all(|b| b.is_empty());
        loop {
            // rustls accepts plaintext up to its buffer limit and encrypts it at once.
            let n = this.conn.writer().write_vectored(bufs)?;
            let blocked = this.poll_write_pending(cx);
            match (n, blocked) {
                (_, Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                (0, Poll::Pending) => return Poll::Pending,
                (0, Poll::Ready(Ok(()))) if !empty => continue,
                (n, _) => return Poll::Ready(Ok(n)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        match this.poll_write_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            this.conn.send_close_notify();
            this.close_notify_sent = true;
        }
        match this.poll_write_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::{HandshakeKind, NamedGroup};

    /// Runs a handshake between two in-memory connections; returns the group each saw.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        server_tubid: &TubId,
    ) -> [(Option<NamedGroup>, Option<HandshakeKind>); 2] {
        let mut c = rustls::ClientConnection::new(client, server_name_for(server_tubid)).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "no handshake");
        let seen = |g: Option<&'static dyn rustls::crypto::SupportedKxGroup>| g.map(|g| g.name());
        [
            (seen(c.negotiated_key_exchange_group()), c.handshake_kind()),
            (seen(s.negotiated_key_exchange_group()), s.handshake_kind()),
        ]
    }

    /// A peer built without ML-KEM, as an older Folio (or another implementation) is.
    fn classical_only() -> Arc<CryptoProvider> {
        use rustls::crypto::ring::{default_provider, kx_group};
        Arc::new(CryptoProvider {
            kx_groups: vec![kx_group::X25519],
            ..default_provider()
        })
    }

    #[cfg(feature = "post-quantum")]
    #[test]
    fn two_folio_parties_agree_on_the_hybrid_group() {
        assert_eq!(key_exchange_groups()[0], NamedGroup::X25519MLKEM768);
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let full = Some(HandshakeKind::Full);
        let pq = Some(NamedGroup::X25519MLKEM768);
        let seen = handshake(
            client_config(&a).unwrap(),
            server_config(&b).unwrap(),
            &b.tubid(),
        );
        assert_eq!(seen, [(pq, full), (pq, full)]);
    }

    #[test]
    fn a_peer_with_x25519_only_connects_without_a_retry() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let x25519 = Some(NamedGroup::X25519);
        // Full, not FullWithHelloRetryRequest: the X25519 share went beside the hybrid one,
        // so meeting an older peer costs no round trip.
        let full = Some(HandshakeKind::Full);
        let old = classical_only();
        let seen = handshake(
            client_config_with(old.clone(), &a).unwrap(),
            server_config(&b).unwrap(),
            &b.tubid(),
        );
        assert_eq!(seen, [(x25519, full), (x25519, full)], "old client");
        let seen = handshake(
            client_config(&a).unwrap(),
            server_config_with(old, &b).unwrap(),
            &b.tubid(),
        );
        assert_eq!(seen, [(x25519, full), (x25519, full)], "old server");
    }

    #[test]
    fn every_listed_scheme_can_be_verified() {
        for scheme in SIGNATURE_SCHEMES {
            assert!(
                algorithms().supported_schemes().contains(scheme),
                "{scheme:?}"
            );
        }
    }
}
