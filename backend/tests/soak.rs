//! Soak: one port connects and disconnects over and over (a guest rebooting in a loop) while
//! another port streams to a third. Open fds, threads and resident memory stay flat, and the
//! streaming ports lose nothing, see every frame in order and never stall.
//!
//! `PVNET_SOAK_CYCLES` sets the number of cycles (default 1000; `scripts/test.sh` runs the
//! default).

use pvnet_backend::{Config, Server};
use pvnet_testkit::procstat::{fd_list, quiet, usage, Usage};
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const S: [u8; 6] = [2, 0, 0, 0, 1, 0];
const R: [u8; 6] = [2, 0, 0, 0, 1, 1];
const X: [u8; 6] = [2, 0, 0, 0, 1, 2];
/// UDP source port of the stream's frames (the cycler's frames use another).
const STREAM: u16 = 5000;

fn guest(path: &Path, mac: [u8; 6]) -> TestGuest {
    let cfg = GuestConfig {
        mem_size: 1 << 20,
        mac,
        ..GuestConfig::default()
    };
    let mut g = TestGuest::connect(path, cfg).expect("connect");
    g.post_rx(0, 128, 2048).expect("post");
    g
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the streaming pair saw.
#[derive(Debug, Default)]
struct Stream {
    sent: u32,
    received: u32,
    /// Longest time without a new in-order frame while the stream was running.
    worst_gap: Duration,
}

/// S streams numbered unicast frames to R until `stop`; R checks order and completeness.
fn stream(s_path: &Path, r_path: &Path, sw: &pvnet_backend::Switch, stop: &AtomicBool) -> Stream {
    let mut s = guest(s_path, S);
    let mut r = guest(r_path, R);
    wait("stream rings attached", || {
        sw.ports[0].enabled_pairs() == 1 && sw.ports[1].enabled_pairs() == 1
    });
    let mut st = Stream::default();
    let mut last = Instant::now();
    // Let R's MAC be learnt so the stream is unicast (not flooded to the cycling port).
    let hello = frames::ipv4_udp(
        R,
        frames::BROADCAST,
        [10, 1, 0, 2],
        [10, 1, 0, 255],
        1,
        1,
        b"r",
    );
    r.send(0, &VirtioNetHdr::plain(), &hello).expect("hello");
    let _ = s.recv(0, Duration::from_secs(5)).expect("hello arrives");
    while !stop.load(Ordering::Acquire) || st.received < st.sent {
        assert!(
            last.elapsed() < Duration::from_secs(20),
            "stream stalled at {st:?}"
        );
        if !stop.load(Ordering::Acquire) && st.sent - st.received < 64 {
            let payload = st.sent.to_be_bytes();
            let f = frames::ipv4_udp(S, R, [10, 1, 0, 1], [10, 1, 0, 2], STREAM, 9, &payload);
            match s.send(0, &VirtioNetHdr::plain(), &f) {
                Ok(()) => st.sent += 1,
                Err(_) => {
                    s.reclaim_tx(0);
                }
            }
        }
        // S drains whatever the cycling port floods to it.
        let _ = s.recv_until(None, usize::MAX, Duration::ZERO);
        for (_, rf) in r
            .recv_until(None, 1, Duration::from_millis(1))
            .expect("recv")
        {
            let Some(p) = frames::parse(&rf.frame) else {
                continue;
            };
            if p.ports.map(|(sp, _)| sp) != Some(STREAM) {
                continue; // the cycling port's frames
            }
            let off = p.payload_off.expect("payload");
            let n = u32::from_be_bytes(rf.frame[off..off + 4].try_into().expect("4 bytes"));
            assert_eq!(n, st.received, "stream order / loss");
            st.received += 1;
            st.worst_gap = st.worst_gap.max(last.elapsed());
            last = Instant::now();
        }
    }
    drop((s, r));
    st
}

/// One life of the cycling port: connect, send a broadcast (reaches S and R) and a unicast to
/// R, leave.
fn cycle(srv: &Server, n: u32) {
    let port = &srv.switch().ports[2];
    let mut x = guest(&srv.paths()[2], X);
    wait("cycling port attached", || port.enabled_pairs() == 1);
    let tag = (n & 0xffff) as u16;
    let bc = frames::ipv4_udp(
        X,
        frames::BROADCAST,
        [10, 1, 0, 3],
        [10, 1, 0, 255],
        7,
        tag,
        b"x",
    );
    let uc = frames::ipv4_udp(X, R, [10, 1, 0, 3], [10, 1, 0, 2], 7, tag, b"x");
    x.send(0, &VirtioNetHdr::plain(), &bc).expect("send");
    x.send(0, &VirtioNetHdr::plain(), &uc).expect("send");
    x.disconnect();
    wait("cycling port disconnect noticed", || {
        !port.connected.load(Ordering::Acquire) && srv.grants(2).is_empty()
    });
}

fn check_flat(base: Usage, now: Usage, mid: Usage, cycles: u32) {
    assert!(
        now.fds <= base.fds,
        "open fds {} -> {} over {cycles} cycles\n{}",
        base.fds,
        now.fds,
        fd_list()
    );
    assert!(
        now.threads <= base.threads,
        "threads {} -> {} over {cycles} cycles",
        base.threads,
        now.threads
    );
    // Guest memory mappings (a leaked one is a few lines of /proc/self/maps per cycle);
    // some slack for allocator arenas.
    assert!(
        now.maps <= base.maps + 16,
        "memory mappings {} -> {} over {cycles} cycles",
        base.maps,
        now.maps
    );
    // Memory: no growth over the second half of the run (allocator warm-up happens in the
    // first), and none beyond 16 MiB overall.
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    assert!(
        now.rss <= mid.rss + (4 << 20),
        "RSS grew {:.1} MiB -> {:.1} MiB over the second half of {cycles} cycles",
        mib(mid.rss),
        mib(now.rss)
    );
    assert!(
        now.rss <= base.rss + (16 << 20),
        "RSS grew {:.1} MiB -> {:.1} MiB over {cycles} cycles",
        mib(base.rss),
        mib(now.rss)
    );
}

#[test]
fn reconnect_soak_keeps_the_process_flat() {
    let cycles: u32 = std::env::var("PVNET_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let d = pvnet_testkit::harness::tmpdir("soak");
    let srv = Server::start(Config {
        sockets: (0..3).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: 1,
        // Debug builds on 2 oversubscribed cores: a receiver can be slow to drain.
        backpressure_bound: Duration::from_secs(5),
        ..Config::default()
    })
    .expect("server");
    let sw = srv.switch().clone();
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (st, base, mid, now) = std::thread::scope(|sc| {
        let h = sc.spawn(|| stream(&srv.paths()[0], &srv.paths()[1], &sw, &stop));
        wait("stream running", || {
            sw.ports[1].queue_snapshot(0).rx_frames > 10
        });
        // Warm-up: lazily created state (threads, allocator arenas) comes into being.
        for n in 0..20 {
            cycle(&srv, n);
        }
        let base = quiet();
        let mut mid = base;
        for n in 0..cycles {
            cycle(&srv, n);
            if n == cycles / 2 {
                mid = usage();
            }
        }
        let now = quiet();
        stop.store(true, Ordering::Release);
        (h.join().expect("stream"), base, mid, now)
    });
    let took = t0.elapsed();
    eprintln!(
        "{cycles} cycles in {took:?} ({:?} per cycle); stream {st:?}; base {base:?}, mid {mid:?}, \
         end {now:?}",
        took / cycles.max(1)
    );
    check_flat(base, now, mid, cycles);
    assert!(st.sent > 0 && st.received == st.sent, "{st:?}");
    let conns = sw.ports[2].connections.load(Ordering::Acquire);
    assert_eq!(conns, u64::from(cycles) + 20);
    // The stream lost nothing and dropped nothing.
    for p in 0..2 {
        let q = sw.ports[p].queue_snapshot(0);
        let drops: u64 = q.total_drops() - q.drops_for(pvnet_backend::stats::DropReason::FloodFull);
        assert_eq!(drops, 0, "port {p}: {q:?}");
    }
    srv.shutdown();
}
