//! Test frames: Ethernet + IPv4 + UDP with a self-describing, verifiable payload.

pub const MAGIC: u32 = 0x5056_4e54;
pub const HELLO: u32 = 0x4845_4c4f;
pub const SIZES: &[usize] = &[
    60, 61, 64, 128, 200, 333, 512, 1000, 1500, 1514, 2048, 3000, 4096, 9000, 16384, 32768, 65549,
];

fn pattern(flow: u16, seq: u32, i: usize) -> u8 {
    (i as u32)
        .wrapping_mul(31)
        .wrapping_add(seq.wrapping_mul(7))
        .wrapping_add(u32::from(flow)) as u8
}

/// A frame of exactly `len` bytes (>= 60).
pub fn build(dst: [u8; 6], src: [u8; 6], magic: u32, flow: u16, seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14).min(65535) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, src[5]]);
    ip[16..20].copy_from_slice(&[10, 0, 0, dst[5]]);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&(1000 + flow).to_be_bytes());
    udp[2..4].copy_from_slice(&7u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((len - 34).min(65535) as u16).to_be_bytes());
    f[42..46].copy_from_slice(&magic.to_le_bytes());
    f[46..48].copy_from_slice(&flow.to_le_bytes());
    f[48..52].copy_from_slice(&seq.to_le_bytes());
    f[52..56].copy_from_slice(&(len as u32).to_le_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(56) {
        *b = pattern(flow, seq, i);
    }
    f
}

/// (magic, src MAC, flow, seq) of a valid frame; Err describes the corruption.
pub fn check(f: &[u8]) -> Result<(u32, [u8; 6], u16, u32), String> {
    if f.len() < 60 {
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
