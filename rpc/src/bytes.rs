//! [`Bytes`]: a byte string that travels as one block.
//!
//! serde encodes a `Vec<u8>` as a sequence of separate `u8` elements, and decodes it one
//! element at a time. For bulk data (share blocks, file segments) use `Bytes` in interface
//! signatures instead: the same postcard wire form (a varint length, then the bytes), but
//! encoded and decoded with one copy.
//!
//! Both directions go through `serde_bytes` (`serialize_bytes` / `deserialize_byte_buf`),
//! which the protocol's own messages also use for their borrowed `&[u8]` payload fields:
//! postcard hands out a slice of the input, so nothing is allocated and nothing is read
//! beyond the frame.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

/// A byte string for interface signatures; derefs to `Vec<u8>`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_wire_form_as_vec_u8() {
        let v: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let as_vec = postcard::to_allocvec(&v).unwrap();
        let as_bytes = postcard::to_allocvec(&Bytes(v.clone())).unwrap();
        assert_eq!(as_vec, as_bytes);
        assert_eq!(postcard::from_bytes::<Bytes>(&as_vec).unwrap().0, v);
        assert_eq!(postcard::from_bytes::<Vec<u8>>(&as_bytes).unwrap(), v);
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Borrowed<'a> {
        #[serde(borrow, with = "serde_bytes")]
        b: &'a [u8],
    }

    #[test]
    fn borrowed_has_the_wire_form_of_a_sequence_and_decodes_in_place() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let as_seq = postcard::to_allocvec(&(v.as_slice(),)).unwrap();
            let as_bytes = postcard::to_allocvec(&Borrowed { b: &v }).unwrap();
            assert_eq!(as_seq, as_bytes, "length {len}");
            let back: Borrowed<'_> = postcard::from_bytes(&as_bytes).unwrap();
            assert_eq!(back.b, &v[..]);
            // A slice of the input, not a copy.
            assert!(len == 0 || as_bytes.as_ptr_range().contains(&back.b.as_ptr()));
            // A length past the end of the input is refused, not allocated for.
            assert!(postcard::from_bytes::<Borrowed<'_>>(&as_bytes[..as_bytes.len() - 1]).is_err());
        }
    }
}
