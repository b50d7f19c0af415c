//! Frame builders shared by the unit tests of this module (test-only).

use super::csum::{finish, partial_csum, pseudo_header_v4, pseudo_header_v6};
use super::eth::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};

pub const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0a];
pub const MAC_B: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0b];
pub const IP4_A: [u8; 4] = [10, 0, 0, 1];
pub const IP4_B: [u8; 4] = [10, 0, 0, 2];
pub const IP6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const IP6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(f: &mut Vec<u8>, proto: u8, l4_len: usize, src: [u8; 4], dst: [u8; 4]) {
    let start = f.len();
    let tot = (20 + l4_len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let c = finish(partial_csum(&f[start..], 0));
    f[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
}

fn ipv6(f: &mut Vec<u8>, proto: u8, l4_len: usize) {
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4_len as u16).to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    f.extend_from_slice(&IP6_A);
    f.extend_from_slice(&IP6_B);
}

fn tcp(f: &mut Vec<u8>, sport: u16, seq: u32, flags: u8, opts: &[u8], payload: &[u8]) {
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    f.push((((20 + opts.len()) / 4) as u8) << 4);
    f.push(flags);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(opts);
    f.extend_from_slice(payload);
}

fn udp(f: &mut Vec<u8>, sport: u16, payload: &[u8]) {
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
}

/// Stores the complete L4 checksum of `f[l4..]` given the pseudo-header sum.
fn fill_l4(f: &mut [u8], l4: usize, field: usize, pseudo: u32) {
    f[l4 + field..l4 + field + 2].copy_from_slice(&[0, 0]);
    let c = finish(partial_csum(&f[l4..], pseudo));
    f[l4 + field..l4 + field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Ethernet + IPv4 + TCP (no options) with valid checksums; `sport` → port 80.
pub fn tcp_v4_frame(payload: &[u8], seq: u32, flags: u8, sport: u16) -> Vec<u8> {
    tcp_v4_frame_opts(payload, seq, flags, sport, &[])
}

/// As [`tcp_v4_frame`] with TCP options (`opts.len()` a multiple of 4).
pub fn tcp_v4_frame_opts(payload: &[u8], seq: u32, flags: u8, sport: u16, opts: &[u8]) -> Vec<u8> {
    let mut f = eth(ETH_P_IPV4);
    let l4_len = 20 + opts.len() + payload.len();
    ipv4(&mut f, IPPROTO_TCP, l4_len, IP4_A, IP4_B);
    tcp(&mut f, sport, seq, flags, opts, payload);
    let p = pseudo_header_v4(&IP4_A, &IP4_B, IPPROTO_TCP, l4_len as u32);
    fill_l4(&mut f, 34, 16, p);
    f
}

/// Ethernet + IPv4 + TCP between arbitrary addresses/ports (checksums valid).
pub fn tcp_v4_tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = eth(ETH_P_IPV4);
    ipv4(&mut f, IPPROTO_TCP, 20, src, dst);
    tcp(&mut f, sport, 1, 0x10, &[], &[]);
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

/// Ethernet + IPv6 + TCP with a valid checksum.
pub fn tcp_v6_frame(payload: &[u8], seq: u32, flags: u8, sport: u16) -> Vec<u8> {
    let mut f = eth(ETH_P_IPV6);
    let l4_len = 20 + payload.len();
    ipv6(&mut f, IPPROTO_TCP, l4_len);
    tcp(&mut f, sport, seq, flags, &[], payload);
    let p = pseudo_header_v6(&IP6_A, &IP6_B, IPPROTO_TCP, l4_len as u32);
    fill_l4(&mut f, 54, 16, p);
    f
}

/// Ethernet + IPv4 + UDP with a valid checksum.
pub fn udp_v4_frame(payload: &[u8], sport: u16) -> Vec<u8> {
    let mut f = eth(ETH_P_IPV4);
    let l4_len = 8 + payload.len();
    ipv4(&mut f, IPPROTO_UDP, l4_len, IP4_A, IP4_B);
    udp(&mut f, sport, payload);
    let p = pseudo_header_v4(&IP4_A, &IP4_B, IPPROTO_UDP, l4_len as u32);
    fill_l4(&mut f, 34, 6, p);
    f
}

/// Ethernet + IPv6 + UDP with a valid checksum.
pub fn udp_v6_frame(payload: &[u8], sport: u16) -> Vec<u8> {
    let mut f = eth(ETH_P_IPV6);
    let l4_len = 8 + payload.len();
    ipv6(&mut f, IPPROTO_UDP, l4_len);
    udp(&mut f, sport, payload);
    let p = pseudo_header_v6(&IP6_A, &IP6_B, IPPROTO_UDP, l4_len as u32);
    fill_l4(&mut f, 54, 6, p);
    f
}

/// Replaces the complete L4 checksum at `l4 + field` by the folded pseudo-header sum, as a
/// driver does for `NEEDS_CSUM` (the device then sums from `l4`).
pub fn make_partial(f: &mut [u8], l4: usize, field: usize, pseudo: u32) {
    let folded = super::csum::fold(pseudo);
    f[l4 + field..l4 + field + 2].copy_from_slice(&folded.to_be_bytes());
}

/// A deterministic payload of `n` bytes.
pub fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 8)) as u8)
        .collect()
}
