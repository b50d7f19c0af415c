//! `TasLock`: test-and-test-and-set spinlock with exponential back-off (a baseline).
//!
//! Lock word: one `AtomicU32`, 0 free, 1 held. `lock` tries a swap; on failure it spins on
//! plain loads until the word reads 0 (so waiters share the line instead of bouncing it),
//! then tries again, doubling its pause after every lost race up to a cap. `unlock` stores 0.
//!
//! Ordering: the successful swap is Acquire, the unlocking store Release.
//! Unfair: a waiter may starve; nobody sleeps.

use crate::stats::{spin_add, Event};
use crate::sync::{spin_hint, AtomicU32, Ordering};
use crate::SpinLockKind;

const BACKOFF_MIN: u32 = 4;
const BACKOFF_MAX: u32 = 1024;

/// Raw test-and-test-and-set spinlock (`lock_api::RawMutex` outside loom).
pub struct RawTasLock {
    locked: AtomicU32,
}

impl RawTasLock {
    /// A free lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawTasLock {
            locked: AtomicU32::new(0),
        }
    }

    /// A free lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawTasLock {
            locked: AtomicU32::new(0),
        }
    }

    /// Acquires the lock.
    #[inline]
    pub fn lock(&self) {
        if self.locked.swap(1, Ordering::Acquire) != 0 {
            self.lock_slow();
        }
    }

    #[inline(never)]
    fn lock_slow(&self) {
        let mut spins = 0u64;
        let mut backoff = BACKOFF_MIN;
        loop {
            while self.locked.load(Ordering::Relaxed) != 0 {
                spin_hint();
                spins += 1;
            }
            if self.locked.swap(1, Ordering::Acquire) == 0 {
                break;
            }
            for _ in 0..backoff {
                spin_hint();
            }
            spins += u64::from(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        spin_add(SpinLockKind::Tas, Event::SlowPath, 1);
        spin_add(SpinLockKind::Tas, Event::Spins, spins);
    }

    /// Acquires the lock if it is free right now.
    #[inline]
    pub fn try_lock(&self) -> bool {
        self.locked.load(Ordering::Relaxed) == 0 && self.locked.swap(1, Ordering::Acquire) == 0
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds the lock.
    #[inline]
    pub unsafe fn unlock(&self) {
        self.locked.store(0, Ordering::Release);
    }

    /// Whether the lock is held (a racy snapshot).
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed) != 0
    }
}

impl Default for RawTasLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
// SAFETY: only the thread whose Acquire swap turned 0 into 1 returns from `lock`, and the
// word returns to 0 only in the holder's Release `unlock`.
unsafe impl lock_api::RawMutex for RawTasLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawTasLock::new();
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        RawTasLock::lock(self)
    }
    #[inline]
    fn try_lock(&self) -> bool {
        RawTasLock::try_lock(self)
    }
    #[inline]
    unsafe fn unlock(&self) {
        // SAFETY: forwarded contract: the caller holds the lock.
        unsafe { RawTasLock::unlock(self) }
    }
    #[inline]
    fn is_locked(&self) -> bool {
        RawTasLock::is_locked(self)
    }
}
