//! `[server:TUBID]` sections for real, with `tahoe` processes on 127.0.0.1:
//!
//! - `tcp = tor` on a node that otherwise dials directly: the server is reached only through
//!   a real private Tor network. The server announces a `tcp:` hint that points at a proxy
//!   in this test, which finds out which process opened each connection it accepts: a tor
//!   relay (the exit), never the node.
//! - `tcp = disabled` for a server with only `tcp:` hints: never dialed, and the status says
//!   why.
//! - `furl`: a client with no introducer at all stores a file on the servers it names, and
//!   reads it back.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use folio_tests::tornet::TorNet;
use folio_tests::ChildGuard;
use serde_json::Value;

mod common;
use common::{add_section, add_to_section, create, run, status, stop_all, tahoe, wait_for_file};

/// The process that opened one connection a [`Proxy`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Opener {
    pid: Option<u32>,
    /// Its `/proc/PID/comm`, or why it is not known.
    name: String,
}

/// A TCP proxy on 127.0.0.1 in front of a server's real port. For each connection it
/// accepts it looks up, in `/proc`, the process that owns the other end (on loopback both
/// ends are on this host), before forwarding a byte.
struct Proxy {
    port: u16,
    openers: Arc<Mutex<Vec<Opener>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let openers: Arc<Mutex<Vec<Opener>>> = Arc::default();
        let seen = openers.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (Ok(peer), Ok(me)) = (conn.peer_addr(), conn.local_addr()) else {
                    continue;
                };
                seen.lock().unwrap().push(opener_of(peer, me));
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                pipe(conn.try_clone().unwrap(), up.try_clone().unwrap());
                pipe(up, conn);
            }
        });
        Proxy { port, openers }
    }

    fn openers(&self) -> Vec<Opener> {
        self.openers.lock().unwrap().clone()
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// `addr` as `/proc/net/tcp` writes it (IPv4 only: everything here is on 127.0.0.1).
fn proc_addr(addr: SocketAddr) -> String {
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 only: {addr}")
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    )
}

/// The process owning the socket that goes from `from` to `to`.
fn opener_of(from: SocketAddr, to: SocketAddr) -> Opener {
    let (from, to) = (proc_addr(from), proc_addr(to));
    let deadline = Instant::now() + Duration::from_secs(2);
    let inode = loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let found = table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == from && f[2] == to).then(|| f[9].to_string())
        });
        match found {
            Some(inode) if inode != "0" => break inode,
            _ if Instant::now() > deadline => {
                return Opener {
                    pid: None,
                    name: format!("no socket {from} -> {to} in /proc/net/tcp"),
                }
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let link = format!("socket:[{inode}]");
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = proc_dir.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                let name = std::fs::read_to_string(proc_dir.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                return Opener {
                    pid: Some(pid),
                    name,
                };
            }
        }
    }
    Opener {
        pid: None,
        name: format!("no process holds {link}"),
    }
}

/// A tor client of the private network `net` with its SOCKS port on 127.0.0.1:`socks`, that
/// maps `localhost` to 127.0.0.1 (`MapAddress`) before choosing an exit: the test network's
/// exits have no resolver, and Folio never sends a numeric loopback address to an exit, so
/// this is how a `tcp:localhost:PORT` hint reaches this host through a Tor exit. Returns once
/// it has bootstrapped.
fn mapping_tor_client(net: &TorNet, dir: &Path, socks: u16) -> ChildGuard {
    let log = dir.join("notice.log");
    let mut cmd = std::process::Command::new("tor");
    cmd.args(["--TestingTorNetwork", "1", "--ClientUseIPv6", "0"])
        .args(["--PathsNeededToBuildCircuits", "0.67"])
        .arg("--DataDirectory")
        .arg(dir)
        .args(["--SocksPort", &format!("127.0.0.1:{socks}")])
        .args(["--MapAddress", "localhost 127.0.0.1"])
        .args(["--Log", &format!("notice file {}", log.display())]);
    for auth in net.dir_authorities() {
        cmd.args(["--DirAuthority", &auth]);
    }
    let tor = ChildGuard::spawn("tor (client with MapAddress)", cmd).expect("tor runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Bootstrapped 100%") {
            return tor;
        }
        assert!(
            Instant::now() < deadline,
            "the mapping tor client did not bootstrap within 120 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A port nothing listens on now (for a server's real listener, chosen before it starts).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The TubId of a FURL's text.
fn tubid_of(furl: &str) -> String {
    let rest = furl.split_once("://").unwrap().1;
    rest.split_once('@').unwrap().0.to_string()
}

/// A storage node listening on 127.0.0.1:`port` that announces `location`; returns it
/// running, and its storage FURL.
fn storage_node(
    dir: &Path,
    port: u16,
    location: &str,
    introducer: Option<&str>,
) -> (ChildGuard, String) {
    let mut args = vec![
        "create-node".to_string(),
        "--webport=tcp:0:interface=127.0.0.1".to_string(),
        format!("--port=tcp:{port}:interface=127.0.0.1"),
        format!("--location={location}"),
        format!("--nickname={}", dir.file_name().unwrap().to_str().unwrap()),
    ];
    if let Some(f) = introducer {
        args.push(format!("--introducer={f}"));
    }
    args.push(dir.display().to_string());
    create(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let proc = run(dir);
    let furl = wait_for_file(&dir.join("private/storage.furl"), Duration::from_secs(30));
    (proc, furl)
}

/// A client (no storage, no listener) storing each file on `k`-of-`n` shares.
fn client(dir: &Path, introducer: Option<&str>, k: u16, n: u16) {
    let mut args = vec![
        "create-client".to_string(),
        "--webport=tcp:0:interface=127.0.0.1".to_string(),
        "--nickname=client".into(),
        format!("--shares-needed={k}"),
        format!("--shares-happy={n}"),
        format!("--shares-total={n}"),
    ];
    if let Some(f) = introducer {
        args.push(format!("--introducer={f}"));
    }
    args.push(dir.display().to_string());
    create(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// `dir`'s status entry for the server `tubid`, once `ok` holds for it; panics with the last
/// status after `timeout`.
fn wait_for_server(
    dir: &Path,
    tubid: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let st = status(dir);
        let server = st.as_ref().and_then(|s| {
            s["storage_servers"]
                .as_array()?
                .iter()
                .find(|x| x["tubid"] == tubid)
                .cloned()
        });
        if let Some(s) = server.filter(|s| ok(s)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "server {tubid} not as expected within {timeout:?}; last status: {st:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `tahoe put` through `dir`'s node, then `tahoe get` of the cap: the same bytes.
fn put_and_get(dir: &Path, base: &Path, size: usize) {
    let input = base.join("input.bin");
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let out = tahoe()
        .args(["put", "-d"])
        .arg(dir)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tahoe put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cap = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(cap.starts_with("folio:CHK:"), "{cap}");
    let output = base.join("output.bin");
    let out = tahoe()
        .args(["get", "-d"])
        .arg(dir)
        .arg(&cap)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tahoe get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&output).unwrap(), data);
}

/// A node that reveals its IP address, with `[server:X] tcp = tor`: X is reached through
/// the private Tor network (its exit opens every connection to X's port), and the node
/// itself never connects to X's port. Before `tcp` was applied per server, the node dialed
/// X directly and the proxy saw the node's own process.
#[test]
fn server_tcp_tor_reaches_that_server_only_through_tor() {
    let net = TorNet::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (intro, furl) = common::introducer(&base.join("introducer"));

    let socks = free_port();
    let tor = mapping_tor_client(&net, &base.join("tor-client"), socks);
    let real = free_port();
    let proxy = Proxy::start(real);
    // A name, not 127.0.0.1, which Folio refuses to send to a Tor exit. Dialed directly it
    // resolves to 127.0.0.1 as well: on the old code the proxy saw the node itself.
    let location = format!("tcp:localhost:{}", proxy.port);
    let (x, x_furl) = storage_node(&base.join("x"), real, &location, Some(&furl));
    assert!(x_furl.contains(&format!("@{location}/")), "{x_furl}");
    let x_tubid = tubid_of(&x_furl);

    let dir = base.join("client");
    client(&dir, Some(&furl), 1, 1);
    add_to_section(
        &dir,
        "tor",
        &format!("enabled = true\nsocks.port = tcp:127.0.0.1:{socks}"),
    );
    add_section(&dir, &format!("server:{x_tubid}"), "tcp = tor");
    let cfg = std::fs::read_to_string(dir.join("tahoe.cfg")).unwrap();
    assert!(cfg.contains("#tcp = tcp"), "the node dials directly: {cfg}");
    let node = run(&dir);

    let s = wait_for_server(&dir, &x_tubid, Duration::from_secs(240), |s| {
        s["connected"] == true
    });
    let only_through_tor = || {
        let openers = proxy.openers();
        assert!(!openers.is_empty(), "nothing reached X's port");
        for o in &openers {
            assert_ne!(
                o.pid,
                Some(node.pid()),
                "the node connected to X's TCP port itself: {openers:?}"
            );
            assert_eq!(
                o.name, "tor",
                "every connection to X's port comes from a tor relay: {openers:?}"
            );
        }
    };
    only_through_tor();
    assert_eq!(s["winning_hint"], location.as_str(), "{s}");
    let handler = s["handler"].as_str().unwrap();
    assert!(handler.starts_with("tor"), "{s}");
    assert!(handler.contains(&format!("127.0.0.1:{socks}")), "{s}");
    // The introducer, which has no rule of its own, is still dialed directly.
    let st = status(&dir).unwrap();
    assert_eq!(st["introducers"][0]["connected"], true, "{st}");
    let handlers = st["handlers"].to_string();
    assert!(handlers.contains("tcp (direct)"), "{handlers}");

    put_and_get(&dir, base, 200_000);
    only_through_tor();
    stop_all(&mut [node, x, intro], Duration::from_secs(30));
    drop(tor);
    drop(net);
}

/// `[server:X] tcp = disabled` for a server that announces only `tcp:` hints: X is never
/// dialed, and the status says which rule refused it (no silent wait).
#[test]
fn server_tcp_disabled_refuses_with_a_clear_status() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (intro, furl) = common::introducer(&base.join("introducer"));
    let real = free_port();
    let proxy = Proxy::start(real);
    let (x, x_furl) = storage_node(
        &base.join("x"),
        real,
        &format!("tcp:127.0.0.1:{}", proxy.port),
        Some(&furl),
    );
    let x_tubid = tubid_of(&x_furl);
    // Another server, with no rule: still reached (directly) by the same node.
    let port = free_port();
    let (y, y_furl) = storage_node(
        &base.join("y"),
        port,
        &format!("tcp:127.0.0.1:{port}"),
        Some(&furl),
    );
    let y_tubid = tubid_of(&y_furl);

    let dir = base.join("client");
    client(&dir, Some(&furl), 1, 1);
    add_section(&dir, &format!("server:{x_tubid}"), "tcp = disabled");
    let node = run(&dir);

    let s = wait_for_server(&dir, &x_tubid, Duration::from_secs(60), |s| {
        s["last_error"].is_string()
    });
    assert_eq!(s["connected"], false, "{s}");
    let e = s["last_error"].as_str().unwrap();
    assert!(e.contains("tcp = disabled for this peer"), "{s}");
    assert!(e.contains(&format!("tcp:127.0.0.1:{}", proxy.port)), "{s}");
    wait_for_server(&dir, &y_tubid, Duration::from_secs(60), |s| {
        s["connected"] == true
    });
    // The text status shows the reason too.
    let out = tahoe().arg("status").arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&x_tubid[..12]))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("DOWN") && line.contains("tcp = disabled"),
        "{text}"
    );
    // (Y, a storage node with a broker of its own, does dial X.)
    let openers = proxy.openers();
    assert!(
        openers
            .iter()
            .all(|o| o.pid.is_some() && o.pid != Some(node.pid())),
        "the node dialed X's port: {openers:?}"
    );
    stop_all(&mut [node, x, y, intro], Duration::from_secs(30));
}

/// `[server:TUBID] furl` (Tahoe's static servers): a client with no introducer stores a file
/// on the two servers it names, neither of which has an introducer either, and reads it back.
#[test]
fn server_furl_without_an_introducer_stores_and_serves_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut procs = Vec::new();
    let mut servers = Vec::new();
    for name in ["s1", "s2"] {
        let port = free_port();
        let location = format!("tcp:127.0.0.1:{port}");
        let (p, furl) = storage_node(&base.join(name), port, &location, None);
        procs.push(p);
        servers.push(furl);
    }
    let dir = base.join("client");
    client(&dir, None, 1, 2);
    let cfg = std::fs::read_to_string(dir.join("tahoe.cfg")).unwrap();
    assert!(!cfg.contains("\nintroducer.furl"), "{cfg}");
    for (i, furl) in servers.iter().enumerate() {
        add_section(
            &dir,
            &format!("server:{}", tubid_of(furl)),
            &format!("nickname = static{}\nfurl = {furl}", i + 1),
        );
    }
    procs.push(run(&dir));
    for (i, furl) in servers.iter().enumerate() {
        let s = wait_for_server(&dir, &tubid_of(furl), Duration::from_secs(60), |s| {
            s["connected"] == true
        });
        assert_eq!(s["configured"], true, "{s}");
        assert_eq!(s["nickname"], format!("static{}", i + 1), "{s}");
    }
    let st = status(&dir).unwrap();
    assert_eq!(st["introducers"], Value::Array(vec![]), "{st}");
    assert_eq!(st["storage_servers"].as_array().unwrap().len(), 2, "{st}");

    put_and_get(&dir, base, 300_000);
    // Shares on both servers (happy = 2).
    for name in ["s1", "s2"] {
        let shares: Vec<PathBuf> = common::files_under(&base.join(name).join("storage/shares"))
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("incoming"))
            .collect();
        assert!(!shares.is_empty(), "no share on {name}");
    }
    stop_all(&mut procs, Duration::from_secs(30));
}
