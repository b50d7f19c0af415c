//! Frame copies over segment lists (DPDK's `copy_mbuf_to_desc`): a [`SegCursor`] is a
//! position in a list of guest buffers that only moves forward, so a copy walks its source and
//! its destination list once each, whatever the number of segments — no rescans from the
//! start (a frame of n one-byte descriptors costs O(n), not O(n²)).
//!
//! Every piece is translated through the grant table's read guard with a [`RegionHint`]
//! (one range check per piece when consecutive buffers lie in the same grant, which is the
//! rule), checked for the access it makes, and copied through vm-memory's `VolatileSlice`s.

use crate::datapath::Seg;
use crate::net::hdr::{HdrWords, HDR_LEN, HDR_LEN_LEGACY};
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
#[inline(always)]
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

/// Copies `len` bytes at `src` (guest, translated piece by piece) into `dst`, a piece of
/// guest memory already translated and checked writable (at least `len` bytes), and advances
/// `src`: the destination side of [`copy`] without its translations.
#[inline(always)]
pub fn read_to_slice<F: RwFamily>(
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    src: &mut SegCursor<'_>,
    dst: VolatileSlice<'_>,
    len: usize,
) -> Result<(), CopyError> {
    let mut done = 0;
    while done < len {
        let s = piece(g, hint, src, len - done, Access::ReadOnly)?;
        let d = dst.subslice(done, s.len()).map_err(|_| CopyError::Short)?;
        s.copy_to_volatile_slice(d);
        src.advance(s.len());
        done += s.len();
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

/// Writes the first `n` bytes (10 or 12) of the virtio-net header `hdr` at `dst`, then
/// `data` (empty for none), and advances `dst`. When both fit the piece at `dst` (the rule),
/// the header goes in with two whole-word stores and `data` with one copy, through one
/// translation; otherwise piece by piece ([`write_from`]).
///
/// The header is never assembled in local memory and copied out at once: that copy's loads
/// would wait for the assembling stores to commit (a store-forwarding failure), and stores
/// commit in order, behind the stores into the guest's buffers of the frame before, which
/// miss when the guest's core touched those lines last: every frame would wait for the one
/// before it.
#[inline(always)]
pub fn write_hdr_and<F: RwFamily>(
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    dst: &mut SegCursor<'_>,
    hdr: HdrWords,
    n: usize,
    data: &[u8],
) -> Result<(), CopyError> {
    let total = n + data.len();
    let d = piece(g, hint, dst, total, Access::WriteOnly)?;
    if d.len() != total || !(n == HDR_LEN || n == HDR_LEN_LEGACY) {
        write_from(g, hint, dst, &hdr.to_bytes()[..n.min(HDR_LEN)])?;
        return write_from(g, hint, dst, data);
    }
    write_hdr_into(d, hdr, n, data)?;
    dst.advance(total);
    Ok(())
}

/// [`write_hdr_and`] into `d`, a granted, writable piece of guest memory already translated
/// (at least `n + data.len()` bytes; `n` 10 or 12, else [`CopyError::Short`]).
#[inline(always)]
pub fn write_hdr_into(
    d: VolatileSlice<'_>,
    hdr: HdrWords,
    n: usize,
    data: &[u8],
) -> Result<(), CopyError> {
    if d.len() < n + data.len() || !(n == HDR_LEN || n == HDR_LEN_LEGACY) {
        return Err(CopyError::Short);
    }
    let HdrWords { lo, hi } = hdr;
    let p = d.ptr_guard_mut().as_ptr();
    // SAFETY: `d` is a granted, writable mapping of at least `n` bytes at `p`, `n` is 10 or
    // 12 (checked above): the 10 or 12 bytes at `p` are in bounds.
    if !unsafe { holds_hdr(p, lo, hi, n) } {
        // SAFETY: as above: the 8 bytes at `p` and the 2 or 4 at `p + 8` are in bounds.
        // Unaligned stores of plain integers, as vm-memory's own copies into guest memory
        // make.
        unsafe {
            p.cast::<u64>().write_unaligned(lo.to_le());
            match n {
                HDR_LEN => p.add(8).cast::<u32>().write_unaligned(hi.to_le()),
                _ => p.add(8).cast::<u16>().write_unaligned((hi as u16).to_le()),
            }
        }
    }
    // SAFETY: `d` holds n + data.len() bytes at `p` (checked above), guest memory, which
    // `data` (local) does not overlap.
    unsafe { copy_small(p.add(n), data.as_ptr(), data.len()) };
    Ok(())
}

/// Largest copy [`copy_small`] makes in inline 16-byte moves.
pub const SMALL_COPY_MAX: usize = 256;

/// Copies `n` bytes from `src` to `dst`: for 16 to [`SMALL_COPY_MAX`] bytes in 16-byte
/// moves the compiler inlines, the last one overlapping the one before (what a memcpy does
/// for small sizes, without its call); else through `copy_nonoverlapping` (memcpy). The
/// accesses are those vm-memory's own copies of more than 8 bytes make (`copy_slice`: a
/// plain `copy_nonoverlapping`), whose call, with libc's memcpy behind it, cost ~40
/// instructions per 64-byte frame.
///
/// # Safety
/// `src` must be valid for `n` bytes of reads and `dst` for `n` bytes of writes, and the two
/// ranges must not overlap.
#[inline(always)]
pub unsafe fn copy_small(dst: *mut u8, src: *const u8, n: usize) {
    if !(16..=SMALL_COPY_MAX).contains(&n) {
        // SAFETY: the caller's.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
        return;
    }
    if n < 32 {
        // SAFETY: 16 <= n < 32: the first and the last 16 bytes of both ranges.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, 16);
            std::ptr::copy_nonoverlapping(src.add(n - 16), dst.add(n - 16), 16);
        }
        return;
    }
    let mut i = 0;
    while i + 32 < n {
        // SAFETY: i + 32 < n: inside both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), 32) };
        i += 32;
    }
    // SAFETY: n >= 32: the last 32 bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(n - 32), dst.add(n - 32), 32) };
}

/// Whether the `n`-byte (10 or 12) virtio-net header at `p` already holds the words `lo`,
/// `hi` of [`VirtioNetHdr::to_words`]. A header not 4-byte aligned counts as different.
///
/// A receive buffer comes back with the header the device wrote last time (a driver
/// clears the fields it changed, DPDK's `virtqueue_clear_net_hdr` only those not already
/// zero), so it mostly holds the bytes about to be written. Not storing them leaves the
/// line shared with the driver's core instead of taking it over (a read-for-ownership
/// that waits for the other core, then that core's next read misses): DPDK's vhost library
/// writes the header field by field the same way (`ASSIGN_UNLESS_EQUAL`).
///
/// # Safety
/// The `n` bytes at `p` must be mapped and readable.
#[inline(always)]
unsafe fn holds_hdr(p: *const u8, lo: u64, hi: u32, n: usize) -> bool {
    if p as usize % 4 != 0 {
        return false;
    }
    let b = lo.to_le_bytes();
    let w0 = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let w1 = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    let h = hi.to_le_bytes();
    let w = p.cast::<u32>();
    // SAFETY: `p` is 4-byte aligned and the caller guarantees `n` >= 10 readable bytes: the
    // words at 0, 4 and the 2 (n = 10) or 4 (n = 12) bytes at 8 are in bounds and aligned.
    // Volatile: the guest's memory, which it may write at any time (any bit pattern is a
    // valid integer; a torn or changing value only makes the header be written).
    unsafe {
        w.read_volatile() == w0
            && w.add(1).read_volatile() == w1
            && match n {
                HDR_LEN => w.add(2).read_volatile() == u32::from_ne_bytes(h),
                _ => p.add(8).cast::<u16>().read_volatile() == u16::from_ne_bytes([h[0], h[1]]),
            }
    }
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
    if let Some((gpa, _)) = cur.peek(1) {
        prefetch_gpa(g, hint, gpa);
    }
}

/// Hints the CPU to fetch the line of guest address `gpa`, if a grant covers it.
#[inline(always)]
pub fn prefetch_gpa<F: RwFamily>(g: &GrantReadGuard<'_, F>, hint: &mut RegionHint, gpa: u64) {
    if let Some(p) = g.host_addr_hinted(hint, gpa) {
        prefetch_ptr(p);
    }
}

/// Hints the CPU to fetch the line at host address `p` (any address: a hint never faults).
#[inline(always)]
pub fn prefetch_ptr(p: *const u8) {
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
    use crate::net::VirtioNetHdr;
    use pvnet_grant::GrantTable;
    use pvnet_locks::family::Percpu;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Every length from 0 to past [`SMALL_COPY_MAX`], at every alignment mod 16 of either
    /// side: exactly the `n` bytes copied, nothing around them touched.
    #[test]
    fn small_copies_copy_exactly_their_bytes() {
        let src: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..=SMALL_COPY_MAX + 40 {
            for (so, d0) in [(0, 0), (1, 0), (0, 7), (5, 13), (15, 1)] {
                let mut dst = vec![0xeeu8; n + 64];
                // SAFETY: src[so..so + n] and dst[d0..d0 + n] are in bounds (n + 16 <= 400 or
                // n + 64 bytes) and distinct vectors.
                unsafe { copy_small(dst.as_mut_ptr().add(d0), src.as_ptr().add(so), n) };
                assert_eq!(&dst[d0..d0 + n], &src[so..so + n], "n {n} at {so}/{d0}");
                assert!(dst[..d0].iter().all(|&b| b == 0xee), "n {n}: before");
                assert!(dst[d0 + n..].iter().all(|&b| b == 0xee), "n {n}: after");
            }
        }
    }

    #[test]
    fn skip_lands_where_a_byte_walk_does() {
        // Segment lists hold no empty segments (`read_chain` leaves them out).
        let segs =
            [(0x100, 5), (0x300, 3), (0x400, 7), (0x500, 1)].map(|(gpa, len)| Seg { gpa, len });
        // The guest address of every byte, in order.
        let bytes: Vec<u64> = segs
            .iter()
            .flat_map(|s| (0..u64::from(s.len)).map(move |k| s.gpa + k))
            .collect();
        for first in 0..=bytes.len() {
            for second in 0..=bytes.len() + 1 {
                let mut c = SegCursor::new(&segs);
                assert!(c.skip(first));
                let fits = first + second <= bytes.len();
                assert_eq!(c.skip(second), fits, "{first} then {second}");
                if fits {
                    let at = first + second;
                    assert_eq!(
                        c.peek(1).map(|(gpa, _)| gpa),
                        bytes.get(at).copied(),
                        "{at}"
                    );
                }
            }
        }
    }

    /// A header with every field non-zero and distinct, `num_buffers` as given.
    fn every_field_set(num_buffers: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: 1,
            gso_type: 0x81,
            hdr_len: 0x1234,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers,
        }
    }

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
    fn header_and_data_written_whole_or_piece_by_piece_alike() {
        let (_mem, t) = setup();
        let g = t.read();
        let h = every_field_set(3);
        let data: Vec<u8> = (1..=64).collect();
        // One buffer (two stores and one copy), an unaligned one, buffers splitting the
        // header, a 10-byte legacy header, and a header alone.
        let layouts: [(&[Seg], usize, usize); 5] = [
            (
                &[Seg {
                    gpa: 0x2000,
                    len: 2048,
                }],
                12,
                64,
            ),
            (
                &[Seg {
                    gpa: 0x2003,
                    len: 77,
                }],
                12,
                64,
            ),
            (
                &[
                    Seg {
                        gpa: 0x2000,
                        len: 5,
                    },
                    Seg {
                        gpa: 0x3000,
                        len: 100,
                    },
                ],
                12,
                64,
            ),
            (
                &[Seg {
                    gpa: 0x2001,
                    len: 2048,
                }],
                10,
                64,
            ),
            (
                &[Seg {
                    gpa: 0x2000,
                    len: 12,
                }],
                12,
                0,
            ),
        ];
        for (segs, n, len) in layouts {
            let mut hint = RegionHint::default();
            let mut c = SegCursor::new(segs);
            write_hdr_and(&g, &mut hint, &mut c, h.into(), n, &data[..len]).expect("write");
            let mut out = vec![0u8; n + len];
            read_into(&g, &mut hint, &mut SegCursor::new(segs), &mut out).expect("read");
            let want = [&h.to_bytes()[..n], &data[..len]].concat();
            assert_eq!(out, want, "{segs:?} {n}");
            // The cursor is past header and data.
            let mut after = SegCursor::new(segs);
            assert!(after.skip(n + len));
            assert_eq!(c.peek(1), after.peek(1));
        }
        // Too little room: an error, never a write outside the buffers.
        let short = [Seg {
            gpa: 0x2000,
            len: 20,
        }];
        let r = write_hdr_and(
            &g,
            &mut RegionHint::default(),
            &mut SegCursor::new(&short),
            h.into(),
            12,
            &data,
        );
        assert_eq!(r, Err(CopyError::Short));
    }

    #[test]
    fn a_header_already_in_place_is_recognised_byte_for_byte() {
        let h = every_field_set(1);
        let (lo, hi) = h.to_words();
        // 4-byte aligned room for a header at offset 0 and an unaligned one at offset 1.
        let mut room = [0u32; 5];
        let p = room.as_mut_ptr().cast::<u8>();
        let put = |at: usize, bytes: &[u8]| {
            // SAFETY: `at + bytes.len()` <= 13 < 20 bytes of `room`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(at), bytes.len()) }
        };
        let holds = |at: usize, n: usize| {
            // SAFETY: `at` <= 1: the 12 bytes at `p + at` lie inside the 20 of `room`.
            unsafe { holds_hdr(p.wrapping_add(at), lo, hi, n) }
        };
        assert!(!holds(0, HDR_LEN), "zeroes");
        put(0, &h.to_bytes());
        assert!(holds(0, HDR_LEN));
        assert!(holds(0, HDR_LEN_LEGACY));
        for i in 0..HDR_LEN {
            let mut b = h.to_bytes();
            b[i] ^= 0x40;
            put(0, &b);
            assert!(!holds(0, HDR_LEN), "byte {i} differs");
            // The legacy header ends at byte 10: num_buffers is not part of it.
            assert_eq!(holds(0, HDR_LEN_LEGACY), i >= HDR_LEN_LEGACY, "byte {i}");
        }
        // Unaligned: never taken as equal (the header is written).
        put(1, &h.to_bytes());
        assert!(!holds(1, HDR_LEN));
    }

    #[test]
    fn a_header_differing_in_any_field_is_rewritten() {
        let (_mem, t) = setup();
        let g = t.read();
        let seg = [Seg {
            gpa: 0x2000,
            len: 2048,
        }];
        let first = VirtioNetHdr {
            num_buffers: 1,
            ..VirtioNetHdr::plain()
        };
        let data = [7u8; 60];
        for h in [
            first,
            first,
            VirtioNetHdr {
                num_buffers: 2,
                ..first
            },
            VirtioNetHdr {
                flags: 1,
                csum_start: 34,
                csum_offset: 16,
                ..first
            },
            VirtioNetHdr::plain(),
        ] {
            let mut c = SegCursor::new(&seg);
            write_hdr_and(
                &g,
                &mut RegionHint::default(),
                &mut c,
                h.into(),
                HDR_LEN,
                &data,
            )
            .expect("write");
            let mut out = [0u8; HDR_LEN + 60];
            read_into(
                &g,
                &mut RegionHint::default(),
                &mut SegCursor::new(&seg),
                &mut out,
            )
            .expect("read");
            assert_eq!(out[..HDR_LEN], h.to_bytes(), "{h:?}");
            assert_eq!(out[HDR_LEN..], data);
        }
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
