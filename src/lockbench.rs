//! `pvnet lockbench`: lock scaling benchmark, every lock kind side by side.
//!
//! For each thread count, every requested lock is measured in turn, `--rounds` times
//! interleaved (a, b, c, a, b, c, …), so the ratios printed come from one run on one machine
//! state. A measurement spawns N workers, releases them together through a barrier, lets them
//! loop for `--secs`, raises a stop flag and sums their operation counts. The reported figure
//! is the median over the rounds (with min and max beside it), together with the deltas of the
//! lock kind's event counters ([`pvnet_locks::stats`]) during the median measurement.
//!
//! * `--mode rw`: each operation is read-lock / read (+ optional busy critical section) /
//!   unlock; `--write-every-us N` adds one writer thread that takes the write lock every N µs
//!   and whose acquisition latency is reported. Baselines besides the [`RwLockKind`]s:
//!   `sharded` (`crossbeam_utils::sync::ShardedLock`) and `unsync` (a plain atomic load).
//! * `--mode spin`: each operation is lock / +1 on a non-atomic counter / ~50-iteration busy
//!   loop (or `--cs-ns`) / unlock. The counter is checked against the number of operations
//!   afterwards, so a broken lock cannot produce a figure. `--preempt` makes lock holders
//!   yield or sleep now and then, as a preempted vCPU would.
//!
//! Every lock is built through [`AnyRwLock::new`] / [`AnySpinLock::new`], i.e. the run-time
//! selected type that pvnet itself uses.

use crate::plot;
use crate::report::{self, Format, Row};
use anyhow::Context as _;
use crossbeam_utils::sync::ShardedLock;
use crossbeam_utils::CachePadded;
use pvnet_locks::{stats, AnyRwLock, AnySpinLock, LockStats, RwLockKind, SpinLockKind};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Operations between two looks at the stop flag (keeps the harness out of the figures).
const BATCH: u64 = 32;
/// Busy-loop iterations of the spin-mode critical section when `--cs-ns` is not given (the
/// shape of the reference figures: lock / +1 / ~50 iterations / unlock).
const SPIN_DEFAULT_CS_ITERS: u64 = 50;

/// Which family of locks is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Reader-writer locks: read-mostly loop, optional periodic writer.
    Rw,
    /// Mutual-exclusion locks: every thread increments a shared counter.
    Spin,
}

/// Flags of `pvnet lockbench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lock family to measure.
    #[arg(long, value_enum, default_value_t = Mode::Rw)]
    pub mode: Mode,
    /// Comma-separated locks, first one is the ratio base. rw: percpu, percpu-fenced, rwlock,
    /// std, parking-lot, sharded, unsync. spin: pvqspin, qspin, ticket, tas, std, parking-lot.
    /// Default: every kind of the mode.
    #[arg(long, value_delimiter = ',')]
    pub locks: Vec<String>,
    /// Comma-separated worker thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = parse_threads)]
    pub threads: Vec<usize>,
    /// Seconds per measurement (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_parser = parse_secs)]
    pub secs: f64,
    /// Times the whole matrix is repeated (kinds interleaved); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Critical-section length in ns (calibrated busy loop). Default: 0 in rw mode, a
    /// ~50-iteration loop in spin mode.
    #[arg(long)]
    pub cs_ns: Option<u64>,
    /// rw mode: one extra writer takes the write lock every N µs (0 = read-only).
    #[arg(long, default_value_t = 0)]
    pub write_every_us: u64,
    /// spin mode: lock holders sometimes yield or sleep inside the critical section.
    #[arg(long)]
    pub preempt: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write an SVG plot (ops/s vs threads, one line per lock) to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a thread count in 1..=1024")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("'{s}' is not a duration in seconds in (0, 3600]")),
    }
}

/// One lock under test: a pvnet lock kind or a benchmark-only baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchLock {
    Rw(RwLockKind),
    /// `crossbeam_utils::sync::ShardedLock`.
    Sharded,
    /// An unsynchronised atomic load (the ceiling).
    Unsync,
    Spin(SpinLockKind),
}

impl BenchLock {
    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            BenchLock::Rw(k) => k.as_str(),
            BenchLock::Sharded => "sharded",
            BenchLock::Unsync => "unsync",
            BenchLock::Spin(k) => k.as_str(),
        }
    }

    fn parse(mode: Mode, s: &str) -> Result<BenchLock, String> {
        let s = s.trim();
        match mode {
            Mode::Rw => match s {
                "sharded" => Ok(BenchLock::Sharded),
                "unsync" => Ok(BenchLock::Unsync),
                _ => s.parse().map(BenchLock::Rw).map_err(|_| {
                    let all: Vec<&str> = RwLockKind::ALL.iter().map(|k| k.as_str()).collect();
                    format!(
                        "'{s}' is not an rw-mode lock (expected one of: {}, sharded, unsync)",
                        all.join(", ")
                    )
                }),
            },
            Mode::Spin => s.parse().map(BenchLock::Spin).map_err(|_| {
                let all: Vec<&str> = SpinLockKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "'{s}' is not a spin-mode lock (expected one of: {})",
                    all.join(", ")
                )
            }),
        }
    }

    fn default_set(mode: Mode) -> Vec<BenchLock> {
        match mode {
            Mode::Rw => {
                let mut v: Vec<BenchLock> =
                    RwLockKind::ALL.iter().map(|k| BenchLock::Rw(*k)).collect();
                v.extend([BenchLock::Sharded, BenchLock::Unsync]);
                v
            }
            Mode::Spin => SpinLockKind::ALL
                .iter()
                .map(|k| BenchLock::Spin(*k))
                .collect(),
        }
    }

    fn stats(self) -> Option<LockStats> {
        match self {
            BenchLock::Rw(k) => Some(stats::rw_stats(k)),
            BenchLock::Spin(k) => Some(stats::spin_stats(k)),
            BenchLock::Sharded | BenchLock::Unsync => None,
        }
    }
}

/// Validated benchmark configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub locks: Vec<BenchLock>,
    pub threads: Vec<usize>,
    pub secs: f64,
    pub rounds: usize,
    pub cs_ns: Option<u64>,
    pub write_every: Option<Duration>,
    pub preempt: bool,
}

impl TryFrom<&Args> for Config {
    type Error = String;

    fn try_from(a: &Args) -> Result<Config, String> {
        let mut locks = Vec::new();
        for s in &a.locks {
            let l = BenchLock::parse(a.mode, s)?;
            if !locks.contains(&l) {
                locks.push(l);
            }
        }
        if locks.is_empty() {
            locks = BenchLock::default_set(a.mode);
        }
        if a.write_every_us > 0 && a.mode != Mode::Rw {
            return Err("--write-every-us only applies to --mode rw".into());
        }
        if a.preempt && a.mode != Mode::Spin {
            return Err("--preempt only applies to --mode spin".into());
        }
        if a.cs_ns.is_some_and(|n| n > 1_000_000_000) {
            return Err("--cs-ns must be at most 1000000000 (1 s)".into());
        }
        let mut threads = a.threads.clone();
        threads.dedup();
        Ok(Config {
            mode: a.mode,
            locks,
            threads,
            secs: a.secs,
            rounds: a.rounds as usize,
            cs_ns: a.cs_ns,
            write_every: (a.write_every_us > 0).then(|| Duration::from_micros(a.write_every_us)),
            preempt: a.preempt,
        })
    }
}

/// Runs `pvnet lockbench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = match Config::try_from(&args) {
        Ok(c) => c,
        Err(msg) => {
            // A bad flag combination is a usage error like any other: one line, exit 2
            // (the same shape as clap's errors in main).
            eprintln!("pvnet: lockbench: {msg}");
            std::process::exit(2);
        }
    };
    let rows = bench(&cfg, true)?;
    print!("{}", report::render(&rows, args.format));
    if let Some(path) = &args.plot {
        let title = format!(
            "pvnet lockbench --mode {} ({})",
            mode_name(cfg.mode),
            rows_group(&rows)
        );
        std::fs::write(path, plot::svg_lines(&rows, &title))
            .with_context(|| format!("writing plot to {}", path.display()))?;
    }
    Ok(())
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Rw => "rw",
        Mode::Spin => "spin",
    }
}

fn rows_group(rows: &[Row]) -> String {
    rows.first().map(|r| r.group.clone()).unwrap_or_default()
}

/// Busy loop of `iters` iterations that the compiler cannot remove or fold.
#[inline(always)]
fn busy(iters: u64) {
    for i in 0..iters {
        black_box(i);
    }
}

/// Nanoseconds per [`busy`] iteration on this machine (best of a few tries, so that a
/// preempted try does not inflate it).
fn ns_per_iter() -> f64 {
    const N: u64 = 200_000;
    (0..5)
        .map(|_| {
            let t = Instant::now();
            busy(N);
            t.elapsed().as_secs_f64() * 1e9 / N as f64
        })
        .fold(f64::INFINITY, f64::min)
        .max(1e-3)
}

/// The outcome of one measurement.
struct Sample {
    ops: u64,
    secs: f64,
    /// CPU time of the workers over wall time: how many cores they actually had (the
    /// machine may be shared; figures with few cores behind them are not comparable).
    cores: f64,
    stats: Option<LockStats>,
    writer_lat_ns: Vec<u64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
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
struct Timed {
    ops: u64,
    secs: f64,
    cpu_secs: f64,
    side: Vec<u64>,
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

/// What the rw benchmark needs from a lock. `read_op` is inlined into the measuring loop
/// for every lock alike, so the figures hold no call overhead of the harness.
trait RwTarget: Sync {
    /// Read-lock, read the value, spin `cs` iterations, unlock.
    fn read_op(&self, cs: u64) -> u64;
    /// Write-lock, increment, unlock.
    fn write_op(&self);
}

impl RwTarget for AnyRwLock<u64> {
    #[inline(always)]
    fn read_op(&self, cs: u64) -> u64 {
        let g = self.read();
        busy(cs);
        *g
    }
    fn write_op(&self) {
        *self.write() += 1;
    }
}

impl RwTarget for ShardedLock<u64> {
    #[inline(always)]
    fn read_op(&self, cs: u64) -> u64 {
        let g = self.read().unwrap_or_else(|e| e.into_inner());
        busy(cs);
        *g
    }
    fn write_op(&self) {
        *self.write().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}

impl RwTarget for AtomicU64 {
    #[inline(always)]
    fn read_op(&self, cs: u64) -> u64 {
        let v = self.load(Ordering::Relaxed);
        busy(cs);
        v
    }
    fn write_op(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
}

fn measure_rw<L: RwTarget>(lock: &L, n: usize, cfg: &Config, cs: u64) -> Timed {
    let worker = |_i: usize, stop: &AtomicBool, barrier: &Barrier| {
        // Register this thread with the lock class and warm the caches before the clock runs.
        black_box(lock.read_op(0));
        barrier.wait();
        let mut ops = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..BATCH {
                black_box(lock.read_op(cs));
            }
            ops += BATCH;
        }
        ops
    };
    let writer = cfg.write_every.map(|period| {
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
    timed(n, cfg.secs, worker, writer)
}

/// A cheap per-thread pseudo-random sequence (xorshift64*), for `--preempt`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn measure_spin(lock: &AnySpinLock<u64>, n: usize, cfg: &Config, cs: u64) -> Timed {
    let preempt = cfg.preempt;
    let worker = |i: usize, stop: &AtomicBool, barrier: &Barrier| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) << 17));
        // The warm-up increment is counted, so the final counter check stays exact.
        *lock.lock() += 1;
        let mut ops = 1u64;
        barrier.wait();
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..BATCH {
                let mut g = lock.lock();
                *g += 1;
                busy(cs);
                if preempt {
                    // A holder descheduled inside the critical section: what PV locks are for.
                    match rng.next() % 4096 {
                        0 => std::thread::sleep(Duration::from_micros(50)),
                        1..=7 => std::thread::yield_now(),
                        _ => {}
                    }
                }
                drop(g);
            }
            ops += BATCH;
        }
        ops
    };
    timed(
        n,
        cfg.secs,
        worker,
        None::<fn(&AtomicBool, &Barrier) -> Vec<u64>>,
    )
}

fn one(lock: BenchLock, n: usize, cfg: &Config, cs: u64) -> anyhow::Result<Sample> {
    let before = lock.stats();
    let t = match lock {
        BenchLock::Rw(k) => {
            let l = CachePadded::new(AnyRwLock::new(k, 0u64));
            measure_rw(&*l, n, cfg, cs)
        }
        BenchLock::Sharded => {
            let l = CachePadded::new(ShardedLock::new(0u64));
            measure_rw(&*l, n, cfg, cs)
        }
        BenchLock::Unsync => {
            let l = CachePadded::new(AtomicU64::new(0));
            measure_rw(&*l, n, cfg, cs)
        }
        BenchLock::Spin(k) => {
            let l = CachePadded::new(AnySpinLock::new(k, 0u64));
            let t = measure_spin(&l, n, cfg, cs);
            let counted = *l.lock();
            anyhow::ensure!(
                counted == t.ops,
                "{}: mutual exclusion violated: counter {counted} after {} increments",
                lock.name(),
                t.ops
            );
            t
        }
    };
    let stats = match (before, lock.stats()) {
        (Some(b), Some(a)) => Some(a.since(&b)),
        _ => None,
    };
    Ok(Sample {
        ops: t.ops,
        secs: t.secs,
        cores: if t.secs > 0.0 {
            t.cpu_secs / t.secs
        } else {
            0.0
        },
        stats,
        writer_lat_ns: t.side,
    })
}

/// The counters shown for each mode (the others stay zero there).
fn counter_columns(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Rw => &[
            "read_slow_paths",
            "write_locks",
            "writer_wait_spins",
            "membarriers",
        ],
        Mode::Spin => &[
            "slow_paths",
            "pending",
            "spins",
            "halts",
            "kicks",
            "hashed_handoffs",
            "steals",
            "spurious_wakeups",
            "wait_early",
            "head_pending_sleeps",
        ],
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs the whole matrix and returns one row per (lock, threads), ratios filled in.
pub fn bench(cfg: &Config, verbose: bool) -> anyhow::Result<Vec<Row>> {
    let npi = ns_per_iter();
    let cs = match (cfg.cs_ns, cfg.mode) {
        (Some(ns), _) => (ns as f64 / npi).ceil() as u64,
        (None, Mode::Rw) => 0,
        (None, Mode::Spin) => SPIN_DEFAULT_CS_ITERS,
    };
    let group = match (cfg.mode, cfg.write_every) {
        (Mode::Rw, None) => format!("read-only cs={cs}it"),
        (Mode::Rw, Some(p)) => format!("writer/{}us cs={cs}it", p.as_micros()),
        (Mode::Spin, _) => format!("cs={cs}it{}", if cfg.preempt { " preempt" } else { "" }),
    };
    if verbose {
        eprintln!(
            "lockbench: mode {}, {} rounds x {:.2} s, critical section {cs} iterations (~{:.0} ns, {npi:.2} ns/iteration), {} cores",
            mode_name(cfg.mode),
            cfg.rounds,
            cfg.secs,
            cs as f64 * npi,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
    }
    let mut rows = Vec::new();
    for &n in &cfg.threads {
        // samples[lock][round], measured a, b, c, a, b, c, …
        let mut samples: Vec<Vec<Sample>> = cfg.locks.iter().map(|_| Vec::new()).collect();
        for _ in 0..cfg.rounds {
            for (li, &lock) in cfg.locks.iter().enumerate() {
                let s = one(lock, n, cfg, cs)?;
                log::debug!("{} x{n}: {:.0} ops/s", lock.name(), s.rate());
                samples[li].push(s);
            }
        }
        for (li, &lock) in cfg.locks.iter().enumerate() {
            rows.push(summarise(lock, n, &group, &mut samples[li], cfg));
        }
    }
    report::compute_ratios(&mut rows);
    Ok(rows)
}

fn summarise(lock: BenchLock, n: usize, group: &str, s: &mut [Sample], cfg: &Config) -> Row {
    s.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let med = &s[s.len() / 2];
    let mut row = Row::new("lockbench", group, lock.name(), n, med.rate())
        .with("min", s[0].rate().round() as u64)
        .with("max", s[s.len() - 1].rate().round() as u64)
        .with("cores", (med.cores * 100.0).round() / 100.0);
    if cfg.write_every.is_some() {
        let mut lat: Vec<u64> = s
            .iter()
            .flat_map(|x| x.writer_lat_ns.iter().copied())
            .collect();
        lat.sort_unstable();
        row = row
            .with("writes", lat.len() as u64)
            .with("w_p50_us", percentile(&lat, 0.50) as f64 / 1e3)
            .with("w_p99_us", percentile(&lat, 0.99) as f64 / 1e3)
            .with("w_max_us", lat.last().copied().unwrap_or(0) as f64 / 1e3);
    }
    if let Some(st) = &med.stats {
        for (k, v) in st.fields() {
            if counter_columns(cfg.mode).contains(&k) {
                row = row.with(k, v);
            }
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("lockbench").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = parse(&[]).unwrap();
        let c = Config::try_from(&a).unwrap();
        assert_eq!(c.threads, vec![1, 2, 4, 8, 16]);
        assert_eq!(c.rounds, 3);
        assert_eq!(c.locks.len(), RwLockKind::ALL.len() + 2);
        assert_eq!(c.locks[0].name(), "percpu");

        let a = parse(&[
            "--mode",
            "spin",
            "--locks",
            "qspin,pvqspin",
            "--secs",
            "0.5",
        ])
        .unwrap();
        let c = Config::try_from(&a).unwrap();
        assert_eq!(
            c.locks,
            vec![
                BenchLock::Spin(SpinLockKind::Qspin),
                BenchLock::Spin(SpinLockKind::Pvqspin)
            ]
        );
        assert_eq!(c.secs, 0.5);

        for bad in [
            &["--threads", "0"][..],
            &["--threads", "2,x"],
            &["--secs", "-1"],
            &["--secs", "nan"],
            &["--mode", "foo"],
            &["--rounds", "0"],
            &["--format", "xml"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} must be refused"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        // Lock names depend on the mode: checked when the configuration is built.
        let a = parse(&["--mode", "spin", "--locks", "sharded"]).unwrap();
        let e = Config::try_from(&a).unwrap_err();
        assert!(e.contains("'sharded'") && e.contains("pvqspin"), "{e}");
        let a = parse(&["--locks", "percpu,bogus"]).unwrap();
        assert!(Config::try_from(&a).unwrap_err().contains("'bogus'"));
        let a = parse(&["--mode", "spin", "--write-every-us", "10"]).unwrap();
        assert!(Config::try_from(&a).is_err());
    }

    #[test]
    fn short_runs_give_one_row_per_lock_and_thread_count() {
        let a = parse(&[
            "--locks",
            "std,parking-lot,sharded,unsync",
            "--threads",
            "1,2",
            "--secs",
            "0.05",
            "--rounds",
            "1",
            "--write-every-us",
            "2000",
        ])
        .unwrap();
        let rows = bench(&Config::try_from(&a).unwrap(), false).unwrap();
        assert_eq!(rows.len(), 8);
        for (r, (t, l)) in rows.iter().zip(
            [1, 2]
                .iter()
                .flat_map(|t| ["std", "parking-lot", "sharded", "unsync"].map(|l| (*t, l))),
        ) {
            assert_eq!((r.threads, r.lock.as_str()), (t, l));
            assert!(r.ops_per_sec > 0.0, "{r:?}");
            assert!(r.extra.contains_key("w_p99_us"), "{r:?}");
            assert!(r.extra["cores"].as_f64().is_some_and(|c| c > 0.0), "{r:?}");
        }
        assert_eq!(rows[0].ratio, 1.0);
        let csv = report::render(&rows, Format::Csv);
        assert_eq!(csv.lines().count(), 9);

        let a = parse(&[
            "--mode",
            "spin",
            "--locks",
            "std,parking-lot",
            "--threads",
            "2",
            "--secs",
            "0.05",
            "--rounds",
            "2",
            "--preempt",
        ])
        .unwrap();
        let rows = bench(&Config::try_from(&a).unwrap(), false).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|r| r.ops_per_sec > 0.0 && r.extra.contains_key("slow_paths")));
        let json = report::render(&rows, Format::Json);
        let v: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
        assert_eq!(v["lock"], "parking-lot");
        assert_eq!(v["threads"], 2);
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
    }
}
