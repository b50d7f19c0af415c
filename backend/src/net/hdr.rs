//! The virtio-net header that precedes every frame on the TX and RX rings (virtio 1.x §5.1.6).
//!
//! With `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF` the header is 12 bytes (it ends with
//! `num_buffers`), otherwise the legacy 10-byte layout. All fields are little-endian (VERSION_1;
//! legacy devices use guest-native order, which is little-endian on every host pvnet supports).

use thiserror::Error;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net as vn;

/// `flags`: the driver left a partial checksum at `csum_start + csum_offset` to be completed.
pub const NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `flags` (device → driver): the checksum has been validated / the data is known good.
pub const DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;

/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
/// `gso_type`: TCP over IPv4 segmentation (TSO4).
pub const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
/// `gso_type`: UDP fragmentation offload (UFO, IP fragmentation of one datagram).
pub const GSO_UDP: u8 = vn::VIRTIO_NET_HDR_GSO_UDP as u8;
/// `gso_type`: TCP over IPv6 segmentation (TSO6).
pub const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
/// `gso_type`: UDP segmentation offload (USO, one UDP datagram per segment).
pub const GSO_UDP_L4: u8 = vn::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
/// `gso_type` modifier bit: the TCP stream uses ECN (CWR must only be on the first segment).
pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

/// Length of the modern header (VERSION_1 or MRG_RXBUF): includes `num_buffers`.
pub const HDR_LEN: usize = 12;
/// Length of the legacy header without `num_buffers`.
pub const HDR_LEN_LEGACY: usize = 10;

/// Errors decoding a virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HdrError {
    /// Fewer bytes than the 10-byte minimum header.
    #[error("virtio-net header truncated: {len} bytes, need at least {HDR_LEN_LEGACY}")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
}

/// A decoded `struct virtio_net_hdr` / `virtio_net_hdr_mrg_rxbuf` / `virtio_net_hdr_v1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VirtioNetHdr {
    /// [`NEEDS_CSUM`] / [`DATA_VALID`] bits.
    pub flags: u8,
    /// One of the `GSO_*` types, possibly or-ed with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers (a hint unless `VIRTIO_NET_F_GUEST_HDRLEN`; never trusted here).
    pub hdr_len: u16,
    /// Maximum payload per segment (MSS) for GSO frames.
    pub gso_size: u16,
    /// Offset from the start of the Ethernet frame where checksumming starts.
    pub csum_start: u16,
    /// Offset from `csum_start` where the 16-bit checksum is stored.
    pub csum_offset: u16,
    /// Number of merged RX buffers (RX with MRG_RXBUF; 0 on TX and in the legacy layout).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Decodes a header from `bytes`. Pass exactly the first [`net_hdr_len`] bytes of the
    /// chain: with 12 or more bytes `num_buffers` is read, with 10 or 11 it is 0.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HdrError> {
        if bytes.len() < HDR_LEN_LEGACY {
            return Err(HdrError::TooShort { len: bytes.len() });
        }
        let le16 = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        Ok(Self {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
            num_buffers: if bytes.len() >= HDR_LEN { le16(10) } else { 0 },
        })
    }

    /// Encodes the 12-byte layout ([`to_words`](Self::to_words) as bytes); a legacy receiver
    /// takes the first 10 bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        HdrWords::from(*self).to_bytes()
    }

    /// The 12-byte layout as two words whose little-endian bytes are bytes 0..8 and 8..12,
    /// built in registers, so that a header can be stored with two whole-word stores (bytes
    /// assembled in memory and copied from there at once stall on store forwarding).
    #[inline(always)]
    pub fn to_words(&self) -> (u64, u32) {
        let lo = u64::from(self.flags)
            | u64::from(self.gso_type) << 8
            | u64::from(self.hdr_len) << 16
            | u64::from(self.gso_size) << 32
            | u64::from(self.csum_start) << 48;
        let hi = u32::from(self.csum_offset) | u32::from(self.num_buffers) << 16;
        (lo, hi)
    }

    /// The GSO type without the [`GSO_ECN`] modifier.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Whether the [`GSO_ECN`] modifier is set.
    pub fn gso_ecn(&self) -> bool {
        self.gso_type & GSO_ECN != 0
    }

    /// Whether the driver asked for checksum completion ([`NEEDS_CSUM`]).
    pub fn needs_csum(&self) -> bool {
        self.flags & NEEDS_CSUM != 0
    }

    /// Whether this is a GSO frame (`gso_type` other than [`GSO_NONE`]).
    pub fn is_gso(&self) -> bool {
        self.gso_kind() != GSO_NONE
    }

    /// A header that asks for nothing: a complete frame (flags 0, [`GSO_NONE`]).
    pub const fn plain() -> Self {
        Self {
            flags: 0,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 0,
            csum_offset: 0,
            num_buffers: 0,
        }
    }
}

/// A header as the two words of [`VirtioNetHdr::to_words`]: bytes 0..8 and 8..12 of the
/// 12-byte layout, little-endian.
///
/// The form in which a header travels from a sender's burst to the receive-buffer copy
/// ([`FrameSrc`](crate::datapath::FrameSrc)). A frame set hands a frame over through memory
/// (a virtual call's returned value), and the receiving side then loads what the set just
/// stored: with the header's seven fields the compiler's loads need not line up with its
/// stores (a 4-byte load of `csum_start` and `csum_offset` across the two words was seen),
/// and such a load cannot be forwarded from the store buffer: it waits until the stores
/// before it have committed, behind the stores into receive buffers of the frame before,
/// which miss on lines the guest's core owns. Two words stored and loaded whole always
/// forward.
///
/// ```
/// use pvnet_backend::net::{HdrWords, VirtioNetHdr};
/// let h = VirtioNetHdr { csum_start: 34, csum_offset: 16, ..VirtioNetHdr::plain() };
/// let w = HdrWords::from(h).with_num_buffers(3);
/// assert_eq!(w.hdr(), VirtioNetHdr { num_buffers: 3, ..h });
/// assert_eq!(w.to_bytes(), w.hdr().to_bytes());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HdrWords {
    /// Bytes 0..8: `flags`, `gso_type`, `hdr_len`, `gso_size`, `csum_start`.
    pub lo: u64,
    /// Bytes 8..12: `csum_offset`, `num_buffers`.
    pub hi: u32,
}

impl HdrWords {
    /// [`VirtioNetHdr::plain`] as words.
    pub const PLAIN: HdrWords = HdrWords {
        lo: GSO_NONE as u64,
        hi: 0,
    };

    /// The same header with `num_buffers` set to `n`.
    #[inline(always)]
    pub fn with_num_buffers(self, n: u16) -> Self {
        HdrWords {
            lo: self.lo,
            hi: (self.hi & 0xffff) | u32::from(n) << 16,
        }
    }

    /// The header's fields.
    pub fn hdr(self) -> VirtioNetHdr {
        let w = |s: u32| (self.lo >> s) as u16;
        VirtioNetHdr {
            flags: self.lo as u8,
            gso_type: (self.lo >> 8) as u8,
            hdr_len: w(16),
            gso_size: w(32),
            csum_start: w(48),
            csum_offset: self.hi as u16,
            num_buffers: (self.hi >> 16) as u16,
        }
    }

    /// The 12-byte layout (a legacy receiver takes the first 10 bytes).
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[..8].copy_from_slice(&self.lo.to_le_bytes());
        b[8..].copy_from_slice(&self.hi.to_le_bytes());
        b
    }
}

impl From<VirtioNetHdr> for HdrWords {
    #[inline(always)]
    fn from(h: VirtioNetHdr) -> Self {
        let (lo, hi) = h.to_words();
        HdrWords { lo, hi }
    }
}

/// Length of the virtio-net header for the negotiated `features`: 12 bytes with
/// `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF`, otherwise 10.
pub fn net_hdr_len(features: u64) -> usize {
    let modern = 1u64 << VIRTIO_F_VERSION_1 | 1u64 << vn::VIRTIO_NET_F_MRG_RXBUF;
    if features & modern != 0 {
        HDR_LEN
    } else {
        HDR_LEN_LEGACY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_words_round_trip_every_field() {
        let h = VirtioNetHdr {
            flags: 0x81,
            gso_type: 0x82,
            hdr_len: 0x8483,
            gso_size: 0x8685,
            csum_start: 0x8887,
            csum_offset: 0x8a89,
            num_buffers: 0x8c8b,
        };
        let w = HdrWords::from(h);
        assert_eq!(w.hdr(), h);
        assert_eq!(w.to_bytes(), h.to_bytes());
        assert_eq!(
            w.to_bytes(),
            *b"\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c"
        );
        let one = w.with_num_buffers(1).hdr();
        assert_eq!(
            one,
            VirtioNetHdr {
                num_buffers: 1,
                ..h
            }
        );
        assert_eq!(HdrWords::PLAIN, HdrWords::from(VirtioNetHdr::plain()));
    }

    #[test]
    fn header_round_trip() {
        let h = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 0x81, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0]);
        assert_eq!(VirtioNetHdr::from_bytes(&b), Ok(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert!(h.gso_ecn() && h.needs_csum() && h.is_gso());
        let (lo, hi) = h.to_words();
        assert_eq!([&lo.to_le_bytes()[..], &hi.to_le_bytes()[..]].concat(), b);
        let legacy = VirtioNetHdr::from_bytes(&b[..10]).unwrap();
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy.gso_size, 1448);
    }

    #[test]
    fn header_too_short() {
        assert_eq!(
            VirtioNetHdr::from_bytes(&[0; 9]),
            Err(HdrError::TooShort { len: 9 })
        );
        assert!(VirtioNetHdr::from_bytes(&[]).is_err());
    }

    #[test]
    fn header_len_by_features() {
        assert_eq!(net_hdr_len(0), 10);
        assert_eq!(net_hdr_len(1 << VIRTIO_F_VERSION_1), 12);
        assert_eq!(net_hdr_len(1 << vn::VIRTIO_NET_F_MRG_RXBUF), 12);
        assert_eq!(net_hdr_len(1 << vn::VIRTIO_NET_F_CSUM), 10);
    }
}
