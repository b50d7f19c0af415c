//! Feature variants: EVENT_IDX off, receivers without mergeable RX buffers, a legacy
//! (10-byte header) guest talking to a modern one, and the device config space.

use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::features::{self as f, pvnet_offered};
use pvnet_testkit::harness::{run, server, Run};

fn no_drops(s: &pvnet_backend::Server, pairs: usize) {
    let sw = s.switch();
    for p in 0..sw.ports.len() {
        for q in 0..pairs {
            assert_eq!(
                sw.ports[p].queue_snapshot(q).total_drops(),
                0,
                "port {p} queue {q}"
            );
        }
    }
}

#[test]
fn event_idx_off() {
    let s = server("noevidx", 2, 4, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let mut r = Run::new(2, 4, 1000);
    for g in r.guests.iter_mut() {
        g.features = pvnet_offered() & !f::EVENT_IDX;
    }
    let seen = run(&s, &r);
    assert!(seen.iter().all(|g| g.received == 1000));
    no_drops(&s, 4);
    // Without EVENT_IDX every processed batch notifies the guest.
    let snap = s.switch().ports[1].queue_snapshot(0);
    assert!(
        snap.rx_notifications > 0 && snap.tx_notifications > 0,
        "{snap:?}"
    );
    // The guests' kicks are counted: frames posted on TX, buffers reposted on RX.
    let sw = s.switch();
    let kicks = |p: usize| {
        (0..4)
            .map(|q| sw.ports[p].queue_snapshot(q))
            .fold((0, 0), |k, q| (k.0 + q.tx_kicks, k.1 + q.rx_kicks))
    };
    for p in 0..2 {
        let (tx, rx) = kicks(p);
        assert!(
            tx > 0 && tx <= 1000,
            "port {p}: {tx} TX kicks for 1000 frames"
        );
        assert!(rx > 0, "port {p}: no RX kicks counted");
    }
    s.shutdown();
}

#[test]
fn event_idx_on_notifies_less_than_once_per_frame() {
    let s = server("evidx", 2, 1, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let seen = run(&s, &Run::new(2, 1, 1000));
    assert!(seen.iter().all(|g| g.received == 1000));
    let snap = s.switch().ports[1].queue_snapshot(0);
    assert!(snap.rx_notifications > 0, "{snap:?}");
    assert!(snap.rx_notifications <= snap.rx_frames, "{snap:?}");
    s.shutdown();
}

#[test]
fn tx_bursts_are_counted() {
    let s = server("bursts", 2, 1, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let seen = run(&s, &Run::new(2, 1, 1000));
    assert!(seen.iter().all(|g| g.received == 1000));
    let burst = pvnet_backend::datapath::burst::BURST as u64;
    for p in 0..2 {
        let snap = s.switch().ports[p].queue_snapshot(0);
        // Every frame came in some non-empty burst, at most BURST of them in each.
        assert!(
            snap.tx_bursts > 0
                && snap.tx_bursts <= snap.tx_frames
                && snap.tx_frames <= burst * snap.tx_bursts,
            "port {p}: {snap:?}"
        );
    }
    s.shutdown();
}

#[test]
fn busy_time_is_counted_within_the_wall_time() {
    // Every port's workers moved frames: each counted some busy time, and no more than its
    // threads (at most one per pair) had wall time.
    let pairs = 2;
    let s = server("busy", 2, pairs, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let t0 = std::time::Instant::now();
    let seen = run(&s, &Run::new(2, pairs, 1000));
    let wall = t0.elapsed().as_nanos() as u64;
    assert!(seen.iter().all(|g| g.received == 1000));
    for p in 0..2 {
        let busy: u64 = (0..usize::from(pairs))
            .map(|q| s.switch().ports[p].queue_snapshot(q).busy_ns)
            .sum();
        assert!(
            busy > 0 && busy <= wall * u64::from(pairs),
            "port {p}: busy {busy} ns in {wall} ns"
        );
    }
    s.shutdown();
}

#[test]
fn big_buffers_without_mergeable_and_legacy_header() {
    let s = server("nomrg", 2, 2, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let mut r = Run::new(2, 2, 400);
    // Guest 0: modern without MRG_RXBUF (one 66 KiB buffer per frame, 12-byte header).
    r.guests[0].features = pvnet_offered() & !f::MRG_RXBUF;
    // Guest 1: legacy layout (no VERSION_1, no MRG_RXBUF: 10-byte header).
    r.guests[1].features = pvnet_offered() & !f::MRG_RXBUF & !f::VERSION_1;
    for g in r.guests.iter_mut() {
        g.queue_size = 64;
        g.rx_fill = Some(66 * 1024);
    }
    let seen = run(&s, &r);
    for g in &seen {
        assert_eq!(g.received, 400);
        assert_eq!(g.max_buffers, 1);
    }
    no_drops(&s, 2);
    s.shutdown();
}

#[test]
fn config_space() {
    let s = server("config", 1, 3, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let mut g = pvnet_testkit::harness::connect(&s.paths()[0], 3, [2, 0, 0, 0, 0, 1]);
    let c = g.config().expect("GET_CONFIG");
    assert_eq!(c.mac, s.switch().ports[0].mac);
    assert_eq!(c.status, 1, "link up");
    assert_eq!(c.max_virtqueue_pairs, 3);
    drop(g);
    s.shutdown();
}
