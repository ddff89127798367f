//! README's main command must keep working: run `tahoe demo` (the demo grid) and
//! `tahoe demo-handshake`, and check what they report.

use std::process::Command;

/// Runs `tahoe ARGS`, which must succeed; returns its stdout.
fn tahoe_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tahoe"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "tahoe {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn tahoe_demo_handshake_runs_end_to_end() {
    let stdout = tahoe_ok(&["demo-handshake", "--round-trips", "20"]);
    for expected in [
        "FURL   folio://",
        "connected in",
        "20 round trips",
        "bob saw side Server",
        "accepting party as Side::Server: handshake complete",
        "both parties as Side::Client: refused",
        "done.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn tahoe_version_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_tahoe"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tahoe "));
    let out = Command::new(env!("CARGO_BIN_EXE_tahoe"))
        .args(["demo-handshake", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--round-trips"));
}

#[test]
fn tahoe_demo_grid_stores_loses_seven_servers_and_gets_the_file_back() {
    let stdout = tahoe_ok(&["demo", "--size-mib", "1"]);
    for expected in [
        "the client sees 10 storage servers",
        "the client's welcome page: http://127.0.0.1:",
        "cap: folio:CHK:",
        "10 shares on 10 servers",
        "directory: folio:DIR:",
        "sample.bin",
        "by its name in the directory",
        "sample.bin -> folio:CHK:",
        "stopped: storage1, storage2, storage3, storage4, storage5, storage6, storage7",
        "identical to the original: yes",
        "refused, as it must be: download failed: found 2 shares of 10 (need 3)",
        "Storage servers: 2 of 10 connected",
        "done in",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let dir = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Folio demo grid in "))
        .expect("the first line names the directory");
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo left {dir} behind"
    );
}

/// `tahoe demo --keep` leaves the grid up after its steps, its client's welcome page
/// answering at the URL it printed, until Ctrl-C (SIGINT), then stops cleanly.
#[test]
fn tahoe_demo_keep_leaves_the_welcome_page_up_until_ctrl_c() {
    use std::time::{Duration, Instant};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tahoe"));
    cmd.args(["demo", "--size-kib", "100", "--keep"]);
    let mut demo = folio_tests::ChildGuard::spawn("tahoe demo --keep", cmd).unwrap();
    let lines = demo.lines();
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut dir, mut url) = (None, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.next_within(left);
        if let Some(d) = line.strip_prefix("Folio demo grid in ") {
            dir = Some(d.to_string());
        }
        if let Some(u) = line.trim().strip_prefix("the client's welcome page: ") {
            url = Some(u.to_string());
        }
        if line.contains("Press Ctrl-C to stop") {
            break;
        }
    }
    let url = url.expect("the demo printed its welcome page URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let page = rt.block_on(async {
        let r = reqwest::get(format!("{url}?t=json")).await.unwrap();
        assert!(r.status().is_success());
        r.text().await.unwrap()
    });
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v["node"]["nickname"], "client");
    assert_eq!(v["known_servers"], 10);
    assert!(
        v["transfers"].as_array().unwrap().len() >= 2,
        "the demo's upload and download: {v:#}"
    );
    let ok = Command::new("kill")
        .args(["-INT", &demo.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(demo.wait_timeout(Duration::from_secs(60)).success());
    let dir = dir.expect("the first line names the directory");
    assert!(std::path::Path::new(&dir).exists(), "--keep keeps {dir}");
    std::fs::remove_dir_all(&dir).unwrap();
}
