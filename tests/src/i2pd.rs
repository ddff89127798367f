//! A real `i2pd` router for tests: offline, loopback only, with the settings that let one
//! router carry SAM streams between its own destinations (floodfill, NTCP2 published on
//! 127.0.0.1, address book enabled, zero-hop exploratory tunnels; see
//! `../shared/recipes/i2pd-offline.md`). Dropping it stops the router: SIGTERM, then SIGKILL
//! after 3 s (i2pd 2.45 can hang on SIGTERM while SAM sessions are open).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running router.
#[derive(Debug)]
pub struct I2pd {
    child: Option<Child>,
    dir: PathBuf,
    /// The SAM bridge.
    pub sam: SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn hello(sam: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&sam, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"HELLO VERSION\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 128];
    matches!(s.read(&mut buf), Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("RESULT=OK"))
}

impl I2pd {
    /// Starts a router and waits until its SAM bridge answers. Panics with a clear message
    /// when `i2pd` is not installed or does not start: these tests must not pass silently.
    pub fn start() -> I2pd {
        let found = Command::new("i2pd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if found.is_err() {
            panic!("i2pd is not installed: scripts/test.sh installs it (apt-get install -y i2pd)");
        }
        let dir =
            std::env::temp_dir().join(format!("folio-i2pd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("router directory");
        let (sam_port, ntcp_port) = (free_port(), free_port());
        std::fs::write(dir.join("tunnels.conf"), "").unwrap();
        std::fs::write(dir.join("hosts.txt"), "").unwrap();
        std::fs::write(dir.join("subscriptions.txt"), "# none\n").unwrap();
        let conf = format!(
            "log = file\nlogfile = {d}/i2pd.log\nloglevel = warn\nipv4 = true\nipv6 = false\n\
             address4 = 127.0.0.1\nport = {ntcp_port}\nfloodfill = true\n\
             [ntcp2]\nenabled = true\npublished = true\n[ssu2]\nenabled = false\n\
             [http]\nenabled = false\n[httpproxy]\nenabled = false\n[socksproxy]\nenabled = false\n\
             [sam]\nenabled = true\naddress = 127.0.0.1\nport = {sam_port}\n\
             [bob]\nenabled = false\n[i2cp]\nenabled = false\n[i2pcontrol]\nenabled = false\n\
             [upnp]\nenabled = false\n[reseed]\nurls =\nthreshold = 0\n\
             [addressbook]\nenabled = true\n[nettime]\nenabled = false\n\
             [exploratory]\ninbound.length = 0\noutbound.length = 0\ninbound.quantity = 1\noutbound.quantity = 1\n",
            d = dir.display()
        );
        std::fs::write(dir.join("i2pd.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let child = Command::new("i2pd")
            .arg(format!("--datadir={}", dir.display()))
            .arg(format!("--conf={}", dir.join("i2pd.conf").display()))
            .arg(format!("--tunconf={}", dir.join("tunnels.conf").display()))
            .arg(format!("--tunnelsdir={}", dir.join("tunnels.d").display()))
            .arg("--certsdir=/usr/share/i2pd/certificates")
            .arg(format!("--pidfile={}", dir.join("i2pd.pid").display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("i2pd starts");
        let sam = SocketAddr::from(([127, 0, 0, 1], sam_port));
        let mut router = I2pd {
            child: Some(child),
            dir,
            sam,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !hello(sam) {
            if let Some(Ok(Some(status))) = router.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "i2pd exited at start ({status}); see {}",
                    router.dir.display()
                );
            }
            if Instant::now() > deadline {
                panic!("i2pd's SAM bridge did not answer on {sam} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        router
    }
}

impl Drop for I2pd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("FOLIO_KEEP_I2PD").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("i2pd directory kept: {}", self.dir.display());
        }
    }
}
