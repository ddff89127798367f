//! I2P reseed files (`i2pseeds.su3`, fetched from reseed servers that are treated as hostile).
//!
//! 1. The input as an su3 file to `parse_su3`: never panics; an accepted file is split into
//!    parts that tile it exactly (signed part then signature), within `MAX_SU3_FILE`.
//! 2. The input to `decode_reseed` against the test signer: it never panics, and it is
//!    refused unless it is, byte for byte, one of the seed files that signer signed (the
//!    signature covers every byte but itself, so no mutation of a signed file is accepted by
//!    chance).
//! 3. The input as a zip archive to `read_zip` (what `decode_reseed` reads once the signature
//!    is good): at most `MAX_ENTRIES` entries, each named `routerInfo-*.dat`, each at most
//!    `MAX_ENTRY_SIZE` bytes and all together at most `MAX_TOTAL_INFLATED`; the entries
//!    written again as a zip (`write_zip`, stored or deflated) read back equal.
#![no_main]

use folio_transports::i2p_embedded::su3::{
    decode_reseed, parse_su3, read_zip, write_zip, TrustedSigners, MAX_ENTRIES, MAX_ENTRY_SIZE,
    MAX_SU3_FILE, MAX_TOTAL_INFLATED,
};
use libfuzzer_sys::fuzz_target;

const CERT: &[u8] = include_bytes!("../../transports/testdata/test-reseed_at_folio.invalid.crt");
/// The seed files signed with the test signer's key.
const SIGNED: [&[u8]; 2] = [
    include_bytes!("../seeds/su3/reseed-3-routers.su3"),
    include_bytes!("../seeds/su3/reseed-empty.su3"),
];

fuzz_target!(|data: &[u8]| {
    if let Ok(su3) = parse_su3(data) {
        assert!(data.len() <= MAX_SU3_FILE);
        assert_eq!(su3.signed.len() + su3.signature.len(), data.len());
        assert!(su3.signed.len() >= 40 + su3.signer.len() + su3.content.len());
    }
    let mut trusted = TrustedSigners::none();
    trusted
        .add_pem("test-reseed@folio.invalid", CERT)
        .expect("the test certificate loads");
    if decode_reseed(data, &trusted).is_ok() {
        assert!(SIGNED.contains(&data), "an unsigned input was accepted");
    }

    if let Ok(entries) = read_zip(data) {
        assert!(entries.len() <= MAX_ENTRIES);
        let total: u64 = entries.iter().map(|e| e.bytes.len() as u64).sum();
        assert!(total <= MAX_TOTAL_INFLATED);
        for e in &entries {
            assert!(e.bytes.len() as u64 <= MAX_ENTRY_SIZE);
            assert!(e.name.starts_with("routerInfo-") && e.name.ends_with(".dat"));
            assert!(!e.name.contains('/'), "{:?}", e.name);
        }
        let files: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.bytes.clone()))
            .collect();
        for deflate in [false, true] {
            assert_eq!(read_zip(&write_zip(&files, deflate)).as_ref(), Ok(&entries));
        }
    }
});
