//! A port connected and disconnected over and over keeps the process flat: open file
//! descriptors and threads return to where they were, with 1 and with 16 queue pairs, also
//! when the port's workers were held back by a full receiver that never drains (a waiter
//! list must not keep a dead connection's eventfd open).

use pvnet_backend::{Config, Server};
use pvnet_testkit::procstat::{fd_list, quiet};
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn guest(path: &Path, pairs: u16, mac: [u8; 6]) -> TestGuest {
    let cfg = GuestConfig {
        queue_pairs: pairs,
        mem_size: 1 << 20,
        mac,
        ..GuestConfig::default()
    };
    TestGuest::connect(path, cfg).expect("connect")
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One life of port 1: connect, receive A's broadcast, send to A (whose ring is full), leave.
fn cycle(s: &Server, a: &mut TestGuest, pairs: u16, n: u16) {
    let port = &s.switch().ports[1];
    let mut b = guest(&s.paths()[1], pairs, B);
    for p in 0..pairs {
        b.post_rx(p, 8, 2048).expect("post");
    }
    wait("port 1 rings attached", || {
        port.enabled_pairs() == u32::from(pairs)
    });
    let hello = frames::ipv4_udp(
        A,
        frames::BROADCAST,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        7,
        n,
        b"hi",
    );
    a.send(0, &VirtioNetHdr::plain(), &hello).expect("A sends");
    let got = b
        .recv_until(None, 1, Duration::from_secs(10))
        .expect("recv");
    assert!(!got.is_empty(), "B received A's broadcast");
    // To A, whose RX rings never get a buffer: B's workers are held back (registered as
    // waiters on A's rings) when B leaves. The bound is long enough that no wait ends in the
    // test, so every cycle leaves waiters behind on A's rings.
    let held = || -> u64 {
        (0..usize::from(pairs))
            .map(|q| s.switch().ports[1].queue_snapshot(q).backpressure)
            .sum()
    };
    let before = held();
    let f = frames::ipv4_udp(B, A, [10, 0, 0, 2], [10, 0, 0, 1], 7, n, b"to a");
    for q in 0..pairs {
        b.send(q, &VirtioNetHdr::plain(), &f).expect("B sends");
    }
    let t0 = Instant::now();
    while held() == before {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "B never held back (cycle {n}): {:?} / A {:?}",
            s.switch().ports[1].queue_snapshot(0),
            s.switch().ports[0].queue_snapshot(0)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    b.disconnect();
    wait("port 1 disconnect noticed, grants revoked", || {
        !port.connected.load(Ordering::Acquire) && s.grants(1).is_empty()
    });
}

fn reconnect_flat(pairs: u16, cycles: u16, pmd_threads: u16) {
    let d = pvnet_testkit::harness::tmpdir(&format!("lifecycle-{pairs}-{pmd_threads}"));
    let s = Server::start(Config {
        sockets: vec![d.join("a.sock"), d.join("b.sock")],
        queue_pairs: pairs,
        pmd_threads,
        backpressure_bound: Duration::from_secs(60),
        ..Config::default()
    })
    .expect("server");
    // A: connected throughout, never posts RX buffers.
    let mut a = guest(&s.paths()[0], pairs, A);
    wait("port 0 rings attached", || {
        s.switch().ports[0].enabled_pairs() == u32::from(pairs)
    });
    // Warm-up: whatever is created once per process or per port comes into being here.
    cycle(&s, &mut a, pairs, 0);
    let base = quiet();
    for n in 1..=cycles {
        cycle(&s, &mut a, pairs, n);
    }
    let after = quiet();
    let bp: u64 = (0..usize::from(pairs))
        .map(|q| s.switch().ports[1].queue_snapshot(q).backpressure)
        .sum();
    assert!(
        bp >= u64::from(cycles),
        "port 1 was held back only {bp} times in {cycles} cycles"
    );
    assert!(
        after.fds <= base.fds,
        "{pairs} pairs: open fds {} -> {} after {cycles} reconnects\n{}",
        base.fds,
        after.fds,
        fd_list()
    );
    assert!(
        after.threads <= base.threads,
        "{pairs} pairs: threads {} -> {} after {cycles} reconnects",
        base.threads,
        after.threads
    );
    eprintln!("{pairs} pairs, {cycles} reconnects: base {base:?}, after {after:?}");
    drop(a);
    s.shutdown();
}

/// Both sizes and both thread layouts in one test: the counts are per process, a parallel
/// test would disturb them. With `--pmd-threads` a polling thread that kept a closed
/// connection's device would keep its workers' timer fds open.
#[test]
fn reconnects_leak_no_fds_or_threads() {
    reconnect_flat(1, 20, 0);
    reconnect_flat(16, 10, 0);
    reconnect_flat(16, 10, 2);
    polling_threads_end_with_a_dropped_server();
}

/// Names of this process's threads that start with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// A server dropped without `shutdown` (as when its start fails after the polling threads
/// started) leaves no polling thread behind.
fn polling_threads_end_with_a_dropped_server() {
    let d = pvnet_testkit::harness::tmpdir("lifecycle-drop");
    let s = Server::start(Config {
        sockets: vec![d.join("a.sock")],
        pmd_threads: 2,
        ..Config::default()
    })
    .expect("server");
    wait("polling threads named", || threads_named("pvnet-pmd") == 2);
    drop(s);
    wait("polling threads gone", || threads_named("pvnet-pmd") == 0);
}
