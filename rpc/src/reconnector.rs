//! Keeping a connection up: [`Reconnector`] reconnects to a FURL whenever the connection is
//! lost, with capped exponential backoff and jitter, and reports what it is doing.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, info_span, Instrument};

use crate::error_chain::ErrorChain;
use crate::furl::Furl;
use crate::object::ObjectRef;
use crate::tub::TubInner;

/// How long to wait between attempts.
///
/// Start from [`ReconnectPolicy::default()`] and change what you need with the chainable setters
/// (one per field) or by assigning the public fields; `#[non_exhaustive]`, so that a new
/// field is not a breaking change.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// The first wait, after the first failure or a lost connection.
    pub initial: Duration,
    /// Each further failure multiplies the wait by this.
    pub factor: f64,
    /// The wait never exceeds this.
    pub max: Duration,
    /// Each wait is scaled by a random factor in `1 ± jitter`, so that many clients do not
    /// retry in lockstep.
    pub jitter: f64,
}

config_setters!(ReconnectPolicy {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: f64,
});

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

impl ReconnectPolicy {
    /// The wait after `failures` consecutive failed attempts (0 after a lost connection).
    pub fn delay(&self, failures: u32, unit_random: f64) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.powi(failures.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64());
        let scale = 1.0 + self.jitter * (2.0 * unit_random - 1.0);
        Duration::from_secs_f64((capped * scale).clamp(0.0, self.max.as_secs_f64()))
    }
}

/// What a reconnector is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconnectorState {
    /// An attempt is under way.
    Connecting,
    /// Connected since this time.
    Connected {
        /// When the connection was made.
        since: SystemTime,
    },
    /// Waiting until this time before the next attempt.
    Waiting {
        /// When the next attempt starts.
        next_attempt: SystemTime,
    },
    /// Stopped by [`Reconnector::stop`].
    Stopped,
}

/// A reconnector's state, the last error and the attempts made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectorStatus {
    /// The state.
    pub state: ReconnectorState,
    /// Why the last attempt failed or the last connection was lost.
    pub last_error: Option<String>,
    /// Attempts made so far.
    pub attempts: u64,
    /// Successful connections so far.
    pub connections: u64,
}

struct Shared {
    stopped: std::sync::atomic::AtomicBool,
    status: Mutex<ReconnectorStatus>,
    wake: Notify,
    task: Mutex<Option<AbortHandle>>,
}

/// Keeps a connection to one FURL up. Dropping the handle does not stop it; call
/// [`Reconnector::stop`].
#[derive(Clone)]
pub struct Reconnector {
    shared: Arc<Shared>,
    furl: Furl,
}

impl std::fmt::Debug for Reconnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnector")
            .field("furl", &self.furl)
            .field("status", &self.status())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the state unless the reconnector was stopped (the task may run on briefly after
/// `stop()` aborts it).
fn set_state(shared: &Shared, state: ReconnectorState) {
    let mut st = lock(&shared.status);
    if !shared.stopped.load(std::sync::atomic::Ordering::SeqCst) {
        st.state = state;
    }
}

impl Reconnector {
    pub(crate) fn start(
        tub: Weak<TubInner>,
        furl: Furl,
        policy: ReconnectPolicy,
        on_connect: Box<dyn Fn(ObjectRef) + Send + Sync>,
    ) -> Reconnector {
        let shared = Arc::new(Shared {
            stopped: std::sync::atomic::AtomicBool::new(false),
            status: Mutex::new(ReconnectorStatus {
                state: ReconnectorState::Connecting,
                last_error: None,
                attempts: 0,
                connections: 0,
            }),
            wake: Notify::new(),
            task: Mutex::new(None),
        });
        let s = shared.clone();
        let f = furl.clone();
        let span = info_span!("reconnector", peer = %furl.tubid());
        let task =
            tokio::spawn(async move { run(tub, f, policy, on_connect, s).await }.instrument(span));
        *lock(&shared.task) = Some(task.abort_handle());
        Reconnector { shared, furl }
    }

    /// What the reconnector is doing now.
    pub fn status(&self) -> ReconnectorStatus {
        lock(&self.shared.status).clone()
    }

    /// Retries now instead of waiting out the backoff (after a laptop resumes, say). Does
    /// nothing while connecting or connected.
    pub fn reset(&self) {
        self.shared.wake.notify_waiters();
    }

    /// Stops reconnecting. A live connection stays up.
    pub fn stop(&self) {
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = lock(&self.shared.task).take() {
            t.abort();
        }
        lock(&self.shared.status).state = ReconnectorState::Stopped;
    }

    /// The FURL being kept connected.
    pub fn furl(&self) -> &Furl {
        &self.furl
    }
}

async fn run(
    tub: Weak<TubInner>,
    furl: Furl,
    policy: ReconnectPolicy,
    on_connect: Box<dyn Fn(ObjectRef) + Send + Sync>,
    shared: Arc<Shared>,
) {
    let mut failures: u32 = 0;
    loop {
        set_state(&shared, ReconnectorState::Connecting);
        lock(&shared.status).attempts += 1;
        let Some(t) = tub.upgrade() else { return };
        let result = TubInner::get_reference(&t, &furl).await;
        drop(t);
        match result {
            Ok(r) => {
                failures = 0;
                {
                    let mut st = lock(&shared.status);
                    st.state = ReconnectorState::Connected {
                        since: SystemTime::now(),
                    };
                    st.connections += 1;
                }
                on_connect(r.clone());
                let reason = r.disconnected().await;
                debug!(%reason, "connection lost");
                lock(&shared.status).last_error = Some(reason.to_string());
            }
            Err(e) => {
                let why = ErrorChain(&e).to_string();
                debug!("attempt failed: {why}");
                lock(&shared.status).last_error = Some(why);
                failures = failures.saturating_add(1);
            }
        }
        let random = u32::from_le_bytes(crate::random_bytes::<4>()) as f64 / u32::MAX as f64;
        let wait = policy.delay(failures.saturating_sub(1), random);
        // Register for reset() before announcing the wait, so a reset that sees "waiting"
        // cannot be missed.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        set_state(
            &shared,
            ReconnectorState::Waiting {
                next_attempt: SystemTime::now() + wait,
            },
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = woken => debug!("reset: retrying now"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = ReconnectPolicy {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter: 0.2,
        };
        assert_eq!(p.delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(p.delay(2, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay(10, 0.5), Duration::from_secs(10));
        assert_eq!(p.delay(1000, 0.5), Duration::from_secs(10));
        assert!(p.delay(1, 0.0) < p.delay(1, 1.0));
        assert_eq!(p.delay(1, 0.0), Duration::from_secs_f64(1.6));
        assert!(p.delay(100, 1.0) <= p.max);
    }
}
