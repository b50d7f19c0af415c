//! Bounded `loom` models of the reader-writer locks.
//!
//! Run (a few seconds once built):
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p pvnet-locks --release --test loom_rw
//! ```
//! The preemption bound defaults to 2 for the two-thread models (`LOOM_MAX_PREEMPTIONS`
//! overrides it). The three-thread model always runs at bound 1: at bound 2 it exceeds
//! loom's branch limit after some 40 minutes on 2 cores.
//!
//! The models drive the raw locks directly (under loom they have no `lock_api` wrapper) and
//! protect a `loom::cell::UnsafeCell`: loom reports any read that is not ordered with a write
//! by happens-before, so "writers exclude readers" is checked on every explored interleaving,
//! together with deadlocks (a writer waiting for a slot that is never cleared, a recursive
//! read waiting for a writer that waits for it).
//!
//! What is modelled: the per-thread slot table, the thread registry's index assignment and
//! high-water mark, `writer_activating`, and the underlying fair lock — under loom the plain
//! single-word rwlock stands in for parking_lot's, which loom cannot see. Not modelled:
//! index *reuse* and the retire-on-exit check, which run in thread-local destructors where
//! loom cannot execute model operations (the unit and stress tests cover them).
//!
//! The asymmetric (`percpu`) flavour: loom cannot run a barrier *inside* another thread, so
//! `rw/membarrier.rs` models the pair by its guarantee. The reader's compiler fence is an
//! RMW of the reader's own barrier cell, which orders nothing by itself; the writer's
//! membarrier is an RMW of every registered thread's cell (and of the registry's high-water
//! mark, for threads not yet registered), so each reader is ordered entirely before or
//! entirely after the writer's barrier at one of its light barriers. The fenced flavour uses
//! real `fence(SeqCst)` on both sides. `percpu_weakened_writer_barrier_is_caught` checks
//! that these models can fail: with the writer's barrier replaced by a local `fence(SeqCst)`
//! (the store-buffering bug of a one-sided fence), loom must report the reader and the
//! writer overlapping.

#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use pvnet_locks::rw::{RawPerCpuRwLock, RawPlainRwLock};

/// The three operations a model needs, for both lock families.
trait Raw: Send + Sync + 'static {
    fn make() -> Self;
    fn read(&self);
    /// # Safety
    /// The calling thread holds a read lock.
    unsafe fn read_unlock(&self);
    fn write(&self);
    /// # Safety
    /// The calling thread holds the write lock.
    unsafe fn write_unlock(&self);
    fn try_write(&self) -> bool;
}

impl<const F: bool> Raw for RawPerCpuRwLock<F> {
    fn make() -> Self {
        Self::new()
    }
    fn read(&self) {
        self.lock_shared()
    }
    unsafe fn read_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.unlock_shared() }
    }
    fn write(&self) {
        self.lock_exclusive()
    }
    unsafe fn write_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.unlock_exclusive() }
    }
    fn try_write(&self) -> bool {
        self.try_lock_exclusive()
    }
}

impl Raw for RawPlainRwLock {
    fn make() -> Self {
        Self::new()
    }
    fn read(&self) {
        self.lock_shared()
    }
    unsafe fn read_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.unlock_shared() }
    }
    fn write(&self) {
        self.lock_exclusive()
    }
    unsafe fn write_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.unlock_exclusive() }
    }
    fn try_write(&self) -> bool {
        self.try_lock_exclusive()
    }
}

struct Guarded<R> {
    lock: R,
    data: UnsafeCell<u32>,
}

impl<R: Raw> Guarded<R> {
    fn new() -> Arc<Self> {
        Arc::new(Guarded {
            lock: R::make(),
            data: UnsafeCell::new(0),
        })
    }

    fn read(&self) -> u32 {
        self.lock.read();
        // SAFETY: under the read lock (loom checks it against every write).
        let v = self.data.with(|p| unsafe { *p });
        // SAFETY: taken above.
        unsafe { self.lock.read_unlock() };
        v
    }

    fn write_incr(&self) {
        self.lock.write();
        // SAFETY: under the write lock (loom checks it against every other access).
        self.data.with_mut(|p| unsafe { *p += 1 });
        // SAFETY: taken above.
        unsafe { self.lock.write_unlock() };
    }
}

/// Two-thread models: preemption bound 2 unless `LOOM_MAX_PREEMPTIONS` says otherwise.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    run(b, f)
}

/// A model run at exactly `bound` preemptions, whatever `LOOM_MAX_PREEMPTIONS` says.
fn model_fixed_bound(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    run(b, f)
}

fn run(mut b: loom::model::Builder, f: impl Fn() + Sync + Send + 'static) {
    b.max_branches = 100_000;
    let execs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let e2 = execs.clone();
    b.check(move || {
        e2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "{}: {} executions",
        std::thread::current().name().unwrap_or("model"),
        execs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// One reader thread and one writer thread: the reader sees the value before or after the
/// write, never concurrently with it.
fn writer_excludes_reader<R: Raw>() {
    model(|| {
        let g = Guarded::<R>::new();
        let g2 = Arc::clone(&g);
        let r = thread::spawn(move || g2.read());
        g.write_incr();
        let seen = r.join().unwrap();
        assert!(seen <= 1);
        assert_eq!(g.read(), 1);
    });
}

#[test]
fn percpu_fenced_writer_excludes_reader() {
    writer_excludes_reader::<RawPerCpuRwLock<true>>();
}

#[test]
fn percpu_asymmetric_writer_excludes_reader() {
    writer_excludes_reader::<RawPerCpuRwLock<false>>();
}

#[test]
fn plain_writer_excludes_reader() {
    writer_excludes_reader::<RawPlainRwLock>();
}

/// Two writers on the plain lock (writer-writer exclusion, the WAITING bit).
#[test]
fn plain_two_writers() {
    model(|| {
        let g = Guarded::<RawPlainRwLock>::new();
        let a = Arc::clone(&g);
        let w = thread::spawn(move || a.write_incr());
        g.write_incr();
        w.join().unwrap();
        assert_eq!(g.read(), 2);
    });
}

/// A thread that read the lock and finished leaves no slot naming it, and a thread started
/// afterwards (which reuses the released index) still excludes the writer.
#[test]
fn percpu_no_stale_slot_after_thread_exit() {
    model(|| {
        let g = Guarded::<RawPerCpuRwLock<true>>::new();
        let g1 = Arc::clone(&g);
        thread::spawn(move || g1.read()).join().unwrap();
        assert!(g.lock.try_write(), "a finished reader left its slot behind");
        // SAFETY: taken just above.
        unsafe { g.lock.write_unlock() };
        let g2 = Arc::clone(&g);
        let r = thread::spawn(move || g2.read());
        g.write_incr();
        assert!(r.join().unwrap() <= 1);
    });
}

/// A reader holding two locks of the class at once (two slots) against a writer of the
/// inner one.
#[test]
fn percpu_nested_two_lock_read() {
    model(|| {
        let a = Guarded::<RawPerCpuRwLock<true>>::new();
        let b = Guarded::<RawPerCpuRwLock<true>>::new();
        let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
        let r = thread::spawn(move || {
            a2.lock.read();
            let v = b2.read();
            // SAFETY: `a` is still read-locked here.
            let w = a2.data.with(|p| unsafe { *p });
            // SAFETY: taken above.
            unsafe { a2.lock.read_unlock() };
            (v, w)
        });
        b.write_incr();
        let (v, w) = r.join().unwrap();
        assert!(v <= 1 && w == 0);
        assert_eq!(b.read(), 1);
    });
}

/// A recursive read while a writer may be waiting for this very thread: no deadlock, and the
/// inner read is still excluded from the write.
#[test]
fn percpu_recursive_read_against_writer() {
    model(|| {
        let g = Guarded::<RawPerCpuRwLock<false>>::new();
        let g2 = Arc::clone(&g);
        let r = thread::spawn(move || {
            g2.lock.read();
            let v = g2.read();
            // SAFETY: the outer read lock is still held.
            unsafe { g2.lock.read_unlock() };
            v
        });
        g.write_incr();
        assert!(r.join().unwrap() <= 1);
    });
}

/// Two reader threads and a writer (asymmetric flavour): readers share, the writer excludes
/// both, and readers that find the writer active queue on the underlying lock. Three
/// threads with spin-waits explode at bound 2 (past loom's branch limit), so this one
/// always runs at bound 1.
#[test]
fn percpu_two_readers_one_writer() {
    model_fixed_bound(1, || {
        let g = Guarded::<RawPerCpuRwLock<false>>::new();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let g = Arc::clone(&g);
                thread::spawn(move || g.read())
            })
            .collect();
        g.write_incr();
        for r in readers {
            assert!(r.join().unwrap() <= 1);
        }
    });
}

/// The negative model: a writer whose barrier is only a local `fence(SeqCst)` while readers
/// keep their (compiler-only) light barrier is a real bug (store buffering lets the reader
/// miss the flag and the writer miss the slot). The model must catch it as a reader and a
/// writer touching the data concurrently.
#[test]
fn percpu_weakened_writer_barrier_is_caught() {
    struct Weak(RawPerCpuRwLock<false>);
    impl Raw for Weak {
        fn make() -> Self {
            Weak(RawPerCpuRwLock::with_weakened_writer_barrier())
        }
        fn read(&self) {
            self.0.read()
        }
        unsafe fn read_unlock(&self) {
            // SAFETY: forwarded.
            unsafe { self.0.read_unlock() }
        }
        fn write(&self) {
            self.0.write()
        }
        unsafe fn write_unlock(&self) {
            // SAFETY: forwarded.
            unsafe { self.0.write_unlock() }
        }
        fn try_write(&self) -> bool {
            self.0.try_write()
        }
    }
    let caught = std::panic::catch_unwind(writer_excludes_reader::<Weak>)
        .expect_err("a writer with only a local fence must be caught by the model");
    let msg = caught
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| caught.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("Causality violation"),
        "caught, but not as an overlap of reader and writer: {msg}"
    );
}

/// A reader whose slots are all taken reads through the fallback (the underlying lock,
/// non-recursively) while a writer writes: still excluded, and no deadlock.
#[test]
fn percpu_fallback_read_against_writer() {
    model(|| {
        let g = Guarded::<RawPerCpuRwLock<false>>::new();
        let g2 = Arc::clone(&g);
        let r = thread::spawn(move || {
            let others: Vec<RawPerCpuRwLock<false>> = (0..pvnet_locks::rw::SLOTS)
                .map(|_| RawPerCpuRwLock::new())
                .collect();
            for l in &others {
                l.lock_shared();
            }
            let v = g2.read();
            for l in &others {
                // SAFETY: read-locked above.
                unsafe { l.unlock_shared() };
            }
            v
        });
        g.write_incr();
        assert!(r.join().unwrap() <= 1);
        assert_eq!(g.read(), 1);
    });
}
