//! Tagged SHA-256 hashes and the Merkle trees built from them.
//!
//! `H(tag; x1, ..., xn)` is SHA-256 over `u64be(len(tag)) ‖ tag ‖ u64be(len(x1)) ‖ x1 ‖ ...`:
//! every input is length-prefixed, so no two different lists of parts (or tags) hash the
//! same bytes. Every use has its own tag (the `TAG_*` constants).
//!
//! ## Trees
//!
//! A tree over `n ≥ 1` leaves has levels `0..=h`: level 0 holds the leaves, level `l + 1`
//! holds `ceil(n_l / 2)` nodes, and the top level holds one node, the root. Node `j` of
//! level `l + 1` is `H(node_tag; a, b)` of nodes `2j` and `2j + 1` of level `l`, or, when
//! `2j` is the last node of an odd-sized level, node `2j` itself (carried up unchanged).
//! The shape depends only on `n`, which the verifier always knows, and leaves and interior
//! nodes use different tags, so carrying is unambiguous. The *chain* of leaf `i` is, for
//! each level `l < h`, the sibling `(i >> l) ^ 1` of its ancestor — or nothing where that
//! ancestor is carried.

use ring::digest::{Context, SHA256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// The plaintext, hashed in the first pass to derive the key.
pub(crate) const TAG_PLAINTEXT: &str = "folio:chk:plaintext:v1";
/// The AES key, from the convergence secret, the parameters and the plaintext hash.
pub(crate) const TAG_KEY: &str = "folio:chk:key:v1";
/// The storage index, from the key.
pub(crate) const TAG_STORAGE_INDEX: &str = "folio:chk:storage-index:v1";
/// The whole ciphertext (recorded in the UEB).
pub(crate) const TAG_CIPHERTEXT: &str = "folio:chk:ciphertext:v1";
/// A leaf of a block hash tree: one block.
pub(crate) const TAG_BLOCK: &str = "folio:chk:block:v1";
/// An interior node of a block hash tree.
pub(crate) const TAG_BLOCK_NODE: &str = "folio:chk:block-node:v1";
/// A leaf of the share hash tree: a share number and its block tree root.
pub(crate) const TAG_SHARE_LEAF: &str = "folio:chk:share-leaf:v1";
/// An interior node of the share hash tree.
pub(crate) const TAG_SHARE_NODE: &str = "folio:chk:share-node:v1";
/// The URI extension block (its hash is in the cap).
pub(crate) const TAG_UEB: &str = "folio:chk:ueb:v1";
/// The permuted server order.
pub(crate) const TAG_PERMUTE: &str = "folio:chk:permute:v1";
/// Per-server lease renew secrets.
pub(crate) const TAG_LEASE_RENEW: &str = "folio:chk:lease-renew:v1";
/// Per-server lease cancel secrets.
pub(crate) const TAG_LEASE_CANCEL: &str = "folio:chk:lease-cancel:v1";

/// A tagged hash, fed part by part.
pub(crate) struct Tagged(Context);

impl Tagged {
    /// Starts `H(tag; ...)`.
    pub(crate) fn new(tag: &str) -> Tagged {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&(tag.len() as u64).to_be_bytes());
        ctx.update(tag.as_bytes());
        Tagged(ctx)
    }

    /// Adds a whole part.
    pub(crate) fn part(mut self, data: &[u8]) -> Tagged {
        self.0.update(&(data.len() as u64).to_be_bytes());
        self.0.update(data);
        self
    }

    /// Starts a part of `len` bytes that arrives through [`Tagged::update`].
    pub(crate) fn begin_part(mut self, len: u64) -> Tagged {
        self.0.update(&len.to_be_bytes());
        self
    }

    /// More bytes of the part begun with [`Tagged::begin_part`].
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash.
    pub(crate) fn finish(self) -> Hash {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// `H(tag; parts...)`.
pub(crate) fn tagged(tag: &str, parts: &[&[u8]]) -> Hash {
    parts
        .iter()
        .fold(Tagged::new(tag), |t, p| t.part(p))
        .finish()
}

/// The leaf hash of a block.
pub(crate) fn block_hash(block: &[u8]) -> Hash {
    tagged(TAG_BLOCK, &[block])
}

/// The leaf of the share hash tree for share `shnum` with block tree root `root`.
pub(crate) fn share_leaf(shnum: u16, root: &Hash) -> Hash {
    tagged(TAG_SHARE_LEAF, &[&shnum.to_be_bytes(), root])
}

/// Which tree: block trees and the share tree tag their interior nodes differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeKind {
    /// A share's block hash tree.
    Block,
    /// The share hash tree.
    Share,
}

impl TreeKind {
    /// The interior node over `left` and `right`.
    pub(crate) fn node(self, left: &Hash, right: &Hash) -> Hash {
        let tag = match self {
            TreeKind::Block => TAG_BLOCK_NODE,
            TreeKind::Share => TAG_SHARE_NODE,
        };
        tagged(tag, &[left, right])
    }
}

/// The number of nodes of each level of a tree over `leaves ≥ 1` leaves, leaves first; the
/// last entry is 1 (the root).
pub(crate) fn level_sizes(leaves: u64) -> Vec<u64> {
    let mut sizes = vec![leaves.max(1)];
    while let Some(&last) = sizes.last() {
        if last <= 1 {
            break;
        }
        sizes.push(last.div_ceil(2));
    }
    sizes
}

/// The height `h` of a tree over `leaves` leaves (0 for one leaf).
pub(crate) fn height(leaves: u64) -> usize {
    level_sizes(leaves).len() - 1
}

/// The sibling needed at `level` to climb from leaf `index`, or `None` where the ancestor
/// is carried up unchanged.
pub(crate) fn sibling(sizes: &[u64], level: usize, index: u64) -> Option<u64> {
    let j = index >> level;
    let s = j ^ 1;
    (s < sizes[level]).then_some(s)
}

/// Climbs from `leaf` (leaf number `index`) to the root, taking siblings from `get`.
pub(crate) fn climb<E>(
    kind: TreeKind,
    sizes: &[u64],
    index: u64,
    leaf: Hash,
    mut get: impl FnMut(usize, u64) -> Result<Hash, E>,
) -> Result<Hash, E> {
    let mut cur = leaf;
    for level in 0..sizes.len() - 1 {
        if let Some(s) = sibling(sizes, level, index) {
            let sib = get(level, s)?;
            cur = if (index >> level) & 1 == 0 {
                kind.node(&cur, &sib)
            } else {
                kind.node(&sib, &cur)
            };
        }
    }
    Ok(cur)
}

/// Builds a tree leaf by leaf, emitting every node below the root as soon as it is known.
/// Within a level, nodes are emitted in order, so each level can be written as a stream.
/// Keeps one pending node per level: memory is logarithmic in the number of leaves.
pub(crate) struct TreeBuilder {
    kind: TreeKind,
    sizes: Vec<u64>,
    next: Vec<u64>,
    pending: Vec<Option<Hash>>,
    root: Option<Hash>,
}

impl TreeBuilder {
    /// A builder for a tree over `leaves ≥ 1` leaves.
    pub(crate) fn new(kind: TreeKind, leaves: u64) -> TreeBuilder {
        let sizes = level_sizes(leaves);
        let levels = sizes.len();
        TreeBuilder {
            kind,
            sizes,
            next: vec![0; levels],
            pending: vec![None; levels],
            root: None,
        }
    }

    /// Adds the next leaf; `emit(level, index, hash)` receives each node below the root that
    /// this completes (the leaf itself first).
    pub(crate) fn push(&mut self, leaf: Hash, emit: &mut impl FnMut(usize, u64, &Hash)) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            let top = self.sizes.len() - 1;
            if level == top {
                self.root = Some(hash);
                return;
            }
            let idx = self.next[level];
            self.next[level] += 1;
            emit(level, idx, &hash);
            if idx & 1 == 0 {
                if idx + 1 < self.sizes[level] {
                    self.pending[level] = Some(hash);
                    return;
                }
                // The last node of an odd level: carried up unchanged.
            } else {
                let left = self.pending[level].take().unwrap_or([0; 32]);
                hash = self.kind.node(&left, &hash);
            }
            level += 1;
        }
    }

    /// The root, once every leaf was pushed.
    pub(crate) fn root(&self) -> Option<Hash> {
        self.root
    }
}

/// Every level of a tree over `leaves` (leaves first, root last), for small trees.
pub(crate) fn full_tree(kind: TreeKind, leaves: &[Hash]) -> Vec<Vec<Hash>> {
    let mut levels: Vec<Vec<Hash>> = vec![leaves.to_vec()];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let next = below
            .chunks(2)
            .map(|p| match p {
                [a, b] => kind.node(a, b),
                [a] => *a,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
        levels.push(next);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> Hash {
        block_hash(&i.to_be_bytes())
    }

    #[test]
    fn tagged_hash_separates_tags_and_parts() {
        assert_ne!(tagged("a", &[b"bc"]), tagged("ab", &[b"c"]));
        assert_ne!(tagged("a", &[b"b", b"c"]), tagged("a", &[b"bc"]));
        let mut t = Tagged::new("a").begin_part(2);
        t.update(b"b");
        t.update(b"c");
        assert_eq!(t.finish(), tagged("a", &[b"bc"]));
    }

    #[test]
    fn level_sizes_and_heights() {
        assert_eq!(level_sizes(1), vec![1]);
        assert_eq!(level_sizes(2), vec![2, 1]);
        assert_eq!(level_sizes(5), vec![5, 3, 2, 1]);
        assert_eq!(height(1), 0);
        assert_eq!(height(256), 8);
        assert_eq!(height(257), 9);
        assert_eq!(level_sizes(1 << 48).len(), 49);
    }

    #[test]
    fn builder_matches_full_tree_and_chains_verify() {
        for n in 1..=40u64 {
            let leaves: Vec<Hash> = (0..n).map(leaf).collect();
            let full = full_tree(TreeKind::Block, &leaves);
            let mut b = TreeBuilder::new(TreeKind::Block, n);
            let mut emitted: Vec<Vec<Hash>> = vec![Vec::new(); full.len()];
            for l in &leaves {
                b.push(*l, &mut |level, idx, h| {
                    assert_eq!(idx as usize, emitted[level].len(), "in order");
                    emitted[level].push(*h);
                });
            }
            let root = full.last().unwrap()[0];
            assert_eq!(b.root(), Some(root), "n = {n}");
            for (level, nodes) in emitted.iter().enumerate().take(full.len() - 1) {
                assert_eq!(nodes, &full[level], "n = {n}, level {level}");
            }
            let sizes = level_sizes(n);
            for i in 0..n {
                let got = climb(TreeKind::Block, &sizes, i, leaves[i as usize], |l, s| {
                    Ok::<_, ()>(full[l][s as usize])
                })
                .unwrap();
                assert_eq!(got, root);
                // A wrong leaf does not climb to the root (when there is more than one).
                let bad = climb(TreeKind::Block, &sizes, i, leaf(1000), |l, s| {
                    Ok::<_, ()>(full[l][s as usize])
                })
                .unwrap();
                assert_ne!(bad, root);
            }
        }
    }
}
