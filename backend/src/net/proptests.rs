//! Property tests: arbitrary guest bytes and headers never panic any entry point, and
//! segmentation of well-formed random TCP frames always reassembles to the original payload.

use proptest::prelude::*;

use super::csum::{complete_csum, csum_patch, internet_checksum, verify_ipv4_header};
use super::eth::{parse_packet, EthInfo};
use super::flow::flow_hash;
use super::gso::{plan, segment, segment_all, GsoError, SCRATCH_LEN};
use super::hdr::{VirtioNetHdr, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, NEEDS_CSUM};
use super::testutil::{payload, tcp_v4_frame, tcp_v6_frame, udp_v4_frame};

fn any_hdr() -> impl Strategy<Value = VirtioNetHdr> {
    (
        any::<u8>(),
        prop_oneof![
            Just(GSO_TCPV4),
            Just(GSO_TCPV6),
            Just(GSO_UDP_L4),
            any::<u8>()
        ],
        prop_oneof![Just(0u16), 0u16..128, any::<u16>()],
        prop_oneof![Just(0u16), 1u16..2000, any::<u16>()],
        prop_oneof![Just(34u16), Just(54u16), any::<u16>()],
        prop_oneof![Just(16u16), Just(6u16), any::<u16>()],
        any::<u16>(),
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, nb)| VirtioNetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
                num_buffers: nb,
            },
        )
}

/// Random bytes, or a valid frame with some bytes overwritten / truncated (reaches deeper).
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let valid = (0usize..3, 0usize..3000, 1u16..u16::MAX).prop_map(|(k, n, port)| match k {
        0 => tcp_v4_frame(&payload(n), 1, 0x18, port),
        1 => tcp_v6_frame(&payload(n), 1, 0x18, port),
        _ => udp_v4_frame(&payload(n), port),
    });
    let mutated = (
        valid,
        proptest::collection::vec((any::<u16>(), any::<u8>()), 0..6),
        any::<u16>(),
    )
        .prop_map(|(mut f, edits, cut)| {
            for (at, b) in edits {
                let n = f.len();
                f[usize::from(at) % n] = b;
            }
            let keep = usize::from(cut) % (f.len() + 1);
            f.truncate(keep.max(f.len() / 2));
            f
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), mutated]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn nothing_panics(hdr in any_hdr(), mut frame in any_frame(), rx in any::<u64>()) {
        let _ = VirtioNetHdr::from_bytes(&frame);
        let _ = EthInfo::parse(&frame);
        let _ = parse_packet(&frame);
        let _ = flow_hash(&frame);
        let _ = plan(&hdr, rx);
        let mut scratch = vec![0u8; 2048];
        let mut total = 0usize;
        let r = segment(&hdr, &frame, &mut scratch, |h, seg| {
            prop_assert_eq!(*h, VirtioNetHdr::plain());
            total += seg.len();
            Ok(())
        });
        if let Err(GsoError::Emit { err, .. }) = r {
            return Err(err);
        }
        let (s, o) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
        let patch = csum_patch(&frame, s, o);
        let done = complete_csum(&mut frame, s, o);
        prop_assert_eq!(patch.is_ok(), done.is_ok());
        if let Ok((at, v)) = patch {
            prop_assert_eq!(&frame[at..at + 2], &v[..]);
        }
    }

    #[test]
    fn tso_reassembles(n in 1usize..20_000, mss in 64u16..9000, seq in any::<u32>(), v6 in any::<bool>()) {
        let pl = payload(n);
        let (frame, l4) = if v6 {
            (tcp_v6_frame(&pl, seq, 0x19, 777), 54u16)
        } else {
            (tcp_v4_frame(&pl, seq, 0x19, 777), 34u16)
        };
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: l4 + 20,
            gso_size: mss,
            csum_start: l4,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut scratch = vec![0u8; SCRATCH_LEN];
        let mut data = Vec::new();
        let mut count = 0usize;
        let hl = usize::from(l4) + 20;
        segment_all(&hdr, &frame, &mut scratch, |_, s| {
            if !v6 {
                assert!(verify_ipv4_header(&s[14..34]));
            }
            data.extend_from_slice(&s[hl..]);
            count += 1;
        }).unwrap();
        prop_assert_eq!(count, n.div_ceil(usize::from(mss)));
        prop_assert!(data == pl);
    }

    #[test]
    fn checksum_of_data_plus_its_checksum_verifies(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut d = data.clone();
        if d.len() % 2 == 1 {
            d.push(0);
        }
        let c = internet_checksum(&d);
        d.extend_from_slice(&c.to_be_bytes());
        prop_assert_eq!(internet_checksum(&d), 0);
    }
}

#[test]
fn needs_csum_frames_verify_after_completion() {
    use super::csum::{pseudo_header_v4, verify_l4_v4};
    use super::testutil::{make_partial, IP4_A, IP4_B};
    for n in [0usize, 1, 17, 1000, 1501] {
        let mut f = tcp_v4_frame(&payload(n), 3, 0x18, 1);
        let l4_len = (f.len() - 34) as u32;
        make_partial(&mut f, 34, 16, pseudo_header_v4(&IP4_A, &IP4_B, 6, l4_len));
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHdr::plain()
        };
        complete_csum(
            &mut f,
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
        )
        .unwrap();
        assert!(verify_l4_v4(&IP4_A, &IP4_B, 6, &f[34..]), "n {n}");
        assert_eq!(f, tcp_v4_frame(&payload(n), 3, 0x18, 1));
    }
}
