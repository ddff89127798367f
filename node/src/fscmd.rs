//! The filesystem commands' side: `create-alias`, `add-alias`, `list-aliases`, `ls`,
//! `mkdir`, `put` to a path, `get` from a path, `cp`, `mv`, `ln`, `rm`.
//!
//! Aliases are read from the node's `private/aliases` here, on the command's side; every
//! grid operation goes to the running node through its control port as a root cap and a
//! path. Errors start with the path as typed, then what failed
//! (`docs:a/b.txt: no entry named 'b.txt'`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::aliases::{AliasError, AliasName, Aliases, GridPath, Target};
use crate::caps::Cap;
use crate::control::{ControlClient, ListEntry, Listing, TransferReport};
use crate::private::PrivateDir;
use crate::transfer::{self, node_err, ProgressLine, PutTo, TransferError};

/// Why a filesystem command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsCmdError {
    /// An alias or a target was refused.
    #[error(transparent)]
    Alias(#[from] AliasError),
    /// Reaching the node or moving bytes failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// An operation on `path` failed.
    #[error("{path}: {reason}")]
    At {
        /// The target as typed.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A local file or directory could not be read or written.
    #[error("{path}: {source}")]
    Local {
        /// The local path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
}

const CONNECT: Duration = Duration::from_secs(30);

fn at(path: &str, e: impl std::fmt::Display) -> FsCmdError {
    FsCmdError::At {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

fn local(path: &Path, source: std::io::Error) -> FsCmdError {
    FsCmdError::Local {
        path: path.display().to_string(),
        source,
    }
}

/// A node directory's aliases and a connection to it, opened per command.
pub struct Session {
    basedir: PathBuf,
    private: PrivateDir,
    /// The aliases.
    pub aliases: Aliases,
}

impl Session {
    /// Reads the aliases of the node in `basedir`.
    pub fn open(basedir: &Path) -> Result<Session, FsCmdError> {
        let private = PrivateDir::open(basedir).map_err(AliasError::from)?;
        let aliases = Aliases::load(&private)?;
        Ok(Session {
            basedir: basedir.to_path_buf(),
            private,
            aliases,
        })
    }

    async fn client(&self) -> Result<ControlClient, FsCmdError> {
        Ok(ControlClient::connect(&self.basedir, CONNECT)
            .await
            .map_err(TransferError::from)?)
    }

    /// `create-alias NAME`: a new directory, saved as `NAME:`.
    pub async fn create_alias(&mut self, name: &str) -> Result<String, FsCmdError> {
        let name = AliasName::new(name)?;
        if self.aliases.0.contains_key(&name) {
            return Err(AliasError::Exists(name.to_string()).into());
        }
        let client = self.client().await?;
        let cap = client.control.mkdir(None, Vec::new()).await;
        client.close().await;
        let cap = cap.map_err(|e| at(&format!("{name}:"), node_err(e)))?;
        let parsed: Cap = cap
            .parse()
            .map_err(|e| at(&format!("{name}:"), format!("the node's new cap: {e}")))?;
        self.aliases.add(name, parsed)?;
        self.aliases.save(&self.private)?;
        Ok(cap)
    }

    /// `add-alias NAME CAP`.
    pub fn add_alias(&mut self, name: &str, cap: &str) -> Result<(), FsCmdError> {
        let name = AliasName::new(name)?;
        let parsed: Cap = cap
            .trim()
            .parse()
            .map_err(|e| at(name.as_str(), format!("the cap: {e}")))?;
        self.aliases.add(name, parsed)?;
        self.aliases.save(&self.private)?;
        Ok(())
    }

    /// `list-aliases`: (name, cap) pairs, the read-only caps when `readonly`.
    pub fn list_aliases(&self, readonly: bool) -> Vec<(String, String)> {
        self.aliases
            .0
            .iter()
            .map(|(n, c)| {
                let cap = if readonly {
                    c.read_only().unwrap_or_else(|| c.clone())
                } else {
                    c.clone()
                };
                (n.to_string(), cap.to_string())
            })
            .collect()
    }

    fn grid(&self, arg: &str) -> Result<GridPath, FsCmdError> {
        Ok(Target::grid(arg, &self.aliases)?)
    }

    /// What a grid path names.
    pub async fn ls(&self, arg: &str) -> Result<Listing, FsCmdError> {
        let g = self.grid(arg)?;
        let client = self.client().await?;
        let r = client.control.list(g.root.clone(), g.segments()).await;
        client.close().await;
        r.map_err(|e| at(&g.shown, node_err(e)))
    }

    /// `mkdir [TARGET]`: returns the new directory's write cap.
    pub async fn mkdir(&self, arg: Option<&str>) -> Result<String, FsCmdError> {
        let client = self.client().await?;
        let r = match arg {
            None => client
                .control
                .mkdir(None, Vec::new())
                .await
                .map_err(|e| at("mkdir", node_err(e))),
            Some(arg) => {
                let g = self.grid(arg)?;
                client
                    .control
                    .mkdir(Some(g.root.clone()), g.segments())
                    .await
                    .map_err(|e| at(&g.shown, node_err(e)))
            }
        };
        client.close().await;
        r
    }

    /// `put [--mutable] FILE [TARGET]`: stores the local file (or stdin, `None`), linked at
    /// `target` if given.
    pub async fn put(
        &self,
        file: Option<&Path>,
        target: Option<&str>,
        mutable: bool,
    ) -> Result<TransferReport, FsCmdError> {
        let g = target.map(|t| self.grid(t)).transpose()?;
        if let Some(g) = &g {
            if g.path.is_empty() {
                return Err(at(&g.shown, "a file needs a name below the root"));
            }
        }
        let to = PutTo {
            at: g.as_ref().map(|g| (g.root.clone(), g.segments())),
            mutable,
        };
        let shown = g.as_ref().map_or("put", |g| g.shown.as_str()).to_string();
        let line = ProgressLine::new();
        let r = match file {
            None => transfer::put_to(&self.basedir, tokio::io::stdin(), None, line, to).await,
            Some(p) => {
                let f = tokio::fs::File::open(p).await.map_err(|e| local(p, e))?;
                let size = f.metadata().await.ok().map(|m| m.len());
                transfer::put_to(&self.basedir, f, size, line, to).await
            }
        };
        r.map_err(|e| at(&shown, e))
    }

    /// The cap a grid path names, and whether it is a directory.
    async fn resolve(&self, g: &GridPath) -> Result<(String, bool), FsCmdError> {
        if g.path.is_empty() {
            let cap: Cap = g.root.parse().map_err(|e| at(&g.shown, e))?;
            return Ok((g.root.clone(), cap.is_dir()));
        }
        let (parent, last) = g.split_last().expect("a path");
        let client = self.client().await?;
        let r = client
            .control
            .list(parent.root.clone(), parent.segments())
            .await;
        client.close().await;
        let listing = r.map_err(|e| at(&g.shown, node_err(e)))?;
        if !listing.is_dir {
            return Err(at(
                &g.shown,
                format!("'{}' is a file, not a directory", parent.shown),
            ));
        }
        let e = listing
            .entries
            .iter()
            .find(|e| e.name == last.as_str())
            .ok_or_else(|| at(&g.shown, format!("no entry named '{last}'")))?;
        Ok((
            e.rw_uri.clone().unwrap_or_else(|| e.ro_uri.clone()),
            e.kind == "dir",
        ))
    }

    /// `get SOURCE [FILE]`: a cap or a grid path, to a file (written beside it and renamed
    /// into place) or stdout.
    pub async fn get(&self, source: &str, out: Option<&Path>) -> Result<(), FsCmdError> {
        let g = self.grid(source)?;
        let (cap, is_dir) = self.resolve(&g).await?;
        if is_dir {
            return Err(at(&g.shown, "is a directory (use cp -r)"));
        }
        let line = ProgressLine::new();
        match out {
            None => {
                transfer::get(&self.basedir, &cap, tokio::io::stdout(), line)
                    .await
                    .map_err(|e| at(&g.shown, e))?;
            }
            Some(p) => get_into(&self.basedir, &cap, p, line)
                .await
                .map_err(|e| match e {
                    FsCmdError::Transfer(t) => at(&g.shown, t),
                    other => other,
                })?,
        }
        Ok(())
    }

    /// `rm TARGET`.
    pub async fn rm(&self, target: &str) -> Result<(), FsCmdError> {
        let g = self.grid(target)?;
        let client = self.client().await?;
        let r = client.control.unlink(g.root.clone(), g.segments()).await;
        client.close().await;
        r.map(drop).map_err(|e| at(&g.shown, node_err(e)))
    }

    /// Where `to` puts something called `name`: inside it when it is a directory.
    async fn destination(&self, to: &GridPath, name: &str) -> Result<GridPath, FsCmdError> {
        if to.path.is_empty() {
            return self.join(to, name);
        }
        match self.resolve(to).await {
            Ok((_, true)) => self.join(to, name),
            Ok((_, false)) => Ok(to.clone()),
            Err(FsCmdError::At { reason, .. }) if reason.starts_with("no entry named") => {
                Ok(to.clone())
            }
            Err(e) => Err(e),
        }
    }

    fn join(&self, g: &GridPath, name: &str) -> Result<GridPath, FsCmdError> {
        let n = crate::dirnode::Name::new(name).map_err(|e| at(&g.shown, e))?;
        Ok(g.join(&n))
    }

    /// `mv FROM TO`.
    pub async fn mv(&self, from: &str, to: &str) -> Result<(), FsCmdError> {
        let f = self.grid(from)?;
        let Some((_, name)) = f.split_last() else {
            return Err(at(&f.shown, "the root cannot be moved"));
        };
        let t = self.destination(&self.grid(to)?, name.as_str()).await?;
        let client = self.client().await?;
        let r = client
            .control
            .rename(
                (f.root.clone(), f.segments()),
                (t.root.clone(), t.segments()),
            )
            .await;
        client.close().await;
        r.map_err(|e| at(&f.shown, node_err(e)))
    }

    /// `ln FROM TO`: links what `FROM` names (a cap or a path) at `TO` too.
    pub async fn ln(&self, from: &str, to: &str) -> Result<(), FsCmdError> {
        let f = self.grid(from)?;
        let (cap, _) = self.resolve(&f).await?;
        let name = f
            .split_last()
            .map(|(_, n)| n.to_string())
            .ok_or_else(|| FsCmdError::Usage("ln needs a name for the new link".into()))?;
        let t = self.destination(&self.grid(to)?, &name).await?;
        let client = self.client().await?;
        let r = client
            .control
            .link(t.root.clone(), t.segments(), cap, false)
            .await;
        client.close().await;
        r.map_err(|e| at(&t.shown, node_err(e)))
    }

    /// `cp [-r] SRC... DST`, local to grid or grid to local. Returns the files copied.
    pub async fn cp(
        &self,
        sources: &[String],
        dest: &str,
        recursive: bool,
    ) -> Result<usize, FsCmdError> {
        let dest_target = Target::any(dest, &self.aliases)?;
        let mut copied = 0;
        for src in sources {
            match (Target::any(src, &self.aliases)?, &dest_target) {
                (Target::Local(p), Target::Grid(g)) => {
                    let name = file_name(&p)?;
                    let to = self.destination(g, &name).await?;
                    copied += self.upload_tree(&p, &to, recursive).await?;
                }
                (Target::Grid(g), Target::Local(dir)) => {
                    let (cap, is_dir) = self.resolve(&g).await?;
                    let name = g
                        .split_last()
                        .map(|(_, n)| n.to_string())
                        .unwrap_or_else(|| "root".into());
                    let to = if dir.is_dir() {
                        dir.join(&name)
                    } else {
                        dir.clone()
                    };
                    if is_dir {
                        if !recursive {
                            return Err(at(&g.shown, "is a directory (use cp -r)"));
                        }
                        copied += self.download_tree(&g, &to).await?;
                    } else {
                        get_into(&self.basedir, &cap, &to, ProgressLine::new()).await?;
                        copied += 1;
                    }
                }
                (Target::Local(_), Target::Local(_)) => {
                    return Err(FsCmdError::Usage(
                        "cp copies between the grid and local files; both are local here".into(),
                    ))
                }
                (Target::Grid(_), Target::Grid(_)) => return Err(FsCmdError::Usage(
                    "cp copies between the grid and local files; use ln to link within the grid"
                        .into(),
                )),
            }
        }
        Ok(copied)
    }

    async fn upload_tree(
        &self,
        p: &Path,
        to: &GridPath,
        recursive: bool,
    ) -> Result<usize, FsCmdError> {
        let meta = std::fs::metadata(p).map_err(|e| local(p, e))?;
        if !meta.is_dir() {
            let line = ProgressLine::new();
            let f = tokio::fs::File::open(p).await.map_err(|e| local(p, e))?;
            let put = PutTo {
                at: Some((to.root.clone(), to.segments())),
                mutable: false,
            };
            transfer::put_to(&self.basedir, f, Some(meta.len()), line, put)
                .await
                .map_err(|e| at(&to.shown, e))?;
            return Ok(1);
        }
        if !recursive {
            return Err(local(
                p,
                std::io::Error::other("is a directory (use cp -r)"),
            ));
        }
        // The directory itself (an existing one is used as it is).
        match self.resolve(to).await {
            Ok((_, true)) => {}
            Ok((_, false)) => return Err(at(&to.shown, "exists and is not a directory")),
            Err(_) => {
                self.mkdir(Some(&to_arg(to))).await?;
            }
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| local(p, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| local(p, e))?;
        entries.sort();
        let mut n = 0;
        for e in entries {
            let name = file_name(&e)?;
            let child = self.join(to, &name)?;
            n += Box::pin(self.upload_tree(&e, &child, true)).await?;
        }
        Ok(n)
    }

    async fn download_tree(&self, g: &GridPath, to: &Path) -> Result<usize, FsCmdError> {
        std::fs::create_dir_all(to).map_err(|e| local(to, e))?;
        let listing = self.ls(&to_arg(g)).await?;
        let mut n = 0;
        for e in listing.entries {
            let child = self.join(g, &e.name)?;
            let dest = to.join(&e.name);
            if e.kind == "dir" {
                n += Box::pin(self.download_tree(&child, &dest)).await?;
            } else {
                get_into(&self.basedir, &e.ro_uri, &dest, ProgressLine::new()).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A grid path as an argument (its root cap and path).
fn to_arg(g: &GridPath) -> String {
    let mut s = g.root.clone();
    for n in &g.path {
        s.push('/');
        s.push_str(n.as_str());
    }
    s
}

fn file_name(p: &Path) -> Result<String, FsCmdError> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| FsCmdError::Usage(format!("{}: no usable file name", p.display())))
}

/// Downloads `cap` into the file `p`: written beside it and renamed into place, so a failed
/// download leaves no partial file under the name asked for.
pub async fn get_into(
    basedir: &Path,
    cap: &str,
    p: &Path,
    line: std::sync::Arc<ProgressLine>,
) -> Result<(), FsCmdError> {
    let tmp = p.with_extension("tahoe-partial");
    let f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| local(&tmp, e))?;
    match transfer::get(basedir, cap, f, line).await {
        Ok(_) => std::fs::rename(&tmp, p).map_err(|e| local(p, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.into())
        }
    }
}

/// `ls -l`'s line for an entry.
pub fn long_line(e: &ListEntry) -> String {
    let kind = match e.kind.as_str() {
        "dir" => 'd',
        "mutable" => 'm',
        _ => '-',
    };
    let size = e.size.map_or_else(|| "?".to_string(), |s| s.to_string());
    let when = e
        .mtime
        .or(e.link_modified)
        .map_or_else(|| "-".to_string(), utc_minutes);
    let rw = if e.rw_uri.is_some() { "rw" } else { "r-" };
    let name = if e.kind == "dir" {
        format!("{}/", e.name)
    } else {
        e.name.clone()
    };
    format!("{kind}{rw} {size:>12} {when:>16} {name}")
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix time.
fn utc_minutes(t: u64) -> String {
    // Days to a civil date (the proleptic Gregorian calendar), after H. Hinnant's
    // `civil_from_days`.
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::utc_minutes(0), "1970-01-01 00:00");
        assert_eq!(super::utc_minutes(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc_minutes(1_796_587_450), "2026-12-06 20:04");
    }
}
