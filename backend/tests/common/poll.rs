//! The guest driver in polling mode, as the datapath bench uses it: a busy guest that does
//! not ask for used-buffer notifications while it has work (`used_event` left behind, like
//! Linux's `virtqueue_disable_cb` under NAPI; without EVENT_IDX the avail ring's
//! `VRING_AVAIL_F_NO_INTERRUPT` flag, like a DPDK PMD), posts TX frames in bursts with
//! one avail-index publication (and at most one kick) per burst, like `xmit_more`, and when
//! it has nothing to do re-enables notifications and sleeps on its call eventfds instead of
//! spinning (a halted vCPU gives its host CPU back).

use super::Guest;
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want used-buffer notifications.
const NO_INTERRUPT: u16 = 1;

thread_local! {
    /// Where a reading receiver copies its frames to (a socket buffer, say).
    static SINK: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Guest {
    /// Stops asking for a notification on every publication (see the module comment).
    pub fn set_polling(&mut self) {
        for r in self.rings.iter_mut() {
            r.irq = false;
        }
        if !self.event_idx() {
            for ring in 0..self.rings.len() {
                self.w16(self.rings[ring].avail, NO_INTERRUPT);
            }
        }
    }

    /// Copies `len` bytes of the received buffer at `gpa` out of guest memory, as a guest's
    /// stack reads every payload byte it delivers (the device wrote them from another core).
    pub(super) fn read_rx_buf(&self, gpa: u64, len: u32) {
        let len = len.min(self.opts.rx_buf_len) as usize;
        let Some(src) = self.host(gpa, len) else {
            return;
        };
        SINK.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < len {
                s.resize(len, 0);
            }
            // SAFETY: `host` checked that `[src, src + len)` lies in one live mapping of guest
            // memory; the device no longer writes this buffer (its used entry is published and
            // it is not reposted yet), and the sink holds at least `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src, s.as_mut_ptr(), len) };
            std::hint::black_box(&mut *s);
        });
    }

    /// Writes `hdr ++ frame` into every TX slot of `pair` once (pktgen-style: the slots are
    /// then re-posted by [`Guest::post_burst`] without copying the frame again).
    pub fn fill_tx(&mut self, pair: u16, hdr: &[u8], frame: &[u8]) {
        assert_eq!(self.tx_in_flight(pair), 0, "TX slots in flight");
        let h = &hdr[..self.hdr_len];
        assert!(
            (h.len() + frame.len()) as u64 <= self.opts.tx_slot_len,
            "frame > TX slot"
        );
        for slot in 0..self.opts.tx_slots {
            let buf = self.tx_slot(pair, slot);
            self.write_bytes(buf, h);
            self.write_bytes(buf + h.len() as u64, frame);
        }
    }

    /// Posts up to `max` pre-filled TX slots (frames of `len` bytes) of `pair` with one
    /// avail-index publication; returns how many.
    pub fn post_burst(&mut self, pair: u16, len: usize, max: usize) -> usize {
        self.reclaim_tx(pair);
        let mut n = 0;
        while n < max {
            let Some(slot) = self.tx_free[usize::from(pair)].pop() else {
                break;
            };
            self.post_tx_slot(pair, slot, len);
            n += 1;
        }
        if n > 0 {
            self.publish_avail(2 * usize::from(pair) + 1);
        }
        n
    }

    /// Asks for a notification after `after` more used entries of `ring` (EVENT_IDX's
    /// `used_event`; without EVENT_IDX, on the next one: the NO_INTERRUPT flag is cleared);
    /// true when entries are already there (do not sleep).
    fn arm(&mut self, ring: usize, after: u16) -> bool {
        let r = &self.rings[ring];
        if self.event_idx() {
            let ev = r.last_used.wrapping_add(after.max(1) - 1);
            self.w16(r.avail + 4 + 2 * u64::from(r.size), ev);
        } else {
            self.w16(r.avail, 0);
        }
        fence(Ordering::SeqCst);
        self.r16(r.used + 2) != r.last_used
    }

    /// Back to polling after a sleep: without EVENT_IDX the NO_INTERRUPT flag is set again
    /// (with it, `used_event` stays behind by itself).
    fn disarm(&mut self, rings: &[usize]) {
        if !self.event_idx() {
            for &ring in rings {
                self.w16(self.rings[ring].avail, NO_INTERRUPT);
            }
        }
    }

    /// Sleeps (at most `timeout`) until a call eventfd of `rings` fires.
    fn sleep_on(&self, rings: &[usize], timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = rings
            .iter()
            .map(|&r| libc::pollfd {
                fd: self.calls[r].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        self.sleeps.set(self.sleeps.get() + 1);
        if r == 0 {
            self.timeouts.set(self.timeouts.get() + 1);
        }
        if r > 0 {
            for (f, &ring) in fds.iter().zip(rings) {
                if f.revents != 0 {
                    let _ = self.calls[ring].read();
                }
            }
        }
    }

    /// The sender found every TX slot in flight: asks for a notification once 3/4 of them
    /// are used (Linux's `virtqueue_enable_cb_delayed`) and sleeps until then.
    pub fn wait_tx(&mut self, timeout: Duration) {
        let mut rings = Vec::with_capacity(usize::from(self.opts.pairs));
        for pair in 0..self.opts.pairs {
            let busy = self.tx_in_flight(pair);
            if busy == 0 {
                self.disarm(&rings);
                return;
            }
            let ring = 2 * usize::from(pair) + 1;
            rings.push(ring);
            if self.arm(ring, (busy * 3 / 4) as u16) {
                self.disarm(&rings);
                return;
            }
        }
        self.sleep_on(&rings, timeout);
        self.disarm(&rings);
    }

    /// The receiver found every RX ring empty: asks for a notification on the next used
    /// entry (NAPI completion) and sleeps until then.
    pub fn wait_rx(&mut self, timeout: Duration) {
        let mut rings = Vec::with_capacity(usize::from(self.opts.pairs));
        for pair in 0..self.opts.pairs {
            let ring = 2 * usize::from(pair);
            rings.push(ring);
            if self.arm(ring, 1) {
                self.disarm(&rings);
                return;
            }
        }
        self.sleep_on(&rings, timeout);
        self.disarm(&rings);
    }

    /// A guest that sends and receives found nothing to do: asks for a notification on the
    /// next received frame and once 3/4 of its in-flight TX frames are used, then sleeps
    /// until either comes (or `timeout`).
    pub fn wait_any(&mut self, timeout: Duration) {
        let mut rings = Vec::with_capacity(2 * usize::from(self.opts.pairs));
        for pair in 0..self.opts.pairs {
            let rx = 2 * usize::from(pair);
            rings.push(rx);
            if self.arm(rx, 1) {
                self.disarm(&rings);
                return;
            }
            let busy = self.tx_in_flight(pair);
            if busy > 0 {
                rings.push(rx + 1);
                if self.arm(rx + 1, (busy * 3 / 4) as u16) {
                    self.disarm(&rings);
                    return;
                }
            }
        }
        self.sleep_on(&rings, timeout);
        self.disarm(&rings);
    }
}
