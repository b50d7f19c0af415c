//! `TicketLock`: FIFO ticket spinlock with proportional back-off (a baseline).
//!
//! Lock word: two 32-bit counters, `next` (tickets handed out) and `owner` (ticket being
//! served). `lock` takes a ticket with `fetch_add` and spins until `owner` reaches it,
//! pausing between polls in proportion to its distance from the head of the line (the waiter
//! `k` places back polls about `k` times less often). `unlock` increments `owner`.
//!
//! Ordering: the `owner` load that sees our ticket is Acquire and the owner's increment is a
//! Release store (only the holder writes `owner`), so critical sections are ordered. Tickets
//! wrap around harmlessly (`wrapping_sub` distances) as long as fewer than 2^32 threads wait.
//!
//! Strictly FIFO: when the next ticket holder is descheduled, everybody behind it waits for
//! the scheduler, which is what the PV lock avoids.

use crate::stats::{spin_add, Event};
use crate::sync::{spin_hint, AtomicU32, Ordering};
use crate::SpinLockKind;

/// Pause iterations per place in line between polls of `owner`.
const BACKOFF_PER_WAITER: u32 = 16;
/// Cap on one back-off pause.
const BACKOFF_MAX: u32 = 1024;

/// Raw ticket spinlock (`lock_api::RawMutex` outside loom).
pub struct RawTicketLock {
    next: AtomicU32,
    owner: AtomicU32,
}

impl RawTicketLock {
    /// A free lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawTicketLock {
            next: AtomicU32::new(0),
            owner: AtomicU32::new(0),
        }
    }

    /// A free lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawTicketLock {
            next: AtomicU32::new(0),
            owner: AtomicU32::new(0),
        }
    }

    /// Acquires the lock (FIFO).
    #[inline]
    pub fn lock(&self) {
        let me = self.next.fetch_add(1, Ordering::Relaxed);
        if self.owner.load(Ordering::Acquire) != me {
            self.lock_slow(me);
        }
    }

    #[inline(never)]
    fn lock_slow(&self, me: u32) {
        let mut spins = 0u64;
        loop {
            let owner = self.owner.load(Ordering::Acquire);
            if owner == me {
                break;
            }
            let dist = me.wrapping_sub(owner);
            let pause = dist.saturating_mul(BACKOFF_PER_WAITER).min(BACKOFF_MAX);
            for _ in 0..pause.max(1) {
                spin_hint();
            }
            spins += u64::from(pause.max(1));
        }
        spin_add(SpinLockKind::Ticket, Event::SlowPath, 1);
        spin_add(SpinLockKind::Ticket, Event::Spins, spins);
    }

    /// Acquires the lock if nobody holds or waits for it.
    #[inline]
    pub fn try_lock(&self) -> bool {
        let owner = self.owner.load(Ordering::Acquire);
        self.next
            .compare_exchange(
                owner,
                owner.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds the lock.
    #[inline]
    pub unsafe fn unlock(&self) {
        let o = self.owner.load(Ordering::Relaxed);
        self.owner.store(o.wrapping_add(1), Ordering::Release);
    }

    /// Whether the lock is held (a racy snapshot).
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.next.load(Ordering::Relaxed) != self.owner.load(Ordering::Relaxed)
    }
}

impl Default for RawTicketLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
// SAFETY: a thread returns from `lock` only when `owner` equals its unique ticket (Acquire),
// and `owner` advances only in `unlock` by the holder (Release): one holder at a time.
unsafe impl lock_api::RawMutex for RawTicketLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawTicketLock::new();
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        RawTicketLock::lock(self)
    }
    #[inline]
    fn try_lock(&self) -> bool {
        RawTicketLock::try_lock(self)
    }
    #[inline]
    unsafe fn unlock(&self) {
        // SAFETY: forwarded contract: the caller holds the lock.
        unsafe { RawTicketLock::unlock(self) }
    }
    #[inline]
    fn is_locked(&self) -> bool {
        RawTicketLock::is_locked(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn try_lock_fails_while_held_and_tickets_wrap() {
        let l = RawTicketLock::new();
        l.next.store(u32::MAX, Ordering::Relaxed);
        l.owner.store(u32::MAX, Ordering::Relaxed);
        l.lock();
        assert!(l.is_locked());
        assert!(!l.try_lock());
        // SAFETY: held.
        unsafe { l.unlock() };
        assert!(!l.is_locked());
        assert_eq!(l.owner.load(Ordering::Relaxed), 0);
        assert!(l.try_lock());
        // SAFETY: held.
        unsafe { l.unlock() };
    }
}
