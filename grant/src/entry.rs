//! Grant entries: what one grant holds, and the access rights it carries.

use std::sync::Arc;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryRegion, GuestRegionMmap, MmapRegion};

use crate::GrantError;

/// Access rights of a grant, and the access an operation needs.
///
/// As a right, `ReadWrite` allows everything; as a need, `ReadWrite` asks for both (an
/// in-place update). A need is allowed when the right contains it ([`Access::allows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only: the backend may read (e.g. a TX buffer).
    ReadOnly,
    /// Write only (for a future IOTLB `VHOST_ACCESS_WO` source; see the crate docs).
    WriteOnly,
    /// Read and write (all vhost-user memory-table regions).
    ReadWrite,
}

impl Access {
    /// Whether a grant with these rights allows an access that needs `need`.
    #[inline]
    pub fn allows(self, need: Access) -> bool {
        matches!(
            (self, need),
            (Access::ReadWrite, _)
                | (Access::ReadOnly, Access::ReadOnly)
                | (Access::WriteOnly, Access::WriteOnly)
        )
    }

    /// The error an access needing `need` at `gpa` gets from a grant with these rights, if
    /// any.
    #[inline]
    pub(crate) fn check(self, need: Access, gpa: u64) -> Result<(), GrantError> {
        if self.allows(need) {
            Ok(())
        } else if self == Access::ReadOnly {
            Err(GrantError::ReadOnly { gpa })
        } else {
            Err(GrantError::WriteOnly { gpa })
        }
    }
}

/// Where a grant's bytes live in this process: a vm-memory mapping (shared, reference
/// counted: the grant keeps it mapped) and an offset into it.
///
/// Memory-table regions come from [`HostMapping::from_region`]. A vIOMMU writer (not
/// implemented; see the crate docs) would build one
/// with [`HostMapping::new`] from the memory-table region holding the IOTLB entry's user
/// address, the offset being `uaddr - region's user address`.
#[derive(Debug)]
pub struct HostMapping<B = ()> {
    pub(crate) map: Arc<MmapRegion<B>>,
    pub(crate) offset: usize,
}

impl<B> Clone for HostMapping<B> {
    fn clone(&self) -> Self {
        HostMapping {
            map: Arc::clone(&self.map),
            offset: self.offset,
        }
    }
}

impl<B: Bitmap> HostMapping<B> {
    /// `offset` bytes into `map`. The grant's length is checked against the mapping when the
    /// grant is made.
    pub fn new(map: Arc<MmapRegion<B>>, offset: usize) -> Self {
        HostMapping { map, offset }
    }

    /// The whole mapping of a vm-memory guest region (what vhost-user-backend builds for
    /// each SET_MEM_TABLE / ADD_MEM_REG region).
    pub fn from_region(region: &GuestRegionMmap<B>) -> Self {
        HostMapping {
            map: region.get_mmap(),
            offset: 0,
        }
    }

    /// The mapping this refers to.
    pub fn mmap(&self) -> &Arc<MmapRegion<B>> {
        &self.map
    }

    /// Offset into the mapping.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether `self` and `other` are the same bytes of the same mapping.
    pub fn same_as(&self, other: &HostMapping<B>) -> bool {
        Arc::ptr_eq(&self.map, &other.map) && self.offset == other.offset
    }
}

/// One grant: `len` bytes of guest address space from `start`, backed by `host`.
///
/// Invariants (established by the writers, relied upon by the readers): `len > 0`,
/// `start + len` does not overflow `u64`, `len` fits `usize`, and
/// `host.offset + len <= host.map.size()`.
#[derive(Debug)]
pub(crate) struct Entry<B> {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) host: HostMapping<B>,
    pub(crate) access: Access,
    pub(crate) generation: u64,
}

impl<B: Bitmap> Entry<B> {
    /// Checks the invariants for a new grant.
    pub(crate) fn new(
        start: u64,
        len: u64,
        host: HostMapping<B>,
        access: Access,
        generation: u64,
    ) -> Result<Self, GrantError> {
        if len == 0 {
            return Err(GrantError::ZeroLength { gpa: start });
        }
        if start.checked_add(len).is_none() || usize::try_from(len).is_err() {
            return Err(GrantError::LengthOverflow { gpa: start, len });
        }
        let size = host.map.size();
        let fits = host
            .offset
            .checked_add(len as usize)
            .is_some_and(|end| end <= size);
        if !fits {
            return Err(GrantError::HostRange {
                offset: host.offset,
                len,
                size,
            });
        }
        Ok(Entry {
            start,
            len,
            host,
            access,
            generation,
        })
    }

    /// One past the last granted address (cannot overflow: invariant).
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.start + self.len
    }

    /// The part `[from, to)` of this entry (which must lie inside it) as a new entry with the
    /// same mapping, rights and generation: used to trim or split on partial revokes.
    pub(crate) fn part(&self, from: u64, to: u64) -> Entry<B> {
        debug_assert!(self.start <= from && from < to && to <= self.end());
        Entry {
            start: from,
            len: to - from,
            host: HostMapping {
                map: Arc::clone(&self.host.map),
                // In range: from - start < len <= size - offset, all fitting usize.
                offset: self.host.offset + (from - self.start) as usize,
            },
            access: self.access,
            generation: self.generation,
        }
    }

    pub(crate) fn info(&self) -> GrantInfo {
        GrantInfo {
            gpa: self.start,
            len: self.len,
            access: self.access,
            generation: self.generation,
        }
    }
}

/// A read-only description of one grant (for logs, tests and debugging).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    /// First granted guest address.
    pub gpa: u64,
    /// Number of granted bytes.
    pub len: u64,
    /// Access rights.
    pub access: Access,
    /// Table generation at which this grant was made.
    pub generation: u64,
}

/// Builds the entry for a whole vm-memory guest region.
pub(crate) fn region_entry<B: Bitmap>(
    region: &GuestRegionMmap<B>,
    access: Access,
    generation: u64,
) -> Result<Entry<B>, GrantError> {
    Entry::new(
        region.start_addr().0,
        region.len(),
        HostMapping::from_region(region),
        access,
        generation,
    )
}
