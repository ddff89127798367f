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

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::frame::{append_frame, FrameError};
use crate::message::Message;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The message does not encode, or its frame exceeds the peer's limit.
    Encode(FrameError),
    /// The budget has no room for the frame now.
    Full,
    /// The connection is closing: nothing more is sent.
    Closed,
}

/// What [`Outbox::take`] hands the writer.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Frames, now in the writer's buffer.
    Frames,
    /// The connection is closing, and every frame queued before has been taken: send this
    /// goodbye frame, if any, and shut the stream.
    Close(Option<Vec<u8>>),
}

#[derive(Default)]
struct State {
    /// Encoded frames, back to back.
    queued: Vec<u8>,
    /// Bytes the writer took and has not finished writing.
    writing: usize,
    /// Set once by [`Outbox::close`]; the goodbye is taken by the writer.
    closing: Option<Option<Vec<u8>>>,
    /// A caller waits for room (see [`Outbox::push_waiting`]).
    room_wanted: bool,
}

/// The frames waiting for one connection's writer.
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when the queue stops being empty, or on close.
    ready: Notify,
    /// Wakes the callers waiting for room when the writer has written a batch.
    room: Notify,
    max_frame: u32,
    budget: usize,
}

/// The writer's buffer grows to the largest batch it wrote; past this it is given back.
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
    /// `budget` bytes waiting in all.
    pub(crate) fn new(max_frame: u32, budget: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            room: Notify::new(),
            max_frame,
            budget: budget.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg` as a frame if the budget has room for it now.
    pub(crate) fn push(&self, msg: &Message<'_>) -> Result<(), PushError> {
        self.push_or_want_room(msg, false)
    }

    /// Queues `msg` as a frame, waiting for room in the budget.
    pub(crate) async fn push_waiting(&self, msg: &Message<'_>) -> Result<(), PushError> {
        match self.push(msg) {
            Err(PushError::Full) => {}
            done => return done,
        }
        loop {
            // Registered before looking again, so that room made in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push_or_want_room(msg, true) {
                Err(PushError::Full) => room.await,
                done => return done,
            }
        }
    }

    fn push_or_want_room(&self, msg: &Message<'_>, want_room: bool) -> Result<(), PushError> {
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
        append_frame(&mut state.queued, msg, self.max_frame).map_err(PushError::Encode)?;
        if waiting > 0 && waiting + (state.queued.len() - before) > self.budget {
            state.queued.truncate(before);
            // Do not keep the room a refused frame made the buffer grow to.
            if state.queued.capacity() > self.budget.max(KEEP_CAPACITY) {
                let keep = before.max(KEEP_CAPACITY);
                state.queued.shrink_to(keep);
            }
            state.room_wanted |= want_room;
            return Err(PushError::Full);
        }
        drop(state);
        // The writer takes everything at once, so a queue that was not empty has already
        // been signalled and not yet taken.
        if before == 0 {
            self.ready.notify_one();
        }
        Ok(())
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

    /// Waits until there are frames to write, and swaps them into `batch` (which must be
    /// empty); or, once every frame has been taken, reports that the connection is closing.
    pub(crate) async fn take(&self, batch: &mut Vec<u8>) -> Taken {
        loop {
            if let Some(taken) = self.try_take(batch) {
                return taken;
            }
            // A push between the look above and this wait leaves a permit that ends it at once.
            self.ready.notified().await;
        }
    }

    /// [`Outbox::take`] without waiting: `None` if nothing is queued and the outbox is open.
    pub(crate) fn try_take(&self, batch: &mut Vec<u8>) -> Option<Taken> {
        debug_assert!(batch.is_empty());
        let mut state = self.lock();
        if !state.queued.is_empty() {
            std::mem::swap(&mut state.queued, batch);
            state.writing = batch.len();
            return Some(Taken::Frames);
        }
        state
            .closing
            .as_mut()
            .map(|goodbye| Taken::Close(goodbye.take()))
    }

    /// The writer has written `batch`: its bytes leave the budget, and it is emptied for the
    /// next [`Outbox::take`].
    pub(crate) fn written(&self, batch: &mut Vec<u8>) {
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            *batch = Vec::new();
        }
        let mut state = self.lock();
        state.writing = 0;
        let wake = std::mem::take(&mut state.room_wanted);
        drop(state);
        if wake {
            self.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ping(nonce: u64) -> Message<'static> {
        Message::Ping { nonce }
    }

    #[tokio::test]
    async fn frames_are_taken_together_in_order() {
        let out = Outbox::new(1024, 1024);
        out.push(&ping(1)).unwrap();
        out.push(&ping(2)).unwrap();
        let mut batch = Vec::new();
        assert!(matches!(out.take(&mut batch).await, Taken::Frames));
        let mut expected = Vec::new();
        append_frame(&mut expected, &ping(1), 1024).unwrap();
        append_frame(&mut expected, &ping(2), 1024).unwrap();
        assert_eq!(batch, expected);
        out.written(&mut batch);
        assert!(batch.is_empty());
        // Closing: what is queued first, then the goodbye, and nothing after.
        out.push(&ping(3)).unwrap();
        assert!(out.close(Some(vec![9])));
        assert!(matches!(out.push(&ping(4)), Err(PushError::Closed)));
        assert!(matches!(out.take(&mut batch).await, Taken::Frames));
        out.written(&mut batch);
        assert!(matches!(out.take(&mut batch).await, Taken::Close(Some(g)) if g == [9]));
    }

    #[tokio::test]
    async fn the_budget_counts_queued_and_unwritten_bytes() {
        let frame = encode_len(&ping(1));
        let out = Arc::new(Outbox::new(1024, 2 * frame));
        out.push(&ping(1)).unwrap();
        out.push(&ping(2)).unwrap();
        assert!(matches!(out.push(&ping(3)), Err(PushError::Full)));
        let mut batch = Vec::new();
        out.take(&mut batch).await;
        // Taken but not written: still counted.
        assert!(matches!(out.push(&ping(3)), Err(PushError::Full)));
        let waiter = {
            let out = out.clone();
            tokio::spawn(async move { out.push_waiting(&ping(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        out.written(&mut batch);
        waiter.await.unwrap().unwrap();
        // A frame over the whole budget goes when nothing else waits.
        let small = Outbox::new(1024, 1);
        small.push(&ping(1)).unwrap();
        assert!(matches!(small.push(&ping(2)), Err(PushError::Full)));
    }

    #[test]
    fn an_oversized_frame_is_refused_and_leaves_the_queue_as_it_was() {
        let out = Outbox::new(4, 1024);
        out.push(&ping(1)).unwrap();
        let call = Message::Call {
            id: 1,
            target: 0,
            interface: "i",
            method: "m",
            args: &[0; 16],
            refs: Vec::new(),
        };
        assert!(matches!(
            out.push(&call),
            Err(PushError::Encode(FrameError::TooLarge { .. }))
        ));
        assert_eq!(out.lock().queued.len(), encode_len(&ping(1)));
    }

    #[test]
    fn a_large_frame_that_does_not_fit_leaves_no_room_taken() {
        let args = vec![7u8; 60 * 1024];
        let call = Message::Call {
            id: 1,
            target: 0,
            interface: "i",
            method: "m",
            args: &args,
            refs: Vec::new(),
        };
        let out = Outbox::new(u32::MAX, 100 * 1024);
        out.push(&call).unwrap();
        let len = out.lock().queued.len();
        // Refused without being copied in: the queue and its allocation stay as they were.
        assert!(matches!(out.push(&call), Err(PushError::Full)));
        let state = out.lock();
        assert_eq!(state.queued.len(), len);
        assert!(
            state.queued.capacity() < 2 * len,
            "{}",
            state.queued.capacity()
        );
    }

    fn encode_len(msg: &Message<'_>) -> usize {
        crate::frame::encode_frame(msg, u32::MAX).unwrap().len()
    }
}
