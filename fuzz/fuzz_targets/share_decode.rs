//! Immutable shares as a storage server might return them: the header, UEB and whole-share
//! decoders never panic on any bytes; whatever they accept re-encodes to the same bytes,
//! and a share accepted whole is consistent with its front and its layout.
#![no_main]

use folio_node::immutable::{
    parse_share, ChkCap, ShareFront, ShareHeader, ShareLayout, Ueb, HEADER_LEN, UEB_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
