//! The read side never allocates: translations, reads, writes and grant copies (per-buffer
//! and batched, spanning two grants or not) are run under a counting global allocator.

use pvnet_grant::{memfd, read_pair, Access, GrantTable};
use pvnet_locks::family::RwFamily;
use pvnet_locks::{with_rw_family, RwLockKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use vm_memory::GuestAddress;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Every read-side operation once; returns how many succeeded.
fn ops<F: RwFamily>(a: &GrantTable<F>, b: &GrantTable<F>, buf: &mut [u8]) -> usize {
    let span = GuestAddress(0x2000 - 700); // crosses the boundary of A's two regions
    let mut ok = 0;
    ok += a.copy_from_guest(span, buf).is_ok() as usize;
    ok += a.copy_to_guest(span, buf).is_ok() as usize;
    ok += a.check(span, buf.len(), Access::ReadWrite).is_ok() as usize;
    ok += a
        .grant_copy_to(span, b, GuestAddress(0x10000), buf.len())
        .is_ok() as usize;
    let g = a.read();
    ok += g.read_into(span, buf).is_ok() as usize;
    ok += g.write_from(span, buf).is_ok() as usize;
    ok += g
        .translate(span, buf.len(), Access::ReadOnly)
        .map_or(0, |p| p.count());
    drop(g);
    let pair = read_pair(a, b);
    ok += pair.copy(span, GuestAddress(0x10000), buf.len()).is_ok() as usize;
    drop(pair);
    // Errors do not allocate either.
    ok += a.copy_from_guest(GuestAddress(0x9000_0000), buf).is_err() as usize;
    ok
}

#[test]
fn read_side_does_not_allocate() {
    let ma = memfd::guest_memory::<()>(&[(0x1000, 0x1000), (0x2000, 0x1000)]).unwrap();
    let mb = memfd::guest_memory::<()>(&[(0x10000, 0x1000)]).unwrap();
    let mut buf = vec![7u8; 1500];
    for &kind in RwLockKind::ALL {
        let n = with_rw_family!(kind, F => allocations_of::<F>(&ma, &mb, &mut buf));
        assert_eq!(n, 0, "{kind}: the read side allocated");
    }
}

/// Allocations made by 100 rounds of [`ops`] on fresh tables of family `F`.
fn allocations_of<F: RwFamily>(
    ma: &vm_memory::GuestMemoryMmap,
    mb: &vm_memory::GuestMemoryMmap,
    buf: &mut [u8],
) -> u64 {
    let (a, b) = (GrantTable::<F>::new(), GrantTable::<F>::new());
    a.replace_from_memory(ma).unwrap();
    b.replace_from_memory(mb).unwrap();
    // Warm-up: a lock may register this thread on first use.
    assert_eq!(ops(&a, &b, buf), 10);
    let before = allocs();
    for _ in 0..100 {
        assert_eq!(ops(&a, &b, buf), 10);
    }
    allocs() - before
}
