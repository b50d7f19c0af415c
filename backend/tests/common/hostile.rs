//! What a misbehaving (or merely unusual) guest does to its rings and its connection, for
//! the data-path tests: bare kicks, a connection closed under a busy TX ring, chains
//! re-published without waiting for them, a memory table replaced under traffic, a bogus
//! avail index, RX buffers re-posted one by one.

use super::Guest;
use std::os::fd::AsRawFd;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

impl Guest {
    /// Kicks `ring` without publishing anything.
    pub fn bare_kick(&self, ring: usize) {
        let _ = self.kicks[ring].write(1);
    }

    /// Closes the vhost-user connection (the backend sees EOF) while the guest's memory and
    /// rings stay as they are.
    pub fn shutdown_socket(&self) {
        // SAFETY: shutdown on the frontend's socket fd, which `self.fe` owns and keeps open.
        unsafe { libc::shutdown(self.fe.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Publishes chain `head` `n` more times on the TX ring of `pair`, without waiting for
    /// the device to return it (a guest that keeps its TX ring full forever).
    pub fn repost_raw(&mut self, pair: u16, head: u16, n: u16) {
        let ring = 2 * usize::from(pair) + 1;
        for _ in 0..n {
            self.push_avail(ring, head);
        }
        self.publish_avail(ring);
    }

    /// Chains published on the TX ring of `pair` and not yet returned by the device.
    pub fn tx_outstanding(&self, pair: u16) -> u16 {
        let r = &self.rings[2 * usize::from(pair) + 1];
        r.avail_idx.wrapping_sub(self.r16(r.used + 2))
    }

    /// The used index of the TX ring of `pair` as the device last wrote it, read in `mem`
    /// (this guest's memory, or a copy of the layout in other memory).
    pub fn tx_used_idx_in(&self, mem: &GuestMemoryMmap, pair: u16) -> u16 {
        let r = &self.rings[2 * usize::from(pair) + 1];
        vm_memory::Bytes::read_obj(mem, vm_memory::GuestAddress(r.used + 2)).unwrap_or(0)
    }

    /// Sends SET_MEM_TABLE with fresh memfd memory of the same layout (its content is not
    /// copied) and waits until the backend has handled it; returns the new memory. The
    /// guest keeps writing its rings in the old memory (which it still maps).
    pub fn replace_memory(&mut self) -> GuestMemoryMmap {
        let ranges: Vec<(u64, usize)> = self
            .mem
            .iter()
            .map(|r| (r.start_addr().0, r.len() as usize))
            .collect();
        let fresh: GuestMemoryMmap =
            pvnet_grant::memfd::guest_memory(&ranges).expect("fresh memory");
        let regions: Vec<VhostUserMemoryRegionInfo> = fresh
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: r.file_offset().expect("memfd").file().as_raw_fd(),
            })
            .collect();
        self.fe.set_mem_table(&regions).expect("set_mem_table");
        // Requests are handled in order: a reply to a later one means this one is done.
        self.fe.get_features().expect("barrier");
        fresh
    }

    /// Sets the avail index of `ring` to `v` (bogus values included), without a kick.
    pub fn set_avail_idx(&mut self, ring: usize, v: u16) {
        let a = self.rings[ring].avail;
        self.w16(a + 2, v);
        self.rings[ring].avail_idx = v;
        self.rings[ring].published = v;
    }

    /// Like `poll_rx`, but each consumed RX buffer is re-posted and published on its own
    /// (with its own kick decision), as a slow guest refilling one buffer at a time does.
    pub fn poll_rx_trickle(&mut self, out: &mut Vec<(u16, Vec<u8>, Vec<u8>, u16)>) {
        for pair in 0..self.opts.pairs {
            let ring = 2 * usize::from(pair);
            loop {
                let r = &self.rings[ring];
                if self.r16(r.used + 2) == r.last_used {
                    break;
                }
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                let mut bytes = Vec::new();
                self.take_used(ring, pair, &mut bytes);
                self.publish_avail(ring);
                let nb = if self.mrg() {
                    u16::from_le_bytes([bytes[10], bytes[11]])
                } else {
                    1
                };
                for _ in 1..nb {
                    let r = &self.rings[ring];
                    assert_ne!(self.r16(r.used + 2), r.last_used, "merged buffers missing");
                    self.take_used(ring, pair, &mut bytes);
                    self.publish_avail(ring);
                }
                let frame = bytes.split_off(self.hdr_len.min(bytes.len()));
                out.push((pair, bytes, frame, nb));
            }
        }
    }
}
