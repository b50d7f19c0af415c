//! The guest driver in polling mode, as benchmarks use it: a busy guest that does not ask for
//! used-buffer notifications while it has work (`used_event` kept out of reach, like Linux's
//! `virtqueue_disable_cb` under NAPI; without EVENT_IDX the avail ring's
//! `VRING_AVAIL_F_NO_INTERRUPT` flag, like a DPDK PMD), posts pre-filled single-descriptor TX
//! frames in bursts with one avail-index publication (and at most one kick) per burst, like
//! `xmit_more`, counts (and optionally reads) received frames straight from the mapped
//! buffers, and when it has nothing to do re-enables notifications and sleeps on its call
//! eventfds instead of spinning (a halted vCPU gives its host CPU back).

use std::os::fd::AsRawFd;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

use crate::guest::drain;
use crate::ring::Owner;
use crate::txrx::wait_readable;
use crate::{Error, TestGuest, VirtioNetHdr};

/// How often a polling guest slept on its call eventfds, and how many sleeps timed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Sleeps on call eventfds (`wait_tx`, `wait_rx`, `wait_any` with nothing pending).
    pub sleeps: u64,
    /// Of those, the ones that ended by timeout rather than a notification.
    pub timeouts: u64,
}

/// Which rings a sleeping guest waits for: `(pair, tx)` (false: RX).
type Armed = Vec<(u16, bool)>;

impl TestGuest {
    /// Turns used-buffer notifications off (`true`) or on on every ring (see the module
    /// comment); [`Self::wait_tx`], [`Self::wait_rx`] and [`Self::wait_any`] ask for one
    /// before they sleep.
    pub fn set_polling(&mut self, on: bool) {
        for p in &mut self.pairs {
            p.rx.set_suppress(on);
            p.tx.set_suppress(on);
        }
    }

    /// Sleeps and their timeouts so far.
    pub fn poll_stats(&self) -> PollStats {
        PollStats {
            sleeps: self.sleeps,
            timeouts: self.timeouts,
        }
    }

    /// Writes `hdr` + `frame` into `slots` fresh TX slots of `pair` once (pktgen-style: the
    /// slots are then re-posted by [`Self::post_burst`] without copying the frame again).
    /// Each slot is page-aligned and one descriptor long. No TX chain of the pair may be in
    /// flight; slots of an earlier call are dropped (their memory is not reused).
    pub fn fill_tx(
        &mut self,
        pair: u16,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        slots: usize,
    ) -> Result<(), Error> {
        if self.tx_in_flight(pair) != 0 {
            return Err(Error::InvalidArgument(format!(
                "TX chains of pair {pair} in flight"
            )));
        }
        let total = self.hdr_len + frame.len();
        let len = u32::try_from(total)
            .map_err(|_| Error::InvalidArgument(format!("frame of {total} bytes")))?;
        let stride = (total as u64).next_multiple_of(4096);
        let mut filled = Vec::with_capacity(slots);
        for _ in 0..slots {
            let addr = self.mem.alloc(stride, 4096)?;
            let m = self.mem.mem();
            m.write_slice(&hdr.to_bytes()[..self.hdr_len], GuestAddress(addr))?;
            m.write_slice(frame, GuestAddress(addr + self.hdr_len as u64))?;
            filled.push((addr, len));
        }
        // Popped from the end: the first slot goes out first.
        filled.reverse();
        self.pair(pair)?.slots = filled;
        Ok(())
    }

    /// Posts up to `max` pre-filled TX slots of `pair` ([`Self::fill_tx`]) with one
    /// avail-index publication; returns how many.
    pub fn post_burst(&mut self, pair: u16, max: usize) -> Result<usize, Error> {
        self.reclaim(pair)?;
        let p = &mut self.pairs[usize::from(pair)];
        let mut n = 0;
        while n < max && p.tx.free_descs() > 0 {
            let Some((addr, len)) = p.slots.pop() else {
                break;
            };
            p.tx.add_one(addr, len, 0, Owner::Slot(addr, len))?;
            n += 1;
        }
        if n > 0 {
            p.tx.publish()?;
        }
        Ok(n)
    }

    /// Drains every RX ring: `(frames, frame bytes)`, buffers re-posted once per ring. With
    /// `read`, every byte of every used buffer is copied out as a receiving guest's stack
    /// does (the device wrote them from another core); without, only the ring entries and
    /// the header's `num_buffers` are read. A frame's count is taken at its first buffer; do
    /// not mix with [`Self::poll_rx`] on a guest while frames are arriving.
    pub fn count_rx(&mut self, read: bool) -> Result<(u64, u64), Error> {
        let mut total = (0, 0);
        for pair in 0..self.cfg.queue_pairs {
            let (f, b) = self.count_rx_pair(pair, read)?;
            total.0 += f;
            total.1 += b;
        }
        Ok(total)
    }

    fn count_rx_pair(&mut self, pair: u16, read: bool) -> Result<(u64, u64), Error> {
        let hdr_len = self.hdr_len;
        let mrg = self.mergeable_rx();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let n = self.pairs[usize::from(pair)].rx.used_pending();
        for _ in 0..n {
            let p = &mut self.pairs[usize::from(pair)];
            let (id, len) = p.rx.pop_used();
            let Some(Owner::Buf(addr, blen)) = p.rx.release(id) else {
                self.device_errors += 1;
                continue;
            };
            let len = len.min(blen);
            if p.count_rest > 0 {
                p.count_rest -= 1;
                bytes += u64::from(len);
            } else {
                let nb = if mrg { self.num_buffers(addr) } else { 1 };
                self.pairs[usize::from(pair)].count_rest = nb.max(1) - 1;
                frames += 1;
                bytes += u64::from(len).saturating_sub(hdr_len as u64);
            }
            if read {
                self.read_rx_buf(addr, len);
            }
            self.pairs[usize::from(pair)].rx.add_one(
                addr,
                blen,
                VRING_DESC_F_WRITE as u16,
                Owner::Buf(addr, blen),
            )?;
        }
        let rx = &mut self.pairs[usize::from(pair)].rx;
        if n > 0 {
            rx.write_used_event();
            rx.publish()?;
        }
        Ok((frames, bytes))
    }

    /// `num_buffers` of the header the device wrote at the start of the RX buffer at `gpa`.
    fn num_buffers(&self, gpa: u64) -> u16 {
        let Some(p) = self.mem.host_ptr(gpa + 10, 2) else {
            return 1;
        };
        let mut b = [0u8; 2];
        // SAFETY: `host_ptr` checked that the two bytes lie in one live mapping of guest
        // memory; the device finished writing this buffer (its used entry was read after the
        // Acquire load of `used.idx`) and does not touch it until it is re-posted.
        unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 2) };
        u16::from_le_bytes(b)
    }

    /// Copies `len` bytes of the received buffer at `gpa` out of guest memory, as a guest's
    /// stack reads every payload byte it delivers.
    fn read_rx_buf(&mut self, gpa: u64, len: u32) {
        let len = len as usize;
        let Some(src) = self.mem.host_ptr(gpa, len) else {
            return;
        };
        if self.sink.len() < len {
            self.sink.resize(len, 0);
        }
        // SAFETY: `host_ptr` checked that `[src, src + len)` lies in one live mapping of guest
        // memory; the device no longer writes this buffer (its used entry is published and it
        // is not re-posted yet), and the sink holds at least `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src, self.sink.as_mut_ptr(), len) };
        std::hint::black_box(&mut self.sink);
    }

    /// Sleeps (at most `timeout`) until a call eventfd of `rings` fires, then goes back to
    /// each ring's own notification setting.
    fn sleep_on(&mut self, rings: &Armed, timeout: Duration) -> Result<(), Error> {
        let fds: Vec<i32> = rings
            .iter()
            .map(|&(p, tx)| {
                let pair = &self.pairs[usize::from(p)];
                if tx { &pair.tx.call } else { &pair.rx.call }.as_raw_fd()
            })
            .collect();
        let woke = wait_readable(&fds, timeout)?;
        self.sleeps += 1;
        if !woke {
            self.timeouts += 1;
        }
        self.disarm(rings);
        Ok(())
    }

    /// Back to polling after arming `rings` (and counts what they were signalled).
    fn disarm(&self, rings: &Armed) {
        for &(p, tx) in rings {
            let pair = &self.pairs[usize::from(p)];
            if tx {
                drain(&pair.tx.call, &pair.tx_calls);
                pair.tx.write_used_event();
            } else {
                drain(&pair.rx.call, &pair.rx_calls);
                pair.rx.write_used_event();
            }
        }
    }

    /// Arms `(pair, tx)` for a notification after `after` entries; true if entries are already
    /// there (then every armed ring is disarmed: do not sleep).
    fn arm_ring(&self, rings: &mut Armed, pair: u16, tx: bool, after: u16) -> bool {
        rings.push((pair, tx));
        let p = &self.pairs[usize::from(pair)];
        let ring = if tx { &p.tx } else { &p.rx };
        if ring.arm_after(after) {
            self.disarm(rings);
            return true;
        }
        false
    }

    /// The sender found every TX slot in flight: asks for a notification once 3/4 of them
    /// are used (Linux's `virtqueue_enable_cb_delayed`) and sleeps until then.
    pub fn wait_tx(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut rings = Vec::with_capacity(self.pairs.len());
        for pair in 0..self.cfg.queue_pairs {
            let busy = self.tx_in_flight(pair);
            if busy == 0 {
                self.disarm(&rings);
                return Ok(());
            }
            if self.arm_ring(&mut rings, pair, true, (busy * 3 / 4) as u16) {
                return Ok(());
            }
        }
        self.sleep_on(&rings, timeout)
    }

    /// The receiver found every RX ring empty: asks for a notification on the next used
    /// entry (NAPI completion) and sleeps until then.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut rings = Vec::with_capacity(self.pairs.len());
        for pair in 0..self.cfg.queue_pairs {
            if self.arm_ring(&mut rings, pair, false, 1) {
                return Ok(());
            }
        }
        self.sleep_on(&rings, timeout)
    }

    /// A guest that sends and receives found nothing to do: asks for a notification on the
    /// next received frame and once 3/4 of its in-flight TX frames are used, then sleeps
    /// until either comes (or `timeout`).
    pub fn wait_any(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut rings = Vec::with_capacity(2 * self.pairs.len());
        for pair in 0..self.cfg.queue_pairs {
            if self.arm_ring(&mut rings, pair, false, 1) {
                return Ok(());
            }
            let busy = self.tx_in_flight(pair);
            if busy > 0 && self.arm_ring(&mut rings, pair, true, (busy * 3 / 4) as u16) {
                return Ok(());
            }
        }
        self.sleep_on(&rings, timeout)
    }
}
