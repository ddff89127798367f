//! `tahoe put` and `tahoe get`: the command line's side of a transfer.
//!
//! The command streams the file to the running node through its control port (the node
//! spools it, then encodes and uploads it), or has the node stream a download back to it.
//! The node reports progress through a [`ProgressRef`] the command passes along; the
//! command shows it on a terminal and stays quiet when stderr is not one.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use folio_rpc::{Bytes, ErrorChain};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::control::{
    ControlClient, ControlError, Progress, ProgressRef, Sink, SinkRef, TransferProgress,
    TransferReport,
};

/// The bytes one `write` call carries.
pub const CHUNK: usize = 256 * 1024;

/// A progress line on stderr, redrawn at most five times a second; silent when stderr is
/// not a terminal.
pub struct ProgressLine {
    tty: bool,
    started: Instant,
    state: Mutex<(Instant, bool)>,
}

impl ProgressLine {
    /// A line that draws when stderr is a terminal.
    pub fn new() -> Arc<Self> {
        Arc::new(ProgressLine {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            state: Mutex::new((Instant::now() - Duration::from_secs(1), false)),
        })
    }

    /// Redraws with `p`.
    pub fn show(&self, p: &TransferProgress) {
        if !self.tty {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0.elapsed() < Duration::from_millis(200) && p.done < p.total {
            return;
        }
        st.0 = Instant::now();
        st.1 = true;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        let servers = if p.servers > 0 {
            format!(", {} servers", p.servers)
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[2K{:<11} {:>10} / {:<10} {:>5.1}%  {:>10}/s{servers}",
            p.phase,
            human(p.done),
            human(p.total),
            pct,
            human((p.done as f64 / secs) as u64),
        );
        let _ = std::io::stderr().flush();
    }

    /// Ends the line (if one was drawn).
    pub fn finish(&self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.tty && st.1 {
            eprintln!();
        }
    }
}

impl Progress for Arc<ProgressLine> {
    async fn update(&self, progress: TransferProgress) {
        self.show(&progress);
    }
}

/// Bytes for people: `12.3 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The node could not be reached.
    #[error("{0}")]
    Control(#[from] crate::control::QueryError),
    /// The node refused or failed.
    #[error("{0}")]
    Node(String),
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(String),
}

/// The node's own error as it said it; the call's failure otherwise.
pub(crate) fn node_err(e: folio_rpc::CallError<ControlError>) -> TransferError {
    match e {
        folio_rpc::CallError::App(e) => TransferError::Node(e.to_string()),
        other => TransferError::Node(other.to_string()),
    }
}

/// Where `put` stores a file, beyond uploading it.
#[derive(Debug, Clone, Default)]
pub struct PutTo {
    /// Link it here (a root cap and a path); an existing mutable file there, held with write
    /// authority, gets a new version instead.
    pub at: Option<(String, Vec<String>)>,
    /// Store it as a new mutable file.
    pub mutable: bool,
}

/// Uploads everything `input` yields (of `size` bytes, if known, for progress) through the
/// node in `basedir`.
pub async fn put(
    basedir: &Path,
    input: impl AsyncRead + Unpin,
    size: Option<u64>,
    line: Arc<ProgressLine>,
) -> Result<TransferReport, TransferError> {
    put_to(basedir, input, size, line, PutTo::default()).await
}

/// [`put`], stored as `to` says.
pub async fn put_to(
    basedir: &Path,
    mut input: impl AsyncRead + Unpin,
    size: Option<u64>,
    line: Arc<ProgressLine>,
    to: PutTo,
) -> Result<TransferReport, TransferError> {
    let client = ControlClient::connect(basedir, Duration::from_secs(30)).await?;
    let result = async {
        let upload = client.control.upload().await.map_err(node_err)?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        loop {
            let n = read_full(&mut input, &mut buf)
                .await
                .map_err(|e| TransferError::Io(format!("reading the input: {}", ErrorChain(&e))))?;
            if n == 0 {
                break;
            }
            upload
                .write(Bytes(buf[..n].to_vec()))
                .await
                .map_err(node_err)?;
            sent += n as u64;
            line.show(&TransferProgress {
                phase: "sending".into(),
                done: sent,
                total: size.unwrap_or(sent).max(sent),
                servers: 0,
            });
        }
        // A whole upload to the grid: as long as it takes (the CLI's Ctrl-C cancels it).
        let upload = upload.with_timeout(None);
        let progress = ProgressRef::serve(line.clone());
        if to.at.is_none() && !to.mutable {
            upload.finish(progress).await.map_err(node_err)
        } else {
            upload
                .finish_to(progress, to.at, to.mutable)
                .await
                .map_err(node_err)
        }
    }
    .await;
    line.finish();
    client.close().await;
    result
}

async fn read_full(input: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = input.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

struct WriterSink<W>(tokio::sync::Mutex<W>);

impl<W: AsyncWrite + Unpin + Send + Sync + 'static> Sink for Arc<WriterSink<W>> {
    async fn write(&self, data: Bytes) -> Result<(), ControlError> {
        self.0
            .lock()
            .await
            .write_all(&data)
            .await
            .map_err(|e| ControlError::Io(format!("writing the output: {}", ErrorChain(&e))))
    }
}

/// Downloads the file `cap` names through the node in `basedir`, writing it to `out`.
pub async fn get<W>(
    basedir: &Path,
    cap: &str,
    out: W,
    line: Arc<ProgressLine>,
) -> Result<TransferReport, TransferError>
where
    W: AsyncWrite + Unpin + Send + Sync + 'static,
{
    let client = ControlClient::connect(basedir, Duration::from_secs(30)).await?;
    let sink = Arc::new(WriterSink(tokio::sync::Mutex::new(out)));
    let result = client
        .control
        .with_timeout(None) // a whole download: as long as it takes
        .download(
            cap.to_string(),
            SinkRef::serve(sink.clone()),
            ProgressRef::serve(line.clone()),
        )
        .await
        .map_err(node_err);
    line.finish();
    client.close().await;
    let report = result?;
    sink.0
        .lock()
        .await
        .flush()
        .await
        .map_err(|e| TransferError::Io(format!("writing the output: {}", ErrorChain(&e))))?;
    Ok(report)
}
