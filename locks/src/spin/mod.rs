//! Mutual-exclusion spinlocks, and [`AnySpinLock`], the run-time selected one.
//!
//! Each algorithm lives in its own file and is usable hard-wired as a `lock_api::Mutex`.
//! `AnySpinLock` picks one at run time from a [`SpinLockKind`]; the dispatch is one
//! predictable branch per lock and per unlock.

use crate::SpinLockKind;
use std::ops::{Deref, DerefMut};

/// A mutual-exclusion lock whose algorithm is chosen at run time.
pub enum AnySpinLock<T> {
    // TEMPORARY: pvqspin, qspin, ticket and tas variants land with their algorithms.
    Std(std::sync::Mutex<T>),
    ParkingLot(parking_lot::Mutex<T>),
}

/// Guard of an [`AnySpinLock`]; dropping it unlocks.
pub enum AnySpinLockGuard<'a, T> {
    Std(std::sync::MutexGuard<'a, T>),
    ParkingLot(parking_lot::MutexGuard<'a, T>),
}

impl<T> AnySpinLock<T> {
    /// A lock of kind `kind` protecting `value`.
    pub fn new(kind: SpinLockKind, value: T) -> Self {
        match kind {
            SpinLockKind::Std => AnySpinLock::Std(std::sync::Mutex::new(value)),
            // TEMPORARY mapping until the algorithms land.
            _ => AnySpinLock::ParkingLot(parking_lot::Mutex::new(value)),
        }
    }

    /// The kind this lock was built with.
    pub fn kind(&self) -> SpinLockKind {
        match self {
            AnySpinLock::Std(_) => SpinLockKind::Std,
            AnySpinLock::ParkingLot(_) => SpinLockKind::ParkingLot,
        }
    }

    /// Acquires the lock. A poisoned `std` mutex is entered anyway.
    #[inline]
    pub fn lock(&self) -> AnySpinLockGuard<'_, T> {
        match self {
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
            AnySpinLock::Std(l) => l.get_mut().unwrap_or_else(|e| e.into_inner()),
            AnySpinLock::ParkingLot(l) => l.get_mut(),
        }
    }
}

impl<T> Deref for AnySpinLockGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        match self {
            AnySpinLockGuard::Std(g) => g,
            AnySpinLockGuard::ParkingLot(g) => g,
        }
    }
}

impl<T> DerefMut for AnySpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        match self {
            AnySpinLockGuard::Std(g) => g,
            AnySpinLockGuard::ParkingLot(g) => g,
        }
    }
}
