//! `tahoe`: the Folio node's command line.

mod demo;
mod demo_grid;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use folio_node::create::{self, CreateArgs, Kind};
use folio_node::node::Node;

/// A Tahoe-style storage node on the Folio RPC layer.
#[derive(Debug, Parser)]
#[command(name = "tahoe", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a node that stores shares for the grid and uses it.
    CreateNode(CreateArgs),
    /// Make a node that only uses the grid (no storage; listens nowhere by default).
    CreateClient(CreateArgs),
    /// Make an introducer, which tells the grid's nodes about each other.
    CreateIntroducer(CreateArgs),
    /// Run a node in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show what a running node sees: introducers and storage servers.
    Status(StatusArgs),
    /// Store a file on the grid through the running node; prints its read capability.
    Put(PutArgs),
    /// Fetch a file from the grid through the running node.
    Get(GetArgs),
    /// A whole grid on 127.0.0.1: introducer, ten storage nodes, a client; store a file,
    /// lose seven servers, get it back.
    Demo(demo_grid::DemoGridArgs),
    /// Two Tubs on 127.0.0.1 and the handshake, including the Tahoe-LAFS #2861 case.
    DemoHandshake(demo::DemoArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The node's directory (default: ~/.tahoe).
    basedir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PutArgs {
    /// The file to store (`-` or nothing: standard input).
    file: Option<PathBuf>,
    /// The node's directory (default: ~/.tahoe).
    #[arg(short = 'd', long = "node-directory")]
    node_directory: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// The read capability `tahoe put` printed.
    cap: String,
    /// Where to write the file (`-` or nothing: standard output).
    out: Option<PathBuf>,
    /// The node's directory (default: ~/.tahoe).
    #[arg(short = 'd', long = "node-directory")]
    node_directory: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The node's directory (default: ~/.tahoe).
    basedir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

fn default_basedir(b: Option<PathBuf>) -> PathBuf {
    b.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".tahoe")
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // emissary (the embedded I2P router) repeats harmless warnings ("unhandled
                // message ... DeliveryStatus", "not enough routers" at start): errors only.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,emissary=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("tahoe: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::CreateNode(a) => rt.block_on(create_cmd(Kind::Node, a)),
        Command::CreateClient(a) => rt.block_on(create_cmd(Kind::Client, a)),
        Command::CreateIntroducer(a) => rt.block_on(create_cmd(Kind::Introducer, a)),
        Command::Run(a) => rt.block_on(run(default_basedir(a.basedir))),
        Command::Status(a) => rt.block_on(status(a)),
        Command::Put(a) => rt.block_on(put(a)),
        Command::Get(a) => rt.block_on(get(a)),
        Command::Demo(args) => rt.block_on(demo_grid::run(args)),
        Command::DemoHandshake(args) => rt.block_on(demo::run(args)),
    }
}

async fn create_cmd(kind: Kind, args: CreateArgs) -> Result<()> {
    let plan = create::plan(kind, &args)?;
    let dir = create::create(plan).await?;
    let what = match kind {
        Kind::Node => "Node",
        Kind::Client => "Client",
        Kind::Introducer => "Introducer",
    };
    println!("{what} created in {}", dir.display());
    if kind != Kind::Introducer && args.introducers.is_empty() {
        println!(
            " Please add introducers to {}/tahoe.cfg ([client] introducer.furl) before running it.",
            dir.display()
        );
    }
    if kind == Kind::Introducer {
        println!(
            " Its FURL is written to {}/private/introducer.furl when it first runs.",
            dir.display()
        );
    }
    Ok(())
}

async fn run(basedir: PathBuf) -> Result<()> {
    let node = Node::start(&basedir)
        .await
        .with_context(|| format!("starting the node in {}", basedir.display()))?;
    let st = node.status();
    println!(
        "tahoe: {} {:?} running as {} (location: {}); stop with Ctrl-C",
        st.kind,
        st.nickname,
        st.tubid,
        st.location.join(",")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("tahoe: stopping");
    node.shutdown().await;
    Ok(())
}

async fn status(a: StatusArgs) -> Result<()> {
    let basedir = default_basedir(a.basedir);
    let st = folio_node::control::query(&basedir, Duration::from_secs(a.timeout))
        .await
        .with_context(|| format!("asking the node in {}", basedir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", folio_node::control::render(&st));
    }
    Ok(())
}

async fn put(a: PutArgs) -> Result<()> {
    let basedir = default_basedir(a.node_directory);
    let line = folio_node::transfer::ProgressLine::new();
    let report = match a.file.as_deref() {
        None => folio_node::transfer::put(&basedir, tokio::io::stdin(), None, line).await?,
        Some(p) if p == std::path::Path::new("-") => {
            folio_node::transfer::put(&basedir, tokio::io::stdin(), None, line).await?
        }
        Some(p) => {
            let f = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("opening {}", p.display()))?;
            let size = f.metadata().await.ok().map(|m| m.len());
            folio_node::transfer::put(&basedir, f, size, line).await?
        }
    };
    eprintln!(
        "stored {} as {} shares on {} servers in {:.2} s",
        folio_node::transfer::human(report.size),
        report.shares,
        report.servers.len(),
        report.seconds
    );
    println!("{}", report.cap);
    Ok(())
}

async fn get(a: GetArgs) -> Result<()> {
    let basedir = default_basedir(a.node_directory);
    let line = folio_node::transfer::ProgressLine::new();
    let report = match a.out.as_deref() {
        None => folio_node::transfer::get(&basedir, &a.cap, tokio::io::stdout(), line).await?,
        Some(p) if p == std::path::Path::new("-") => {
            folio_node::transfer::get(&basedir, &a.cap, tokio::io::stdout(), line).await?
        }
        Some(p) => {
            // Written beside the target and renamed into place: a failed download leaves
            // no partial file under the name asked for.
            let tmp = p.with_extension("tahoe-partial");
            let f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            match folio_node::transfer::get(&basedir, &a.cap, f, line).await {
                Ok(r) => {
                    std::fs::rename(&tmp, p)
                        .with_context(|| format!("renaming into {}", p.display()))?;
                    r
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            }
        }
    };
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    eprintln!(
        "fetched {} from {} servers in {:.2} s",
        folio_node::transfer::human(report.size),
        report.servers.len(),
        report.seconds
    );
    Ok(())
}
