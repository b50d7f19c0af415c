//! `pvnet-bench lockbench`: lock scaling benchmark, every lock kind side by side.
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
//! * `--cs-bytes N` makes the critical section store-heavy, as a grant copy is: rw mode
//!   copies N protected bytes into a per-thread buffer under the read lock, spin mode copies
//!   N bytes of a per-thread buffer into the protected buffer. (A reader fence has to wait
//!   for the stores of the previous critical section to drain; a compiler fence does not.)
//!
//! Every lock kind is chosen once per measurement with
//! [`with_rw_family!`](pvnet_locks::with_rw_family) /
//! [`with_spin_family!`](pvnet_locks::with_spin_family), and the measuring loop is compiled
//! for its family ([`measure`]), as pvnet's data path is: the figures hold no run-time
//! dispatch per operation.

mod measure;

use crate::plot;
use crate::rows::{self, Format, Row};
use anyhow::Context as _;
use crossbeam_utils::sync::ShardedLock;
use measure::{busy, measure_rw, measure_spin, Family, Payload, SpinFam, Timed, Unsync, Work};
use pvnet_locks::{stats, with_rw_family, with_spin_family, LockStats, RwLockKind, SpinLockKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Largest `--cs-bytes`.
const MAX_CS_BYTES: usize = 1 << 20;
/// Busy-loop iterations of the spin-mode critical section when `--cs-ns` is not given (the
/// shape of the PV spinlock seed's reference figures: lock / +1 / ~50 iterations / unlock).
const SPIN_DEFAULT_CS_ITERS: u64 = 50;

/// Which family of locks is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Reader-writer locks: read-mostly loop, optional periodic writer.
    Rw,
    /// Mutual-exclusion locks: every thread increments a shared counter.
    Spin,
}

/// Flags of `pvnet-bench lockbench`.
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
    /// Bytes stored inside every critical section (a store-heavy section, as a grant copy):
    /// rw mode copies the protected bytes into a per-thread buffer under the read lock,
    /// spin mode copies a per-thread buffer into the protected bytes. 0 = no copy.
    #[arg(long, default_value_t = 0)]
    pub cs_bytes: usize,
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
    pub cs_bytes: usize,
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
        if a.cs_bytes > MAX_CS_BYTES {
            return Err(format!("--cs-bytes must be at most {MAX_CS_BYTES}"));
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
            cs_bytes: a.cs_bytes,
            write_every: (a.write_every_us > 0).then(|| Duration::from_micros(a.write_every_us)),
            preempt: a.preempt,
        })
    }
}

/// Runs `pvnet-bench lockbench`.
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
    print!("{}", rows::render(&rows, args.format));
    if let Some(path) = &args.plot {
        let title = format!(
            "pvnet-bench lockbench --mode {} ({})",
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

fn one(lock: BenchLock, n: usize, cfg: &Config, cs: u64) -> anyhow::Result<Sample> {
    let work = Work {
        cs_iters: cs,
        cs_bytes: cfg.cs_bytes,
        preempt: cfg.preempt,
    };
    let (secs, every) = (cfg.secs, cfg.write_every);
    let before = lock.stats();
    let t: Timed = match lock {
        BenchLock::Rw(k) => {
            with_rw_family!(k, F => measure_rw::<Family<F>>(n, secs, work, every))
        }
        BenchLock::Sharded => measure_rw::<ShardedLock<Payload>>(n, secs, work, every),
        BenchLock::Unsync => measure_rw::<Unsync>(n, secs, work, every),
        BenchLock::Spin(k) => with_spin_family!(k, F => measure_spin::<SpinFam<F>>(n, secs, work))
            .map_err(|e| anyhow::anyhow!("{}: {e}", lock.name()))?,
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
    let bytes = match cfg.cs_bytes {
        0 => String::new(),
        b => format!(" {b}B"),
    };
    let group = match (cfg.mode, cfg.write_every) {
        (Mode::Rw, None) => format!("read-only cs={cs}it{bytes}"),
        (Mode::Rw, Some(p)) => format!("writer/{}us cs={cs}it{bytes}", p.as_micros()),
        (Mode::Spin, _) => format!(
            "cs={cs}it{bytes}{}",
            if cfg.preempt { " preempt" } else { "" }
        ),
    };
    if verbose {
        eprintln!(
            "lockbench: mode {}, {} rounds x {:.2} s, critical section {cs} iterations (~{:.0} ns, {npi:.2} ns/iteration) + {} bytes stored, {} cores",
            mode_name(cfg.mode),
            cfg.rounds,
            cfg.secs,
            cs as f64 * npi,
            cfg.cs_bytes,
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
    rows::compute_ratios(&mut rows);
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
        let a = parse(&["--cs-bytes", "2000000"]).unwrap();
        assert!(Config::try_from(&a).unwrap_err().contains("--cs-bytes"));
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
        let csv = rows::render(&rows, Format::Csv);
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
        let json = rows::render(&rows, Format::Json);
        let v: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
        assert_eq!(v["lock"], "parking-lot");
        assert_eq!(v["threads"], 2);
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
    }

    /// A store-heavy critical section, every pvnet kind of both modes (each compiled for
    /// its family).
    #[test]
    fn cs_bytes_runs_every_kind() {
        let a = parse(&[
            "--threads",
            "2",
            "--secs",
            "0.02",
            "--rounds",
            "1",
            "--cs-bytes",
            "64",
        ])
        .unwrap();
        let rows = bench(&Config::try_from(&a).unwrap(), false).unwrap();
        assert_eq!(rows.len(), RwLockKind::ALL.len() + 2);
        assert!(rows
            .iter()
            .all(|r| r.ops_per_sec > 0.0 && r.group.contains("64B")));
        let a = parse(&[
            "--mode",
            "spin",
            "--locks",
            "pvqspin,tas,std,parking-lot",
            "--threads",
            "2",
            "--secs",
            "0.02",
            "--rounds",
            "1",
            "--cs-bytes",
            "256",
        ])
        .unwrap();
        let rows = bench(&Config::try_from(&a).unwrap(), false).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.ops_per_sec > 0.0));
    }
}
