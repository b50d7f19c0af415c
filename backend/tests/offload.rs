//! Offloads: GSO/checksum metadata passed through to a receiver with GUEST_TSO4/GUEST_CSUM,
//! software segmentation and checksum completion for a receiver without them.

use pvnet_backend::net::hdr::{GSO_NONE, GSO_TCPV4, NEEDS_CSUM};
use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::features::{self as f, pvnet_offered};
use pvnet_testkit::frames::{self, tagged, ETH_HLEN};
use pvnet_testkit::harness::{guest_config, mac, server};
use pvnet_testkit::{RxFrame, TestGuest, VirtioNetHdr};
use std::time::{Duration, Instant};

const PAYLOAD: usize = 20_000;
const MSS: u16 = 1448;
/// Ethernet + IPv4 + TCP headers of the test frames.
const HDRS: usize = ETH_HLEN + 20 + 20;

/// An IPv4/TCP frame (ports 40000 -> 5201) with `payload` bytes and valid checksums.
fn tcp_frame(dst: [u8; 6], src: [u8; 6], payload: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
    let (sip, dip) = ([10, 0, 0, src[5]], [10, 0, 0, dst[5]]);
    frames::ipv4_tcp(src, dst, sip, dip, 40000, 5201, 1000, &data)
}

/// What a guest with CSUM (and, with `gso`, TSO) offload sends for `full`: the partial
/// (pseudo-header) checksum in the TCP header and a header asking for the rest.
fn offloaded(full: &[u8], gso: bool) -> (VirtioNetHdr, Vec<u8>) {
    let (h, partial) = frames::partial_csum(full).expect("TCP frame");
    assert_eq!((h.csum_start, h.csum_offset), (34, 16));
    let h = if gso {
        frames::tso_hdr(true, 34, HDRS as u16, MSS)
    } else {
        h
    };
    (h, partial)
}

/// `n` frames received by `g` (hellos skipped).
fn collect(g: &mut TestGuest, n: usize) -> Vec<RxFrame> {
    let mut out = Vec::new();
    let t0 = Instant::now();
    while out.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "got {} of {n} frames",
            out.len()
        );
        for (_, r) in g.poll_rx().expect("receive") {
            if tagged::check(&r.frame).is_ok_and(|t| t.0 == tagged::HELLO) {
                continue;
            }
            out.push(r);
        }
    }
    out
}

#[test]
fn gso_passthrough_and_software_segmentation() {
    let s = server("offload", 3, 1, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let p = s.paths().to_vec();
    let guest = |i: usize, features: u64| {
        let cfg = pvnet_testkit::GuestConfig {
            features,
            ..guest_config(1, mac(i))
        };
        TestGuest::connect(&p[i], cfg).expect("connect")
    };
    let no_offload =
        pvnet_offered() & !(f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::GUEST_ECN);
    let mut sender = guest(0, pvnet_offered());
    let mut a = guest(1, pvnet_offered());
    let mut b = guest(2, no_offload);
    let plain = VirtioNetHdr::plain();
    // Learn A and B (resend until the sender hears both).
    let mut heard = std::collections::HashSet::new();
    let t0 = Instant::now();
    while heard.len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "hellos");
        for (g, i) in [(&mut a, 1), (&mut b, 2)] {
            let hello = tagged::build([0xff; 6], mac(i), tagged::HELLO, 0, 0, 60);
            g.try_send(0, &plain, &hello).expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
        for (_, r) in sender.poll_rx().expect("receive") {
            heard.insert(r.frame[11]);
        }
    }
    // 1. TSO frame to A (GUEST_TSO4 + GUEST_CSUM): one frame, metadata passed through.
    let (h, fa) = offloaded(&tcp_frame(mac(1), mac(0), PAYLOAD), true);
    sender.send(0, &h, &fa).expect("send");
    let got = collect(&mut a, 1);
    assert_eq!(got[0].frame, fa, "frame passed through unchanged");
    assert_eq!(got[0].hdr.gso_type, GSO_TCPV4);
    assert_eq!(got[0].hdr.gso_size, MSS);
    assert_eq!(got[0].hdr.flags, NEEDS_CSUM);
    // 2. The same to B (no offloads): MSS-sized segments with valid checksums.
    let full = tcp_frame(mac(2), mac(0), PAYLOAD);
    let (h, fb) = offloaded(&full, true);
    sender.send(0, &h, &fb).expect("send");
    let nseg = PAYLOAD.div_ceil(usize::from(MSS));
    let segs = collect(&mut b, nseg);
    let mut payload = Vec::new();
    for r in &segs {
        assert_eq!((r.hdr.flags, r.hdr.gso_type), (0, GSO_NONE), "plain header");
        assert!(r.frame.len() <= HDRS + usize::from(MSS));
        assert_eq!(frames::verify_checksums(&r.frame), Ok(()));
        payload.extend_from_slice(&r.frame[HDRS..]);
    }
    assert_eq!(payload, full[HDRS..], "segments reassemble to the payload");
    // 3. A checksum-offloaded (non-GSO) frame to B: checksum completed in software, which
    //    gives back the complete frame.
    let full = tcp_frame(mac(2), mac(0), 500);
    let (h, fc) = offloaded(&full, false);
    sender.send(0, &h, &fc).expect("send");
    let got = collect(&mut b, 1);
    assert_eq!(got[0].hdr.flags, 0);
    assert_eq!(frames::verify_checksums(&got[0].frame), Ok(()));
    assert_eq!(got[0].frame, full);
    // 4. A TSO frame cut into more segments than a TX burst holds frames (BURST, 64), all
    //    offered to B at once: every segment arrives, in order.
    let full = tcp_frame(mac(2), mac(0), 60_000);
    let (_, partial) = frames::partial_csum(&full).expect("TCP frame");
    let small_mss = 500;
    let h = frames::tso_hdr(true, 34, HDRS as u16, small_mss);
    sender.send(0, &h, &partial).expect("send");
    let nseg = 60_000usize.div_ceil(usize::from(small_mss));
    assert!(nseg > pvnet_backend::datapath::burst::BURST);
    let segs = collect(&mut b, nseg);
    let payload: Vec<u8> = segs.iter().flat_map(|r| r.frame[HDRS..].to_vec()).collect();
    assert_eq!(payload, full[HDRS..], "segments arrive whole and in order");
    let drops: u64 = (0..3)
        .map(|p| s.switch().ports[p].queue_snapshot(0).total_drops())
        .sum();
    assert_eq!(drops, 0);
    drop((sender, a, b));
    s.shutdown();
}
