//! The load test at a small scale (issue 16): 300 idle peers from 2 worker processes, a
//! 300-connection flood, and the node back to no connections and its starting number of
//! tasks afterwards. The 10,000-peer run is `scripts/load.sh` (docs/performance.md).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn three_hundred_peers_come_and_go_without_leaks() {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_folio-load"))
        .args([
            "--peers",
            "300",
            "--workers",
            "2",
            "--flood",
            "300",
            "--rounds",
            "2",
            "--file-kib",
            "256",
            "--leave-timeout-secs",
            "60",
            "--json",
        ])
        .output()
        .expect("running folio-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "folio-load failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["peers_up"], 300, "{report:#}");
    assert_eq!(report["peers_failed"], 0, "{report:#}");
    assert_eq!(report["connections_held"], 300, "{report:#}");
    assert_eq!(report["connections_after"], 0, "{report:#}");
    assert_eq!(report["tasks_leaked"], 0, "{report:#}");
    for phase in ["idle", "loaded"] {
        assert_eq!(report[format!("honest_failures_{phase}")], 0, "{report:#}");
        assert!(report[format!("put_ms_{phase}")].is_number(), "{report:#}");
    }
    // Every flood connection got an answer or was closed: none is unaccounted for.
    let flood = &report["flood_connects"];
    assert!(flood.as_u64().unwrap_or(0) >= 300, "{report:#}");
    assert!(
        t.elapsed() < Duration::from_secs(300),
        "the small run took {:?}",
        t.elapsed()
    );
}
