//! Every kind of cap a node reads: immutable files (`LIT`, `CHK`) and mutable files and
//! directories (`MUT`, `DIR`, with their read-only and verify forms). The text forms are
//! the immutable and mutable modules'; this only dispatches on the prefix.

use std::fmt;
use std::str::FromStr;

use crate::immutable::{CapError, ReadCap};
use crate::mutable::{MutCap, MutCapError, MutKind};

/// A cap of any kind.
#[derive(Clone, PartialEq, Eq)]
pub enum Cap {
    /// An immutable file (read-only by nature).
    Immutable(ReadCap),
    /// A mutable file or a directory, with write, read or verify authority.
    Mutable(MutCap),
}

/// Why a cap's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnyCapError {
    /// An immutable cap's text was refused.
    #[error(transparent)]
    Immutable(#[from] CapError),
    /// A mutable cap's text was refused.
    #[error(transparent)]
    Mutable(#[from] MutCapError),
}

impl Cap {
    /// Whether it names a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Cap::Mutable(m) if m.kind() == MutKind::Dir)
    }

    /// Whether it carries write authority.
    pub fn is_write(&self) -> bool {
        matches!(self, Cap::Mutable(MutCap::Write(_)))
    }

    /// Whether it can read (every cap but a verify cap).
    pub fn can_read(&self) -> bool {
        !matches!(self, Cap::Mutable(MutCap::Verify(_)))
    }

    /// The read-only cap of the same object (itself when it already is one); `None` for a
    /// verify cap, which cannot read.
    pub fn read_only(&self) -> Option<Cap> {
        match self {
            Cap::Immutable(_) => Some(self.clone()),
            Cap::Mutable(m) => m.read_cap().map(|r| Cap::Mutable(MutCap::Read(r))),
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::Immutable(c) => c.fmt(f),
            Cap::Mutable(c) => c.fmt(f),
        }
    }
}

/// Shows the kind only: a cap's text is a secret, and debug output ends up in logs.
impl fmt::Debug for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::Immutable(c) => c.fmt(f),
            Cap::Mutable(c) => c.fmt(f),
        }
    }
}

impl FromStr for Cap {
    type Err = AnyCapError;

    fn from_str(s: &str) -> Result<Cap, AnyCapError> {
        if s.starts_with("folio:MUT") || s.starts_with("folio:DIR") {
            Ok(Cap::Mutable(s.parse()?))
        } else {
            Ok(Cap::Immutable(s.parse()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutable::MutWriteCap;

    #[test]
    fn every_kind_round_trips_and_diminishes() {
        let w = MutWriteCap::generate(MutKind::Dir);
        let texts = [
            "folio:LIT:nbswy3dp".to_string(),
            w.to_string(),
            w.read_cap().to_string(),
            w.verify_cap().to_string(),
        ];
        for t in &texts {
            let c: Cap = t.parse().unwrap();
            assert_eq!(&c.to_string(), t);
        }
        let c: Cap = texts[1].parse().unwrap();
        assert!(c.is_dir() && c.is_write() && c.can_read());
        assert_eq!(c.read_only().unwrap().to_string(), texts[2]);
        let v: Cap = texts[3].parse().unwrap();
        assert!(v.read_only().is_none() && !v.can_read());
        assert!("folio:MUT:x".parse::<Cap>().is_err());
        assert!("folio:CHK:x".parse::<Cap>().is_err());
        assert!("nonsense".parse::<Cap>().is_err());
    }
}
