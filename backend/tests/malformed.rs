//! Hostile TX chains are dropped and counted per reason; the ring keeps moving and good
//! traffic on another queue of the same port continues.

mod common;

use common::frames::{self, MAGIC};
use common::harness::{hdr, mac, server};
use common::{Guest, Opts, F_INDIRECT, F_NEXT, F_WRITE};
use pvnet_backend::stats::Drop;
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::time::{Duration, Instant};

#[test]
fn malformed_chains_dropped_and_counted() {
    let s = server("malformed", 2, 2, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let paths = s.paths().to_vec();
    let mut opts_a = Opts::new(2, 0);
    opts_a.mac = mac(0);
    let mut opts_b = Opts::new(2, 0);
    opts_b.mac = mac(1);
    let mut a = Guest::connect(&paths[0], opts_a);
    let mut b = Guest::connect(&paths[1], opts_b);
    // Learning: B says hello.
    let hello = frames::build([0xff; 6], mac(1), frames::HELLO, 0, 0, 60);
    let mut rx = Vec::new();
    let t0 = Instant::now();
    while rx.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "hello never arrived"
        );
        let _ = b.send(0, &hdr(), &hello);
        std::thread::sleep(Duration::from_millis(20));
        a.poll_rx(&mut rx);
    }
    b.poll_rx(&mut Vec::new());
    let data = a.scratch;
    // A plausible frame in guest memory for chains that only break one rule.
    let good = frames::build(mac(1), mac(0), MAGIC, 9, 0, 100);
    let mut with_hdr = vec![0u8; 12];
    with_hdr.extend_from_slice(&good);
    vm_memory::Bytes::write_slice(&a.mem, &with_hdr, vm_memory::GuestAddress(data)).expect("write");
    let len = with_hdr.len() as u32;
    type Chain = Vec<(u16, u64, u32, u16, u16)>;
    let bad: Vec<(Drop, Chain)> = vec![
        (Drop::NotGranted, vec![(40, 0x7_0000_0000, len, 0, 0)]),
        (Drop::NotGranted, vec![(40, 2 * (40 << 20) - 50, 100, 0, 0)]),
        (Drop::WritableInTx, vec![(40, data, len, F_WRITE, 0)]),
        (
            Drop::ChainLoop,
            vec![(40, data, 12, F_NEXT, 41), (41, data + 12, 100, F_NEXT, 40)],
        ),
        (Drop::ChainLoop, vec![(40, data, 12, F_NEXT, 40)]),
        (Drop::TooShort, vec![(40, data, 8, 0, 0)]),
        (Drop::TooShort, vec![(40, data, 20, 0, 0)]),
        (Drop::TooLarge, vec![(40, data, 70_000 + 12, 0, 0)]),
        (Drop::BadChain, vec![(40, 0x7_0000_0000, 64, F_INDIRECT, 0)]),
        (Drop::ChainLoop, vec![(40, data, len, F_NEXT, 4000)]),
    ];
    let mut expected = [0u64; pvnet_backend::stats::NR_DROPS];
    let mut sent_good = 0u32;
    let mut got_good = 0u32;
    for (reason, chain) in &bad {
        expected[*reason as usize] += 1;
        // Interleave: a hostile chain on pair 1, good frames on pair 0.
        a.send_chain(1, chain);
        for _ in 0..10 {
            let f = frames::build(mac(1), mac(0), MAGIC, 0, sent_good, 60 + sent_good as usize);
            while !a.send(0, &hdr(), &f) {
                std::thread::yield_now();
            }
            sent_good += 1;
        }
        // The hostile chain must come back before the next one is written.
        let t0 = Instant::now();
        let mut returned = 0;
        while returned == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "ring stuck after {reason:?}"
            );
            returned += a.reclaim_tx(1);
        }
        assert_eq!(returned, 1);
        let t0 = Instant::now();
        let port = &s.switch().ports[0];
        while port.tx[1].drops(*reason) < expected[*reason as usize] {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{reason:?} not counted"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let t0 = Instant::now();
    while got_good < sent_good {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "good traffic stalled"
        );
        rx.clear();
        b.poll_rx(&mut rx);
        for (_, _, f, _) in rx.drain(..) {
            let (m, _, flow, seq) = frames::check(&f).expect("intact");
            assert_eq!((m, flow, seq), (MAGIC, 0, got_good));
            got_good += 1;
        }
    }
    let snap = s.switch().ports[0].queue_snapshot(1);
    for d in Drop::ALL {
        assert_eq!(snap.drops_for(d), expected[d as usize], "{d:?}");
    }
    assert_eq!(s.switch().ports[0].queue_snapshot(0).total_drops(), 0);
    drop(a);
    drop(b);
    s.shutdown();
}
