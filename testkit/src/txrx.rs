//! Sending and receiving frames, the way a guest's network stack does: TX chains written from
//! the frame bytes, RX buffers posted and re-posted, mergeable RX buffers reassembled.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{drain, Partial, Repost};
use crate::ring::{DescSpec, Owner};
use crate::{Error, TestGuest, VirtioNetHdr};

/// With `tx_split`, frame bytes are cut into descriptors of at most this size.
const TX_SPLIT_PIECE: usize = 16 << 10;

/// A frame received on an RX ring, reassembled from its buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The net header as the device wrote it (from the first buffer).
    pub hdr: VirtioNetHdr,
    /// The Ethernet frame, header stripped.
    pub frame: Vec<u8>,
    /// How many RX buffers (used entries) it occupied.
    pub buffers: u16,
}

/// Waits until one of `fds` is readable or `timeout` passes; true if one is.
pub(crate) fn wait_readable(fds: &[i32], timeout: Duration) -> Result<bool, Error> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd structs
    // that outlives the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
    Ok(rc > 0)
}

impl TestGuest {
    /// Posts up to `count` RX buffers of `buf_len` bytes (one writable descriptor each) and
    /// kicks; returns how many were posted (fewer when the ring fills up).
    pub fn post_rx(&mut self, pair: u16, count: usize, buf_len: u32) -> Result<usize, Error> {
        if buf_len == 0 {
            return Err(Error::InvalidArgument("RX buffer length 0".into()));
        }
        let room = self.pair(pair)?.rx.free_descs().min(count);
        for _ in 0..room {
            let addr = self.mem.alloc_buf(buf_len)?;
            self.pairs[usize::from(pair)].rx.add_one(
                addr,
                buf_len,
                VRING_DESC_F_WRITE as u16,
                Owner::Buf(addr, buf_len),
            )?;
        }
        self.pairs[usize::from(pair)].rx.publish()?;
        Ok(room)
    }

    /// How consumed RX buffers go back to the device (default [`Repost::Batch`]).
    pub fn set_rx_repost(&mut self, how: Repost) {
        self.repost = how;
    }

    /// Sends one frame: writes `hdr` + `frame` into guest memory, adds a TX chain (one
    /// descriptor, or header + frame pieces with `tx_split`), publishes and kicks if the device
    /// wants a kick. Reclaims used TX chains first when short of room;
    /// `Err(RingFull)` if there is still no room.
    pub fn send(&mut self, pair: u16, hdr: &VirtioNetHdr, frame: &[u8]) -> Result<(), Error> {
        match self.send_batch(pair, &[(*hdr, frame)])? {
            0 => Err(Error::RingFull),
            _ => Ok(()),
        }
    }

    /// [`Self::send`] that reports a full ring as `Ok(false)` (other errors stay errors).
    pub fn try_send(&mut self, pair: u16, hdr: &VirtioNetHdr, frame: &[u8]) -> Result<bool, Error> {
        match self.send(pair, hdr, frame) {
            Ok(()) => Ok(true),
            Err(Error::RingFull) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Self::send`], retrying every 100 µs while the ring is full, for at most `timeout`
    /// (then `Err(RingFull)`).
    pub fn send_wait(
        &mut self,
        pair: u16,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<(), Error> {
        let t0 = Instant::now();
        while !self.try_send(pair, hdr, frame)? {
            if t0.elapsed() >= timeout {
                return Err(Error::RingFull);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// Descriptors one frame of `len` bytes takes.
    fn tx_pieces(&self, len: usize) -> usize {
        if self.cfg.tx_split {
            1 + len.div_ceil(TX_SPLIT_PIECE).max(1)
        } else {
            1
        }
    }

    /// True if pair `p`'s TX ring has room for a chain of `pieces` descriptors (within
    /// [`crate::GuestConfig::tx_limit`]).
    fn tx_room(&self, p: usize, pieces: usize) -> bool {
        let ring = &self.pairs[p].tx;
        let limit = self.cfg.tx_limit.map_or(usize::MAX, usize::from);
        ring.free_descs() >= pieces && ring.in_flight() < limit
    }

    /// The descriptors of a frame written at `addr` (`total` bytes with the header).
    fn tx_descs(&self, addr: u64, total: usize) -> Vec<DescSpec> {
        if !self.cfg.tx_split {
            return vec![(addr, total as u32, 0)];
        }
        let next = VRING_DESC_F_NEXT as u16;
        let mut d = vec![(addr, self.hdr_len as u32, next)];
        let mut off = self.hdr_len;
        loop {
            let n = (total - off).min(TX_SPLIT_PIECE);
            d.push((addr + off as u64, n as u32, next));
            off += n;
            if off >= total {
                break;
            }
        }
        if let Some(last) = d.last_mut() {
            last.2 = 0;
        }
        d
    }

    /// Queues as many of `frames` as fit (reclaiming used TX chains when needed), then
    /// publishes them with at most one kick; returns how many were queued.
    pub fn send_batch(
        &mut self,
        pair: u16,
        frames: &[(VirtioNetHdr, &[u8])],
    ) -> Result<usize, Error> {
        self.pair(pair)?;
        let p = usize::from(pair);
        let mut sent = 0;
        for (hdr, frame) in frames {
            let pieces = self.tx_pieces(frame.len());
            if !self.tx_room(p, pieces) {
                self.reclaim(pair)?;
                if !self.tx_room(p, pieces) {
                    break;
                }
            }
            let total = self.hdr_len + frame.len();
            let len = u32::try_from(total)
                .map_err(|_| Error::InvalidArgument(format!("frame of {total} bytes")))?;
            let addr = self.mem.alloc_buf(len)?;
            let m = self.mem.mem();
            m.write_slice(&hdr.to_bytes()[..self.hdr_len], GuestAddress(addr))?;
            m.write_slice(frame, GuestAddress(addr + self.hdr_len as u64))?;
            let descs = self.tx_descs(addr, total);
            self.pairs[p]
                .tx
                .add_chain(&descs, &[], Owner::Buf(addr, len))?;
            sent += 1;
        }
        self.pairs[p].tx.publish()?;
        Ok(sent)
    }

    /// Takes the TX chains the device returned off pair `pair`'s ring and gives their buffers
    /// back; counts them in `tx_done`.
    pub(crate) fn reclaim(&mut self, pair: u16) -> Result<(), Error> {
        let n = self.pair(pair)?.tx.used_pending();
        for _ in 0..n {
            let (id, _) = self.pairs[usize::from(pair)].tx.pop_used();
            let p = &mut self.pairs[usize::from(pair)];
            match p.tx.release(id) {
                Some(owner) => {
                    p.tx_done += 1;
                    match owner {
                        Owner::Buf(a, l) => self.mem.free_buf(a, l),
                        Owner::Slot(a, l) => p.slots.push((a, l)),
                        Owner::None => {}
                    }
                }
                None => self.device_errors += 1,
            }
        }
        if n > 0 {
            self.pairs[usize::from(pair)].tx.write_used_event();
        }
        Ok(())
    }

    /// Number of TX chains the device returned (used) since the last call.
    pub fn reclaim_tx(&mut self, pair: u16) -> usize {
        if self.reclaim(pair).is_err() {
            return 0;
        }
        std::mem::take(&mut self.pairs[usize::from(pair)].tx_done)
    }

    /// The buffers `(address, length)` of the TX chains of `pair` that the device has not
    /// returned yet (each the virtio-net header, then the frame): for a guest that rewrites
    /// a frame after handing it over.
    pub fn tx_buffers_in_flight(&mut self, pair: u16) -> Vec<(u64, u32)> {
        if self.reclaim(pair).is_err() {
            return Vec::new();
        }
        self.pairs[usize::from(pair)]
            .tx
            .in_flight_owners()
            .into_iter()
            .filter_map(|o| match o {
                Owner::Buf(a, l) | Owner::Slot(a, l) => Some((a, l)),
                Owner::None => None,
            })
            .collect()
    }

    /// TX chains handed to the device and not yet returned, on `pair` (after taking back
    /// what the device returned).
    pub fn tx_in_flight(&mut self, pair: u16) -> usize {
        if self.reclaim(pair).is_err() {
            return 0;
        }
        self.pairs[usize::from(pair)].tx.in_flight()
    }

    /// Used entries of `pair`'s TX and RX rings that the device returned ahead of a chain
    /// made available before them (0 whenever the device keeps `VIRTIO_F_IN_ORDER`).
    pub fn out_of_order(&self, pair: u16) -> (u64, u64) {
        let p = &self.pairs[usize::from(pair)];
        (p.tx.out_of_order, p.rx.out_of_order)
    }

    /// RX buffers currently posted to the device on `pair`.
    pub fn rx_posted(&self, pair: u16) -> usize {
        self.pairs
            .get(usize::from(pair))
            .map_or(0, |p| p.rx.in_flight())
    }

    /// Gives a consumed RX buffer back to the device (or frees it), per [`Repost`].
    fn repost_rx(&mut self, pair: u16, addr: u64, len: u32) -> Result<(), Error> {
        let rx = &mut self.pairs[usize::from(pair)].rx;
        match self.repost {
            Repost::Off => self.mem.free_buf(addr, len),
            Repost::Batch => {
                rx.add_one(addr, len, VRING_DESC_F_WRITE as u16, Owner::Buf(addr, len))?;
            }
            Repost::OneByOne => {
                rx.add_one(addr, len, VRING_DESC_F_WRITE as u16, Owner::Buf(addr, len))?;
                rx.publish()?;
            }
        }
        Ok(())
    }

    /// One used RX buffer `(id, len)` of `pair`: its bytes, or `None` (counted as a device
    /// error) when the entry makes no sense. The buffer is re-posted (or freed).
    fn take_rx_buffer(&mut self, pair: u16, id: u32, len: u32) -> Result<Option<Vec<u8>>, Error> {
        let Some(Owner::Buf(addr, blen)) = self.pairs[usize::from(pair)].rx.release(id) else {
            self.device_errors += 1;
            return Ok(None);
        };
        if len > blen {
            self.device_errors += 1;
        }
        let mut data = vec![0u8; len.min(blen) as usize];
        self.mem.mem().read_slice(&mut data, GuestAddress(addr))?;
        self.repost_rx(pair, addr, blen)?;
        Ok(Some(data))
    }

    /// Adds one RX buffer's bytes to the frame being reassembled on `pair`, or starts one;
    /// returns the frame once complete.
    fn reassemble(&mut self, pair: u16, data: Vec<u8>) -> Option<RxFrame> {
        let mrg = self.mergeable_rx();
        let hdr_len = self.hdr_len;
        let p = &mut self.pairs[usize::from(pair)];
        let mut part = match p.partial.take() {
            Some(mut part) => {
                part.frame.extend_from_slice(&data);
                part.got += 1;
                part
            }
            None => {
                let hdr = data
                    .get(..hdr_len)
                    .and_then(|h| VirtioNetHdr::from_bytes(h).ok());
                let Some(hdr) = hdr else {
                    self.device_errors += 1;
                    return None;
                };
                let want = if mrg { hdr.num_buffers } else { 1 };
                if want == 0 {
                    self.device_errors += 1;
                }
                Partial {
                    hdr,
                    frame: data[hdr_len..].to_vec(),
                    want: want.max(1),
                    got: 1,
                }
            }
        };
        if part.got < part.want {
            p.partial = Some(part);
            return None;
        }
        Some(RxFrame {
            hdr: part.hdr,
            frame: std::mem::take(&mut part.frame),
            buffers: part.got,
        })
    }

    /// Harvests used RX entries of `pair`, reassembles frames, re-posts (or frees) buffers.
    fn collect_rx(&mut self, pair: u16, out: &mut Vec<(u16, RxFrame)>) -> Result<(), Error> {
        let n = self.pair(pair)?.rx.used_pending();
        for _ in 0..n {
            let (id, len) = self.pairs[usize::from(pair)].rx.pop_used();
            if let Some(data) = self.take_rx_buffer(pair, id, len)? {
                if let Some(f) = self.reassemble(pair, data) {
                    out.push((pair, f));
                }
            }
        }
        let rx = &mut self.pairs[usize::from(pair)].rx;
        if n > 0 {
            rx.write_used_event();
        }
        if self.repost == Repost::Batch {
            rx.publish()?;
        }
        Ok(())
    }

    /// Every frame that arrived on any pair, without waiting.
    pub fn poll_rx(&mut self) -> Result<Vec<(u16, RxFrame)>, Error> {
        let mut out = Vec::new();
        for p in 0..self.cfg.queue_pairs {
            self.collect_rx(p, &mut out)?;
        }
        Ok(out)
    }

    /// Waits (on the RX call eventfd, or by polling when RX interrupts are off) until used RX
    /// entries arrive or `timeout` passes, and returns the complete frames (empty on timeout).
    pub fn recv(&mut self, pair: u16, timeout: Duration) -> Result<Vec<RxFrame>, Error> {
        Ok(self
            .recv_until(Some(pair), 1, timeout)?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    /// Gathers frames from one pair (`Some`) or all pairs (`None`) until at least `n_frames`
    /// arrived or `timeout` passed; returns what arrived, tagged with the pair.
    pub fn recv_until(
        &mut self,
        pair: Option<u16>,
        n_frames: usize,
        timeout: Duration,
    ) -> Result<Vec<(u16, RxFrame)>, Error> {
        let pairs: Vec<u16> = match pair {
            Some(p) => {
                self.pair(p)?;
                vec![p]
            }
            None => (0..self.cfg.queue_pairs).collect(),
        };
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            for &p in &pairs {
                self.collect_rx(p, &mut out)?;
            }
            if out.len() >= n_frames {
                return Ok(out);
            }
            let mut pending = false;
            let mut polling = false;
            let mut fds = Vec::with_capacity(pairs.len());
            for &p in &pairs {
                let r = &self.pairs[usize::from(p)];
                pending |= r.rx.arm();
                polling |= r.rx.suppressed();
                fds.push(r.rx.call.as_raw_fd());
            }
            if pending {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            let mut wait = deadline - now;
            if polling {
                wait = wait.min(Duration::from_millis(1));
            }
            wait_readable(&fds, wait)?;
            for &p in &pairs {
                let r = &self.pairs[usize::from(p)];
                drain(&r.rx.call, &r.rx_calls);
            }
        }
    }
}
