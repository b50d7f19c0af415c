//! Descriptor chains to segment lists (DPDK's `fill_vec_buf`): one walk over a chain —
//! direct, or through an indirect table — checking what a guest controls: direction of every
//! descriptor, number of descriptors, total length, a chain cut short by an invalid `next` or
//! a loop; the non-empty buffers are appended to a segment list.
//!
//! The walk reads descriptors from a [`DescTable`]: the ring's descriptor table, translated
//! once per burst through the grant table (a ring is one contiguous grant, as DPDK's vhost
//! library also requires), and indirect tables translated on demand by the caller. virtio-
//! queue's own `DescriptorChain` reads every descriptor through vm-memory's generic `Bytes`
//! path (a region lookup, an iterator of slices, error plumbing per 16-byte read), which was
//! the largest single cost of the data path; the rules below are virtio-queue's (and the
//! virtio specification's): a chain ends at a descriptor without `NEXT`; an invalid `next`,
//! an unreadable descriptor or more descriptors than the table holds cuts it; `INDIRECT`
//! switches to the indirect table (length a multiple of 16, at most 65,535 entries), once.
//!
//! The walk stops after [`MAX_CHAIN_DESCS`] descriptors (Linux vhost-net's limit), so a chain
//! costs at most that many descriptor reads whatever its table claims; longer chains are
//! refused with [`ChainError::TooLong`]. Nothing here touches a buffer: the segments are guest
//! addresses, checked against the grant table by the code that copies.
//!
//! [`read_chain`] is pure apart from the descriptor reads, which makes it the entry point for
//! fuzzing chain validation (a [`DescTable`] over any byte buffer).

use crate::datapath::Seg;
use crate::stats::DropReason;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, VolatileSlice};

/// Most descriptors one chain may have (Linux vhost-net's `UIO_MAXIOV`).
pub const MAX_CHAIN_DESCS: usize = 1024;

/// Bytes per descriptor.
const DESC: usize = 16;

/// Which way the buffers of a chain go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// A TX chain: every descriptor must be device-readable.
    Readable,
    /// An RX chain: every descriptor must be device-writable.
    Writable,
}

/// Why a chain is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No descriptor could be read (bad head, unreadable or malformed indirect table).
    #[error("empty or unreadable chain")]
    Empty,
    /// The chain ends on a descriptor that still has `NEXT` (invalid `next`, a loop, or more
    /// descriptors than the table holds).
    #[error("chain cut short (loop or invalid next)")]
    Cut,
    /// A descriptor goes the wrong way (writable in a TX chain, readable in an RX chain).
    #[error("descriptor of the wrong direction")]
    Direction,
    /// More than [`MAX_CHAIN_DESCS`] descriptors.
    #[error("more than {MAX_CHAIN_DESCS} descriptors")]
    TooLong,
    /// More bytes than the caller accepts.
    #[error("chain longer than the largest frame")]
    TooLarge,
}

impl ChainError {
    /// The drop reason counted for a refused TX chain.
    pub fn tx_drop(self) -> DropReason {
        match self {
            ChainError::Empty => DropReason::BadChain,
            ChainError::Cut => DropReason::ChainLoop,
            ChainError::Direction => DropReason::WritableInTx,
            ChainError::TooLong => DropReason::ChainTooLong,
            ChainError::TooLarge => DropReason::TooLarge,
        }
    }
}

/// What a chain holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainInfo {
    /// Total bytes of its buffers.
    pub bytes: usize,
    /// Number of non-empty buffers appended to the segment list.
    pub segs: usize,
}

/// A descriptor table in host memory: `size` entries of 16 bytes.
#[derive(Clone, Copy, Debug)]
pub struct DescTable<'s> {
    slice: VolatileSlice<'s>,
    size: u16,
    /// The table's first byte when it is 8-byte aligned (descriptors are then read with two
    /// plain 8-byte loads), else null (read through `slice`).
    aligned: *const u8,
}

impl<'s> DescTable<'s> {
    /// `size` descriptors at the start of `slice`, if it is that long.
    pub fn new(slice: VolatileSlice<'s>, size: u16) -> Option<Self> {
        let p = slice.ptr_guard().as_ptr();
        let aligned = if p as usize % 8 == 0 {
            p
        } else {
            std::ptr::null()
        };
        (slice.len() >= DESC * usize::from(size)).then_some(DescTable {
            slice,
            size,
            aligned,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptor `i`, if `i` is inside the table.
    #[inline]
    pub fn get(&self, i: u16) -> Option<Descriptor> {
        if i >= self.size {
            return None;
        }
        let off = DESC * usize::from(i);
        if self.aligned.is_null() {
            // An indirect table need not be aligned: the bytes are copied.
            return self.slice.read_obj::<Descriptor>(off).ok();
        }
        // SAFETY: `aligned` is the start of `slice`, which is mapped for 's and at least
        // DESC * size bytes long (checked in `new`), and i < size, so both 8-byte words lie
        // inside it and are 8-byte aligned. The guest may write them at any time: volatile
        // loads, as vm-memory's own accessors make; any bit pattern is a valid u64.
        let (addr, rest) = unsafe {
            let p = self.aligned.add(off).cast::<u64>();
            (p.read_volatile(), p.add(1).read_volatile())
        };
        let (addr, rest) = (u64::from_le(addr), u64::from_le(rest));
        // len: bits 0..32, flags: 32..48, next: 48..64.
        Some(Descriptor::new(
            addr,
            rest as u32,
            (rest >> 32) as u16,
            (rest >> 48) as u16,
        ))
    }
}

/// Walks the chain starting at descriptor `head` of `table`, appending its non-empty buffers
/// to `segs` (the chain's segments are `segs[len_before..]`); on error `segs` is restored to
/// its length before the call. `indirect(gpa, len)` translates an indirect table (`len`
/// bytes at guest address `gpa`) into host memory, or refuses it.
///
/// The checks, in the order their errors win: a chain cut short ([`ChainError::Cut`]) or
/// longer than [`MAX_CHAIN_DESCS`] ([`ChainError::TooLong`]), then a chain without any
/// readable descriptor ([`ChainError::Empty`]), then the first wrong-direction descriptor,
/// then a total above `max_bytes`.
#[inline(always)]
pub fn read_chain<'s>(
    table: &DescTable<'s>,
    head: u16,
    indirect: &mut dyn FnMut(u64, u32) -> Option<VolatileSlice<'s>>,
    dir: Dir,
    max_bytes: usize,
    segs: &mut Vec<Seg>,
) -> Result<ChainInfo, ChainError> {
    match read_single(table, head, dir, max_bytes, segs) {
        Some(info) => Ok(info),
        None => walk_chain(table, head, indirect, dir, max_bytes, segs),
    }
}

/// [`read_chain`]'s general walk, for every chain.
#[inline(always)]
fn walk_chain<'s>(
    table: &DescTable<'s>,
    head: u16,
    indirect: &mut dyn FnMut(u64, u32) -> Option<VolatileSlice<'s>>,
    dir: Dir,
    max_bytes: usize,
    segs: &mut Vec<Seg>,
) -> Result<ChainInfo, ChainError> {
    let start = segs.len();
    let mut tbl = *table;
    let mut next = head;
    let mut ttl = tbl.size;
    let mut in_indirect = false;
    let mut count = 0usize;
    let mut bytes = 0usize;
    let mut cut = false;
    let mut first_err = None;
    while ttl > 0 {
        let Some(d) = tbl.get(next) else { break };
        if d.refers_to_indirect_table() {
            // Once only, to a table of whole descriptors.
            let len = d.len();
            let n = len as usize / DESC;
            let sub = (!in_indirect && len as usize % DESC == 0 && n > 0)
                .then(|| u16::try_from(n).ok())
                .flatten()
                .and_then(|n| indirect(d.addr().0, len).and_then(|s| DescTable::new(s, n)));
            // Refused: the chain ends here (cut if the previous descriptor had NEXT).
            let Some(sub) = sub else { break };
            tbl = sub;
            in_indirect = true;
            next = 0;
            ttl = tbl.size;
            continue;
        }
        count += 1;
        if count > MAX_CHAIN_DESCS {
            segs.truncate(start);
            return Err(ChainError::TooLong);
        }
        cut = d.has_next();
        if d.is_write_only() != (dir == Dir::Writable) {
            first_err.get_or_insert(ChainError::Direction);
        } else if d.len() > 0 {
            bytes = bytes.saturating_add(d.len() as usize);
            if bytes > max_bytes {
                first_err.get_or_insert(ChainError::TooLarge);
            } else if first_err.is_none() {
                segs.push(Seg {
                    gpa: d.addr().0,
                    len: d.len(),
                });
            }
        }
        if !cut {
            break;
        }
        next = d.next();
        ttl -= 1;
    }
    let err = if cut {
        Some(ChainError::Cut)
    } else if count == 0 {
        Some(ChainError::Empty)
    } else {
        first_err
    };
    match err {
        Some(e) => {
            segs.truncate(start);
            Err(e)
        }
        None => Ok(ChainInfo {
            bytes,
            segs: segs.len() - start,
        }),
    }
}

/// [`read_chain`]'s common case, taken in a few loads and compares: the chain is one
/// non-empty descriptor in the right direction, without NEXT or INDIRECT, within
/// `max_bytes` (a small frame of Linux's or DPDK's virtio driver, an RX buffer). `None`:
/// anything else, for the general walk to judge (it ends with the same result for this case).
#[inline(always)]
fn read_single(
    table: &DescTable<'_>,
    head: u16,
    dir: Dir,
    max_bytes: usize,
    segs: &mut Vec<Seg>,
) -> Option<ChainInfo> {
    let d = table.get(head)?;
    let want = match dir {
        Dir::Writable => VRING_DESC_F_WRITE as u16,
        Dir::Readable => 0,
    };
    let len = d.len() as usize;
    if d.flags() != want || len == 0 || len > max_bytes {
        return None;
    }
    segs.push(Seg {
        gpa: d.addr().0,
        len: d.len(),
    });
    Some(ChainInfo {
        bytes: len,
        segs: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).expect("memory")
    }

    fn put(m: &GuestMemoryMmap, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        m.write_obj(
            Descriptor::new(addr, len, flags, next),
            GuestAddress(table + 16 * i),
        )
        .expect("desc");
    }

    /// One descriptor: (address, length, flags, next).
    type D = (u64, u32, u16, u16);

    fn table(m: &GuestMemoryMmap, at: u64, size: u16) -> DescTable<'_> {
        let s = m
            .get_slice(GuestAddress(at), 16 * usize::from(size))
            .expect("slice");
        DescTable::new(s, size).expect("table")
    }

    /// `read_chain` from head 0 of a 16-entry table at 0 holding `descs`; indirect tables are
    /// read from the same memory.
    fn run(
        m: &GuestMemoryMmap,
        descs: &[D],
        dir: Dir,
        max: usize,
    ) -> (Result<ChainInfo, ChainError>, Vec<Seg>) {
        for (i, &(a, l, f, n)) in descs.iter().enumerate() {
            put(m, 0, i as u64, a, l, f, n);
        }
        let t = table(m, 0, 16);
        let mut ind = |gpa: u64, len: u32| m.get_slice(GuestAddress(gpa), len as usize).ok();
        let mut segs = vec![Seg { gpa: 1, len: 1 }];
        let r = read_chain(&t, 0, &mut ind, dir, max, &mut segs);
        (r, segs)
    }

    /// The one-descriptor shortcut says what the general walk says, for every flag
    /// combination, direction, and length around the limits (head 0 of `table(0, 16)`; a
    /// NEXT or INDIRECT head points at a valid one-descriptor remainder).
    #[test]
    fn single_descriptor_shortcut_agrees_with_the_walk() {
        let m = mem();
        put(&m, 0, 1, 0x5000, 8, 0, 0);
        put(&m, 0, 2, 0x5000, 8, WRITE, 0);
        put(&m, 0x4000, 0, 0x6000, 8, 0, 0);
        let mut ind = |gpa: u64, len: u32| m.get_slice(GuestAddress(gpa), len as usize).ok();
        let mut shortcuts = 0;
        for flags in 0..8u16 {
            for len in [0u32, 1, 60, 64, 65, u32::MAX] {
                for dir in [Dir::Readable, Dir::Writable] {
                    let addr = if flags & INDIRECT != 0 {
                        0x4000
                    } else {
                        0x1000
                    };
                    put(
                        &m,
                        0,
                        0,
                        addr,
                        len,
                        flags,
                        1 + u16::from(dir == Dir::Writable),
                    );
                    let t = table(&m, 0, 16);
                    let mut a = vec![Seg { gpa: 9, len: 9 }];
                    let mut b = a.clone();
                    let fast = read_chain(&t, 0, &mut ind, dir, 64, &mut a);
                    let walk = walk_chain(&t, 0, &mut ind, dir, 64, &mut b);
                    assert_eq!((fast, &a), (walk, &b), "flags {flags:#x} len {len} {dir:?}");
                    shortcuts +=
                        usize::from(read_single(&t, 0, dir, 64, &mut Vec::new()).is_some());
                }
            }
        }
        // Taken for the three non-empty lengths within the limit, each in its direction.
        assert_eq!(shortcuts, 6);
    }

    #[test]
    fn good_chain_appends_non_empty_buffers() {
        let m = mem();
        let (r, segs) = run(
            &m,
            &[
                (0x1000, 12, NEXT, 1),
                (0x2000, 0, NEXT, 2),
                (0x3000, 100, 0, 0),
            ],
            Dir::Readable,
            1000,
        );
        let info = r.expect("good");
        assert_eq!((info.bytes, info.segs), (112, 2));
        let want = [
            Seg {
                gpa: 0x1000,
                len: 12,
            },
            Seg {
                gpa: 0x3000,
                len: 100,
            },
        ];
        assert_eq!(&segs[1..], &want);
    }

    #[test]
    fn each_bad_chain_has_its_error_and_leaves_segs_alone() {
        let cases: Vec<(Vec<D>, Dir, ChainError)> = vec![
            (
                vec![(0x1000, 12, WRITE, 0)],
                Dir::Readable,
                ChainError::Direction,
            ),
            (
                vec![(0x1000, 12, 0, 0)],
                Dir::Writable,
                ChainError::Direction,
            ),
            // A loop: 0 -> 1 -> 0 ...
            (
                vec![(0x1000, 12, NEXT, 1), (0x2000, 12, NEXT, 0)],
                Dir::Readable,
                ChainError::Cut,
            ),
            // `next` outside the table.
            (
                vec![(0x1000, 12, NEXT, 400)],
                Dir::Readable,
                ChainError::Cut,
            ),
            (
                vec![(0x1000, 2000, 0, 0)],
                Dir::Readable,
                ChainError::TooLarge,
            ),
            // Indirect table outside memory, of a length that is no whole descriptor, empty.
            (
                vec![(0x7_0000_0000, 64, INDIRECT, 0)],
                Dir::Readable,
                ChainError::Empty,
            ),
            (
                vec![(0x8000, 20, INDIRECT, 0)],
                Dir::Readable,
                ChainError::Empty,
            ),
            (
                vec![(0x8000, 0, INDIRECT, 0)],
                Dir::Readable,
                ChainError::Empty,
            ),
        ];
        let m = mem();
        for (descs, dir, want) in cases {
            let (r, segs) = run(&m, &descs, dir, 1000);
            assert_eq!(r, Err(want), "{descs:?}");
            assert_eq!(segs.len(), 1, "segs restored");
        }
    }

    #[test]
    fn indirect_table_once_and_nested_indirect_refused() {
        let m = mem();
        let it = 0x8000u64;
        put(&m, it, 0, 0x1000, 12, NEXT, 1);
        put(&m, it, 1, 0x2000, 60, 0, 0);
        let (r, segs) = run(&m, &[(it, 32, INDIRECT, 0)], Dir::Readable, 1000);
        assert_eq!(r.expect("indirect").bytes, 72);
        assert_eq!(segs.len(), 3);
        // An indirect descriptor inside an indirect table ends the chain.
        put(&m, it, 1, 0x9000, 32, INDIRECT, 0);
        let (r, _) = run(&m, &[(it, 32, INDIRECT, 0)], Dir::Readable, 1000);
        assert_eq!(r, Err(ChainError::Cut));
    }

    #[test]
    fn aligned_and_unaligned_tables_read_the_same() {
        // The same two descriptors in an 8-byte-aligned table (plain loads) and in one at an
        // odd address (copied bytes, as an indirect table may be).
        let m = mem();
        for at in [0x8000u64, 0x9003] {
            put(&m, at, 0, 0x1000, 12, NEXT, 1);
            put(&m, at, 1, 0x2000_0000_0000, u32::MAX, WRITE, 0xbeef);
            let t = table(&m, at, 2);
            let d = t.get(1).expect("desc");
            assert_eq!(
                (d.addr().0, d.len(), d.flags(), d.next()),
                (0x2000_0000_0000, u32::MAX, WRITE, 0xbeef),
                "table at {at:#x}"
            );
            assert_eq!(t.get(0).map(|d| d.next()), Some(1));
            assert!(t.get(2).is_none(), "outside the table");
        }
    }

    #[test]
    fn indirect_chain_longer_than_the_limit_is_refused_after_the_limit() {
        // An indirect table of 65,535 one-byte descriptors: refused after MAX_CHAIN_DESCS + 1
        // reads, not walked to its end.
        let m = mem();
        let it = 0x10_0000u64;
        let n = 65_535u32;
        for i in 0..n {
            let last = i + 1 == n;
            let f = if last { 0 } else { NEXT };
            put(&m, it, u64::from(i), 0x20_0000, 1, f, (i + 1) as u16);
        }
        let (r, segs) = run(&m, &[(it, 16 * n, INDIRECT, 0)], Dir::Readable, usize::MAX);
        assert_eq!(r, Err(ChainError::TooLong));
        assert_eq!(segs.len(), 1);
        // At the limit: accepted.
        let max = MAX_CHAIN_DESCS as u32;
        put(&m, it, u64::from(max - 1), 0x20_0000, 1, 0, 0);
        let (r, _) = run(
            &m,
            &[(it, 16 * max, INDIRECT, 0)],
            Dir::Readable,
            usize::MAX,
        );
        let info = r.expect("at limit");
        assert_eq!((info.segs, info.bytes), (MAX_CHAIN_DESCS, MAX_CHAIN_DESCS));
    }
}
