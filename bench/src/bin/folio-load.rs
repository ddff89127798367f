//! `folio-load`: the 10,000-peer load test (issue 16, "Hold 10,000 peers").
//!
//! One storage node runs in this process: a Tub with [`node_tub_config`] exporting the node's
//! storage service ([`Storage`]) over TCP on 127.0.0.1. Around it, child processes (this same
//! binary, re-executed with a hidden role):
//!
//! - `worker` (`--workers` of them): each makes its share of the `--peers` idle peers, one
//!   Tub per peer (its own identity, so a full TLS handshake, hello and FURL resolution per
//!   peer), one `get_version` call each, then holds them idle until its stdin closes;
//! - `honest`: a well-behaved client, started afresh for each phase, that times `--rounds`
//!   times a fresh Tub's connect (dial, handshake, resolution, first answer), a put (allocate,
//!   write in 512 KiB calls, close) and a get (get_buckets, read, compare) of a
//!   `--file-kib` file;
//! - `flood`: `--flood` raw TCP connections that each send a valid prelude request for the
//!   node's TubId and then nothing, so that each holds a pending handshake until the node
//!   answers Busy, evicts it or times the TLS handshake out; it counts the answers it gets.
//!   Twice per cycle: *held* (each connection dials once) and *re-dialed* (each dials again
//!   `--flood-redial-ms` after the node closes it, at most `--flood-redial-rate` dials a
//!   second in all).
//!
//! The phases: (a) honest client against the idle node, then the start figures (RSS, live
//! tasks of the node's runtime, open files). Then `--cycles` times: the peers connect; the
//! node's CPU while it holds them; (b) honest client while the node holds them; (c) honest
//! client during the held flood, then during the re-dialed flood; then every peer and flood
//! socket goes away and the node must come back to no connections and no more tasks than at
//! the start. RSS is reported as it is and after `malloc_trim`, to tell a leak from memory
//! glibc keeps for reuse. docs/performance.md, "10,000 peers (issue 16)", has the figures.
//!
//! Every wait is bounded, and children die with this process: their stdin closes, and
//! `PR_SET_PDEATHSIG` kills them if this process is killed. (That signal follows the
//! *thread* that spawned the child: workers and floods are spawned from the runtime's worker
//! threads, which live as long as the run, and honest clients from a blocking thread that
//! waits for them.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use folio_handlers::{Registry, TcpListener};
use folio_node::node::node_tub_config;
use folio_node::storage::{CanaryRef, NullCanary, Storage, StorageConfig, StorageServerRef};
use folio_rpc::{Bytes, Furl, Hint, Host, Identity, Tub, TubConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The system allocator, counting the bytes allocated and not yet freed: tells the heap the
/// node's connections hold from the rest of its RSS (allocator overhead, free lists, stacks).
struct Counting;

static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counter is a side note.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc(layout);
        if !p.is_null() {
            HEAP_LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc_zeroed(layout);
        if !p.is_null() {
            HEAP_LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout);
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let p = std::alloc::System.realloc(ptr, layout, new);
        if !p.is_null() {
            HEAP_LIVE.fetch_add(new, Ordering::Relaxed);
            HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The storage API's largest write or read per call.
const CHUNK: usize = folio_node::storage::MAX_CHUNK as usize;

#[derive(Debug, Parser)]
#[command(
    name = "folio-load",
    version,
    about = "Hold N idle peers on one storage node, time an honest client, flood the node, check it recovers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Idle peers (distinct client Tubs, one connection each) the node holds.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Worker processes the peers are spread over.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Handshakes each worker runs at once (paced well under the node's pending-handshake cap).
    #[arg(long, default_value_t = 16)]
    connect_concurrency: usize,
    /// Raw connections of the flood, each holding a pending handshake.
    #[arg(long, default_value_t = 3000)]
    flood: usize,
    /// A second flood follows the first (whose connections are held, each dialed once):
    /// each connection, once the node closes it (Busy, eviction, timeout), dials again after
    /// this pause. 0: no second flood.
    #[arg(long, default_value_t = 1000)]
    flood_redial_ms: u64,
    /// The second flood's re-dials, per second, at most (0: as fast as its connections
    /// come back).
    #[arg(long, default_value_t = 2000)]
    flood_redial_rate: u64,
    /// Times the peers arrive, the floods run and the peers leave (a leak grows the node's
    /// RSS after malloc_trim, or its tasks, from cycle to cycle).
    #[arg(long, default_value_t = 2)]
    cycles: usize,
    /// Honest connect + put + get rounds per phase (medians are reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Pause between the honest client's rounds.
    #[arg(long, default_value_t = 300)]
    round_gap_ms: u64,
    /// Size of the honest client's file, in KiB.
    #[arg(long, default_value_t = 1024)]
    file_kib: usize,
    /// How long the honest client keeps retrying a refused connect before giving up.
    #[arg(long, default_value_t = 60)]
    connect_deadline_secs: u64,
    /// Where the storage node keeps its shares (default: a fresh directory under the system
    /// temporary directory, removed at the end).
    #[arg(long)]
    storage_dir: Option<PathBuf>,
    /// Bound on each wait for the node to come back after the peers leave.
    #[arg(long, default_value_t = 120)]
    leave_timeout_secs: u64,
    /// Print one JSON object (stable keys) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON object to this file (the table still goes to stdout).
    #[arg(long)]
    json_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Idle peers (internal).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        furl: String,
        #[arg(long)]
        peers: usize,
        #[arg(long)]
        concurrency: usize,
    },
    /// The well-behaved client (internal).
    #[command(hide = true)]
    Honest {
        #[arg(long)]
        furl: String,
        #[arg(long)]
        rounds: usize,
        #[arg(long)]
        round_gap_ms: u64,
        #[arg(long)]
        file_kib: usize,
        #[arg(long)]
        connect_deadline_secs: u64,
    },
    /// Pending handshakes (internal).
    #[command(hide = true)]
    Flood {
        #[arg(long)]
        furl: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        retry_ms: u64,
        #[arg(long)]
        rate: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.role {
        None => run_main(cli.run),
        Some(Role::Worker {
            furl,
            peers,
            concurrency,
        }) => worker(&furl, peers, concurrency),
        Some(Role::Honest {
            furl,
            rounds,
            round_gap_ms,
            file_kib,
            connect_deadline_secs,
        }) => honest(&furl, rounds, round_gap_ms, file_kib, connect_deadline_secs),
        Some(Role::Flood {
            furl,
            count,
            retry_ms,
            rate,
        }) => flood(&furl, count, retry_ms, rate),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("folio-load: error: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Process plumbing

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; fails if that is below `need`.
fn raise_nofile(need: usize, who: &str) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!(
                "getrlimit(RLIMIT_NOFILE): {}",
                std::io::Error::last_os_error()
            );
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!(
                    "setrlimit(RLIMIT_NOFILE): {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    let have: u64 = lim.rlim_cur;
    if have < need as u64 {
        bail!(
            "the {who} needs {need} open files but RLIMIT_NOFILE's hard limit is {have}: \
             raise it (ulimit -Hn, /etc/security/limits.conf, LimitNOFILE=) or use fewer \
             peers per process (--workers) or a smaller --peers/--flood"
        );
    }
    Ok(have)
}

/// A child process dies with its parent, even if the parent is killed.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number; no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
    // If the parent already died before the prctl, exit now.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        std::process::exit(1);
    }
}

/// Exits the process when stdin closes (the parent closed it, or died).
fn exit_on_stdin_eof(code: i32, before_exit: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let mut sink = String::new();
        let stdin = std::io::stdin();
        loop {
            sink.clear();
            match stdin.lock().read_line(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        before_exit();
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    });
}

/// Reads `/proc/self/status`'s VmRSS, in bytes.
fn rss_bytes() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("/proc/self/status has no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS has no value")?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows`, for the whole network namespace).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
}

/// CPU and listen-queue overflows from a start point.
struct Meter {
    t: Instant,
    cpu: f64,
    overflows: Option<u64>,
}

impl Meter {
    fn start() -> Meter {
        Meter {
            t: Instant::now(),
            cpu: cpu_secs(),
            overflows: listen_overflows(),
        }
    }

    /// The node's CPU use since the start, in % of one core.
    fn cpu_pct(&self) -> f64 {
        let pct = (cpu_secs() - self.cpu) / self.t.elapsed().as_secs_f64().max(1e-3) * 100.0;
        (pct * 10.0).round() / 10.0
    }

    fn overflows(&self) -> Option<u64> {
        Some(listen_overflows()?.saturating_sub(self.overflows?))
    }
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A child process speaking lines on stdout, killed (by its PID) when dropped.
struct ChildProc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    fn spawn(name: &str, args: &[String]) -> Result<ChildProc> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProc {
            name: name.to_string(),
            child,
            stdin,
            lines,
        })
    }

    /// The next stdout line, within `timeout`.
    fn line(&self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} said nothing for {:?}", self.name, timeout)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{} exited early (see its error above)", self.name)
            }
        }
    }

    /// Closes its stdin: the child's signal to finish.
    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits up to `timeout` for it to exit; kills it after that. True if it exited by itself.
    fn finish(&mut self, timeout: Duration) -> bool {
        self.close_stdin();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a blocking child-process wait off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("blocking task: {e}"))
}

// ---------------------------------------------------------------------------------------
// The node, and the main sequence

/// What the honest client measured in one phase.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct HonestResult {
    connect_ms: Vec<f64>,
    put_ms: Vec<f64>,
    get_ms: Vec<f64>,
    /// Connect attempts per round (1 when the first succeeded).
    connect_attempts: Vec<u32>,
    /// Rounds that failed, and why.
    errors: Vec<String>,
}

/// What the flood saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct FloodStats {
    /// TCP connections opened.
    connects: u64,
    /// TCP connects that failed.
    connect_errors: u64,
    /// Prelude answers with status Busy.
    busy: u64,
    /// Prelude answers with status Proceed (a pending handshake held until the node's
    /// timeout).
    proceed: u64,
    /// Other prelude answers (or undecodable bytes).
    other_answers: u64,
    /// Connections the node closed (or reset) without a prelude answer.
    closed_without_answer: u64,
    /// Of the Proceed connections, those the node closed while we stayed silent.
    closed_after_proceed: u64,
    /// Most flood connections open at once, and how many were open when the flood stopped.
    peak_open: u64,
    open_at_stop: u64,
    /// Seconds until every connection had been dialed once and had sent its request.
    opened_s: f64,
    /// Seconds from the first dial to the stop.
    duration_s: f64,
}

async fn serve_node(storage_dir: &std::path::Path) -> Result<(Tub, Furl, SocketAddr, Storage)> {
    let storage = Storage::open(StorageConfig::new(storage_dir.join("storage")))
        .context("opening the storage directory")?;
    let tub = Tub::new(
        Identity::generate()?,
        Arc::new(Registry::with_tcp()),
        node_tub_config(),
    )?;
    let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse()?).await?;
    let hint = listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()));
    let Hint::Tcp { port, .. } = &hint else {
        bail!("the TCP listener gave a non-TCP hint {hint}");
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], *port));
    tub.set_location(vec![hint]);
    tub.listen(listener);
    let furl = tub.register_as(storage.serve(), "storage")?;
    Ok((tub, furl, addr, storage))
}

fn live_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Polls `cond` every 50 ms for up to `timeout`; returns how long it took, or None.
async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if cond() {
            return Some(t.elapsed());
        }
        if t.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_main(args: RunArgs) -> Result<i32> {
    if args.workers == 0 || args.rounds == 0 || args.file_kib == 0 || args.cycles == 0 {
        bail!("--workers, --rounds, --file-kib and --cycles must be at least 1");
    }
    let limit = raise_nofile(args.peers + args.flood + 256, "node process")?;
    let json_file = args.json_file.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (dir, remove_dir) = match &args.storage_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("folio-load-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = rt.block_on(async {
        // The sequence runs in a spawned task, as a daemon's work does.
        let dir = dir.clone();
        tokio::spawn(async move { sequence(args, limit, &dir).await })
            .await
            .map_err(|e| anyhow!("the load-test task: {e}"))?
    });
    // Leave whatever the node's tasks still do (a timed-out run) behind with the runtime.
    rt.shutdown_timeout(Duration::from_secs(5));
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (report, human, json) = result?;
    if let Some(path) = &json_file {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{human}");
    }
    let ok = report.get("ok").and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(if ok { 0 } else { 2 })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[(s.len() - 1) / 2])
}

async fn run_honest(args: &RunArgs, furl: &Furl, phase: &str) -> Result<HonestResult> {
    let child_args = vec![
        "honest".to_string(),
        "--furl".into(),
        furl.to_string(),
        "--rounds".into(),
        args.rounds.to_string(),
        "--round-gap-ms".into(),
        args.round_gap_ms.to_string(),
        "--file-kib".into(),
        args.file_kib.to_string(),
        "--connect-deadline-secs".into(),
        args.connect_deadline_secs.to_string(),
    ];
    let budget = Duration::from_secs(
        (args.rounds as u64)
            * (args.connect_deadline_secs
                + 60
                + args.round_gap_ms / 1000
                + (args.file_kib as u64) / 1024),
    );
    let name = format!("the honest client ({phase})");
    blocking(move || -> Result<HonestResult> {
        let mut child = ChildProc::spawn(&name, &child_args)?;
        let line = child.line(budget)?;
        child.finish(Duration::from_secs(10));
        serde_json::from_str(&line).with_context(|| format!("{name} said {line:?}"))
    })
    .await?
}

/// Where the node stands at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
struct Snapshot {
    rss: u64,
    /// Heap bytes allocated and not freed.
    heap: u64,
    tasks: usize,
    connections: usize,
    fds: usize,
}

fn snapshot(tub: &Tub) -> Result<Snapshot> {
    Ok(Snapshot {
        rss: rss_bytes()?,
        heap: HEAP_LIVE.load(Ordering::Relaxed) as u64,
        tasks: live_tasks(),
        connections: tub.connection_count(),
        fds: open_fds(),
    })
}

type Outcome = (serde_json::Map<String, serde_json::Value>, String, bool);

/// Progress lines, on stderr in both output modes: a long run should say where it is.
struct Log(Instant);

impl Log {
    fn say(&self, s: impl std::fmt::Display) {
        eprintln!("[{:7.1}s] {s}", self.0.elapsed().as_secs_f64());
    }
}

/// One flood phase: the node's state under it, what the flood saw, and the honest client.
struct FloodOut {
    snap: Snapshot,
    stats: FloodStats,
    honest: HonestResult,
    /// The node's CPU use during the flood (% of one core).
    cpu_pct: f64,
    /// Streams the kernel dropped because the node's listen queue was full.
    listen_overflows: Option<u64>,
}

/// One cycle: the peers arrive, phases (b) and (c), the peers leave.
struct Cycle {
    peers_up: usize,
    peers_failed: usize,
    peers_retried: usize,
    peers_connect_s: f64,
    peers_overflows: Option<u64>,
    cpu_holding_pct: f64,
    loaded: Snapshot,
    honest_loaded: HonestResult,
    hold: Option<FloodOut>,
    redial: Option<FloodOut>,
    workers_exited: bool,
    conns_gone: Option<Duration>,
    tasks_back: Option<Duration>,
    after: Snapshot,
    rss_after_trim: u64,
}

async fn flood_phase(
    args: &RunArgs,
    furl: &Furl,
    tub: &Tub,
    log: &Log,
    retry_ms: u64,
) -> Result<FloodOut> {
    let what = if retry_ms == 0 {
        "held".to_string()
    } else {
        format!("re-dialed {retry_ms} ms after each close")
    };
    let child_args = vec![
        "flood".to_string(),
        "--furl".into(),
        furl.to_string(),
        "--count".into(),
        args.flood.to_string(),
        "--retry-ms".into(),
        retry_ms.to_string(),
        "--rate".into(),
        if retry_ms == 0 {
            0
        } else {
            args.flood_redial_rate
        }
        .to_string(),
    ];
    let meter = Meter::start();
    let flooder = ChildProc::spawn("the flood", &child_args)?;
    log.say(format!("flood: {} connections, {what}", args.flood));
    let mut flooder = blocking(move || -> Result<ChildProc> {
        let line = flooder.line(Duration::from_secs(120))?;
        if line.trim() != "ready" {
            bail!("the flood said {line:?}");
        }
        Ok(flooder)
    })
    .await??;
    let snap = snapshot(tub)?;
    log.say(format!(
        "flooded: {} connections, RSS {} KiB, {} live tasks, {} fds",
        snap.connections,
        snap.rss / 1024,
        snap.tasks,
        snap.fds
    ));
    let honest = run_honest(args, furl, &format!("node flooded, {what}")).await?;
    let stats = blocking(move || -> Result<FloodStats> {
        flooder.close_stdin();
        let line = flooder.line(Duration::from_secs(30))?;
        flooder.finish(Duration::from_secs(10));
        serde_json::from_str(&line).with_context(|| format!("the flood said {line:?}"))
    })
    .await??;
    let (cpu_pct, listen_overflows) = (meter.cpu_pct(), meter.overflows());
    log.say(format!(
        "flood stopped: {stats:?}; node CPU {cpu_pct} %, listen-queue overflows {listen_overflows:?}"
    ));
    Ok(FloodOut {
        snap,
        stats,
        honest,
        cpu_pct,
        listen_overflows,
    })
}

async fn cycle(
    args: &RunArgs,
    furl: &Furl,
    tub: &Tub,
    log: &Log,
    start: &Snapshot,
) -> Result<Cycle> {
    // The idle peers.
    let mut workers = Vec::new();
    let per = args.peers / args.workers;
    let t_peers = Instant::now();
    let peers_meter = Meter::start();
    for w in 0..args.workers {
        let n = per + usize::from(w < args.peers % args.workers);
        if n == 0 {
            continue;
        }
        let child_args = vec![
            "worker".to_string(),
            "--furl".into(),
            furl.to_string(),
            "--peers".into(),
            n.to_string(),
            "--concurrency".into(),
            args.connect_concurrency.to_string(),
        ];
        workers.push(ChildProc::spawn(&format!("worker {w}"), &child_args)?);
    }
    log.say(format!(
        "{} peers connecting from {} workers",
        args.peers,
        workers.len()
    ));
    let (mut peers_up, mut peers_failed, mut peers_retried) = (0usize, 0usize, 0usize);
    let mut pending: Vec<usize> = (0..workers.len()).collect();
    let mut last_log = Instant::now();
    // Generous: about 20 ms per peer and worker process, on top of two minutes.
    let bound = Duration::from_secs(120 + (args.peers as u64) / 50);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            match workers[i].lines.try_recv() {
                Ok(line) => {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() == 4 && f[0] == "ready" {
                        peers_up += f[1].parse::<usize>()?;
                        peers_failed += f[2].parse::<usize>()?;
                        peers_retried += f[3].parse::<usize>()?;
                    } else {
                        still.push(i);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => still.push(i),
                Err(mpsc::TryRecvError::Disconnected) => {
                    bail!("worker {i} exited before its peers were up (see its error above)")
                }
            }
        }
        pending = still;
        if last_log.elapsed() > Duration::from_secs(10) {
            log.say(format!(
                "… the node holds {} connections after {:.0} s",
                tub.connection_count(),
                t_peers.elapsed().as_secs_f64()
            ));
            last_log = Instant::now();
        }
        if t_peers.elapsed() > bound {
            bail!(
                "the peers were not all up after {:.0} s ({} workers still connecting; the node holds {})",
                t_peers.elapsed().as_secs_f64(),
                pending.len(),
                tub.connection_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peers_connect_s = t_peers.elapsed().as_secs_f64();
    let peers_overflows = peers_meter.overflows();
    log.say(format!(
        "{peers_up} peers up ({peers_failed} failed, {peers_retried} retried) in {peers_connect_s:.1} s"
    ));
    // Let the last answers, buffers and timers settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = snapshot(tub)?;
    log.say(format!(
        "holding: {} connections, RSS {} KiB (+{:.0} B per connection), {} live tasks, {} fds",
        loaded.connections,
        loaded.rss / 1024,
        per_conn(start, &loaded),
        loaded.tasks,
        loaded.fds
    ));

    // What holding them costs, with nothing else going on.
    let meter = Meter::start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_holding_pct = meter.cpu_pct();
    log.say(format!(
        "node CPU while holding them: {cpu_holding_pct} % of one core"
    ));

    // (b) The node holding the peers.
    let honest_loaded = run_honest(args, furl, "node holding the peers").await?;

    // (c) The floods: held, then re-dialed.
    let mut hold = None;
    let mut redial = None;
    if args.flood > 0 {
        hold = Some(flood_phase(args, furl, tub, log, 0).await?);
        if args.flood_redial_ms > 0 {
            redial = Some(flood_phase(args, furl, tub, log, args.flood_redial_ms).await?);
        }
    }

    // Every peer leaves: the workers exit, so the kernel closes all their sockets at once.
    log.say("peers leaving");
    let workers_exited = blocking(move || {
        let mut all = true;
        for mut w in workers {
            all &= w.finish(Duration::from_secs(30));
        }
        all
    })
    .await?;
    let bound = Duration::from_secs(args.leave_timeout_secs);
    let conns_gone = wait_until(bound, || tub.connection_count() == 0).await;
    let tasks_back = wait_until(bound, || live_tasks() <= start.tasks).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = snapshot(tub)?;
    // What glibc keeps in its free lists is given back, to tell a leak from a cache.
    // SAFETY: malloc_trim has no preconditions (glibc).
    unsafe {
        libc::malloc_trim(0);
    }
    let rss_after_trim = rss_bytes()?;
    log.say(format!(
        "after: {} connections (gone in {:?}), {} live tasks (back in {:?}), RSS {} KiB, {} KiB after malloc_trim, {} fds",
        after.connections,
        conns_gone,
        after.tasks,
        tasks_back,
        after.rss / 1024,
        rss_after_trim / 1024,
        after.fds
    ));
    Ok(Cycle {
        peers_up,
        peers_failed,
        peers_retried,
        peers_connect_s,
        peers_overflows,
        cpu_holding_pct,
        loaded,
        honest_loaded,
        hold,
        redial,
        workers_exited,
        conns_gone,
        tasks_back,
        after,
        rss_after_trim,
    })
}

/// RSS growth per connection from `start` to `at`.
fn per_conn(start: &Snapshot, at: &Snapshot) -> f64 {
    at.rss.saturating_sub(start.rss) as f64
        / at.connections.saturating_sub(start.connections).max(1) as f64
}

/// The samples of all cycles together.
fn merged(parts: impl Iterator<Item = HonestResult>) -> HonestResult {
    let mut out = HonestResult::default();
    for p in parts {
        out.connect_ms.extend(p.connect_ms);
        out.put_ms.extend(p.put_ms);
        out.get_ms.extend(p.get_ms);
        out.connect_attempts.extend(p.connect_attempts);
        out.errors.extend(p.errors);
    }
    out
}

async fn sequence(args: RunArgs, nofile: u64, dir: &std::path::Path) -> Result<Outcome> {
    use serde_json::json;
    let log = Log(Instant::now());
    let rss_boot = rss_bytes()?;
    let (tub, furl, addr, _storage) = serve_node(dir).await?;
    log.say(format!("node listening on {addr}, RLIMIT_NOFILE {nofile}"));

    // (a) The idle node, after a warm-up run (the allocator, the storage directory, the
    // page cache) whose figures are dropped.
    log.say(format!(
        "honest client, idle node ({} rounds, after as many to warm up)",
        args.rounds
    ));
    let warm_up = run_honest(&args, &furl, "warm-up").await?;
    if let Some(e) = warm_up.errors.first() {
        bail!("the honest client failed against the idle node: {e}");
    }
    let idle = run_honest(&args, &furl, "idle node").await?;
    if wait_until(Duration::from_secs(30), || tub.connection_count() == 0)
        .await
        .is_none()
    {
        bail!("the honest client's connection did not go away within 30 s");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = snapshot(&tub)?;
    log.say(format!(
        "start: RSS {} KiB, {} live tasks, {} fds",
        start.rss / 1024,
        start.tasks,
        start.fds
    ));

    let mut cycles = Vec::new();
    for c in 0..args.cycles {
        log.say(format!("cycle {} of {}", c + 1, args.cycles));
        cycles.push(cycle(&args, &furl, &tub, &log, &start).await?);
    }
    tub.shutdown().await;

    let first = &cycles[0];
    let last = cycles.last().expect("at least one cycle");
    let loaded = merged(cycles.iter().map(|c| c.honest_loaded.clone()));
    let hold = merged(
        cycles
            .iter()
            .filter_map(|c| c.hold.as_ref().map(|f| f.honest.clone())),
    );
    let redial = merged(
        cycles
            .iter()
            .filter_map(|c| c.redial.as_ref().map(|f| f.honest.clone())),
    );
    let sum = |f: &dyn Fn(&FloodStats) -> u64, pick: Pick| -> u64 {
        cycles.iter().filter_map(pick).map(|o| f(&o.stats)).sum()
    };
    fn hold_of(c: &Cycle) -> Option<&FloodOut> {
        c.hold.as_ref()
    }
    fn redial_of(c: &Cycle) -> Option<&FloodOut> {
        c.redial.as_ref()
    }
    type Pick = fn(&Cycle) -> Option<&FloodOut>;
    let peers_failed: usize = cycles.iter().map(|c| c.peers_failed).sum();
    let rss_per_conn = per_conn(&start, &first.loaded);
    let ms = |v: &[f64]| median(v).map(|x| (x * 100.0).round() / 100.0);
    let slowest = |v: &[f64]| {
        v.iter()
            .copied()
            .reduce(f64::max)
            .map(|x| (x * 100.0).round() / 100.0)
    };
    let max_attempts = |h: &HonestResult| h.connect_attempts.iter().copied().max().unwrap_or(0);
    let leaked_tasks = last.after.tasks.saturating_sub(start.tasks);
    let ok = peers_failed == 0
        && cycles.iter().all(|c| {
            c.peers_up == args.peers
                && c.conns_gone.is_some()
                && c.tasks_back.is_some()
                && c.workers_exited
        })
        && idle.errors.is_empty()
        && loaded.errors.is_empty();
    let secs = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0);

    let mut report = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        report.insert(k.to_string(), v);
    };
    put("peers", json!(args.peers));
    put("workers", json!(args.workers));
    put("cycles", json!(args.cycles));
    put("peers_up", json!(first.peers_up));
    put("peers_failed", json!(peers_failed));
    put(
        "peers_retried",
        json!(cycles.iter().map(|c| c.peers_retried).sum::<usize>()),
    );
    put(
        "peers_connect_s",
        json!((first.peers_connect_s * 10.0).round() / 10.0),
    );
    put("connections_held", json!(first.loaded.connections));
    put("listen_overflows_peers", json!(first.peers_overflows));
    put("node_cpu_holding_pct", json!(first.cpu_holding_pct));
    put(
        "node_cpu_flooded_pct",
        json!(first.hold.as_ref().map(|f| f.cpu_pct)),
    );
    put(
        "node_cpu_flooded_redial_pct",
        json!(first.redial.as_ref().map(|f| f.cpu_pct)),
    );
    put(
        "listen_overflows_flooded",
        json!(cycles
            .iter()
            .filter_map(hold_of)
            .filter_map(|f| f.listen_overflows)
            .sum::<u64>()),
    );
    put(
        "listen_overflows_flooded_redial",
        json!(cycles
            .iter()
            .filter_map(redial_of)
            .filter_map(|f| f.listen_overflows)
            .sum::<u64>()),
    );
    put("rss_boot", json!(rss_boot));
    put("rss_start", json!(start.rss));
    put("rss_loaded", json!(first.loaded.rss));
    put("rss_per_idle_conn_bytes", json!(rss_per_conn.round()));
    let heap_per_conn = first.loaded.heap.saturating_sub(start.heap) as f64
        / first
            .loaded
            .connections
            .saturating_sub(start.connections)
            .max(1) as f64;
    put("heap_per_idle_conn_bytes", json!(heap_per_conn.round()));
    put("heap_start", json!(start.heap));
    put("heap_loaded", json!(first.loaded.heap));
    put("heap_after", json!(last.after.heap));
    put(
        "heap_after_by_cycle",
        json!(cycles.iter().map(|c| c.after.heap).collect::<Vec<_>>()),
    );
    put(
        "rss_flooded",
        json!(first.hold.as_ref().map(|f| f.snap.rss)),
    );
    put(
        "rss_flooded_redial",
        json!(first.redial.as_ref().map(|f| f.snap.rss)),
    );
    put("rss_after", json!(last.after.rss));
    put("rss_after_trim", json!(last.rss_after_trim));
    put(
        "rss_after_by_cycle",
        json!(cycles.iter().map(|c| c.after.rss).collect::<Vec<_>>()),
    );
    put(
        "rss_after_trim_by_cycle",
        json!(cycles.iter().map(|c| c.rss_after_trim).collect::<Vec<_>>()),
    );
    put("tasks_start", json!(start.tasks));
    put("tasks_loaded", json!(first.loaded.tasks));
    put(
        "tasks_flooded",
        json!(first.hold.as_ref().map(|f| f.snap.tasks)),
    );
    put(
        "tasks_flooded_redial",
        json!(first.redial.as_ref().map(|f| f.snap.tasks)),
    );
    put("tasks_after", json!(last.after.tasks));
    put(
        "tasks_after_by_cycle",
        json!(cycles.iter().map(|c| c.after.tasks).collect::<Vec<_>>()),
    );
    put("tasks_leaked", json!(leaked_tasks));
    put("tasks_back_s", json!(secs(last.tasks_back)));
    put("fds_start", json!(start.fds));
    put("fds_loaded", json!(first.loaded.fds));
    put("fds_after", json!(last.after.fds));
    put("connections_after", json!(last.after.connections));
    put("connections_gone_s", json!(secs(last.conns_gone)));
    for (phase, h) in [
        ("idle", &idle),
        ("loaded", &loaded),
        ("flooded", &hold),
        ("flooded_redial", &redial),
    ] {
        put(&format!("connect_ms_{phase}"), json!(ms(&h.connect_ms)));
        put(
            &format!("connect_ms_max_{phase}"),
            json!(slowest(&h.connect_ms)),
        );
        put(&format!("put_ms_{phase}"), json!(ms(&h.put_ms)));
        put(&format!("get_ms_{phase}"), json!(ms(&h.get_ms)));
        put(
            &format!("connect_attempts_max_{phase}"),
            json!(max_attempts(h)),
        );
        put(&format!("honest_failures_{phase}"), json!(h.errors.len()));
    }
    put("flood", json!(args.flood));
    put("flood_redial_ms", json!(args.flood_redial_ms));
    put("flood_redial_rate", json!(args.flood_redial_rate));
    let achieved = |pick: Pick| {
        let (n, t) = cycles
            .iter()
            .filter_map(pick)
            .fold((0u64, 0f64), |(n, t), f| {
                (n + f.stats.connects, t + f.stats.duration_s)
            });
        (t > 0.0).then(|| (n as f64 / t).round())
    };
    put("flood_connects_per_s", json!(achieved(hold_of)));
    put("flood_redial_connects_per_s", json!(achieved(redial_of)));
    for (suffix, pick) in [("", hold_of as Pick), ("_redial", redial_of)] {
        let busy_key = format!("busy_answers{suffix}");
        put(&busy_key, json!(sum(&|s| s.busy, pick)));
        put(
            &format!("flood{suffix}_connects"),
            json!(sum(&|s| s.connects, pick)),
        );
        put(
            &format!("flood{suffix}_proceed_answers"),
            json!(sum(&|s| s.proceed, pick)),
        );
        put(
            &format!("flood{suffix}_closed_after_proceed"),
            json!(sum(&|s| s.closed_after_proceed, pick)),
        );
        put(
            &format!("flood{suffix}_closed_without_answer"),
            json!(sum(&|s| s.closed_without_answer, pick)),
        );
        put(
            &format!("flood{suffix}_connect_errors"),
            json!(sum(&|s| s.connect_errors, pick)),
        );
        put(
            &format!("flood{suffix}_other_answers"),
            json!(sum(&|s| s.other_answers, pick)),
        );
        put(
            &format!("flood{suffix}_peak_open"),
            json!(cycles
                .iter()
                .filter_map(pick)
                .map(|o| o.stats.peak_open)
                .max()),
        );
    }
    put("rounds", json!(args.rounds));
    put("file_kib", json!(args.file_kib));
    put("ok", json!(ok));
    let errors: Vec<String> = [
        ("idle", &idle),
        ("loaded", &loaded),
        ("flooded", &hold),
        ("flooded_redial", &redial),
    ]
    .iter()
    .flat_map(|(p, h)| h.errors.iter().map(move |e| format!("{p}: {e}")))
    .collect();
    put("honest_errors", json!(errors));

    // The table.
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let opt = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:.1} ms"));
    let mut w = String::new();
    use std::fmt::Write as _;
    writeln!(
        w,
        "folio-load: {} idle peers on one storage node, 127.0.0.1, {} cycle(s)",
        args.peers, args.cycles
    )?;
    for (i, c) in cycles.iter().enumerate() {
        writeln!(
            w,
            "  cycle {}: peers up / failed / retried {} / {} / {} in {:.1} s; after: {} connections, {} tasks, RSS {} ({} after malloc_trim)",
            i + 1,
            c.peers_up,
            c.peers_failed,
            c.peers_retried,
            c.peers_connect_s,
            c.after.connections,
            c.after.tasks,
            mib(c.after.rss),
            mib(c.rss_after_trim)
        )?;
    }
    writeln!(
        w,
        "  node RSS start / holding (cycle 1)     {} / {}",
        mib(start.rss),
        mib(first.loaded.rss)
    )?;
    writeln!(
        w,
        "  RSS per idle connection                {:.0} B ({:.1} KiB; goal ≤ 64 KiB), of which live heap {:.0} B",
        rss_per_conn,
        rss_per_conn / 1024.0,
        heap_per_conn
    )?;
    writeln!(
        w,
        "  node live heap start / holding / after {} / {} / {}",
        mib(start.heap),
        mib(first.loaded.heap),
        mib(last.after.heap)
    )?;
    writeln!(
        w,
        "  node CPU holding the idle peers        {} % of one core",
        first.cpu_holding_pct
    )?;
    writeln!(
        w,
        "  live tasks start / holding / flooded / after   {} / {} / {} / {}",
        start.tasks,
        first.loaded.tasks,
        first
            .hold
            .as_ref()
            .map_or("—".into(), |f| f.snap.tasks.to_string()),
        last.after.tasks
    )?;
    writeln!(
        w,
        "  {:<22} {:>10} {:>10} {:>10} {:>10}",
        "honest client (median)", "idle", "holding", "flooded", "re-dialed"
    )?;
    for (label, k) in [("connect", 0), ("put", 1), ("get", 2)] {
        let f = |h: &HonestResult| {
            opt(ms(match k {
                0 => &h.connect_ms,
                1 => &h.put_ms,
                _ => &h.get_ms,
            }))
        };
        let label = if k == 0 {
            label.to_string()
        } else {
            format!("{label} ({} KiB)", args.file_kib)
        };
        writeln!(
            w,
            "  {:<22} {:>10} {:>10} {:>10} {:>10}",
            label,
            f(&idle),
            f(&loaded),
            f(&hold),
            f(&redial)
        )?;
    }
    writeln!(
        w,
        "  {:<22} {:>10} {:>10} {:>10} {:>10}",
        "connect (slowest)",
        opt(slowest(&idle.connect_ms)),
        opt(slowest(&loaded.connect_ms)),
        opt(slowest(&hold.connect_ms)),
        opt(slowest(&redial.connect_ms))
    )?;
    writeln!(
        w,
        "  {:<22} {:>10} {:>10} {:>10} {:>10}",
        "connect attempts (max)",
        max_attempts(&idle),
        max_attempts(&loaded),
        max_attempts(&hold),
        max_attempts(&redial)
    )?;
    for (name, pick) in [("held", hold_of as Pick), ("re-dialed", redial_of)] {
        writeln!(
            w,
            "  flood, {name}: {} connects ({}/s), {} Busy, {} Proceed ({} of them then closed by the node), {} closed unanswered, {} connect errors",
            sum(&|s| s.connects, pick),
            achieved(pick).map_or("?".into(), |r| r.to_string()),
            sum(&|s| s.busy, pick),
            sum(&|s| s.proceed, pick),
            sum(&|s| s.closed_after_proceed, pick),
            sum(&|s| s.closed_without_answer, pick),
            sum(&|s| s.connect_errors, pick),
        )?;
        if let Some(f) = pick(first) {
            writeln!(
                w,
                "    cycle 1: node CPU {} % of one core, {} streams dropped by the full listen queue",
                f.cpu_pct,
                f.listen_overflows.map_or("?".into(), |n| n.to_string())
            )?;
        }
    }
    writeln!(
        w,
        "  after the peers left: {} connections, {} tasks ({} above start, back in {:?}), {} fds (start {})",
        last.after.connections,
        last.after.tasks,
        leaked_tasks,
        last.tasks_back,
        last.after.fds,
        start.fds
    )?;
    for e in &errors {
        writeln!(w, "  honest client error: {e}")?;
    }
    writeln!(w, "  {}", if ok { "OK" } else { "NOT OK (see above)" })?;
    Ok((report, w, args.json))
}

// ---------------------------------------------------------------------------------------
// worker: idle peers

fn worker(furl: &str, peers: usize, concurrency: usize) -> Result<i32> {
    die_with_parent();
    raise_nofile(peers + 128, "worker")?;
    let furl: Furl = furl.parse().context("the storage FURL")?;
    // Exit as soon as the parent closes our stdin: the kernel closes every socket, as when a
    // crowd of peers goes away at once.
    exit_on_stdin_eof(0, || {});
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let registry = Arc::new(Registry::with_tcp());
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let retried = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(peers);
        for _ in 0..peers {
            let permit = sem.clone().acquire_owned().await?;
            let (registry, furl) = (registry.clone(), furl.clone());
            let (done, failed, retried) = (done.clone(), failed.clone(), retried.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                for attempt in 0..3 {
                    let held = async {
                        let tub = Tub::new(
                            Identity::generate()?,
                            registry.clone(),
                            TubConfig::default(),
                        )?;
                        let ss: StorageServerRef = tub.get(&furl).await?;
                        ss.get_version()
                            .await
                            .map_err(|e| anyhow!("get_version: {e}"))?;
                        anyhow::Ok((tub, ss))
                    };
                    match tokio::time::timeout(Duration::from_secs(60), held).await {
                        Ok(Ok(held)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            return Some(held);
                        }
                        Ok(Err(e)) if attempt == 2 => eprintln!("worker: a peer failed: {e:#}"),
                        Err(_) if attempt == 2 => eprintln!("worker: a peer timed out"),
                        _ => {}
                    }
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                failed.fetch_add(1, Ordering::Relaxed);
                None
            }));
        }
        let mut held = Vec::with_capacity(peers);
        for t in tasks {
            if let Some(h) = t.await? {
                held.push(h);
            }
        }
        println!(
            "ready {} {} {}",
            done.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            retried.load(Ordering::Relaxed)
        );
        std::io::stdout().flush()?;
        // Idle until the parent closes stdin (the thread above exits the process).
        std::future::pending::<()>().await;
        drop(held);
        anyhow::Ok(0)
    })
}

// ---------------------------------------------------------------------------------------
// honest: the well-behaved client

fn honest(
    furl: &str,
    rounds: usize,
    gap_ms: u64,
    file_kib: usize,
    deadline_secs: u64,
) -> Result<i32> {
    die_with_parent();
    let furl: Furl = furl.parse().context("the storage FURL")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let registry = Arc::new(Registry::with_tcp());
        let size = file_kib * 1024;
        // Distinct bytes per round, so that a read of the wrong share cannot pass.
        let mut out = HonestResult::default();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0) as u64
            ^ u64::from(std::process::id()) << 40;
        for round in 0..rounds {
            if round > 0 {
                // Spread the rounds over a few seconds, so that they sample the flood's
                // waves rather than one instant of it.
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            }
            let stamp = seed
                .wrapping_add(round as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let data: Vec<u8> = (0..size)
                .map(|i| (stamp >> ((i % 8) * 8)) as u8 ^ (i / 8) as u8)
                .collect();
            let mut si = [0u8; 16];
            si[..8].copy_from_slice(&stamp.to_le_bytes());
            si[8..].copy_from_slice(&(round as u64).to_le_bytes());
            match tokio::time::timeout(
                Duration::from_secs(deadline_secs + 60),
                honest_round(
                    &registry,
                    &furl,
                    &data,
                    si,
                    Duration::from_secs(deadline_secs),
                ),
            )
            .await
            {
                Ok(Ok((connect, attempts, put, get))) => {
                    out.connect_ms.push(connect.as_secs_f64() * 1e3);
                    out.connect_attempts.push(attempts);
                    out.put_ms.push(put.as_secs_f64() * 1e3);
                    out.get_ms.push(get.as_secs_f64() * 1e3);
                }
                Ok(Err(e)) => out.errors.push(format!("round {round}: {e:#}")),
                Err(_) => out.errors.push(format!("round {round}: timed out")),
            }
        }
        out
    });
    println!("{}", serde_json::to_string(&result)?);
    std::io::stdout().flush()?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(0)
}

/// One round: a fresh Tub's connect (retried while refused, up to `deadline`), a put and a
/// get. Returns (connect, attempts, put, get).
async fn honest_round(
    registry: &Arc<Registry>,
    furl: &Furl,
    data: &[u8],
    si: [u8; 16],
    deadline: Duration,
) -> Result<(Duration, u32, Duration, Duration)> {
    let tub = Tub::new(
        Identity::generate()?,
        registry.clone(),
        TubConfig::default(),
    )?;
    let t = Instant::now();
    let mut attempts = 0;
    let ss = loop {
        attempts += 1;
        let attempt = async {
            let ss: StorageServerRef = tub.get(furl).await?;
            ss.get_version()
                .await
                .map_err(|e| anyhow!("get_version: {e}"))?;
            anyhow::Ok(ss)
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(ss)) => break ss,
            Ok(Err(e)) if t.elapsed() >= deadline => {
                bail!(
                    "no connection after {attempts} attempts in {:?}: {e:#}",
                    t.elapsed()
                )
            }
            Err(_) if t.elapsed() >= deadline => {
                bail!(
                    "no connection after {attempts} attempts in {:?}",
                    t.elapsed()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let connect = t.elapsed();

    let t = Instant::now();
    let (_, writers) = ss
        .allocate_buckets(
            si,
            [1; 32],
            [2; 32],
            BTreeSet::from([0u16]),
            data.len() as u64,
            CanaryRef::serve(NullCanary),
        )
        .await
        .map_err(|e| anyhow!("allocate_buckets: {e}"))?;
    let writer = writers
        .get(&0)
        .context("the node allocated no bucket for share 0")?;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        writer
            .write((i * CHUNK) as u64, Bytes(chunk.to_vec()))
            .await
            .map_err(|e| anyhow!("write: {e}"))?;
    }
    writer.close().await.map_err(|e| anyhow!("close: {e}"))?;
    let put = t.elapsed();

    let t = Instant::now();
    let readers: BTreeMap<u16, _> = ss
        .get_buckets(si)
        .await
        .map_err(|e| anyhow!("get_buckets: {e}"))?;
    let reader = readers.get(&0).context("share 0 is not on the node")?;
    let mut got = Vec::with_capacity(data.len());
    while got.len() < data.len() {
        let part = reader
            .read(got.len() as u64, CHUNK as u64)
            .await
            .map_err(|e| anyhow!("read: {e}"))?;
        if part.0.is_empty() {
            bail!("the share ends at {} of {} bytes", got.len(), data.len());
        }
        got.extend_from_slice(&part.0);
    }
    let get = t.elapsed();
    if got != data {
        bail!("the share read back differs from the one written");
    }
    drop((readers, writers, ss));
    tub.shutdown().await;
    Ok((connect, attempts, put, get))
}

// ---------------------------------------------------------------------------------------
// flood: pending handshakes

fn flood(furl: &str, count: usize, retry_ms: u64, rate: u64) -> Result<i32> {
    die_with_parent();
    raise_nofile(count + 128, "flood")?;
    let furl: Furl = furl.parse().context("the storage FURL")?;
    let addr = furl
        .hints()
        .iter()
        .find_map(|h| match h {
            Hint::Tcp {
                host: Host::Ipv4(ip),
                port,
            } => Some(SocketAddr::from((*ip, *port))),
            _ => None,
        })
        .context("the FURL has no tcp:IPv4 hint")?;
    let request = folio_rpc::prelude::encode_request(&furl.tubid());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // stdin closing is the signal to stop; a thread turns it into the watch.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while matches!(std::io::stdin().lock().read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
        let _ = stop_tx.send(true);
    });
    let result = rt.block_on(async move {
        let request: Arc<[u8]> = request.into();
        let pace = Arc::new(Pace {
            opening: tokio::sync::Semaphore::new(256),
            // Re-dials take a token each; tokens come at `rate` per second, at most a tenth
            // of a second's worth banked.
            tokens: (rate > 0).then(|| Arc::new(tokio::sync::Semaphore::new(0))),
            first_done: AtomicUsize::new(0),
        });
        if let Some(tokens) = pace.tokens.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let (per_tick, bank) = ((rate / 100).max(1) as usize, (rate / 10).max(1) as usize);
                loop {
                    tick.tick().await;
                    let room = bank.saturating_sub(tokens.available_permits());
                    tokens.add_permits(per_tick.min(room));
                }
            });
        }
        let started = Instant::now();
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            slots.push(tokio::spawn(flood_slot(
                addr,
                request.clone(),
                counters.clone(),
                stop_rx.clone(),
                Duration::from_millis(retry_ms),
                pace.clone(),
            )));
        }
        // Ready once every slot has opened and sent its request, plus a second for the
        // answers to arrive.
        let t = Instant::now();
        while pace.first_done.load(Ordering::Relaxed) < count
            && t.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let opened_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("ready");
        std::io::stdout().flush()?;
        let mut stop = stop_rx.clone();
        let _ = stop.wait_for(|s| *s).await;
        let open_at_stop = counters.open.load(Ordering::Relaxed);
        let stats = FloodStats {
            connects: counters.connects.load(Ordering::Relaxed),
            connect_errors: counters.connect_errors.load(Ordering::Relaxed),
            busy: counters.busy.load(Ordering::Relaxed),
            proceed: counters.proceed.load(Ordering::Relaxed),
            other_answers: counters.other.load(Ordering::Relaxed),
            closed_without_answer: counters.closed_unanswered.load(Ordering::Relaxed),
            closed_after_proceed: counters.closed_after_proceed.load(Ordering::Relaxed),
            peak_open: counters.peak_open.load(Ordering::Relaxed),
            open_at_stop,
            opened_s: (opened_s * 1000.0).round() / 1000.0,
            duration_s: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        };
        println!("{}", serde_json::to_string(&stats)?);
        std::io::stdout().flush()?;
        anyhow::Ok(())
    });
    result?;
    // Exiting closes every socket at once.
    std::process::exit(0)
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    busy: AtomicU64,
    proceed: AtomicU64,
    other: AtomicU64,
    closed_unanswered: AtomicU64,
    closed_after_proceed: AtomicU64,
    open: AtomicU64,
    peak_open: AtomicU64,
}

/// What the flood's connections share to pace their dials.
struct Pace {
    /// TCP connects in progress at once (256; a connect returns before the node accepts, so
    /// this does not bound what waits in its listen queue).
    opening: tokio::sync::Semaphore,
    /// Re-dial tokens, when re-dials are rate-limited.
    tokens: Option<Arc<tokio::sync::Semaphore>>,
    /// Connections that have dialed once and sent their request.
    first_done: AtomicUsize,
}

async fn flood_slot(
    addr: SocketAddr,
    request: Arc<[u8]>,
    c: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    retry: Duration,
    pace: Arc<Pace>,
) {
    // A zero pause: each slot dials once and holds what it gets.
    let once = retry.is_zero();
    let mut first = true;
    while !*stop.borrow() {
        if let (false, Some(tokens)) = (first, &pace.tokens) {
            tokio::select! {
                t = tokens.acquire() => {
                    if let Ok(t) = t {
                        t.forget();
                    }
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let stream = {
            let _permit = pace.opening.acquire().await;
            tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        };
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            _ => {
                c.connect_errors.fetch_add(1, Ordering::Relaxed);
                if std::mem::take(&mut first) {
                    pace.first_done.fetch_add(1, Ordering::Relaxed);
                }
                if once {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                continue;
            }
        };
        c.connects.fetch_add(1, Ordering::Relaxed);
        let open = c.open.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_open.fetch_max(open, Ordering::Relaxed);
        let wrote = stream.write_all(&request).await.is_ok();
        if std::mem::take(&mut first) {
            pace.first_done.fetch_add(1, Ordering::Relaxed);
        }
        if wrote {
            // Read the answer (if any), then stay silent until the node closes.
            let mut answer = [0u8; folio_rpc::prelude::ANSWER_LEN];
            let mut got = 0;
            let mut answered = false;
            let mut proceeded = false;
            let mut scratch = [0u8; 256];
            loop {
                let buf: &mut [u8] = if answered {
                    &mut scratch
                } else {
                    &mut answer[got..]
                };
                let n = tokio::select! {
                    r = stream.read(buf) => r.unwrap_or(0),
                    _ = stop.wait_for(|s| *s) => break,
                };
                if n == 0 {
                    if !answered {
                        c.closed_unanswered.fetch_add(1, Ordering::Relaxed);
                    } else if proceeded {
                        c.closed_after_proceed.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                if answered {
                    continue;
                }
                got += n;
                if got < answer.len() {
                    continue;
                }
                answered = true;
                use folio_rpc::prelude::{decode_answer, Progress, Status};
                match decode_answer(&answer) {
                    Ok(Progress::Done(a, _)) if a.status == Status::Busy => {
                        c.busy.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Progress::Done(a, _)) if a.status == Status::Proceed => {
                        c.proceed.fetch_add(1, Ordering::Relaxed);
                        proceeded = true;
                    }
                    _ => {
                        c.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        } else {
            c.closed_unanswered.fetch_add(1, Ordering::Relaxed);
        }
        drop(stream);
        c.open.fetch_sub(1, Ordering::Relaxed);
        if once || *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}
