//! `pvnet-bench xcpu`: the round trip of one cache line between two CPUs, in nanoseconds.
//!
//! A switch and its guests run on different CPUs, and every frame moves cache lines between
//! them (ring entries, descriptors, the frame's own lines): the time one line takes to go
//! from one CPU's cache to the other's bounds the switch as much as its own instructions do.
//! On a virtual machine that time is not fixed. The host may place the two virtual CPUs on
//! cores that share a cache or on cores far apart, and move them at run time: on the 2-core
//! development VM the same pair of CPUs measures ~100 ns and, for minutes at a time, ~500 ns.
//! `scripts/switchbench.sh` measures it before every run (column `xcpu_rtt_ns`), so each
//! figure says in which state it was taken.
//!
//! Two threads, pinned one per CPU, bounce a counter: `A` stores `i` in `ping` and spins until
//! `pong` shows `i`; `B` spins on `ping` and copies each new value to `pong` (each on its own
//! cache line). One trip is two line transfers. The median of `--batches` batches of
//! `--trips` trips is printed (`xcpu_rtt_ns=...`), with the fastest and slowest batch.
//!
//! ```text
//! $ pvnet-bench xcpu --cpus 0,1
//! xcpu_rtt_ns=104.2 min=101.9 max=110.3 cpus=0,1 trips=20000 batches=5
//! ```

use crate::pin::pin_to;
use crate::rows::median;
use anyhow::{bail, ensure};
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Spins before a waiting thread yields its CPU (the other thread may not be running: a busy
/// machine, or both threads on one CPU where pinning failed).
const SPINS_BEFORE_YIELD: u32 = 1 << 14;
/// A batch that takes longer than this is abandoned (the partner stopped answering).
const BATCH_LIMIT: Duration = Duration::from_secs(10);

/// Options of `pvnet-bench xcpu`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The two CPUs, comma-separated (they must differ), e.g. `0,1`.
    #[arg(long, value_name = "A,B", value_parser = parse_cpus)]
    pub cpus: (usize, usize),
    /// Round trips per batch.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub trips: u64,
    /// Batches; the median batch is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batches: u32,
}

/// `A,B`: two different CPU numbers.
fn parse_cpus(s: &str) -> Result<(usize, usize), String> {
    let cpu = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|e| format!("{t:?} is not a CPU number: {e}"))
    };
    match s.split(',').collect::<Vec<_>>()[..] {
        [a, b] => match (cpu(a)?, cpu(b)?) {
            (a, b) if a == b => Err(format!("the two CPUs must differ (got {a} twice)")),
            pair => Ok(pair),
        },
        _ => Err(format!("two CPUs, comma-separated, e.g. 0,1 (got {s:?})")),
    }
}

/// The two threads' lines.
#[derive(Default)]
struct Lines {
    ping: CachePadded<AtomicU64>,
    pong: CachePadded<AtomicU64>,
    stop: CachePadded<AtomicBool>,
}

/// Waits until `cond` holds, spinning, then yielding now and then; false after `deadline`.
fn wait_for(cond: impl Fn() -> bool, deadline: Instant) -> bool {
    let mut spins = 0u32;
    while !cond() {
        spins += 1;
        if spins == SPINS_BEFORE_YIELD {
            spins = 0;
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    true
}

/// The answering side: copies every new `ping` to `pong` until told to stop.
fn answer(l: &Lines) {
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        let v = loop {
            let v = l.ping.load(Ordering::Acquire);
            if v != seen || l.stop.load(Ordering::Relaxed) {
                break v;
            }
            spins += 1;
            if spins == SPINS_BEFORE_YIELD {
                spins = 0;
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        };
        if l.stop.load(Ordering::Relaxed) {
            return;
        }
        seen = v;
        l.pong.store(v, Ordering::Release);
    }
}

/// One batch of `trips` round trips starting after counter value `from`: mean ns per trip.
fn batch(l: &Lines, from: u64, trips: u64) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let deadline = t0 + BATCH_LIMIT;
    for i in from + 1..=from + trips {
        l.ping.store(i, Ordering::Release);
        ensure!(
            wait_for(|| l.pong.load(Ordering::Acquire) == i, deadline),
            "no answer from the other CPU within {BATCH_LIMIT:?}"
        );
    }
    Ok(t0.elapsed().as_nanos() as f64 / trips as f64)
}

/// Measures `batches` batches of `trips` round trips between CPUs `a` and `b` (pinned; a CPU
/// that cannot be pinned is warned about and the measurement goes on): each batch's mean ns
/// per round trip, in the order measured. One untimed batch warms both threads up first.
pub fn measure(a: usize, b: usize, trips: u64, batches: u32) -> anyhow::Result<Vec<f64>> {
    if a == b {
        bail!("the two CPUs must differ (got {a} twice)");
    }
    let lines = Lines::default();
    std::thread::scope(|s| {
        let l = &lines;
        s.spawn(move || {
            pin_to(b);
            answer(l);
        });
        let run = || -> anyhow::Result<Vec<f64>> {
            pin_to(a);
            let warm = trips.min(1000);
            batch(l, 0, warm)?;
            let mut next = warm;
            (0..batches)
                .map(|_| {
                    let ns = batch(l, next, trips);
                    next += trips;
                    ns
                })
                .collect()
        };
        let res = run();
        lines.stop.store(true, Ordering::Relaxed);
        res
    })
}

/// Runs `pvnet-bench xcpu`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let (x, y) = a.cpus;
    let ns = measure(x, y, a.trips, a.batches)?;
    let (min, max) = ns
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let med = median(ns);
    println!(
        "xcpu_rtt_ns={med:.1} min={min:.1} max={max:.1} cpus={x},{y} trips={} batches={}",
        a.trips, a.batches
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_measured_and_positive() {
        // Whatever CPUs exist: pinning to a missing one only warns, and the yielding waits
        // keep two threads on one CPU going.
        let ns = measure(0, 1, 200, 3).expect("measure");
        assert_eq!(ns.len(), 3);
        assert!(ns.iter().all(|&v| v.is_finite() && v > 0.0), "{ns:?}");
    }

    #[test]
    fn the_same_cpu_twice_is_refused() {
        let e = measure(1, 1, 10, 1).unwrap_err().to_string();
        assert!(e.contains("must differ"), "{e}");
    }

    #[test]
    fn cpus_are_two_different_numbers() {
        assert_eq!(parse_cpus("0,1"), Ok((0, 1)));
        assert_eq!(parse_cpus(" 3, 2"), Ok((3, 2)));
        for bad in ["0", "0,1,2", "0,0", "a,1", "", "1,"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} accepted");
        }
    }
}
