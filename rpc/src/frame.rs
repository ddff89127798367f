//! Length-delimited frames inside the TLS stream.
//!
//! Every frame is a 4-byte big-endian payload length followed by that many bytes. The length
//! is checked against the receiver's limit **before** any buffer is sized for it, so a peer
//! that announces a 4 GiB frame costs four bytes of reading and a clear error, nothing more.
//!
//! [`FrameDecoder`] is the sans-I/O core (what the fuzz target drives); [`FrameReader`] and
//! [`FrameWriter`] are thin async wrappers around any byte stream.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// How much a reader asks of the stream at once when no frame is pending.
const READ_CHUNK: usize = 16 * 1024;

/// A reader whose buffer grew past this for a large frame gives the memory back once the
/// frame is consumed; below it the buffer is kept, so a stream of 64 KiB frames does not
/// reallocate for each one.
const SHRINK_ABOVE: usize = 256 * 1024 + HEADER_LEN;

/// Frames written with [`FrameWriter::write_encoded`] are gathered up to this many bytes, the
/// plaintext of one TLS record, and written together. Over TLS every write to the stream is
/// sealed as a record of its own and sent with a syscall of its own, so a batch of small
/// frames written one by one costs one AEAD seal and one `writev` each; gathered, they cost
/// one of each. Larger frames are written as they are, without a copy.
const BATCH_LEN: usize = 16 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes that arrived.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
    /// The payload is not the expected message.
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
    /// The underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The sans-I/O frame decoder: finds complete frames in a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_len: u32,
}

/// What [`FrameDecoder::decode`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame: its payload is `buf[HEADER_LEN..HEADER_LEN + len]`.
    Frame {
        /// Payload length.
        len: usize,
    },
    /// More bytes are needed: at least this many in total.
    Need(usize),
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max_len`.
    pub fn new(max_len: u32) -> Self {
        FrameDecoder { max_len }
    }

    /// The limit in force.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Looks at the front of `buf`. Never allocates; refuses an oversized frame as soon as
    /// its header is complete.
    pub fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(Decoded::Need(HEADER_LEN));
        };
        let len = u32::from_be_bytes(header.try_into().expect("four bytes"));
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len: len.into(),
                max: self.max_len,
            });
        }
        let need = HEADER_LEN + len as usize;
        if buf.len() < need {
            Ok(Decoded::Need(need))
        } else {
            Ok(Decoded::Frame { len: len as usize })
        }
    }
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `io`, refusing frames longer than `max_len`.
    pub fn new(io: R, max_len: u32) -> Self {
        FrameReader {
            io,
            decoder: FrameDecoder::new(max_len),
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// Changes the frame limit (the handshake uses a small one for the hello).
    pub fn set_max_len(&mut self, max_len: u32) {
        self.decoder = FrameDecoder::new(max_len);
    }

    /// The next frame's payload, or `None` at a clean end of stream between frames.
    pub async fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            match self.decoder.decode(&self.buf[self.start..self.end])? {
                Decoded::Frame { len } => {
                    let at = self.start + HEADER_LEN;
                    self.start = at + len;
                    return Ok(Some(&self.buf[at..at + len]));
                }
                Decoded::Need(need) => {
                    if !self.fill(need).await? {
                        let have = self.end - self.start;
                        return if have == 0 {
                            Ok(None)
                        } else {
                            Err(FrameError::Truncated { have, need })
                        };
                    }
                }
            }
        }
    }

    /// Whether the next frame is already buffered whole, so that [`FrameReader::next_frame`]
    /// returns it without reading from the stream.
    pub fn frame_buffered(&self) -> bool {
        matches!(
            self.decoder.decode(&self.buf[self.start..self.end]),
            Ok(Decoded::Frame { .. })
        )
    }

    /// Reads and decodes the next frame as a `T`; `None` at a clean end of stream.
    pub async fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_frame().await? {
            Some(payload) => Ok(Some(postcard::from_bytes(payload)?)),
            None => Ok(None),
        }
    }

    /// Reads more bytes so that at least `need` are buffered. Returns `false` at end of stream.
    /// The buffer only grows to `need` (bounded by the decoder's limit) or one read chunk.
    async fn fill(&mut self, need: usize) -> Result<bool, FrameError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // Give back the memory of an unusually large frame once it is consumed.
            if self.buf.len() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        }
        if self.start + need > self.buf.len() {
            // Move the partial frame to the front, then grow to fit it.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let want = need.max(READ_CHUNK.min(HEADER_LEN + self.decoder.max_len as usize));
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Gives back the stream; bytes already buffered are returned with it.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.start..self.end].to_vec();
        (self.io, rest)
    }
}

/// Writes frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    io: W,
    max_len: u32,
    scratch: Vec<u8>,
    /// Encoded frames not yet written (see [`BATCH_LEN`]).
    batch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `io`; frames longer than `max_len` (the peer's limit) are refused before sending.
    pub fn new(io: W, max_len: u32) -> Self {
        FrameWriter {
            io,
            max_len,
            scratch: Vec::new(),
            batch: Vec::new(),
        }
    }

    /// Changes the limit (after the hello tells us the peer's).
    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len;
    }

    /// Sends one frame and flushes it (after any frames queued before it).
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        self.scratch.clear();
        self.scratch.reserve(HEADER_LEN + payload.len());
        self.scratch.extend_from_slice(&[0; HEADER_LEN]);
        self.scratch.extend_from_slice(payload);
        self.write_scratch().await
    }

    /// Encodes `msg` with postcard and sends it as one frame.
    pub async fn send_message<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; HEADER_LEN]);
        let scratch = std::mem::take(&mut self.scratch);
        self.scratch = postcard::to_extend(msg, scratch)?;
        self.write_scratch().await
    }

    /// Queues a frame built by [`encode_frame`] (for batching): small frames are gathered
    /// and reach the stream together, at the latest on [`FrameWriter::flush`].
    pub async fn write_encoded(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        if self.batch.len() + frame.len() <= BATCH_LEN {
            self.batch.extend_from_slice(frame);
            return Ok(());
        }
        self.write_batch().await?;
        if frame.len() < BATCH_LEN {
            self.batch.extend_from_slice(frame);
        } else {
            self.io.write_all(frame).await?;
        }
        Ok(())
    }

    /// Writes the frames queued by [`FrameWriter::write_encoded`] and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.write_batch().await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn write_batch(&mut self) -> Result<(), FrameError> {
        if !self.batch.is_empty() {
            self.io.write_all(&self.batch).await?;
            self.batch.clear();
        }
        Ok(())
    }

    /// The limit in force (the peer's).
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    async fn write_scratch(&mut self) -> Result<(), FrameError> {
        let len = self.scratch.len() - HEADER_LEN;
        if len > self.max_len as usize {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_len,
            });
        }
        self.scratch[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        self.write_batch().await?;
        self.io.write_all(&self.scratch).await?;
        self.io.flush().await?;
        if self.scratch.capacity() > SHRINK_ABOVE {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Writes what is queued, then shuts the stream down (for TLS: sends close_notify).
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.write_batch().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.io
    }
}

/// Encodes `msg` as a complete frame (header included), refusing one longer than `max_len`.
pub fn encode_frame<T: Serialize>(msg: &T, max_len: u32) -> Result<Vec<u8>, FrameError> {
    encode_frame_sized(msg, max_len, 0)
}

/// [`encode_frame`] into a buffer made with room for `size_hint` payload bytes: a fair guess
/// saves the buffer's growing (and copying) step by step from nothing as postcard writes.
pub fn encode_frame_sized<T: Serialize>(
    msg: &T,
    max_len: u32,
    size_hint: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + size_hint);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    let mut out = postcard::to_extend(msg, buf)?;
    let len = out.len() - HEADER_LEN;
    if len > max_len as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: max_len,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::io::Builder;

    #[test]
    fn decoder_checks_length_before_payload() {
        let d = FrameDecoder::new(10);
        assert_eq!(d.decode(&[]).unwrap(), Decoded::Need(4));
        assert_eq!(d.decode(&[0, 0, 0]).unwrap(), Decoded::Need(4));
        assert_eq!(d.decode(&[0, 0, 0, 2, 9]).unwrap(), Decoded::Need(6));
        assert_eq!(
            d.decode(&[0, 0, 0, 2, 9, 9]).unwrap(),
            Decoded::Frame { len: 2 }
        );
        assert_eq!(d.decode(&[0, 0, 0, 0]).unwrap(), Decoded::Frame { len: 0 });
        // 4 GiB announced: refused from the header alone.
        assert!(matches!(
            d.decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 10
            })
        ));
    }

    #[tokio::test]
    async fn reads_frames_split_across_reads() {
        let io = Builder::new()
            .read(&[0, 0])
            .read(&[0, 3, b'a'])
            .read(&[b'b', b'c', 0, 0, 0, 1, b'z'])
            .build();
        let mut r = FrameReader::new(io, 100);
        assert_eq!(r.next_frame().await.unwrap().unwrap(), b"abc");
        assert_eq!(r.next_frame().await.unwrap().unwrap(), b"z");
        assert!(r.next_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_frame_refused_without_reading_it() {
        let io = Builder::new().read(&[0xff, 0xff, 0xff, 0xff]).build();
        let mut r = FrameReader::new(io, 1 << 20);
        assert!(matches!(
            r.next_frame().await,
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
        // The reader did not size a buffer for the announced frame.
        assert!(r.buf.len() <= READ_CHUNK);
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let io = Builder::new().read(&[0, 0, 0, 5, 1, 2]).build();
        let mut r = FrameReader::new(io, 100);
        assert!(matches!(
            r.next_frame().await,
            Err(FrameError::Truncated { have: 6, need: 9 })
        ));
    }

    #[tokio::test]
    async fn writer_refuses_frames_over_the_peer_limit() {
        let io = Builder::new().write(&[0, 0, 0, 2, 7, 8]).build();
        let mut w = FrameWriter::new(io, 2);
        w.send_frame(&[7, 8]).await.unwrap();
        assert!(matches!(
            w.send_frame(&[1, 2, 3]).await,
            Err(FrameError::TooLarge { len: 3, max: 2 })
        ));
    }

    /// Records each write it is given, as one piece.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_frames_are_written_together() {
        let a = encode_frame(&1u8, 100).unwrap();
        let b = encode_frame(&2u8, 100).unwrap();
        let big = vec![7u8; BATCH_LEN];
        let mut w = FrameWriter::new(Writes::default(), 1 << 20);
        w.write_encoded(&a).await.unwrap();
        w.write_encoded(&b).await.unwrap();
        assert!(
            w.get_ref().0.is_empty(),
            "nothing is written before it must be"
        );
        w.write_encoded(&big).await.unwrap();
        w.write_encoded(&a).await.unwrap();
        w.flush().await.unwrap();
        // The small frames in one write, ahead of the large one, which is written as it is.
        assert_eq!(w.get_ref().0, [[a.clone(), b].concat(), big, a]);
    }

    #[tokio::test]
    async fn message_round_trip() {
        let (a, b) = tokio::io::duplex(64);
        let mut w = FrameWriter::new(a, 1000);
        let mut r = FrameReader::new(b, 1000);
        w.send_message(&("hello", 7u32)).await.unwrap();
        let got: (String, u32) = r.next_message().await.unwrap().unwrap();
        assert_eq!(got, ("hello".to_string(), 7));
        w.send_frame(&[0xff]).await.unwrap();
        assert!(matches!(
            r.next_message::<(String, u32)>().await,
            Err(FrameError::Decode(_))
        ));
    }
}
