//! Flow control per server: how many bytes of writes (upload) or reads (download) one
//! transfer keeps outstanding to one storage server.
//!
//! On a LAN two 512 KiB calls in flight per share keep a server busy. On Tor or I2P (a
//! round trip of 0.3–3 s, a few MiB/s) they do not: a link of `B` bytes per second and a
//! round trip of `R` seconds carries `B × R` bytes while one call travels there and its
//! answer back (the *bandwidth-delay product*), and a sender with fewer bytes outstanding
//! leaves the link idle part of each round trip. So the window of each server is sized from
//! what the transfer measures on that server's link:
//!
//! - `R`, the *round trip*: the shortest time any call to the server took (its first call,
//!   `allocate_share` or `get_buckets`, carries almost no data, so it is close to the
//!   link's propagation round trip);
//! - `B`, the *delivery rate*: bytes answered per second, sampled at each answer as in
//!   BBR — the bytes answered between a call's sending and its answer, over that time —
//!   and the largest of the last [`RATE_SAMPLES`] samples kept.
//!
//! The window is `GAIN × B × R`, at least the floor (what the code did before: two chunks
//! per share, so a LAN sees no change) and at most [`WINDOW_BUDGET`]. While the window `W`
//! is below the link's product, the link is idle part of each round trip, a sample measures
//! `W / R`, and the next window is `GAIN` times larger; once the link is busy all the time,
//! a sample measures the link's rate, and the window settles at `GAIN` times the link's
//! product: the link never waits for the sender, and at most half a product of data waits
//! in the queues before it.
//!
//! Before the first answer nothing is measured. Growing from the floor would spend several
//! round trips below the product (on Tor, two 512 KiB writes per 0.3 s is 3 MiB/s), and a
//! file of a few MiB would be sent mostly in that time. So the window starts at
//! [`INITIAL_WINDOW`], and grows as TCP's does in its *slow start* (each answered byte lets
//! two more go, doubling the window every round trip) until the delivery rate stops growing
//! (less than 25 % more over a round trip, twice in a row, as in BBR's startup); from then
//! on it is the formula above, which brings it down to what the link needs. Unlike TCP's,
//! this window does not protect a shared network (the transport under it does that): it
//! bounds the memory a transfer holds and the queue it builds in its own connection, so
//! starting at half the budget costs at most a few seconds of queue at the start of a
//! transfer on the slowest links. On a LAN the round trips are so short that the startup
//! ends at once and the window comes down to the floor.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
// tokio's clock, so that tests can run a simulated link on paused time.
use tokio::time::Instant;

/// The most bytes one transfer keeps outstanding to one server (written and not yet
/// answered, or asked for and not yet read): 8 MiB. It bounds the memory a transfer holds
/// per server (the data of writes in flight, the answers of reads ahead) and, with 512 KiB
/// calls, the calls in flight (16). At a round trip of 300 ms it allows 26 MiB/s per
/// server; at 1 s, 8 MiB/s: above the Tor and I2P links this is for.
pub const WINDOW_BUDGET: u64 = 8 << 20;
/// The window before anything is measured: half of [`WINDOW_BUDGET`] (a Tor link's product
/// is 2.4 MiB, an I2P link's 2 MiB).
pub const INITIAL_WINDOW: u64 = WINDOW_BUDGET / 2;
/// The window is this many times the measured bandwidth-delay product.
const GAIN: f64 = 1.5;
/// Delivery-rate samples kept per server (the largest counts).
const RATE_SAMPLES: usize = 16;
/// The startup ends when the delivery rate grew less than this factor over a round trip...
const STARTUP_GROWTH: f64 = 1.25;
/// ... this many round trips in a row.
const STARTUP_FLAT_ROUNDS: u32 = 2;

/// One server's window, shared by the tasks that write or read its shares.
#[derive(Debug)]
pub(super) struct Flow {
    state: Mutex<State>,
    room: Notify,
    /// The smallest (and first) window.
    floor: u64,
}

#[derive(Debug)]
struct State {
    in_flight: u64,
    window: u64,
    rtt_min: Option<Duration>,
    /// Bytes answered so far.
    delivered: u64,
    /// Recent delivery rates, bytes per second.
    rates: VecDeque<f64>,
    /// Still in the startup (the window doubles each round trip).
    startup: bool,
    /// When the current round (one round trip) of the startup began, and the rate then.
    round: Option<(Instant, f64)>,
    /// Rounds in a row in which the rate did not grow enough.
    flat_rounds: u32,
}

/// Bytes counted as outstanding until the ticket is dropped; [`Ticket::delivered`] also
/// feeds the measurements.
#[derive(Debug)]
pub(super) struct Ticket {
    flow: Arc<Flow>,
    bytes: u64,
    sent_at: Instant,
    delivered_at_send: u64,
}

impl Flow {
    /// A window that starts at [`INITIAL_WINDOW`] (or `floor`, if more) and never goes
    /// below `floor` bytes (clamped to [`WINDOW_BUDGET`]).
    pub fn new(floor: u64) -> Arc<Flow> {
        let floor = floor.clamp(1, WINDOW_BUDGET);
        Arc::new(Flow {
            state: std::sync::Mutex::new(State {
                in_flight: 0,
                window: floor.max(INITIAL_WINDOW),
                rtt_min: None,
                delivered: 0,
                rates: VecDeque::with_capacity(RATE_SAMPLES),
                startup: true,
                round: None,
                flat_rounds: 0,
            }),
            room: Notify::new(),
            floor,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the duration of a call that carried little data (a round trip).
    pub fn note_rtt(&self, rtt: Duration) {
        let mut st = self.lock();
        st.rtt_min = Some(st.rtt_min.map_or(rtt, |m| m.min(rtt)));
        self.resize(&mut st);
    }

    /// The current window, in bytes.
    pub fn window(&self) -> u64 {
        self.lock().window
    }

    /// Whether `bytes` more may go out now: they fit in the window, or nothing is
    /// outstanding (a call larger than the window still goes, alone).
    fn fits(st: &State, bytes: u64) -> bool {
        st.in_flight == 0 || st.in_flight + bytes <= st.window
    }

    /// Waits until the window has room for `bytes` more (see [`Flow::take`]: the room may be
    /// taken by another task before the caller takes it).
    pub async fn room(&self, bytes: u64) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if Self::fits(&self.lock(), bytes) {
                return;
            }
            notified.await;
        }
    }

    /// Counts `bytes` as outstanding now, whether or not they fit.
    pub fn take(self: &Arc<Self>, bytes: u64) -> Ticket {
        let mut st = self.lock();
        st.in_flight += bytes;
        Ticket {
            flow: self.clone(),
            bytes,
            sent_at: Instant::now(),
            delivered_at_send: st.delivered,
        }
    }

    /// Counts `bytes` as outstanding if they fit in the window.
    pub fn try_take(self: &Arc<Self>, bytes: u64) -> Option<Ticket> {
        let fits = Self::fits(&self.lock(), bytes);
        fits.then(|| self.take(bytes))
    }

    /// The window from the measurements (the formula of the module's description).
    fn resize(&self, st: &mut State) {
        let (Some(rtt), Some(rate)) = (st.rtt_min, st.rates.iter().copied().reduce(f64::max))
        else {
            return;
        };
        let bdp = GAIN * rate * rtt.as_secs_f64();
        // `as` saturates (and maps NaN to 0): no overflow on any measurement.
        let sized = (bdp as u64).clamp(self.floor, WINDOW_BUDGET);
        st.window = if st.startup {
            st.window.max(sized)
        } else {
            sized
        };
    }

    /// The startup's bookkeeping at an answer of `bytes`, at `now`.
    fn startup_step(&self, st: &mut State, bytes: u64, now: Instant) {
        if !st.startup {
            return;
        }
        st.window = (st.window + bytes).min(WINDOW_BUDGET);
        let rate = st.rates.iter().copied().fold(0.0, f64::max);
        let rtt = st.rtt_min.unwrap_or_default();
        match st.round {
            None => st.round = Some((now, rate)),
            Some((began, base)) if now.duration_since(began) >= rtt => {
                if rate >= base * STARTUP_GROWTH {
                    st.flat_rounds = 0;
                } else {
                    st.flat_rounds += 1;
                }
                st.round = Some((now, rate.max(base)));
                if st.flat_rounds >= STARTUP_FLAT_ROUNDS {
                    st.startup = false;
                }
            }
            Some(_) => {}
        }
    }
}

impl Ticket {
    /// The call was answered: its bytes are no longer outstanding, and its timing is a
    /// sample of the link.
    pub fn delivered(self) {
        let elapsed = self.sent_at.elapsed();
        let mut st = self.flow.lock();
        st.delivered += self.bytes;
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            if st.rates.len() == RATE_SAMPLES {
                st.rates.pop_front();
            }
            let rate = (st.delivered - self.delivered_at_send) as f64 / secs;
            st.rates.push_back(rate);
        }
        st.rtt_min = Some(st.rtt_min.map_or(elapsed, |m| m.min(elapsed)));
        self.flow.startup_step(&mut st, self.bytes, Instant::now());
        self.flow.resize(&mut st);
        // Drop (below) gives the bytes back.
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.flow.lock();
        st.in_flight = st.in_flight.saturating_sub(self.bytes);
        drop(st);
        self.flow.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `total` bytes in `chunk`-byte calls over a simulated link (one way `rtt / 2`,
    /// `rate` bytes per second, FIFO), as many as the window allows; returns the time it
    /// took and the window at the end. Runs on paused time: no real waiting.
    async fn send_over(flow: Arc<Flow>, total: u64, chunk: u64, rtt: f64, rate: f64) -> (f64, u64) {
        let started = Instant::now();
        let link_free = Arc::new(Mutex::new(started));
        let mut answers = Vec::new();
        let mut sent = 0;
        while sent < total {
            flow.room(chunk).await;
            let ticket = flow.take(chunk);
            let arrives = {
                let mut free = link_free.lock().unwrap();
                let now = Instant::now();
                let leaves = (*free).max(now) + Duration::from_secs_f64(chunk as f64 / rate);
                *free = leaves;
                leaves + Duration::from_secs_f64(rtt)
            };
            answers.push(tokio::spawn(async move {
                tokio::time::sleep_until(arrives).await;
                ticket.delivered();
            }));
            sent += chunk;
        }
        for a in answers {
            a.await.unwrap();
        }
        (started.elapsed().as_secs_f64(), flow.window())
    }

    /// On a Tor-like link the window grows from the floor past the bandwidth-delay product
    /// within a few round trips, the transfer comes close to the link's limit, and the
    /// window settles at `GAIN` times the product; on a LAN-like link it stays at the floor.
    #[tokio::test(start_paused = true)]
    async fn the_window_fills_the_bandwidth_delay_product() {
        let chunk = 512 * 1024u64;
        let (rtt, rate) = (0.3, 8.0 * 1024.0 * 1024.0);
        let total = 16 * chunk; // 8 MiB
        let flow = Flow::new(2 * chunk);
        flow.note_rtt(Duration::from_secs_f64(rtt));
        let (took, window) = send_over(flow, total, chunk, rtt, rate).await;
        let limit = total as f64 / rate + rtt;
        assert!(took < 1.35 * limit, "took {took:.3} s, limit {limit:.3} s");
        let bdp = rate * rtt;
        assert!(
            window as f64 > bdp && window <= WINDOW_BUDGET,
            "window {window}, product {bdp}"
        );
        // Long after the startup: the formula's fixed point.
        let flow = Flow::new(2 * chunk);
        flow.note_rtt(Duration::from_secs_f64(rtt));
        let (_, window) = send_over(flow, 200 * chunk, chunk, rtt, rate).await;
        let ratio = window as f64 / bdp;
        assert!(
            (1.2..2.0).contains(&ratio),
            "window {window} = {ratio:.2} products"
        );

        // A LAN: 200 µs, 500 MiB/s.
        let lan = Flow::new(2 * chunk);
        lan.note_rtt(Duration::from_micros(200));
        let (_, window) = send_over(lan, 64 * chunk, chunk, 200e-6, 500.0 * 1024.0 * 1024.0).await;
        assert_eq!(window, 2 * chunk);
    }

    /// However fast and long the link, the window stays within the budget.
    #[tokio::test(start_paused = true)]
    async fn the_window_stays_within_the_budget() {
        let chunk = 512 * 1024u64;
        let flow = Flow::new(2 * chunk);
        flow.note_rtt(Duration::from_secs(3));
        let (_, window) = send_over(flow, 100 * chunk, chunk, 3.0, 1e10).await;
        assert_eq!(window, WINDOW_BUDGET);
    }

    #[tokio::test]
    async fn tickets_hold_room_until_dropped() {
        let flow = Flow::new(100);
        flow.lock().window = 100;
        let a = flow.take(60);
        assert!(flow.try_take(60).is_none());
        let b = flow.try_take(40).unwrap();
        let waiter = {
            let flow = flow.clone();
            tokio::spawn(async move { flow.room(50).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        drop(b);
        // Alone, a call larger than the window still goes.
        assert!(flow.try_take(1000).is_some());
    }
}
