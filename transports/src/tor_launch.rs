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
//! [`LaunchedTor::stop`] sends SIGTERM and waits (on the runtime's timer) for tor to exit,
//! with SIGKILL after 3 s; dropping the handle sends SIGTERM and leaves the waiting to a
//! thread of its own, so neither blocks a runtime thread.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why tor could not be launched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The program could not be run.
    #[error("cannot run {program} (install tor, or set [tor] tor.executable)")]
    Spawn {
        /// The program.
        program: String,
        /// What went wrong.
        source: io::Error,
    },
    /// The state directory could not be prepared.
    #[error("cannot prepare tor's state directory {dir}")]
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
#[non_exhaustive]
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

    /// The control port (cookie authentication: the control client uses SAFECOOKIE with the
    /// cookie in the state directory).
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

    /// Stops tor and waits until it has exited: SIGTERM, then SIGKILL if it is still
    /// running after [`STOP_GRACE`]. Waits with the runtime's timer, so it never blocks a
    /// runtime thread.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        terminate(&child);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        // After SIGKILL the exit is prompt; reap it without blocking all the same.
        for _ in 0..50 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a launched tor has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Sends SIGTERM (a system call, no process spawned, nothing waited for).
fn terminate(child: &Child) {
    #[cfg(unix)]
    {
        let pid = rustix::process::Pid::from_child(child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// Waits for a terminated tor on a thread of its own, and kills it after [`STOP_GRACE`].
fn reap_in_background(mut child: Child) {
    let reaper = move || {
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    };
    // If no thread can be made, the child is left to exit by itself on SIGTERM (or by
    // `__OwningControllerProcess` when this process ends).
    let _ = std::thread::Builder::new()
        .name("tor-reaper".into())
        .spawn(reaper);
}

impl Drop for LaunchedTor {
    /// Sends SIGTERM at once and leaves the waiting (and the SIGKILL, if it comes to that)
    /// to a thread of its own: dropping never blocks the thread that drops, which is often
    /// a runtime worker.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(&child);
            reap_in_background(child);
        }
    }
}

/// Reads `PORT=127.0.0.1:NNNN` from the file tor writes for `ControlPortWriteToFile`
/// (complete lines only: `None` while tor is still writing it).
pub fn read_port_file(path: &Path) -> Option<SocketAddr> {
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

    /// A "tor" that writes its control port file and then ignores SIGTERM, as a tor stuck in
    /// its shutdown would.
    fn stubborn_tor(dir: &Path) -> LaunchOptions {
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("stubborn-tor");
        std::fs::write(
            &script,
            "#!/bin/sh\ntrap '' TERM\n\
             f=$(sed -n 's/^ControlPortWriteToFile //p' \"$2\")\n\
             echo PORT=127.0.0.1:9 > \"$f\"\nexec sleep 60\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut opts = LaunchOptions::new(dir.join("state"));
        opts.executable = script;
        opts.timeout = Duration::from_secs(10);
        opts
    }

    fn gone(pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_never_waits_and_a_stubborn_tor_is_still_killed() {
        let dir = std::env::temp_dir().join(format!("folio-torstuck-{}", std::process::id()));
        let tor = LaunchedTor::start(&stubborn_tor(&dir)).await.unwrap();
        let pid = tor.pid().unwrap();
        let t0 = Instant::now();
        drop(tor);
        // The old drop slept out the whole grace period on the dropping thread.
        assert!(
            t0.elapsed() < STOP_GRACE / 3,
            "drop took {:?}",
            t0.elapsed()
        );
        assert!(
            gone(pid, STOP_GRACE + Duration::from_secs(5)),
            "{pid} not killed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stopping_leaves_the_runtime_running() {
        let dir = std::env::temp_dir().join(format!("folio-torstop-{}", std::process::id()));
        let mut tor = LaunchedTor::start(&stubborn_tor(&dir)).await.unwrap();
        let pid = tor.pid().unwrap();
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        tor.stop().await;
        ticker.abort();
        // On one thread, the ticker runs only if stop() yields while it waits out the grace.
        let n = ticks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            n > 50,
            "the runtime ran {n} ticks during a {STOP_GRACE:?} stop"
        );
        assert!(gone(pid, Duration::from_secs(5)), "{pid} not killed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
