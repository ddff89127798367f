//! A grid of real processes: an introducer and storage nodes, each a `tahoe run`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use folio_tests::ChildGuard;

use super::{create, introducer, listen_port, run, status};

/// One grid at a time: each is eleven debug-build processes, and three at once on two
/// cores (with the ports each node chose when it was made) left a client seeing fewer than
/// ten servers within 90 s.
pub static ONE_GRID: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct ProcGrid {
    _tmp: tempfile::TempDir,
    /// The grid's directory (the nodes are `s0`, `s1`, … in it).
    pub base: PathBuf,
    /// The introducer's FURL.
    pub furl: String,
    /// Node 0's directory: the node the tests use as a client.
    pub client: PathBuf,
    _intro: ChildGuard,
    /// The storage nodes' processes, node 0 first.
    pub nodes: Vec<ChildGuard>,
    /// Last, so that it is released after the processes above are gone.
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl ProcGrid {
    /// An introducer and `n` storage nodes on 127.0.0.1 (made with `extra` added to each
    /// `create-node`; without it 3-of-10, happy 7), all running; node 0 is the one the
    /// tests use. Waits (up to 90 s) until node 0 sees all `n` servers.
    pub fn start(n: usize, extra: &[&str]) -> ProcGrid {
        let serial = ONE_GRID.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let (intro, furl) = introducer(&base.join("introducer"));
        let dirs: Vec<PathBuf> = (0..n).map(|i| base.join(format!("s{i}"))).collect();
        for (i, d) in dirs.iter().enumerate() {
            let port = listen_port();
            let port_arg = format!("--port=tcp:{port}:interface=127.0.0.1");
            let location = format!("--location=tcp:127.0.0.1:{port}");
            let nickname = format!("s{i}");
            let mut args = vec![
                "create-node",
                "--webport=tcp:0:interface=127.0.0.1",
                &port_arg,
                &location,
                "--nickname",
                &nickname,
                "--introducer",
                &furl,
            ];
            args.extend_from_slice(extra);
            args.push(d.to_str().unwrap());
            create(&args);
        }
        let nodes: Vec<ChildGuard> = dirs.iter().map(|d| run(d)).collect();
        let client = dirs[0].clone();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let up = connected_servers(&client);
            if up == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the client saw {up} of {n} servers"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ProcGrid {
            _serial: serial,
            _tmp: tmp,
            base,
            furl,
            client,
            _intro: intro,
            nodes,
        }
    }
}

/// How many storage servers the node in `dir` is connected to (`tahoe status`; 0 when it
/// does not answer).
pub fn connected_servers(dir: &Path) -> usize {
    status(dir)
        .and_then(|s| {
            s["storage_servers"]
                .as_array()
                .map(|a| a.iter().filter(|x| x["connected"] == true).count())
        })
        .unwrap_or(0)
}
