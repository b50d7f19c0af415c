//! Readers copy continuously while a writer replaces and revokes regions, for every rwlock
//! kind. Right after each revoke or replace returns, the writer poisons the revoked mapping;
//! readers assert they never read poison. A little later the writer checks the poisoned
//! mapping is still all poison (no reader wrote it after the revoke), then drops its last
//! reference (munmap): a reader still using it would fault.

use pvnet_grant::{memfd, read_pair, Access, GrantTable};
use pvnet_locks::family::{resolve_rw, RwFamily};
use pvnet_locks::{with_rw_family, RwLockKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    VolatileMemory,
};

const REGION: usize = 64 * 1024;
const REGIONS: u64 = 4;
const POISON: u8 = 0xEE;
const GOOD: u8 = 0x11;
const WRITTEN: u8 = 0x22;
const ITERATIONS: usize = 60;

fn fill(region: &GuestRegionMmap, byte: u8) {
    let s = region.get_mmap();
    s.get_slice(0, REGION)
        .unwrap()
        .copy_from(&vec![byte; REGION]);
}

fn all(region: &GuestRegionMmap, byte: u8) -> bool {
    let mut buf = vec![0u8; REGION];
    region
        .get_mmap()
        .get_slice(0, REGION)
        .unwrap()
        .copy_to(&mut buf[..]);
    buf.iter().all(|&b| b == byte)
}

fn fresh_memory() -> GuestMemoryMmap {
    let ranges: Vec<(u64, usize)> = (0..REGIONS).map(|i| (i * REGION as u64, REGION)).collect();
    let mem = memfd::guest_memory::<()>(&ranges).unwrap();
    for r in mem.iter() {
        fill(r, GOOD);
    }
    mem
}

fn one_region(gpa: u64) -> GuestMemoryMmap {
    let mem = memfd::guest_memory::<()>(&[(gpa, REGION)]).unwrap();
    fill(mem.iter().next().unwrap(), GOOD);
    mem
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn reader<F: RwFamily>(
    id: u64,
    a: &GrantTable<F>,
    b: &GrantTable<F>,
    stop: &AtomicBool,
    ok_ops: &AtomicU64,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    let mut buf = vec![0u8; 1500];
    let space = REGIONS * REGION as u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let gpa = GuestAddress(rng.next() % (space - 1500));
        let len = 1 + (rng.next() % 1500) as usize;
        match rng.next() % 4 {
            // Per-buffer read.
            0 => {
                if a.copy_from_guest(gpa, &mut buf[..len]).is_ok() {
                    assert!(!buf[..len].contains(&POISON), "read a revoked mapping");
                    n += 1;
                }
            }
            // Batched: several reads and a write under one guard.
            1 => {
                let g = a.read();
                for k in 0..4u64 {
                    let at = GuestAddress((gpa.0 + k * 4096) % (space - 1500));
                    if g.read_into(at, &mut buf[..len]).is_ok() {
                        assert!(!buf[..len].contains(&POISON), "read a revoked mapping");
                        n += 1;
                    }
                }
                if g.write_from(gpa, &[WRITTEN; 64]).is_ok() {
                    n += 1;
                }
            }
            // Grant copy A -> B, then read back from B under the same guards.
            2 => {
                let pair = read_pair(a, b);
                let dst = GuestAddress(rng.next() % (space - 1500));
                if pair.copy(gpa, dst, len).is_ok() {
                    pair.dst().read_into(dst, &mut buf[..len]).unwrap();
                    assert!(
                        !buf[..len].contains(&POISON),
                        "copied from a revoked mapping"
                    );
                    n += 1;
                }
            }
            // Translate and read the pieces directly.
            _ => {
                let g = a.read();
                if let Ok(pieces) = g.translate(gpa, len, Access::ReadOnly) {
                    let mut done = 0;
                    for p in pieces {
                        done += p.unwrap().copy_to(&mut buf[done..len]);
                    }
                    assert_eq!(done, len);
                    assert!(
                        !buf[..len].contains(&POISON),
                        "translated a revoked mapping"
                    );
                    n += 1;
                }
            }
        }
    }
    ok_ops.fetch_add(n, Ordering::Relaxed);
}

/// Poisons what was revoked, lets readers run, checks nobody wrote it, then drops it.
fn retire(old: Vec<Arc<GuestRegionMmap>>) {
    for r in &old {
        fill(r, POISON);
    }
    // Let the readers run (a sleep, not yields: yielding to busy readers costs whole
    // time slices on a 2-core machine).
    std::thread::sleep(std::time::Duration::from_micros(200));
    for r in &old {
        assert!(all(r, POISON), "a reader wrote a revoked mapping");
    }
    drop(old); // Last references: munmap.
}

fn run<F: RwFamily>(kind: RwLockKind) {
    let a = GrantTable::<F>::new();
    let b = GrantTable::<F>::new();
    assert_eq!(
        a.kind(),
        resolve_rw(kind),
        "the table must use the requested lock kind"
    );
    let mut mem = fresh_memory();
    a.replace_from_memory(&mem).unwrap();
    b.replace_from_memory(&fresh_memory()).unwrap();
    let stop = AtomicBool::new(false);
    let ok_ops = AtomicU64::new(0);
    let gen0 = a.generation();
    std::thread::scope(|s| {
        for id in 0..3 {
            let (a, b, stop, ok_ops) = (&a, &b, &stop, &ok_ops);
            s.spawn(move || reader(id, a, b, stop, ok_ops));
        }
        for it in 0..ITERATIONS {
            let k = (it as u64 * 7) % REGIONS;
            let gpa = k * REGION as u64;
            let old: Vec<Arc<GuestRegionMmap>>;
            match it % 10 {
                // Whole new memory table (SET_MEM_TABLE).
                9 => {
                    let next = fresh_memory();
                    let sum = a.replace_from_memory(&next).unwrap();
                    assert_eq!((sum.kept, sum.added, sum.removed), (0, 4, 4));
                    old = mem.iter().map(|r| Arc::new(clone_region(r))).collect();
                    mem = next;
                }
                // Revoke everything, then grant it back (disconnect / reconnect).
                4 => {
                    assert_eq!(a.revoke_all(), REGIONS as usize);
                    let next = fresh_memory();
                    old = mem.iter().map(|r| Arc::new(clone_region(r))).collect();
                    // Readers see "not granted" between the two writers.
                    retire(old.clone());
                    a.replace_from_memory(&next).unwrap();
                    mem = next;
                    drop(old);
                    continue;
                }
                // Replace one region (REM_MEM_REG + ADD_MEM_REG) in one write-lock hold.
                _ => {
                    let next = one_region(gpa);
                    let new_region = next.iter().next().unwrap();
                    a.update(|w| {
                        w.remove_region(GuestAddress(gpa)).unwrap();
                        w.add_region(new_region, Access::ReadWrite).unwrap();
                    });
                    let mut regions: Vec<Arc<GuestRegionMmap>> = Vec::new();
                    let mut replaced = Vec::new();
                    for r in mem.iter() {
                        if r.start_addr().0 == gpa {
                            replaced.push(Arc::new(clone_region(r)));
                            regions.push(Arc::new(clone_region(new_region)));
                        } else {
                            regions.push(Arc::new(clone_region(r)));
                        }
                    }
                    mem = GuestMemoryMmap::from_arc_regions(regions).unwrap();
                    old = replaced;
                }
            }
            retire(old);
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        ok_ops.load(Ordering::Relaxed) > 0,
        "readers never succeeded"
    );
    assert!(a.generation() > gen0);
    assert_eq!(a.grants().len(), REGIONS as usize);
}

/// Another `GuestRegionMmap` sharing `r`'s mapping (keeps it mapped while held).
fn clone_region(r: &GuestRegionMmap) -> GuestRegionMmap {
    GuestRegionMmap::with_arc(r.get_mmap(), r.start_addr()).unwrap()
}

#[test]
fn revoked_mappings_are_never_touched() {
    for &kind in RwLockKind::ALL {
        with_rw_family!(kind, F => run::<F>(kind));
    }
}
