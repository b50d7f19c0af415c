//! Mutual-exclusion spinlocks, and [`AnySpinLock`], the run-time selected one.
//!
//! Each algorithm lives in its own file and is usable hard-wired as a `lock_api::Mutex`
//! ([`QSpinLock`], [`PvQSpinLock`], [`TicketLock`], [`TasLock`]). `AnySpinLock` picks one at
//! run time from a [`SpinLockKind`]; the dispatch is one predictable branch per lock and per
//! unlock.
//!
//! Under `--cfg loom` the raw locks are model-checked directly (their `new` cannot be
//! `const`, so they do not implement `lock_api::RawMutex` there) and `AnySpinLock` maps the
//! algorithm kinds to `parking_lot`.

pub mod futex;
pub(crate) mod node;
pub mod pvhash;
pub mod pvqspin;
pub mod qspin;
pub mod tas;
pub mod ticket;

pub use pvqspin::RawPvQSpinLock;
pub use qspin::RawQSpinLock;
pub use tas::RawTasLock;
pub use ticket::RawTicketLock;

use crate::SpinLockKind;
use std::ops::{Deref, DerefMut};

/// Linux's queued spinlock, hard-wired.
#[cfg(not(loom))]
pub type QSpinLock<T> = lock_api::Mutex<RawQSpinLock, T>;
/// Guard of a [`QSpinLock`].
#[cfg(not(loom))]
pub type QSpinLockGuard<'a, T> = lock_api::MutexGuard<'a, RawQSpinLock, T>;
/// The paravirt queued spinlock, hard-wired: waiters queue (MCS) and sleep on a futex
/// after a short spin; the unlocker wakes the queue head only when it went to sleep.
///
/// # Examples
///
/// ```
/// use pvnet_locks::PvQSpinLock;
///
/// let ring = PvQSpinLock::new(Vec::<u16>::with_capacity(256));
/// ring.lock().push(7);
/// let mut g = ring.lock();
/// assert!(ring.try_lock().is_none()); // held: a second taker would queue
/// g.push(8);
/// drop(g);
/// assert_eq!(*ring.lock(), [7, 8]);
/// ```
#[cfg(not(loom))]
pub type PvQSpinLock<T> = lock_api::Mutex<RawPvQSpinLock, T>;
/// Guard of a [`PvQSpinLock`].
#[cfg(not(loom))]
pub type PvQSpinLockGuard<'a, T> = lock_api::MutexGuard<'a, RawPvQSpinLock, T>;
/// Ticket spinlock, hard-wired.
#[cfg(not(loom))]
pub type TicketLock<T> = lock_api::Mutex<RawTicketLock, T>;
/// Guard of a [`TicketLock`].
#[cfg(not(loom))]
pub type TicketLockGuard<'a, T> = lock_api::MutexGuard<'a, RawTicketLock, T>;
/// Test-and-test-and-set spinlock, hard-wired.
#[cfg(not(loom))]
pub type TasLock<T> = lock_api::Mutex<RawTasLock, T>;
/// Guard of a [`TasLock`].
#[cfg(not(loom))]
pub type TasLockGuard<'a, T> = lock_api::MutexGuard<'a, RawTasLock, T>;

/// A mutual-exclusion lock whose algorithm is chosen at run time.
///
/// # Examples
///
/// ```
/// use pvnet_locks::{AnySpinLock, SpinLockKind};
/// use std::sync::Arc;
///
/// let counter = Arc::new(AnySpinLock::new(SpinLockKind::Pvqspin, 0u32));
/// let workers: Vec<_> = (0..3)
///     .map(|_| {
///         let c = counter.clone();
///         std::thread::spawn(move || {
///             for _ in 0..1000 {
///                 *c.lock() += 1;
///             }
///         })
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// assert_eq!(*counter.lock(), 3000);
/// ```
pub enum AnySpinLock<T> {
    #[cfg(not(loom))]
    Pvqspin(PvQSpinLock<T>),
    #[cfg(not(loom))]
    Qspin(QSpinLock<T>),
    #[cfg(not(loom))]
    Ticket(TicketLock<T>),
    #[cfg(not(loom))]
    Tas(TasLock<T>),
    Std(std::sync::Mutex<T>),
    ParkingLot(parking_lot::Mutex<T>),
}

/// Guard of an [`AnySpinLock`]; dropping it unlocks.
pub enum AnySpinLockGuard<'a, T> {
    #[cfg(not(loom))]
    Pvqspin(PvQSpinLockGuard<'a, T>),
    #[cfg(not(loom))]
    Qspin(QSpinLockGuard<'a, T>),
    #[cfg(not(loom))]
    Ticket(TicketLockGuard<'a, T>),
    #[cfg(not(loom))]
    Tas(TasLockGuard<'a, T>),
    Std(std::sync::MutexGuard<'a, T>),
    ParkingLot(parking_lot::MutexGuard<'a, T>),
}

/// Applies `$body` to the inner lock/guard of every variant.
macro_rules! dispatch {
    ($self:expr, $ty:ident, $x:ident => $body:expr) => {
        match $self {
            #[cfg(not(loom))]
            $ty::Pvqspin($x) => $body,
            #[cfg(not(loom))]
            $ty::Qspin($x) => $body,
            #[cfg(not(loom))]
            $ty::Ticket($x) => $body,
            #[cfg(not(loom))]
            $ty::Tas($x) => $body,
            $ty::Std($x) => $body,
            $ty::ParkingLot($x) => $body,
        }
    };
}

impl<T> AnySpinLock<T> {
    /// A lock of kind `kind` protecting `value`.
    pub fn new(kind: SpinLockKind, value: T) -> Self {
        match kind {
            #[cfg(not(loom))]
            SpinLockKind::Pvqspin => AnySpinLock::Pvqspin(PvQSpinLock::new(value)),
            #[cfg(not(loom))]
            SpinLockKind::Qspin => AnySpinLock::Qspin(QSpinLock::new(value)),
            #[cfg(not(loom))]
            SpinLockKind::Ticket => AnySpinLock::Ticket(TicketLock::new(value)),
            #[cfg(not(loom))]
            SpinLockKind::Tas => AnySpinLock::Tas(TasLock::new(value)),
            SpinLockKind::Std => AnySpinLock::Std(std::sync::Mutex::new(value)),
            #[cfg(loom)]
            SpinLockKind::ParkingLot
            | SpinLockKind::Pvqspin
            | SpinLockKind::Qspin
            | SpinLockKind::Ticket
            | SpinLockKind::Tas => AnySpinLock::ParkingLot(parking_lot::Mutex::new(value)),
            #[cfg(not(loom))]
            SpinLockKind::ParkingLot => AnySpinLock::ParkingLot(parking_lot::Mutex::new(value)),
        }
    }

    /// The kind this lock was built with.
    pub fn kind(&self) -> SpinLockKind {
        match self {
            #[cfg(not(loom))]
            AnySpinLock::Pvqspin(_) => SpinLockKind::Pvqspin,
            #[cfg(not(loom))]
            AnySpinLock::Qspin(_) => SpinLockKind::Qspin,
            #[cfg(not(loom))]
            AnySpinLock::Ticket(_) => SpinLockKind::Ticket,
            #[cfg(not(loom))]
            AnySpinLock::Tas(_) => SpinLockKind::Tas,
            AnySpinLock::Std(_) => SpinLockKind::Std,
            AnySpinLock::ParkingLot(_) => SpinLockKind::ParkingLot,
        }
    }

    /// Acquires the lock. A poisoned `std` mutex is entered anyway.
    #[inline]
    pub fn lock(&self) -> AnySpinLockGuard<'_, T> {
        match self {
            #[cfg(not(loom))]
            AnySpinLock::Pvqspin(l) => AnySpinLockGuard::Pvqspin(l.lock()),
            #[cfg(not(loom))]
            AnySpinLock::Qspin(l) => AnySpinLockGuard::Qspin(l.lock()),
            #[cfg(not(loom))]
            AnySpinLock::Ticket(l) => AnySpinLockGuard::Ticket(l.lock()),
            #[cfg(not(loom))]
            AnySpinLock::Tas(l) => AnySpinLockGuard::Tas(l.lock()),
            AnySpinLock::Std(l) => {
                AnySpinLockGuard::Std(l.lock().unwrap_or_else(|e| e.into_inner()))
            }
            AnySpinLock::ParkingLot(l) => AnySpinLockGuard::ParkingLot(l.lock()),
        }
    }

    /// Acquires the lock if it is free right now.
    #[inline]
    pub fn try_lock(&self) -> Option<AnySpinLockGuard<'_, T>> {
        match self {
            #[cfg(not(loom))]
            AnySpinLock::Pvqspin(l) => l.try_lock().map(AnySpinLockGuard::Pvqspin),
            #[cfg(not(loom))]
            AnySpinLock::Qspin(l) => l.try_lock().map(AnySpinLockGuard::Qspin),
            #[cfg(not(loom))]
            AnySpinLock::Ticket(l) => l.try_lock().map(AnySpinLockGuard::Ticket),
            #[cfg(not(loom))]
            AnySpinLock::Tas(l) => l.try_lock().map(AnySpinLockGuard::Tas),
            AnySpinLock::Std(l) => match l.try_lock() {
                Ok(g) => Some(AnySpinLockGuard::Std(g)),
                Err(std::sync::TryLockError::Poisoned(e)) => {
                    Some(AnySpinLockGuard::Std(e.into_inner()))
                }
                Err(std::sync::TryLockError::WouldBlock) => None,
            },
            AnySpinLock::ParkingLot(l) => l.try_lock().map(AnySpinLockGuard::ParkingLot),
        }
    }

    /// Mutable access without locking (the borrow checker proves exclusivity).
    pub fn get_mut(&mut self) -> &mut T {
        match self {
            #[cfg(not(loom))]
            AnySpinLock::Pvqspin(l) => l.get_mut(),
            #[cfg(not(loom))]
            AnySpinLock::Qspin(l) => l.get_mut(),
            #[cfg(not(loom))]
            AnySpinLock::Ticket(l) => l.get_mut(),
            #[cfg(not(loom))]
            AnySpinLock::Tas(l) => l.get_mut(),
            AnySpinLock::Std(l) => l.get_mut().unwrap_or_else(|e| e.into_inner()),
            AnySpinLock::ParkingLot(l) => l.get_mut(),
        }
    }
}

impl<T> Deref for AnySpinLockGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        dispatch!(self, AnySpinLockGuard, g => g)
    }
}

impl<T> DerefMut for AnySpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        dispatch!(self, AnySpinLockGuard, g => g)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds_reports_its_kind_and_excludes() {
        for &k in SpinLockKind::ALL {
            let mut l = AnySpinLock::new(k, 0u32);
            assert_eq!(l.kind(), k);
            {
                let mut g = l.lock();
                *g += 1;
                assert!(l.try_lock().is_none(), "{k}: try_lock while held");
            }
            *l.try_lock().expect("free") += 1;
            assert_eq!(*l.get_mut(), 2);
        }
    }
}
