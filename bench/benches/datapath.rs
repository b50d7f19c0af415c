//! Switching throughput through real vhost-user sockets with in-process guests:
//! guest A streams frames to guest B over every queue pair; B drains its RX rings.
//! The guests are pvnet-testkit guests in polling mode, driving their rings like a busy
//! Linux/DPDK guest: TX in bursts of pre-filled single-descriptor frames, no used-buffer
//! notifications while busy, sleep on the call eventfds when idle. Single-core memcpy bandwidth is measured in
//! every round too and the 64 KiB rows are printed as a fraction of it.
//! Frames/s and Gbit/s per frame size, queue pairs and lock-kind combination; the lock
//! kinds alternate within one run (round-robin over configurations, `ROUNDS` times).
//!
//! `cargo bench -p pvnet-bench --bench datapath [-- SECS [ROUNDS [SIZES [PAIRS]]] [FLAGS]]`
//! (SIZES and PAIRS: comma-separated lists, default `64,1500,65536` and `1,16`).
//! By default the driver flatters the switch (one direction, EVENT_IDX, payloads never read,
//! so the copies stay cache-hot on the sender's side). These flags take that away, one by one:
//! * `--no-event-idx`: the guests do not negotiate EVENT_IDX (DPDK's virtio PMD does not);
//!   they suppress notifications with the rings' flags, and kick on every burst unless the
//!   device set `VRING_USED_F_NO_NOTIFY`;
//! * `--read`: the receiver copies every byte of every received buffer out (as a guest's
//!   stack does), so that the device's writes are pulled to the receiver's core;
//! * `--bidir`: both guests send and receive at once (each in one thread), as
//!   `scripts/switchbench.sh`'s closed loop does; frames/s count both directions;
//! * `--strict`: all three.
//!
//! `--workers=N` sets the switch's worker threads per port (default: pvnet's automatic
//! choice); `--locks=G+Q[,G+Q…]` narrows the lock combinations (default
//! `percpu+pvqspin,rwlock+qspin`).
//!
//! `PVNET_BENCH_DEBUG=1` also prints, per measurement, the switch's counters (frames,
//! notifications, kicks), the guests' kicks and the CPU time per thread name.
//! The real-frontend benchmark is `scripts/switchbench.sh` (DPDK virtio-user as the guests);
//! `docs/benchmarks.md` explains how its numbers and these differ.

use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::frames::tagged::{self as frames, HELLO, MAGIC};
use pvnet_testkit::harness::{mac, server_with};
use pvnet_testkit::{features, GuestConfig, TestGuest, VirtioNetHdr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// TX frames posted per burst (one avail-index publication, at most one kick), like a
/// DPDK PMD's default burst.
const BURST: usize = 32;
/// TX bytes in flight per queue (Linux's byte queue limits keep a queue to a few hundred
/// KiB .. a few MiB); at least 16 frames.
const TX_INFLIGHT: u64 = 1 << 20;
/// Ring size of every queue.
const QUEUE_SIZE: u16 = 256;

/// How much the driver flatters the switch (see the module comment).
#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    no_event_idx: bool,
    read: bool,
    bidir: bool,
    /// `--workers=N`: the switch's worker threads per port (0: pvnet's default).
    workers: u16,
}

impl Mode {
    fn from_flags(flags: &[String]) -> Mode {
        let mut m = Mode::default();
        for f in flags {
            match f.as_str() {
                "--no-event-idx" => m.no_event_idx = true,
                "--read" => m.read = true,
                "--bidir" => m.bidir = true,
                "--strict" => {
                    m = Mode {
                        no_event_idx: true,
                        read: true,
                        bidir: true,
                        ..m
                    }
                }
                f if f.starts_with("--workers=") => {
                    m.workers = f["--workers=".len()..].parse().unwrap_or(0);
                }
                // cargo bench passes --bench; libtest-style flags are not ours.
                _ => {}
            }
        }
        m
    }

    fn describe(&self) -> String {
        let mut v = Vec::new();
        v.push(if self.bidir {
            "both directions"
        } else {
            "one direction (A to B)"
        });
        v.push(if self.no_event_idx {
            "no EVENT_IDX"
        } else {
            "EVENT_IDX"
        });
        v.push(if self.read {
            "receiver reads every byte"
        } else {
            "payloads not read"
        });
        let mut s = v.join(", ");
        if self.workers > 0 {
            s += &format!(", {} worker threads per port", self.workers);
        }
        s
    }
}

/// Guest `i`'s configuration for frames of `size` bytes, and its TX slots per queue.
fn guest_config(i: usize, pairs: u16, size: usize, mode: Mode) -> (GuestConfig, usize) {
    let mut c = GuestConfig {
        queue_pairs: pairs,
        queue_size: QUEUE_SIZE,
        mac: mac(i),
        // Linux sizes mergeable RX buffers by the average received length, up to a page.
        rx_fill: Some(if size > 1514 { 4096 } else { 2048 }),
        mem_size: 128 << 20,
        ..GuestConfig::default()
    };
    if mode.no_event_idx {
        c.features &= !features::EVENT_IDX;
    }
    // Bytes in flight per TX queue bounded like Linux's byte queue limits (slots are
    // page-aligned: header + frame rounded up to 4 KiB).
    let slot = (12 + size as u64).next_multiple_of(4096);
    let slots = (TX_INFLIGHT / slot).clamp(16, u64::from(QUEUE_SIZE)) as usize;
    (c, slots)
}

/// Frames and frame bytes received so far by one guest (written by its thread).
#[derive(Default)]
struct Received {
    frames: AtomicU64,
    bytes: AtomicU64,
}

impl Received {
    fn add(&self, (f, b): (u64, u64)) {
        self.frames.fetch_add(f, Ordering::Relaxed);
        self.bytes.fetch_add(b, Ordering::Relaxed);
    }
    fn get(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// One guest's loop: post TX bursts (when it sends), drain RX (counting, and reading the
/// payload in `--read` mode), sleep on the call eventfds when there was nothing to do.
fn guest_loop(mut g: TestGuest, sends: bool, receives: bool, ctx: Loop) -> TestGuest {
    let pairs = g.guest_config().queue_pairs;
    while !ctx.stop.load(Ordering::Relaxed) {
        let mut progress = false;
        if sends {
            for q in 0..pairs {
                progress |= g.post_burst(q, BURST).expect("TX burst") > 0;
            }
        }
        if receives {
            let r = g.count_rx(ctx.read).expect("RX");
            progress |= r.0 > 0;
            ctx.rx.add(r);
        }
        if !progress {
            let idle = Duration::from_millis(1);
            match (sends, receives) {
                (true, true) => g.wait_any(idle),
                (true, false) => g.wait_tx(idle),
                _ => g.wait_rx(idle),
            }
            .expect("sleep");
        }
    }
    g
}

#[derive(Clone)]
struct Loop {
    stop: Arc<AtomicBool>,
    rx: Arc<Received>,
    read: bool,
}

/// Makes the switch learn `g`'s MAC: `g` broadcasts until `other` receives it.
fn learn(g: &mut TestGuest, other: &mut TestGuest, from: usize) {
    let t0 = Instant::now();
    let hello = frames::build([0xff; 6], mac(from), HELLO, 0, 0, 60);
    let mut heard = false;
    while !heard && t0.elapsed() < Duration::from_secs(10) {
        g.try_send(0, &VirtioNetHdr::plain(), &hello)
            .expect("hello");
        std::thread::sleep(Duration::from_millis(20));
        heard = !other.poll_rx().expect("receive").is_empty();
    }
    assert!(heard, "the switch never delivered guest {from}'s frame");
}

/// Writes frames from guest `from` to guest `to` into `slots` TX slots per pair of `g`.
fn fill(g: &mut TestGuest, from: usize, to: usize, len: usize, slots: usize) {
    for q in 0..g.guest_config().queue_pairs {
        while g.tx_in_flight(q) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let f = frames::build(mac(to), mac(from), MAGIC, q, 0, len);
        g.fill_tx(q, &VirtioNetHdr::plain(), &f, slots)
            .expect("fill TX slots");
    }
}

fn measure(
    size: usize,
    pairs: u16,
    gl: RwLockKind,
    ql: SpinLockKind,
    secs: f64,
    mode: Mode,
) -> (f64, f64) {
    let s = server_with(
        &format!("bench-{size}-{pairs}-{gl}-{ql}"),
        2,
        pairs,
        gl,
        ql,
        |c| {
            c.workers = mode.workers;
        },
    );
    let p = s.paths().to_vec();
    let (cfg_a, slots) = guest_config(0, pairs, size, mode);
    let (cfg_b, _) = guest_config(1, pairs, size, mode);
    let mut a = TestGuest::connect(&p[0], cfg_a).expect("guest A");
    let mut b = TestGuest::connect(&p[1], cfg_b).expect("guest B");
    // Learning: B's MAC (and A's, when B sends too).
    learn(&mut b, &mut a, 1);
    if mode.bidir {
        learn(&mut a, &mut b, 0);
    }
    let len = size.max(60);
    fill(&mut a, 0, 1, len, slots);
    if mode.bidir {
        fill(&mut b, 1, 0, len, slots);
    }
    a.set_polling(true);
    b.set_polling(true);
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = |rx: &Arc<Received>| Loop {
        stop: stop.clone(),
        rx: rx.clone(),
        read: mode.read,
    };
    let (rx_a, rx_b) = (Arc::new(Received::default()), Arc::new(Received::default()));
    let (ca, cb) = (ctx(&rx_a), ctx(&rx_b));
    let bidir = mode.bidir;
    let ta = std::thread::spawn(move || guest_loop(a, true, bidir, ca));
    let tb = std::thread::spawn(move || guest_loop(b, bidir, true, cb));
    let total = || {
        let (x, y) = (rx_a.get(), rx_b.get());
        (x.0 + y.0, x.1 + y.1)
    };
    std::thread::sleep(Duration::from_millis(300));
    let qlock0 = pvnet_locks::spin_stats(ql);
    let cpu0 = thread_cpu();
    let (f0, b0) = total();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (f1, b1) = total();
    let el = t0.elapsed().as_secs_f64();
    let cpu1 = thread_cpu();
    let qlock1 = pvnet_locks::spin_stats(ql);
    stop.store(true, Ordering::Relaxed);
    let a = ta.join().expect("guest A");
    let b = tb.join().expect("guest B");
    let frames = f1 - f0;
    if std::env::var_os("PVNET_BENCH_DEBUG").is_some() {
        let sw = s.switch();
        let mut t = pvnet_backend::stats::QueueSnapshot::default();
        for port in &sw.ports {
            for q in 0..usize::from(pairs) {
                t.add(&port.queue_snapshot(q));
            }
        }
        let (sa, sb) = (a.poll_stats(), b.poll_stats());
        eprintln!(
            "{size} {pairs} ({}): {t:?} kicks A {} B {}; sleeps/timeouts: A {}/{} B {}/{}",
            mode.describe(),
            a.total_kicks(),
            b.total_kicks(),
            sa.sleeps,
            sa.timeouts,
            sb.sleeps,
            sb.timeouts
        );
        let mut by: std::collections::BTreeMap<String, f64> = Default::default();
        for (k, (name, v)) in &cpu1 {
            let v0 = cpu0.get(k).map_or(0.0, |x| x.1);
            *by.entry(name.clone()).or_default() += (v - v0) / el;
        }
        eprintln!(
            "  queue lock {ql} per 1,000 frames: slow paths {:.1}, spins {:.1}, halts {:.2}, \
             steals {:.1}",
            per_k(qlock1.slow_paths - qlock0.slow_paths, frames),
            per_k(qlock1.spins - qlock0.spins, frames),
            per_k(qlock1.halts - qlock0.halts, frames),
            per_k(qlock1.steals - qlock0.steals, frames),
        );
        eprintln!(
            "  cpu/s by thread name: {by:?}; ns/frame: {:?}",
            by.iter()
                .map(|(n, c)| (n.clone(), (c * el * 1e9 / frames as f64) as u64))
                .collect::<Vec<_>>()
        );
    }
    drop((a, b));
    s.shutdown();
    (frames as f64 / el, (b1 - b0) as f64 * 8.0 / el / 1e9)
}

/// `n` events per 1,000 of `frames`.
fn per_k(n: u64, frames: u64) -> f64 {
    n as f64 * 1000.0 / frames.max(1) as f64
}

/// CPU seconds so far of every thread of this process: tid -> (name, seconds).
fn thread_cpu() -> std::collections::HashMap<String, (String, f64)> {
    let mut m = std::collections::HashMap::new();
    let tick = 100.0; // USER_HZ
    if let Ok(d) = std::fs::read_dir("/proc/self/task") {
        for e in d.flatten() {
            let Ok(st) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(a), Some(b)) = (st.find('('), st.rfind(')')) else {
                continue;
            };
            let name = st[a + 1..b].to_string();
            let f: Vec<&str> = st[b + 2..].split(' ').collect();
            let t: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
            m.insert(
                e.file_name().to_string_lossy().into_owned(),
                (name, t / tick),
            );
        }
    }
    m
}

/// Single-core memcpy bandwidth in Gbit/s: 64 KiB copies between two buffers of `span`
/// bytes (64 KiB: both cache-resident; larger: the copies walk the buffers), one thread.
fn memcpy_gbps(span: usize, secs: f64) -> f64 {
    const CHUNK: usize = 64 * 1024;
    let src: Vec<u8> = (0..span).map(|i| i as u8).collect();
    let mut dst = vec![0u8; span];
    let chunks = span / CHUNK;
    let (mut n, mut k) = (0u64, 0usize);
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            let o = k * CHUNK;
            dst[o..o + CHUNK].copy_from_slice(std::hint::black_box(&src[o..o + CHUNK]));
            std::hint::black_box(&mut dst);
            k = (k + 1) % chunks;
            n += 1;
        }
    }
    (n * CHUNK as u64) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|x, y| x.total_cmp(y));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let (flags, args): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| a.starts_with('-'));
    let mode = Mode::from_flags(&flags);
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this target without it:
    // then one short smoke run (the path works end to end), not a measurement.
    let smoke = !flags.iter().any(|f| f == "--bench");
    let (secs_default, rounds_default) = if smoke { (0.05, 1) } else { (2.0, 2) };
    let secs: f64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(secs_default);
    let rounds: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(rounds_default);
    let list = |i: usize, all: &[usize]| -> Vec<usize> {
        args.get(i)
            .map(|a| a.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| all.to_vec())
    };
    let (all_sizes, all_pairs): (&[usize], &[usize]) = if smoke {
        (&[1500], &[2])
    } else {
        (&[64, 1500, 65536], &[1, 16])
    };
    let sizes = list(2, all_sizes);
    let pair_counts: Vec<u16> = list(3, all_pairs).iter().map(|&p| p as u16).collect();
    // `--locks=G+Q[,G+Q...]` narrows the lock combinations.
    let combos: Vec<(RwLockKind, SpinLockKind)> = flags
        .iter()
        .find_map(|f| f.strip_prefix("--locks="))
        .map(|l| {
            l.split(',')
                .filter_map(|c| {
                    let (g, q) = c.split_once('+')?;
                    Some((g.parse().ok()?, q.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_else(|| {
            vec![
                (RwLockKind::Percpu, SpinLockKind::Pvqspin),
                (RwLockKind::Rwlock, SpinLockKind::Qspin),
            ]
        });
    type Key = (usize, u16, String);
    let mut results: Vec<(Key, Vec<(f64, f64)>)> = Vec::new();
    let (mut hot, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // The memcpy reference, measured in every round between the switch measurements.
        hot.push(memcpy_gbps(64 * 1024, secs / 2.0));
        cold.push(memcpy_gbps(64 << 20, secs / 2.0));
        for &size in &sizes {
            for &pairs in &pair_counts {
                for &(gl, ql) in &combos {
                    let r = measure(size, pairs, gl, ql, secs, mode);
                    let key = (size, pairs, format!("{gl}+{ql}"));
                    match results.iter_mut().find(|x| x.0 == key) {
                        Some(x) => x.1.push(r),
                        None => results.push((key, vec![r])),
                    }
                }
            }
        }
    }
    let (hot, cold) = (median(hot), median(cold));
    println!("in-process guests: {}", mode.describe());
    println!(
        "single-core memcpy, 64 KiB copies (median of {rounds}): {hot:.1} Gbit/s between two \
         64 KiB buffers, {cold:.1} Gbit/s walking two 64 MiB buffers"
    );
    println!(
        "| frame | pairs | locks | frames/s (median) | Gbit/s (median) | of memcpy 64 KiB \
         | of memcpy 64 MiB | runs |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for ((size, pairs, key), mut v) in results {
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (fps, gbps) = v[v.len() / 2];
        let frac = |base: f64| {
            if size >= 65536 {
                format!("{:.0}%", 100.0 * gbps / base)
            } else {
                "-".into()
            }
        };
        println!(
            "| {size} | {pairs} | {key} | {fps:.0} | {gbps:.2} | {} | {} | {} |",
            frac(hot),
            frac(cold),
            v.len()
        );
    }
}
