//! Ring-side steps for one split virtqueue (virtio 1.x §2.7), shared by TX and RX rings:
//!
//! * [`RingLayout`]: the addresses of the ring's fields, computed once with checked
//!   arithmetic, so that a ring placed at the top of the address space is refused instead of
//!   wrapping (release) or panicking (debug);
//! * [`AvailRing`] / [`AvailSnapshot`]: the avail ring translated once per burst and the
//!   chains published on it, read from one avail-index load (virtio-queue's `AvailIter`
//!   over a translated ring: its per-entry generic memory access was ~15% of a 64 B frame);
//! * [`UsedShadow`]: DPDK's shadow used ring — used elements collected during a burst and
//!   published with one used-index store ([`UsedShadow::flush`]);
//! * [`Kicks`]: driver→device notification suppression, by EVENT_IDX's `avail_event` where it
//!   was negotiated and by the used ring's `VRING_USED_F_NO_NOTIFY` flag otherwise (DPDK's
//!   virtio PMD never negotiates EVENT_IDX);
//! * [`needs_call`]: device→driver notification suppression, by `used_event` or the avail
//!   ring's `VRING_AVAIL_F_NO_INTERRUPT` flag.
//!
//! Everything takes the memory as a `vm_memory::GuestMemory`: on the data path that is a
//! `pvnet_grant::GrantMemory`, so ring accesses are checked against the grant table and
//! happen under its read lock like buffer accesses.

use crate::datapath::chain::DescTable;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions, VolatileSlice};

/// Where the fields of one split ring are (guest addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    size: u16,
    /// Descriptor table: `size` entries of 16 bytes.
    desc: u64,
    /// `virtq_avail`: flags at +0, idx at +2, ring at +4, `used_event` after the ring.
    avail: u64,
    /// `virtq_used`: flags at +0, idx at +2, elements at +4, `avail_event` after them.
    used: u64,
}

impl RingLayout {
    /// The layout of `q`, or `None` when the ring is empty, its size not a power of two (a
    /// split ring's must be; virtio-queue refuses others, and positions are taken modulo the
    /// size with a mask), or any of its fields would lie past the end of the 64-bit address
    /// space.
    pub fn of(q: &Queue) -> Option<RingLayout> {
        let size = q.size();
        if !size.is_power_of_two() {
            return None;
        }
        let s = u64::from(size);
        // Descriptor table, avail ring with used_event, used ring with avail_event: each
        // must end inside the address space.
        q.desc_table().checked_add(16 * s)?;
        q.avail_ring().checked_add(6 + 2 * s)?;
        q.used_ring().checked_add(6 + 8 * s)?;
        Some(RingLayout {
            size,
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
        })
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The descriptor table in host memory, translated once through `mem`, or `None` when
    /// it is not inside one granted region (DPDK's vhost library refuses such rings too).
    pub fn desc_table<'m, M: GuestMemory<Bitmap = ()>>(&self, mem: &'m M) -> Option<DescTable<'m>> {
        let s = one_slice(
            mem,
            self.desc,
            16 * usize::from(self.size),
            Permissions::Read,
        )?;
        DescTable::new(s, self.size)
    }

    /// The avail ring (flags, index, entries) in host memory, translated once through
    /// `mem`, or `None` when it is not inside one granted region or not 2-byte aligned
    /// (the virtio specification requires it; virtio-queue checks it when the ring starts).
    pub fn avail_ring<'m, M: GuestMemory<Bitmap = ()>>(&self, mem: &'m M) -> Option<AvailRing<'m>> {
        let n = 2 + usize::from(self.size);
        let s = one_slice(mem, self.avail, 2 * n, Permissions::Read)?;
        AvailRing::new(s, self.size)
    }

    fn avail_flags(&self) -> GuestAddress {
        GuestAddress(self.avail)
    }

    fn avail_idx(&self) -> GuestAddress {
        GuestAddress(self.avail + 2)
    }

    /// Address of avail ring entry `i` (any `i`: taken modulo the size).
    pub fn avail_entry(&self, i: u16) -> GuestAddress {
        GuestAddress(self.avail + 4 + 2 * u64::from(i & (self.size - 1)))
    }

    fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail + 4 + 2 * u64::from(self.size))
    }

    fn used_flags(&self) -> GuestAddress {
        GuestAddress(self.used)
    }

    fn used_idx(&self) -> GuestAddress {
        GuestAddress(self.used + 2)
    }

    fn used_elem(&self, i: u16) -> GuestAddress {
        GuestAddress(self.used + 4 + 8 * u64::from(i & (self.size - 1)))
    }

    fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used + 4 + 8 * u64::from(self.size))
    }

    /// The driver's avail index (Acquire: the entries and descriptors it published before are
    /// visible after this load).
    pub fn read_avail_idx<M: GuestMemory>(&self, mem: &M) -> Result<u16, GuestMemoryError> {
        mem.load::<u16>(self.avail_idx(), Ordering::Acquire)
            .map(u16::from_le)
    }
}

/// Why a ring cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring structure is not inside one granted region (or misaligned).
    #[error("ring outside granted memory")]
    Unmapped,
    /// The driver's avail index is more than a ring ahead of the device's position.
    #[error("avail index {idx} is more than a ring ahead of {next}")]
    BogusAvailIdx { idx: u16, next: u16 },
}

/// The avail ring of a split queue in host memory: flags, index and `size` entries, as
/// 16-bit atomics (the driver writes them concurrently).
#[derive(Clone, Copy, Debug)]
pub struct AvailRing<'m> {
    words: &'m [AtomicU16],
    size: u16,
}

impl<'m> AvailRing<'m> {
    /// The ring at the start of `slice`, if it is long enough and 2-byte aligned.
    fn new(slice: VolatileSlice<'m>, size: u16) -> Option<Self> {
        let n = 2 + usize::from(size);
        let p = slice.ptr_guard().as_ptr();
        if slice.len() < 2 * n
            || p as usize % std::mem::align_of::<AtomicU16>() != 0
            || !size.is_power_of_two()
        {
            return None;
        }
        // SAFETY: `slice` is mapped, readable memory for 'm, at least 2 * n bytes long and
        // aligned for AtomicU16, which has the size and alignment of u16; the driver writes
        // these words concurrently, hence atomics (as vm-memory's own `load` uses); nothing
        // here writes them.
        let words = unsafe { std::slice::from_raw_parts(p.cast::<AtomicU16>(), n) };
        Some(AvailRing { words, size })
    }

    /// The driver's avail index (Acquire: the entries and descriptors published before it
    /// are visible after this load).
    #[inline]
    pub fn idx(&self) -> u16 {
        u16::from_le(self.words[1].load(Ordering::Acquire))
    }

    /// Entry `i` (any `i`: taken modulo the size): the head of a published chain.
    #[inline]
    pub fn head(&self, i: u16) -> u16 {
        // A power of two (checked in `new`): a mask, not a division, per chain taken.
        let k = 2 + usize::from(i & (self.size - 1));
        self.words
            .get(k)
            .map_or(0, |w| u16::from_le(w.load(Ordering::Relaxed)))
    }
}

/// The chains published on an avail ring and not yet taken, as of one read of its index
/// (virtio-queue's `AvailIter`): [`AvailSnapshot::next`] takes the next head,
/// [`AvailSnapshot::back`] gives the last one back; the caller stores
/// [`AvailSnapshot::next_avail`] as the queue's `next_avail` when done.
#[derive(Clone, Copy, Debug)]
pub struct AvailSnapshot<'m> {
    ring: AvailRing<'m>,
    next: u16,
    end: u16,
}

impl<'m> AvailSnapshot<'m> {
    /// Reads the avail index once; `next` is the device's position (`next_avail`). An index
    /// more than a ring ahead is an error (a driver cannot have published that much).
    pub fn take(ring: AvailRing<'m>, next: u16) -> Result<Self, RingError> {
        let end = ring.idx();
        if end.wrapping_sub(next) > ring.size {
            return Err(RingError::BogusAvailIdx { idx: end, next });
        }
        Ok(AvailSnapshot { ring, next, end })
    }

    /// Gives the last taken chain back (it is taken again by the next snapshot).
    #[inline]
    pub fn back(&mut self) {
        self.next = self.next.wrapping_sub(1);
    }

    /// The position after the chains taken: the queue's new `next_avail`.
    pub fn next_avail(&self) -> u16 {
        self.next
    }
}

impl Iterator for AvailSnapshot<'_> {
    /// The head of a published chain.
    type Item = u16;

    #[inline]
    fn next(&mut self) -> Option<u16> {
        if self.next == self.end {
            return None;
        }
        let h = self.ring.head(self.next);
        self.next = self.next.wrapping_add(1);
        Some(h)
    }
}

/// `len` bytes at `gpa` as one host slice (they must lie inside one granted region).
pub fn one_slice<M: GuestMemory<Bitmap = ()>>(
    mem: &M,
    gpa: u64,
    len: usize,
    access: Permissions,
) -> Option<VolatileSlice<'_>> {
    let s = mem
        .get_slices(GuestAddress(gpa), len, access)
        .ok()?
        .next()?
        .ok()?;
    (s.len() == len).then_some(s)
}

/// Used elements of a burst, published with one used-index update (DPDK's
/// `update_shadow_used_ring` / `flush_shadow_used_ring`). The driver sees nothing of a
/// burst until [`UsedShadow::flush`], and then all of it at once (every buffer of a
/// mergeable frame included).
#[derive(Debug, Default)]
pub struct UsedShadow {
    entries: Vec<(u16, u32)>,
}

impl UsedShadow {
    /// An empty shadow with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        UsedShadow {
            entries: Vec::with_capacity(n),
        }
    }

    /// Stages chain `head` as used with `len` bytes written.
    pub fn push(&mut self, head: u16, len: u32) {
        self.entries.push((head, len));
    }

    /// The staged entries, (head, length), in order.
    #[cfg(test)]
    pub fn staged(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.entries.iter().copied()
    }

    /// Entries staged and not yet flushed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the staged entries (the caller returns them another way).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Writes the staged elements from `q.next_used()` on, then the used index (Release),
    /// and advances `next_used`. On a memory error nothing is published and the entries are
    /// dropped (the ring is broken).
    pub fn flush<M: GuestMemory<Bitmap = ()>>(
        &mut self,
        q: &mut Queue,
        lay: &RingLayout,
        mem: &M,
    ) -> Result<usize, GuestMemoryError> {
        let n = self.entries.len();
        if n == 0 {
            return Ok(0);
        }
        let base = q.next_used();
        let r = self.write_elems(lay, mem, base);
        self.entries.clear();
        r?;
        // One used entry per avail entry taken. A well-behaved driver has at most a ring's
        // worth out; one that publishes entries again before they came back can make a
        // delivery take more (bounded by its pop budget, 2 * size, plus one per frame):
        // the index then moves on modulo 2^16 and only that driver's own ring is wrong.
        let next = base.wrapping_add(n as u16);
        mem.store(next.to_le(), lay.used_idx(), Ordering::Release)?;
        q.set_next_used(next);
        Ok(n)
    }

    fn write_elems<M: GuestMemory<Bitmap = ()>>(
        &self,
        lay: &RingLayout,
        mem: &M,
        base: u16,
    ) -> Result<(), GuestMemoryError> {
        let size = usize::from(lay.size);
        let mut k = 0;
        while k < self.entries.len() {
            let slot = base.wrapping_add(k as u16) & (lay.size - 1);
            // The run of elements up to the end of the ring, written through one slice.
            let run = (size - usize::from(slot)).min(self.entries.len() - k);
            let addr = lay.used_elem(slot);
            let whole = mem
                .get_slices(addr, 8 * run, Permissions::Write)?
                .next()
                .transpose()?
                .filter(|s| s.len() == 8 * run);
            let elems = &self.entries[k..k + run];
            match whole {
                Some(s) if s.ptr_guard().as_ptr() as usize % 4 == 0 => {
                    let p = s.ptr_guard_mut().as_ptr().cast::<u32>();
                    for (j, &(id, len)) in elems.iter().enumerate() {
                        // SAFETY: `s` is a writable mapping of 8 * run bytes at `p`, 4-byte
                        // aligned (checked), and j < run: the words 2j and 2j + 1 are in it.
                        unsafe {
                            store_if_changed(p.add(2 * j), u32::from(id));
                            store_if_changed(p.add(2 * j + 1), len);
                        }
                    }
                }
                _ => {
                    for (j, &(id, len)) in elems.iter().enumerate() {
                        // One element: id (u32) and len (u32), little-endian.
                        let elem = (u64::from(id) | (u64::from(len) << 32)).to_le();
                        mem.write_obj(elem, GuestAddress(addr.0 + 8 * j as u64))?;
                    }
                }
            }
            k += run;
        }
        Ok(())
    }
}

/// Stores `v` (little-endian) in the guest's word at `p` unless it already holds it. A ring
/// used in order gets the same used elements lap after lap (the same ids at the same slots,
/// for frames of one size the same lengths): a line not stored into stays shared with the
/// driver's core, which reads it next, instead of changing owner twice per lap (see
/// `copy::write_hdr_and`).
///
/// # Safety
/// `p` must be 4-byte aligned and point to 4 bytes of mapped, writable memory.
#[inline(always)]
unsafe fn store_if_changed(p: *mut u32, v: u32) {
    let v = v.to_le();
    // SAFETY: the caller's guarantee. Volatile: the guest's memory, which it may write at any
    // time (any bit pattern is a valid u32; a changing value only makes the store happen).
    unsafe {
        if p.read_volatile() != v {
            p.write_volatile(v);
        }
    }
}

/// Whether the driver is asked to kick after adding buffers (driver→device notifications).
#[derive(Debug)]
pub struct Kicks {
    event_idx: bool,
    armed: bool,
}

impl Kicks {
    /// The state of a freshly started ring: kicks asked for (`used.flags` 0).
    pub fn new(event_idx: bool) -> Self {
        Kicks {
            event_idx,
            armed: true,
        }
    }

    /// Follows the ring's EVENT_IDX setting (a guest may renegotiate features on reset).
    pub fn set_event_idx(&mut self, on: bool) {
        if self.event_idx != on {
            self.event_idx = on;
            self.armed = true;
        }
    }

    /// Whether kicks are asked for.
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Stops asking for kicks: sets `VRING_USED_F_NO_NOTIFY` (written only on the change);
    /// with EVENT_IDX nothing is written (`avail_event` stays behind, as in vhost-net).
    pub fn disarm<M: GuestMemory>(&mut self, lay: &RingLayout, mem: &M) {
        if self.armed && !self.event_idx {
            let _ = mem.store(
                (VRING_USED_F_NO_NOTIFY as u16).to_le(),
                lay.used_flags(),
                Ordering::Relaxed,
            );
        }
        self.armed = false;
    }

    /// Asks for a kick once the driver publishes beyond avail index `at` (EVENT_IDX:
    /// `avail_event = at`; otherwise `used.flags = 0`), then reads the avail index again
    /// after a full fence and returns it: when it differs from `at`, buffers were published
    /// meanwhile and no kick may come for them.
    pub fn arm<M: GuestMemory>(
        &mut self,
        lay: &RingLayout,
        mem: &M,
        at: u16,
    ) -> Result<u16, GuestMemoryError> {
        if self.event_idx {
            mem.store(at.to_le(), lay.avail_event(), Ordering::Relaxed)?;
        } else {
            mem.store(0u16, lay.used_flags(), Ordering::Relaxed)?;
        }
        self.armed = true;
        fence(Ordering::SeqCst);
        lay.read_avail_idx(mem)
    }
}

/// Whether the driver wants a used-buffer notification for the entries published since the
/// used index was `old` (EVENT_IDX: `used_event` in `[old, next_used)`; otherwise:
/// `VRING_AVAIL_F_NO_INTERRUPT` clear). A field that cannot be read counts as "yes".
pub fn needs_call<M: GuestMemory>(q: &Queue, lay: &RingLayout, mem: &M, old: u16) -> bool {
    // The used index store must be visible before the driver's flag/event is read.
    fence(Ordering::SeqCst);
    let new = q.next_used();
    if new == old {
        return false;
    }
    if q.event_idx_enabled() {
        match mem.load::<u16>(lay.used_event(), Ordering::Relaxed) {
            Ok(ev) => new.wrapping_sub(u16::from_le(ev)).wrapping_sub(1) < new.wrapping_sub(old),
            Err(_) => true,
        }
    } else {
        match mem.load::<u16>(lay.avail_flags(), Ordering::Relaxed) {
            Ok(f) => u16::from_le(f) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory")
    }

    /// Used element `slot` of `vq`'s ring: (id, len).
    fn used_elem(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        slot: u64,
    ) -> (u32, u32) {
        let a = GuestAddress(vq.used_addr().0 + 4 + slot * 8);
        (
            m.read_obj(a).expect("id"),
            m.read_obj(GuestAddress(a.0 + 4)).expect("len"),
        )
    }

    #[test]
    fn layout_refuses_rings_at_the_top_of_the_address_space() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 256);
        let mut q: Queue = vq.create_queue().expect("queue");
        assert!(RingLayout::of(&q).is_some());
        let top = u64::MAX - 100;
        q.set_used_ring_address(Some(top as u32 & !3), Some((top >> 32) as u32));
        assert!(RingLayout::of(&q).is_none(), "used ring wraps");
        let mut q: Queue = vq.create_queue().expect("queue");
        q.set_avail_ring_address(Some(top as u32 & !1), Some((top >> 32) as u32));
        assert!(RingLayout::of(&q).is_none(), "avail ring wraps");
    }

    #[test]
    fn rings_whose_size_is_not_a_power_of_two_are_refused() {
        // Positions are reduced with a mask: a size that is not a power of two would put
        // entries in the wrong places (virtio-queue never hands one out; this is the guard).
        let m = mem();
        let s = m
            .get_slices(GuestAddress(0x100), 64, Permissions::Read)
            .expect("slices")
            .next()
            .expect("one slice")
            .expect("slice");
        for size in [0u16, 3, 6, 12] {
            assert!(AvailRing::new(s, size).is_none(), "size {size}");
        }
        for size in [1u16, 2, 4, 16] {
            assert!(AvailRing::new(s, size).is_some(), "size {size}");
        }
    }

    #[test]
    fn avail_snapshot_takes_what_was_published_and_refuses_a_bogus_index() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 4);
        let q: Queue = vq.create_queue().expect("queue");
        let lay = RingLayout::of(&q).expect("layout");
        let ring = lay.avail_ring(&m).expect("avail ring");
        for (i, h) in [3u16, 1, 2, 0].into_iter().enumerate() {
            vq.avail().ring().ref_at(i).expect("entry").store(h.to_le());
        }
        // Three published from position 65535 (wrapping): entries 3, 0, 1 of the ring.
        vq.avail().idx().store(2);
        let mut s = AvailSnapshot::take(ring, 65535).expect("snapshot");
        assert_eq!((s.next(), s.next()), (Some(0), Some(3)));
        s.back();
        assert_eq!((s.next(), s.next(), s.next()), (Some(3), Some(1), None));
        assert_eq!(s.next_avail(), 2);
        // More than a ring ahead.
        vq.avail().idx().store(7);
        assert_eq!(
            AvailSnapshot::take(ring, 2).unwrap_err(),
            RingError::BogusAvailIdx { idx: 7, next: 2 }
        );
        assert!(AvailSnapshot::take(ring, 3).is_ok(), "exactly a ring ahead");
    }

    #[test]
    fn shadow_flush_writes_all_entries_then_one_index_update() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 4);
        let mut q: Queue = vq.create_queue().expect("queue");
        let lay = RingLayout::of(&q).expect("layout");
        // Start near the wrap-around point of a 4-entry ring.
        q.set_next_used(3);
        let mut sh = UsedShadow::with_capacity(4);
        for (h, l) in [(2, 100), (0, 200), (1, 300)] {
            sh.push(h, l);
        }
        assert_eq!(sh.flush(&mut q, &lay, &m).expect("flush"), 3);
        assert!(sh.is_empty());
        assert_eq!(q.next_used(), 6);
        assert_eq!(vq.used().idx().load(), 6);
        let elem = |slot: u64| used_elem(&m, &vq, slot);
        assert_eq!(elem(3), (2, 100));
        assert_eq!(elem(0), (0, 200));
        assert_eq!(elem(1), (1, 300));
        assert_eq!(sh.flush(&mut q, &lay, &m).expect("empty"), 0);
        assert_eq!(vq.used().idx().load(), 6);
    }

    #[test]
    fn a_second_lap_rewrites_exactly_what_changed() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 4);
        let mut q: Queue = vq.create_queue().expect("queue");
        let lay = RingLayout::of(&q).expect("layout");
        let elem = |slot: u64| used_elem(&m, &vq, slot);
        let mut sh = UsedShadow::with_capacity(4);
        // Lap one, then lap two over the same slots: the same element, a new length, a new
        // id, both new (elements left in place must read back as the new lap's).
        for lap in [
            [(0, 60), (1, 60), (2, 60), (3, 60)],
            [(0, 60), (1, 1500), (3, 60), (1, 9000)],
        ] {
            for (h, l) in lap {
                sh.push(h, l);
            }
            assert_eq!(sh.flush(&mut q, &lay, &m).expect("flush"), 4);
            for (slot, (h, l)) in lap.into_iter().enumerate() {
                assert_eq!(elem(slot as u64), (u32::from(h), l), "slot {slot}");
            }
        }
        assert_eq!(vq.used().idx().load(), 8);
    }

    #[test]
    fn kicks_use_the_flag_without_event_idx_and_avail_event_with_it() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 8);
        let q: Queue = vq.create_queue().expect("queue");
        let lay = RingLayout::of(&q).expect("layout");
        let flags = || m.read_obj::<u16>(vq.used_addr()).expect("flags");
        let mut k = Kicks::new(false);
        k.disarm(&lay, &m);
        assert_eq!(flags(), VRING_USED_F_NO_NOTIFY as u16);
        assert!(!k.armed());
        vq.avail().idx().store(5);
        assert_eq!(k.arm(&lay, &m, 3).expect("arm"), 5, "moved meanwhile");
        assert_eq!(flags(), 0);
        // EVENT_IDX: the flag is never touched; avail_event carries the request.
        let mut k = Kicks::new(true);
        k.disarm(&lay, &m);
        assert_eq!(flags(), 0);
        assert_eq!(k.arm(&lay, &m, 5).expect("arm"), 5);
        let ev: u16 = m
            .read_obj(GuestAddress(vq.used_addr().0 + 4 + 8 * 8))
            .expect("avail_event");
        assert_eq!(ev, 5);
    }

    #[test]
    fn calls_follow_used_event_or_the_no_interrupt_flag() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 8);
        let mut q: Queue = vq.create_queue().expect("queue");
        let lay = RingLayout::of(&q).expect("layout");
        q.set_next_used(4);
        assert!(needs_call(&q, &lay, &m, 2));
        assert!(!needs_call(&q, &lay, &m, 4), "nothing new");
        m.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, vq.avail_addr())
            .expect("flags");
        assert!(!needs_call(&q, &lay, &m, 2));
        q.set_event_idx(true);
        let used_event = GuestAddress(vq.avail_addr().0 + 4 + 2 * 8);
        m.write_obj(2u16, used_event).expect("used_event");
        // Entries 2 and 3 were published since 2: used_event 2 crossed.
        assert!(needs_call(&q, &lay, &m, 2));
        m.write_obj(4u16, used_event).expect("used_event");
        assert!(!needs_call(&q, &lay, &m, 2));
    }
}
