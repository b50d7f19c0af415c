//! The PV lock hash table: (lock address -> halted queue head) for `_Q_SLOW_VAL` locks
//! (Linux `pv_hash` / `pv_unhash`).
//!
//! Open addressing over buckets of one cache line (4 entries of 16 bytes): a key hashes to a
//! line, probing goes on linearly (wrapping) from the line's first entry, so most look-ups
//! touch one line. An entry is claimed with a CAS of its `lock` field from 0 and freed by
//! storing 0.
//!
//! Capacity is never exceeded: an entry exists only while the queue head of that lock is
//! hashed, every lock has at most one (hashing is serialised by the node-state CAS and the
//! owner unhashes before it releases), and each hashed head is a distinct node; there are at
//! most `MAX_NODES * MAX_THREADS` = 65,528 nodes and 65,536 entries.
//!
//! Ordering: the entry is written before `_Q_SLOW_VAL` is published with a Release RMW on
//! the lock word, and the unlocker reads the entry after observing `_Q_SLOW_VAL` with
//! Acquire, so Relaxed accesses suffice for the entry contents; freeing an entry is a
//! Release store and claiming one an Acquire CAS, so a reader of the old `node` never sees
//! the next claimer's value.

use crate::sync::{AtomicU32, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;

const ENTRIES_PER_LINE: usize = 4;

#[cfg(not(loom))]
const HASH_BITS: u32 = 16;
#[cfg(loom)]
const HASH_BITS: u32 = 3;
const ENTRIES: usize = 1 << HASH_BITS;

struct Entry {
    lock: AtomicUsize,
    node: AtomicU32,
}

struct Line([Entry; ENTRIES_PER_LINE]);

impl Line {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Line(
            [const {
                Entry {
                    lock: AtomicUsize::new(0),
                    node: AtomicU32::new(0),
                }
            }; ENTRIES_PER_LINE],
        )
    }

    #[cfg(loom)]
    fn new() -> Self {
        Line([(); ENTRIES_PER_LINE].map(|_| Entry {
            lock: AtomicUsize::new(0),
            node: AtomicU32::new(0),
        }))
    }
}

#[cfg(not(loom))]
#[allow(clippy::declare_interior_mutable_const)]
static TABLE: [CachePadded<Line>; ENTRIES / ENTRIES_PER_LINE] =
    [const { CachePadded::new(Line::new()) }; ENTRIES / ENTRIES_PER_LINE];

#[cfg(not(loom))]
#[inline]
fn table() -> &'static [CachePadded<Line>] {
    &TABLE
}

#[cfg(loom)]
loom::lazy_static! {
    static ref TABLE: Vec<CachePadded<Line>> =
        (0..ENTRIES / ENTRIES_PER_LINE).map(|_| CachePadded::new(Line::new())).collect();
}

#[cfg(loom)]
fn table() -> &'static [CachePadded<Line>] {
    &TABLE
}

#[inline]
fn entry(i: usize) -> &'static Entry {
    let i = i & (ENTRIES - 1);
    &table()[i / ENTRIES_PER_LINE].0[i % ENTRIES_PER_LINE]
}

/// First entry of the key's line.
#[inline]
fn home(addr: usize) -> usize {
    let h = ((addr as u64) >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - HASH_BITS);
    (h as usize) & !(ENTRIES_PER_LINE - 1)
}

/// A claimed entry, returned so its owner can free it directly.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot(usize);

/// Records `lock -> node` (a node tail code). See the module docs for why a free entry
/// always exists; if that invariant were ever broken this panics rather than corrupting.
pub(crate) fn pv_hash(lock: usize, node: u32) -> Slot {
    let h = home(lock);
    for off in 0..ENTRIES {
        let e = entry(h + off);
        if e.lock.load(Ordering::Relaxed) == 0
            && e.lock
                .compare_exchange(0, lock, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            e.node.store(node, Ordering::Relaxed);
            return Slot((h + off) & (ENTRIES - 1));
        }
    }
    panic!("pvqspin hash table full: more hashed waiters than queue nodes");
}

/// Frees an entry claimed by [`pv_hash`] (the waiter got the lock after hashing itself).
pub(crate) fn pv_unhash_slot(slot: Slot) {
    entry(slot.0).lock.store(0, Ordering::Release);
}

/// Removes the entry of `lock` and returns its node code; `None` if there is none (which
/// the lock protocol rules out whenever the lock byte is `_Q_SLOW_VAL`).
pub(crate) fn pv_unhash(lock: usize) -> Option<u32> {
    let h = home(lock);
    for off in 0..ENTRIES {
        let e = entry(h + off);
        if e.lock.load(Ordering::Relaxed) == lock {
            let node = e.node.load(Ordering::Relaxed);
            // Release: our read of `node` happens-before a later claimer's (Acquire) write.
            e.lock.store(0, Ordering::Release);
            return Some(node);
        }
    }
    None
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove() {
        // Distinct fake lock addresses that cannot collide with real locks in other tests
        // (odd addresses are never AtomicU32 addresses).
        let keys: Vec<usize> = (0..40).map(|i| 0x1001 + i * 8 * 64).collect();
        let slots: Vec<Slot> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| pv_hash(k, 1000 + i as u32))
            .collect();
        for (i, &k) in keys.iter().enumerate().rev() {
            assert_eq!(pv_unhash(k), Some(1000 + i as u32));
            assert_eq!(pv_unhash(k), None, "an entry is removed exactly once");
        }
        let _ = slots;
        let s = pv_hash(0x7777, 5);
        pv_unhash_slot(s);
        assert_eq!(pv_unhash(0x7777), None);
    }

    #[test]
    fn colliding_keys_probe_past_a_full_line() {
        // Find 6 keys with the same home line: more than a line holds. The table is global
        // and tests run in parallel: these keys stay clear of `insert_find_remove`'s
        // (0x1001 + i * 512, 0x7777).
        let target = home(0x1000_0001);
        let keys: Vec<usize> = (0..)
            .map(|i| 0x1000_0001 + i * 2)
            .filter(|&k| home(k) == target)
            .take(6)
            .collect();
        for (i, &k) in keys.iter().enumerate() {
            pv_hash(k, i as u32 + 1);
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(pv_unhash(k), Some(i as u32 + 1));
        }
    }
}
