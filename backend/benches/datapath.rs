//! Switching throughput through real vhost-user sockets with in-process guests:
//! guest A streams frames to guest B over every queue pair; B drains its RX rings.
//! Frames/s and Gbit/s per frame size, queue pairs and lock-kind combination; the lock
//! kinds alternate within one run (round-robin over configurations, `ROUNDS` times).
//!
//! `cargo bench -p pvnet-backend --bench datapath [-- SECS [ROUNDS]]`

#[path = "../tests/common/mod.rs"]
mod common;

use common::frames::{self, HELLO, MAGIC};
use common::harness::{hdr, mac, server};
use common::{Guest, Opts};
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn measure(size: usize, pairs: u16, gl: RwLockKind, ql: SpinLockKind, secs: f64) -> (f64, f64) {
    let s = server(&format!("bench-{size}-{pairs}-{gl}-{ql}"), 2, pairs, gl, ql);
    let p = s.paths().to_vec();
    let opts = |i: usize| {
        let mut o = Opts::new(pairs, 0);
        o.mac = mac(i);
        o
    };
    let mut a = Guest::connect(&p[0], opts(0));
    let mut b = Guest::connect(&p[1], opts(1));
    // Learning: B's MAC.
    let t0 = Instant::now();
    let mut rx = Vec::new();
    while rx.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        let _ = b.send(
            0,
            &hdr(),
            &frames::build([0xff; 6], mac(1), HELLO, 0, 0, 60),
        );
        std::thread::sleep(Duration::from_millis(20));
        a.poll_rx(&mut rx);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let flows: Vec<Vec<u8>> = (0..pairs)
        .map(|f| frames::build(mac(1), mac(0), MAGIC, f, 0, size.max(60)))
        .collect();
    let sender = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let mut progress = false;
            for (q, f) in flows.iter().enumerate() {
                if a.send(q as u16, &hdr(), f) {
                    n += 1;
                    progress = true;
                }
            }
            if !progress {
                std::thread::yield_now();
            }
        }
        (a, n)
    });
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        b.count_rx();
    }
    let t0 = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    while t0.elapsed().as_secs_f64() < secs {
        let (f, by) = b.count_rx();
        frames += f;
        bytes += by;
        if f == 0 {
            std::thread::yield_now();
        }
    }
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (a, _) = sender.join().expect("sender");
    drop((a, b));
    s.shutdown();
    (frames as f64 / el, bytes as f64 * 8.0 / el / 1e9)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let combos = [
        (RwLockKind::Percpu, SpinLockKind::Pvqspin),
        (RwLockKind::Rwlock, SpinLockKind::Qspin),
    ];
    type Key = (usize, u16, String);
    let mut results: Vec<(Key, Vec<(f64, f64)>)> = Vec::new();
    for _ in 0..rounds {
        for &size in &[64usize, 1500, 65536] {
            for &pairs in &[1u16, 16] {
                for &(gl, ql) in &combos {
                    let r = measure(size, pairs, gl, ql, secs);
                    let key = (size, pairs, format!("{gl}+{ql}"));
                    match results.iter_mut().find(|x| x.0 == key) {
                        Some(x) => x.1.push(r),
                        None => results.push((key, vec![r])),
                    }
                }
            }
        }
    }
    println!("| frame | pairs | locks | frames/s (median) | Gbit/s (median) | runs |");
    println!("|---:|---:|---|---:|---:|---:|");
    for ((size, pairs, key), mut v) in results {
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (fps, gbps) = v[v.len() / 2];
        println!(
            "| {size} | {pairs} | {key} | {fps:.0} | {gbps:.2} | {} |",
            v.len()
        );
    }
}
