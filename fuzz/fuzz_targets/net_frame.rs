//! Frame parsing, offload plan, checksum completion and software segmentation over arbitrary
//! guest bytes: never a panic, and segmentation keeps its promises.
//!
//! Input: 8 bytes of receiver features, a 12-byte virtio-net header, then the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvnet_backend::net::{
    self, complete_csum, csum_patch, flow_hash, parse_packet, plan, segment_all, segments_needed,
    EthInfo, VirtioNetHdr, SCRATCH_LEN,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let rx_features = u64::from_le_bytes(data[..8].try_into().unwrap());
    let Ok(hdr) = VirtioNetHdr::from_bytes(&data[8..20]) else {
        return;
    };
    let frame = &data[20..];
    let _ = EthInfo::parse(frame);
    let _ = parse_packet(frame);
    let _ = flow_hash(frame);
    let _ = plan(&hdr, rx_features);
    let (start, off) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
    if let Ok((at, v)) = csum_patch(frame, start, off) {
        assert!(at + 2 <= frame.len());
        let mut copy = frame.to_vec();
        complete_csum(&mut copy, start, off).expect("csum_patch succeeded");
        assert_eq!(&copy[at..at + 2], &v);
    } else {
        let mut copy = frame.to_vec();
        assert!(complete_csum(&mut copy, start, off).is_err());
    }
    let needed = segments_needed(&hdr, frame);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let mut emitted = 0usize;
    let mut payload = 0usize;
    let r = segment_all(&hdr, frame, &mut scratch, |h, seg| {
        emitted += 1;
        assert_eq!(
            h.gso_type,
            net::hdr::GSO_NONE,
            "segments carry a plain header"
        );
        assert!(seg.len() <= SCRATCH_LEN);
        // Every segment is a well-formed packet with a valid IPv4 header checksum.
        let p = parse_packet(seg).expect("a segment parses");
        if let Some(net::L3Hdr::V4(ip)) = p.l3 {
            let h = &seg[ip.offset..ip.offset + ip.header_len];
            assert!(net::csum::verify_ipv4_header(h), "segment IPv4 checksum");
        }
        let l4 = p.l4.expect("a segment has its TCP/UDP header");
        payload += seg.len() - l4.payload_offset();
    });
    match (r, needed) {
        (Ok(n), Ok(m)) => {
            assert_eq!(n, m, "segment count as announced");
            assert_eq!(n, emitted);
            let lay = net::gso::inspect(&hdr, frame).expect("inspect agrees");
            assert_eq!(payload, lay.payload_len, "payload preserved");
        }
        (Err(_), Err(_)) => {}
        (r, n) => panic!("segment {r:?} vs segments_needed {n:?}"),
    }
});
