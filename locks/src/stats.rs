//! Lock event counters in the spirit of Linux's `lockevents`.
//!
//! Counters are per lock *kind* (not per lock instance), like the kernel's. They are only
//! touched on slow paths, so the uncontended fast path of every lock stays free of shared
//! writes. Spin iterations are accumulated locally and added once per slow-path episode.

use crate::{RwLockKind, SpinLockKind};
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One countable lock event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Event {
    /// Entered the slow path (contended acquisition).
    SlowPath = 0,
    /// qspinlock: acquired through the pending bit (no MCS queueing).
    Pending,
    /// Spin-loop iterations spent waiting.
    Spins,
    /// PV: waits on a futex (the user-space `pv_wait` / vCPU halt).
    Halts,
    /// PV: futex wakes issued (the user-space `pv_kick`).
    Kicks,
    /// PV: the new lock holder hashed a halted queue head (`_Q_SLOW_VAL` hand-off).
    HashedHandoffs,
    /// PV: the lock was stolen (hybrid unfair trylock) ahead of the queue.
    Steals,
    /// PV: futex wait returned without the awaited condition.
    SpuriousWakeups,
    /// PV: a waiter slept early because its predecessor was not running.
    WaitEarly,
    /// PV: the queue head slept keeping `pending` set (a wake-up had found the lock
    /// stolen), so the next unlock leaves the lock to it.
    HeadPendingSleeps,
    /// rwlock: reader fell back to the underlying lock (writer active, or no free slot).
    ReadSlowPath,
    /// rwlock: write acquisitions.
    WriteLocks,
    /// rwlock: iterations a writer spent waiting for per-thread readers to drain.
    WriterWaitSpins,
    /// rwlock: asymmetric barriers (membarrier) issued by writers.
    Membarriers,
}

const NR_EVENTS: usize = Event::Membarriers as usize + 1;
const NR_KINDS: usize = 6;

/// A snapshot of the counters of one lock kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    pub slow_paths: u64,
    pub pending: u64,
    pub spins: u64,
    pub halts: u64,
    pub kicks: u64,
    pub hashed_handoffs: u64,
    pub steals: u64,
    pub spurious_wakeups: u64,
    pub wait_early: u64,
    pub head_pending_sleeps: u64,
    pub read_slow_paths: u64,
    pub write_locks: u64,
    pub writer_wait_spins: u64,
    pub membarriers: u64,
}

impl LockStats {
    /// The field names and values, in a fixed order (for tables, CSV and JSON output).
    pub fn fields(&self) -> [(&'static str, u64); NR_EVENTS] {
        [
            ("slow_paths", self.slow_paths),
            ("pending", self.pending),
            ("spins", self.spins),
            ("halts", self.halts),
            ("kicks", self.kicks),
            ("hashed_handoffs", self.hashed_handoffs),
            ("steals", self.steals),
            ("spurious_wakeups", self.spurious_wakeups),
            ("wait_early", self.wait_early),
            ("head_pending_sleeps", self.head_pending_sleeps),
            ("read_slow_paths", self.read_slow_paths),
            ("write_locks", self.write_locks),
            ("writer_wait_spins", self.writer_wait_spins),
            ("membarriers", self.membarriers),
        ]
    }

    /// Counter-wise difference `self - earlier` (for per-interval figures).
    pub fn since(&self, earlier: &LockStats) -> LockStats {
        let a = self.raw();
        let b = earlier.raw();
        let mut out = [0u64; NR_EVENTS];
        for i in 0..NR_EVENTS {
            out[i] = a[i].wrapping_sub(b[i]);
        }
        LockStats::from_raw(out)
    }

    fn raw(&self) -> [u64; NR_EVENTS] {
        self.fields().map(|(_, v)| v)
    }

    fn from_raw(r: [u64; NR_EVENTS]) -> LockStats {
        LockStats {
            slow_paths: r[0],
            pending: r[1],
            spins: r[2],
            halts: r[3],
            kicks: r[4],
            hashed_handoffs: r[5],
            steals: r[6],
            spurious_wakeups: r[7],
            wait_early: r[8],
            head_pending_sleeps: r[9],
            read_slow_paths: r[10],
            write_locks: r[11],
            writer_wait_spins: r[12],
            membarriers: r[13],
        }
    }
}

struct Counters([CachePadded<AtomicU64>; NR_EVENTS]);

impl Counters {
    const fn new() -> Self {
        Counters([const { CachePadded::new(AtomicU64::new(0)) }; NR_EVENTS])
    }
}

static SPIN: [Counters; NR_KINDS] = [const { Counters::new() }; NR_KINDS];
static RW: [Counters; NR_KINDS] = [const { Counters::new() }; NR_KINDS];

fn spin_idx(k: SpinLockKind) -> usize {
    SpinLockKind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

fn rw_idx(k: RwLockKind) -> usize {
    RwLockKind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// Adds `n` to event `e` of spinlock kind `k` (slow paths only).
#[inline]
pub fn spin_add(k: SpinLockKind, e: Event, n: u64) {
    SPIN[spin_idx(k)].0[e as usize].fetch_add(n, Relaxed);
}

/// Adds `n` to event `e` of rwlock kind `k` (slow paths only).
#[inline]
pub fn rw_add(k: RwLockKind, e: Event, n: u64) {
    RW[rw_idx(k)].0[e as usize].fetch_add(n, Relaxed);
}

fn snap(c: &Counters) -> LockStats {
    let mut r = [0u64; NR_EVENTS];
    for (i, v) in r.iter_mut().enumerate() {
        *v = c.0[i].load(Relaxed);
    }
    LockStats::from_raw(r)
}

/// Snapshot of the counters of spinlock kind `k` (all locks of that kind, process-wide).
pub fn spin_stats(k: SpinLockKind) -> LockStats {
    snap(&SPIN[spin_idx(k)])
}

/// Snapshot of the counters of rwlock kind `k` (all locks of that kind, process-wide).
pub fn rw_stats(k: RwLockKind) -> LockStats {
    snap(&RW[rw_idx(k)])
}
