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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Most threads that may use pvnet locks at once. Bounded by the qspinlock tail encoding
/// (14 bits of "CPU + 1").
pub const MAX_THREADS: usize = (1 << 14) - 2;

static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

struct ThreadIndex(usize);

impl ThreadIndex {
    fn acquire() -> ThreadIndex {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = free
            .iter()
            .enumerate()
            .min_by_key(|(_, v)| **v)
            .map(|(i, _)| i)
        {
            return ThreadIndex(free.swap_remove(pos));
        }
        let idx = HIGH_WATER.load(Ordering::Relaxed);
        assert!(
            idx < MAX_THREADS,
            "pvnet-locks: more than {MAX_THREADS} threads use pvnet locks at once"
        );
        // Release: a scanner that sees the new high-water mark also sees the slot tables
        // initialised for this index (they are written before the thread uses any lock).
        HIGH_WATER.store(idx + 1, Ordering::Release);
        ThreadIndex(idx)
    }
}

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        FREE.lock().unwrap_or_else(|e| e.into_inner()).push(self.0);
    }
}

thread_local! {
    static INDEX: ThreadIndex = ThreadIndex::acquire();
}

/// This thread's index, or `None` while the thread is tearing down its thread-locals
/// (callers must then take a path that needs no per-thread state).
#[inline]
pub fn current() -> Option<usize> {
    INDEX.try_with(|i| i.0).ok()
}

/// One past the largest index ever handed out: per-thread tables need scanning only below it.
#[inline]
pub fn high_water() -> usize {
    HIGH_WATER.load(Ordering::Acquire)
}

#[cfg(test)]
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
