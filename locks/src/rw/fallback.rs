//! Which per-CPU rwlocks this thread reads through the *fallback* (the underlying fair
//! rwlock, taken when no reader slot is free or the thread has no slot block).
//!
//! A fallback read must be non-recursive, so that it queues behind a waiting writer: two
//! threads whose fallback reads overlap in relay would otherwise keep the lock read-held
//! forever and starve the writer. Only a thread that already holds *this* lock through the
//! fallback must read recursively (queueing behind a writer that waits for itself would
//! deadlock). This record tells the two apart.
//!
//! It keeps [`ENTRIES`] (lock address, hold count) pairs per thread, plus a count of holds
//! it could not record (a thread holding more than `SLOTS + ENTRIES` distinct per-CPU read
//! locks at once). While such untracked holds exist, every lock not in the table counts as
//! possibly held (recursive read: correct, only unfair to writers). The record is a
//! const-initialised thread-local without destructor, so guards taken or dropped during
//! thread-local teardown still find it.

use std::cell::Cell;

/// Distinct locks per thread whose fallback holds are tracked exactly.
pub(crate) const ENTRIES: usize = 8;

struct Held {
    addr: [Cell<usize>; ENTRIES],
    count: [Cell<u32>; ENTRIES],
    untracked: Cell<u32>,
}

impl Held {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Held {
            addr: [const { Cell::new(0) }; ENTRIES],
            count: [const { Cell::new(0) }; ENTRIES],
            untracked: Cell::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Held {
            addr: std::array::from_fn(|_| Cell::new(0)),
            count: std::array::from_fn(|_| Cell::new(0)),
            untracked: Cell::new(0),
        }
    }

    fn position(&self, addr: usize) -> Option<usize> {
        self.addr.iter().position(|a| a.get() == addr)
    }
}

#[cfg(not(loom))]
thread_local! {
    static HELD: Held = const { Held::new() };
}
#[cfg(loom)]
loom::thread_local! {
    static HELD: Held = Held::new();
}

/// Whether this thread may already hold the lock at `addr` through the fallback (`true`
/// also when that cannot be ruled out).
pub(crate) fn maybe_held(addr: usize) -> bool {
    HELD.try_with(|h| h.position(addr).is_some() || h.untracked.get() > 0)
        .unwrap_or(true)
}

/// Records one more fallback hold of `addr` (after it was taken).
pub(crate) fn record(addr: usize) {
    let _ = HELD.try_with(|h| {
        let i = h.position(addr).or_else(|| h.position(0));
        match i {
            Some(i) => {
                h.addr[i].set(addr);
                h.count[i].set(h.count[i].get() + 1);
            }
            None => h.untracked.set(h.untracked.get() + 1),
        }
    });
}

/// Forgets one fallback hold of `addr` (before it is released).
pub(crate) fn forget(addr: usize) {
    let _ = HELD.try_with(|h| match h.position(addr) {
        Some(i) => {
            let c = h.count[i].get() - 1;
            h.count[i].set(c);
            if c == 0 {
                h.addr[i].set(0);
            }
        }
        None => h.untracked.set(h.untracked.get().saturating_sub(1)),
    });
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn tracks_holds_per_lock_and_overflow() {
        let base = 0x10_0000usize;
        assert!(!maybe_held(base));
        record(base);
        record(base);
        assert!(maybe_held(base));
        assert!(!maybe_held(base + 64));
        forget(base);
        assert!(maybe_held(base), "one hold left");
        forget(base);
        assert!(!maybe_held(base));

        // More distinct locks than entries: the overflow makes every lock "maybe held".
        let locks: Vec<usize> = (1..=ENTRIES + 1).map(|i| base + i * 64).collect();
        for &l in &locks {
            record(l);
        }
        assert!(
            maybe_held(base),
            "untracked holds: cannot rule anything out"
        );
        for &l in locks.iter().rev() {
            forget(l);
        }
        assert!(!maybe_held(base) && !maybe_held(locks[0]));
    }
}
