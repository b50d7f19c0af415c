//! `PlainRwLock`: a single-word atomic reader-writer lock (the seed's "before").
//!
//! # Lock word (`AtomicU32`)
//! ```text
//!  31                                   2     1         0
//! +--------------------------------------+---------+--------+
//! |            reader count              | WAITING | WRITER |
//! +--------------------------------------+---------+--------+
//! ```
//! * `WRITER`: a writer holds the lock (then the reader count is 0).
//! * `WAITING`: some writer is waiting; new readers hold back, so a stream of readers cannot
//!   starve a writer. The writer that acquires clears it; other waiting writers set it again
//!   on their next poll.
//! * reader count: every reader compare-and-swaps `+READER` into this one shared word. That
//!   shared read-modify-write is the point of this baseline: under contention the CAS fails
//!   and retries, and the cache line ping-pongs between cores — the collapse the per-CPU
//!   rwlock removes.
//!
//! # State machine
//! `free (0)` --reader CAS +4--> `n readers` --reader -4--> ... --> `free`;
//! `free` --writer CAS--> `WRITER` --writer -1--> `free`; a waiting writer sets `WAITING` in
//! any state and the bit is cleared by the CAS that makes a writer the owner.
//! A *recursive* read (the thread already holds a read lock) ignores `WAITING`, so it never
//! deadlocks against a writer that waits for that very thread.
//!
//! # Memory ordering
//! Acquisition CASes are `Acquire`, releases (`fetch_sub`) are `Release`: each owner's
//! critical section happens-before the next owner's. Setting `WAITING` is `Relaxed`: it is a
//! hint that only affects who tries next, never what is visible inside a critical section.
//!
//! Waiters spin with exponential back-off, then `yield_now` (see `backoff.rs`).

use super::backoff::Backoff;
use crate::stats::{rw_add, Event};
use crate::sync::{spin_hint, AtomicU32, Ordering::*};
use crate::RwLockKind;

const WRITER: u32 = 1;
const WAITING: u32 = 2;
const READER: u32 = 4;
/// Largest lock word that still leaves room for one more reader.
const MAX_READERS_WORD: u32 = u32::MAX - READER - WAITING - WRITER;

/// Raw single-word rwlock (use it through [`PlainRwLock`](crate::PlainRwLock)).
pub struct RawPlainRwLock {
    state: AtomicU32,
}

impl RawPlainRwLock {
    /// An unlocked lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawPlainRwLock {
            state: AtomicU32::new(0),
        }
    }

    /// An unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawPlainRwLock {
            state: AtomicU32::new(0),
        }
    }

    /// Tries once (retrying only lost races with other readers) to add a reader; `blockers`
    /// are the bits that make a reader wait.
    #[inline]
    fn try_read_with(&self, blockers: u32) -> bool {
        let mut s = self.state.load(Relaxed);
        loop {
            if s & blockers != 0 || s > MAX_READERS_WORD {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(s, s + READER, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => {
                    s = now;
                    spin_hint();
                }
            }
        }
    }

    #[cold]
    fn read_slow(&self, blockers: u32) {
        let mut backoff = Backoff::new();
        while !self.try_read_with(blockers) {
            backoff.snooze();
        }
        rw_add(RwLockKind::Rwlock, Event::ReadSlowPath, 1);
        rw_add(RwLockKind::Rwlock, Event::Spins, backoff.spins);
    }

    /// Locks for shared access, waiting behind active and waiting writers.
    #[inline]
    pub fn lock_shared(&self) {
        if !self.try_read_with(WRITER | WAITING) {
            self.read_slow(WRITER | WAITING);
        }
    }

    /// Locks for shared access when this thread may already hold a read lock: waits only
    /// for an active writer, not for waiting ones.
    #[inline]
    pub fn lock_shared_recursive(&self) {
        if !self.try_read_with(WRITER) {
            self.read_slow(WRITER);
        }
    }

    /// Shared access if no writer holds or waits for the lock.
    #[inline]
    pub fn try_lock_shared(&self) -> bool {
        self.try_read_with(WRITER | WAITING)
    }

    /// Shared access if no writer holds the lock.
    #[inline]
    pub fn try_lock_shared_recursive(&self) -> bool {
        self.try_read_with(WRITER)
    }

    /// Releases shared access.
    ///
    /// # Safety
    /// The caller holds a shared lock taken with one of the `lock_shared*` methods.
    #[inline]
    pub unsafe fn unlock_shared(&self) {
        self.state.fetch_sub(READER, Release);
    }

    /// Exclusive access if the lock is free.
    #[inline]
    pub fn try_lock_exclusive(&self) -> bool {
        let s = self.state.load(Relaxed);
        s & !WAITING == 0
            && self
                .state
                .compare_exchange(s, WRITER, Acquire, Relaxed)
                .is_ok()
    }

    /// Locks for exclusive access.
    #[inline]
    pub fn lock_exclusive(&self) {
        if !self.try_lock_exclusive() {
            self.write_slow();
        }
        rw_add(RwLockKind::Rwlock, Event::WriteLocks, 1);
    }

    #[cold]
    fn write_slow(&self) {
        let mut backoff = Backoff::new();
        loop {
            let s = self.state.load(Relaxed);
            if s & !WAITING == 0 {
                if self
                    .state
                    .compare_exchange(s, WRITER, Acquire, Relaxed)
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            if s & WAITING == 0 {
                self.state.fetch_or(WAITING, Relaxed);
            }
            backoff.snooze();
        }
        rw_add(RwLockKind::Rwlock, Event::SlowPath, 1);
        rw_add(RwLockKind::Rwlock, Event::Spins, backoff.spins);
    }

    /// Releases exclusive access.
    ///
    /// # Safety
    /// The caller holds the exclusive lock.
    #[inline]
    pub unsafe fn unlock_exclusive(&self) {
        self.state.fetch_sub(WRITER, Release);
    }

    /// Whether any reader or writer holds the lock (a racy snapshot).
    pub fn is_locked(&self) -> bool {
        self.state.load(Relaxed) & !WAITING != 0
    }
}

impl Default for RawPlainRwLock {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: readers exclude writers and writers exclude everyone through the single lock word
// (see the header); acquisitions are Acquire and releases Release.
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLock for RawPlainRwLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock_shared(&self) {
        RawPlainRwLock::lock_shared(self)
    }
    #[inline]
    fn try_lock_shared(&self) -> bool {
        RawPlainRwLock::try_lock_shared(self)
    }
    #[inline]
    unsafe fn unlock_shared(&self) {
        // SAFETY: forwarded from lock_api's contract (a shared lock is held).
        unsafe { RawPlainRwLock::unlock_shared(self) }
    }
    #[inline]
    fn lock_exclusive(&self) {
        RawPlainRwLock::lock_exclusive(self)
    }
    #[inline]
    fn try_lock_exclusive(&self) -> bool {
        RawPlainRwLock::try_lock_exclusive(self)
    }
    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: forwarded from lock_api's contract (the exclusive lock is held).
        unsafe { RawPlainRwLock::unlock_exclusive(self) }
    }
    #[inline]
    fn is_locked(&self) -> bool {
        RawPlainRwLock::is_locked(self)
    }
}

// SAFETY: a recursive read only skips waiting for *waiting* writers; an active writer still
// excludes it.
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLockRecursive for RawPlainRwLock {
    #[inline]
    fn lock_shared_recursive(&self) {
        RawPlainRwLock::lock_shared_recursive(self)
    }
    #[inline]
    fn try_lock_shared_recursive(&self) -> bool {
        RawPlainRwLock::try_lock_shared_recursive(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::PlainRwLock;
    use std::sync::Arc;

    #[test]
    fn readers_share_writers_exclude() {
        let l = PlainRwLock::new(5);
        let a = l.read();
        let b = l.read();
        assert_eq!(*a + *b, 10);
        assert!(l.try_write().is_none());
        drop((a, b));
        let mut w = l.write();
        *w += 1;
        assert!(l.try_read().is_none());
        drop(w);
        assert_eq!(*l.read(), 6);
    }

    #[test]
    fn waiting_writer_blocks_new_readers_but_not_recursive_ones() {
        let l = Arc::new(PlainRwLock::new(0u32));
        let r = l.read();
        let l2 = Arc::clone(&l);
        let w = std::thread::spawn(move || *l2.write() += 1);
        // Wait until the writer has announced itself.
        // SAFETY: raw() is only used to peek at the state word.
        while unsafe { l.raw() }
            .state
            .load(crate::sync::Ordering::Relaxed)
            & super::WAITING
            == 0
        {
            std::thread::yield_now();
        }
        assert!(
            l.try_read().is_none(),
            "a waiting writer holds back new readers"
        );
        let again = l.read_recursive();
        assert_eq!(*again, 0);
        drop(again);
        drop(r);
        w.join().unwrap();
        assert_eq!(*l.read(), 1);
    }
}
