//! Which keys a Tub may have (docs/handshake.md §2 and §4): peers whose key cannot sign with
//! a listed scheme, or whose certificate carries a key of another type or in another
//! encoding, are refused with an error that says so, on both sides.

use std::sync::Arc;
use std::time::Duration;

use folio_rpc::frame::{FrameReader, FrameWriter};
use folio_rpc::prelude;
use folio_rpc::{HandshakeConfig, HandshakeError, Handshaker, Hello, Identity, TlsStream, TubId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{AlertDescription, DigitallySignedStruct, SignatureAlgorithm, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// Accepts any server: these tests look at the server's verdict on the client.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        folio_rpc::tls::SIGNATURE_SCHEMES.to_vec()
    }
}

/// A key that claims to sign with `scheme` (its signatures are never checked: the server
/// refuses the certificate, or never gets one, before it looks at a signature).
#[derive(Debug)]
struct ClaimedKey(SignatureScheme, SignatureAlgorithm);

#[derive(Debug)]
struct ClaimedSigner(SignatureScheme);

impl SigningKey for ClaimedKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&self.0)
            .then(|| Box::new(ClaimedSigner(self.0)) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.1
    }
}

impl Signer for ClaimedSigner {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01])
    }

    fn scheme(&self) -> SignatureScheme {
        self.0
    }
}

/// Offers its one certificate whatever the server asks: rustls sends it only if the key can
/// sign with a scheme the server listed.
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Always {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn client_config(cert: Vec<u8>, key: Arc<dyn SigningKey>) -> Arc<rustls::ClientConfig> {
    let certified = Arc::new(CertifiedKey::new(vec![CertificateDer::from(cert)], key));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_client_cert_resolver(Arc::new(Always(certified)));
    cfg.alpn_protocols = vec![folio_rpc::tls::ALPN.to_vec()];
    Arc::new(cfg)
}

/// One DER element: tag, length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(contents);
    out
}

/// Splits a DER element off the front of `input`: (the whole element, its contents, rest).
fn split_der(input: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (len, head) = match input[1] {
        n @ 0..=0x7f => (n as usize, 2),
        0x81 => (input[2] as usize, 3),
        0x82 => (((input[2] as usize) << 8) | input[3] as usize, 4),
        other => panic!("length form {other:02x}"),
    };
    (
        &input[..head + len],
        &input[head..head + len],
        &input[head + len..],
    )
}

/// `cert` with its SubjectPublicKeyInfo (the seventh field of the TBSCertificate) replaced
/// by `spki`. Its signature no longer matches, which Folio never checks.
fn with_spki(cert: &[u8], spki: &[u8]) -> Vec<u8> {
    let (_, cert_body, _) = split_der(cert);
    let (_, tbs_body, after_tbs) = split_der(cert_body);
    let mut fields = Vec::new();
    let mut rest = tbs_body;
    while !rest.is_empty() {
        let (whole, _, more) = split_der(rest);
        fields.push(whole.to_vec());
        rest = more;
    }
    assert_eq!(fields[6][0], 0x30, "the SPKI is the seventh field");
    fields[6] = spki.to_vec();
    let tbs = der(0x30, &fields.concat());
    der(0x30, &[&tbs[..], after_tbs].concat())
}

const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

fn p521_spki() -> Vec<u8> {
    let alg = [EC_PUBLIC_KEY, &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]].concat();
    let mut point = vec![0x00, 0x04];
    point.extend_from_slice(&[0x5a; 132]);
    der(0x30, &[der(0x30, &alg), der(0x03, &point)].concat())
}

fn ed448_spki() -> Vec<u8> {
    let mut key = vec![0x00];
    key.extend_from_slice(&[0x5a; 57]);
    der(
        0x30,
        &[der(0x30, &[0x06, 0x03, 0x2b, 0x65, 0x71]), der(0x03, &key)].concat(),
    )
}

/// What each side of one handshake came to: the server's result, and the first error the
/// client met (completing TLS, or reading after it: a TLS 1.3 client has finished its
/// handshake before the server has looked at its certificate).
async fn handshake_with(
    server: &Handshaker,
    config: Arc<rustls::ClientConfig>,
    hello: Option<Hello>,
) -> (
    Result<folio_rpc::Established<DuplexStream>, HandshakeError>,
    Option<rustls::Error>,
) {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let target = server.tubid();
    let client = async move {
        a.write_all(&prelude::encode_request(&target))
            .await
            .unwrap();
        let mut answer = [0u8; prelude::ANSWER_LEN];
        a.read_exact(&mut answer).await.unwrap();
        let mut tls = TlsStream::client(a, config, &target).unwrap();
        let tls_error = |e: std::io::Error| {
            folio_rpc::tls::tls_error(&e)
                .cloned()
                .unwrap_or_else(|| panic!("not a TLS error: {e}"))
        };
        if let Err(e) = tls.handshake(1 << 16).await {
            return Some(tls_error(e));
        }
        let (r, w) = tokio::io::split(tls);
        let (mut r, mut w) = (FrameReader::new(r, 1024), FrameWriter::new(w, 1024));
        if let Some(hello) = hello {
            w.send_message(&hello).await.unwrap();
        }
        match r.next_frame().await {
            Ok(_) => None,
            Err(folio_rpc::frame::FrameError::Io(e)) => Some(tls_error(e)),
            Err(e) => panic!("{e}"),
        }
    };
    let (s, c) = tokio::join!(server.accept(b), client);
    (s, c)
}

fn server() -> Handshaker {
    Handshaker::new(
        Arc::new(Identity::generate().unwrap()),
        HandshakeConfig::default(),
    )
    .unwrap()
}

fn base_cert() -> Vec<u8> {
    Identity::generate().unwrap().certificate().to_vec()
}

/// A key that cannot sign with any listed scheme (P-521, Ed448) has no certificate to send:
/// the server says so, and the client gets `certificate_required`.
#[tokio::test]
async fn keys_without_a_listed_scheme_get_certificate_required() {
    let server = server();
    for (spki, scheme, alg) in [
        (
            p521_spki(),
            SignatureScheme::ECDSA_NISTP521_SHA512,
            SignatureAlgorithm::ECDSA,
        ),
        (
            ed448_spki(),
            SignatureScheme::ED448,
            SignatureAlgorithm::ED448,
        ),
    ] {
        let cfg = client_config(
            with_spki(&base_cert(), &spki),
            Arc::new(ClaimedKey(scheme, alg)),
        );
        let (s, c) = timeout(WAIT, handshake_with(&server, cfg, None))
            .await
            .unwrap();
        let s = s.unwrap_err();
        assert!(
            matches!(s, HandshakeError::NoCertificate),
            "{scheme:?}: {s}"
        );
        assert!(s.to_string().contains("Ed25519"), "{s}");
        assert_eq!(
            c,
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            )),
            "{scheme:?}"
        );
    }
}

/// A certificate whose key is of another type, presented anyway (a peer that ignores the
/// listed schemes), is refused with `unsupported_certificate`.
#[tokio::test]
async fn a_key_of_another_type_gets_unsupported_certificate() {
    let server = server();
    for spki in [p521_spki(), ed448_spki()] {
        let cfg = client_config(
            with_spki(&base_cert(), &spki),
            Arc::new(ClaimedKey(
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureAlgorithm::ECDSA,
            )),
        );
        let (s, c) = timeout(WAIT, handshake_with(&server, cfg, None))
            .await
            .unwrap();
        let s = s.unwrap_err();
        assert!(matches!(s, HandshakeError::UnsupportedKey), "{s}");
        assert_eq!(
            c,
            Some(rustls::Error::AlertReceived(
                AlertDescription::UnsupportedCertificate
            ))
        );
    }
}

fn p256() -> (rcgen::KeyPair, Vec<u8>, Arc<dyn SigningKey>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .der()
        .to_vec();
    let signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .unwrap();
    (key, cert, signer)
}

/// A P-256 key is accepted, and its TubId is the hash of the SubjectPublicKeyInfo exactly
/// as the certificate carries it. The same key with its point compressed (another encoding,
/// which would be another TubId) is refused with `unsupported_certificate`.
#[tokio::test]
async fn an_ec_key_is_hashed_as_carried_and_only_uncompressed() {
    let server = server();
    let (key, cert, signer) = p256();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    assert!(
        cert.windows(spki.len()).any(|w| w == spki),
        "the certificate carries these bytes"
    );
    let tubid = TubId::from_spki(&spki);
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        tubid,
        incarnation: [1; 16],
        connection_seq: 1,
        max_frame_len: 1 << 20,
    };
    let (s, c) = timeout(
        WAIT,
        handshake_with(
            &server,
            client_config(cert.clone(), signer.clone()),
            Some(hello),
        ),
    )
    .await
    .unwrap();
    assert_eq!(c, None, "the client reads the server's hello");
    assert_eq!(s.expect("a P-256 key is accepted").info.peer, tubid);

    // The same key, compressed: 02 or 03 (the parity of Y), then X.
    let raw = rcgen::PublicKeyData::der_bytes(&key);
    assert_eq!((raw.len(), raw[0]), (65, 4));
    let mut point = vec![0x00, 2 + (raw[64] & 1)];
    point.extend_from_slice(&raw[1..33]);
    let alg = [
        EC_PUBLIC_KEY,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
    ]
    .concat();
    let compressed = der(0x30, &[der(0x30, &alg), der(0x03, &point)].concat());
    let (s, c) = timeout(
        WAIT,
        handshake_with(
            &server,
            client_config(with_spki(&cert, &compressed), signer),
            None,
        ),
    )
    .await
    .unwrap();
    let s = s.unwrap_err();
    assert!(matches!(s, HandshakeError::UnsupportedKey), "{s}");
    assert_eq!(
        c,
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnsupportedCertificate
        ))
    );
}
