//! [`GrantMemory`]: a read guard seen as vm-memory's [`GuestMemory`], so that code written
//! against vm-memory (virtio-queue's rings and descriptor chains) reaches guest memory only
//! through the grant table, under the guard.
//!
//! Every access is checked like the guard's own operations (granted, rights, no overflow) and
//! translated through a [`RegionHint`] kept in the view: consecutive accesses to the same
//! grant (a ring, a descriptor table) cost a range check, not a search. The check is made
//! piece by piece, as vm-memory iterates over [`GuestMemory::get_slices`], not for the whole
//! range first: an access spanning two grants, the second not granted for it, moves the
//! first piece before it fails (`write` returns the short count, `write_slice` a
//! `PartialBuffer` error). Nothing outside the rights of a grant is touched; a caller that
//! needs all-or-nothing calls [`GuestMemory::check_range`] first. Because the view
//! borrows the guard, nothing read or written through it can outlive the read-lock hold: when
//! a writer (a revoke) returns, no access through an old view is in flight.

use std::cell::Cell;
use std::iter::FusedIterator;

use pvnet_locks::family::RwFamily;
use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions, VolatileSlice,
};

use crate::{Access, GrantReadGuard, RegionHint};

/// A [`GrantReadGuard`] as a [`GuestMemory`] (see the module documentation).
pub struct GrantMemory<'g, 'a, F: RwFamily, B: Bitmap + Send + Sync + 'static = ()> {
    guard: &'g GrantReadGuard<'a, F, B>,
    hint: Cell<RegionHint>,
}

impl<'g, 'a, F: RwFamily, B: Bitmap + Send + Sync + 'static> GrantMemory<'g, 'a, F, B> {
    /// A view of `guard`, starting from `hint` (e.g. one kept from the previous burst).
    pub fn new(guard: &'g GrantReadGuard<'a, F, B>, hint: RegionHint) -> Self {
        GrantMemory {
            guard,
            hint: Cell::new(hint),
        }
    }

    /// The guard this view reads through.
    pub fn guard(&self) -> &'g GrantReadGuard<'a, F, B> {
        self.guard
    }

    /// The hint as the last access left it (to keep for the next view).
    pub fn hint(&self) -> RegionHint {
        self.hint.get()
    }
}

fn need_of(access: Permissions) -> Option<Access> {
    match access {
        Permissions::Read => Some(Access::ReadOnly),
        Permissions::Write => Some(Access::WriteOnly),
        Permissions::ReadWrite => Some(Access::ReadWrite),
        Permissions::No => None,
    }
}

/// The host pieces of one access through a [`GrantMemory`], one per grant it touches.
pub struct GrantSlices<'m, 'g, 'a, F: RwFamily, B: Bitmap + Send + Sync + 'static> {
    mem: &'m GrantMemory<'g, 'a, F, B>,
    gpa: u64,
    left: usize,
    need: Access,
}

impl<'m, 'g, 'a, F: RwFamily, B: Bitmap + Send + Sync + 'static> Iterator
    for GrantSlices<'m, 'g, 'a, F, B>
{
    type Item = Result<VolatileSlice<'m, BS<'m, B>>, GuestMemoryError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let mut hint = self.mem.hint.get();
        let r = self
            .mem
            .guard
            .slice_hinted(&mut hint, self.gpa, self.left, self.need);
        self.mem.hint.set(hint);
        match r {
            Ok(s) => {
                self.left -= s.len();
                self.gpa = self.gpa.wrapping_add(s.len() as u64);
                Some(Ok(s))
            }
            Err(_) => {
                let at = GuestAddress(self.gpa);
                self.left = 0;
                Some(Err(GuestMemoryError::InvalidGuestAddress(at)))
            }
        }
    }
}

impl<F: RwFamily, B: Bitmap + Send + Sync + 'static> FusedIterator
    for GrantSlices<'_, '_, '_, F, B>
{
}

impl<'m, F: RwFamily, B: Bitmap + Send + Sync + 'static> GuestMemorySliceIterator<'m, BS<'m, B>>
    for GrantSlices<'m, '_, '_, F, B>
{
}

impl<F: RwFamily, B: Bitmap + Send + Sync + 'static> GuestMemory for GrantMemory<'_, '_, F, B> {
    type PhysicalMemory = GuestMemoryMmap<B>;
    type Bitmap = B;

    #[inline]
    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        let Some(need) = need_of(access) else {
            return false;
        };
        let mut hint = self.hint.get();
        let ok = self.guard.check_hinted(&mut hint, addr.0, count, need);
        self.hint.set(hint);
        ok
    }

    fn get_slices<'m>(
        &'m self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> Result<impl GuestMemorySliceIterator<'m, BS<'m, B>>, GuestMemoryError> {
        let need = need_of(access).ok_or(GuestMemoryError::InvalidGuestAddress(addr))?;
        if addr.0.checked_add(count as u64).is_none() {
            return Err(GuestMemoryError::GuestAddressOverflow);
        }
        Ok(GrantSlices {
            mem: self,
            gpa: addr.0,
            left: count,
            need,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{memfd, GrantTable};
    use pvnet_locks::family::StdRw;
    use std::sync::atomic::Ordering;
    use vm_memory::Bytes;

    #[test]
    fn reads_writes_and_atomics_go_through_the_grants() {
        // Two adjacent regions: an access across the boundary comes in two pieces.
        let mem = memfd::guest_memory::<()>(&[(0x1000, 0x1000), (0x2000, 0x1000)]).unwrap();
        let t = GrantTable::<StdRw>::new();
        t.replace_from_memory(&mem).unwrap();
        let g = t.read();
        let gm = GrantMemory::new(&g, RegionHint::default());
        gm.write_slice(&[7u8; 32], GuestAddress(0x1ff0)).unwrap();
        let mut out = [0u8; 32];
        mem.read_slice(&mut out, GuestAddress(0x1ff0)).unwrap();
        assert_eq!(out, [7u8; 32]);
        gm.store(0xbeefu16, GuestAddress(0x2010), Ordering::Release)
            .unwrap();
        assert_eq!(
            gm.load::<u16>(GuestAddress(0x2010), Ordering::Acquire)
                .unwrap(),
            0xbeef
        );
        let d: u64 = gm.read_obj(GuestAddress(0x1008)).unwrap();
        assert_eq!(d, 0);
        // Outside every grant, and running off the end: refused.
        assert!(gm.read_obj::<u32>(GuestAddress(0x3000)).is_err());
        assert!(gm.read_obj::<u64>(GuestAddress(0x2ffc)).is_err());
        assert!(!gm.check_range(GuestAddress(0x2f00), 0x200, Permissions::Read));
        assert!(gm.check_range(GuestAddress(0x1f00), 0x200, Permissions::ReadWrite));
        assert!(gm
            .get_slices(GuestAddress(u64::MAX - 1), 4, Permissions::Read)
            .is_err());
    }

    /// What the module documentation says of an access spanning two grants: the first
    /// piece moves, the second (read-only) grant is not written, and `check_range` refuses
    /// the whole range beforehand.
    #[test]
    fn a_write_spanning_a_read_only_grant_stops_at_it() {
        let mem = memfd::guest_memory::<()>(&[(0x1000, 0x1000)]).unwrap();
        let t = GrantTable::<StdRw>::new();
        t.replace_from_memory(&mem).unwrap();
        let ro = memfd::guest_memory::<()>(&[(0x2000, 0x1000)]).unwrap();
        let region = vm_memory::GuestMemoryBackend::iter(&ro).next().unwrap();
        let host = crate::HostMapping::from_region(region);
        t.grant(GuestAddress(0x2000), 0x1000, host, Access::ReadOnly)
            .unwrap();
        let g = t.read();
        let gm = GrantMemory::new(&g, RegionHint::default());
        assert!(!gm.check_range(GuestAddress(0x1ff0), 0x20, Permissions::Write));
        match gm.write_slice(&[7u8; 0x20], GuestAddress(0x1ff0)) {
            Err(GuestMemoryError::PartialBuffer {
                expected: 0x20,
                completed: 0x10,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(gm.write(&[8u8; 0x20], GuestAddress(0x1ff0)).unwrap(), 0x10);
        let mut out = [0u8; 0x10];
        mem.read_slice(&mut out, GuestAddress(0x1ff0)).unwrap();
        assert_eq!(out, [8u8; 0x10], "the read-write piece was written");
        ro.read_slice(&mut out, GuestAddress(0x2000)).unwrap();
        assert_eq!(out, [0u8; 0x10], "the read-only grant was not");
    }

    #[test]
    fn hinted_checks_agree_with_the_full_check() {
        // Two adjacent read-write regions, then a read-only grant after a hole.
        let mem = memfd::guest_memory::<()>(&[(0x1000, 0x1000), (0x2000, 0x1000)]).unwrap();
        let t = GrantTable::<StdRw>::new();
        t.replace_from_memory(&mem).unwrap();
        let ro = memfd::guest_memory::<()>(&[(0x8000, 0x1000)]).unwrap();
        let region = vm_memory::GuestMemoryBackend::iter(&ro).next().unwrap();
        let host = crate::HostMapping::from_region(region);
        t.grant(GuestAddress(0x8000), 0x1000, host, Access::ReadOnly)
            .unwrap();
        let g = t.read();
        let cases: [(u64, usize, Access); 11] = [
            (0x1000, 0x1000, Access::ReadWrite),
            (0x1010, 0xff0, Access::WriteOnly), // to the end of a grant
            (0x8ff0, 0x10, Access::ReadOnly),
            (0x1ff0, 0x20, Access::WriteOnly), // across the two grants
            (0x2ff0, 0x20, Access::ReadOnly),  // runs off the end
            (0x8000, 0x10, Access::ReadOnly),
            (0x8000, 0x10, Access::WriteOnly), // read-only grant
            (0x3000, 1, Access::ReadOnly),     // hole
            (0x1000, 0, Access::ReadOnly),     // empty
            (u64::MAX - 4, 8, Access::ReadOnly),
            (0x1800, usize::MAX, Access::ReadOnly),
        ];
        for start in [0, 1, 2, 7] {
            let mut hint = RegionHint { index: start };
            for &(gpa, len, need) in &cases {
                let want = g.check(GuestAddress(gpa), len, need).is_ok();
                assert_eq!(
                    g.check_hinted(&mut hint, gpa, len, need),
                    want,
                    "{gpa:#x}+{len:#x} {need:?} from hint {start}"
                );
                // A host range: where a slice of the whole range would be, if one grant
                // holds it (not across the two adjacent ones).
                let whole = g
                    .slice_hinted(&mut RegionHint::default(), gpa, len, need)
                    .ok()
                    .filter(|s| s.len() == len)
                    .map(|s| s.ptr_guard_mut().as_ptr());
                assert_eq!(
                    g.host_range_hinted(&mut hint, gpa, len, need),
                    whole,
                    "{gpa:#x}+{len:#x} {need:?} from hint {start}"
                );
            }
        }
        // Through the GuestMemory view too.
        let gm = GrantMemory::new(&g, RegionHint::default());
        assert!(gm.check_range(GuestAddress(0x1ff0), 0x20, Permissions::Write));
        assert!(!gm.check_range(GuestAddress(0x8000), 0x10, Permissions::Write));
        assert!(!gm.check_range(GuestAddress(0x1000), 0x10, Permissions::No));
    }

    #[test]
    fn hint_survives_guards_and_never_lies_after_a_change() {
        let t = GrantTable::<StdRw>::new();
        let m1 = memfd::guest_memory::<()>(&[(0, 0x1000), (0x1000, 0x1000)]).unwrap();
        t.replace_from_memory(&m1).unwrap();
        let mut hint = RegionHint::default();
        {
            let g = t.read();
            let s = g
                .slice_hinted(&mut hint, 0x1800, 0x1000, Access::ReadOnly)
                .unwrap();
            // Clipped at the end of the grant.
            assert_eq!(s.len(), 0x800);
        }
        // The table changes: the second region goes away and the first is remapped.
        t.remove_region(GuestAddress(0x1000)).unwrap();
        let g = t.read();
        assert_eq!(
            g.slice_hinted(&mut hint, 0x1800, 8, Access::ReadOnly)
                .unwrap_err(),
            crate::GrantError::NotGranted { gpa: 0x1800 }
        );
        assert!(g
            .slice_hinted(&mut hint, 0x10, 8, Access::WriteOnly)
            .is_ok());
        assert!(g
            .slice_hinted(&mut hint, 0x10, 0, Access::ReadOnly)
            .is_err());
    }

    #[test]
    fn host_addresses_for_prefetches_are_where_the_slices_are() {
        let t = GrantTable::<StdRw>::new();
        let m = memfd::guest_memory::<()>(&[(0, 0x1000), (0x3000, 0x1000)]).unwrap();
        t.replace_from_memory(&m).unwrap();
        let g = t.read();
        for start in [0, 1, 5] {
            for gpa in [0u64, 0x10, 0xfff, 0x3000, 0x3ff8] {
                let mut hint = RegionHint { index: start };
                let s = g
                    .slice_hinted(&mut RegionHint::default(), gpa, 1, Access::ReadOnly)
                    .unwrap();
                let want = s.ptr_guard().as_ptr();
                assert_eq!(g.host_addr_hinted(&mut hint, gpa), Some(want), "{gpa:#x}");
            }
            for gpa in [0x1000u64, 0x2fff, 0x4000, u64::MAX] {
                let mut hint = RegionHint { index: start };
                assert_eq!(g.host_addr_hinted(&mut hint, gpa), None, "{gpa:#x}");
            }
        }
    }
}
