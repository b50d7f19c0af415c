//! # pvnet-locks
//!
//! Lock algorithms for a user-space virtual switch, with their baselines, selectable at run
//! time:
//!
//! * **Reader-writer locks** ([`RwLockKind`]): the Xen per-CPU rwlock (readers touch only
//!   their own per-thread slot), in a fenced and an asymmetric-fence (`membarrier`) flavour;
//!   a plain single-word atomic rwlock (the "before" of Xen's 2015 change);
//!   `std::sync::RwLock`; `parking_lot::RwLock`.
//! * **Spinlocks** ([`SpinLockKind`]): Linux's queued (MCS) spinlock, its paravirt-aware
//!   variant whose waiters sleep on a futex and are kicked once at unlock time; ticket and
//!   test-and-set spinlocks; `std::sync::Mutex`; `parking_lot::Mutex`.
//!
//! [`family`] makes each algorithm a type ([`family::RwFamily`], [`family::SpinFamily`]) so
//! that code generic over it is monomorphised, with one `match` on the kind at start-up
//! ([`with_rw_family!`], [`with_spin_family!`]). [`AnyRwLock`] and [`AnySpinLock`] build a
//! lock of a kind chosen at run time and dispatch on every operation; every kind keeps event
//! counters ([`stats`]).

pub mod family;
pub mod kind;
pub mod registry;
pub mod rw;
pub mod spin;
pub mod stats;
pub(crate) mod sync;

pub use kind::{RwLockKind, SpinLockKind, UnknownKind};
pub use rw::{AnyRwLock, AnyRwLockReadGuard, AnyRwLockWriteGuard};
pub use rw::{PerCpuFencedRwLock, PerCpuRwLock, PlainRwLock};
pub use spin::{AnySpinLock, AnySpinLockGuard};
#[cfg(not(loom))]
pub use spin::{PvQSpinLock, QSpinLock, TasLock, TicketLock};
pub use stats::{rw_stats, spin_stats, LockStats};
