//! Offloads: GSO/checksum metadata passed through to a receiver with GUEST_TSO4/GUEST_CSUM,
//! software segmentation and checksum completion for a receiver without them.

mod common;

use common::frames::{self, HELLO};
use common::harness::{hdr, mac, server};
use common::{bit, linux_features, Guest, Opts};
use pvnet_backend::net::csum;
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_net::*;

const PAYLOAD: usize = 20_000;
const MSS: u16 = 1448;

/// An IPv4/TCP frame with `PAYLOAD` bytes and the partial (pseudo-header) checksum that a
/// guest with CSUM offload leaves in the TCP header.
fn tcp_frame(dst: [u8; 6], src: [u8; 6], payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 54 + payload];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (sip, dip) = ([10, 0, 0, src[5]], [10, 0, 0, dst[5]]);
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&sip);
        ip[16..20].copy_from_slice(&dip);
        let c = csum::internet_checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH|ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let pseudo = csum::pseudo_header_v4(&sip, &dip, 6, (20 + payload) as u32);
    f[50..52].copy_from_slice(&csum::fold(pseudo).to_be_bytes());
    f
}

fn offload_hdr(gso: bool) -> [u8; 12] {
    let mut h = hdr();
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    if gso {
        h[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&MSS.to_le_bytes());
    }
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
}

fn collect(g: &mut Guest, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rx = Vec::new();
    let t0 = Instant::now();
    while out.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "got {} of {n} frames",
            out.len()
        );
        rx.clear();
        g.poll_rx(&mut rx);
        for (_, h, f, _) in rx.drain(..) {
            if f.len() >= 46 && u32::from_le_bytes([f[42], f[43], f[44], f[45]]) == HELLO {
                continue;
            }
            out.push((h, f));
        }
    }
    out
}

#[test]
fn gso_passthrough_and_software_segmentation() {
    let s = server("offload", 3, 1, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let p = s.paths().to_vec();
    let opts = |i: usize, features: u64| {
        let mut o = Opts::new(1, 0);
        o.mac = mac(i);
        o.features = features;
        o
    };
    let no_offload = linux_features()
        & !(bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN));
    let mut sender = Guest::connect(&p[0], opts(0, linux_features()));
    let mut a = Guest::connect(&p[1], opts(1, linux_features()));
    let mut b = Guest::connect(&p[2], opts(2, no_offload));
    // Learn A and B (resend until the sender hears both).
    let mut heard = std::collections::HashSet::new();
    let t0 = Instant::now();
    let mut rx = Vec::new();
    while heard.len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "hellos");
        for (g, i) in [(&mut a, 1), (&mut b, 2)] {
            let _ = g.send(
                0,
                &hdr(),
                &frames::build([0xff; 6], mac(i), HELLO, 0, 0, 60),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        rx.clear();
        sender.poll_rx(&mut rx);
        for (_, _, f, _) in rx.drain(..) {
            heard.insert(f[11]);
        }
    }
    // 1. TSO frame to A (GUEST_TSO4 + GUEST_CSUM): one frame, metadata passed through.
    let fa = tcp_frame(mac(1), mac(0), PAYLOAD);
    assert!(sender.send(0, &offload_hdr(true), &fa));
    let got = collect(&mut a, 1);
    assert_eq!(got[0].1, fa, "frame passed through unchanged");
    assert_eq!(got[0].0[1], VIRTIO_NET_HDR_GSO_TCPV4 as u8);
    assert_eq!(u16::from_le_bytes([got[0].0[4], got[0].0[5]]), MSS);
    assert_eq!(got[0].0[0], VIRTIO_NET_HDR_F_NEEDS_CSUM as u8);
    // 2. The same to B (no offloads): MSS-sized segments with valid checksums.
    let fb = tcp_frame(mac(2), mac(0), PAYLOAD);
    assert!(sender.send(0, &offload_hdr(true), &fb));
    let nseg = PAYLOAD.div_ceil(usize::from(MSS));
    let segs = collect(&mut b, nseg);
    let mut payload = Vec::new();
    for (h, f) in &segs {
        assert_eq!(h[0..2], [0, 0], "plain header");
        assert!(f.len() <= 54 + usize::from(MSS));
        assert!(csum::verify_ipv4_header(&f[14..34]), "IPv4 checksum");
        let sip: [u8; 4] = f[26..30].try_into().expect("ip");
        let dip: [u8; 4] = f[30..34].try_into().expect("ip");
        assert!(csum::verify_l4_v4(&sip, &dip, 6, &f[34..]), "TCP checksum");
        payload.extend_from_slice(&f[54..]);
    }
    assert_eq!(payload, fb[54..], "segments reassemble to the payload");
    // 3. A checksum-offloaded (non-GSO) frame to B: checksum completed in software.
    let fc = tcp_frame(mac(2), mac(0), 500);
    assert!(sender.send(0, &offload_hdr(false), &fc));
    let got = collect(&mut b, 1);
    let (h, f) = &got[0];
    assert_eq!(h[0], 0);
    assert_eq!(f.len(), fc.len());
    assert!(csum::verify_l4_v4(
        &[10, 0, 0, 0x10],
        &[10, 0, 0, 0x12],
        6,
        &f[34..]
    ));
    assert_eq!(f[54..], fc[54..]);
    let drops: u64 = (0..3)
        .map(|p| s.switch().ports[p].queue_snapshot(0).total_drops())
        .sum();
    assert_eq!(drops, 0);
    drop((sender, a, b));
    s.shutdown();
}
