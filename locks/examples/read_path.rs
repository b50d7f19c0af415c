//! The read fast path of each per-CPU flavour as separate, monomorphised functions, for
//! reading the generated code:
//!
//! ```text
//! cargo build --release -p pvnet-locks --example read_path
//! objdump -d --no-show-raw-insn target/release/examples/read_path \
//!     | awk '/<read_unlock_percpu>:/,/ret/'
//! ```
//!
//! (`read_unlock_percpu_fenced`, `read_unlock_family_percpu` (through the `RwFamily` API,
//! as generic code such as the grant table uses it) and `read_unlock_any_percpu` (the
//! run-time dispatched `AnyRwLock`) likewise; unmangled names, so that the linker keeps each
//! one.) Run, it checks that each function reads the value and prints how the `percpu` kind
//! resolves on this machine.

use pvnet_locks::family::{Percpu, RwFamily, RwLockApi};
use pvnet_locks::{AnyRwLock, PerCpuFencedRwLock, PerCpuRwLock, RwLockKind};
use std::hint::black_box;

#[inline(never)]
#[no_mangle]
pub fn read_unlock_percpu(l: &PerCpuRwLock<u64>) -> u64 {
    *l.read()
}

#[inline(never)]
#[no_mangle]
pub fn read_unlock_percpu_fenced(l: &PerCpuFencedRwLock<u64>) -> u64 {
    *l.read()
}

#[inline(never)]
pub fn read_unlock_family<F: RwFamily>(l: &F::Lock<u64>) -> u64 {
    *l.read()
}

#[inline(never)]
#[no_mangle]
pub fn read_unlock_family_percpu(l: &<Percpu as RwFamily>::Lock<u64>) -> u64 {
    read_unlock_family::<Percpu>(l)
}

#[inline(never)]
#[no_mangle]
pub fn read_unlock_any_percpu(l: &AnyRwLock<u64>) -> u64 {
    *l.read()
}

fn main() {
    let a = PerCpuRwLock::new(1u64);
    let b = PerCpuFencedRwLock::new(2u64);
    let c = <Percpu as RwFamily>::Lock::<u64>::new(3);
    let d = AnyRwLock::new(RwLockKind::Percpu, 4u64);
    let mut sum = 0;
    for _ in 0..3 {
        sum += read_unlock_percpu(black_box(&a));
        sum += read_unlock_percpu_fenced(black_box(&b));
        sum += read_unlock_family_percpu(black_box(&c));
        sum += read_unlock_any_percpu(black_box(&d));
    }
    assert_eq!(sum, 30);
    println!(
        "percpu resolves to {} here",
        pvnet_locks::family::resolve_rw(RwLockKind::Percpu)
    );
}
