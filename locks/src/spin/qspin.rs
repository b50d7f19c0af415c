//! `QSpinLock`: Linux's 4-byte queued spinlock (`kernel/locking/qspinlock.c`) in user space.
//!
//! # The lock word
//!
//! ```text
//!  31            18 17  16 15       9   8   7          0
//! +----------------+------+----------+---+-------------+
//! | tail thread+1  | idx  |  unused  | P | locked byte |
//! +----------------+------+----------+---+-------------+
//! ```
//! * locked byte: 0 free, 1 held (the PV variant also uses 3 = `_Q_SLOW_VAL`, 2 while a slow
//!   unlock is in flight, see `pvqspin.rs`);
//! * `P` (pending, bit 8): one waiter spins on the word itself instead of queueing;
//! * tail: the last queued MCS node, `(thread index + 1, nesting level)`, 0 = empty queue.
//!
//! Every read-modify-write is on the whole `AtomicU32` (no mixed-size atomics): Linux's byte
//! and half-word stores become `fetch_or` / `fetch_and` / `fetch_sub` or a CAS loop.
//!
//! # State machine `(tail, pending, locked)`
//!
//! * fast path: `(0,0,0) -> (0,0,1)` by one CAS.
//! * pending: a second locker sees `(0,0,1)`, sets pending `(0,1,1)`, spins until the owner
//!   leaves `(0,1,0)`, then turns pending into locked in one RMW `(0,0,1)`. A locker that
//!   sees `(0,1,0)` waits a few iterations for that hand-over to finish.
//! * queue: anybody else claims its per-thread node (see `node.rs`), swaps its tail into the
//!   word, links behind the previous tail and spins on its *own* node's `locked` field.
//! * head: the node whose `locked` was set (or that found the queue empty) waits for
//!   `locked == 0 && pending == 0`; if it is still the tail it takes the lock and empties the
//!   queue in one CAS `(n,0,0) -> (0,0,1)`, otherwise it sets locked and hands the MCS head
//!   to `next` by writing `next.locked = 1`.
//!
//! # Memory ordering
//!
//! * Acquire: every RMW or load that observes the lock free and takes it (fast-path CAS,
//!   pending-owner wait, head wait) is `Acquire`; unlock is a `Release` `fetch_sub(1)`. The
//!   owner's critical section therefore happens-before the next owner's.
//! * Node publication: the node is initialised (`locked = 0`, `next = 0`) before the tail
//!   swap, which is `AcqRel` (Linux: `smp_wmb()` + address dependency): the successor that
//!   reads our tail sees the initialised node, and our own write of `prev.next` is ordered
//!   after the predecessor's initialisation of it.
//! * MCS hand-off: `next.locked = 1` is `Release`, the waiter's poll is `Acquire`; the
//!   successor link `prev.next` is `Release`/`Acquire`.
//!
//! The slow path is generic over `Hooks` (Linux includes `qspinlock.c` twice with the
//! `pv_*` hooks defined as no-ops or as the paravirt versions): the PV lock reuses it.

use super::node::{decode_tail, Claim, Node, TAIL_MASK};
use crate::stats::{spin_add, Event};
use crate::sync::{spin_hint, AtomicU32, Ordering};
use crate::SpinLockKind;

pub(crate) const LOCKED_VAL: u32 = 1;
pub(crate) const LOCKED_MASK: u32 = 0xff;
pub(crate) const PENDING_VAL: u32 = 1 << 8;
pub(crate) const LOCKED_PENDING_MASK: u32 = LOCKED_MASK | PENDING_VAL;

/// Bounded wait for an in-progress pending -> locked hand-over (Linux `_Q_PENDING_LOOPS`).
const PENDING_LOOPS: u32 = 1;

/// Per-episode counters, added to the global stats once at the end of a slow path.
#[derive(Default)]
pub(crate) struct Episode {
    pub(crate) spins: u64,
}

impl Episode {
    /// One iteration of an unbounded spin-wait (yields under loom so the model progresses).
    #[inline]
    pub(crate) fn relax(&mut self) {
        self.spins += 1;
        spin_hint();
    }

    /// One iteration of a spin loop bounded by a threshold. Under loom it does not yield
    /// (a loom yield lets every other thread run first, so the threshold would never run
    /// out and the halt paths would stay unexplored); the atomics in the loop are
    /// preemption points anyway.
    #[inline]
    pub(crate) fn relax_bounded(&mut self) {
        self.spins += 1;
        #[cfg(not(loom))]
        spin_hint();
    }
}

/// The paravirt hooks of the queued slow path (no-ops for the native lock).
pub(crate) trait Hooks {
    const KIND: SpinLockKind;
    /// The PV lock skips the pending path and keeps `pending` for the queue head.
    const USE_PENDING: bool;
    fn init_node(node: &Node);
    /// Trylock used once a node is claimed and for the "no node" fallback.
    fn trylock(lock: &AtomicU32, ep: &mut Episode) -> bool;
    /// Waits until `node.locked` is set (may sleep).
    fn wait_node(node: &Node, prev: &Node, ep: &mut Episode);
    /// Called by the new owner right after `next.locked = 1`; `next_tail` names `next`.
    fn kick_node(lock: &AtomicU32, next: &Node, next_tail: u32);
    /// Queue head (`tail` names `node`): returns the lock word if it acquired the lock, 0 if
    /// the caller must wait for locked and pending to clear.
    fn wait_head_or_lock(lock: &AtomicU32, node: &Node, tail: u32, ep: &mut Episode) -> u32;
}

/// The native hooks: pure spinning, exactly Linux's non-PV qspinlock.
pub(crate) struct Native;

impl Hooks for Native {
    const KIND: SpinLockKind = SpinLockKind::Qspin;
    const USE_PENDING: bool = true;
    #[inline]
    fn init_node(_node: &Node) {}
    #[inline]
    fn trylock(lock: &AtomicU32, _ep: &mut Episode) -> bool {
        plain_trylock(lock)
    }
    #[inline]
    fn wait_node(_node: &Node, _prev: &Node, _ep: &mut Episode) {}
    #[inline]
    fn kick_node(_lock: &AtomicU32, _next: &Node, _next_tail: u32) {}
    #[inline]
    fn wait_head_or_lock(_lock: &AtomicU32, _node: &Node, _tail: u32, _ep: &mut Episode) -> u32 {
        0
    }
}

/// `queued_spin_trylock`: succeeds only on a completely free word.
#[inline]
pub(crate) fn plain_trylock(lock: &AtomicU32) -> bool {
    lock.load(Ordering::Relaxed) == 0
        && lock
            .compare_exchange(0, LOCKED_VAL, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
}

/// Swaps `tail` into the tail bits, keeping locked and pending; returns the old word.
#[inline]
fn xchg_tail(lock: &AtomicU32, tail: u32) -> u32 {
    let mut old = lock.load(Ordering::Relaxed);
    loop {
        let new = (old & !TAIL_MASK) | tail;
        match lock.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return old,
            Err(v) => old = v,
        }
    }
}

/// The contended path of both queued locks. `val` is the word the fast path saw.
#[inline(never)]
pub(crate) fn lock_slowpath<H: Hooks>(lock: &AtomicU32, mut val: u32) {
    let mut ep = Episode::default();
    spin_add(H::KIND, Event::SlowPath, 1);
    if H::USE_PENDING && pending_path(lock, &mut val, &mut ep) {
        spin_add(H::KIND, Event::Pending, 1);
        finish::<H>(&ep);
        return;
    }
    queue::<H>(lock, &mut ep);
    finish::<H>(&ep);
}

#[inline]
fn finish<H: Hooks>(ep: &Episode) {
    if ep.spins != 0 {
        spin_add(H::KIND, Event::Spins, ep.spins);
    }
}

/// Tries to become the pending waiter; true once the lock is taken this way.
fn pending_path(lock: &AtomicU32, val: &mut u32, ep: &mut Episode) -> bool {
    // Wait (boundedly) for a pending -> locked hand-over in progress.
    if *val == PENDING_VAL {
        let mut cnt = PENDING_LOOPS;
        while *val == PENDING_VAL && cnt > 0 {
            ep.relax();
            cnt -= 1;
            *val = lock.load(Ordering::Relaxed);
        }
    }
    // Any contention (pending or a queue): queue.
    if *val & !LOCKED_MASK != 0 {
        return false;
    }
    // (0,0,*) -> (0,1,*)
    let old = lock.fetch_or(PENDING_VAL, Ordering::Acquire);
    if old & !LOCKED_MASK != 0 {
        // Somebody queued or set pending meanwhile: undo our pending if it is ours.
        if old & PENDING_VAL == 0 {
            lock.fetch_and(!PENDING_VAL, Ordering::Relaxed);
        }
        *val = old;
        return false;
    }
    // We are pending: wait for the owner to go, (*,1,1) -> (*,1,0).
    if old & LOCKED_MASK != 0 {
        while lock.load(Ordering::Acquire) & LOCKED_MASK != 0 {
            ep.relax();
        }
    }
    // (*,1,0) -> (*,0,1): clear pending, set locked, one RMW.
    lock.fetch_sub(PENDING_VAL - LOCKED_VAL, Ordering::Acquire);
    true
}

fn queue<H: Hooks>(lock: &AtomicU32, ep: &mut Episode) {
    let Some(claim) = Claim::new() else {
        // No node (nesting too deep, or thread-local teardown): spin on the word itself.
        while !H::trylock(lock, ep) {
            ep.relax();
        }
        return;
    };
    let node = claim.node();
    let tail = claim.tail;
    H::init_node(node);

    // The lock may have become free while we were setting up.
    if H::trylock(lock, ep) {
        return;
    }

    let old = xchg_tail(lock, tail);
    let mut next = 0u32;
    if old & TAIL_MASK != 0 {
        let prev = decode_tail(old & TAIL_MASK);
        prev.next.store(tail, Ordering::Release);
        H::wait_node(node, prev, ep);
        while node.locked.load(Ordering::Acquire) == 0 {
            ep.relax();
        }
        next = node.next.load(Ordering::Acquire);
    }

    // We are the queue head.
    let got = H::wait_head_or_lock(lock, node, tail, ep);
    let mut val = got;
    if got == 0 {
        loop {
            val = lock.load(Ordering::Acquire);
            if val & LOCKED_PENDING_MASK == 0 {
                break;
            }
            ep.relax();
        }
    }

    // Still the last one queued: take the lock and empty the queue in one go.
    if val & TAIL_MASK == tail {
        let new = if got == 0 {
            LOCKED_VAL
        } else {
            val & LOCKED_MASK
        };
        if lock
            .compare_exchange(val, new, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    // Somebody queued behind us: take the lock (if not already ours) and pass the MCS head.
    if got == 0 {
        lock.fetch_or(LOCKED_VAL, Ordering::Acquire);
    }
    while next == 0 {
        next = node.next.load(Ordering::Acquire);
        if next == 0 {
            ep.relax();
        }
    }
    let next_node = decode_tail(next);
    next_node.locked.store(1, Ordering::Release);
    H::kick_node(lock, next_node, next);
    drop(claim);
}

/// Raw queued spinlock (`lock_api::RawMutex` outside loom).
pub struct RawQSpinLock {
    val: AtomicU32,
}

impl RawQSpinLock {
    /// A free lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawQSpinLock {
            val: AtomicU32::new(0),
        }
    }

    /// A free lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawQSpinLock {
            val: AtomicU32::new(0),
        }
    }

    /// Acquires the lock.
    #[inline]
    pub fn lock(&self) {
        if let Err(v) =
            self.val
                .compare_exchange(0, LOCKED_VAL, Ordering::Acquire, Ordering::Relaxed)
        {
            lock_slowpath::<Native>(&self.val, v);
        }
    }

    /// Acquires the lock if it is free right now.
    #[inline]
    pub fn try_lock(&self) -> bool {
        plain_trylock(&self.val)
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds the lock.
    #[inline]
    pub unsafe fn unlock(&self) {
        self.val.fetch_sub(LOCKED_VAL, Ordering::Release);
    }

    /// Whether the lock is held (a racy snapshot).
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.val.load(Ordering::Relaxed) & LOCKED_MASK != 0
    }
}

impl Default for RawQSpinLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
// SAFETY: `lock` returns only once this thread owns the locked byte (every path ends in an
// Acquire RMW or load that observed it free and claimed it), and `unlock`, called only by the
// owner, releases it with Release ordering: mutual exclusion with happens-before between
// consecutive critical sections.
unsafe impl lock_api::RawMutex for RawQSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawQSpinLock::new();
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        RawQSpinLock::lock(self)
    }
    #[inline]
    fn try_lock(&self) -> bool {
        RawQSpinLock::try_lock(self)
    }
    #[inline]
    unsafe fn unlock(&self) {
        // SAFETY: forwarded contract: the caller holds the lock.
        unsafe { RawQSpinLock::unlock(self) }
    }
    #[inline]
    fn is_locked(&self) -> bool {
        RawQSpinLock::is_locked(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::spin::node::{decode_tail_parts, encode_tail};

    #[test]
    fn lock_word_layout() {
        assert_eq!(LOCKED_VAL & PENDING_VAL, 0);
        assert_eq!(LOCKED_PENDING_MASK & TAIL_MASK, 0);
        let w = encode_tail(5, 2) | PENDING_VAL | LOCKED_VAL;
        assert_eq!(w & LOCKED_MASK, 1);
        assert_ne!(w & PENDING_VAL, 0);
        assert_eq!(decode_tail_parts(w & TAIL_MASK), (5, 2));
    }

    #[test]
    fn xchg_tail_keeps_locked_and_pending() {
        let l = AtomicU32::new(LOCKED_VAL | PENDING_VAL | encode_tail(1, 0));
        let old = xchg_tail(&l, encode_tail(9, 3));
        assert_eq!(old & TAIL_MASK, encode_tail(1, 0));
        let now = l.load(Ordering::Relaxed);
        assert_eq!(now & LOCKED_PENDING_MASK, LOCKED_VAL | PENDING_VAL);
        assert_eq!(now & TAIL_MASK, encode_tail(9, 3));
    }

    #[test]
    fn uncontended_lock_unlock_and_trylock() {
        let l = RawQSpinLock::new();
        l.lock();
        assert!(l.is_locked());
        assert!(!l.try_lock());
        // SAFETY: held above.
        unsafe { l.unlock() };
        assert_eq!(l.val.load(Ordering::Relaxed), 0);
        assert!(l.try_lock());
        // SAFETY: held by the successful try_lock.
        unsafe { l.unlock() };
    }

    #[test]
    fn pending_path_is_taken_by_a_second_locker() {
        use std::sync::Arc;
        let l = Arc::new(RawQSpinLock::new());
        let before = crate::stats::spin_stats(SpinLockKind::Qspin).pending;
        l.lock();
        let l2 = l.clone();
        let h = std::thread::spawn(move || {
            l2.lock();
            // SAFETY: held.
            unsafe { l2.unlock() };
        });
        // Wait until the second thread is pending, then release.
        while l.val.load(Ordering::Relaxed) & PENDING_VAL == 0 {
            std::thread::yield_now();
        }
        // SAFETY: held by this thread.
        unsafe { l.unlock() };
        h.join().unwrap();
        assert!(crate::stats::spin_stats(SpinLockKind::Qspin).pending > before);
        assert_eq!(l.val.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn holding_four_and_waiting_for_a_fifth() {
        use std::sync::Arc;
        let locks: Arc<Vec<RawQSpinLock>> = Arc::new((0..5).map(|_| RawQSpinLock::new()).collect());
        // Another thread holds lock 4 for a moment, so our fifth acquisition is contended.
        locks[4].lock();
        let l2 = locks.clone();
        let h = std::thread::spawn(move || {
            for l in l2.iter().take(4) {
                l.lock();
            }
            l2[4].lock();
            for l in l2.iter() {
                // SAFETY: all five are held by this thread.
                unsafe { l.unlock() };
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(10));
        // SAFETY: held by this thread.
        unsafe { locks[4].unlock() };
        h.join().unwrap();
        assert!(locks.iter().all(|l| !l.is_locked()));
    }
}
