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
    #[error("undecodable message")]
    Decode(#[from] postcard::Error),
    /// The underlying stream failed.
    #[error("I/O error")]
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

    /// Reads more bytes towards `need` buffered. Returns `false` at end of stream.
    ///
    /// The buffer grows with the bytes that have arrived, not with the length a header
    /// announced: to one read chunk, then at most to twice what it holds, and never past
    /// `need` (which the decoder has bounded by the frame limit). A peer that announces a
    /// 1 MiB frame and sends nothing more holds one read chunk; one that sends it all costs
    /// a few doublings, and the buffer is kept for the next frame.
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
            // At least one read chunk (a header alone must not mean reads of four bytes),
            // then at most twice what has arrived, never past the frame.
            let floor = READ_CHUNK.min(HEADER_LEN + self.decoder.max_len as usize);
            let want = need.min(floor.max(2 * self.end)).max(floor);
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
    /// Frames held back to leave at the front of the next write.
    held: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `io`; frames longer than `max_len` (the peer's limit) are refused before sending.
    pub fn new(io: W, max_len: u32) -> Self {
        FrameWriter {
            io,
            max_len,
            scratch: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Changes the limit (after the hello tells us the peer's).
    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len;
    }

    /// Sends one frame and flushes it.
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        self.scratch.clear();
        self.scratch.reserve(HEADER_LEN + payload.len());
        self.scratch.extend_from_slice(&[0; HEADER_LEN]);
        self.scratch.extend_from_slice(payload);
        self.write_scratch(payload.len()).await
    }

    /// Encodes `msg` with postcard and sends it as one frame.
    pub async fn send_message<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.send_message_then(msg, &[]).await
    }

    /// Encodes `msg` with postcard as one frame and sends it with `encoded` (frames already
    /// encoded, as for [`FrameWriter::write_encoded`]) right behind it, in one write.
    pub async fn send_message_then<T: Serialize>(
        &mut self,
        msg: &T,
        encoded: &[u8],
    ) -> Result<(), FrameError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; HEADER_LEN]);
        let scratch = std::mem::take(&mut self.scratch);
        self.scratch = postcard::to_extend(msg, scratch)?;
        let len = self.scratch.len() - HEADER_LEN;
        self.scratch.extend_from_slice(encoded);
        self.write_scratch(len).await
    }

    /// Writes frames built by [`encode_frame`] or [`append_frame`], one or many back to back,
    /// without flushing. Over TLS each write to the stream is sealed as records of its own
    /// and sent with a syscall of its own, so frames that are ready together are best written
    /// with one call.
    pub async fn write_encoded(&mut self, frames: &[u8]) -> Result<(), FrameError> {
        self.write_behind_held(frames).await?;
        Ok(())
    }

    /// Encodes `msg` as one frame without sending it: it leaves at the front of the next
    /// write, whichever method makes it, or with the stream from [`FrameWriter::into_parts`].
    pub(crate) fn hold_message<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let at = self.held.len();
        self.held.extend_from_slice(&[0; HEADER_LEN]);
        let held = std::mem::take(&mut self.held);
        self.held = postcard::to_extend(msg, held)?;
        let len = self.held.len() - at - HEADER_LEN;
        if len > self.max_len as usize {
            self.held.truncate(at);
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_len,
            });
        }
        self.held[at..at + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Writes `bytes`, behind the held frames if there are any, in one write.
    async fn write_behind_held(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.held.is_empty() {
            return self.io.write_all(bytes).await;
        }
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(bytes);
        self.io.write_all(&all).await
    }

    /// Flushes frames written with [`FrameWriter::write_encoded`].
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.io.flush().await?;
        Ok(())
    }

    /// The limit in force (the peer's).
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Writes the scratch buffer: a frame of `len` bytes whose header is still to be filled
    /// in, and whatever follows it.
    async fn write_scratch(&mut self, len: usize) -> Result<(), FrameError> {
        if len > self.max_len as usize {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_len,
            });
        }
        self.scratch[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        let scratch = std::mem::take(&mut self.scratch);
        let written = self.write_behind_held(&scratch).await;
        self.scratch = scratch;
        written?;
        self.io.flush().await?;
        if self.scratch.capacity() > SHRINK_ABOVE {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Shuts the stream down (for TLS: sends close_notify).
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.io.shutdown().await?;
        Ok(())
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.io
    }

    /// Gives back the stream, with the frames held back by [`FrameWriter::hold_message`]
    /// (encoded, to be written before anything else).
    pub(crate) fn into_parts(self) -> (W, Vec<u8>) {
        (self.io, self.held)
    }
}

/// Encodes `msg` as a complete frame (header included), refusing one longer than `max_len`.
pub fn encode_frame<T: Serialize>(msg: &T, max_len: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    append_frame(&mut out, msg, max_len)?;
    Ok(out)
}

/// Encodes `msg` as a complete frame at the end of `out`, after the frames already there.
/// Refuses a frame longer than `max_len`; on any error `out` is left as it was.
pub fn append_frame<T: Serialize>(
    out: &mut Vec<u8>,
    msg: &T,
    max_len: u32,
) -> Result<(), FrameError> {
    append_frame_lending(out, msg, max_len, &[]).map(|_| ())
}

/// Encodes `msg` as [`append_frame`] does, except for the bytes of `lent`, a byte-string field
/// of `msg` (encoded with `serialize_bytes`, as the messages' payload fields are): they are
/// left out of `out`, though the frame's length counts them. Returns where in `out` they
/// belong (the frame goes on there with them, then with the rest of `out`), or `None` if
/// `msg` did not encode them, in which case nothing was left out. This is how a large
/// payload reaches the stream without being copied into the queue of frames first.
///
/// The field is recognised by its address and length, not its content: an empty `lent` is
/// never left out.
pub(crate) fn append_frame_lending<T: Serialize>(
    out: &mut Vec<u8>,
    msg: &T,
    max_len: u32,
    lent: &[u8],
) -> Result<Option<usize>, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let flavor = AppendTo {
        out,
        lend: (!lent.is_empty()).then_some(lent),
        lent_at: None,
    };
    let encoded = postcard::serialize_with_flavor(msg, flavor);
    let lent_at = encoded.as_ref().ok().copied().flatten();
    let len = out.len() - start - HEADER_LEN + lent_at.map_or(0, |_| lent.len());
    let checked = match encoded {
        Err(e) => Err(FrameError::from(e)),
        Ok(_) if len > max_len as usize => Err(FrameError::TooLarge {
            len: len as u64,
            max: max_len,
        }),
        Ok(_) => Ok(()),
    };
    match checked {
        Ok(()) => {
            out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
            Ok(lent_at)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// A postcard output that appends to a borrowed `Vec` (postcard's own `to_extend` takes the
/// vector by value and loses it on an error), leaving out the first write of exactly the
/// bytes of `lend` (the same address and length) and noting where it would have gone.
struct AppendTo<'a, 'l> {
    out: &'a mut Vec<u8>,
    lend: Option<&'l [u8]>,
    lent_at: Option<usize>,
}

impl postcard::ser_flavors::Flavor for AppendTo<'_, '_> {
    type Output = Option<usize>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if let Some(lend) = self.lend {
            if std::ptr::eq(bytes, lend) {
                self.lent_at = Some(self.out.len());
                self.lend = None;
                return Ok(());
            }
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Option<usize>> {
        Ok(self.lent_at)
    }
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

    /// A header announcing a large frame sizes nothing: the buffer follows the bytes that
    /// arrive, at most doubling, so a peer that announces 1 MiB and stops holds one chunk.
    #[tokio::test]
    async fn an_announced_frame_does_not_size_the_buffer() {
        let (mut tx, rx) = tokio::io::duplex(4 * 1024 * 1024);
        let mut r = FrameReader::new(rx, 1 << 20);
        tx.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        tx.write_all(&[7; 100]).await.unwrap();
        let silent = tokio::time::timeout(std::time::Duration::from_millis(50), r.next_frame());
        assert!(silent.await.is_err(), "the frame is not complete");
        assert!(r.buf.len() <= READ_CHUNK, "{} bytes held", r.buf.len());
        // A quarter arrives: the buffer follows what arrived, not what was announced.
        tx.write_all(&vec![7; (256 << 10) - 100]).await.unwrap();
        let partial = tokio::time::timeout(std::time::Duration::from_millis(50), r.next_frame());
        assert!(partial.await.is_err(), "the frame is not complete");
        assert!(
            r.buf.len() <= 2 * (HEADER_LEN + (256 << 10)),
            "{} bytes held for 256 KiB received",
            r.buf.len()
        );
        // The rest arrives, and the frame is whole.
        tx.write_all(&vec![7; 768 << 10]).await.unwrap();
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), r.next_frame())
            .await
            .expect("the frame completes")
            .unwrap()
            .unwrap();
        assert_eq!(frame.len(), 1 << 20);
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

    #[test]
    fn frames_append_back_to_back_and_failures_leave_no_trace() {
        let mut out = Vec::new();
        append_frame(&mut out, &("ab", 1u8), 10).unwrap();
        append_frame(&mut out, &7u8, 10).unwrap();
        assert_eq!(out, [0, 0, 0, 4, 2, b'a', b'b', 1, 0, 0, 0, 1, 7]);
        assert_eq!(out[..8], encode_frame(&("ab", 1u8), 10).unwrap());
        assert!(matches!(
            append_frame(&mut out, &[0u8; 11], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        assert_eq!(out.len(), 13);
    }

    /// A lent field is left out where it belongs, and the frame with it put back is the
    /// frame `append_frame` makes; a slice with the same content elsewhere is not lent.
    #[test]
    fn a_lent_field_is_left_out_where_it_belongs() {
        let payload = vec![9u8; 300];
        let msg = (7u8, serde_bytes::Bytes::new(&payload), "tail");
        let mut whole = vec![1, 2];
        append_frame(&mut whole, &msg, 1000).unwrap();
        let mut out = vec![1, 2];
        let at = append_frame_lending(&mut out, &msg, 1000, &payload)
            .unwrap()
            .expect("the payload was lent");
        let mut joined = out[..at].to_vec();
        joined.extend_from_slice(&payload);
        joined.extend_from_slice(&out[at..]);
        assert_eq!(joined, whole);
        // Equal bytes at another address are copied as usual.
        let twin = payload.clone();
        let mut copied = vec![1, 2];
        assert_eq!(
            append_frame_lending(&mut copied, &msg, 1000, &twin).unwrap(),
            None
        );
        assert_eq!(copied, whole);
        // The limit counts the lent bytes.
        let mut refused = vec![1, 2];
        assert!(matches!(
            append_frame_lending(&mut refused, &msg, 300, &payload),
            Err(FrameError::TooLarge { max: 300, .. })
        ));
        assert_eq!(refused, [1, 2]);
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
