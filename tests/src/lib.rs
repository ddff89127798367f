//! Helpers for Folio's cross-crate integration tests: child processes that are always killed
//! (by PID) when a test ends, however it ends, and bounded waits for their output.
#![warn(missing_docs)]

pub mod echo;
pub mod i2pd;
#[cfg(feature = "i2p-embedded")]
pub mod i2pnet;
pub mod slowlink;
pub mod tornet;
pub mod tubs;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Starts `cmd` with stdout piped and stderr inherited.
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<Self> {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_string(),
        })
    }

    /// The child's stdout as lines, each wait bounded.
    pub fn lines(&mut self) -> Lines {
        let stdout = self
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout is piped and taken once");
        Lines::new(stdout, self.name.clone())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not yet reaped").id()
    }

    /// Sends SIGTERM (a clean stop) to the child.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL (a crash) to the child.
    pub fn crash(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child we have not reaped yet (so it cannot have
        // been reused).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `timeout` for the child to exit and returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("not yet reaped");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Lines of a child's stdout, read on a thread so that every wait can time out.
#[derive(Debug)]
pub struct Lines {
    rx: mpsc::Receiver<String>,
    name: String,
}

impl Lines {
    fn new(stdout: ChildStdout, name: String) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, name }
    }

    /// The next line, or a panic naming the process if none arrives within `timeout`.
    pub fn next_within(&self, timeout: Duration) -> String {
        self.rx
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("{}: no output line within {timeout:?} ({e})", self.name))
    }
}
