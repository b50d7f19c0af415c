//! Typed errors of the grant table.
//!
//! Read-side errors are what a hostile or buggy guest can provoke with the addresses and
//! lengths it puts into descriptors: the data path maps each of them to "drop this chain",
//! never to a panic. Write-side errors come from the vhost-user frontend's memory table (or a
//! future IOTLB source).

/// Every way a grant-table operation can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// An access (or a grant) of zero bytes: never meaningful, so refused rather than
    /// silently succeeding without checking anything.
    #[error("zero-length access at guest address {gpa:#x}")]
    ZeroLength {
        /// The guest address given.
        gpa: u64,
    },
    /// `gpa + len` does not fit the guest address space (or `len` does not fit the host's).
    #[error("length overflow: {len:#x} bytes at guest address {gpa:#x}")]
    LengthOverflow {
        /// The guest address given.
        gpa: u64,
        /// The length given.
        len: u64,
    },
    /// The first byte of the access is outside every grant (out of range).
    #[error("guest address {gpa:#x} is not granted")]
    NotGranted {
        /// The first byte of the access.
        gpa: u64,
    },
    /// The access starts inside a grant but runs into an address no grant covers (a hole
    /// between grants, or the end of the last one).
    #[error("access crosses a hole at guest address {gpa:#x}")]
    CrossesHole {
        /// The first byte of the access that no grant covers.
        gpa: u64,
    },
    /// Write access to a read-only grant.
    #[error("write to a read-only grant at guest address {gpa:#x}")]
    ReadOnly {
        /// The first byte of the access inside the read-only grant.
        gpa: u64,
    },
    /// Read access to a write-only grant.
    #[error("read from a write-only grant at guest address {gpa:#x}")]
    WriteOnly {
        /// The first byte of the access inside the write-only grant.
        gpa: u64,
    },
    /// A grant would overlap an existing one (writers only).
    #[error("grant at guest address {gpa:#x} overlaps an existing grant")]
    Overlap {
        /// The first overlapping guest address.
        gpa: u64,
    },
    /// A grant's host range does not fit inside its host mapping (writers only).
    #[error("host mapping too small: offset {offset:#x} + {len:#x} bytes > {size:#x}")]
    HostRange {
        /// Offset into the host mapping.
        offset: usize,
        /// Length of the grant.
        len: u64,
        /// Size of the host mapping.
        size: usize,
    },
    /// No grant starts at this guest address (writers only: `remove_region`).
    #[error("no grant starts at guest address {gpa:#x}")]
    NoSuchGrant {
        /// The guest address given.
        gpa: u64,
    },
    /// vm-memory refused a slice the grant table had validated: a broken invariant of this
    /// crate, reported instead of panicking.
    #[error("internal error: host slice of a validated grant refused at {gpa:#x}")]
    Internal {
        /// The guest address being accessed.
        gpa: u64,
    },
}
