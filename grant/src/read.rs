//! The read side: translations and copies under one read-lock hold.
//!
//! Every operation first validates the whole guest range against the table (present,
//! contiguous across adjacent grants, rights sufficient, no overflow) and only then touches
//! memory, so an operation that fails has no effect, and nothing outside a grant is ever
//! read or written. Memory is only accessed through vm-memory's `VolatileSlice`s (guest
//! memory is shared with a running guest). No allocation happens here.

use pvnet_locks::family::{RwFamily, RwLockApi};
use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::{GuestAddress, VolatileMemory, VolatileSlice};

use crate::entry::Entry;
use crate::table::State;
use crate::{Access, GrantError, GrantInfo};

/// Tables up to this many grants are searched linearly (see `find`).
const LINEAR_FIND_MAX: usize = 8;

/// A read-lock hold on a [`GrantTable`](crate::GrantTable): the batched form. Hold it for a
/// whole descriptor chain or a batch of chains, not across blocking waits.
pub struct GrantReadGuard<'a, F: RwFamily, B: Bitmap + Send + Sync + 'static = ()> {
    guard: ReadGuardOf<'a, F, B>,
}

/// The read guard of family `F`'s lock over the table state.
pub(crate) type ReadGuardOf<'a, F, B> =
    <<F as RwFamily>::Lock<State<B>> as RwLockApi<State<B>>>::ReadGuard<'a>;

/// The host pieces of a validated guest range, in address order: one per grant the range
/// touches. Yields an error only if vm-memory refuses a slice the table validated (a bug
/// of this crate), after which it stops.
pub struct Pieces<'g, B> {
    entries: &'g [Entry<B>],
    gpa: u64,
    left: usize,
}

impl<'g, B: Bitmap> Iterator for Pieces<'g, B> {
    type Item = Result<VolatileSlice<'g, BS<'g, B>>, GrantError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let gpa = self.gpa;
        let Some((e, rest)) = self.entries.split_first() else {
            self.left = 0;
            return Some(Err(GrantError::Internal { gpa }));
        };
        // Validation guarantees e.start <= gpa < e.end(); both differences fit usize
        // because e.len does.
        let n = ((e.end() - gpa) as usize).min(self.left);
        let off = e.host.offset + (gpa - e.start) as usize;
        match e.host.map.get_slice(off, n) {
            Ok(s) => {
                self.entries = rest;
                self.gpa = gpa.wrapping_add(n as u64);
                self.left -= n;
                Some(Ok(s))
            }
            Err(_) => {
                self.left = 0;
                Some(Err(GrantError::Internal { gpa }))
            }
        }
    }
}

impl<'a, F: RwFamily, B: Bitmap + Send + Sync + 'static> GrantReadGuard<'a, F, B> {
    pub(crate) fn new(guard: ReadGuardOf<'a, F, B>) -> Self {
        GrantReadGuard { guard }
    }

    #[inline]
    fn entries(&self) -> &[Entry<B>] {
        &self.guard.entries
    }

    /// The table's generation while this guard is held.
    pub fn generation(&self) -> u64 {
        self.guard.generation
    }

    /// The grants, in address order.
    pub fn grants(&self) -> impl ExactSizeIterator<Item = GrantInfo> + '_ {
        self.entries().iter().map(Entry::info)
    }

    /// The grant containing `gpa`, if any.
    pub fn lookup(&self, gpa: GuestAddress) -> Option<GrantInfo> {
        self.find(gpa.0).map(|i| self.entries()[i].info())
    }

    #[inline]
    fn find(&self, gpa: u64) -> Option<usize> {
        let es = self.entries();
        if es.len() <= LINEAR_FIND_MAX {
            // A guest has a handful of memory regions: independent compares, no chain of
            // dependent loads as in a binary search. (`start <= gpa < start + len`; entries
            // are disjoint, so the first match is the only one.)
            return es.iter().position(|e| gpa.wrapping_sub(e.start) < e.len);
        }
        let i = es.partition_point(|e| e.start <= gpa).checked_sub(1)?;
        (gpa < es[i].end()).then_some(i)
    }

    /// Validates `[gpa, gpa + len)` for `need`; returns the index of the first grant.
    #[inline]
    fn validate(&self, gpa: u64, len: usize, need: Access) -> Result<usize, GrantError> {
        if len == 0 {
            return Err(GrantError::ZeroLength { gpa });
        }
        let len64 =
            u64::try_from(len).map_err(|_| GrantError::LengthOverflow { gpa, len: u64::MAX })?;
        let end = gpa
            .checked_add(len64)
            .ok_or(GrantError::LengthOverflow { gpa, len: len64 })?;
        let first = self.find(gpa).ok_or(GrantError::NotGranted { gpa })?;
        let es = self.entries();
        let mut i = first;
        let mut at = gpa;
        loop {
            let e = &es[i];
            e.access.check(need, at)?;
            if end <= e.end() {
                return Ok(first);
            }
            at = e.end();
            i += 1;
            match es.get(i) {
                Some(next) if next.start == at => {}
                _ => return Err(GrantError::CrossesHole { gpa: at }),
            }
        }
    }

    /// Checks that `len` bytes from `gpa` are granted with rights for `need`.
    #[inline]
    pub fn check(&self, gpa: GuestAddress, len: usize, need: Access) -> Result<(), GrantError> {
        self.validate(gpa.0, len, need).map(|_| ())
    }

    /// Translates `len` bytes from `gpa` to host slices (one per grant the range spans),
    /// after checking the whole range for `need`. The slices live as long as the guard.
    #[inline]
    pub fn translate(
        &self,
        gpa: GuestAddress,
        len: usize,
        need: Access,
    ) -> Result<Pieces<'_, B>, GrantError> {
        let first = self.validate(gpa.0, len, need)?;
        Ok(Pieces {
            entries: &self.entries()[first..],
            gpa: gpa.0,
            left: len,
        })
    }

    /// Copies `buf.len()` guest bytes from `gpa` into `buf` (guest → local).
    #[inline]
    pub fn read_into(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), GrantError> {
        let mut done = 0;
        for piece in self.translate(gpa, buf.len(), Access::ReadOnly)? {
            let rest = buf.get_mut(done..).unwrap_or_default();
            done += piece?.copy_to(rest);
        }
        Ok(())
    }

    /// Copies `buf` into guest memory at `gpa` (local → guest).
    #[inline]
    pub fn write_from(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), GrantError> {
        let mut done = 0;
        for piece in self.translate(gpa, buf.len(), Access::WriteOnly)? {
            let piece = piece?;
            let rest = buf.get(done..).unwrap_or_default();
            piece.copy_from(rest);
            done += piece.len();
        }
        Ok(())
    }

    /// Grant copy from this guard's guest to `dst`'s (see [`grant_copy`]).
    #[inline]
    pub fn copy_to<F2: RwFamily, B2: Bitmap + Send + Sync + 'static>(
        &self,
        src_gpa: GuestAddress,
        dst: &GrantReadGuard<'_, F2, B2>,
        dst_gpa: GuestAddress,
        len: usize,
    ) -> Result<(), GrantError> {
        grant_copy(self, src_gpa, dst, dst_gpa, len)
    }
}

/// Grant copy: `len` bytes from `src_gpa` in `src`'s guest (which must grant read) to
/// `dst_gpa` in `dst`'s guest (which must grant write). Both ranges are validated before any
/// byte moves. `src` and `dst` may be the same guard; overlapping ranges within one grant
/// are copied as by `memmove`, ranges spanning several grants piece by piece in address
/// order (safe either way: only the destination range is written).
#[inline]
pub fn grant_copy<F1, B1, F2, B2>(
    src: &GrantReadGuard<'_, F1, B1>,
    src_gpa: GuestAddress,
    dst: &GrantReadGuard<'_, F2, B2>,
    dst_gpa: GuestAddress,
    len: usize,
) -> Result<(), GrantError>
where
    F1: RwFamily,
    B1: Bitmap + Send + Sync + 'static,
    F2: RwFamily,
    B2: Bitmap + Send + Sync + 'static,
{
    let mut sp = src.translate(src_gpa, len, Access::ReadOnly)?;
    let mut dp = dst.translate(dst_gpa, len, Access::WriteOnly)?;
    let internal = GrantError::Internal { gpa: src_gpa.0 };
    let (Some(s), Some(d)) = (sp.next(), dp.next()) else {
        return Err(internal);
    };
    let (mut s, mut d) = (s?, d?);
    loop {
        let n = s.len().min(d.len());
        // Copies min(s.len(), d.len()) = n bytes (memmove semantics, marks dst dirty).
        s.copy_to_volatile_slice(d.clone());
        s = match s.len() == n {
            true => match sp.next() {
                Some(next) => next?,
                None => return Ok(()),
            },
            false => s.offset(n).map_err(|_| internal)?,
        };
        d = match d.len() == n {
            true => match dp.next() {
                Some(next) => next?,
                None => return Err(internal),
            },
            false => d.offset(n).map_err(|_| internal)?,
        };
    }
}

/// A remembered translation: which grant served a reader's last access. A reader keeps one
/// per stream of nearby accesses (a ring, a frame's buffers) across accesses and across
/// guards; [`GrantReadGuard::slice_hinted`] tries the grant it names first and falls back to
/// the search when that grant no longer covers the access. The hint is only an index guess,
/// checked against the entry it names in the table as it is under the current guard, so a
/// stale hint (the table changed since: a new generation) costs a search, never a wrong
/// translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionHint {
    pub(crate) index: usize,
}

impl<'a, F: RwFamily, B: Bitmap + Send + Sync + 'static> GrantReadGuard<'a, F, B> {
    /// Whether `[gpa, gpa + len)` is granted for `need` (possibly across adjacent grants),
    /// trying `hint` first: [`GrantReadGuard::check`] without the search when the hinted
    /// grant holds the whole range, which is the rule for guest buffers. Builds no slice.
    #[inline(always)]
    pub fn check_hinted(&self, hint: &mut RegionHint, gpa: u64, len: usize, need: Access) -> bool {
        let es = self.entries();
        if let Some(e) = es.get(hint.index) {
            // gpa - start < e.len and len <= e.len - (gpa - start): inside, no overflow.
            let off = gpa.wrapping_sub(e.start);
            if off < e.len && len as u64 <= e.len - off && len > 0 {
                return e.access.allows(need);
            }
        }
        match self.validate(gpa, len, need) {
            Ok(i) => {
                hint.index = i;
                true
            }
            Err(_) => false,
        }
    }

    /// Where guest address `gpa` lies in this process, when a grant covers it (`hint` tried
    /// first and updated): for prefetch hints only. No rights are checked and no slice is
    /// built (a translation for a prefetch cost as much as one for the copy); reads and writes
    /// go through [`GrantReadGuard::slice_hinted`].
    #[inline(always)]
    pub fn host_addr_hinted(&self, hint: &mut RegionHint, gpa: u64) -> Option<*const u8> {
        let es = self.entries();
        let i = match es.get(hint.index) {
            Some(e) if gpa.wrapping_sub(e.start) < e.len => hint.index,
            _ => {
                let i = self.find(gpa)?;
                hint.index = i;
                i
            }
        };
        let e = es.get(i)?;
        // e.start <= gpa < e.end(): the offset lies inside the grant's mapping.
        let off = e.host.offset + (gpa - e.start) as usize;
        Some(e.host.map.as_ptr().wrapping_add(off).cast_const())
    }

    /// Where `[gpa, gpa + len)` lies in this process, when it lies whole inside one grant
    /// that allows `need` (`len > 0`; `hint` tried first and updated): what
    /// [`GrantReadGuard::slice_hinted`] checks, without building the slice, for a caller
    /// that keeps the address for later accesses under this guard (a buffer translated once
    /// for its prefetch and its copy). The range is inside the grant's mapping, which lives
    /// while the table stays at this guard's [`generation`](GrantReadGuard::generation).
    /// (The hinted search is written out here as in [`GrantReadGuard::host_addr_hinted`]:
    /// a shared helper returning the entry cost 6 instructions per forwarded frame.)
    #[inline(always)]
    pub fn host_range_hinted(
        &self,
        hint: &mut RegionHint,
        gpa: u64,
        len: usize,
        need: Access,
    ) -> Option<*mut u8> {
        let es = self.entries();
        let i = match es.get(hint.index) {
            Some(e) if gpa.wrapping_sub(e.start) < e.len => hint.index,
            _ => {
                let i = self.find(gpa)?;
                hint.index = i;
                i
            }
        };
        let e = es.get(i)?;
        // e.start <= gpa < e.end(); len <= e.len - (gpa - e.start): inside the grant, and
        // host.offset + e.len <= the mapping's size (Entry's invariant).
        let off = gpa - e.start;
        if len == 0 || len as u64 > e.len - off || !e.access.allows(need) {
            return None;
        }
        Some(
            e.host
                .map
                .as_ptr()
                .wrapping_add(e.host.offset + off as usize),
        )
    }

    /// The host slice of the longest prefix of `[gpa, gpa + len)` that lies inside one grant
    /// (between 1 and `len` bytes), checked for `need`. The caller advances by the slice's
    /// length and asks again for the rest (a range spanning adjacent grants comes in pieces).
    /// `hint` is tried first and updated.
    #[inline(always)]
    pub fn slice_hinted(
        &self,
        hint: &mut RegionHint,
        gpa: u64,
        len: usize,
        need: Access,
    ) -> Result<VolatileSlice<'_, BS<'_, B>>, GrantError> {
        if len == 0 {
            return Err(GrantError::ZeroLength { gpa });
        }
        let es = self.entries();
        let i = match es.get(hint.index) {
            Some(e) if e.start <= gpa && gpa < e.end() => hint.index,
            _ => {
                let i = self.find(gpa).ok_or(GrantError::NotGranted { gpa })?;
                hint.index = i;
                i
            }
        };
        let e = &es[i];
        e.access.check(need, gpa)?;
        // e.start <= gpa < e.end(): the differences fit usize because e.len does.
        let n = ((e.end() - gpa) as usize).min(len);
        let off = e.host.offset + (gpa - e.start) as usize;
        e.host
            .map
            .get_slice(off, n)
            .map_err(|_| GrantError::Internal { gpa })
    }
}
