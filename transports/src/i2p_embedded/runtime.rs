//! emissary-core's [`Runtime`](emissary_core::runtime::Runtime) on tokio: sockets, timers,
//! tasks, randomness and gzip, written here instead of taken from `emissary-util` (see the
//! parent module for why). It differs from emissary-util's adapter in three ways, each a bound
//! the router itself does not set:
//!
//! - **listening sockets are on loopback only**: emissary binds its NTCP2 listener on
//!   `0.0.0.0:PORT` whatever its configuration says; this adapter binds `127.0.0.1:PORT`
//!   instead (and `::1` for `::`);
//! - **dialing can be held to loopback**: a router thread that calls [`dial_loopback_only`]
//!   (every router of a private network) refuses to open a TCP connection to anything but
//!   127.0.0.1 / ::1, whatever a RouterInfo says. The setting is per thread, which is per
//!   router: each embedded router runs on its own thread and current-thread tokio runtime,
//!   so every task it spawns runs there;
//! - **gzip output is bounded** ([`MAX_GZIP_OUTPUT`]): compressed I2CP payloads and
//!   RouterInfos come from peers, and emissary-util inflates them without a limit.

use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use emissary_core::runtime::{
    AsyncRead, AsyncWrite, Counter, Gauge, Histogram, Instant as InstantT, JoinSet, MetricType,
    MetricsHandle, Runtime, TcpListener, TcpStream, UdpSocket,
};
use futures::Stream;
use rand::{CryptoRng, RngExt};
use tokio::io::ReadBuf;

/// The most bytes one gzip member may inflate to. I2CP payloads (streaming packets,
/// datagrams) are at most 64 KiB and RouterInfos a few KiB; anything that inflates past this
/// is refused as emissary refuses a payload that does not inflate.
pub const MAX_GZIP_OUTPUT: u64 = 1024 * 1024;

/// How long emissary may wait for a TCP connection to a peer router.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static LOOPBACK_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// From now on, routers running on this thread dial only loopback addresses.
pub fn dial_loopback_only() {
    LOOPBACK_ONLY.with(|c| c.set(true));
}

fn custom(e: std::io::Error) -> emissary_core::Error {
    emissary_core::Error::Custom(e.to_string())
}

/// The runtime type emissary's router is instantiated with.
#[derive(Debug, Default, Clone)]
pub struct TokioRuntime;

/// A TCP connection to or from a peer router.
pub struct Connection(tokio::net::TcpStream);

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<emissary_core::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(custom(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<emissary_core::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf).map_err(custom)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<emissary_core::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx).map_err(custom)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<emissary_core::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx).map_err(custom)
    }
}

impl TcpStream for Connection {
    async fn connect(address: SocketAddr) -> Option<Self> {
        if LOOPBACK_ONLY.with(Cell::get) && !address.ip().is_loopback() {
            tracing::debug!(%address, "not dialing a router off loopback (private network)");
            return None;
        }
        let stream = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .ok()?
            .ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Connection(stream))
    }
}

/// A listening socket, always on loopback.
pub struct Listener(tokio::net::TcpListener);

/// `0.0.0.0` and `::` become loopback: an embedded router listens nowhere else.
fn on_loopback(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, address.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, address.port()).into(),
        _ => address,
    }
}

impl TcpListener<Connection> for Listener {
    async fn bind(address: SocketAddr) -> Option<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let address = on_loopback(address);
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .ok()?;
        if address.is_ipv6() {
            socket.set_only_v6(true).ok()?;
        }
        // The same port is bound again at once after a router stops (restarts, tests).
        socket.set_reuse_address(true).ok()?;
        socket.set_nonblocking(true).ok()?;
        if let Err(e) = socket.bind(&address.into()) {
            tracing::warn!(%address, "cannot listen: {e}");
            return None;
        }
        socket.listen(128).ok()?;
        tokio::net::TcpListener::from_std(socket.into())
            .ok()
            .map(Listener)
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Connection, SocketAddr)>> {
        loop {
            match self.0.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok((stream, peer))) => {
                    if stream.set_nodelay(true).is_ok() {
                        return Poll::Ready(Some((Connection(stream), peer)));
                    }
                }
            }
        }
    }

    fn local_address(&self) -> Option<SocketAddr> {
        self.0.local_addr().ok()
    }
}

/// A UDP socket (SSU2 and SAM datagrams; neither is enabled by Folio today), on loopback.
#[derive(Clone)]
pub struct Udp {
    socket: Arc<tokio::net::UdpSocket>,
    mtu: usize,
}

impl UdpSocket for Udp {
    async fn bind(address: SocketAddr) -> Option<Self> {
        Self::bind_with_mtu(address, 1500).await
    }

    async fn bind_with_mtu(address: SocketAddr, mtu: usize) -> Option<Self> {
        let socket = tokio::net::UdpSocket::bind(on_loopback(address))
            .await
            .ok()?;
        Some(Udp {
            socket: Arc::new(socket),
            mtu,
        })
    }

    async fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> Option<usize> {
        self.socket.send_to(buf, target).await.ok()
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await.ok()
    }

    fn poll_send_to(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<Option<usize>> {
        self.socket.poll_send_to(cx, buf, target).map(Result::ok)
    }

    fn poll_recv_from(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Option<(usize, SocketAddr)>> {
        let mut buf = ReadBuf::new(buf);
        match self.socket.poll_recv_from(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Ready(Ok(from)) => Poll::Ready(Some((buf.filled().len(), from))),
        }
    }

    fn local_address(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}

/// Tasks polled together (tokio's `JoinSet`, as a `Stream`).
pub struct Tasks<T>(tokio::task::JoinSet<T>, Option<Waker>);

impl<T: Send + 'static> JoinSet<T> for Tasks<T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn push<F>(&mut self, future: F)
    where
        F: Future<Output = T> + Send + 'static,
        F::Output: Send,
    {
        self.0.spawn(future);
        // The stream may have answered `Pending` while empty: poll it again.
        if let Some(waker) = self.1.take() {
            waker.wake();
        }
    }
}

impl<T: Send + 'static> Stream for Tasks<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // A task that panicked or was cancelled is skipped, as emissary-util does; an empty set
        // is pending (emissary's subsystems poll it forever), woken again by `push`.
        loop {
            match self.0.poll_join_next(cx) {
                Poll::Ready(Some(Ok(value))) => return Poll::Ready(Some(value)),
                Poll::Ready(Some(Err(_))) => continue,
                Poll::Pending | Poll::Ready(None) => {
                    self.1 = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A point in time.
#[derive(Debug, Clone, Copy)]
pub struct Now(tokio::time::Instant);

impl InstantT for Now {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Metrics are not collected.
#[derive(Debug, Clone)]
pub struct NoMetrics;

impl Counter for NoMetrics {
    fn increment(&mut self, _: usize) {}
    fn increment_with_label(&mut self, _: usize, _: &'static str, _: &'static str) {}
}

impl Gauge for NoMetrics {
    fn increment(&mut self, _: usize) {}
    fn decrement(&mut self, _: usize) {}
}

impl Histogram for NoMetrics {
    fn record(&mut self, _: f64) {}
}

impl MetricsHandle for NoMetrics {
    fn counter(&self, _: &'static str) -> impl Counter {
        NoMetrics
    }
    fn gauge(&self, _: &'static str) -> impl Gauge {
        NoMetrics
    }
    fn histogram(&self, _: &'static str) -> impl Histogram {
        NoMetrics
    }
}

/// Inflates one gzip member, refusing output over `limit` bytes.
pub fn gunzip_bounded(bytes: &[u8], limit: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= limit).then_some(out)
}

impl Runtime for TokioRuntime {
    type TcpStream = Connection;
    type UdpSocket = Udp;
    type TcpListener = Listener;
    type JoinSet<T: Send + 'static> = Tasks<T>;
    type MetricsHandle = NoMetrics;
    type Instant = Now;
    type Timer = Pin<Box<tokio::time::Sleep>>;

    fn spawn<F>(future: F)
    where
        F: Future + Send + 'static,
        F::Output: Send,
    {
        tokio::spawn(future);
    }

    fn time_since_epoch() -> Duration {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }

    fn now() -> Now {
        Now(tokio::time::Instant::now())
    }

    fn rng() -> impl CryptoRng + RngExt {
        rand::rng()
    }

    fn join_set<T: Send + 'static>() -> Tasks<T> {
        Tasks(tokio::task::JoinSet::new(), None)
    }

    fn register_metrics(_: Vec<MetricType>, _: Option<u16>) -> NoMetrics {
        NoMetrics
    }

    fn timer(duration: Duration) -> Self::Timer {
        Box::pin(tokio::time::sleep(duration))
    }

    async fn delay(duration: Duration) {
        tokio::time::sleep(duration).await
    }

    fn gzip_compress(bytes: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes.as_ref()).ok()?;
        e.finish().ok()
    }

    fn gzip_decompress(bytes: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        gunzip_bounded(bytes.as_ref(), MAX_GZIP_OUTPUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips_and_is_bounded() {
        let data = vec![7u8; 4096];
        let z = TokioRuntime::gzip_compress(&data).unwrap();
        assert_eq!(TokioRuntime::gzip_decompress(&z).unwrap(), data);
        // A small bomb: 2 MiB of zeros compresses to a few KiB, and is refused.
        let bomb = TokioRuntime::gzip_compress(vec![0u8; 2 * 1024 * 1024]).unwrap();
        assert!(bomb.len() < 16 * 1024);
        assert!(TokioRuntime::gzip_decompress(&bomb).is_none());
        assert_eq!(gunzip_bounded(&z, 4096).unwrap().len(), 4096);
        assert!(gunzip_bounded(&z, 4095).is_none());
        assert!(TokioRuntime::gzip_decompress(b"not gzip").is_none());
    }

    #[tokio::test]
    async fn listens_on_loopback_and_can_be_held_to_it() {
        let l = Listener::bind("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let addr = l.local_address().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert!(Connection::connect(addr).await.is_some());
        dial_loopback_only();
        // TEST-NET-1: never dialed (refused before any packet leaves).
        assert!(Connection::connect("192.0.2.1:9".parse().unwrap())
            .await
            .is_none());
        assert!(Connection::connect(addr).await.is_some());
    }
}
