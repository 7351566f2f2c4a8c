//! Connection-count limit for the accept loop.
//!
//! [`ConnectionLimiter`] hands out one [`ConnectionPermit`] per host connection; the
//! permit is held by the connection's task and returned when it is dropped (the
//! connection ended, however it ended). When every permit is out, `try_acquire`
//! refuses at once — the accept loop closes the new connection instead of queueing
//! it — and logs the refusal (rate-limited to one warning per second, so a host
//! hammering the listener cannot flood the log).
//!
//! ```
//! use agent_warden::serve::limits::ConnectionLimiter;
//! let limiter = ConnectionLimiter::new(2);
//! let a = limiter.try_acquire().unwrap();
//! let _b = limiter.try_acquire().unwrap();
//! assert!(limiter.try_acquire().is_none()); // refused and logged
//! drop(a);
//! assert!(limiter.try_acquire().is_some());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often at most a refusal is logged (the count of refusals in between is kept).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// At most `max` host connections at once. Cheap to clone; clones share the count.
#[derive(Clone, Debug)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    slots: Arc<Semaphore>,
    refused: AtomicU64,
    /// Milliseconds since `epoch` of the last refusal logged, + 1 (0: never).
    last_log_ms: AtomicU64,
    epoch: Instant,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionLimiter {
    /// A limiter admitting `max` connections at once (at least 1).
    pub fn new(max: usize) -> ConnectionLimiter {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimiter {
            inner: Arc::new(Inner {
                max,
                slots: Arc::new(Semaphore::new(max)),
                refused: AtomicU64::new(0),
                last_log_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// Admits one connection, or `None` (logged) when `max` are already open.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        match self.inner.slots.clone().try_acquire_owned() {
            Ok(p) => Some(ConnectionPermit { _permit: p }),
            Err(_) => {
                let refused = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
                self.log_refusal(refused);
                None
            }
        }
    }

    fn log_refusal(&self, refused: u64) {
        let now = self.inner.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.inner.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .inner
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = self.inner.max,
                refused_total = refused,
                "connection limit reached; closing the new host connection"
            );
        }
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Connections currently admitted.
    pub fn open(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    /// Connections refused since the limiter was made.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_and_frees_on_drop() {
        let l = ConnectionLimiter::new(3);
        let permits: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(l.open(), 3);
        assert!(l.try_acquire().is_none());
        assert!(l.try_acquire().is_none());
        assert_eq!(l.refused(), 2);
        drop(permits);
        assert_eq!(l.open(), 0);
        let _p = l.try_acquire().unwrap();
        assert_eq!(l.open(), 1);
    }

    #[test]
    fn clones_share_the_count_and_zero_means_one() {
        let l = ConnectionLimiter::new(0);
        assert_eq!(l.max(), 1);
        let c = l.clone();
        let p = l.try_acquire().unwrap();
        assert!(c.try_acquire().is_none());
        drop(p);
        assert!(c.try_acquire().is_some());
    }

    #[tokio::test]
    async fn a_permit_moved_into_a_task_is_freed_when_the_task_ends() {
        let l = ConnectionLimiter::new(1);
        let p = l.try_acquire().unwrap();
        tokio::spawn(async move {
            let _p = p;
        })
        .await
        .unwrap();
        assert_eq!(l.open(), 0);
    }
}
