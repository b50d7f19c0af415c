//! # pvnet-grant
//!
//! The layer through which pvnet reaches guest memory, modelled on Xen's grant table: one
//! [`GrantTable`] per attached guest lists the guest-physical ranges pvnet may touch, where
//! each is mapped in this process (an `Arc` of a vm-memory mapping, as vhost-user-backend
//! builds them), with which [`Access`] rights, and since which generation.
//!
//! ## Read side (every buffer of every packet)
//! [`GrantTable::read`] takes the table's read lock — a lock of the
//! [`pvnet_locks::family::RwFamily`] the table is compiled for (chosen once from a run-time
//! [`pvnet_locks::RwLockKind`] with [`pvnet_locks::with_rw_family!`]; the per-CPU rwlock of
//! Xen's 2015 change by default in pvnet) — and returns a [`GrantReadGuard`]; one hold covers a descriptor chain or
//! a batch of chains. Through it: [`GrantReadGuard::translate`] (guest range → host
//! `VolatileSlice`s, possibly spanning adjacent grants), [`GrantReadGuard::read_into`],
//! [`GrantReadGuard::write_from`] and [`grant_copy`] (guest A → guest B, under the guards of
//! both tables, taken with [`read_pair`]). The per-buffer forms on the table
//! ([`GrantTable::copy_from_guest`], [`GrantTable::copy_to_guest`],
//! [`GrantTable::grant_copy_to`], [`GrantTable::check`]) take the lock per call. For a
//! stream of nearby accesses, [`GrantReadGuard::slice_hinted`] with a [`RegionHint`] kept
//! between accesses (and guards) skips the search while the same grant covers them; and
//! [`GrantMemory`] presents a guard as vm-memory's `GuestMemory`, so that vm-memory-based code
//! (virtio-queue's rings and descriptor chains) goes through the grants too. The guard's own
//! operations check bounds, overflow and rights of the whole range, with [`GrantError`]s,
//! before any byte moves. [`GrantMemory`] checks each piece as vm-memory asks for it (a
//! whole-range check first would cost every ring access a second check): an access spanning
//! grants moves its leading pieces, then stops at the first that is not granted or lacks
//! the rights (vm-memory's `write` returns the short count, `write_slice` a `PartialBuffer`
//! error); `check_range` first makes it all-or-nothing. Either way nothing outside a grant,
//! or beyond its rights, is ever read or written, whatever a guest puts in a descriptor.
//! Nothing allocates.
//!
//! ## Write side
//! Writers hold the write lock: [`GrantTable::replace_from_memory`] (SET_MEM_TABLE and every
//! `VhostUserBackend::update_memory`, keeping unchanged regions), [`GrantTable::add_region`]
//! / [`GrantTable::remove_region`] (ADD_MEM_REG / REM_MEM_REG), [`GrantTable::revoke_all`],
//! and the generic [`GrantTable::grant`] / [`GrantTable::revoke`]; [`GrantTable::update`]
//! groups several in one lock hold. When a writer returns, no reader still uses what it
//! revoked (readers touch memory only while holding a guard, and the write lock waited for
//! them), so the revoked mapping's last `Arc` can be dropped — unmapped — at once; the table
//! drops its own references after releasing the lock.
//!
//! ## Not implemented: a vIOMMU would be one more writer
//! pvnet does not offer `VIRTIO_F_ACCESS_PLATFORM` today, so descriptors always carry
//! guest-physical addresses and the memory table is the only source of grants. The table is
//! shaped so that a vIOMMU could be added without touching the data path; the design, for
//! whoever adds it:
//! * a second `GrantTable` per guest, keyed by I/O virtual address, fed by the frontend's
//!   IOTLB update messages: find the memory-table region holding the entry's user address,
//!   build a mapping with [`HostMapping::new`] at the right offset, and
//!   [`GrantTable::grant`] it with the [`Access`] of the message (`VHOST_ACCESS_RO/WO/RW`);
//! * an invalidation would be [`GrantTable::revoke`] (partial overlaps are trimmed or split);
//! * on a memory-table change the IOTLB grants would be revoked ([`GrantTable::revoke_all`])
//!   and the frontend would re-send them;
//! * the workers would translate through the iova table instead: same type, same guard, same
//!   errors (a miss, [`GrantError::NotGranted`], would become an IOTLB miss message).
//!
//! ## Lock order
//! At most one read guard per table per thread; guards of two tables through [`read_pair`]
//! (address order, Xen's `double_gt_lock` rule); no writer call while holding a guard.

mod entry;
mod error;
pub mod memfd;
mod memory;
mod read;
mod table;
#[cfg(test)]
mod tests;

pub use entry::{Access, GrantInfo, HostMapping};
pub use error::GrantError;
pub use memory::{GrantMemory, GrantSlices};
pub use read::{grant_copy, GrantReadGuard, Pieces, RegionHint};
pub use table::{read_pair, GrantTable, GrantWriter, GuardPair, ReplaceSummary};
