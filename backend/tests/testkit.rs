//! The switch driven by pvnet-testkit's guests in the plainest way a test uses them (default
//! configuration, frames built by hand, sent and received in one thread): 2 ports x 16 pairs
//! exchange UDP frames of many sizes both ways, byte-exact and in per-flow order, with
//! mergeable RX buffers re-posted by the kit.

use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::harness::{mac, server};
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use std::time::{Duration, Instant};

const PAIRS: u16 = 16;
const PER_DIR: u32 = 1500;

fn frame(src: usize, dst: usize, flow: u16, seq: u32) -> Vec<u8> {
    let len = [18usize, 100, 1000, 1458, 4000, 9000, 30000][seq as usize % 7];
    let mut payload = vec![0u8; len];
    payload[..4].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in payload.iter_mut().enumerate().skip(4) {
        *b = (i as u32 ^ seq ^ u32::from(flow)) as u8;
    }
    frames::ipv4_udp(
        mac(src),
        mac(dst),
        [10, 0, 0, src as u8],
        [10, 0, 0, dst as u8],
        1000 + flow,
        7,
        &payload,
    )
}

#[test]
fn testkit_guests_exchange_both_ways() {
    let s = server(
        "testkit",
        2,
        PAIRS,
        RwLockKind::Percpu,
        SpinLockKind::Pvqspin,
    );
    let mut g: Vec<TestGuest> = (0..2)
        .map(|i| {
            let cfg = GuestConfig {
                queue_pairs: PAIRS,
                mac: mac(i),
                ..GuestConfig::default()
            };
            let mut t = TestGuest::connect(&s.paths()[i], cfg).expect("connect");
            for p in 0..PAIRS {
                t.post_rx(p, 256, 2048).expect("post_rx");
            }
            t
        })
        .collect();
    for i in 0..2 {
        while s.switch().ports[i].enabled_pairs() < u32::from(PAIRS) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Learning: each guest announces itself (the other receives the broadcast).
    for i in 0..2 {
        let hello = frames::ipv4_udp(
            mac(i),
            [0xff; 6],
            [10, 0, 0, i as u8],
            [10, 0, 0, 255],
            9,
            9,
            b"hi",
        );
        g[i].send(0, &VirtioNetHdr::plain(), &hello).expect("hello");
        let got = g[1 - i]
            .recv_until(None, 1, Duration::from_secs(10))
            .expect("recv");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.frame, hello);
    }
    let mut sent = [0u32; 2];
    let mut next = [[0u32; PAIRS as usize]; 2];
    let mut got = [0u32; 2];
    let t0 = Instant::now();
    while got[0] < PER_DIR || got[1] < PER_DIR {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "sent {sent:?} got {got:?}"
        );
        for i in 0..2 {
            while sent[i] < PER_DIR {
                let flow = (sent[i] % u32::from(PAIRS)) as u16;
                let seq = sent[i] / u32::from(PAIRS);
                let f = frame(i, 1 - i, flow, seq);
                if g[i].send(flow, &VirtioNetHdr::plain(), &f).is_err() {
                    break;
                }
                sent[i] += 1;
            }
        }
        for r in 0..2 {
            let frames = g[r].recv_until(None, 0, Duration::ZERO).expect("recv");
            for (_, rx) in frames {
                let p = frames::parse(&rx.frame).expect("parse");
                let l4 = p.l4_off.expect("UDP");
                let flow = u16::from_be_bytes([rx.frame[l4], rx.frame[l4 + 1]]) - 1000;
                let seq = next[r][usize::from(flow)];
                assert_eq!(
                    rx.frame,
                    frame(1 - r, r, flow, seq),
                    "guest {r} flow {flow}"
                );
                next[r][usize::from(flow)] += 1;
                got[r] += 1;
            }
        }
    }
    for t in g {
        t.disconnect();
    }
    s.shutdown();
}
