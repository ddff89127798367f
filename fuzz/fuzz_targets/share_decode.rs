//! Shares as a storage server might return them: the immutable header, UEB and whole-share
//! decoders, and the mutable share header's, never panic on any bytes; whatever they accept
//! re-encodes to the same bytes, and a share accepted whole is consistent with its front and
//! its layout. A mutable header is also checked against a fixed verify cap (the known-answer
//! one of node/src/mutable), which must refuse or accept without panicking, and so is the
//! whole mutable share (`parse_mut_share`: header, signature, length, body).
#![no_main]

use folio_node::immutable::{
    parse_share, ChkCap, ShareFront, ShareHeader, ShareLayout, Ueb, HEADER_LEN, UEB_LEN,
};
use folio_node::mutable::{
    parse_mut_share, MutCap, MutShareHeader, SignedPrefix, HEADER_LEN as MUT_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

/// The verify cap of the known-answer write secret (bytes 0..32).
const VERIFY_CAP: &str = "folio:MUT-V:45inu73c2symh4rjwafv34fdmm:\
                          ooa6hfq5yod3dhx7imbzmodo6vpq3fmsy7rojxazvexsgvpwjqua";

fuzz_target!(|data: &[u8]| {
    mutable_header(data);
    if let Ok(h) = ShareHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..HEADER_LEN as usize]);
    }
    if data.len() as u64 == UEB_LEN {
        if let Ok(u) = Ueb::decode(data) {
            assert_eq!(&u.encode()[..], data);
            let layout = ShareLayout::new(u.geometry);
            assert!(layout.end >= layout.tree_offset && layout.tree_offset > layout.blocks_offset);
        }
    }
    let front = ShareFront::decode(data);
    if let Ok(f) = &front {
        // A front that decodes is the front of a share of its own UEB, for its own cap.
        let cap = ChkCap {
            key: [0; 32],
            ueb_hash: f.ueb.hash(),
            needed: f.ueb.geometry.needed,
            total: f.ueb.geometry.total,
            size: f.ueb.geometry.size,
        };
        let again = ShareFront::decode_for(data, &cap, f.header.shnum).expect("decode_for agrees");
        assert_eq!(&again, f);
        assert_eq!(f.header, f.layout.header(f.header.shnum));
    }
    if let Ok(f) = parse_share(data) {
        assert_eq!(Ok(&f), front.as_ref());
        assert_eq!(f.layout.end, data.len() as u64);
    }
});

fn mutable_header(data: &[u8]) {
    let prefix = SignedPrefix::decode(data);
    let Ok(h) = MutShareHeader::decode(data) else {
        return;
    };
    assert_eq!(&h.encode()[..], &data[..h.encode().len()]);
    assert_eq!(prefix.as_ref(), Ok(&h.prefix), "the prefix reads alike alone");
    assert_eq!(&h.prefix.encode()[..], &data[..h.prefix.encode().len()]);
    let Ok(MutCap::Verify(cap)) = VERIFY_CAP.parse::<MutCap>() else {
        panic!("the fixed verify cap does not parse");
    };
    // Any outcome but a panic. A header that verifies stops verifying with one bit of its
    // signature changed (no second signature for one message).
    if h.verify(&cap).is_ok() {
        let mut other = h;
        other.signature[0] ^= 1;
        assert!(other.verify(&cap).is_err(), "a changed signature verified");
    }
    // The whole share: accepted only as a header with exactly its body, checked.
    if let Ok((whole, front)) = parse_mut_share(data, &cap, h.shnum) {
        assert_eq!(whole, h);
        assert_eq!(data.len() as u64, MUT_HEADER_LEN as u64 + h.body_len);
        assert_eq!(front.is_some(), h.body_len > 0);
        if let Some(f) = front {
            assert_eq!(f.layout.end, h.body_len);
        }
    }
}
