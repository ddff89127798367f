//! Storage servers on their own Tubs and a client Tub connected to all of them over TCP
//! on 127.0.0.1, for the tests of immutable and mutable files.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use folio_handlers::TcpListener;
use folio_node::broker::ConnectedServer;
use folio_node::immutable::UploadReport;
use folio_node::storage::{si_b32, Storage, StorageConfig, StorageServerRef};
use folio_rpc::{Host, Tub, TubConfig};

use super::files_under;

/// Runs a test body on a two-thread runtime, bounded as a whole.
pub fn run_for(secs: u64, body: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(secs), body)
                .await
                .expect("test timed out")
        })
}

pub fn run(body: impl Future<Output = ()>) {
    run_for(120, body)
}

pub fn tub() -> Tub {
    folio_tests::tubs::tcp_tub(TubConfig::default())
}

pub struct Server {
    pub dir: PathBuf,
    pub tub: Tub,
    pub storage: Storage,
    pub running: bool,
}

/// Storage servers, each on its own listening Tub, and a client Tub connected to all.
pub struct Grid {
    pub tmp: tempfile::TempDir,
    pub servers: Vec<Server>,
    pub client: Tub,
    pub connected: Vec<ConnectedServer>,
}

impl Grid {
    pub async fn new(n: usize) -> Grid {
        Grid::with(n, |_, _| {}).await
    }

    pub async fn with(n: usize, adjust: impl Fn(usize, &mut StorageConfig)) -> Grid {
        Grid::build(n, adjust, |storage| storage.serve()).await
    }

    pub async fn build(
        n: usize,
        adjust: impl Fn(usize, &mut StorageConfig),
        serve: impl Fn(&Storage) -> StorageServerRef,
    ) -> Grid {
        let tmp = tempfile::tempdir().unwrap();
        let client = tub();
        let mut servers = Vec::new();
        let mut connected = Vec::new();
        for i in 0..n {
            let dir = tmp.path().join(format!("server{i}"));
            let mut config = StorageConfig::new(&dir);
            adjust(i, &mut config);
            let storage = Storage::open(config).unwrap();
            let server = tub();
            let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse().unwrap())
                .await
                .unwrap();
            server.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
            server.listen(listener);
            let furl = server.register_as(serve(&storage), "storage").unwrap();
            let ss: StorageServerRef =
                tokio::time::timeout(Duration::from_secs(10), client.get(&furl))
                    .await
                    .expect("connecting timed out")
                    .unwrap();
            connected.push(ConnectedServer {
                key: [i as u8 + 1; 32],
                nickname: format!("server{i}"),
                permutation_seed: [i as u8 + 101; 32],
                server: ss,
            });
            servers.push(Server {
                dir,
                tub: server,
                storage,
                running: true,
            });
        }
        Grid {
            tmp,
            servers,
            client,
            connected,
        }
    }

    /// Shuts server `i`'s Tub down: its connections close, calls to it fail.
    pub async fn stop(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if s.running {
            tokio::time::timeout(Duration::from_secs(10), s.tub.shutdown())
                .await
                .expect("shutdown timed out");
            s.running = false;
        }
    }

    /// The index of the server named `nickname`.
    pub fn index(&self, nickname: &str) -> usize {
        self.connected
            .iter()
            .position(|c| c.nickname == nickname)
            .unwrap()
    }

    /// Servers holding each share, from an upload report.
    pub fn holders(&self, report: &UploadReport) -> Vec<(u16, usize)> {
        let mut out = Vec::new();
        for s in &report.servers {
            for n in s.uploaded.iter().chain(&s.already_had) {
                out.push((*n, self.index(&s.nickname)));
            }
        }
        out.sort();
        out
    }

    /// Finished share files of server `i` (not lease files).
    pub fn share_files(&self, i: usize) -> Vec<PathBuf> {
        files_under(&self.servers[i].dir.join("shares"))
            .into_iter()
            .filter(|p| !p.starts_with(self.servers[i].dir.join("shares/incoming")))
            .filter(|p| p.extension().is_none())
            .collect()
    }

    pub fn incoming_files(&self, i: usize) -> Vec<PathBuf> {
        files_under(&self.servers[i].dir.join("shares/incoming"))
    }

    pub fn share_path(&self, i: usize, si: &[u8; 16], shnum: u16) -> PathBuf {
        let b = si_b32(si);
        self.servers[i]
            .dir
            .join("shares")
            .join(&b[..2])
            .join(&b)
            .join(shnum.to_string())
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.servers.len() {
            self.stop(i).await;
        }
        self.client.shutdown().await;
    }
}
