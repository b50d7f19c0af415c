//! A port's frontend disconnects in the middle of traffic and reconnects with a new memory
//! table: the other ports keep switching without loss, and the reconnected port works again.

use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::frames::tagged::{self as frames, HELLO, MAGIC};
use pvnet_testkit::harness::{connect, mac, run, server, wait_enabled, Run};
use pvnet_testkit::{TestGuest, VirtioNetHdr};
use std::time::{Duration, Instant};

fn guest(path: &std::path::Path, i: usize) -> TestGuest {
    connect(path, 4, mac(i))
}

/// Receives until `want` holds for a received frame; false after 20 s.
#[must_use]
fn recv_until(g: &mut TestGuest, mut want: impl FnMut(u32, [u8; 6], u16, u32) -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if t0.elapsed() > Duration::from_secs(20) {
            return false;
        }
        for (_, r) in g.poll_rx().expect("receive") {
            let (m, src, flow, seq) = frames::check(&r.frame).expect("intact");
            if want(m, src, flow, seq) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn diag(s: &pvnet_backend::Server) -> String {
    let sw = s.switch();
    (2..4)
        .map(|p| {
            let port = &sw.ports[p];
            let mut t = pvnet_backend::stats::QueueSnapshot::default();
            for q in 0..4 {
                t.add(&port.queue_snapshot(q));
            }
            format!(
                "port {p}: enabled {:#x} connected {:?} {t:?}\n",
                port.enabled.load(std::sync::atomic::Ordering::Relaxed),
                port.connected
            )
        })
        .collect()
}

fn send(g: &mut TestGuest, f: &[u8]) {
    g.send_wait(0, &VirtioNetHdr::plain(), f, Duration::from_secs(10))
        .expect("TX ring stuck");
}

#[test]
fn reconnect_mid_traffic_other_ports_unaffected() {
    let s = server("reconnect", 4, 4, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let paths = s.paths().to_vec();
    // Ports 0 and 1: steady traffic during the whole test.
    let mut r = Run::new(2, 4, 4000);
    r.strict = false;
    let steady = std::thread::scope(|sc| {
        let h = sc.spawn(|| run(&s, &r));
        // Ports 2 (C) and 3 (D): D streams to C; C goes away and comes back.
        let mut c = guest(&paths[2], 2);
        let mut d = guest(&paths[3], 3);
        wait_enabled(s.switch(), 2, 4);
        wait_enabled(s.switch(), 3, 4);
        send(&mut c, &frames::build([0xff; 6], mac(2), HELLO, 0, 0, 60));
        assert!(
            recv_until(&mut d, |m, src, _, _| m == HELLO && src == mac(2)),
            "{}",
            diag(&s)
        );
        let mut seq = 0u32;
        for _ in 0..200 {
            send(&mut d, &frames::build(mac(2), mac(3), MAGIC, 1, seq, 1500));
            seq += 1;
        }
        assert!(
            recv_until(&mut c, |m, _, flow, s| m == MAGIC && flow == 1 && s == 99),
            "{}",
            diag(&s)
        );
        // C disconnects while D keeps sending (unicast to an unknown MAC floods or drops).
        drop(c);
        for _ in 0..300 {
            send(&mut d, &frames::build(mac(2), mac(3), MAGIC, 1, seq, 1500));
            seq += 1;
        }
        let t0 = Instant::now();
        while d.tx_in_flight(0) > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "D's TX stalled by the dead port"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let port2 = &s.switch().ports[2];
        let t0 = Instant::now();
        while port2.connected.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "disconnect not noticed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        while !s.grants(2).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "grants not revoked");
            std::thread::sleep(Duration::from_millis(1));
        }
        // C comes back with fresh memory (new memfds, new memory table).
        let mut c = guest(&paths[2], 2);
        wait_enabled(s.switch(), 2, 4);
        assert_eq!(
            s.grants(2).len(),
            c.memory_regions().len(),
            "new memory table granted"
        );
        send(&mut c, &frames::build([0xff; 6], mac(2), HELLO, 0, 1, 60));
        assert!(
            recv_until(&mut d, |m, src, _, s| m == HELLO && src == mac(2) && s == 1),
            "{}",
            diag(&s)
        );
        // Stream again, receiving while sending (the RX ring holds fewer frames than sent).
        let (mut next, mut k) = (0u32, 0u32);
        let t0 = Instant::now();
        while next < 500 {
            assert!(t0.elapsed() < Duration::from_secs(30), "{}", diag(&s));
            if k < 500 {
                let f = frames::build(mac(2), mac(3), MAGIC, 2, k, 60 + k as usize * 7);
                if d.try_send(0, &VirtioNetHdr::plain(), &f).expect("send") {
                    k += 1;
                }
            }
            for (_, r) in c.poll_rx().expect("receive") {
                let (m, _, flow, seq) = frames::check(&r.frame).expect("intact");
                if m == MAGIC && flow == 2 {
                    assert_eq!(seq, next, "reconnected port: order");
                    next += 1;
                }
            }
        }
        assert_eq!(
            port2.connections.load(std::sync::atomic::Ordering::Acquire),
            2
        );
        h.join().expect("steady traffic")
    });
    for g in &steady {
        assert_eq!(g.received, 4000, "{g:?}");
    }
    // No loss on the steady ports.
    let sw = s.switch();
    for p in 0..2 {
        for q in 0..4 {
            assert_eq!(
                sw.ports[p].queue_snapshot(q).total_drops(),
                0,
                "port {p} queue {q}"
            );
        }
    }
    s.shutdown();
}
