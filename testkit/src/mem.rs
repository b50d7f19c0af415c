//! Guest memory: memfd-backed regions shared with the device, and the guest's allocators.
//!
//! Layout for `size` bytes: region 0 at GPA `[0, size/4)`, region 1 at `[size/4, size/2)`
//! (adjacent, but a different memfd, so buffers may straddle two regions), then a gap, then
//! region 2 at `[4 GiB, 4 GiB + size/2)`. The bump allocator hands out ranges inside one of
//! the two contiguous spans; never across the gap. Freed buffers go to power-of-two free lists.

use std::os::fd::{AsRawFd, RawFd};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::Error;

/// Guest-physical base of the high region.
pub(crate) const HIGH_BASE: u64 = 1 << 32;
/// The first page is never handed out, so GPA 0 never appears in a descriptor.
const LOW_START: u64 = 0x1000;
/// Smallest buffer size class (log2).
const MIN_CLASS: u32 = 8;

struct Span {
    end: u64,
    next: u64,
}

/// One memfd region as the device sees it.
pub(crate) struct RegionInfo {
    pub gpa: u64,
    pub len: u64,
    pub host: u64,
    pub fd: RawFd,
}

pub(crate) struct GuestMem {
    mem: GuestMemoryMmap<()>,
    /// `(guest address, host address, length)` of each region, for direct access.
    map: Vec<(u64, usize, u64)>,
    spans: Vec<Span>,
    free: Vec<Vec<u64>>,
}

/// The `(guest address, length)` ranges of guest memory of `size` bytes (see the module
/// comment).
fn layout(size: usize) -> Result<[(u64, usize); 3], Error> {
    if size < (1 << 20) || size % (16 << 10) != 0 {
        return Err(Error::InvalidArgument(format!(
            "mem_size {size} must be >= 1 MiB and a multiple of 16 KiB"
        )));
    }
    let q = size / 4;
    Ok([(0, q), (q as u64, q), (HIGH_BASE, 2 * q)])
}

impl GuestMem {
    pub(crate) fn new(size: usize) -> Result<Self, Error> {
        let ranges = layout(size)?;
        let mem = pvnet_grant::memfd::guest_memory(&ranges)
            .map_err(|e| Error::MemorySetup(e.to_string()))?;
        let map = mem
            .iter()
            .map(|r| (r.start_addr().0, r.as_ptr() as usize, r.len()))
            .collect();
        let q = ranges[1].0;
        Ok(GuestMem {
            mem,
            map,
            spans: vec![
                Span {
                    end: 2 * q,
                    next: LOW_START,
                },
                Span {
                    end: HIGH_BASE + 2 * q,
                    next: HIGH_BASE,
                },
            ],
            free: Vec::new(),
        })
    }

    pub(crate) fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The regions to pass with SET_MEM_TABLE.
    pub(crate) fn regions(&self) -> Result<Vec<RegionInfo>, Error> {
        regions_of(&self.mem)
    }

    /// The frontend's own virtual address of a guest-physical address (what vring addresses
    /// are expressed in, for vhost-user).
    pub(crate) fn host_addr(&self, gpa: u64) -> Result<u64, Error> {
        Ok(self.mem.get_host_address(GuestAddress(gpa))? as u64)
    }

    /// Host address of `[gpa, gpa + len)` when the range lies inside one region.
    pub(crate) fn host_ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        self.map.iter().find_map(|&(start, host, rlen)| {
            let off = gpa.checked_sub(start)?;
            (off.checked_add(len as u64)? <= rlen).then_some((host + off as usize) as *mut u8)
        })
    }

    /// Bump-allocates `len` bytes aligned to `align` (a power of two) from the span with the
    /// most room left; never returns a range that crosses the gap. With `one_region`, the
    /// range also stays inside one memory region (ring parts, accessed through one mapping).
    pub(crate) fn alloc_in(
        &mut self,
        len: u64,
        align: u64,
        one_region: bool,
    ) -> Result<u64, Error> {
        let len = len.max(1);
        let align = align.max(1);
        let round = |v: u64| v.checked_add(align - 1).map(|v| v & !(align - 1));
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, s) in self.spans.iter().enumerate() {
            let Some(mut start) = round(s.next) else {
                continue;
            };
            if one_region && self.host_ptr(start, len as usize).is_none() {
                // Crosses into the next region: start at that region instead.
                let Some(&(next, ..)) = self.map.iter().find(|r| r.0 > start) else {
                    continue;
                };
                let Some(s2) = round(next) else { continue };
                start = s2;
            }
            let Some(end) = start.checked_add(len) else {
                continue;
            };
            if end <= s.end && (!one_region || self.host_ptr(start, len as usize).is_some()) {
                let room = s.end - end;
                if best.map_or(true, |(_, _, r)| room > r) {
                    best = Some((i, start, room));
                }
            }
        }
        let (i, start, _) = best.ok_or(Error::OutOfMemory(len))?;
        self.spans[i].next = start + len;
        Ok(start)
    }

    /// [`Self::alloc_in`] that may straddle two adjacent regions.
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Result<u64, Error> {
        self.alloc_in(len, align, false)
    }

    fn class(len: u32) -> u32 {
        len.max(1)
            .next_power_of_two()
            .trailing_zeros()
            .max(MIN_CLASS)
    }

    /// A data buffer of at least `len` bytes, reused from the free lists when possible.
    pub(crate) fn alloc_buf(&mut self, len: u32) -> Result<u64, Error> {
        let c = Self::class(len) as usize;
        if let Some(addr) = self.free.get_mut(c).and_then(|l| l.pop()) {
            return Ok(addr);
        }
        self.alloc(1u64 << c, 64)
    }

    /// Returns a buffer from [`Self::alloc_buf`] (with the same `len`) to its free list.
    pub(crate) fn free_buf(&mut self, addr: u64, len: u32) {
        let c = Self::class(len) as usize;
        if self.free.len() <= c {
            self.free.resize_with(c + 1, Vec::new);
        }
        self.free[c].push(addr);
    }
}

/// The regions of `mem` as SET_MEM_TABLE describes them (every region has a memfd).
pub(crate) fn regions_of(mem: &GuestMemoryMmap<()>) -> Result<Vec<RegionInfo>, Error> {
    mem.iter()
        .map(|r| {
            let fd = r
                .file_offset()
                .ok_or_else(|| Error::MemorySetup("region without a file".into()))?
                .file()
                .as_raw_fd();
            Ok(RegionInfo {
                gpa: r.start_addr().0,
                len: r.len(),
                host: r.as_ptr() as u64,
                fd,
            })
        })
        .collect()
}

/// Fresh memfd memory with the layout of a guest of `size` bytes (nothing copied).
pub(crate) fn fresh_memory(size: usize) -> Result<GuestMemoryMmap<()>, Error> {
    pvnet_grant::memfd::guest_memory(&layout(size)?).map_err(|e| Error::MemorySetup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn layout_has_adjacent_regions_and_a_gap() {
        let m = GuestMem::new(4 << 20).unwrap();
        let r = m.regions().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].gpa, r[0].len), (0, 1 << 20));
        assert_eq!((r[1].gpa, r[1].len), (1 << 20, 1 << 20));
        assert_eq!((r[2].gpa, r[2].len), (HIGH_BASE, 2 << 20));
        assert_ne!(r[0].fd, r[1].fd);
        // A write straddling regions 0 and 1 works; one into the gap fails.
        m.mem()
            .write_slice(&[7u8; 64], GuestAddress((1 << 20) - 32))
            .unwrap();
        assert!(m
            .mem()
            .write_slice(&[7u8; 64], GuestAddress(3 << 20))
            .is_err());
        // Direct access: inside one region only.
        assert!(m.host_ptr((1 << 20) - 32, 32).is_some());
        assert!(m.host_ptr((1 << 20) - 32, 33).is_none());
        assert!(m.host_ptr(3 << 20, 1).is_none());
        assert!(GuestMem::new(1000).is_err());
    }

    #[test]
    fn allocator_stays_in_spans_and_reuses_buffers() {
        let mut m = GuestMem::new(1 << 20).unwrap();
        let a = m.alloc(100, 64).unwrap();
        assert_eq!(a % 64, 0);
        assert!(a >= LOW_START);
        let b = m.alloc_buf(1500).unwrap();
        m.free_buf(b, 1500);
        assert_eq!(m.alloc_buf(2000).unwrap(), b);
        // Exhaust: 1 MiB in two 512 KiB spans, minus the first page and what is used above.
        let mut n = 0;
        while m.alloc(64 << 10, 64).is_ok() {
            n += 1;
        }
        assert_eq!(n, 14);
        assert!(matches!(m.alloc(64 << 10, 64), Err(Error::OutOfMemory(_))));
    }

    #[test]
    fn one_region_allocations_skip_the_region_boundary() {
        let mut m = GuestMem::new(1 << 20).unwrap();
        // Fill the high span so that the low one is chosen, up to just below the boundary
        // between regions 0 and 1 (at 256 KiB).
        m.alloc(512 << 10, 4096).unwrap();
        let below = m.alloc((256 << 10) - 0x1000 - 0x800, 64).unwrap();
        assert_eq!(below, LOW_START);
        // 4 KiB no longer fit below the boundary: a straddling range is allowed...
        let mut m2 = GuestMem::new(1 << 20).unwrap();
        m2.alloc(512 << 10, 4096).unwrap();
        m2.alloc((256 << 10) - 0x1000 - 0x800, 64).unwrap();
        assert_eq!(m2.alloc(4096, 64).unwrap(), (256 << 10) - 0x800);
        // ... unless it must stay in one region: then it starts at region 1.
        assert_eq!(m.alloc_in(4096, 64, true).unwrap(), 256 << 10);
        assert!(m.host_ptr(256 << 10, 4096).is_some());
    }
}
