//! Ethernet, IPv4, IPv6, TCP and UDP header parsing over a guest frame.
//!
//! Every accessor is bounds-checked: a short or inconsistent header is a [`ParseError`], never
//! a panic. Offsets are absolute from the start of the Ethernet frame (the first byte after the
//! virtio-net header), which is also how `csum_start` counts.

use thiserror::Error;

/// Ethernet header length without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Ethertype IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// Ethertype IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Ethertype 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype 802.1ad service VLAN tag (QinQ outer tag).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Legacy QinQ outer tag.
pub const ETH_P_QINQ: u16 = 0x9100;
/// Maximum number of stacked VLAN tags parsed.
pub const MAX_VLANS: usize = 2;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 header length.
pub const IPV6_HLEN: usize = 40;
/// Maximum number of IPv6 extension headers walked before giving up.
pub const MAX_IPV6_EXT: usize = 8;

/// Errors parsing guest frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The frame ends inside the named header.
    #[error("frame truncated in {layer} header: need {need} bytes, have {have}")]
    Truncated {
        /// Which header.
        layer: &'static str,
        /// Bytes needed from the start of the frame.
        need: usize,
        /// Frame length.
        have: usize,
    },
    /// More than [`MAX_VLANS`] VLAN tags.
    #[error("more than {MAX_VLANS} VLAN tags")]
    TooManyVlans,
    /// IPv4 version/IHL or IPv6 version nibble is wrong.
    #[error("bad {0} version or header length field")]
    BadIpHeader(&'static str),
    /// IPv4 total length smaller than its header.
    #[error("IPv4 total length {total} smaller than header length {ihl}")]
    BadTotalLength {
        /// `tot_len` field.
        total: usize,
        /// Header length in bytes.
        ihl: usize,
    },
    /// More than [`MAX_IPV6_EXT`] IPv6 extension headers.
    #[error("too many IPv6 extension headers")]
    TooManyExtHeaders,
    /// TCP data offset below 5 words.
    #[error("bad TCP data offset {0}")]
    BadTcpOffset(usize),
}

#[inline]
fn need(frame: &[u8], layer: &'static str, end: usize) -> Result<(), ParseError> {
    if frame.len() < end {
        Err(ParseError::Truncated {
            layer,
            need: end,
            have: frame.len(),
        })
    } else {
        Ok(())
    }
}

#[inline]
fn be16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

#[inline]
fn be32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

fn arr<const N: usize>(frame: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&frame[at..at + N]);
    a
}

/// Whether a MAC address is multicast (group bit set); broadcast is included.
#[inline]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Whether a MAC address is the broadcast address.
#[inline]
pub fn is_broadcast(mac: &[u8; 6]) -> bool {
    *mac == [0xff; 6]
}

/// The Ethernet header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthInfo {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// VLAN TCIs, outermost first; only the first `vlan_count` are meaningful.
    pub vlans: [u16; MAX_VLANS],
    /// Number of VLAN tags (0..=[`MAX_VLANS`]).
    pub vlan_count: u8,
    /// Ethertype of the payload after any VLAN tags.
    pub ethertype: u16,
    /// Offset of the L3 header.
    pub l3_offset: usize,
}

impl EthInfo {
    /// Parses the Ethernet header and up to [`MAX_VLANS`] 802.1Q/802.1ad tags.
    pub fn parse(frame: &[u8]) -> Result<EthInfo, ParseError> {
        need(frame, "Ethernet", ETH_HLEN)?;
        let mut info = EthInfo {
            dst: arr(frame, 0),
            src: arr(frame, 6),
            vlans: [0; MAX_VLANS],
            vlan_count: 0,
            ethertype: be16(frame, 12),
            l3_offset: ETH_HLEN,
        };
        while matches!(info.ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ) {
            let n = usize::from(info.vlan_count);
            if n == MAX_VLANS {
                return Err(ParseError::TooManyVlans);
            }
            let at = info.l3_offset;
            need(frame, "VLAN", at + 4)?;
            info.vlans[n] = be16(frame, at);
            info.ethertype = be16(frame, at + 2);
            info.vlan_count += 1;
            info.l3_offset += 4;
        }
        Ok(info)
    }

    /// Whether the destination is multicast or broadcast.
    pub fn is_multicast(&self) -> bool {
        is_multicast(&self.dst)
    }
}

/// An IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Hdr {
    /// Offset of the IPv4 header in the frame.
    pub offset: usize,
    /// Header length in bytes (IHL × 4).
    pub header_len: usize,
    /// `tot_len` field (header + payload) as sent; not trusted for GSO.
    pub total_len: usize,
    /// Identification field.
    pub id: u16,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// Parses the IPv4 header at `offset`: version 4, IHL ≥ 5, the whole header present and
    /// `tot_len` ≥ IHL × 4.
    pub fn parse(frame: &[u8], offset: usize) -> Result<Self, ParseError> {
        need(frame, "IPv4", offset + 20)?;
        let vihl = frame[offset];
        let header_len = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || header_len < 20 {
            return Err(ParseError::BadIpHeader("IPv4"));
        }
        need(frame, "IPv4", offset + header_len)?;
        let total_len = usize::from(be16(frame, offset + 2));
        if total_len < header_len {
            return Err(ParseError::BadTotalLength {
                total: total_len,
                ihl: header_len,
            });
        }
        let frag = be16(frame, offset + 6);
        Ok(Self {
            offset,
            header_len,
            total_len,
            id: be16(frame, offset + 4),
            protocol: frame[offset + 9],
            frag_offset: frag & 0x1fff,
            more_fragments: frag & 0x2000 != 0,
            src: arr(frame, offset + 12),
            dst: arr(frame, offset + 16),
        })
    }

    /// Whether this datagram is a fragment (first or later).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    /// Offset of the L4 header.
    pub fn l4_offset(&self) -> usize {
        self.offset + self.header_len
    }
}

/// An IPv6 header with its extension headers walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Hdr {
    /// Offset of the IPv6 header in the frame.
    pub offset: usize,
    /// `payload_len` field as sent (extension headers + L4); not trusted for GSO.
    pub payload_len: usize,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Upper-layer protocol after the extension headers (or the header walking stopped at:
    /// ESP, No Next Header, or an unknown type).
    pub next_header: u8,
    /// Offset of the upper-layer header (after extension headers).
    pub l4_offset: usize,
    /// A Fragment extension header is present.
    pub fragment: bool,
    /// Fragment offset is non-zero (a non-first fragment: no L4 header here).
    pub later_fragment: bool,
}

impl Ipv6Hdr {
    /// Parses the IPv6 header at `offset` and walks Hop-by-Hop, Routing, Destination Options,
    /// Fragment and AH extension headers (at most [`MAX_IPV6_EXT`]).
    pub fn parse(frame: &[u8], offset: usize) -> Result<Self, ParseError> {
        need(frame, "IPv6", offset + IPV6_HLEN)?;
        if frame[offset] >> 4 != 6 {
            return Err(ParseError::BadIpHeader("IPv6"));
        }
        let mut h = Self {
            offset,
            payload_len: usize::from(be16(frame, offset + 4)),
            src: arr(frame, offset + 8),
            dst: arr(frame, offset + 24),
            next_header: frame[offset + 6],
            l4_offset: offset + IPV6_HLEN,
            fragment: false,
            later_fragment: false,
        };
        for _ in 0..=MAX_IPV6_EXT {
            let at = h.l4_offset;
            let len = match h.next_header {
                // Hop-by-Hop, Routing, Destination Options: (len + 1) × 8 bytes.
                0 | 43 | 60 => {
                    need(frame, "IPv6 extension", at + 2)?;
                    (usize::from(frame[at + 1]) + 1) * 8
                }
                // Fragment: 8 bytes.
                44 => {
                    need(frame, "IPv6 fragment", at + 8)?;
                    h.fragment = true;
                    h.later_fragment = be16(frame, at + 2) & 0xfff8 != 0;
                    8
                }
                // Authentication Header: (len + 2) × 4 bytes.
                51 => {
                    need(frame, "IPv6 AH", at + 2)?;
                    (usize::from(frame[at + 1]) + 2) * 4
                }
                _ => return Ok(h),
            };
            need(frame, "IPv6 extension", at + len)?;
            h.next_header = frame[at];
            h.l4_offset = at + len;
        }
        Err(ParseError::TooManyExtHeaders)
    }
}

/// An IPv4 or IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3Hdr {
    /// IPv4.
    V4(Ipv4Hdr),
    /// IPv6.
    V6(Ipv6Hdr),
}

impl L3Hdr {
    /// Upper-layer protocol number.
    pub fn protocol(&self) -> u8 {
        match self {
            L3Hdr::V4(h) => h.protocol,
            L3Hdr::V6(h) => h.next_header,
        }
    }

    /// Offset of the upper-layer header.
    pub fn l4_offset(&self) -> usize {
        match self {
            L3Hdr::V4(h) => h.l4_offset(),
            L3Hdr::V6(h) => h.l4_offset,
        }
    }

    /// Whether the L4 header of this packet is absent (non-first fragment).
    pub fn later_fragment(&self) -> bool {
        match self {
            L3Hdr::V4(h) => h.frag_offset != 0,
            L3Hdr::V6(h) => h.later_fragment,
        }
    }

    /// Whether this packet is any kind of fragment.
    pub fn is_fragment(&self) -> bool {
        match self {
            L3Hdr::V4(h) => h.is_fragment(),
            L3Hdr::V6(h) => h.fragment,
        }
    }
}

/// A TCP or UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Hdr {
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u8,
    /// Offset of the L4 header.
    pub offset: usize,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Header length: TCP data offset × 4 (options included), 8 for UDP.
    pub header_len: usize,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP flags byte (FIN 0x01 … CWR 0x80; 0 for UDP).
    pub tcp_flags: u8,
}

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag CWR.
pub const TCP_CWR: u8 = 0x80;

impl L4Hdr {
    /// Parses a TCP header (data offset ≥ 5, options present) at `offset`.
    pub fn parse_tcp(frame: &[u8], offset: usize) -> Result<Self, ParseError> {
        need(frame, "TCP", offset + 20)?;
        let doff = usize::from(frame[offset + 12] >> 4) * 4;
        if doff < 20 {
            return Err(ParseError::BadTcpOffset(doff));
        }
        need(frame, "TCP", offset + doff)?;
        Ok(Self {
            proto: IPPROTO_TCP,
            offset,
            src_port: be16(frame, offset),
            dst_port: be16(frame, offset + 2),
            header_len: doff,
            seq: be32(frame, offset + 4),
            tcp_flags: frame[offset + 13],
        })
    }

    /// Parses a UDP header at `offset`.
    pub fn parse_udp(frame: &[u8], offset: usize) -> Result<Self, ParseError> {
        need(frame, "UDP", offset + 8)?;
        Ok(Self {
            proto: IPPROTO_UDP,
            offset,
            src_port: be16(frame, offset),
            dst_port: be16(frame, offset + 2),
            header_len: 8,
            seq: 0,
            tcp_flags: 0,
        })
    }

    /// Offset of the L4 payload.
    pub fn payload_offset(&self) -> usize {
        self.offset + self.header_len
    }
}

/// All headers of a frame that pvnet understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Ethernet header.
    pub eth: EthInfo,
    /// IP header, when the ethertype is IPv4 or IPv6.
    pub l3: Option<L3Hdr>,
    /// TCP/UDP header, when present (not for non-first fragments or other protocols).
    pub l4: Option<L4Hdr>,
}

/// Parses Ethernet, IP and TCP/UDP headers. Strict: an IPv4/IPv6 ethertype with a broken IP
/// header, or TCP/UDP with a truncated header, is an error.
pub fn parse_packet(frame: &[u8]) -> Result<PacketInfo, ParseError> {
    let eth = EthInfo::parse(frame)?;
    let l3 = match eth.ethertype {
        ETH_P_IPV4 => Some(L3Hdr::V4(Ipv4Hdr::parse(frame, eth.l3_offset)?)),
        ETH_P_IPV6 => Some(L3Hdr::V6(Ipv6Hdr::parse(frame, eth.l3_offset)?)),
        _ => None,
    };
    let l4 = match l3 {
        Some(ref l3) if !l3.later_fragment() => match l3.protocol() {
            IPPROTO_TCP => Some(L4Hdr::parse_tcp(frame, l3.l4_offset())?),
            IPPROTO_UDP => Some(L4Hdr::parse_udp(frame, l3.l4_offset())?),
            _ => None,
        },
        _ => None,
    };
    Ok(PacketInfo { eth, l3, l4 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::*;

    #[test]
    fn parses_tcp_v4() {
        let f = tcp_v4_frame(&[1, 2, 3], 1000, TCP_PSH, 10);
        let p = parse_packet(&f).unwrap();
        assert_eq!(p.eth.dst, MAC_B);
        assert_eq!(p.eth.src, MAC_A);
        assert_eq!(p.eth.ethertype, ETH_P_IPV4);
        assert_eq!(p.eth.l3_offset, 14);
        let Some(L3Hdr::V4(ip)) = p.l3 else { panic!() };
        assert_eq!((ip.header_len, ip.protocol, ip.src), (20, 6, IP4_A));
        assert_eq!(ip.total_len, 20 + 20 + 3);
        let l4 = p.l4.unwrap();
        assert_eq!((l4.offset, l4.header_len, l4.seq), (34, 20, 1000));
        assert_eq!((l4.src_port, l4.dst_port), (10, 80));
    }

    #[test]
    fn parses_vlan_and_ipv6_with_extension_headers() {
        let mut f = udp_v6_frame(&[9; 5], 7);
        // Insert an 802.1Q tag.
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        // Insert a Hop-by-Hop header (8 bytes) before UDP.
        let ip = 18;
        let nh = f[ip + 6];
        f[ip + 6] = 0;
        f.splice(ip + 40..ip + 40, [nh, 0, 0, 0, 0, 0, 0, 0]);
        let p = parse_packet(&f).unwrap();
        assert_eq!((p.eth.vlan_count, p.eth.vlans[0]), (1, 5));
        let Some(L3Hdr::V6(v6)) = p.l3 else { panic!() };
        assert_eq!((v6.next_header, v6.l4_offset), (IPPROTO_UDP, ip + 48));
        assert_eq!(p.l4.unwrap().src_port, 7);
    }

    #[test]
    fn truncated_frames_are_errors_at_every_length() {
        let f = tcp_v4_frame(&[], 1, 0, 1);
        for len in 0..f.len() {
            assert!(parse_packet(&f[..len]).is_err(), "len {len}");
        }
        let g = udp_v6_frame(&[], 1);
        for len in 0..g.len() {
            assert!(parse_packet(&g[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn bad_fields_are_errors() {
        let mut f = tcp_v4_frame(&[0; 8], 1, 0, 1);
        f[14] = 0x44; // IHL 4
        assert_eq!(parse_packet(&f), Err(ParseError::BadIpHeader("IPv4")));
        let mut f = tcp_v4_frame(&[0; 8], 1, 0, 1);
        f[16..18].copy_from_slice(&10u16.to_be_bytes());
        assert!(matches!(
            parse_packet(&f),
            Err(ParseError::BadTotalLength { .. })
        ));
        let mut f = tcp_v4_frame(&[0; 8], 1, 0, 1);
        f[34 + 12] = 0x40; // data offset 4 words
        assert_eq!(parse_packet(&f), Err(ParseError::BadTcpOffset(16)));
        let mut f = tcp_v4_frame(&[], 1, 0, 1);
        f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[20..22].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        assert_eq!(parse_packet(&f), Err(ParseError::TooManyVlans));
    }

    #[test]
    fn non_ip_and_later_fragments_have_no_l4() {
        let mut f = tcp_v4_frame(&[0; 8], 1, 0, 1);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        let p = parse_packet(&f).unwrap();
        assert!(p.l3.is_none() && p.l4.is_none());
        let mut f = tcp_v4_frame(&[0; 8], 1, 0, 1);
        f[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 16 × 8
        let p = parse_packet(&f).unwrap();
        assert!(p.l3.unwrap().is_fragment() && p.l4.is_none());
    }

    #[test]
    fn multicast_and_broadcast() {
        assert!(is_multicast(&[0xff; 6]) && is_broadcast(&[0xff; 6]));
        assert!(is_multicast(&[0x01, 0, 0x5e, 0, 0, 1]));
        assert!(is_multicast(&[0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_multicast(&MAC_A) && !is_broadcast(&MAC_A));
    }
}
