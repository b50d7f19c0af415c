//! The driver side of one split virtqueue.
//!
//! Layout in guest memory (virtio 1.x, 2.7): descriptor table (16 bytes per entry), avail ring
//! (`flags`, `idx`, `ring[size]`, `used_event`), used ring (`flags`, `idx`, `ring[size]` of
//! `{id: u32, len: u32}`, `avail_event`).
//!
//! Ordering: descriptors and avail entries are written first, then `avail.idx` is stored with
//! Release; the kick decision reads `avail_event` / `used.flags` only after a SeqCst fence, so
//! the device either sees the new index or we see its request for a kick. On the used side,
//! `used.idx` is loaded with Acquire before the entries are read; before sleeping, the driver
//! publishes `used_event` (or clears NO_INTERRUPT), fences, and re-reads `used.idx`.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mem::GuestMem;
use crate::Error;

/// One descriptor chain the device has not returned yet.
#[derive(Default)]
pub(crate) struct Inflight {
    /// Descriptor table slots the chain occupies.
    pub descs: Vec<u16>,
    /// Pool buffers `(addr, len)` to give back (or re-post) when the chain is used.
    pub bufs: Vec<(u64, u32)>,
}

/// One descriptor to write: `(guest address, length, VRING_DESC_F_* flags)`.
pub(crate) type DescSpec = (u64, u32, u16);

/// `vring_need_event` from the virtio spec: has `new` moved past `event` since `old`?
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

pub(crate) struct DriverRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    free: Vec<u16>,
    inflight: Vec<Option<Inflight>>,
    /// Shadow of `avail.idx` (next slot to fill).
    avail_idx: u16,
    /// `avail.idx` at the last kick decision.
    kicked_idx: u16,
    /// Next used entry to read.
    last_used: u16,
    event_idx: bool,
    /// Ask the device not to notify on this ring.
    suppress: bool,
    pub kick: EventFd,
    pub call: EventFd,
    pub kicks: u64,
}

fn ga(a: u64) -> GuestAddress {
    GuestAddress(a)
}

impl DriverRing {
    pub(crate) fn new(mem: &mut GuestMem, size: u16, event_idx: bool) -> Result<Self, Error> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::InvalidArgument(format!("queue size {size}")));
        }
        let n = u64::from(size);
        let desc = mem.alloc(16 * n, 4096)?;
        let avail = mem.alloc(6 + 2 * n, 4096)?;
        let used = mem.alloc(6 + 8 * n, 4096)?;
        let m = mem.mem();
        m.write_slice(&vec![0u8; 16 * n as usize], ga(desc))?;
        m.write_slice(&vec![0u8; 6 + 2 * n as usize], ga(avail))?;
        m.write_slice(&vec![0u8; 6 + 8 * n as usize], ga(used))?;
        Ok(DriverRing {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            inflight: (0..size).map(|_| None).collect(),
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx,
            suppress: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            kicks: 0,
        })
    }

    pub(crate) fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Writes a chain into free descriptor slots and puts its head in the next avail slot
    /// (not yet published). `descs[i].next` is an index into `descs` ("link to that one"),
    /// or, when `raw[i]` is set, a raw table index written as is.
    pub(crate) fn add_chain(
        &mut self,
        m: &GuestMemoryMmap<()>,
        descs: &[DescSpec],
        next: &[Option<NextSlot>],
        bufs: Vec<(u64, u32)>,
    ) -> Result<u16, Error> {
        if descs.is_empty() {
            return Err(Error::InvalidArgument("empty chain".into()));
        }
        if descs.len() > self.free.len() {
            return Err(Error::RingFull);
        }
        let slots: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let nxt = match next.get(i).copied().flatten() {
                Some(NextSlot::Chain(j)) => slots.get(j).copied().unwrap_or(0),
                Some(NextSlot::Raw(r)) => r,
                None => slots.get(i + 1).copied().unwrap_or(0),
            };
            let d = Descriptor::new(addr, len, flags, nxt);
            m.write_obj(d, ga(self.desc + 16 * u64::from(slots[i])))?;
        }
        let head = slots[0];
        let slot = u64::from(self.avail_idx % self.size);
        m.write_obj(head.to_le(), ga(self.avail + 4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.inflight[usize::from(head)] = Some(Inflight { descs: slots, bufs });
        Ok(head)
    }

    /// Publishes new avail entries and kicks the device if it wants a kick.
    pub(crate) fn publish(&mut self, m: &GuestMemoryMmap<()>) -> Result<(), Error> {
        if self.avail_idx == self.kicked_idx {
            return Ok(());
        }
        m.store(
            self.avail_idx.to_le(),
            ga(self.avail + 2),
            Ordering::Release,
        )?;
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let ev: u16 = m.load(
                ga(self.used + 4 + 8 * u64::from(self.size)),
                Ordering::Acquire,
            )?;
            need_event(u16::from_le(ev), self.avail_idx, self.kicked_idx)
        } else {
            let flags: u16 = m.load(ga(self.used), Ordering::Acquire)?;
            u16::from_le(flags) & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        self.kicked_idx = self.avail_idx;
        if need {
            self.kick.write(1)?;
            self.kicks += 1;
        }
        Ok(())
    }

    /// Reads all new used entries as `(id, len)`.
    pub(crate) fn harvest(&mut self, m: &GuestMemoryMmap<()>) -> Result<Vec<(u32, u32)>, Error> {
        let idx: u16 = u16::from_le(m.load(ga(self.used + 2), Ordering::Acquire)?);
        let mut out = Vec::with_capacity(usize::from(idx.wrapping_sub(self.last_used)));
        while self.last_used != idx {
            let slot = u64::from(self.last_used % self.size);
            let mut e = [0u8; 8];
            m.read_slice(&mut e, ga(self.used + 4 + 8 * slot))?;
            out.push((
                u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            ));
            self.last_used = self.last_used.wrapping_add(1);
        }
        if !out.is_empty() {
            self.write_used_event(m)?;
        }
        Ok(out)
    }

    /// Takes the chain whose head is `id` off the in-flight table and frees its descriptors;
    /// `None` if the device returned an id that is not an in-flight head.
    pub(crate) fn release(&mut self, id: u32) -> Option<Inflight> {
        let inf = self.inflight.get_mut(id as usize)?.take()?;
        self.free.extend(inf.descs.iter().copied());
        Some(inf)
    }

    fn write_used_event(&self, m: &GuestMemoryMmap<()>) -> Result<(), Error> {
        let off = ga(self.avail + 4 + 2 * u64::from(self.size));
        if self.event_idx {
            // Suppressed: half the index space ahead of what we have seen. The device is
            // never more than a ring (at most 32768 entries) ahead of us, so no window it
            // checks (`[old, new)`) contains it. An index just behind what we have seen is
            // not enough: after the device published entries and before it reads
            // `used_event`, we may consume them and move "just behind" into that window.
            let ev = if self.suppress {
                self.last_used.wrapping_add(0x8000)
            } else {
                self.last_used
            };
            m.store(ev.to_le(), off, Ordering::Release)?;
        } else {
            let flags = if self.suppress {
                VRING_AVAIL_F_NO_INTERRUPT as u16
            } else {
                0
            };
            m.store(flags.to_le(), ga(self.avail), Ordering::Release)?;
        }
        Ok(())
    }

    /// Turns device notifications for this ring off (`true`) or on.
    pub(crate) fn set_suppress(&mut self, m: &GuestMemoryMmap<()>, on: bool) -> Result<(), Error> {
        self.suppress = on;
        self.write_used_event(m)
    }

    pub(crate) fn suppressed(&self) -> bool {
        self.suppress
    }

    /// Re-arms notifications before sleeping; true if used entries are already pending.
    pub(crate) fn arm(&self, m: &GuestMemoryMmap<()>) -> Result<bool, Error> {
        self.write_used_event(m)?;
        fence(Ordering::SeqCst);
        let idx: u16 = u16::from_le(m.load(ga(self.used + 2), Ordering::Acquire)?);
        Ok(idx != self.last_used)
    }

    /// Number of chains handed to the device and not yet returned.
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|i| i.is_some()).count()
    }
}

/// Where a raw descriptor's `next` points.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NextSlot {
    /// The slot of another descriptor of the same chain (by position in the chain).
    Chain(usize),
    /// A raw descriptor-table index.
    Raw(u16),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_spec() {
        // Device asked for a kick when idx passes 5; we moved 4 -> 6.
        assert!(need_event(5, 6, 4));
        // Moved 6 -> 7 after that: event 5 already passed, no kick.
        assert!(!need_event(5, 7, 6));
        // Wrap-around.
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(!need_event(3, 3, 3));
    }

    #[test]
    fn chains_take_and_return_descriptors() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut r = DriverRing::new(&mut mem, 4, true).unwrap();
        let m = mem.mem().clone();
        let h = r
            .add_chain(&m, &[(0x2000, 12, 1), (0x3000, 100, 0)], &[], vec![])
            .unwrap();
        assert_eq!(r.free_descs(), 2);
        assert!(matches!(
            r.add_chain(&m, &[(0, 1, 0); 3], &[], vec![]),
            Err(Error::RingFull)
        ));
        let d: Descriptor = m.read_obj(ga(r.desc + 16 * u64::from(h))).unwrap();
        assert!(d.has_next());
        r.publish(&m).unwrap();
        let idx: u16 = m.read_obj(ga(r.avail + 2)).unwrap();
        assert_eq!(idx, 1);
        // Simulate the device returning the chain.
        m.write_obj(u32::from(h), ga(r.used + 4)).unwrap();
        m.write_obj(1u16, ga(r.used + 2)).unwrap();
        assert_eq!(r.harvest(&m).unwrap(), vec![(u32::from(h), 0)]);
        assert!(r.release(u32::from(h)).is_some());
        assert!(r.release(u32::from(h)).is_none());
        assert_eq!(r.free_descs(), 4);
        assert_eq!(r.in_flight(), 0);
    }

    fn ring(event_idx: bool) -> (GuestMem, DriverRing, GuestMemoryMmap<()>) {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let r = DriverRing::new(&mut mem, 8, event_idx).unwrap();
        let m = mem.mem().clone();
        (mem, r, m)
    }

    #[test]
    fn kicks_follow_avail_event() {
        let (_mem, mut r, m) = ring(true);
        let avail_event = ga(r.used + 4 + 8 * 8);
        // Device wants a kick once idx passes 2 (i.e. when entry 2 is published).
        m.write_obj(2u16, avail_event).unwrap();
        for expect in [0, 0, 1, 1] {
            r.add_chain(&m, &[(0x2000, 10, 0)], &[], vec![]).unwrap();
            r.publish(&m).unwrap();
            assert_eq!(r.kicks, expect);
        }
        // A publish with nothing new never kicks.
        r.publish(&m).unwrap();
        assert_eq!(r.kicks, 1);
    }

    #[test]
    fn kicks_follow_no_notify_flag() {
        let (_mem, mut r, m) = ring(false);
        m.write_obj(VRING_USED_F_NO_NOTIFY as u16, ga(r.used))
            .unwrap();
        r.add_chain(&m, &[(0x2000, 10, 0)], &[], vec![]).unwrap();
        r.publish(&m).unwrap();
        assert_eq!(r.kicks, 0);
        m.write_obj(0u16, ga(r.used)).unwrap();
        r.add_chain(&m, &[(0x2000, 10, 0)], &[], vec![]).unwrap();
        r.publish(&m).unwrap();
        assert_eq!(r.kicks, 1);
        assert_eq!(r.kick.read().unwrap(), 1);
    }

    #[test]
    fn used_event_and_interrupt_suppression() {
        let (_mem, mut r, m) = ring(true);
        let used_event = ga(r.avail + 4 + 2 * 8);
        for _ in 0..3 {
            r.add_chain(&m, &[(0x2000, 10, 0)], &[], vec![]).unwrap();
        }
        r.publish(&m).unwrap();
        m.write_obj(2u16, ga(r.used + 2)).unwrap();
        assert_eq!(r.harvest(&m).unwrap().len(), 2);
        // Published: notify me for entry 2 onwards.
        assert_eq!(m.read_obj::<u16>(used_event).unwrap(), 2);
        r.set_suppress(&m, true).unwrap();
        assert_eq!(m.read_obj::<u16>(used_event).unwrap(), 2 + 0x8000);
        assert!(!r.arm(&m).unwrap());
        m.write_obj(3u16, ga(r.used + 2)).unwrap();
        assert!(r.arm(&m).unwrap());

        let (_mem, mut r, m) = ring(false);
        r.set_suppress(&m, true).unwrap();
        assert_eq!(
            m.read_obj::<u16>(ga(r.avail)).unwrap(),
            VRING_AVAIL_F_NO_INTERRUPT as u16
        );
        r.set_suppress(&m, false).unwrap();
        assert_eq!(m.read_obj::<u16>(ga(r.avail)).unwrap(), 0);
    }

    /// The device published entries and, before it checks `used_event`, the driver (interrupts
    /// off) consumes them and writes `used_event` again: the device must still not signal.
    #[test]
    fn interrupts_off_stay_off_when_the_driver_consumes_before_the_device_checks() {
        let (_mem, mut r, m) = ring(true);
        let used_event = ga(r.avail + 4 + 2 * 8);
        r.set_suppress(&m, true).unwrap();
        for _ in 0..4 {
            r.add_chain(&m, &[(0x2000, 10, 0)], &[], vec![]).unwrap();
        }
        r.publish(&m).unwrap();
        // The device returns all four (used.idx 0 -> 4)...
        for slot in 0..4u64 {
            m.write_obj(slot as u32, ga(r.used + 4 + 8 * slot)).unwrap();
        }
        m.write_obj(4u16, ga(r.used + 2)).unwrap();
        // ... the driver consumes them before the device looks at used_event ...
        assert_eq!(r.harvest(&m).unwrap().len(), 4);
        // ... and the device's check (virtio's vring_need_event over [0, 4)) finds no event.
        let ev: u16 = m.read_obj(used_event).unwrap();
        assert!(
            !need_event(ev, 4, 0),
            "used_event {ev} inside the device's window"
        );
    }

    #[test]
    fn raw_next_fields() {
        let (_mem, mut r, m) = ring(false);
        let h = r
            .add_chain(
                &m,
                &[(0x2000, 1, 1), (0x3000, 1, 1)],
                &[None, Some(NextSlot::Chain(0))],
                vec![],
            )
            .unwrap();
        let d0: Descriptor = m.read_obj(ga(r.desc + 16 * u64::from(h))).unwrap();
        let d1: Descriptor = m.read_obj(ga(r.desc + 16 * u64::from(d0.next()))).unwrap();
        assert_eq!(d1.next(), h, "loop back to the head");
        let h2 = r
            .add_chain(&m, &[(0x2000, 1, 1)], &[Some(NextSlot::Raw(999))], vec![])
            .unwrap();
        let d: Descriptor = m.read_obj(ga(r.desc + 16 * u64::from(h2))).unwrap();
        assert_eq!(d.next(), 999);
    }
}
