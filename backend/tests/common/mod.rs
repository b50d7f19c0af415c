//! A minimal in-process vhost-user frontend + split-ring virtio-net driver for the backend's
//! integration tests: memfd guest memory (two adjacent regions, so copies span regions),
//! `SET_MEM_TABLE`, one RX and one TX ring per pair, RX buffers posted like a Linux guest,
//! TX chains (also hand-made malformed ones), polling of the used rings.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const F_WRITE: u16 = 2;
pub const F_NEXT: u16 = 1;
pub const F_INDIRECT: u16 = 4;

pub mod frames;
pub mod harness;
pub mod hostile;
pub mod poll;

/// What a Linux guest asks for.
pub fn linux_features() -> u64 {
    [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MAC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ]
    .iter()
    .fold(0u64, |f, b| f | (1u64 << b))
}

pub fn bit(b: u32) -> u64 {
    1u64 << b
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub pairs: u16,
    pub qsize: u16,
    pub features: u64,
    pub rx_buf_len: u32,
    pub mac: [u8; 6],
    /// TX frames in flight per pair (two descriptors each, or one with `tx_one_desc`).
    pub tx_slots: u16,
    /// Header and frame in one TX descriptor, as Linux does when the header fits in the
    /// skb's headroom (VERSION_1); default: two descriptors (header, frame).
    pub tx_one_desc: bool,
    /// Bytes per TX slot (virtio header + largest frame sent).
    pub tx_slot_len: u64,
}

impl Opts {
    /// Descriptors the TX slots use (the first `tx_descs()` indexes of each TX ring).
    pub fn tx_descs(&self) -> u16 {
        if self.tx_one_desc {
            self.tx_slots
        } else {
            2 * self.tx_slots
        }
    }

    pub fn new(pairs: u16, mac_last: u8) -> Self {
        Opts {
            pairs,
            qsize: 256,
            features: linux_features(),
            rx_buf_len: 2048,
            mac: [0x02, 0, 0, 0, 0, mac_last],
            tx_slots: TX_SLOTS,
            tx_slot_len: TX_SLOT_LEN,
            tx_one_desc: false,
        }
    }
}

const TX_SLOTS: u16 = 16;
const TX_SLOT_LEN: u64 = 66 * 1024 + 1024;
const RING_AREA: u64 = 32 * 1024;
const REGION: u64 = 40 << 20;
/// Guest memory: two adjacent regions of `REGION` bytes.
pub const GUEST_MEM: u64 = 2 * REGION;

struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    last_used: u16,
    /// Avail index at the last publication (for EVENT_IDX kick suppression).
    published: u16,
    /// Ask for a used-buffer notification on every publication (false: the driver polls,
    /// `used_event` is left behind like Linux's `virtqueue_disable_cb`).
    irq: bool,
}

pub struct Guest {
    fe: Frontend,
    pub mem: GuestMemoryMmap,
    pub opts: Opts,
    pub features: u64,
    pub hdr_len: usize,
    rings: Vec<Ring>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    tx_free: Vec<Vec<u16>>,
    rx_base: u64,
    tx_base: u64,
    pub scratch: u64,
    /// Kicks sent so far.
    pub kicks_sent: u64,
    /// Sleeps on call eventfds in polling mode, and how many of them timed out.
    pub sleeps: std::cell::Cell<u64>,
    pub timeouts: std::cell::Cell<u64>,
    /// (guest address, host address, length) of each memory region, for direct access.
    regions: Vec<(u64, usize, u64)>,
}

fn connect(path: &Path, nq: u64) -> Frontend {
    let t0 = Instant::now();
    loop {
        match Frontend::connect(path, nq) {
            Ok(f) => return f,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "connect {path:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Guest {
    pub fn connect(path: &Path, opts: Opts) -> Guest {
        let nq = 2 * usize::from(opts.pairs);
        let mem: GuestMemoryMmap =
            pvnet_grant::memfd::guest_memory(&[(0, REGION as usize), (REGION, REGION as usize)])
                .expect("guest memory");
        let mut fe = connect(path, nq as u64);
        fe.set_owner().expect("set_owner");
        let offered = fe.get_features().expect("get_features");
        let features =
            (opts.features & offered) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let pf = fe.get_protocol_features().expect("get_protocol_features");
        assert!(pf.contains(VhostUserProtocolFeatures::MQ), "MQ offered");
        fe.set_protocol_features(
            pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG),
        )
        .expect("set_protocol_features");
        assert!(fe.get_queue_num().expect("queue num") >= nq as u64);
        fe.set_features(features).expect("set_features");
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: r.file_offset().expect("memfd").file().as_raw_fd(),
            })
            .collect();
        fe.set_mem_table(&regions).expect("set_mem_table");
        let hdr_len = if features & (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)) != 0 {
            12
        } else {
            10
        };
        let q = opts.qsize;
        let rx_base = RING_AREA * nq as u64;
        let rx_total = u64::from(opts.pairs) * u64::from(q) * u64::from(opts.rx_buf_len);
        let tx_base = (rx_base + rx_total + 4095) & !4095;
        assert!(
            opts.tx_descs() <= q,
            "TX slots' descriptors fit in the ring"
        );
        let scratch = tx_base + u64::from(opts.pairs) * u64::from(opts.tx_slots) * opts.tx_slot_len;
        assert!(
            scratch + (1 << 20) < 2 * REGION,
            "guest memory too small for these options"
        );
        let regions = mem
            .iter()
            .map(|r| (r.start_addr().0, r.as_ptr() as usize, r.len()))
            .collect();
        let mut g = Guest {
            fe,
            mem,
            opts: opts.clone(),
            features,
            hdr_len,
            rings: Vec::new(),
            kicks: Vec::new(),
            calls: Vec::new(),
            tx_free: (0..opts.pairs)
                .map(|_| (0..opts.tx_slots).rev().collect())
                .collect(),
            rx_base,
            tx_base,
            scratch,
            kicks_sent: 0,
            sleeps: Default::default(),
            timeouts: Default::default(),
            regions,
        };
        for i in 0..nq {
            let base = RING_AREA * i as u64;
            let desc = base;
            let avail = base + 16 * u64::from(q);
            let used = (avail + 6 + 2 * u64::from(q) + 3) & !3;
            g.rings.push(Ring {
                desc,
                avail,
                used,
                size: q,
                avail_idx: 0,
                last_used: 0,
                published: 0,
                irq: true,
            });
            let va = |gpa: u64| g.mem.get_host_address(GuestAddress(gpa)).expect("va") as u64;
            g.fe.set_vring_num(i, q).expect("num");
            g.fe.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: q,
                    queue_size: q,
                    flags: 0,
                    desc_table_addr: va(desc),
                    used_ring_addr: va(used),
                    avail_ring_addr: va(avail),
                    log_addr: None,
                },
            )
            .expect("addr");
            g.fe.set_vring_base(i, 0).expect("base");
            let call = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            g.fe.set_vring_call(i, &call).expect("call");
            g.fe.set_vring_kick(i, &kick).expect("kick");
            g.calls.push(call);
            g.kicks.push(kick);
        }
        for p in 0..opts.pairs {
            g.post_all_rx(p);
        }
        for i in 0..nq {
            g.fe.set_vring_enable(i, true).expect("enable");
        }
        g
    }

    pub fn mrg(&self) -> bool {
        self.features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    pub fn event_idx(&self) -> bool {
        self.features & bit(VIRTIO_RING_F_EVENT_IDX) != 0
    }

    /// Host address of `[gpa, gpa + len)` when it lies inside one region.
    fn host(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        self.regions.iter().find_map(|&(start, hva, rlen)| {
            let off = gpa.checked_sub(start)?;
            (off.checked_add(len as u64)? <= rlen).then_some((hva + off as usize) as *mut u8)
        })
    }

    /// An aligned field of the rings (all of them lie in region 0), accessed the way a guest
    /// driver does: plain (atomic) loads and stores, no bounds-checked memory API.
    fn field<T>(&self, gpa: u64) -> *mut T {
        let p = self
            .host(gpa, std::mem::size_of::<T>())
            .expect("ring field in guest memory");
        assert_eq!(
            p as usize % std::mem::align_of::<T>(),
            0,
            "aligned ring field"
        );
        p.cast()
    }

    fn w16(&self, a: u64, v: u16) {
        // SAFETY: `field` checked that the aligned u16 lies in the guest memory mapping that
        // `self.mem` keeps alive; the device side accesses it concurrently, hence atomics.
        unsafe { AtomicU16::from_ptr(self.field(a)) }.store(v, Ordering::Relaxed);
    }
    fn r16(&self, a: u64) -> u16 {
        // SAFETY: as in `w16`.
        unsafe { AtomicU16::from_ptr(self.field(a)) }.load(Ordering::Relaxed)
    }
    fn r32(&self, a: u64) -> u32 {
        // SAFETY: as in `w16`, for an aligned u32.
        unsafe { AtomicU32::from_ptr(self.field(a)) }.load(Ordering::Relaxed)
    }
    fn w32(&self, a: u64, v: u32) {
        // SAFETY: as in `w16`, for an aligned u32.
        unsafe { AtomicU32::from_ptr(self.field(a)) }.store(v, Ordering::Relaxed);
    }

    pub fn write_desc(&self, ring: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = self.rings[ring].desc + 16 * u64::from(i);
        // SAFETY: as in `w16`, for the aligned u64 address field of a descriptor.
        unsafe { AtomicU64::from_ptr(self.field(a)) }.store(addr.to_le(), Ordering::Relaxed);
        self.w32(a + 8, len.to_le());
        self.w16(a + 12, flags.to_le());
        self.w16(a + 14, next.to_le());
    }

    /// Copies `data` to guest address `gpa` (directly when it lies in one region).
    fn write_bytes(&self, gpa: u64, data: &[u8]) {
        match self.host(gpa, data.len()) {
            // SAFETY: `host` checked the range lies in one live mapping of guest memory; the
            // device reads this TX buffer only after the chain is published.
            Some(p) => unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) },
            None => self
                .mem
                .write_slice(data, GuestAddress(gpa))
                .expect("write"),
        }
    }

    fn push_avail(&mut self, ring: usize, head: u16) {
        let r = &self.rings[ring];
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        self.w16(slot, head);
        self.rings[ring].avail_idx = self.rings[ring].avail_idx.wrapping_add(1);
    }

    fn publish_avail(&mut self, ring: usize) {
        fence(Ordering::SeqCst);
        let r = &self.rings[ring];
        let (new, old) = (r.avail_idx, r.published);
        self.w16(r.avail + 2, new);
        if r.irq {
            // Ask for an interrupt on every used entry.
            self.w16(r.avail + 4 + 2 * u64::from(r.size), r.last_used);
        }
        self.rings[ring].published = new;
        fence(Ordering::SeqCst);
        // Kick like a Linux driver: only when the device asked (EVENT_IDX avail_event, or
        // the used ring's NO_NOTIFY flag without it).
        let r = &self.rings[ring];
        let kick = if self.event_idx() {
            let ev = self.r16(r.used + 4 + 8 * u64::from(r.size));
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.r16(r.used) & 1 == 0
        };
        if kick {
            self.kicks_sent += 1;
            let _ = self.kicks[ring].write(1);
        }
    }

    fn rx_buf(&self, pair: u16, i: u16) -> u64 {
        self.rx_base
            + (u64::from(pair) * u64::from(self.opts.qsize) + u64::from(i))
                * u64::from(self.opts.rx_buf_len)
    }

    fn post_all_rx(&mut self, pair: u16) {
        let ring = 2 * usize::from(pair);
        for i in 0..self.opts.qsize {
            self.write_desc(
                ring,
                i,
                self.rx_buf(pair, i),
                self.opts.rx_buf_len,
                F_WRITE,
                0,
            );
            self.push_avail(ring, i);
        }
        self.publish_avail(ring);
    }

    /// Sends `hdr ++ frame` on pair `pair`; false when every TX slot of the pair is in flight.
    pub fn send(&mut self, pair: u16, hdr: &[u8], frame: &[u8]) -> bool {
        self.reclaim_tx(pair);
        let Some(slot) = self.tx_free[usize::from(pair)].pop() else {
            return false;
        };
        let ring = 2 * usize::from(pair) + 1;
        let buf = self.tx_slot(pair, slot);
        let h = &hdr[..self.hdr_len];
        assert!(
            (h.len() + frame.len()) as u64 <= self.opts.tx_slot_len,
            "frame > TX slot"
        );
        self.write_bytes(buf, h);
        self.write_bytes(buf + h.len() as u64, frame);
        self.post_tx_slot(pair, slot, frame.len());
        self.publish_avail(ring);
        true
    }

    fn tx_slot(&self, pair: u16, slot: u16) -> u64 {
        self.tx_base
            + (u64::from(pair) * u64::from(self.opts.tx_slots) + u64::from(slot))
                * self.opts.tx_slot_len
    }

    /// Makes TX slot `slot` (header + `len` frame bytes already written) available;
    /// published with the next `publish_avail`.
    fn post_tx_slot(&mut self, pair: u16, slot: u16, len: usize) {
        let ring = 2 * usize::from(pair) + 1;
        let buf = self.tx_slot(pair, slot);
        let hl = self.hdr_len as u64;
        if self.opts.tx_one_desc {
            self.write_desc(ring, slot, buf, (hl as usize + len) as u32, 0, 0);
            self.push_avail(ring, slot);
            return;
        }
        // Header and frame in separate descriptors (a Linux skb without headroom).
        let d0 = 2 * slot;
        self.write_desc(ring, d0, buf, hl as u32, F_NEXT, d0 + 1);
        self.write_desc(ring, d0 + 1, buf + hl, len as u32, 0, 0);
        self.push_avail(ring, d0);
    }

    /// Places a raw chain (descriptor index, addr, len, flags, next) on pair `pair`'s TX ring
    /// with head `descs[0].0`; indexes must be >= 2 * TX_SLOTS.
    pub fn send_chain(&mut self, pair: u16, descs: &[(u16, u64, u32, u16, u16)]) {
        let ring = 2 * usize::from(pair) + 1;
        for &(i, a, l, f, n) in descs {
            assert!(i >= self.opts.tx_descs());
            self.write_desc(ring, i, a, l, f, n);
        }
        self.push_avail(ring, descs[0].0);
        self.publish_avail(ring);
    }

    /// Returns used TX chains to the free list; returns (total used so far, raw heads seen).
    pub fn reclaim_tx(&mut self, pair: u16) -> usize {
        let ring = 2 * usize::from(pair) + 1;
        let mut n = 0;
        loop {
            let r = &self.rings[ring];
            let idx = self.r16(r.used + 2);
            if idx == r.last_used {
                break;
            }
            fence(Ordering::Acquire);
            let e = r.used + 4 + 8 * u64::from(r.last_used % r.size);
            let id = self.r32(e) as u16;
            self.rings[ring].last_used = r.last_used.wrapping_add(1);
            if id < self.opts.tx_descs() {
                let slot = if self.opts.tx_one_desc { id } else { id / 2 };
                self.tx_free[usize::from(pair)].push(slot);
            }
            n += 1;
        }
        n
    }

    /// TX chains of `pair` still owned by the device.
    pub fn tx_in_flight(&mut self, pair: u16) -> usize {
        self.reclaim_tx(pair);
        usize::from(self.opts.tx_slots) - self.tx_free[usize::from(pair)].len()
    }

    /// Drains every RX ring: each received frame as (pair, header bytes, frame bytes, buffers).
    pub fn poll_rx(&mut self, out: &mut Vec<(u16, Vec<u8>, Vec<u8>, u16)>) {
        for pair in 0..self.opts.pairs {
            let ring = 2 * usize::from(pair);
            let mut reposted = false;
            loop {
                let r = &self.rings[ring];
                let idx = self.r16(r.used + 2);
                if idx == r.last_used {
                    break;
                }
                fence(Ordering::Acquire);
                let mut bytes = Vec::new();
                self.take_used(ring, pair, &mut bytes);
                let nb = if self.mrg() {
                    u16::from_le_bytes([bytes[10], bytes[11]])
                } else {
                    1
                };
                assert!(nb >= 1, "num_buffers 0");
                for _ in 1..nb {
                    let r = &self.rings[ring];
                    assert_ne!(self.r16(r.used + 2), r.last_used, "merged buffers missing");
                    self.take_used(ring, pair, &mut bytes);
                }
                reposted = true;
                let frame = bytes.split_off(self.hdr_len.min(bytes.len()));
                out.push((pair, bytes, frame, nb));
            }
            if reposted {
                self.publish_avail(ring);
            }
        }
    }

    fn take_used(&mut self, ring: usize, pair: u16, bytes: &mut Vec<u8>) -> u32 {
        let r = &self.rings[ring];
        let e = r.used + 4 + 8 * u64::from(r.last_used % r.size);
        let id = self.r32(e) as u16;
        let len = self.r32(e + 4);
        self.rings[ring].last_used = self.rings[ring].last_used.wrapping_add(1);
        assert!(id < self.opts.qsize, "bad used id {id}");
        assert!(len <= self.opts.rx_buf_len, "used len {len} > buffer");
        let at = bytes.len();
        bytes.resize(at + len as usize, 0);
        self.mem
            .read_slice(&mut bytes[at..], GuestAddress(self.rx_buf(pair, id)))
            .expect("rx read");
        // Re-post the same buffer.
        self.write_desc(
            ring,
            id,
            self.rx_buf(pair, id),
            self.opts.rx_buf_len,
            F_WRITE,
            0,
        );
        self.push_avail(ring, id);
        len
    }

    /// Drains every RX ring: (frames, frame bytes). With `read`, every byte of every used
    /// buffer is copied out as a receiving guest's stack would (see `Guest::read_rx_buf`);
    /// without, only the ring entries and the header's `num_buffers` are read.
    pub fn count_rx(&mut self, read: bool) -> (u64, u64) {
        let (mut frames, mut bytes) = (0u64, 0u64);
        for pair in 0..self.opts.pairs {
            let ring = 2 * usize::from(pair);
            let mut reposted = false;
            loop {
                let r = &self.rings[ring];
                let idx = self.r16(r.used + 2);
                if idx == r.last_used {
                    break;
                }
                fence(Ordering::Acquire);
                let e = r.used + 4 + 8 * u64::from(r.last_used % r.size);
                let id = self.r32(e) as u16;
                let len = u64::from(self.r32(e + 4));
                let nb = if self.mrg() {
                    self.r16(self.rx_buf(pair, id) + 10).max(1)
                } else {
                    1
                };
                frames += 1;
                bytes += len.saturating_sub(self.hdr_len as u64);
                for k in 0..nb {
                    let r = &self.rings[ring];
                    if k > 0 {
                        if self.r16(r.used + 2) == r.last_used {
                            break;
                        }
                        let e = r.used + 4 + 8 * u64::from(r.last_used % r.size);
                        bytes += u64::from(self.r32(e + 4));
                    }
                    let e = self.rings[ring].used
                        + 4
                        + 8 * u64::from(self.rings[ring].last_used % self.rings[ring].size);
                    let id = self.r32(e) as u16;
                    if read {
                        self.read_rx_buf(self.rx_buf(pair, id), self.r32(e + 4));
                    }
                    self.rings[ring].last_used = self.rings[ring].last_used.wrapping_add(1);
                    self.push_avail(ring, id);
                }
                reposted = true;
            }
            if reposted {
                self.publish_avail(ring);
            }
        }
        (frames, bytes)
    }

    /// Number of call (interrupt) signals seen on `ring` since the last call.
    pub fn calls(&self, ring: usize) -> u64 {
        self.calls[ring].read().unwrap_or(0)
    }

    /// Disables pair `pair`'s rings (SET_VRING_ENABLE 0).
    pub fn disable_pair(&mut self, pair: u16) {
        self.fe
            .set_vring_enable(2 * usize::from(pair), false)
            .expect("disable");
        self.fe
            .set_vring_enable(2 * usize::from(pair) + 1, false)
            .expect("disable");
    }

    pub fn config(&mut self) -> Vec<u8> {
        let (_, v) = self
            .fe
            .get_config(
                0,
                12,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &[0u8; 12],
            )
            .expect("get_config");
        v
    }
}
