//! A Tub under a crowd of connections that never complete a handshake: 1000 that send
//! nothing and some that send one byte every half second (slowloris). A well-behaved client
//! is still served promptly, every idle handshake is dropped at its timeout, and memory
//! stays bounded (the figure is printed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_handlers::Registry;
use folio_rpc::{interface, HandshakeConfig, Identity, Tub, TubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[interface(name = "test.robust.echo.v1")]
pub trait Echo {
    async fn echo(&self, n: u64) -> Result<u64, String>;
}

struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, n: u64) -> Result<u64, String> {
        Ok(n)
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

fn open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap_or(u64::MAX)
}

const SILENT: usize = 1000;
const SLOW: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_handshakes_do_not_starve_a_good_client() {
    // Both ends of every connection live in this process.
    let need = 2 * (SILENT + SLOW) as u64 + 200;
    assert!(
        open_file_limit() >= need,
        "this test needs {need} open files (ulimit -n); scripts/test.sh raises the limit"
    );
    let timeout = Duration::from_secs(3);
    let cfg = TubConfig::default()
        .handshake(
            HandshakeConfig::default()
                .prelude_timeout(timeout)
                .tls_timeout(timeout)
                .hello_timeout(timeout),
        )
        // Room for the whole crowd: this test is about what time does to idle handshakes.
        // (rpc/tests/limits.rs tests the cap on them.)
        .max_pending_handshakes(SILENT + SLOW + 10);
    let (server, addr) = folio_tests::tubs::listening_tub(cfg).await;
    let furl = server.register(EchoRef::serve(EchoImpl)).unwrap();
    let before = rss_bytes();

    // The crowd: each connection records when the server drops it.
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut crowd = Vec::new();
    for i in 0..SILENT + SLOW {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let dropped = dropped.clone();
        crowd.push(tokio::spawn(async move {
            let started = Instant::now();
            if i >= SILENT {
                // Slowloris: the magic, one byte every 500 ms, never finishing.
                for b in b"\x89FOLIO\r\n" {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            dropped.fetch_add(1, Ordering::SeqCst);
            started.elapsed()
        }));
    }
    let during = rss_bytes();

    // A well-behaved client is served while the crowd is there.
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(Registry::with_tcp()),
        TubConfig::default(),
    )
    .unwrap();
    let t = Instant::now();
    let echo: EchoRef = client.get(&furl).await.unwrap();
    assert_eq!(echo.echo(7).await.unwrap(), 7);
    let served_in = t.elapsed();
    assert!(
        served_in < Duration::from_secs(2),
        "the good client waited {served_in:?}"
    );

    // Every idle handshake is dropped at its timeout (not before, and not much after).
    let mut lifetimes = Vec::new();
    for c in crowd {
        lifetimes.push(
            tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .expect("dropped in time")
                .unwrap(),
        );
    }
    assert_eq!(dropped.load(Ordering::SeqCst), SILENT + SLOW);
    lifetimes.sort();
    let (first, last) = (lifetimes[0], lifetimes[lifetimes.len() - 1]);
    assert!(
        first >= timeout - Duration::from_millis(500),
        "dropped early: {first:?}"
    );
    assert!(
        last < timeout + Duration::from_secs(10),
        "dropped late: {last:?}"
    );
    // Still serving afterwards, on the same connection.
    assert_eq!(echo.echo(8).await.unwrap(), 8);
    let growth = during.saturating_sub(before);
    eprintln!(
        "{} pending handshakes: RSS grew {} KiB ({} bytes each, both ends in this process); \
         good client served in {served_in:?}; dropped after {first:?}..{last:?}",
        SILENT + SLOW,
        growth / 1024,
        growth / (SILENT + SLOW) as u64
    );
    assert!(growth < 64 * 1024 * 1024, "memory grew by {growth} bytes");
}
