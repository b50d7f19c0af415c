//! Starvation bound of the PV queued spinlock's queue head.
//!
//! A "stealer" holds the lock for long stretches (longer than the queue head spins before
//! it sleeps) and locks it again right after every unlock, so it can take the lock ahead of
//! the woken queue head every time if nothing stops it. A "victim" waiting for the lock
//! must get it after a bounded number of the stealer's acquisitions: the queue head keeps
//! `pending` set across its sleep once a wake-up found the lock stolen, so the next unlock
//! leaves the lock to it.
#![cfg(not(loom))]

use pvnet_locks::{spin_stats, PvQSpinLock, SpinLockKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Stealer acquisitions a waiting thread may see before it gets the lock: the one holding
/// it when the victim queues, the thieves of one wake-up (the ones that run before the
/// woken head does: one, unless the head waits for a CPU), one more hold, and slack for a
/// woken head that waits ~20 ms for a CPU on a busy machine (every `HOLD` it waits lets a
/// thief in; that part is scheduling, not the lock).
const BOUND: u64 = 12;

/// How long the stealer holds the lock each time: far beyond the queue head's spin
/// (`SPIN_THRESHOLD` spin-loop hints, tens of microseconds).
const HOLD: Duration = Duration::from_millis(2);

/// Pins the calling thread to `cpu` (best effort).
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data (zeroed = empty set); CPU_SET writes inside it and
    // sched_setaffinity only reads the set of the given size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn busy(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// `stealers` threads relock at once after each long hold; `victims` threads each take the
/// lock `episodes` times. Returns the largest number of stealer acquisitions any victim saw
/// while it waited.
fn worst_wait(stealers: usize, victims: usize, episodes: usize) -> u64 {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let lock = Arc::new(PvQSpinLock::new(0u64));
    let acquisitions = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(8);
    let hs: Vec<_> = (0..stealers)
        .map(|s| {
            let (lock, acquisitions, done) = (lock.clone(), acquisitions.clone(), done.clone());
            thread::spawn(move || {
                if cpus >= 2 {
                    // Stealers on CPU 0, victims on the others: a woken victim never
                    // preempts a stealer between its unlock and its next lock.
                    pin(0);
                }
                let _ = s;
                while !done.load(Relaxed) && Instant::now() < deadline {
                    let mut g = lock.lock();
                    *g += 1;
                    acquisitions.fetch_add(1, SeqCst);
                    busy(HOLD);
                    drop(g);
                }
            })
        })
        .collect();
    // Let the stealers get going.
    while acquisitions.load(SeqCst) < 3 {
        thread::yield_now();
    }
    let vs: Vec<_> = (0..victims)
        .map(|v| {
            let (lock, acquisitions) = (lock.clone(), acquisitions.clone());
            thread::spawn(move || {
                if cpus >= 2 {
                    pin(1 + v % (cpus - 1));
                }
                let mut worst = 0;
                for _ in 0..episodes {
                    let before = acquisitions.load(SeqCst);
                    let mut g = lock.lock();
                    let seen = acquisitions.load(SeqCst) - before;
                    *g += 1;
                    drop(g);
                    worst = worst.max(seen);
                    thread::sleep(Duration::from_millis(1));
                }
                worst
            })
        })
        .collect();
    let worst = vs.into_iter().map(|h| h.join().unwrap()).max().unwrap_or(0);
    done.store(true, Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    worst
}

/// One stealer, one victim: the queue head is the victim every time.
#[test]
fn woken_queue_head_is_not_starved() {
    let before = spin_stats(SpinLockKind::Pvqspin);
    let worst = worst_wait(1, 1, 20);
    let d = spin_stats(SpinLockKind::Pvqspin).since(&before);
    eprintln!("worst wait: {worst} stealer acquisitions; {d:?}");
    assert!(d.halts > 0 && d.kicks > 0, "the victim never slept: {d:?}");
    assert!(
        worst <= BOUND,
        "a waiter saw {worst} acquisitions by a thread that kept stealing (bound {BOUND})"
    );
}

/// Several stealers and several victims: victims queue behind each other (each waits for
/// the victims ahead of it plus a bounded number of steals per queue head).
#[test]
fn queue_behind_stealers_is_bounded() {
    let (stealers, victims) = (2, 3);
    let worst = worst_wait(stealers, victims, 10);
    // Every victim ahead in the queue and the victim itself may each be passed by a bounded
    // number of stealer acquisitions while it is the head.
    let bound = BOUND * victims as u64;
    eprintln!("worst wait: {worst} stealer acquisitions (bound {bound})");
    assert!(
        worst <= bound,
        "a waiter saw {worst} stealer acquisitions (bound {bound})"
    );
}
