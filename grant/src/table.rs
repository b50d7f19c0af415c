//! The grant table and its writers.
//!
//! State: a `Vec` of [`Entry`]s sorted by guest address, non-overlapping, plus a generation
//! counter, all behind one lock of the [`RwFamily`] `F` (the hot read lock of pvnet). Writers take the write
//! lock, edit the vector in place, and hand the entries they removed to a "graveyard" that is
//! dropped only after the write lock is released: acquiring the write lock proved that no
//! reader still holds a guard (readers touch guest memory only through a guard), so dropping
//! the last `Arc` of a mapping (munmap) right after the writer returns is safe, and the munmap
//! does not lengthen the time readers are held off.

use pvnet_locks::family::{RwFamily, RwLockApi};
use pvnet_locks::RwLockKind;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use crate::entry::{region_entry, Entry};
use crate::{Access, GrantError, GrantInfo, GrantReadGuard, HostMapping};

/// What the lock protects.
#[derive(Debug)]
pub(crate) struct State<B> {
    /// Sorted by `start`, pairwise disjoint; see [`Entry`] for the per-entry invariants.
    pub(crate) entries: Vec<Entry<B>>,
    /// Bumped by every write-lock hold that changed something.
    pub(crate) generation: u64,
}

/// The grant table of one guest: which guest-physical ranges pvnet may touch, where they are
/// mapped in this process, and with which rights.
///
/// Readers call [`GrantTable::read`] once per descriptor chain (or batch of chains) and do all
/// their translations and copies through the returned guard; the per-buffer forms
/// ([`GrantTable::copy_from_guest`], …) take the lock per call. Writers are the vhost-user
/// memory table ([`GrantTable::replace_from_memory`], [`GrantTable::add_region`],
/// [`GrantTable::remove_region`]) and the generic [`GrantTable::grant`] /
/// [`GrantTable::revoke`] (see the crate documentation for a vIOMMU source).
///
/// Lock order: a thread holds at most one read guard per table, acquires guards of two
/// tables through [`read_pair`] (address order, like Xen's `double_gt_lock`), and never
/// calls a writer while holding a guard.
///
/// The lock algorithm is the type parameter `F` (a [`RwFamily`]): the table and every reader
/// are compiled for it, so a read costs the algorithm's own lock and unlock; pick `F` from a
/// run-time [`RwLockKind`] once with [`pvnet_locks::with_rw_family!`].
///
/// ```
/// use pvnet_grant::{memfd, GrantTable};
/// use pvnet_locks::family::Percpu;
/// use vm_memory::GuestAddress;
///
/// let mem = memfd::guest_memory::<()>(&[(0x1000, 0x4000)]).unwrap();
/// let t = GrantTable::<Percpu>::new();
/// t.replace_from_memory(&mem).unwrap();
/// let g = t.read(); // one read-lock hold for a batch of buffers
/// g.write_from(GuestAddress(0x1100), b"frame").unwrap();
/// let mut out = [0u8; 5];
/// g.read_into(GuestAddress(0x1100), &mut out).unwrap();
/// assert_eq!(&out, b"frame");
/// assert!(g.read_into(GuestAddress(0x9000), &mut out).is_err()); // not granted
/// ```
pub struct GrantTable<F: RwFamily, B: Bitmap + Send + Sync + 'static = ()> {
    state: F::Lock<State<B>>,
}

/// What [`GrantTable::replace_from_memory`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplaceSummary {
    /// Regions whose grant was kept as it was (same range, same mapping).
    pub kept: usize,
    /// New grants.
    pub added: usize,
    /// Revoked grants.
    pub removed: usize,
}

impl<F: RwFamily, B: Bitmap + Send + Sync + 'static> Default for GrantTable<F, B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: RwFamily, B: Bitmap + Send + Sync + 'static> GrantTable<F, B> {
    /// An empty table.
    pub fn new() -> Self {
        GrantTable {
            state: F::Lock::new(State {
                entries: Vec::new(),
                generation: 0,
            }),
        }
    }

    /// The kind of the table's lock.
    pub fn kind(&self) -> RwLockKind {
        F::KIND
    }

    /// Takes the read lock: every translation and copy made through the guard is checked
    /// against the table as it is now, and no writer can change it until the guard drops.
    #[inline]
    pub fn read(&self) -> GrantReadGuard<'_, F, B> {
        GrantReadGuard::new(self.state.read())
    }

    /// Runs `f` with the write lock held: all its changes become visible to readers at once.
    /// Mappings it revoked are dropped after the lock is released and before this returns.
    /// If `f` panics, the changes it made before stay, and so does this rule: the generation
    /// moves on if anything changed, and the revoked mappings are dropped after the release.
    pub fn update<R>(&self, f: impl FnOnce(&mut GrantWriter<'_, B>) -> R) -> R {
        let mut dead = Vec::new();
        let r = {
            let mut guard = self.state.write();
            let State {
                entries,
                generation,
            } = &mut *guard;
            let next = generation.wrapping_add(1);
            // Dropped before the guard, also on unwind: it bumps the generation (see Drop).
            let mut w = GrantWriter {
                entries,
                dead: &mut dead,
                generation,
                next_generation: next,
                changed: false,
            };
            f(&mut w)
        };
        // Write lock released: no reader uses the revoked mappings any more.
        drop(dead);
        r
    }

    /// Grants `len` bytes from `gpa`, backed by `host`, with rights `access`; returns the
    /// grant's generation. Fails on overlap with an existing grant.
    pub fn grant(
        &self,
        gpa: GuestAddress,
        len: u64,
        host: HostMapping<B>,
        access: Access,
    ) -> Result<u64, GrantError> {
        self.update(|w| w.grant(gpa, len, host, access))
    }

    /// Revokes every granted byte in `[gpa, gpa + len)`, trimming or splitting grants that
    /// overlap it partially; returns the number of bytes revoked. When this returns, no
    /// reader still uses the revoked bytes.
    pub fn revoke(&self, gpa: GuestAddress, len: u64) -> Result<u64, GrantError> {
        self.update(|w| w.revoke(gpa, len))
    }

    /// Revokes everything; returns the number of grants removed.
    pub fn revoke_all(&self) -> usize {
        self.update(|w| w.revoke_all())
    }

    /// Grants a whole vm-memory region (ADD_MEM_REG); returns the grant's generation.
    pub fn add_region(
        &self,
        region: &GuestRegionMmap<B>,
        access: Access,
    ) -> Result<u64, GrantError> {
        self.update(|w| w.add_region(region, access))
    }

    /// Revokes the grant that starts at `gpa` (REM_MEM_REG).
    pub fn remove_region(&self, gpa: GuestAddress) -> Result<GrantInfo, GrantError> {
        self.update(|w| w.remove_region(gpa))
    }

    /// Makes the table grant exactly the regions of `mem`, read-write (SET_MEM_TABLE, or any
    /// `update_memory` call of vhost-user-backend, which always hands over the whole
    /// memory). Regions whose range and mapping did not change keep their grant and
    /// generation. On error nothing changes.
    pub fn replace_from_memory(
        &self,
        mem: &GuestMemoryMmap<B>,
    ) -> Result<ReplaceSummary, GrantError> {
        self.update(|w| w.replace_from_memory(mem))
    }

    /// The current generation (takes the read lock).
    pub fn generation(&self) -> u64 {
        self.read().generation()
    }

    /// Number of grants (takes the read lock).
    pub fn len(&self) -> usize {
        self.read().grants().len()
    }

    /// Whether nothing is granted (takes the read lock).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of all grants (allocates; not for the data path).
    pub fn grants(&self) -> Vec<GrantInfo> {
        self.read().grants().collect()
    }

    /// Per-buffer form of [`GrantReadGuard::check`].
    pub fn check(&self, gpa: GuestAddress, len: usize, need: Access) -> Result<(), GrantError> {
        self.read().check(gpa, len, need)
    }

    /// Per-buffer form of [`GrantReadGuard::read_into`]: guest → local buffer.
    pub fn copy_from_guest(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), GrantError> {
        self.read().read_into(gpa, buf)
    }

    /// Per-buffer form of [`GrantReadGuard::write_from`]: local buffer → guest.
    pub fn copy_to_guest(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), GrantError> {
        self.read().write_from(gpa, buf)
    }

    /// Per-buffer grant copy: `len` bytes from `src_gpa` of this table's guest to `dst_gpa`
    /// of `dst`'s guest (`dst` may be `self`). Takes both read locks in address order.
    pub fn grant_copy_to(
        &self,
        src_gpa: GuestAddress,
        dst: &GrantTable<F, B>,
        dst_gpa: GuestAddress,
        len: usize,
    ) -> Result<(), GrantError> {
        read_pair(self, dst).copy(src_gpa, dst_gpa, len)
    }
}

impl<F: RwFamily, B: Bitmap + Send + Sync + 'static> std::fmt::Debug for GrantTable<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantTable").finish_non_exhaustive()
    }
}

/// Read guards of a source and a destination table, taken in a deadlock-free order (by
/// table address; one guard when both are the same table).
pub struct GuardPair<'a, F: RwFamily, B: Bitmap + Send + Sync + 'static = ()> {
    first: GrantReadGuard<'a, F, B>,
    second: Option<GrantReadGuard<'a, F, B>>,
    src_first: bool,
}

/// Read-locks `src` and `dst` in address order (Xen's `double_gt_lock` rule), so that two
/// threads copying in opposite directions cannot deadlock against waiting writers.
pub fn read_pair<'a, F: RwFamily, B: Bitmap + Send + Sync + 'static>(
    src: &'a GrantTable<F, B>,
    dst: &'a GrantTable<F, B>,
) -> GuardPair<'a, F, B> {
    if std::ptr::eq(src, dst) {
        return GuardPair {
            first: src.read(),
            second: None,
            src_first: true,
        };
    }
    let src_first = (src as *const GrantTable<F, B>) < (dst as *const GrantTable<F, B>);
    let (a, b) = if src_first { (src, dst) } else { (dst, src) };
    let first = a.read();
    let second = Some(b.read());
    GuardPair {
        first,
        second,
        src_first,
    }
}

impl<'a, F: RwFamily, B: Bitmap + Send + Sync + 'static> GuardPair<'a, F, B> {
    /// The source table's guard.
    pub fn src(&self) -> &GrantReadGuard<'a, F, B> {
        match &self.second {
            Some(second) if !self.src_first => second,
            _ => &self.first,
        }
    }

    /// The destination table's guard.
    pub fn dst(&self) -> &GrantReadGuard<'a, F, B> {
        match &self.second {
            Some(second) if self.src_first => second,
            _ => &self.first,
        }
    }

    /// Grant copy from the source to the destination guest under these guards.
    #[inline]
    pub fn copy(
        &self,
        src_gpa: GuestAddress,
        dst_gpa: GuestAddress,
        len: usize,
    ) -> Result<(), GrantError> {
        crate::grant_copy(self.src(), src_gpa, self.dst(), dst_gpa, len)
    }
}

/// The write side, handed to [`GrantTable::update`]'s closure: every call edits the table
/// under the one write-lock hold.
pub struct GrantWriter<'w, B> {
    entries: &'w mut Vec<Entry<B>>,
    dead: &'w mut Vec<Entry<B>>,
    /// The table's generation: set to `next_generation` when the writer is dropped (at the
    /// end of the update, or when its closure unwinds) if anything changed.
    generation: &'w mut u64,
    next_generation: u64,
    /// Set before every change (a spurious bump only costs readers a search).
    changed: bool,
}

impl<B> Drop for GrantWriter<'_, B> {
    fn drop(&mut self) {
        if self.changed {
            *self.generation = self.next_generation;
        }
    }
}

impl<B: Bitmap> GrantWriter<'_, B> {
    /// The generation that grants made in this update get.
    pub fn generation(&self) -> u64 {
        self.next_generation
    }

    /// See [`GrantTable::grant`].
    pub fn grant(
        &mut self,
        gpa: GuestAddress,
        len: u64,
        host: HostMapping<B>,
        access: Access,
    ) -> Result<u64, GrantError> {
        let e = Entry::new(gpa.0, len, host, access, self.next_generation)?;
        self.insert(e)
    }

    fn insert(&mut self, e: Entry<B>) -> Result<u64, GrantError> {
        let i = self.entries.partition_point(|x| x.start < e.start);
        if let Some(prev) = i.checked_sub(1).and_then(|p| self.entries.get(p)) {
            if prev.end() > e.start {
                return Err(GrantError::Overlap { gpa: e.start });
            }
        }
        if let Some(next) = self.entries.get(i) {
            if next.start < e.end() {
                return Err(GrantError::Overlap { gpa: next.start });
            }
        }
        let generation = e.generation;
        self.changed = true;
        self.entries.insert(i, e);
        Ok(generation)
    }

    /// See [`GrantTable::revoke`].
    pub fn revoke(&mut self, gpa: GuestAddress, len: u64) -> Result<u64, GrantError> {
        let from = gpa.0;
        if len == 0 {
            return Err(GrantError::ZeroLength { gpa: from });
        }
        let to = from
            .checked_add(len)
            .ok_or(GrantError::LengthOverflow { gpa: from, len })?;
        let first = self.entries.partition_point(|e| e.end() <= from);
        let last = first + self.entries[first..].partition_point(|e| e.start < to);
        if first == last {
            return Ok(0);
        }
        let mut keep: [Option<Entry<B>>; 2] = [None, None];
        let head = &self.entries[first];
        if head.start < from {
            keep[0] = Some(head.part(head.start, from));
        }
        let tail = &self.entries[last - 1];
        if tail.end() > to {
            keep[1] = Some(tail.part(to, tail.end()));
        }
        let mut revoked = 0;
        self.changed = true;
        for e in self.entries.splice(first..last, keep.into_iter().flatten()) {
            revoked += e.end().min(to) - e.start.max(from);
            self.dead.push(e);
        }
        Ok(revoked)
    }

    /// See [`GrantTable::revoke_all`].
    pub fn revoke_all(&mut self) -> usize {
        let n = self.entries.len();
        self.changed |= n > 0;
        self.dead.append(self.entries);
        n
    }

    /// See [`GrantTable::add_region`].
    pub fn add_region(
        &mut self,
        region: &GuestRegionMmap<B>,
        access: Access,
    ) -> Result<u64, GrantError> {
        let e = region_entry(region, access, self.next_generation)?;
        self.insert(e)
    }

    /// See [`GrantTable::remove_region`].
    pub fn remove_region(&mut self, gpa: GuestAddress) -> Result<GrantInfo, GrantError> {
        let i = self
            .entries
            .binary_search_by_key(&gpa.0, |e| e.start)
            .map_err(|_| GrantError::NoSuchGrant { gpa: gpa.0 })?;
        self.changed = true;
        let e = self.entries.remove(i);
        let info = e.info();
        self.dead.push(e);
        Ok(info)
    }

    /// See [`GrantTable::replace_from_memory`].
    pub fn replace_from_memory(
        &mut self,
        mem: &GuestMemoryMmap<B>,
    ) -> Result<ReplaceSummary, GrantError> {
        let mut fresh: Vec<Entry<B>> = Vec::with_capacity(mem.num_regions());
        let mut sum = ReplaceSummary::default();
        for region in mem.iter() {
            let mut e = region_entry(region, Access::ReadWrite, self.next_generation)?;
            let same = self.entries.iter().find(|o| {
                o.start == e.start
                    && o.len == e.len
                    && o.access == Access::ReadWrite
                    && o.host.same_as(&e.host)
            });
            match same {
                Some(o) => {
                    e.generation = o.generation;
                    sum.kept += 1;
                }
                None => sum.added += 1,
            }
            if let Some(prev) = fresh.last() {
                if prev.end() > e.start {
                    return Err(GrantError::Overlap { gpa: e.start });
                }
            }
            fresh.push(e);
        }
        sum.removed = self.entries.len() - sum.kept;
        self.changed |= sum.added > 0 || sum.removed > 0;
        let old = std::mem::replace(self.entries, fresh);
        self.dead.extend(old);
        Ok(sum)
    }
}
