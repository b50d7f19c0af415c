//! Just enough of an IPv4 host for a test guest behind the uplink: answers ARP and ICMP
//! echo, and receives one TCP stream (handshake, in-order data with cumulative ACKs, FIN).
//! Every byte received is checked against the sender's pattern; checksums are verified on
//! frames that do not say `NEEDS_CSUM`.

use pvnet_testkit::frames::{self, eth, fold, internet_checksum, sum16};
use pvnet_testkit::VirtioNetHdr;
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

/// The byte at offset `i` of the test stream.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// The guest's host state.
pub struct Stack {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub port: u16,
    /// Stream bytes received in order.
    pub received: u64,
    /// The peer's FIN arrived (and was answered).
    pub fin: bool,
    pub pings: u64,
    /// Frames received with a GSO type, and with `NEEDS_CSUM`.
    pub gso_frames: u64,
    pub partial_frames: u64,
    /// Largest frame received.
    pub largest: usize,
    /// What went wrong (bad checksums, wrong bytes).
    pub errors: Vec<String>,
    iss: u32,
    rcv_nxt: Option<u32>,
    peer: Option<([u8; 6], [u8; 4], u16)>,
}

impl Stack {
    pub fn new(mac: [u8; 6], ip: [u8; 4], port: u16) -> Stack {
        Stack {
            mac,
            ip,
            port,
            received: 0,
            fin: false,
            pings: 0,
            gso_frames: 0,
            partial_frames: 0,
            largest: 0,
            errors: Vec::new(),
            iss: 0x1000_0000,
            rcv_nxt: None,
            peer: None,
        }
    }

    /// Handles one received frame; returns the frames to send.
    pub fn handle(&mut self, hdr: &VirtioNetHdr, f: &[u8]) -> Vec<Vec<u8>> {
        if f.len() < 14 {
            self.errors.push(format!("runt frame of {} bytes", f.len()));
            return Vec::new();
        }
        self.largest = self.largest.max(f.len());
        match u16::from_be_bytes([f[12], f[13]]) {
            ETH_P_ARP => self.arp(f).into_iter().collect(),
            ETH_P_IP => self.ipv4(hdr, f),
            _ => Vec::new(),
        }
    }

    fn arp(&self, f: &[u8]) -> Option<Vec<u8>> {
        let a = f.get(14..42)?;
        // Request (op 1) for our address.
        if a[6..8] != [0, 1] || a[24..28] != self.ip {
            return None;
        }
        let mut r = a.to_vec();
        r[6..8].copy_from_slice(&[0, 2]);
        r[8..14].copy_from_slice(&self.mac);
        r[14..18].copy_from_slice(&self.ip);
        r[18..24].copy_from_slice(&a[8..14]);
        r[24..28].copy_from_slice(&a[14..18]);
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&a[8..14]);
        Some(eth(dst, self.mac, ETH_P_ARP, &r))
    }

    fn ipv4(&mut self, hdr: &VirtioNetHdr, f: &[u8]) -> Vec<Vec<u8>> {
        let ihl = usize::from(f.get(14).map_or(0, |b| b & 0xf)) * 4;
        if ihl < 20 || f.len() < 14 + ihl || f[30..34] != self.ip {
            return Vec::new();
        }
        let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let Some(pkt) = f.get(14..14 + tot) else {
            self.errors
                .push(format!("IP length {tot} beyond frame of {}", f.len()));
            return Vec::new();
        };
        if hdr.gso_type != 0 {
            self.gso_frames += 1;
        }
        let partial = hdr.flags & 1 != 0;
        if partial {
            self.partial_frames += 1;
        }
        let mut src = [0u8; 4];
        src.copy_from_slice(&f[26..30]);
        let mut smac = [0u8; 6];
        smac.copy_from_slice(&f[6..12]);
        match f[23] {
            1 => self.icmp(smac, src, &pkt[ihl..]).into_iter().collect(),
            6 => {
                if !partial {
                    if let Err(e) = frames::verify_checksums(&f[..14 + tot]) {
                        self.errors
                            .push(format!("TCP frame with a bad checksum: {e:?}"));
                        return Vec::new();
                    }
                }
                self.tcp(smac, src, &pkt[ihl..])
            }
            _ => Vec::new(),
        }
    }

    fn icmp(&mut self, smac: [u8; 6], src: [u8; 4], m: &[u8]) -> Option<Vec<u8>> {
        if m.first() != Some(&8) {
            return None;
        }
        if internet_checksum(m) != 0 {
            self.errors.push("ICMP echo with a bad checksum".into());
            return None;
        }
        self.pings += 1;
        let mut r = m.to_vec();
        r[0] = 0;
        r[2..4].fill(0);
        let c = internet_checksum(&r);
        r[2..4].copy_from_slice(&c.to_be_bytes());
        Some(eth(smac, self.mac, ETH_P_IP, &ipv4(self.ip, src, 1, &r)))
    }

    fn tcp(&mut self, smac: [u8; 6], src: [u8; 4], t: &[u8]) -> Vec<Vec<u8>> {
        if t.len() < 20 || u16::from_be_bytes([t[2], t[3]]) != self.port {
            return Vec::new();
        }
        let sport = u16::from_be_bytes([t[0], t[1]]);
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let doff = usize::from(t[12] >> 4) * 4;
        let flags = t[13];
        let payload = t.get(doff..).unwrap_or_default();
        if flags & RST != 0 {
            self.errors.push("connection reset by the host side".into());
            return Vec::new();
        }
        if flags & SYN != 0 {
            // A new connection (or a retransmitted SYN): answer with our SYN+ACK.
            self.peer = Some((smac, src, sport));
            self.rcv_nxt = Some(seq.wrapping_add(1));
            self.received = 0;
            self.fin = false;
            let ack = seq.wrapping_add(1);
            // MSS 1460.
            let opts = [2, 4, 0x05, 0xb4];
            return vec![self.segment(SYN | ACK, self.iss, ack, &opts)];
        }
        let Some(nxt) = self.rcv_nxt else {
            return Vec::new();
        };
        if seq == nxt && !payload.is_empty() {
            for (i, b) in payload.iter().enumerate() {
                if *b != pattern(self.received + i as u64) {
                    self.errors.push(format!(
                        "stream byte {} is {b:#x}, expected {:#x}",
                        self.received + i as u64,
                        pattern(self.received + i as u64)
                    ));
                    break;
                }
            }
            self.received += payload.len() as u64;
            self.rcv_nxt = Some(nxt.wrapping_add(payload.len() as u32));
        }
        let mut flags_out = ACK;
        if flags & FIN != 0 && seq.wrapping_add(payload.len() as u32) == self.rcv_nxt.unwrap_or(0) {
            self.rcv_nxt = self.rcv_nxt.map(|n| n.wrapping_add(1));
            if !self.fin {
                flags_out |= FIN;
            }
            self.fin = true;
        }
        if payload.is_empty() && flags & FIN == 0 {
            // A pure ACK (of our SYN+ACK or FIN): nothing to answer.
            return Vec::new();
        }
        let ack = self.rcv_nxt.unwrap_or(0);
        vec![self.segment(flags_out, self.iss.wrapping_add(1), ack, &[])]
    }

    /// A TCP segment to the peer, with valid checksums, no payload.
    fn segment(&self, flags: u8, seq: u32, ack: u32, opts: &[u8]) -> Vec<u8> {
        let Some((pmac, pip, pport)) = self.peer else {
            return Vec::new();
        };
        let ends = Ends {
            mac: (self.mac, pmac),
            ip: (self.ip, pip),
            port: (self.port, pport),
        };
        tcp_frame(&ends, flags, seq, ack, opts, &[])
    }
}

/// Both ends of a TCP connection: (ours, the peer's).
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub mac: ([u8; 6], [u8; 6]),
    pub ip: ([u8; 4], [u8; 4]),
    pub port: (u16, u16),
}

/// An Ethernet + IPv4 + TCP frame from us to the peer with valid checksums.
pub fn tcp_frame(e: &Ends, flags: u8, seq: u32, ack: u32, opts: &[u8], data: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20 + opts.len()];
    t[0..2].copy_from_slice(&e.port.0.to_be_bytes());
    t[2..4].copy_from_slice(&e.port.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = (((20 + opts.len()) / 4) << 4) as u8;
    t[13] = flags;
    t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    t[20..].copy_from_slice(opts);
    t.extend_from_slice(data);
    let mut s = sum16(&e.ip.0, 0);
    s = sum16(&e.ip.1, s);
    s = sum16(&[0, 6], s);
    s = sum16(&(t.len() as u16).to_be_bytes(), s);
    let c = !fold(sum16(&t, s));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    eth(e.mac.1, e.mac.0, ETH_P_IP, &ipv4(e.ip.0, e.ip.1, 6, &t))
}

/// Unacknowledged stream bytes at most.
pub const IN_FLIGHT: u64 = 48_000;
/// Stream bytes per frame at most (one TSO frame).
pub const CHUNK: u64 = 16_000;
/// The segment size the device cuts TSO frames into.
pub const MSS: u16 = 1448;
/// With unacknowledged bytes and no progress for this long, the sender goes back to the
/// first unacknowledged byte (go-back-N); a closed window gets a probe.
pub const RTO: Duration = Duration::from_millis(200);

/// The sending end of one TCP connection from the guest. It keeps within the window the
/// peer advertises: the host kernel drops what lies beyond it (`TcpExtBeyondWindow`), and
/// its window shrinks while the receiving thread is not scheduled. Lost bytes go again
/// after [`RTO`] without progress, counted in `retransmits` (pvnet's own losses show in its
/// drop counters, which the tests check).
pub struct Sender {
    pub ends: Ends,
    iss: u32,
    /// The peer's next sequence number (once it answered).
    pub rcv_nxt: Option<u32>,
    /// Stream bytes the peer acknowledged.
    pub acked: u64,
    /// The peer's receive window past `acked` (unscaled: our SYN offers no scaling).
    pub wnd: u64,
    /// The next stream byte to send.
    pub next: u64,
    /// When `acked` last moved (or the sender last went back).
    progress: Instant,
    /// Times the sender went back to `acked` (or probed a closed window).
    pub retransmits: u32,
    /// The peer's FIN arrived.
    pub peer_fin: bool,
}

impl Sender {
    pub fn new(ends: Ends) -> Sender {
        Sender {
            ends,
            iss: 0x2000_0000,
            rcv_nxt: None,
            acked: 0,
            wnd: 0,
            next: 0,
            progress: Instant::now(),
            retransmits: 0,
            peer_fin: false,
        }
    }

    /// The next piece of a `total`-byte stream to send at `now`, as (offset, length): within
    /// the peer's window, [`IN_FLIGHT`] and [`CHUNK`]. After [`RTO`] without progress it
    /// starts again at `acked`, with one [`MSS`] even into a closed window (a probe that
    /// makes the peer say its window again).
    pub fn next_piece(&mut self, total: u64, now: Instant) -> Option<(u64, u64)> {
        let mut wnd = self.wnd;
        let stuck = self.next > self.acked || self.wnd == 0;
        if self.acked < total && stuck && now.duration_since(self.progress) >= RTO {
            self.next = self.acked;
            self.progress = now;
            self.retransmits += 1;
            wnd = wnd.max(u64::from(MSS));
        }
        let end = (self.acked + wnd.min(IN_FLIGHT)).min(total);
        if self.next >= end {
            return None;
        }
        let off = self.next;
        let n = (end - off).min(CHUNK);
        self.next += n;
        Some((off, n))
    }

    /// The SYN (MSS 1460).
    pub fn syn(&self) -> Vec<u8> {
        tcp_frame(&self.ends, SYN, self.iss, 0, &[2, 4, 0x05, 0xb4], &[])
    }

    /// Stream bytes `off..off + data.len()` (PSH|ACK): with `mss`, as one TSO frame that
    /// asks the device to segment it and complete the checksums.
    pub fn data(&self, off: u64, data: &[u8], mss: Option<u16>) -> (VirtioNetHdr, Vec<u8>) {
        let seq = self.iss.wrapping_add(1).wrapping_add(off as u32);
        let f = tcp_frame(&self.ends, 0x18, seq, self.rcv_nxt.unwrap_or(0), &[], data);
        match mss {
            Some(m) if data.len() > usize::from(m) => {
                let (h, partial) = frames::partial_csum(&f).expect("TCP frame");
                let mut t = frames::tso_hdr(true, 34, 54, m);
                t.flags = h.flags;
                (t, partial)
            }
            _ => (VirtioNetHdr::plain(), f),
        }
    }

    /// FIN|ACK after `len` stream bytes.
    pub fn fin(&self, len: u64) -> Vec<u8> {
        let seq = self.iss.wrapping_add(1).wrapping_add(len as u32);
        tcp_frame(
            &self.ends,
            FIN | ACK,
            seq,
            self.rcv_nxt.unwrap_or(0),
            &[],
            &[],
        )
    }

    /// Takes a frame from the peer; returns the ACK to send, if one is due.
    pub fn on_frame(&mut self, f: &[u8]) -> Option<Vec<u8>> {
        if f.len() < 54 || f[12..14] != [8, 0] || f[23] != 6 || f[26..30] != self.ends.ip.1 {
            return None;
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        let t = f.get(14 + ihl..)?;
        if u16::from_be_bytes([t[2], t[3]]) != self.ends.port.0 {
            return None;
        }
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        let flags = t[13];
        if flags & ACK != 0 {
            let a = u64::from(ack.wrapping_sub(self.iss.wrapping_add(1)));
            // A cumulative acknowledgement at or past `acked` carries the current window
            // (an older one, overtaken, is ignored).
            if a < (1 << 31) && a >= self.acked {
                if a > self.acked {
                    self.progress = Instant::now();
                }
                self.acked = a;
                self.wnd = u64::from(u16::from_be_bytes([t[14], t[15]]));
            }
        }
        if flags & SYN != 0 {
            self.rcv_nxt = Some(seq.wrapping_add(1));
            let s = self.iss.wrapping_add(1);
            return Some(tcp_frame(&self.ends, ACK, s, seq.wrapping_add(1), &[], &[]));
        }
        if flags & FIN != 0 && !self.peer_fin {
            self.peer_fin = true;
            let n = seq.wrapping_add(1);
            self.rcv_nxt = Some(n);
            let s = self.iss.wrapping_add(1).wrapping_add(self.acked as u32);
            return Some(tcp_frame(&self.ends, ACK, s, n, &[], &[]));
        }
        None
    }
}

/// An IPv4 packet (header with a valid checksum, then `payload`).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = internet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

#[cfg(test)]
mod sender {
    use super::*;

    fn ends() -> Ends {
        Ends {
            mac: ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            ip: ([10, 0, 0, 2], [10, 0, 0, 1]),
            port: (40001, 5202),
        }
    }

    /// The peer's segment acknowledging `acked` stream bytes with window `wnd` (its TCP
    /// checksum is stale after the window is set: `on_frame` does not check it).
    fn peer_ack(s: &Sender, flags: u8, acked: u64, wnd: u16) -> Vec<u8> {
        let e = ends();
        let back = Ends {
            mac: (e.mac.1, e.mac.0),
            ip: (e.ip.1, e.ip.0),
            port: (e.port.1, e.port.0),
        };
        let ack = s.iss.wrapping_add(1).wrapping_add(acked as u32);
        let mut f = tcp_frame(&back, flags, 7, ack, &[], &[]);
        f[14 + 20 + 14..14 + 20 + 16].copy_from_slice(&wnd.to_be_bytes());
        f
    }

    /// A sender past the handshake, the peer offering `wnd`.
    fn open(wnd: u16) -> Sender {
        let mut s = Sender::new(ends());
        let synack = peer_ack(&s, SYN | ACK, 0, wnd);
        assert!(s.on_frame(&synack).is_some(), "the SYN+ACK is acknowledged");
        s
    }

    #[test]
    fn pieces_keep_within_the_peer_window() {
        let mut s = open(20_000);
        let now = Instant::now();
        assert_eq!(s.next_piece(1 << 20, now), Some((0, CHUNK)));
        assert_eq!(s.next_piece(1 << 20, now), Some((CHUNK, 4_000)));
        assert_eq!(s.next_piece(1 << 20, now), None, "window full");
        // The window moves with the acknowledgement and shrinks with the peer's buffer.
        s.on_frame(&peer_ack(&s, ACK, 10_000, 12_000));
        assert_eq!(s.next_piece(1 << 20, now), Some((20_000, 2_000)));
        assert_eq!(s.next_piece(1 << 20, now), None);
        // A stale acknowledgement (overtaken) says nothing of the window.
        s.on_frame(&peer_ack(&s, ACK, 5_000, 65_535));
        assert_eq!((s.acked, s.wnd), (10_000, 12_000));
        assert_eq!(s.retransmits, 0);
    }

    #[test]
    fn in_flight_and_stream_end_bound_the_pieces() {
        let mut s = open(65_535);
        let now = Instant::now();
        let mut sent = 0;
        while let Some((off, n)) = s.next_piece(40_000 + IN_FLIGHT, now) {
            assert_eq!(off, sent);
            sent += n;
        }
        assert_eq!(sent, IN_FLIGHT);
        s.on_frame(&peer_ack(&s, ACK, 45_000, 65_535));
        let mut rest = 0;
        while let Some((_, n)) = s.next_piece(40_000 + IN_FLIGHT, now) {
            rest += n;
        }
        assert_eq!(sent + rest, 40_000 + IN_FLIGHT, "stops at the stream's end");
    }

    #[test]
    fn lost_bytes_go_again_after_a_quiet_rto() {
        let mut s = open(65_535);
        let t = Instant::now();
        while s.next_piece(1 << 20, t).is_some() {}
        s.on_frame(&peer_ack(&s, ACK, 16_000, 65_535));
        let t = Instant::now();
        assert_eq!(s.next_piece(1 << 20, t), Some((IN_FLIGHT, CHUNK)));
        assert_eq!(s.next_piece(1 << 20, t), None);
        assert_eq!(s.next_piece(1 << 20, t + RTO / 2), None, "not yet");
        assert_eq!(s.next_piece(1 << 20, t + RTO), Some((16_000, CHUNK)));
        assert_eq!(s.retransmits, 1);
    }

    #[test]
    fn a_closed_window_gets_a_probe_after_rto() {
        let mut s = open(65_535);
        let t = Instant::now();
        while s.next_piece(1 << 20, t).is_some() {}
        s.on_frame(&peer_ack(&s, ACK, IN_FLIGHT, 0));
        let t = Instant::now();
        assert_eq!(s.next_piece(1 << 20, t), None, "window closed");
        assert_eq!(
            s.next_piece(1 << 20, t + RTO),
            Some((IN_FLIGHT, u64::from(MSS)))
        );
        assert_eq!(s.next_piece(1 << 20, t + RTO), None);
        assert_eq!(s.retransmits, 1);
    }
}
