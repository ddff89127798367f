//! `tahoe create-node --listen=i2p --hide-ip` and `--listen=tor --hide-ip`, for real: an
//! introducer and two storage nodes as `tahoe run` processes that reach each other only
//! through a real i2pd router, through their own embedded I2P routers on a private I2P
//! network, or only through a real private Tor network, on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use folio_tests::i2pd::I2pd;
use folio_tests::i2pnet::I2pNet;
use folio_tests::tornet::{LoneTor, LoneTorAuth, TorNet};
use serde_json::Value;

mod common;
use common::{add_to_section, create, run, status, stop_all, wait_for_file};

/// Waits until every node sees both storage servers connected; returns the last statuses.
fn wait_for_grid(dirs: &[PathBuf], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let sts: Vec<Option<Value>> = dirs.iter().map(|d| status(d)).collect();
        let ok = sts.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                let servers = s["storage_servers"].as_array().unwrap();
                servers.len() == dirs.len() && servers.iter().all(|x| x["connected"] == true)
            })
        });
        if ok {
            return sts.into_iter().map(Option::unwrap).collect();
        }
        if Instant::now() > deadline {
            panic!("the hidden grid did not come up within {timeout:?}; last statuses: {sts:#?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Checks what a hidden node must show: no TCP hint, no TCP listener but the control
/// port, no direct TCP handler, and each other server reached through `transport`.
fn check_hidden(st: &Value, transport: &str) {
    assert_eq!(st["hide_ip"], true, "{st}");
    for h in st["location"].as_array().unwrap() {
        assert!(h.as_str().unwrap().starts_with(transport), "{st}");
    }
    for l in st["listeners"].as_array().unwrap() {
        assert!(!l.as_str().unwrap().starts_with("tcp"), "{st}");
    }
    for (kind, handler) in st["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
    {
        assert!(
            !(kind == "tcp" && handler.contains("direct")),
            "a direct TCP handler in a hidden node: {st}"
        );
    }
    assert_eq!(st["introducers"][0]["connected"], true, "{st}");
    let me = st["nickname"].as_str().unwrap();
    for s in st["storage_servers"].as_array().unwrap() {
        let handler = s["handler"].as_str().unwrap_or("");
        if s["nickname"] == me {
            assert!(handler.contains("local"), "{s}");
        } else if let Some(hint) = s["winning_hint"].as_str() {
            assert!(hint.starts_with(transport), "{s}");
            assert!(handler.contains(transport), "{s}");
        } else {
            assert!(handler.contains("incoming"), "{s}");
        }
    }
}

/// TCP sockets (`/proc/PID/net/tcp`, IPv4 and IPv6) held by process `pid`: (local, remote,
/// state as the kernel's hex code: `0A` listening, `01` established).
fn tcp_sockets(pid: u32) -> Vec<(std::net::SocketAddr, std::net::SocketAddr, String)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let addr = |hex: &str| -> std::net::SocketAddr {
        let (ip, port) = hex.split_once(':').unwrap();
        let port = u16::from_str_radix(port, 16).unwrap();
        let bytes: Vec<u8> = (0..ip.len() / 2)
            .map(|i| u8::from_str_radix(&ip[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // The kernel prints each 32-bit word in host (little-endian) order.
        let fix: Vec<u8> = bytes
            .chunks(4)
            .flat_map(|w| w.iter().rev().copied())
            .collect();
        let ip: std::net::IpAddr = if fix.len() == 4 {
            std::net::Ipv4Addr::new(fix[0], fix[1], fix[2], fix[3]).into()
        } else {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(fix).unwrap());
            v6.to_ipv4_mapped().map(Into::into).unwrap_or(v6.into())
        };
        (ip, port).into()
    };
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                out.push((addr(f[1]), addr(f[2]), f[3].to_string()));
            }
        }
    }
    out
}

/// Checks that the processes `pids` hold TCP connections only on 127.0.0.1, and only to
/// `allowed` or to a listening socket of one of them, or from a peer to one of their
/// listening sockets: nothing beyond the test network and the nodes themselves.
fn check_tcp_peers(pids: &[u32], allowed: &[std::net::SocketAddr]) {
    let sockets: Vec<_> = pids.iter().map(|&p| (p, tcp_sockets(p))).collect();
    let listening: std::collections::HashSet<std::net::SocketAddr> = sockets
        .iter()
        .flat_map(|(_, s)| s.iter().filter(|s| s.2 == "0A").map(|s| s.0))
        .chain(allowed.iter().copied())
        .collect();
    let mut seen = 0;
    for (pid, socks) in &sockets {
        for (local, remote, state) in socks {
            assert!(local.ip().is_loopback(), "pid {pid}: a socket on {local}");
            if state == "0A" {
                continue;
            }
            seen += 1;
            assert!(
                remote.ip().is_loopback(),
                "pid {pid}: a connection to {remote}"
            );
            assert!(
                listening.contains(remote) || listening.contains(local),
                "pid {pid}: a connection {local} -> {remote} to neither the test network nor a node"
            );
        }
    }
    assert!(
        seen > 0,
        "no TCP connection found at all: the check would prove nothing"
    );
}

fn hidden_grid(base: &Path, transport: &str, extra: &[String], tweak: impl Fn(&Path)) {
    hidden_grid_and(base, transport, extra, tweak, None)
}

/// [`hidden_grid`], and with `network` (the test network's addresses) also a file put on
/// one node and fetched on the other, and a check that every TCP connection of every node
/// stays within `network` and the nodes.
fn hidden_grid_and(
    base: &Path,
    transport: &str,
    extra: &[String],
    tweak: impl Fn(&Path),
    network: Option<&[std::net::SocketAddr]>,
) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    let listen = format!("--listen={transport}");
    let intro = base.join("introducer");
    let mut args: Vec<String> = vec![
        "create-introducer".into(),
        listen.clone(),
        "--hide-ip".into(),
    ];
    args.extend(extra.iter().cloned());
    args.push(intro.display().to_string());
    create(&args.iter().map(String::as_str).collect::<Vec<_>>());
    tweak(&intro);
    let mut procs = vec![run(&intro)];
    let furl = wait_for_file(
        &intro.join("private/introducer.furl"),
        Duration::from_secs(180),
    );
    assert!(furl.contains(&format!("@{transport}:")), "{furl}");
    step("introducer up");

    let dirs: Vec<PathBuf> = ["h1", "h2"].iter().map(|n| base.join(n)).collect();
    for d in &dirs {
        let nick = d.file_name().unwrap().to_str().unwrap().to_string();
        let mut args: Vec<String> = vec![
            "create-node".into(),
            "--webport=tcp:0:interface=127.0.0.1".into(),
            listen.clone(),
            "--hide-ip".into(),
            format!("--nickname={nick}"),
            format!("--introducer={furl}"),
        ];
        args.extend(extra.iter().cloned());
        args.push(d.display().to_string());
        create(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let cfg = std::fs::read_to_string(d.join("tahoe.cfg")).unwrap();
        assert!(cfg.contains("reveal-IP-address = false"), "{cfg}");
        tweak(d);
        procs.push(run(d));
    }
    let sts = wait_for_grid(&dirs, Duration::from_secs(240));
    step("both nodes see both storage servers");
    for st in &sts {
        check_hidden(st, transport);
        if extra.is_empty() && transport == "tor" {
            let handlers = st["handlers"].to_string();
            assert!(
                handlers.contains("tor (embedded arti, bootstrapped)"),
                "{handlers}"
            );
        }
        if extra.is_empty() && transport == "i2p" {
            let handlers = st["handlers"].to_string();
            assert!(
                handlers.contains("i2p (embedded router, SAM bridge at 127.0.0.1:"),
                "{handlers}"
            );
        }
    }
    if let Some(network) = network {
        let input = base.join("input.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&input, &data).unwrap();
        let out = common::tahoe()
            .args(["put", "-d"])
            .arg(&dirs[0])
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cap = String::from_utf8(out.stdout).unwrap().trim().to_string();
        step(&format!("stored 200000 bytes from {}", dirs[0].display()));
        let output = base.join("output.bin");
        let out = common::tahoe()
            .args(["get", "-d"])
            .arg(&dirs[1])
            .arg(&cap)
            .arg(&output)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&output).unwrap(), data);
        step(&format!("fetched it on {}", dirs[1].display()));
        let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
        check_tcp_peers(&pids, network);
        step("every TCP connection of every node: on 127.0.0.1, to the test network or a node");
    }
    stop_all(&mut procs, Duration::from_secs(30));
}

#[test]
fn hidden_grid_over_a_real_i2pd() {
    let router = I2pd::start();
    let tmp = tempfile::tempdir().unwrap();
    let sam = format!("--i2p-sam-port=tcp:{}", router.sam);
    // One router: 0-hop tunnels, set through tahoe.cfg's [i2p] options.
    hidden_grid(tmp.path(), "i2p", &[sam], |d| {
        add_to_section(
            d,
            "i2p",
            "inbound.length = 0\noutbound.length = 0\ninbound.quantity = 1\noutbound.quantity = 1",
        )
    });
}

/// The default I2P path: no SAM bridge named, so every node runs an embedded I2P router
/// (state in `private/i2p-router`), pointed at a private I2P network of embedded routers
/// through `[i2p] router.network`. No i2pd.
#[test]
fn hidden_grid_over_embedded_i2p() {
    let net = I2pNet::start(1);
    eprintln!(
        "private I2P network up in {:.1}s",
        net.started_in.as_secs_f64()
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = net.network_file();
    let tweak = |d: &Path| {
        let cfg = std::fs::read_to_string(d.join("tahoe.cfg")).unwrap();
        assert!(!cfg.contains("\nsam.port"), "no SAM bridge named: {cfg}");
        add_to_section(d, "i2p", &format!("router.network = {}", file.display()));
        // Two storage servers: each share on both.
        add_to_section(
            d,
            "client",
            "shares.needed = 1\nshares.happy = 2\nshares.total = 2",
        );
    };
    let network = net.addresses();
    hidden_grid_and(tmp.path(), "i2p", &[], tweak, Some(&network));
    for node in ["introducer", "h1", "h2"] {
        let state = tmp.path().join(node).join("private/i2p-router");
        for f in ["router.keys", "routerInfo.dat"] {
            assert!(
                state.join(f).is_file(),
                "{node}: no {f} in {}",
                state.display()
            );
        }
    }
}

/// The default Tor path: no tor named, so every node runs the embedded arti client, pointed
/// at the private network through `[tor] arti.network`.
#[test]
fn hidden_grid_over_embedded_arti() {
    let net = TorNet::start();
    let tmp = tempfile::tempdir().unwrap();
    let file = net.arti_network_file();
    hidden_grid(tmp.path(), "tor", &[], |d| {
        add_to_section(d, "tor", &format!("arti.network = {}", file.display()));
    });
}

#[test]
fn hidden_grid_over_a_real_tor_network() {
    let net = TorNet::start();
    let tmp = tempfile::tempdir().unwrap();
    let control = format!("--tor-control-port=tcp:{}", net.control());
    hidden_grid(tmp.path(), "tor", &[control], |_| {});
}

/// Processes whose command line names `torrc`.
fn tors_using(torrc: &Path) -> Vec<u32> {
    let needle = torrc.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// `--tor-launch`: the node makes its onion key with a tor of its own at create time (kept
/// off the network), and runs its own tor while it runs, stopping it when it stops. Here that
/// tor joins the private test network (through `[tor] tor.executable`, a wrapper that adds
/// the network's authorities), so the test stays on 127.0.0.1 and proves the launched tor
/// carries real traffic: the node reaches the introducer's onion service through it, and a
/// node using the network's own tor reaches the launching node's onion service.
#[test]
fn tor_launch_runs_a_tor_of_the_nodes_own() {
    let net = TorNet::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let control = format!("--tor-control-port=tcp:{}", net.control());
    let intro = base.join("introducer");
    create(&[
        "create-introducer",
        "--listen=tor",
        "--hide-ip",
        &control,
        intro.to_str().unwrap(),
    ]);
    let mut procs = vec![run(&intro)];
    let furl = wait_for_file(
        &intro.join("private/introducer.furl"),
        Duration::from_secs(120),
    );

    let dir = base.join("launcher");
    create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        "--listen=tor",
        "--tor-launch",
        "--hide-ip",
        "--nickname=launcher",
        &format!("--introducer={furl}"),
        dir.to_str().unwrap(),
    ]);
    let cfg = std::fs::read_to_string(dir.join("tahoe.cfg")).unwrap();
    assert!(cfg.contains("launch = true"), "{cfg}");
    assert!(cfg.contains("tcp = tor"), "{cfg}");
    let location = cfg
        .lines()
        .find_map(|l| l.strip_prefix("tub.location = "))
        .expect("a location")
        .to_string();
    assert!(
        location.starts_with("tor:") && location.ends_with(".onion:3457"),
        "{location}"
    );
    let key = dir.join("private/tor_onion.privkey");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The tor used at create time is gone.
    let torrc = dir.join("private/tor-statedir/torrc");
    assert!(torrc.exists());
    assert_eq!(
        tors_using(&torrc),
        Vec::<u32>::new(),
        "the create-time tor still runs"
    );

    let mut wrapper = String::from(
        "#!/bin/sh\nexec tor \"$@\" --TestingTorNetwork 1 --ClientUseIPv6 0 \\\n  --PathsNeededToBuildCircuits 0.67",
    );
    for auth in net.dir_authorities() {
        wrapper.push_str(&format!(" \\\n  --DirAuthority '{auth}'"));
    }
    wrapper.push('\n');
    let wrapper_path = base.join("tor-testnet");
    std::fs::write(&wrapper_path, wrapper).unwrap();
    std::fs::set_permissions(
        &wrapper_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    add_to_section(
        &dir,
        "tor",
        &format!("tor.executable = {}", wrapper_path.display()),
    );

    let other = base.join("other");
    create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        "--listen=tor",
        "--hide-ip",
        "--nickname=other",
        &control,
        &format!("--introducer={furl}"),
        other.to_str().unwrap(),
    ]);
    procs.push(run(&dir));
    procs.push(run(&other));
    let dirs = vec![dir.clone(), other.clone()];
    let sts = wait_for_grid(&dirs, Duration::from_secs(240));
    for st in &sts {
        check_hidden(st, "tor");
    }
    let st = &sts[0];
    assert_eq!(st["listeners"][0].as_str().unwrap(), location, "{st}");
    let pid_file = dir.join("private/tor-statedir/tor.pid");
    let tor_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(tors_using(&torrc), vec![tor_pid]);
    let tor_handler = st["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "tor")
        .map(|p| p[1].as_str().unwrap().to_string())
        .expect("a tor handler");
    assert!(tor_handler.contains("SOCKS at 127.0.0.1:"), "{tor_handler}");
    assert!(
        !tor_handler.contains(&net.control().to_string()),
        "the launcher must use its own tor: {tor_handler}"
    );

    stop_all(&mut procs, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(tor_pid) {
        assert!(
            Instant::now() < deadline,
            "the node left its tor {tor_pid} running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running tor set up with `HashedControlPassword`: `create-node` copies the password into
/// `private/` (never into tahoe.cfg), makes the onion key through the control port with it,
/// and `tahoe run` authenticates with it. The tor never reaches past 127.0.0.1 and never
/// bootstraps: its control and SOCKS ports are all this test needs.
#[test]
fn a_password_protected_tor_serves_a_hidden_node() {
    let tor = LoneTor::start("node-password", LoneTorAuth::Password("s3cret pass"));
    let tmp = tempfile::tempdir().unwrap();
    let control = format!("--tor-control-port=tcp:{}", tor.control());

    // Without the password, create-node says what is missing.
    let dir = tmp.path().join("nopass");
    let out = common::tahoe()
        .args(["create-node", "--listen=tor", "--hide-ip", &control])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wants its password"),
        "{err}"
    );

    let pw = tmp.path().join("tor-password");
    std::fs::write(&pw, "s3cret pass\n").unwrap();
    let dir = tmp.path().join("node");
    create(&[
        "create-node",
        "--webport=tcp:0:interface=127.0.0.1",
        "--listen=tor",
        "--hide-ip",
        &control,
        &format!("--tor-control-password-file={}", pw.display()),
        dir.to_str().unwrap(),
    ]);
    let kept = dir.join("private/tor_control_password");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "s3cret pass\n");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let cfg = std::fs::read_to_string(dir.join("tahoe.cfg")).unwrap();
    assert!(!cfg.contains("s3cret"), "{cfg}");
    assert!(cfg.contains(".onion:3457"), "{cfg}");

    let _node = run(&dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = status(&dir) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let listeners = st["listeners"].to_string();
    assert!(listeners.contains(".onion:3457"), "{st}");
    assert!(
        st["handlers"]
            .to_string()
            .contains(&format!("control at {}", tor.control())),
        "{st}"
    );
}

/// A TCP relay on 127.0.0.1 in front of a SOCKS port that can hold back everything coming
/// from the far side (every answer) while it forwards everything going there (every call),
/// counting per connection the bytes it holds and the bytes it forwarded since then.
struct HoldingRelay {
    addr: std::net::SocketAddr,
    state: Arc<HoldState>,
}

#[derive(Default)]
struct HoldState {
    hold: std::sync::atomic::AtomicBool,
    /// Per connection: the writer towards the node, the bytes held and their count.
    conns: Mutex<Vec<Arc<Mutex<HeldConn>>>>,
}

struct HeldConn {
    to_client: std::net::TcpStream,
    held: Vec<u8>,
    held_total: usize,
    /// Bytes forwarded towards the far side (calls) since [`HoldingRelay::hold`].
    sent_total: usize,
}

impl HoldingRelay {
    fn start(target: std::net::SocketAddr) -> HoldingRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(HoldState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let conn = Arc::new(Mutex::new(HeldConn {
                    to_client: client.try_clone().unwrap(),
                    held: Vec::new(),
                    held_total: 0,
                    sent_total: 0,
                }));
                st.conns.lock().unwrap().push(conn.clone());
                // Calls: always forwarded, and counted.
                let (mut from_client, mut to_server) = (client, server.try_clone().unwrap());
                let sent = conn.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent.lock().unwrap().sent_total += n;
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                // Answers: held while `hold` is set, in order.
                let (mut from_server, st) = (server, st.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut c = conn.lock().unwrap();
                        if st.hold.load(std::sync::atomic::Ordering::SeqCst) {
                            c.held.extend_from_slice(&buf[..n]);
                            c.held_total += n;
                        } else if c.to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let c = conn.lock().unwrap();
                    let _ = c.to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        HoldingRelay { addr, state }
    }

    /// From now on, answers are held.
    fn hold(&self) {
        for c in self.state.conns.lock().unwrap().iter() {
            let mut c = c.lock().unwrap();
            c.held_total = 0;
            c.sent_total = 0;
        }
        self.state
            .hold
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bytes held on each connection since [`HoldingRelay::hold`].
    fn held(&self) -> Vec<usize> {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().held_total)
            .collect()
    }

    /// Bytes forwarded towards the far side on each connection since [`HoldingRelay::hold`].
    fn sent(&self) -> Vec<usize> {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().sent_total)
            .collect()
    }

    /// Delivers what was held, in order, and forwards everything again.
    fn release(&self) {
        use std::io::Write;
        let conns = self.state.conns.lock().unwrap();
        let mut locked: Vec<_> = conns.iter().map(|c| c.lock().unwrap()).collect();
        self.state
            .hold
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for c in locked.iter_mut() {
            let held = std::mem::take(&mut c.held);
            let _ = c.to_client.write_all(&held);
        }
    }
}

/// Issue 17: on a warm `--listen=tor --hide-ip` grid (three storage nodes, shares 2-of-3,
/// and a client node, all `tahoe run` processes on the private Tor network), uploading and
/// downloading a small file (one segment, one byte above the LIT size) take one flight per
/// server. The client reaches Tor through a relay in this test (`[tor] socks.port`) that,
/// during each counted transfer, holds back every byte coming from the servers while it
/// forwards every byte going to them. With no answer delivered, every server must still be
/// sent more than a whole share by `tahoe put` (allocation, write and close went together),
/// and at least k servers must send back more than a whole share to `tahoe get` (the
/// listing alone is far smaller, so the read went with it). Then the held answers are
/// delivered and the transfer must complete, correct. Counted in bytes on the wire, never
/// timed.
#[test]
fn small_transfers_are_one_flight_per_server_over_tor() {
    use folio_node::immutable::{EncodingParams, Geometry, ShareLayout, LIT_MAX};
    let net = TorNet::start();
    let relay = HoldingRelay::start(net.socks());
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let control = format!("--tor-control-port=tcp:{}", net.control());
    let (needed, total) = (2u16, 3u16);
    let enc = [
        format!("--shares-needed={needed}"),
        format!("--shares-happy={total}"),
        format!("--shares-total={total}"),
    ];

    let intro = base.join("introducer");
    create(&[
        "create-introducer",
        "--listen=tor",
        "--hide-ip",
        &control,
        intro.to_str().unwrap(),
    ]);
    let mut procs = vec![run(&intro)];
    let furl = wait_for_file(
        &intro.join("private/introducer.furl"),
        Duration::from_secs(180),
    );
    let introducer = format!("--introducer={furl}");
    for n in 1..=total {
        let d = base.join(format!("s{n}"));
        let nick = format!("--nickname=s{n}");
        let mut args = vec![
            "create-node",
            "--webport=tcp:0:interface=127.0.0.1",
            "--listen=tor",
            "--hide-ip",
            &control,
            &nick,
            &introducer,
        ];
        args.extend(enc.iter().map(String::as_str));
        args.push(d.to_str().unwrap());
        create(&args);
        procs.push(run(&d));
    }
    // The client: no storage, no onion service, Tor through the relay.
    let client = base.join("client");
    let mut args = vec![
        "create-client",
        "--webport=tcp:0:interface=127.0.0.1",
        "--hide-ip",
        &control,
        "--nickname=client",
        &introducer,
    ];
    args.extend(enc.iter().map(String::as_str));
    args.push(client.to_str().unwrap());
    create(&args);
    let cfg_path = client.join("tahoe.cfg");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let control_line = format!("control.port = tcp:{}", net.control());
    assert!(cfg.contains(&control_line), "{cfg}");
    std::fs::write(
        &cfg_path,
        cfg.replace(&control_line, &format!("socks.port = tcp:{}", relay.addr)),
    )
    .unwrap();
    procs.push(run(&client));

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let st = status(&client);
        let up = st.as_ref().map_or(0, |s| {
            s["storage_servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["connected"] == true)
                .count()
        });
        if up == total as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client saw {up} of {total} storage servers within 300 s: {st:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let size = LIT_MAX + 1;
    let data: Vec<u8> = (0..size as u32).map(|i| (i * 31 % 251) as u8).collect();
    let input = base.join("small.bin");
    std::fs::write(&input, &data).unwrap();
    // `tahoe put`, bounded: its cap, once it exits.
    let put = |what: &str, input: &Path| {
        let mut c = common::tahoe();
        c.args(["put", "-d"]).arg(&client).arg(input);
        folio_tests::ChildGuard::spawn(&format!("tahoe put ({what})"), c).unwrap()
    };
    let finish_put = |mut p: folio_tests::ChildGuard| {
        let lines = p.lines();
        let cap = lines.next_within(Duration::from_secs(120));
        let st = p.wait_timeout(Duration::from_secs(30));
        assert!(st.success(), "tahoe put: {st:?}");
        cap.trim().to_string()
    };
    let get = |cap: &str, name: &str| {
        let mut c = common::tahoe();
        c.args(["get", "-d"])
            .arg(&client)
            .arg(cap)
            .arg(base.join(name));
        folio_tests::ChildGuard::spawn(&format!("tahoe get {name}"), c).unwrap()
    };
    // A first upload and download: every connection and circuit is up before the ones
    // counted.
    let cap = finish_put(put("first", &input));
    assert!(get(&cap, "first.bin")
        .wait_timeout(Duration::from_secs(120))
        .success());
    assert_eq!(std::fs::read(base.join("first.bin")).unwrap(), data);

    let params = EncodingParams {
        needed,
        happy: total,
        total,
        ..Default::default()
    };
    let share_len = ShareLayout::new(
        Geometry::new(
            needed,
            total,
            size as u64,
            params.segment_size_for(size as u64),
        )
        .unwrap(),
    )
    .end as usize;
    // Waits, with every answer held, until `enough` holds of the per-connection byte
    // counts `count` gives, then delivers what was held.
    let one_flight = |what: &str,
                      enough: &dyn Fn(&[usize]) -> bool,
                      count: &dyn Fn() -> Vec<usize>| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n = count();
            if enough(&n) {
                eprintln!("one flight ({what}): bytes per relay connection with no answer delivered: {n:?} (a share is {share_len} bytes)");
                break;
            }
            if Instant::now() > deadline {
                relay.release();
                panic!(
                    "{what}: with every answer held back, not enough servers got (or sent) \
                     more than a share ({share_len} bytes) within 120 s: the transfer waits \
                     for an answer mid-flight. Bytes per connection: {n:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        relay.release();
    };
    // Anything still on its way from the first transfers (an answer not needed) arrives
    // before counting starts.
    std::thread::sleep(Duration::from_secs(2));

    // Upload: with no answer delivered, every one of the `total` servers must still be sent
    // more than a whole share: allocation, the write and the close went together.
    // Another file of the same size: the first one's shares are on the servers already, so
    // uploading it again would write nothing.
    let data: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let input = base.join("small2.bin");
    std::fs::write(&input, &data).unwrap();
    relay.hold();
    let counted = put("counted", &input);
    one_flight(
        "upload",
        &|n| n.iter().filter(|&&b| b > share_len).count() >= total as usize,
        &|| relay.sent(),
    );
    let cap = finish_put(counted);

    // Download: with no answer delivered, at least k servers must still send back more than
    // a whole share: the listing (far smaller) and the read went together.
    std::thread::sleep(Duration::from_secs(2));
    relay.hold();
    let mut fetch = get(&cap, "counted.bin");
    one_flight(
        "download",
        &|n| n.iter().filter(|&&b| b > share_len).count() >= needed as usize,
        &|| relay.held(),
    );
    let st = fetch.wait_timeout(Duration::from_secs(120));
    assert!(st.success(), "tahoe get: {st:?}");
    assert_eq!(std::fs::read(base.join("counted.bin")).unwrap(), data);
    stop_all(&mut procs, Duration::from_secs(30));
}
