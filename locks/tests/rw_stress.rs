//! Stress tests of every reader-writer lock kind, with many more threads than cores.
//!
//! Each lock protects two plain (non-atomic) counters that a writer increments one after the
//! other, with a randomised pause in between: a reader that ever sees them differ has
//! overlapped a writer. Readers read one lock, or two nested (always in the same order —
//! with writers waiting, opposite orders deadlock any writer-preferring rwlock), and, for the
//! kinds that support it, the same lock recursively while writers wait. Reader threads come
//! in short-lived waves, so thread indices are released and reused while the locks are busy.
//! Every loop is bounded by a deadline, so the whole file takes a few seconds.

use pvnet_locks::{rw_stats, AnyRwLock, PlainRwLock, RwLockKind};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Pair {
    a: u64,
    b: u64,
}

/// Small deterministic PRNG (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A randomised critical-section length: mostly short spins, sometimes a yield.
fn pause(rng: &mut Rng) {
    match rng.below(16) {
        0 => thread::yield_now(),
        _ => {
            for _ in 0..rng.below(200) {
                std::hint::spin_loop();
            }
        }
    }
}

fn check(p: &Pair, what: &str) {
    // Volatile reads: the compiler must really load both counters inside the section.
    // SAFETY: both references are valid for reads for the guard's lifetime.
    let (a, b) = unsafe { (std::ptr::read_volatile(&p.a), std::ptr::read_volatile(&p.b)) };
    assert_eq!(a, b, "{what}: a reader overlapped a writer");
}

fn recursion_ok(kind: RwLockKind) -> bool {
    // std and parking_lot readers queue behind waiting writers (documented), the plain lock
    // offers recursion only through `read_recursive` (tested below).
    matches!(kind, RwLockKind::Percpu | RwLockKind::PercpuFenced)
}

struct Shared {
    locks: [AnyRwLock<Pair>; 2],
    writes: [AtomicU64; 2],
    stop: AtomicBool,
}

fn reader(sh: &Shared, kind: RwLockKind, seed: u64, until: Instant) -> u64 {
    let mut rng = Rng::new(seed);
    let mut ops = 0u64;
    let iters = 200 + rng.below(800);
    for _ in 0..iters {
        if Instant::now() >= until || sh.stop.load(Relaxed) {
            break;
        }
        match rng.below(4) {
            0 | 1 => {
                let g = sh.locks[rng.below(2) as usize].read();
                check(&g, "single");
                pause(&mut rng);
                check(&g, "single, after pause");
            }
            2 => {
                let g0 = sh.locks[0].read();
                check(&g0, "outer");
                pause(&mut rng);
                let g1 = sh.locks[1].read();
                check(&g1, "inner");
                pause(&mut rng);
                check(&g0, "outer, while nested");
                drop(g0);
                check(&g1, "inner, outer released");
            }
            _ if recursion_ok(kind) => {
                let i = rng.below(2) as usize;
                let g = sh.locks[i].read();
                pause(&mut rng);
                // A writer may be waiting for this very thread now.
                let again = sh.locks[i].read();
                check(&again, "recursive");
                drop(g);
                check(&again, "recursive, outer released");
            }
            _ => {
                let g = sh.locks[1].read();
                check(&g, "single");
            }
        }
        ops += 1;
    }
    ops
}

fn writer(sh: &Shared, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed);
    while Instant::now() < until {
        let i = rng.below(2) as usize;
        {
            let mut g = sh.locks[i].write();
            check(&g, "writer entry");
            g.a += 1;
            black_box(&mut *g);
            pause(&mut rng);
            g.b += 1;
        }
        sh.writes[i].fetch_add(1, Relaxed);
        if rng.below(4) == 0 {
            thread::sleep(Duration::from_micros(rng.below(200)));
        } else {
            pause(&mut rng);
        }
    }
}

fn stress(kind: RwLockKind) {
    const WAVES: u64 = 4;
    const READERS_PER_WAVE: u64 = 24;
    const WRITERS: u64 = 4;
    let wave_len = Duration::from_millis(250);
    let sh = Arc::new(Shared {
        locks: [
            AnyRwLock::new(kind, Pair::default()),
            AnyRwLock::new(kind, Pair::default()),
        ],
        writes: [AtomicU64::new(0), AtomicU64::new(0)],
        stop: AtomicBool::new(false),
    });
    assert_eq!(sh.locks[0].kind(), pvnet_locks::family::resolve_rw(kind));
    let end = Instant::now() + wave_len * WAVES as u32;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let sh = Arc::clone(&sh);
            thread::spawn(move || writer(&sh, 1000 + w, end))
        })
        .collect();
    let mut reads = 0;
    for wave in 0..WAVES {
        let until = Instant::now() + wave_len;
        let start = Arc::new(Barrier::new(READERS_PER_WAVE as usize));
        let readers: Vec<_> = (0..READERS_PER_WAVE)
            .map(|r| {
                let sh = Arc::clone(&sh);
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    reader(&sh, kind, wave * 100 + r, until)
                })
            })
            .collect();
        for r in readers {
            reads += r.join().expect("reader panicked");
        }
    }
    sh.stop.store(true, Relaxed);
    for w in writers {
        w.join().expect("writer panicked");
    }
    assert!(reads > 0);
    for i in 0..2 {
        let g = sh.locks[i].read();
        check(&g, "final");
        assert_eq!(
            g.a,
            sh.writes[i].load(Relaxed),
            "{kind}: lost or torn write"
        );
    }
    if matches!(
        kind,
        RwLockKind::Percpu | RwLockKind::PercpuFenced | RwLockKind::Rwlock
    ) {
        let total = sh.writes[0].load(Relaxed) + sh.writes[1].load(Relaxed);
        assert!(rw_stats(kind).write_locks >= total, "{kind}: write counter");
    }
    // No exited thread may have left a reader slot behind.
    let sh = Arc::try_unwrap(sh).ok().expect("all threads joined");
    for l in &sh.locks {
        let mut g = l.write();
        g.a += 1;
        g.b += 1;
    }
}

#[test]
fn stress_percpu() {
    stress(RwLockKind::Percpu);
}

#[test]
fn stress_percpu_fenced() {
    stress(RwLockKind::PercpuFenced);
}

#[test]
fn stress_plain_rwlock() {
    stress(RwLockKind::Rwlock);
}

#[test]
fn stress_std() {
    stress(RwLockKind::Std);
}

#[test]
fn stress_parking_lot() {
    stress(RwLockKind::ParkingLot);
}

/// The plain lock's recursive read never waits for a waiting writer.
#[test]
fn plain_recursive_reads_with_waiting_writers() {
    let l = Arc::new(PlainRwLock::new(Pair::default()));
    let end = Instant::now() + Duration::from_millis(300);
    let hs: Vec<_> = (0..16u64)
        .map(|t| {
            let l = Arc::clone(&l);
            thread::spawn(move || {
                let mut rng = Rng::new(t);
                while Instant::now() < end {
                    if t % 4 == 0 {
                        let mut g = l.write();
                        g.a += 1;
                        black_box(&mut *g);
                        pause(&mut rng);
                        g.b += 1;
                    } else {
                        let g = l.read();
                        pause(&mut rng);
                        let again = l.read_recursive();
                        check(&again, "plain recursive");
                        drop(g);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    check(&l.read(), "plain final");
}
