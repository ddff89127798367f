//! Aliases (`private/aliases`, as in Tahoe-LAFS) and the paths the commands take.
//!
//! The file holds one alias per line, `NAME: CAP`, where the cap is a directory's (`DIR`
//! or `DIR-RO`); blank lines and lines starting with `#` are ignored. Names are 1 to 64
//! characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit, and never `folio`
//! (so that a cap is never read as an alias). The file is written whole, atomically, mode
//! `0600`, in a canonical form (sorted, one space after the colon).
//!
//! A **target** names something on the grid: `ALIAS:path/to/name`, a cap optionally
//! followed by `/path` (`folio:DIR:…/a/b`), or, for the grid commands, a bare `path` in the
//! default alias `tahoe:`. Empty path segments are dropped; every other segment must be a
//! valid entry name.

use std::collections::BTreeMap;
use std::fmt;

use crate::caps::Cap;
use crate::dirnode::{DirError, Name};
use crate::private::{PrivateDir, PrivateError};

/// The file in `private/`.
pub const ALIASES_FILE: &str = "aliases";
/// The alias a bare path means.
pub const DEFAULT_ALIAS: &str = "tahoe";
const MAX_ALIAS_LEN: usize = 64;

/// Why aliases or a target were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AliasError {
    /// A line of the file is malformed.
    #[error("private/aliases line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A name that cannot be an alias.
    #[error("'{0}' cannot be an alias name (1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, not 'folio')")]
    BadName(String),
    /// A cap that is not a directory's.
    #[error("an alias names a directory: {0}")]
    NotADirectory(String),
    /// The name is taken.
    #[error("the alias '{0}' already exists")]
    Exists(String),
    /// No such alias.
    #[error("unknown alias '{0}' (see tahoe list-aliases)")]
    Unknown(String),
    /// A path segment that is not a valid name.
    #[error("{path}: {source}")]
    Path {
        /// The target as typed.
        path: String,
        /// Why.
        #[source]
        source: DirError,
    },
    /// A cap in a target that does not parse.
    #[error("{path}: {reason}")]
    BadCap {
        /// The target as typed.
        path: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing `private/aliases` failed.
    #[error(transparent)]
    Private(#[from] PrivateError),
}

/// A valid alias name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AliasName(String);

impl AliasName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<AliasName, AliasError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_ALIAS_LEN
            && name != "folio"
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok {
            Ok(AliasName(name.to_string()))
        } else {
            Err(AliasError::BadName(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The aliases of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases(pub BTreeMap<AliasName, Cap>);

impl Aliases {
    /// Reads the file's text.
    pub fn parse(text: &str) -> Result<Aliases, AliasError> {
        let mut out = BTreeMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let bad = |reason: String| AliasError::Line { line, reason };
            if raw.contains('\r') {
                return Err(bad("a carriage return (the file has Unix line ends)".into()));
            }
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (name, cap) = l
                .split_once(':')
                .ok_or_else(|| bad("expected `NAME: CAP`".into()))?;
            let name = AliasName::new(name.trim()).map_err(|e| bad(e.to_string()))?;
            let cap: Cap = cap
                .trim()
                .parse()
                .map_err(|e| bad(format!("the cap: {e}")))?;
            if !cap.is_dir() || !cap.can_read() {
                return Err(bad(
                    "an alias names a directory's write or read-only cap".into()
                ));
            }
            if out.insert(name.clone(), cap).is_some() {
                return Err(bad(format!("the alias '{name}' is defined twice")));
            }
        }
        Ok(Aliases(out))
    }

    /// The canonical text.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|(n, c)| format!("{n}: {c}\n")).collect()
    }

    /// Reads `private/aliases` (none yet: no aliases).
    pub fn load(private: &PrivateDir) -> Result<Aliases, AliasError> {
        match private.read(ALIASES_FILE)? {
            Some(text) => Aliases::parse(&text),
            None => Ok(Aliases::default()),
        }
    }

    /// Writes `private/aliases`.
    pub fn save(&self, private: &PrivateDir) -> Result<(), AliasError> {
        private.write(ALIASES_FILE, self.to_text().as_bytes())?;
        Ok(())
    }

    /// Adds `name` for `cap` (a directory's), refusing a name already taken.
    pub fn add(&mut self, name: AliasName, cap: Cap) -> Result<(), AliasError> {
        if !cap.is_dir() || !cap.can_read() {
            return Err(AliasError::NotADirectory(format!(
                "'{name}' would name something that is not a directory"
            )));
        }
        if self.0.contains_key(&name) {
            return Err(AliasError::Exists(name.to_string()));
        }
        self.0.insert(name, cap);
        Ok(())
    }
}

/// A place on the grid: a root cap and a path below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridPath {
    /// The root cap's text.
    pub root: String,
    /// The names walked from the root.
    pub path: Vec<Name>,
    /// The target as typed (for messages).
    pub shown: String,
}

impl GridPath {
    /// The path's names as text (for the control port).
    pub fn segments(&self) -> Vec<String> {
        self.path.iter().map(|n| n.as_str().to_string()).collect()
    }

    /// The same place's parent and last name (`None` at the root).
    pub fn split_last(&self) -> Option<(GridPath, Name)> {
        let (last, parent) = self.path.split_last()?;
        Some((
            GridPath {
                root: self.root.clone(),
                path: parent.to_vec(),
                shown: self.shown.clone(),
            },
            last.clone(),
        ))
    }

    /// The place `name` below this one.
    pub fn join(&self, name: &Name) -> GridPath {
        let mut path = self.path.clone();
        path.push(name.clone());
        let shown = if self.shown.ends_with('/') || self.shown.ends_with(':') {
            format!("{}{name}", self.shown)
        } else {
            format!("{}/{name}", self.shown)
        };
        GridPath {
            root: self.root.clone(),
            path,
            shown,
        }
    }
}

/// What a command argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local file or directory.
    Local(std::path::PathBuf),
    /// A place on the grid.
    Grid(GridPath),
}

impl Target {
    /// Reads a grid target: `ALIAS:path`, `folio:…[/path]`, or a bare path in `tahoe:`.
    pub fn grid(arg: &str, aliases: &Aliases) -> Result<GridPath, AliasError> {
        match Target::parse(arg, aliases, true)? {
            Target::Grid(g) => Ok(g),
            Target::Local(_) => unreachable!("a bare path is a grid path here"),
        }
    }

    /// Reads an argument of `cp`: a grid target when it starts with a cap or a known
    /// alias's `NAME:`, else a local path.
    pub fn any(arg: &str, aliases: &Aliases) -> Result<Target, AliasError> {
        Target::parse(arg, aliases, false)
    }

    fn parse(arg: &str, aliases: &Aliases, bare_is_grid: bool) -> Result<Target, AliasError> {
        let (root, rest) = if arg.starts_with("folio:") {
            let (cap, rest) = arg.split_once('/').unwrap_or((arg, ""));
            cap.parse::<Cap>().map_err(|e| AliasError::BadCap {
                path: arg.to_string(),
                reason: e.to_string(),
            })?;
            (cap.to_string(), rest)
        } else {
            match arg.split_once(':') {
                // `C:\…`-style and `./a:b` paths have a `/` or `\` before the colon.
                Some((name, rest)) if !name.contains('/') && !name.contains('\\') => {
                    match AliasName::new(name).ok().and_then(|n| aliases.0.get(&n)) {
                        Some(cap) => (cap.to_string(), rest),
                        None if bare_is_grid || AliasName::new(name).is_ok() => {
                            return Err(AliasError::Unknown(name.to_string()))
                        }
                        None => return Ok(Target::Local(arg.into())),
                    }
                }
                _ if bare_is_grid => {
                    let default = AliasName(DEFAULT_ALIAS.into());
                    let cap = aliases
                        .0
                        .get(&default)
                        .ok_or_else(|| AliasError::Unknown(DEFAULT_ALIAS.into()))?;
                    (cap.to_string(), arg)
                }
                _ => return Ok(Target::Local(arg.into())),
            }
        };
        let path = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                Name::new(s).map_err(|source| AliasError::Path {
                    path: arg.to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<Name>, AliasError>>()?;
        Ok(Target::Grid(GridPath {
            root,
            path,
            shown: arg.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutable::{MutCap, MutKind, MutWriteCap};

    fn dir() -> Cap {
        Cap::Mutable(MutCap::Write(MutWriteCap::generate(MutKind::Dir)))
    }

    #[test]
    fn canonical_text_round_trips() {
        let (a, b) = (dir(), dir().read_only().unwrap());
        let text = format!("# mine\n\nzeta:{b}\n  tahoe:   {a}  \n");
        let aliases = Aliases::parse(&text).unwrap();
        let canon = aliases.to_text();
        assert_eq!(canon, format!("tahoe: {a}\nzeta: {b}\n"));
        assert_eq!(Aliases::parse(&canon).unwrap(), aliases);
    }

    #[test]
    fn refusals() {
        let d = dir();
        let file = Cap::Mutable(MutCap::Write(MutWriteCap::generate(MutKind::File)));
        for bad in [
            format!("a: {d}\na: {d}\n"),
            format!("bad name: {d}\n"),
            format!("folio: {d}\n"),
            format!("-x: {d}\n"),
            format!("x: {file}\n"),
            "x: folio:LIT:nbswy3dp\n".to_string(),
            format!("x: {d}\r\n"),
            "x folio:DIR:nothing\n".to_string(),
        ] {
            assert!(Aliases::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets() {
        let d = dir();
        let mut aliases = Aliases::default();
        aliases
            .add(AliasName::new("tahoe").unwrap(), d.clone())
            .unwrap();
        aliases
            .add(AliasName::new("docs").unwrap(), d.clone())
            .unwrap();
        let g = Target::grid("docs:a//b.txt/", &aliases).unwrap();
        assert_eq!(g.root, d.to_string());
        assert_eq!(g.segments(), ["a", "b.txt"]);
        let g = Target::grid("a/b", &aliases).unwrap();
        assert_eq!(g.segments(), ["a", "b"], "a bare path is in tahoe:");
        let g = Target::grid(&format!("{d}/x"), &aliases).unwrap();
        assert_eq!(
            (g.root.as_str(), g.segments()),
            (d.to_string().as_str(), vec!["x".to_string()])
        );
        assert!(matches!(
            Target::grid("nope:x", &aliases),
            Err(AliasError::Unknown(_))
        ));
        assert!(matches!(
            Target::grid("docs:a/../b", &aliases),
            Err(AliasError::Path { .. })
        ));
        assert!(matches!(
            Target::grid("folio:DIR:bad", &aliases),
            Err(AliasError::BadCap { .. })
        ));
        assert_eq!(
            Target::any("./x:y", &aliases).unwrap(),
            Target::Local("./x:y".into())
        );
        assert_eq!(
            Target::any("local.txt", &aliases).unwrap(),
            Target::Local("local.txt".into())
        );
        assert!(
            matches!(Target::any("docs:", &aliases).unwrap(), Target::Grid(g) if g.path.is_empty())
        );
        assert!(matches!(
            Target::any("nope:x", &aliases),
            Err(AliasError::Unknown(_))
        ));
        assert_eq!(g.join(&Name::new("y").unwrap()).shown, format!("{d}/x/y"));
    }
}
