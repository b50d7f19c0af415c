//! `PvQSpinLock`: the paravirt queued spinlock (Linux `qspinlock_paravirt.h`) for threads
//! that may be descheduled at any time, e.g. 32 worker threads on 2 cores.
//!
//! Same lock word and queue as [`qspin`](super::qspin) (the slow path is shared through its
//! `Hooks`), plus:
//!
//! * locked byte `_Q_SLOW_VAL` (3): the queue head is asleep and hashed; the owner must
//!   unhash it and wake it at unlock. Byte 2 is the transient "slow unlock in flight".
//! * per-node state (the futex word each waiter sleeps on, in `node.rs`):
//!   `RUNNING` (spinning), `HALTED` (queued, not head, asleep or about to be),
//!   `HASHED` (head, in the hash table; the unlocker will wake it).
//!
//! # Protocol
//!
//! * entry: no pending path; one inline steal attempt in `lock`, then, with a node claimed,
//!   a bounded *hybrid unfair trylock* (Linux `pv_hybrid_queued_unfair_trylock`): steal the
//!   lock while `locked == 0 && pending == 0`, i.e. while the queue head is not actively
//!   spinning (pending is its "I am spinning" flag). See "Steal policy" below.
//! * `wait_node` (not head): spin `SPIN_THRESHOLD` iterations polling `node.locked`, bumping
//!   our heartbeat and checking the predecessor every `PV_PREV_CHECK_MASK + 1` iterations:
//!   if its state is not `RUNNING`, or its heartbeat did not move for `PV_STALE_CHECKS`
//!   checks (it is descheduled), stop early ("wait early"). Then `state = HALTED` (a CAS
//!   from `RUNNING`: a `HASHED` state is never overwritten), re-check `locked`, and
//!   `futex_wait(state, HALTED)`; after it, `CAS HALTED -> RUNNING` (a `HASHED` state stays).
//! * `kick_node` (new owner, right after `next.locked = 1`): if `next` is `HALTED`, CAS it
//!   to `HASHED`, set `_Q_SLOW_VAL`, hash `(lock -> next)`. It is *not* woken now: it will be
//!   woken once, at unlock, already as queue head (the seed's "only kick at unlock time").
//! * `wait_head` (head): set pending, spin `SPIN_THRESHOLD` trying to take the lock, clear
//!   pending (unless a wake-up already found the lock stolen: see "Steal policy"). If not
//!   yet hashed: hash itself, `state = HASHED`, then CAS the locked byte 1 -> 3 (or 0 -> 1:
//!   the lock was free, unhash and own it). Then `futex_wait(state, HASHED)`; loop (a
//!   wake-up with `state` still `HASHED` is spurious).
//! * unlock: `fetch_sub(1)`: 1 -> 0 is the fast path. 3 -> 2 means slow: unhash the node,
//!   `swap(state, RUNNING)`, *then* release (2 -> 0), then `futex_wake(state)`.
//!
//! # Steal policy (tuned for many threads on few cores)
//!
//! A locker that finds the lock taken polls the lock word (loads only) with exponential
//! backoff (1, 2, 4, ... `STEAL_BACKOFF_MAX` spin iterations between polls) and CASes
//! `locked` 0 -> 1 whenever it sees `locked == 0 && pending == 0`. It gives up and queues
//! when
//! * `pending` is set: the queue head is actively spinning and goes first (it sets pending
//!   for at most `SPIN_THRESHOLD` iterations, then hashes itself and sleeps, and stealing
//!   resumes while it sleeps);
//! * or its budget of `STEAL_SPINS` iterations is spent: then it queues, spins on its own
//!   node (not the lock word), and sleeps early when its predecessor is not running.
//!
//! **Starvation bound.** Stealing from a *sleeping* head is what keeps the running threads
//! busy, but it must not go on forever: an unlock wakes the hashed head, and until the head
//! runs again and sets pending, arrivals can steal the free lock (a fast unlock wakes
//! nobody); if the thief then holds the lock longer than the head spins, the head sleeps
//! again, and so on. So after `HEAD_MISSED_WAKEUPS` (1) wake-ups that found the lock taken,
//! the head keeps `pending` set across its sleep: nobody can steal (every steal needs
//! `pending == 0`), new lockers queue behind it, and the next (slow) unlock leaves the lock
//! free for it alone. A queue head therefore waits for at most the holder it found, the
//! thieves of one wake-up (the ones that run before it does), and one more holder
//! (`tests/spin_starvation.rs`, counter `head_pending_sleeps`). Linux's `pv_wait_head_or_lock`
//! clears pending before every `pv_wait` of the head and relies on a kicked vCPU running
//! soon; a kicked thread on an oversubscribed machine may not.
//!
//! Two differences from Linux, both measured on 2 vCPUs (`docs/benchmarks.md`, Locks):
//! * Linux stops stealing as soon as the queue is empty (`tail == 0`) and queues, so the
//!   first waiter becomes the head and blocks steals with pending. With threads on two
//!   cores that turns every contended acquisition into a cross-core MCS hand-off (2
//!   threads: ~3x slower than parking_lot). We keep stealing while the queue
//!   is empty; the budget bounds the unfairness, and the queue still forms once it runs out.
//! * Linux polls in a tight loop without a bound. Here a tight loop pulls the lock's cache
//!   line from the running holder on every iteration and keeps a second CPU busy with
//!   stealers; the backoff leaves the line with the holder, and the bound sends waiters to
//!   sleep so that one core runs the lock at near-uncontended speed (8/16 threads: about
//!   one core busy, throughput at parity with parking_lot).
//!
//! The policy only decides *when* a locker takes the free locked byte: every steal is the
//! same Acquire CAS `locked 0 -> 1` (pending clear) as before, and the halt/hash/kick
//! protocol below is unchanged.
//!
//! # Why no wake-up is lost (and why the kick targets the node, not the lock word)
//!
//! * `wait_node` vs `kick_node` is a Dekker pair: waiter `[CAS state RUNNING->HALTED;
//!   fence(SeqCst); load locked]`, owner `[store locked=1; fence(SeqCst); CAS state
//!   HALTED->HASHED]`. Either the waiter sees `locked` and does not sleep, or the owner sees
//!   `HALTED` and hashes it. Both may happen; then exactly one of the waiter's
//!   `CAS HALTED->RUNNING` and the owner's `CAS HALTED->HASHED` wins, and the waiter reads
//!   the outcome in `state` (`HASHED` means "do not hash again": two entries for one lock
//!   would be fatal).
//! * `HASHED` is never lost: `state` becomes `HASHED` only after `locked = 1` and the owner's
//!   fence, and a waiter that reads it (the failure of its `CAS HALTED->RUNNING`, which is
//!   Acquire) therefore sees `locked` and leaves as queue head. Should it ever come round
//!   to halt again, its halt is a CAS from `RUNNING` that leaves `HASHED` alone (Linux's
//!   plain `smp_store_mb(state, halted)` relies on the `locked` poll before it instead).
//! * A hashed head sleeps only while `state == HASHED` (checked by the kernel atomically with
//!   the wake), and the unlocker changes `state` before it wakes: single-word handshake.
//! * `_Q_SLOW_VAL` is published by a Release RMW after the hash entry is written; the
//!   unlocker's `fetch_sub` observes it and an Acquire fence orders its hash look-up after.
//! * The unlocker resets `state` *before* releasing the lock, so the head cannot have moved
//!   on (to another lock, reusing the node) when its state is written: no ABA on `state`.
//!   The only access after the release is `futex_wake`, which at worst wakes a reused node
//!   spuriously. While the byte is 2 the head does not hash itself (it spins again).
//! * Linux sleeps the head on the lock byte (`pv_wait(&l->locked, _Q_SLOW_VAL)`); a user-space
//!   futex compares 32 bits, so every enqueue (tail change) would wake the head spuriously.
//!   Sleeping on the node's own state word avoids that, and it is also what `pv_kick(cpu)`
//!   means: wake that waiter, not "whoever waits on this address".

use super::futex::{futex_wait, futex_wake};
use super::node::{decode_tail, Node, TAIL_MASK};
use super::pvhash::{pv_hash, pv_unhash, pv_unhash_slot};
use super::qspin::{
    lock_slowpath, plain_trylock, Episode, Hooks, LOCKED_MASK, LOCKED_PENDING_MASK, LOCKED_VAL,
    PENDING_VAL,
};
use crate::stats::{spin_add, Event};
use crate::sync::{fence, AtomicU32, Ordering};
use crate::SpinLockKind;

/// Locked-byte value: held, and the queue head is hashed and asleep.
pub(crate) const SLOW_VAL: u32 = 3;

/// Node states.
pub(crate) const RUNNING: u32 = 0;
pub(crate) const HALTED: u32 = 1;
pub(crate) const HASHED: u32 = 2;

/// Spin iterations (`spin_loop` hints, 10-150 cycles each depending on the CPU) before a
/// waiter sleeps. Linux uses 2^15 because a hypervisor halt/kick (VM exit) costs tens of
/// microseconds; a futex sleep + wake-up costs a few microseconds, so 2^10 (roughly
/// 5-50 µs of spinning, around the cost of sleeping) keeps the usual "spin for about what
/// blocking costs" balance. A few so loom explores the halt/hash/kick paths.
#[cfg(not(loom))]
pub const SPIN_THRESHOLD: u32 = 1 << 10;
#[cfg(loom)]
pub const SPIN_THRESHOLD: u32 = 2;

/// Check the predecessor every `PV_PREV_CHECK_MASK + 1` iterations (Linux: 256; we check
/// more often because our threshold is shorter), so its cache line is not pounded.
#[cfg(not(loom))]
const PV_PREV_CHECK_MASK: u32 = 0x3f;
#[cfg(loom)]
const PV_PREV_CHECK_MASK: u32 = 0;

/// A spinning waiter bumps its heartbeat every `HEARTBEAT_MASK + 1` iterations: four times
/// per check interval of its successor.
#[cfg(not(loom))]
const HEARTBEAT_MASK: u32 = 0xf;
#[cfg(loom)]
const HEARTBEAT_MASK: u32 = 0;

/// Consecutive predecessor checks with an unchanged heartbeat after which the predecessor is
/// deemed descheduled and we wait early: 3 checks = 192 of our iterations during which a
/// running predecessor would have bumped about 12 times.
pub const PV_STALE_CHECKS: u32 = 3;

/// Budget of the entry-time unfair trylock, in spin iterations (Linux spins unboundedly
/// while the head is halted; a user-space thread may instead be descheduled there, so we
/// give up and queue, where we can sleep). Tuned on 2 vCPUs with 2-16 threads
/// (`docs/benchmarks.md`, Locks).
#[cfg(not(loom))]
const STEAL_SPINS: u32 = 256;
#[cfg(loom)]
const STEAL_SPINS: u32 = 1;

/// Cap of the entry trylock's backoff: between two polls of the lock word it spins 1, 2,
/// 4, ... up to this many iterations, so a stealer does not pull the lock's cache line
/// away from a running holder on every iteration.
#[cfg(not(loom))]
const STEAL_BACKOFF_MAX: u32 = 32;
#[cfg(loom)]
const STEAL_BACKOFF_MAX: u32 = 1;

/// Wake-ups a queue head may find the lock stolen before it keeps `pending` set across its
/// sleep (the starvation bound of "Steal policy"). One: the first time the head is woken it
/// competes with stealers as before (stealing while the head sleeps is what keeps running
/// threads busy on an oversubscribed machine); if it loses, the next unlock is its own.
pub const HEAD_MISSED_WAKEUPS: u32 = 1;

pub(crate) struct Pv;

/// Lock address: the hash key.
#[inline]
fn key(lock: &AtomicU32) -> usize {
    lock as *const AtomicU32 as usize
}

/// Under loom: tells the futex model's kick accounting that a waiter announced a halt (a
/// kick may then target it once, at unlock time).
#[inline(always)]
fn model_note_halt() {
    #[cfg(loom)]
    super::futex::model::note_halt();
}

/// True on every `mask + 1`-th iteration (`mask` is 2^k - 1; 0 means every iteration).
#[inline]
fn every(i: u32, mask: u32) -> bool {
    i & mask == 0
}

#[inline]
fn bump(node: &Node, i: u32) {
    if every(i, HEARTBEAT_MASK) {
        let hb = node.heartbeat.load(Ordering::Relaxed);
        node.heartbeat.store(hb.wrapping_add(1), Ordering::Relaxed);
    }
}

/// `trylock_clear_pending`: takes a free lock and clears our pending bit in one RMW.
#[inline]
fn trylock_clear_pending(lock: &AtomicU32) -> Option<u32> {
    let mut v = lock.load(Ordering::Relaxed);
    loop {
        if v & LOCKED_MASK != 0 {
            return None;
        }
        let new = (v & !PENDING_VAL) | LOCKED_VAL;
        match lock.compare_exchange_weak(v, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Some(new),
            Err(x) => v = x,
        }
    }
}

impl Hooks for Pv {
    const KIND: SpinLockKind = SpinLockKind::Pvqspin;
    const USE_PENDING: bool = false;

    #[inline]
    fn init_node(node: &Node) {
        node.state.store(RUNNING, Ordering::Relaxed);
    }

    /// `pv_hybrid_queued_unfair_trylock`, bounded and with backoff: steal while the head
    /// is not spinning, polling the lock word at exponentially growing intervals, for at
    /// most `STEAL_SPINS` spin iterations (see "Steal policy" in the header).
    fn trylock(lock: &AtomicU32, ep: &mut Episode) -> bool {
        let mut budget = STEAL_SPINS;
        let mut backoff = 1u32;
        loop {
            let v = lock.load(Ordering::Relaxed);
            if v & LOCKED_PENDING_MASK == 0 {
                if lock
                    .compare_exchange(v, v | LOCKED_VAL, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    if v & TAIL_MASK != 0 {
                        spin_add(Self::KIND, Event::Steals, 1);
                    }
                    return true;
                }
                continue;
            }
            // The queue head is spinning (pending): it goes first. Or our budget is spent:
            // queue, where we can sleep.
            if v & PENDING_VAL != 0 || budget == 0 {
                return false;
            }
            for _ in 0..backoff {
                ep.relax_bounded();
            }
            budget = budget.saturating_sub(backoff);
            backoff = (backoff * 2).min(STEAL_BACKOFF_MAX);
        }
    }

    fn wait_node(node: &Node, prev: &Node, ep: &mut Episode) {
        let mut slept = false;
        loop {
            let mut early = false;
            let mut last_hb = prev.heartbeat.load(Ordering::Relaxed);
            let mut stale = 0;
            for i in 1..=SPIN_THRESHOLD {
                if node.locked.load(Ordering::Acquire) != 0 {
                    return;
                }
                bump(node, i);
                if every(i, PV_PREV_CHECK_MASK) {
                    if prev.state.load(Ordering::Relaxed) != RUNNING {
                        early = true;
                        break;
                    }
                    let hb = prev.heartbeat.load(Ordering::Relaxed);
                    if hb == last_hb {
                        stale += 1;
                        if stale >= PV_STALE_CHECKS {
                            early = true;
                            break;
                        }
                    } else {
                        last_hb = hb;
                        stale = 0;
                    }
                }
                ep.relax_bounded();
            }

            // [S] state = HALTED; MB; [L] locked  -- pairs with kick_node. A CAS from
            // RUNNING, not a store: a HASHED state (kick_node got there first) is kept.
            let halted = node
                .state
                .compare_exchange(RUNNING, HALTED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
            if halted {
                model_note_halt();
            }
            fence(Ordering::SeqCst);
            if halted && node.locked.load(Ordering::Relaxed) == 0 {
                spin_add(Self::KIND, Event::Halts, 1);
                if early {
                    spin_add(Self::KIND, Event::WaitEarly, 1);
                }
                futex_wait(&node.state, HALTED, None);
                slept = true;
            }
            // Back to running unless kick_node made us HASHED (then keep it: we are hashed
            // and must not hash again in wait_head). Acquire on failure: the HASHED we read
            // (or the RUNNING of the unlock that followed) was written after kick_node's
            // SeqCst fence, which follows its `locked = 1`, so the load below sees it.
            let _ =
                node.state
                    .compare_exchange(HALTED, RUNNING, Ordering::Relaxed, Ordering::Acquire);
            if node.locked.load(Ordering::Acquire) != 0 {
                return;
            }
            if slept {
                spin_add(Self::KIND, Event::SpuriousWakeups, 1);
                slept = false;
            }
        }
    }

    fn kick_node(lock: &AtomicU32, next: &Node, next_tail: u32) {
        // [S] next.locked = 1 (by the caller); MB; [RmW] state  -- pairs with wait_node.
        fence(Ordering::SeqCst);
        if next
            .state
            .compare_exchange(HALTED, HASHED, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // We own the lock (byte 1) and will unlock it ourselves, so program order suffices
        // between these two and our unlock.
        lock.fetch_or(SLOW_VAL, Ordering::Relaxed);
        pv_hash(key(lock), next_tail);
        spin_add(Self::KIND, Event::HashedHandoffs, 1);
    }

    fn wait_head_or_lock(lock: &AtomicU32, node: &Node, tail: u32, ep: &mut Episode) -> u32 {
        // Wake-ups (by an unlocker) after which the lock was taken again before we got it.
        let mut missed_wakeups = 0u32;
        'outer: loop {
            // Active spinning, with pending set so nobody steals the lock from us.
            lock.fetch_or(PENDING_VAL, Ordering::Relaxed);
            for i in 1..=SPIN_THRESHOLD {
                if let Some(v) = trylock_clear_pending(lock) {
                    return v;
                }
                bump(node, i);
                ep.relax_bounded();
            }
            // Starvation bound: once a wake-up found the lock stolen, keep pending set
            // while we sleep, so that no one can take the lock between the next unlock
            // and our wake-up (see "Steal policy").
            let keep_pending = missed_wakeups >= HEAD_MISSED_WAKEUPS;
            if !keep_pending {
                lock.fetch_and(!PENDING_VAL, Ordering::Relaxed);
            }

            if node.state.load(Ordering::Acquire) != HASHED {
                match hash_self(lock, node, tail) {
                    HashOutcome::Hashed => {}
                    HashOutcome::Acquired(v) => return v,
                    HashOutcome::UnlockInFlight => {
                        // The unlocker already woke us and will release in a moment: wait
                        // for it (a spurious wake-up can get us here before it releases).
                        ep.relax();
                        continue 'outer;
                    }
                }
            }

            // Hashed: the unlocker will set RUNNING and wake us exactly once.
            spin_add(Self::KIND, Event::Halts, 1);
            model_note_halt();
            if keep_pending {
                spin_add(Self::KIND, Event::HeadPendingSleeps, 1);
            }
            futex_wait(&node.state, HASHED, None);
            if node.state.load(Ordering::Acquire) == HASHED {
                spin_add(Self::KIND, Event::SpuriousWakeups, 1);
            } else {
                missed_wakeups = missed_wakeups.saturating_add(1);
            }
        }
    }
}

/// What [`hash_self`] did.
enum HashOutcome {
    /// Hashed, `_Q_SLOW_VAL` published: sleep until the unlocker wakes us.
    Hashed,
    /// The lock was free: it is ours (the lock word as we left it).
    Acquired(u32),
    /// A slow unlock is in flight (it already made us `RUNNING`): spin again.
    UnlockInFlight,
}

/// The queue head hashes itself, then publishes `_Q_SLOW_VAL` (Release) so that the unlocker
/// that sees it finds the entry and our `HASHED` state. If the lock turns out to be free,
/// takes it instead (clearing a pending bit we kept).
fn hash_self(lock: &AtomicU32, node: &Node, tail: u32) -> HashOutcome {
    let slot = pv_hash(key(lock), tail);
    node.state.store(HASHED, Ordering::Relaxed);
    let mut v = lock.load(Ordering::Relaxed);
    loop {
        let r = match v & LOCKED_MASK {
            0 => lock.compare_exchange(
                v,
                (v & !PENDING_VAL) | LOCKED_VAL,
                Ordering::Acquire,
                Ordering::Relaxed,
            ),
            LOCKED_VAL => {
                lock.compare_exchange(v, v | SLOW_VAL, Ordering::Release, Ordering::Relaxed)
            }
            _ => {
                // Undo: the lock is about to be free.
                pv_unhash_slot(slot);
                node.state.store(RUNNING, Ordering::Relaxed);
                return HashOutcome::UnlockInFlight;
            }
        };
        match r {
            Ok(old) if old & LOCKED_MASK == 0 => {
                // It was free: it is ours, no need to be woken.
                pv_unhash_slot(slot);
                node.state.store(RUNNING, Ordering::Relaxed);
                return HashOutcome::Acquired((old & !PENDING_VAL) | LOCKED_VAL);
            }
            Ok(_) => return HashOutcome::Hashed,
            Err(x) => v = x,
        }
    }
}

/// Steals on the inline path are frequent (every contended acquisition of a running thread
/// while the queue head sleeps), so they are counted per thread and added to the global
/// counter in batches of [`steal_batch::BATCH`] (and when the thread exits): a snapshot may
/// lag by less than one batch per live thread.
mod steal_batch {
    use crate::stats::{spin_add, Event};
    use crate::SpinLockKind;
    use std::cell::Cell;

    pub(super) const BATCH: u32 = 64;

    struct Pending(Cell<u32>);

    impl Drop for Pending {
        fn drop(&mut self) {
            let n = self.0.get();
            if n != 0 {
                spin_add(SpinLockKind::Pvqspin, Event::Steals, u64::from(n));
            }
        }
    }

    thread_local! {
        static PENDING: Pending = const { Pending(Cell::new(0)) };
    }

    #[inline]
    pub(super) fn count() {
        let flushed = PENDING.try_with(|p| {
            let n = p.0.get() + 1;
            if n >= BATCH {
                p.0.set(0);
                spin_add(SpinLockKind::Pvqspin, Event::Steals, u64::from(n));
            } else {
                p.0.set(n);
            }
        });
        if flushed.is_err() {
            spin_add(SpinLockKind::Pvqspin, Event::Steals, 1);
        }
    }
}

/// The fast path's first read of the lock word. Under loom it is an RMW that reads the
/// latest value: a plain relaxed load lets loom also try every older value of the word on
/// every acquisition, which multiplies the models' running time (minutes instead of
/// seconds); a stale read can only make the following CAS fail or send the locker to the
/// slow path with an outdated value, and the models reach both through interleavings
/// anyway (the word changes between the read and the CAS, or before the slow path's first
/// access).
#[cfg(not(loom))]
#[inline(always)]
fn read_word(w: &AtomicU32) -> u32 {
    w.load(Ordering::Relaxed)
}

#[cfg(loom)]
fn read_word(w: &AtomicU32) -> u32 {
    w.fetch_or(0, Ordering::Relaxed)
}

/// Raw paravirt queued spinlock (`lock_api::RawMutex` outside loom).
///
/// # Examples
///
/// The raw lock protects no data of its own; wrap it in [`PvQSpinLock`](crate::PvQSpinLock)
/// unless the protected state lives elsewhere.
///
/// ```
/// use pvnet_locks::spin::RawPvQSpinLock;
///
/// let l = RawPvQSpinLock::new();
/// l.lock();
/// assert!(l.is_locked() && !l.try_lock());
/// // SAFETY: this thread holds the lock (taken just above).
/// unsafe { l.unlock() };
/// assert!(l.try_lock());
/// // SAFETY: held by this thread (the successful try_lock).
/// unsafe { l.unlock() };
/// ```
pub struct RawPvQSpinLock {
    val: AtomicU32,
}

impl RawPvQSpinLock {
    /// A free lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawPvQSpinLock {
            val: AtomicU32::new(0),
        }
    }

    /// A free lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawPvQSpinLock {
            val: AtomicU32::new(0),
        }
    }

    /// Acquires the lock.
    ///
    /// One read of the lock word, then one CAS setting `locked` if neither `locked` nor
    /// `pending` is set: on a free word that is the usual `0 -> locked`; with only the tail
    /// set (the queue head is asleep, not spinning with pending) it takes the lock ahead of
    /// the queue, the first attempt of Linux's hybrid unfair trylock. On an oversubscribed
    /// machine the queue is rarely empty, so this is the common contended acquisition; it
    /// is counted as a steal (batched per thread) but not as a slow path. Reading first
    /// instead of trying `0 -> locked` blindly saves a failed CAS (as costly as a successful
    /// one) on every such acquisition: 2 cores, 8/16 threads, 46-48 -> 62 M lock/unlock per
    /// second; uncontended unchanged (64-65 M/s).
    #[inline]
    pub fn lock(&self) {
        // One read of the word first: with waiters queued (tail set) a `0 -> locked` CAS
        // would always fail, and a failed CAS costs as much as a successful one.
        let v = read_word(&self.val);
        if v & LOCKED_PENDING_MASK == 0 {
            match self
                .val
                .compare_exchange(v, v | LOCKED_VAL, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    if v != 0 {
                        steal_batch::count();
                    }
                    return;
                }
                Err(now) => return lock_slowpath::<Pv>(&self.val, now),
            }
        }
        lock_slowpath::<Pv>(&self.val, v);
    }

    /// Acquires the lock if it is completely free right now.
    #[inline]
    pub fn try_lock(&self) -> bool {
        plain_trylock(&self.val)
    }

    /// Releases the lock, waking the hashed queue head if there is one.
    ///
    /// # Safety
    /// The caller holds the lock.
    #[inline]
    pub unsafe fn unlock(&self) {
        let old = self.val.fetch_sub(LOCKED_VAL, Ordering::Release);
        if old & LOCKED_MASK != LOCKED_VAL {
            self.unlock_slow();
        }
    }

    /// The locked byte was `_Q_SLOW_VAL` and is now 2: unhash, reset, release, wake.
    #[cold]
    #[inline(never)]
    fn unlock_slow(&self) {
        #[cfg(loom)]
        let _kicks_from_unlock = super::futex::model::UnlockScope::enter();
        // Pairs with the Release RMW that published _Q_SLOW_VAL (read by our fetch_sub).
        fence(Ordering::Acquire);
        let Some(code) = pv_unhash(key(&self.val)) else {
            // Ruled out by the protocol (SLOW is only published after hashing).
            log::error!("pvqspin: _Q_SLOW_VAL without a hash entry; releasing anyway");
            self.val.fetch_sub(SLOW_VAL - LOCKED_VAL, Ordering::Release);
            return;
        };
        let node = decode_tail(code);
        // Before the release: the head cannot have moved on yet.
        let old = node.state.swap(RUNNING, Ordering::AcqRel);
        self.val.fetch_sub(SLOW_VAL - LOCKED_VAL, Ordering::Release);
        if old != RUNNING {
            futex_wake(&node.state, 1);
            spin_add(SpinLockKind::Pvqspin, Event::Kicks, 1);
        }
    }

    /// Whether the lock is held (a racy snapshot).
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.val.load(Ordering::Relaxed) & LOCKED_MASK != 0
    }
}

impl Default for RawPvQSpinLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
// SAFETY: as for `RawQSpinLock`: every acquisition path ends in an Acquire RMW that claimed
// the free locked byte (fast path, steal, head trylock, head CAS 0 -> 1); the owner's unlock
// releases with Release (fast `fetch_sub`, or the slow path's final `fetch_sub`), and the
// byte stays non-zero (3, then 2) throughout a slow unlock, so nobody enters early.
unsafe impl lock_api::RawMutex for RawPvQSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawPvQSpinLock::new();
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        RawPvQSpinLock::lock(self)
    }
    #[inline]
    fn try_lock(&self) -> bool {
        RawPvQSpinLock::try_lock(self)
    }
    #[inline]
    unsafe fn unlock(&self) {
        // SAFETY: forwarded contract: the caller holds the lock.
        unsafe { RawPvQSpinLock::unlock(self) }
    }
    #[inline]
    fn is_locked(&self) -> bool {
        RawPvQSpinLock::is_locked(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::spin::node::Claim;
    use std::sync::Arc;

    #[test]
    fn lock_word_constants() {
        assert_eq!(SLOW_VAL & LOCKED_MASK, SLOW_VAL);
        assert_eq!(
            SLOW_VAL & LOCKED_VAL,
            LOCKED_VAL,
            "SLOW keeps the lock held"
        );
        assert_eq!(SLOW_VAL & PENDING_VAL, 0);
        assert_ne!(HALTED, RUNNING);
        assert_ne!(HASHED, HALTED);
    }

    /// A waiter that finds the lock held long enough hashes itself, sets _Q_SLOW_VAL and
    /// sleeps; the unlock takes the slow path, and wakes it exactly once.
    #[test]
    fn slow_unlock_wakes_the_hashed_head() {
        let l = Arc::new(RawPvQSpinLock::new());
        let before = crate::stats::spin_stats(SpinLockKind::Pvqspin);
        l.lock();
        let l2 = l.clone();
        let h = std::thread::spawn(move || {
            l2.lock();
            // SAFETY: held.
            unsafe { l2.unlock() };
        });
        while l.val.load(Ordering::Relaxed) & LOCKED_MASK != SLOW_VAL {
            std::thread::yield_now();
        }
        // SAFETY: held by this thread since the start.
        unsafe { l.unlock() };
        h.join().unwrap();
        assert_eq!(l.val.load(Ordering::Relaxed), 0);
        let d = crate::stats::spin_stats(SpinLockKind::Pvqspin).since(&before);
        assert!(d.halts >= 1 && d.kicks >= 1, "{d:?}");
        assert_eq!(
            pv_unhash(key(&l.val)),
            None,
            "the entry was removed by the unlock"
        );
    }

    /// A waiter that finds itself `HASHED` while `locked` still reads 0 (what a stale read
    /// of `locked` after kick_node would look like to it) must not overwrite `HASHED` when
    /// it halts again: it would become head as `RUNNING` and hash itself a second time.
    /// `node` waits with a halted predecessor, so it stops spinning early at iteration 64
    /// of each round, after 4 heartbeat bumps: a heartbeat of 8 means it went through the
    /// halt step once and came back to spin.
    #[test]
    fn waiting_node_keeps_a_hashed_state() {
        let (c, p) = (Claim::new().unwrap(), Claim::new().unwrap());
        let (node, prev) = (c.node(), p.node());
        prev.state.store(HALTED, Ordering::Relaxed);
        node.state.store(HASHED, Ordering::Relaxed);
        node.heartbeat.store(0, Ordering::Relaxed);
        std::thread::scope(|s| {
            let w = s.spawn(|| Pv::wait_node(node, prev, &mut Episode::default()));
            while node.state.load(Ordering::Relaxed) == HASHED
                && node.heartbeat.load(Ordering::Relaxed) < 8
            {
                std::thread::yield_now();
            }
            // Hand over the MCS head (and wake the waiter, should it sleep).
            node.locked.store(1, Ordering::Release);
            futex_wake(&node.state, 1);
            w.join().unwrap();
        });
        assert_eq!(node.state.load(Ordering::Relaxed), HASHED);
    }

    /// With all four nodes of the thread busy, a contended lock is still acquired (by
    /// spinning on the lock word, Linux's >4 nesting fallback).
    #[test]
    fn no_free_node_falls_back_to_spinning() {
        let l = Arc::new(RawPvQSpinLock::new());
        l.lock();
        let l2 = l.clone();
        let h = std::thread::spawn(move || {
            let claims: Vec<Claim> = (0..4).map(|_| Claim::new().unwrap()).collect();
            assert!(Claim::new().is_none());
            l2.lock();
            // SAFETY: held.
            unsafe { l2.unlock() };
            drop(claims);
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        // SAFETY: held by this thread.
        unsafe { l.unlock() };
        h.join().unwrap();
        assert!(!l.is_locked());
    }
}
