//! A version's shares: the signed header, then an immutable (CHK) share of the encrypted
//! content as the body.
//!
//! A version of `size` plaintext bytes is encrypted with AES-256-CTR under its data key
//! `K = H("folio:mut:data-key:v1"; R, salt)` (a fresh salt per version, so each key encrypts
//! one plaintext) and erasure-coded k-of-N exactly as an immutable file is, with the
//! segment size [`EncodingParams::segment_size_for`] gives; share `n` of that CHK file is
//! the body of mutable share `n`. The UEB hash of the CHK file is in the signed prefix, so
//! one signature covers the whole version: the verifying key checks the prefix, the UEB
//! hash starts the immutable chain (UEB → share tree → block tree → blocks), and the
//! ciphertext hash in the UEB checks the decoded file. An empty version has no body.
//!
//! Every share of a version must fit one storage call (`MAX_CHUNK`, 512 KiB, with the
//! 80-byte test specimen that goes with it): [`max_mutable_size`] is the largest file
//! that does for given parameters (1,568,832 bytes at 3-of-10).

use super::cap::{MutReadCap, MutVerifyCap, MutWriteCap};
use super::share::{MutShareHeader, ShareHeaderError, SignedPrefix, HEADER_LEN, PREFIX_LEN};
use crate::immutable::{
    parse_share, ChkCap, EncodingParams, Geometry, SegmentCoder, ShareAssembler, ShareError,
    ShareFront, ShareLayout,
};
use crate::storage::MAX_CHUNK;

/// Why a mutable share was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutShareError {
    /// The header is malformed or its signature does not verify.
    #[error(transparent)]
    Header(#[from] ShareHeaderError),
    /// The header names another share than the one the server listed.
    #[error("the share says it is share {found}, the server listed it as {expected}")]
    WrongShareNumber {
        /// The server's share number.
        expected: u16,
        /// The header's.
        found: u16,
    },
    /// The share's length is not its header's plus its body's.
    #[error("the share has {found} bytes; its header says {expected}")]
    Length {
        /// `160 + body length`.
        expected: u64,
        /// The bytes there are.
        found: u64,
    },
    /// The body is not the CHK share the signed prefix describes.
    #[error("the share's body: {0}")]
    Body(#[source] ShareError),
}

/// The largest plaintext a mutable file may hold with `params`' k and N: every share of a
/// version, with its header and the test specimen sent with it, fits one storage call.
pub fn max_mutable_size(params: &EncodingParams) -> u64 {
    let fits =
        |size: u64| share_len(params, size).is_some_and(|len| len + PREFIX_LEN as u64 <= MAX_CHUNK);
    // Share length grows with size: binary search for the last size that fits.
    let (mut lo, mut hi) = (0u64, MAX_CHUNK * u64::from(params.needed));
    if fits(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The whole length of one share of a version of `size` bytes (`None`: parameters out of
/// range).
fn share_len(params: &EncodingParams, size: u64) -> Option<u64> {
    if size == 0 {
        return Some(HEADER_LEN as u64);
    }
    let g = Geometry::new(
        params.needed,
        params.total,
        size,
        params.segment_size_for(size),
    )
    .ok()?;
    Some(HEADER_LEN as u64 + ShareLayout::new(g).end)
}

/// The CHK cap of a version's body: what the body's immutable checks run against. A
/// verifier without the read key passes `key = [0; 32]` (the checks never use it).
fn body_cap(prefix: &SignedPrefix, key: [u8; 32]) -> ChkCap {
    ChkCap {
        key,
        ueb_hash: prefix.ueb_hash,
        needed: prefix.needed,
        total: prefix.total,
        size: prefix.size,
    }
}

/// Encodes `plaintext` as version `seqnum` of the file `cap` writes, k-of-N as `params`
/// says, under `salt`: its prefix and the bytes of its N signed shares, indexed by share
/// number. The caller checks the size against [`max_mutable_size`] first.
pub(crate) fn encode_version(
    cap: &MutWriteCap,
    params: &EncodingParams,
    seqnum: u64,
    salt: [u8; 16],
    plaintext: &[u8],
) -> Result<(SignedPrefix, Vec<Vec<u8>>), ShareError> {
    let (k, n) = (params.needed, params.total);
    let size = plaintext.len() as u64;
    let mut bodies: Vec<Vec<u8>> = vec![Vec::new(); n as usize];
    let mut ueb_hash = [0u8; 32];
    if size > 0 {
        let g = Geometry::new(k, n, size, params.segment_size_for(size))?;
        let key = cap.read_cap().data_key(&salt);
        let mut coder = SegmentCoder::new(g, &key);
        let mut assembler = ShareAssembler::new(g, MAX_CHUNK as usize);
        let mut put = |writes: Vec<crate::immutable::ShareWrite>| {
            for w in writes {
                let body = &mut bodies[w.shnum as usize];
                let end = w.offset as usize + w.data.len();
                if body.len() < end {
                    body.resize(end, 0);
                }
                body[w.offset as usize..end].copy_from_slice(&w.data);
            }
        };
        let mut segment = Vec::new();
        for i in 0..g.num_segments {
            let start = (i * g.segment_size) as usize;
            segment.clear();
            segment.extend_from_slice(&plaintext[start..start + g.segment_len(i) as usize]);
            put(assembler.push(coder.push(&mut segment)));
        }
        let (_, ciphertext_hash) = coder.finish();
        let (writes, ueb) = assembler.finish(ciphertext_hash);
        put(writes);
        ueb_hash = ueb.hash();
    }
    let prefix = SignedPrefix {
        needed: k,
        total: n,
        seqnum,
        salt,
        size,
        ueb_hash,
    };
    let shares = bodies
        .into_iter()
        .enumerate()
        .map(|(shnum, body)| {
            let header = MutShareHeader::signed(prefix, cap, shnum as u16, body.len() as u64);
            let mut share = Vec::with_capacity(HEADER_LEN + body.len());
            share.extend_from_slice(&header.encode());
            share.extend_from_slice(&body);
            share
        })
        .collect();
    Ok((prefix, shares))
}

/// Checks a whole mutable share, as read from the server that listed it as `shnum`: the
/// header, its signature with `cap`'s key over `cap`'s storage index, the share number, the
/// exact length, and the whole body against the signed prefix (front, UEB hash, every
/// block). Returns the header and, for a non-empty version, the body's front. Never panics;
/// allocates at most the size of the block hash tree it recomputes.
pub fn parse_mut_share(
    b: &[u8],
    cap: &MutVerifyCap,
    shnum: u16,
) -> Result<(MutShareHeader, Option<ShareFront>), MutShareError> {
    let header = MutShareHeader::decode(b)?;
    header.verify(cap)?;
    if header.shnum != shnum {
        return Err(MutShareError::WrongShareNumber {
            expected: shnum,
            found: header.shnum,
        });
    }
    let expected = HEADER_LEN as u64 + header.body_len;
    if b.len() as u64 != expected {
        return Err(MutShareError::Length {
            expected,
            found: b.len() as u64,
        });
    }
    if header.body_len == 0 {
        return Ok((header, None));
    }
    let body = &b[HEADER_LEN..];
    let chk = body_cap(&header.prefix, [0; 32]);
    ShareFront::decode_for(body, &chk, shnum).map_err(MutShareError::Body)?;
    let front = parse_share(body).map_err(MutShareError::Body)?;
    Ok((header, Some(front)))
}

/// The plaintext of a version from k or more of its shares, each already accepted by
/// [`parse_mut_share`] for that version (`front` is one of their fronts).
pub(crate) fn decode_version(
    cap: &MutReadCap,
    prefix: &SignedPrefix,
    front: Option<&ShareFront>,
    shares: &[(u16, &[u8])],
) -> Result<Vec<u8>, crate::immutable::DownloadError> {
    let Some(front) = front else {
        return Ok(Vec::new());
    };
    let chk = body_cap(prefix, cap.data_key(&prefix.salt));
    let bodies: Vec<(u16, &[u8])> = shares
        .iter()
        .map(|&(n, b)| (n, b.get(HEADER_LEN..).unwrap_or_default()))
        .collect();
    crate::immutable::decode_in_memory(&chk, front, &bodies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutable::MutKind;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn round_trip(k: u16, n: u16, len: usize) {
        let params = EncodingParams::new(k, k, n).unwrap();
        let cap = MutWriteCap::generate(MutKind::File);
        let plaintext = data(len);
        let (prefix, shares) = encode_version(&cap, &params, 5, [3; 16], &plaintext).unwrap();
        assert_eq!(shares.len(), n as usize);
        assert_eq!(prefix.seqnum, 5);
        let vc = cap.verify_cap();
        let mut front = None;
        for (i, s) in shares.iter().enumerate() {
            let (h, f) = parse_mut_share(s, &vc, i as u16).unwrap();
            assert_eq!(h.prefix, prefix);
            front = f;
        }
        // The last k shares (recovery shares when N > k) decode it.
        let picked: Vec<(u16, &[u8])> = shares
            .iter()
            .enumerate()
            .rev()
            .take(k as usize)
            .map(|(i, s)| (i as u16, s.as_slice()))
            .collect();
        let out = decode_version(&cap.read_cap(), &prefix, front.as_ref(), &picked).unwrap();
        assert_eq!(out, plaintext, "k={k} n={n} len={len}");
    }

    #[test]
    fn versions_round_trip() {
        for (k, n) in [(1, 1), (3, 10), (2, 9)] {
            for len in [0, 1, 56, 192, 5000, 300_000] {
                round_trip(k, n, len);
            }
        }
    }

    #[test]
    fn the_largest_version_fits_one_call_and_one_more_byte_does_not() {
        let params = EncodingParams::default();
        let max = max_mutable_size(&params);
        assert_eq!(
            max, 1_568_832,
            "the design's figure (mutable-files-maxsize.py)"
        );
        assert!(share_len(&params, max).unwrap() + PREFIX_LEN as u64 <= MAX_CHUNK);
        assert!(share_len(&params, max + 1).unwrap() + PREFIX_LEN as u64 > MAX_CHUNK);
        let one = EncodingParams::new(1, 1, 4).unwrap();
        assert_eq!(max_mutable_size(&one), 523_584);
        round_trip(3, 10, max as usize);
    }

    #[test]
    fn every_damage_is_refused() {
        let params = EncodingParams::default();
        let cap = MutWriteCap::generate(MutKind::File);
        let (_, shares) = encode_version(&cap, &params, 1, [1; 16], &data(3000)).unwrap();
        let vc = cap.verify_cap();
        let share = &shares[2];
        // One flipped bit anywhere: header (signature or field), body front, blocks, tree.
        for at in (0..share.len())
            .step_by(37)
            .chain([0, 79, 80, 143, 159, share.len() - 1])
        {
            let mut bad = share.clone();
            bad[at] ^= 0x10;
            assert!(
                parse_mut_share(&bad, &vc, 2).is_err(),
                "flip at {at} accepted"
            );
        }
        assert!(matches!(
            parse_mut_share(share, &vc, 3),
            Err(MutShareError::WrongShareNumber {
                expected: 3,
                found: 2
            })
        ));
        assert!(matches!(
            parse_mut_share(&share[..share.len() - 1], &vc, 2),
            Err(MutShareError::Length { .. })
        ));
        let mut long = share.clone();
        long.push(0);
        assert!(matches!(
            parse_mut_share(&long, &vc, 2),
            Err(MutShareError::Length { .. })
        ));
        let other = MutWriteCap::generate(MutKind::File).verify_cap();
        assert!(matches!(
            parse_mut_share(share, &other, 2),
            Err(MutShareError::Header(ShareHeaderError::BadSignature))
        ));
        for cut in [0, 1, 80, 159] {
            assert!(parse_mut_share(&share[..cut], &vc, 2).is_err());
        }
    }

    #[test]
    fn each_version_has_its_own_key() {
        let cap = MutWriteCap::generate(MutKind::File);
        let r = cap.read_cap();
        assert_ne!(r.data_key(&[1; 16]), r.data_key(&[2; 16]));
        // Same plaintext, another salt: other bodies.
        let params = EncodingParams::default();
        let (_, a) = encode_version(&cap, &params, 1, [1; 16], &data(100)).unwrap();
        let (_, b) = encode_version(&cap, &params, 1, [2; 16], &data(100)).unwrap();
        assert_ne!(a[0][HEADER_LEN..], b[0][HEADER_LEN..]);
    }
}
