//! Per-thread indices: the user-space stand-in for "CPU number".
//!
//! Every thread that touches a pvnet lock gets a small index in `0..MAX_THREADS`, handed out
//! lowest-free-first and given back when the thread exits, so indices stay dense and a
//! writer scanning per-thread state only walks `0..high_water()`. Algorithms keep their
//! per-thread state (per-CPU rwlock slots, MCS nodes) in tables indexed by this number; the
//! state itself is never freed, so a stale index read by another thread always points at
//! valid memory (it may just belong to a newer thread).
//!
//! Assignment and release take a mutex; they happen once per thread lifetime, never on a
//! lock path.
//!
//! Under `--cfg loom` the shared state lives in `loom::lazy_static!` and the index in a
//! `loom::thread_local!`, so every model execution starts from a fresh registry; indices
//! are not reused there (see `state`).

use crate::sync::Ordering;

/// Most threads that may use pvnet locks at once. Bounded by the qspinlock tail encoding
/// (14 bits of "CPU + 1").
pub const MAX_THREADS: usize = (1 << 14) - 2;

#[cfg(not(loom))]
mod state {
    use crate::sync::AtomicUsize;
    use std::sync::Mutex;

    static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
    static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    pub(super) fn high_water() -> &'static AtomicUsize {
        &HIGH_WATER
    }

    pub(super) fn with_free<R>(f: impl FnOnce(&mut Vec<usize>) -> R) -> R {
        f(&mut FREE.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(loom)]
mod state {
    use crate::sync::AtomicUsize;

    // Only the high-water mark is modelled. loom cannot run model operations in a
    // thread-local destructor, so under loom indices are never given back: every model
    // thread takes a fresh one with a single atomic increment.
    loom::lazy_static! {
        static ref HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
    }

    pub(super) fn high_water() -> &'static AtomicUsize {
        &HIGH_WATER
    }
}

struct ThreadIndex(usize);

impl ThreadIndex {
    #[cfg(loom)]
    fn acquire() -> ThreadIndex {
        ThreadIndex(state::high_water().fetch_add(1, Ordering::AcqRel))
    }

    #[cfg(not(loom))]
    fn acquire() -> ThreadIndex {
        state::with_free(|free| {
            if let Some(pos) = free
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| **v)
                .map(|(i, _)| i)
            {
                return ThreadIndex(free.swap_remove(pos));
            }
            let hw = state::high_water();
            let idx = hw.load(Ordering::Relaxed);
            assert!(
                idx < MAX_THREADS,
                "pvnet-locks: more than {MAX_THREADS} threads use pvnet locks at once"
            );
            // Release: a scanner that sees the new high-water mark also sees the slot tables
            // initialised for this index (they are written before the thread uses any lock).
            hw.store(idx + 1, Ordering::Release);
            ThreadIndex(idx)
        })
    }
}

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        // An index whose per-thread lock state is still in use (a leaked read guard, or one
        // that a later thread-local destructor still holds) is never handed out again.
        // (Under loom nothing is given back: see `state`.)
        #[cfg(not(loom))]
        if crate::rw::percpu::thread_exit(self.0) {
            state::with_free(|free| free.push(self.0));
        }
    }
}

#[cfg(not(loom))]
thread_local! {
    static INDEX: ThreadIndex = ThreadIndex::acquire();
}

#[cfg(loom)]
loom::thread_local! {
    static INDEX: ThreadIndex = ThreadIndex::acquire();
}

/// This thread's index, or `None` while the thread is tearing down its thread-locals
/// (callers must then take a path that needs no per-thread state).
#[inline]
pub fn current() -> Option<usize> {
    INDEX.try_with(|i| i.0).ok()
}

/// Thread indices with per-thread lock state under loom (threads beyond take the paths
/// that need none).
#[cfg(loom)]
pub(crate) const LOOM_THREADS: usize = 4;

/// Under loom: one past the largest index handed out, read with an `AcqRel` RMW so that the
/// caller is ordered before or after every thread's registration (the membarrier model's
/// "every thread of the process").
#[cfg(loom)]
pub(crate) fn model_every_thread() -> usize {
    state::high_water().fetch_add(0, Ordering::AcqRel)
}

/// One past the largest index ever handed out: per-thread tables need scanning only below it.
#[inline]
pub fn high_water() -> usize {
    state::high_water().load(Ordering::Acquire)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn indices_are_unique_and_recycled() {
        let mine = current().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let i = current().unwrap();
                    tx.send(i).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                })
            })
            .collect();
        let mut got: Vec<usize> = (0..8).map(|_| rx.recv().unwrap()).collect();
        for h in hs {
            h.join().unwrap();
        }
        got.push(mine);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 9, "indices must be distinct while threads live");
        // After they exit, a new thread reuses a freed index instead of growing.
        let hw = high_water();
        std::thread::spawn(|| {
            current().unwrap();
        })
        .join()
        .unwrap();
        assert!(high_water() <= hw.max(9) + 1);
    }
}
