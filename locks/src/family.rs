//! Lock families: a lock algorithm as a *type*, so that code written once, generic over the
//! family, is compiled (monomorphised) for each algorithm and the choice made at run time
//! costs one `match` at start-up instead of one per lock operation.
//!
//! * [`RwFamily`] / [`RwLockApi`]: reader-writer locks. Families: [`Percpu`],
//!   [`PercpuFenced`], [`Plain`], [`StdRw`], [`ParkingLotRw`].
//! * [`SpinFamily`] / [`MutexApi`]: mutual exclusion. Families: [`Pvqspin`], [`Qspin`],
//!   [`Ticket`], [`Tas`], [`StdMutex`], [`ParkingLotMutex`].
//! * [`with_rw_family!`](crate::with_rw_family) and
//!   [`with_spin_family!`](crate::with_spin_family) turn a [`RwLockKind`] / [`SpinLockKind`]
//!   chosen at run time into the family type for a block of code. `percpu` resolves to
//!   [`PercpuFenced`] where the asymmetric fence (`membarrier`) is unavailable
//!   ([`resolve_rw`]), so the per-CPU reader never asks at run time.
//!
//! The run-time dispatched [`AnyRwLock`](crate::AnyRwLock) / [`AnySpinLock`](crate::AnySpinLock)
//! stay for code that cannot be generic (and as the measured "dispatch per operation"
//! baseline).
//!
//! # Examples
//!
//! ```
//! use pvnet_locks::family::{RwFamily, RwLockApi};
//! use pvnet_locks::{with_rw_family, RwLockKind};
//!
//! // Written once, compiled for each family.
//! fn sum<F: RwFamily>(v: &[u64]) -> u64 {
//!     let lock = F::Lock::new(v.to_vec());
//!     let total = lock.read().iter().sum();
//!     lock.write().push(total);
//!     total
//! }
//!
//! for &kind in RwLockKind::ALL {
//!     // One match here; inside, `F` is a concrete type.
//!     let s = with_rw_family!(kind, F => sum::<F>(&[1, 2, 3]));
//!     assert_eq!(s, 6);
//! }
//! ```

use crate::{RwLockKind, SpinLockKind};
use std::ops::{Deref, DerefMut};

/// A reader-writer lock protecting a `T`, as seen by code generic over a [`RwFamily`].
pub trait RwLockApi<T>: Send + Sync {
    /// Shared access; dropping it unlocks.
    type ReadGuard<'a>: Deref<Target = T>
    where
        Self: 'a;
    /// Exclusive access; dropping it unlocks.
    type WriteGuard<'a>: DerefMut<Target = T>
    where
        Self: 'a;
    /// A lock protecting `value`.
    fn new(value: T) -> Self;
    /// Locks for shared access (a poisoned `std` lock is entered anyway).
    fn read(&self) -> Self::ReadGuard<'_>;
    /// Locks for exclusive access.
    fn write(&self) -> Self::WriteGuard<'_>;
    /// Mutable access without locking (the borrow proves exclusivity).
    fn get_mut(&mut self) -> &mut T;
}

/// A mutual-exclusion lock protecting a `T`, as seen by code generic over a [`SpinFamily`].
pub trait MutexApi<T>: Send + Sync {
    /// Exclusive access; dropping it unlocks.
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a;
    /// A lock protecting `value`.
    fn new(value: T) -> Self;
    /// Acquires the lock (a poisoned `std` mutex is entered anyway).
    fn lock(&self) -> Self::Guard<'_>;
    /// Acquires the lock if it is free right now.
    fn try_lock(&self) -> Option<Self::Guard<'_>>;
    /// Mutable access without locking (the borrow proves exclusivity).
    fn get_mut(&mut self) -> &mut T;
}

/// A reader-writer lock algorithm, as a type.
pub trait RwFamily: Send + Sync + 'static {
    /// The kind flag (`--grant-lock`) this family implements.
    const KIND: RwLockKind;
    /// The lock of this family protecting a `T`.
    type Lock<T: Send + Sync>: RwLockApi<T>;
}

/// A mutual-exclusion lock algorithm, as a type.
pub trait SpinFamily: Send + Sync + 'static {
    /// The kind flag (`--queue-lock`) this family implements.
    const KIND: SpinLockKind;
    /// The lock of this family protecting a `T`.
    type Lock<T: Send>: MutexApi<T>;
}

impl<R, T> RwLockApi<T> for lock_api::RwLock<R, T>
where
    R: lock_api::RawRwLock + Send + Sync,
    T: Send + Sync,
{
    type ReadGuard<'a>
        = lock_api::RwLockReadGuard<'a, R, T>
    where
        Self: 'a;
    type WriteGuard<'a>
        = lock_api::RwLockWriteGuard<'a, R, T>
    where
        Self: 'a;
    #[inline]
    fn new(value: T) -> Self {
        lock_api::RwLock::new(value)
    }
    #[inline(always)]
    fn read(&self) -> Self::ReadGuard<'_> {
        lock_api::RwLock::read(self)
    }
    #[inline]
    fn write(&self) -> Self::WriteGuard<'_> {
        lock_api::RwLock::write(self)
    }
    #[inline]
    fn get_mut(&mut self) -> &mut T {
        lock_api::RwLock::get_mut(self)
    }
}

impl<T: Send + Sync> RwLockApi<T> for std::sync::RwLock<T> {
    type ReadGuard<'a>
        = std::sync::RwLockReadGuard<'a, T>
    where
        Self: 'a;
    type WriteGuard<'a>
        = std::sync::RwLockWriteGuard<'a, T>
    where
        Self: 'a;
    #[inline]
    fn new(value: T) -> Self {
        std::sync::RwLock::new(value)
    }
    #[inline]
    fn read(&self) -> Self::ReadGuard<'_> {
        std::sync::RwLock::read(self).unwrap_or_else(|e| e.into_inner())
    }
    #[inline]
    fn write(&self) -> Self::WriteGuard<'_> {
        std::sync::RwLock::write(self).unwrap_or_else(|e| e.into_inner())
    }
    #[inline]
    fn get_mut(&mut self) -> &mut T {
        std::sync::RwLock::get_mut(self).unwrap_or_else(|e| e.into_inner())
    }
}

impl<R, T> MutexApi<T> for lock_api::Mutex<R, T>
where
    R: lock_api::RawMutex + Send + Sync,
    T: Send,
{
    type Guard<'a>
        = lock_api::MutexGuard<'a, R, T>
    where
        Self: 'a;
    #[inline]
    fn new(value: T) -> Self {
        lock_api::Mutex::new(value)
    }
    #[inline]
    fn lock(&self) -> Self::Guard<'_> {
        lock_api::Mutex::lock(self)
    }
    #[inline]
    fn try_lock(&self) -> Option<Self::Guard<'_>> {
        lock_api::Mutex::try_lock(self)
    }
    #[inline]
    fn get_mut(&mut self) -> &mut T {
        lock_api::Mutex::get_mut(self)
    }
}

impl<T: Send> MutexApi<T> for std::sync::Mutex<T> {
    type Guard<'a>
        = std::sync::MutexGuard<'a, T>
    where
        Self: 'a;
    #[inline]
    fn new(value: T) -> Self {
        std::sync::Mutex::new(value)
    }
    #[inline]
    fn lock(&self) -> Self::Guard<'_> {
        std::sync::Mutex::lock(self).unwrap_or_else(|e| e.into_inner())
    }
    #[inline]
    fn try_lock(&self) -> Option<Self::Guard<'_>> {
        match std::sync::Mutex::try_lock(self) {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
    #[inline]
    fn get_mut(&mut self) -> &mut T {
        std::sync::Mutex::get_mut(self).unwrap_or_else(|e| e.into_inner())
    }
}

/// Declares a family marker type.
macro_rules! family {
    ($(#[$m:meta])* $name:ident: RwFamily = $kind:ident, $lock:ty) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;
        impl RwFamily for $name {
            const KIND: RwLockKind = RwLockKind::$kind;
            type Lock<T: Send + Sync> = $lock;
        }
    };
    ($(#[$m:meta])* $name:ident: SpinFamily = $kind:ident, $lock:ty) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;
        impl SpinFamily for $name {
            const KIND: SpinLockKind = SpinLockKind::$kind;
            type Lock<T: Send> = $lock;
        }
    };
}

family!(
    /// Xen's per-CPU rwlock, reader fence moved to the writer (`membarrier`). Build it through
    /// [`with_rw_family!`](crate::with_rw_family), which picks [`PercpuFenced`] where the
    /// asymmetric fence is unavailable (used directly there, every read takes the fenced
    /// out-of-line path: correct, but slower than `PercpuFenced`).
    Percpu: RwFamily = Percpu, crate::PerCpuRwLock<T>
);
family!(
    /// Xen's per-CPU rwlock with a full fence per read (the Xen seed's "after").
    PercpuFenced: RwFamily = PercpuFenced, crate::PerCpuFencedRwLock<T>
);
family!(
    /// One shared atomic word every reader CASes (the Xen seed's "before").
    Plain: RwFamily = Rwlock, crate::PlainRwLock<T>
);
family!(
    /// `std::sync::RwLock`.
    StdRw: RwFamily = Std, std::sync::RwLock<T>
);
family!(
    /// `parking_lot::RwLock`.
    ParkingLotRw: RwFamily = ParkingLot, parking_lot::RwLock<T>
);

#[cfg(not(loom))]
family!(
    /// Linux's paravirt queued spinlock (futex halt, hashed kick at unlock).
    Pvqspin: SpinFamily = Pvqspin, crate::PvQSpinLock<T>
);
#[cfg(not(loom))]
family!(
    /// Linux's queued (MCS) spinlock without PV support (the pvqspinlock seed's "before").
    Qspin: SpinFamily = Qspin, crate::QSpinLock<T>
);
#[cfg(not(loom))]
family!(
    /// FIFO ticket spinlock.
    Ticket: SpinFamily = Ticket, crate::TicketLock<T>
);
#[cfg(not(loom))]
family!(
    /// Test-and-test-and-set spinlock.
    Tas: SpinFamily = Tas, crate::TasLock<T>
);
// Under loom the raw spinlocks have no `lock_api` wrapper (see `spin`): the families stand
// in with parking_lot so that generic code still compiles.
#[cfg(loom)]
family!(
    /// Stand-in under loom.
    Pvqspin: SpinFamily = Pvqspin, parking_lot::Mutex<T>
);
#[cfg(loom)]
family!(
    /// Stand-in under loom.
    Qspin: SpinFamily = Qspin, parking_lot::Mutex<T>
);
#[cfg(loom)]
family!(
    /// Stand-in under loom.
    Ticket: SpinFamily = Ticket, parking_lot::Mutex<T>
);
#[cfg(loom)]
family!(
    /// Stand-in under loom.
    Tas: SpinFamily = Tas, parking_lot::Mutex<T>
);
family!(
    /// `std::sync::Mutex`.
    StdMutex: SpinFamily = Std, std::sync::Mutex<T>
);
family!(
    /// `parking_lot::Mutex`.
    ParkingLotMutex: SpinFamily = ParkingLot, parking_lot::Mutex<T>
);

/// The rwlock kind that is really built for `kind` on this machine: `percpu` becomes
/// `percpu-fenced` where the asymmetric fence (`membarrier`) is unavailable.
pub fn resolve_rw(kind: RwLockKind) -> RwLockKind {
    match kind {
        RwLockKind::Percpu if !crate::rw::asymmetric_fence_available() => RwLockKind::PercpuFenced,
        k => k,
    }
}

/// Evaluates `$body` with `$F` bound to the [`RwFamily`] type of the run-time kind `$kind`
/// (after [`resolve_rw`]): one `match` here, monomorphised code inside.
///
/// ```
/// use pvnet_locks::family::RwFamily;
/// use pvnet_locks::{with_rw_family, RwLockKind};
/// let k = with_rw_family!(RwLockKind::Rwlock, F => F::KIND);
/// assert_eq!(k, RwLockKind::Rwlock);
/// ```
#[macro_export]
macro_rules! with_rw_family {
    ($kind:expr, $F:ident => $body:expr) => {{
        match $crate::family::resolve_rw($kind) {
            $crate::RwLockKind::Percpu => {
                type $F = $crate::family::Percpu;
                $body
            }
            $crate::RwLockKind::PercpuFenced => {
                type $F = $crate::family::PercpuFenced;
                $body
            }
            $crate::RwLockKind::Rwlock => {
                type $F = $crate::family::Plain;
                $body
            }
            $crate::RwLockKind::Std => {
                type $F = $crate::family::StdRw;
                $body
            }
            $crate::RwLockKind::ParkingLot => {
                type $F = $crate::family::ParkingLotRw;
                $body
            }
        }
    }};
}

/// Evaluates `$body` with `$F` bound to the [`SpinFamily`] type of the run-time kind
/// `$kind`: one `match` here, monomorphised code inside.
///
/// Inside `$body`, `$F` is a concrete type: pass it to generic code (`f::<F>()`), where
/// `F::Lock<T>` names the lock.
///
/// ```
/// use pvnet_locks::family::{MutexApi, SpinFamily};
/// use pvnet_locks::{with_spin_family, SpinLockKind};
/// fn bump<F: SpinFamily>(v: u32) -> u32 {
///     let m = F::Lock::new(v);
///     *m.lock() += 1;
///     let v = *m.lock();
///     v
/// }
/// let n = with_spin_family!(SpinLockKind::Pvqspin, F => bump::<F>(41));
/// assert_eq!(n, 42);
/// ```
#[macro_export]
macro_rules! with_spin_family {
    ($kind:expr, $F:ident => $body:expr) => {{
        match $kind {
            $crate::SpinLockKind::Pvqspin => {
                type $F = $crate::family::Pvqspin;
                $body
            }
            $crate::SpinLockKind::Qspin => {
                type $F = $crate::family::Qspin;
                $body
            }
            $crate::SpinLockKind::Ticket => {
                type $F = $crate::family::Ticket;
                $body
            }
            $crate::SpinLockKind::Tas => {
                type $F = $crate::family::Tas;
                $body
            }
            $crate::SpinLockKind::Std => {
                type $F = $crate::family::StdMutex;
                $body
            }
            $crate::SpinLockKind::ParkingLot => {
                type $F = $crate::family::ParkingLotMutex;
                $body
            }
        }
    }};
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn rw_roundtrip<F: RwFamily>() -> RwLockKind {
        let mut l = F::Lock::new(1u32);
        *l.write() += 1;
        assert_eq!(*l.read(), 2);
        *l.get_mut() += 1;
        assert_eq!(*l.read(), 3);
        F::KIND
    }

    fn spin_roundtrip<F: SpinFamily>() -> SpinLockKind {
        let mut l = F::Lock::new(1u32);
        {
            let mut g = l.lock();
            *g += 1;
            assert!(l.try_lock().is_none(), "{}: try_lock while held", F::KIND);
        }
        *l.try_lock().expect("free") += 1;
        assert_eq!(*l.get_mut(), 3);
        F::KIND
    }

    #[test]
    fn every_rw_kind_dispatches_to_its_family() {
        for &k in RwLockKind::ALL {
            let got = with_rw_family!(k, F => rw_roundtrip::<F>());
            assert_eq!(got, resolve_rw(k), "{k}");
        }
    }

    #[test]
    fn every_spin_kind_dispatches_to_its_family() {
        for &k in SpinLockKind::ALL {
            assert_eq!(with_spin_family!(k, F => spin_roundtrip::<F>()), k);
        }
    }

    #[test]
    fn percpu_resolves_by_membarrier_availability() {
        let expect = if crate::rw::asymmetric_fence_available() {
            RwLockKind::Percpu
        } else {
            RwLockKind::PercpuFenced
        };
        assert_eq!(resolve_rw(RwLockKind::Percpu), expect);
        assert_eq!(resolve_rw(RwLockKind::Rwlock), RwLockKind::Rwlock);
    }
}
