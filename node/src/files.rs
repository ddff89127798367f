//! Files through a running node: the node's side of `tahoe put` and `tahoe get`.
//!
//! An upload arrives over the control port as a spool ([`Spool`], an `UploadRef`): the
//! command writes the file's bytes, the node keeps them in `BASEDIR/tmp/` (mode `0600`,
//! removed whatever happens), and `finish` encodes and uploads them with
//! [`crate::immutable::upload`] to the servers the storage broker has connected. A download
//! runs [`crate::immutable::download`] into a pipe whose other end feeds the command's
//! [`SinkRef`] in order, one call at a time, so a slow reader slows the download instead of
//! filling memory. Progress goes to the command's [`ProgressRef`] five times a second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use folio_rpc::{Bytes, ErrorChain};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::broker::StorageBroker;
use crate::control::{
    ControlError, ProgressRef, SinkRef, TransferProgress, TransferReport, Upload,
};
use crate::immutable::{self, EncodingParams, FileSource, Phase, Progress, ReadCap};
use crate::private::PrivateDir;

/// Where a transfer's progress goes.
#[derive(Clone)]
pub enum Reporter {
    /// A function in this process.
    Local(Arc<dyn Fn(TransferProgress) + Send + Sync>),
    /// The command line, through the control port.
    Remote(ProgressRef),
    /// Nowhere.
    Quiet,
}

impl Reporter {
    async fn report(&self, p: TransferProgress) {
        match self {
            Reporter::Local(f) => f(p),
            Reporter::Remote(r) => {
                let _ = r.update(p).await;
            }
            Reporter::Quiet => {}
        }
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Hashing => "hashing",
        Phase::Placing => "placing",
        Phase::Pushing => "uploading",
        Phase::Closing => "closing",
        Phase::Locating => "locating",
        Phase::Fetching => "downloading",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

fn snapshot(p: &Progress) -> TransferProgress {
    let s = p.snapshot();
    TransferProgress {
        phase: phase_name(s.phase).into(),
        done: if s.phase == Phase::Hashing {
            s.bytes_hashed
        } else {
            s.bytes_done
        },
        total: s.bytes_total,
        servers: s.servers.min(u64::from(u32::MAX)) as u32,
    }
}

/// Reports `progress` every 200 ms until dropped.
struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    fn start(progress: Arc<Progress>, reporter: Reporter) -> Ticker {
        Ticker(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                reporter.report(snapshot(&progress)).await;
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a node needs to store and fetch files.
#[derive(Clone)]
pub struct Files {
    /// The storage servers.
    pub broker: Arc<StorageBroker>,
    /// `[client] shares.*`.
    pub params: EncodingParams,
    /// The node's `private/` (convergence and lease secrets).
    pub private: PrivateDir,
    /// `BASEDIR/tmp`, for spooled uploads.
    pub tmp: PathBuf,
}

impl Files {
    /// Uploads the file at `path`.
    pub async fn upload_path(
        &self,
        path: &Path,
        reporter: Reporter,
    ) -> Result<TransferReport, ControlError> {
        let source = FileSource::open(path)
            .map_err(|e| ControlError::Io(format!("opening {}: {e}", path.display())))?;
        let convergence = self
            .private
            .convergence_secret()
            .map_err(|e| ControlError::Io(e.to_string()))?;
        let lease = self
            .private
            .lease_secret()
            .map_err(|e| ControlError::Io(e.to_string()))?;
        let servers = self.broker.connected();
        let progress = Progress::new();
        let ticker = Ticker::start(progress.clone(), reporter.clone());
        let result = immutable::upload(
            &servers,
            &self.params,
            &convergence,
            &lease,
            source,
            progress.clone(),
        )
        .await;
        drop(ticker);
        reporter.report(snapshot(&progress)).await;
        let r = result.map_err(|e| ControlError::Upload(e.to_string()))?;
        info!(
            size = r.size,
            shares = r.shares_placed,
            servers = r.servers.len(),
            "uploaded"
        );
        Ok(TransferReport {
            cap: r.cap.to_string(),
            size: r.size,
            servers: r.servers.iter().map(|s| s.nickname.clone()).collect(),
            shares: r.shares_placed as u32,
            seconds: r.total_time.as_secs_f64(),
            notes: r
                .failed_servers
                .iter()
                .map(|(n, e)| format!("server {n} failed during the upload: {e}"))
                .collect(),
        })
    }

    /// Downloads the file `cap` names into `out`.
    pub async fn download_to<W: AsyncWrite + Unpin + Send>(
        &self,
        cap: &str,
        mut out: W,
        reporter: Reporter,
    ) -> Result<TransferReport, ControlError> {
        let cap: ReadCap = cap
            .trim()
            .parse()
            .map_err(|e: immutable::CapError| ControlError::BadCap(e.to_string()))?;
        let servers = self.broker.connected();
        let progress = Progress::new();
        let ticker = Ticker::start(progress.clone(), reporter.clone());
        let result = immutable::download(&servers, &cap, &mut out, progress.clone()).await;
        drop(ticker);
        reporter.report(snapshot(&progress)).await;
        let r = result.map_err(|e| ControlError::Download(e.to_string()))?;
        let mut notes: Vec<String> = r
            .corrupt
            .iter()
            .map(|c| {
                format!(
                    "share {} on {} was corrupt ({}); reported to the server and read elsewhere",
                    c.shnum, c.server, c.reason
                )
            })
            .collect();
        notes.extend(
            r.failed_servers
                .iter()
                .map(|(n, e)| format!("server {n} failed: {e}")),
        );
        Ok(TransferReport {
            cap: cap.to_string(),
            size: r.size,
            servers: r.servers_used.iter().map(|(n, _)| n.clone()).collect(),
            shares: r.servers_used.iter().map(|(_, s)| s.len() as u32).sum(),
            seconds: r.total_time.as_secs_f64(),
            notes,
        })
    }

    /// Downloads into the command line's sink, in order, one write at a time.
    pub async fn download_to_sink(
        &self,
        cap: &str,
        sink: SinkRef,
        progress: ProgressRef,
    ) -> Result<TransferReport, ControlError> {
        let (writer, mut reader) = tokio::io::duplex(1024 * 1024);
        let pump = async move {
            let mut buf = vec![0u8; crate::transfer::CHUNK];
            loop {
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| ControlError::Io(e.to_string()))?;
                if n == 0 {
                    return Ok::<(), ControlError>(());
                }
                sink.write(Bytes(buf[..n].to_vec())).await.map_err(|e| {
                    ControlError::Io(format!("sending to the command: {}", ErrorChain(&e)))
                })?;
            }
        };
        let download = async move {
            let mut writer = writer;
            let r = self
                .download_to(cap, &mut writer, Reporter::Remote(progress))
                .await;
            let _ = writer.shutdown().await;
            r
        };
        let (report, pumped) = tokio::join!(download, pump);
        // The pump's failure (the command went away) explains a broken pipe below it.
        match (report, pumped) {
            (Ok(r), Ok(())) => Ok(r),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
        }
    }

    /// A new upload spool in `tmp/`.
    pub async fn spool(&self) -> Result<Spool, ControlError> {
        let io = |e: std::io::Error| {
            ControlError::Io(format!("spooling the upload: {}", ErrorChain(&e)))
        };
        std::fs::create_dir_all(&self.tmp).map_err(io)?;
        let path = self.tmp.join(format!(
            "upload-{}",
            crate::private::base32(&crate::private::random_bytes::<10>())
        ));
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true).mode(0o600);
        let file = opts.open(&path).await.map_err(io)?;
        Ok(Spool {
            files: self.clone(),
            state: tokio::sync::Mutex::new(Some(file)),
            path,
        })
    }
}

/// An upload being spooled; removed from disk when dropped.
pub struct Spool {
    files: Files,
    state: tokio::sync::Mutex<Option<tokio::fs::File>>,
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Upload for Spool {
    async fn write(&self, data: Bytes) -> Result<(), ControlError> {
        if data.len() > crate::storage::MAX_CHUNK as usize {
            return Err(ControlError::Io(format!(
                "a write of {} bytes exceeds {} bytes",
                data.len(),
                crate::storage::MAX_CHUNK
            )));
        }
        let mut st = self.state.lock().await;
        let f = st.as_mut().ok_or(ControlError::Finished)?;
        f.write_all(&data)
            .await
            .map_err(|e| ControlError::Io(format!("spooling the upload: {}", ErrorChain(&e))))
    }

    async fn finish(&self, progress: ProgressRef) -> Result<TransferReport, ControlError> {
        let mut st = self.state.lock().await;
        let mut f = st.take().ok_or(ControlError::Finished)?;
        f.flush()
            .await
            .map_err(|e| ControlError::Io(format!("spooling the upload: {}", ErrorChain(&e))))?;
        drop(f);
        let r = self
            .files
            .upload_path(&self.path, Reporter::Remote(progress))
            .await;
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "could not remove a spooled upload");
        }
        r
    }
}
