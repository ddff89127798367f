//! One live connection between two Tubs: the reader and writer tasks, outstanding calls,
//! the tables of exported and imported references, keepalive, and an orderly death.
//!
//! Threads of control per connection:
//! - the **reader** task decodes frames in order. A call is decoded (arguments included)
//!   before the next frame is read, then runs in its own task while holding one of the
//!   connection's inbound permits; with every permit taken the reader stops reading, so a
//!   flood of calls is slowed by TCP backpressure instead of being buffered.
//! - the **writer** task takes every frame queued in the connection's outbox at once
//!   (`crate::outbox`) and writes them as one batch: one TLS record per 16 KiB and one write,
//!   then a flush. A frame keeps its share of the write budget until the batch holding it has
//!   been written, so a peer that never reads cannot make the queued and in-flight bytes
//!   exceed the budget (a single frame larger than the budget is sent alone); outbound calls
//!   hold an outbound unit until answered.
//! - where no other frame is about to join a batch, the task that queued it writes it at
//!   once instead of waking the writer task: a caller with no other call under way, and the
//!   reader, once it has handled every frame of one read, for the answers and pongs those
//!   frames provoked (one write for all of them). A write the stream cannot take at once is
//!   finished by the writer task.
//! - no task of its own for keepalive: the Tub's one keepalive task
//!   (`crate::tub`) calls `ConnShared::keepalive_check` on every connection, which pings an
//!   idle peer and enforces the disconnect timeout.
//!
//! When the connection dies, for whatever reason, [`ConnShared::close`] runs exactly once:
//! every pending call fails with the reason, every disconnect observer runs once, exports are
//! released, and the Tub forgets the connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, info_span, warn, Instrument};

use crate::error_chain::ErrorChain;
use crate::frame::{encode_frame, FrameError, FrameReader};
use crate::furl::Furl;
use crate::handshake::{ConnectionInfo, Established};
use crate::limit::Limit;
use crate::limit::Unit;
use crate::message::{
    self, parse_promise_target, AnswerBody, GoodbyeReason, Message, MAX_PROMISE_NUMBER,
    PROMISE_MARK, ROOT_OBJECT,
};
use crate::object::{
    decode_answer, encode_args, resolve_refs, CallContext, CallError, CallTimeout, Disconnect,
    Dispatch, LazyRef, ObjectRef, Outcome, ProtocolError, RefCodec, RefDesc, RefKind, Refusal,
    Reply,
};
use crate::outbox::{Budget, Lent, Outbox, Payload, PushError};
use crate::promise::{PromiseCell, SendGuard};
use crate::tls::TlsStream;
use crate::tub::{TubConfig, TubInner};

type Observer = Box<dyn FnOnce(&Disconnect) + Send>;

/// An inbound call, decoded and ready to run (it sends its own answer).
type CallTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A call waiting for a slot: its task, its argument bytes, and, if the peer can cancel it,
/// its control (whose `queued` flag is set while it waits here).
type QueuedCall = (CallTask, usize, Option<Arc<CallCtl>>);

/// The inbound calls running, and those waiting for a free slot in arrival order.
struct CallQueue {
    tasks: std::collections::VecDeque<QueuedCall>,
    /// The argument bytes of the queued calls, counted against the Tub's budget as well.
    bytes: Charged,
    /// Slots taken (calls running), at most `max_inbound_calls`. Counted under this lock,
    /// together with the queue, so that a slot coming free always goes to the call at its
    /// head.
    running: usize,
}

/// A count of bytes that is mirrored in the Tub's budget ([`Budget`]): `+=` and `-=` take
/// and give back there too, and whatever is still counted is given back on drop.
struct Charged {
    n: usize,
    budget: Arc<Budget>,
}

impl Charged {
    fn new(budget: Arc<Budget>) -> Charged {
        Charged { n: 0, budget }
    }

    fn get(&self) -> usize {
        self.n
    }

    /// Whether `more` bytes fit the Tub's budget now.
    fn tub_fits(&self, more: usize) -> bool {
        self.budget.fits(more)
    }

    fn clear(&mut self) {
        self.budget.give(std::mem::take(&mut self.n));
    }
}

impl std::ops::AddAssign<usize> for Charged {
    fn add_assign(&mut self, more: usize) {
        self.n += more;
        self.budget.take(more);
    }
}

impl std::ops::SubAssign<usize> for Charged {
    fn sub_assign(&mut self, less: usize) {
        self.n -= less;
        self.budget.give(less);
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A slot to run one inbound call, taken by [`ConnShared::try_slot`] and handed back with
/// [`ConnShared::finish_call`] (which gives it to the next queued call). Dropped otherwise (a
/// call task dropped unfinished), it is simply given back.
struct Slot(Option<Arc<ConnShared>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            lock(&conn.queue).running -= 1;
        }
    }
}

/// An answer's destination: decodes it for the caller and wakes the caller. Runs on the
/// reader task, in message order, with the answer still in the received frame.
pub(crate) trait Complete: Send + Sync {
    fn complete(&self, reply: Result<(Outcome<'_>, Vec<ObjectRef>), Disconnect>);
    /// The call's deadline passed first: it fails with `DeadlineExceeded(timeout)`.
    fn expire(&self, timeout: Duration);
    /// The call's deadline, if it has one.
    fn deadline(&self) -> Option<Deadline>;
}

/// Where one call's answer lands, decoded: the caller's half of the call, shared with the
/// pending table in a single allocation.
struct AnswerSlot<T, E> {
    state: Mutex<SlotState<T, E>>,
    /// Kept here rather than in the pending table, whose entries stay small: only the
    /// deadline sweeper reads it.
    deadline: Option<Deadline>,
}

struct SlotState<T, E> {
    /// The decoded answer, until the caller takes it.
    result: Option<Result<T, CallError<E>>>,
    /// The caller, to wake when the answer lands.
    waker: Option<Waker>,
}

impl<T, E> Complete for AnswerSlot<T, E>
where
    T: DeserializeOwned + Send,
    E: DeserializeOwned + Send,
{
    fn complete(&self, reply: Result<(Outcome<'_>, Vec<ObjectRef>), Disconnect>) {
        let result = match reply {
            Ok((reply, refs)) => decode_answer(reply, &refs),
            Err(reason) => Err(CallError::Disconnected(reason)),
        };
        self.finish(result);
    }

    fn expire(&self, timeout: Duration) {
        self.finish(Err(CallError::DeadlineExceeded(timeout)));
    }

    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
}

impl<T, E> AnswerSlot<T, E> {
    fn finish(&self, result: Result<T, CallError<E>>) {
        let waker = {
            let mut state = lock(&self.state);
            if state.result.is_some() {
                return; // completed already
            }
            state.result = Some(result);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The caller's wait for an answer (see [`completion`]).
pub(crate) struct Answer<T, E>(Arc<AnswerSlot<T, E>>);

impl<T, E> Future for Answer<T, E> {
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.0.state);
        if let Some(result) = state.result.take() {
            return Poll::Ready(result);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// One outstanding call's entry in the pending table. It completes the call once; dropped
/// without completing it (a connection torn down without running `close`), it fails the
/// call rather than leave the caller waiting.
pub(crate) struct Completion(pub(crate) Option<Arc<dyn Complete>>);

impl Completion {
    fn complete(mut self, reply: Result<(Outcome<'_>, Vec<ObjectRef>), Disconnect>) {
        if let Some(c) = self.0.take() {
            c.complete(reply);
        }
    }

    /// The call's deadline, if it has one.
    fn deadline(&self) -> Option<Deadline> {
        self.0.as_ref().and_then(|c| c.deadline())
    }

    /// Fails the call: its deadline has passed.
    fn expire(mut self) {
        if let Some(c) = self.0.take() {
            match c.deadline() {
                Some(d) => c.expire(d.timeout),
                // Not reached: only calls with a deadline are swept.
                None => c.expire(Duration::ZERO),
            }
        }
    }
}

/// When a call of ours must have its answer: `timeout` after it started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub(crate) at: tokio::time::Instant,
    pub(crate) timeout: Duration,
}

impl Deadline {
    /// `timeout` from `start`; `None` if that is too far to represent (no deadline then).
    fn after(start: tokio::time::Instant, timeout: Duration) -> Option<Deadline> {
        Some(Deadline {
            at: start.checked_add(timeout)?,
            timeout,
        })
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.complete(Err(Disconnect::TaskStopped));
        }
    }
}

/// The table of outstanding calls, keyed by call id.
type Pending = HashMap<u64, Completion, IdHash>;

/// Hashes the ids we hand out (call ids, export ids) with one multiplication. The keys of
/// these tables are our own counters, never chosen by the peer (whose messages only look ids
/// up, in tables bounded by our limits), so the standard hasher's protection against chosen
/// keys buys nothing on paths taken for every call. The multiplier spreads consecutive ids
/// over the hash's high bits as well.
type IdHash = BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Exports {
    next_id: u64,
    by_id: HashMap<u64, (Arc<dyn Dispatch>, u64), IdHash>,
    by_ptr: HashMap<usize, u64>,
}

struct ImportEntry {
    weak: Weak<RemoteInner>,
    received: u64,
    generation: u64,
}

struct LifeState {
    closed: Option<Disconnect>,
    observers: Vec<Observer>,
    tasks: Vec<AbortHandle>,
}

/// Inbound, protocol version 3 (docs/protocol.md §8): the peer's promise-able calls whose
/// answers we keep for calls pipelined on them, until the peer's `Finish`; and those calls,
/// while they wait. At most `max_kept_answers` entries and `max_held_calls` calls (with
/// `max_queued_call_bytes` of arguments).
struct KeptAnswers {
    entries: HashMap<u64, Kept>,
    /// Calls waiting in `entries`, and their argument bytes (counted against the Tub's
    /// budget as well).
    held: usize,
    held_bytes: Charged,
}

/// One promise-able call of the peer's.
enum Kept {
    /// Not answered yet: calls pipelined on it wait here, in arrival order. `finished`: the
    /// peer sent its `Finish` already, so nothing is kept once it is answered.
    Waiting { calls: Vec<Held>, finished: bool },
    /// Answered: the export ids of the answer's reference table (`None` for an entry that
    /// is not our own object), or why the call gave none.
    Settled(Result<Arc<[Option<u64>]>, String>),
}

/// A call pipelined on a promise whose answer does not exist yet. Its reference table was
/// resolved on arrival, like any call's.
struct Held {
    id: Option<u64>,
    timeout_ms: Option<u64>,
    received: tokio::time::Instant,
    index: u32,
    interface: String,
    method: String,
    args: Vec<u8>,
    refs: Vec<ObjectRef>,
}

/// What a promise target names right now.
enum Promised {
    Object(Arc<dyn Dispatch>),
    Pending,
    Broken(String),
}

/// The state of one connection, shared by its tasks and by every reference that uses it.
pub(crate) struct ConnShared {
    pub(crate) info: ConnectionInfo,
    me: Weak<ConnShared>,
    tub: Weak<TubInner>,
    /// Frames for the writer, within the write budget: our own calls wait for room; frames
    /// the peer provokes (answers, pongs, decrefs) that find none mean the peer is not
    /// reading, and the connection is closed rather than buffering without limit.
    outbox: Outbox,
    /// Set while the reader handles the frames of one read: frames they provoke are written
    /// together once it has handled them all ([`ConnShared::end_batch`]).
    reader_batching: std::sync::atomic::AtomicBool,
    /// A frame was queued into an empty outbox while the reader was batching, and nobody has
    /// written it or woken the writer task for it yet.
    flush_owed: std::sync::atomic::AtomicBool,
    max_frame_out: u32,
    pending: Mutex<Pending>,
    next_call_id: AtomicU64,
    exports: Mutex<Exports>,
    imports: Mutex<HashMap<u64, ImportEntry>>,
    next_generation: AtomicU64,
    /// Calls running and calls decoded while every inbound slot was taken. The reader keeps reading (answers to
    /// our own calls may be right behind them: a method calling back into its caller must
    /// not deadlock) until this queue is full, and only then stops.
    queue: Mutex<CallQueue>,
    /// The length of `queue`'s tasks, stored under its lock: lets the reader see an empty
    /// queue without taking the lock for every call.
    queued_calls: std::sync::atomic::AtomicUsize,
    queue_room: tokio::sync::Notify,
    /// The inbound calls the peer may still cancel (protocol version 2), by call id: those
    /// queued, and those running that did not finish on their first poll. Keyed by the
    /// peer's ids, hence the standard hasher; bounded by the running and queued calls.
    inbound: Mutex<HashMap<u64, Arc<CallCtl>>>,
    /// Our own calls awaiting answers, at most `max_outbound_calls`.
    pub(crate) outbound: Limit,
    /// Inbound, protocol version 3: what is kept of the answers to the peer's promise-able
    /// calls, and the calls pipelined on them that wait for those answers.
    kept: Mutex<KeptAnswers>,
    /// Outbound: our promise-able calls whose `Finish` is not sent yet, at most
    /// [`MAX_UNFINISHED`].
    pub(crate) unfinished: std::sync::atomic::AtomicUsize,
    /// No earlier deadline than this is held by a call in `pending` (see
    /// [`ConnShared::arm_deadline`]): nanoseconds after `deadline_base`, plus 1; 0 for
    /// none. Changed only under the `pending` lock.
    armed: AtomicU64,
    deadline_base: tokio::time::Instant,
    /// Wakes the deadline sweeper: an earlier deadline was armed, or the connection closed.
    sweep: tokio::sync::Notify,
    sweeper_started: std::sync::atomic::AtomicBool,
    life: Mutex<LifeState>,
    /// Set once by close(): the reader checks it between frames, so a closed connection stops
    /// consuming input even while input keeps arriving.
    is_closed: std::sync::atomic::AtomicBool,
    closed_tx: watch::Sender<Option<Disconnect>>,
    started: Instant,
    last_received_ms: AtomicU64,
    pub(crate) established_at: SystemTime,
    pub(crate) winning_hint: Option<String>,
    config: Arc<TubConfig>,
}

/// A reference to an object a peer exported to us.
pub(crate) struct RemoteInner {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) id: u64,
    pub(crate) interface: String,
    generation: u64,
    pub(crate) furl: OnceLock<Furl>,
}

impl Drop for RemoteInner {
    fn drop(&mut self) {
        if let Some(count) = self.conn.release_import(self.id, self.generation) {
            self.conn.send_message(&Message::Decref {
                target: self.id,
                count,
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer tasks of one Tub's connections that have not ended, counted so that
/// `Tub::shutdown` can wait for them: a closing connection's writer ends once it has written
/// what was queued and the goodbye and shut the stream (TLS close_notify, then the stream's
/// own shutdown), or has given up. One counter for the Tub, however many connections close.
#[derive(Default)]
pub(crate) struct Writers {
    live: std::sync::atomic::AtomicUsize,
    /// Notified when the count comes down to zero.
    ended: tokio::sync::Notify,
}

impl Writers {
    /// Counts one more writer, until the returned guard is dropped (with the writer task's
    /// future, however it ends: finished, aborted, or its runtime gone).
    fn enter(self: &Arc<Self>) -> WriterAlive {
        self.live.fetch_add(1, Ordering::SeqCst);
        WriterAlive(self.clone())
    }

    /// Writers that have not ended.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Waits until no writer is left.
    pub(crate) async fn all_ended(&self) {
        loop {
            // Registered before looking, so that the last writer ending in between is seen.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// One writer task counted in [`Writers`].
struct WriterAlive(Arc<Writers>);

impl Drop for WriterAlive {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl ConnShared {
    /// Builds a freshly established connection. Its tasks start when the returned starter
    /// is called, after the Tub has recorded the connection, so that nothing it does can run
    /// ahead of that; its writer task is counted in `writers` until it ends.
    pub(crate) fn create<S>(
        est: Established<S>,
        tub: Weak<TubInner>,
        config: Arc<TubConfig>,
        budget: Arc<Budget>,
        writers: Arc<Writers>,
        winning_hint: Option<String>,
    ) -> (Arc<ConnShared>, Box<dyn FnOnce() + Send>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Established {
            reader,
            writer,
            info,
        } = est;
        let (closed_tx, _) = watch::channel(None);
        let shared = Arc::new_cyclic(|me| ConnShared {
            max_frame_out: writer.max_len(),
            info,
            me: me.clone(),
            tub,
            outbox: Outbox::new(writer.max_len(), config.max_write_queue, budget.clone()),
            reader_batching: std::sync::atomic::AtomicBool::new(false),
            flush_owed: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            next_call_id: AtomicU64::new(1),
            exports: Mutex::new(Exports {
                next_id: 1,
                by_id: HashMap::default(),
                by_ptr: HashMap::new(),
            }),
            imports: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1), // 0 marks the root, which is never counted
            queue: Mutex::new(CallQueue {
                tasks: Default::default(),
                bytes: Charged::new(budget.clone()),
                running: 0,
            }),
            queued_calls: std::sync::atomic::AtomicUsize::new(0),
            queue_room: tokio::sync::Notify::new(),
            inbound: Mutex::new(HashMap::new()),
            outbound: Limit::new(config.max_outbound_calls),
            kept: Mutex::new(KeptAnswers {
                entries: HashMap::new(),
                held: 0,
                held_bytes: Charged::new(budget.clone()),
            }),
            unfinished: std::sync::atomic::AtomicUsize::new(0),
            armed: AtomicU64::new(0),
            deadline_base: tokio::time::Instant::now(),
            sweep: tokio::sync::Notify::new(),
            sweeper_started: std::sync::atomic::AtomicBool::new(false),
            is_closed: std::sync::atomic::AtomicBool::new(false),
            life: Mutex::new(LifeState {
                closed: None,
                observers: Vec::new(),
                tasks: Vec::new(),
            }),
            closed_tx,
            started: Instant::now(),
            last_received_ms: AtomicU64::new(0),
            established_at: SystemTime::now(),
            winning_hint,
            config,
        });
        let (write_half, held) = writer.into_parts();
        shared.outbox.attach(write_half, held);
        let conn = shared.clone();
        let starter = move || {
            let span = info_span!(
                "connection",
                peer = %conn.info.peer,
                side = ?conn.info.side,
                hint = conn.winning_hint.as_deref().unwrap_or("-"),
            );
            // A held hello waits in the outbox for the reader's first write (end_batch), made
            // once it has handled the frames that came with the client's hello: their
            // answers leave with it, whichever task runs first.
            let r = tokio::spawn(reader_loop(conn.clone(), reader).instrument(span.clone()));
            let alive = writers.enter();
            let w = tokio::spawn(writer_loop(conn.clone(), alive).instrument(span));
            let tasks = vec![w.abort_handle(), r.abort_handle()];
            let mut life = lock(&conn.life);
            if life.closed.is_some() {
                // Closed before it started (it lost the duplicate rule): stop the reader; the
                // writer delivers the goodbye queued by close().
                for t in tasks.iter().skip(1) {
                    t.abort();
                }
            } else {
                life.tasks = tasks;
            }
            drop(life);
            debug!(peer = %conn.info.peer, "connection started");
        };
        (shared, Box::new(starter))
    }

    fn arc(&self) -> Arc<ConnShared> {
        self.me.upgrade().expect("a connection in use is alive")
    }

    /// Why the connection closed, if it has.
    pub(crate) fn closed_reason(&self) -> Option<Disconnect> {
        // Every call asks, twice: the flag answers without the lock while the connection is
        // open. It is set under the lock together with the reason.
        if !self.is_closed.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.life).closed.clone()
    }

    /// When data last arrived from the peer.
    pub(crate) fn last_received(&self) -> SystemTime {
        self.established_at + Duration::from_millis(self.last_received_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_received_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let ms = self.last_received_ms.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(ms))
    }

    /// Queues a frame the peer provoked. Returns false if the connection is closed, the frame
    /// cannot be encoded, or the peer has left too much unread (which closes the connection).
    fn send_message(&self, msg: &Message<'_>) -> bool {
        self.send_message_lending(msg, None)
    }

    /// Queues a frame the peer provoked, as [`ConnShared::send_message`], with `lent` (a
    /// payload of `msg`, see [`Payload`]) lent to the outbox rather than copied.
    fn send_message_lending(&self, msg: &Message<'_>, lent: Option<&Lent>) -> bool {
        match self.outbox.push_lending(msg, lent) {
            Ok(first) => {
                self.queued(first, false);
                true
            }
            Err(PushError::Encode(e)) => {
                warn!("cannot send a message: {e}");
                false
            }
            Err(PushError::Full) => {
                // Nothing more can reach a peer that does not read: drop the stream at once.
                self.close_with(
                    Disconnect::NotReading(format!(
                        "over {} bytes are waiting to be sent to it",
                        self.config.max_write_queue
                    )),
                    None,
                    Duration::ZERO,
                );
                false
            }
            Err(PushError::TubFull) => self.send_in_full_tub(msg, lent),
            Err(PushError::Closed) => false,
        }
    }

    /// A frame the peer provoked finds the Tub's budget full (the connection's own has room):
    /// the connection whose peer has left the most unread is closed, and the frame is tried
    /// once more. If that connection is this one, or the frame still does not fit, this
    /// connection is closed.
    fn send_in_full_tub(&self, msg: &Message<'_>, lent: Option<&Lent>) -> bool {
        let why = |what: &str| {
            Disconnect::NotReading(format!(
                "this Tub's {} bytes of buffers are full, and {what}",
                self.config.max_buffered_bytes
            ))
        };
        let heaviest = self.tub.upgrade().and_then(|t| t.heaviest_writer());
        if let Some(other) = heaviest.filter(|c| !std::ptr::eq(Arc::as_ptr(c), self)) {
            other.close_with(
                why("the most of them waited for this peer"),
                None,
                Duration::ZERO,
            );
            if let Ok(first) = self.outbox.push_lending(msg, lent) {
                self.queued(first, false);
                return true;
            }
        }
        self.close_with(
            why("the most of them waited for this peer"),
            None,
            Duration::ZERO,
        );
        false
    }

    /// The bytes waiting to be written to the peer (for the Tub's choice of whom to close
    /// when its budget is full).
    pub(crate) fn unwritten(&self) -> usize {
        self.outbox.counted()
    }

    /// Tells the peer that we no longer wait for the answer to our call `id` (protocol
    /// version 2). Best effort: a `Cancel` that finds the write budget full is not sent (the
    /// peer stops the call at its deadline, if it has one), rather than closing a connection
    /// our own calls have filled.
    fn send_cancel(&self, id: u64) {
        match self.outbox.push(&Message::Cancel { id }) {
            Ok(first) => self.queued(first, false),
            Err(e) => debug!(id, "no cancel sent: {e:?}"),
        }
    }

    /// Sees that a frame just queued gets written. Only the first frame into an empty queue
    /// needs anyone told (`first`): the writers take everything queued at once. With `now`
    /// (no more frames are expected soon) it is written on this task at once. Otherwise the
    /// writer task is woken, or, while the reader is handling the frames of one read, the
    /// reader writes them all once it has ([`ConnShared::end_batch`]).
    fn queued(&self, first: bool, now: bool) {
        if !first {
            return;
        }
        if now {
            self.write_now();
            return;
        }
        // Owed first, then the look at the reader: either the reader's end_batch finds the
        // debt, or this finds the reader done and pays it (whoever swaps it out).
        self.flush_owed.store(true, Ordering::SeqCst);
        if !self.reader_batching.load(Ordering::SeqCst)
            && self.flush_owed.swap(false, Ordering::SeqCst)
        {
            self.outbox.wake_writer();
        }
    }

    /// Writes what is queued on this task (see [`Outbox::write_now`]); a failed write closes
    /// the connection, as it would in the writer task.
    fn write_now(&self) {
        if let Err(e) = self.outbox.write_now() {
            self.close(Disconnect::WriteFailed(ErrorChain(&e).to_string()), None);
        }
    }

    /// The reader is about to handle the frames of one read.
    fn begin_batch(&self) {
        self.reader_batching.store(true, Ordering::SeqCst);
    }

    /// The reader has handled every frame it had (or is about to wait for room): what they
    /// provoked is written now, in one write.
    ///
    /// A server's hello is held in the outbox until then (the writer task leaves it): the
    /// reader's first batch is the frames that came with the client's hello, and their
    /// answers leave with the hello in one write (handshake.md §6.2).
    fn end_batch(&self) {
        self.reader_batching.store(false, Ordering::SeqCst);
        let owed = self.flush_owed.swap(false, Ordering::SeqCst);
        if owed || self.outbox.holds() {
            self.write_now();
        }
    }

    /// Runs `observer` once when the connection closes (at once if it has).
    pub(crate) fn on_disconnect(&self, observer: impl FnOnce(&Disconnect) + Send + 'static) {
        let mut life = lock(&self.life);
        match life.closed.clone() {
            Some(reason) => {
                drop(life);
                observer(&reason);
            }
            None => life.observers.push(Box::new(observer)),
        }
    }

    /// Waits for the connection to close and returns the reason.
    pub(crate) async fn closed(&self) -> Disconnect {
        let mut rx = self.closed_tx.subscribe();
        let reason = rx.wait_for(|r| r.is_some()).await.map(|r| r.clone());
        match reason {
            Ok(Some(r)) => r,
            _ => Disconnect::TaskStopped,
        }
    }

    /// Closes the connection, once. Pending calls fail with `reason`; observers run. The
    /// writer gets [`CLOSE_LINGER`] to deliver the goodbye.
    pub(crate) fn close(&self, reason: Disconnect, goodbye: Option<GoodbyeReason>) {
        self.close_with(reason, goodbye, CLOSE_LINGER);
    }

    /// Like [`ConnShared::close`]; with `linger` zero the writer is stopped at once instead
    /// of being given [`CLOSE_LINGER`] to deliver what was queued and the goodbye.
    fn close_with(&self, reason: Disconnect, goodbye: Option<GoodbyeReason>, linger: Duration) {
        let (observers, tasks) = {
            let mut life = lock(&self.life);
            if life.closed.is_some() {
                return;
            }
            life.closed = Some(reason.clone());
            self.is_closed.store(true, Ordering::SeqCst);
            (
                std::mem::take(&mut life.observers),
                std::mem::take(&mut life.tasks),
            )
        };
        debug!(peer = %self.info.peer, %reason, "connection closed");
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, complete) in pending {
            complete.complete(Err(reason.clone()));
        }
        let farewell = goodbye
            .and_then(|g| encode_frame(&Message::Goodbye { reason: g }, self.max_frame_out).ok());
        self.outbox.close(farewell);
        // The writer task is left to say goodbye and shut the stream, for a while; the others
        // stop now.
        for t in tasks.iter().skip(1) {
            t.abort();
        }
        // A lingering writer stops itself after CLOSE_LINGER (writer_loop): no task and no
        // timer is left behind for a writer that finishes sooner, as almost all do.
        if let Some(writer) = tasks.first() {
            if linger.is_zero() {
                writer.abort();
            }
        }
        // `send` would drop the value when nobody is subscribed yet, and a later `closed()`
        // would then wait for ever: the value is stored whoever listens.
        self.closed_tx.send_replace(Some(reason.clone()));
        if let Some(tub) = self.tub.upgrade() {
            tub.forget_connection(self);
        }
        for o in observers {
            if std::panic::catch_unwind(AssertUnwindSafe(|| o(&reason))).is_err() {
                warn!("a disconnect observer panicked");
            }
        }
        // Calls still waiting for a slot will never be answered. (Those running keep their
        // slots until they end.) Dropped after the lock is released.
        let queued = {
            let mut q = lock(&self.queue);
            q.bytes.clear();
            self.queued_calls.store(0, Ordering::Relaxed);
            std::mem::take(&mut q.tasks)
        };
        drop(queued);
        // Nothing can be cancelled any more. (Those still running end by themselves.)
        let cancellable = std::mem::take(&mut *lock(&self.inbound));
        drop(cancellable);
        // Calls held for promised answers never run; what was kept is forgotten. Dropped
        // after the lock is released: the references the calls carried are let go.
        let kept = {
            let mut kept = lock(&self.kept);
            kept.held = 0;
            kept.held_bytes.clear();
            std::mem::take(&mut kept.entries)
        };
        drop(kept);
        // No deadline is left to watch: the sweeper ends.
        self.sweep.notify_one();
        self.queue_room.notify_waiters();
        // Exported objects are no longer reachable through this connection. They are dropped
        // after the lock is released: their Drop may use this connection.
        let released = {
            let mut ex = lock(&self.exports);
            ex.by_ptr.clear();
            std::mem::take(&mut ex.by_id)
        };
        drop(released);
    }

    fn export(&self, obj: &Arc<dyn Dispatch>) -> Result<u64, String> {
        if let Some(reason) = self.closed_reason() {
            return Err(format!("the connection is closed ({reason})"));
        }
        let mut ex = lock(&self.exports);
        let key = Arc::as_ptr(obj) as *const () as usize;
        if let Some(&id) = ex.by_ptr.get(&key) {
            if let Some(entry) = ex.by_id.get_mut(&id) {
                entry.1 += 1;
                return Ok(id);
            }
        }
        if ex.by_id.len() >= self.config.max_exports {
            return Err(format!(
                "this connection already exports {} objects (the limit)",
                self.config.max_exports
            ));
        }
        let id = ex.next_id;
        ex.next_id += 1;
        ex.by_id.insert(id, (obj.clone(), 1));
        ex.by_ptr.insert(key, id);
        Ok(id)
    }

    fn exported(&self, id: u64) -> Option<Arc<dyn Dispatch>> {
        lock(&self.exports).by_id.get(&id).map(|e| e.0.clone())
    }

    /// Number of objects exported on this connection (for tests and status).
    pub(crate) fn export_count(&self) -> usize {
        lock(&self.exports).by_id.len()
    }

    fn decref(&self, id: u64, count: u64) {
        let mut ex = lock(&self.exports);
        let Some(entry) = ex.by_id.get_mut(&id) else {
            debug!(id, "decref for an object no longer exported");
            return;
        };
        entry.1 = entry.1.saturating_sub(count);
        if entry.1 == 0 {
            let (obj, _) = ex.by_id.remove(&id).expect("present");
            ex.by_ptr.remove(&(Arc::as_ptr(&obj) as *const () as usize));
            drop(ex);
            debug!(id, "export released");
            drop(obj); // outside the lock: its Drop may use this connection
        }
    }

    fn import(&self, id: u64, interface: String) -> Result<Arc<RemoteInner>, String> {
        let mut imports = lock(&self.imports);
        let mut stale = None;
        if let Some(entry) = imports.get_mut(&id) {
            match entry.weak.upgrade() {
                Some(strong) => {
                    entry.received += 1;
                    return Ok(strong);
                }
                // Its last handle is being dropped right now: settle its count here, and let
                // the dropping handle find a newer generation and send nothing.
                None => stale = Some(entry.received),
            }
        }
        if stale.is_none() && imports.len() >= self.config.max_imports {
            return Err(format!(
                "the peer sent more than {} references on this connection (the limit)",
                self.config.max_imports
            ));
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(RemoteInner {
            conn: self.arc(),
            id,
            interface,
            generation,
            furl: OnceLock::new(),
        });
        imports.insert(
            id,
            ImportEntry {
                weak: Arc::downgrade(&inner),
                received: 1,
                generation,
            },
        );
        drop(imports);
        if let Some(count) = stale {
            self.send_message(&Message::Decref { target: id, count });
        }
        Ok(inner)
    }

    fn release_import(&self, id: u64, generation: u64) -> Option<u64> {
        let mut imports = lock(&self.imports);
        match imports.get(&id) {
            Some(e) if e.generation == generation => imports.remove(&id).map(|e| e.received),
            _ => None,
        }
    }

    /// The peer's root object (id 0): always there, never reference-counted.
    pub(crate) fn remote_root(&self) -> ObjectRef {
        ObjectRef::new(RefKind::Remote(Arc::new(RemoteInner {
            conn: self.arc(),
            id: ROOT_OBJECT,
            interface: crate::tub::ROOT_INTERFACE.to_string(),
            generation: 0,
            furl: OnceLock::new(),
        })))
    }

    /// Waits until a call of `size` argument bytes may be queued (always at once when the
    /// queue is empty).
    async fn wait_for_queue_room(&self, size: usize) {
        // Registering for a wake-up takes the Notify's lock: only do it when there is no room.
        if self.has_queue_room(size) {
            return;
        }
        // Frames queued by the reader's batch so far must not wait as long as this may.
        self.end_batch();
        let _rebatch = Rebatch(self);
        loop {
            let room = self.queue_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.has_queue_room(size) {
                return;
            }
            room.await;
        }
    }

    fn has_queue_room(&self, size: usize) -> bool {
        // Only the reader (which asks) adds to the queue: seen empty here, it is empty.
        if self.queued_calls.load(Ordering::Relaxed) == 0 {
            return true;
        }
        // The connection's own bounds, and the Tub's budget, which all connections share. A
        // reader waiting for room here is woken as its own queued calls start, so a full
        // Tub slows every peer that has calls queued, and stops none for good.
        let q = lock(&self.queue);
        q.tasks.is_empty()
            || self.is_closed.load(Ordering::Relaxed)
            || (q.tasks.len() < self.config.max_queued_calls
                && q.bytes.get() + size <= self.config.max_queued_call_bytes
                && q.bytes.tub_fits(size))
    }

    /// Slots taken by running inbound calls.
    #[cfg(test)]
    pub(crate) fn running_calls(&self) -> usize {
        lock(&self.queue).running
    }

    /// Takes a slot to run a call now, if one is free and no call waits before it.
    fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        let mut q = lock(&self.queue);
        if !q.tasks.is_empty() || q.running >= self.config.max_inbound_calls.max(1) {
            return None;
        }
        q.running += 1;
        drop(q);
        Some(Slot(Some(self.clone())))
    }

    /// Queues `task` (of `size` argument bytes) until a slot comes free; `ctl`, if the peer
    /// may cancel it meanwhile.
    fn queue_call(self: &Arc<Self>, task: CallTask, size: usize, ctl: Option<Arc<CallCtl>>) {
        let mut q = lock(&self.queue);
        q.bytes += size;
        if let Some(ctl) = &ctl {
            ctl.queued.store(true, Ordering::Relaxed);
        }
        q.tasks.push_back((task, size, ctl));
        self.queued_calls.store(q.tasks.len(), Ordering::Relaxed);
        // A slot may have come free meanwhile.
        let mut start = Vec::new();
        while q.running < self.config.max_inbound_calls.max(1) {
            let Some((task, size, ctl)) = q.tasks.pop_front() else {
                break;
            };
            if let Some(ctl) = ctl {
                ctl.queued.store(false, Ordering::Relaxed);
            }
            self.queued_calls.store(q.tasks.len(), Ordering::Relaxed);
            q.bytes -= size;
            q.running += 1;
            start.push(task);
        }
        drop(q);
        for task in start {
            self.spawn_call(task, Slot(Some(self.clone())));
        }
    }

    fn spawn_call(&self, task: CallTask, slot: Slot) {
        tokio::spawn(async move {
            task.await;
            if let Some(conn) = slot.0.clone() {
                conn.finish_call(slot);
            }
        });
    }

    /// A call finished: its slot goes to the next queued call, if any.
    fn finish_call(&self, mut slot: Slot) {
        let mut q = lock(&self.queue);
        let next = q.tasks.pop_front();
        self.queued_calls.store(q.tasks.len(), Ordering::Relaxed);
        match next {
            Some((task, size, ctl)) => {
                if let Some(ctl) = ctl {
                    ctl.queued.store(false, Ordering::Relaxed);
                }
                q.bytes -= size;
                drop(q);
                self.queue_room.notify_waiters();
                self.spawn_call(task, slot);
            }
            None => {
                // Given back under the lock, so that queue_call cannot miss it.
                q.running -= 1;
                drop(q);
                slot.0 = None;
            }
        }
    }

    fn root(&self) -> Arc<dyn Dispatch> {
        Arc::new(crate::tub::Root(self.tub.clone()))
    }

    /// True when no inbound call is running or waiting to run, and none of our calls awaits
    /// an answer.
    pub(crate) fn is_idle(&self) -> bool {
        let inbound_idle = {
            let q = lock(&self.queue);
            q.running == 0 && q.tasks.is_empty()
        };
        inbound_idle && lock(&self.kept).held == 0 && lock(&self.pending).is_empty()
    }

    /// Sees that the deadline sweeper wakes by `at`, the deadline of a call just entered in
    /// `pending` (whose lock the caller holds). Costs an atomic load and compare: only a
    /// deadline earlier than every one armed (the first after the sweeper found none, or
    /// one with a shorter timeout) wakes the sweeper, starting it on first use.
    fn arm_deadline(&self, at: tokio::time::Instant) {
        let code = self.deadline_code(at);
        let armed = self.armed.load(Ordering::Relaxed);
        if armed != 0 && armed <= code {
            return;
        }
        self.armed.store(code, Ordering::Relaxed);
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(sweep_deadlines(self.arc()));
            }
        }
        self.sweep.notify_one();
    }

    fn deadline_code(&self, at: tokio::time::Instant) -> u64 {
        let after = at.saturating_duration_since(self.deadline_base).as_nanos();
        u64::try_from(after).unwrap_or(u64::MAX - 1) + 1
    }

    /// Fails every pending call whose deadline has passed with `DeadlineExceeded`, and arms
    /// the earliest deadline left. Scans the pending table, which `max_outbound_calls`
    /// bounds; runs only when an armed deadline passes.
    fn expire_due(&self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<Completion> = {
            let mut pending = lock(&self.pending);
            let mut next: Option<tokio::time::Instant> = None;
            let mut due = Vec::new();
            for (&id, c) in pending.iter() {
                match c.deadline() {
                    Some(d) if d.at <= now => due.push(id),
                    Some(d) => next = Some(next.map_or(d.at, |n| n.min(d.at))),
                    None => {}
                }
            }
            self.armed.store(
                next.map_or(0, |at| self.deadline_code(at)),
                Ordering::Relaxed,
            );
            due.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for c in expired {
            c.expire();
        }
    }

    /// Makes inbound call `id` cancellable by the peer until [`ConnShared::unwatch_inbound`].
    /// A second call with the same id (a peer breaking the rule that ids are unique among
    /// its outstanding calls) takes the id over: only its own calls suffer.
    fn watch_inbound(&self, id: u64) -> Arc<CallCtl> {
        let ctl = Arc::new(CallCtl::default());
        lock(&self.inbound).insert(id, ctl.clone());
        ctl
    }

    /// Inbound call `id` (controlled by `ctl`) has ended.
    fn unwatch_inbound(&self, id: u64, ctl: &Arc<CallCtl>) {
        let mut inbound = lock(&self.inbound);
        if inbound.get(&id).is_some_and(|c| Arc::ptr_eq(c, ctl)) {
            inbound.remove(&id);
        }
    }

    /// The peer cancelled its call `id` (docs/protocol.md §7): a call still waiting for a
    /// slot leaves the queue without ever running; a running one is stopped (its future
    /// dropped) by its task, which then hands its slot on. No answer is sent. An unknown id
    /// (a call that has ended, or never was) is ignored.
    fn cancel_inbound(self: &Arc<Self>, id: u64) {
        let Some(ctl) = lock(&self.inbound).remove(&id) else {
            self.unhold(id);
            return;
        };
        let removed = {
            let mut q = lock(&self.queue);
            // Under the queue's lock: a call leaves the queue and clears its flag together.
            if ctl.queued.load(Ordering::Relaxed) {
                let at = q
                    .tasks
                    .iter()
                    .position(|(_, _, c)| c.as_ref().is_some_and(|c| Arc::ptr_eq(c, &ctl)));
                let entry = at.and_then(|at| q.tasks.remove(at));
                if let Some((_, size, _)) = &entry {
                    q.bytes -= *size;
                    self.queued_calls.store(q.tasks.len(), Ordering::Relaxed);
                }
                entry
            } else {
                None
            }
        };
        match removed {
            Some(entry) => {
                debug!(id, "a queued call was cancelled");
                drop(entry); // outside the lock: dropping a call releases what it holds
                self.queue_room.notify_waiters();
                self.settle(id, Err("it was cancelled by its caller".into()));
            }
            None => ctl.cancel(),
        }
    }
}

impl RefCodec for ConnShared {
    fn encode(&self, r: &ObjectRef) -> Result<RefDesc, String> {
        match &r.0 {
            RefKind::Local(d) => Ok(RefDesc::Mine {
                id: self.export(d)?,
                interface: d.interface().to_string(),
            }),
            RefKind::Remote(inner) if std::ptr::eq(Arc::as_ptr(&inner.conn), self) => {
                Ok(RefDesc::Yours { id: inner.id })
            }
            RefKind::Remote(inner) => match inner.furl.get() {
                Some(furl) => Ok(RefDesc::Gift {
                    furl: furl.to_string(),
                    interface: inner.interface.clone(),
                }),
                None => Err(format!(
                    "a reference to an object on Tub {} can be passed to Tub {} only if it was \
                     obtained from a FURL",
                    inner.conn.info.peer, self.info.peer
                )),
            },
            RefKind::Furl(lazy) => Ok(RefDesc::Gift {
                furl: lazy.furl.to_string(),
                interface: lazy.interface.clone(),
            }),
            // A promise target never travels in a reference table (protocol.md §8): the
            // reference goes once it exists.
            RefKind::Promise(p) => match p.settled_reference() {
                Some(Ok(real)) => self.encode(&real),
                Some(Err(why)) => Err(format!("a promised reference cannot be sent: {why}")),
                None => Err(
                    "a promised reference can be sent only once its answer has arrived: \
                     await `resolved()` first"
                        .into(),
                ),
            },
        }
    }

    fn decode(&self, d: RefDesc) -> Result<ObjectRef, String> {
        match d {
            RefDesc::Mine {
                id: ROOT_OBJECT, ..
            } => Err("export id 0 is reserved for the root object".into()),
            RefDesc::Mine { id, interface } => {
                Ok(ObjectRef::new(RefKind::Remote(self.import(id, interface)?)))
            }
            // Export ids count from 1; the root is never passed as a reference.
            RefDesc::Yours { id: ROOT_OBJECT } => {
                Err("object id 0 is the root object, which is never passed as a reference".into())
            }
            RefDesc::Yours { id } => self
                .exported(id)
                .map(|d| ObjectRef::new(RefKind::Local(d)))
                .ok_or_else(|| {
                    format!("the peer named our object {id}, which is not exported to it")
                }),
            RefDesc::Gift { furl, interface } => {
                if !self.config.accept_gifts {
                    return Err("this Tub refuses third-party references (gifts)".into());
                }
                let furl: Furl = furl
                    .parse()
                    .map_err(|e| format!("the gift's FURL does not parse: {}", ErrorChain(&e)))?;
                Ok(ObjectRef::new(RefKind::Furl(Arc::new(LazyRef {
                    furl,
                    interface,
                    tub: self.tub.clone(),
                    resolved: Mutex::new(None),
                }))))
            }
            RefDesc::Local { .. } => Err("a loopback reference arrived over a connection".into()),
        }
    }

    fn rollback(&self, table: &[RefDesc]) {
        for desc in table {
            if let RefDesc::Mine { id, .. } = desc {
                self.decref(*id, 1);
            }
        }
    }

    fn release_unaccepted(&self, ids: &[u64]) {
        // The peer counted one sending of each entry; a decref gives it back, as if each had
        // been imported and dropped at once. (The root, id 0, is never counted.)
        let mut counts = std::collections::BTreeMap::<u64, u64>::new();
        for &id in ids.iter().filter(|&&id| id != ROOT_OBJECT) {
            *counts.entry(id).or_default() += 1;
        }
        for (target, count) in counts {
            self.send_message(&Message::Decref { target, count });
        }
    }
}

/// A pending call's entry for the pending table, and the caller's wait for its answer.
fn completion<T, E>(deadline: Option<Deadline>) -> (Completion, Answer<T, E>)
where
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    let slot = Arc::new(AnswerSlot {
        state: Mutex::new(SlotState {
            result: None,
            waker: None,
        }),
        deadline,
    });
    (Completion(Some(slot.clone())), Answer(slot))
}

/// The number of the call a client sends right behind its hello, before the server's hello
/// arrives: the FURL's resolution (docs/protocol.md §5). When a call is pipelined on it in
/// the same flight (id 2), it is sent promise-able, with id `PROMISE_MARK | 1`; otherwise
/// as an ordinary call with id 1, so that a dial that pipelines nothing pays nothing (no
/// kept answer, no `Finish`). A connection that carried them numbers its own calls after
/// them.
pub(crate) const EARLY_CALL_ID: u64 = 1;

/// The frame of `msg` as early data: `None` if its payload is over
/// [`crate::handshake::MIN_FRAME_LIMIT`], the least limit a server may announce.
pub(crate) fn early_frame(msg: &Message<'_>) -> Option<Vec<u8>> {
    encode_frame(msg, crate::handshake::MIN_FRAME_LIMIT).ok()
}

/// The id of the early resolution: promise-able if a call is pipelined on it.
fn early_resolution_id(pipelined: bool) -> u64 {
    if pipelined {
        PROMISE_MARK | EARLY_CALL_ID
    } else {
        EARLY_CALL_ID
    }
}

/// The early frame that resolves `swissnum` on the peer's root (promise-able if a call is
/// `pipelined` on it).
pub(crate) fn early_resolution(swissnum: &str, pipelined: bool) -> Option<Vec<u8>> {
    let args = postcard::to_allocvec(&(swissnum,)).ok()?;
    early_frame(&Message::Call {
        id: early_resolution_id(pipelined),
        target: ROOT_OBJECT,
        interface: crate::tub::ROOT_INTERFACE,
        method: "get_reference",
        args: &args,
        refs: Vec::new(),
    })
}

/// The early frame of a call pipelined on the early resolution (reference 0 of its answer),
/// if its arguments carry no reference (there is no connection yet to export one on) and
/// it fits. A version-1 `Call`, as early data must be: its timeout stays the caller's own.
pub(crate) fn early_pipelined_call<A: Serialize>(
    interface: &str,
    method: &str,
    args: &A,
) -> Option<Vec<u8>> {
    let codec: Arc<dyn RefCodec> = Arc::new(NoReferences);
    let (args, refs) = crate::object::encode_value(&codec, args).ok()?;
    if !refs.is_empty() {
        return None;
    }
    early_frame(&Message::Call {
        id: EARLY_CALL_ID + 1,
        target: message::promise_target(PROMISE_MARK | EARLY_CALL_ID, 0)?,
        interface,
        method,
        args: &args,
        refs,
    })
}

/// A codec for arguments that may carry no reference.
struct NoReferences;

impl RefCodec for NoReferences {
    fn encode(&self, _: &ObjectRef) -> Result<RefDesc, String> {
        Err("no reference can be sent before the connection exists".into())
    }

    fn decode(&self, _: RefDesc) -> Result<ObjectRef, String> {
        Err("no reference can be received here".into())
    }
}

/// A call sent behind our hello, pipelined on the FURL's resolution: its frame, and where
/// its answer lands.
pub(crate) struct EarlyCall {
    pub(crate) frame: Vec<u8>,
    pub(crate) completion: Completion,
}

/// Make a call's pending entry for an early call (see [`early_pipelined_call`]).
pub(crate) fn early_completion<T, E>(timeout: Option<Duration>) -> (Completion, Answer<T, E>)
where
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    completion(timeout.and_then(|t| Deadline::after(tokio::time::Instant::now(), t)))
}

impl ConnShared {
    /// Registers where the answers to the frames sent behind our hello land: the FURL's
    /// resolution (its promise cell) and, if one went with it, the call pipelined on it.
    /// Runs before anyone else can see the connection, and before its reader starts; this
    /// connection's own calls are numbered after them.
    pub(crate) fn expect_early(self: &Arc<Self>, call: Option<Completion>) -> Arc<PromiseCell> {
        let marked = call.is_some() && self.info.version >= 3;
        let id = early_resolution_id(call.is_some());
        let cell = PromiseCell::remote(self.clone(), id, marked, "get_reference", None);
        let mut next = EARLY_CALL_ID + 1;
        let mut pending = lock(&self.pending);
        pending.insert(id, Completion(Some(cell.clone())));
        if let Some(call) = call {
            if let Some(d) = call.deadline() {
                self.arm_deadline(d.at);
            }
            pending.insert(next, call);
            next += 1;
        }
        drop(pending);
        self.next_call_id.store(next, Ordering::Relaxed);
        cell
    }
}

/// Resumes the reader's batch when the reader is done waiting for queue room.
struct Rebatch<'a>(&'a ConnShared);

impl Drop for Rebatch<'_> {
    fn drop(&mut self) {
        self.0.begin_batch();
    }
}

/// Removes a pending call's entry if the caller gives up (its future is dropped). If the
/// call had been sent and no answer has come, the peer is told with a `Cancel` (protocol
/// version 2), unless the call's deadline has passed: the peer stops it by itself then.
struct PendingGuard<'a> {
    conn: &'a ConnShared,
    id: u64,
    /// The call is queued for sending, on a connection that can carry a `Cancel`.
    cancel: bool,
    deadline: Option<Deadline>,
}

impl PendingGuard<'_> {
    /// The entry is gone already: whoever completed the call removed it.
    fn completed(self) {
        std::mem::forget(self);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let unanswered = lock(&self.conn.pending).remove(&self.id);
        let Some(completion) = unanswered else {
            return; // answered (the answer is dropped unread), or the connection closed
        };
        drop(completion);
        if self.cancel
            && self
                .deadline
                .is_none_or(|d| tokio::time::Instant::now() < d.at)
        {
            self.conn.send_cancel(self.id);
        }
    }
}

/// Undoes what a call's reference table counted if the call is abandoned (its deadline
/// passed, or its caller dropped it) while it waits for room to be sent.
struct Unsent<'a> {
    conn: &'a ConnShared,
    refs: Option<&'a [RefDesc]>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(refs) = self.refs.take() {
            self.conn.rollback(refs);
        }
    }
}

/// What a `TimedCall` says is left of the caller's wait: rounded up to a whole millisecond,
/// at least 1.
fn timeout_ms(left: Duration) -> u64 {
    let ms = left.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// The most promise-able calls of ours on one connection whose `Finish` is not sent yet.
/// Beyond it a call is sent as an ordinary call, and calls on its promise wait for its
/// answer: an honest caller stays well within the `max_kept_answers` a receiver keeps
/// (4096 by default), so the receiver never has to forget a promise its caller still uses.
pub(crate) const MAX_UNFINISHED: usize = 1024;

/// A call queued for sending (see [`ConnShared::issue`]): what its caller needs to wait
/// for the answer.
struct Issued<'a, R> {
    unit: Unit<'a>,
    guard: PendingGuard<'a>,
    answer: R,
}

impl RemoteInner {
    /// Calls `method` and waits for the answer (see [`ConnShared::call_on`]). Not an `async
    /// fn`: the future is `call_on`'s own, without a layer of its own around it, so that
    /// every call's future stays as small as it was.
    pub(crate) fn call<'a, A, T, E>(
        &'a self,
        interface: &'a str,
        method: &'a str,
        args: &'a A,
        timeout: CallTimeout,
    ) -> impl Future<Output = Result<T, CallError<E>>> + 'a
    where
        A: Serialize,
        T: DeserializeOwned + Send + 'static,
        E: DeserializeOwned + Send + 'static,
    {
        self.conn
            .call_on(self.id, interface, method, args, timeout, None)
    }

    /// Sends a one-way call (see [`ConnShared::oneway_on`]).
    pub(crate) fn call_oneway<'a, A: Serialize>(
        &'a self,
        interface: &'a str,
        method: &'a str,
        args: &'a A,
        timeout: CallTimeout,
    ) -> impl Future<Output = Result<(), CallError<Infallible>>> + 'a {
        self.conn
            .oneway_on(self.id, interface, method, args, timeout, None)
    }
}

impl ConnShared {
    fn codec(self: &Arc<Self>) -> Arc<dyn RefCodec> {
        self.clone()
    }

    /// Queues a call, waiting for room in the write budget, until `deadline` (computed only
    /// if it has to wait). If it cannot be sent, what its reference table counted is undone.
    /// `alone` says that no other call of ours is under way on this connection: no other
    /// frame is likely to join this one soon, so it is written at once rather than by the
    /// writer task.
    async fn send<E>(
        &self,
        msg: &Message<'_>,
        lent: Option<&Lent>,
        alone: bool,
        deadline: impl FnOnce() -> Option<Deadline>,
    ) -> Result<(), CallError<E>> {
        let refs = match msg {
            Message::Call { refs, .. }
            | Message::TimedCall { refs, .. }
            | Message::Oneway { refs, .. } => Some(refs.as_slice()).filter(|r| !r.is_empty()),
            _ => None,
        };
        let pushed = match self.outbox.push_lending(msg, lent) {
            Err(PushError::Full | PushError::TubFull) => {
                // The slow path: wait for room, within the deadline.
                let mut unsent = Unsent { conn: self, refs };
                let wait = self.outbox.push_waiting(msg, lent);
                let pushed = match deadline() {
                    None => wait.await,
                    Some(d) => match tokio::time::timeout_at(d.at, wait).await {
                        Ok(pushed) => pushed,
                        // `unsent` undoes the reference table.
                        Err(_) => return Err(CallError::DeadlineExceeded(d.timeout)),
                    },
                };
                unsent.refs = None;
                pushed
            }
            pushed => pushed,
        };
        match pushed {
            Ok(first) => {
                self.queued(first, alone);
                Ok(())
            }
            Err(PushError::Encode(e)) => {
                if let Some(refs) = refs {
                    self.rollback(refs);
                }
                Err(CallError::Protocol(match e {
                    FrameError::TooLarge { len, max } => ProtocolError::TooLarge { len, max },
                    other => ProtocolError::Arguments(other.to_string()),
                }))
            }
            Err(PushError::Full | PushError::TubFull | PushError::Closed) => Err(
                CallError::Disconnected(self.closed_reason().unwrap_or(Disconnect::ClosedLocally)),
            ),
        }
    }

    /// Queues a call of `method` on the peer's object `target` (an export id, the root, or
    /// a promise target), for at most the handle's `timeout` (or the Tub's
    /// `call_timeout`) counted from now: waiting for an outbound slot and for room to send
    /// count. On a version-2 connection the timeout travels with the call. With
    /// `promise_able`, on a version-3 connection and within [`MAX_UNFINISHED`], the call's
    /// id carries [`PROMISE_MARK`]. `sink` makes the call's pending entry and what its
    /// caller waits on, given the deadline, the id and whether it is marked. `via`, for a
    /// call sent to a promise target, keeps that promise's `Finish` behind this call; it is
    /// dropped once the call is queued.
    ///
    /// No timer per call: the wait for the answer is bounded by the connection's deadline
    /// sweeper ([`ConnShared::arm_deadline`]); a timer is armed only when the call has to
    /// wait for a slot or for room to send.
    #[allow(clippy::too_many_arguments)]
    async fn issue<'a, A, E, R>(
        self: &'a Arc<Self>,
        target: u64,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
        promise_able: bool,
        via: Option<SendGuard>,
        sink: impl FnOnce(Option<Deadline>, u64, bool) -> (Completion, R),
    ) -> Result<Issued<'a, R>, CallError<E>>
    where
        A: Serialize,
    {
        if let Some(reason) = self.closed_reason() {
            return Err(CallError::Disconnected(reason));
        }
        let timeout = timeout.or(self.config.call_timeout);
        let (unit, waited) = match self.outbound.try_acquire() {
            Some(unit) => (unit, None),
            None => {
                let start = tokio::time::Instant::now();
                let wait = self.outbound.acquire();
                let unit = match timeout.and_then(|t| Deadline::after(start, t)) {
                    None => wait.await,
                    Some(d) => tokio::time::timeout_at(d.at, wait)
                        .await
                        .map_err(|_| CallError::DeadlineExceeded(d.timeout))?,
                };
                (unit, Some(start))
            }
        };
        // One clock reading per call, unless it waited for its slot.
        let deadline = timeout
            .and_then(|t| Deadline::after(waited.unwrap_or_else(tokio::time::Instant::now), t));
        let number = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let marked = promise_able
            && self.info.version >= 3
            && number <= MAX_PROMISE_NUMBER
            && self.unfinished.load(Ordering::Relaxed) < MAX_UNFINISHED;
        let id = if marked {
            PROMISE_MARK | number
        } else {
            number
        };
        let (args, refs) = encode_args(&self.codec(), args)?;
        let args = Payload::new(args);
        let v2 = self.info.version >= 2;
        let msg = match deadline {
            // Version 1 has no way to say it: the deadline is only ours.
            Some(d) if v2 => Message::TimedCall {
                id,
                timeout_ms: timeout_ms(match waited {
                    None => d.timeout,
                    Some(_) => d.at.saturating_duration_since(tokio::time::Instant::now()),
                }),
                target,
                interface,
                method,
                args: args.bytes(),
                refs,
            },
            _ => Message::Call {
                id,
                target,
                interface,
                method,
                args: args.bytes(),
                refs,
            },
        };
        let (complete, answer) = sink(deadline, id, marked);
        {
            let mut pending = lock(&self.pending);
            pending.insert(id, complete);
            if let Some(d) = deadline {
                self.arm_deadline(d.at);
            }
        }
        let mut guard = PendingGuard {
            conn: self,
            id,
            cancel: false,
            deadline,
        };
        if let Some(reason) = self.closed_reason() {
            return Err(CallError::Disconnected(reason));
        }
        // Alone: no other caller holds an outbound unit, answered or not, so no other call is
        // about to join this one in the queue.
        self.send(&msg, args.lent(), unit.alone, || deadline)
            .await?;
        drop(via);
        guard.cancel = v2;
        drop(msg);
        args.recycle();
        Ok(Issued {
            unit,
            guard,
            answer,
        })
    }

    /// Calls `method` on the peer's object `target` and waits for the answer (see
    /// [`ConnShared::issue`]).
    pub(crate) async fn call_on<A, T, E>(
        self: &Arc<Self>,
        target: u64,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
        via: Option<SendGuard>,
    ) -> Result<T, CallError<E>>
    where
        A: Serialize,
        T: DeserializeOwned + Send + 'static,
        E: DeserializeOwned + Send + 'static,
    {
        let sink = |deadline, _, _| completion::<T, E>(deadline);
        let issued = self
            .issue(target, interface, method, args, timeout, false, via, sink)
            .await?;
        let result = issued.answer.await;
        // The completion was removed from the table to run (by the answer, the deadline
        // sweeper, or close): no second lock and lookup to remove it.
        issued.guard.completed();
        drop(issued.unit);
        result
    }

    /// Sends a promise-able call of `method` on the peer's object `target` and returns, once
    /// it is queued, the cell its answer will land in (see [`crate::Promise`]). Its
    /// outbound unit is held until the answer comes. Dropping the cell does not cancel the
    /// call: its timeout still bounds it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_promise<A, E>(
        self: &Arc<Self>,
        target: u64,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
        via: Option<SendGuard>,
    ) -> Result<Arc<PromiseCell>, CallError<E>>
    where
        A: Serialize,
    {
        let sink = |deadline, id, marked| {
            let cell = PromiseCell::remote(self.clone(), id, marked, method, deadline);
            (Completion(Some(cell.clone())), cell)
        };
        let issued = self
            .issue(target, interface, method, args, timeout, true, via, sink)
            .await?;
        issued.guard.completed();
        issued.unit.keep();
        issued.answer.holds_unit();
        Ok(issued.answer)
    }

    /// Sends a one-way call to the peer's object `target`, waiting for room to send it for
    /// at most the handle's `timeout` (or the Tub's `call_timeout`). The timeout does not
    /// travel: nobody waits for a one-way call once it is sent.
    pub(crate) async fn oneway_on<A: Serialize>(
        self: &Arc<Self>,
        target: u64,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
        via: Option<SendGuard>,
    ) -> Result<(), CallError<Infallible>> {
        if let Some(reason) = self.closed_reason() {
            return Err(CallError::Disconnected(reason));
        }
        let (args, refs) = encode_args(&self.codec(), args)?;
        let args = Payload::new(args);
        let msg = Message::Oneway {
            target,
            interface,
            method,
            args: args.bytes(),
            refs,
        };
        let timeout = timeout.or(self.config.call_timeout);
        let sent = self
            .send(&msg, args.lent(), false, || {
                timeout.and_then(|t| Deadline::after(tokio::time::Instant::now(), t))
            })
            .await;
        drop(via);
        drop(msg);
        args.recycle();
        sent
    }

    /// Sends `Finish` for our promise-able call `id` (protocol version 3): the peer may
    /// forget its answer. Like a `Decref`, it is always sent (a peer that reads nothing is
    /// disconnected rather than let the peer's table of kept answers fill).
    pub(crate) fn send_finish(&self, id: u64) {
        self.unfinished.fetch_sub(1, Ordering::Relaxed);
        self.send_message(&Message::Finish { id });
    }
}

/// A connection's deadline sweeper, started by its first call with a deadline: it sleeps
/// until the earliest deadline armed, fails the calls whose deadline has passed, and ends
/// when the connection closes. One timer for the connection, rather than one per call.
async fn sweep_deadlines(conn: Arc<ConnShared>) {
    loop {
        if conn.is_closed.load(Ordering::SeqCst) {
            return;
        }
        let woken = conn.sweep.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let armed = conn.armed.load(Ordering::Relaxed);
        if armed == 0 {
            woken.await;
            continue;
        }
        let at = conn.deadline_base + Duration::from_nanos(armed - 1);
        tokio::select! {
            _ = woken => continue,
            _ = tokio::time::sleep_until(at) => conn.expire_due(),
        }
    }
}

/// How long a closing connection's writer may take to deliver what was queued and the
/// goodbye (unless the close said not to wait: a peer that does not read).
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// The connection's writer task. `alive` counts it among the Tub's writers (which
/// `Tub::shutdown` waits for) until the task ends: once it has said goodbye and shut the
/// stream, or given up, or been aborted.
async fn writer_loop(shared: Arc<ConnShared>, alive: WriterAlive) {
    let linger = async {
        let mut closed = shared.closed_tx.subscribe();
        let _ = closed.wait_for(|r| r.is_some()).await;
        tokio::time::sleep(CLOSE_LINGER).await;
    };
    tokio::select! {
        written = shared.outbox.run_writer() => {
            if let Err(e) = written {
                shared.close(Disconnect::WriteFailed(ErrorChain(&e).to_string()), None);
            }
        }
        () = linger => debug!("the writer did not finish within {CLOSE_LINGER:?} of the close"),
    }
    drop(alive);
}

/// Closes the connection if the reader stops for any reason it did not report (a panic in
/// user code it ran, for example), so that pending calls never hang on a dead reader.
struct CloseOnDrop(Arc<ConnShared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(Disconnect::TaskStopped, None);
    }
}

async fn reader_loop<S>(shared: Arc<ConnShared>, mut r: FrameReader<ReadHalf<TlsStream<S>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _guard = CloseOnDrop(shared.clone());
    let (reason, goodbye) = loop {
        if shared.is_closed.load(Ordering::Relaxed) {
            break (Disconnect::ClosedLocally, None);
        }
        // The clock is read once per read from the stream, not once per frame: the frames
        // of one read arrived together.
        let reads = !r.frame_buffered();
        if reads {
            // Every frame received so far is handled: what they provoked leaves now.
            shared.end_batch();
        }
        let frame = match r.next_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => break (Disconnect::PeerClosed, None),
            // The peer sent more than the limit it was told: say so before closing, so
            // that it can show why (protocol.md §6.4).
            Err(e @ FrameError::TooLarge { .. }) => {
                let why = e.to_string();
                break (
                    Disconnect::ProtocolViolation(why.clone()),
                    Some(GoodbyeReason::ProtocolViolation(why)),
                );
            }
            Err(e) => break (Disconnect::ReadFailed(ErrorChain(&e).to_string()), None),
        };
        if reads {
            shared.touch();
            shared.begin_batch();
        }
        let msg = match message::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                let why = format!("undecodable message: {e}");
                break (
                    Disconnect::ProtocolViolation(why.clone()),
                    Some(GoodbyeReason::ProtocolViolation(why)),
                );
            }
        };
        if shared.info.version < msg.min_version() {
            let why = format!(
                "a version-{} message on a version-{} connection",
                msg.min_version(),
                shared.info.version
            );
            break (
                Disconnect::ProtocolViolation(why.clone()),
                Some(GoodbyeReason::ProtocolViolation(why)),
            );
        }
        let msg = match Inbound::split(msg) {
            Ok((call, args, refs)) => {
                shared.wait_for_queue_room(args.len()).await;
                dispatch(&shared, call, args, refs).await;
                continue;
            }
            Err(other) => other,
        };
        match msg {
            // Dispatched above (Inbound::split).
            Message::Call { .. } | Message::Oneway { .. } | Message::TimedCall { .. } => {}
            Message::Cancel { id } => shared.cancel_inbound(id),
            Message::Finish { id } => shared.finish_kept(id),
            Message::Answer { id, body } => {
                // The reference table is resolved whether or not anyone still waits for the
                // answer: what it carried is imported, and released again if unused.
                let (reply, table) = match body {
                    AnswerBody::Ok { value, refs } => (Outcome::Ok(value), refs),
                    AnswerBody::AppError { value, refs } => (Outcome::AppError(value), refs),
                    AnswerBody::Refused(r) => (Outcome::Refused(r), Vec::new()),
                };
                let answer = match resolve_refs(&*shared, table) {
                    Ok(refs) => (reply, refs),
                    Err(e) => (Outcome::Refused(Refusal::BadReference(e)), Vec::new()),
                };
                // An unknown id is a call whose caller gave up.
                let complete = lock(&shared.pending).remove(&id);
                if let Some(complete) = complete {
                    complete.complete(Ok(answer));
                }
            }
            Message::Decref { target, count } => shared.decref(target, count),
            Message::Ping { nonce } => {
                shared.send_message(&Message::Pong { nonce });
            }
            Message::Pong { .. } => {}
            Message::Goodbye { reason } => break (Disconnect::PeerGoodbye(reason), None),
        }
    };
    shared.close(reason, goodbye);
}

/// What names an inbound call, besides its payload.
struct Inbound<'a> {
    /// `None` for a one-way call.
    id: Option<u64>,
    /// The caller's timeout, from a `TimedCall`.
    timeout_ms: Option<u64>,
    target: u64,
    interface: &'a str,
    method: &'a str,
}

impl<'a> Inbound<'a> {
    /// A call, one-way call or timed call as the call to dispatch, with its arguments and
    /// reference table; any other message is given back.
    #[allow(clippy::type_complexity)]
    fn split(msg: Message<'a>) -> Result<(Self, &'a [u8], Vec<RefDesc>), Message<'a>> {
        let (id, timeout_ms, target, interface, method, args, refs) = match msg {
            Message::Call {
                id,
                target,
                interface,
                method,
                args,
                refs,
            } => (Some(id), None, target, interface, method, args, refs),
            Message::Oneway {
                target,
                interface,
                method,
                args,
                refs,
            } => (None, None, target, interface, method, args, refs),
            Message::TimedCall {
                id,
                timeout_ms,
                target,
                interface,
                method,
                args,
                refs,
            } => (
                Some(id),
                Some(timeout_ms),
                target,
                interface,
                method,
                args,
                refs,
            ),
            other => return Err(other),
        };
        let call = Inbound {
            id,
            timeout_ms,
            target,
            interface,
            method,
        };
        Ok((call, args, refs))
    }
}

/// Starts one inbound call. Everything that can be refused is refused here, synchronously.
/// The method is then polled once right here, on the reader task, so calls start in the
/// order they arrived (everything a method does before its first `.await` happens in
/// arrival order), and a method that completes at once costs no task spawn, and no timer
/// or entry in the table of cancellable calls either: only a call that has to wait (for a
/// slot, or inside the method) is watched for its deadline and for a `Cancel`.
///
/// On a version-3 connection a promise-able call (its id carries [`PROMISE_MARK`]) gets an
/// entry for its answer, and a call to a promise target whose answer does not exist yet is
/// held until it does ([`ConnShared::settle`]).
async fn dispatch(
    shared: &Arc<ConnShared>,
    call: Inbound<'_>,
    args: &[u8],
    table: Vec<crate::object::RefDesc>,
) {
    let Inbound {
        id,
        timeout_ms,
        target,
        interface,
        method,
    } = call;
    // Resolve the reference table first, so that what it carries is accounted for (imported,
    // and released again) even if the call is refused.
    let (refs, refused) = match resolve_refs(&**shared, table) {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(Refusal::BadReference(e))),
    };
    let v3 = shared.info.version >= 3;
    if let Some(id) = id.filter(|&id| v3 && id & PROMISE_MARK != 0) {
        shared.keep_answer(id);
    }
    let promised = parse_promise_target(target).filter(|_| v3);
    let (object, refs) = match (refused, promised) {
        (Some(refusal), _) => (Err(refusal), refs),
        // Its own answer would never come: it would wait for itself.
        (None, Some((promise, _))) if id == Some(promise) => (
            Err(Refusal::Broken(
                "a call cannot be sent to its own promise".into(),
            )),
            refs,
        ),
        (None, _) if target == ROOT_OBJECT => (Ok(shared.root()), refs),
        (None, None) => (
            shared
                .exported(target)
                .ok_or(Refusal::UnknownObject { target }),
            refs,
        ),
        (None, Some((promise, index))) => match shared.promised_object(promise, index) {
            Promised::Object(obj) => (Ok(obj), refs),
            Promised::Broken(why) => (Err(Refusal::Broken(why)), refs),
            Promised::Pending => {
                let held = Held {
                    id,
                    timeout_ms,
                    received: tokio::time::Instant::now(),
                    index,
                    interface: interface.to_string(),
                    method: method.to_string(),
                    args: args.to_vec(),
                    refs,
                };
                match shared.hold(promise, held) {
                    Ok(()) => return,
                    Err(instead) => instead,
                }
            }
        },
    };
    let mut start = Some((
        object,
        CallContext::new(shared.clone(), Some(shared.info.peer), refs),
    ));
    std::future::poll_fn(|cx| {
        if let Some((object, ctx)) = start.take() {
            start_call(
                shared, id, timeout_ms, object, interface, method, args, ctx, cx,
            );
        }
        Poll::Ready(())
    })
    .await;
}

/// Starts an inbound call on `object` (or refuses it): the end of [`dispatch`], and how a
/// held call is delivered once its promise resolves. A method is polled first with `cx`:
/// the reader's context, or, for a held call, one that wakes nobody (the task it moves to
/// if it does not complete polls it again at once).
#[allow(clippy::too_many_arguments)]
fn start_call(
    shared: &Arc<ConnShared>,
    id: Option<u64>,
    timeout_ms: Option<u64>,
    object: Result<Arc<dyn Dispatch>, Refusal>,
    interface: &str,
    method: &str,
    args: &[u8],
    ctx: CallContext,
    cx: &mut Context<'_>,
) {
    let started = match object {
        Err(refusal) => Err(refusal),
        Ok(obj) if obj.interface() != interface => Err(Refusal::WrongInterface {
            expected: interface.to_string(),
            actual: obj.interface().to_string(),
        }),
        Ok(obj) => obj.call(method, args, ctx.clone()),
    };
    match (started, id) {
        (Err(refusal), Some(id)) => {
            debug!(%refusal, "call refused");
            shared.settle(id, Err(format!("it was refused: {refusal}")));
            shared.send_message(&Message::Answer {
                id,
                body: AnswerBody::Refused(refusal),
            });
        }
        (Err(refusal), None) => debug!(%refusal, "one-way call refused"),
        (Ok(fut), id) => {
            let mut fut = CatchUnwind(AssertUnwindSafe(fut));
            let Some(slot) = shared.try_slot() else {
                let (task, ctl) = watched(shared, id, timeout_ms, ctx, fut);
                shared.queue_call(task, args.len(), ctl);
                return;
            };
            // Polled here first: a method that completes at once is answered without a task
            // (or an allocation) of its own.
            match Pin::new(&mut fut).poll(cx) {
                Poll::Ready(reply) => {
                    send_answer(shared, id, ctx, reply);
                    shared.finish_call(slot);
                }
                Poll::Pending => {
                    let (task, _) = watched(shared, id, timeout_ms, ctx, fut);
                    shared.spawn_call(task, slot);
                }
            }
        }
    }
}

impl ConnShared {
    /// The peer's promise-able call `id` has arrived: its answer will be kept for calls
    /// pipelined on it, unless `max_kept_answers` are kept already (it is then an ordinary
    /// call, and calls sent to its promise are refused as `Broken`).
    fn keep_answer(&self, id: u64) {
        let mut kept = lock(&self.kept);
        if kept.entries.len() < self.config.max_kept_answers {
            kept.entries.entry(id).or_insert(Kept::Waiting {
                calls: Vec::new(),
                finished: false,
            });
        } else {
            debug!(
                id,
                "a promise-able call beyond max_kept_answers: its answer is not kept"
            );
        }
    }

    /// What reference `index` of the answer to the peer's promise-able call `promise` is.
    fn promised_object(&self, promise: u64, index: u32) -> Promised {
        self.promised_in(&lock(&self.kept), promise, index)
    }

    fn promised_in(&self, kept: &KeptAnswers, promise: u64, index: u32) -> Promised {
        let number = promise & !PROMISE_MARK;
        match kept.entries.get(&promise) {
            None => Promised::Broken(format!(
                "no answer of call {number} is kept: it never arrived, was not promise-able, \
                 was finished, or came when {} answers were kept (the limit)",
                self.config.max_kept_answers
            )),
            Some(Kept::Waiting { .. }) => Promised::Pending,
            Some(Kept::Settled(Ok(ids))) => match ids.get(index as usize).copied().flatten() {
                Some(export) => match self.exported(export) {
                    Some(obj) => Promised::Object(obj),
                    None => Promised::Broken(format!(
                        "reference {index} of the answer to call {number} is no longer exported"
                    )),
                },
                None => Promised::Broken(no_object(number, index, ids.len())),
            },
            Some(Kept::Settled(Err(why))) => Promised::Broken(format!(
                "call {number}, which it was sent to, failed: {why}"
            )),
        }
    }

    /// Holds `call` until the answer to `promise` exists. If it exists by now (it came on
    /// another task since [`ConnShared::promised_object`] looked), or `max_held_calls`
    /// calls (or `max_queued_call_bytes` of their arguments) are held, gives back what to
    /// run the call on instead (or the refusal), with the call's references.
    #[allow(clippy::type_complexity)]
    fn hold(
        &self,
        promise: u64,
        call: Held,
    ) -> Result<(), (Result<Arc<dyn Dispatch>, Refusal>, Vec<ObjectRef>)> {
        let mut kept = lock(&self.kept);
        let over = kept.held >= self.config.max_held_calls
            || kept.held_bytes.get() + call.args.len() > self.config.max_queued_call_bytes
            || !kept.held_bytes.tub_fits(call.args.len());
        let size = call.args.len();
        let waiting = matches!(kept.entries.get(&promise), Some(Kept::Waiting { .. }));
        if waiting && over {
            let why = format!(
                "{} calls ({} argument bytes) already wait for promised answers on this \
                 connection (the limit is {} calls, {} bytes)",
                kept.held,
                kept.held_bytes.get(),
                self.config.max_held_calls,
                self.config.max_queued_call_bytes
            );
            return Err((Err(Refusal::Broken(why)), call.refs));
        }
        if !waiting {
            let object = match self.promised_in(&kept, promise, call.index) {
                Promised::Object(obj) => Ok(obj),
                Promised::Broken(why) => Err(Refusal::Broken(why)),
                Promised::Pending => Err(Refusal::Broken("the promise is pending".into())),
            };
            return Err((object, call.refs));
        }
        if let Some(Kept::Waiting { calls, .. }) = kept.entries.get_mut(&promise) {
            calls.push(call);
        }
        kept.held += 1;
        kept.held_bytes += size;
        Ok(())
    }

    /// The peer's call `id` has its outcome (answered, refused or stopped): if it is a kept
    /// promise-able call, its answer is kept (until `Finish`) and the calls held for it are
    /// started now, in arrival order, before its answer is queued, so that they start
    /// before anything the peer sends once it has the answer.
    pub(crate) fn settle(self: &Arc<Self>, id: u64, outcome: Result<Arc<[Option<u64>]>, String>) {
        if id & PROMISE_MARK == 0 || self.info.version < 3 {
            return;
        }
        let calls = {
            let mut kept = lock(&self.kept);
            let Some(Kept::Waiting { calls, finished }) = kept.entries.get_mut(&id) else {
                return;
            };
            let calls = std::mem::take(calls);
            if *finished {
                kept.entries.remove(&id);
            } else {
                kept.entries.insert(id, Kept::Settled(outcome.clone()));
            }
            kept.held -= calls.len();
            kept.held_bytes -= calls.iter().map(|c| c.args.len()).sum::<usize>();
            calls
        };
        for call in calls {
            self.deliver(id, call, &outcome);
        }
    }

    /// Starts a held call on what its promise gave (or refuses it as `Broken`), with what is
    /// left of its caller's timeout: a call whose caller has given up meanwhile is dropped.
    fn deliver(
        self: &Arc<Self>,
        promise: u64,
        call: Held,
        outcome: &Result<Arc<[Option<u64>]>, String>,
    ) {
        let Held {
            id,
            timeout_ms,
            received,
            index,
            interface,
            method,
            args,
            refs,
        } = call;
        let timeout_ms = match timeout_ms {
            None => None,
            Some(t) => {
                let spent = u64::try_from(received.elapsed().as_millis()).unwrap_or(u64::MAX);
                if spent >= t {
                    debug!(
                        ?id,
                        "a held call's caller gave up before its promise resolved"
                    );
                    if let Some(id) = id {
                        self.settle(id, Err("its caller's timeout passed".into()));
                    }
                    return;
                }
                Some(t - spent)
            }
        };
        let number = promise & !PROMISE_MARK;
        let object = match outcome {
            Ok(ids) => ids
                .get(index as usize)
                .copied()
                .flatten()
                .and_then(|export| self.exported(export))
                .ok_or_else(|| Refusal::Broken(no_object(number, index, ids.len()))),
            Err(why) => Err(Refusal::Broken(format!(
                "call {number}, which it was sent to, failed: {why}"
            ))),
        };
        let ctx = CallContext::new(self.clone(), Some(self.info.peer), refs);
        let mut cx = Context::from_waker(Waker::noop());
        start_call(
            self, id, timeout_ms, object, &interface, &method, &args, ctx, &mut cx,
        );
    }

    /// The peer cancelled its call `id`: if it is held for a promise, it never runs.
    fn unhold(self: &Arc<Self>, id: u64) {
        let removed = {
            let mut kept = lock(&self.kept);
            if kept.held == 0 {
                return;
            }
            let mut removed = None;
            for entry in kept.entries.values_mut() {
                if let Kept::Waiting { calls, .. } = entry {
                    if let Some(at) = calls.iter().position(|c| c.id == Some(id)) {
                        removed = Some(calls.remove(at));
                        break;
                    }
                }
            }
            if let Some(call) = &removed {
                kept.held -= 1;
                kept.held_bytes -= call.args.len();
            }
            removed
        };
        if let Some(call) = removed {
            debug!(id, "a held call was cancelled");
            drop(call); // outside the lock: its references are let go
            self.settle(id, Err("it was cancelled by its caller".into()));
        }
    }

    /// Kept answers, held calls, and our own unfinished promise-able calls (for
    /// `Tub::load`).
    pub(crate) fn promise_load(&self) -> (usize, usize, usize) {
        let kept = lock(&self.kept);
        let unfinished = self.unfinished.load(Ordering::Relaxed);
        (kept.entries.len(), kept.held, unfinished)
    }

    /// The peer will name its promise-able call `id` in no more targets.
    fn finish_kept(&self, id: u64) {
        let mut kept = lock(&self.kept);
        match kept.entries.get_mut(&id) {
            Some(Kept::Settled(_)) => {
                kept.entries.remove(&id);
            }
            Some(Kept::Waiting { finished, .. }) => *finished = true,
            None => {}
        }
    }
}

/// Why reference `index` of an answer (with `len` references) is no object to call.
fn no_object(number: u64, index: u32, len: usize) -> String {
    if index as usize >= len {
        format!("the answer to call {number} carries {len} references, none at index {index}")
    } else {
        format!("reference {index} of the answer to call {number} is not an object of this Tub")
    }
}

/// Queues the answer to call `id` (none for a one-way call), `None` if the method panicked,
/// then lets go of what the call kept alive for it.
fn send_answer(shared: &Arc<ConnShared>, id: Option<u64>, ctx: CallContext, reply: Option<Reply>) {
    let mut reply =
        reply.unwrap_or_else(|| Reply::Refused(Refusal::Failed("the method panicked".into())));
    // A large value is lent to the outbox rather than copied into it.
    let value = match &mut reply {
        Reply::Ok(b) | Reply::AppError(b) => Payload::new(std::mem::take(b)),
        Reply::Refused(_) => Payload::Copied(Vec::new()),
    };
    if let Some(id) = id {
        let refs = ctx.take_out_refs();
        if id & PROMISE_MARK != 0 {
            // Calls held for this answer start before it is queued.
            let outcome = match &reply {
                Reply::Ok(_) => Ok(refs
                    .iter()
                    .map(|d| match d {
                        RefDesc::Mine { id, .. } => Some(*id),
                        _ => None,
                    })
                    .collect()),
                Reply::AppError(_) => Err("it returned its own error".into()),
                Reply::Refused(r) => Err(format!("it was refused: {r}")),
            };
            shared.settle(id, outcome);
        }
        let body = match &reply {
            Reply::Ok(_) => AnswerBody::Ok {
                value: value.bytes(),
                refs,
            },
            Reply::AppError(_) => AnswerBody::AppError {
                value: value.bytes(),
                refs,
            },
            Reply::Refused(r) => AnswerBody::Refused(r.clone()),
        };
        let msg = Message::Answer { id, body };
        if !shared.send_message_lending(&msg, value.lent()) {
            if let Message::Answer {
                body: AnswerBody::Ok { refs, .. } | AnswerBody::AppError { refs, .. },
                ..
            } = &msg
            {
                shared.rollback(refs);
            }
            let body = AnswerBody::Refused(Refusal::Failed(format!(
                "the answer exceeds the peer's frame limit of {} bytes",
                shared.max_frame_out
            )));
            shared.send_message(&Message::Answer { id, body });
        }
    }
    ctx.release_kept();
    value.recycle();
}

/// The task of an inbound call that did not complete at once: it runs the method (`fut`)
/// and sends its answer, unless the call is stopped first. It is stopped, its future
/// dropped, when the peer cancels it (protocol version 2: the returned control is in the
/// table of cancellable calls until the task ends), when the caller's timeout has passed
/// since it arrived (no answer then: nobody waits for it), or when this Tub's
/// `max_call_duration` has (answered with `Refusal::Failed`). The task ends normally in
/// every case, so its slot is handed on as usual ([`ConnShared::finish_call`]).
fn watched<F>(
    shared: &Arc<ConnShared>,
    id: Option<u64>,
    timeout_ms: Option<u64>,
    ctx: CallContext,
    fut: F,
) -> (CallTask, Option<Arc<CallCtl>>)
where
    F: Future<Output = Option<Reply>> + Unpin + Send + 'static,
{
    let conn = shared.clone();
    let cap = shared.config.max_call_duration;
    let limit = match (timeout_ms.map(Duration::from_millis), cap) {
        (Some(theirs), Some(ours)) if ours < theirs => Some((ours, Whose::Ours)),
        (Some(theirs), _) => Some((theirs, Whose::Caller)),
        (None, Some(ours)) => Some((ours, Whose::Ours)),
        (None, None) => None,
    };
    // Only a peer that speaks version 2 can cancel; a one-way call cannot be cancelled.
    let ctl = match id {
        Some(id) if shared.info.version >= 2 => Some(shared.watch_inbound(id)),
        _ => None,
    };
    let sleep = limit.and_then(|(d, _)| {
        let at = tokio::time::Instant::now().checked_add(d)?;
        Some(Box::pin(tokio::time::sleep_until(at)))
    });
    if sleep.is_none() && ctl.is_none() {
        let task = Box::pin(async move { send_answer(&conn, id, ctx, fut.await) });
        return (task, None);
    }
    let stoppable = Stoppable {
        fut: Some(fut),
        ctl: ctl.clone(),
        sleep,
        limit,
    };
    let watch = ctl.clone();
    let task = Box::pin(async move {
        let ended = stoppable.await;
        if let (Some(id), Some(ctl)) = (id, &watch) {
            conn.unwatch_inbound(id, ctl);
        }
        match ended {
            Ended::Done(reply) => send_answer(&conn, id, ctx, reply),
            Ended::Cancelled => {
                debug!(?id, "call cancelled by the caller");
                ctx.release_kept();
                if let Some(id) = id {
                    conn.settle(id, Err("it was cancelled by its caller".into()));
                }
            }
            Ended::OutOfTime(d, Whose::Caller) => {
                debug!(?id, "call stopped: the caller's {d:?} have passed");
                ctx.release_kept();
                if let Some(id) = id {
                    conn.settle(id, Err("its caller's timeout passed".into()));
                }
            }
            Ended::OutOfTime(d, Whose::Ours) => {
                debug!(?id, "call stopped: it ran for {d:?} (max_call_duration)");
                let why = format!(
                    "the call did not finish within {d:?}, the longest this Tub lets a call run"
                );
                send_answer(&conn, id, ctx, Some(Reply::Refused(Refusal::Failed(why))));
            }
        }
    });
    (task, ctl)
}

/// Whose time limit stops an inbound call.
#[derive(Clone, Copy, Debug)]
enum Whose {
    /// The caller's timeout: nobody waits for an answer once it has passed.
    Caller,
    /// This Tub's `max_call_duration`: the caller still waits, and is told.
    Ours,
}

/// How a watched inbound call ended.
enum Ended {
    /// The method returned (`None`: it panicked).
    Done(Option<Reply>),
    /// The peer cancelled it.
    Cancelled,
    /// Its time ran out.
    OutOfTime(Duration, Whose),
}

/// The peer's handle on one of its calls to us that may still be cancelled.
#[derive(Default)]
struct CallCtl {
    cancelled: std::sync::atomic::AtomicBool,
    /// Set while the call waits in the queue for a slot (changed under the queue's lock).
    queued: std::sync::atomic::AtomicBool,
    /// The call's task, to wake when it is cancelled.
    waker: Mutex<Option<Waker>>,
}

impl CallCtl {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A method's future that is stopped (dropped, so the work stops) when its call is
/// cancelled or its time runs out. Both are looked at before the method is polled, so a
/// call stopped while it waited for a slot never runs at all.
struct Stoppable<F> {
    fut: Option<F>,
    ctl: Option<Arc<CallCtl>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Option<(Duration, Whose)>,
}

impl<F: Future<Output = Option<Reply>> + Unpin> Future for Stoppable<F> {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = &mut *self;
        if let Some(ctl) = &this.ctl {
            {
                // Registered before the flag is read: a cancel in between wakes this waker.
                let mut w = lock(&ctl.waker);
                match &*w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
            }
            if ctl.cancelled.load(Ordering::SeqCst) {
                this.fut = None;
                return Poll::Ready(Ended::Cancelled);
            }
        }
        if let Some(sleep) = &mut this.sleep {
            if sleep.as_mut().poll(cx).is_ready() {
                this.fut = None;
                let (d, whose) = this.limit.expect("a timer has a limit");
                return Poll::Ready(Ended::OutOfTime(d, whose));
            }
        }
        match &mut this.fut {
            Some(fut) => Pin::new(fut).poll(cx).map(Ended::Done),
            None => Poll::Ready(Ended::Cancelled), // never polled again once ended
        }
    }
}

/// Turns a panic inside a method into `None` instead of a lost answer.
struct CatchUnwind<F>(AssertUnwindSafe<F>);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut inner.0).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

/// The period of a Tub's keepalive checks, if its configuration asks for any: often enough
/// that a ping leaves within a tick of `keepalive`, and an idle connection closes within a
/// quarter of `disconnect_timeout` of it.
pub(crate) fn keepalive_tick(config: &TubConfig) -> Option<Duration> {
    [config.keepalive, config.disconnect_timeout.map(|t| t / 4)]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(Duration::from_millis(10)))
}

impl ConnShared {
    /// One keepalive check: closes the connection with `Goodbye(Timeout)` if nothing has
    /// arrived for `disconnect_timeout`, or pings the peer (with `nonce`) if nothing has
    /// arrived for `keepalive`. Returns whether a ping was sent.
    pub(crate) fn keepalive_check(&self, nonce: u64) -> bool {
        if self.closed_reason().is_some() {
            return false;
        }
        let idle = self.idle_for();
        if let Some(t) = self.config.disconnect_timeout {
            if idle >= t {
                self.close(Disconnect::Silent(idle), Some(GoodbyeReason::Timeout));
                return false;
            }
        }
        match self.config.keepalive {
            Some(k) if idle >= k => self.send_message(&Message::Ping { nonce }),
            _ => false,
        }
    }
}

/// The goodbye for a connection closed to make room for another (see
/// [`TubConfig::max_connections`]): `Full` from protocol version 2, `Shutdown` before.
pub(crate) fn room_goodbye(info: &ConnectionInfo) -> GoodbyeReason {
    if info.version >= 2 {
        GoodbyeReason::Full
    } else {
        GoodbyeReason::Shutdown
    }
}
