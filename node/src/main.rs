//! `tahoe`: the Folio node's command line.

mod demo;
mod demo_grid;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use folio_node::create::{self, CreateArgs, Kind};
use folio_node::fscmd::Session;
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
    /// Store a file on the grid through the running node; prints its capability. With a
    /// target (`ALIAS:path`), links it there; over an existing mutable file, updates it.
    Put(PutArgs),
    /// Fetch a file from the grid (by cap or `ALIAS:path`) through the running node.
    Get(GetArgs),
    /// Make a new directory and save it as an alias (`NAME:`).
    CreateAlias(CreateAliasArgs),
    /// Save a directory cap as an alias.
    AddAlias(AddAliasArgs),
    /// Show the aliases.
    ListAliases(ListAliasesArgs),
    /// List a directory (or describe a file).
    Ls(LsArgs),
    /// Make a directory (at a path, or linked nowhere: prints its write cap).
    Mkdir(PathArgs),
    /// Copy files between the local disk and the grid (`-r` for directories).
    Cp(CpArgs),
    /// Move (rename) an entry on the grid.
    Mv(TwoPathArgs),
    /// Link what one path names at another too.
    Ln(TwoPathArgs),
    /// Remove an entry from its directory.
    Rm(OnePathArgs),
    /// Open the running node's welcome page (or a directory's page) in a browser, or print
    /// its URL when there is no browser to open.
    Webopen(WebopenArgs),
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
    /// Where to link it (`ALIAS:path`, `folio:DIR:…/path`, or a path in `tahoe:`).
    target: Option<String>,
    /// Store it as a mutable file (prints its write cap).
    #[arg(long)]
    mutable: bool,
    /// The node's directory (default: ~/.tahoe).
    #[arg(short = 'd', long = "node-directory")]
    node_directory: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WebopenArgs {
    /// A place on the grid to open (`ALIAS:path`, `folio:…/path`); nothing: the welcome
    /// page.
    target: Option<String>,
    /// Only print the URL.
    #[arg(long)]
    print: bool,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct NodeDir {
    /// The node's directory (default: ~/.tahoe).
    #[arg(short = 'd', long = "node-directory")]
    node_directory: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CreateAliasArgs {
    /// The alias's name.
    name: String,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct AddAliasArgs {
    /// The alias's name.
    name: String,
    /// A directory's cap (`folio:DIR:…` or `folio:DIR-RO:…`).
    cap: String,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct ListAliasesArgs {
    /// One JSON object, alias to cap.
    #[arg(long)]
    json: bool,
    /// Show the read-only caps.
    #[arg(long)]
    readonly_uri: bool,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// What to list (default: `tahoe:`).
    target: Option<String>,
    /// Kind, authority, size, time and name, one entry per line.
    #[arg(short = 'l')]
    long: bool,
    /// The entries as JSON (name, type, ro_uri, rw_uri, size, metadata).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct PathArgs {
    /// Where (`ALIAS:path`); nothing: a directory linked nowhere.
    target: Option<String>,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct OnePathArgs {
    /// The entry (`ALIAS:path`).
    target: String,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct TwoPathArgs {
    /// From (`ALIAS:path`, or a cap for `ln`).
    from: String,
    /// To (`ALIAS:path`; into it, when it is a directory).
    to: String,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct CpArgs {
    /// Copy directories and what they hold.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Sources, then the destination (local paths, or `ALIAS:path` on the grid).
    #[arg(required = true, num_args = 2..)]
    paths: Vec<String>,
    #[command(flatten)]
    node: NodeDir,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// What to fetch: a cap, or `ALIAS:path`.
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

/// `tahoe webopen`: the URL from `BASEDIR/node.url`, opened with `$BROWSER` or
/// `xdg-open` when a display is there, else printed.
fn webopen(a: WebopenArgs) -> Result<()> {
    let basedir = default_basedir(a.node.node_directory);
    let file = basedir.join(folio_node::node::NODE_URL);
    let base = std::fs::read_to_string(&file)
        .with_context(|| {
            format!(
                "reading {}: is the node running, with [node] web.port set in tahoe.cfg?",
                file.display()
            )
        })?
        .trim()
        .to_string();
    let url = match &a.target {
        None => base,
        Some(t) => {
            let s = Session::open(&basedir)?;
            let place =
                folio_node::aliases::Target::grid(t, &s.aliases).with_context(|| t.clone())?;
            folio_node::web::api::url_of(&base, &place.root, &place.segments())
        }
    };
    println!("{url}");
    if a.print {
        return Ok(());
    }
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .or_else(|| graphical.then(|| "xdg-open".to_string()));
    match opener {
        Some(cmd) => {
            let status = std::process::Command::new(&cmd)
                .arg(&url)
                .stdin(std::process::Stdio::null())
                .status()
                .with_context(|| format!("running {cmd} to open the page"))?;
            if !status.success() {
                anyhow::bail!("{cmd} could not open the page ({status}); the URL is above");
            }
        }
        None => eprintln!("(no browser to open here: no $BROWSER and no display)"),
    }
    Ok(())
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
        Command::CreateAlias(a) => rt.block_on(async {
            let mut s = session(a.node)?;
            s.create_alias(&a.name).await?;
            println!("Alias '{}' created", a.name);
            Ok(())
        }),
        Command::AddAlias(a) => {
            session(a.node)?.add_alias(&a.name, &a.cap)?;
            println!("Alias '{}' added", a.name);
            Ok(())
        }
        Command::ListAliases(a) => {
            let list = session(a.node)?.list_aliases(a.readonly_uri);
            if a.json {
                let map: serde_json::Map<String, serde_json::Value> = list
                    .into_iter()
                    .map(|(n, c)| (n, serde_json::Value::String(c)))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
            } else {
                for (n, c) in list {
                    println!("{n}: {c}");
                }
            }
            Ok(())
        }
        Command::Ls(a) => rt.block_on(ls(a)),
        Command::Webopen(a) => webopen(a),
        Command::Mkdir(a) => rt.block_on(async {
            let cap = session(a.node)?.mkdir(a.target.as_deref()).await?;
            println!("{cap}");
            Ok(())
        }),
        Command::Cp(a) => rt.block_on(async {
            let s = session(a.node)?;
            let (dest, sources) = a.paths.split_last().expect("clap requires two paths");
            let n = s.cp(sources, dest, a.recursive).await?;
            eprintln!("{n} files copied");
            Ok(())
        }),
        Command::Mv(a) => rt.block_on(async { Ok(session(a.node)?.mv(&a.from, &a.to).await?) }),
        Command::Ln(a) => rt.block_on(async { Ok(session(a.node)?.ln(&a.from, &a.to).await?) }),
        Command::Rm(a) => rt.block_on(async { Ok(session(a.node)?.rm(&a.target).await?) }),
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

fn session(node: NodeDir) -> Result<Session> {
    let basedir = default_basedir(node.node_directory);
    Session::open(&basedir).with_context(|| format!("the node in {}", basedir.display()))
}

async fn ls(a: LsArgs) -> Result<()> {
    let s = session(a.node)?;
    let target = a.target.unwrap_or_else(|| "tahoe:".into());
    let listing = s.ls(&target).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    for e in &listing.entries {
        if a.long {
            println!("{}", folio_node::fscmd::long_line(e));
        } else if e.name.is_empty() {
            println!("{target}");
        } else {
            println!("{}", e.name);
        }
    }
    Ok(())
}

async fn put(a: PutArgs) -> Result<()> {
    let basedir = default_basedir(a.node_directory.clone());
    let file = a
        .file
        .as_deref()
        .filter(|p| *p != std::path::Path::new("-"));
    let report = if a.target.is_some() || a.mutable {
        let s = session(NodeDir {
            node_directory: a.node_directory,
        })?;
        s.put(file, a.target.as_deref(), a.mutable).await?
    } else {
        let line = folio_node::transfer::ProgressLine::new();
        match file {
            None => folio_node::transfer::put(&basedir, tokio::io::stdin(), None, line).await?,
            Some(p) => {
                let f = tokio::fs::File::open(p)
                    .await
                    .with_context(|| format!("opening {}", p.display()))?;
                let size = f.metadata().await.ok().map(|m| m.len());
                folio_node::transfer::put(&basedir, f, size, line).await?
            }
        }
    };
    for n in &report.notes {
        eprintln!("note: {n}");
    }
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
    // A path (not a bare cap) is resolved through the aliases first.
    if !a.cap.starts_with("folio:") || a.cap.contains('/') {
        let out = a.out.as_deref().filter(|p| *p != std::path::Path::new("-"));
        let s = session(NodeDir {
            node_directory: a.node_directory,
        })?;
        return Ok(s.get(&a.cap, out).await?);
    }
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
