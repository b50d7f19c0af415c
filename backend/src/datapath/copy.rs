//! Frame copies over segment lists (DPDK's `copy_mbuf_to_desc`): a [`SegCursor`] is a
//! position in a list of guest buffers that only moves forward, so a copy walks its source and
//! its destination list once each, whatever the number of segments — no rescans from the
//! start (a frame of n one-byte descriptors costs O(n), not O(n²)).
//!
//! Every piece is translated through the grant table's read guard with a [`RegionHint`]
//! (one range check per piece when consecutive buffers lie in the same grant, which is the
//! rule), checked for the access it makes, and copied through vm-memory's `VolatileSlice`s.

use crate::datapath::Seg;
use pvnet_grant::{Access, GrantError, GrantReadGuard, RegionHint};
use pvnet_locks::family::RwFamily;
use vm_memory::VolatileSlice;

/// Why a copy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyError {
    /// A piece is outside the grants, or lacks the right.
    Grant(GrantError),
    /// A segment list ended before the bytes to copy did.
    Short,
}

impl From<GrantError> for CopyError {
    fn from(e: GrantError) -> Self {
        CopyError::Grant(e)
    }
}

/// A forward-only position in a segment list.
#[derive(Clone, Debug)]
pub struct SegCursor<'s> {
    segs: &'s [Seg],
    i: usize,
    off: usize,
    /// Segment steps taken (tests check that copies are linear).
    #[cfg(test)]
    pub(crate) steps: usize,
}

impl<'s> SegCursor<'s> {
    /// At the first byte of `segs`.
    pub fn new(segs: &'s [Seg]) -> Self {
        SegCursor {
            segs,
            i: 0,
            off: 0,
            #[cfg(test)]
            steps: 0,
        }
    }

    /// The contiguous piece at the cursor, at most `max` bytes: (guest address, length).
    #[inline]
    fn peek(&self, max: usize) -> Option<(u64, usize)> {
        let s = self.segs.get(self.i)?;
        let n = (s.len as usize - self.off).min(max);
        Some((s.gpa.wrapping_add(self.off as u64), n))
    }

    #[inline]
    fn advance(&mut self, n: usize) {
        self.off += n;
        if let Some(s) = self.segs.get(self.i) {
            if self.off >= s.len as usize {
                self.i += 1;
                self.off = 0;
                #[cfg(test)]
                {
                    self.steps += 1;
                }
            }
        }
    }

    /// Moves `n` bytes forward; false when the list is shorter.
    pub fn skip(&mut self, mut n: usize) -> bool {
        while n > 0 {
            let Some((_, k)) = self.peek(n) else {
                return false;
            };
            self.advance(k);
            n -= k;
        }
        true
    }
}

/// Translates the piece of at most `max` bytes at `cur` (which must not be at its end).
#[inline(always)]
fn piece<'g, F: RwFamily>(
    g: &'g GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    cur: &SegCursor<'_>,
    max: usize,
    need: Access,
) -> Result<VolatileSlice<'g>, CopyError> {
    let (gpa, n) = cur.peek(max).ok_or(CopyError::Short)?;
    if n == 0 {
        return Err(CopyError::Short);
    }
    Ok(g.slice_hinted(hint, gpa, n, need)?)
}

/// Reads `out.len()` bytes at `src` (guest → local) and advances it.
pub fn read_into<F: RwFamily>(
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    src: &mut SegCursor<'_>,
    out: &mut [u8],
) -> Result<(), CopyError> {
    let mut done = 0;
    while done < out.len() {
        let s = piece(g, hint, src, out.len() - done, Access::ReadOnly)?;
        let n = s.copy_to(&mut out[done..]);
        src.advance(n);
        done += n;
    }
    Ok(())
}

/// Writes `data` at `dst` (local → guest) and advances it.
pub fn write_from<F: RwFamily>(
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    dst: &mut SegCursor<'_>,
    data: &[u8],
) -> Result<(), CopyError> {
    let mut done = 0;
    while done < data.len() {
        let d = piece(g, hint, dst, data.len() - done, Access::WriteOnly)?;
        let n = d.len();
        d.copy_from(&data[done..done + n]);
        dst.advance(n);
        done += n;
    }
    Ok(())
}

/// One side of a guest-to-guest copy: a guard, its hint and a cursor.
pub struct Side<'c, 'g, 'a, 's, F: RwFamily> {
    pub guard: &'g GrantReadGuard<'a, F>,
    pub hint: &'c mut RegionHint,
    pub cur: &'c mut SegCursor<'s>,
}

/// Copies `len` bytes from `src` to `dst` (guest → guest grant copy), advancing both; each
/// step copies the largest piece contiguous on both sides.
pub fn copy<F: RwFamily>(
    src: Side<'_, '_, '_, '_, F>,
    dst: Side<'_, '_, '_, '_, F>,
    mut len: usize,
) -> Result<(), CopyError> {
    while len > 0 {
        let s = piece(src.guard, src.hint, src.cur, len, Access::ReadOnly)?;
        let d = piece(dst.guard, dst.hint, dst.cur, s.len(), Access::WriteOnly)?;
        let n = d.len();
        // Copies min(s.len(), d.len()) = n bytes.
        s.copy_to_volatile_slice(d);
        src.cur.advance(n);
        dst.cur.advance(n);
        len -= n;
    }
    Ok(())
}

/// Hints the CPU to fetch the first line of the piece at `cur` (a read or a write soon):
/// the frontend's core wrote it last, so a burst issues all its misses at once instead of
/// paying them one frame at a time.
#[inline]
pub fn prefetch<F: RwFamily>(
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    cur: &SegCursor<'_>,
) {
    if let Ok(s) = piece(g, hint, cur, 64, Access::ReadOnly) {
        prefetch_ptr(s.ptr_guard().as_ptr());
    }
}

#[inline(always)]
fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and has no architectural effect, whatever
    // the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvnet_grant::GrantTable;
    use pvnet_locks::family::Percpu;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn setup() -> (GuestMemoryMmap, GrantTable<Percpu>) {
        // Two adjacent regions: pieces cross the boundary at 0x10000.
        let mem = pvnet_grant::memfd::guest_memory::<()>(&[(0, 0x10000), (0x10000, 0x10000)])
            .expect("memory");
        let t = GrantTable::<Percpu>::new();
        t.replace_from_memory(&mem).expect("grant");
        (mem, t)
    }

    #[test]
    fn copy_spans_segments_regions_and_offsets() {
        let (mem, t) = setup();
        let data: Vec<u8> = (0..200u8).collect();
        // Source: a 12-byte "header", then the data split in three, one piece across the
        // region boundary.
        mem.write_slice(&[0xee; 12], GuestAddress(0x100)).unwrap();
        mem.write_slice(&data[..30], GuestAddress(0x10c)).unwrap();
        mem.write_slice(&data[30..31], GuestAddress(0x400)).unwrap();
        mem.write_slice(&data[31..], GuestAddress(0xfff0)).unwrap();
        let src = [
            Seg {
                gpa: 0x100,
                len: 42,
            },
            Seg { gpa: 0x400, len: 1 },
            Seg {
                gpa: 0xfff0,
                len: 169,
            },
        ];
        let dst = [
            Seg {
                gpa: 0x2000,
                len: 7,
            },
            Seg {
                gpa: 0x3000,
                len: 13,
            },
            Seg {
                gpa: 0x5000,
                len: 300,
            },
        ];
        let g = t.read();
        let (mut sh, mut dh) = (RegionHint::default(), RegionHint::default());
        let (mut sc, mut dc) = (SegCursor::new(&src), SegCursor::new(&dst));
        assert!(sc.skip(12));
        assert!(dc.skip(5));
        let side = |guard, hint, cur| Side { guard, hint, cur };
        copy(side(&g, &mut sh, &mut sc), side(&g, &mut dh, &mut dc), 200).expect("copy");
        let mut out = vec![0u8; 200];
        let mut rc = SegCursor::new(&dst);
        rc.skip(5);
        read_into(&g, &mut dh, &mut rc, &mut out).expect("read");
        assert_eq!(out, data);
        // Local writes and reads through cursors.
        let mut wc = SegCursor::new(&dst);
        write_from(&g, &mut dh, &mut wc, &data[..20]).expect("write");
        let mut local = [0u8; 20];
        read_into(&g, &mut dh, &mut SegCursor::new(&dst), &mut local).expect("read");
        assert_eq!(&local[..], &data[..20]);
        // Running off the end of a list, and outside every grant.
        let mut c = SegCursor::new(&src[..1]);
        assert_eq!(
            read_into(&g, &mut sh, &mut c, &mut [0u8; 43]),
            Err(CopyError::Short)
        );
        let far = [Seg {
            gpa: 0x7_0000_0000,
            len: 10,
        }];
        assert!(matches!(
            write_from(&g, &mut dh, &mut SegCursor::new(&far), &data[..10]),
            Err(CopyError::Grant(_))
        ));
    }

    #[test]
    fn copy_of_many_tiny_segments_is_linear() {
        let (_mem, t) = setup();
        let n = 4096;
        let src: Vec<Seg> = (0..n)
            .map(|i| Seg {
                gpa: 0x1000 + 2 * i as u64,
                len: 1,
            })
            .collect();
        let dst: Vec<Seg> = (0..n)
            .map(|i| Seg {
                gpa: 0x8000 + 3 * i as u64,
                len: 1,
            })
            .collect();
        let g = t.read();
        let (mut sh, mut dh) = (RegionHint::default(), RegionHint::default());
        let (mut sc, mut dc) = (SegCursor::new(&src), SegCursor::new(&dst));
        let side = |guard, hint, cur| Side { guard, hint, cur };
        copy(side(&g, &mut sh, &mut sc), side(&g, &mut dh, &mut dc), n).expect("copy");
        // Each cursor stepped over each of its segments exactly once.
        assert_eq!((sc.steps, dc.steps), (n, n));
    }
}
