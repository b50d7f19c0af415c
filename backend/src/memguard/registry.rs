//! The registry of guarded ranges: static slots the `SIGBUS` handler reads without locks.
//!
//! Slot protocol (a seqlock per slot): a writer, holding [`WRITER`], makes `seq` odd, stores
//! the fields, then makes `seq` even again (Release). A reader loads `seq` (Acquire), the
//! fields, then `seq` again after an Acquire fence; equal and even means the fields belong
//! together. Every field is an atomic, so a torn read is a retry, never undefined behaviour.
//! A reader that keeps seeing a slot change gives up on that slot after a few tries (it
//! cannot be the range that faulted: that range's mapping is in use by the faulting thread
//! and is not being registered or released).

use super::MemGuardError;
use std::any::Any;
use std::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};

/// Ranges guarded at once, over all ports (vhost-user allows 509 regions per frontend;
/// stale entries are swept on every registration).
pub(super) const SLOTS: usize = 4096;

pub(super) struct Slot {
    seq: AtomicU32,
    /// Owner index + 1; 0: free.
    owner: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    gran: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    seq: AtomicU32::new(0),
    owner: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    gran: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// Writer-side bookkeeping, by slot: the owner and the mapping's liveness.
struct Side {
    owner: usize,
    life: Weak<dyn Any + Send + Sync>,
}

static WRITER: Mutex<Vec<Option<Side>>> = Mutex::new(Vec::new());

fn writer() -> MutexGuard<'static, Vec<Option<Side>>> {
    let mut w = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    if w.len() < SLOTS {
        w.resize_with(SLOTS, || None);
    }
    w
}

fn store(i: usize, owner: usize, start: usize, end: usize, gran: usize) {
    let s = &TABLE[i];
    let seq = s.seq.load(Ordering::Relaxed);
    s.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    s.owner.store(owner, Ordering::Relaxed);
    s.start.store(start, Ordering::Relaxed);
    s.end.store(end, Ordering::Relaxed);
    s.gran.store(gran, Ordering::Relaxed);
    s.seq.store(seq.wrapping_add(2), Ordering::Release);
}

fn free(side: &mut [Option<Side>], i: usize) {
    side[i] = None;
    store(i, 0, 0, 0, 0);
}

/// Frees the slots whose mapping is gone, and those overlapping `[start, end)`.
fn sweep(side: &mut [Option<Side>], start: usize, end: usize) {
    for i in 0..side.len() {
        let Some(e) = &side[i] else { continue };
        let s = TABLE[i].start.load(Ordering::Relaxed);
        let t = TABLE[i].end.load(Ordering::Relaxed);
        if e.life.strong_count() == 0 || (s < end && start < t) {
            free(side, i);
        }
    }
}

pub(super) fn register(
    owner: usize,
    start: usize,
    len: usize,
    gran: usize,
    life: Weak<dyn Any + Send + Sync>,
) -> Result<(), MemGuardError> {
    let end = start.saturating_add(len);
    let mut side = writer();
    sweep(&mut side, start, end);
    let i = side
        .iter()
        .position(Option::is_none)
        .ok_or(MemGuardError::RegistryFull(SLOTS))?;
    side[i] = Some(Side { owner, life });
    store(i, owner + 1, start, end, gran.max(1));
    Ok(())
}

pub(super) fn release_owner(owner: usize) {
    let mut side = writer();
    for i in 0..side.len() {
        if side[i].as_ref().is_some_and(|e| e.owner == owner) {
            free(&mut side, i);
        }
    }
}

/// Number of registered ranges (tests).
#[cfg(test)]
pub(super) fn registered(owner: usize) -> usize {
    writer()
        .iter()
        .filter(|e| e.as_ref().is_some_and(|e| e.owner == owner))
        .count()
}

/// A guarded range containing `addr`: (owner, range start, range end, granularity).
/// Async-signal-safe: atomics only, bounded.
pub(super) fn find(addr: usize) -> Option<(usize, usize, usize, usize)> {
    for s in TABLE.iter() {
        for _ in 0..16 {
            let a = s.seq.load(Ordering::Acquire);
            if a & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let owner = s.owner.load(Ordering::Relaxed);
            let start = s.start.load(Ordering::Relaxed);
            let end = s.end.load(Ordering::Relaxed);
            let gran = s.gran.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) != a {
                continue;
            }
            if owner != 0 && start <= addr && addr < end {
                return Some((owner - 1, start, end, gran));
            }
            break;
        }
    }
    None
}
