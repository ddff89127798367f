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

use crate::broker::{ConnectedServer, StorageBroker};
use crate::caps::Cap;
use crate::control::{
    ControlError, ListEntry, Listing, ProgressRef, SinkRef, TransferProgress, TransferReport,
    Upload,
};
use crate::dirnode::{Dir, DirKey, Fs, FsError, Metadata, Name};
use crate::immutable::{self, EncodingParams, FileSource, Phase, Progress, ReadCap};
use crate::mutable::{self, Base, MutCap, MutKind, MutableError};
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

/// A transfer phase as the command line and the welcome page name it.
pub(crate) fn phase_name(p: Phase) -> &'static str {
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

/// A transfer's progress as the command line and the welcome page show it.
pub(crate) fn snapshot(p: &Progress) -> TransferProgress {
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
    /// The transfers running and the last ones finished, for the welcome page.
    pub recent: Arc<RecentTransfers>,
}

/// How many transfers [`RecentTransfers`] remembers.
pub const RECENT_TRANSFERS: usize = 20;

/// One transfer [`RecentTransfers`] holds.
#[derive(Clone)]
pub struct TransferRecord {
    /// A number counting up from 1, per node run.
    pub id: u64,
    /// `upload` or `download`.
    pub kind: &'static str,
    /// When it started.
    pub started: std::time::SystemTime,
    /// Its progress (its phase is `done` or `failed` once it ended).
    pub progress: Arc<Progress>,
}

/// The transfers running and the last [`RECENT_TRANSFERS`] begun, newest first. They are
/// identified by number only: no capability or file name is kept.
#[derive(Default)]
pub struct RecentTransfers {
    next: std::sync::atomic::AtomicU64,
    list: std::sync::Mutex<std::collections::VecDeque<TransferRecord>>,
}

impl RecentTransfers {
    fn track(&self, kind: &'static str, progress: &Arc<Progress>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut list = crate::broker::lock(&self.list);
        list.push_front(TransferRecord {
            id,
            kind,
            started: std::time::SystemTime::now(),
            progress: progress.clone(),
        });
        list.truncate(RECENT_TRANSFERS);
    }

    /// The transfers held, newest first.
    pub fn list(&self) -> Vec<TransferRecord> {
        let list = crate::broker::lock(&self.list);
        list.iter().cloned().collect()
    }
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
        self.recent.track("upload", &progress);
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
        let cap: ReadCap = match cap.trim().parse::<Cap>() {
            Ok(Cap::Immutable(c)) => c,
            Ok(Cap::Mutable(m)) => return self.download_mutable(&m, &mut out, reporter).await,
            Err(e) => return Err(ControlError::BadCap(e.to_string())),
        };
        let servers = self.broker.connected();
        let progress = Progress::new();
        self.recent.track("download", &progress);
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

    /// Reads the newest version of a mutable file into `out` (a directory's bytes are its
    /// encoded entries: `tahoe ls` reads it).
    async fn download_mutable<W: AsyncWrite + Unpin + Send>(
        &self,
        cap: &MutCap,
        out: &mut W,
        reporter: Reporter,
    ) -> Result<TransferReport, ControlError> {
        let read = cap
            .read_cap()
            .ok_or_else(|| ControlError::BadCap("a verify cap reads nothing".into()))?;
        let servers = self.broker.connected();
        let started = std::time::Instant::now();
        let r = mutable::retrieve(&servers, &read)
            .await
            .map_err(|e| ControlError::Download(e.to_string()))?;
        let size = r.plaintext.len() as u64;
        out.write_all(&r.plaintext)
            .await
            .map_err(|e| ControlError::Io(format!("writing the output: {}", ErrorChain(&e))))?;
        reporter
            .report(TransferProgress {
                phase: "done".into(),
                done: size,
                total: size,
                servers: r.used.len() as u32,
            })
            .await;
        let mut servers_used: Vec<String> = r.used.iter().map(|(n, _)| n.clone()).collect();
        servers_used.dedup();
        Ok(TransferReport {
            cap: read.to_string(),
            size,
            servers: servers_used,
            shares: r.used.len() as u32,
            seconds: started.elapsed().as_secs_f64(),
            notes: r
                .corrupt
                .iter()
                .map(|(s, n, why)| format!("share {n} on {s} was corrupt ({why}); read elsewhere"))
                .collect(),
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

/// Directory operations through the running node (`tahoe ls`, `mkdir`, `ln`, `mv`, `rm`,
/// and `put` to a path). Paths arrive as a root cap and names; errors say which step
/// failed and why, and the command line puts the path as typed in front.
impl Files {
    fn lease(&self) -> Result<[u8; 32], ControlError> {
        self.private
            .lease_secret()
            .map_err(|e| ControlError::Io(e.to_string()))
    }

    fn fs<'a>(&self, servers: &'a [ConnectedServer]) -> Result<Fs<'a>, ControlError> {
        Ok(Fs::new(servers, self.params, self.lease()?))
    }

    /// What `path` below `root` names.
    pub async fn list(&self, root: &str, path: &[String]) -> Result<Listing, ControlError> {
        let (root, path) = parse_place(root, path)?;
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let (cap, entry) = match path.split_last() {
            None => (root.clone(), None),
            Some((last, parent)) => {
                let dir = fs.resolve(&root, parent).await.map_err(fs_error)?;
                let d = fs.list(&dir).await.map_err(fs_error)?;
                let cap = child(&d, &dir, last)?;
                let e = listed(last.as_str(), &d, &dir, last)?;
                (cap, Some(e))
            }
        };
        if !cap.is_dir() {
            let e = match entry {
                Some(e) => e,
                None => bare_entry(&cap),
            };
            return Ok(Listing {
                is_dir: false,
                entries: vec![e],
            });
        }
        let d = fs.list(&cap).await.map_err(fs_error)?;
        let entries = d
            .entries
            .keys()
            .map(|n| listed(n.as_str(), &d, &cap, n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Listing {
            is_dir: true,
            entries,
        })
    }

    /// Makes a directory at `path` below `root`, or an unlinked one.
    pub async fn mkdir(&self, root: Option<&str>, path: &[String]) -> Result<String, ControlError> {
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let Some(root) = root else {
            let cap = fs.create_dir(&Dir::new()).await.map_err(fs_error)?;
            return Ok(cap.to_string());
        };
        let (root, path) = parse_place(root, path)?;
        let Some((last, parent)) = path.split_last() else {
            return Err(ControlError::Path("the root already exists".into()));
        };
        let dir = fs.resolve(&root, parent).await.map_err(fs_error)?;
        let cap = fs.mkdir(&dir, last).await.map_err(fs_error)?;
        Ok(cap.to_string())
    }

    /// Makes every directory of `path` below `root` that is missing (`mkdir -p`); returns the
    /// cap of the last. A file in the way is [`ControlError::Exists`]; a directory made by
    /// another writer meanwhile is used.
    pub async fn mkdir_p(&self, root: &str, path: &[String]) -> Result<String, ControlError> {
        let (root, path) = parse_place(root, path)?;
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let mut at = root;
        for name in &path {
            at = match fs.get(&at, name).await {
                Ok(c) if c.is_dir() => c,
                Ok(_) => {
                    return Err(ControlError::Exists(format!(
                        "'{name}' is a file, in the way of a directory"
                    )))
                }
                Err(FsError::NotFound(_)) => match fs.mkdir(&at, name).await {
                    Ok(w) => Cap::Mutable(MutCap::Write(w)),
                    Err(FsError::Exists(_)) => fs.get(&at, name).await.map_err(fs_error)?,
                    Err(e) => return Err(fs_error(e)),
                },
                Err(e) => return Err(fs_error(e)),
            };
        }
        Ok(at.to_string())
    }

    /// What `path` below `root` names, as an entry (its name empty for `root` itself): its
    /// kind, caps (the write cap only through write authority), size and link times.
    pub async fn stat(&self, root: &str, path: &[String]) -> Result<ListEntry, ControlError> {
        let (root, names) = parse_place(root, path)?;
        let Some((last, parent)) = names.split_last() else {
            return Ok(bare_entry(&root));
        };
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let dir = fs.resolve(&root, parent).await.map_err(fs_error)?;
        let d = fs.list(&dir).await.map_err(fs_error)?;
        listed(last.as_str(), &d, &dir, last)
    }

    /// Links `cap` at `path` below `root`.
    pub async fn link(
        &self,
        root: &str,
        path: &[String],
        cap: &str,
        replace: bool,
    ) -> Result<(), ControlError> {
        let (root, path) = parse_place(root, path)?;
        let child: Cap = cap
            .trim()
            .parse()
            .map_err(|e: crate::caps::AnyCapError| ControlError::BadCap(e.to_string()))?;
        let Some((last, parent)) = path.split_last() else {
            return Err(ControlError::Path(
                "a link needs a name below the root".into(),
            ));
        };
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let dir = fs.resolve(&root, parent).await.map_err(fs_error)?;
        fs.link(&dir, last, &child, link_meta(&child), replace)
            .await
            .map_err(fs_error)
    }

    /// Removes the entry at `path` below `root`; returns its cap.
    pub async fn unlink(&self, root: &str, path: &[String]) -> Result<String, ControlError> {
        let (root, path) = parse_place(root, path)?;
        let Some((last, parent)) = path.split_last() else {
            return Err(ControlError::Path("the root cannot be removed".into()));
        };
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let dir = fs.resolve(&root, parent).await.map_err(fs_error)?;
        Ok(fs.unlink(&dir, last).await.map_err(fs_error)?.to_string())
    }

    /// Moves an entry (see [`crate::control::Control::rename`]).
    pub async fn rename(
        &self,
        from: (&str, &[String]),
        to: (&str, &[String]),
    ) -> Result<(), ControlError> {
        let (from_root, from_path) = parse_place(from.0, from.1)?;
        let (to_root, to_path) = parse_place(to.0, to.1)?;
        let (Some((from_last, from_parent)), Some((to_last, to_parent))) =
            (from_path.split_last(), to_path.split_last())
        else {
            return Err(ControlError::Path("the root cannot be moved".into()));
        };
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let from_dir = fs
            .resolve(&from_root, from_parent)
            .await
            .map_err(fs_error)?;
        let to_dir = fs.resolve(&to_root, to_parent).await.map_err(fs_error)?;
        if from_dir.to_string() == to_dir.to_string() {
            return fs
                .rename(&from_dir, from_last, to_last)
                .await
                .map_err(fs_error);
        }
        let cap = fs.get(&from_dir, from_last).await.map_err(fs_error)?;
        let entry_meta = fs
            .list(&from_dir)
            .await
            .map_err(fs_error)?
            .entries
            .get(from_last)
            .map(|e| e.meta)
            .unwrap_or_default();
        fs.link(&to_dir, to_last, &cap, entry_meta, true)
            .await
            .map_err(fs_error)?;
        fs.unlink(&from_dir, from_last).await.map_err(fs_error)?;
        Ok(())
    }

    /// Stores the spooled file `spooled`: as a new immutable file, a new mutable file
    /// (`mutable_file`), or at a path (`to`: a root cap and names below it), where a mutable
    /// file held with write authority gets a new version and anything else is replaced by a
    /// link to the new file (refused with [`ControlError::Exists`] unless `replace`).
    pub async fn store(
        &self,
        spooled: &Path,
        reporter: Reporter,
        to: Option<(String, Vec<String>)>,
        mutable_file: bool,
        replace: bool,
    ) -> Result<TransferReport, ControlError> {
        let servers = self.broker.connected();
        let fs = self.fs(&servers)?;
        let place = match &to {
            Some((root, path)) => {
                let (root, path) = parse_place(root, path)?;
                let Some((last, parent)) = path.split_last() else {
                    return Err(ControlError::Path(
                        "a file needs a name below the root".into(),
                    ));
                };
                let dir = fs.resolve(&root, parent).await.map_err(fs_error)?;
                let existing = match fs.get(&dir, last).await {
                    Ok(c) => Some(c),
                    Err(FsError::NotFound(_)) => None,
                    Err(e) => return Err(fs_error(e)),
                };
                Some((dir, last.clone(), existing))
            }
            None => None,
        };
        // An existing mutable file held with write authority gets a new version.
        if let Some((_, _, Some(Cap::Mutable(MutCap::Write(w))))) = &place {
            if w.kind() == MutKind::File {
                let bytes = self.read_mutable(spooled).await?;
                let started = std::time::Instant::now();
                let r = mutable::publish(
                    &servers,
                    &self.params,
                    &fs.lease_secret,
                    w,
                    &bytes,
                    Base::Current,
                    mutable::SETTLE,
                )
                .await
                .map_err(mutable_error)?;
                if let Some((dir, name, _)) = &place {
                    // Best effort: the entry's size and time follow the new version.
                    let cap = Cap::Mutable(MutCap::Write(w.clone()));
                    let mut meta = link_meta(&cap);
                    meta.size = Some(bytes.len() as u64);
                    if let Err(e) = fs.link(dir, name, &cap, meta, true).await {
                        warn!(error = %e, "the directory entry of an updated file was not refreshed");
                    }
                }
                return Ok(mutable_report(
                    w.to_string(),
                    bytes.len() as u64,
                    &r,
                    started,
                ));
            }
        }
        let (cap, report) = if mutable_file {
            let bytes = self.read_mutable(spooled).await?;
            let started = std::time::Instant::now();
            let (w, r) = mutable::create(
                &servers,
                &self.params,
                &fs.lease_secret,
                MutKind::File,
                &bytes,
            )
            .await
            .map_err(mutable_error)?;
            let report = mutable_report(w.to_string(), bytes.len() as u64, &r, started);
            (Cap::Mutable(MutCap::Write(w)), report)
        } else {
            let report = self.upload_path(spooled, reporter).await?;
            let cap: Cap = report
                .cap
                .parse()
                .map_err(|e: crate::caps::AnyCapError| ControlError::BadCap(e.to_string()))?;
            (cap, report)
        };
        if let Some((dir, name, _)) = &place {
            let mut meta = link_meta(&cap);
            meta.size = Some(report.size);
            fs.link(dir, name, &cap, meta, replace)
                .await
                .map_err(fs_error)?;
        }
        Ok(report)
    }

    /// The most bytes a mutable file holds at this node's encoding.
    pub fn max_mutable(&self) -> u64 {
        mutable::max_mutable_size(&self.params)
    }

    /// Whether a mutable file can hold `size` bytes (at this node's encoding); the error
    /// says how large one can be.
    pub fn fits_mutable(&self, size: u64) -> Result<(), ControlError> {
        let max = self.max_mutable();
        if size > max {
            return Err(ControlError::TooLarge(
                MutableError::TooLarge {
                    size,
                    maximum: max,
                    needed: self.params.needed,
                }
                .to_string(),
            ));
        }
        Ok(())
    }

    /// A spooled file's bytes, if a mutable file can hold them.
    async fn read_mutable(&self, spooled: &Path) -> Result<Vec<u8>, ControlError> {
        let len = tokio::fs::metadata(spooled)
            .await
            .map_err(|e| ControlError::Io(format!("reading the spool: {}", ErrorChain(&e))))?
            .len();
        self.fits_mutable(len)?;
        tokio::fs::read(spooled)
            .await
            .map_err(|e| ControlError::Io(format!("reading the spool: {}", ErrorChain(&e))))
    }
}

fn mutable_report(
    cap: String,
    size: u64,
    r: &mutable::PublishReport,
    started: std::time::Instant,
) -> TransferReport {
    let mut servers: Vec<String> = r.written.iter().map(|(s, _)| s.clone()).collect();
    servers.sort();
    servers.dedup();
    TransferReport {
        cap,
        size,
        servers,
        shares: r.written.len() as u32,
        seconds: started.elapsed().as_secs_f64(),
        notes: r.notes.clone(),
    }
}

fn mutable_error(e: MutableError) -> ControlError {
    match e {
        MutableError::Uncoordinated(u) => ControlError::Uncoordinated(u.to_string()),
        e @ MutableError::TooLarge { .. } => ControlError::TooLarge(e.to_string()),
        other => ControlError::Upload(other.to_string()),
    }
}

fn fs_error(e: FsError) -> ControlError {
    match e {
        FsError::Mutable(MutableError::Uncoordinated(u)) => {
            ControlError::Uncoordinated(u.to_string())
        }
        e @ FsError::NotFound(_) => ControlError::NotFound(e.to_string()),
        e @ FsError::Exists(_) => ControlError::Exists(e.to_string()),
        e @ FsError::ReadOnly => ControlError::ReadOnly(e.to_string()),
        other => ControlError::Path(other.to_string()),
    }
}

fn parse_place(root: &str, path: &[String]) -> Result<(Cap, Vec<Name>), ControlError> {
    let root: Cap = root
        .trim()
        .parse()
        .map_err(|e: crate::caps::AnyCapError| ControlError::BadCap(e.to_string()))?;
    let path = path
        .iter()
        .map(|s| Name::new(s).map_err(|e| ControlError::Path(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((root, path))
}

/// The cap of `name` in `d` with the authority `dir` allows.
fn child(d: &Dir, dir: &Cap, name: &Name) -> Result<Cap, ControlError> {
    let entry = d
        .entries
        .get(name)
        .ok_or_else(|| fs_error(FsError::NotFound(name.to_string())))?;
    if let Cap::Mutable(MutCap::Write(w)) = dir {
        if let Some(c) = d.write_cap(name, &DirKey::of(w)) {
            return c.map_err(|e| ControlError::Path(e.to_string()));
        }
    }
    Ok(entry.read_cap.clone())
}

fn kind_name(cap: &Cap) -> &'static str {
    match cap {
        Cap::Immutable(_) => "file",
        c if c.is_dir() => "dir",
        Cap::Mutable(_) => "mutable",
    }
}

/// An entry of `d` as listed, its write cap only through write authority.
fn listed(shown: &str, d: &Dir, dir: &Cap, name: &Name) -> Result<ListEntry, ControlError> {
    let entry = d
        .entries
        .get(name)
        .ok_or_else(|| fs_error(FsError::NotFound(name.to_string())))?;
    let cap = child(d, dir, name)?;
    let size = match &entry.read_cap {
        Cap::Immutable(c) => Some(c.size()),
        _ => entry.meta.size,
    };
    Ok(ListEntry {
        name: shown.to_string(),
        kind: kind_name(&entry.read_cap).into(),
        ro_uri: entry.read_cap.to_string(),
        rw_uri: cap.is_write().then(|| cap.to_string()),
        size,
        mtime: entry.meta.mtime,
        link_created: Some(entry.meta.link_created),
        link_modified: Some(entry.meta.link_modified),
    })
}

/// A cap named directly (no directory entry around it).
fn bare_entry(cap: &Cap) -> ListEntry {
    ListEntry {
        name: String::new(),
        kind: kind_name(cap).into(),
        ro_uri: cap.read_only().map_or_else(String::new, |c| c.to_string()),
        rw_uri: cap.is_write().then(|| cap.to_string()),
        size: match cap {
            Cap::Immutable(c) => Some(c.size()),
            _ => None,
        },
        mtime: None,
        link_created: None,
        link_modified: None,
    }
}

/// The metadata of a new link to `cap`: now, and an immutable file's size.
fn link_meta(cap: &Cap) -> Metadata {
    let now = crate::dirnode::now();
    Metadata {
        link_created: now,
        link_modified: now,
        mtime: None,
        size: match cap {
            Cap::Immutable(c) => Some(c.size()),
            _ => None,
        },
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
        self.finish_to(progress, None, false).await
    }

    async fn finish_to(
        &self,
        progress: ProgressRef,
        to: Option<(String, Vec<String>)>,
        mutable: bool,
    ) -> Result<TransferReport, ControlError> {
        self.finish_with(Reporter::Remote(progress), to, mutable, true)
            .await
    }
}

impl Spool {
    /// Ends the spooling and stores the file (see [`Files::store`]), reporting to
    /// `reporter`.
    pub async fn finish_with(
        &self,
        reporter: Reporter,
        to: Option<(String, Vec<String>)>,
        mutable: bool,
        replace: bool,
    ) -> Result<TransferReport, ControlError> {
        let mut st = self.state.lock().await;
        let mut f = st.take().ok_or(ControlError::Finished)?;
        f.flush()
            .await
            .map_err(|e| ControlError::Io(format!("spooling the upload: {}", ErrorChain(&e))))?;
        drop(f);
        let r = self
            .files
            .store(&self.path, reporter, to, mutable, replace)
            .await;
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "could not remove a spooled upload");
        }
        r
    }
}
