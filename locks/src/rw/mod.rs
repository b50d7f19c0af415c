//! Reader-writer locks, and [`AnyRwLock`], the run-time selected one.
//!
//! Each algorithm lives in its own file and is usable hard-wired as a `lock_api::RwLock`.
//! `AnyRwLock` picks one at run time from a [`RwLockKind`]; the dispatch is one predictable
//! branch per lock and per unlock.

use crate::RwLockKind;
use std::ops::{Deref, DerefMut};

/// A reader-writer lock whose algorithm is chosen at run time.
pub enum AnyRwLock<T> {
    // TEMPORARY: percpu, percpu-fenced and rwlock variants land with their algorithms.
    Std(std::sync::RwLock<T>),
    ParkingLot(parking_lot::RwLock<T>),
}

/// Shared access guard of an [`AnyRwLock`].
pub enum AnyRwLockReadGuard<'a, T> {
    Std(std::sync::RwLockReadGuard<'a, T>),
    ParkingLot(parking_lot::RwLockReadGuard<'a, T>),
}

/// Exclusive access guard of an [`AnyRwLock`].
pub enum AnyRwLockWriteGuard<'a, T> {
    Std(std::sync::RwLockWriteGuard<'a, T>),
    ParkingLot(parking_lot::RwLockWriteGuard<'a, T>),
}

impl<T> AnyRwLock<T> {
    /// A lock of kind `kind` protecting `value`.
    pub fn new(kind: RwLockKind, value: T) -> Self {
        match kind {
            RwLockKind::Std => AnyRwLock::Std(std::sync::RwLock::new(value)),
            // TEMPORARY mapping until the algorithms land.
            _ => AnyRwLock::ParkingLot(parking_lot::RwLock::new(value)),
        }
    }

    /// The kind this lock was built with.
    pub fn kind(&self) -> RwLockKind {
        match self {
            AnyRwLock::Std(_) => RwLockKind::Std,
            AnyRwLock::ParkingLot(_) => RwLockKind::ParkingLot,
        }
    }

    /// Locks for shared access. A poisoned `std` lock is entered anyway: the protected data
    /// of pvnet's locks is kept consistent by construction, not by unwinding.
    #[inline]
    pub fn read(&self) -> AnyRwLockReadGuard<'_, T> {
        match self {
            AnyRwLock::Std(l) => {
                AnyRwLockReadGuard::Std(l.read().unwrap_or_else(|e| e.into_inner()))
            }
            AnyRwLock::ParkingLot(l) => AnyRwLockReadGuard::ParkingLot(l.read()),
        }
    }

    /// Locks for exclusive access.
    #[inline]
    pub fn write(&self) -> AnyRwLockWriteGuard<'_, T> {
        match self {
            AnyRwLock::Std(l) => {
                AnyRwLockWriteGuard::Std(l.write().unwrap_or_else(|e| e.into_inner()))
            }
            AnyRwLock::ParkingLot(l) => AnyRwLockWriteGuard::ParkingLot(l.write()),
        }
    }

    /// Mutable access without locking (the borrow checker proves exclusivity).
    pub fn get_mut(&mut self) -> &mut T {
        match self {
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
            AnyRwLockReadGuard::Std(g) => g,
            AnyRwLockReadGuard::ParkingLot(g) => g,
        }
    }
}

impl<T> Deref for AnyRwLockWriteGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        match self {
            AnyRwLockWriteGuard::Std(g) => g,
            AnyRwLockWriteGuard::ParkingLot(g) => g,
        }
    }
}

impl<T> DerefMut for AnyRwLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        match self {
            AnyRwLockWriteGuard::Std(g) => g,
            AnyRwLockWriteGuard::ParkingLot(g) => g,
        }
    }
}
