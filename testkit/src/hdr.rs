//! `struct virtio_net_hdr_v1` as plain fields, to and from its little-endian wire form.

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

/// The virtio-net header that precedes every frame on TX and RX.
///
/// With `VIRTIO_F_VERSION_1` (or `MRG_RXBUF`) it is 12 bytes including `num_buffers`;
/// a legacy device without either uses the first 10 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` flags (NEEDS_CSUM = 1, DATA_VALID = 2).
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type, possibly or-ed with `GSO_ECN` (0x80).
    pub gso_type: u8,
    /// Length of the headers (L2+L3+L4) of a GSO frame.
    pub hdr_len: u16,
    /// Segment size (MSS) of a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts, with NEEDS_CSUM.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`, with NEEDS_CSUM.
    pub csum_offset: u16,
    /// Number of RX buffers the frame spans (mergeable RX buffers).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Size of the modern (VERSION_1 / MRG_RXBUF) header.
    pub const LEN: usize = 12;
    /// Size of the legacy header without `num_buffers`.
    pub const LEGACY_LEN: usize = 10;

    /// A header for a plain frame: no offloads.
    pub fn plain() -> Self {
        Self::default()
    }

    /// A header asking for a partial checksum to be completed (`NEEDS_CSUM`).
    pub fn needs_csum(csum_start: u16, csum_offset: u16) -> Self {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            csum_start,
            csum_offset,
            ..Self::default()
        }
    }

    /// True if `NEEDS_CSUM` is set.
    pub fn is_needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0
    }

    /// True if the header describes a GSO super-frame (any type but `GSO_NONE`; ECN ignored).
    pub fn is_gso(&self) -> bool {
        u32::from(self.gso_type & 0x7f) != VIRTIO_NET_HDR_GSO_NONE
    }

    /// A TSO header for a TCP frame (IPv4 if `v4`, else IPv6) with partial checksum:
    /// `l4_off` is where the TCP header starts, `hdr_len` the length of all headers.
    pub fn tso(v4: bool, l4_off: u16, hdr_len: u16, mss: u16) -> Self {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: if v4 {
                VIRTIO_NET_HDR_GSO_TCPV4
            } else {
                VIRTIO_NET_HDR_GSO_TCPV6
            } as u8,
            hdr_len,
            gso_size: mss,
            csum_start: l4_off,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    /// The 12-byte little-endian wire form.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes a header: 12 bytes give all fields, 10 bytes (legacy) give `num_buffers == 0`;
    /// anything shorter is `None`.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < Self::LEGACY_LEN {
            return None;
        }
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: if b.len() >= Self::LEN { le(10) } else { 0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_little_endian() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b[2], 0x02);
        assert_eq!(b[3], 0x01);
        assert_eq!(b[10], 3);
        assert_eq!(VirtioNetHdr::from_bytes(&b), Some(h));
        assert!(h.is_gso());
        assert!(h.is_needs_csum());
    }

    #[test]
    fn legacy_and_short_headers() {
        let b = VirtioNetHdr::needs_csum(34, 6).to_bytes();
        let legacy = VirtioNetHdr::from_bytes(&b[..10]).unwrap();
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy.csum_start, 34);
        assert!(VirtioNetHdr::from_bytes(&b[..9]).is_none());
        assert!(!VirtioNetHdr::plain().is_gso());
    }
}
