//! Encryption, erasure coding and share assembly: the CPU side of upload and download,
//! with no I/O.

use aes::cipher::{KeyIvInit, StreamCipher};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::hash::{
    block_hash, full_tree, share_leaf, tagged, Hash, Tagged, TreeBuilder, TreeKind, TAG_CIPHERTEXT,
    TAG_KEY, TAG_PLAINTEXT,
};
use super::layout::{Geometry, ShareLayout, Ueb, CHAIN_OFFSET, ROOT_OFFSET, UEB_OFFSET};

/// AES-256 in CTR mode with a 128-bit big-endian counter starting from zero.
pub(crate) type Cipher = ctr::Ctr128BE<aes::Aes256>;

/// The keystream for `key`, at the start of the file.
pub(crate) fn cipher(key: &[u8; 32]) -> Cipher {
    Cipher::new(key.into(), &[0u8; 16].into())
}

/// Starts the plaintext hash of a file of `size` bytes.
pub(crate) fn plaintext_hasher(size: u64) -> Tagged {
    Tagged::new(TAG_PLAINTEXT).begin_part(size)
}

/// Starts the ciphertext hash of a file of `size` bytes.
pub(crate) fn ciphertext_hasher(size: u64) -> Tagged {
    Tagged::new(TAG_CIPHERTEXT).begin_part(size)
}

/// The convergent key: `H("folio:chk:key:v1"; secret, u16be k, u16be N, u64be segment
/// size, plaintext hash)`.
pub(crate) fn derive_key(secret: &[u8; 32], g: &Geometry, plaintext_hash: &Hash) -> [u8; 32] {
    tagged(
        TAG_KEY,
        &[
            secret,
            &g.needed.to_be_bytes(),
            &g.total.to_be_bytes(),
            &g.segment_size.to_be_bytes(),
            plaintext_hash,
        ],
    )
}

/// k-of-N erasure coding of one segment at a time (Leopard-RS over GF(2^16), systematic:
/// blocks `0..k` are the padded segment cut in k pieces; blocks `k..N` are recovery shards
/// `0..N-k` of `reed-solomon-simd`).
pub(crate) struct Codec {
    k: usize,
    n: usize,
    encoder: Option<ReedSolomonEncoder>,
    decoder: Option<ReedSolomonDecoder>,
}

impl Codec {
    pub(crate) fn new(k: u16, n: u16) -> Codec {
        Codec {
            k: k as usize,
            n: n as usize,
            encoder: None,
            decoder: None,
        }
    }

    /// The N blocks of `segment` (its true bytes; padded here with zeros to `k *
    /// block_size`).
    pub(crate) fn encode(&mut self, segment: &[u8], block_size: usize) -> Vec<Vec<u8>> {
        let mut blocks: Vec<Vec<u8>> = (0..self.k)
            .map(|i| {
                let start = (i * block_size).min(segment.len());
                let end = ((i + 1) * block_size).min(segment.len());
                let mut b = Vec::with_capacity(block_size);
                b.extend_from_slice(&segment[start..end]);
                b.resize(block_size, 0);
                b
            })
            .collect();
        if self.n > self.k {
            let recovery = self.n - self.k;
            let enc = match self.encoder.take() {
                Some(mut e) => {
                    e.reset(self.k, recovery, block_size)
                        .expect("counts and block size were validated");
                    e
                }
                None => ReedSolomonEncoder::new(self.k, recovery, block_size)
                    .expect("counts and block size were validated"),
            };
            let enc = self.encoder.insert(enc);
            for b in &blocks {
                enc.add_original_shard(b).expect("k shards of block_size");
            }
            let result = enc.encode().expect("all original shards were given");
            blocks.extend(result.recovery_iter().map(<[u8]>::to_vec));
        }
        blocks
    }

    /// The padded segment (`k * block_size` bytes) from at least k distinct blocks.
    pub(crate) fn decode(
        &mut self,
        blocks: &[(u16, Vec<u8>)],
        block_size: usize,
    ) -> Result<Vec<u8>, String> {
        let mut originals: Vec<Option<&[u8]>> = vec![None; self.k];
        for (i, b) in blocks {
            if b.len() != block_size {
                return Err(format!("block {i} has {} bytes, not {block_size}", b.len()));
            }
            if (*i as usize) < self.k {
                originals[*i as usize] = Some(b);
            }
        }
        let mut out = Vec::with_capacity(self.k * block_size);
        if originals.iter().all(Option::is_some) {
            for b in originals.iter().flatten() {
                out.extend_from_slice(b);
            }
            return Ok(out);
        }
        let recovery = self.n - self.k;
        let dec = match self.decoder.take() {
            Some(mut d) => d.reset(self.k, recovery, block_size).map(|()| d),
            None => ReedSolomonDecoder::new(self.k, recovery, block_size),
        }
        .map_err(|e| format!("erasure decoder: {e}"))?;
        let dec = self.decoder.insert(dec);
        for (i, b) in blocks {
            let i = *i as usize;
            if i < self.k {
                dec.add_original_shard(i, b)
            } else {
                dec.add_recovery_shard(i - self.k, b)
            }
            .map_err(|e| format!("erasure decoder: {e}"))?;
        }
        let result = dec.decode().map_err(|e| format!("erasure decoder: {e}"))?;
        for (i, o) in originals.iter().enumerate() {
            match o {
                Some(b) => out.extend_from_slice(b),
                None => out.extend_from_slice(
                    result
                        .restored_original(i)
                        .ok_or("the erasure decoder restored too little")?,
                ),
            }
        }
        Ok(out)
    }
}

/// One write to one share.
pub(crate) struct ShareWrite {
    pub shnum: u16,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Gathers adjacent writes of one share region into bigger ones.
struct Coalescer {
    start: u64,
    buf: Vec<u8>,
    limit: usize,
}

impl Coalescer {
    fn new(limit: usize) -> Coalescer {
        Coalescer {
            start: 0,
            buf: Vec::new(),
            limit,
        }
    }

    fn push(&mut self, shnum: u16, offset: u64, data: &[u8], out: &mut Vec<ShareWrite>) {
        if !self.buf.is_empty() && offset != self.start + self.buf.len() as u64 {
            self.flush(shnum, out);
        }
        if self.buf.is_empty() {
            self.start = offset;
            self.buf.reserve(self.limit.min(data.len().max(64) * 16));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.limit {
            self.flush(shnum, out);
        }
    }

    fn flush(&mut self, shnum: u16, out: &mut Vec<ShareWrite>) {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return;
        }
        if buf.len() <= self.limit {
            self.start += buf.len() as u64;
            out.push(ShareWrite {
                shnum,
                offset: self.start - buf.len() as u64,
                data: buf,
            });
            return;
        }
        let mut at = self.start;
        for piece in buf.chunks(self.limit) {
            out.push(ShareWrite {
                shnum,
                offset: at,
                data: piece.to_vec(),
            });
            at += piece.len() as u64;
        }
        self.start = at;
    }
}

/// Per share: its block tree builder and write buffers.
struct ShareState {
    tree: TreeBuilder,
    blocks: Coalescer,
    levels: Vec<Coalescer>,
}

/// What the encoder learned once the whole file went through it.
pub(crate) struct EncodeSummary {
    pub ueb: Ueb,
}

/// The first stage of encoding: hashes, encrypts and erasure-codes segment after segment.
pub(crate) struct SegmentCoder {
    geometry: Geometry,
    codec: Codec,
    cipher: Cipher,
    plaintext: Tagged,
    ciphertext: Tagged,
    next_segment: u64,
}

impl SegmentCoder {
    pub(crate) fn new(g: Geometry, key: &[u8; 32]) -> SegmentCoder {
        SegmentCoder {
            geometry: g,
            codec: Codec::new(g.needed, g.total),
            cipher: cipher(key),
            plaintext: plaintext_hasher(g.size),
            ciphertext: ciphertext_hasher(g.size),
            next_segment: 0,
        }
    }

    /// Takes the next segment's plaintext (exactly its length; encrypted in place) and
    /// returns its N blocks.
    pub(crate) fn push(&mut self, segment: &mut [u8]) -> Vec<Vec<u8>> {
        let i = self.next_segment;
        self.next_segment += 1;
        debug_assert_eq!(segment.len() as u64, self.geometry.segment_len(i));
        self.plaintext.update(segment);
        self.cipher.apply_keystream(segment);
        self.ciphertext.update(segment);
        let block_len = self.geometry.block_len(i);
        self.codec.encode(segment, block_len as usize)
    }

    /// The plaintext and ciphertext hashes, once every segment was pushed.
    pub(crate) fn finish(self) -> (Hash, Hash) {
        assert_eq!(self.next_segment, self.geometry.num_segments);
        (self.plaintext.finish(), self.ciphertext.finish())
    }
}

/// The second stage of encoding: hashes each segment's blocks into the block trees and
/// turns them into share writes; at the end, the share tree, the UEB and the fronts.
pub(crate) struct ShareAssembler {
    layout: ShareLayout,
    shares: Vec<ShareState>,
    next_segment: u64,
}

impl ShareAssembler {
    /// An assembler for a file of geometry `g`. Writes are at most `chunk` bytes.
    pub(crate) fn new(g: Geometry, chunk: usize) -> ShareAssembler {
        let layout = ShareLayout::new(g);
        let levels = layout.tree_levels.len() - 1;
        // Tree levels are flushed in small pieces: there are many levels per share.
        let tree_chunk = chunk.min(8 * 1024);
        let shares = (0..g.total)
            .map(|_| ShareState {
                tree: TreeBuilder::new(TreeKind::Block, g.num_segments),
                blocks: Coalescer::new(chunk),
                levels: (0..levels).map(|_| Coalescer::new(tree_chunk)).collect(),
            })
            .collect();
        ShareAssembler {
            shares,
            next_segment: 0,
            layout,
        }
    }

    /// Takes the next segment's N blocks; returns writes that are ready.
    pub(crate) fn push(&mut self, blocks: Vec<Vec<u8>>) -> Vec<ShareWrite> {
        let i = self.next_segment;
        self.next_segment += 1;
        let (offset, _) = self.layout.block_range(i);
        let mut out = Vec::new();
        for (s, block) in blocks.iter().enumerate() {
            let shnum = s as u16;
            let layout = &self.layout;
            let st = &mut self.shares[s];
            st.blocks.push(shnum, offset, block, &mut out);
            let levels = &mut st.levels;
            st.tree.push(block_hash(block), &mut |level, index, h| {
                levels[level].push(shnum, layout.tree_node_offset(level, index), h, &mut out);
            });
        }
        out
    }

    /// After the last segment: the remaining writes, including each share's front
    /// (header, UEB, root and chain), and the UEB.
    pub(crate) fn finish(mut self, ciphertext_hash: Hash) -> (Vec<ShareWrite>, Ueb) {
        assert_eq!(
            self.next_segment, self.layout.geometry.num_segments,
            "every segment was pushed"
        );
        let mut out = Vec::new();
        let mut roots = Vec::with_capacity(self.shares.len());
        for (s, st) in self.shares.iter_mut().enumerate() {
            st.blocks.flush(s as u16, &mut out);
            for l in &mut st.levels {
                l.flush(s as u16, &mut out);
            }
            roots.push(st.tree.root().expect("every leaf was pushed"));
        }
        let leaves: Vec<Hash> = roots
            .iter()
            .enumerate()
            .map(|(s, r)| share_leaf(s as u16, r))
            .collect();
        let tree = full_tree(TreeKind::Share, &leaves);
        let ueb = Ueb {
            geometry: self.layout.geometry,
            share_root: tree.last().expect("a tree has a root")[0],
            ciphertext_hash,
        };
        let ueb_bytes = ueb.encode();
        for (s, root) in roots.iter().enumerate() {
            let shnum = s as u16;
            let mut front = Vec::with_capacity(ShareLayout::front_len(ueb.geometry.total) as usize);
            front.extend_from_slice(&self.layout.header(shnum).encode());
            debug_assert_eq!(front.len() as u64, UEB_OFFSET);
            front.extend_from_slice(&ueb_bytes);
            debug_assert_eq!(front.len() as u64, ROOT_OFFSET);
            front.extend_from_slice(root);
            debug_assert_eq!(front.len() as u64, CHAIN_OFFSET);
            for (level, nodes) in tree[..tree.len() - 1].iter().enumerate() {
                let sib = (s >> level) ^ 1;
                front.extend_from_slice(nodes.get(sib).unwrap_or(&[0; 32]));
            }
            out.push(ShareWrite {
                shnum,
                offset: 0,
                data: front,
            });
        }
        (out, ueb)
    }
}

/// Runs both stages over a source on two threads (the calling one and a scoped one), in
/// a bounded pipeline. `emit(writes, plaintext bytes covered)` gets the writes in order and
/// returns `false` to stop. Fails with [`SourceChanged`](super::UploadError::SourceChanged)
/// before the fronts are emitted when the plaintext hash is not `expected`.
pub(crate) fn encode_source(
    source: &dyn super::UploadSource,
    g: Geometry,
    key: &[u8; 32],
    expected: &Hash,
    chunk: usize,
    emit: &mut dyn FnMut(Vec<ShareWrite>, u64) -> bool,
) -> Result<EncodeSummary, super::UploadError> {
    use super::UploadError;
    let abandoned = || UploadError::Internal("the upload was abandoned".into());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(2);
    std::thread::scope(|scope| {
        let coder = scope.spawn(move || -> Result<(Hash, Hash), UploadError> {
            let mut coder = SegmentCoder::new(g, key);
            let mut buf = Vec::new();
            for i in 0..g.num_segments {
                buf.resize(g.segment_len(i) as usize, 0);
                source
                    .read_at(i * g.segment_size, &mut buf)
                    .map_err(UploadError::Source)?;
                if tx.send(coder.push(&mut buf)).is_err() {
                    return Err(abandoned());
                }
            }
            Ok(coder.finish())
        });
        let mut assembler = ShareAssembler::new(g, chunk);
        let mut stopped = false;
        for i in 0..g.num_segments {
            let Ok(blocks) = rx.recv() else { break };
            if !emit(assembler.push(blocks), g.segment_len(i)) {
                stopped = true;
                break;
            }
        }
        drop(rx);
        let hashes = coder
            .join()
            .unwrap_or_else(|_| Err(UploadError::Internal("the encoding thread panicked".into())));
        let (plaintext_hash, ciphertext_hash) = hashes?;
        if stopped {
            return Err(abandoned());
        }
        if plaintext_hash != *expected {
            return Err(UploadError::SourceChanged);
        }
        let (writes, ueb) = assembler.finish(ciphertext_hash);
        if !emit(writes, 0) {
            return Err(abandoned());
        }
        Ok(EncodeSummary { ueb })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(text.as_bytes()).unwrap()
    }

    /// AES-256 in CTR mode with a 128-bit big-endian counter, against NIST SP 800-38A
    /// F.5.5 (CTR-AES256.Encrypt; also reproduced with `openssl enc -aes-256-ctr -K 603d...
    /// -iv f0f1...feff -nosalt`). The initial counter ends in `...feff`, so the second block
    /// carries into the second-to-last byte: a 32- or 64-bit counter, a little-endian one,
    /// AES-128, or no cipher at all gives other bytes and fails the comparison.
    #[test]
    fn aes_256_ctr_matches_nist_sp800_38a() {
        let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .try_into()
            .unwrap();
        let iv: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let mut data = hex(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        );
        Cipher::new(&key.into(), &iv.into()).apply_keystream(&mut data);
        assert_eq!(
            data,
            hex(
                "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5\
                 2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
            )
        );
    }

    /// Known answers for the whole CHK crypto path as upload runs it: plaintext hash,
    /// convergent key, storage index, AES-256-CTR ciphertext (IV zero, one keystream across
    /// segments) and ciphertext hash.
    ///
    /// The expected values were computed outside Rust, from the definitions in the module
    /// docs (`immutable/mod.rs`, "Cryptography"), with Python 3's `hashlib` and the
    /// `cryptography` package (48.0):
    ///
    /// ```text
    /// def H(tag, *parts):  # SHA-256 over u64be(len) ‖ bytes, for the tag and each part
    ///     h = hashlib.sha256(); t = tag.encode()
    ///     h.update(struct.pack(">Q", len(t))); h.update(t)
    ///     for p in parts: h.update(struct.pack(">Q", len(p))); h.update(p)
    ///     return h.digest()
    /// P = bytes((i*7+3) % 256 for i in range(200)); secret = bytes(range(32))
    /// ph  = H("folio:chk:plaintext:v1", P)
    /// key = H("folio:chk:key:v1", secret, struct.pack(">H", 3), struct.pack(">H", 10),
    ///         struct.pack(">Q", 192), ph)
    /// si  = H("folio:chk:storage-index:v1", key)[:16]
    /// ct  = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(P)
    /// ch  = H("folio:chk:ciphertext:v1", ct)
    /// ```
    ///
    /// and the ciphertext checked again with `openssl enc -aes-256-ctr -K <key> -iv 0...0
    /// -nosalt`. k ≠ N, so swapping them in the key derivation fails; so does any change of
    /// tag, order, length prefix or width; a no-op cipher, another mode or a keystream
    /// restarted per segment (two segments here: 192 + 8 bytes) fails the ciphertext check.
    #[test]
    fn convergent_key_and_ciphertext_known_answers() {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let plaintext: Vec<u8> = (0..200u32).map(|i| ((i * 7 + 3) % 256) as u8).collect();
        let g = Geometry::new(3, 10, 200, 192).unwrap();
        assert_eq!(g.num_segments, 2);

        let mut ph = plaintext_hasher(g.size);
        ph.update(&plaintext);
        let plaintext_hash = ph.finish();
        assert_eq!(
            plaintext_hash.to_vec(),
            hex("ab2b27438555e5463b1ba558b5cba27a2fdd6f47dd615ea18efa9f77f724de5d")
        );
        let key = derive_key(&secret, &g, &plaintext_hash);
        assert_eq!(
            key.to_vec(),
            hex("970444468db1713d5f348787d58ab6067027781f84c28558e2b5f565f5bc34a8")
        );
        assert_eq!(
            super::super::cap::storage_index_for(&key).to_vec(),
            hex("aceedd19fe879d90b261032bb2161d59")
        );

        let expected_ct = hex(
            "60b8909a60e7e94add36ad68d5af511820cff8f5fcd1dfbb9a73834e6f22ad58\
             a8c69b4b1a8f2191874ab94d789c48db48a1d28eab93e16338e69c295f88ab65\
             43f1aa9c7ff5aab54c86ac55cf90051d15c2b4907fb34c20e3828096135af99b\
             8ba47b160bb656461a86f3d4d8f4fd80f28d3b0f03e4491705b64699e9c87796\
             651cbd7eaa09a5845947e2af885b3c3415dad83b3f3858a29f2582b8f765beae\
             c5e09834ad671148070492a300b639d7d80fa3bca5451ca24f4839414e9c1567\
             1d4730afce2aeca5",
        );
        // The keystream alone, from the start of the file.
        let mut whole = plaintext.clone();
        cipher(&key).apply_keystream(&mut whole);
        assert_eq!(whole, expected_ct);

        // As upload runs it: segment by segment, encrypted in place, then erasure-coded.
        // Blocks 0..k of each segment are the (zero-padded) ciphertext cut in k pieces.
        let mut coder = SegmentCoder::new(g, &key);
        let mut primary = Vec::new();
        for i in 0..g.num_segments {
            let start = (i * g.segment_size) as usize;
            let mut segment = plaintext[start..start + g.segment_len(i) as usize].to_vec();
            let blocks = coder.push(&mut segment);
            assert_eq!(segment, expected_ct[start..start + segment.len()]);
            let mut joined: Vec<u8> = blocks[..3].concat();
            joined.truncate(segment.len());
            primary.extend_from_slice(&joined);
        }
        assert_eq!(primary, expected_ct);
        let (p_hash, c_hash) = coder.finish();
        assert_eq!(p_hash, plaintext_hash);
        assert_eq!(
            c_hash.to_vec(),
            hex("2853f9d82ab3af61da324e157f57ff1ffbce9abc02f3de5a84cfcb74fd2f0652")
        );
    }

    /// The download decodes a batch of segments in one call: that must be the same as
    /// decoding each segment's blocks, for blocks of any multiple of 64 bytes.
    #[test]
    fn decoding_concatenated_blocks_decodes_each() {
        let (k, n) = (3u16, 10u16);
        let mut codec = Codec::new(k, n);
        let sizes = [64usize, 1344, 128, 43_648, 640];
        let segs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(s, &bs)| (0..bs * 3 - 5).map(|i| (i * 13 + s * 7) as u8).collect())
            .collect();
        let encoded: Vec<Vec<Vec<u8>>> = segs
            .iter()
            .zip(sizes)
            .map(|(seg, bs)| codec.encode(seg, bs))
            .collect();
        let pick = [2u16, 6, 9];
        let joined: Vec<(u16, Vec<u8>)> = pick
            .iter()
            .map(|&p| {
                let cat: Vec<u8> = encoded.iter().flat_map(|e| e[p as usize].clone()).collect();
                (p, cat)
            })
            .collect();
        let total: usize = sizes.iter().sum();
        let out = codec.decode(&joined, total).unwrap();
        let mut at = 0;
        for (seg, bs) in segs.iter().zip(sizes) {
            let mut got = Vec::new();
            for j in 0..k as usize {
                got.extend_from_slice(&out[j * total + at..j * total + at + bs]);
            }
            assert_eq!(&got[..seg.len()], &seg[..]);
            at += bs;
        }
    }

    #[test]
    fn codec_round_trips_from_any_k_blocks() {
        for (k, n) in [(1u16, 1u16), (1, 3), (3, 3), (3, 10), (2, 5), (7, 9)] {
            let mut codec = Codec::new(k, n);
            let seg: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
            let bs = (seg.len().div_ceil(k as usize)).div_ceil(64) * 64;
            let blocks = codec.encode(&seg, bs);
            assert_eq!(blocks.len(), n as usize);
            // The last k blocks, and the first k.
            for pick in [
                (n - k..n).collect::<Vec<u16>>(),
                (0..k).collect::<Vec<u16>>(),
            ] {
                let given: Vec<(u16, Vec<u8>)> = pick
                    .iter()
                    .map(|&i| (i, blocks[i as usize].clone()))
                    .collect();
                let out = codec.decode(&given, bs).unwrap();
                assert_eq!(&out[..seg.len()], &seg[..], "k={k} n={n} {pick:?}");
            }
        }
    }
}
