//! Unit tests of the less random parts: memory-table diffs, splits, spans, errors.

use crate::{memfd, read_pair, Access, GrantError, GrantTable, HostMapping};
use pvnet_locks::family::{ParkingLotRw, StdRw};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const K: usize = 4096;

fn mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
    memfd::guest_memory::<()>(ranges).unwrap()
}

#[test]
fn replace_keeps_unchanged_regions_and_their_generation() {
    let t = GrantTable::<ParkingLotRw>::new();
    let m1 = mem(&[(0, K), (K as u64, K)]);
    let s = t.replace_from_memory(&m1).unwrap();
    assert_eq!((s.kept, s.added, s.removed), (0, 2, 0));
    let g1 = t.generation();
    // Same memory again: nothing changes, not even the generation.
    let s = t.replace_from_memory(&m1).unwrap();
    assert_eq!((s.kept, s.added, s.removed), (2, 0, 0));
    assert_eq!(t.generation(), g1);
    // ADD_MEM_REG as vhost-user-backend does it: the whole memory plus one region.
    let extra = mem(&[(0x10000, K)]);
    let region = extra.iter().next().unwrap().get_mmap();
    let m2 = m1
        .insert_region(std::sync::Arc::new(
            vm_memory::GuestRegionMmap::with_arc(region, GuestAddress(0x10000)).unwrap(),
        ))
        .unwrap();
    let s = t.replace_from_memory(&m2).unwrap();
    assert_eq!((s.kept, s.added, s.removed), (2, 1, 0));
    let gens: Vec<u64> = t.grants().iter().map(|g| g.generation).collect();
    assert_eq!(gens, vec![g1, g1, g1 + 1]);
    // A remapping of the same files is a new mapping: everything is replaced.
    let s = t.replace_from_memory(&memfd::remap(&m2).unwrap()).unwrap();
    assert_eq!((s.kept, s.added, s.removed), (0, 3, 3));
}

#[test]
fn adjacent_grants_translate_in_pieces() {
    let t = GrantTable::<StdRw>::new();
    let m = mem(&[(0, K), (K as u64, K), (3 * K as u64, K)]);
    t.replace_from_memory(&m).unwrap();
    let g = t.read();
    let lens: Vec<usize> = g
        .translate(GuestAddress(K as u64 - 10), 30, Access::ReadWrite)
        .unwrap()
        .map(|p| p.unwrap().len())
        .collect();
    assert_eq!(lens, vec![10, 20]);
    assert_eq!(
        g.check(GuestAddress(2 * K as u64 - 1), 2, Access::ReadOnly),
        Err(GrantError::CrossesHole { gpa: 2 * K as u64 })
    );
    assert_eq!(
        g.check(GuestAddress(2 * K as u64), 1, Access::ReadOnly),
        Err(GrantError::NotGranted { gpa: 2 * K as u64 })
    );
    assert_eq!(
        g.check(GuestAddress(0), 0, Access::ReadOnly),
        Err(GrantError::ZeroLength { gpa: 0 })
    );
    assert_eq!(
        g.check(GuestAddress(u64::MAX), 2, Access::ReadOnly),
        Err(GrantError::LengthOverflow {
            gpa: u64::MAX,
            len: 2
        })
    );
    // Data written across the boundary reads back across it.
    let data: Vec<u8> = (0..100).collect();
    g.write_from(GuestAddress(K as u64 - 50), &data).unwrap();
    let mut back = [0u8; 100];
    g.read_into(GuestAddress(K as u64 - 50), &mut back).unwrap();
    assert_eq!(&back[..], &data[..]);
}

#[test]
fn partial_revoke_splits_and_rights_are_enforced() {
    let t = GrantTable::<ParkingLotRw>::new();
    let m = mem(&[(0, K)]);
    let host = HostMapping::from_region(m.iter().next().unwrap());
    t.grant(
        GuestAddress(0x1000),
        K as u64,
        host.clone(),
        Access::ReadOnly,
    )
    .unwrap();
    assert_eq!(
        t.grant(GuestAddress(0x1800), 16, host.clone(), Access::ReadWrite),
        Err(GrantError::Overlap { gpa: 0x1800 })
    );
    assert_eq!(
        t.grant(GuestAddress(0x9000), K as u64 + 1, host, Access::ReadWrite),
        Err(GrantError::HostRange {
            offset: 0,
            len: K as u64 + 1,
            size: K
        })
    );
    assert_eq!(t.revoke(GuestAddress(0x1100), 0x100), Ok(0x100));
    let parts: Vec<(u64, u64)> = t.grants().iter().map(|g| (g.gpa, g.len)).collect();
    assert_eq!(parts, vec![(0x1000, 0x100), (0x1200, K as u64 - 0x200)]);
    assert_eq!(
        t.copy_to_guest(GuestAddress(0x1000), &[1]),
        Err(GrantError::ReadOnly { gpa: 0x1000 })
    );
    assert_eq!(t.remove_region(GuestAddress(0x1000)).unwrap().len, 0x100);
    assert_eq!(
        t.remove_region(GuestAddress(0x1000)),
        Err(GrantError::NoSuchGrant { gpa: 0x1000 })
    );
    assert_eq!(t.revoke_all(), 1);
    assert!(t.is_empty());
}

#[test]
fn grant_copy_between_tables_and_within_one() {
    let a = GrantTable::<ParkingLotRw>::new();
    let b = GrantTable::<ParkingLotRw>::new();
    let (ma, mb) = (mem(&[(0, K)]), mem(&[(0x8000, K)]));
    a.replace_from_memory(&ma).unwrap();
    b.add_region(mb.iter().next().unwrap(), Access::WriteOnly)
        .unwrap();
    a.copy_to_guest(GuestAddress(10), b"hello").unwrap();
    a.grant_copy_to(GuestAddress(10), &b, GuestAddress(0x8000), 5)
        .unwrap();
    // B is write-only: it cannot be read back through the table, nor be a copy source.
    let mut buf = [0u8; 5];
    assert_eq!(
        b.copy_from_guest(GuestAddress(0x8000), &mut buf),
        Err(GrantError::WriteOnly { gpa: 0x8000 })
    );
    assert_eq!(
        b.grant_copy_to(GuestAddress(0x8000), &a, GuestAddress(0), 5),
        Err(GrantError::WriteOnly { gpa: 0x8000 })
    );
    // Both directions give the same lock order.
    let p = read_pair(&b, &a);
    assert_eq!(p.src().generation(), b.generation());
    drop(p);
    // Within one table, overlapping: memmove semantics inside one grant.
    a.grant_copy_to(GuestAddress(10), &a, GuestAddress(12), 5)
        .unwrap();
    a.copy_from_guest(GuestAddress(10), &mut buf).unwrap();
    assert_eq!(&buf, b"hehel");
    let mut host = [0u8; 5];
    use vm_memory::Bytes;
    mb.read_slice(&mut host, GuestAddress(0x8000)).unwrap();
    assert_eq!(&host, b"hello");
}

/// A writer closure that panics after changing the table: the change stands (the unwind
/// releases the lock and unmaps what was revoked), so the generation must move on, or a
/// reader's host addresses kept for the old generation would outlive their mapping.
fn panicking_update_moves_the_generation_on<F: pvnet_locks::family::RwFamily>() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let t = GrantTable::<F>::new();
    t.replace_from_memory(&mem(&[(0, K), (K as u64, K)]))
        .unwrap();
    let g0 = t.generation();
    let r = catch_unwind(AssertUnwindSafe(|| {
        t.update(|w| {
            w.remove_region(GuestAddress(K as u64)).unwrap();
            panic!("a writer closure that fails after a change (expected by this test)");
        })
    }));
    assert!(r.is_err());
    assert_eq!(t.len(), 1, "the removal stands");
    assert_ne!(t.generation(), g0, "changed under generation {g0}");
    // A panic before any change leaves the generation as it was.
    let g1 = t.generation();
    let r = catch_unwind(AssertUnwindSafe(|| {
        t.update(|_| panic!("a writer closure that fails at once (expected by this test)"))
    }));
    assert!(r.is_err());
    assert_eq!(t.generation(), g1);
    assert_eq!(t.len(), 1);
}

#[test]
fn panicking_update_moves_the_generation_on_std() {
    panicking_update_moves_the_generation_on::<StdRw>();
}

#[test]
fn panicking_update_moves_the_generation_on_percpu() {
    panicking_update_moves_the_generation_on::<pvnet_locks::family::Percpu>();
}
