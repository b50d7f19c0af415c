//! `PerCpuRwLock`: Xen's per-CPU reader-writer lock (`xen/common/rwlock.c`,
//! `_percpu_read_lock` / `_percpu_write_lock`) in user space, "CPU" being a thread index
//! from [`registry`](crate::registry).
//!
//! # State
//! * Per thread, one cache-padded *block* of [`SLOTS`] reader slots, in a process-wide table
//!   indexed by `registry::current()` (all per-CPU rwlocks form one lock class, like Xen's
//!   `DEFINE_PERCPU_RWLOCK_GLOBAL`). A slot holds the address of a lock this thread is
//!   reading through the fast path (0 = free), and a recursion depth that only its owner
//!   touches. Bit 0 of slot 0 (`TAG`; lock addresses are even) says "this thread is in a
//!   *nested* state": a slot other than 0 is in use or some depth is not 0. So slot 0 alone
//!   tells the common case apart: `0` = the thread reads no per-CPU lock; the bare address
//!   of a lock = it reads exactly that one, once. Writers compare slots with `TAG` masked.
//! * Per lock: `writer_activating` (a flag) and an underlying fair rwlock (`parking_lot`'s
//!   raw rwlock: once a writer waits, new non-recursive readers queue behind it, so readers
//!   cannot starve writers).
//!
//! # Read fast path (a handful of instructions, inlined at every guard)
//! Lock: load this thread's block pointer (one thread-local load); if slot 0 is 0, store
//! the lock's address in it; **fence**; load `writer_activating` (Acquire); if clear, the
//! read lock is held and no shared cache line was written. Unlock: if slot 0 holds exactly
//! this lock's address, store 0 (Release). Everything else — recursion, a second lock, a
//! writer active, the first read of a thread — is out of line (`#[cold]`).
//!
//! Which fence is decided before the fast path is ever taken, never per read:
//! `percpu-fenced` uses `fence(SeqCst)`; `percpu` a compiler fence, and its fast path reads
//! a second block pointer (`MINE_ASYM`) that is set only once the asymmetric fence
//! (`membarrier`, see [`membarrier`](super::membarrier)) is registered. Until a thread's
//! pointers are set they point at a shared *sentinel* block whose slot 0 is never 0 and
//! never a lock address, so the fast path needs no null check: it simply fails over to the
//! slow path. Where membarrier is unavailable `MINE_ASYM` stays at the sentinel, so a
//! hard-wired `percpu` lock runs every read
//! through the out-of-line path with a full fence (correct, slower: build such locks
//! through [`resolve_rw`](crate::family::resolve_rw) / `with_rw_family!` / `AnyRwLock`,
//! which pick `percpu-fenced` there).
//!
//! # Slow paths
//! * Nested read: find this lock in the block (recursive read: depth + 1, never looking at
//!   `writer_activating`, so it never waits for a writer that waits for this thread) or take
//!   a free slot (tagging slot 0), then publish as above.
//! * Writer active: clear the slot, take the underlying read lock (queueing fairly behind the
//!   writer), store the slot again, drop the underlying read lock (Xen's slow path).
//! * No free slot (a thread reading more than [`SLOTS`] distinct locks) or no block
//!   (thread-local teardown): the read lock is taken on the underlying rwlock itself, counted
//!   as a read slow path. It is non-recursive, so it queues behind a waiting writer, unless
//!   this thread already holds this lock that way (see [`fallback`](super::fallback)).
//! * Unlock of anything but the fast-path case: find the slot (depth - 1, or clear it), and
//!   drop `TAG` once the thread is back to at most one lock in slot 0; if no slot names the
//!   lock, the read was a fallback and unlocks the underlying rwlock.
//!
//! Every store to a slot is `Release`, so a writer's `Acquire` load that sees any later
//! value of a slot (another lock, 0, `TAG`) is ordered after this thread's earlier read
//! critical sections.
//!
//! # Writer
//! Take the underlying write lock (excluding writers and fallback readers); set
//! `writer_activating`; **fence**; scan the slots of threads `0..high_water()` and wait until
//! none names the lock. Unlock: clear `writer_activating` (Release), release the underlying
//! write lock. `try_lock_exclusive` first looks for a slot naming the lock (plain loads) and
//! fails without a fence if it finds one: a failing try-write costs no membarrier. If the
//! writer's membarrier fails, the writer undoes its flag and panics with the error (see
//! [`membarrier`](super::membarrier)).
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
//!   store before the load in program order.
//!
//! Readers that saw the flag clear and the writer's data: a flag load that reads the
//! previous writer's Release clear synchronises with it, so that writer's critical section
//! happens-before the reader's; the writer's Acquire slot load that sees a reader's Release
//! store orders the reader's critical section before the writer's.
//!
//! # Nesting rules (enforced by construction)
//! * Different locks: up to [`SLOTS`] at once on the fast path (pvnet's grant copy reads two
//!   grant tables); beyond that, correct but slow (underlying rwlock, counted).
//! * The same lock twice on one thread: supported, through the depth counter (or the
//!   underlying lock's recursive read for a lock first taken through the fallback).
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
use super::fallback;
use super::membarrier::{asymmetric_fence_available, heavy_barrier, light_barrier};
use crate::registry;
use crate::stats::{rw_add, Event};
use crate::sync::{fence, AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use crate::RwLockKind;
use crossbeam_utils::CachePadded;
use std::cell::Cell;

#[cfg(not(loom))]
use lock_api::{RawRwLock as _, RawRwLockRecursive as _};

/// Fast-path reader slots per thread (distinct locks one thread can read at once without
/// falling back to the underlying rwlock).
pub const SLOTS: usize = 4;

/// Bit 0 of slot 0: the thread is in a nested state (see the module docs).
const TAG: usize = 1;

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

    fn is_empty(&self) -> bool {
        self.lock.iter().all(|s| s.load(Relaxed) & !TAG == 0)
    }

    /// The slot naming `me`, if this thread reads that lock through a slot.
    fn find(&self, me: usize) -> Option<usize> {
        self.lock.iter().position(|s| s.load(Relaxed) & !TAG == me)
    }

    fn free_slot(&self) -> Option<usize> {
        self.lock.iter().position(|s| s.load(Relaxed) & !TAG == 0)
    }

    /// Marks the nested state in slot 0 (its lock, if any, is unchanged for writers).
    fn tag(&self) {
        let s0 = self.lock[0].load(Relaxed);
        if s0 & TAG == 0 {
            self.lock[0].store(s0 | TAG, Release);
        }
    }

    /// Drops the nested mark once at most slot 0 is in use, without recursion.
    fn untag_if_flat(&self) {
        let s0 = self.lock[0].load(Relaxed);
        if s0 & TAG != 0
            && self.lock[1..].iter().all(|s| s.load(Relaxed) == 0)
            && self.depth.iter().all(|d| d.load(Relaxed) == 0)
        {
            self.lock[0].store(s0 & !TAG, Release);
        }
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

#[cfg(loom)]
loom::lazy_static! {
    static ref TABLE: Vec<CachePadded<Block>> =
        (0..registry::LOOM_THREADS).map(|_| CachePadded::new(Block::new())).collect();
}

#[cfg(loom)]
fn table() -> &'static [CachePadded<Block>] {
    &TABLE
}

// This thread's block, cached so the fast path needs one plain thread-local load (no
// lazy-initialisation or destructor-state check). Const-initialised and without destructor,
// so it stays readable during thread teardown. Set on first use from the registry index;
// reset to the sentinel when the index goes back to the registry; kept (the block stays this
// thread's) when the index is retired because a slot is still in use. `MINE_ASYM` is the
// same pointer, set only where the asymmetric fence is registered: the `percpu` fast path.
#[cfg(not(loom))]
thread_local! {
    static MINE: Cell<*const Block> = const { Cell::new(&raw const SENTINEL) };
    static MINE_ASYM: Cell<*const Block> = const { Cell::new(&raw const SENTINEL) };
}
#[cfg(loom)]
loom::thread_local! {
    static MINE: Cell<*const Block> = Cell::new(sentinel());
    static MINE_ASYM: Cell<*const Block> = Cell::new(sentinel());
}

/// The block every thread's cached pointers start at: slot 0 holds `TAG` forever (never 0,
/// never a lock address, never written), so both fast paths fail over to the slow path.
/// No writer scans it (it is not in `TABLE`).
#[cfg(not(loom))]
static SENTINEL: Block = Block {
    lock: [
        AtomicUsize::new(TAG),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ],
    depth: [const { AtomicU32::new(0) }; SLOTS],
};

#[cfg(loom)]
loom::lazy_static! {
    static ref SENTINEL: Block = {
        let b = Block::new();
        b.lock[0].store(TAG, Relaxed);
        b
    };
}

#[cfg(not(loom))]
#[inline(always)]
fn sentinel() -> *const Block {
    &raw const SENTINEL
}

#[cfg(loom)]
fn sentinel() -> *const Block {
    &*SENTINEL as *const Block
}

/// Called by the registry, on the exiting thread, when it releases `idx`; `false` retires
/// the index.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn thread_exit(idx: usize) -> bool {
    let Some(b) = table().get(idx) else {
        return true;
    };
    if b.is_empty() {
        let _ = MINE.try_with(|m| m.set(sentinel()));
        let _ = MINE_ASYM.try_with(|m| m.set(sentinel()));
        return true;
    }
    log::warn!(
        "pvnet-locks: a thread exits with a per-CPU read lock still held (leaked guard?); \
         thread index {idx} is retired"
    );
    false
}

/// This thread's block, if it has one (registering the thread on first use).
#[inline]
fn my_block() -> Option<&'static Block> {
    let p = MINE.try_with(Cell::get).unwrap_or(sentinel());
    if p == sentinel() {
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
    if asymmetric_fence_available() {
        let _ = MINE_ASYM.try_with(|m| m.set(b as *const Block));
    }
    Some(b)
}

/// Raw per-CPU rwlock; `FENCED = true` is `percpu-fenced`, `false` is `percpu` (asymmetric
/// fence). Use it through [`PerCpuRwLock`](crate::PerCpuRwLock) /
/// [`PerCpuFencedRwLock`](crate::PerCpuFencedRwLock).
///
/// # Examples
///
/// ```
/// use pvnet_locks::rw::RawPerCpuRwLock;
///
/// let l = RawPerCpuRwLock::<true>::new();
/// l.lock_shared();
/// assert!(!l.try_lock_exclusive()); // a reader holds it
/// // SAFETY: this thread holds a shared lock (taken just above).
/// unsafe { l.unlock_shared() };
/// l.lock_exclusive();
/// assert!(!l.try_lock_shared());
/// // SAFETY: this thread holds the exclusive lock.
/// unsafe { l.unlock_exclusive() };
/// ```
pub struct RawPerCpuRwLock<const FENCED: bool> {
    writer_activating: AtomicBool,
    fair: Fair,
    /// Loom only: the writer uses a local fence instead of the heavy barrier (the negative
    /// model that shows the models catch a weakened barrier).
    #[cfg(loom)]
    weakened: bool,
}

// Lock addresses must leave bit 0 free for `TAG`.
const _: () = assert!(std::mem::align_of::<RawPerCpuRwLock<false>>() > TAG);

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
            weakened: false,
        }
    }

    /// Loom only: a lock whose writer replaces the heavy barrier by a local `fence(SeqCst)`
    /// (broken on purpose; the models must catch it).
    #[cfg(loom)]
    pub fn with_weakened_writer_barrier() -> Self {
        RawPerCpuRwLock {
            weakened: true,
            ..Self::new()
        }
    }

    /// Whether this lock's readers skip the hardware fence (decided once per process).
    #[inline]
    pub fn uses_asymmetric_fence(&self) -> bool {
        !FENCED && asymmetric_fence_available()
    }

    #[inline(always)]
    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// The block the fast path uses: this thread's, or the sentinel (the fast path then
    /// fails over to the slow path).
    #[inline(always)]
    fn fast_block() -> &'static Block {
        let cell = if FENCED { &MINE } else { &MINE_ASYM };
        let p = cell.try_with(Cell::get).unwrap_or(sentinel());
        // SAFETY: the cached pointers only ever point at the sentinel or into the never-freed
        // `TABLE`.
        unsafe { &*p }
    }

    /// Locks for shared access.
    #[inline]
    pub fn lock_shared(&self) {
        let b = Self::fast_block();
        if b.lock[0].load(Relaxed) != 0 {
            return self.lock_shared_slow();
        }
        let me = self.addr();
        b.lock[0].store(me, Release);
        if FENCED {
            fence(SeqCst);
        } else {
            // Only reached where the asymmetric fence is registered (`MINE_ASYM`).
            light_barrier();
        }
        if self.writer_activating.load(Acquire) {
            self.read_behind_writer(b, 0, me);
        }
    }

    /// The reader's fence on the slow path (same protocol as the fast path of this lock).
    #[inline]
    fn reader_fence() {
        if FENCED || !asymmetric_fence_available() {
            fence(SeqCst);
        } else {
            light_barrier();
        }
    }

    /// Publishes `value` (this lock, maybe tagged) in slot `i`, then checks for a writer;
    /// `false` (slot freed again) if a writer is active.
    #[inline]
    fn publish(&self, b: &Block, i: usize, value: usize) -> bool {
        b.lock[i].store(value, Release);
        Self::reader_fence();
        if !self.writer_activating.load(Acquire) {
            return true;
        }
        // Let the writer know this thread does not hold the lock.
        b.lock[i].store(value & TAG, Release);
        false
    }

    /// Claims a slot for a new read of this lock in a block where it is not yet read:
    /// `(slot, value to store)`, tagging slot 0 if the thread becomes nested.
    fn claim(&self, b: &Block) -> Option<(usize, usize)> {
        let me = self.addr();
        let s0 = b.lock[0].load(Relaxed);
        match b.free_slot()? {
            0 => Some((0, me | (s0 & TAG))),
            i => {
                b.tag();
                Some((i, me))
            }
        }
    }

    /// A recursive read of the lock this thread reads through slot `i`: depth + 1, without
    /// looking at `writer_activating` (a writer may be waiting for this very thread).
    fn nest(b: &Block, i: usize) {
        let d = b.depth[i].load(Relaxed).checked_add(1);
        b.depth[i].store(
            d.expect("pvnet-locks: per-CPU read lock recursion depth overflow"),
            Relaxed,
        );
        b.tag();
    }

    /// Everything but the fast path: recursion, nesting, first read, no membarrier.
    #[cold]
    #[inline(never)]
    fn lock_shared_slow(&self) {
        let me = self.addr();
        let Some(b) = my_block() else {
            return self.read_fallback();
        };
        if let Some(i) = b.find(me) {
            return Self::nest(b, i);
        }
        match self.claim(b) {
            Some((i, value)) => {
                if !self.publish(b, i, value) {
                    self.read_behind_writer(b, i, value);
                }
            }
            None => self.read_fallback(),
        }
    }

    /// Xen's slow path: wait on the underlying read lock (fair, behind the writer), publish
    /// the slot while holding it, then drop it. (This thread cannot hold this lock through
    /// the fallback: the active writer holds the underlying lock exclusively.)
    #[cold]
    #[inline(never)]
    fn read_behind_writer(&self, b: &Block, i: usize, value: usize) {
        b.lock[i].store(value & TAG, Release);
        self.fair.lock_shared();
        b.lock[i].store(value, Release);
        // SAFETY: taken just above.
        unsafe { self.fair.unlock_shared() };
        rw_add(Self::KIND, Event::ReadSlowPath, 1);
    }

    /// Read lock on the underlying rwlock (no slot available): recursive only if this thread
    /// may already hold this lock that way, so that it queues behind a waiting writer.
    #[cold]
    fn read_fallback(&self) {
        let me = self.addr();
        if fallback::maybe_held(me) {
            self.fair.lock_shared_recursive();
        } else {
            self.fair.lock_shared();
        }
        fallback::record(me);
        rw_add(Self::KIND, Event::ReadSlowPath, 1);
    }

    /// Shared access without waiting.
    pub fn try_lock_shared(&self) -> bool {
        let me = self.addr();
        if let Some(b) = my_block() {
            if let Some(i) = b.find(me) {
                Self::nest(b, i);
                return true;
            }
            if let Some((i, value)) = self.claim(b) {
                if self.publish(b, i, value) {
                    return true;
                }
                if self.fair.try_lock_shared() {
                    b.lock[i].store(value, Release);
                    // SAFETY: taken just above.
                    unsafe { self.fair.unlock_shared() };
                    return true;
                }
                b.untag_if_flat();
                return false;
            }
        }
        let ok = if fallback::maybe_held(me) {
            self.fair.try_lock_shared_recursive()
        } else {
            self.fair.try_lock_shared()
        };
        if ok {
            fallback::record(me);
        }
        ok
    }

    /// Releases shared access.
    ///
    /// # Safety
    /// This thread holds a shared lock of `self` taken with `lock_shared`/`try_lock_shared`.
    #[inline]
    pub unsafe fn unlock_shared(&self) {
        let b = Self::fast_block();
        // Slot 0 holds exactly this lock (no tag): the thread's only read, not recursive.
        if b.lock[0].load(Relaxed) == self.addr() {
            b.lock[0].store(0, Release);
        } else {
            // SAFETY: forwarded (this thread holds a shared lock of `self`).
            unsafe { self.unlock_shared_slow() };
        }
    }

    /// `unlock_shared` for everything but the fast-path case.
    ///
    /// # Safety
    /// As for `unlock_shared`.
    #[cold]
    #[inline(never)]
    unsafe fn unlock_shared_slow(&self) {
        let me = self.addr();
        if let Some(b) = my_block() {
            if let Some(i) = b.find(me) {
                let d = b.depth[i].load(Relaxed);
                if d > 0 {
                    b.depth[i].store(d - 1, Relaxed);
                } else {
                    let keep = if i == 0 {
                        b.lock[0].load(Relaxed) & TAG
                    } else {
                        0
                    };
                    b.lock[i].store(keep, Release);
                }
                b.untag_if_flat();
                return;
            }
        }
        // No slot names the lock: this thread's read went to the underlying lock.
        fallback::forget(me);
        // SAFETY: as above, this thread holds a shared lock of the underlying rwlock.
        unsafe { self.fair.unlock_shared() };
    }

    /// The writer's side of the Dekker pair.
    fn writer_barrier(&self) {
        #[cfg(loom)]
        if self.weakened {
            fence(SeqCst);
            return;
        }
        if !self.uses_asymmetric_fence() {
            fence(SeqCst);
            return;
        }
        if let Err(e) = heavy_barrier() {
            // The write lock must not be granted: readers rely on the barrier. Undo and
            // fail loudly (the caller's thread panics; the lock stays usable).
            self.writer_activating.store(false, Release);
            // SAFETY: taken by the caller (`lock_exclusive` / `try_lock_exclusive`).
            unsafe { self.fair.unlock_exclusive() };
            panic!(
                "pvnet-locks: a per-CPU rwlock writer cannot exclude readers: {e} (was a \
                 seccomp filter or similar installed after start-up?); the write lock was \
                 not taken"
            );
        }
        rw_add(Self::KIND, Event::Membarriers, 1);
    }

    fn slots_to_scan() -> &'static [CachePadded<Block>] {
        let t = table();
        &t[..registry::high_water().min(t.len())]
    }

    fn any_reader(&self) -> bool {
        let me = self.addr();
        Self::slots_to_scan()
            .iter()
            .any(|b| b.lock.iter().any(|s| s.load(Acquire) & !TAG == me))
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
                while s.load(Acquire) & !TAG == me {
                    backoff.snooze();
                }
            }
        }
        rw_add(Self::KIND, Event::WriteLocks, 1);
        if backoff.spins > 0 {
            rw_add(Self::KIND, Event::WriterWaitSpins, backoff.spins);
        }
    }

    /// Exclusive access if no one holds the lock now. Fails without a barrier when another
    /// writer, a fallback reader or a visible fast-path reader holds it.
    pub fn try_lock_exclusive(&self) -> bool {
        if !self.fair.try_lock_exclusive() {
            return false;
        }
        if self.any_reader() {
            // SAFETY: taken above; the flag was never set.
            unsafe { self.fair.unlock_exclusive() };
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
