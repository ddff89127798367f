//! The URI extension block and the share layout: encoding, and decoding of untrusted bytes.
//!
//! Every decoder here reads bytes a storage server returned: each checks lengths before it
//! slices, validates every field against fixed bounds, and reports a [`ShareError`]; none
//! panics or allocates more than the input's size (plus a few small vectors).

use super::hash::{
    block_hash, climb, full_tree, height, level_sizes, share_leaf, sibling, tagged, Hash, TreeKind,
    TAG_UEB,
};
use super::{ChkCap, MAX_FILE_SIZE, MAX_SEGMENT_SIZE, MAX_SHARES};

/// The length of a share's fixed header.
pub const HEADER_LEN: u64 = 64;
/// The length of the URI extension block.
pub const UEB_LEN: u64 = 104;
/// Where the UEB starts in a share.
pub const UEB_OFFSET: u64 = HEADER_LEN;
/// Where the share's block tree root starts.
pub const ROOT_OFFSET: u64 = UEB_OFFSET + UEB_LEN;
/// Where the share hash chain starts.
pub const CHAIN_OFFSET: u64 = ROOT_OFFSET + 32;
/// Blocks are padded to a multiple of this many bytes (the erasure codec needs even sizes;
/// multiples of 64 keep its output the same across its versions).
pub const BLOCK_ALIGN: u64 = 64;

const SHARE_MAGIC: &[u8; 8] = b"folioCHK";
const UEB_MAGIC: &[u8; 8] = b"folioUEB";
const VERSION: u16 = 1;

/// Why share bytes (or a UEB) were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Fewer bytes than the structure needs.
    #[error("the {what} is truncated: {found} bytes where {needed} are needed")]
    Short {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes there.
        found: u64,
    },
    /// More bytes than the structure has.
    #[error("the {what} has {found} bytes where {expected} were expected")]
    Long {
        /// What was being read.
        what: &'static str,
        /// Bytes expected.
        expected: u64,
        /// Bytes there.
        found: u64,
    },
    /// Wrong magic bytes.
    #[error("the {what} does not start with its magic bytes")]
    Magic {
        /// What was being read.
        what: &'static str,
    },
    /// An unknown format version.
    #[error("the {what} has format version {version}; only 1 is known")]
    Version {
        /// What was being read.
        what: &'static str,
        /// The version found.
        version: u16,
    },
    /// Bytes that must be zero are not.
    #[error("reserved bytes of the {what} are not zero")]
    Reserved {
        /// What was being read.
        what: &'static str,
    },
    /// A field out of range, or fields that disagree.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// How.
        detail: String,
    },
    /// The header's offsets are not those the UEB implies.
    #[error("the share header's offsets do not match the layout its UEB implies")]
    HeaderMismatch,
    /// The share says it is another share number than the server said.
    #[error("the share says it is share {found}, the server listed it as share {expected}")]
    WrongShareNumber {
        /// The number the server gave.
        expected: u16,
        /// The number in the header.
        found: u16,
    },
    /// The UEB's hash is not the cap's.
    #[error("the share's UEB does not match the cap's UEB hash")]
    UebHash,
    /// The UEB matches the cap's hash, but its parameters are not the cap's.
    #[error("the UEB's parameters disagree with the cap: {0}")]
    CapMismatch(String),
    /// A chain slot that must be empty is not all zeros.
    #[error("share hash chain slot {0} must be empty (zero) but is not")]
    ChainPadding(usize),
    /// The share's chain does not lead to the share tree root.
    #[error("the share's hash chain does not lead to the share tree root in the UEB")]
    ChainMismatch,
    /// A stored block tree node is not the hash of what is below it.
    #[error("node {index} of block tree level {level} does not match the blocks")]
    TreeMismatch {
        /// The level (0: leaves).
        level: usize,
        /// The node.
        index: u64,
    },
    /// The blocks do not hash to the share's root.
    #[error("the share's blocks do not hash to its block tree root")]
    RootMismatch,
    /// A block does not match the share's block hash tree.
    #[error("block {segment} does not match the share's block hash tree")]
    BlockMismatch {
        /// The segment number.
        segment: u64,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn invalid(what: &'static str, detail: impl Into<String>) -> ShareError {
    ShareError::Invalid {
        what,
        detail: detail.into(),
    }
}

/// The sizes of a file's segments and blocks, from `(k, N, size, segment size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// k.
    pub needed: u16,
    /// N.
    pub total: u16,
    /// The file size (at least 1).
    pub size: u64,
    /// The segment size: every segment but the last has exactly this many bytes.
    pub segment_size: u64,
    /// The number of segments (at least 1).
    pub num_segments: u64,
}

impl Geometry {
    /// Validates and computes. Bounds: `1 <= k <= N <= 256`, `1 <= size <= MAX_FILE_SIZE`,
    /// `1 <= segment_size <= MAX_SEGMENT_SIZE`, a multiple of k and at most `size` rounded
    /// up to a multiple of k.
    pub fn new(needed: u16, total: u16, size: u64, segment_size: u64) -> Result<Self, ShareError> {
        if needed < 1 || needed > total || total as usize > MAX_SHARES {
            return Err(invalid(
                "share counts",
                format!("k={needed}, N={total}: need 1 <= k <= N <= {MAX_SHARES}"),
            ));
        }
        if !(1..=MAX_FILE_SIZE).contains(&size) {
            return Err(invalid(
                "file size",
                format!("{size} is not in 1..={MAX_FILE_SIZE}"),
            ));
        }
        let k = needed as u64;
        if !(1..=MAX_SEGMENT_SIZE).contains(&segment_size)
            || !segment_size.is_multiple_of(k)
            || segment_size > size.div_ceil(k) * k
        {
            return Err(invalid(
                "segment size",
                format!(
                    "{segment_size} for a {size}-byte file with k={needed} (must be a \
                     multiple of k, at most {MAX_SEGMENT_SIZE} and at most the file size \
                     rounded up to a multiple of k)"
                ),
            ));
        }
        Ok(Geometry {
            needed,
            total,
            size,
            segment_size,
            num_segments: size.div_ceil(segment_size),
        })
    }

    /// The plaintext length of segment `i`.
    pub fn segment_len(&self, i: u64) -> u64 {
        if i + 1 < self.num_segments {
            self.segment_size
        } else {
            self.size - (self.num_segments - 1) * self.segment_size
        }
    }

    /// The block size for a segment of `len` bytes: `ceil(len / k)` rounded up to a
    /// multiple of [`BLOCK_ALIGN`].
    pub fn block_size_for(&self, len: u64) -> u64 {
        len.div_ceil(self.needed as u64).div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN
    }

    /// The length of segment `i`'s blocks.
    pub fn block_len(&self, i: u64) -> u64 {
        self.block_size_for(self.segment_len(i))
    }

    /// Where segment `i`'s block starts, from the start of the blocks region.
    pub fn block_offset(&self, i: u64) -> u64 {
        i * self.block_size_for(self.segment_size)
    }

    /// The length of the blocks region.
    pub fn blocks_len(&self) -> u64 {
        self.block_offset(self.num_segments - 1) + self.block_len(self.num_segments - 1)
    }
}

/// The URI extension block: the file's parameters and root hashes, in every share.
///
/// 104 bytes, big-endian: `"folioUEB"`, version (u16) = 1, k (u16), N (u16), 2 zero bytes,
/// file size (u64), segment size (u64), segment count (u64), the share tree root (32),
/// the ciphertext hash (32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ueb {
    /// The sizes.
    pub geometry: Geometry,
    /// The root of the share hash tree.
    pub share_root: Hash,
    /// `H("folio:chk:ciphertext:v1"; ciphertext)`.
    pub ciphertext_hash: Hash,
}

impl Ueb {
    /// The bytes stored in each share.
    pub fn encode(&self) -> [u8; UEB_LEN as usize] {
        let g = &self.geometry;
        let mut out = [0u8; UEB_LEN as usize];
        out[..8].copy_from_slice(UEB_MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_be_bytes());
        out[10..12].copy_from_slice(&g.needed.to_be_bytes());
        out[12..14].copy_from_slice(&g.total.to_be_bytes());
        out[16..24].copy_from_slice(&g.size.to_be_bytes());
        out[24..32].copy_from_slice(&g.segment_size.to_be_bytes());
        out[32..40].copy_from_slice(&g.num_segments.to_be_bytes());
        out[40..72].copy_from_slice(&self.share_root);
        out[72..104].copy_from_slice(&self.ciphertext_hash);
        out
    }

    /// Decodes and validates exactly [`UEB_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<Ueb, ShareError> {
        let what = "URI extension block";
        if (b.len() as u64) < UEB_LEN {
            return Err(ShareError::Short {
                what,
                needed: UEB_LEN,
                found: b.len() as u64,
            });
        }
        if b.len() as u64 > UEB_LEN {
            return Err(ShareError::Long {
                what,
                expected: UEB_LEN,
                found: b.len() as u64,
            });
        }
        if &b[..8] != UEB_MAGIC {
            return Err(ShareError::Magic { what });
        }
        let version = be16(b, 8);
        if version != VERSION {
            return Err(ShareError::Version { what, version });
        }
        if b[14..16] != [0, 0] {
            return Err(ShareError::Reserved { what });
        }
        let geometry = Geometry::new(be16(b, 10), be16(b, 12), be64(b, 16), be64(b, 24))?;
        let count = be64(b, 32);
        if count != geometry.num_segments {
            return Err(invalid(
                "segment count",
                format!("{count}, but the sizes make {}", geometry.num_segments),
            ));
        }
        let mut share_root = [0u8; 32];
        share_root.copy_from_slice(&b[40..72]);
        let mut ciphertext_hash = [0u8; 32];
        ciphertext_hash.copy_from_slice(&b[72..104]);
        Ok(Ueb {
            geometry,
            share_root,
            ciphertext_hash,
        })
    }

    /// `H("folio:chk:ueb:v1"; encoded UEB)`: what the cap holds.
    pub fn hash(&self) -> Hash {
        tagged(TAG_UEB, &[&self.encode()])
    }

    /// Checks that the cap's k, N and size are the UEB's.
    pub fn check_cap(&self, cap: &ChkCap) -> Result<(), ShareError> {
        let g = &self.geometry;
        if (g.needed, g.total, g.size) != (cap.needed, cap.total, cap.size) {
            return Err(ShareError::CapMismatch(format!(
                "the cap says k={}, N={}, size={}; the UEB says k={}, N={}, size={}",
                cap.needed, cap.total, cap.size, g.needed, g.total, g.size
            )));
        }
        Ok(())
    }
}

/// The fixed 64-byte share header.
///
/// Big-endian: `"folioCHK"`, version (u16) = 1, share number (u16), 4 zero bytes, then
/// six u64 offsets: UEB, share root, share hash chain, blocks, block hash tree, end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareHeader {
    /// The share number.
    pub shnum: u16,
    /// Where the UEB starts (64).
    pub ueb_offset: u64,
    /// Where the block tree root starts (168).
    pub root_offset: u64,
    /// Where the share hash chain starts (200).
    pub chain_offset: u64,
    /// Where the blocks start.
    pub blocks_offset: u64,
    /// Where the block hash tree starts.
    pub tree_offset: u64,
    /// The share's length.
    pub end: u64,
}

impl ShareHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(SHARE_MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_be_bytes());
        out[10..12].copy_from_slice(&self.shnum.to_be_bytes());
        let offsets = [
            self.ueb_offset,
            self.root_offset,
            self.chain_offset,
            self.blocks_offset,
            self.tree_offset,
            self.end,
        ];
        for (i, o) in offsets.iter().enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&o.to_be_bytes());
        }
        out
    }

    /// Decodes the first [`HEADER_LEN`] bytes of `b` (more may follow).
    pub fn decode(b: &[u8]) -> Result<ShareHeader, ShareError> {
        let what = "share header";
        if (b.len() as u64) < HEADER_LEN {
            return Err(ShareError::Short {
                what,
                needed: HEADER_LEN,
                found: b.len() as u64,
            });
        }
        if &b[..8] != SHARE_MAGIC {
            return Err(ShareError::Magic { what });
        }
        let version = be16(b, 8);
        if version != VERSION {
            return Err(ShareError::Version { what, version });
        }
        if b[12..16] != [0; 4] {
            return Err(ShareError::Reserved { what });
        }
        let h = ShareHeader {
            shnum: be16(b, 10),
            ueb_offset: be64(b, 16),
            root_offset: be64(b, 24),
            chain_offset: be64(b, 32),
            blocks_offset: be64(b, 40),
            tree_offset: be64(b, 48),
            end: be64(b, 56),
        };
        if h.shnum as usize >= MAX_SHARES {
            return Err(invalid("share number", format!("{} is above 255", h.shnum)));
        }
        Ok(h)
    }
}

/// Where everything is in a share of a file (the same for every share of the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareLayout {
    /// The sizes.
    pub geometry: Geometry,
    /// Slots in the share hash chain: the height of the share tree, `ceil(log2 N)`.
    pub chain_slots: usize,
    /// Where the blocks start.
    pub blocks_offset: u64,
    /// Where the block hash tree starts.
    pub tree_offset: u64,
    /// The share's length.
    pub end: u64,
    /// Node counts of the block tree's levels, leaves first, root last.
    pub tree_levels: Vec<u64>,
}

impl ShareLayout {
    /// The layout for a file of this geometry.
    pub fn new(geometry: Geometry) -> ShareLayout {
        let chain_slots = height(geometry.total as u64);
        let blocks_offset = CHAIN_OFFSET + 32 * chain_slots as u64;
        let tree_offset = blocks_offset + geometry.blocks_len();
        let tree_levels = level_sizes(geometry.num_segments);
        let stored: u64 = tree_levels[..tree_levels.len() - 1].iter().sum();
        ShareLayout {
            geometry,
            chain_slots,
            blocks_offset,
            tree_offset,
            end: tree_offset + 32 * stored,
            tree_levels,
        }
    }

    /// The length of a share's front: header, UEB, root and chain, for `N` shares.
    pub fn front_len(total: u16) -> u64 {
        CHAIN_OFFSET + 32 * height(total as u64) as u64
    }

    /// The header of share `shnum`.
    pub fn header(&self, shnum: u16) -> ShareHeader {
        ShareHeader {
            shnum,
            ueb_offset: UEB_OFFSET,
            root_offset: ROOT_OFFSET,
            chain_offset: CHAIN_OFFSET,
            blocks_offset: self.blocks_offset,
            tree_offset: self.tree_offset,
            end: self.end,
        }
    }

    /// Where segment `i`'s block is in the share, and its length.
    pub fn block_range(&self, i: u64) -> (u64, u64) {
        (
            self.blocks_offset + self.geometry.block_offset(i),
            self.geometry.block_len(i),
        )
    }

    /// Where node `index` of block tree level `level` (below the root) is in the share.
    pub fn tree_node_offset(&self, level: usize, index: u64) -> u64 {
        let before: u64 = self.tree_levels[..level].iter().sum();
        self.tree_offset + 32 * (before + index)
    }
}

/// A share's front, verified: what the downloader learns from its first read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareFront {
    /// The header.
    pub header: ShareHeader,
    /// The UEB.
    pub ueb: Ueb,
    /// The layout the UEB implies (checked against the header).
    pub layout: ShareLayout,
    /// The share's block tree root (checked against the share tree root).
    pub root: Hash,
    /// The share hash chain, one slot per level of the share tree (zeros where empty).
    pub chain: Vec<Hash>,
}

impl ShareFront {
    /// Decodes and checks a share's front (at least [`ShareLayout::front_len`] bytes of the
    /// share's start, for the N in its header's UEB; more may follow): magic, version,
    /// header offsets against the UEB's layout, and the root's hash chain against the
    /// UEB's share tree root. Does not look at a cap.
    pub fn decode(b: &[u8]) -> Result<ShareFront, ShareError> {
        let header = ShareHeader::decode(b)?;
        if (b.len() as u64) < ROOT_OFFSET {
            return Err(ShareError::Short {
                what: "share front",
                needed: ROOT_OFFSET,
                found: b.len() as u64,
            });
        }
        let ueb = Ueb::decode(&b[UEB_OFFSET as usize..ROOT_OFFSET as usize])?;
        let layout = ShareLayout::new(ueb.geometry);
        if header.shnum >= ueb.geometry.total {
            return Err(invalid(
                "share number",
                format!(
                    "{} for a file of {} shares",
                    header.shnum, ueb.geometry.total
                ),
            ));
        }
        if header != layout.header(header.shnum) {
            return Err(ShareError::HeaderMismatch);
        }
        let front = ShareLayout::front_len(ueb.geometry.total);
        if (b.len() as u64) < front {
            return Err(ShareError::Short {
                what: "share front",
                needed: front,
                found: b.len() as u64,
            });
        }
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[ROOT_OFFSET as usize..CHAIN_OFFSET as usize]);
        let chain: Vec<Hash> = b[CHAIN_OFFSET as usize..front as usize]
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        let sizes = level_sizes(ueb.geometry.total as u64);
        let shnum = header.shnum as u64;
        for (level, slot) in chain.iter().enumerate() {
            if sibling(&sizes, level, shnum).is_none() && *slot != [0; 32] {
                return Err(ShareError::ChainPadding(level));
            }
        }
        let top = climb(
            TreeKind::Share,
            &sizes,
            shnum,
            share_leaf(header.shnum, &root),
            |level, _| Ok::<_, ShareError>(chain[level]),
        )?;
        if top != ueb.share_root {
            return Err(ShareError::ChainMismatch);
        }
        Ok(ShareFront {
            header,
            ueb,
            layout,
            root,
            chain,
        })
    }

    /// [`ShareFront::decode`], then checks the UEB against `cap` and the share number
    /// against the one the server gave.
    pub fn decode_for(b: &[u8], cap: &ChkCap, shnum: u16) -> Result<ShareFront, ShareError> {
        // The UEB hash first: with a wrong UEB nothing else in the share can be trusted.
        let front = ShareLayout::front_len(cap.total);
        if (b.len() as u64) < front {
            return Err(ShareError::Short {
                what: "share front",
                needed: front,
                found: b.len() as u64,
            });
        }
        let ueb_bytes = &b[UEB_OFFSET as usize..ROOT_OFFSET as usize];
        if tagged(TAG_UEB, &[ueb_bytes]) != cap.ueb_hash {
            return Err(ShareError::UebHash);
        }
        let f = ShareFront::decode(b)?;
        f.ueb.check_cap(cap)?;
        if f.header.shnum != shnum {
            return Err(ShareError::WrongShareNumber {
                expected: shnum,
                found: f.header.shnum,
            });
        }
        Ok(f)
    }
}

/// Checks segment `segment`'s `block` against a share's block tree root, taking the
/// sibling nodes from `node(level, index)`.
pub fn verify_block<E>(
    layout: &ShareLayout,
    root: &Hash,
    segment: u64,
    block: &[u8],
    node: impl FnMut(usize, u64) -> Result<Hash, E>,
) -> Result<Result<(), ShareError>, E> {
    let top = climb(
        TreeKind::Block,
        &layout.tree_levels,
        segment,
        block_hash(block),
        node,
    )?;
    Ok(if top == *root {
        Ok(())
    } else {
        Err(ShareError::BlockMismatch { segment })
    })
}

/// Decodes and fully checks a whole share held in memory (as a verifier would): its front,
/// its exact length, and its whole block hash tree against its blocks. Returns the front.
pub fn parse_share(b: &[u8]) -> Result<ShareFront, ShareError> {
    let front = ShareFront::decode(b)?;
    let layout = &front.layout;
    let len = b.len() as u64;
    if len < layout.end {
        return Err(ShareError::Short {
            what: "share",
            needed: layout.end,
            found: len,
        });
    }
    if len > layout.end {
        return Err(ShareError::Long {
            what: "share",
            expected: layout.end,
            found: len,
        });
    }
    // Recompute the whole block tree: every stored node is checked, even those no block's
    // chain reads (carried nodes).
    let leaves: Vec<Hash> = (0..layout.geometry.num_segments)
        .map(|seg| {
            let (off, n) = layout.block_range(seg);
            block_hash(&b[off as usize..(off + n) as usize])
        })
        .collect();
    let tree = full_tree(TreeKind::Block, &leaves);
    for (level, nodes) in tree[..tree.len() - 1].iter().enumerate() {
        for (index, node) in nodes.iter().enumerate() {
            let at = layout.tree_node_offset(level, index as u64) as usize;
            if b[at..at + 32] != node[..] {
                return Err(ShareError::TreeMismatch {
                    level,
                    index: index as u64,
                });
            }
        }
    }
    if tree[tree.len() - 1][0] != front.root {
        return Err(ShareError::RootMismatch);
    }
    Ok(front)
}
