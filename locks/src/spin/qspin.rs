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
//!   `locked == 0 && pending == 0`; while it is still the tail it tries to take the lock and
//!   empty the queue in one CAS `(n,0,0) -> (0,0,1)`, and if the CAS fails with its tail
//!   still in the word it waits again and retries. Only once another tail has replaced its
//!   own does it set locked, wait for `next` to link, and hand the MCS head to `next` by
//!   writing `next.locked = 1`.
//! * no node (more than `MAX_NODES` nested slow paths, or thread-local teardown): spin on
//!   the trylock, which needs a free word `(0,0,0)`; such a locker never queues.
//!
//! Why the head retries: with its tail in the word, no one else can set locked (every other
//! acquisition needs a free word, or the `(0,1,0)` of a pending waiter that the head already
//! waited out) nor keep pending (the pending path keeps it only when it set it on `(0,0,*)`).
//! So a failed CAS with the head's tail still there means a late pending-path locker set
//! pending, saw the tail and is about to clear it again. Linux takes that failure for
//! "somebody queued behind us, or set pending and will detect the tail and queue", sets
//! locked and waits for `next`; but a locker that then finds no free node spins on the
//! trylock instead of queueing, and head and locker would wait for each other forever.
//! (The PV head makes this CAS, `(n,0,1) -> (0,0,1)`, already owning the lock and with no
//! pending path in use, so only a new tail can make it fail there; the retry costs nothing.)
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
        #[cfg(all(test, not(loom)))]
        script::step(script::Step::Relax);
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
    loop {
        if got == 0 {
            // Wait for the owner and any pending waiter to leave: (*,*,*) -> (*,0,0).
            val = loop {
                let v = lock.load(Ordering::Acquire);
                if v & LOCKED_PENDING_MASK == 0 {
                    break v;
                }
                ep.relax();
            };
        }
        // Somebody swapped its tail in after ours: it will link behind us.
        if val & TAIL_MASK != tail {
            break;
        }
        // Still the last one queued: take the lock and empty the queue in one go.
        #[cfg(all(test, not(loom)))]
        script::step(script::Step::HeadClaim);
        let new = if got == 0 {
            LOCKED_VAL
        } else {
            val & LOCKED_MASK
        };
        match lock.compare_exchange(val, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return,
            // The tail is still ours, so nobody queued: the word changed under a locker
            // that set pending, saw our tail and is undoing it. It may have no node to queue
            // with (and then waits for a free word): do not wait for a `next`; wait for
            // pending to clear and claim again.
            Err(now) if now & TAIL_MASK == tail => val = now,
            Err(_) => break,
        }
    }
    // Somebody queued behind us (its tail replaced ours, so it links to `node.next` soon):
    // take the lock (if not already ours) and pass the MCS head.
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

/// Unit tests only: a *script* plays the other lockers of an interleaving, one step at a
/// time, from inside the slow path of the thread under test (every unbounded spin iteration
/// and the queue head's claiming CAS are steps), so that a race can be replayed
/// deterministically in one thread. Not compiled outside `cfg(test)`.
#[cfg(all(test, not(loom)))]
pub(crate) mod script {
    use std::cell::RefCell;

    /// Where the thread under test is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Step {
        /// One iteration of an unbounded spin-wait (`Episode::relax`).
        Relax,
        /// The queue head saw `locked` and `pending` clear and its own tail, and is about to
        /// claim the lock with a CAS of the word it read.
        HeadClaim,
    }

    type Script = Box<dyn FnMut(Step)>;

    thread_local! {
        static SCRIPT: RefCell<Option<Script>> = const { RefCell::new(None) };
    }

    /// Runs this thread's script, if one is installed (not re-entrantly, and not during
    /// thread-local teardown).
    #[inline]
    pub(crate) fn step(s: Step) {
        let _ = SCRIPT.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                if let Some(f) = c.as_mut() {
                    f(s);
                }
            }
        });
    }

    /// Runs `f` on this thread with `script` installed (removed again on return or unwind).
    pub(crate) fn with<R>(script: impl FnMut(Step) + 'static, f: impl FnOnce() -> R) -> R {
        struct Uninstall;
        impl Drop for Uninstall {
            fn drop(&mut self) {
                let _ = SCRIPT.try_with(|c| c.borrow_mut().take());
            }
        }
        SCRIPT.with(|c| *c.borrow_mut() = Some(Box::new(script)));
        let _uninstall = Uninstall;
        f()
    }
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

    /// The queue head alone in the queue must not wait for a successor that never links. A
    /// locker R whose fast-path CAS failed on `(0,0,1)` gets to its pending `fetch_or` late,
    /// between the head's read of `(T,0,0)` and its claiming CAS: the CAS fails on `(T,1,0)`.
    /// R sees the tail, undoes pending and queues -- but with no node free (nested slow
    /// paths, or thread-local teardown) it spins on a trylock that needs a free word. The
    /// head used to take the failed CAS for "somebody queued behind us", set locked and wait
    /// for `next` forever while R waited for the word to clear. Played in one thread: the
    /// script is the owner F and the racer R, stepping when the head spins or claims.
    #[test]
    fn head_retries_its_claim_when_a_nodeless_locker_flicks_pending() {
        use script::Step;
        use std::cell::Cell;
        use std::rc::Rc;
        use std::sync::Arc;

        const STUCK: u32 = 10_000;
        // F holds the lock: (0,0,1).
        let lock = Arc::new(AtomicU32::new(LOCKED_VAL));
        let phase = Rc::new(Cell::new(0u32));
        let (l, p) = (lock.clone(), phase.clone());
        let mut idle = 0u32;
        let play = move |s: Step| match (p.get(), s) {
            // The head (T) waits on (T,0,1): F unlocks, (T,0,0).
            (0, Step::Relax) => {
                l.fetch_sub(LOCKED_VAL, Ordering::Release);
                p.set(1);
            }
            // Between the head's read of (T,0,0) and its CAS, R sets pending: (T,1,0).
            (1, Step::HeadClaim) => {
                let old = l.fetch_or(PENDING_VAL, Ordering::Acquire);
                assert_ne!(old & TAIL_MASK, 0, "R must see the head's tail");
                p.set(2);
            }
            // R saw a tail: it undoes its pending and, without a node, spins on trylock.
            (2, Step::Relax) => {
                l.fetch_and(!PENDING_VAL, Ordering::Relaxed);
                p.set(3);
            }
            (3, Step::Relax) => {
                assert!(!plain_trylock(&l), "the head is still queued");
                idle += 1;
                assert!(
                    idle < STUCK,
                    "the queue head spins with nobody left to act (lock word {:#x}): it waits \
                     for a successor that never links",
                    l.load(Ordering::Relaxed)
                );
            }
            _ => {}
        };
        script::with(play, || queue::<Native>(&lock, &mut Episode::default()));
        assert_eq!(phase.get(), 3, "the script played the whole race");
        // T owns the lock and emptied the queue; R gets it once T unlocks.
        assert_eq!(lock.load(Ordering::Relaxed), LOCKED_VAL);
        assert!(!plain_trylock(&lock));
        lock.fetch_sub(LOCKED_VAL, Ordering::Release);
        assert!(plain_trylock(&lock), "R acquires after T");
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
