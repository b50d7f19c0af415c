//! Hostile TX chains are dropped and counted per reason; the ring keeps moving and good
//! traffic on another queue of the same port continues.

use pvnet_backend::stats::DropReason;
use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::frames::tagged::{self as frames, MAGIC};
use pvnet_testkit::harness::{connect, mac, server};
use pvnet_testkit::{desc, RawDesc, RawNext, VirtioNetHdr};
use std::time::{Duration, Instant};

#[test]
fn malformed_chains_dropped_and_counted() {
    let s = server("malformed", 2, 2, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let paths = s.paths().to_vec();
    let mut a = connect(&paths[0], 2, mac(0));
    let mut b = connect(&paths[1], 2, mac(1));
    let plain = VirtioNetHdr::plain();
    // Learning: B says hello.
    let hello = frames::build([0xff; 6], mac(1), frames::HELLO, 0, 0, 60);
    let t0 = Instant::now();
    while a.poll_rx().expect("receive").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "hello never arrived"
        );
        b.try_send(0, &plain, &hello).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.poll_rx().expect("receive");
    // A plausible frame in guest memory for chains that only break one rule, with room
    // behind it for the oversized one.
    let good = frames::build(mac(1), mac(0), MAGIC, 9, 0, 100);
    let mut with_hdr = plain.to_bytes().to_vec();
    with_hdr.extend_from_slice(&good);
    let data = a.alloc(128 << 10).expect("alloc");
    a.write_guest(data, &with_hdr).expect("write");
    let len = with_hdr.len() as u32;
    // The end of the low memory span: a buffer there runs into the gap.
    let (low, low_len) = a.memory_regions()[1];
    let d = RawDesc::new;
    let (next, write, indirect) = (desc::NEXT, desc::WRITE, desc::INDIRECT);
    let bad: Vec<(DropReason, Vec<RawDesc>)> = vec![
        (DropReason::NotGranted, vec![d(0x7_0000_0000, len, 0)]),
        (DropReason::NotGranted, vec![d(low + low_len - 50, 100, 0)]),
        (DropReason::WritableInTx, vec![d(data, len, write)]),
        (
            DropReason::ChainLoop,
            vec![
                d(data, 12, next),
                d(data + 12, 100, next).next(RawNext::Chain(0)),
            ],
        ),
        (
            DropReason::ChainLoop,
            vec![d(data, 12, next).next(RawNext::Chain(0))],
        ),
        (DropReason::TooShort, vec![d(data, 8, 0)]),
        (DropReason::TooShort, vec![d(data, 20, 0)]),
        (DropReason::TooLarge, vec![d(data, 70_000 + 12, 0)]),
        (DropReason::BadChain, vec![d(0x7_0000_0000, 64, indirect)]),
        (
            DropReason::ChainLoop,
            vec![d(data, len, next).next(RawNext::Raw(4000))],
        ),
    ];
    let mut expected = [0u64; pvnet_backend::stats::NR_DROPS];
    let mut sent_good = 0u32;
    let mut got_good = 0u32;
    for (reason, chain) in &bad {
        expected[*reason as usize] += 1;
        // Interleave: a hostile chain on pair 1, good frames on pair 0.
        a.send_chain(1, chain).expect("hostile chain");
        for _ in 0..10 {
            let f = frames::build(mac(1), mac(0), MAGIC, 0, sent_good, 60 + sent_good as usize);
            a.send_wait(0, &plain, &f, Duration::from_secs(10))
                .expect("send");
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
        for (_, r) in b.poll_rx().expect("receive") {
            let (m, _, flow, seq) = frames::check(&r.frame).expect("intact");
            assert_eq!((m, flow, seq), (MAGIC, 0, got_good));
            got_good += 1;
        }
    }
    let snap = s.switch().ports[0].queue_snapshot(1);
    for d in DropReason::ALL {
        assert_eq!(snap.drops_for(d), expected[d as usize], "{d:?}");
    }
    assert_eq!(s.switch().ports[0].queue_snapshot(0).total_drops(), 0);
    drop(a);
    drop(b);
    s.shutdown();
}
