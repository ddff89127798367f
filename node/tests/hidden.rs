//! `tahoe create-node --listen=i2p --hide-ip` and `--listen=tor --hide-ip`, for real: an
//! introducer and two storage nodes as `tahoe run` processes that reach each other only
//! through a real i2pd router, or only through a real private Tor network, on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use folio_tests::i2pd::I2pd;
use folio_tests::tornet::TorNet;
use folio_tests::ChildGuard;
use serde_json::Value;

fn tahoe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tahoe"));
    c.env("RUST_LOG", "warn");
    c
}

fn create(args: &[&str]) {
    let out = tahoe().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tahoe {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(dir: &Path) -> ChildGuard {
    let mut c = tahoe();
    c.arg("run").arg(dir);
    ChildGuard::spawn(&format!("tahoe run {}", dir.display()), c).unwrap()
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if !t.trim().is_empty() {
                return t.trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(dir: &Path) -> Option<Value> {
    let out = tahoe()
        .args(["status", "--json", "--timeout", "10"])
        .arg(dir)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Adds `lines` right after the `[section]` header of `dir`'s tahoe.cfg.
fn add_to_section(dir: &Path, section: &str, lines: &str) {
    let path = dir.join("tahoe.cfg");
    let text = std::fs::read_to_string(&path).unwrap();
    let header = format!("[{section}]\n");
    assert!(text.contains(&header), "{text}");
    std::fs::write(
        &path,
        text.replacen(&header, &format!("{header}{lines}\n"), 1),
    )
    .unwrap();
}

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

fn hidden_grid(base: &Path, transport: &str, extra: &[String], tweak: impl Fn(&Path)) {
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
    }
    for p in &procs {
        p.terminate();
    }
    for p in &mut procs {
        assert!(p.wait_timeout(Duration::from_secs(30)).success());
    }
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

#[test]
fn hidden_grid_over_a_real_tor_network() {
    let net = TorNet::start();
    let tmp = tempfile::tempdir().unwrap();
    let control = format!("--tor-control-port=tcp:{}", net.control());
    hidden_grid(tmp.path(), "tor", &[control], |_| {});
}
