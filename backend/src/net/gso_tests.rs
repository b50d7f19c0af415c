//! Tests for software segmentation and offload planning.

use super::*;
use crate::net::csum::{verify_ipv4_header, verify_l4_v4, verify_l4_v6};
use crate::net::eth::{parse_packet, L3Hdr, ETH_HLEN};
use crate::net::hdr::{DATA_VALID, GSO_ECN, NEEDS_CSUM};
use crate::net::testutil::*;

fn tso4_hdr(gso_size: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// A GSO TCP/IPv4 frame as a guest hands it over: the TCP checksum field holds only the
/// pseudo-header sum.
fn gso_v4(payload: &[u8], seq: u32, flags: u8, opts: &[u8]) -> Vec<u8> {
    let mut f = tcp_v4_frame_opts(payload, seq, flags, 4321, opts);
    let l4_len = (f.len() - 34) as u32;
    make_partial(
        &mut f,
        34,
        16,
        pseudo_header_v4(&IP4_A, &IP4_B, IPPROTO_TCP, l4_len),
    );
    f
}

fn gso_v6(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
    let mut f = tcp_v6_frame(payload, seq, flags, 4321);
    let l4_len = (f.len() - 54) as u32;
    make_partial(
        &mut f,
        54,
        16,
        pseudo_header_v6(&IP6_A, &IP6_B, IPPROTO_TCP, l4_len),
    );
    f
}

fn collect(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<Vec<Vec<u8>>, InvalidGso> {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let mut out = Vec::new();
    let n = segment_all(hdr, frame, &mut scratch, |h, f| {
        assert_eq!(*h, VirtioNetHdr::plain());
        out.push(f.to_vec());
    })?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// Checks every TCP segment and returns the concatenated payload.
fn check_tcp_segments(segs: &[Vec<u8>], orig: &[u8], gso: usize, seq0: u32, flags0: u8) -> Vec<u8> {
    let p0 = parse_packet(orig).unwrap();
    let hl = p0.l4.unwrap().payload_offset();
    let mut data = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let p = parse_packet(s).unwrap();
        let l4 = p.l4.unwrap();
        assert_eq!(l4.payload_offset(), hl, "headers keep their size");
        let chunk = s.len() - hl;
        if !last {
            assert_eq!(chunk, gso, "segment {i} is a full MSS");
        } else {
            assert!(chunk <= gso && chunk > 0);
        }
        assert_eq!(
            l4.seq,
            seq0.wrapping_add(data.len() as u32),
            "seq of segment {i}"
        );
        let mut want = flags0;
        if i > 0 {
            want &= !TCP_CWR;
        }
        if !last {
            want &= !(TCP_FIN | TCP_PSH);
        }
        assert_eq!(l4.tcp_flags, want, "flags of segment {i}");
        assert_eq!(
            s[..l4.offset + 4],
            orig[..l4.offset + 4]
                .iter()
                .enumerate()
                .map(|(k, &b)| {
                    // Only IP length / id / checksum may differ in the L3 header; compare the rest.
                    if k < ETH_HLEN {
                        b
                    } else {
                        s[k]
                    }
                })
                .collect::<Vec<_>>()[..]
        );
        match p.l3.unwrap() {
            L3Hdr::V4(ip) => {
                assert_eq!(ip.total_len, s.len() - ETH_HLEN);
                let L3Hdr::V4(o) = p0.l3.unwrap() else {
                    panic!()
                };
                assert_eq!(ip.id, o.id.wrapping_add(i as u16));
                assert_eq!((ip.src, ip.dst, ip.protocol), (o.src, o.dst, o.protocol));
                assert!(verify_ipv4_header(&s[ip.offset..ip.offset + ip.header_len]));
                assert!(verify_l4_v4(&ip.src, &ip.dst, IPPROTO_TCP, &s[l4.offset..]));
            }
            L3Hdr::V6(ip) => {
                assert_eq!(ip.payload_len, s.len() - ip.offset - IPV6_HLEN);
                assert!(verify_l4_v6(&ip.src, &ip.dst, IPPROTO_TCP, &s[l4.offset..]));
            }
        }
        // Options and the rest of the TCP header after the checksum are copied.
        assert_eq!(s[l4.offset + 18..hl], orig[l4.offset + 18..hl]);
        data.extend_from_slice(&s[hl..]);
    }
    data
}

#[test]
fn tso4_64k_various_mss() {
    let pl = payload(65_000);
    let flags = TCP_CWR | TCP_PSH | TCP_FIN | 0x10;
    let f = gso_v4(&pl, 0xffff_f000, flags, &[]);
    for gso in [64usize, 536, 1448, 1460, 8948, 32_000, 65_000, 65_495] {
        let segs = collect(&tso4_hdr(gso as u16), &f).unwrap();
        assert_eq!(segs.len(), pl.len().div_ceil(gso), "gso {gso}");
        let data = check_tcp_segments(&segs, &f, gso, 0xffff_f000, flags);
        assert!(data == pl, "payload mismatch for gso {gso}");
    }
}

#[test]
fn tso4_with_options_and_ecn() {
    // Timestamps option (NOP NOP TS 10 …), 12 bytes.
    let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let pl = payload(10_000);
    let f = gso_v4(&pl, 7, TCP_CWR | 0x10, &opts);
    let mut h = tso4_hdr(1448);
    h.gso_type |= GSO_ECN;
    h.hdr_len = 66;
    let segs = collect(&h, &f).unwrap();
    assert_eq!(segs.len(), 7);
    let data = check_tcp_segments(&segs, &f, 1448, 7, TCP_CWR | 0x10);
    assert!(data == pl);
}

#[test]
fn tso6_64k_various_mss() {
    let pl = payload(65_400);
    let flags = TCP_PSH | 0x10;
    let f = gso_v6(&pl, 1, flags);
    for gso in [64usize, 1220, 1440, 9000, 65_400] {
        let mut h = tso4_hdr(gso as u16);
        h.gso_type = GSO_TCPV6;
        h.csum_start = 54;
        h.hdr_len = 74;
        let segs = collect(&h, &f).unwrap();
        assert_eq!(segs.len(), pl.len().div_ceil(gso));
        let data = check_tcp_segments(&segs, &f, gso, 1, flags);
        assert!(data == pl, "payload mismatch for gso {gso}");
    }
}

#[test]
fn small_frame_is_one_complete_segment() {
    let pl = payload(100);
    let f = gso_v4(&pl, 5, TCP_PSH | 0x10, &[]);
    let segs = collect(&tso4_hdr(1448), &f).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(check_tcp_segments(&segs, &f, 1448, 5, TCP_PSH | 0x10) == pl);
    // The same bytes as a normally built frame with a full checksum.
    assert_eq!(segs[0], tcp_v4_frame(&pl, 5, TCP_PSH | 0x10, 4321));
}

#[test]
fn uso_v4_and_v6() {
    let pl = payload(5000);
    for v6 in [false, true] {
        let (f, l4) = if v6 {
            (udp_v6_frame(&pl, 9), 54)
        } else {
            (udp_v4_frame(&pl, 9), 34)
        };
        let h = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: (l4 + 8) as u16,
            gso_size: 1400,
            csum_start: l4 as u16,
            csum_offset: 6,
            num_buffers: 0,
        };
        let segs = collect(&h, &f).unwrap();
        assert_eq!(segs.len(), 4);
        let mut data = Vec::new();
        for s in &segs {
            let p = parse_packet(s).unwrap();
            let u = &s[l4..];
            assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), u.len());
            match p.l3.unwrap() {
                L3Hdr::V4(ip) => {
                    assert!(verify_ipv4_header(&s[14..34]));
                    assert!(verify_l4_v4(&ip.src, &ip.dst, IPPROTO_UDP, u));
                }
                L3Hdr::V6(ip) => assert!(verify_l4_v6(&ip.src, &ip.dst, IPPROTO_UDP, u)),
            }
            data.extend_from_slice(&u[8..]);
        }
        assert!(data == pl);
    }
}

#[test]
fn invalid_frames_are_rejected_before_any_emit() {
    let f = gso_v4(&payload(3000), 1, 0x10, &[]);
    let bad = |h: VirtioNetHdr, f: &[u8]| collect(&h, f).unwrap_err();
    assert_eq!(bad(tso4_hdr(0), &f), InvalidGso::ZeroGsoSize);
    let mut h = tso4_hdr(1000);
    h.csum_start = 30;
    assert!(matches!(bad(h, &f), InvalidGso::CsumMismatch { .. }));
    let mut h = tso4_hdr(1000);
    h.csum_offset = 6;
    assert!(matches!(bad(h, &f), InvalidGso::CsumMismatch { .. }));
    let mut h = tso4_hdr(1000);
    h.hdr_len = 4000;
    assert!(matches!(bad(h, &f), InvalidGso::HdrLen { .. }));
    let mut h = tso4_hdr(1000);
    h.gso_type = GSO_TCPV6;
    assert!(matches!(bad(h, &f), InvalidGso::ProtocolMismatch(_)));
    let mut h = tso4_hdr(1000);
    h.gso_type = GSO_UDP_L4;
    assert!(matches!(bad(h, &f), InvalidGso::ProtocolMismatch(_)));
    let mut h = tso4_hdr(1000);
    h.gso_type = GSO_UDP;
    assert_eq!(bad(h, &f), InvalidGso::Unsupported(GSO_UDP));
    h.gso_type = 0x42;
    assert_eq!(bad(h, &f), InvalidGso::Unsupported(0x42));
    let mut h = tso4_hdr(1000);
    h.hdr_len = 0; // hdr_len is only a hint; the parsed headers decide
    assert!(matches!(bad(h, &f[..40]), InvalidGso::Parse(_)));
    assert!(matches!(
        bad(tso4_hdr(1000), &f[..40]),
        InvalidGso::HdrLen { .. }
    ));
    let mut frag = f.clone();
    frag[20] |= 0x20;
    assert_eq!(bad(tso4_hdr(1000), &frag), InvalidGso::Fragment);
    let big = gso_v4(&payload(65_000), 1, 0x10, &[]);
    assert_eq!(bad(tso4_hdr(16), &big), InvalidGso::TooManySegments(4063));
    let mut huge = big.clone();
    huge.extend_from_slice(&payload(MAX_GSO_FRAME));
    assert!(matches!(
        bad(tso4_hdr(1448), &huge),
        InvalidGso::FrameTooLarge(_)
    ));
    let mut small = [0u8; 100];
    let r = segment_all(&tso4_hdr(1000), &f, &mut small, |_, _| panic!("emitted"));
    assert_eq!(
        r,
        Err(InvalidGso::ScratchTooSmall {
            need: 1054,
            have: 100
        })
    );
}

#[test]
fn emit_error_stops_and_reports_progress() {
    let f = gso_v4(&payload(5000), 1, 0x10, &[]);
    let mut scratch = vec![0u8; 2048];
    let mut n = 0;
    let r = segment(&tso4_hdr(1000), &f, &mut scratch, |_, _| {
        n += 1;
        if n == 3 {
            Err("ring full")
        } else {
            Ok(())
        }
    });
    match r {
        Err(GsoError::Emit { sent: 2, err }) => assert_eq!(err, "ring full"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(segments_needed(&tso4_hdr(1000), &f), Ok(5));
}

#[test]
fn plan_follows_receiver_features() {
    use virtio_bindings::virtio_net as vn;
    let b = |bits: &[u32]| bits.iter().fold(0u64, |a, &x| a | 1 << x);
    let csum = b(&[vn::VIRTIO_NET_F_GUEST_CSUM]);
    let tso4 = b(&[vn::VIRTIO_NET_F_GUEST_CSUM, vn::VIRTIO_NET_F_GUEST_TSO4]);
    let all = b(&[
        vn::VIRTIO_NET_F_GUEST_CSUM,
        vn::VIRTIO_NET_F_GUEST_TSO4,
        vn::VIRTIO_NET_F_GUEST_TSO6,
        vn::VIRTIO_NET_F_GUEST_ECN,
        vn::VIRTIO_NET_F_GUEST_UFO,
        vn::VIRTIO_NET_F_GUEST_USO4,
        vn::VIRTIO_NET_F_GUEST_USO6,
    ]);
    let plain = VirtioNetHdr::plain();
    assert_eq!(plan(&plain, 0), Delivery::PassThrough);
    let mut c = plain;
    c.flags = NEEDS_CSUM;
    assert_eq!(plan(&c, 0), Delivery::CompleteCsum);
    assert_eq!(plan(&c, csum), Delivery::PassThrough);
    let mut dv = plain;
    dv.flags = DATA_VALID;
    assert_eq!(plan(&dv, 0), Delivery::PassThrough);
    let t4 = tso4_hdr(1448);
    assert_eq!(plan(&t4, 0), Delivery::Segment);
    assert_eq!(plan(&t4, csum), Delivery::Segment);
    assert_eq!(plan(&t4, tso4), Delivery::PassThrough);
    // TSO4 without GUEST_CSUM is not a valid negotiation: segment.
    assert_eq!(
        plan(&t4, b(&[vn::VIRTIO_NET_F_GUEST_TSO4])),
        Delivery::Segment
    );
    let mut ecn = t4;
    ecn.gso_type |= GSO_ECN;
    assert_eq!(plan(&ecn, tso4), Delivery::Segment);
    assert_eq!(plan(&ecn, all), Delivery::PassThrough);
    let mut t6 = t4;
    t6.gso_type = GSO_TCPV6;
    assert_eq!(plan(&t6, tso4), Delivery::Segment);
    assert_eq!(plan(&t6, all), Delivery::PassThrough);
    for kind in [GSO_UDP, GSO_UDP_L4] {
        let mut u = t4;
        u.gso_type = kind;
        assert_eq!(plan(&u, tso4), Delivery::Segment);
        assert_eq!(plan(&u, all), Delivery::PassThrough);
    }
    let mut unknown = t4;
    unknown.gso_type = 0x42;
    assert_eq!(plan(&unknown, all), Delivery::Segment);
}
