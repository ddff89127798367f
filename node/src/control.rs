//! The node's control port: how `tahoe status` asks a running node what it sees.
//!
//! A running node registers a [`Control`] object on its Tub and listens for it on a TCP port
//! of 127.0.0.1 only, writing the FURL (loopback hint, random swissnum) to
//! `private/control.furl`. Whoever can read `private/` can ask; the TLS connection pins the
//! node's TubId as for any FURL. The loopback listener never reveals an address, so a node
//! that hides its IP address has one too.

use folio_rpc::interface;
use serde::{Deserialize, Serialize};

use crate::broker::ServerStatus;

/// One introducer as `tahoe status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntroducerStatus {
    /// The name in `tahoe.cfg` (`default` for `introducer.furl`).
    pub name: String,
    /// The introducer's TubId.
    pub tubid: String,
    /// Whether a connection is up.
    pub connected: bool,
    /// Connected since (seconds since the Unix epoch).
    pub since: Option<u64>,
    /// Why the last attempt or connection failed.
    pub last_error: Option<String>,
    /// When the next attempt starts (seconds since the Unix epoch).
    pub next_attempt: Option<u64>,
}

/// What a running node reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `node` or `introducer`.
    pub kind: String,
    /// The node's nickname.
    pub nickname: String,
    /// The node's TubId.
    pub tubid: String,
    /// The software version.
    pub version: String,
    /// Hints peers reach this node at.
    pub location: Vec<String>,
    /// Where it listens.
    pub listeners: Vec<String>,
    /// Each hint type and the handler for it.
    pub handlers: Vec<(String, String)>,
    /// Whether the node hides its IP address.
    pub hide_ip: bool,
    /// Its introducers.
    pub introducers: Vec<IntroducerStatus>,
    /// The storage servers it knows.
    pub storage_servers: Vec<ServerStatus>,
    /// Whether it runs a storage server.
    pub storage_enabled: bool,
    /// For an introducer: the announcements it holds and its subscriber count.
    pub announcements: Option<(u64, u64)>,
}

/// Why the control port could not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// An introducer does not store or fetch files.
    #[error("this node is an introducer; files go through a client or storage node")]
    NotAClient,
    /// The capability string is not valid.
    #[error("{0}")]
    BadCap(String),
    /// The upload failed (the message says why: too few servers, a server lost, ...).
    #[error("upload failed: {0}")]
    Upload(String),
    /// The download failed (the message says how many shares were found and needed).
    #[error("download failed: {0}")]
    Download(String),
    /// The node could not spool or write data.
    #[error("{0}")]
    Io(String),
    /// The upload was already finished or abandoned.
    #[error("this upload is finished")]
    Finished,
    /// A path on the grid could not be used (the message names the step and why).
    #[error("{0}")]
    Path(String),
    /// Another writer changed a mutable file or directory while this write ran.
    #[error("{0}")]
    Uncoordinated(String),
    /// A path names no entry (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken and replacing was not asked for.
    #[error("{0}")]
    Exists(String),
    /// A change below a directory reached without write authority.
    #[error("{0}")]
    ReadOnly(String),
    /// The data is larger than what it is stored as can hold (a mutable file).
    #[error("{0}")]
    TooLarge(String),
}

/// One entry of a directory (or the file a path names), as `tahoe ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// The entry's name (empty for the target itself).
    pub name: String,
    /// `file` (immutable), `mutable` (a mutable file) or `dir`.
    pub kind: String,
    /// Its read-only cap.
    pub ro_uri: String,
    /// Its write cap, when the directory was reached with write authority and the child
    /// has one.
    pub rw_uri: Option<String>,
    /// Its size in bytes, when known.
    pub size: Option<u64>,
    /// Its modification time (seconds since the Unix epoch), when known.
    pub mtime: Option<u64>,
    /// When it was linked.
    pub link_created: Option<u64>,
    /// When its link was last changed.
    pub link_modified: Option<u64>,
}

/// What a path names: a directory and its entries, or one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Whether the path names a directory.
    pub is_dir: bool,
    /// The directory's entries in name order, or the file alone.
    pub entries: Vec<ListEntry>,
}

/// How far a transfer has come, sent to the command line while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// `encoding`, `uploading`, `downloading`.
    pub phase: String,
    /// Bytes of the file done.
    pub done: u64,
    /// Bytes of the file.
    pub total: u64,
    /// Servers taking part.
    pub servers: u32,
}

/// What a finished transfer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    /// The read capability.
    pub cap: String,
    /// The file's size.
    pub size: u64,
    /// The nicknames of the servers used.
    pub servers: Vec<String>,
    /// Shares placed (upload) or used (download).
    pub shares: u32,
    /// Seconds the grid part took.
    pub seconds: f64,
    /// Problems met and routed around (corrupt shares, lost servers).
    pub notes: Vec<String>,
}

/// The control object of a running node.
#[interface(name = "folio.node.control.v1")]
pub trait Control {
    /// The node's status.
    async fn status(&self) -> Result<NodeStatus, ControlError>;
    /// Starts an upload: write the file's bytes to the returned spool, then finish it.
    async fn upload(&self) -> Result<UploadRef, ControlError>;
    /// Fetches the file `cap` names, writing it to `sink` in order; `progress` hears how far
    /// it has come.
    async fn download(
        &self,
        cap: String,
        sink: SinkRef,
        progress: ProgressRef,
    ) -> Result<TransferReport, ControlError>;
    /// What the path `path` below the directory cap `root` names: a directory's entries,
    /// or the file there.
    async fn list(&self, root: String, path: Vec<String>) -> Result<Listing, ControlError>;
    /// Makes a directory at `path` below `root` (its parent must exist), or, with no root,
    /// one linked nowhere; returns its write cap.
    async fn mkdir(&self, root: Option<String>, path: Vec<String>) -> Result<String, ControlError>;
    /// Links `cap` as the last name of `path` below `root`, replacing an existing entry
    /// only if `replace`.
    async fn link(
        &self,
        root: String,
        path: Vec<String>,
        cap: String,
        replace: bool,
    ) -> Result<(), ControlError>;
    /// Removes the entry at `path` below `root`; returns the cap it held.
    async fn unlink(&self, root: String, path: Vec<String>) -> Result<String, ControlError>;
    /// Moves the entry at `from` to `to` (each a root and a path): one change when both are
    /// in the same directory; else linked at `to` first, then unlinked from `from` (a
    /// failure in between leaves two links, never none).
    async fn rename(
        &self,
        from: (String, Vec<String>),
        to: (String, Vec<String>),
    ) -> Result<(), ControlError>;
}

/// An upload in progress: the file's bytes, then `finish`.
#[interface(name = "folio.node.upload.v1")]
pub trait Upload {
    /// Appends bytes of the file (at most 512 KiB per call).
    async fn write(&self, data: folio_rpc::Bytes) -> Result<(), ControlError>;
    /// Uploads what was written to the grid and returns the capability.
    async fn finish(&self, progress: ProgressRef) -> Result<TransferReport, ControlError>;
    /// Stores what was written, as a mutable file when `mutable` (the report's cap is then
    /// its write cap), and links it at `to` (a root and a path) when given. A `to` that
    /// names a mutable file held with write authority is updated in place instead (a new
    /// version, which may fail as an uncoordinated write).
    async fn finish_to(
        &self,
        progress: ProgressRef,
        to: Option<(String, Vec<String>)>,
        mutable: bool,
    ) -> Result<TransferReport, ControlError>;
}

/// Where a download's bytes go.
#[interface(name = "folio.node.sink.v1")]
pub trait Sink {
    /// The next bytes of the file.
    async fn write(&self, data: folio_rpc::Bytes) -> Result<(), ControlError>;
}

/// Hears how a transfer goes.
#[interface(name = "folio.node.progress.v1")]
pub trait Progress {
    /// How far the transfer has come.
    #[oneway]
    async fn update(&self, progress: TransferProgress);
}

/// Why `tahoe status` could not ask the node.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No `private/control.furl`: the node is not running (or not a node directory).
    #[error("{0}: no control FURL; is the node running? (start it with `tahoe run`)")]
    NotRunning(String),
    /// The FURL file is unreadable.
    #[error(transparent)]
    Private(#[from] crate::private::PrivateError),
    /// The node did not answer.
    #[error("the node did not answer on its control port: {0}")]
    Unreachable(String),
}

/// A connection to the control port of the node running in `basedir`.
pub struct ControlClient {
    tub: folio_rpc::Tub,
    /// The node's control object.
    pub control: ControlRef,
}

impl ControlClient {
    /// Connects, giving up after `timeout`.
    pub async fn connect(
        basedir: &std::path::Path,
        timeout: std::time::Duration,
    ) -> Result<ControlClient, QueryError> {
        let private = crate::private::PrivateDir::open(basedir)?;
        let text = private
            .read("control.furl")?
            .ok_or_else(|| QueryError::NotRunning(basedir.display().to_string()))?;
        let furl: folio_rpc::Furl = text
            .trim()
            .parse()
            .map_err(|e: folio_rpc::furl::FurlError| QueryError::Unreachable(e.to_string()))?;
        let tub = folio_rpc::Tub::new(
            folio_rpc::Identity::generate().map_err(|e| QueryError::Unreachable(e.to_string()))?,
            std::sync::Arc::new(folio_handlers::Registry::with_tcp()),
            folio_rpc::TubConfig::default(),
        )
        .map_err(|e| QueryError::Unreachable(e.to_string()))?;
        match tokio::time::timeout(timeout, tub.get::<ControlRef>(&furl)).await {
            Ok(Ok(control)) => Ok(ControlClient { tub, control }),
            Ok(Err(e)) => {
                tub.shutdown().await;
                Err(QueryError::Unreachable(e.to_string()))
            }
            Err(_) => {
                tub.shutdown().await;
                Err(QueryError::Unreachable(format!(
                    "no answer within {timeout:?}"
                )))
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.tub.shutdown().await;
    }
}

/// Asks the node running in `basedir` for its status, through its control port.
pub async fn query(
    basedir: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<NodeStatus, QueryError> {
    let client = ControlClient::connect(basedir, timeout).await?;
    let result = match tokio::time::timeout(timeout, client.control.status()).await {
        Ok(r) => r.map_err(|e| QueryError::Unreachable(e.to_string())),
        Err(_) => Err(QueryError::Unreachable(format!(
            "no answer within {timeout:?}"
        ))),
    };
    client.close().await;
    result
}

fn ago(now: u64, t: u64) -> String {
    let d = now.saturating_sub(t);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m{:02}s ago", d / 60, d % 60),
        _ => format!("{}h{:02}m ago", d / 3600, (d / 60) % 60),
    }
}

fn within(now: u64, t: u64) -> String {
    format!("in {}s", t.saturating_sub(now))
}

/// The status as a person wants to read it.
pub fn render(s: &NodeStatus) -> String {
    use std::fmt::Write;
    let now = crate::broker::unix_secs(std::time::SystemTime::now());
    let mut o = String::new();
    let nick = if s.nickname.is_empty() {
        "(no nickname)"
    } else {
        &s.nickname
    };
    let _ = writeln!(o, "{} {nick}  {}  {}", s.kind, s.tubid, s.version);
    let _ = writeln!(
        o,
        "  location: {}",
        if s.location.is_empty() {
            "(none: not reachable)".into()
        } else {
            s.location.join(",")
        }
    );
    let _ = writeln!(
        o,
        "  listening: {}",
        if s.listeners.is_empty() {
            "(nothing)".into()
        } else {
            s.listeners.join(", ")
        }
    );
    let handlers: Vec<String> = s.handlers.iter().map(|(k, h)| format!("{k}={h}")).collect();
    let _ = writeln!(
        o,
        "  handlers: {}{}",
        handlers.join(", "),
        if s.hide_ip {
            "  [IP address hidden]"
        } else {
            ""
        }
    );
    if let Some((anns, subs)) = s.announcements {
        let _ = writeln!(
            o,
            "  introducer: holding {anns} announcements, {subs} subscribers"
        );
    }
    if s.kind != "introducer" {
        let _ = writeln!(o, "\nIntroducers:");
        if s.introducers.is_empty() {
            let _ = writeln!(o, "  (none configured)");
        }
        for i in &s.introducers {
            let state = if i.connected {
                format!(
                    "connected {}",
                    i.since.map(|t| ago(now, t)).unwrap_or_default()
                )
            } else {
                let mut st = "not connected".to_string();
                if let Some(e) = &i.last_error {
                    let _ = write!(st, ": {e}");
                }
                if let Some(t) = i.next_attempt {
                    let _ = write!(st, "; next attempt {}", within(now, t));
                }
                st
            };
            let _ = writeln!(o, "  {:<10} {}  {state}", i.name, i.tubid);
        }
        let connected = s.storage_servers.iter().filter(|x| x.connected).count();
        let _ = writeln!(
            o,
            "\nStorage servers: {connected} of {} connected",
            s.storage_servers.len()
        );
        let _ = writeln!(
            o,
            "  {:<16} {:<12} {:<5} {:<22} {:<32} state",
            "nickname", "tubid", "", "handler", "hint"
        );
        for x in &s.storage_servers {
            let state = if x.connected {
                let mut st = format!("since {}", x.since.map(|t| ago(now, t)).unwrap_or_default());
                if let Some(t) = x.last_received {
                    let _ = write!(st, ", last heard {}", ago(now, t));
                }
                st
            } else {
                let mut st = String::new();
                if let Some(e) = &x.last_error {
                    let _ = write!(st, "{e}");
                }
                if let Some(t) = x.next_attempt {
                    let _ = write!(st, "; next attempt {}", within(now, t));
                }
                st
            };
            let _ = writeln!(
                o,
                "  {:<16} {:<12} {:<5} {:<22} {:<32} {state}",
                if x.nickname.is_empty() {
                    "-"
                } else {
                    &x.nickname
                },
                &x.tubid[..x.tubid.len().min(12)],
                if x.connected { "up" } else { "DOWN" },
                x.handler.as_deref().unwrap_or("-"),
                x.winning_hint.as_deref().unwrap_or("-"),
            );
        }
    }
    o
}
