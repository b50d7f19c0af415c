//! The measuring loops of `pvnet-bench lockbench`, generic over the lock: each lock kind is a
//! [`RwFamily`] / [`SpinFamily`] type, so the loop is compiled (monomorphised) for it and the
//! per-operation cost is the algorithm's own, as on pvnet's data path (no run-time
//! dispatch per operation).

use crossbeam_utils::sync::ShardedLock;
use crossbeam_utils::CachePadded;
use pvnet_locks::family::{MutexApi, RwFamily, RwLockApi, SpinFamily};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Operations between two looks at the stop flag (keeps the harness out of the figures).
const BATCH: u64 = 32;

/// What one measurement does inside the lock.
#[derive(Clone, Copy, Debug)]
pub struct Work {
    /// Busy-loop iterations.
    pub cs_iters: u64,
    /// Bytes copied: rw mode, from the protected buffer into a per-thread buffer (the
    /// stores of a grant copy under the read lock); spin mode, from a per-thread buffer
    /// into the protected buffer.
    pub cs_bytes: usize,
    /// spin mode: holders sometimes yield or sleep inside the critical section.
    pub preempt: bool,
}

/// Busy loop of `iters` iterations that the compiler cannot remove or fold.
#[inline(always)]
pub fn busy(iters: u64) {
    for i in 0..iters {
        black_box(i);
    }
}

/// What a lock protects.
pub struct Payload {
    value: u64,
    bytes: Box<[u8]>,
}

impl Payload {
    fn new(bytes: usize) -> Payload {
        Payload {
            value: 0,
            bytes: vec![0x5a; bytes].into_boxed_slice(),
        }
    }
}

/// Copies `src` into `dst` (same length) so that the compiler keeps every store.
#[inline(always)]
fn copy(dst: &mut [u8], src: &[u8]) {
    if !dst.is_empty() {
        dst.copy_from_slice(src);
        black_box(dst.as_mut_ptr());
    }
}

/// The rw benchmark's view of a lock. `read_op` is inlined into the measuring loop for every
/// lock alike, so the figures hold no call overhead of the harness.
pub trait RwTarget: Sync {
    /// A lock of this kind protecting a payload of `bytes` bytes.
    fn build(bytes: usize) -> Self;
    /// Read-lock, copy the payload into `dst`, spin, read the value, unlock.
    fn read_op(&self, cs_iters: u64, dst: &mut [u8]) -> u64;
    /// Write-lock, increment, unlock.
    fn write_op(&self);
}

/// A pvnet rwlock of family `F`.
pub struct Family<F: RwFamily>(F::Lock<Payload>);

impl<F: RwFamily> RwTarget for Family<F> {
    fn build(bytes: usize) -> Self {
        Family(F::Lock::new(Payload::new(bytes)))
    }
    #[inline(always)]
    fn read_op(&self, cs_iters: u64, dst: &mut [u8]) -> u64 {
        let g = self.0.read();
        copy(dst, &g.bytes);
        busy(cs_iters);
        g.value
    }
    fn write_op(&self) {
        self.0.write().value += 1;
    }
}

impl RwTarget for ShardedLock<Payload> {
    fn build(bytes: usize) -> Self {
        ShardedLock::new(Payload::new(bytes))
    }
    #[inline(always)]
    fn read_op(&self, cs_iters: u64, dst: &mut [u8]) -> u64 {
        let g = self.read().unwrap_or_else(|e| e.into_inner());
        copy(dst, &g.bytes);
        busy(cs_iters);
        g.value
    }
    fn write_op(&self) {
        self.write().unwrap_or_else(|e| e.into_inner()).value += 1;
    }
}

/// No lock at all: a relaxed load (and the same copy), the ceiling.
pub struct Unsync {
    value: AtomicU64,
    bytes: Box<[u8]>,
}

impl RwTarget for Unsync {
    fn build(bytes: usize) -> Self {
        Unsync {
            value: AtomicU64::new(0),
            bytes: vec![0x5a; bytes].into_boxed_slice(),
        }
    }
    #[inline(always)]
    fn read_op(&self, cs_iters: u64, dst: &mut [u8]) -> u64 {
        copy(dst, &self.bytes);
        let v = self.value.load(Ordering::Relaxed);
        busy(cs_iters);
        v
    }
    fn write_op(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }
}

/// The spin benchmark's view of a lock: lock, +1 on a plain counter, copy, spin, unlock.
pub trait SpinTarget: Sync {
    fn build(bytes: usize) -> Self;
    fn op(&self, work: &Work, src: &[u8], rng: &mut Rng);
    /// The protected counter (after the workers are done).
    fn count(&self) -> u64;
}

/// A pvnet mutual-exclusion lock of family `F`.
pub struct SpinFam<F: SpinFamily>(F::Lock<Payload>);

impl<F: SpinFamily> SpinTarget for SpinFam<F> {
    fn build(bytes: usize) -> Self {
        SpinFam(F::Lock::new(Payload::new(bytes)))
    }
    #[inline(always)]
    fn op(&self, work: &Work, src: &[u8], rng: &mut Rng) {
        let mut g = self.0.lock();
        g.value += 1;
        copy(&mut g.bytes, src);
        busy(work.cs_iters);
        if work.preempt {
            // A holder descheduled inside the critical section: what PV locks are for.
            match rng.next() % 4096 {
                0 => std::thread::sleep(Duration::from_micros(50)),
                1..=7 => std::thread::yield_now(),
                _ => {}
            }
        }
    }
    fn count(&self) -> u64 {
        self.0.lock().value
    }
}

/// A cheap per-thread pseudo-random sequence (xorshift64*), for `--preempt`.
pub struct Rng(u64);

impl Rng {
    fn new(thread: usize) -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ ((thread as u64 + 1) << 17))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// CPU time consumed by the calling thread so far, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// What [`timed`] measured.
pub struct Timed {
    pub ops: u64,
    pub secs: f64,
    pub cpu_secs: f64,
    pub side: Vec<u64>,
}

/// Runs `n` workers (and an optional extra thread, `side`) for `secs`: all start together
/// at a barrier and stop when the stop flag rises. Returns the summed worker results and
/// CPU time, the measured wall time and the side thread's result.
fn timed<W, S>(n: usize, secs: f64, worker: W, side: Option<S>) -> Timed
where
    W: Fn(usize, &AtomicBool, &Barrier) -> u64 + Sync,
    S: FnOnce(&AtomicBool, &Barrier) -> Vec<u64> + Send,
{
    let stop = CachePadded::new(AtomicBool::new(false));
    let barrier = Barrier::new(n + 1 + usize::from(side.is_some()));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let (worker, stop, barrier) = (&worker, &*stop, &barrier);
                s.spawn(move || {
                    let ops = worker(i, stop, barrier);
                    (ops, thread_cpu_secs())
                })
            })
            .collect();
        let side = side.map(|f| {
            let (stop, barrier) = (&*stop, &barrier);
            s.spawn(move || f(stop, barrier))
        });
        barrier.wait();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        let (mut ops, mut cpu_secs) = (0, 0.0);
        for h in workers {
            let (o, c) = h.join().unwrap_or((0, 0.0));
            ops += o;
            cpu_secs += c;
        }
        // Every operation counted happened before the last worker finished: the time runs
        // until then (a lock whose queued waiters are descheduled can take a long time to
        // drain after the stop flag, and those operations must not look free).
        let elapsed = t0.elapsed().as_secs_f64();
        let side = side
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Timed {
            ops,
            secs: elapsed,
            cpu_secs,
            side,
        }
    })
}

/// rw mode: `n` readers loop over `read_op`; `write_every` adds a writer whose write
/// latencies (ns) come back in `side`.
pub fn measure_rw<L: RwTarget>(
    n: usize,
    secs: f64,
    work: Work,
    write_every: Option<Duration>,
) -> Timed {
    let lock = CachePadded::new(L::build(work.cs_bytes));
    let lock = &*lock;
    let worker = |_i: usize, stop: &AtomicBool, barrier: &Barrier| {
        let mut dst = vec![0u8; work.cs_bytes];
        // Register this thread with the lock class and warm the caches before the clock runs.
        black_box(lock.read_op(0, &mut dst));
        barrier.wait();
        let mut ops = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..BATCH {
                black_box(lock.read_op(work.cs_iters, &mut dst));
            }
            ops += BATCH;
        }
        ops
    };
    let writer = write_every.map(|period| {
        move |stop: &AtomicBool, barrier: &Barrier| {
            lock.write_op();
            barrier.wait();
            let mut lat = Vec::new();
            let mut next = Instant::now() + period;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                    continue;
                }
                next += period;
                let t = Instant::now();
                lock.write_op();
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat
        }
    });
    timed(n, secs, worker, writer)
}

/// spin mode: `n` threads loop over `op`. Fails if the protected counter disagrees with the
/// operations counted (a lock that lets two holders in cannot produce a figure).
pub fn measure_spin<L: SpinTarget>(n: usize, secs: f64, work: Work) -> Result<Timed, String> {
    let lock = CachePadded::new(L::build(work.cs_bytes));
    let lock = &*lock;
    let worker = |i: usize, stop: &AtomicBool, barrier: &Barrier| {
        let mut rng = Rng::new(i);
        let src = vec![i as u8; work.cs_bytes];
        // The warm-up operation is counted, so the final counter check stays exact.
        lock.op(
            &Work {
                preempt: false,
                ..work
            },
            &src,
            &mut rng,
        );
        let mut ops = 1u64;
        barrier.wait();
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..BATCH {
                lock.op(&work, &src, &mut rng);
            }
            ops += BATCH;
        }
        ops
    };
    let t = timed(
        n,
        secs,
        worker,
        None::<fn(&AtomicBool, &Barrier) -> Vec<u64>>,
    );
    let counted = lock.count();
    if counted != t.ops {
        return Err(format!(
            "mutual exclusion violated: counter {counted} after {} increments",
            t.ops
        ));
    }
    Ok(t)
}
