//! Mutable files and directories (issue 19).
//!
//! A mutable file is a storage slot whose content its writer can replace, one signed version
//! after another; a directory is a mutable file whose content is a list of named children
//! (not built yet). The format:
//!
//! - **Caps** ([`MutWriteCap`] → [`MutReadCap`] → [`MutVerifyCap`]), each derived one way
//!   from the one above, and the keys they yield (`keys.rs`, with known answers).
//! - **Shares** (`share.rs`, `version.rs`): every share of a version is a 160-byte header
//!   ([`MutShareHeader`]: the signed prefix naming k, N, the sequence number, the salt, the
//!   size and the UEB hash of the body; the Ed25519 signature; the share number and body
//!   length), then the body: share `n` of the version's content encrypted under its own
//!   key and erasure-coded exactly as an immutable file. A whole share fits one storage
//!   call, which bounds a mutable file ([`max_mutable_size`]: 1,568,832 bytes at 3-of-10).
//! - **Reading** ([`retrieve`]): one round of reads of every server's shares
//!   ([`ServerMap`]; a small version arrives whole in it), then the newest version with k
//!   valid shares, decoded and checked against its signature and hashes.
//! - **Writing** ([`create`], [`publish`]): each share is replaced whole, in one
//!   test-and-set call that writes only if the share's first 80 bytes are still what the
//!   writer saw (or it is still absent). One share (the *claim*) goes first and decides
//!   between writers that saw the same map; the rest follow in flights ordered so that the
//!   old or the new version always keeps k shares. Another writer's work, found at any
//!   step, ends the write with [`MutableError::Uncoordinated`], never a lost update.
//!
//! `docs/design/mutable-files.md` is the design, with what is not built yet (directories,
//! aliases, the commands).

mod cap;
mod keys;
mod publish;
mod servermap;
mod share;
mod version;

pub use cap::{MutCap, MutCapError, MutKind, MutReadCap, MutVerifyCap, MutWriteCap};
pub use publish::{
    create, publish, Base, PublishReport, UcwPhase, Uncoordinated, MAP_FRESH, SETTLE,
};
pub use servermap::{
    retrieve, Mode, Retrieved, ServerMap, ShareSeen, VersionId, FIRST_READ, READ_GRACE,
};
pub use share::{
    MutShareHeader, ShareHeaderError, SignedPrefix, HEADER_LEN, MAX_BODY_LEN, MAX_SEQNUM, MAX_SIZE,
    PREFIX_LEN,
};
pub use version::{max_mutable_size, parse_mut_share, MutShareError};

pub(crate) use keys::entry_key;

/// Why reading or writing a mutable file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MutableError {
    /// The parameters are out of range.
    #[error("bad parameters: {0}")]
    Params(String),
    /// The content is larger than a mutable file may be.
    #[error(
        "mutable files are limited to {maximum} bytes with shares.needed={needed} (each share \
         must fit one storage call); this is {size} bytes: store it immutable and link it"
    )]
    TooLarge {
        /// The content's size.
        size: u64,
        /// The largest allowed.
        maximum: u64,
        /// k.
        needed: u16,
    },
    /// No server holds a share of the file.
    #[error("no share of this mutable file was found on {servers} servers ({failed} failed)")]
    NotFound {
        /// Servers asked.
        servers: usize,
        /// Servers whose reads failed.
        failed: usize,
    },
    /// Shares were found, but no version has k valid ones.
    #[error(
        "no version of this mutable file can be recovered: the newest, {newest_seqnum}, has \
         {found} of the {needed} shares needed ({invalid} shares were invalid, {failed} servers \
         failed)"
    )]
    Unrecoverable {
        /// The newest valid version seen.
        newest_seqnum: u64,
        /// Its distinct shares.
        found: usize,
        /// k.
        needed: u16,
        /// Shares whose header did not verify.
        invalid: usize,
        /// Servers whose reads failed.
        failed: usize,
    },
    /// Another writer changed the file while this write ran.
    #[error("{0}")]
    Uncoordinated(Box<Uncoordinated>),
    /// Too few servers took the shares.
    #[error(
        "found {found} servers holding the new version, need happy={happy} ({servers} servers, \
         {failed} failed){}",
        match published {
            Some(n) => format!("; version {n} is on the grid but not on enough servers"),
            None => String::new(),
        }
    )]
    NotHappy {
        /// Distinct servers in a maximum matching.
        found: usize,
        /// `shares.happy`.
        happy: u16,
        /// Servers known.
        servers: usize,
        /// Servers that failed.
        failed: usize,
        /// The sequence number written, when some shares were.
        published: Option<u64>,
    },
    /// k valid shares did not decode to the content their hashes name.
    #[error("the version's shares are valid but do not decode: {0}")]
    Decode(#[source] crate::immutable::DownloadError),
}
