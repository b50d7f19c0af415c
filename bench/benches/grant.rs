//! Criterion: single-thread costs of the grant table, per rwlock kind.
//!
//! * `grant/translate/<kind>`: one read lock + lookup + checks of a 1500-byte range.
//! * `grant/copy/<size>/<kind>/per-buffer`: 32 grant copies A -> B, each taking the locks;
//!   `…/batched`: the same 32 copies under one pair of read guards.
//!
//! Multi-thread scaling and the memcpy comparison live in `pvnet-bench grantbench`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pvnet_grant::{memfd, read_pair, Access, GrantTable};
use pvnet_locks::family::RwFamily;
use pvnet_locks::{with_rw_family, RwLockKind};
use std::hint::black_box;
use vm_memory::GuestAddress;

const BATCH: u64 = 32;
const GPA_A: u64 = 0x1000_0000;
const GPA_B: u64 = 0x4000_0000;
const SIZES: [usize; 3] = [64, 1500, 65536];

fn tables<F: RwFamily>() -> (GrantTable<F>, GrantTable<F>) {
    let bytes = BATCH as usize * 65536;
    let a = GrantTable::new();
    let b = GrantTable::new();
    let ma = memfd::guest_memory::<()>(&[(GPA_A, bytes)]).expect("memfd guest memory");
    let mb = memfd::guest_memory::<()>(&[(GPA_B, bytes)]).expect("memfd guest memory");
    a.replace_from_memory(&ma).expect("grant A");
    b.replace_from_memory(&mb).expect("grant B");
    (a, b)
}

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("grant/translate");
    for &kind in RwLockKind::ALL {
        with_rw_family!(kind, F => translate_one::<F>(&mut g, kind));
    }
    g.finish();
}

fn translate_one<F: RwFamily>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    kind: RwLockKind,
) {
    {
        let (a, _b) = tables::<F>();
        g.bench_function(kind.as_str(), |bench| {
            bench.iter(|| {
                let guard = a.read();
                let mut len = 0;
                for p in guard
                    .translate(GuestAddress(GPA_A + 4096), 1500, Access::ReadOnly)
                    .expect("granted")
                {
                    len += p.expect("slice").len();
                }
                black_box(len)
            })
        });
    }
}

fn copy(c: &mut Criterion) {
    for size in SIZES {
        let mut g = c.benchmark_group(format!("grant/copy/{size}"));
        g.throughput(Throughput::Bytes(BATCH * size as u64));
        let stride = size.next_multiple_of(64) as u64;
        for &kind in RwLockKind::ALL {
            with_rw_family!(kind, F => copy_one::<F>(&mut g, kind, size, stride));
        }
        g.finish();
    }
}

fn copy_one<F: RwFamily>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    kind: RwLockKind,
    size: usize,
    stride: u64,
) {
    {
        {
            let (a, b) = tables::<F>();
            let at = |base: u64, i: u64| GuestAddress(base + i * stride);
            g.bench_function(BenchmarkId::new(kind.as_str(), "per-buffer"), |bench| {
                bench.iter(|| {
                    for i in 0..BATCH {
                        a.grant_copy_to(at(GPA_A, i), &b, at(GPA_B, i), size)
                            .expect("copy");
                    }
                })
            });
            g.bench_function(BenchmarkId::new(kind.as_str(), "batched"), |bench| {
                bench.iter(|| {
                    let pair = read_pair(&a, &b);
                    for i in 0..BATCH {
                        pair.copy(at(GPA_A, i), at(GPA_B, i), size).expect("copy");
                    }
                })
            });
        }
    }
}

criterion_group!(benches, translate, copy);
criterion_main!(benches);
