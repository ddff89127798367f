//! What the node's tests share: running `tahoe`, waiting for its files, reading
//! `tahoe status --json`, listing the files a storage server left.
#![allow(dead_code)]

pub mod grid;
pub mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use folio_tests::ChildGuard;
use serde_json::Value;

pub fn tahoe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tahoe"));
    c.env("RUST_LOG", "warn,emissary=error");
    c
}

pub fn create(args: &[&str]) {
    let out = tahoe().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tahoe {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops `procs` cleanly: SIGTERM to all, then each must exit with success within `within`.
pub fn stop_all(procs: &mut [ChildGuard], within: Duration) {
    for p in procs.iter() {
        p.terminate();
    }
    for p in procs.iter_mut() {
        assert!(p.wait_timeout(within).success());
    }
}

pub fn run(dir: &Path) -> ChildGuard {
    let mut c = tahoe();
    c.arg("run").arg(dir);
    ChildGuard::spawn(&format!("tahoe run {}", dir.display()), c).unwrap()
}

/// A port on 127.0.0.1 for a node to listen on, free now and below Linux's ephemeral range
/// (32768-60999): a port a node picks when it is made comes from that range, and before the
/// node runs, an outgoing connection of another node can take it (seen in CI: "Address
/// already in use" with ten nodes starting). Ports below the range are only ever taken by
/// listeners.
pub fn listen_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 12;
    for _ in 0..12_000 {
        let p = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port on 127.0.0.1 in 20000-31999");
}

/// An introducer made in `dir` (on 127.0.0.1) and running; returns it and its FURL.
pub fn introducer(dir: &Path) -> (ChildGuard, String) {
    create(&[
        "create-introducer",
        "--hostname=127.0.0.1",
        dir.to_str().unwrap(),
    ]);
    let proc = run(dir);
    let furl = wait_for_file(
        &dir.join("private/introducer.furl"),
        Duration::from_secs(30),
    );
    (proc, furl)
}

pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn status(dir: &Path) -> Option<Value> {
    let out = tahoe()
        .args(["status", "--json", "--timeout", "10"])
        .arg(dir)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Every file below `dir` (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Adds `lines` right after the `[section]` header of `dir`'s tahoe.cfg.
pub fn add_to_section(dir: &Path, section: &str, lines: &str) {
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

/// Adds a `[section]` with `lines` at the end of `dir`'s tahoe.cfg.
pub fn add_section(dir: &Path, section: &str, lines: &str) {
    let path = dir.join("tahoe.cfg");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n[{section}]\n{lines}\n"));
    std::fs::write(&path, text).unwrap();
}
