//! A connection's limit on its own outstanding calls: a counter that callers take a unit of
//! before sending and give back when answered.
//!
//! A tokio `Semaphore` would do, but every call pays for it twice on the round trip's path:
//! an acquire that clones an `Arc` for the owned permit, and a release that always takes the
//! semaphore's waiter lock, whether or not anyone waits. Here an uncontended acquire is one
//! compare-and-swap, a release one subtraction and one load; the `Notify` is touched only
//! when callers are waiting.
//!
//! While anyone waits, new callers join the waiters instead of taking a free unit on the
//! fast path, and `Notify::notify_one` wakes waiters in the order they registered. The order
//! is not strict: a unit given back while a caller is just registering may go to that caller
//! before the waiter woken for it.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A limit of `max` units held at once.
pub(crate) struct Limit {
    used: AtomicUsize,
    /// Callers between registering for a wake-up and taking a unit.
    waiting: AtomicUsize,
    room: Notify,
    max: usize,
}

/// One unit of a [`Limit`], given back when dropped.
#[must_use = "the unit is given back when this is dropped"]
pub(crate) struct Unit<'a> {
    limit: &'a Limit,
    /// No other unit was held when this one was taken.
    pub(crate) alone: bool,
}

impl Unit<'_> {
    /// Keeps the unit past this handle's life: it is given back by [`Limit::give_back`].
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unit<'_> {
    fn drop(&mut self) {
        self.limit.release();
    }
}

impl Limit {
    /// A limit of `max` units (at least one).
    pub(crate) fn new(max: usize) -> Limit {
        Limit {
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            max: max.max(1),
        }
    }

    /// Takes a unit if one is free: `Some(true)` if no other was held.
    fn try_take(&self) -> Option<bool> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u < self.max).then_some(u + 1)
            })
            .ok()
            .map(|before| before == 0)
    }

    fn unit(&self, alone: bool) -> Unit<'_> {
        Unit { limit: self, alone }
    }

    /// Takes a unit if one is free and nobody waits for one, without waiting.
    pub(crate) fn try_acquire(&self) -> Option<Unit<'_>> {
        if self.waiting.load(Ordering::SeqCst) != 0 {
            return None;
        }
        self.try_take().map(|alone| self.unit(alone))
    }

    /// Takes a unit, waiting for one to come free if all are held.
    pub(crate) async fn acquire(&self) -> Unit<'_> {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            if let Some(alone) = self.try_take() {
                return self.unit(alone);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted as waiting until it returns, even if the caller gives up (drops this).
        struct Waiting<'a>(&'a Limit);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(self);
        loop {
            // Registered before looking, so that a release in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(alone) = self.try_take() {
                return self.unit(alone);
            }
            room.await;
        }
    }

    /// Gives back a unit that was kept ([`Unit::keep`]).
    pub(crate) fn give_back(&self) {
        self.release();
    }

    fn release(&self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_one();
        }
    }

    /// Units held now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn units_are_given_back_on_drop() {
        let limit = Limit::new(2);
        let a = limit.acquire().await;
        let b = limit.acquire().await;
        assert!(a.alone && !b.alone);
        assert_eq!(limit.used(), 2);
        drop(a);
        assert_eq!(limit.used(), 1);
        drop(b);
        assert_eq!(limit.used(), 0);
        assert!(limit.acquire().await.alone);
        // Zero means one: a limit that never lets a call through would be a deadlock.
        let one = Limit::new(0);
        let _u = one.acquire().await;
        assert_eq!(one.used(), 1);
    }

    #[tokio::test]
    async fn a_full_limit_makes_callers_wait_in_order() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire().await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (limit, order) = (limit.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _u = limit.acquire().await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Each registers before the next one starts.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(order.lock().unwrap().is_empty());
        drop(held);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("every waiter gets a unit")
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(limit.used(), 0);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_keep_others_waiting() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire().await;
        let gave_up = {
            let limit = limit.clone();
            tokio::spawn(async move {
                let _u = limit.acquire().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        gave_up.abort();
        let _ = gave_up.await;
        assert_eq!(limit.waiting.load(Ordering::SeqCst), 0);
        drop(held);
        // With nobody waiting, the fast path is open again.
        let _u = tokio::time::timeout(Duration::from_secs(5), limit.acquire())
            .await
            .expect("the unit came back");
    }

    #[test]
    fn many_threads_never_exceed_the_limit() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let limit = Arc::new(Limit::new(3));
        let inside = Arc::new(AtomicUsize::new(0));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let (limit, inside) = (limit.clone(), inside.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..200 {
                        let _u = limit.acquire().await;
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 3, "{now} units held at once");
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                }));
            }
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("no caller is stranded")
                    .unwrap();
            }
        });
        assert_eq!(limit.used(), 0);
    }
}
