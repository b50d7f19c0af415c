//! Loom models of the queued spinlocks: mutual exclusion (qspin pending and queue paths,
//! pvqspin queue head and non-head waiters) and no lost wake-up in the PV halt / hash / kick
//! protocol (a waiter that is never woken leaves every thread blocked, which loom reports as
//! a deadlock). Under `--cfg loom` the PV spin threshold is 2, so every wait halts quickly and
//! the futex is a loom model (see `spin/futex.rs`) whose waits may also return spuriously.
//! After every execution the models check the seed's "kick only at unlock time": every
//! futex wake ("kick") was issued by an unlock, and there are no more kicks than halts that
//! waiters announced (the pre-patch protocol kicked a halted waiter twice, once when it
//! became queue head and once at unlock).
//!
//! Run (release, bounded preemptions; about 4 s on 2 cores once built):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p pvnet-locks --release --test loom_spin
//! ```
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use pvnet_locks::spin::futex::model::stats as kick_stats;
use pvnet_locks::spin::{RawPvQSpinLock, RawQSpinLock};
use pvnet_locks::{spin_stats, SpinLockKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Spurious futex returns seen over all executions of this test binary.
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// End of an execution: the kick accounting of the futex model.
fn check_kicks() {
    let k = kick_stats();
    assert_eq!(k.kicks_outside_unlock, 0, "a kick outside unlock: {k:?}");
    assert!(k.kicks <= k.halts, "more kicks than announced halts: {k:?}");
    SPURIOUS.fetch_add(k.spurious, Relaxed);
}

trait Raw: Send + Sync + 'static {
    fn create() -> Self;
    fn acquire(&self);
    /// # Safety
    /// Held by the caller.
    unsafe fn release(&self);
}

impl Raw for RawQSpinLock {
    fn create() -> Self {
        RawQSpinLock::new()
    }
    fn acquire(&self) {
        self.lock()
    }
    unsafe fn release(&self) {
        // SAFETY: forwarded.
        unsafe { self.unlock() }
    }
}

impl Raw for RawPvQSpinLock {
    fn create() -> Self {
        RawPvQSpinLock::new()
    }
    fn acquire(&self) {
        self.lock()
    }
    unsafe fn release(&self) {
        // SAFETY: forwarded.
        unsafe { self.unlock() }
    }
}

struct Shared<L> {
    lock: L,
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is only accessed under `lock` (loom's UnsafeCell checks exactly that).
unsafe impl<L: Raw> Sync for Shared<L> {}

fn critical<L: Raw>(s: &Shared<L>) {
    s.lock.acquire();
    // loom flags any access that is not ordered after the previous holder's.
    s.data.with_mut(|p| {
        // SAFETY: exclusive while the lock is held (what the model checks).
        unsafe { *p += 1 }
    });
    // SAFETY: acquired above.
    unsafe { s.lock.release() };
}

/// `threads` model threads (the main one included) each take the lock `rounds` times.
fn run<L: Raw>(threads: usize, rounds: usize) {
    run_bounded::<L>(threads, rounds, None)
}

/// As [`run`], with an explicit preemption bound overriding `LOOM_MAX_PREEMPTIONS`.
fn run_bounded<L: Raw>(threads: usize, rounds: usize, preemptions: Option<usize>) {
    let execs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let e2 = execs.clone();
    let mut b = loom::model::Builder::new();
    // Pure spin loops (qspin) yield under loom but still branch a lot.
    b.max_branches = b.max_branches.max(100_000);
    if preemptions.is_some() {
        b.preemption_bound = preemptions;
    }
    b.check(move || {
        e2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = Arc::new(Shared {
            lock: L::create(),
            data: UnsafeCell::new(0),
        });
        let hs: Vec<_> = (1..threads)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || {
                    for _ in 0..rounds {
                        critical(&s);
                    }
                })
            })
            .collect();
        for _ in 0..rounds {
            critical(&s);
        }
        for h in hs {
            h.join().unwrap();
        }
        let total = s.data.with(|p| {
            // SAFETY: all other threads were joined.
            unsafe { *p }
        });
        assert_eq!(total as usize, threads * rounds);
        check_kicks();
    });
    eprintln!(
        "{} threads x {rounds}: {} executions",
        threads,
        execs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two lockers: the second one takes the pending path.
#[test]
fn qspin_pending_path() {
    run::<RawQSpinLock>(2, 1);
    assert!(spin_stats(SpinLockKind::Qspin).pending > 0);
}

/// Three lockers, two rounds for the main one: the third locker queues as MCS head behind
/// the pending one, and the returning main thread queues behind it (MCS hand-off to
/// `next`).
#[test]
fn qspin_queue_path() {
    // Unbounded spin-waits make this model large: one preemption covers the queue path.
    run_mixed::<RawQSpinLock>(Some(1));
    assert!(spin_stats(SpinLockKind::Qspin).slow_paths > 0);
}

/// Two lockers: the waiter is queue head, spins, hashes itself, sets _Q_SLOW_VAL and
/// sleeps; the unlocker must unhash it and wake it exactly when needed.
#[test]
fn pvqspin_head_halt_and_kick() {
    let spurious_before = SPURIOUS.load(Relaxed);
    run::<RawPvQSpinLock>(2, 1);
    let s = spin_stats(SpinLockKind::Pvqspin);
    assert!(s.halts > 0 && s.kicks > 0, "{s:?}");
    assert!(
        SPURIOUS.load(Relaxed) > spurious_before,
        "the futex model never returned spuriously"
    );
}

/// Three lockers: a non-head waiter halts in wait_node; the new owner hashes it on its
/// behalf (halted -> hashed, _Q_SLOW_VAL) and it is woken once, at unlock time.
#[test]
fn pvqspin_hashed_handoff() {
    run::<RawPvQSpinLock>(3, 1);
    let s = spin_stats(SpinLockKind::Pvqspin);
    assert!(s.hashed_handoffs > 0, "{s:?}");
}

/// Two lockers, two rounds each: nodes and hash entries are reused, and a late wake-up of
/// a node that already moved on must be harmless.
#[test]
fn pvqspin_reuse_two_rounds() {
    run::<RawPvQSpinLock>(2, 2);
}

/// Three lockers, two rounds for one of them (main): a released thread re-queues behind
/// halted and hashed waiters.
#[test]
fn pvqspin_three_threads_requeue() {
    run_mixed::<RawPvQSpinLock>(None);
}

fn run_mixed<L: Raw>(preemptions: Option<usize>) {
    let mut b = loom::model::Builder::new();
    b.max_branches = b.max_branches.max(100_000);
    if preemptions.is_some() {
        b.preemption_bound = preemptions;
    }
    b.check(|| {
        let s = Arc::new(Shared {
            lock: L::create(),
            data: UnsafeCell::new(0),
        });
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || critical(&s))
            })
            .collect();
        critical(&s);
        critical(&s);
        for h in hs {
            h.join().unwrap();
        }
        let total = s.data.with(|p| {
            // SAFETY: all other threads were joined.
            unsafe { *p }
        });
        assert_eq!(total, 4);
        check_kicks();
    });
}
