//! Mutable files and directories (issue 19): the cap chain.
//!
//! A mutable file is a storage slot whose content its writer can replace, one signed version
//! after another; a directory is a mutable file whose content is a list of named children.
//! What exists so far is the foundation every other part stands on: the caps and the keys
//! they yield ([`MutWriteCap`] → [`MutReadCap`] → [`MutVerifyCap`], each derived one way
//! from the one above; the derivations and their known answers are in `keys.rs`), and the
//! signed header every share of a version starts with ([`MutShareHeader`], its layout in
//! `share.rs`). The share's body, publishing and retrieving, directories, aliases and the
//! commands are designed in `docs/design/mutable-files.md` and not built yet: nothing in the
//! node stores or reads a mutable file today, and `tahoe` does not accept these caps.

mod cap;
mod keys;
mod share;

pub use cap::{MutCap, MutCapError, MutKind, MutReadCap, MutVerifyCap, MutWriteCap};
pub use share::{
    MutShareHeader, ShareHeaderError, SignedPrefix, HEADER_LEN, MAX_BODY_LEN, MAX_SEQNUM, MAX_SIZE,
    PREFIX_LEN,
};
