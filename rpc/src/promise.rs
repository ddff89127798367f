//! Promise pipelining (protocol version 3, docs/protocol.md §8): calling the result of a call
//! before it has arrived.
//!
//! On Tor or I2P a round trip costs a large part of a second, and a call that needs a
//! reference from an earlier answer would wait for that answer before it could even be sent.
//! A [`Promise`] is the answer of a call that is on its way; [`Promise::reference`] (or
//! [`Promise::reference_at`]) gives a handle to a reference that answer will carry, and that
//! handle can be called at once: the call goes out now, naming "reference *i* of the answer
//! to call *N*", and the peer runs it on that object as soon as the answer exists. Awaiting
//! the promise gives the whole answer, as an ordinary call would.
//!
//! ```
//! use std::sync::Arc;
//! use folio_handlers::{Registry, TcpListener};
//! use folio_rpc::{interface, Host, Identity, Tub, TubConfig};
//!
//! #[interface(name = "example.dir.v1")]
//! pub trait Directory {
//!     async fn open(&self, name: String) -> Result<FileRef, String>;
//! }
//! #[interface(name = "example.file.v1")]
//! pub trait File {
//!     async fn read(&self) -> Result<String, String>;
//! }
//! struct Dir;
//! impl Directory for Dir {
//!     async fn open(&self, name: String) -> Result<FileRef, String> {
//!         Ok(FileRef::serve(Text(format!("the text of {name}"))))
//!     }
//! }
//! struct Text(String);
//! impl File for Text {
//!     async fn read(&self) -> Result<String, String> {
//!         Ok(self.0.clone())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tcp = Arc::new(Registry::with_tcp());
//! let server = Tub::new(Identity::generate()?, tcp.clone(), TubConfig::default())?;
//! let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse()?).await?;
//! server.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
//! server.listen(listener);
//! let furl = server.register(DirectoryRef::serve(Dir))?;
//!
//! let client = Tub::new(Identity::generate()?, tcp, TubConfig::default())?;
//! // No network yet: the first call goes out behind the hello of the new connection,
//! // pipelined on the FURL's resolution.
//! let dir: DirectoryRef = client.get_promised(&furl);
//! let file = dir.open_promise("notes.txt".into()).await?; // sent, not awaited
//! let text = file.reference().read().await?; // sent right behind it, same flight
//! assert_eq!(text, "the text of notes.txt");
//! # Ok(()) }
//! ```
//!
//! Both calls leave in one flight, and on a new connection so does the FURL's resolution:
//! three round trips with TCP instead of five. A program that never pipelines pays nothing:
//! ordinary calls are neither marked nor kept.
//!
//! With a peer that does not speak version 3, a call on a promised handle waits for the
//! answer and is then sent to the real reference: slower, never wrong.

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::{Complete, ConnShared, Deadline};
use crate::message::promise_target;
use crate::object::{
    decode_answer, CallError, CallTimeout, Disconnect, ObjectRef, Outcome, RefKind, Refusal,
    TypedRef,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An answer as it arrived, kept until someone decodes it.
pub(crate) enum OwnedOutcome {
    Ok(Vec<u8>),
    AppError(Vec<u8>),
    Refused(Refusal),
}

impl OwnedOutcome {
    pub(crate) fn borrow(&self) -> Outcome<'_> {
        match self {
            OwnedOutcome::Ok(b) => Outcome::Ok(b),
            OwnedOutcome::AppError(b) => Outcome::AppError(b),
            OwnedOutcome::Refused(r) => Outcome::Refused(r.clone()),
        }
    }
}

/// How a promised call ended.
pub(crate) enum Settled {
    /// Its answer, and the references the answer's table carried, resolved.
    Answered(OwnedOutcome, Vec<ObjectRef>),
    /// The connection was lost first.
    Lost(Disconnect),
    /// Its timeout passed first.
    Expired(Duration),
}

struct CellState {
    settled: Option<Arc<Settled>>,
    /// Calls to this call's promise targets being queued right now: its `Finish` waits for
    /// them, so that the peer never sees a target after the `Finish` that ended it.
    sending: usize,
    /// Answered while calls to it were being queued: the last of them sends the `Finish`.
    finish_owed: bool,
    /// The call's outbound unit is held by this cell until it settles.
    holds_unit: bool,
}

/// The caller's side of a call whose answer may be pipelined on: where the answer lands, and
/// what calls on its promised references need to know.
pub(crate) struct PromiseCell {
    /// The connection it was sent on (`None`: a call to an object in this process, settled
    /// before the cell was made).
    conn: Option<Arc<ConnShared>>,
    /// Its call id: carries `PROMISE_MARK` when `marked`.
    id: u64,
    /// Sent as promise-able on a version-3 connection: the peer keeps its answer for calls
    /// sent to its promise targets, until our `Finish`.
    marked: bool,
    /// The method, for messages.
    method: String,
    deadline: Option<Deadline>,
    state: Mutex<CellState>,
    settled: tokio::sync::Notify,
}

impl std::fmt::Debug for PromiseCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromiseCell")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("marked", &self.marked)
            .finish()
    }
}

impl PromiseCell {
    /// The cell of call `id` on `conn`, about to be sent.
    pub(crate) fn remote(
        conn: Arc<ConnShared>,
        id: u64,
        marked: bool,
        method: &str,
        deadline: Option<Deadline>,
    ) -> Arc<PromiseCell> {
        if marked {
            conn.unfinished
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Arc::new(PromiseCell {
            conn: Some(conn),
            id,
            marked,
            method: method.to_string(),
            deadline,
            state: Mutex::new(CellState {
                settled: None,
                sending: 0,
                finish_owed: false,
                holds_unit: false,
            }),
            settled: tokio::sync::Notify::new(),
        })
    }

    /// A cell settled already (a call to an object in this process, which has no round trip
    /// to save).
    pub(crate) fn ready(method: &str, settled: Settled) -> Arc<PromiseCell> {
        Arc::new(PromiseCell {
            conn: None,
            id: 0,
            marked: false,
            method: method.to_string(),
            deadline: None,
            state: Mutex::new(CellState {
                settled: Some(Arc::new(settled)),
                sending: 0,
                finish_owed: false,
                holds_unit: false,
            }),
            settled: tokio::sync::Notify::new(),
        })
    }

    /// The call's outbound unit now belongs to this cell: it is given back when the cell
    /// settles (at once if it has).
    pub(crate) fn holds_unit(&self) {
        let mut state = lock(&self.state);
        if state.settled.is_some() {
            drop(state);
            if let Some(conn) = &self.conn {
                conn.outbound.give_back();
            }
        } else {
            state.holds_unit = true;
        }
    }

    fn settle(&self, settled: Settled) {
        let lost = matches!(settled, Settled::Lost(_));
        let (give_back, finish) = {
            let mut state = lock(&self.state);
            if state.settled.is_some() {
                return;
            }
            state.settled = Some(Arc::new(settled));
            let give_back = std::mem::take(&mut state.holds_unit);
            let mut finish = self.marked;
            if finish && state.sending > 0 {
                state.finish_owed = true;
                finish = false;
            }
            (give_back, finish)
        };
        if let Some(conn) = &self.conn {
            if give_back {
                conn.outbound.give_back();
            }
            if finish {
                if lost {
                    // Nothing to tell a connection that is gone; only the count is settled.
                    conn.unfinished
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    conn.send_finish(self.id);
                }
            }
        }
        self.settled.notify_waiters();
    }

    /// The outcome, once settled.
    fn outcome(&self) -> Option<Arc<Settled>> {
        lock(&self.state).settled.clone()
    }

    /// Waits until the call has settled.
    async fn wait(&self) -> Arc<Settled> {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(s) = self.outcome() {
                return s;
            }
            notified.await;
        }
    }

    /// The whole answer, decoded as the promised call's types.
    async fn answer<T: DeserializeOwned, E: DeserializeOwned>(&self) -> Result<T, CallError<E>> {
        match &*self.wait().await {
            Settled::Answered(outcome, refs) => decode_answer(outcome.borrow(), refs),
            Settled::Lost(reason) => Err(CallError::Disconnected(reason.clone())),
            Settled::Expired(d) => Err(CallError::DeadlineExceeded(*d)),
        }
    }

    /// Reference `index` of the answer as a handle of `interface`, or why there is none.
    fn reference<E>(
        &self,
        settled: &Settled,
        index: u32,
        interface: &str,
    ) -> Result<ObjectRef, CallError<E>> {
        let method = &self.method;
        let broken = |why: String| Err(CallError::Refused(Refusal::Broken(why)));
        match settled {
            Settled::Answered(OwnedOutcome::Ok(_), refs) => match refs.get(index as usize) {
                Some(r) if r.interface() == interface => Ok(r.clone()),
                Some(r) => broken(format!(
                    "reference {index} of the answer to {method} implements {}, not {interface}",
                    r.interface()
                )),
                None => broken(format!(
                    "the answer to {method} carries {} references, none at index {index}",
                    refs.len()
                )),
            },
            Settled::Answered(OwnedOutcome::AppError(_), _) => broken(format!(
                "{method}, which it was sent to, returned its own error"
            )),
            Settled::Answered(OwnedOutcome::Refused(r), _) => {
                broken(format!("{method}, which it was sent to, was refused: {r}"))
            }
            Settled::Lost(reason) => Err(CallError::Disconnected(reason.clone())),
            Settled::Expired(d) => broken(format!(
                "{method}, which it was sent to, got no answer within {d:?}"
            )),
        }
    }

    /// If calls to this call's promise targets may be sent now (marked, not yet settled),
    /// counts one being sent: its `Finish` waits until the guard is dropped.
    fn begin_send(self: &Arc<Self>) -> Option<SendGuard> {
        let mut state = lock(&self.state);
        if !self.marked || state.settled.is_some() {
            return None;
        }
        state.sending += 1;
        Some(SendGuard(self.clone()))
    }
}

impl Complete for PromiseCell {
    fn complete(&self, reply: Result<(Outcome<'_>, Vec<ObjectRef>), Disconnect>) {
        let settled = match reply {
            Ok((outcome, refs)) => {
                let owned = match outcome {
                    Outcome::Ok(b) => OwnedOutcome::Ok(b.to_vec()),
                    Outcome::AppError(b) => OwnedOutcome::AppError(b.to_vec()),
                    Outcome::Refused(r) => OwnedOutcome::Refused(r),
                };
                Settled::Answered(owned, refs)
            }
            Err(reason) => Settled::Lost(reason),
        };
        self.settle(settled);
    }

    fn expire(&self, timeout: Duration) {
        self.settle(Settled::Expired(timeout));
    }

    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
}

/// Held while a call to a promise target of the cell is being queued (see
/// [`PromiseCell::begin_send`]).
pub(crate) struct SendGuard(Arc<PromiseCell>);

impl Drop for SendGuard {
    fn drop(&mut self) {
        let finish = {
            let mut state = lock(&self.0.state);
            state.sending -= 1;
            state.sending == 0 && std::mem::take(&mut state.finish_owed)
        };
        if finish {
            if let Some(conn) = &self.0.conn {
                conn.send_finish(self.0.id);
            }
        }
    }
}

/// What a call on a promised reference does now.
enum Now<E> {
    /// The promise has settled: this is the reference, or why there is none.
    Settled(Result<ObjectRef, CallError<E>>),
    /// Send it to the promise target on the connection.
    Pipeline(Arc<ConnShared>, u64, SendGuard),
    /// The promise cannot be pipelined on (an older peer, or not kept): wait for it.
    Wait,
}

/// A reference that an answer still on its way will carry: reference `index` of the answer
/// in `cell`, expected to implement `interface`.
pub(crate) struct PromisedRef {
    pub(crate) cell: Arc<PromiseCell>,
    pub(crate) index: u32,
    pub(crate) interface: String,
}

impl PromisedRef {
    /// The connection the promise was made on.
    pub(crate) fn conn(&self) -> Option<&Arc<ConnShared>> {
        self.cell.conn.as_ref()
    }

    fn now<E>(&self) -> Now<E> {
        if let Some(settled) = self.cell.outcome() {
            return Now::Settled(self.cell.reference(&settled, self.index, &self.interface));
        }
        let target = promise_target(self.cell.id, self.index);
        match (&self.cell.conn, target, self.cell.begin_send()) {
            (Some(conn), Some(target), Some(guard)) => Now::Pipeline(conn.clone(), target, guard),
            _ => Now::Wait,
        }
    }

    /// The reference, once the answer has come, or why there is none.
    pub(crate) async fn wait<E>(&self) -> Result<ObjectRef, CallError<E>> {
        let settled = self.cell.wait().await;
        self.cell.reference(&settled, self.index, &self.interface)
    }

    /// The reference if the promise has settled with one (for encoding it in arguments).
    pub(crate) fn settled_reference(&self) -> Option<Result<ObjectRef, String>> {
        let settled = self.cell.outcome()?;
        Some(
            self.cell
                .reference::<Infallible>(&settled, self.index, &self.interface)
                .map_err(|e| e.to_string()),
        )
    }

    /// Calls `method` on the promised reference: pipelined if the promise may be, otherwise
    /// once it has settled. A pipelined call that the peer refuses as `Broken` although the
    /// promise gave a reference (one that is not the peer's own object, or an answer the
    /// peer did not keep) is sent again to that reference: it never ran.
    pub(crate) async fn call<A, T, E>(
        &self,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
    ) -> Result<T, CallError<E>>
    where
        A: Serialize,
        T: DeserializeOwned + Send + 'static,
        E: DeserializeOwned + Send + 'static,
    {
        let real = match self.now::<E>() {
            Now::Settled(r) => r?,
            Now::Pipeline(conn, target, guard) => {
                match conn
                    .call_on(target, interface, method, args, timeout, Some(guard))
                    .await
                {
                    // Our own account of the promise says more than the peer's (it names
                    // the method), so a failed promise is reported from it.
                    Err(CallError::Refused(Refusal::Broken(_))) => self.wait::<E>().await?,
                    other => return other,
                }
            }
            Now::Wait => self.wait().await?,
        };
        Box::pin(ObjectRef(real.0, timeout).call(interface, method, args)).await
    }

    /// Sends a one-way call to the promised reference (pipelined if it may be).
    pub(crate) async fn call_oneway<A: Serialize>(
        &self,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
    ) -> Result<(), CallError<Infallible>> {
        let real = match self.now::<Infallible>() {
            Now::Settled(r) => r?,
            Now::Pipeline(conn, target, guard) => {
                return conn
                    .oneway_on(target, interface, method, args, timeout, Some(guard))
                    .await
            }
            Now::Wait => self.wait().await?,
        };
        Box::pin(ObjectRef(real.0, timeout).call_oneway(interface, method, args)).await
    }

    /// Makes a promise-able call on the promised reference (pipelined if it may be).
    pub(crate) async fn call_promise<A, E>(
        &self,
        interface: &str,
        method: &str,
        args: &A,
        timeout: CallTimeout,
    ) -> Result<Arc<PromiseCell>, CallError<E>>
    where
        A: Serialize,
    {
        let real = match self.now::<E>() {
            Now::Settled(r) => r?,
            Now::Pipeline(conn, target, guard) => {
                return conn
                    .start_promise(target, interface, method, args, timeout, Some(guard))
                    .await
            }
            Now::Wait => self.wait().await?,
        };
        Box::pin(ObjectRef(real.0, timeout).promise_cell(interface, method, args)).await
    }
}

/// The answer of a call that was sent and is not awaited yet, whose references can be
/// called before it arrives (promise pipelining; see the [module docs](self)).
///
/// Made by the `_promise` twin that [`crate::interface`] generates for every method (or
/// [`ObjectRef::call_promise`]). Awaiting it gives what awaiting the ordinary method gives.
/// Dropping it does not cancel the call (its timeout still bounds it), and references taken
/// from it stay usable.
pub struct Promise<T, E> {
    cell: Arc<PromiseCell>,
    types: PhantomData<fn() -> (T, E)>,
}

impl<T, E> std::fmt::Debug for Promise<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Promise")
            .field("method", &self.cell.method)
            .field("settled", &self.cell.outcome().is_some())
            .finish()
    }
}

impl<T, E> Promise<T, E> {
    pub(crate) fn new(cell: Arc<PromiseCell>) -> Self {
        Promise {
            cell,
            types: PhantomData,
        }
    }

    /// The reference the answer is (for a method whose `Ok` value is a typed handle), callable
    /// at once: calls on it are sent now and run on that object as soon as the answer exists.
    /// If the call fails, calls on it fail with [`Refusal::Broken`] (or
    /// [`CallError::Disconnected`]) and never run.
    pub fn reference(&self) -> T
    where
        T: TypedRef,
    {
        self.reference_at(0)
    }

    /// Reference `index` of those the answer carries, as a handle of interface `R`, callable at
    /// once. References are numbered from 0 in the order the answer's value is serialized
    /// (for a `BTreeMap<K, FooRef>`, its values in key order; for a struct, its fields in
    /// order). Calls on it fail with [`Refusal::Broken`] if the answer has no reference there
    /// or it implements another interface.
    pub fn reference_at<R: TypedRef>(&self, index: u32) -> R {
        R::from_object_ref(self.object_ref_at(index, R::INTERFACE))
            .unwrap_or_else(|_| unreachable!("the promised reference names R's interface"))
    }

    /// Reference `index` of the answer, as an untyped handle expected to implement
    /// `interface` (see [`Promise::reference_at`]).
    pub fn object_ref_at(&self, index: u32, interface: &str) -> ObjectRef {
        ObjectRef::new(RefKind::Promise(Arc::new(PromisedRef {
            cell: self.cell.clone(),
            index,
            interface: interface.to_string(),
        })))
    }

    /// True once the answer (or the call's failure) is here.
    pub fn is_settled(&self) -> bool {
        self.cell.outcome().is_some()
    }
}

impl<T, E> IntoFuture for Promise<T, E>
where
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    type Output = Result<T, CallError<E>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.cell.answer::<T, E>().await })
    }
}
