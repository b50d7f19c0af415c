//! Frame builders, parsers and checksum helpers for tests.
//!
//! Builders produce complete Ethernet frames with valid IPv4 header and TCP/UDP checksums.
//! [`parse`] finds the layers again; [`verify_checksums`] checks them; [`partial_csum`] turns
//! a frame into what a guest with checksum offload sends (pseudo-header sum only, plus a
//! `NEEDS_CSUM` header), and [`complete_csum`] finishes such a frame as a device would.
//! [`tagged`] frames carry a flow, a sequence number and a byte pattern that the receiver
//! checks (for traffic runs and benchmarks).
//!
//! The checksum here is the plain RFC 1071 sum, written for clarity: it is the independent
//! reference the tests hold pvnet's optimised `pvnet_backend::net::csum` against.

use pvnet_backend::net::hdr::{GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM};

use crate::VirtioNetHdr;

pub mod tagged;

/// EtherType IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// IP protocol TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// The broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Ones'-complement sum of `data` (as big-endian 16-bit words) added to `init`, not folded.
pub fn sum16(data: &[u8], init: u32) -> u32 {
    let mut s = u64::from(init);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        s += u64::from(*b) << 8;
    }
    while s > 0xffff_ffff {
        s = (s & 0xffff_ffff) + (s >> 32);
    }
    s as u32
}

/// Folds a 32-bit ones'-complement sum to 16 bits (not complemented).
pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// An Ethernet frame: `dst`, `src`, `ethertype`, `payload` (no FCS, no padding).
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    let total = (20 + l4_len).min(0xffff) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = internet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn ipv6_header(src: [u8; 16], dst: [u8; 16], proto: u8, l4_len: usize) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(l4_len.min(0xffff) as u16).to_be_bytes());
    h[6] = proto;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

/// Pseudo-header sum (not folded) for an L4 segment of `l4_len` bytes.
fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u32 {
    let mut s = sum16(src, 0);
    s = sum16(dst, s);
    s = sum16(&[0, proto], s);
    let len = l4_len as u32;
    s = sum16(&len.to_be_bytes(), s);
    s
}

fn tcp_segment(sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18; // PSH|ACK
    t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()).min(0xffff) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

fn finish_l4(l4: &mut [u8], src: &[u8], dst: &[u8], proto: u8) {
    let off = if proto == IPPROTO_TCP { 16 } else { 6 };
    l4[off..off + 2].fill(0);
    let mut c = !fold(sum16(l4, pseudo_sum(src, dst, proto, l4.len())));
    if proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

/// An Ethernet + IPv4 + TCP (PSH|ACK, window 65535) frame with valid checksums.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = tcp_segment(sport, dport, seq, payload);
    finish_l4(&mut l4, &src_ip, &dst_ip, IPPROTO_TCP);
    let mut p = ipv4_header(src_ip, dst_ip, IPPROTO_TCP, l4.len()).to_vec();
    p.extend_from_slice(&l4);
    eth(dst_mac, src_mac, ETH_P_IPV4, &p)
}

/// An Ethernet + IPv6 + TCP frame with a valid checksum.
#[allow(clippy::too_many_arguments)]
pub fn ipv6_tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = tcp_segment(sport, dport, seq, payload);
    finish_l4(&mut l4, &src_ip, &dst_ip, IPPROTO_TCP);
    let mut p = ipv6_header(src_ip, dst_ip, IPPROTO_TCP, l4.len()).to_vec();
    p.extend_from_slice(&l4);
    eth(dst_mac, src_mac, ETH_P_IPV6, &p)
}

/// An Ethernet + IPv4 + UDP frame with valid checksums.
pub fn ipv4_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = udp_datagram(sport, dport, payload);
    finish_l4(&mut l4, &src_ip, &dst_ip, IPPROTO_UDP);
    let mut p = ipv4_header(src_ip, dst_ip, IPPROTO_UDP, l4.len()).to_vec();
    p.extend_from_slice(&l4);
    eth(dst_mac, src_mac, ETH_P_IPV4, &p)
}

/// The layers [`parse`] found in a frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
    /// Offset of the IP header, if IPv4/IPv6.
    pub l3_off: Option<usize>,
    /// IP protocol (TCP = 6, UDP = 17).
    pub proto: Option<u8>,
    /// Offset of the TCP/UDP header.
    pub l4_off: Option<usize>,
    /// Offset of the L4 payload.
    pub payload_off: Option<usize>,
    /// Source and destination ports.
    pub ports: Option<(u16, u16)>,
    /// TCP sequence number.
    pub tcp_seq: Option<u32>,
    /// Source and destination IP address bytes (4 or 16 each).
    pub ips: Option<(Vec<u8>, Vec<u8>)>,
}

impl Parsed {
    /// The L4 payload of `frame` (the frame that was parsed), if any.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.payload_off?..)
    }
}

/// Parses Ethernet / IPv4 / IPv6 (no extension headers) / TCP / UDP; `None` if the frame is
/// shorter than an Ethernet header. Layers that do not fit are left `None`.
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    let mut p = Parsed::default();
    p.dst.copy_from_slice(&frame[0..6]);
    p.src.copy_from_slice(&frame[6..12]);
    p.ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let l3 = ETH_HLEN;
    let (proto, l4, ips) = match p.ethertype {
        ETH_P_IPV4 if frame.len() >= l3 + 20 => {
            let ihl = usize::from(frame[l3] & 0xf) * 4;
            (
                frame[l3 + 9],
                l3 + ihl.max(20),
                (
                    frame[l3 + 12..l3 + 16].to_vec(),
                    frame[l3 + 16..l3 + 20].to_vec(),
                ),
            )
        }
        ETH_P_IPV6 if frame.len() >= l3 + 40 => (
            frame[l3 + 6],
            l3 + 40,
            (
                frame[l3 + 8..l3 + 24].to_vec(),
                frame[l3 + 24..l3 + 40].to_vec(),
            ),
        ),
        _ => return Some(p),
    };
    p.l3_off = Some(l3);
    p.proto = Some(proto);
    p.ips = Some(ips);
    match proto {
        IPPROTO_TCP if frame.len() >= l4 + 20 => {
            let doff = usize::from(frame[l4 + 12] >> 4) * 4;
            p.l4_off = Some(l4);
            p.payload_off = Some((l4 + doff.max(20)).min(frame.len()));
            p.ports = Some((
                u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
                u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
            ));
            p.tcp_seq = Some(u32::from_be_bytes([
                frame[l4 + 4],
                frame[l4 + 5],
                frame[l4 + 6],
                frame[l4 + 7],
            ]));
        }
        IPPROTO_UDP if frame.len() >= l4 + 8 => {
            p.l4_off = Some(l4);
            p.payload_off = Some(l4 + 8);
            p.ports = Some((
                u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
                u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
            ));
        }
        _ => {}
    }
    Some(p)
}

/// Why [`verify_checksums`] rejected a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// Not an Ethernet + IPv4/IPv6 + TCP/UDP frame, or truncated.
    NotTcpUdp,
    /// The IPv4 header checksum is wrong.
    Ipv4Header,
    /// The TCP/UDP checksum is wrong.
    L4,
    /// The IP length field disagrees with the frame length.
    Length,
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum (over the length the IP header
/// gives). A UDP checksum of 0 (none) is accepted.
pub fn verify_checksums(frame: &[u8]) -> Result<(), ChecksumError> {
    let p = parse(frame).ok_or(ChecksumError::NotTcpUdp)?;
    let (l3, l4, proto) = match (p.l3_off, p.l4_off, p.proto) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(ChecksumError::NotTcpUdp),
    };
    let (src, dst) = p.ips.ok_or(ChecksumError::NotTcpUdp)?;
    let end = if p.ethertype == ETH_P_IPV4 {
        if internet_checksum(&frame[l3..l4]) != 0 {
            return Err(ChecksumError::Ipv4Header);
        }
        l3 + usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]))
    } else {
        l4 + usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]))
    };
    if end > frame.len() || end < l4 {
        return Err(ChecksumError::Length);
    }
    let seg = &frame[l4..end];
    if proto == IPPROTO_UDP && seg.get(6..8) == Some(&[0, 0]) {
        return Ok(());
    }
    if fold(sum16(seg, pseudo_sum(&src, &dst, proto, seg.len()))) != 0xffff {
        return Err(ChecksumError::L4);
    }
    Ok(())
}

/// Turns a complete TCP/UDP frame into what a guest with checksum offload sends: the L4
/// checksum field holds the folded pseudo-header sum, and the header says `NEEDS_CSUM` with
/// `csum_start` / `csum_offset`. `None` if the frame is not TCP/UDP over IP.
pub fn partial_csum(frame: &[u8]) -> Option<(VirtioNetHdr, Vec<u8>)> {
    let p = parse(frame)?;
    let (l3, l4, proto) = (p.l3_off?, p.l4_off?, p.proto?);
    let (src, dst) = p.ips?;
    let end = if p.ethertype == ETH_P_IPV4 {
        l3 + usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]))
    } else {
        l4 + usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]))
    };
    let seg_len = end.checked_sub(l4)?;
    let off = if proto == IPPROTO_TCP { 16 } else { 6 };
    let mut f = frame.to_vec();
    let ps = fold(pseudo_sum(&src, &dst, proto, seg_len));
    f.get_mut(l4 + off..l4 + off + 2)?
        .copy_from_slice(&ps.to_be_bytes());
    Some((csum_hdr(u16::try_from(l4).ok()?, off as u16), f))
}

/// A header asking for a partial checksum to be completed (`NEEDS_CSUM`): the ones'-complement
/// sum from `csum_start` to the end goes to `csum_start + csum_offset`.
pub fn csum_hdr(csum_start: u16, csum_offset: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: NEEDS_CSUM,
        csum_start,
        csum_offset,
        ..VirtioNetHdr::plain()
    }
}

/// A TSO header for a TCP frame (IPv4 if `v4`, else IPv6) with partial checksum:
/// `l4_off` is where the TCP header starts, `hdr_len` the length of all headers.
pub fn tso_hdr(v4: bool, l4_off: u16, hdr_len: u16, mss: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len,
        gso_size: mss,
        ..csum_hdr(l4_off, 16)
    }
}

/// Completes a `NEEDS_CSUM` frame as a device does: the ones'-complement sum from
/// `csum_start` to the end, stored at `csum_start + csum_offset`. `None` if out of range.
pub fn complete_csum(frame: &mut [u8], csum_start: u16, csum_offset: u16) -> Option<()> {
    let start = usize::from(csum_start);
    let at = start.checked_add(usize::from(csum_offset))?;
    if at + 2 > frame.len() {
        return None;
    }
    let c = internet_checksum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&d, 0)), 0xddf2);
        assert_eq!(internet_checksum(&d), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(fold(sum16(&[0xab], 0)), 0xab00);
    }

    #[test]
    fn built_frames_verify_and_parse() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let t4 = ipv4_tcp(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80, 77, &payload);
        let t6 = ipv6_tcp(A, B, [1; 16], [2; 16], 1234, 80, 78, &payload);
        let u4 = ipv4_udp(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 53, 5353, &payload[..33]);
        for f in [&t4, &t6, &u4] {
            assert_eq!(verify_checksums(f), Ok(()));
        }
        let p = parse(&t4).unwrap();
        assert_eq!((p.dst, p.src, p.ethertype), (B, A, ETH_P_IPV4));
        assert_eq!(p.ports, Some((1234, 80)));
        assert_eq!(p.tcp_seq, Some(77));
        assert_eq!(p.payload(&t4), Some(&payload[..]));
        assert_eq!(parse(&t6).unwrap().tcp_seq, Some(78));
        assert_eq!(parse(&u4).unwrap().payload(&u4), Some(&payload[..33]));
        // Any flipped payload byte is caught.
        let mut bad = t4.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(verify_checksums(&bad), Err(ChecksumError::L4));
        let mut bad = t4.clone();
        bad[ETH_HLEN + 8] ^= 1; // TTL
        assert_eq!(verify_checksums(&bad), Err(ChecksumError::Ipv4Header));
        assert_eq!(
            verify_checksums(&eth(A, B, ETH_P_ARP, &[0; 28])),
            Err(ChecksumError::NotTcpUdp)
        );
        assert!(parse(&[0; 13]).is_none());
    }

    #[test]
    fn partial_then_complete_restores_the_frame() {
        let payload = [0x5au8; 301];
        for f in [
            ipv4_tcp(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3, &payload),
            ipv6_tcp(A, B, [1; 16], [2; 16], 1, 2, 3, &payload),
            ipv4_udp(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2, &payload),
        ] {
            let (hdr, mut partial) = partial_csum(&f).unwrap();
            assert!(hdr.needs_csum() && !hdr.is_gso());
            assert_ne!(partial, f);
            assert!(verify_checksums(&partial).is_err());
            complete_csum(&mut partial, hdr.csum_start, hdr.csum_offset).unwrap();
            assert_eq!(partial, f);
        }
        assert!(complete_csum(&mut [0u8; 10], 8, 1).is_none());
    }
}
