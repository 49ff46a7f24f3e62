//! Time, as the caches see it.
//!
//! Every time limit in this crate (data-key age, decrypt-cache TTL, outage grace)
//! reads the time from a [`Clock`], so tests can move time forward with a
//! [`ManualClock`] instead of sleeping.
//!
//! The warm path (a seal or open whose key is cached) reads a *coarse* clock
//! instead of the precise one: on Linux `CLOCK_MONOTONIC_COARSE`, a few
//! nanoseconds instead of a full clock read, refreshed by the kernel every tick
//! (at most [`COARSE_RESOLUTION`]). Limits are checked conservatively against
//! it: a key is treated as one resolution older than the coarse clock says, so
//! it may stop encrypting up to two resolutions early, never late.
//! [`ManualClock`] is exact (its coarse reading is its reading).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The documented bound on how far the coarse clock of [`SystemClock`] lags
/// behind: one kernel tick (1/HZ) is at most 10 ms for every HZ Linux offers.
pub const COARSE_RESOLUTION: Duration = Duration::from_millis(10);

/// `d` in whole milliseconds, saturating at `i64::MAX`: the unit of the key
/// store's and the job tables' timestamps, which a duration is added to (with
/// `saturating_add`) or subtracted from.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A monotonic clock: time elapsed since some fixed origin.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time as a duration since the clock's origin.
    fn now(&self) -> Duration;

    /// A cheap reading that lags [`Clock::now`] by at most
    /// [`Clock::coarse_resolution`] (same origin). Defaults to `now`.
    fn coarse(&self) -> Duration {
        self.now()
    }

    /// How far [`Clock::coarse`] may lag behind. Defaults to zero (exact).
    fn coarse_resolution(&self) -> Duration {
        Duration::ZERO
    }
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
    coarse_origin: coarsetime::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
            coarse_origin: coarsetime::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn coarse(&self) -> Duration {
        let ticks = coarsetime::Instant::now().duration_since(self.coarse_origin);
        Duration::from(ticks)
    }

    fn coarse_resolution(&self) -> Duration {
        // The two origins were read one after the other: allow for one more
        // tick between them.
        COARSE_RESOLUTION * 2
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}
