//! What the fuzz targets that drive a node service as a server share (`storage_server`,
//! `introducer_server`, and the local-file targets that open a storage directory).
//!
//! - fixed throwaway identities (the keys of `seeds/identity_pem/`), so runs are repeatable;
//! - a current-thread runtime with paused time, and [`bounded`] awaits: a hang is a crash;
//! - [`MemConnector`]: a client Tub dials the server Tub over `tokio::io::duplex`, directly
//!   or through a TLS-terminating proxy that records the frames the client sends (how the
//!   seeds of the frame modes are made from real traffic);
//! - [`RawClient`]: a real client handshake, after which the fuzz input is sent as frame
//!   payloads, split at [`SEP`];
//! - [`Input`] and [`Seed`]: a forgiving reader of operation sequences (any bytes are a
//!   sequence: missing bytes read as zeros) and its writer, for hand-made seeds;
//! - [`scratch_dir`]: a fresh directory per run, on tmpfs when there is one.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use folio_rpc::connector::ConnectFuture;
use folio_rpc::{
    BoxStream, Connector, Established, HandshakeConfig, Handshaker, Hint, Identity, Tub,
};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

/// Separates frame payloads in the frame modes. `0xf5` never occurs in UTF-8.
pub const SEP: &[u8] = &[0xf5; 4];
/// Room in each direction of an in-memory stream.
pub const DUPLEX: usize = 256 * 1024;

/// The server: `seeds/identity_pem/ed25519` (a throwaway key).
pub const SERVER_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIM+0ny42ifZmt/fdsAGgKZZ4eWmorJUaqGHKWT/XbZii
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBSDCB+6ADAgECAhQ9xCaXTR1tu5/1Kbxc5iL+aG9+GTAFBgMrZXAwGTEXMBUG
A1UEAwwOZm9saW8gdHViIHNlZWQwIBcNMjYxMTI3MTYzOTU2WhgPMjEyNjExMDMx
NjM5NTZaMBkxFzAVBgNVBAMMDmZvbGlvIHR1YiBzZWVkMCowBQYDK2VwAyEA04lN
PGM7ZOvprD74LXf4gOSBNRwwBiJ5nR0v/+nWVBajUzBRMB0GA1UdDgQWBBSA5dqe
Gd8zz6P6OqRrafKz8i0xhjAfBgNVHSMEGDAWgBSA5dqeGd8zz6P6OqRrafKz8i0x
hjAPBgNVHRMBAf8EBTADAQH/MAUGAytlcANBACsrUgkSkB0BEG4wbQbu1EI8RW8i
7BeeYlRHIfO5xui0KTwKK3uftrFQjlAWmKv6URQH+S8U1Rt9G/2kG0UyGgY=
-----END CERTIFICATE-----
";

/// The client: `seeds/identity_pem/p256` (a throwaway key).
pub const CLIENT_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSTQ/rElvlQw5RbTh
nqO5fn2ntrqHkEB4dClr62R5DBChRANCAAQ4rt+fMzMq2CdkwEM5EEBTlKtqOwLv
tOS24BbGUmxuNwSQDgZyuJsJd10ExEOkLWUkZmtPYHg4unZjwWTqRVaX
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUQsv9c57JOyffAoQPXIgFh8XO60IwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPZm9saW8gcDI1NiBzZWVkMCAXDTI2MTEyNzE2Mzk1NloYDzIx
MjYxMTAzMTYzOTU2WjAaMRgwFgYDVQQDDA9mb2xpbyBwMjU2IHNlZWQwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQ4rt+fMzMq2CdkwEM5EEBTlKtqOwLvtOS24BbG
UmxuNwSQDgZyuJsJd10ExEOkLWUkZmtPYHg4unZjwWTqRVaXo1MwUTAdBgNVHQ4E
FgQUdtk83q+8jhVMl2rHfqLGgvV9XtAwHwYDVR0jBBgwFoAUdtk83q+8jhVMl2rH
fqLGgvV9XtAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA3lWB
w32nkqZtKPQ5DOziSFzPYC/qZ6kxOZSZt77h2s8CID8aZ0wkAj0fnPyI0kfh8R6G
/Ff5baaqz/UBJlmt+9m2
-----END CERTIFICATE-----
";

/// Loads one of the fixed identities.
pub fn identity(pem: &str) -> Identity {
    Identity::from_pem(pem).expect("the fixed identities load")
}

/// The handshake of both ends: the defaults, with one-second phases (virtual time).
pub fn short_handshake() -> HandshakeConfig {
    HandshakeConfig::default()
        .prelude_timeout(Duration::from_secs(1))
        .tls_timeout(Duration::from_secs(1))
        .hello_timeout(Duration::from_secs(1))
}

/// A Tub configured as a node's (`folio_node::node::node_tub_config`), with short handshake
/// phases.
pub fn node_like_tub(pem: &str, connector: Arc<dyn Connector>) -> Tub {
    let config = folio_node::node::node_tub_config().handshake(short_handshake());
    let tub = Tub::new(identity(pem), connector, config).expect("a Tub");
    tub.set_location(vec!["mem:server".parse().expect("a hint")]);
    tub
}

/// A current-thread runtime whose clock is paused: timers fire as soon as nothing else can
/// run (and not while a `spawn_blocking` task runs), so timeouts cost nothing.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Awaits `fut`, which must finish within `secs` seconds of virtual time.
pub async fn bounded<T>(what: &str, secs: u64, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {secs} s (virtual time)"),
    }
}

/// Lets every task run until all wait (for input or a timer): one virtual millisecond.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Waits (in virtual time, at most `secs` s) until `cond` holds; panics naming `what` if not.
pub async fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    bounded(what, secs, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Splits `rest` at every [`SEP`]: the payloads of the frame modes.
pub fn split_frames(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    if rest.is_empty() {
        return out;
    }
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    out.push(rest);
    out
}

/// A fresh, empty directory for this run (`/dev/shm` when it exists: the storage server
/// fsyncs). The same path every run of a process, so nothing piles up.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("folio-fuzz-{name}-{}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => panic!("clearing {}: {e}", dir.display()),
        _ => {}
    }
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What a client sent, as the server got it (seeds of the frame modes).
#[derive(Default)]
pub struct Capture {
    /// The frame payloads after the handshake, in order.
    pub frames: Mutex<Vec<Vec<u8>>>,
}

impl Capture {
    /// The payloads joined by [`SEP`]: a frame-mode input.
    pub fn joined(&self) -> Vec<u8> {
        let frames = self.frames.lock().unwrap();
        for f in frames.iter() {
            assert!(
                !f.windows(SEP.len()).any(|w| w == SEP),
                "a recorded payload contains the separator"
            );
        }
        frames.join(SEP)
    }
}

/// Dials `server` over an in-memory stream; with a [`Capture`], through a proxy that
/// terminates the client's TLS with the server's key, opens its own connection to the
/// server with the client's key, forwards frames both ways and records the client's.
pub struct MemConnector {
    /// The Tub every dial reaches.
    pub server: Tub,
    /// Where to record, if anywhere.
    pub capture: Option<Arc<Capture>>,
}

impl MemConnector {
    /// Dials `server` directly.
    pub fn new(server: Tub) -> Arc<Self> {
        Arc::new(MemConnector {
            server,
            capture: None,
        })
    }

    /// Dials `server` through the recording proxy.
    pub fn recording(server: Tub, capture: Arc<Capture>) -> Arc<Self> {
        Arc::new(MemConnector {
            server,
            capture: Some(capture),
        })
    }
}

impl Connector for MemConnector {
    fn connect<'a>(&'a self, _hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let (client_end, server_end) = tokio::io::duplex(DUPLEX);
            let server = self.server.clone();
            // The server's side runs on its own; a failed handshake shows on the client's.
            match &self.capture {
                None => drop(tokio::spawn(async move {
                    let _ = server.accept(server_end).await;
                })),
                Some(capture) => drop(tokio::spawn(proxy(server, server_end, capture.clone()))),
            }
            Ok(Box::new(client_end) as BoxStream)
        })
    }
}

async fn proxy(server: Tub, from_client: DuplexStream, capture: Arc<Capture>) {
    let front = Handshaker::new(Arc::new(identity(SERVER_PEM)), short_handshake()).unwrap();
    let back = Handshaker::new(Arc::new(identity(CLIENT_PEM)), short_handshake()).unwrap();
    let Ok(front) = front.accept(from_client).await else {
        return;
    };
    let (up, down) = tokio::io::duplex(DUPLEX);
    let tub = server.clone();
    tokio::spawn(async move {
        let _ = tub.accept(down).await;
    });
    let back = back
        .connect(up, server.tubid())
        .await
        .expect("proxy: server handshake");
    let (mut cr, mut cw) = (front.reader, front.writer);
    let (mut sr, mut sw) = (back.reader, back.writer);
    let upstream = async {
        while let Ok(Some(f)) = cr.next_frame().await {
            capture.frames.lock().unwrap().push(f.to_vec());
            if sw.send_frame(f).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let downstream = async {
        while let Ok(Some(f)) = sr.next_frame().await {
            if cw.send_frame(f).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// A hostile client after a real handshake: it sends frames and ignores what comes back.
pub struct RawClient {
    writer: folio_rpc::frame::FrameWriter<tokio::io::WriteHalf<folio_rpc::TlsStream<DuplexStream>>>,
    drain: JoinHandle<()>,
}

impl RawClient {
    /// Connects to `server` with the client identity; the handshake must succeed.
    pub async fn connect(server: &Tub) -> RawClient {
        let client = Handshaker::new(Arc::new(identity(CLIENT_PEM)), short_handshake()).unwrap();
        let (client_end, server_end) = tokio::io::duplex(DUPLEX);
        let tub = server.clone();
        let accept = tokio::spawn(async move { tub.accept(server_end).await });
        let est: Established<DuplexStream> = bounded(
            "the client handshake",
            10,
            client.connect(client_end, server.tubid()),
        )
        .await
        .expect("a real client's handshake failed");
        let info = bounded("Tub::accept", 10, accept)
            .await
            .unwrap()
            .expect("the server refused a real client");
        assert_eq!(info.peer, client.tubid());
        let Established {
            mut reader, writer, ..
        } = est;
        // Read (and ignore) what the server sends, as a client that never answers would.
        let drain =
            tokio::spawn(async move { while let Ok(Some(_)) = reader.next_frame().await {} });
        RawClient { writer, drain }
    }

    /// Sends each payload of `input` (split at [`SEP`]) as one frame, letting the server
    /// run between frames. Stops at the first write that fails.
    pub async fn send(&mut self, input: &[u8]) {
        for payload in split_frames(input) {
            if self.writer.send_frame(payload).await.is_err() {
                break;
            }
            settle().await;
        }
    }

    /// Closes the client's side (TLS close_notify).
    pub async fn close(&mut self) {
        let _ = self.writer.shutdown().await;
    }

    /// Waits until the server has closed its side of the stream.
    pub async fn server_closed(self) {
        let RawClient { writer, drain } = self;
        // The server writes until its side closes: keep our side open until then.
        let _ = drain.await;
        drop(writer);
    }
}

/// Reads an operation sequence. Never fails: past the end every read is zero, so any input
/// is a sequence (of operations with small arguments once the bytes run out).
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian base-128 varint (LEB128), at most 10 bytes.
    pub fn var(&mut self) -> u64 {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8();
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (a, b) = self.bytes.split_at(n);
        self.bytes = b;
        a
    }

    /// Data: a length byte `t`; below `0xf0`, `t % 64` literal bytes follow; otherwise a
    /// varint length (at most `max`) and a byte `k`, and the data is `i * k + t` for each
    /// index `i` (long data from a short input).
    pub fn data(&mut self, max: u64) -> Vec<u8> {
        let t = self.u8();
        if t < 0xf0 {
            return self.take(usize::from(t % 64)).to_vec();
        }
        let len = self.var().min(max) as usize;
        let k = self.u8();
        (0..len)
            .map(|i| (i as u8).wrapping_mul(k).wrapping_add(t))
            .collect()
    }
}

/// Writes what [`Input`] reads: hand-made seeds.
#[derive(Default)]
pub struct Seed(pub Vec<u8>);

impl Seed {
    /// Starts a seed with its mode byte.
    pub fn new(mode: u8) -> Self {
        Seed(vec![mode])
    }
    /// One byte.
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    /// A varint.
    pub fn var(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }
    /// Literal data (at most 63 bytes).
    pub fn lit(&mut self, d: &[u8]) -> &mut Self {
        assert!(d.len() < 64);
        self.0.push(d.len() as u8);
        self.0.extend_from_slice(d);
        self
    }
    /// Generated data of `len` bytes: `i * k + 0xf0`.
    pub fn gen(&mut self, len: u64, k: u8) -> &mut Self {
        self.0.push(0xf0);
        self.var(len);
        self.0.push(k);
        self
    }
    /// Raw bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Writes the seed as `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) {
        write_seed(dir, name, &self.0);
    }
}

/// Writes one seed file.
pub fn write_seed(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Reading a storage directory the way its documentation (`folio_node::storage`, "On disk")
/// describes it, independently of the server's own readers.
pub mod disk {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// The first 32 bytes of an immutable share file.
    pub const IMMUTABLE_MAGIC: &[u8] = b"folio immutable share v1\n";
    /// The first 32 bytes of a mutable container.
    pub const MUTABLE_MAGIC: &[u8] = b"folio mutable slot v1\n";
    /// An immutable share's header: magic, data length.
    pub const IMMUTABLE_HEADER: usize = 40;
    /// A mutable container's header: magic, write enabler, data length.
    pub const MUTABLE_HEADER: usize = 72;

    /// A magic string padded with zero bytes to 32.
    pub fn magic(text: &[u8]) -> [u8; 32] {
        let mut m = [0u8; 32];
        m[..text.len()].copy_from_slice(text);
        m
    }

    /// An immutable share file holding `data`.
    pub fn immutable_file(data: &[u8]) -> Vec<u8> {
        let mut f = magic(IMMUTABLE_MAGIC).to_vec();
        f.extend_from_slice(&(data.len() as u64).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    /// A mutable container holding `data` under `we`.
    pub fn mutable_file(we: &[u8; 32], data: &[u8]) -> Vec<u8> {
        let mut f = magic(MUTABLE_MAGIC).to_vec();
        f.extend_from_slice(we);
        f.extend_from_slice(&(data.len() as u64).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    /// What a share file holds.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Share {
        /// An immutable share whose length field matches the file.
        Immutable(Vec<u8>),
        /// A mutable container whose length field matches the file.
        Mutable {
            /// Its write enabler.
            we: [u8; 32],
            /// Its data.
            data: Vec<u8>,
        },
        /// Anything else (a header that lies about the length, or no known magic).
        Other(Vec<u8>),
    }

    /// Reads a share file's bytes.
    pub fn share(bytes: Vec<u8>) -> Share {
        let len_at = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
        };
        let immutable = bytes.len() >= IMMUTABLE_HEADER && bytes[..32] == magic(IMMUTABLE_MAGIC);
        if immutable && len_at(32) == Some((bytes.len() - IMMUTABLE_HEADER) as u64) {
            return Share::Immutable(bytes[IMMUTABLE_HEADER..].to_vec());
        }
        let mutable = bytes.len() >= MUTABLE_HEADER && bytes[..32] == magic(MUTABLE_MAGIC);
        if mutable && len_at(64) == Some((bytes.len() - MUTABLE_HEADER) as u64) {
            return Share::Mutable {
                we: bytes[32..64].try_into().unwrap(),
                data: bytes[MUTABLE_HEADER..].to_vec(),
            };
        }
        Share::Other(bytes)
    }

    /// One lease as a lease file records it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Lease {
        /// The renew secret.
        pub renew: [u8; 32],
        /// The cancel secret.
        pub cancel: [u8; 32],
        /// Unix seconds.
        pub expires_at: u64,
    }

    fn hex32(s: &str) -> Option<[u8; 32]> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let nib = |b: u8| {
            if b.is_ascii_digit() {
                b - b'0'
            } else {
                b - b'a' + 10
            }
        };
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            out[i] = nib(pair[0]) << 4 | nib(pair[1]);
        }
        Some(out)
    }

    /// The documented shape, field for field: no other field, none twice.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        version: u64,
        leases: Vec<Record>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Record {
        renew_secret: String,
        cancel_secret: String,
        expires_at: u64,
    }

    /// A lease file in exactly its documented shape: `{"version": 1, "leases": [...]}`, each
    /// lease with exactly `renew_secret`, `cancel_secret` (64 lowercase hex digits) and
    /// `expires_at` (an unsigned integer), no field twice. `None` for anything else.
    pub fn strict_leases(bytes: &[u8]) -> Option<Vec<Lease>> {
        let f: File = serde_json::from_slice(bytes).ok()?;
        if f.version != 1 {
            return None;
        }
        f.leases
            .iter()
            .map(|l| {
                Some(Lease {
                    renew: hex32(&l.renew_secret)?,
                    cancel: hex32(&l.cancel_secret)?,
                    expires_at: l.expires_at,
                })
            })
            .collect()
    }

    /// A lease file, as the server writes one (its shape; the spacing is the server's own).
    pub fn lease_file(leases: &[Lease]) -> Vec<u8> {
        let hex = |s: &[u8; 32]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let list: Vec<serde_json::Value> = leases
            .iter()
            .map(|l| {
                serde_json::json!({
                    "renew_secret": hex(&l.renew),
                    "cancel_secret": hex(&l.cancel),
                    "expires_at": l.expires_at,
                })
            })
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({"version": 1, "leases": list})).unwrap()
    }

    /// The storage index `si` as a path component.
    pub fn si_path(shares: &Path, si: &[u8; 16]) -> PathBuf {
        let b32 = folio_node::storage::si_b32(si);
        shares.join(&b32[..2]).join(&b32)
    }

    /// A storage directory's `shares/`, read whole.
    #[derive(Debug, Default)]
    pub struct Scan {
        /// Share files by (base32 storage index, share number).
        pub shares: BTreeMap<(String, u16), Share>,
        /// Lease files by (base32 storage index, share number): `None` if not well-formed.
        pub leases: BTreeMap<(String, u16), Option<Vec<Lease>>>,
        /// Files under `shares/incoming/`, with their bytes.
        pub incoming: Vec<(PathBuf, Vec<u8>)>,
        /// Any other file (temporary files, stray names).
        pub stray: Vec<PathBuf>,
    }

    /// Reads `<storage dir>/shares`. Panics if a storage-index directory is misnamed: the
    /// server derives every path from a base32 storage index.
    pub fn scan(storage_dir: &Path) -> Scan {
        let shares = storage_dir.join("shares");
        let mut out = Scan::default();
        for path in super::files_under(&shares) {
            let rel = path.strip_prefix(&shares).unwrap();
            let parts: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap()).collect();
            if parts[0] == "incoming" {
                let bytes = std::fs::read(&path).unwrap();
                out.incoming.push((path.clone(), bytes));
                continue;
            }
            let [prefix, si, name] = parts[..] else {
                out.stray.push(path.clone());
                continue;
            };
            assert!(
                si.len() == 26
                    && si
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
                    && si.starts_with(prefix)
                    && prefix.len() == 2,
                "a bucket directory that is not a storage index: {}",
                rel.display()
            );
            let si = si.to_string();
            let shnum = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|n| n.to_string() == s && *n <= 255)
            };
            if let Some(n) = shnum(name) {
                out.shares
                    .insert((si, n), share(std::fs::read(&path).unwrap()));
            } else if let Some(n) = name.strip_suffix(".leases").and_then(shnum) {
                let bytes = std::fs::read(&path).unwrap();
                out.leases.insert((si, n), strict_leases(&bytes));
            } else {
                out.stray.push(path.clone());
            }
        }
        out
    }
}
