//! Offload planning and software segmentation (TSO4/TSO6, and USO) for receivers that did not
//! negotiate the offload the sender used.
//!
//! [`plan`] compares what a TX header asks for with the receiver's negotiated features:
//! pass the header through, complete the checksum in software, or [`segment`].
//!
//! [`segment`] trusts nothing in the header beyond `gso_type`, `gso_size` and the checksum
//! request: the L2/L3/L4 headers are re-parsed from the frame, `csum_start`/`csum_offset` must
//! match them, `hdr_len` (only a hint in virtio) must lie within the frame. Each segment is
//! built in the caller's scratch buffer (one at a time, so nothing is allocated): a copy of the
//! headers with IPv4 total length / id / header checksum or IPv6 payload length fixed, TCP
//! sequence advanced, FIN/PSH only on the last and CWR only on the first segment, and a
//! complete L4 checksum (pseudo-header included). Segments are handed to `emit` with a header
//! that asks for nothing (flags 0, `GSO_NONE`), which is valid for every receiver.
//!
//! Known limit: an IPv6 Routing header's final destination is not used for the pseudo-header
//! (the IPv6 destination field is); guests do not send TSO frames with routing headers.

use std::convert::Infallible;

use thiserror::Error;
use virtio_bindings::virtio_net as vn;

use super::csum::{add, finish, partial_csum, pseudo_header_v4, pseudo_header_v6};
use super::eth::{
    EthInfo, Ipv4Hdr, Ipv6Hdr, L4Hdr, ParseError, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_HLEN, TCP_CWR, TCP_FIN, TCP_PSH,
};
use super::hdr::{VirtioNetHdr, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};

/// Largest payload (after all headers) accepted in one GSO frame.
pub const MAX_GSO_PAYLOAD: usize = 65536;
/// Largest header stack (Ethernet + VLANs + IP + options/extensions + TCP) accepted.
pub const MAX_GSO_HEADERS: usize = 256;
/// Largest GSO frame accepted: payload plus headers.
pub const MAX_GSO_FRAME: usize = MAX_GSO_PAYLOAD + MAX_GSO_HEADERS;
/// Most segments one frame may produce (a 64 KiB payload needs `gso_size` ≥ 64). Bounds the
/// work and the RX buffers a single guest frame can claim.
pub const MAX_SEGMENTS: usize = 1024;
/// A scratch buffer of this size fits any segment [`segment`] can build.
pub const SCRATCH_LEN: usize = MAX_GSO_FRAME;

fn feature(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// What the switch does with a frame for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Copy the frame and pass the TX header's offload fields through unchanged.
    PassThrough,
    /// Complete the checksum in software ([`super::csum::complete_csum`] with the header's
    /// `csum_start`/`csum_offset`) and deliver with a plain header (flags 0, `GSO_NONE`).
    CompleteCsum,
    /// Split with [`segment`]; each segment gets a plain header.
    Segment,
}

/// Decides how a frame whose TX header is `hdr` reaches a receiver that negotiated
/// `rx_features` (`VIRTIO_NET_F_*` bits): pass-through when the receiver has the matching
/// `GUEST_CSUM` / `GUEST_TSO4` / `GUEST_TSO6` / `GUEST_ECN` / `GUEST_UFO` / `GUEST_USO4+6`
/// features, otherwise the software fallback. Unknown GSO types plan as [`Delivery::Segment`],
/// which then fails with [`InvalidGso::Unsupported`] (drop and count).
pub fn plan(hdr: &VirtioNetHdr, rx_features: u64) -> Delivery {
    let csum = feature(rx_features, vn::VIRTIO_NET_F_GUEST_CSUM);
    let ecn_ok = !hdr.gso_ecn() || feature(rx_features, vn::VIRTIO_NET_F_GUEST_ECN);
    let gso_ok = match hdr.gso_kind() {
        GSO_NONE => {
            return if !hdr.needs_csum() || csum {
                Delivery::PassThrough
            } else {
                Delivery::CompleteCsum
            };
        }
        GSO_TCPV4 => feature(rx_features, vn::VIRTIO_NET_F_GUEST_TSO4) && ecn_ok,
        GSO_TCPV6 => feature(rx_features, vn::VIRTIO_NET_F_GUEST_TSO6) && ecn_ok,
        GSO_UDP => feature(rx_features, vn::VIRTIO_NET_F_GUEST_UFO),
        // The header does not say IPv4 or IPv6, so both are required.
        GSO_UDP_L4 => {
            feature(rx_features, vn::VIRTIO_NET_F_GUEST_USO4)
                && feature(rx_features, vn::VIRTIO_NET_F_GUEST_USO6)
        }
        _ => false,
    };
    // Every GSO receive offload requires GUEST_CSUM (virtio 1.x §5.1.3.1).
    if gso_ok && csum {
        Delivery::PassThrough
    } else {
        Delivery::Segment
    }
}

/// Why a GSO frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InvalidGso {
    /// A header is truncated or malformed.
    #[error("bad headers: {0}")]
    Parse(#[from] ParseError),
    /// `gso_type` is not TCPV4, TCPV6 or UDP_L4 (UFO needs IP fragmentation: unsupported).
    #[error("unsupported gso_type {0:#x}")]
    Unsupported(u8),
    /// `gso_size` is 0.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// The frame's protocols do not match `gso_type` (e.g. TCPV4 on an IPv6 frame).
    #[error("gso_type {0:#x} does not match the frame's headers")]
    ProtocolMismatch(u8),
    /// The IP packet is a fragment.
    #[error("cannot segment an IP fragment")]
    Fragment,
    /// `NEEDS_CSUM` with `csum_start`/`csum_offset` other than the parsed L4 header's.
    #[error("csum_start {csum_start}/csum_offset {csum_offset} do not match L4 header at {l4}")]
    CsumMismatch {
        /// From the virtio header.
        csum_start: u16,
        /// From the virtio header.
        csum_offset: u16,
        /// Parsed L4 offset.
        l4: usize,
    },
    /// `hdr_len` beyond the end of the frame.
    #[error("hdr_len {hdr_len} beyond frame of {len} bytes")]
    HdrLen {
        /// From the virtio header.
        hdr_len: u16,
        /// Frame length.
        len: usize,
    },
    /// Headers longer than [`MAX_GSO_HEADERS`].
    #[error("headers of {0} bytes exceed the limit")]
    HeadersTooLong(usize),
    /// Frame longer than [`MAX_GSO_FRAME`] or payload longer than [`MAX_GSO_PAYLOAD`].
    #[error("GSO frame of {0} bytes too large")]
    FrameTooLarge(usize),
    /// More than [`MAX_SEGMENTS`] segments would result.
    #[error("{0} segments exceed the limit")]
    TooManySegments(usize),
    /// A segment's IP length would not fit its 16-bit length field.
    #[error("segment too large for its IP length field")]
    SegmentTooLarge,
    /// The scratch buffer cannot hold one segment.
    #[error("scratch buffer of {have} bytes, segment needs {need}")]
    ScratchTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Errors from [`segment`]: an invalid frame (nothing emitted) or the caller's `emit` failing.
#[derive(Debug, Error)]
pub enum GsoError<E> {
    /// The frame or header is invalid; no segment was emitted.
    #[error(transparent)]
    Invalid(#[from] InvalidGso),
    /// `emit` failed after `sent` segments had been emitted successfully.
    #[error("emit failed after {sent} segments: {err}")]
    Emit {
        /// Segments emitted before the failure.
        sent: usize,
        /// The caller's error.
        err: E,
    },
}

/// The validated layout of a GSO frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoLayout {
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// The L3 header.
    l3: L3,
    /// The L4 header.
    pub l4: L4Hdr,
    /// Length of all headers (payload offset).
    pub headers_len: usize,
    /// Payload bytes to split.
    pub payload_len: usize,
    /// Maximum payload per segment.
    pub mss: usize,
    /// Number of segments [`segment`] will emit.
    pub segments: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L3 {
    V4(Ipv4Hdr),
    V6(Ipv6Hdr),
}

/// Validates a GSO frame without emitting anything; `segments` tells the caller how many RX
/// buffers the result needs (e.g. to check ring space before starting).
pub fn inspect(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<GsoLayout, InvalidGso> {
    let kind = hdr.gso_kind();
    let (want_v4, want_proto) = match kind {
        GSO_TCPV4 => (Some(true), IPPROTO_TCP),
        GSO_TCPV6 => (Some(false), IPPROTO_TCP),
        GSO_UDP_L4 => (None, IPPROTO_UDP),
        other => return Err(InvalidGso::Unsupported(other)),
    };
    if hdr.gso_size == 0 {
        return Err(InvalidGso::ZeroGsoSize);
    }
    if frame.len() > MAX_GSO_FRAME {
        return Err(InvalidGso::FrameTooLarge(frame.len()));
    }
    if usize::from(hdr.hdr_len) > frame.len() {
        return Err(InvalidGso::HdrLen {
            hdr_len: hdr.hdr_len,
            len: frame.len(),
        });
    }
    let eth = EthInfo::parse(frame)?;
    let (l3, proto, l4_off) = match (eth.ethertype, want_v4) {
        (ETH_P_IPV4, Some(true) | None) => {
            let ip = Ipv4Hdr::parse(frame, eth.l3_offset)?;
            if ip.is_fragment() {
                return Err(InvalidGso::Fragment);
            }
            (L3::V4(ip), ip.protocol, ip.l4_offset())
        }
        (ETH_P_IPV6, Some(false) | None) => {
            let ip = Ipv6Hdr::parse(frame, eth.l3_offset)?;
            if ip.fragment {
                return Err(InvalidGso::Fragment);
            }
            (L3::V6(ip), ip.next_header, ip.l4_offset)
        }
        _ => return Err(InvalidGso::ProtocolMismatch(hdr.gso_type)),
    };
    if proto != want_proto {
        return Err(InvalidGso::ProtocolMismatch(hdr.gso_type));
    }
    let (l4, field) = if proto == IPPROTO_TCP {
        (L4Hdr::parse_tcp(frame, l4_off)?, 16)
    } else {
        (L4Hdr::parse_udp(frame, l4_off)?, 6)
    };
    if hdr.needs_csum()
        && (usize::from(hdr.csum_start) != l4_off || usize::from(hdr.csum_offset) != field)
    {
        return Err(InvalidGso::CsumMismatch {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            l4: l4_off,
        });
    }
    let headers_len = l4.payload_offset();
    if headers_len > MAX_GSO_HEADERS {
        return Err(InvalidGso::HeadersTooLong(headers_len));
    }
    // parse_tcp/parse_udp checked headers_len <= frame.len().
    let payload_len = frame.len() - headers_len;
    if payload_len > MAX_GSO_PAYLOAD {
        return Err(InvalidGso::FrameTooLarge(frame.len()));
    }
    let mss = usize::from(hdr.gso_size);
    let segments = payload_len.div_ceil(mss).max(1);
    if segments > MAX_SEGMENTS {
        return Err(InvalidGso::TooManySegments(segments));
    }
    let biggest = headers_len + mss.min(payload_len);
    let ip_len = match l3 {
        L3::V4(_) => biggest - eth.l3_offset,
        L3::V6(_) => biggest - eth.l3_offset - IPV6_HLEN,
    };
    if ip_len > usize::from(u16::MAX) {
        return Err(InvalidGso::SegmentTooLarge);
    }
    Ok(GsoLayout {
        l3_offset: eth.l3_offset,
        l3,
        l4,
        headers_len,
        payload_len,
        mss,
        segments,
    })
}

/// Number of segments [`segment`] would emit for this frame (see [`inspect`]).
pub fn segments_needed(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<usize, InvalidGso> {
    inspect(hdr, frame).map(|l| l.segments)
}

#[inline]
fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Splits the GSO frame `frame` (Ethernet onwards, after the virtio header `hdr`) into
/// complete frames of at most `gso_size` payload bytes, building each in `scratch` (at least
/// headers + `gso_size` bytes; [`SCRATCH_LEN`] always suffices) and passing it to `emit` with a
/// plain header. Returns the number of segments emitted. TCP over IPv4/IPv6 (TSO) and UDP
/// segmentation (USO, each segment its own datagram) are supported.
pub fn segment<E>(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&VirtioNetHdr, &[u8]) -> Result<(), E>,
) -> Result<usize, GsoError<E>> {
    let lay = inspect(hdr, frame)?;
    let hl = lay.headers_len;
    let need = hl + lay.mss.min(lay.payload_len);
    if scratch.len() < need {
        return Err(InvalidGso::ScratchTooSmall {
            need,
            have: scratch.len(),
        }
        .into());
    }
    let out_hdr = VirtioNetHdr::plain();
    let payload = &frame[hl..];
    scratch[..hl].copy_from_slice(&frame[..hl]);
    let l4 = lay.l4.offset;
    let tcp = lay.l4.proto == IPPROTO_TCP;
    let mut off = 0usize;
    for i in 0..lay.segments {
        let chunk = lay.mss.min(lay.payload_len - off);
        let last = i + 1 == lay.segments;
        let seg_len = hl + chunk;
        scratch[hl..seg_len].copy_from_slice(&payload[off..off + chunk]);
        // Lengths fit in u16: inspect() bounded the largest segment's IP length, and the L4
        // length is smaller than it.
        let l4_len = (seg_len - l4) as u16;
        let pseudo = match lay.l3 {
            L3::V4(ip) => {
                let at = ip.offset;
                put16(scratch, at + 2, (seg_len - at) as u16);
                put16(scratch, at + 4, ip.id.wrapping_add(i as u16));
                put16(scratch, at + 10, 0);
                let c = finish(partial_csum(&scratch[at..at + ip.header_len], 0));
                put16(scratch, at + 10, c);
                pseudo_header_v4(&ip.src, &ip.dst, lay.l4.proto, u32::from(l4_len))
            }
            L3::V6(ip) => {
                put16(
                    scratch,
                    ip.offset + 4,
                    (seg_len - ip.offset - IPV6_HLEN) as u16,
                );
                pseudo_header_v6(&ip.src, &ip.dst, lay.l4.proto, u32::from(l4_len))
            }
        };
        let field = if tcp {
            let seq = lay.l4.seq.wrapping_add(off as u32);
            scratch[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = lay.l4.tcp_flags;
            if i > 0 {
                flags &= !TCP_CWR;
            }
            if !last {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            scratch[l4 + 13] = flags;
            l4 + 16
        } else {
            put16(scratch, l4 + 4, l4_len);
            l4 + 6
        };
        put16(scratch, field, 0);
        let mut c = finish(add(partial_csum(&scratch[l4..seg_len], 0), pseudo));
        if c == 0 && !tcp {
            c = 0xffff; // UDP: 0 means "no checksum".
        }
        put16(scratch, field, c);
        emit(&out_hdr, &scratch[..seg_len]).map_err(|err| GsoError::Emit { sent: i, err })?;
        off += chunk;
    }
    Ok(lay.segments)
}

/// [`segment`] with an infallible `emit` (convenience for tests and simple callers).
pub fn segment_all(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&VirtioNetHdr, &[u8]),
) -> Result<usize, InvalidGso> {
    segment::<Infallible>(hdr, frame, scratch, |h, f| {
        emit(h, f);
        Ok(())
    })
    .map_err(|e| match e {
        GsoError::Invalid(i) => i,
        GsoError::Emit { err, .. } => match err {},
    })
}

#[cfg(test)]
#[path = "gso_tests.rs"]
mod tests;
