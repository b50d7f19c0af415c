//! The guest driver in polling mode, as the datapath bench uses it: a busy guest that does
//! not ask for used-buffer notifications while it has work (`used_event` left behind, like
//! Linux's `virtqueue_disable_cb` under NAPI or a DPDK PMD), posts TX frames in bursts with
//! one avail-index publication (and at most one kick) per burst, like `xmit_more`, and when
//! it has nothing to do re-enables notifications and sleeps on its call eventfds instead of
//! spinning (a halted vCPU gives its host CPU back).

use super::Guest;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

impl Guest {
    /// Stops asking for a notification on every publication (see the module comment).
    pub fn set_polling(&mut self) {
        for r in self.rings.iter_mut() {
            r.irq = false;
        }
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

    /// Sets `used_event` of `ring` so that the device notifies after `after` more used
    /// entries; true when entries are already there (do not sleep).
    fn arm(&mut self, ring: usize, after: u16) -> bool {
        let r = &self.rings[ring];
        let ev = r.last_used.wrapping_add(after.max(1) - 1);
        self.w16(r.avail + 4 + 2 * u64::from(r.size), ev);
        fence(Ordering::SeqCst);
        self.r16(r.used + 2) != r.last_used
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
                return;
            }
            let ring = 2 * usize::from(pair) + 1;
            if self.arm(ring, (busy * 3 / 4) as u16) {
                return;
            }
            rings.push(ring);
        }
        self.sleep_on(&rings, timeout);
    }

    /// The receiver found every RX ring empty: asks for a notification on the next used
    /// entry (NAPI completion) and sleeps until then.
    pub fn wait_rx(&mut self, timeout: Duration) {
        let mut rings = Vec::with_capacity(usize::from(self.opts.pairs));
        for pair in 0..self.opts.pairs {
            let ring = 2 * usize::from(pair);
            if self.arm(ring, 1) {
                return;
            }
            rings.push(ring);
        }
        self.sleep_on(&rings, timeout);
    }
}
