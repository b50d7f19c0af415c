//! Unit tests of the per-CPU rwlock (stress tests live in `tests/rw_stress.rs`).

use super::*;
use crate::{rw_stats, PerCpuFencedRwLock, PerCpuRwLock};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool as StdBool, Ordering as StdOrd};
use std::sync::Arc;

fn my_block_is_empty() -> bool {
    my_block().map_or(true, Block::is_empty)
}

#[test]
fn read_write_exclusion_same_thread_try() {
    let l = PerCpuFencedRwLock::new(1u32);
    {
        let a = l.read();
        assert!(
            l.try_write().is_none(),
            "writer must see the fast-path reader"
        );
        assert_eq!(*a, 1);
    }
    assert!(my_block_is_empty());
    {
        let mut w = l.write();
        *w = 2;
        assert!(l.try_read().is_none(), "reader must see the writer");
        assert!(
            my_block_is_empty(),
            "a refused reader leaves no slot behind"
        );
    }
    assert_eq!(*l.read(), 2);
    assert!(l.try_write().is_some());
}

#[test]
fn two_locks_nested_use_two_slots() {
    let a = PerCpuRwLock::new(1u32);
    let b = PerCpuRwLock::new(2u32);
    let before = rw_stats(RwLockKind::Percpu).read_slow_paths;
    {
        let ga = a.read();
        let gb = b.read();
        assert_eq!(*ga + *gb, 3);
        let blk = my_block().expect("thread has a block");
        let used = blk.lock.iter().filter(|s| s.load(Relaxed) != 0).count();
        assert_eq!(used, 2);
        assert!(a.try_write().is_none() && b.try_write().is_none());
    }
    assert!(my_block_is_empty());
    // Other tests may add slow paths concurrently, never remove them.
    assert!(rw_stats(RwLockKind::Percpu).read_slow_paths >= before);
    assert!(a.try_write().is_some() && b.try_write().is_some());
}

#[test]
fn more_locks_than_slots_fall_back_and_unlock_correctly() {
    let locks: Vec<_> = (0..SLOTS + 2).map(PerCpuFencedRwLock::new).collect();
    let before = rw_stats(RwLockKind::PercpuFenced).read_slow_paths;
    let guards: Vec<_> = locks.iter().map(|l| l.read()).collect();
    assert!(rw_stats(RwLockKind::PercpuFenced).read_slow_paths >= before + 2);
    for l in &locks {
        assert!(l.try_write().is_none());
    }
    // Drop in an order that mixes slot and fallback holders.
    let mut guards: Vec<_> = guards.into_iter().map(Some).collect();
    for i in (0..guards.len())
        .rev()
        .step_by(2)
        .chain((0..guards.len()).step_by(2))
    {
        guards[i] = None;
    }
    drop(guards);
    assert!(my_block_is_empty());
    for l in &locks {
        assert!(l.try_write().is_some());
    }
}

#[test]
fn recursive_read_with_waiting_writer_does_not_deadlock() {
    for fenced in [true, false] {
        let l: Arc<crate::AnyRwLock<u32>> = Arc::new(crate::AnyRwLock::new(
            if fenced {
                RwLockKind::PercpuFenced
            } else {
                RwLockKind::Percpu
            },
            0,
        ));
        let r1 = l.read();
        let l2 = Arc::clone(&l);
        let started = Arc::new(StdBool::new(false));
        let s2 = Arc::clone(&started);
        let w = std::thread::spawn(move || {
            s2.store(true, StdOrd::SeqCst);
            *l2.write() += 1;
        });
        while !started.load(StdOrd::SeqCst) {
            std::thread::yield_now();
        }
        // Give the writer time to set writer_activating (not required for correctness).
        for _ in 0..100 {
            std::thread::yield_now();
        }
        let r2 = l.read();
        let r3 = l.read();
        assert_eq!(*r1 + *r2 + *r3, 0, "the writer cannot enter while we read");
        drop((r2, r1, r3));
        w.join().unwrap();
        assert_eq!(*l.read(), 1);
        assert!(my_block_is_empty());
    }
}

#[test]
fn exited_thread_leaves_no_slot() {
    let l = Arc::new(PerCpuRwLock::new(0u64));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                let g = l.read();
                let _ = *g;
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert!(l.try_write().is_some(), "no stale slot may name the lock");
}

static TEARDOWN_LOCK: PerCpuFencedRwLock<u32> =
    PerCpuFencedRwLock::const_new(RawPerCpuRwLock::new(), 7);

struct ReadsOnDrop;
impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        // May run before or after the registry index is gone: both must work.
        assert_eq!(*TEARDOWN_LOCK.read(), 7);
    }
}

thread_local! {
    static HELD: RefCell<Option<lock_api::RwLockReadGuard<'static, RawPerCpuRwLock<true>, u32>>> =
        const { RefCell::new(None) };
    static READER: RefCell<Option<ReadsOnDrop>> = const { RefCell::new(None) };
}

#[test]
fn guards_held_or_taken_during_thread_teardown() {
    std::thread::spawn(|| {
        READER.with(|r| *r.borrow_mut() = Some(ReadsOnDrop));
        HELD.with(|h| *h.borrow_mut() = Some(TEARDOWN_LOCK.read()));
    })
    .join()
    .unwrap();
    // The guard was dropped by a thread-local destructor, possibly after the thread's
    // registry index was released: no slot may still name the lock.
    assert!(TEARDOWN_LOCK.try_write().is_some());
}

#[test]
fn leaked_guard_is_a_leaked_lock_and_retires_the_index() {
    let l: &'static PerCpuFencedRwLock<u8> = Box::leak(Box::new(PerCpuFencedRwLock::new(0)));
    let idx = std::thread::spawn(move || {
        std::mem::forget(l.read());
        registry::current().unwrap()
    })
    .join()
    .unwrap();
    assert!(
        l.try_write().is_none(),
        "a forgotten read guard keeps the lock read-locked"
    );
    assert!(
        !table()[idx].is_empty(),
        "the retired block still names the lock"
    );
    // The retired index is never handed to a new thread.
    let hs: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| registry::current().unwrap()))
        .collect();
    for h in hs {
        assert_ne!(h.join().unwrap(), idx);
    }
}

#[test]
fn writer_counters_move() {
    let l = PerCpuRwLock::new(0u8);
    let w0 = rw_stats(RwLockKind::Percpu).write_locks;
    *l.write() += 1;
    assert!(rw_stats(RwLockKind::Percpu).write_locks > w0);
    if asymmetric_fence_available() {
        assert!(rw_stats(RwLockKind::Percpu).membarriers > 0);
    }
}

/// Slot 0 carries the nesting mark while more than one read is held, and is back to the
/// bare fast-path states (0, or one lock's address) once the nesting ends.
#[test]
fn slot0_tag_follows_nesting() {
    let a = PerCpuRwLock::new(1u32);
    let b = PerCpuRwLock::new(2u32);
    let addr = |l: &PerCpuRwLock<u32>| {
        // SAFETY: only the raw lock's address is taken.
        unsafe { l.raw() as *const RawPerCpuRwLock<false> as usize }
    };
    let (aa, ba) = (addr(&a), addr(&b));
    let slot = |i: usize| my_block().expect("block").lock[i].load(Relaxed);
    let ga = a.read();
    assert_eq!(slot(0), aa, "one read: bare address in slot 0");
    let gb = b.read();
    assert_eq!((slot(0), slot(1)), (aa | TAG, ba), "two reads: tagged");
    drop(ga);
    assert_eq!((slot(0), slot(1)), (TAG, ba), "slot 0 free, still nested");
    assert!(a.try_write().is_some() && b.try_write().is_none());
    let ga = a.read();
    assert_eq!(slot(0), aa | TAG);
    let gb2 = b.read();
    assert_eq!(my_block().unwrap().depth[1].load(Relaxed), 1, "recursion");
    drop(ga);
    drop(gb);
    assert_eq!(
        (slot(0), slot(1)),
        (TAG, ba),
        "recursive read of b still held"
    );
    assert!(b.try_write().is_none());
    drop(gb2);
    assert_eq!((slot(0), slot(1)), (0, 0), "flat again: fast path usable");
    assert!(my_block_is_empty());
    // Recursion of the only lock: tagged while nested, bare address after.
    let g1 = a.read();
    let g2 = a.read();
    assert_eq!(slot(0), aa | TAG);
    drop(g2);
    assert_eq!(slot(0), aa);
    drop(g1);
    assert_eq!(slot(0), 0);
    assert!(a.try_write().is_some() && b.try_write().is_some());
}
