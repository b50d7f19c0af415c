//! Flow hash that picks the destination RX queue: `queue = flow_hash(frame) % active_pairs`.
//!
//! Inputs, as available: the 5-tuple (addresses, protocol, ports) for TCP/UDP over IPv4/IPv6;
//! addresses and protocol for other IP traffic and for all fragments (so the fragments of one
//! datagram, with and without ports, land on one queue); MACs and ethertype otherwise. Nothing
//! that changes within a flow (sequence numbers, flags, lengths, payload) is hashed, so a TCP
//! flow always maps to the same queue and is never reordered. Not direction-symmetric.
//!
//! Only header bytes are read (IPv4 `tot_len` and IPv6 `payload_len` are not checked against
//! the frame), so hashing a prefix that holds all headers, e.g. the first [`HASH_PREFIX`]
//! bytes of a chain, gives the same value as hashing the whole frame.
//!
//! The mix is a multiply/xor-shift over 64-bit words with a murmur3 `fmix64` finaliser, so
//! the low bits used by `%` are well spread. No allocation, no panics: a frame too broken to
//! parse at some layer is hashed on the layers below it.

use super::eth::{EthInfo, Ipv4Hdr, Ipv6Hdr, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};

/// A prefix length that holds the headers of all common frames (Ethernet + 2 VLAN tags +
/// IPv6 with extension headers + ports); `flow_hash(&frame[..HASH_PREFIX.min(len)])` equals
/// `flow_hash(frame)` for them.
pub const HASH_PREFIX: usize = 128;

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(K);
    h ^ (h >> 29)
}

#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline]
fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

/// Source and destination ports of a TCP/UDP header at `l4`, packed, when present.
#[inline]
fn ports(frame: &[u8], proto: u8, l4: usize) -> Option<u64> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let p = frame.get(l4..l4.checked_add(4)?)?;
    Some(u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]])))
}

/// Hash of the flow `frame` belongs to (see the module documentation). Deterministic across
/// runs and processes.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let Ok(eth) = EthInfo::parse(frame) else {
        // Not even an Ethernet header: hash what is there (at most 14 bytes).
        let b = &frame[..frame.len().min(14)];
        let h = mix(
            mix(mix(SEED, b.len() as u64), u64_of(b)),
            u64_of(b.get(8..).unwrap_or(&[])),
        );
        return fold(fmix64(h));
    };
    let h = match eth.ethertype {
        ETH_P_IPV4 => Ipv4Hdr::parse(frame, eth.l3_offset).ok().map(|ip| {
            let addrs =
                u64::from(u32::from_le_bytes(ip.src)) << 32 | u64::from(u32::from_le_bytes(ip.dst));
            let mut h = mix(mix(SEED, 4), addrs);
            let l4 = (!ip.is_fragment())
                .then(|| ports(frame, ip.protocol, ip.l4_offset()))
                .flatten();
            h = mix(h, u64::from(ip.protocol));
            if let Some(p) = l4 {
                h = mix(h, p);
            }
            h
        }),
        ETH_P_IPV6 => Ipv6Hdr::parse(frame, eth.l3_offset).ok().map(|ip| {
            let mut h = mix(SEED, 6);
            for half in [&ip.src[..8], &ip.src[8..], &ip.dst[..8], &ip.dst[8..]] {
                h = mix(h, u64_of(half));
            }
            h = mix(h, u64::from(ip.next_header));
            let l4 = (!ip.fragment)
                .then(|| ports(frame, ip.next_header, ip.l4_offset))
                .flatten();
            if let Some(p) = l4 {
                h = mix(h, p);
            }
            h
        }),
        _ => None,
    };
    let h = h.unwrap_or_else(|| {
        let h = mix(SEED, u64_of(&eth.dst) | u64::from(eth.ethertype) << 48);
        mix(h, u64_of(&eth.src))
    });
    fold(fmix64(h))
}

#[inline]
fn fold(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::*;

    #[test]
    fn stable_within_a_tcp_flow() {
        let a = flow_hash(&tcp_v4_frame(&[1; 100], 1, 0x10, 4000));
        let b = flow_hash(&tcp_v4_frame(&[2; 1400], 999_999, 0x19, 4000));
        assert_eq!(a, b);
        let c = flow_hash(&tcp_v6_frame(&[1; 10], 5, 0x10, 4000));
        let d = flow_hash(&tcp_v6_frame(&[7; 900], 77, 0x08, 4000));
        assert_eq!(c, d);
        // Deterministic: the same value on every call.
        assert_eq!(a, flow_hash(&tcp_v4_frame(&[], 3, 0, 4000)));
    }

    #[test]
    fn prefix_hashes_like_whole_frame() {
        for f in [
            tcp_v4_frame(&[5; 1400], 9, 0x10, 33),
            tcp_v6_frame(&[5; 1400], 9, 0x10, 33),
            udp_v4_frame(&[5; 700], 33),
        ] {
            assert_eq!(flow_hash(&f[..HASH_PREFIX]), flow_hash(&f));
            assert_eq!(flow_hash(&f[..58]), flow_hash(&f));
        }
    }

    #[test]
    fn differs_between_flows_and_layers() {
        let a = flow_hash(&tcp_v4_frame(&[], 1, 0, 4000));
        let b = flow_hash(&tcp_v4_frame(&[], 1, 0, 4001));
        let c = flow_hash(&udp_v4_frame(&[], 4000));
        let d = flow_hash(&tcp_v6_frame(&[], 1, 0, 4000));
        assert!(a != b && a != c && a != d && c != d);
    }

    #[test]
    fn fragments_hash_without_ports() {
        let mut first = udp_v4_frame(&[0; 32], 1111);
        first[20] |= 0x20; // MF
        let mut later = udp_v4_frame(&[0; 32], 2222);
        later[20..22].copy_from_slice(&4u16.to_be_bytes()); // offset 32 bytes
        assert_eq!(flow_hash(&first), flow_hash(&later));
    }

    #[test]
    fn broken_frames_still_hash() {
        let f = tcp_v4_frame(&[0; 10], 1, 0, 1);
        for len in 0..f.len() {
            let _ = flow_hash(&f[..len]);
        }
        // A broken IPv4 header falls back to L2: equal MACs/ethertype, equal hash.
        let mut x = f.clone();
        x[14] = 0x40;
        let mut y = tcp_v4_frame(&[0; 10], 1, 0, 2);
        y[14] = 0x40;
        assert_eq!(flow_hash(&x), flow_hash(&y));
    }

    /// Chi-square statistic of `n` values over `buckets` buckets.
    fn chi_square(hashes: impl Iterator<Item = u32>, buckets: usize) -> f64 {
        let mut counts = vec![0u64; buckets];
        let mut n = 0u64;
        for h in hashes {
            counts[h as usize % buckets] += 1;
            n += 1;
        }
        let expect = n as f64 / buckets as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expect).powi(2) / expect)
            .sum()
    }

    #[test]
    fn spreads_over_16_queues() {
        // 15 degrees of freedom: P(chi² > 40) ≈ 0.0005 for a uniform hash; the inputs are
        // fixed, so this is a deterministic check of the mix, not a flaky statistical test.
        let ports = (0..8000u16).map(|i| flow_hash(&tcp_v4_tuple(IP4_A, IP4_B, 1024 + i, 80)));
        let x = chi_square(ports, 16);
        assert!(x < 40.0, "ports chi² {x}");
        let addrs = (0..8000u32).map(|i| {
            let src = (0x0a00_0000 + i).to_be_bytes();
            flow_hash(&tcp_v4_tuple(src, IP4_B, 5000, 5201))
        });
        let x = chi_square(addrs, 16);
        assert!(x < 40.0, "addresses chi² {x}");
        let l2 = (0..4000u32).map(|i| {
            let mut f = tcp_v4_frame(&[], 1, 0, 1);
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f[8..12].copy_from_slice(&i.to_be_bytes());
            flow_hash(&f)
        });
        let x = chi_square(l2, 16);
        assert!(x < 40.0, "MACs chi² {x}");
    }
}
