//! A slow link you can run anywhere: a fixed one-way delay and a bandwidth cap, in both
//! directions, with order preserved and bounded buffering. For tests and benches that need
//! Tor- or I2P-like round trips on 127.0.0.1 (issue 17); it is not a transport.
//!
//! - [`slow`] wraps any stream in-process: the returned stream's peer sees every byte one
//!   link later, and sees the peer's bytes the same way.
//! - [`SlowProxy`] is a loopback TCP proxy that does the same to every connection it
//!   forwards, so that a node in another process can be reached over it (point its
//!   `tub.location` at the proxy's address). It also charges TCP's own handshake: the
//!   client's first bytes leave one round trip after it connected, as they would after a
//!   SYN and its SYN-ACK crossed the link.
//!
//! The model, per direction: bytes leave the sender at the link's rate, one after another
//! (a chunk of `n` bytes takes `n / bytes_per_sec` after the previous chunk has left), and
//! arrive `one_way_delay` after they left. A sender that writes faster than the link
//! fills at most `max_in_flight` bytes of it, then waits, as TCP's window would make it.
//!
//! ```
//! # tokio_test_block_on(async {
//! use folio_tests::slowlink::{slow, LinkProfile};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let (near, far) = tokio::io::duplex(64 * 1024);
//! let mut near = slow(near, LinkProfile::custom(std::time::Duration::from_millis(20), 1 << 20));
//! let started = std::time::Instant::now();
//! tokio::spawn(async move {
//!     let (mut r, mut w) = tokio::io::split(far);
//!     tokio::io::copy(&mut r, &mut w).await
//! });
//! near.write_all(b"ping").await.unwrap();
//! let mut back = [0u8; 4];
//! near.read_exact(&mut back).await.unwrap();
//! assert!(started.elapsed() >= std::time::Duration::from_millis(40)); // one round trip
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What a link does to the bytes that cross it, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkProfile {
    /// Time from a byte leaving the sender to its arrival.
    pub one_way_delay: Duration,
    /// The rate at which bytes leave the sender.
    pub bytes_per_sec: u64,
    /// Bytes a direction holds at most (leaving, or on their way); a sender waits beyond it.
    pub max_in_flight: usize,
}

/// The most bytes read from a sender at once: one chunk on the link.
const CHUNK: usize = 16 * 1024;

impl LinkProfile {
    /// A link with this one-way delay and rate, holding twice its bandwidth-delay product
    /// (at least 64 KiB) per direction.
    pub fn custom(one_way_delay: Duration, bytes_per_sec: u64) -> LinkProfile {
        let bdp = (bytes_per_sec as f64 * one_way_delay.as_secs_f64() * 2.0) as usize;
        LinkProfile {
            one_way_delay,
            bytes_per_sec: bytes_per_sec.max(1),
            max_in_flight: (2 * bdp).max(64 * 1024),
        }
    }

    /// Tor as issue 17 models it: a round trip of 300 ms, 8 MiB/s.
    pub fn tor() -> LinkProfile {
        LinkProfile::custom(Duration::from_millis(150), 8 << 20)
    }

    /// I2P as issue 17 models it: a round trip of 1 s, 2 MiB/s.
    pub fn i2p() -> LinkProfile {
        LinkProfile::custom(Duration::from_millis(500), 2 << 20)
    }

    /// The round trip: twice the one-way delay.
    pub fn rtt(&self) -> Duration {
        2 * self.one_way_delay
    }

    /// The time `n` bytes take to leave the sender.
    fn serialization(&self, n: usize) -> Duration {
        Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64)
    }
}

/// Wraps `inner` in the link: what is written to the returned stream reaches `inner` one
/// link later, and what `inner` yields reaches the returned stream the same way. The link
/// lives as long as either side does; an end of stream crosses it like the bytes before it.
pub fn slow<S>(inner: S, profile: LinkProfile) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (near, far) = tokio::io::duplex(CHUNK);
    join(far, inner, profile, Instant::now());
    near
}

/// Joins `a` and `b` by the link: each one's bytes reach the other one link later, and
/// nothing of `a`'s leaves before `a_sends_from`.
pub fn join<A, B>(a: A, b: B, profile: LinkProfile, a_sends_from: Instant)
where
    A: AsyncRead + AsyncWrite + Send + 'static,
    B: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    direction(ar, bw, profile, a_sends_from);
    direction(br, aw, profile, Instant::now());
}

/// A chunk on its way, with its share of the direction's room, and when it arrives.
struct InFlight {
    arrives: Instant,
    bytes: Vec<u8>,
    _room: OwnedSemaphorePermit,
}

/// One direction: a task that reads from `from` and stamps each chunk with its arrival
/// time, and a task that delivers the chunks to `to` at those times, in order.
fn direction<R, W>(mut from: R, mut to: W, profile: LinkProfile, sends_from: Instant)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let room = Arc::new(Semaphore::new(profile.max_in_flight));
    // The room bounds the bytes; this bounds the number of (small) chunks as well.
    let (tx, mut rx) = mpsc::channel::<InFlight>(4096);
    tokio::spawn(async move {
        let mut leaves = sends_from;
        let mut buf = vec![0u8; CHUNK.min(profile.max_in_flight)];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(permit) = room.clone().acquire_many_owned(n as u32).await else {
                break;
            };
            // The chunk leaves once the link is free, at its rate, and arrives a delay later.
            leaves = leaves.max(Instant::now()) + profile.serialization(n);
            let chunk = InFlight {
                arrives: leaves + profile.one_way_delay,
                bytes: buf[..n].to_vec(),
                _room: permit,
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        // Dropping the sender carries the end of stream, after every chunk before it.
    });
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.arrives).await;
            if to.write_all(&chunk.bytes).await.is_err() || to.flush().await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
}

/// A TCP proxy on 127.0.0.1 that forwards every connection to one address over the link.
/// Dropping it stops accepting; connections already forwarded end with their streams.
#[derive(Debug)]
pub struct SlowProxy {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Listens on 127.0.0.1 (any port) and forwards to `target`.
    pub async fn start(target: SocketAddr, profile: LinkProfile) -> std::io::Result<SlowProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // On a real link the client could send only once its SYN and the SYN-ACK
                // had crossed: one round trip after it connected.
                let connected = Instant::now() + profile.rtt();
                tokio::spawn(async move {
                    // A target that cannot be reached closes the client's stream.
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        join(client, server, profile, connected);
                    }
                });
            }
        });
        Ok(SlowProxy { addr, accept })
    }

    /// Where to connect: 127.0.0.1 and the proxy's port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a `tcp:` hint, for a Tub's location or a FURL.
    pub fn hint(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.addr.port())
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1, and its address.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A byte takes a round trip through the proxy: never less than twice the delay; and
    /// the first one, sent at once, also waits for TCP's own handshake to have crossed.
    #[tokio::test]
    async fn a_round_trip_takes_the_links_round_trip() {
        let profile = LinkProfile::custom(Duration::from_millis(60), 8 << 20);
        let proxy = SlowProxy::start(echo_server().await, profile)
            .await
            .unwrap();
        let t = std::time::Instant::now();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        let first = t.elapsed();
        assert!(first >= 2 * profile.rtt(), "{first:?}");
        for _ in 0..3 {
            let t = std::time::Instant::now();
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            let took = t.elapsed();
            assert!(took >= profile.rtt(), "{took:?}");
            assert!(took < profile.rtt() + Duration::from_secs(2), "{took:?}");
        }
    }

    /// Bulk bytes cross at the link's rate, intact and in order, and an end of stream
    /// follows them.
    #[tokio::test]
    async fn bulk_crosses_at_the_links_rate_intact_and_in_order() {
        let profile = LinkProfile::custom(Duration::from_millis(20), 4 << 20);
        let (near, far) = tokio::io::duplex(64 * 1024);
        let mut near = slow(near, profile);
        let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
        let sent = data.clone();
        let t = std::time::Instant::now();
        let writer = tokio::spawn(async move {
            near.write_all(&sent).await.unwrap();
            near.shutdown().await.unwrap();
            near
        });
        let mut far = far;
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        let took = t.elapsed();
        assert!(got == data, "the bytes arrive intact and in order");
        // 2 MiB at 4 MiB/s: half a second on the link, plus the delay.
        assert!(took >= Duration::from_millis(500), "{took:?}");
        drop(writer.await.unwrap());
    }

    /// A sender whose bytes nobody reads fills the link's room and then waits: the bytes
    /// it could write are bounded by the room and the buffers around it.
    #[tokio::test]
    async fn a_sender_nobody_reads_waits_once_the_link_is_full() {
        let profile = LinkProfile {
            max_in_flight: 256 * 1024,
            ..LinkProfile::custom(Duration::from_millis(5), 64 << 20)
        };
        let (near, _far_never_read) = tokio::io::duplex(64 * 1024);
        let mut near = slow(near, profile);
        let mut written = 0usize;
        let chunk = vec![1u8; 16 * 1024];
        while let Ok(r) =
            tokio::time::timeout(Duration::from_millis(500), near.write_all(&chunk)).await
        {
            r.unwrap();
            written += chunk.len();
            assert!(written <= 8 << 20, "the link took {written} bytes");
        }
        // The room, the pipes on each side (64 KiB and 16 KiB), and a chunk being read.
        assert!(
            written <= profile.max_in_flight + 64 * 1024 + 2 * CHUNK + chunk.len(),
            "{written} bytes were taken by a link nobody reads"
        );
    }

    /// The profiles issue 17 names.
    #[test]
    fn the_tor_and_i2p_profiles() {
        assert_eq!(LinkProfile::tor().rtt(), Duration::from_millis(300));
        assert_eq!(LinkProfile::tor().bytes_per_sec, 8 << 20);
        assert_eq!(LinkProfile::i2p().rtt(), Duration::from_secs(1));
        assert_eq!(LinkProfile::i2p().bytes_per_sec, 2 << 20);
    }
}
