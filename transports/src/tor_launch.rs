//! A tor of our own: `tahoe create-node --tor-launch` and `[tor] launch = true`.
//!
//! [`LaunchedTor::start`] runs the `tor` program with a generated `torrc` in a state
//! directory the caller owns (the node uses `private/tor-statedir`, mode `0700`):
//!
//! - `ControlPort auto` on 127.0.0.1 with `ControlPortWriteToFile`, so the port is whatever
//!   was free and we read it back; `CookieAuthentication 1` with the cookie in the state
//!   directory (the control client authenticates with it);
//! - `SocksPort auto` on 127.0.0.1 (found later through `GETINFO net/listeners/socks`);
//! - `__OwningControllerProcess <our pid>`: tor exits by itself if this process dies without
//!   stopping it (even by SIGKILL), so a crashed node never leaves a tor behind;
//! - `DisableNetwork 1` when asked: `tahoe create-node --listen=tor --tor-launch` only needs
//!   tor to make the onion service key, not to reach the network.
//!
//! Dropping the handle (or [`LaunchedTor::stop`]) sends SIGTERM, and SIGKILL after 3 s.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why tor could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program could not be run.
    #[error("cannot run {program}: {source} (install tor, or set [tor] tor.executable)")]
    Spawn {
        /// The program.
        program: String,
        /// What went wrong.
        source: io::Error,
    },
    /// The state directory could not be prepared.
    #[error("tor state directory {dir}: {source}")]
    StateDir {
        /// The directory.
        dir: String,
        /// What went wrong.
        source: io::Error,
    },
    /// tor exited before opening its control port.
    #[error("tor exited at start ({status}); its log is {log}")]
    Exited {
        /// The exit status.
        status: String,
        /// The log file.
        log: String,
    },
    /// tor did not open its control port in time.
    #[error("tor did not open its control port within {0:?}")]
    Timeout(Duration),
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The `tor` program (found on `PATH` when relative).
    pub executable: PathBuf,
    /// tor's state directory (made `0700` if missing).
    pub state_dir: PathBuf,
    /// Keep tor off the network (enough to make onion service keys).
    pub disable_network: bool,
    /// Time allowed for the control port to appear.
    pub timeout: Duration,
}

impl LaunchOptions {
    /// `tor` from `PATH`, on the network, 60 s to start.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        LaunchOptions {
            executable: PathBuf::from("tor"),
            state_dir: state_dir.into(),
            disable_network: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A running tor this process started.
#[derive(Debug)]
pub struct LaunchedTor {
    child: Option<Child>,
    control: SocketAddr,
    state_dir: PathBuf,
}

impl LaunchedTor {
    /// Starts tor and waits until its control port is open.
    pub async fn start(opts: &LaunchOptions) -> Result<LaunchedTor, LaunchError> {
        let dir = &opts.state_dir;
        let state_err = |source| LaunchError::StateDir {
            dir: dir.display().to_string(),
            source,
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(state_err)?;
        let port_file = dir.join("control_port");
        let _ = std::fs::remove_file(&port_file);
        let torrc = format!(
            "DataDirectory {d}\n\
             ControlPort 127.0.0.1:auto\n\
             ControlPortWriteToFile {port_file}\n\
             CookieAuthentication 1\n\
             CookieAuthFile {d}/control_auth_cookie\n\
             SocksPort 127.0.0.1:auto\n\
             PidFile {d}/tor.pid\n\
             Log notice file {d}/tor.log\n\
             __OwningControllerProcess {pid}\n\
             DisableNetwork {net}\n",
            d = dir.display(),
            port_file = port_file.display(),
            pid = std::process::id(),
            net = u8::from(opts.disable_network),
        );
        std::fs::write(dir.join("torrc"), torrc).map_err(state_err)?;
        let child = Command::new(&opts.executable)
            .arg("-f")
            .arg(dir.join("torrc"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: opts.executable.display().to_string(),
                source,
            })?;
        let mut tor = LaunchedTor {
            child: Some(child),
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: dir.clone(),
        };
        let deadline = Instant::now() + opts.timeout;
        loop {
            if let Some(addr) = read_port_file(&port_file) {
                tor.control = addr;
                return Ok(tor);
            }
            if let Some(Ok(Some(status))) = tor.child.as_mut().map(Child::try_wait) {
                tor.child = None;
                return Err(LaunchError::Exited {
                    status: status.to_string(),
                    log: dir.join("tor.log").display().to_string(),
                });
            }
            if Instant::now() > deadline {
                return Err(LaunchError::Timeout(opts.timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The control port (cookie authentication; the control client finds the cookie).
    pub fn control(&self) -> SocketAddr {
        self.control
    }

    /// tor's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// tor's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Stops tor: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LaunchedTor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `PORT=127.0.0.1:NNNN` from tor's control port file (complete lines only).
fn read_port_file(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    if !text.ends_with('\n') {
        return None; // still being written
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("PORT="))
        .and_then(|a| a.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_file_is_read_only_when_complete() {
        let dir = std::env::temp_dir().join(format!("folio-torport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("control_port");
        std::fs::write(&f, "PORT=127.0.0.1:9").unwrap();
        assert_eq!(read_port_file(&f), None);
        std::fs::write(&f, "PORT=127.0.0.1:9051\n").unwrap();
        assert_eq!(read_port_file(&f), Some(([127, 0, 0, 1], 9051).into()));
        std::fs::write(&f, "garbage\n").unwrap();
        assert_eq!(read_port_file(&f), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("folio-tornone-{}", std::process::id()));
        let mut opts = LaunchOptions::new(&dir);
        opts.executable = PathBuf::from("/nonexistent/tor");
        let err = LaunchedTor::start(&opts).await.unwrap_err().to_string();
        assert!(err.contains("cannot run /nonexistent/tor"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
