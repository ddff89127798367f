//! `folio-bench`: Folio's figures next to their physical limit, measured in the same run on
//! 127.0.0.1, and the ratio of each pair.
//!
//! | figure | Folio | raw counterpart |
//! |---|---|---|
//! | round trip | a typed call with a small argument | 16-byte ping-pong over tokio-rustls |
//! | pipelined calls/s | 64 calls outstanding | the same with tarpc over tokio-rustls |
//! | bulk | calls carrying 64 KiB arguments | 64 KiB writes over tokio-rustls |
//! | connect | new Tub connection + handshake + first answer | TCP connect + TLS handshake + 1-byte echo |
//! | idle connection | RSS growth per idle connection | — |
//! | sequential bulk | one call at a time with a 64 KiB argument, answer awaited | the same with tarpc over tokio-rustls |
//!
//! On a simulated slow link (issue 17; src/slow.rs, named with `--only slow-tor,slow-i2p`
//! since they take minutes): round trips to a first answer, a small immutable file's
//! upload and download, and the goodput of a 16 MiB one, against the link's limits.
//!
//! Both ends live in this process. The raw side uses the same Ed25519 certificates and the
//! same rustls configurations (TLS 1.3, ring) as Folio, so the difference is Folio's own work.
//! The tarpc baseline runs over the same TLS configurations, with tarpc's own serde transport
//! (length-delimited frames, bincode).
//! `--one-cpu` re-runs the benchmark under `taskset -c 0` with a single-threaded runtime, so
//! that the figures measure software rather than the scheduler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use folio_handlers::{Registry, TcpListener};
use folio_rpc::{interface, Bytes, Host, Identity, Tub, TubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// The slow link of the tests crate, compiled in rather than depended on (see Cargo.toml).
mod slow;
#[allow(dead_code)]
#[path = "../../tests/src/slowlink.rs"]
mod slowlink;

/// Options.
#[derive(Debug, Parser)]
#[command(name = "folio-bench", version, about)]
struct Args {
    /// Round trips to time (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Pipelined calls in the calls/s figure.
    #[arg(long, default_value_t = 200_000)]
    pipelined_calls: usize,
    /// MiB moved in each bulk figure.
    #[arg(long, default_value_t = 256)]
    bulk_mib: usize,
    /// Connections made in each connect figure.
    #[arg(long, default_value_t = 300)]
    connects: usize,
    /// Idle connections held for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// MiB moved by each side of the sequential bulk figure (one 64 KiB call at a time).
    #[arg(long, default_value_t = 256)]
    bulk_seq_mib: usize,
    /// Slow link: fresh connections timed for the first-answer figure.
    #[arg(long, default_value_t = 3)]
    slow_connects: usize,
    /// Slow link: small files uploaded and downloaded (timed one at a time).
    #[arg(long, default_value_t = 3)]
    slow_small_files: usize,
    /// Slow link: size of the large file, in MiB (0: no goodput figures).
    #[arg(long, default_value_t = 16)]
    slow_bulk_mib: usize,
    /// Slow link: large files uploaded and downloaded.
    #[arg(long, default_value_t = 1)]
    slow_bulk_runs: usize,
    /// Slow link: where the in-process storage servers keep their shares (default /dev/shm
    /// if it exists, else the temporary directory); a directory is made under it and removed.
    #[arg(long)]
    grid_dir: Option<std::path::PathBuf>,
    /// Measure only these figures (comma-separated), e.g. to profile one of them. Without
    /// it, every figure but the slow-link ones.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Run both ends on CPU 0 (re-executes under `taskset -c 0`, single-threaded runtime).
    #[arg(long)]
    one_cpu: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Time the figures in the runtime's `block_on` future instead of a spawned task, as a
    /// program that makes its calls from `main` would (see docs/performance.md).
    #[arg(long)]
    in_block_on: bool,
    #[arg(long, hide = true)]
    pinned: bool,
}

/// The figures, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    /// Round trip (Folio, raw TLS, tarpc).
    Rtt,
    /// Pipelined calls/s (Folio, tarpc).
    Pipelined,
    /// Bulk throughput (Folio, raw TLS).
    Bulk,
    /// Connect (Folio, raw TLS).
    Connect,
    /// Memory per idle connection.
    Idle,
    /// One 64 KiB call at a time (Folio, tarpc).
    BulkSeq,
    /// Slow link, Tor-like: RTT 300 ms, 8 MiB/s (minutes; only when named).
    SlowTor,
    /// Slow link, I2P-like: RTT 1 s, 2 MiB/s (minutes; only when named).
    SlowI2p,
}

impl Args {
    fn wants(&self, figure: Figure) -> bool {
        if self.only.is_empty() {
            return !matches!(figure, Figure::SlowTor | Figure::SlowI2p);
        }
        self.only.contains(&figure)
    }

    fn slow_options(&self) -> slow::SlowOptions {
        let grid_dir = self.grid_dir.clone().unwrap_or_else(|| {
            let shm = std::path::PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
        slow::SlowOptions {
            connects: self.slow_connects,
            small_files: self.slow_small_files,
            bulk_mib: self.slow_bulk_mib,
            bulk_runs: self.slow_bulk_runs,
            grid_dir,
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum BenchError {
    Never,
}

// An application error is `Display`, so that `CallError<BenchError>` is an error `?` passes on.
impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the bench's echo failed")
    }
}

impl std::error::Error for BenchError {}

#[interface(name = "bench.echo.v1")]
pub trait Echo {
    async fn ping(&self, x: u64) -> Result<u64, BenchError>;
    async fn sink(&self, data: Bytes) -> Result<u32, BenchError>;
}

struct EchoImpl;

impl Echo for EchoImpl {
    async fn ping(&self, x: u64) -> Result<u64, BenchError> {
        Ok(x)
    }
    async fn sink(&self, data: Bytes) -> Result<u32, BenchError> {
        Ok(data.len() as u32)
    }
}

/// The tarpc baseline's service: the same method as `Echo::ping`.
#[tarpc::service]
trait TarpcEcho {
    async fn ping(x: u64) -> u64;
    /// The same method as `Echo::sink`, with the same argument type (`folio_rpc::Bytes`,
    /// one `serialize_bytes`), so that both encode the payload as one block.
    async fn sink(data: Bytes) -> u32;
}

#[derive(Clone)]
struct TarpcEchoImpl;

impl TarpcEcho for TarpcEchoImpl {
    async fn ping(self, _: tarpc::context::Context, x: u64) -> u64 {
        x
    }
    async fn sink(self, _: tarpc::context::Context, data: Bytes) -> u32 {
        data.len() as u32
    }
}

const CHUNK: usize = 64 * 1024;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.one_cpu && !args.pinned {
        let exe = std::env::current_exe()?;
        let mut forwarded: Vec<String> = std::env::args().skip(1).collect();
        forwarded.push("--pinned".into());
        let status = std::process::Command::new("taskset")
            .arg("-c")
            .arg("0")
            .arg(exe)
            .args(forwarded)
            .status()
            .context("running taskset -c 0 (util-linux)")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let rt = if args.pinned {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    // The figures are timed in a spawned task, where a daemon's calls run. The `block_on`
    // future of tokio's one-thread runtime, woken by another task, first polls the I/O driver
    // (one more system call per wake-up); on the multi-threaded runtime it is a thread apart
    // from the workers.
    if args.in_block_on {
        return rt.block_on(run(args));
    }
    rt.block_on(async {
        tokio::spawn(run(args))
            .await
            .context("the benchmark task")?
    })
}

struct Report {
    rows: Vec<(String, String)>,
    json: Vec<(String, f64)>,
}

impl Report {
    fn figure(&mut self, key: impl Into<String>, label: &str, value: f64, unit: &str) {
        self.json.push((key.into(), value));
        // Ratios are compared with targets such as 1.15, so they get two decimals.
        let decimals = if unit == "×" || unit == "RTT" { 2 } else { 1 };
        self.rows
            .push((label.into(), format!("{value:.decimals$} {unit}")));
    }

    /// A figure that is a median of samples, shown with their range.
    fn figure_range(
        &mut self,
        key: impl Into<String>,
        label: &str,
        value: f64,
        (lo, hi): (f64, f64),
        unit: &str,
    ) {
        self.json.push((key.into(), value));
        self.rows
            .push((label.into(), format!("{value:.2} {unit} ({lo:.2}–{hi:.2})")));
    }

    /// A JSON value with no row of its own.
    fn json(&mut self, key: impl Into<String>, value: f64) {
        self.json.push((key.into(), value));
    }

    /// A line of the table with no JSON value.
    fn note(&mut self, text: String) {
        self.rows.push((text, String::new()));
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn tub() -> Result<(Tub, Arc<Registry>)> {
    let registry = Arc::new(Registry::with_tcp());
    let cfg = TubConfig::default().max_inbound_calls(1024);
    Ok((
        Tub::new(Identity::generate()?, registry.clone(), cfg)?,
        registry,
    ))
}

async fn listening_tub() -> Result<Tub> {
    let (t, _) = tub().await?;
    let l = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse()?).await?;
    t.set_location(vec![l.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
    t.listen(l);
    Ok(t)
}

/// A raw TLS server and client with Folio's own certificates and rustls configurations.
struct RawTls {
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl RawTls {
    async fn start() -> Result<RawTls> {
        let server_id = Identity::generate()?;
        let client_id = Identity::generate()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(folio_rpc::tls::server_config(&server_id)?);
        let connector =
            tokio_rustls::TlsConnector::from(folio_rpc::tls::client_config(&client_id)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    // Echo whatever arrives, in whatever pieces, until the client closes.
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if n < 64 && tls.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                if n < 64 && tls.flush().await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        let server_name = rustls::pki_types::ServerName::try_from(format!(
            "{}.tub.folio.invalid",
            server_id.tubid()
        ))?;
        Ok(RawTls {
            addr,
            connector,
            server_name,
        })
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let s = tokio::net::TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(self.connector.connect(self.server_name.clone(), s).await?)
    }
}

/// A tarpc server and client over tokio-rustls, with the raw baseline's TLS configurations.
async fn tarpc_client(raw: &RawTls) -> Result<TarpcEchoClient> {
    use futures::StreamExt;
    use tarpc::server::{BaseChannel, Channel};

    let server_id = Identity::generate()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(folio_rpc::tls::server_config(&server_id)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let Ok(tls) = acceptor.accept(s).await else {
                continue;
            };
            let transport = tarpc::serde_transport::new(
                tarpc::tokio_util::codec::LengthDelimitedCodec::builder().new_framed(tls),
                tarpc::tokio_serde::formats::Bincode::default(),
            );
            // The responses run concurrently on the channel's task instead of one spawned
            // task each (tarpc's examples spawn): pinned, that was the faster of the two
            // (255 k against 220 k calls/s), so the baseline is the stronger one.
            tokio::spawn(
                BaseChannel::with_defaults(transport)
                    .execute(TarpcEchoImpl.serve())
                    .for_each_concurrent(None, |response| response),
            );
        }
    });
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let server_name = rustls::pki_types::ServerName::try_from(format!(
        "{}.tub.folio.invalid",
        server_id.tubid()
    ))?;
    let tls = raw.connector.connect(server_name, s).await?;
    let transport = tarpc::serde_transport::new(
        tarpc::tokio_util::codec::LengthDelimitedCodec::builder().new_framed(tls),
        tarpc::tokio_serde::formats::Bincode::default(),
    );
    Ok(TarpcEchoClient::new(tarpc::client::Config::default(), transport).spawn())
}

async fn run(args: Args) -> Result<()> {
    let mut report = Report {
        rows: Vec::new(),
        json: Vec::new(),
    };
    let server = listening_tub().await?;
    let furl = server.register_as(EchoRef::serve(EchoImpl), "echo")?;
    let (client, _) = tub().await?;
    let echo: EchoRef = client.get(&furl).await?;
    let raw = RawTls::start().await?;
    let tarpc = if args.wants(Figure::Rtt)
        || args.wants(Figure::Pipelined)
        || args.wants(Figure::BulkSeq)
    {
        Some(tarpc_client(&raw).await?)
    } else {
        None
    };

    if args.wants(Figure::Rtt) {
        round_trips(&args, &mut report, &echo, &raw, tarpc.as_ref()).await?;
    }
    if args.wants(Figure::Pipelined) {
        pipelined(&args, &mut report, &echo, tarpc.as_ref()).await?;
    }
    if args.wants(Figure::Bulk) {
        bulk(&args, &mut report, &echo, &raw).await?;
    }
    if args.wants(Figure::Connect) {
        connect(&args, &mut report, &furl, &raw).await?;
    }
    if args.wants(Figure::Idle) {
        idle(&args, &mut report, &furl).await?;
    }
    if args.wants(Figure::BulkSeq) {
        if let Some(tarpc) = tarpc.as_ref() {
            bulk_seq(&args, &mut report, &echo, tarpc).await?;
        }
    }
    if args.wants(Figure::SlowTor) || args.wants(Figure::SlowI2p) {
        report.json(
            "pipelining",
            if cfg!(feature = "pipelining") {
                1.0
            } else {
                0.0
            },
        );
    }
    if args.wants(Figure::SlowTor) {
        let opts = args.slow_options();
        slow::figures(&mut report, slowlink::LinkProfile::tor(), "Tor", "", &opts).await?;
    }
    if args.wants(Figure::SlowI2p) {
        let opts = args.slow_options();
        slow::figures(
            &mut report,
            slowlink::LinkProfile::i2p(),
            "I2P",
            "_i2p",
            &opts,
        )
        .await?;
    }

    if args.json {
        let body: Vec<String> = report
            .json
            .iter()
            .map(|(k, v)| {
                format!(
                    "\"{k}\": {}",
                    if v.is_finite() {
                        format!("{v:.3}")
                    } else {
                        "null".into()
                    }
                )
            })
            .collect();
        println!("{{{}}}", body.join(", "));
    } else {
        println!(
            "folio-bench on 127.0.0.1{}",
            if args.pinned {
                " (pinned to CPU 0)"
            } else {
                ""
            }
        );
        for (label, value) in &report.rows {
            if value.is_empty() {
                println!("  {label}");
            } else {
                println!("  {label:<46} {value}");
            }
        }
    }
    Ok(())
}

/// A figure's median, in µs, from its samples.
fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort();
    micros(percentile(samples, 50))
}

/// 1. Round trip: Folio, raw TLS and (for context) tarpc, one call or echo at a time.
async fn round_trips(
    args: &Args,
    report: &mut Report,
    echo: &EchoRef,
    raw: &RawTls,
    tarpc: Option<&TarpcEchoClient>,
) -> Result<()> {
    let n = args.round_trips.max(10);
    for i in 0..n / 10 {
        echo.ping(i as u64).await?;
    }
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        echo.ping(i as u64).await?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let mut tls = raw.connect().await?;
    let mut raw_rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 16];
    for i in 0..n + n / 10 {
        let t = Instant::now();
        tls.write_all(&[7u8; 16]).await?;
        tls.flush().await?;
        tls.read_exact(&mut buf).await?;
        if i >= n / 10 {
            raw_rtts.push(t.elapsed());
        }
    }
    let rtt = micros(percentile(&rtts, 50));
    let raw_rtt = median_us(&mut raw_rtts);
    report.figure("rtt_us", "round trip, typed call (median)", rtt, "µs");
    report.figure(
        "rtt_p99_us",
        "round trip, typed call (p99)",
        micros(percentile(&rtts, 99)),
        "µs",
    );
    report.figure(
        "raw_tls_rtt_us",
        "round trip, raw TLS 16 B (median)",
        raw_rtt,
        "µs",
    );
    report.figure("rtt_ratio", "  ratio (target ≤ 1.25)", rtt / raw_rtt, "×");
    if let Some(tarpc) = tarpc {
        let mut tarpc_rtts = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            tarpc.ping(tarpc::context::current(), i as u64).await?;
            if i >= n / 10 {
                tarpc_rtts.push(t.elapsed());
            }
        }
        report.figure(
            "tarpc_rtt_us",
            "round trip, tarpc (median)",
            median_us(&mut tarpc_rtts),
            "µs",
        );
    }
    Ok(())
}

/// 2. Pipelined calls: 64 tasks each calling in a loop on one connection, Folio then tarpc.
async fn pipelined(
    args: &Args,
    report: &mut Report,
    echo: &EchoRef,
    tarpc: Option<&TarpcEchoClient>,
) -> Result<()> {
    let total = args.pipelined_calls.max(64);
    let share = |w: usize| total / 64 + usize::from(w < total % 64);
    let t = Instant::now();
    let mut workers = Vec::new();
    for w in 0..64 {
        let echo = echo.clone();
        let count = share(w);
        workers.push(tokio::spawn(async move {
            for i in 0..count {
                echo.ping(i as u64).await.expect("ping");
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let cps = total as f64 / t.elapsed().as_secs_f64();
    report.figure(
        "calls_per_s_64",
        "pipelined calls/s (64 outstanding)",
        cps,
        "calls/s",
    );
    if let Some(tarpc) = tarpc {
        let t = Instant::now();
        let mut workers = Vec::new();
        for w in 0..64 {
            let tarpc = tarpc.clone();
            let count = share(w);
            workers.push(tokio::spawn(async move {
                for i in 0..count {
                    tarpc
                        .ping(tarpc::context::current(), i as u64)
                        .await
                        .expect("tarpc ping");
                }
            }));
        }
        for w in workers {
            w.await?;
        }
        let tarpc_cps = total as f64 / t.elapsed().as_secs_f64();
        report.figure(
            "tarpc_calls_per_s_64",
            "pipelined calls/s, tarpc 0.38 over TLS",
            tarpc_cps,
            "calls/s",
        );
        report.figure(
            "calls_ratio_vs_tarpc",
            "  ratio (target ≥ 1.2)",
            cps / tarpc_cps,
            "×",
        );
    }
    Ok(())
}

/// 3. Bulk: 64 KiB call arguments, 8 in flight, against 64 KiB raw TLS writes.
async fn bulk(args: &Args, report: &mut Report, echo: &EchoRef, raw: &RawTls) -> Result<()> {
    let chunks = args.bulk_mib * 1024 * 1024 / CHUNK;
    let data = Bytes(vec![0xa5u8; CHUNK]);
    let t = Instant::now();
    let mut inflight = Vec::new();
    for _ in 0..chunks {
        let echo = echo.clone();
        let data = data.clone();
        inflight.push(tokio::spawn(
            async move { echo.sink(data).await.expect("sink") },
        ));
        if inflight.len() >= 8 {
            inflight.remove(0).await?;
        }
    }
    for f in inflight {
        f.await?;
    }
    let bulk = (chunks * CHUNK) as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64();
    let mut tls = raw.connect().await?;
    let t = Instant::now();
    for _ in 0..chunks {
        tls.write_all(&data[..]).await?;
    }
    tls.flush().await?;
    tls.shutdown().await?;
    let raw_bulk = (chunks * CHUNK) as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64();
    report.figure("bulk_mib_s", "bulk, 64 KiB call arguments", bulk, "MiB/s");
    report.figure(
        "raw_tls_bulk_mib_s",
        "bulk, raw TLS 64 KiB writes",
        raw_bulk,
        "MiB/s",
    );
    report.figure("bulk_ratio", "  ratio (target ≥ 0.8)", bulk / raw_bulk, "×");
    Ok(())
}

/// Lets both ends finish with the connection just made before the next one is timed: its
/// teardown (the goodbye, `close_notify`, the tasks ending) is not part of a connect, and on
/// one CPU it would otherwise run inside the next timed region. Folio and the raw figure get
/// the same pause.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// 4. Connect: a fresh Tub's first answer, against TCP + TLS + a 1-byte echo.
async fn connect(
    args: &Args,
    report: &mut Report,
    furl: &folio_rpc::Furl,
    raw: &RawTls,
) -> Result<()> {
    let mut connects = Vec::new();
    for _ in 0..args.connects.max(5) {
        let (fresh, _) = tub().await?;
        let t = Instant::now();
        let e: EchoRef = fresh.get(furl).await?;
        e.ping(1).await?;
        connects.push(t.elapsed());
        fresh.shutdown().await;
        drop(fresh);
        settle().await;
    }
    let mut raw_connects = Vec::new();
    for _ in 0..args.connects.max(5) {
        let t = Instant::now();
        let mut tls = raw.connect().await?;
        tls.write_all(&[1]).await?;
        tls.flush().await?;
        let mut one = [0u8; 1];
        tls.read_exact(&mut one).await?;
        raw_connects.push(t.elapsed());
        drop(tls);
        settle().await;
    }
    let connect = median_us(&mut connects);
    let raw_connect = median_us(&mut raw_connects);
    report.figure(
        "connect_us",
        "connect + handshake + first answer (median)",
        connect,
        "µs",
    );
    report.figure(
        "raw_tls_connect_us",
        "raw TCP + TLS handshake + 1 B echo (median)",
        raw_connect,
        "µs",
    );
    report.figure(
        "connect_ratio",
        "  ratio (target ≤ 1.15)",
        connect / raw_connect,
        "×",
    );
    Ok(())
}

/// Memory per idle connection, figure 5 (both ends are in this process: the figure covers one
/// client end plus one server end, which is what a connection costs a grid of two).
async fn idle(args: &Args, report: &mut Report, furl: &folio_rpc::Furl) -> Result<()> {
    let before = rss_bytes()?;
    let mut idle = Vec::new();
    for _ in 0..args.idle {
        let (t, _) = tub().await?;
        let e: EchoRef = t.get(furl).await?;
        e.ping(0).await?;
        idle.push((t, e));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes()?;
    let per_conn = after.saturating_sub(before) as f64 / args.idle.max(1) as f64;
    report.figure(
        "idle_conn_bytes",
        "RSS per idle connection (both ends)",
        per_conn,
        "bytes",
    );
    report.figure(
        "idle_conns_held",
        "idle connections held",
        idle.len() as f64,
        "",
    );
    Ok(())
}

/// Sequential bulk, figure 6: one call at a time with a 64 KiB argument, its answer awaited
/// before the next, Folio and tarpc over the same TLS configurations, in four rounds that
/// alternate which goes first (so that a slow phase of the machine falls on both). Each
/// call's argument is a fresh copy of the same 64 KiB, on both sides (both APIs take it by
/// value).
async fn bulk_seq(
    args: &Args,
    report: &mut Report,
    echo: &EchoRef,
    tarpc: &TarpcEchoClient,
) -> Result<()> {
    const ROUNDS: usize = 4;
    let per_round = (args.bulk_seq_mib * 1024 * 1024 / CHUNK / ROUNDS).max(10);
    let data = Bytes(vec![0x5au8; CHUNK]);
    for _ in 0..per_round / 4 {
        echo.sink(data.clone()).await?;
        tarpc.sink(tarpc::context::current(), data.clone()).await?;
    }
    let (mut folio_time, mut tarpc_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        for side in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            for _ in 0..per_round {
                let n = if side == 0 {
                    echo.sink(data.clone()).await?
                } else {
                    tarpc.sink(tarpc::context::current(), data.clone()).await?
                };
                anyhow::ensure!(n as usize == CHUNK, "sink answered {n}");
            }
            let took = t.elapsed();
            if side == 0 {
                folio_time += took;
            } else {
                tarpc_time += took;
            }
        }
    }
    let mib = (ROUNDS * per_round * CHUNK) as f64 / (1024.0 * 1024.0);
    let folio = mib / folio_time.as_secs_f64();
    let tarpc_mib_s = mib / tarpc_time.as_secs_f64();
    report.figure(
        "bulk_seq_mib_s",
        "bulk, one 64 KiB call at a time",
        folio,
        "MiB/s",
    );
    report.figure(
        "tarpc_bulk_seq_mib_s",
        "bulk, one 64 KiB call at a time, tarpc 0.38",
        tarpc_mib_s,
        "MiB/s",
    );
    report.figure(
        "bulk_seq_ratio_vs_tarpc",
        "  ratio (target ≥ 1.0)",
        folio / tarpc_mib_s,
        "×",
    );
    Ok(())
}

fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has no RSS field")?
        .parse()?;
    Ok(pages * 4096)
}
