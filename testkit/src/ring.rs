//! The driver side of one split virtqueue.
//!
//! Layout in guest memory (virtio 1.x, 2.7): descriptor table (16 bytes per entry), avail ring
//! (`flags`, `idx`, `ring[size]`, `used_event`), used ring (`flags`, `idx`, `ring[size]` of
//! `{id: u32, len: u32}`, `avail_event`). Each part lies inside one memory region and is read
//! and written the way a guest driver does: atomics on the mapped memory, no bounds-checked
//! memory calls on the fast path.
//!
//! Ordering: descriptors and avail entries are written first, then `avail.idx` is stored with
//! Release; the kick decision reads `avail_event` / `used.flags` only after a SeqCst fence, so
//! the device either sees the new index or we see its request for a kick. On the used side,
//! `used.idx` is loaded with Acquire before the entries are read; before sleeping, the driver
//! publishes `used_event` (or clears NO_INTERRUPT), fences, and re-reads `used.idx`.
//!
//! Chains are tracked without allocating: a shadow of each slot's `next` link (the kit's own,
//! whatever a hostile chain wrote into the table) and, per head, the chain's length and what
//! the kit owns in it ([`Owner`]).

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};

use virtio_bindings::bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mem::GuestMem;
use crate::Error;

/// One descriptor to write: `(guest address, length, VRING_DESC_F_* flags)`.
pub(crate) type DescSpec = (u64, u32, u16);

/// What the kit owns in a chain, given back when the device returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Nothing (a hand-made chain): nothing to give back.
    None,
    /// A buffer `(addr, len)` from the guest's buffer pool.
    Buf(u64, u32),
    /// A pre-filled TX slot `(addr, len)` of polling mode: back to its pair's slots.
    Slot(u64, u32),
}

/// A chain handed to the device.
#[derive(Clone, Copy, Debug)]
struct Chain {
    /// Descriptor slots it occupies (its head first, then the shadow links).
    len: u16,
    owner: Owner,
    /// Published any number of times and never freed (a guest that re-posts one chain).
    pinned: bool,
}

/// `vring_need_event` from the virtio spec: has `new` moved past `event` since `old`?
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// `used_event` of a ring whose interrupts are off: half the index space ahead of what the
/// driver has consumed. The device is never more than a ring (at most 32768 entries) ahead of
/// the driver, so no window it checks (`[old, new)`, with `new` at most that far ahead) ever
/// contains this value. (A value just behind the driver's position is not enough: after the
/// device published entries and before it checks `used_event`, the driver may consume them
/// and move "just behind" into the window the device is about to check.)
fn suppressed_used_event(last_used: u16) -> u16 {
    last_used.wrapping_add(0x8000)
}

/// One part of a ring (descriptor table, avail ring, used ring) in the mapped guest memory.
struct Part {
    /// Keeps the mapping alive for as long as the part is accessed.
    _mem: GuestMemoryMmap<()>,
    ptr: *mut u8,
    len: usize,
}

impl Part {
    fn new(mem: &GuestMem, gpa: u64, len: usize) -> Result<Part, Error> {
        let ptr = mem.host_ptr(gpa, len).ok_or_else(|| {
            Error::MemorySetup(format!("ring part at {gpa:#x} not in one region"))
        })?;
        Ok(Part {
            _mem: mem.mem().clone(),
            ptr,
            len,
        })
    }

    fn check<T>(&self, off: usize) {
        let n = std::mem::size_of::<T>();
        assert!(off + n <= self.len, "ring field {off} outside its part");
        assert_eq!(
            (self.ptr as usize + off) % n,
            0,
            "ring field {off} misaligned"
        );
    }

    fn u16(&self, off: usize) -> &AtomicU16 {
        self.check::<u16>(off);
        // SAFETY: `check` verified the field is aligned and lies inside this part, which lies
        // inside one mapping of guest memory that `_mem` keeps alive; the device accesses it
        // concurrently, hence only atomic accesses.
        unsafe { AtomicU16::from_ptr(self.ptr.add(off).cast()) }
    }

    fn u32(&self, off: usize) -> &AtomicU32 {
        self.check::<u32>(off);
        // SAFETY: as in `u16`, for an aligned u32.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off).cast()) }
    }

    fn u64(&self, off: usize) -> &AtomicU64 {
        self.check::<u64>(off);
        // SAFETY: as in `u16`, for an aligned u64.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off).cast()) }
    }
}

// SAFETY: a `Part` is a pointer into shared guest memory whose mapping it keeps alive (the
// `GuestMemoryMmap` clone is `Send`); every access through it is atomic.
unsafe impl Send for Part {}

pub(crate) struct DriverRing {
    pub size: u16,
    /// Guest addresses of the three parts.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    desc_p: Part,
    avail_p: Part,
    used_p: Part,
    free: Vec<u16>,
    /// Shadow of each descriptor slot's link to the next slot of its chain.
    links: Vec<u16>,
    chains: Vec<Option<Chain>>,
    slots: Vec<u16>,
    in_flight: usize,
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
    /// Heads made available and not yet used, oldest first (for [`Self::out_of_order`]).
    order: VecDeque<u16>,
    /// Used entries that came before an older available chain (`VIRTIO_F_IN_ORDER` forbids
    /// them).
    pub out_of_order: u64,
}

impl DriverRing {
    pub(crate) fn new(mem: &mut GuestMem, size: u16, event_idx: bool) -> Result<Self, Error> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::InvalidArgument(format!("queue size {size}")));
        }
        let n = usize::from(size);
        let (dl, al, ul) = (16 * n, 6 + 2 * n, 6 + 8 * n);
        let desc = mem.alloc_in(dl as u64, 4096, true)?;
        let avail = mem.alloc_in(al as u64, 4096, true)?;
        let used = mem.alloc_in(ul as u64, 4096, true)?;
        for (a, l) in [(desc, dl), (avail, al), (used, ul)] {
            vm_memory::Bytes::write_slice(mem.mem(), &vec![0u8; l], vm_memory::GuestAddress(a))?;
        }
        Ok(DriverRing {
            size,
            desc,
            avail,
            used,
            desc_p: Part::new(mem, desc, dl)?,
            avail_p: Part::new(mem, avail, al)?,
            used_p: Part::new(mem, used, ul)?,
            free: (0..size).rev().collect(),
            links: vec![0; n],
            chains: vec![None; n],
            slots: Vec::with_capacity(n),
            in_flight: 0,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx,
            suppress: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            kicks: 0,
            order: VecDeque::with_capacity(n),
            out_of_order: 0,
        })
    }

    pub(crate) fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Number of chains handed to the device and not yet returned (pinned ones not counted).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn used_event(&self) -> &AtomicU16 {
        self.avail_p.u16(4 + 2 * usize::from(self.size))
    }

    fn avail_event(&self) -> &AtomicU16 {
        self.used_p.u16(4 + 8 * usize::from(self.size))
    }

    /// Writes descriptor `i` of the table.
    pub(crate) fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = 16 * usize::from(i % self.size);
        self.desc_p.u64(at).store(addr.to_le(), Ordering::Relaxed);
        self.desc_p
            .u32(at + 8)
            .store(len.to_le(), Ordering::Relaxed);
        self.desc_p
            .u16(at + 12)
            .store(flags.to_le(), Ordering::Relaxed);
        self.desc_p
            .u16(at + 14)
            .store(next.to_le(), Ordering::Relaxed);
    }

    /// Puts `head` in the next avail slot (published with the next [`Self::publish`]).
    pub(crate) fn push_avail(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.avail_p
            .u16(4 + 2 * slot)
            .store(head.to_le(), Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        if self.order.len() >= 2 * usize::from(self.size) {
            // Hostile tests publish heads that never come back.
            self.order.pop_front();
        }
        self.order.push_back(head);
    }

    /// Writes a chain into free descriptor slots and puts its head in the next avail slot
    /// (not yet published). `descs[i]` links to the next descriptor of the chain unless
    /// `next[i]` says otherwise ([`NextSlot`]).
    pub(crate) fn add_chain(
        &mut self,
        descs: &[DescSpec],
        next: &[Option<NextSlot>],
        owner: Owner,
    ) -> Result<u16, Error> {
        let head = self.place(descs, next, owner)?;
        self.push_avail(head);
        self.in_flight += 1;
        Ok(head)
    }

    /// A one-descriptor chain (an RX buffer, a TX frame): [`Self::add_chain`] without links.
    pub(crate) fn add_one(
        &mut self,
        addr: u64,
        len: u32,
        flags: u16,
        owner: Owner,
    ) -> Result<u16, Error> {
        let head = self.free.pop().ok_or(Error::RingFull)?;
        self.write_desc(head, addr, len, flags, 0);
        self.chains[usize::from(head)] = Some(Chain {
            len: 1,
            owner,
            pinned: false,
        });
        self.push_avail(head);
        self.in_flight += 1;
        Ok(head)
    }

    /// Writes a chain into free descriptor slots (without making it available); its slots
    /// stay taken until it is released, or for good when `pinned`.
    fn place(
        &mut self,
        descs: &[DescSpec],
        next: &[Option<NextSlot>],
        owner: Owner,
    ) -> Result<u16, Error> {
        if descs.is_empty() {
            return Err(Error::InvalidArgument("empty chain".into()));
        }
        if descs.len() > self.free.len() {
            return Err(Error::RingFull);
        }
        let mut slots = std::mem::take(&mut self.slots);
        slots.clear();
        slots.extend((0..descs.len()).filter_map(|_| self.free.pop()));
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let follow = slots.get(i + 1).copied().unwrap_or(0);
            let nxt = match next.get(i).copied().flatten() {
                Some(NextSlot::Chain(j)) => slots.get(j).copied().unwrap_or(0),
                Some(NextSlot::Raw(r)) => r,
                None => follow,
            };
            self.write_desc(slots[i], addr, len, flags, nxt);
            self.links[usize::from(slots[i])] = follow;
        }
        let head = slots[0];
        self.chains[usize::from(head)] = Some(Chain {
            len: descs.len() as u16,
            owner,
            pinned: false,
        });
        self.slots = slots;
        Ok(head)
    }

    /// Writes a chain whose slots stay taken for good, without making it available: publish
    /// it (any number of times) with [`Self::push_avail`].
    pub(crate) fn pin(
        &mut self,
        descs: &[DescSpec],
        next: &[Option<NextSlot>],
    ) -> Result<u16, Error> {
        let head = self.place(descs, next, Owner::None)?;
        if let Some(c) = self.chains[usize::from(head)].as_mut() {
            c.pinned = true;
        }
        Ok(head)
    }

    /// Publishes new avail entries and kicks the device if it wants a kick; true if it kicked.
    pub(crate) fn publish(&mut self) -> Result<bool, Error> {
        if self.avail_idx == self.kicked_idx {
            return Ok(false);
        }
        self.avail_p
            .u16(2)
            .store(self.avail_idx.to_le(), Ordering::Release);
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let ev = u16::from_le(self.avail_event().load(Ordering::Acquire));
            need_event(ev, self.avail_idx, self.kicked_idx)
        } else {
            let flags = u16::from_le(self.used_p.u16(0).load(Ordering::Acquire));
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        self.kicked_idx = self.avail_idx;
        if need {
            self.kick.write(1)?;
            self.kicks += 1;
        }
        Ok(need)
    }

    /// Sets the avail index (shadow and ring) to `v` without a kick, bogus values included.
    pub(crate) fn set_avail_idx(&mut self, v: u16) {
        self.avail_p.u16(2).store(v.to_le(), Ordering::Release);
        self.avail_idx = v;
        self.kicked_idx = v;
    }

    /// The driver's avail index: what it pushed, published or not.
    pub(crate) fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index as the device last published it.
    pub(crate) fn device_used_idx(&self) -> u16 {
        u16::from_le(self.used_p.u16(2).load(Ordering::Acquire))
    }

    /// Number of used entries not read yet.
    pub(crate) fn used_pending(&self) -> u16 {
        self.device_used_idx().wrapping_sub(self.last_used)
    }

    /// Reads the next used entry `(id, len)`; call only while [`Self::used_pending`] is not 0.
    pub(crate) fn pop_used(&mut self) -> (u32, u32) {
        let at = 4 + 8 * usize::from(self.last_used % self.size);
        let id = u32::from_le(self.used_p.u32(at).load(Ordering::Relaxed));
        let len = u32::from_le(self.used_p.u32(at + 4).load(Ordering::Relaxed));
        self.last_used = self.last_used.wrapping_add(1);
        if let Some(k) = self.order.iter().position(|&h| u32::from(h) == id) {
            if k > 0 {
                self.out_of_order += 1;
            }
            self.order.remove(k);
        }
        (id, len)
    }

    /// What the kit owns in the chains handed to the device and not yet returned (pinned
    /// ones included).
    pub(crate) fn in_flight_owners(&self) -> Vec<Owner> {
        self.chains.iter().flatten().map(|c| c.owner).collect()
    }

    /// Takes the chain whose head is `id` off the in-flight table and frees its descriptors;
    /// `None` if the device returned an id that is not an in-flight head. A pinned chain stays.
    pub(crate) fn release(&mut self, id: u32) -> Option<Owner> {
        let head = u16::try_from(id).ok()?;
        let entry = self.chains.get_mut(usize::from(head))?;
        let chain = (*entry)?;
        if chain.pinned {
            return Some(chain.owner);
        }
        *entry = None;
        let mut slot = head;
        for _ in 0..chain.len {
            self.free.push(slot);
            slot = self.links[usize::from(slot)];
        }
        self.in_flight -= 1;
        Some(chain.owner)
    }

    /// Tells the device whether to notify: `used_event` with EVENT_IDX (the next entry, or
    /// never while suppressed), otherwise the avail ring's NO_INTERRUPT flag.
    pub(crate) fn write_used_event(&self) {
        if self.event_idx {
            let ev = if self.suppress {
                suppressed_used_event(self.last_used)
            } else {
                self.last_used
            };
            self.used_event().store(ev.to_le(), Ordering::Release);
        } else {
            let flags = if self.suppress {
                VRING_AVAIL_F_NO_INTERRUPT as u16
            } else {
                0
            };
            self.avail_p.u16(0).store(flags.to_le(), Ordering::Release);
        }
    }

    /// Turns device notifications for this ring off (`true`) or on.
    pub(crate) fn set_suppress(&mut self, on: bool) {
        self.suppress = on;
        self.write_used_event();
    }

    pub(crate) fn suppressed(&self) -> bool {
        self.suppress
    }

    /// Re-arms notifications before sleeping; true if used entries are already pending.
    pub(crate) fn arm(&self) -> bool {
        self.write_used_event();
        fence(Ordering::SeqCst);
        self.used_pending() != 0
    }

    /// Asks for a notification once `after` (at least 1) more entries are used, whatever the
    /// suppression (EVENT_IDX's `used_event`; without it, on the next one: NO_INTERRUPT is
    /// cleared); true if entries are already pending (do not sleep). [`Self::write_used_event`]
    /// goes back to the ring's setting.
    pub(crate) fn arm_after(&self, after: u16) -> bool {
        if self.event_idx {
            let ev = self.last_used.wrapping_add(after.max(1) - 1);
            self.used_event().store(ev.to_le(), Ordering::Release);
        } else {
            self.avail_p.u16(0).store(0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.used_pending() != 0
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
mod tests;
