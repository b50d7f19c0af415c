//! Tagged frames: Ethernet + IPv4 + UDP whose payload says what the frame is (a magic
//! number, a flow, a sequence number, its own length) and carries a byte pattern derived from
//! them, so that a receiver detects any lost, reordered, truncated or corrupted byte.
//!
//! Layout: UDP from port `1000 + flow` to port 7 (IPv4 `10.0.0.<last MAC byte>`, header
//! checksum valid, no UDP checksum); at byte 42 the magic (LE u32), 46 the flow (LE u16),
//! 48 the sequence number (LE u32), 52 the frame length (LE u32), then the pattern.

use super::{internet_checksum, ETH_HLEN, ETH_P_IPV4, IPPROTO_UDP};

/// Magic of traffic frames.
pub const MAGIC: u32 = 0x5056_4e54;
/// Magic of hello frames (broadcasts that let the switch learn a MAC).
pub const HELLO: u32 = 0x4845_4c4f;
/// Frame sizes traffic runs cycle through: minimum, odd, around the MTU, jumbo, 64 KiB.
pub const SIZES: &[usize] = &[
    60, 61, 64, 128, 200, 333, 512, 1000, 1500, 1514, 2048, 3000, 4096, 9000, 16384, 32768, 65549,
];
/// Smallest tagged frame.
pub const MIN_LEN: usize = 60;

fn pattern(flow: u16, seq: u32, i: usize) -> u8 {
    (i as u32)
        .wrapping_mul(31)
        .wrapping_add(seq.wrapping_mul(7))
        .wrapping_add(u32::from(flow)) as u8
}

/// A tagged frame of exactly `len` bytes (at least [`MIN_LEN`]; shorter is taken as that).
pub fn build(dst: [u8; 6], src: [u8; 6], magic: u32, flow: u16, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(MIN_LEN);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    let ip = &mut f[ETH_HLEN..ETH_HLEN + 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - ETH_HLEN).min(0xffff) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&[10, 0, 0, src[5]]);
    ip[16..20].copy_from_slice(&[10, 0, 0, dst[5]]);
    let c = internet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&(1000 + flow).to_be_bytes());
    udp[2..4].copy_from_slice(&7u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((len - 34).min(0xffff) as u16).to_be_bytes());
    f[42..46].copy_from_slice(&magic.to_le_bytes());
    f[46..48].copy_from_slice(&flow.to_le_bytes());
    f[48..52].copy_from_slice(&seq.to_le_bytes());
    f[52..56].copy_from_slice(&(len as u32).to_le_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(56) {
        *b = pattern(flow, seq, i);
    }
    f
}

/// What [`check`] reads from an intact tagged frame: `(magic, source MAC, flow, seq)`.
pub type Tag = (u32, [u8; 6], u16, u32);

/// The tag of an intact frame; `Err` describes the corruption.
pub fn check(f: &[u8]) -> Result<Tag, String> {
    if f.len() < MIN_LEN {
        return Err(format!("short frame {}", f.len()));
    }
    let u32at = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    let magic = u32at(42);
    let flow = u16::from_le_bytes([f[46], f[47]]);
    let seq = u32at(48);
    let len = u32at(52) as usize;
    if len != f.len() {
        return Err(format!("length {} != {}", f.len(), len));
    }
    if let Some(i) = (56..f.len()).find(|&i| f[i] != pattern(flow, seq, i)) {
        return Err(format!("byte {i} of flow {flow} seq {seq} corrupted"));
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&f[6..12]);
    Ok((magic, src, flow, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{parse, verify_checksums};

    #[test]
    fn tagged_frames_check_and_catch_corruption() {
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        for &len in SIZES {
            let f = build(b, a, MAGIC, 3, 77, len);
            assert_eq!(f.len(), len);
            assert_eq!(check(&f), Ok((MAGIC, a, 3, 77)));
            // A valid IPv4/UDP frame (no UDP checksum) up to the 64 KiB IP limit.
            if len - ETH_HLEN <= 0xffff {
                assert_eq!(verify_checksums(&f), Ok(()), "{len}");
            }
            assert_eq!(parse(&f).unwrap().ports, Some((1003, 7)));
        }
        let f = build(b, a, HELLO, 0, 0, 10);
        assert_eq!(f.len(), MIN_LEN);
        let mut bad = build(b, a, MAGIC, 1, 2, 300);
        bad[200] ^= 1;
        assert!(check(&bad).unwrap_err().contains("byte 200"));
        assert!(check(&bad[..299]).unwrap_err().contains("length"));
        assert!(check(&bad[..59]).is_err());
    }
}
