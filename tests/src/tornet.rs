//! A real private Tor network on 127.0.0.1 for tests: 3 directory authorities, 2 relays and a
//! client, from the Debian `tor` package, driven by `tests/scripts/tor-private-network.sh`.
//! Dropping it stops exactly the tor processes it started.

use std::path::PathBuf;
use std::process::Command;

/// A running private network.
#[derive(Debug)]
pub struct TorNet {
    dir: PathBuf,
    base: u16,
    // One network at a time per process: two on two cores miss their voting deadlines.
    // `None` once the network is stopped and the lock handed on (see `start`).
    one_at_a_time: Option<std::sync::MutexGuard<'static, ()>>,
}

static ONE_NETWORK: std::sync::Mutex<()> = std::sync::Mutex::new(());
static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/tor-private-network.sh")
}

impl TorNet {
    /// Sets up and starts the network and waits (up to 120 s) until its client has
    /// bootstrapped and sees every relay. Panics with the script's output when `tor` is
    /// missing or the network does not come up: these tests must not pass silently.
    pub fn start() -> TorNet {
        for tool in ["tor", "tor-gencert"] {
            if Command::new(tool).arg("--version").output().is_err() {
                panic!(
                    "{tool} is not installed: scripts/test.sh installs it (apt-get install -y tor)"
                );
            }
        }
        let mut guard = Some(ONE_NETWORK.lock().unwrap_or_else(|p| p.into_inner()));
        // Two tries, on two sets of ports: the network is tor's alone (no Folio code runs in
        // it), and a port another process holds, or a first vote that misses the relays, is
        // no finding about Folio. The first failure is reported on stderr either way.
        let mut failures = Vec::new();
        for _ in 0..2 {
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Ports BASE..BASE+310, below Linux's ephemeral range (32768 and up), where the
            // outgoing connections of other tests in this process could hold one of them.
            let base = 20000 + ((std::process::id() + 7 * n) % 24) as u16 * 500;
            let dir = std::env::temp_dir().join(format!("folio-tornet-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir); // the script creates it (with its own marker)
            let net = TorNet {
                dir,
                base,
                one_at_a_time: guard.take(),
            };
            let failed = [&["setup"][..], &["start"], &["wait", "120"]]
                .into_iter()
                .find_map(|step| {
                    let out = net.run(step);
                    (!out.status.success()).then(|| {
                        // The network's directory goes with it: say what its tors logged.
                        format!(
                            "the private Tor network (ports from {base}) failed at `{}`:\n{}\n{}\n{}",
                            step.join(" "),
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr),
                            net.log_tails(12)
                        )
                    })
                });
            let Some(failure) = failed else {
                return net;
            };
            eprintln!("{failure}");
            failures.push(failure);
            guard = Some(net.stop_keeping_lock());
        }
        panic!("{}", failures.join("\n--- and again ---\n"));
    }

    /// Stops the network and removes its directory, handing back the one-network lock.
    fn stop_keeping_lock(mut self) -> std::sync::MutexGuard<'static, ()> {
        let _ = self.run(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
        self.one_at_a_time
            .take()
            .expect("a network holds the lock until it is stopped")
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("NET", &self.dir)
            .env("BASE", self.base.to_string())
            .output()
            .expect("bash runs the network script")
    }

    /// The last `lines` lines of every node's notice log, for a failure report.
    fn log_tails(&self, lines: usize) -> String {
        let mut nodes: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        nodes.sort();
        let mut report = String::new();
        for node in nodes {
            // A tor that never got as far as opening its log said why on stdout.
            let Ok(log) = std::fs::read_to_string(node.join("notice.log"))
                .or_else(|_| std::fs::read_to_string(node.join("stdout.log")))
            else {
                continue;
            };
            let all: Vec<&str> = log.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            report.push_str(&format!(
                "--- {} (last {} lines of its log)\n{}\n",
                node.file_name().unwrap_or_default().to_string_lossy(),
                tail.len(),
                tail.join("\n")
            ));
        }
        report
    }

    /// The client tor's SOCKS port.
    pub fn socks(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.base + 305).into()
    }

    /// The network's `DirAuthority` lines, for a tor that should join it.
    pub fn dir_authorities(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("dirauthorities.conf"))
            .expect("the network's authorities were written at setup")
            .lines()
            .filter_map(|l| l.strip_prefix("DirAuthority ").map(str::to_string))
            .collect()
    }

    /// The file describing the network for an embedded arti client (its authorities, which
    /// are also its only directory caches), written at setup; see
    /// `folio_transports::tor_network`.
    pub fn arti_network_file(&self) -> PathBuf {
        self.dir.join("arti-authorities.txt")
    }

    /// The network as an embedded arti client must be told of it.
    pub fn arti_network(&self) -> folio_transports::tor_network::PrivateNetwork {
        let text = std::fs::read_to_string(self.arti_network_file())
            .expect("the network's authorities were written at setup");
        folio_transports::tor_network::PrivateNetwork::parse(&text)
            .unwrap_or_else(|e| panic!("the network file the script wrote: {e}"))
    }

    /// The client tor's control port (`CookieAuthentication 1`: Folio authenticates with
    /// SAFECOOKIE).
    pub fn control(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.base + 205).into()
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        if self.one_at_a_time.is_none() {
            return; // stopped already (stop_keeping_lock)
        }
        let _ = self.run(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A lone `tor` on 127.0.0.1 whose only directory authority is a closed loopback port: it
/// never bootstraps and never reaches past 127.0.0.1, but its control and SOCKS ports work,
/// which is enough to test the control port's authentication and a node's start. Dropping it
/// kills the process (by PID) and removes its directory.
#[derive(Debug)]
pub struct LoneTor {
    control: std::net::SocketAddr,
    dir: PathBuf,
    _child: crate::ChildGuard,
}

/// How a [`LoneTor`] wants controllers to authenticate.
#[derive(Debug, Clone, Copy)]
pub enum LoneTorAuth<'a> {
    /// `CookieAuthentication 1` (tor offers COOKIE and SAFECOOKIE).
    Cookie,
    /// `HashedControlPassword` of this password.
    Password(&'a str),
}

impl LoneTor {
    /// Starts tor and waits (up to 60 s) for its control port. Panics when `tor` is missing
    /// or does not start: these tests must not pass silently.
    pub fn start(name: &str, auth: LoneTorAuth<'_>) -> LoneTor {
        let dir = std::env::temp_dir().join(format!("folio-lonetor-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let auth_line = match auth {
            LoneTorAuth::Cookie => format!(
                "CookieAuthentication 1\nCookieAuthFile {}/control_auth_cookie",
                dir.display()
            ),
            LoneTorAuth::Password(p) => {
                let out = Command::new("tor")
                    .args(["--quiet", "--hash-password", p])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("tor is not installed ({e}): scripts/test.sh installs it")
                    });
                let hash = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .find(|l| l.starts_with("16:"))
                    .unwrap_or_else(|| panic!("tor --hash-password printed no hash: {out:?}"))
                    .to_string();
                format!("HashedControlPassword {hash}")
            }
        };
        let port_file = dir.join("control_port");
        let torrc = format!(
            "DataDirectory {d}\nControlPort 127.0.0.1:auto\nControlPortWriteToFile {p}\n\
             SocksPort 127.0.0.1:auto\nLog notice file {d}/notice.log\n{auth_line}\n\
             TestingTorNetwork 1\nUseDefaultFallbackDirs 0\nClientUseIPv6 0\n\
             DirAuthority nowhere orport=9 no-v2 v3ident={fp} 127.0.0.1:9 {fp}\n",
            // On the network, but a network of one authority on 127.0.0.1's discard port:
            // tor opens its SOCKS listener (which DisableNetwork would keep shut) and never
            // reaches past loopback.
            fp = "0".repeat(40),
            d = dir.display(),
            p = port_file.display(),
        );
        std::fs::write(dir.join("torrc"), torrc).unwrap();
        let mut cmd = Command::new("tor");
        cmd.arg("--quiet").arg("-f").arg(dir.join("torrc"));
        let child = crate::ChildGuard::spawn(&format!("tor ({name})"), cmd)
            .unwrap_or_else(|e| panic!("tor is not installed ({e}): scripts/test.sh installs it"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let control = loop {
            if let Some(addr) = folio_transports::tor_launch::read_port_file(&port_file) {
                break addr;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("notice.log")).unwrap_or_default();
                panic!("tor ({name}) opened no control port within 60 s; its log:\n{log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        LoneTor {
            control,
            dir,
            _child: child,
        }
    }

    /// Its control port.
    pub fn control(&self) -> std::net::SocketAddr {
        self.control
    }
}

impl Drop for LoneTor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
