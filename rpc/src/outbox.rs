//! The frames waiting for a connection's writer task, bounded by the write budget.
//!
//! Frames are encoded straight into one shared buffer, and the writer takes the whole buffer
//! at once: whatever was queued while it was busy leaves in one write, which over TLS means
//! one record sealed (per 16 KiB) and one syscall instead of one of each per frame. A channel
//! of frames would cost, for every frame, an allocation, a push and a pop, and a semaphore
//! for the budget (whose release takes a lock); here a frame costs one append under a lock
//! held only while it is encoded, and the writer is woken only when the buffer stops being
//! empty.
//!
//! The budget counts the bytes queued plus those the writer has taken and not yet written.
//! A frame is accepted while the total stays within it, and always when nothing is waiting
//! (so that a frame larger than the budget can still be sent, alone).
//!
//! **Who writes.** The outbox also holds the stream's write half ([`Outbox::attach`]), behind
//! a lock of its own, and whoever holds that lock writes: the writer task
//! ([`Outbox::run_writer`]), or the task that queued a frame, at once ([`Outbox::write_now`]).
//! Either way the bytes leave in queue order, taken whole from the queue. Writing at once
//! saves waking the writer task, which on a round trip is a task switch on each end; the
//! connection uses it where no more frames are about to follow (a caller with no other call
//! outstanding, the reader once it has handled every frame it received) and leaves batches
//! to the writer task. A write that cannot finish at once is left where it stopped, with the
//! writer task's waker registered on the stream, and the writer task finishes it. Only the
//! writer task says goodbye and shuts the stream.
//!
//! **Large payloads are lent, not copied.** A call's arguments or an answer's value of
//! [`LEND_FROM`] bytes or more ([`Payload`]) stay in the buffer they were encoded into: the
//! queue keeps the frame's other bytes and, beside them, a shared handle on the payload and
//! where it belongs, and the writer hands the pieces to the stream in order with one vectored
//! write. Over TLS, rustls seals records straight from those pieces, so a payload is copied
//! once on its way out (into the record it is sealed in) rather than twice.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::Notify;

use crate::frame::{append_frame, append_frame_lending, FrameError};
use crate::message::Message;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The message does not encode, or its frame exceeds the peer's limit.
    Encode(FrameError),
    /// The connection's budget has no room for the frame now.
    Full,
    /// The Tub-wide budget ([`Budget`]) has no room for the frame now, though this
    /// connection's own has.
    TubFull,
    /// The connection is closing: nothing more is sent.
    Closed,
}

/// What [`State::take`] hands a writer.
#[derive(Debug)]
enum Taken {
    /// Frames, now in the writer's buffer.
    Frames,
    /// The connection is closing, and every frame queued before has been taken: send this
    /// goodbye frame, if any, and shut the stream.
    Close(Option<Vec<u8>>),
}

/// A Tub-wide budget of bytes, shared by the outboxes of all its connections (and by the
/// queues of inbound calls waiting for a slot): `TubConfig::max_buffered_bytes`.
#[derive(Debug)]
pub(crate) struct Budget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` bytes (at least 1).
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            used: std::sync::atomic::AtomicUsize::new(0),
            max: max.max(1),
        }
    }

    /// Takes `n` bytes if they fit.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u.saturating_add(n) <= self.max).then_some(u + n)
            })
            .is_ok()
    }

    /// Whether `n` more bytes would fit now.
    pub(crate) fn fits(&self, n: usize) -> bool {
        self.used.load(Ordering::SeqCst).saturating_add(n) <= self.max
    }

    /// Takes `n` bytes whether or not they fit (a frame always goes into an empty queue).
    pub(crate) fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::SeqCst);
    }

    /// Gives back `n` bytes.
    pub(crate) fn give(&self, n: usize) {
        if n > 0 {
            let before = self.used.fetch_sub(n, Ordering::SeqCst);
            debug_assert!(before >= n, "gave back {n} of {before} bytes taken");
        }
    }

    /// Bytes taken now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

/// Payloads of at least this many bytes are lent to the outbox rather than copied into its
/// queue. Below it a copy costs less than the handle and the extra piece in the write; it is
/// also the largest encoding buffer kept for reuse (`crate::object::recycle`).
pub(crate) const LEND_FROM: usize = 4096;

/// A payload lent to the outbox: shared until the writer has handed it to the stream.
pub(crate) type Lent = Arc<Vec<u8>>;

/// An encoded payload (a call's arguments, an answer's value) on its way into a frame: a
/// large one is shared with the outbox ([`Outbox::push_lending`]), a small one is copied
/// into the queue like the frame's other fields.
pub(crate) enum Payload {
    /// Copied into the queue; the buffer is reused for the next encoding.
    Copied(Vec<u8>),
    /// Lent to the outbox, which writes it from here.
    Lent(Lent),
}

impl Payload {
    /// Wraps an encoded payload, to be lent if it is large.
    pub(crate) fn new(bytes: Vec<u8>) -> Payload {
        if bytes.len() >= LEND_FROM {
            Payload::Lent(Arc::new(bytes))
        } else {
            Payload::Copied(bytes)
        }
    }

    /// The payload's bytes, for the message that carries them.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Copied(b) => b,
            Payload::Lent(b) => b,
        }
    }

    /// What to lend the outbox along with the message, if anything.
    pub(crate) fn lent(&self) -> Option<&Lent> {
        match self {
            Payload::Copied(_) => None,
            Payload::Lent(b) => Some(b),
        }
    }

    /// Done with: a small buffer goes back for reuse.
    pub(crate) fn recycle(self) {
        if let Payload::Copied(b) = self {
            crate::object::recycle(b);
        }
    }
}

/// Frames back to back, as they are to be written: their encoded bytes, with the payloads
/// lent to the outbox left out of them and kept beside, each with the offset in `bytes`
/// where it belongs (offsets in order).
#[derive(Default)]
struct Frames {
    bytes: Vec<u8>,
    lent: Vec<(usize, Lent)>,
    /// The lent payloads' bytes, in all.
    lent_len: usize,
}

impl Frames {
    /// The bytes to be written, lent payloads included.
    fn len(&self) -> usize {
        self.bytes.len() + self.lent_len
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.lent.is_empty()
    }

    /// Where a frame about to be appended starts, to take it out again ([`Frames::truncate`]).
    fn mark(&self) -> (usize, usize) {
        (self.bytes.len(), self.lent.len())
    }

    /// Appends `msg` as a frame, leaving `lent` out if it is one of its fields.
    fn append(
        &mut self,
        msg: &Message<'_>,
        max_frame: u32,
        lent: Option<&Lent>,
    ) -> Result<(), FrameError> {
        let Some(lent) = lent else {
            return append_frame(&mut self.bytes, msg, max_frame);
        };
        if let Some(at) = append_frame_lending(&mut self.bytes, msg, max_frame, lent)? {
            self.lent.push((at, lent.clone()));
            self.lent_len += lent.len();
        }
        Ok(())
    }

    /// Takes out what was appended since `mark`.
    fn truncate(&mut self, (bytes, lent): (usize, usize)) {
        self.bytes.truncate(bytes);
        for (_, l) in self.lent.drain(lent..) {
            self.lent_len -= l.len();
        }
    }

    /// Puts `held` (whole frames) in front of these.
    fn prepend(&mut self, held: Vec<u8>) {
        let shift = held.len();
        let mut bytes = held;
        bytes.append(&mut self.bytes);
        self.bytes = bytes;
        for (at, _) in &mut self.lent {
            *at += shift;
        }
    }

    /// Empties a written batch, giving back an unusually large allocation.
    fn clear(&mut self) {
        self.bytes.clear();
        self.lent.clear();
        self.lent_len = 0;
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = Vec::new();
        }
    }

    /// Fills `iov` with the pieces that follow the first `done` bytes, in order, as many as
    /// fit; returns how many it filled.
    fn pieces<'a>(&'a self, done: usize, iov: &mut [IoSlice<'a>]) -> usize {
        let mut skip = done;
        let mut n = 0;
        let mut from = 0;
        let lent = self.lent.iter().map(|(at, l)| (*at, Some(l.as_slice())));
        for (to, payload) in lent.chain(std::iter::once((self.bytes.len(), None))) {
            for piece in [Some(&self.bytes[from..to]), payload].into_iter().flatten() {
                if skip >= piece.len() {
                    skip -= piece.len();
                    continue;
                }
                if n == iov.len() {
                    return n;
                }
                iov[n] = IoSlice::new(&piece[skip..]);
                skip = 0;
                n += 1;
            }
            from = to;
        }
        n
    }

    /// The bytes as they are written (for tests).
    #[cfg(test)]
    fn joined(&self) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = self.pieces(0, &mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }
}

#[derive(Default)]
struct State {
    /// Encoded frames, back to back.
    queued: Frames,
    /// Bytes the writer took and has not finished writing.
    writing: usize,
    /// Set once by [`Outbox::close`]; the goodbye is taken by the writer.
    closing: Option<Option<Vec<u8>>>,
    /// A caller waits for room (see [`Outbox::push_waiting`]).
    room_wanted: bool,
}

/// The write half of a connection's stream, as the outbox's writers drive it.
pub(crate) trait WriteSide: Send {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<W: AsyncWrite + Unpin + Send> WriteSide for W {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

/// The write half and the batch being written through it.
struct Pipe {
    io: Box<dyn WriteSide>,
    /// Frames taken from the queue, written up to `done`.
    batch: Frames,
    done: usize,
    /// `batch` is written whole but not yet flushed.
    unflushed: bool,
}

/// What driving the pipe came to, when it did not have to wait for the stream.
enum Drove {
    /// Everything queued is written.
    Idle,
    /// Everything queued is written and the connection is closing: the goodbye, if any.
    Closing(Option<Vec<u8>>),
}

/// The writers' side, under its own lock: held only while writing, never across a wait.
#[derive(Default)]
struct Writing {
    /// `None` before [`Outbox::attach`], and once the writer task has begun to say goodbye.
    pipe: Option<Pipe>,
    /// The writer task's waker. A frame written at once by another task is written in the
    /// writer task's name, so that if the stream cannot take it all, the writer task is the
    /// one woken to finish.
    waker: Option<Waker>,
}

impl State {
    /// Swaps the queued frames into `batch` (which must be empty); or, once every frame has
    /// been taken from a closing outbox, reports that (with the goodbye, taken only if
    /// `take_goodbye`). `None` if nothing is queued and the outbox is open.
    fn take(&mut self, batch: &mut Frames, take_goodbye: bool) -> Option<Taken> {
        if !self.queued.is_empty() {
            std::mem::swap(&mut self.queued, batch);
            self.writing = batch.len();
            return Some(Taken::Frames);
        }
        let goodbye = self.closing.as_mut()?;
        Some(Taken::Close(if take_goodbye {
            goodbye.take()
        } else {
            None
        }))
    }
}

/// The frames waiting for one connection's writer.
pub(crate) struct Outbox {
    state: Mutex<State>,
    writing: Mutex<Writing>,
    /// Wakes the writer when the queue stops being empty, or on close.
    ready: Notify,
    /// Wakes the callers waiting for room when the writer has written a batch.
    room: Notify,
    /// Frames were held back at [`Outbox::attach`] and no write has been made yet: the writer
    /// task leaves the queue alone until the first [`Outbox::write_now`], so that the first
    /// write carries what was queued behind the held frames by then (a server's hello and
    /// the answers to the calls that came with the client's), whichever thread runs first.
    held: AtomicBool,
    max_frame: u32,
    budget: usize,
    /// The Tub's budget, which this outbox's queued and unwritten bytes count against too.
    tub: std::sync::Arc<Budget>,
}

/// The writer's buffer grows to the largest batch it wrote; past this it is given back. (A
/// lent payload is not in it.)
const KEEP_CAPACITY: usize = 64 * 1024;

/// The bytes of a message's payload: no frame carrying it is shorter.
fn payload_len(msg: &Message<'_>) -> usize {
    use crate::message::AnswerBody;
    match msg {
        Message::Call { args, .. } | Message::Oneway { args, .. } => args.len(),
        Message::Answer {
            body: AnswerBody::Ok { value, .. } | AnswerBody::AppError { value, .. },
            ..
        } => value.len(),
        _ => 0,
    }
}

impl Outbox {
    /// An empty outbox for frames of at most `max_frame` bytes (the peer's limit) and
    /// `budget` bytes waiting in all, counted against the Tub's budget `tub` as well.
    pub(crate) fn new(max_frame: u32, budget: usize, tub: std::sync::Arc<Budget>) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            writing: Mutex::new(Writing::default()),
            ready: Notify::new(),
            room: Notify::new(),
            held: AtomicBool::new(false),
            max_frame,
            budget: budget.max(1),
            tub,
        }
    }

    /// The bytes this outbox counts against the budgets now: queued, and taken by a writer
    /// but not yet written.
    pub(crate) fn counted(&self) -> usize {
        let state = self.lock();
        state.writing + state.queued.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the outbox the stream's write half. `held` (frames encoded already, such as a
    /// hello held back by the handshake) leave first, with the first write, which is the first
    /// [`Outbox::write_now`]: until then the writer task writes nothing (unless the outbox
    /// closes). Whoever attaches held frames must see that `write_now` is called soon.
    pub(crate) fn attach<W: AsyncWrite + Unpin + Send + 'static>(&self, io: W, held: Vec<u8>) {
        if !held.is_empty() {
            self.tub.take(held.len());
            self.held.store(true, Ordering::SeqCst);
            self.lock().queued.prepend(held);
        }
        lock_writing(&self.writing).pipe = Some(Pipe {
            io: Box::new(io),
            batch: Frames::default(),
            done: 0,
            unflushed: false,
        });
    }

    /// Queues `msg` as a frame if the budget has room for it now. Returns whether the queue
    /// was empty before: then nobody has been told to write it yet (see [`Outbox::write_now`]
    /// and [`Outbox::wake_writer`]).
    pub(crate) fn push(&self, msg: &Message<'_>) -> Result<bool, PushError> {
        self.push_or_want_room(msg, None, false)
    }

    /// Queues `msg` as [`Outbox::push`] does, with `lent` (a payload field of `msg`, see
    /// [`Payload`]) kept where it is rather than copied: the outbox holds on to it until the
    /// frame is written.
    pub(crate) fn push_lending(
        &self,
        msg: &Message<'_>,
        lent: Option<&Lent>,
    ) -> Result<bool, PushError> {
        self.push_or_want_room(msg, lent, false)
    }

    /// Queues `msg` as a frame, waiting for room in the budgets; returns as [`Outbox::push`].
    pub(crate) async fn push_waiting(
        &self,
        msg: &Message<'_>,
        lent: Option<&Lent>,
    ) -> Result<bool, PushError> {
        match self.push_lending(msg, lent) {
            Err(PushError::Full | PushError::TubFull) => {}
            done => return done,
        }
        loop {
            // Registered before looking again, so that room made in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Room in the Tub's budget is waited for the same way: this outbox's own writes
            // wake it, and an empty outbox takes a frame whatever the Tub's budget says.
            match self.push_or_want_room(msg, lent, true) {
                Err(PushError::Full | PushError::TubFull) => room.await,
                done => return done,
            }
        }
    }

    fn push_or_want_room(
        &self,
        msg: &Message<'_>,
        lent: Option<&Lent>,
        want_room: bool,
    ) -> Result<bool, PushError> {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(PushError::Closed);
        }
        let before = state.queued.len();
        let waiting = state.writing + before;
        // The payload alone is a lower bound on the frame: when even that does not fit, say
        // so before encoding, so that callers woken for room do not each copy a large
        // message into the buffer only to cut it off again.
        if waiting > 0 && waiting + payload_len(msg) > self.budget {
            state.room_wanted |= want_room;
            return Err(PushError::Full);
        }
        if waiting > 0 && !self.tub.fits(payload_len(msg)) {
            state.room_wanted |= want_room;
            return Err(PushError::TubFull);
        }
        let mark = state.queued.mark();
        state
            .queued
            .append(msg, self.max_frame, lent)
            .map_err(PushError::Encode)?;
        let len = state.queued.len() - before;
        // A frame into an empty outbox is always taken (it may be larger than either budget,
        // and it is what lets every connection make progress); otherwise it must fit both.
        let refused = if waiting == 0 {
            self.tub.take(len);
            None
        } else if waiting + len > self.budget {
            Some(PushError::Full)
        } else if !self.tub.try_take(len) {
            Some(PushError::TubFull)
        } else {
            None
        };
        if let Some(refused) = refused {
            state.queued.truncate(mark);
            // Do not keep the room a refused frame made the buffer grow to.
            let bytes = &mut state.queued.bytes;
            if bytes.capacity() > self.budget.max(KEEP_CAPACITY) {
                let keep = bytes.len().max(KEEP_CAPACITY);
                bytes.shrink_to(keep);
            }
            state.room_wanted |= want_room;
            return Err(refused);
        }
        // The writers take everything at once, so a queue that was not empty has already
        // been signalled and not yet taken.
        Ok(before == 0)
    }

    /// Whether frames held at [`Outbox::attach`] still wait for the first
    /// [`Outbox::write_now`].
    pub(crate) fn holds(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Wakes the writer task to write what is queued.
    pub(crate) fn wake_writer(&self) {
        self.ready.notify_one();
    }

    /// Writes what is queued now, on the calling task, if no one else is writing; otherwise
    /// (or before the writer task has started) wakes the writer task. An error is the
    /// stream's: the connection is broken.
    pub(crate) fn write_now(&self) -> io::Result<()> {
        // The first write lets the writer task have the held frames too: whoever writes
        // next takes them, with everything queued behind them.
        if self.held.load(Ordering::Relaxed) {
            self.held.store(false, Ordering::SeqCst);
        }
        let mut writing = match self.writing.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // The writer holding it takes the queue again before it lets go, or finds
                // this wake-up when it next waits.
                self.wake_writer();
                return Ok(());
            }
        };
        let Writing { pipe, waker } = &mut *writing;
        let (Some(pipe), Some(waker)) = (pipe.as_mut(), waker.as_ref()) else {
            drop(writing);
            self.wake_writer();
            return Ok(());
        };
        let mut cx = Context::from_waker(waker);
        match self.drive(pipe, &mut cx, false) {
            Poll::Ready(Ok(Drove::Idle)) => Ok(()),
            // The stream will wake the writer task, but that task waits for the outbox, not
            // for the stream, and would not look: tell it to take over the write. And a
            // closing outbox's goodbye is the writer task's to send.
            Poll::Pending | Poll::Ready(Ok(Drove::Closing(_))) => {
                drop(writing);
                self.wake_writer();
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    /// Writes, flushes and takes batches until the queue is empty or the stream makes us
    /// wait. Only the writer task takes the goodbye (`take_goodbye`).
    fn drive(
        &self,
        pipe: &mut Pipe,
        cx: &mut Context<'_>,
        take_goodbye: bool,
    ) -> Poll<io::Result<Drove>> {
        loop {
            if pipe.done < pipe.batch.len() {
                let Pipe {
                    io, batch, done, ..
                } = &mut *pipe;
                let wrote = if batch.lent.is_empty() {
                    io.poll_write(cx, &batch.bytes[*done..])
                } else {
                    // The frames' bytes and the lent payloads between them, in one write.
                    let mut iov = [IoSlice::new(&[]); 64];
                    let n = batch.pieces(*done, &mut iov);
                    io.poll_write_vectored(cx, &iov[..n])
                };
                match wrote {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => pipe.done += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            // A batch written and flushed is given back to the budget as the next is taken.
            let written = pipe.unflushed;
            if written {
                match pipe.io.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                pipe.unflushed = false;
                pipe.done = 0;
            }
            match self.take_after(&mut pipe.batch, written, take_goodbye) {
                Some(Taken::Frames) => pipe.unflushed = true,
                Some(Taken::Close(goodbye)) => return Poll::Ready(Ok(Drove::Closing(goodbye))),
                None => return Poll::Ready(Ok(Drove::Idle)),
            }
        }
    }

    /// The writer task: writes whatever is queued whenever it is woken, until the outbox is
    /// closed; then sends what was queued before, the goodbye, and shuts the stream (giving
    /// that up to 5 s). An error is the stream's.
    pub(crate) async fn run_writer(&self) -> io::Result<()> {
        loop {
            let drove = std::future::poll_fn(|cx| {
                let mut writing = lock_writing(&self.writing);
                let Writing { pipe, waker } = &mut *writing;
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                match pipe.as_mut() {
                    Some(pipe) => self.drive(pipe, cx, true),
                    None => Poll::Ready(Ok(Drove::Closing(None))),
                }
            })
            .await?;
            match drove {
                // A frame queued since the queue was found empty has left a wake-up.
                Drove::Idle => self.ready.notified().await,
                Drove::Closing(goodbye) => {
                    let Some(mut pipe) = lock_writing(&self.writing).pipe.take() else {
                        return Ok(());
                    };
                    let farewell = async {
                        if let Some(g) = goodbye {
                            let mut at = 0;
                            while at < g.len() {
                                match std::future::poll_fn(|cx| pipe.io.poll_write(cx, &g[at..]))
                                    .await?
                                {
                                    0 => return Err(io::ErrorKind::WriteZero.into()),
                                    n => at += n,
                                }
                            }
                        }
                        std::future::poll_fn(|cx| pipe.io.poll_shutdown(cx)).await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), farewell).await;
                    return Ok(());
                }
            }
        }
    }

    /// Refuses every later frame; the writer sends what is queued, then `goodbye`, then
    /// shuts the stream. Returns false if the outbox was already closing.
    pub(crate) fn close(&self, goodbye: Option<Vec<u8>>) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() {
            return false;
        }
        state.closing = Some(goodbye);
        drop(state);
        self.ready.notify_one();
        // Callers waiting for room will find the outbox closed.
        self.room.notify_waiters();
        true
    }

    /// Takes what is queued, as [`State::take`].
    #[cfg(test)]
    fn take_now(&self, batch: &mut Frames, take_goodbye: bool) -> Option<Taken> {
        self.take_after(batch, false, take_goodbye)
    }

    /// [`State::take`] under the queue's lock. With `written`, `batch` holds a batch just
    /// written and flushed: it is emptied and its bytes leave the budget first, under the
    /// same lock.
    fn take_after(&self, batch: &mut Frames, written: bool, take_goodbye: bool) -> Option<Taken> {
        if written {
            batch.clear();
        }
        debug_assert!(batch.is_empty());
        let mut state = self.lock();
        let wake = written && std::mem::take(&mut state.room_wanted);
        if written {
            self.tub.give(state.writing);
            state.writing = 0;
        }
        // The writer task (the one that takes the goodbye) leaves held frames for the first
        // write_now, unless the connection is closing.
        let leave = take_goodbye && state.closing.is_none() && self.held.load(Ordering::SeqCst);
        let taken = if leave {
            None
        } else {
            state.take(batch, take_goodbye)
        };
        drop(state);
        if wake {
            self.room.notify_waiters();
        }
        taken
    }

    /// The writer has written `batch`: its bytes leave the budget, and it is emptied for the
    /// next take.
    #[cfg(test)]
    fn written(&self, batch: &mut Frames) {
        batch.clear();
        let mut state = self.lock();
        self.tub.give(state.writing);
        state.writing = 0;
        let wake = std::mem::take(&mut state.room_wanted);
        drop(state);
        if wake {
            self.room.notify_waiters();
        }
    }
}

impl Drop for Outbox {
    /// What was never written (a connection torn down with frames queued) leaves the Tub's
    /// budget with the memory that held it.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.tub.give(state.writing + state.queued.len());
    }
}

fn lock_writing(m: &Mutex<Writing>) -> std::sync::MutexGuard<'_, Writing> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn unbounded() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX))
    }

    /// Two connections share their Tub's budget: a frame that fits its own connection's
    /// budget but not the Tub's is refused as `TubFull`, except into an empty queue; bytes
    /// written, and an outbox dropped with bytes queued, give their share back.
    #[tokio::test]
    async fn outboxes_share_the_tubs_budget() {
        let frame = encode_len(&call_with(&[0; 100]));
        let tub = Arc::new(Budget::new(3 * frame));
        let a = Outbox::new(1024, 1 << 20, tub.clone());
        let b = Outbox::new(1024, 1 << 20, tub.clone());
        let big = [0u8; 100];
        assert!(a.push(&call_with(&big)).unwrap());
        assert!(!a.push(&call_with(&big)).unwrap());
        assert!(
            b.push(&call_with(&big)).unwrap(),
            "an empty queue always takes one"
        );
        assert_eq!(tub.used(), 3 * frame);
        assert!(matches!(a.push(&call_with(&big)), Err(PushError::TubFull)));
        assert!(matches!(b.push(&call_with(&big)), Err(PushError::TubFull)));
        // A's frames are written: their bytes come back, and B has room again.
        let mut batch = Frames::default();
        assert!(matches!(a.take_now(&mut batch, false), Some(Taken::Frames)));
        assert_eq!(
            tub.used(),
            3 * frame,
            "taken but not yet written still counts"
        );
        a.written(&mut batch);
        assert_eq!(tub.used(), frame);
        assert!(!b.push(&call_with(&big)).unwrap());
        assert_eq!(tub.used(), 2 * frame);
        drop(b);
        assert_eq!(tub.used(), 0, "a dropped outbox gives back what it held");
    }

    fn ping(nonce: u64) -> Message<'static> {
        Message::Ping { nonce }
    }

    /// A call whose frame is about as long as `args`.
    fn call_with(args: &[u8]) -> Message<'_> {
        Message::Call {
            id: 1,
            target: 0,
            interface: "i",
            method: "m",
            args,
            refs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn frames_are_taken_together_in_order() {
        let out = Outbox::new(1024, 1024, unbounded());
        out.push(&ping(1)).unwrap();
        out.push(&ping(2)).unwrap();
        let mut batch = Frames::default();
        assert!(matches!(
            out.take_now(&mut batch, true).unwrap(),
            Taken::Frames
        ));
        let mut expected = Vec::new();
        append_frame(&mut expected, &ping(1), 1024).unwrap();
        append_frame(&mut expected, &ping(2), 1024).unwrap();
        assert_eq!(batch.joined(), expected);
        out.written(&mut batch);
        assert!(batch.is_empty());
        // Closing: what is queued first, then the goodbye, and nothing after.
        out.push(&ping(3)).unwrap();
        assert!(out.close(Some(vec![9])));
        assert!(matches!(out.push(&ping(4)), Err(PushError::Closed)));
        assert!(matches!(
            out.take_now(&mut batch, true).unwrap(),
            Taken::Frames
        ));
        out.written(&mut batch);
        assert!(
            matches!(out.take_now(&mut batch, true).unwrap(), Taken::Close(Some(g)) if g == [9])
        );
    }

    #[tokio::test]
    async fn the_budget_counts_queued_and_unwritten_bytes() {
        let frame = encode_len(&ping(1));
        let out = Arc::new(Outbox::new(1024, 2 * frame, unbounded()));
        out.push(&ping(1)).unwrap();
        out.push(&ping(2)).unwrap();
        assert!(matches!(out.push(&ping(3)), Err(PushError::Full)));
        let mut batch = Frames::default();
        out.take_now(&mut batch, true).unwrap();
        // Taken but not written: still counted.
        assert!(matches!(out.push(&ping(3)), Err(PushError::Full)));
        let waiter = {
            let out = out.clone();
            tokio::spawn(async move { out.push_waiting(&ping(3), None).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        out.written(&mut batch);
        waiter.await.unwrap().unwrap();
        // A frame over the whole budget goes when nothing else waits.
        let small = Outbox::new(1024, 1, unbounded());
        small.push(&ping(1)).unwrap();
        assert!(matches!(small.push(&ping(2)), Err(PushError::Full)));
    }

    #[test]
    fn an_oversized_frame_is_refused_and_leaves_the_queue_as_it_was() {
        let out = Outbox::new(4, 1024, unbounded());
        out.push(&ping(1)).unwrap();
        let call = call_with(&[0; 16]);
        assert!(matches!(
            out.push(&call),
            Err(PushError::Encode(FrameError::TooLarge { .. }))
        ));
        assert_eq!(out.lock().queued.len(), encode_len(&ping(1)));
    }

    #[test]
    fn a_large_frame_that_does_not_fit_leaves_no_room_taken() {
        let args = vec![7u8; 60 * 1024];
        let call = call_with(&args);
        let out = Outbox::new(u32::MAX, 100 * 1024, unbounded());
        out.push(&call).unwrap();
        let len = out.lock().queued.len();
        // Refused without being copied in: the queue and its allocation stay as they were.
        assert!(matches!(out.push(&call), Err(PushError::Full)));
        let state = out.lock();
        assert_eq!(state.queued.len(), len);
        assert!(
            state.queued.bytes.capacity() < 2 * len,
            "{}",
            state.queued.bytes.capacity()
        );
    }

    fn frame(msg: &Message<'_>) -> Vec<u8> {
        crate::frame::encode_frame(msg, u32::MAX).unwrap()
    }

    /// Reads what `peer` has ready now, without waiting.
    async fn ready_now(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        let n = std::future::poll_fn(|cx| {
            let mut rb = tokio::io::ReadBuf::new(&mut buf);
            Poll::Ready(match Pin::new(&mut *peer).poll_read(cx, &mut rb) {
                Poll::Ready(r) => r.map(|()| rb.filled().len()).unwrap(),
                Poll::Pending => 0,
            })
        })
        .await;
        buf.truncate(n);
        buf
    }

    use tokio::io::{AsyncRead, AsyncReadExt};

    /// Lets a spawned writer task run until it waits (current-thread runtime).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits for the writer task to end, at most 5 s, and checks that it ended well.
    async fn join_writer(writer: tokio::task::JoinHandle<std::io::Result<()>>) {
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Closes `out` without a goodbye, then waits for its writer task ([`join_writer`]).
    async fn close_and_join_writer(
        out: &Outbox,
        writer: tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        out.close(None);
        join_writer(writer).await;
    }

    #[tokio::test]
    async fn a_frame_written_now_leaves_on_the_calling_task_behind_the_held_ones() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let out = Arc::new(Outbox::new(1024, 1 << 20, unbounded()));
        out.attach(ours, frame(&ping(0)));
        // Before the writer task has run, writing now leaves it to that task.
        assert!(!out.push(&ping(1)).unwrap());
        out.write_now().unwrap();
        assert!(ready_now(&mut peer).await.is_empty());
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.run_writer().await }
        });
        settle().await;
        assert_eq!(
            ready_now(&mut peer).await,
            [frame(&ping(0)), frame(&ping(1))].concat()
        );
        // The writer task waits now: a frame written now is on the stream before this task
        // yields, so it was written here.
        assert!(out.push(&ping(2)).unwrap());
        assert!(!out.push(&ping(3)).unwrap());
        out.write_now().unwrap();
        assert_eq!(
            ready_now(&mut peer).await,
            [frame(&ping(2)), frame(&ping(3))].concat()
        );
        assert_eq!(out.lock().writing, 0, "the budget is given back");
        // The writer task says goodbye after what is queued, then shuts the stream.
        assert!(out.push(&ping(4)).unwrap());
        out.close(Some(vec![1, 2, 3]));
        // Writing now while closing sends the frames but leaves the goodbye to the writer.
        out.write_now().unwrap();
        assert_eq!(ready_now(&mut peer).await, frame(&ping(4)));
        join_writer(writer).await;
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_write_the_stream_cannot_take_now_is_finished_by_the_writer_task() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let out = Arc::new(Outbox::new(u32::MAX, 1 << 20, unbounded()));
        out.attach(ours, Vec::new());
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.run_writer().await }
        });
        settle().await;
        let args = vec![5u8; 10_000];
        let call = call_with(&args);
        assert!(out.push(&call).unwrap());
        out.write_now().unwrap();
        assert!(out.lock().writing > 0, "the stream took only part of it");
        let mut got = vec![0; frame(&call).len()];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("the writer task finishes the write")
            .unwrap();
        assert_eq!(got, frame(&call));
        settle().await;
        assert_eq!(out.lock().writing, 0);
        close_and_join_writer(&out, writer).await;
    }

    /// Lent payloads leave between the frames' other bytes, in queue order, and count
    /// against the budgets like copied ones; a refused frame leaves no lent payload behind.
    #[tokio::test]
    async fn lent_payloads_are_written_in_place_and_counted() {
        let tub = unbounded();
        let out = Outbox::new(u32::MAX, 1 << 20, tub.clone());
        let a = Payload::new(vec![1u8; 5000]);
        let b = Payload::new(vec![2u8; LEND_FROM]);
        let small = Payload::new(vec![3u8; 100]);
        assert!(a.lent().is_some() && b.lent().is_some() && small.lent().is_none());
        out.push(&ping(1)).unwrap();
        out.push_lending(&call_with(a.bytes()), a.lent()).unwrap();
        out.push_lending(&call_with(small.bytes()), small.lent())
            .unwrap();
        out.push_lending(&call_with(b.bytes()), b.lent()).unwrap();
        out.push(&ping(2)).unwrap();
        let expected = [
            frame(&ping(1)),
            frame(&call_with(a.bytes())),
            frame(&call_with(small.bytes())),
            frame(&call_with(b.bytes())),
            frame(&ping(2)),
        ]
        .concat();
        {
            let state = out.lock();
            assert_eq!(state.queued.lent.len(), 2, "both large payloads are lent");
            assert!(state.queued.bytes.len() < 1000, "and not copied");
        }
        assert_eq!(out.counted(), expected.len());
        assert_eq!(tub.used(), expected.len());
        // Refused for its size: the queue is as it was, lent payloads included.
        let huge = Payload::new(vec![4u8; 2 << 20]);
        assert!(matches!(
            out.push_lending(&call_with(huge.bytes()), huge.lent()),
            Err(PushError::Full)
        ));
        let tight = Outbox::new(100, 1 << 20, unbounded());
        assert!(matches!(
            tight.push_lending(&call_with(a.bytes()), a.lent()),
            Err(PushError::Encode(FrameError::TooLarge { .. }))
        ));
        assert_eq!(tight.counted(), 0);
        assert!(tight.lock().queued.lent.is_empty());
        let mut batch = Frames::default();
        assert!(matches!(
            out.take_now(&mut batch, false),
            Some(Taken::Frames)
        ));
        assert_eq!(batch.joined(), expected);
        // The pieces after any number of bytes written are the rest, whatever piece it
        // ends in.
        for done in [0, 1, 17, 5000, expected.len() - 1, expected.len()] {
            let mut iov = [IoSlice::new(&[]); 64];
            let n = batch.pieces(done, &mut iov);
            let rest: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(rest, expected[done..], "after {done} bytes");
        }
        out.written(&mut batch);
        assert_eq!(tub.used(), 0);
        assert!(batch.is_empty());
        assert_eq!(Arc::strong_count(a.lent().unwrap()), 1, "the outbox let go");
    }

    /// A stream that takes a few bytes at a time gets lent payloads whole and in order,
    /// through the writer task.
    #[tokio::test]
    async fn lent_payloads_survive_short_writes() {
        let (ours, mut peer) = tokio::io::duplex(100);
        let out = Arc::new(Outbox::new(u32::MAX, 1 << 20, unbounded()));
        out.attach(ours, frame(&ping(0)));
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.run_writer().await }
        });
        let payloads: Vec<Payload> = (0..5u8)
            .map(|i| Payload::new(vec![i; LEND_FROM + 333 * usize::from(i)]))
            .collect();
        let mut expected = frame(&ping(0));
        for (i, p) in payloads.iter().enumerate() {
            out.push_lending(&call_with(p.bytes()), p.lent()).unwrap();
            out.push(&ping(i as u64)).unwrap();
            expected.extend(frame(&call_with(p.bytes())));
            expected.extend(frame(&ping(i as u64)));
        }
        out.write_now().unwrap();
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("everything is written")
            .unwrap();
        assert_eq!(got, expected);
        close_and_join_writer(&out, writer).await;
    }

    fn encode_len(msg: &Message<'_>) -> usize {
        crate::frame::encode_frame(msg, u32::MAX).unwrap().len()
    }
}
