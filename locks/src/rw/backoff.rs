//! Spin-then-yield back-off for the rwlocks' wait loops.
//!
//! With many more threads than cores the thread we wait for is often not running, so after
//! a short exponential spin the waiter yields its core. Under loom every step is a single
//! yield, so models stay small and always make progress.

use crate::sync::spin_hint;

/// Spin rounds (doubling) before the back-off starts yielding.
#[cfg(not(loom))]
const SPIN_ROUNDS: u32 = 6;

#[derive(Default)]
pub(crate) struct Backoff {
    #[cfg(not(loom))]
    step: u32,
    /// Total spin iterations (for the lock counters).
    pub(crate) spins: u64,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Waits a little longer than last time.
    #[inline]
    pub(crate) fn snooze(&mut self) {
        self.spins += 1;
        #[cfg(loom)]
        spin_hint();
        #[cfg(not(loom))]
        {
            if self.step < SPIN_ROUNDS {
                for _ in 0..(1u32 << self.step) {
                    spin_hint();
                }
                self.step += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}
