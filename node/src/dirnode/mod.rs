//! Directories: mutable files whose content is a list of named children
//! ([`entries`](Dir) gives the format), and the operations on them.
//!
//! Every change is a read-modify-write of the directory's mutable file ([`Fs::modify`]):
//! read the newest version, change the entries, publish over exactly that version. When
//! another writer got there first and this write wrote nothing, it is retried on the new
//! version (three attempts in all, after a short random wait), so two clients linking
//! different names into one directory both succeed; any other failure is returned.
//!
//! Holding a directory's read-only cap lists it and yields its children's read-only caps
//! only: each child's write cap is sealed under a key that only the directory's write cap
//! yields.

mod entries;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use entries::{
    Dir, DirError, DirKey, Entry, Metadata, Name, SealedWriteCap, MAX_DIR_ENTRIES, MAX_NAME_LEN,
};

use crate::broker::ConnectedServer;
use crate::caps::Cap;
use crate::immutable::EncodingParams;
use crate::mutable::{
    create, publish, retrieve, Base, MutCap, MutKind, MutWriteCap, MutableError, SETTLE,
};

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Reading or writing the directory's mutable file failed.
    #[error(transparent)]
    Mutable(#[from] MutableError),
    /// The directory's content is invalid, or the change is not allowed.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// A path step is not a directory.
    #[error("'{0}' is not a directory")]
    NotADirectory(String),
    /// No entry of that name.
    #[error("no entry named '{0}'")]
    NotFound(String),
    /// The name is taken (and replacing was not asked for).
    #[error("'{0}' already exists")]
    Exists(String),
    /// The directory was reached without write authority.
    #[error("the directory is read-only here (reached through a read-only cap)")]
    ReadOnly,
}

/// The grid, as directory operations use it.
#[derive(Clone)]
pub struct Fs<'a> {
    /// The storage servers.
    pub servers: &'a [ConnectedServer],
    /// k, happy, N for new files and directories.
    pub params: EncodingParams,
    /// The client's lease secret.
    pub lease_secret: [u8; 32],
    /// How long a writer waits on an unfinished newer version ([`SETTLE`]).
    pub settle: Duration,
    /// The longest wait before retrying a change that lost a race (random, up to this
    /// times the attempt number).
    pub retry_wait: Duration,
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<'a> Fs<'a> {
    /// The grid of `servers` with the node's defaults.
    pub fn new(
        servers: &'a [ConnectedServer],
        params: EncodingParams,
        lease_secret: [u8; 32],
    ) -> Self {
        Fs {
            servers,
            params,
            lease_secret,
            settle: SETTLE,
            retry_wait: Duration::from_secs(2),
        }
    }

    /// Creates a directory holding `initial`, linked nowhere; returns its write cap.
    pub async fn create_dir(&self, initial: &Dir) -> Result<MutWriteCap, FsError> {
        let (cap, _) = create(
            self.servers,
            &self.params,
            &self.lease_secret,
            MutKind::Dir,
            &initial.encode(),
        )
        .await?;
        Ok(cap)
    }

    /// The entries of the directory `dir` names (any cap that reads it).
    pub async fn list(&self, dir: &Cap) -> Result<Dir, FsError> {
        let read = match dir {
            Cap::Mutable(m) if m.kind() == MutKind::Dir => m.read_cap(),
            _ => None,
        };
        let Some(read) = read else {
            return Err(FsError::NotADirectory(kind_of(dir).into()));
        };
        let r = retrieve(self.servers, &read).await?;
        Ok(Dir::decode(&r.plaintext)?)
    }

    /// The cap of `name` in `dir`: its write cap when `dir` is held with write authority
    /// and the child has one, else its read-only cap.
    pub async fn get(&self, dir: &Cap, name: &Name) -> Result<Cap, FsError> {
        let d = self.list(dir).await?;
        child_of(&d, dir, name)
    }

    /// The cap at the end of `path`, walking from `root` (empty path: `root` itself).
    /// Authority only diminishes on the way: below a read-only directory every cap is
    /// read-only.
    pub async fn resolve(&self, root: &Cap, path: &[Name]) -> Result<Cap, FsError> {
        let mut at = root.clone();
        for (i, step) in path.iter().enumerate() {
            if !at.is_dir() {
                let walked: Vec<&str> = path[..i].iter().map(Name::as_str).collect();
                return Err(FsError::NotADirectory(walked.join("/")));
            }
            at = self.get(&at, step).await?;
        }
        Ok(at)
    }

    /// Applies `change` to the newest version of the directory `dir` writes and publishes
    /// the result over exactly that version; retried (on the version that won) when
    /// another writer got there first and nothing was written. `change` returns whether it
    /// changed anything (nothing is published when it did not). Returns the directory as
    /// published.
    pub async fn modify(
        &self,
        dir: &MutWriteCap,
        mut change: impl FnMut(&mut Dir, &DirKey) -> Result<bool, FsError>,
    ) -> Result<Dir, FsError> {
        if dir.kind() != MutKind::Dir {
            return Err(FsError::NotADirectory("a mutable file".into()));
        }
        let dk = DirKey::of(dir);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r = retrieve(self.servers, &dir.read_cap()).await?;
            let mut d = Dir::decode(&r.plaintext)?;
            if !change(&mut d, &dk)? {
                return Ok(d);
            }
            let bytes = d.encode();
            let base = Base::Read(r.version, Box::new(r.map));
            let published = publish(
                self.servers,
                &self.params,
                &self.lease_secret,
                dir,
                &bytes,
                base,
                self.settle,
            )
            .await;
            match published {
                Ok(_) => return Ok(d),
                Err(MutableError::Uncoordinated(u)) if u.written == 0 && attempt < 3 => {
                    let wait = self.retry_wait.mul_f64(f64::from(attempt) * jitter());
                    tracing::debug!(attempt, ?wait, "a directory change lost a race; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Links `child` as `name` in `dir` (replacing an existing entry only if `replace`).
    pub async fn link(
        &self,
        dir: &Cap,
        name: &Name,
        child: &Cap,
        meta: Metadata,
        replace: bool,
    ) -> Result<(), FsError> {
        let w = writable(dir)?;
        self.modify(w, |d, dk| {
            let mut meta = meta;
            match d.entries.get(name) {
                Some(_) if !replace => return Err(FsError::Exists(name.to_string())),
                Some(old) => meta.link_created = old.meta.link_created,
                None => {}
            }
            d.set(name.clone(), child, Some(dk), meta)?;
            Ok(true)
        })
        .await?;
        Ok(())
    }

    /// Links every child at once, replacing entries of the same names.
    pub async fn set_children(
        &self,
        dir: &Cap,
        children: &[(Name, Cap, Metadata)],
    ) -> Result<(), FsError> {
        let w = writable(dir)?;
        self.modify(w, |d, dk| {
            for (name, cap, meta) in children {
                d.set(name.clone(), cap, Some(dk), *meta)?;
            }
            Ok(!children.is_empty())
        })
        .await?;
        Ok(())
    }

    /// Removes `name` from `dir`; returns the cap it held (its write cap when sealed).
    pub async fn unlink(&self, dir: &Cap, name: &Name) -> Result<Cap, FsError> {
        let w = writable(dir)?;
        let mut removed = None;
        self.modify(w, |d, dk| {
            let cap = match d.write_cap(name, dk) {
                Some(c) => c?,
                None => d
                    .entries
                    .get(name)
                    .ok_or_else(|| FsError::NotFound(name.to_string()))?
                    .read_cap
                    .clone(),
            };
            d.entries.remove(name);
            removed = Some(cap);
            Ok(true)
        })
        .await?;
        removed.ok_or_else(|| FsError::NotFound(name.to_string()))
    }

    /// Renames `from` to `to` within `dir`, in one publish; an existing `to` is replaced.
    pub async fn rename(&self, dir: &Cap, from: &Name, to: &Name) -> Result<(), FsError> {
        let w = writable(dir)?;
        self.modify(w, |d, _| {
            let mut e = d
                .entries
                .remove(from)
                .ok_or_else(|| FsError::NotFound(from.to_string()))?;
            e.meta.link_modified = now();
            d.entries.insert(to.clone(), e);
            Ok(from != to)
        })
        .await?;
        Ok(())
    }

    /// Creates an empty directory and links it as `name` in `dir`; returns its write cap.
    pub async fn mkdir(&self, dir: &Cap, name: &Name) -> Result<MutWriteCap, FsError> {
        writable(dir)?;
        let new = self.create_dir(&Dir::new()).await?;
        let meta = Metadata {
            link_created: now(),
            link_modified: now(),
            ..Metadata::default()
        };
        self.link(
            dir,
            name,
            &Cap::Mutable(MutCap::Write(new.clone())),
            meta,
            false,
        )
        .await?;
        Ok(new)
    }
}

/// A factor between 0.25 and 1, so that racing writers retry at different times.
fn jitter() -> f64 {
    let [b] = crate::private::random_bytes::<1>();
    0.25 + 0.75 * f64::from(b) / 255.0
}

fn kind_of(cap: &Cap) -> &'static str {
    match cap {
        Cap::Immutable(_) => "an immutable file",
        Cap::Mutable(m) if m.kind() == MutKind::Dir => "a directory",
        Cap::Mutable(_) => "a mutable file",
    }
}

/// The write cap of a directory held with write authority.
fn writable(dir: &Cap) -> Result<&MutWriteCap, FsError> {
    match dir {
        Cap::Mutable(MutCap::Write(w)) if w.kind() == MutKind::Dir => Ok(w),
        Cap::Mutable(m) if m.kind() == MutKind::Dir => Err(FsError::ReadOnly),
        other => Err(FsError::NotADirectory(kind_of(other).into())),
    }
}

/// `name`'s cap in `d` (the directory `dir` names), with the authority `dir` allows.
fn child_of(d: &Dir, dir: &Cap, name: &Name) -> Result<Cap, FsError> {
    let entry = d
        .entries
        .get(name)
        .ok_or_else(|| FsError::NotFound(name.to_string()))?;
    if let Cap::Mutable(MutCap::Write(w)) = dir {
        if let Some(c) = d.write_cap(name, &DirKey::of(w)) {
            return Ok(c?);
        }
    }
    Ok(entry.read_cap.clone())
}
