//! `pvnet-bench grantbench`: grant-table lookups per second and grant-copy bandwidth, per rwlock
//! kind, per-buffer against batched, with a `memcpy` baseline measured in the same run.
//!
//! Two guests' memories (A and B) are built from memfds as a vhost-user frontend shares them
//! (two adjacent regions each, so some buffers span two grants). Each worker thread owns
//! `--batch` buffers of `size` bytes in A and as many in B, and loops over them:
//!
//! * `lookup`: translate (and checks) a guest range of `size` bytes in A's table, read right;
//! * `copy`: grant copy of `size` bytes from A to B (source read, destination write).
//!
//! `per-buffer` takes the read lock(s) for every buffer (`GrantTable::grant_copy_to`, one
//! `read()` per lookup); `batched` takes them once per batch of `--batch` buffers (one
//! descriptor chain batch), as Xen batches grant operations. The `memcpy` row copies the same
//! sizes between two local buffers with the same threads and working set, measured once per
//! size and thread count in every round, next to the grant rows: lookup and copy rows report
//! their rate as a fraction of it (`of_memcpy`: a lookup should cost less than the copy it
//! guards). `--write-every-ms N` adds a writer that
//! replaces both tables every N ms with a fresh mapping of the same memory (what a repeated
//! SET_MEM_TABLE does), so each write really revokes and regrants.
//!
//! Kinds are interleaved within each configuration and the whole matrix is repeated
//! `--rounds` times; the median is reported with min and max beside it. Every operation must
//! succeed, so a broken table cannot produce a figure.

use crate::pin::pin_to;
use crate::plot;
use crate::rows::{self, Format, Row};
use anyhow::{bail, Context as _};
use crossbeam_utils::CachePadded;
use pvnet_grant::{memfd, read_pair, Access, GrantTable};
use pvnet_locks::family::RwFamily;
use pvnet_locks::with_rw_family;
use pvnet_locks::RwLockKind;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Where a buffer starts in guest A and B (B is offset so that the two guests' layouts
/// differ).
const GPA_A: u64 = 0x1000_0000;
const GPA_B: u64 = 0x4000_0000;

/// Which side of the table is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Op {
    /// Translate a guest range (lock, search, checks, host slices), no data moved.
    Lookup,
    /// Grant copy guest A -> guest B.
    Copy,
}

/// Locking granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One read-lock hold per buffer.
    PerBuffer,
    /// One read-lock hold per batch of `--batch` buffers.
    Batched,
    /// Both, side by side.
    Both,
}

/// Flags of `pvnet-bench grantbench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated rwlock kinds; the first is the ratio base of each group.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = RwLockKind::ALL.to_vec())]
    pub locks: Vec<RwLockKind>,
    /// Comma-separated worker thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = parse_threads)]
    pub threads: Vec<usize>,
    /// Comma-separated buffer sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1500,65536", value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Comma-separated operations to measure.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = vec![Op::Lookup, Op::Copy])]
    pub ops: Vec<Op>,
    /// Per-buffer locking, batched locking, or both.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    /// Buffers per batch (and per thread working set).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// Seconds per measurement (fractions allowed).
    #[arg(long, default_value_t = 0.2, value_parser = parse_secs)]
    pub secs: f64,
    /// Times the whole matrix is repeated (kinds interleaved); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Pin worker thread t to CPU t mod #CPUs (so that 2 threads on 2 CPUs really run at
    /// the same time even when the scheduler would stack them).
    #[arg(long)]
    pub pin: bool,
    /// A writer replaces both grant tables every N ms (0 = no writer).
    #[arg(long, default_value_t = 0)]
    pub write_every_ms: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write an SVG plot to this file: ops/s against threads, one line per lock and
    /// group (bars when one thread count). Narrow the run (e.g. `--sizes 64 --ops lookup
    /// --mode per-buffer`) for a readable chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a thread count in 1..=256")),
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a buffer size in 1..=1048576")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("'{s}' is not a duration in seconds in (0, 3600]")),
    }
}

/// The same layout for every thread count: thread `t`'s buffer `i` at `base + (t * batch +
/// i) * stride`, buffers 64-byte aligned.
#[derive(Clone, Copy)]
struct Layout {
    size: usize,
    stride: u64,
    batch: u64,
}

impl Layout {
    fn addr(&self, base: u64, thread: usize, i: u64) -> GuestAddress {
        GuestAddress(base + (thread as u64 * self.batch + i) * self.stride)
    }
}

/// Guest memory of `bytes` from `base`, in two adjacent memfd regions, written once so that
/// no page fault lands in a measurement.
fn guest(base: u64, bytes: u64) -> anyhow::Result<GuestMemoryMmap> {
    let half = bytes.div_ceil(2).next_multiple_of(4096).max(4096) as usize;
    let mem = memfd::guest_memory::<()>(&[(base, half), (base + half as u64, half)])
        .context("creating memfd guest memory")?;
    let zero = vec![0x5au8; 1 << 20];
    let mut at = 0u64;
    while at < 2 * half as u64 {
        let n = zero.len().min(2 * half - at as usize);
        vm_memory::Bytes::write_slice(&mem, &zero[..n], GuestAddress(base + at))
            .context("prefaulting guest memory")?;
        at += n as u64;
    }
    Ok(mem)
}

/// Everything one grant-table measurement needs, for rwlock family `F`.
struct Tables<F: RwFamily> {
    a: GrantTable<F>,
    b: GrantTable<F>,
}

/// The tables of one lock kind, measured through one virtual call per measurement (the
/// operations inside are compiled for the kind's family).
trait KindTables {
    fn measure(
        &self,
        mems: &Memories,
        args: &Args,
        op: Op,
        batched: bool,
        layout: Layout,
        threads: usize,
    ) -> anyhow::Result<Sample>;
}

impl<F: RwFamily> KindTables for Tables<F> {
    fn measure(
        &self,
        mems: &Memories,
        args: &Args,
        op: Op,
        batched: bool,
        layout: Layout,
        threads: usize,
    ) -> anyhow::Result<Sample> {
        measure_grant(self, mems, args, op, batched, layout, threads)
    }
}

/// Tables of family `F` granting the first memory of `mems`.
fn kind_tables<F: RwFamily>(mems: &Memories) -> anyhow::Result<Box<dyn KindTables>> {
    let t = Tables::<F> {
        a: GrantTable::new(),
        b: GrantTable::new(),
    };
    t.a.replace_from_memory(&mems.a[0])?;
    t.b.replace_from_memory(&mems.b[0])?;
    Ok(Box::new(t))
}

struct Memories {
    a: [GuestMemoryMmap; 2],
    b: [GuestMemoryMmap; 2],
}

/// One measurement: operations per second, writer replacements, and the share of the CPU
/// time the workers could have had that this process got (`cpu`: process CPU time over
/// wall time × min(threads, CPUs)); a low share means other processes took the CPUs.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops: f64,
    writes: u64,
    cpu: f64,
}

/// CPU time (user + system) of this process so far, in seconds.
fn process_cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the valid, writable pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: zero-initialised and, rc being 0, filled in by getrusage.
    let ru = unsafe { ru.assume_init() };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Runs `threads` workers for `secs`, each calling `work(thread)` (which returns operations
/// done, or an error) until stopped, with an optional writer.
fn measure<F>(
    threads: usize,
    secs: f64,
    pin: bool,
    writer: Option<(&(dyn Fn(usize) -> bool + Sync), u64)>,
    work: F,
) -> anyhow::Result<Sample>
where
    F: Fn(usize) -> Result<u64, pvnet_grant::GrantError> + Sync,
{
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu0 = process_cpu_secs();
    let stop = AtomicBool::new(false);
    let counts: Vec<CachePadded<AtomicU64>> = (0..threads)
        .map(|_| CachePadded::new(AtomicU64::new(0)))
        .collect();
    let failed: std::sync::Mutex<Option<pvnet_grant::GrantError>> = Default::default();
    let barrier = Barrier::new(threads + 1);
    let mut writes = 0u64;
    // Wall time runs from the common start to the last worker's exit, so that operations
    // finished after the stop flag are counted with the time they took.
    let start = std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, counts, failed, barrier, work) = (&stop, &counts, &failed, &barrier, &work);
            s.spawn(move || {
                if pin {
                    pin_to(t % cpus);
                }
                barrier.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match work(t) {
                        Ok(k) => n += k,
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            break;
                        }
                    }
                }
                counts[t].store(n, Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        match writer {
            Some((replace, every_ms)) => {
                let mut flip = 1;
                loop {
                    let next = Instant::now() + Duration::from_millis(every_ms);
                    if next >= end {
                        std::thread::sleep(end.saturating_duration_since(Instant::now()));
                        break;
                    }
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    // Errors cannot happen here (same valid memory every time); count only
                    // successful replacements.
                    if replace(flip) {
                        writes += 1;
                    }
                    flip ^= 1;
                }
            }
            None => std::thread::sleep(Duration::from_secs_f64(secs)),
        }
        stop.store(true, Ordering::Relaxed);
        start
    });
    let elapsed = start.elapsed();
    if let Some(e) = *failed.lock().unwrap_or_else(|p| p.into_inner()) {
        bail!("a grant operation failed during the benchmark: {e}");
    }
    let cpu = process_cpu_secs() - cpu0;
    let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let wall = elapsed.as_secs_f64();
    Ok(Sample {
        ops: total as f64 / wall,
        writes,
        cpu: cpu / (wall * threads.min(cpus) as f64),
    })
}

/// One grant-table measurement: op, size, mode, threads, kind.
fn measure_grant<G: RwFamily>(
    tables: &Tables<G>,
    mems: &Memories,
    args: &Args,
    op: Op,
    batched: bool,
    layout: Layout,
    threads: usize,
) -> anyhow::Result<Sample> {
    let replace = |flip: usize| {
        tables.a.replace_from_memory(&mems.a[flip]).is_ok()
            && tables.b.replace_from_memory(&mems.b[flip]).is_ok()
    };
    let writer = (args.write_every_ms > 0).then_some((
        &replace as &(dyn Fn(usize) -> bool + Sync),
        args.write_every_ms,
    ));
    let (a, b) = (&tables.a, &tables.b);
    let size = layout.size;
    let n = layout.batch;
    match (op, batched) {
        (Op::Lookup, false) => measure(threads, args.secs, args.pin, writer, |t| {
            for i in 0..n {
                let g = a.read();
                let mut len = 0;
                for p in g.translate(layout.addr(GPA_A, t, i), size, Access::ReadOnly)? {
                    len += p?.len();
                }
                black_box(len);
            }
            Ok(n)
        }),
        (Op::Lookup, true) => measure(threads, args.secs, args.pin, writer, |t| {
            let g = a.read();
            for i in 0..n {
                let mut len = 0;
                for p in g.translate(layout.addr(GPA_A, t, i), size, Access::ReadOnly)? {
                    len += p?.len();
                }
                black_box(len);
            }
            Ok(n)
        }),
        (Op::Copy, false) => measure(threads, args.secs, args.pin, writer, |t| {
            for i in 0..n {
                a.grant_copy_to(layout.addr(GPA_A, t, i), b, layout.addr(GPA_B, t, i), size)?;
            }
            Ok(n)
        }),
        (Op::Copy, true) => measure(threads, args.secs, args.pin, writer, |t| {
            let pair = read_pair(a, b);
            for i in 0..n {
                pair.copy(layout.addr(GPA_A, t, i), layout.addr(GPA_B, t, i), size)?;
            }
            Ok(n)
        }),
    }
}

/// The baseline: the same copies between two local buffers per thread.
fn measure_memcpy(layout: Layout, threads: usize, secs: f64, pin: bool) -> anyhow::Result<Sample> {
    let span = (layout.batch * layout.stride) as usize;
    let bufs: Vec<std::sync::Mutex<(Vec<u8>, Vec<u8>)>> = (0..threads)
        .map(|_| std::sync::Mutex::new((vec![0x5au8; span], vec![0xa5u8; span])))
        .collect();
    measure(threads, secs, pin, None, |t| {
        let mut guard = bufs[t].lock().unwrap_or_else(|p| p.into_inner());
        let (src, dst) = &mut *guard;
        for i in 0..layout.batch as usize {
            let at = i * layout.stride as usize;
            dst[at..at + layout.size].copy_from_slice(&src[at..at + layout.size]);
            black_box(&mut dst[at]);
        }
        Ok(layout.batch)
    })
}

/// The sample with the median throughput (the upper one of an even count), with the
/// smallest and largest throughput and the writes of all samples.
fn summarize(v: &mut [Sample]) -> (Sample, f64, f64, u64) {
    v.sort_by(|a, b| a.ops.total_cmp(&b.ops));
    let writes = v.iter().map(|x| x.writes).sum();
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(lo), Some(mid), Some(hi)) => (*mid, lo.ops, hi.ops, writes),
        _ => (
            Sample {
                ops: 0.0,
                writes: 0,
                cpu: 0.0,
            },
            0.0,
            0.0,
            writes,
        ),
    }
}

type Key = (Op, usize, bool, usize, usize); // op, size, batched, threads, lock index

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.locks.is_empty() || args.threads.is_empty() || args.sizes.is_empty() {
        bail!("--locks, --threads and --sizes need at least one value");
    }
    let modes: &[bool] = match args.mode {
        Mode::PerBuffer => &[false],
        Mode::Batched => &[true],
        Mode::Both => &[false, true],
    };
    let max_threads = *args.threads.iter().max().unwrap_or(&1);
    let max_stride = args
        .sizes
        .iter()
        .map(|s| s.next_multiple_of(64))
        .max()
        .unwrap_or(64);
    let bytes = max_threads as u64 * u64::from(args.batch) * max_stride as u64;
    let mem_a = guest(GPA_A, bytes)?;
    let mem_b = guest(GPA_B, bytes)?;
    let mems = Memories {
        a: [memfd::remap(&mem_a)?, mem_a],
        b: [memfd::remap(&mem_b)?, mem_b],
    };
    let mut tables = Vec::new();
    for &kind in &args.locks {
        let built = pvnet_locks::family::resolve_rw(kind);
        if built != kind {
            log::warn!("rwlock kind {kind} is built as {built} on this machine");
        }
        tables.push(with_rw_family!(kind, F => kind_tables::<F>(&mems))?);
    }

    // Per configuration, the memcpy baseline and every kind are measured back to back, and
    // the whole matrix is repeated `--rounds` times.
    let mut grant: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    let mut memcpy: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    for _round in 0..args.rounds {
        for &size in &args.sizes {
            let layout = Layout {
                size,
                stride: size.next_multiple_of(64) as u64,
                batch: u64::from(args.batch),
            };
            for &threads in &args.threads {
                // The baseline of this size and thread count, measured within the same
                // interleaving as the grant rows it is compared with.
                let v = measure_memcpy(layout, threads, args.secs, args.pin)?;
                memcpy.entry((size, threads)).or_default().push(v);
                for &op in &args.ops {
                    for &batched in modes {
                        for (li, t) in tables.iter().enumerate() {
                            let v = t.measure(&mems, &args, op, batched, layout, threads)?;
                            grant
                                .entry((op, size, batched, threads, li))
                                .or_default()
                                .push(v);
                        }
                    }
                }
            }
        }
    }

    let gbit = |ops: f64, size: usize| ops * size as f64 * 8.0 / 1e9;
    let mut rows = Vec::new();
    let mut memcpy_med: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for ((size, threads), mut v) in memcpy {
        let (m, lo, hi, _) = summarize(&mut v);
        memcpy_med.insert((size, threads), m.ops);
        rows.push(
            Row::new(
                "grantbench",
                &format!("memcpy {size}B"),
                "memcpy",
                threads,
                m.ops,
            )
            .with("size", size as u64)
            .with("gbit_s", gbit(m.ops, size))
            .with("min", lo as u64)
            .with("max", hi as u64)
            .with("cpu", m.cpu),
        );
    }
    for ((op, size, batched, threads, li), mut v) in grant {
        let (m, lo, hi, writes) = summarize(&mut v);
        let mode = if batched { "batched" } else { "per-buffer" };
        let op_name = match op {
            Op::Lookup => "lookup",
            Op::Copy => "copy",
        };
        let mut row = Row::new(
            "grantbench",
            &format!("{op_name} {size}B {mode}"),
            args.locks[li].as_str(),
            threads,
            m.ops,
        )
        .with("size", size as u64)
        .with("mode", mode);
        if op == Op::Copy {
            row = row.with("gbit_s", gbit(m.ops, size));
        }
        // Lookups and copies per second against memcpys of the same size per second (for a
        // lookup: how its cost compares with the copy it guards).
        if let Some(&mc) = memcpy_med.get(&(size, threads)) {
            row = row.with("of_memcpy", if mc > 0.0 { m.ops / mc } else { 0.0 });
        }
        row = row
            .with("min", lo as u64)
            .with("max", hi as u64)
            .with("cpu", m.cpu);
        if args.write_every_ms > 0 {
            row = row.with("writes", writes);
        }
        rows.push(row);
    }
    rows::compute_ratios(&mut rows);
    print!("{}", rows::render(&rows, args.format));
    if let Some(path) = &args.plot {
        let title = "pvnet-bench grantbench: grant-table lookups and copies per rwlock kind";
        let several = rows.iter().any(|r| r.threads != rows[0].threads);
        let svg = if several {
            plot::svg_lines(&rows, title)
        } else {
            plot::svg_bars(&rows, title)
        };
        std::fs::write(path, svg).with_context(|| format!("writing plot to {}", path.display()))?;
    }
    Ok(())
}
