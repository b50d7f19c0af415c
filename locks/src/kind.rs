//! Lock kinds, selectable at run time (command-line flags parse into these).

use std::fmt;
use std::str::FromStr;

/// Reader-writer lock back-ends (for the grant table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RwLockKind {
    /// Xen-style per-CPU rwlock, reader fast path with a compiler fence only;
    /// the writer pays with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`.
    /// Falls back to `percpu-fenced` where membarrier is unavailable.
    Percpu,
    /// Xen-style per-CPU rwlock with a full fence on the reader fast path (the seed's "after").
    PercpuFenced,
    /// Plain single-word atomic rwlock: every reader CASes one shared word (the seed's "before").
    Rwlock,
    /// `std::sync::RwLock`.
    Std,
    /// `parking_lot::RwLock`.
    ParkingLot,
}

/// Mutual-exclusion spinlock back-ends (for RX queues shared by worker threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SpinLockKind {
    /// Paravirt-aware queued spinlock: waiters sleep on a futex when spinning is futile,
    /// kicked once at unlock time through the hashed-waiter protocol.
    Pvqspin,
    /// Linux's queued (MCS) spinlock without PV support (the seed's "before").
    Qspin,
    /// FIFO ticket spinlock.
    Ticket,
    /// Test-and-test-and-set spinlock.
    Tas,
    /// `std::sync::Mutex`.
    Std,
    /// `parking_lot::Mutex`.
    ParkingLot,
}

macro_rules! kind_strings {
    ($ty:ident { $($var:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            /// Every kind, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$var),*];
            /// The flag spelling of this kind.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$var => $s),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = UnknownKind;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($ty::$var),)*
                    _ => Err(UnknownKind {
                        given: s.to_string(),
                        expected: &[$($s),*],
                    }),
                }
            }
        }
    };
}

kind_strings!(RwLockKind {
    Percpu => "percpu",
    PercpuFenced => "percpu-fenced",
    Rwlock => "rwlock",
    Std => "std",
    ParkingLot => "parking-lot",
});

kind_strings!(SpinLockKind {
    Pvqspin => "pvqspin",
    Qspin => "qspin",
    Ticket => "ticket",
    Tas => "tas",
    Std => "std",
    ParkingLot => "parking-lot",
});

/// A lock-kind string that names no known kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lock kind '{given}' (expected one of: {})", expected.join(", "))]
pub struct UnknownKind {
    given: String,
    expected: &'static [&'static str],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        for k in RwLockKind::ALL {
            assert_eq!(k.as_str().parse::<RwLockKind>().unwrap(), *k);
        }
        for k in SpinLockKind::ALL {
            assert_eq!(k.to_string().parse::<SpinLockKind>().unwrap(), *k);
        }
        let e = "percpux".parse::<RwLockKind>().unwrap_err().to_string();
        assert!(e.contains("percpux") && e.contains("percpu-fenced"), "{e}");
    }
}
