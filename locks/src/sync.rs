//! Atomics, fences and spin hints, swapped for `loom`'s model-checked versions under
//! `--cfg loom`. Every algorithm file takes its synchronisation primitives from here, so the
//! code that is model-checked is the code that ships.

// Not every algorithm uses every primitive in every configuration.
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// Spin-wait hint. Under loom a spin must yield, or the model never lets the other
/// thread run.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
