//! The sans-I/O frame decoder over a stream of frames. Input: 4 bytes choosing the limit
//! (little-endian u32, capped at 1 MiB), then the stream.
#![no_main]

use folio_rpc::frame::{Decoded, FrameDecoder, FrameError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((limit, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max = u32::from_le_bytes(*limit).min(1 << 20);
    let decoder = FrameDecoder::new(max);
    assert_eq!(decoder.max_len(), max);
    loop {
        let announced = rest
            .first_chunk::<HEADER_LEN>()
            .map(|h| u32::from_be_bytes(*h));
        match decoder.decode(rest) {
            Ok(Decoded::Frame { len }) => {
                assert!(len <= max as usize, "frame of {len} over the {max} limit");
                assert_eq!(announced, Some(len as u32));
                let end = HEADER_LEN + len;
                assert!(end <= rest.len(), "frame of {len} with {} bytes", rest.len());
                // Exactly the frame's bytes suffice; one fewer asks for exactly them.
                assert_eq!(decoder.decode(&rest[..end]).unwrap(), Decoded::Frame { len });
                if len > 0 {
                    assert_eq!(decoder.decode(&rest[..end - 1]).unwrap(), Decoded::Need(end));
                }
                rest = &rest[end..];
            }
            Ok(Decoded::Need(n)) => {
                assert!(n > rest.len(), "Need({n}) with {} bytes in hand", rest.len());
                assert!(n <= HEADER_LEN + max as usize, "Need({n}) over the limit");
                break;
            }
            Err(FrameError::TooLarge { len, max: m }) => {
                assert_eq!(m, max);
                assert!(len > u64::from(max));
                assert_eq!(announced.map(u64::from), Some(len));
                break;
            }
            Err(e) => panic!("the decoder refused something other than an oversized frame: {e}"),
        }
    }
});
