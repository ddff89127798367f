//! HTTPS reseeding: fetching `<server>/i2pseeds.su3` from I2P reseed servers and keeping the
//! RouterInfos of the files that verify ([`super::su3`]).
//!
//! A reseed server is treated as hostile: the TLS connection is checked against the web PKI
//! roots (`webpki-roots`) plus any roots the caller adds; the response is read through
//! hyper's HTTP/1 client (no hand-written HTTP) with its header buffer bounded
//! ([`MAX_HEADER_BUFFER`]) and its body bounded ([`MAX_RESPONSE`], checked against
//! `Content-Length` first and again while reading); connecting and the whole exchange each
//! have a timeout; redirects are not followed; and only a file that verifies against a
//! trusted signer is used. Servers are tried in random order, each at most once, until
//! [`Reseed::min_routers`] distinct RouterInfos are in hand or [`Reseed::max_servers`] were
//! tried. The request is the one I2P routers send (`GET /i2pseeds.su3`, `User-Agent:
//! Wget/1.11.4`, which the reseed servers expect: Java I2P, i2pd and emissary all send it).
//!
//! Reseeding, like in every I2P router, connects straight to the reseed servers from the
//! host's own IP address, after looking their names up through the system's resolver: the
//! servers (and the resolver) learn that this IP address runs an I2P router, nothing more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

use super::su3::{decode_reseed, RouterInfoFile, Su3Error, TrustedSigners, MAX_SU3_FILE};

/// The largest response body read (an su3 file is at most [`MAX_SU3_FILE`]).
pub const MAX_RESPONSE: usize = MAX_SU3_FILE;
/// hyper's read buffer, and so the largest response head, in bytes.
pub const MAX_HEADER_BUFFER: usize = 16 * 1024;
/// The User-Agent I2P routers send to reseed servers.
pub const USER_AGENT: &str = "Wget/1.11.4";

/// The public network's reseed servers: emissary 0.4's list, less four. Each one's su3 signer
/// must be among the bundled certificates ([`super::su3::BUNDLED_SIGNERS`]; this module's
/// tests hold the table of server to signer, from Java I2P's `Reseeder`), and its TLS
/// certificate must chain to the web PKI roots. Left out, as this crate cannot use them
/// until their certificates are added (there was no network to fetch them when this list
/// was made): `reseed.stormycloud.org` (signer `admin@stormycloud.org`),
/// `reseed.sahil.world` (`sahil@mail.i2p`) and `i2p.diyarciftci.xyz`
/// (`diyarciftci@protonmail.com`), whose signer certificates are not bundled, and
/// `i2pseed.creativecowpat.net:8443`, whose TLS certificate is self-signed (Java I2P ships
/// it; the web PKI roots do not hold it).
pub const DEFAULT_RESEED_SERVERS: &[&str] = &[
    "https://reseed-pl.i2pd.xyz/",
    "https://reseed-fr.i2pd.xyz/",
    "https://www2.mk16.de/",
    "https://reseed2.i2p.net/",
    "https://banana.incognet.io/",
    "https://reseed.diva.exchange/",
    "https://reseed.i2pgit.org/",
    "https://i2p.novg.net/",
    "https://reseed.onion.im/",
    "https://reseed.memcpy.io/",
];

/// How to reseed, and when.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reseed {
    /// Reseed servers (`https://host[:port]/[path/]`; `i2pseeds.su3` is appended).
    pub servers: Vec<String>,
    /// Whose su3 signatures are accepted.
    pub signers: TrustedSigners,
    /// Trust the web PKI roots (`webpki-roots`) for the servers' TLS certificates.
    pub web_pki_roots: bool,
    /// More TLS roots (DER), for servers with certificates of their own CA (tests).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Stop fetching once this many distinct RouterInfos are in hand.
    pub min_routers: usize,
    /// Reseed at start only when the saved netDb holds fewer RouterInfos than this.
    pub reseed_below: usize,
    /// The most servers tried in one reseed.
    pub max_servers: usize,
    /// Time allowed to open the TCP connection to one server.
    pub connect_timeout: Duration,
    /// Time allowed for one server, from connecting to the last byte.
    pub server_timeout: Duration,
}

impl Reseed {
    /// The public network's reseeding: [`DEFAULT_RESEED_SERVERS`], the bundled signers,
    /// the web PKI roots; 100 RouterInfos wanted, a reseed when fewer than 50 are known, at
    /// most 5 servers, 15 s to connect and 60 s per server.
    pub fn public() -> Reseed {
        let mut reseed = Reseed::new(
            DEFAULT_RESEED_SERVERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            TrustedSigners::bundled(),
        );
        reseed.web_pki_roots = true;
        reseed
    }

    /// Reseeding from `servers`, accepting su3 files signed by `signers`, with no TLS roots
    /// yet (set [`Reseed::web_pki_roots`] or [`Reseed::extra_roots`]) and
    /// [`Reseed::public`]'s bounds.
    pub fn new(servers: Vec<String>, signers: TrustedSigners) -> Reseed {
        Reseed {
            servers,
            signers,
            web_pki_roots: false,
            extra_roots: Vec::new(),
            min_routers: 100,
            reseed_below: 50,
            max_servers: 5,
            connect_timeout: Duration::from_secs(15),
            server_timeout: Duration::from_secs(60),
        }
    }

    /// The longest a reseed may take: every server tried, each to its timeout.
    pub fn max_duration(&self) -> Duration {
        self.server_timeout
            .saturating_mul(self.max_servers.min(self.servers.len()).max(1) as u32)
    }
}

/// Why one reseed server gave nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The server's URL is not `https://host[:port]/[path]`.
    #[error("not an https:// URL ({0})")]
    BadUrl(String),
    /// The TCP connection could not be made.
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (an untrusted certificate, most often).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The HTTP exchange failed (a malformed or over-long response head, a reset).
    #[error("HTTP: {0}")]
    Http(String),
    /// A status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A body over [`MAX_RESPONSE`].
    #[error("response over {MAX_RESPONSE} bytes")]
    TooLarge,
    /// The server took longer than allowed (connecting or in all).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The file does not verify or does not decode.
    #[error(transparent)]
    Su3(#[from] Su3Error),
    /// The file verifies but holds no RouterInfo.
    #[error("the reseed file holds no RouterInfo")]
    Empty,
}

/// Why a reseed gave no RouterInfo at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReseedError {
    /// No server to try.
    #[error("no reseed server configured")]
    NoServers,
    /// Every server tried failed (each with its reason; a server whose file held no
    /// RouterInfo failed with [`FetchError::Empty`]).
    #[error("reseeding failed: {}", .0.iter().map(|(s, e)| format!("{s}: {}", crate::error_chain(e))).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<(String, FetchError)>),
}

/// Reseeds: tries the servers in random order until enough distinct RouterInfos are in
/// hand (see the module documentation). Succeeds with whatever was gathered if at least one
/// server gave a good file with at least one RouterInfo, even if fewer than
/// [`Reseed::min_routers`]; never succeeds empty. Bounded by [`Reseed::max_duration`].
pub async fn reseed(opts: &Reseed) -> Result<Vec<RouterInfoFile>, ReseedError> {
    if opts.servers.is_empty() {
        return Err(ReseedError::NoServers);
    }
    let tls = Arc::new(client_config(opts));
    let mut order: Vec<&String> = opts.servers.iter().collect();
    shuffle(&mut order);
    let mut routers = BTreeMap::<String, Vec<u8>>::new();
    let mut failures = Vec::new();
    for server in order.into_iter().take(opts.max_servers.max(1)) {
        let fetched = tokio::time::timeout(opts.server_timeout, fetch(server, &tls, opts))
            .await
            .unwrap_or(Err(FetchError::Timeout(opts.server_timeout)));
        let verified = fetched
            .and_then(|bytes| Ok(decode_reseed(&bytes, &opts.signers)?))
            .and_then(|file| {
                if file.router_infos.is_empty() {
                    Err(FetchError::Empty)
                } else {
                    Ok(file)
                }
            });
        match verified {
            Ok(file) => {
                tracing::info!(
                    server = %server,
                    signer = %file.signer,
                    routers = file.router_infos.len(),
                    "I2P reseed file fetched and verified"
                );
                for ri in file.router_infos {
                    routers.entry(ri.name).or_insert(ri.bytes);
                }
                if routers.len() >= opts.min_routers {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(server = %server, "I2P reseed server failed: {}", crate::error_chain(&e));
                failures.push((server.clone(), e));
            }
        }
    }
    // At least one server was tried, and each either failed or added a RouterInfo.
    if routers.is_empty() {
        return Err(ReseedError::AllFailed(failures));
    }
    if routers.len() < opts.min_routers {
        tracing::warn!(
            routers = routers.len(),
            wanted = opts.min_routers,
            "I2P reseed: fewer RouterInfos than wanted"
        );
    }
    Ok(routers
        .into_iter()
        .map(|(name, bytes)| RouterInfoFile { name, bytes })
        .collect())
}

fn shuffle<T>(items: &mut [T]) {
    use rand::RngExt as _;
    let mut rng = rand::rng();
    for i in (1..items.len()).rev() {
        items.swap(i, rng.random_range(0..=i));
    }
}

fn client_config(opts: &Reseed) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if opts.web_pki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for der in &opts.extra_roots {
        if let Err(e) = roots.add(der.clone()) {
            tracing::warn!("an extra reseed TLS root is not usable: {e}");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Parses a reseed server's URL, `https://host[:port]/[path/]`, as (host, port, request
/// path ending in `i2pseeds.su3`): the one check of a server URL, used when fetching and
/// when a configuration names servers. Refused: another scheme, a query, user info, an
/// empty host or one that is no TLS server name (a DNS name or an IP address), and a port
/// that is not 1 to 65535.
pub fn target(server: &str) -> Result<(String, u16, String), FetchError> {
    let bad = || FetchError::BadUrl(server.to_string());
    let uri: hyper::Uri = server.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") || uri.query().is_some() {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?.as_str();
    if authority.contains('@') {
        return Err(bad());
    }
    // A port that is given must be a valid one: `http::Uri` reads `:99999` as no port.
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    let port = match (after_host.contains(':'), uri.port_u16()) {
        (false, _) => 443,
        (true, Some(port)) if port != 0 => port,
        (true, _) => return Err(bad()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if ServerName::try_from(host.as_str()).is_err() {
        return Err(bad());
    }
    let path = format!("{}/i2pseeds.su3", uri.path().trim_end_matches('/'));
    Ok((host, port, path))
}

/// One server: connect, TLS, `GET`, the body within [`MAX_RESPONSE`].
async fn fetch(
    server: &str,
    tls: &Arc<rustls::ClientConfig>,
    opts: &Reseed,
) -> Result<Vec<u8>, FetchError> {
    let (host, port, path) = target(server)?;
    // `target` checked that the host is a server name.
    let name = ServerName::try_from(host.clone()).map_err(|_| FetchError::BadUrl(server.into()))?;
    let tcp = tokio::time::timeout(
        opts.connect_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| FetchError::Timeout(opts.connect_timeout))?
    .map_err(FetchError::Connect)?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(FetchError::Tls)?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEADER_BUFFER)
        .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    // The connection's own task; aborted when this function returns, however it returns.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let authority = if port == 443 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RESPONSE as u64) {
        return Err(FetchError::TooLarge);
    }
    let mut body = response.into_body();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Http(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_RESPONSE {
                return Err(FetchError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    drop(driver);
    Ok(bytes)
}

#[derive(Debug)]
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the certificates of a PEM file (for [`Reseed::extra_roots`], or a server's chain).
pub fn certificates_from_pem(pem: &[u8]) -> std::io::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    if certs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no certificate in the PEM text",
        ));
    }
    Ok(certs)
}

/// A minimal HTTPS reseed server on 127.0.0.1, for tests and private networks: it answers
/// every request with one status and body, over TLS with the certificate chain and key the
/// caller gives (PEM; `transports/testdata/` has a test CA and a certificate for
/// `127.0.0.1` it issued). It reads at most 16 KiB of each request. Dropping it stops it.
#[derive(Debug)]
pub struct ReseedServer {
    url: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    _task: AbortOnDrop<()>,
}

impl ReseedServer {
    /// Starts serving `body` with `status` (200 for a reseed file) on a free port of
    /// 127.0.0.1, with the TLS certificate chain `cert_pem` and its PKCS#8 key `key_pem`.
    /// Must be called within a tokio runtime, which then runs it.
    pub async fn start(
        status: u16,
        body: Vec<u8>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> std::io::Result<ReseedServer> {
        use rustls::pki_types::pem::PemObject as _;
        let chain = certificates_from_pem(cert_pem)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("https://127.0.0.1:{}/", listener.local_addr()?.port());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        let reason = if status == 200 { "OK" } else { "Status" };
        let mut response =
            format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n", body.len())
                .into_bytes();
        response.extend_from_slice(&body);
        let response = Arc::new(response);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, response, counter) =
                    (acceptor.clone(), response.clone(), counter.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let serve = async {
                        let mut tls = acceptor.accept(tcp).await?;
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = tls.read(&mut buf).await?;
                            if n == 0 || head.len() + n > 16 * 1024 {
                                return Ok(());
                            }
                            head.extend_from_slice(&buf[..n]);
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tls.write_all(&response).await?;
                        tls.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(30), serve).await;
                });
            }
        });
        Ok(ReseedServer {
            url,
            requests,
            _task: AbortOnDrop(task),
        })
    }

    /// Its URL, `https://127.0.0.1:PORT/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many complete requests it answered.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i2p_embedded::su3::write_reseed;

    const KEY: &[u8] = include_bytes!("../../testdata/reseed-test-key.pem");
    const CERT: &[u8] = include_bytes!("../../testdata/test-reseed_at_folio.invalid.crt");
    const SIGNER: &str = "test-reseed@folio.invalid";
    const CA: &[u8] = include_bytes!("../../testdata/reseed-test-ca.crt");
    const SERVER_CERT: &[u8] = include_bytes!("../../testdata/reseed-server.crt");
    const SERVER_KEY: &[u8] = include_bytes!("../../testdata/reseed-server-key.pem");

    async fn serve(status: u16, body: Vec<u8>) -> ReseedServer {
        ReseedServer::start(status, body, SERVER_CERT, SERVER_KEY)
            .await
            .unwrap()
    }

    fn su3(first: usize, n: usize) -> Vec<u8> {
        let files: Vec<_> = (first..first + n)
            .map(|i| (format!("routerInfo-r{i}.dat"), vec![i as u8; 500]))
            .collect();
        write_reseed(&files, SIGNER, KEY, "1").unwrap()
    }

    fn options(servers: &[&ReseedServer]) -> Reseed {
        let mut signers = TrustedSigners::none();
        signers.add_pem(SIGNER, CERT).unwrap();
        Reseed {
            servers: servers.iter().map(|s| s.url().to_string()).collect(),
            signers,
            web_pki_roots: false,
            extra_roots: certificates_from_pem(CA).unwrap(),
            min_routers: 5,
            reseed_below: 5,
            max_servers: 10,
            connect_timeout: Duration::from_secs(5),
            server_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn urls_are_https_only() {
        assert_eq!(
            target("https://reseed.example/").unwrap(),
            ("reseed.example".into(), 443, "/i2pseeds.su3".into())
        );
        assert_eq!(
            target("https://[::1]:8443/seed").unwrap(),
            ("::1".into(), 8443, "/seed/i2pseeds.su3".into())
        );
        assert_eq!(target("https://x:65535").unwrap().1, 65535);
        for bad in [
            "http://x/",
            "x",
            "https:///",
            "https://x/?q=1",
            "",
            "https://x:99999/",
            "https://x:0/",
            "https://x:/",
            "https://x:443a/",
            "https://user@x/",
            "https://[::1]:70000/",
            "https://a b/",
            "https://x/a b/",
        ] {
            assert!(matches!(target(bad), Err(FetchError::BadUrl(_))), "{bad}");
        }
    }

    /// Every default server's su3 signer is bundled (the table: Java I2P's `Reseeder`), so no
    /// default server is one whose files this crate could never verify.
    #[test]
    fn every_default_server_has_its_signer_bundled() {
        const SIGNER_OF: &[(&str, &str)] = &[
            ("reseed-pl.i2pd.xyz", "r4sas-reseed@mail.i2p"),
            ("reseed-fr.i2pd.xyz", "r4sas-reseed@mail.i2p"),
            ("www2.mk16.de", "i2p-reseed@mk16.de"),
            ("reseed2.i2p.net", "echelon3@mail.i2p"),
            ("banana.incognet.io", "rambler@mail.i2p"),
            ("reseed.diva.exchange", "reseed@diva.exchange"),
            ("reseed.i2pgit.org", "hankhill19580@gmail.com"),
            ("i2p.novg.net", "igor@novg.net"),
            ("reseed.onion.im", "lazygravy@mail.i2p"),
            ("reseed.memcpy.io", "hottuna@mail.i2p"),
        ];
        let bundled = TrustedSigners::bundled();
        for server in DEFAULT_RESEED_SERVERS {
            let (host, port, path) = target(server).unwrap();
            assert_eq!((port, path.as_str()), (443, "/i2pseeds.su3"), "{server}");
            let (_, signer) = SIGNER_OF
                .iter()
                .find(|(h, _)| *h == host)
                .unwrap_or_else(|| panic!("{server}: no known signer in the table"));
            assert!(
                bundled.signers().any(|s| s == *signer),
                "{server}: its signer {signer} is not bundled"
            );
        }
    }

    #[tokio::test]
    async fn empty_files_are_no_reseed() {
        let empty = serve(200, su3(0, 0)).await;
        let also = serve(200, su3(0, 0)).await;
        let Err(ReseedError::AllFailed(failures)) = reseed(&options(&[&empty, &also])).await else {
            panic!("two empty files are no reseed")
        };
        assert_eq!(failures.len(), 2);
        assert!(failures.iter().all(|(_, e)| matches!(e, FetchError::Empty)));
        // An empty file and a good one: the good one is used.
        let good = serve(200, su3(0, 2)).await;
        assert_eq!(reseed(&options(&[&empty, &good])).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn gathers_from_several_servers_until_enough() {
        let a = serve(200, su3(0, 3)).await;
        let b = serve(200, su3(2, 3)).await;
        let got = reseed(&options(&[&a, &b])).await.unwrap();
        // 3 + 3 with one shared: 5 distinct, which is enough: both were asked.
        assert_eq!(got.len(), 5);
        assert_eq!((a.requests(), b.requests()), (1, 1));
        // Enough from the first server: the second is not asked.
        let c = serve(200, su3(0, 6)).await;
        let d = serve(200, su3(0, 6)).await;
        assert_eq!(reseed(&options(&[&c, &d])).await.unwrap().len(), 6);
        assert_eq!(c.requests() + d.requests(), 1);
    }

    #[tokio::test]
    async fn hostile_servers_give_nothing() {
        let not_found = serve(404, b"no".to_vec()).await;
        let forged = serve(200, {
            let mut f = su3(0, 3);
            let n = f.len();
            f[n - 1] ^= 1;
            f
        })
        .await;
        let huge = serve(200, vec![0; MAX_RESPONSE + 1]).await;
        let junk = serve(200, b"<html><body>Not a reseed file, but a page of the same length as a header or more</body></html>".to_vec()).await;
        let good = serve(200, su3(0, 2)).await;
        let mut opts = options(&[&not_found, &forged, &huge, &junk]);
        let Err(ReseedError::AllFailed(failures)) = reseed(&opts).await else {
            panic!("every server is bad")
        };
        assert_eq!(failures.len(), 4);
        for (server, e) in &failures {
            let ok = match e {
                FetchError::Status(404) => server == not_found.url(),
                FetchError::Su3(Su3Error::BadSignature(_)) => server == forged.url(),
                FetchError::TooLarge => server == huge.url(),
                FetchError::Su3(Su3Error::BadMagic) => server == junk.url(),
                _ => false,
            };
            assert!(ok, "{server}: {e}");
        }
        // A server whose certificate no trusted root issued.
        opts.servers = vec![good.url().to_string()];
        let roots = std::mem::take(&mut opts.extra_roots);
        let Err(ReseedError::AllFailed(failures)) = reseed(&opts).await else {
            panic!("untrusted TLS")
        };
        assert!(
            matches!(failures[0].1, FetchError::Tls(_)),
            "{}",
            failures[0].1
        );
        assert_eq!(good.requests(), 0);
        // Fewer than wanted is still a reseed.
        opts.extra_roots = roots;
        assert_eq!(reseed(&opts).await.unwrap().len(), 2);
        // Nothing listening: a connection error, bounded.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        opts.servers = vec![format!("https://127.0.0.1:{port}/")];
        let Err(ReseedError::AllFailed(failures)) = reseed(&opts).await else {
            panic!("nothing listens")
        };
        assert!(matches!(failures[0].1, FetchError::Connect(_)));
        opts.servers.clear();
        assert!(matches!(reseed(&opts).await, Err(ReseedError::NoServers)));
    }

    #[tokio::test]
    async fn a_server_that_stalls_times_out() {
        // Accepts TCP and never answers the TLS handshake.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/",
            listener.local_addr().unwrap().port()
        );
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut opts = options(&[]);
        opts.servers = vec![url];
        opts.server_timeout = Duration::from_millis(500);
        let Err(ReseedError::AllFailed(failures)) = reseed(&opts).await else {
            panic!("a stalled server")
        };
        assert!(matches!(failures[0].1, FetchError::Timeout(_)));
    }
}
