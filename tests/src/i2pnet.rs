//! A private I2P network on 127.0.0.1 for tests, of embedded emissary routers in this process
//! (cargo feature `i2p-embedded`), the way [`crate::tornet::TorNet`] is a private Tor network:
//! 3 floodfills, 1 relay, and N client routers with a SAM bridge each, for Folio's
//! destinations. The settings are those of `../shared/recipes/emissary-spike/README.md`:
//!
//! - a network id of its own, local addresses allowed and tunnel hops that share an address
//!   allowed (all of `Network::Private`), dialing held to loopback;
//! - **full two-phase seeding**: every router is started once to make its RouterInfo
//!   (written to its state directory), stopped, and started again with its own RouterInfo
//!   (same id) and every other router's RouterInfo file. With only "each knows those before
//!   it", the first floodfills cannot answer lookups for about 10 s;
//! - transit off on the client routers: no tunnel of another router runs through them, so
//!   restarting one breaks nobody else's tunnels;
//! - 1-hop client tunnels ([`I2pNet::sam_config`]): emissary refuses 0-hop ones.
//!
//! Ports: NTCP2 on `BASE+i`, SAM on `BASE+100+i`, with `BASE` from 12000 to 19800 picked from
//! the process id and a counter, below Linux's ephemeral range (32768 and up) where other
//! tests' outgoing connections could hold one, below [`crate::tornet`]'s (20000 and up), and
//! checked free before use.
//!
//! Ready means a SAM `SESSION CREATE` succeeds on every client router (not emissary's
//! "tunnels built" counters, which move in 10-s steps). The first `STREAM CONNECT` to a new
//! destination may still fail while its LeaseSet spreads to the floodfills: retry it (the
//! echo helpers do). Every wait is bounded; a network that does not come up panics with each
//! router's last log lines. Dropping it stops every router (their ports are free again at
//! once) and removes its directory (set `FOLIO_KEEP_I2PNET` to keep it).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use folio_transports::i2p::{Destination, SamConfig, Session};
use folio_transports::i2p_embedded::{EmbeddedRouter, Network, RouterOptions};

/// The network id of test networks (the public network is 2).
pub const NET_ID: u8 = 77;
const FLOODFILLS: usize = 3;
const RELAYS: usize = 1;
/// Log lines kept per router, for a failure report.
const LOG_LINES: usize = 400;
/// Time allowed, after the routers start, for a SAM session on every client router.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

static STARTED: AtomicU32 = AtomicU32::new(0);

/// What emissary 0.4's streaming code logs (at `debug`, target
/// `emissary::streaming::active`) each time a stream's retransmission timer fires with
/// packets still unacknowledged: it then resends them and starts over with its initial
/// 9-s timeout. Counted by [`I2pNet::stream_resends`].
pub const STREAM_RESEND_LINE: &str = "routing path recreated";

/// The last lines one router logged, and how many lines ever said
/// [`STREAM_RESEND_LINE`].
#[derive(Clone, Default)]
struct LogTail(Arc<Mutex<VecDeque<String>>>, Arc<AtomicU64>);

impl LogTail {
    fn lines(&self, n: usize) -> Vec<String> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .skip(all.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

impl std::io::Write for LogTail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for line in String::from_utf8_lossy(buf).lines() {
            if line.contains(STREAM_RESEND_LINE) {
                self.1.fetch_add(1, Ordering::Relaxed);
            }
            if all.len() == LOG_LINES {
                all.pop_front();
            }
            all.push_back(line.to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = LogTail;
    fn make_writer(&'a self) -> LogTail {
        self.clone()
    }
}

/// One router's logs: `FOLIO_I2PNET_LOG` (an `EnvFilter`, default `info`) into its tail.
fn router_log(tail: &LogTail) -> tracing::Dispatch {
    let filter = std::env::var("FOLIO_I2PNET_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(tail.clone())
        .with_ansi(false)
        .with_target(true)
        .into()
}

/// What one router is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Floodfill,
    Relay,
    Client,
}

/// A running private I2P network.
pub struct I2pNet {
    dir: PathBuf,
    base: u16,
    roles: Vec<Role>,
    routers: Vec<Option<EmbeddedRouter>>,
    logs: Vec<LogTail>,
    /// Process start of the network to ready, for the tests' timing lines.
    pub started_in: Duration,
    /// Every router's bandwidth limit ([`RouterOptions::bandwidth`]).
    bandwidth: u64,
}

impl std::fmt::Debug for I2pNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I2pNet")
            .field("dir", &self.dir)
            .field("base", &self.base)
            .finish()
    }
}

fn ports_free(base: u16, n: usize) -> bool {
    (0..n as u16).all(|i| {
        [base + i, base + 100 + i]
            .iter()
            .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
    })
}

impl I2pNet {
    /// Starts 3 floodfills, a relay and `clients` client routers (1 to 50) and waits, up to
    /// 90 s, until a SAM session can be made on every client router. Panics with the
    /// routers' last log lines when it does not come up.
    pub fn start(clients: usize) -> I2pNet {
        I2pNet::start_with(clients, folio_transports::i2p_embedded::DEFAULT_BANDWIDTH)
    }

    /// [`I2pNet::start`] with every router's bandwidth limit set to `bandwidth` bytes per
    /// second (emissary's own default is 1,000,000; measurements compare the two).
    pub fn start_with(clients: usize, bandwidth: u64) -> I2pNet {
        assert!((1..=50).contains(&clients), "1 to 50 client routers");
        let t0 = Instant::now();
        let mut roles = vec![Role::Floodfill; FLOODFILLS];
        roles.extend([Role::Relay; RELAYS]);
        roles.extend(std::iter::repeat_n(Role::Client, clients));
        let n = roles.len();
        let mut failures = Vec::new();
        // Two tries, on two sets of ports: a port another process takes between the check
        // and the bind is no finding about Folio.
        for _ in 0..2 {
            let (base, dir) = loop {
                let k = STARTED.fetch_add(1, Ordering::SeqCst);
                let base = 12000 + ((std::process::id() + 7 * k) % 40) as u16 * 200;
                if ports_free(base, n) || k > 200 {
                    let dir = std::env::temp_dir()
                        .join(format!("folio-i2pnet-{}-{k}", std::process::id()));
                    break (base, dir);
                }
            };
            let _ = std::fs::remove_dir_all(&dir);
            let mut net = I2pNet {
                dir,
                base,
                logs: (0..n).map(|_| LogTail::default()).collect(),
                routers: (0..n).map(|_| None).collect(),
                roles: roles.clone(),
                started_in: Duration::ZERO,
                bandwidth,
            };
            match net.bring_up() {
                Ok(()) => {
                    net.started_in = t0.elapsed();
                    return net;
                }
                Err(e) => {
                    let report = format!(
                        "the private I2P network (ports from {base}) did not come up: {e}\n{}",
                        net.log_tails(15)
                    );
                    eprintln!("{report}");
                    failures.push(report);
                }
            }
        }
        panic!("{}", failures.join("\n--- and again ---\n"));
    }

    fn options(&self, i: usize, seeds: Vec<PathBuf>) -> RouterOptions {
        let role = self.roles[i];
        let mut o = RouterOptions::new(
            self.dir.join(format!("router-{i}")),
            Network::Private {
                net_id: NET_ID,
                seeds,
            },
        );
        o.ntcp2_port = self.base + i as u16;
        o.sam = role == Role::Client;
        o.sam_port = if o.sam { self.base + 100 + i as u16 } else { 0 };
        o.floodfill = role == Role::Floodfill;
        o.transit = role != Role::Client;
        o.thread_name = format!("i2p-router-{i}");
        o.log = Some(router_log(&self.logs[i]));
        o.bandwidth = self.bandwidth;
        o
    }

    fn router_info_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("router-{i}")).join("routerInfo.dat")
    }

    fn bring_up(&mut self) -> Result<(), String> {
        let n = self.roles.len();
        // Phase 1: each router once, to make its keys and RouterInfo.
        for i in 0..n {
            let r = EmbeddedRouter::start(self.options(i, vec![]))
                .map_err(|e| format!("router {i} (first start): {e}"))?;
            r.stop().map_err(|e| format!("router {i}: {e}"))?;
        }
        // Phase 2: every router with its own RouterInfo and everybody else's.
        for tail in &self.logs {
            use std::io::Write;
            let _ = writeln!(
                tail.clone(),
                "(folio: started again, seeded with every RouterInfo)"
            );
        }
        for i in 0..n {
            let seeds = (0..n)
                .filter(|&j| j != i)
                .map(|j| self.router_info_file(j))
                .collect();
            let r = EmbeddedRouter::start(self.options(i, seeds))
                .map_err(|e| format!("router {i}: {e}"))?;
            self.routers[i] = Some(r);
        }
        // Ready: a SAM session on every client router (on a thread of its own: this may be
        // called from inside a test's runtime).
        let bridges: Vec<SamConfig> = (0..self.clients()).map(|c| self.sam_config(c)).collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
                for (c, cfg) in bridges.iter().enumerate() {
                    let mut last = String::new();
                    loop {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if left.is_zero() {
                            return Err(format!(
                                "no SAM session on client router {c} ({}) within {READY_TIMEOUT:?}: {last}",
                                cfg.bridge
                            ));
                        }
                        let mut cfg = cfg.clone();
                        cfg.session_timeout = left.min(cfg.session_timeout);
                        match Session::create(&cfg, Destination::Transient).await {
                            Ok(_) => break,
                            Err(e) => last = e.to_string(),
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Ok(())
            })
        })
        .join()
        .map_err(|_| "the readiness check panicked".to_string())?
    }

    /// Stops client router `client` and starts it again with its saved keys and RouterInfo
    /// (the same router id), the same ports and the same seeds: a machine restarting. Every
    /// session on it ends. Returns the time the stop and start took; the router is back when
    /// this returns, and a SAM `SESSION CREATE` on it is the sign it is usable. Panics (with
    /// the router's last log lines) if it does not stop or start within its bounds (10 s and
    /// 30 s).
    pub fn restart_client(&mut self, client: usize) -> Duration {
        let i = self.client_index(client);
        let t = Instant::now();
        if let Some(r) = self.routers[i].take() {
            if let Err(e) = r.stop() {
                panic!(
                    "client router {client} did not stop: {e}\n{}",
                    self.log_tails(15)
                );
            }
        }
        {
            use std::io::Write;
            let _ = writeln!(self.logs[i].clone(), "(folio: restarted)");
        }
        let n = self.roles.len();
        let seeds = (0..n)
            .filter(|&j| j != i)
            .map(|j| self.router_info_file(j))
            .collect();
        match EmbeddedRouter::start(self.options(i, seeds)) {
            Ok(r) => self.routers[i] = Some(r),
            Err(e) => panic!(
                "client router {client} did not start again: {e}\n{}",
                self.log_tails(15)
            ),
        }
        t.elapsed()
    }

    /// Writes, once, and returns a network file describing this network
    /// ([`folio_transports::i2p_embedded::Network::from_file`]: its id and every router's
    /// RouterInfo), for an embedded router of another process (a node's `[i2p]
    /// router.network`) to join it.
    pub fn network_file(&self) -> PathBuf {
        let path = self.dir.join("i2p-network.txt");
        if !path.exists() {
            let mut text = format!("# Folio's private I2P test network\nnet_id {NET_ID}\n");
            for i in 0..self.roles.len() {
                text.push_str(&format!("router {}\n", self.router_info_file(i).display()));
            }
            std::fs::write(&path, text).expect("the network file is written");
        }
        path
    }

    /// The router id of client router `client` (stable across [`I2pNet::restart_client`]).
    pub fn router_id(&self, client: usize) -> String {
        self.router(client).router_id().to_string()
    }

    /// How many client routers (with SAM bridges) there are.
    pub fn clients(&self) -> usize {
        self.roles.iter().filter(|r| **r == Role::Client).count()
    }

    fn client_index(&self, client: usize) -> usize {
        assert!(
            client < self.clients(),
            "client router {client} does not exist"
        );
        FLOODFILLS + RELAYS + client
    }

    fn router(&self, client: usize) -> &EmbeddedRouter {
        self.routers[self.client_index(client)]
            .as_ref()
            .expect("the network is running")
    }

    /// Client router `client`'s SAM bridge, as Folio's SAM client should use it (1-hop
    /// tunnels).
    pub fn sam_config(&self, client: usize) -> SamConfig {
        self.router(client).sam_config()
    }

    /// Client router `client`'s SAM bridge address.
    pub fn sam(&self, client: usize) -> SocketAddr {
        self.router(client).sam().expect("client routers run SAM")
    }

    /// Every address the network's routers listen on (NTCP2 and SAM), all on 127.0.0.1.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.routers
            .iter()
            .flatten()
            .flat_map(|r| std::iter::once(r.ntcp2()).chain(r.sam()))
            .collect()
    }

    /// How many times, so far, a stream in any of the routers resent packets after its
    /// retransmission timeout ([`STREAM_RESEND_LINE`]). Counted only when the routers log
    /// `emissary::streaming::active` at `debug` (`FOLIO_I2PNET_LOG`, for example
    /// `info,emissary::streaming::active=debug`, set before [`I2pNet::start`]); 0 otherwise.
    pub fn stream_resends(&self) -> u64 {
        self.logs.iter().map(|t| t.1.load(Ordering::Relaxed)).sum()
    }

    /// The last `lines` log lines of every router, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut report = String::new();
        for (i, tail) in self.logs.iter().enumerate() {
            let got = tail.lines(lines);
            report.push_str(&format!(
                "--- router {i} ({:?}, NTCP2 127.0.0.1:{}): last {} log lines\n{}\n",
                self.roles[i],
                self.base + i as u16,
                got.len(),
                got.join("\n")
            ));
        }
        report
    }
}

impl Drop for I2pNet {
    fn drop(&mut self) {
        for (i, r) in self.routers.iter_mut().enumerate() {
            if let Some(r) = r.take() {
                if let Err(e) = r.stop() {
                    eprintln!("i2p test network, router {i}: {e}");
                }
            }
        }
        if std::env::var_os("FOLIO_KEEP_I2PNET").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("i2p test network directory kept: {}", self.dir.display());
        }
    }
}
