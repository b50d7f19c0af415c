//! Reader-writer locks, and [`AnyRwLock`], the run-time selected one.
//!
//! Each algorithm lives in its own file and is usable hard-wired as a `lock_api::RwLock`.
//! `AnyRwLock` picks one at run time from a [`RwLockKind`]; the dispatch is one predictable
//! branch per lock and per unlock.

use crate::RwLockKind;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

mod backoff;
mod fallback;
pub mod membarrier;
pub(crate) mod percpu;
pub mod plain;

pub use membarrier::{asymmetric_fence_available, BarrierError};
pub use percpu::{RawPerCpuRwLock, SLOTS};
pub use plain::RawPlainRwLock;

// Under `--cfg loom` the raw locks cannot be built in a `const` (loom atomics are not
// const-constructible), so they have no `lock_api` wrapper: loom models drive the raw types
// directly, and the hard-wired aliases fall back to parking_lot only to keep the crate
// compiling.
#[cfg(not(loom))]
type PercpuRaw = RawPerCpuRwLock<false>;
#[cfg(not(loom))]
type PercpuFencedRaw = RawPerCpuRwLock<true>;
#[cfg(not(loom))]
type PlainRaw = RawPlainRwLock;
#[cfg(loom)]
type PercpuRaw = parking_lot::RawRwLock;
#[cfg(loom)]
type PercpuFencedRaw = parking_lot::RawRwLock;
#[cfg(loom)]
type PlainRaw = parking_lot::RawRwLock;

/// Per-CPU rwlock, reader fast path with a compiler fence only (`membarrier` on the writer).
/// Where membarrier is unavailable every read of this hard-wired type takes the out-of-line
/// path with a full fence: build through [`AnyRwLock`] or
/// [`with_rw_family!`](crate::with_rw_family), which pick [`PerCpuFencedRwLock`] there.
///
/// # Examples
///
/// Readers on many threads share the lock without writing a shared cache line; a writer
/// waits for every reader slot to drain.
///
/// ```
/// use pvnet_locks::PerCpuRwLock;
/// use std::sync::Arc;
///
/// let table = Arc::new(PerCpuRwLock::new(0u64));
/// let readers: Vec<_> = (0..4)
///     .map(|_| {
///         let t = table.clone();
///         std::thread::spawn(move || (0..1000).map(|_| *t.read()).max().unwrap())
///     })
///     .collect();
/// *table.write() += 1;
/// for r in readers {
///     assert!(r.join().unwrap() <= 1);
/// }
/// assert_eq!(*table.read(), 1);
/// ```
pub type PerCpuRwLock<T> = lock_api::RwLock<PercpuRaw, T>;
/// Per-CPU rwlock with a full fence on the reader fast path (the seed's "after").
pub type PerCpuFencedRwLock<T> = lock_api::RwLock<PercpuFencedRaw, T>;
/// Single-word atomic rwlock (the seed's "before").
pub type PlainRwLock<T> = lock_api::RwLock<PlainRaw, T>;

type ReadG<'a, R, T> = lock_api::RwLockReadGuard<'a, R, T>;
type WriteG<'a, R, T> = lock_api::RwLockWriteGuard<'a, R, T>;

/// A reader-writer lock whose algorithm is chosen at run time.
///
/// One `match` per call picks the algorithm; for code that takes a lock on every packet,
/// choose the kind once with [`with_rw_family!`](crate::with_rw_family) instead and run code
/// compiled for it.
///
/// # Examples
///
/// ```
/// use pvnet_locks::{AnyRwLock, RwLockKind};
///
/// let kind: RwLockKind = "percpu".parse().unwrap();
/// let lock = AnyRwLock::new(kind, vec![1, 2, 3]);
/// {
///     let r1 = lock.read();
///     assert_eq!(r1.len(), 3);
/// }
/// lock.write().push(4);
/// assert_eq!(*lock.read(), [1, 2, 3, 4]);
/// ```
pub enum AnyRwLock<T> {
    Percpu(PerCpuRwLock<T>),
    PercpuFenced(PerCpuFencedRwLock<T>),
    Rwlock(PlainRwLock<T>),
    Std(std::sync::RwLock<T>),
    ParkingLot(parking_lot::RwLock<T>),
}

/// Shared access guard of an [`AnyRwLock`].
///
/// The variants are `ManuallyDrop` so that the unlock dispatch is this type's own
/// `#[inline(always)]` `Drop` rather than compiler drop glue, which LLVM leaves out of line
/// (one call per unlock on the read path: see `docs/benchmarks.md`, Locks).
pub enum AnyRwLockReadGuard<'a, T> {
    Percpu(ManuallyDrop<ReadG<'a, PercpuRaw, T>>),
    PercpuFenced(ManuallyDrop<ReadG<'a, PercpuFencedRaw, T>>),
    Rwlock(ManuallyDrop<ReadG<'a, PlainRaw, T>>),
    Std(ManuallyDrop<std::sync::RwLockReadGuard<'a, T>>),
    ParkingLot(ManuallyDrop<parking_lot::RwLockReadGuard<'a, T>>),
}

/// Exclusive access guard of an [`AnyRwLock`].
pub enum AnyRwLockWriteGuard<'a, T> {
    Percpu(WriteG<'a, PercpuRaw, T>),
    PercpuFenced(WriteG<'a, PercpuFencedRaw, T>),
    Rwlock(WriteG<'a, PlainRaw, T>),
    Std(std::sync::RwLockWriteGuard<'a, T>),
    ParkingLot(parking_lot::RwLockWriteGuard<'a, T>),
}

impl<T> AnyRwLock<T> {
    /// A lock of kind `kind` protecting `value`; `percpu` is built as `percpu-fenced` where
    /// the asymmetric fence is unavailable ([`resolve_rw`](crate::family::resolve_rw)).
    pub fn new(kind: RwLockKind, value: T) -> Self {
        match crate::family::resolve_rw(kind) {
            RwLockKind::Percpu => AnyRwLock::Percpu(PerCpuRwLock::new(value)),
            RwLockKind::PercpuFenced => AnyRwLock::PercpuFenced(PerCpuFencedRwLock::new(value)),
            RwLockKind::Rwlock => AnyRwLock::Rwlock(PlainRwLock::new(value)),
            RwLockKind::Std => AnyRwLock::Std(std::sync::RwLock::new(value)),
            RwLockKind::ParkingLot => AnyRwLock::ParkingLot(parking_lot::RwLock::new(value)),
        }
    }

    /// The kind this lock was built as (after [`resolve_rw`](crate::family::resolve_rw)).
    pub fn kind(&self) -> RwLockKind {
        match self {
            AnyRwLock::Percpu(_) => RwLockKind::Percpu,
            AnyRwLock::PercpuFenced(_) => RwLockKind::PercpuFenced,
            AnyRwLock::Rwlock(_) => RwLockKind::Rwlock,
            AnyRwLock::Std(_) => RwLockKind::Std,
            AnyRwLock::ParkingLot(_) => RwLockKind::ParkingLot,
        }
    }

    /// Locks for shared access. A poisoned `std` lock is entered anyway: the protected data
    /// of pvnet's locks is kept consistent by construction, not by unwinding.
    ///
    /// Always inlined (with the guard's `Drop`): out of line, the dispatch costs two calls
    /// and a guard returned through memory per read, more than the per-CPU read itself.
    #[inline(always)]
    pub fn read(&self) -> AnyRwLockReadGuard<'_, T> {
        use ManuallyDrop as M;
        match self {
            AnyRwLock::Percpu(l) => AnyRwLockReadGuard::Percpu(M::new(l.read())),
            AnyRwLock::PercpuFenced(l) => AnyRwLockReadGuard::PercpuFenced(M::new(l.read())),
            AnyRwLock::Rwlock(l) => AnyRwLockReadGuard::Rwlock(M::new(l.read())),
            AnyRwLock::Std(l) => {
                AnyRwLockReadGuard::Std(M::new(l.read().unwrap_or_else(|e| e.into_inner())))
            }
            AnyRwLock::ParkingLot(l) => AnyRwLockReadGuard::ParkingLot(M::new(l.read())),
        }
    }

    /// Locks for exclusive access.
    #[inline]
    pub fn write(&self) -> AnyRwLockWriteGuard<'_, T> {
        match self {
            AnyRwLock::Percpu(l) => AnyRwLockWriteGuard::Percpu(l.write()),
            AnyRwLock::PercpuFenced(l) => AnyRwLockWriteGuard::PercpuFenced(l.write()),
            AnyRwLock::Rwlock(l) => AnyRwLockWriteGuard::Rwlock(l.write()),
            AnyRwLock::Std(l) => {
                AnyRwLockWriteGuard::Std(l.write().unwrap_or_else(|e| e.into_inner()))
            }
            AnyRwLock::ParkingLot(l) => AnyRwLockWriteGuard::ParkingLot(l.write()),
        }
    }

    /// Mutable access without locking (the borrow checker proves exclusivity).
    pub fn get_mut(&mut self) -> &mut T {
        match self {
            AnyRwLock::Percpu(l) => l.get_mut(),
            AnyRwLock::PercpuFenced(l) => l.get_mut(),
            AnyRwLock::Rwlock(l) => l.get_mut(),
            AnyRwLock::Std(l) => l.get_mut().unwrap_or_else(|e| e.into_inner()),
            AnyRwLock::ParkingLot(l) => l.get_mut(),
        }
    }
}

impl<T> Deref for AnyRwLockReadGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        match self {
            AnyRwLockReadGuard::Percpu(g) => g,
            AnyRwLockReadGuard::PercpuFenced(g) => g,
            AnyRwLockReadGuard::Rwlock(g) => g,
            AnyRwLockReadGuard::Std(g) => g,
            AnyRwLockReadGuard::ParkingLot(g) => g,
        }
    }
}

impl<T> Drop for AnyRwLockReadGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: each guard is dropped exactly once, here, and never used afterwards (the
        // enum itself is being dropped).
        unsafe {
            match self {
                AnyRwLockReadGuard::Percpu(g) => ManuallyDrop::drop(g),
                AnyRwLockReadGuard::PercpuFenced(g) => ManuallyDrop::drop(g),
                AnyRwLockReadGuard::Rwlock(g) => ManuallyDrop::drop(g),
                AnyRwLockReadGuard::Std(g) => ManuallyDrop::drop(g),
                AnyRwLockReadGuard::ParkingLot(g) => ManuallyDrop::drop(g),
            }
        }
    }
}

impl<T> Deref for AnyRwLockWriteGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        match self {
            AnyRwLockWriteGuard::Percpu(g) => g,
            AnyRwLockWriteGuard::PercpuFenced(g) => g,
            AnyRwLockWriteGuard::Rwlock(g) => g,
            AnyRwLockWriteGuard::Std(g) => g,
            AnyRwLockWriteGuard::ParkingLot(g) => g,
        }
    }
}

impl<T> DerefMut for AnyRwLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        match self {
            AnyRwLockWriteGuard::Percpu(g) => g,
            AnyRwLockWriteGuard::PercpuFenced(g) => g,
            AnyRwLockWriteGuard::Rwlock(g) => g,
            AnyRwLockWriteGuard::Std(g) => g,
            AnyRwLockWriteGuard::ParkingLot(g) => g,
        }
    }
}
