//! `tahoe create-*` refusals, what a created directory holds, and `tahoe run`'s refusals of
//! configurations that could reveal the IP address of a node that must hide it.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

fn tahoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tahoe"))
        .env("RUST_LOG", "error")
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must fail; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = tahoe(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "tahoe {args:?} should have been refused; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

fn assert_refused(args: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut full: Vec<&str> = args.to_vec();
    let d = dir.to_str().unwrap().to_string();
    full.push(&d);
    let err = refused(&full);
    for n in needles {
        assert!(err.contains(n), "tahoe {args:?}: missing {n:?} in: {err}");
    }
    assert!(!dir.exists(), "a refused create-* must write nothing");
}

#[test]
fn create_refusals_name_the_fix() {
    let furl = "folio://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@tcp:127.0.0.1:1/abc";
    let cases: &[(&[&str], &[&str])] = &[
        (&["create-node", "--listen=none", "--hostname=example.org"], &["--hostname is only used with --listen=tcp"]),
        (&["create-node", "--port=tcp:3456"], &["--port needs --location"]),
        (&["create-node", "--location=tcp:example.org:3456"], &["--location needs --port"]),
        (&["create-node", "--listen=tcp", "--port=tcp:3456", "--location=tcp:example.org:3456"], &["drop --listen"]),
        (&["create-node"], &["--listen=tcp needs --hostname"]),
        (&["create-node", "--listen=tcp,quic", "--hostname=x.org"], &["unknown transport \"quic\""]),
        (&["create-node", "--listen=none,tcp", "--hostname=x.org"], &["--listen=none cannot be combined"]),
        (&["create-node", "--listen=tor", "--tor-launch", "--tor-control-port=tcp:127.0.0.1:9051"], &["--tor-launch and --tor-control-port exclude each other"]),
        (&["create-node", "--listen=tor", "--tor-control-port=localhost"], &["not an endpoint", "tcp:IP:PORT"]),
        (&["create-node", "--hide-ip", "--listen=tcp", "--hostname=x.org", "--tor-control-port=tcp:127.0.0.1:9051"], &["--hide-ip cannot be combined with --listen=tcp"]),
        (&["create-node", "--hide-ip", "--port=tcp:3456:interface=127.0.0.1", "--location=tcp:x.org:3456", "--tor-control-port=tcp:127.0.0.1:9051"], &["--location has a tcp: hint"]),
        (&["create-node", "--hide-ip", "--port=tcp:3456", "--location=tor:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion:3456", "--tor-control-port=tcp:127.0.0.1:9051"], &["loopback only"]),
        (&["create-node", "--hostname=x.org", "--shares-needed=5", "--shares-happy=4"], &["--shares-needed (5) <= --shares-happy (4)"]),
        (&["create-node", "--hostname=x.org", "--shares-total=300", "--shares-happy=7"], &["<= 256"]),
        (&["create-node", "--hostname=x.org", "--no-storage", "--storage-dir=/tmp/x"], &["--storage-dir is only used"]),
        (&["create-node", "--listen=none"], &["a storage server must be reachable", "--no-storage"]),
        (&["create-node", "--hostname=x.org", "--introducer=http://nope"], &["--introducer=http://nope"]),
        (&["create-introducer", "--hostname=x.org", "--introducer", furl], &["not for create-introducer"]),
        (&["create-node", "--hostname=x.org", "--port=tcp:1", "--location=tcp:x.org:1"], &["--hostname is not used with --port/--location"]),
        (&["create-node", "--hostname=x.org", "--webport=tcp:1:2"], &["--webport=tcp:1:2"]),
        (&["create-node", "--hide-ip", "--listen=tor", "--tor-control-port=tcp:127.0.0.1:9051", "--webport=tcp:3456"], &["--webport=tcp:3456 listens beyond loopback"]),
    ];
    for (args, needles) in cases {
        assert_refused(args, needles);
    }
}

#[test]
fn create_refuses_a_non_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious"), "data").unwrap();
    let err = refused(&["create-client", tmp.path().to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");
    assert!(err.contains("choose a new or empty directory"), "{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("precious")).unwrap(),
        "data"
    );
}

#[cfg(unix)]
#[test]
fn created_node_has_a_private_directory_and_a_valid_config() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    common::create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        "--hostname=127.0.0.1",
        "--nickname=alpha",
        "--shares-needed=2",
        "--shares-happy=3",
        "--shares-total=4",
        dir.to_str().unwrap(),
    ]);
    let mode = std::fs::metadata(dir.join("private"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    for f in ["node.pem", "node.privkey", "secret", "convergence"] {
        let m = std::fs::metadata(dir.join("private").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600, "{f}");
    }
    assert!(dir.join("tahoe-client.tac").exists());
    let cfg = folio_node::config::NodeConfig::load(&dir.join("tahoe.cfg")).unwrap();
    assert_eq!(cfg.node.nickname, "alpha");
    assert!(cfg.node.reveal_ip);
    assert_eq!(
        (
            cfg.client.shares_needed,
            cfg.client.shares_happy,
            cfg.client.shares_total
        ),
        (2, 3, 4)
    );
    assert!(cfg.storage.enabled);
    let text = std::fs::read_to_string(dir.join("tahoe.cfg")).unwrap();
    assert!(text.contains("tub.location = tcp:127.0.0.1:"), "{text}");
    assert!(text.contains("interface=127.0.0.1"), "{text}");
}

/// `create-node --port --location` made and run for real: the node listens where `--port`
/// says, announces exactly what `--location` says (a name, `localhost`, not the bound
/// address, so the hint cannot have come from AUTO), and a client holding only the storage
/// FURL reaches the node through that hint.
///
/// How it fails: `--port` or `--location` not written to tahoe.cfg (or not honoured by
/// `tahoe run`) gives another listener, another location or an unreachable hint: the
/// config, status or FURL checks, or the call, fail.
#[test]
fn node_made_with_port_and_location_is_reachable_there() {
    use folio_node::storage::StorageServerRef;
    use folio_rpc::{Furl, TubConfig};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("explicit");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("tcp:{port}:interface=127.0.0.1");
    let location = format!("tcp:localhost:{port}");
    common::create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        &format!("--port={listen}"),
        &format!("--location={location}"),
        "--nickname=explicit",
        dir.to_str().unwrap(),
    ]);
    let cfg = folio_node::config::NodeConfig::load(&dir.join("tahoe.cfg")).unwrap();
    assert_eq!(
        cfg.node.tub_port,
        folio_node::config::TubPort::Listen(vec![listen.parse().unwrap()])
    );
    assert_eq!(
        cfg.node.tub_location,
        folio_node::config::Location::Hints(vec![location.parse().unwrap()])
    );

    let mut node = common::run(&dir);
    let furl: Furl =
        common::wait_for_file(&dir.join("private/storage.furl"), Duration::from_secs(30))
            .parse()
            .unwrap();
    let hints: Vec<String> = furl.hints().iter().map(|h| h.to_string()).collect();
    assert_eq!(hints, vec![location.clone()]);
    let st = common::status(&dir).expect("the node answers status");
    assert_eq!(st["location"], serde_json::json!([location]), "{st}");
    assert_eq!(st["listeners"], serde_json::json!([listen]), "{st}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tub = folio_tests::tubs::tcp_tub(TubConfig::default());
        let ss: StorageServerRef = tokio::time::timeout(Duration::from_secs(20), tub.get(&furl))
            .await
            .expect("connecting timed out")
            .expect("the node is reachable at --location");
        let version = ss.get_version().await.unwrap();
        assert!(version.application_version.starts_with("folio-node/"));
        let status = tub.connection_status();
        assert_eq!(status[0].winning_hint.as_deref(), Some(location.as_str()));
        tub.shutdown().await;
    });
    node.terminate();
    assert!(node.wait_timeout(Duration::from_secs(15)).success());
}

/// A hidden client made for real, then edited into each unsafe shape: `tahoe run` refuses
/// each before it opens any connection, naming the setting.
#[test]
fn run_refuses_every_configuration_that_could_reveal_a_hidden_ip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hidden");
    common::create(&[
        "create-client",
        "--webport=tcp:0:interface=127.0.0.1",
        "--hide-ip",
        "--i2p-sam-port=tcp:127.0.0.1:7656",
        dir.to_str().unwrap(),
    ]);
    let cfg_path = dir.join("tahoe.cfg");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(original.contains("reveal-IP-address = false"), "{original}");
    assert!(original.contains("tcp = disabled"), "{original}");

    let tubid = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let cases: Vec<(String, &[&str])> = vec![
        (
            set_key(&original, "connections", "tcp", Some("tcp")),
            &["tcp = tcp", "[connections]"],
        ),
        (
            set_key(&original, "connections", "tcp", None),
            &["[connections]", "tcp"],
        ),
        (
            set_key(
                &set_key(
                    &original,
                    "node",
                    "tub.port",
                    Some("tcp:0:interface=127.0.0.1"),
                ),
                "node",
                "tub.location",
                Some("AUTO"),
            ),
            &["tub.location"],
        ),
        (
            set_key(
                &set_key(
                    &original,
                    "node",
                    "tub.port",
                    Some("tcp:0:interface=127.0.0.1"),
                ),
                "node",
                "tub.location",
                None,
            ),
            &["tub.location"],
        ),
        (
            set_key(
                &set_key(
                    &original,
                    "node",
                    "tub.port",
                    Some("tcp:0:interface=127.0.0.1"),
                ),
                "node",
                "tub.location",
                Some("tcp:198.51.100.7:3456"),
            ),
            &["tub.location", "tcp:"],
        ),
        (
            set_key(
                &set_key(&original, "node", "tub.port", Some("tcp:3456")),
                "node",
                "tub.location",
                Some("i2p:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.b32.i2p"),
            ),
            &["tub.port"],
        ),
        (
            format!("{original}\n[server:{tubid}]\ntcp = tcp\n"),
            &["[server:", "tcp = tcp"],
        ),
    ];
    for (text, needles) in cases {
        std::fs::write(&cfg_path, &text).unwrap();
        let err = refused(&["run", dir.to_str().unwrap()]);
        assert!(err.contains("refusing to start"), "{err}\nconfig:\n{text}");
        for n in needles {
            assert!(err.contains(n), "missing {n:?} in: {err}\nconfig:\n{text}");
        }
    }
    assert!(!dir.join("private/control.furl").exists());
}

/// Sets (or with `None` removes) `key` in `[section]` of a config text.
fn set_key(text: &str, section: &str, key: &str, value: Option<&str>) -> String {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut done = false;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(['[', ']']).to_string();
        }
        let is_key = t
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !t.starts_with('#'));
        if current == section && is_key {
            if let Some(v) = value {
                out.push(format!("{key} = {v}"));
            }
            done = true;
            continue;
        }
        out.push(line.to_string());
        let next_is_section = lines
            .get(i + 1)
            .map(|l| l.trim().starts_with('['))
            .unwrap_or(true);
        if current == section && next_is_section && !done {
            if let Some(v) = value {
                out.push(format!("{key} = {v}"));
            }
            done = true;
        }
    }
    if !done {
        if let Some(v) = value {
            out.push(format!("[{section}]\n{key} = {v}"));
        }
    }
    out.join("\n") + "\n"
}

/// With no tor named, `--listen=tor --hide-ip` uses the embedded Tor client: the onion
/// address is made offline at creation (in `private/arti`), the node runs with it, and its
/// status says where the embedded client is. (This machine has no route to the public Tor
/// network, so the client never finishes bootstrapping here; the status must say so rather
/// than claim anything.)
#[test]
fn embedded_tor_node_knows_its_onion_at_creation() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("onion");
    common::create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        "--listen=tor",
        "--hide-ip",
        dir.to_str().unwrap(),
    ]);
    let cfg = folio_node::config::NodeConfig::load(&dir.join("tahoe.cfg")).unwrap();
    assert!(cfg.tor.enabled && cfg.tor.onion);
    assert!(!cfg.tor.launch && cfg.tor.control_port.is_none() && cfg.tor.socks_port.is_none());
    assert_eq!(cfg.connections.tcp, folio_handlers::TcpPolicy::Tor);
    cfg.check_privacy().expect("a hidden node's config");
    let folio_node::config::Location::Hints(hints) = &cfg.node.tub_location else {
        panic!("{:?}", cfg.node.tub_location)
    };
    let [folio_rpc::Hint::Tor { onion, port: 3457 }] = hints.as_slice() else {
        panic!("{hints:?}")
    };
    let mode = std::fs::metadata(dir.join("private/arti"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private/arti is {mode:o}");

    let mut node = common::run(&dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = common::status(&dir) {
            break st;
        }
        assert!(Instant::now() < deadline, "the node never answered status");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["location"][0], format!("tor:{onion}:3457"), "{st}");
    assert!(
        st["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == &format!("tor:{onion}:3457")),
        "{st}"
    );
    let handlers = st["handlers"].to_string();
    assert!(handlers.contains("tor (embedded arti, "), "{handlers}");
    assert!(!handlers.contains("tcp (direct"), "{handlers}");
    node.terminate();
    assert!(
        node.wait_timeout(Duration::from_secs(15)).success(),
        "the node stops on SIGTERM"
    );
}
