//! `PerCpuRwLock`: Xen's per-CPU reader-writer lock (`xen/common/rwlock.c`,
//! `_percpu_read_lock` / `_percpu_write_lock`) in user space, "CPU" being a thread index
//! from [`registry`](crate::registry).
//!
//! # State
//! * Per thread, one cache-padded *block* of [`SLOTS`] reader slots, in a process-wide table
//!   indexed by `registry::current()` (all per-CPU rwlocks form one lock class, like Xen's
//!   `DEFINE_PERCPU_RWLOCK_GLOBAL`). A slot holds the address of a lock this thread is
//!   reading through the fast path (0 = free) and a recursion depth that only its owner
//!   touches.
//! * Per lock: `writer_activating` (a flag) and an underlying fair rwlock (`parking_lot`'s
//!   raw rwlock: once a writer waits, new non-recursive readers queue behind it, so readers
//!   cannot starve writers).
//!
//! # Protocol
//! Reader fast path: find this lock's address in the block (recursive read: depth + 1, done)
//! or take the first free slot; store the lock's address in it; **fence**; load
//! `writer_activating` (Acquire). If clear, the read lock is held — no shared cache line was
//! written. If set, clear the slot, take the underlying read lock (queueing fairly behind the
//! writer), store the slot again, drop the underlying read lock: from then on the slot holds
//! the lock, exactly as in Xen. If no slot is free (a thread reading more than [`SLOTS`]
//! distinct locks at once) or the thread has no index (thread-local teardown), the read
//! lock is taken on the underlying rwlock itself, in its recursive form (counted as a read
//! slow path). Unlock finds the slot by address (depth - 1, or clear it with Release); if no
//! slot names the lock, the read was a fallback and unlocks the underlying rwlock.
//! The common case is kept branchy and short: the block pointer is one const thread-local
//! load; a thread holding no per-CPU read lock takes slot 0 without searching, and unlock
//! tries slot 0 first (a lock occupies at most one slot of a thread).
//!
//! Writer: take the underlying write lock (excluding writers and slow-path readers); set
//! `writer_activating`; **fence**; scan the slots of threads `0..high_water()` and wait until
//! none names the lock (Acquire loads, pairing with the readers' Release clears). Unlock:
//! clear `writer_activating` (Release), release the underlying write lock.
//!
//! # Why the writer never misses a reader (Dekker)
//! Reader: `store slot` → F_r → `load flag`. Writer: `store flag` → F_w → `load slots`.
//! * `percpu-fenced`: F_r and F_w are `fence(SeqCst)`. The two fences are totally ordered.
//!   If F_r comes first, the writer's slot load (after F_w) must observe the slot store (or a
//!   later one): the writer waits for that reader. If F_w comes first, the reader's flag load
//!   observes the flag: the reader backs off to the underlying lock, which the writer holds.
//!   Either way they cannot both proceed. The same argument covers `high_water()`: it is
//!   loaded after F_w, and a new thread raised it before its first slot store.
//! * `percpu` (asymmetric): F_r is only a compiler fence (no instruction), F_w is
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every thread of the process
//!   execute a full barrier at some point of its program order between the syscall's entry
//!   and return (IPI, or the context switch of a thread that is not running). If the
//!   reader's slot store precedes that barrier, the store is visible to the writer's scan,
//!   which runs after the syscall; otherwise the reader's flag load follows the barrier, which
//!   follows the writer's flag store, so the load sees the flag. The compiler fence keeps the
//!   store before the load in program order. Where membarrier is unavailable the `percpu`
//!   flavour takes the fenced path on both sides (decided once per process).
//!
//! Readers that saw the flag clear and the writer's data: a flag load that reads the
//! previous writer's Release clear synchronises with it, so that writer's critical section
//! happens-before the reader's; the writer's Acquire slot load that sees a reader's Release
//! clear orders the reader's critical section before the writer's.
//!
//! # Nesting rules (enforced by construction)
//! * Different locks: up to [`SLOTS`] at once on the fast path (pvnet's grant copy reads two
//!   grant tables); beyond that, correct but slow (underlying rwlock, counted).
//! * The same lock twice on one thread: supported. A recursive read finds its own slot and
//!   only bumps the depth, without looking at `writer_activating`, so it never waits for a
//!   writer that is waiting for this thread. A recursive read of a lock first taken through
//!   the fallback uses the underlying lock's recursive read, which does not queue behind
//!   waiting writers either.
//! * Read then write of the same lock on one thread deadlocks (as for every rwlock).
//! * Two threads that nest reads of the same two locks in *opposite* orders can deadlock
//!   when both locks have a writer waiting (each reader waits behind one writer, each writer
//!   waits for the other reader), as with any writer-preferring rwlock: nest in one global
//!   order (e.g. by lock address).
//! * Guards are `!Send` (`GuardNoSend`): a read lock lives in its thread's slot.
//! * A thread cannot exit holding a read guard except by leaking it (`mem::forget`), which
//!   is a leaked lock: writers then wait forever. When a thread's index is released with a
//!   slot still in use (leaked, or held by a later thread-local destructor), the index is
//!   retired, never reused, and a warning is logged; guards dropped during thread-local
//!   teardown still find their slot.

use super::backoff::Backoff;
use super::membarrier::{asymmetric_fence_available, heavy_barrier};
use crate::registry;
use crate::stats::{rw_add, Event};
use crate::sync::{compiler_fence_seqcst, fence, AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use crate::RwLockKind;
use crossbeam_utils::CachePadded;
use std::cell::Cell;

#[cfg(not(loom))]
use lock_api::{RawRwLock as _, RawRwLockRecursive as _};

/// Fast-path reader slots per thread (distinct locks one thread can read at once without
/// falling back to the underlying rwlock).
pub const SLOTS: usize = 4;

/// The fair underlying rwlock. Under loom, the (model-checked) plain rwlock stands in for
/// parking_lot, whose parking is invisible to loom.
#[cfg(not(loom))]
type Fair = parking_lot::RawRwLock;
#[cfg(loom)]
type Fair = super::plain::RawPlainRwLock;

/// One thread's reader slots.
struct Block {
    lock: [AtomicUsize; SLOTS],
    /// Extra recursive reads of `lock[i]`; written and read by the owner thread only.
    depth: [AtomicU32; SLOTS],
}

impl Block {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Block {
            lock: [const { AtomicUsize::new(0) }; SLOTS],
            depth: [const { AtomicU32::new(0) }; SLOTS],
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Block {
            lock: std::array::from_fn(|_| AtomicUsize::new(0)),
            depth: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.lock.iter().all(|s| s.load(Relaxed) == 0)
    }
}

#[cfg(not(loom))]
static TABLE: [CachePadded<Block>; registry::MAX_THREADS] =
    [const { CachePadded::new(Block::new()) }; registry::MAX_THREADS];

#[cfg(not(loom))]
#[inline]
fn table() -> &'static [CachePadded<Block>] {
    &TABLE
}

/// Blocks modelled under loom (threads beyond it take the fallback path).
#[cfg(loom)]
const LOOM_BLOCKS: usize = 4;

#[cfg(loom)]
loom::lazy_static! {
    static ref TABLE: Vec<CachePadded<Block>> =
        (0..LOOM_BLOCKS).map(|_| CachePadded::new(Block::new())).collect();
}

#[cfg(loom)]
fn table() -> &'static [CachePadded<Block>] {
    &TABLE
}

// This thread's block, cached so the fast path needs one plain thread-local load (no
// lazy-initialisation or destructor-state check). Const-initialised and without destructor,
// so it stays readable during thread teardown. Set on first use from the registry index;
// cleared when the index goes back to the registry; kept (the block stays this thread's)
// when the index is retired because a slot is still in use.
#[cfg(not(loom))]
thread_local! {
    static MINE: Cell<*const Block> = const { Cell::new(std::ptr::null()) };
}
#[cfg(loom)]
loom::thread_local! {
    static MINE: Cell<*const Block> = Cell::new(std::ptr::null());
}

/// Called by the registry, on the exiting thread, when it releases `idx`; `false` retires
/// the index.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn thread_exit(idx: usize) -> bool {
    let Some(b) = table().get(idx) else {
        return true;
    };
    if b.is_empty() {
        let _ = MINE.try_with(|m| m.set(std::ptr::null()));
        return true;
    }
    log::warn!(
        "pvnet-locks: a thread exits with a per-CPU read lock still held (leaked guard?); \
         thread index {idx} is retired"
    );
    false
}

/// This thread's block, if it has one.
#[inline]
fn my_block() -> Option<&'static Block> {
    let p = MINE.try_with(Cell::get).unwrap_or(std::ptr::null());
    if p.is_null() {
        return my_block_slow();
    }
    // SAFETY: `MINE` only ever holds a pointer into the never-freed `TABLE`, to the block of
    // this thread's (live or retired) index.
    Some(unsafe { &*p })
}

#[cold]
fn my_block_slow() -> Option<&'static Block> {
    // During teardown, after the index went back to the registry, `current()` is `None`:
    // the caller then uses the underlying lock.
    let b: &'static Block = table().get(registry::current()?)?;
    let _ = MINE.try_with(|m| m.set(b as *const Block));
    Some(b)
}

/// Raw per-CPU rwlock; `FENCED = true` is `percpu-fenced`, `false` is `percpu` (asymmetric
/// fence). Use it through [`PerCpuRwLock`](crate::PerCpuRwLock) /
/// [`PerCpuFencedRwLock`](crate::PerCpuFencedRwLock).
pub struct RawPerCpuRwLock<const FENCED: bool> {
    writer_activating: AtomicBool,
    fair: Fair,
}

impl<const FENCED: bool> RawPerCpuRwLock<FENCED> {
    const KIND: RwLockKind = if FENCED {
        RwLockKind::PercpuFenced
    } else {
        RwLockKind::Percpu
    };

    /// An unlocked lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawPerCpuRwLock {
            writer_activating: AtomicBool::new(false),
            fair: <Fair as lock_api::RawRwLock>::INIT,
        }
    }

    /// An unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawPerCpuRwLock {
            writer_activating: AtomicBool::new(false),
            fair: Fair::new(),
        }
    }

    /// Whether this lock's reader fast path skips the hardware fence.
    #[inline]
    pub fn uses_asymmetric_fence(&self) -> bool {
        !FENCED && asymmetric_fence_available()
    }

    #[inline]
    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Finds this lock in `b`: `Ok(slot)` if this thread already reads it there,
    /// `Err(Some(free slot))` or `Err(None)` when all slots are taken.
    #[inline]
    fn find(b: &Block, me: usize) -> Result<usize, Option<usize>> {
        let mut free = None;
        for (i, s) in b.lock.iter().enumerate() {
            let v = s.load(Relaxed);
            if v == me {
                return Ok(i);
            }
            if v == 0 && free.is_none() {
                free = Some(i);
            }
        }
        Err(free)
    }

    /// Recursive read through slot `i`; `false` if the depth counter is saturated.
    #[inline]
    fn nest(b: &Block, i: usize) -> bool {
        let d = b.depth[i].load(Relaxed);
        match d.checked_add(1) {
            Some(d) => {
                b.depth[i].store(d, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Publishes slot `i`, then checks for a writer; `true` if the fast path holds the lock.
    #[inline]
    fn publish(&self, b: &Block, i: usize, me: usize) -> bool {
        b.lock[i].store(me, Relaxed);
        if FENCED || !asymmetric_fence_available() {
            fence(SeqCst);
        } else {
            compiler_fence_seqcst();
        }
        if !self.writer_activating.load(Acquire) {
            return true;
        }
        // Let the writer know this thread does not hold the lock.
        b.lock[i].store(0, Relaxed);
        false
    }

    /// Locks for shared access.
    #[inline]
    pub fn lock_shared(&self) {
        let me = self.addr();
        match my_block() {
            // Common case, kept branchy so the slot address is a constant: this thread reads
            // no other per-CPU lock, so this cannot be a recursive read; take slot 0.
            Some(b) if b.is_empty() => {
                if !self.publish(b, 0, me) {
                    self.read_behind_writer(b, 0, me);
                }
            }
            Some(b) => self.lock_shared_nested(b, me),
            None => self.read_fallback(),
        }
    }

    /// Read lock while this thread already reads some per-CPU lock (maybe this one).
    #[inline(never)]
    fn lock_shared_nested(&self, b: &Block, me: usize) {
        match Self::find(b, me) {
            Ok(i) if Self::nest(b, i) => {}
            Err(Some(i)) => {
                if !self.publish(b, i, me) {
                    self.read_behind_writer(b, i, me);
                }
            }
            Ok(_) | Err(None) => self.read_fallback(),
        }
    }

    /// Xen's slow path: wait on the underlying read lock (fair, behind the writer), publish
    /// the slot while holding it, then drop it.
    #[cold]
    fn read_behind_writer(&self, b: &Block, i: usize, me: usize) {
        self.fair.lock_shared();
        b.lock[i].store(me, Relaxed);
        // SAFETY: taken just above.
        unsafe { self.fair.unlock_shared() };
        rw_add(Self::KIND, Event::ReadSlowPath, 1);
    }

    /// Read lock on the underlying rwlock (no slot available).
    #[cold]
    fn read_fallback(&self) {
        self.fair.lock_shared_recursive();
        rw_add(Self::KIND, Event::ReadSlowPath, 1);
    }

    /// Shared access without waiting.
    #[inline]
    pub fn try_lock_shared(&self) -> bool {
        let me = self.addr();
        if let Some(b) = my_block() {
            match Self::find(b, me) {
                Ok(i) if Self::nest(b, i) => return true,
                Ok(_) => {}
                Err(Some(i)) => {
                    if self.publish(b, i, me) {
                        return true;
                    }
                    if !self.fair.try_lock_shared() {
                        return false;
                    }
                    b.lock[i].store(me, Relaxed);
                    // SAFETY: taken just above.
                    unsafe { self.fair.unlock_shared() };
                    return true;
                }
                Err(None) => {}
            }
        }
        self.fair.try_lock_shared_recursive()
    }

    /// Releases shared access.
    ///
    /// # Safety
    /// This thread holds a shared lock of `self` taken with `lock_shared`/`try_lock_shared`.
    #[inline]
    pub unsafe fn unlock_shared(&self) {
        let me = self.addr();
        if let Some(b) = my_block() {
            // Common case: the only read lock, in slot 0, not recursive. (A lock occupies at
            // most one slot of a thread: recursion bumps the depth instead.)
            if b.lock[0].load(Relaxed) == me && b.depth[0].load(Relaxed) == 0 {
                b.lock[0].store(0, Release);
                return;
            }
        }
        // SAFETY: forwarded (this thread holds a shared lock of `self`).
        unsafe { self.unlock_shared_nested() };
    }

    /// `unlock_shared` when the lock is not the thread's only, non-recursive read (or the
    /// thread has no block). Out of line so that the common unlock stays small enough to be
    /// inlined at every guard drop.
    ///
    /// # Safety
    /// As for `unlock_shared`.
    #[inline(never)]
    unsafe fn unlock_shared_nested(&self) {
        let me = self.addr();
        if let Some(b) = my_block() {
            if let Ok(i) = Self::find(b, me) {
                let d = b.depth[i].load(Relaxed);
                if d > 0 {
                    b.depth[i].store(d - 1, Relaxed);
                } else {
                    b.lock[i].store(0, Release);
                }
                return;
            }
        }
        // SAFETY: no slot names the lock, so this thread's read went to the underlying lock.
        unsafe { self.fair.unlock_shared() };
    }

    /// The writer's side of the Dekker pair.
    fn writer_barrier(&self) {
        if self.uses_asymmetric_fence() {
            heavy_barrier();
            rw_add(Self::KIND, Event::Membarriers, 1);
        } else {
            fence(SeqCst);
        }
    }

    fn slots_to_scan() -> &'static [CachePadded<Block>] {
        let t = table();
        &t[..registry::high_water().min(t.len())]
    }

    fn any_reader(&self) -> bool {
        let me = self.addr();
        Self::slots_to_scan()
            .iter()
            .any(|b| b.lock.iter().any(|s| s.load(Acquire) == me))
    }

    /// Locks for exclusive access.
    pub fn lock_exclusive(&self) {
        self.fair.lock_exclusive();
        self.writer_activating.store(true, Relaxed);
        self.writer_barrier();
        let me = self.addr();
        let mut backoff = Backoff::new();
        for b in Self::slots_to_scan() {
            for s in &b.lock {
                while s.load(Acquire) == me {
                    backoff.snooze();
                }
            }
        }
        rw_add(Self::KIND, Event::WriteLocks, 1);
        if backoff.spins > 0 {
            rw_add(Self::KIND, Event::WriterWaitSpins, backoff.spins);
        }
    }

    /// Exclusive access if no one holds the lock now.
    pub fn try_lock_exclusive(&self) -> bool {
        if !self.fair.try_lock_exclusive() {
            return false;
        }
        self.writer_activating.store(true, Relaxed);
        self.writer_barrier();
        if self.any_reader() {
            // SAFETY: taken above.
            unsafe { self.unlock_exclusive() };
            return false;
        }
        rw_add(Self::KIND, Event::WriteLocks, 1);
        true
    }

    /// Releases exclusive access.
    ///
    /// # Safety
    /// The caller holds the exclusive lock.
    #[inline]
    pub unsafe fn unlock_exclusive(&self) {
        self.writer_activating.store(false, Release);
        // SAFETY: the caller holds the exclusive lock, hence the underlying write lock.
        unsafe { self.fair.unlock_exclusive() };
    }

    /// Whether any thread holds (or a writer is acquiring) the lock: a racy snapshot.
    pub fn is_locked(&self) -> bool {
        self.writer_activating.load(Relaxed) || self.fair.is_locked() || self.any_reader()
    }
}

impl<const FENCED: bool> Default for RawPerCpuRwLock<FENCED> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: readers and writers exclude each other by the Dekker argument of the header;
// writers exclude writers through the underlying rwlock. Read guards are not Send because
// a read lock lives in the locking thread's slot.
#[cfg(not(loom))]
unsafe impl<const FENCED: bool> lock_api::RawRwLock for RawPerCpuRwLock<FENCED> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();
    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock_shared(&self) {
        RawPerCpuRwLock::lock_shared(self)
    }
    #[inline]
    fn try_lock_shared(&self) -> bool {
        RawPerCpuRwLock::try_lock_shared(self)
    }
    #[inline]
    unsafe fn unlock_shared(&self) {
        // SAFETY: forwarded from lock_api's contract (this thread holds a shared lock).
        unsafe { RawPerCpuRwLock::unlock_shared(self) }
    }
    #[inline]
    fn lock_exclusive(&self) {
        RawPerCpuRwLock::lock_exclusive(self)
    }
    #[inline]
    fn try_lock_exclusive(&self) -> bool {
        RawPerCpuRwLock::try_lock_exclusive(self)
    }
    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: forwarded from lock_api's contract (the exclusive lock is held).
        unsafe { RawPerCpuRwLock::unlock_exclusive(self) }
    }
    #[inline]
    fn is_locked(&self) -> bool {
        RawPerCpuRwLock::is_locked(self)
    }
}

#[cfg(all(test, not(loom)))]
#[path = "percpu_tests.rs"]
mod tests;
