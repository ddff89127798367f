//! `tahoe create-node`, `create-client` and `create-introducer`: a new base directory.
//!
//! The options are checked as a whole first ([`plan`]), so that every invalid combination
//! is refused before anything is written, with a message that names the fix. Then
//! [`create`] makes the directory: `tahoe.cfg`, the `private/` directory (`0700`) with the
//! Tub identity, the announcement key and the secrets, and — for `--listen=tor` or `i2p` —
//! the onion-service key or I2P destination, whose address goes into `tub.location`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use folio_handlers::TcpPolicy;
use folio_rpc::{ErrorChain, Furl, Hint};
use folio_transports::tcp::ListenSpec;

use crate::config::{Location, NodeConfig, TubPort};
use crate::node::{CLIENT_MARKER, INTRODUCER_MARKER};
use crate::private::{Password, PrivateDir, TOR_CONTROL_PASSWORD};
use folio_transports::tor::ControlPort;

/// The virtual port of a node's onion service (Tahoe's choice).
pub const ONION_PORT: u16 = 3457;

/// What is being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `create-node`: storage server and client.
    Node,
    /// `create-client`: a client only (no storage, listens nowhere by default).
    Client,
    /// `create-introducer`.
    Introducer,
}

/// Options shared by every `create-*` command.
#[derive(Debug, Clone, Default, Args)]
pub struct CreateArgs {
    /// The directory to create (default: ~/.tahoe). It must not exist or be empty.
    pub basedir: Option<PathBuf>,
    /// A name for people to recognise this node by.
    #[arg(long)]
    pub nickname: Option<String>,
    /// How peers reach this node: a comma-separated list of tcp, tor, i2p; or none
    /// [default: tcp; none for create-client].
    #[arg(long, value_name = "tcp,tor,i2p|none")]
    pub listen: Option<String>,
    /// With --listen=tcp: the DNS name or address peers reach this node at.
    #[arg(long)]
    pub hostname: Option<String>,
    /// The endpoint to listen on (`tcp:3456` or `tcp:3456:interface=ADDR`); needs --location.
    #[arg(long, value_name = "ENDPOINT")]
    pub port: Option<String>,
    /// The hints to advertise (`tcp:example.org:3456,tor:xxx.onion:3457`); needs --port.
    #[arg(long, value_name = "HINTS")]
    pub location: Option<String>,
    /// Never reveal this host's IP address: no direct TCP connections, `tcp:` hints go
    /// through Tor (or nowhere, with only I2P).
    #[arg(long)]
    pub hide_ip: bool,
    /// Launch a tor of the node's own when it runs (needs the `tor` program).
    #[arg(long)]
    pub tor_launch: bool,
    /// The control port of a running tor (`tcp:127.0.0.1:9051`).
    #[arg(long, value_name = "ENDPOINT")]
    pub tor_control_port: Option<String>,
    /// A file holding that tor's control password (for a tor set up with
    /// `HashedControlPassword`); its first line is copied to private/tor_control_password.
    #[arg(long, value_name = "FILE", requires = "tor_control_port")]
    pub tor_control_password_file: Option<PathBuf>,
    /// The SAM bridge of an I2P router (`tcp:127.0.0.1:7656`).
    #[arg(long, value_name = "ENDPOINT")]
    pub i2p_sam_port: Option<String>,
    /// The introducer's FURL (repeat for several introducers). Not for create-introducer.
    #[arg(long = "introducer", value_name = "FURL")]
    pub introducers: Vec<String>,
    /// Shares needed to rebuild a file (k).
    #[arg(long, default_value_t = 3)]
    pub shares_needed: u16,
    /// Servers that must hold shares for an upload to succeed.
    #[arg(long, default_value_t = 7)]
    pub shares_happy: u16,
    /// Shares made of each file (N).
    #[arg(long, default_value_t = 10)]
    pub shares_total: u16,
    /// Do not run a storage server.
    #[arg(long)]
    pub no_storage: bool,
    /// Where the storage server keeps shares (default: BASEDIR/storage).
    #[arg(long, value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,
    /// Where the web gateway listens (`tcp:3456:interface=127.0.0.1`; `tcp:0:...` for a
    /// port the system picks, written to BASEDIR/node.url at start), or none
    /// [default: tcp:3456:interface=127.0.0.1; none for create-introducer].
    #[arg(long, value_name = "ENDPOINT|none")]
    pub webport: Option<String>,
}

/// A refused `create-*` command.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CreateError(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, CreateError> {
    Err(CreateError(msg.into()))
}

/// Which transports to listen on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listen {
    /// TCP.
    pub tcp: bool,
    /// An onion service.
    pub tor: bool,
    /// An I2P destination.
    pub i2p: bool,
}

/// A checked `create-*` command, ready to be carried out.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What is made.
    pub kind: Kind,
    /// Where.
    pub basedir: PathBuf,
    /// The configuration to write (the onion and I2P hints are added by [`create`]).
    pub config: NodeConfig,
    /// Listen on these.
    pub listen: Listen,
    /// The TCP hostname and port, with --listen=tcp.
    pub tcp: Option<(String, u16)>,
    /// The running tor's control password, to keep in `private/`.
    pub tor_control_password: Option<Password>,
}

/// Parses `tcp:HOST:PORT` (numeric host) as Tahoe writes endpoints.
pub fn parse_endpoint(flag: &str, text: &str) -> Result<SocketAddr, CreateError> {
    let rest = text.strip_prefix("tcp:").unwrap_or(text);
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match (host.parse::<std::net::IpAddr>(), port.parse::<u16>()) {
                (Ok(ip), Ok(p)) => Ok(SocketAddr::new(ip, p)),
                _ => refuse(format!(
                    "{flag}={text}: not an endpoint; write tcp:IP:PORT, for example tcp:127.0.0.1:9051"
                )),
            }
        }
        None => refuse(format!(
            "{flag}={text}: not an endpoint; write tcp:IP:PORT, for example tcp:127.0.0.1:9051"
        )),
    }
}

fn default_basedir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".tahoe")
}

/// Checks the options of a `create-*` command; nothing is written.
pub fn plan(kind: Kind, args: &CreateArgs) -> Result<Plan, CreateError> {
    let basedir = args.basedir.clone().unwrap_or_else(default_basedir);
    check_empty(&basedir)?;

    // What to listen on.
    let default_listen = if kind == Kind::Client { "none" } else { "tcp" };
    let listen_given = args.listen.is_some();
    let listen_text = args.listen.as_deref().unwrap_or(default_listen);
    let mut listen = Listen::default();
    let words: Vec<&str> = listen_text.split(',').map(str::trim).collect();
    for w in &words {
        match *w {
            "tcp" => listen.tcp = true,
            "tor" => listen.tor = true,
            "i2p" => listen.i2p = true,
            "none" if words.len() == 1 => {}
            "none" => return refuse("--listen=none cannot be combined with other transports"),
            other => {
                return refuse(format!(
                    "--listen: unknown transport {other:?}; use a comma-separated list of tcp, tor, i2p, or none"
                ))
            }
        }
    }

    // --port and --location: an explicit TCP listener and location, instead of --listen.
    let explicit = match (&args.port, &args.location) {
        (Some(_), None) => return refuse("--port needs --location (the hints peers use to reach that port); give both or neither"),
        (None, Some(_)) => return refuse("--location needs --port (the endpoint to listen on); give both or neither"),
        (Some(p), Some(l)) => {
            if listen_given {
                return refuse("--port/--location set the listener and location themselves; drop --listen");
            }
            if args.hostname.is_some() {
                return refuse("--hostname is not used with --port/--location; put the name in --location");
            }
            let spec: ListenSpec = p
                .parse()
                .map_err(|e| CreateError(format!("--port={p}: {}", ErrorChain(&e))))?;
            let mut hints = Vec::new();
            for h in l.split(',').map(str::trim) {
                let hint: Hint = h
                    .parse()
                    .map_err(|e| CreateError(format!("--location: {h}: {}", ErrorChain(&e))))?;
                hints.push(hint);
            }
            listen = Listen::default();
            Some((spec, hints))
        }
        (None, None) => None,
    };

    if args.hostname.is_some() && !listen.tcp {
        return refuse(
            "--hostname is only used with --listen=tcp; add tcp to --listen or drop --hostname",
        );
    }
    let tcp = if listen.tcp {
        let Some(host) = args.hostname.clone() else {
            return refuse("--listen=tcp needs --hostname=NAME (the DNS name or IP address other nodes reach this one at), or --port and --location");
        };
        if host.is_empty()
            || host.contains([':', ',', '/', ' ']) && host.parse::<std::net::Ipv6Addr>().is_err()
        {
            return refuse(format!("--hostname={host:?} is not a host name or address"));
        }
        Some((host, 0))
    } else {
        None
    };

    // Tor and I2P.
    if args.tor_launch && args.tor_control_port.is_some() {
        return refuse("--tor-launch and --tor-control-port exclude each other: launch a tor of the node's own, or use the running one");
    }
    let tor_control = args
        .tor_control_port
        .as_deref()
        .map(|t| parse_endpoint("--tor-control-port", t))
        .transpose()?;
    let tor_control_password = match &args.tor_control_password_file {
        None => None,
        Some(_) if tor_control.is_none() => return refuse(
            "--tor-control-password-file is the password of --tor-control-port's tor: give both",
        ),
        Some(f) => Some(Password::read_file(f).map_err(|e| {
            CreateError(format!("--tor-control-password-file {}: {e}", f.display()))
        })?),
    };
    let sam = args
        .i2p_sam_port
        .as_deref()
        .map(|t| parse_endpoint("--i2p-sam-port", t))
        .transpose()?;
    let i2p_enabled = listen.i2p || sam.is_some();
    if listen.i2p && sam.is_none() && !cfg!(feature = "i2p-embedded") {
        return refuse("--listen=i2p needs --i2p-sam-port=tcp:127.0.0.1:7656 (a running I2P router's SAM bridge): this tahoe was built without the embedded I2P router");
    }
    // With no tor named, Tor is the embedded client: for --listen=tor, and for --hide-ip
    // when I2P is not the way out.
    let tor_named = tor_control.is_some() || args.tor_launch;
    let tor_available =
        tor_named || (cfg!(feature = "tor-arti") && (listen.tor || (args.hide_ip && !i2p_enabled)));
    if listen.tor && !tor_available {
        return refuse("--listen=tor needs a tor: --tor-control-port=tcp:127.0.0.1:9051 (a running tor) or --tor-launch (this tahoe was built without the embedded Tor client)");
    }

    // Privacy.
    if args.hide_ip {
        if listen.tcp {
            return refuse("--hide-ip cannot be combined with --listen=tcp: the location would reveal this host's address; use --listen=tor and/or i2p");
        }
        if let Some((spec, hints)) = &explicit {
            if hints.iter().any(|h| matches!(h, Hint::Tcp { .. })) {
                return refuse("--hide-ip: --location has a tcp: hint, which reveals this host's address; advertise tor: or i2p: hints only");
            }
            if !spec.addr.ip().is_loopback() {
                return refuse("--hide-ip: --port must listen on loopback only (tcp:PORT:interface=127.0.0.1), behind an onion service");
            }
        }
        if !tor_available && !i2p_enabled {
            return refuse("--hide-ip leaves no way to reach other nodes: give --tor-control-port (or --tor-launch) for Tor, or --listen=i2p / --i2p-sam-port for I2P");
        }
    }

    // Encoding and storage.
    let (k, h, n) = (args.shares_needed, args.shares_happy, args.shares_total);
    if !(1 <= k && k <= h && h <= n && n <= 256) {
        return refuse(format!(
            "shares: need 1 <= --shares-needed ({k}) <= --shares-happy ({h}) <= --shares-total ({n}) <= 256"
        ));
    }
    let storage = kind == Kind::Node && !args.no_storage;
    if args.storage_dir.is_some() && !storage {
        return refuse("--storage-dir is only used by a node that runs a storage server; drop it (or --no-storage)");
    }
    if storage && !listen.tcp && !listen.tor && !listen.i2p && explicit.is_none() {
        return refuse(
            "a storage server must be reachable: use --listen=tcp, tor or i2p, or add --no-storage",
        );
    }
    let mut introducers = Vec::new();
    if kind == Kind::Introducer && !args.introducers.is_empty() {
        return refuse(
            "--introducer is for nodes that use an introducer, not for create-introducer",
        );
    }
    for (i, f) in args.introducers.iter().enumerate() {
        let furl: Furl = f
            .parse()
            .map_err(|e| CreateError(format!("--introducer={f}: {}", ErrorChain(&e))))?;
        let name = if i == 0 {
            "default".to_string()
        } else {
            format!("introducer{}", i + 1)
        };
        introducers.push((name, furl));
    }
    let nickname = args.nickname.clone().unwrap_or_default();
    if nickname.chars().count() > 64 || nickname.chars().any(char::is_control) {
        return refuse("--nickname: at most 64 printable characters");
    }

    let web_default = match kind {
        Kind::Introducer => "none",
        _ => "tcp:3456:interface=127.0.0.1",
    };
    let webport = args.webport.as_deref().unwrap_or(web_default);
    let web_port = crate::config::parse_web_port(webport)
        .map_err(|e| CreateError(format!("--webport={webport}: {e}")))?;
    if let Some(spec) = web_port.filter(|s| args.hide_ip && !s.addr.ip().is_loopback()) {
        return refuse(format!(
            "--hide-ip: --webport={spec} listens beyond loopback, where anyone who finds this \
             host can use the web gateway; use tcp:PORT:interface=127.0.0.1 or none"
        ));
    }

    // The configuration.
    let mut config = NodeConfig::default();
    config.node.web_port = web_port;
    config.node.nickname = nickname;
    config.node.reveal_ip = !args.hide_ip;
    config.connections.tcp = if !args.hide_ip {
        TcpPolicy::Direct
    } else if tor_available {
        TcpPolicy::Tor
    } else {
        TcpPolicy::Disabled
    };
    match &explicit {
        Some((spec, hints)) => {
            config.node.tub_port = TubPort::Listen(vec![*spec]);
            config.node.tub_location = Location::Hints(hints.clone());
        }
        None => {
            config.node.tub_port = TubPort::Disabled;
            config.node.tub_location = Location::Hints(Vec::new());
        }
    }
    if let Some(c) = tor_control {
        config.tor.enabled = true;
        config.tor.control_port = Some(c);
    }
    if args.tor_launch {
        config.tor.launch = true;
    }
    config.tor.enabled = tor_available;
    config.tor.onion = listen.tor;
    config.tor.onion_external_port = ONION_PORT;
    if i2p_enabled {
        config.i2p.enabled = true;
        // None: the node runs the embedded I2P router.
        config.i2p.sam_port = sam;
    }
    config.i2p.dest = listen.i2p;
    config.client.introducers = introducers;
    config.client.shares_needed = k;
    config.client.shares_happy = h;
    config.client.shares_total = n;
    config.storage.enabled = storage;
    config.storage.storage_dir = args.storage_dir.clone();
    Ok(Plan {
        kind,
        basedir,
        config,
        listen,
        tcp,
        tor_control_password,
    })
}

fn check_empty(basedir: &Path) -> Result<(), CreateError> {
    match std::fs::read_dir(basedir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return refuse(format!(
                    "refusing to create a node in {}: the directory is not empty; choose a new or empty directory",
                    basedir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => refuse(format!(
            "refusing to create a node at {}: it is a file; choose a new or empty directory",
            basedir.display()
        )),
        Err(e) => refuse(format!("{}: {e}", basedir.display())),
    }
}

fn io(what: &str, e: &(dyn std::error::Error + 'static)) -> CreateError {
    CreateError(format!("{what}: {}", ErrorChain(e)))
}

/// Carries out a plan: writes the base directory. Returns the directory.
pub async fn create(mut plan: Plan) -> Result<PathBuf, CreateError> {
    let dir = &plan.basedir;
    std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), &e))?;
    let private = PrivateDir::create(dir).map_err(|e| io("private/", &e))?;
    if let Some(p) = &plan.tor_control_password {
        private
            .write(TOR_CONTROL_PASSWORD, format!("{}\n", p.expose()).as_bytes())
            .map_err(|e| io("private/", &e))?;
    }
    let mut hints = match &plan.config.node.tub_location {
        Location::Hints(h) => h.clone(),
        _ => Vec::new(),
    };
    if let Some((host, _)) = &plan.tcp {
        // Pick a free port now, as Tahoe does, so the location is known and stays the same.
        let loopback = host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(host == "localhost");
        let bind = if loopback { "127.0.0.1:0" } else { "0.0.0.0:0" };
        let port = std::net::TcpListener::bind(bind)
            .and_then(|l| l.local_addr())
            .map_err(|e| io("choosing a TCP port", &e))?
            .port();
        let spec = if loopback {
            format!("tcp:{port}:interface=127.0.0.1")
        } else {
            format!("tcp:{port}")
        };
        let spec: ListenSpec = spec.parse().map_err(|e| io("tub.port", &e))?;
        plan.config.node.tub_port =
            match std::mem::replace(&mut plan.config.node.tub_port, TubPort::Disabled) {
                TubPort::Listen(mut v) => {
                    v.push(spec);
                    TubPort::Listen(v)
                }
                _ => TubPort::Listen(vec![spec]),
            };
        let hint: Hint = format!("tcp:{host}:{port}")
            .parse()
            .map_err(|e| io("--hostname", &e))?;
        hints.push(hint);
    }
    if plan.listen.tor {
        if plan.config.tor.control_port.is_some() || plan.config.tor.launch {
            let password = plan.tor_control_password.as_ref();
            hints.push(create_onion_with_tor(&plan.config, dir, password).await?);
        } else {
            hints.push(create_embedded_onion(dir)?);
        }
    }
    if plan.listen.i2p {
        let (public, secret) = match crate::node::sam_config(&plan.config) {
            Some(sam) => folio_transports::i2p::generate_destination(&sam)
                .await
                .map_err(|e| io("making the I2P destination (--i2p-sam-port)", &e))?,
            None => embedded_i2p_destination().await?,
        };
        let addr = folio_transports::i2p::b32_address(&public)
            .map_err(|e| io("the I2P destination", &e))?;
        let key = dir.join(&plan.config.i2p.dest_private_key_file);
        folio_rpc::identity::write_private(&key, format!("{secret}\n").as_bytes())
            .map_err(|e| io(&key.display().to_string(), &e))?;
        hints.push(Hint::I2p { addr, port: None });
    }
    plan.config.node.tub_location = if hints.is_empty() {
        Location::Disabled
    } else {
        Location::Hints(hints)
    };
    // What is written must read back as the same configuration.
    plan.config
        .validate()
        .map_err(|e| io("the configuration to write", &e))?;
    let cfg_text = plan.config.to_cfg_string();
    std::fs::write(dir.join("tahoe.cfg"), cfg_text).map_err(|e| io("tahoe.cfg", &e))?;
    let (marker, what) = match plan.kind {
        Kind::Introducer => (INTRODUCER_MARKER, "an introducer"),
        _ => (CLIENT_MARKER, "a node"),
    };
    std::fs::write(
        dir.join(marker),
        format!("# This directory holds {what} of a Folio grid; `tahoe run` reads this marker.\n"),
    )
    .map_err(|e| io(marker, &e))?;
    Ok(plan.basedir)
}

/// A new I2P destination `(public, private)`, made by an embedded I2P router started for
/// this alone, off any network (no seeds, loopback only, in a scratch directory removed
/// afterwards): making a key needs no network. The node's own router, with its state in
/// `private/i2p-router`, starts with `tahoe run`.
#[cfg(feature = "i2p-embedded")]
async fn embedded_i2p_destination() -> Result<(String, String), CreateError> {
    use folio_transports::i2p_embedded::{EmbeddedRouter, Network, RouterOptions};
    let scratch = tempfile_dir()?;
    let opts = RouterOptions::new(
        scratch.join("router"),
        Network::Private {
            // A network id no router uses: this router talks to nobody.
            net_id: 254,
            seeds: vec![],
        },
    );
    let router = tokio::task::spawn_blocking(move || EmbeddedRouter::start(opts))
        .await
        .map_err(|e| io("the embedded I2P router", &e))?
        .map_err(|e| {
            io(
                "starting an embedded I2P router to make the destination",
                &e,
            )
        })?;
    let made = folio_transports::i2p::generate_destination(&router.sam_config())
        .await
        .map_err(|e| io("making the I2P destination (embedded router)", &e));
    let _ = tokio::task::spawn_blocking(move || router.stop()).await;
    let _ = std::fs::remove_dir_all(&scratch);
    made
}

/// A new private directory under the system's temporary directory.
#[cfg(feature = "i2p-embedded")]
fn tempfile_dir() -> Result<std::path::PathBuf, CreateError> {
    let b: [u8; 8] = crate::private::random_bytes();
    let dir = std::env::temp_dir().join(format!(
        "folio-create-i2p-{}-{}",
        std::process::id(),
        data_encoding::HEXLOWER.encode(&b)
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .map_err(|e| io(&dir.display().to_string(), &e))?;
    Ok(dir)
}

#[cfg(not(feature = "i2p-embedded"))]
async fn embedded_i2p_destination() -> Result<(String, String), CreateError> {
    unreachable!(
        "plan() refuses --listen=i2p without a SAM port when the embedded router is absent"
    )
}

/// The onion service's hint, its key made through a running tor's control port or, with
/// --tor-launch, a tor of the node's own kept off the network: making a key needs none.
async fn create_onion_with_tor(
    config: &NodeConfig,
    dir: &Path,
    password: Option<&Password>,
) -> Result<Hint, CreateError> {
    let mut launched = None;
    let control = match config.tor.control_port {
        Some(c) => match password {
            Some(p) => ControlPort::new(c).with_password(p.expose()),
            None => ControlPort::new(c),
        },
        None => {
            let mut opts = crate::node::tor_launch_options(config, dir);
            opts.disable_network = true;
            let tor = folio_transports::tor_launch::LaunchedTor::start(&opts)
                .await
                .map_err(|e| io("launching tor (--tor-launch)", &e))?;
            let c = ControlPort::new(tor.control());
            launched = Some(tor);
            c
        }
    };
    let key = dir.join(&config.tor.onion_private_key_file);
    let l = folio_handlers::tor::OnionListener::start(control, &key, ONION_PORT)
        .await
        .map_err(|e| io("making the onion service", &e))?;
    let hint = l.hint();
    drop(l);
    if let Some(mut tor) = launched {
        tor.stop().await;
    }
    Ok(hint)
}

/// The onion service's hint, its key made in the embedded client's keystore
/// (`private/arti`), offline.
#[cfg(feature = "tor-arti")]
fn create_embedded_onion(dir: &Path) -> Result<Hint, CreateError> {
    let onion = folio_transports::arti::onion_address(
        &crate::node::arti_options(dir),
        crate::node::ARTI_ONION_NICKNAME,
    )
    .map_err(|e| io("making the onion service key (embedded Tor client)", &e))?;
    Ok(Hint::Tor {
        onion,
        port: ONION_PORT,
    })
}

#[cfg(not(feature = "tor-arti"))]
fn create_embedded_onion(_dir: &Path) -> Result<Hint, CreateError> {
    unreachable!("plan() refuses --listen=tor without a tor when the embedded client is absent")
}
