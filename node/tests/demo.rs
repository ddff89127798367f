//! README's main command must keep working: run `tahoe demo` and check what it reports.

use std::process::Command;

#[test]
fn tahoe_demo_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_tahoe"))
        .args(["demo", "--round-trips", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        .args(["demo", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--round-trips"));
}
