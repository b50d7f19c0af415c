//! Stress tests of every spinlock kind with many more threads than cores.
//!
//! Each test protects a plain (non-atomic) counter with the lock and widens the race window
//! by splitting the increment around a randomised delay: any lapse of mutual exclusion loses
//! increments and the exact final count fails. The PV tests also deschedule threads on
//! purpose (sleeps and `sched_yield` inside and before the critical section) and check that
//! the halt / hashed hand-off / kick machinery really ran. Sizes are small so the whole file
//! runs in a few seconds on 2 cores (FIFO spinlocks convoy badly when oversubscribed).
#![cfg(not(loom))]

use pvnet_locks::{spin_stats, AnySpinLock, PvQSpinLock, SpinLockKind};
use rand::{rngs::StdRng as SmallRng, Rng, SeedableRng};
use std::cell::UnsafeCell;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// A counter that is deliberately not atomic: only the lock makes it correct.
struct Racy(UnsafeCell<u64>);
// SAFETY: every access happens while holding the lock under test (that is what is tested).
unsafe impl Sync for Racy {}

impl Racy {
    /// Read, dawdle, write: loses updates unless the caller is exclusive.
    ///
    /// # Safety
    /// The caller holds the lock protecting `self`.
    unsafe fn bump(&self, delay: u32) {
        // SAFETY: exclusive by the caller's contract.
        let v = unsafe { std::ptr::read_volatile(self.0.get()) };
        for _ in 0..delay {
            std::hint::spin_loop();
        }
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(self.0.get(), v + 1) };
    }

    fn get(&self) -> u64 {
        // SAFETY: called after all threads were joined.
        unsafe { *self.0.get() }
    }
}

/// The tests of this file run one at a time: each brings its own oversubscription, and FIFO
/// locks convoy much worse when several such tests compete for the two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `threads` threads each do `iters` lock / bump / unlock rounds on one lock of `kind`.
fn hammer(kind: SpinLockKind, threads: usize, iters: usize, max_cs: u32) {
    let t0 = std::time::Instant::now();
    let lock = Arc::new(AnySpinLock::new(kind, ()));
    let counter = Arc::new(Racy(UnsafeCell::new(0)));
    let start = Arc::new(Barrier::new(threads));
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (lock, counter, start) = (lock.clone(), counter.clone(), start.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t as u64 * 7919 + 1);
                start.wait();
                for _ in 0..iters {
                    let d = rng.gen_range(0..=max_cs);
                    let g = lock.lock();
                    // SAFETY: `g` holds the lock.
                    unsafe { counter.bump(d) };
                    drop(g);
                    for _ in 0..rng.gen_range(0..64) {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(
        counter.get(),
        (threads * iters) as u64,
        "{kind}: lost updates, mutual exclusion broken"
    );
    eprintln!("{kind}: {threads} threads x {iters} in {:?}", t0.elapsed());
}

#[test]
fn pvqspin_32_threads() {
    let _serial = serial();
    hammer(SpinLockKind::Pvqspin, 32, 500, 100);
}

#[test]
fn pvqspin_64_threads() {
    let _serial = serial();
    hammer(SpinLockKind::Pvqspin, 64, 200, 50);
}

/// FIFO kinds (qspin, ticket) hand the lock to the next waiter even when it is descheduled,
/// so on 2 cores every hand-off may wait for a scheduler time slice (tens of milliseconds
/// with 16 spinners): that is the behaviour the PV lock fixes, and why these runs are short.
#[test]
fn qspin_16_threads() {
    let _serial = serial();
    hammer(SpinLockKind::Qspin, 16, 6, 100);
}

#[test]
fn ticket_16_threads() {
    let _serial = serial();
    hammer(SpinLockKind::Ticket, 16, 6, 100);
}

#[test]
fn tas_16_threads() {
    let _serial = serial();
    hammer(SpinLockKind::Tas, 16, 300, 100);
}

#[test]
fn std_and_parking_lot_32_threads() {
    let _serial = serial();
    hammer(SpinLockKind::Std, 32, 300, 100);
    hammer(SpinLockKind::ParkingLot, 32, 300, 100);
}

/// Threads are descheduled while holding the PV lock and while waiting for it; the exact
/// count must survive, and the PV machinery (halts, hashed hand-offs, kicks) must have run.
#[test]
fn pvqspin_descheduled_holders_and_waiters() {
    let _serial = serial();
    const THREADS: usize = 24;
    const ITERS: usize = 250;
    let before = spin_stats(SpinLockKind::Pvqspin);
    let lock = Arc::new(PvQSpinLock::new(()));
    let counter = Arc::new(Racy(UnsafeCell::new(0)));
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let (lock, counter) = (lock.clone(), counter.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t as u64 + 100);
                for _ in 0..ITERS {
                    // Descheduled before queueing (the waiter side).
                    match rng.gen_range(0..16) {
                        0 => std::thread::yield_now(),
                        1 => std::thread::sleep(Duration::from_micros(20)),
                        _ => {}
                    }
                    let g = lock.lock();
                    // Descheduled while holding: everybody queued behind must halt.
                    match rng.gen_range(0..32) {
                        0 => std::thread::sleep(Duration::from_micros(50)),
                        1 | 2 => std::thread::yield_now(),
                        _ => {}
                    }
                    // SAFETY: `g` holds the lock.
                    unsafe { counter.bump(rng.gen_range(0..50)) };
                    drop(g);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(counter.get(), (THREADS * ITERS) as u64);
    let d = spin_stats(SpinLockKind::Pvqspin).since(&before);
    eprintln!("pvqspin descheduled run: {d:?}");
    assert!(d.slow_paths > 0, "{d:?}");
    assert!(d.halts > 0, "waiters never slept: {d:?}");
    assert!(d.kicks > 0, "no unlock-time kick: {d:?}");
    assert!(d.hashed_handoffs > 0, "no hashed hand-off: {d:?}");
    assert!(d.spins > 0, "{d:?}");
}

/// Each thread holds four PV locks and then waits for a fifth, contended one.
#[test]
fn pvqspin_nested_five_locks() {
    let _serial = serial();
    const THREADS: usize = 8;
    let locks: Arc<Vec<PvQSpinLock<u64>>> = Arc::new((0..5).map(|_| PvQSpinLock::new(0)).collect());
    let start = Arc::new(Barrier::new(THREADS));
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let (locks, start) = (locks.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..200 {
                    let mut gs: Vec<_> = locks.iter().map(|l| l.lock()).collect();
                    for g in gs.iter_mut() {
                        **g += 1;
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for l in locks.iter() {
        assert_eq!(*l.lock(), (THREADS * 200) as u64);
    }
}
