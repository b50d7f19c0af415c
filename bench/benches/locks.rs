//! Uncontended lock + unlock cost of every lock kind, single thread, in ns (criterion).
//!
//! Each kind is measured through
//! * `hard/<kind>`: the hard-wired `lock_api` type (or the std / parking_lot type);
//! * `family/<kind>` (rw-read, spin): code generic over the kind's family, monomorphised
//!   after one `with_rw_family!` / `with_spin_family!` match, as pvnet's data path runs;
//! * `grant/<kind>` (rw-read): a `GrantTable<F>` read guard (read lock, read the table's
//!   generation, unlock): `--grant-lock <kind>` exactly as pvnet takes it per buffer;
//! * `any/<kind>`: the run-time dispatched [`AnyRwLock`] / [`AnySpinLock`] (one `match` per
//!   lock and per unlock).
//!
//! `family` and `grant` against `hard` is the cost of choosing the algorithm by flag (zero
//! once monomorphised); `any` against `hard` is what a dispatch per operation costs. Groups:
//! `rw-read` (read lock / read / unlock), `rw-write` (write lock / +1 / unlock), `spin`
//! (lock / +1 / unlock).
//!
//! Run: `cargo bench -p pvnet-bench --bench locks` (about two minutes); filter with e.g.
//! `cargo bench -p pvnet-bench --bench locks -- spin/`.

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use crossbeam_utils::sync::ShardedLock;
use pvnet_grant::GrantTable;
use pvnet_locks::family::{MutexApi, RwFamily, RwLockApi, SpinFamily};
use pvnet_locks::{
    with_rw_family, with_spin_family, AnyRwLock, AnySpinLock, PerCpuFencedRwLock, PerCpuRwLock,
    PlainRwLock, PvQSpinLock, QSpinLock, RwLockKind, SpinLockKind, TasLock, TicketLock,
};
use std::hint::black_box;
use std::time::Duration;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// `family/<kind>`: read lock / read / unlock in code compiled for family `F`.
fn family_read<F: RwFamily>(g: &mut Group, kind: RwLockKind) {
    let lock = F::Lock::new(0u64);
    g.bench_function(format!("family/{kind}"), |b| {
        b.iter(|| {
            let l = black_box(&lock);
            black_box(*l.read());
        })
    });
}

/// `grant/<kind>`: a grant table's read guard, as pvnet takes it per buffer.
fn grant_read<F: RwFamily>(g: &mut Group, kind: RwLockKind) {
    let table = GrantTable::<F>::new();
    g.bench_function(format!("grant/{kind}"), |b| {
        b.iter(|| {
            let t = black_box(&table);
            black_box(t.read().generation());
        })
    });
}

/// `family/<kind>`: lock / +1 / unlock in code compiled for family `F`.
fn family_spin<F: SpinFamily>(g: &mut Group, kind: SpinLockKind) {
    let lock = F::Lock::new(0u64);
    g.bench_function(format!("family/{kind}"), |b| {
        b.iter(|| {
            let l = black_box(&lock);
            *l.lock() += 1;
        })
    });
}

fn rw(c: &mut Criterion) {
    let mut rd: Group = c.benchmark_group("rw-read");
    for &kind in RwLockKind::ALL {
        // (`percpu` resolves to `percpu-fenced` where membarrier is unavailable.)
        with_rw_family!(kind, F => family_read::<F>(&mut rd, kind));
        with_rw_family!(kind, F => grant_read::<F>(&mut rd, kind));
    }
    for kind in RwLockKind::ALL {
        let lock = AnyRwLock::new(*kind, 0u64);
        rd.bench_function(format!("any/{kind}"), |b| {
            b.iter(|| {
                let l = black_box(&lock);
                black_box(*l.read());
            })
        });
    }
    macro_rules! hard_read {
        ($name:expr, $lock:expr) => {{
            let lock = $lock;
            rd.bench_function($name, |b| {
                b.iter(|| {
                    let l = black_box(&lock);
                    black_box(*l.read());
                })
            });
        }};
    }
    hard_read!("hard/percpu", PerCpuRwLock::new(0u64));
    hard_read!("hard/percpu-fenced", PerCpuFencedRwLock::new(0u64));
    hard_read!("hard/rwlock", PlainRwLock::new(0u64));
    hard_read!("hard/parking-lot", parking_lot::RwLock::new(0u64));
    let std_lock = std::sync::RwLock::new(0u64);
    rd.bench_function("hard/std", |b| {
        b.iter(|| {
            let l = black_box(&std_lock);
            black_box(*l.read().unwrap_or_else(|e| e.into_inner()));
        })
    });
    let sharded = ShardedLock::new(0u64);
    rd.bench_function("hard/sharded", |b| {
        b.iter(|| {
            let l = black_box(&sharded);
            black_box(*l.read().unwrap_or_else(|e| e.into_inner()));
        })
    });
    rd.finish();

    let mut wr: Group = c.benchmark_group("rw-write");
    for kind in RwLockKind::ALL {
        let lock = AnyRwLock::new(*kind, 0u64);
        wr.bench_function(format!("any/{kind}"), |b| {
            b.iter(|| {
                let l = black_box(&lock);
                *l.write() += 1;
            })
        });
    }
    macro_rules! hard_write {
        ($name:expr, $lock:expr) => {{
            let lock = $lock;
            wr.bench_function($name, |b| {
                b.iter(|| {
                    let l = black_box(&lock);
                    *l.write() += 1;
                })
            });
        }};
    }
    hard_write!("hard/percpu", PerCpuRwLock::new(0u64));
    hard_write!("hard/percpu-fenced", PerCpuFencedRwLock::new(0u64));
    hard_write!("hard/rwlock", PlainRwLock::new(0u64));
    hard_write!("hard/parking-lot", parking_lot::RwLock::new(0u64));
    wr.bench_function("hard/std", |b| {
        b.iter(|| {
            let l = black_box(&std_lock);
            *l.write().unwrap_or_else(|e| e.into_inner()) += 1;
        })
    });
    wr.bench_function("hard/sharded", |b| {
        b.iter(|| {
            let l = black_box(&sharded);
            *l.write().unwrap_or_else(|e| e.into_inner()) += 1;
        })
    });
    wr.finish();
}

fn spin(c: &mut Criterion) {
    let mut g: Group = c.benchmark_group("spin");
    for &kind in SpinLockKind::ALL {
        with_spin_family!(kind, F => family_spin::<F>(&mut g, kind));
    }
    for kind in SpinLockKind::ALL {
        let lock = AnySpinLock::new(*kind, 0u64);
        g.bench_function(format!("any/{kind}"), |b| {
            b.iter(|| {
                let l = black_box(&lock);
                *l.lock() += 1;
            })
        });
    }
    macro_rules! hard {
        ($name:expr, $lock:expr) => {{
            let lock = $lock;
            g.bench_function($name, |b| {
                b.iter(|| {
                    let l = black_box(&lock);
                    *l.lock() += 1;
                })
            });
        }};
    }
    hard!("hard/pvqspin", PvQSpinLock::new(0u64));
    hard!("hard/qspin", QSpinLock::new(0u64));
    hard!("hard/ticket", TicketLock::new(0u64));
    hard!("hard/tas", TasLock::new(0u64));
    hard!("hard/parking-lot", parking_lot::Mutex::new(0u64));
    let std_lock = std::sync::Mutex::new(0u64);
    g.bench_function("hard/std", |b| {
        b.iter(|| {
            let l = black_box(&std_lock);
            *l.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = rw, spin
}
criterion_main!(benches);
