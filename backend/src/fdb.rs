//! Forwarding database of the learning switch: source MAC -> port.
//!
//! A direct-mapped table of atomic words, lock-free on both sides. Each slot packs
//! `mac (48 bits) << 16 | port (8 bits) << 8 | 1` into one `AtomicU64` plus the coarse time the
//! entry was last refreshed. Lookups are one load; learning writes only when the entry
//! changes (new MAC, station moved) or its timestamp is more than a second old, so the hot
//! path does not bounce cache lines between workers. A collision evicts the older entry,
//! which at worst causes flooding (always correct for a learning switch). Entries older
//! than [`AGE_SECS`] are ignored.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Entries not refreshed for this long are treated as unknown (flooded).
pub const AGE_SECS: u32 = 300;
const SLOTS: usize = 4096;

struct Slot {
    word: AtomicU64,
    seen: AtomicU32,
}

/// The switch's MAC table.
pub struct Fdb {
    slots: Box<[Slot]>,
    epoch: Instant,
}

impl Default for Fdb {
    fn default() -> Self {
        Self::new()
    }
}

/// The address as a big-endian number (two loads and a byte swap; a fold over the bytes
/// compiled to six loads and ten shifts, twice per frame).
fn mac_key(mac: &[u8; 6]) -> u64 {
    let [a, b, c, d, e, f] = *mac;
    u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}

fn slot_of(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize % SLOTS
}

impl Fdb {
    /// An empty table.
    pub fn new() -> Self {
        Fdb {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    word: AtomicU64::new(0),
                    seen: AtomicU32::new(0),
                })
                .collect(),
            epoch: Instant::now(),
        }
    }

    /// The table's coarse clock (seconds); workers read it once per batch and pass it to
    /// [`Fdb::learn_at`] / [`Fdb::lookup_at`].
    pub fn now(&self) -> u32 {
        // +1 so that 0 never means "fresh".
        self.epoch.elapsed().as_secs() as u32 + 1
    }

    /// Records that `mac` (a unicast source address) was seen on `port`.
    pub fn learn(&self, mac: &[u8; 6], port: usize) {
        self.learn_at(mac, port, self.now());
    }

    /// [`Fdb::learn`] at time `now` (from [`Fdb::now`]).
    pub fn learn_at(&self, mac: &[u8; 6], port: usize, now: u32) {
        let key = mac_key(mac);
        let slot = &self.slots[slot_of(key)];
        let word = (key << 16) | ((port as u64 & 0xff) << 8) | 1;
        if slot.word.load(Relaxed) != word {
            slot.word.store(word, Relaxed);
            slot.seen.store(now, Relaxed);
        } else if slot.seen.load(Relaxed) != now {
            slot.seen.store(now, Relaxed);
        }
    }

    /// The port `mac` was last seen on, if known and fresh.
    pub fn lookup(&self, mac: &[u8; 6]) -> Option<usize> {
        self.lookup_at(mac, self.now())
    }

    /// [`Fdb::lookup`] at time `now` (from [`Fdb::now`]).
    pub fn lookup_at(&self, mac: &[u8; 6], now: u32) -> Option<usize> {
        let key = mac_key(mac);
        let slot = &self.slots[slot_of(key)];
        let w = slot.word.load(Relaxed);
        if w & 1 == 0 || w >> 16 != key {
            return None;
        }
        if now.saturating_sub(slot.seen.load(Relaxed)) > AGE_SECS {
            return None;
        }
        Some(((w >> 8) & 0xff) as usize)
    }

    /// The fresh entries: (MAC, port, seconds since last seen). Reads every slot; for the
    /// control plane, not the data path.
    pub fn entries(&self) -> Vec<([u8; 6], usize, u32)> {
        let now = self.now();
        self.slots
            .iter()
            .filter_map(|s| {
                let w = s.word.load(Relaxed);
                let age = now.saturating_sub(s.seen.load(Relaxed));
                (w & 1 == 1 && age <= AGE_SECS).then(|| {
                    let k = w >> 16;
                    let mac: [u8; 6] = std::array::from_fn(|i| (k >> (40 - 8 * i)) as u8);
                    (mac, ((w >> 8) & 0xff) as usize, age)
                })
            })
            .collect()
    }

    /// Forgets every address (frames to them are flooded until learned again). Returns how
    /// many entries were dropped.
    pub fn flush(&self) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let w = s.word.load(Relaxed);
            if w & 1 == 1 && s.word.compare_exchange(w, 0, Relaxed, Relaxed).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Forgets every address learned on `port` (its guest went away).
    pub fn purge_port(&self, port: usize) {
        for s in self.slots.iter() {
            let w = s.word.load(Relaxed);
            if w & 1 == 1 && ((w >> 8) & 0xff) as usize == port {
                let _ = s.word.compare_exchange(w, 0, Relaxed, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_move_purge() {
        let f = Fdb::new();
        let a = [0x52, 0x54, 0, 0, 0, 1];
        let b = [0x52, 0x54, 0, 0, 0, 2];
        assert_eq!(f.lookup(&a), None);
        f.learn(&a, 3);
        f.learn(&b, 1);
        assert_eq!(f.lookup(&a), Some(3));
        assert_eq!(f.lookup(&b), Some(1));
        f.learn(&a, 0);
        assert_eq!(f.lookup(&a), Some(0), "station move overwrites");
        f.purge_port(0);
        assert_eq!(f.lookup(&a), None);
        assert_eq!(f.lookup(&b), Some(1));
        assert_eq!(f.entries(), vec![(b, 1, 0)]);
        assert_eq!(f.flush(), 1);
        assert_eq!(f.lookup(&b), None);
        assert!(f.entries().is_empty());
    }
}
