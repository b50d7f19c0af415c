//! Regression tests of the per-CPU rwlock's slow paths (each failed on an earlier version):
//!
//! * readers that fall back to the underlying rwlock (more per-CPU read locks held than a
//!   thread has slots) must not starve a writer by overlapping their holds forever;
//! * a failing `try_write` must not issue a `membarrier` (it interrupts every reader CPU);
//! * a writer whose `membarrier` fails (here: a seccomp filter installed after start-up)
//!   must fail loudly, not retry forever;
//! * in a process without membarrier, `percpu` is built as `percpu-fenced`, and the
//!   hard-wired `percpu` type stays correct (its reads take the fenced out-of-line path).
#![cfg(not(loom))]

use pvnet_locks::family::{resolve_rw, Percpu, PercpuFenced, RwFamily, RwLockApi};
use pvnet_locks::rw::{asymmetric_fence_available, SLOTS};
use pvnet_locks::{rw_stats, AnyRwLock, PerCpuRwLock, RwLockKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Two reader threads keep a lock of family `F` read-locked through the fallback path in
/// relay (each releases only after the other has re-acquired, or after `PATIENCE` without
/// that), so at every moment at least one of them holds it. A writer that arrives must still
/// get in quickly: once it waits, a new (non-recursive) fallback read queues behind it.
fn fallback_relay_lets_the_writer_in<F: RwFamily>() {
    // Long enough that the relay never breaks because a reader thread waits for a CPU on a
    // busy machine (the polling below sleeps, so both readers stay easy to schedule).
    const PATIENCE: Duration = Duration::from_millis(250);
    const READERS_RUN_FOR: Duration = Duration::from_secs(5);
    let x = Arc::new(F::Lock::<u64>::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let relays = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (x, stop, seq, relays, ready) = (
                x.clone(),
                stop.clone(),
                seq.clone(),
                relays.clone(),
                ready.clone(),
            );
            thread::spawn(move || {
                // Fill every fast-path slot of this thread with other per-CPU locks.
                let others: Vec<F::Lock<u8>> = (0..SLOTS).map(|_| F::Lock::new(0)).collect();
                let _held: Vec<_> = others.iter().map(|l| l.read()).collect();
                ready.wait();
                let end = Instant::now() + READERS_RUN_FOR;
                while !stop.load(Relaxed) && Instant::now() < end {
                    let g = x.read();
                    let mine = seq.fetch_add(1, SeqCst) + 1;
                    let t = Instant::now();
                    // Hand over only once the other reader holds the lock too.
                    while seq.load(SeqCst) == mine && t.elapsed() < PATIENCE {
                        thread::sleep(Duration::from_micros(20));
                    }
                    if seq.load(SeqCst) != mine {
                        relays.fetch_add(1, Relaxed);
                    }
                    drop(g);
                }
            })
        })
        .collect();
    ready.wait();
    // Let the relay run, then write.
    thread::sleep(Duration::from_millis(50));
    let relays_before = relays.load(Relaxed);
    let t = Instant::now();
    *x.write() += 1;
    let waited = t.elapsed();
    stop.store(true, Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        relays_before > 0,
        "the readers never relayed: the test did not set up overlapping fallback reads"
    );
    assert!(
        waited < Duration::from_secs(2),
        "{}: the writer waited {waited:?} behind fallback readers that kept overlapping",
        F::KIND
    );
}

#[test]
fn fallback_readers_do_not_starve_a_writer_fenced() {
    fallback_relay_lets_the_writer_in::<PercpuFenced>();
}

#[test]
fn fallback_readers_do_not_starve_a_writer_percpu() {
    fallback_relay_lets_the_writer_in::<Percpu>();
}

/// A `try_write` that fails because a reader holds the lock must not cost a membarrier.
#[test]
fn failed_try_write_issues_no_membarrier() {
    if !asymmetric_fence_available() {
        println!("SKIP: membarrier unavailable here; the percpu writer uses a plain fence");
        return;
    }
    const TRIES: u64 = 1000;
    let l = Arc::new(PerCpuRwLock::new(0u64));
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let l2 = l.clone();
    let reader = thread::spawn(move || {
        let g = l2.read();
        held_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        drop(g);
    });
    held_rx.recv().unwrap();
    let before = rw_stats(RwLockKind::Percpu).membarriers;
    for _ in 0..TRIES {
        assert!(l.try_write().is_none(), "a reader holds the lock");
    }
    let issued = rw_stats(RwLockKind::Percpu).membarriers - before;
    done_tx.send(()).unwrap();
    reader.join().unwrap();
    // Other tests of this binary may write percpu locks meanwhile (a handful of barriers).
    assert!(
        issued < TRIES / 10,
        "{issued} membarriers for {TRIES} failed try_write calls"
    );
    assert!(l.try_write().is_some(), "free again once the reader left");
}

/// Installs a seccomp filter on the calling thread that makes `membarrier(2)` fail with
/// EPERM. `false` if the kernel refuses the filter.
fn deny_membarrier_on_this_thread() -> bool {
    const fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        }
    }
    // seccomp_data: nr at offset 0, arch at offset 4.
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    let filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jeq(ARCH, 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(libc::SYS_membarrier as u32, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; PR_SET_SECCOMP reads the
    // `sock_fprog` and the filter array it points to, both alive for the call. Both affect
    // only the calling thread (no TSYNC flag).
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) == 0
    }
}

/// A writer whose membarrier fails panics with a clear message (instead of retrying
/// forever), and leaves the lock usable.
#[test]
fn membarrier_failure_fails_the_writer_loudly() {
    if !asymmetric_fence_available() {
        println!("SKIP: membarrier unavailable here; nothing to make fail");
        return;
    }
    let l = Arc::new(PerCpuRwLock::new(0u64));
    let (tx, rx) = mpsc::channel();
    let l2 = l.clone();
    thread::spawn(move || {
        if !deny_membarrier_on_this_thread() {
            tx.send(None).ok();
            return;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            *l2.write() += 1;
        }));
        let msg = r.err().map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        tx.send(Some(msg)).ok();
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer neither returned nor failed within 10 s (membarrier retried forever)");
    let Some(panicked) = outcome else {
        println!("SKIP: the kernel refused a seccomp filter");
        return;
    };
    let msg = panicked.expect("the write succeeded although membarrier failed");
    assert!(
        msg.contains("membarrier") && msg.contains("Operation not permitted"),
        "unclear panic message: {msg}"
    );
    // The failed write left nothing behind: readers and writers carry on.
    assert_eq!(*l.read(), 0);
    *l.write() += 1;
    assert_eq!(*l.read(), 1);
}

/// Set in the child process of `without_membarrier_percpu_is_fenced`.
const CHILD_ENV: &str = "PVNET_LOCKS_TEST_NO_MEMBARRIER";

/// Runs `child_without_membarrier` in a fresh process (membarrier availability is decided
/// once per process) whose test thread cannot use membarrier at all.
#[test]
fn without_membarrier_percpu_is_fenced() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_without_membarrier();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_membarrier_percpu_is_fenced",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(skip) = stdout.lines().find(|l| l.starts_with("SKIP:")) {
        println!("{skip}");
        return;
    }
    assert!(
        out.status.success() && stdout.contains("child: ok"),
        "child failed:\n{stdout}\nSTDERR:\n{stderr}"
    );
}

fn child_without_membarrier() {
    // Before anything in this process asks for membarrier; threads spawned below inherit
    // the filter.
    if !deny_membarrier_on_this_thread() {
        println!("SKIP: the kernel refused a seccomp filter");
        return;
    }
    assert!(!asymmetric_fence_available());
    assert_eq!(resolve_rw(RwLockKind::Percpu), RwLockKind::PercpuFenced);
    assert_eq!(
        AnyRwLock::new(RwLockKind::Percpu, 0u8).kind(),
        RwLockKind::PercpuFenced
    );
    // The hard-wired type: writers exclude readers (two counters always read equal).
    let l = Arc::new(PerCpuRwLock::new((0u64, 0u64)));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (l, stop, reads) = (l.clone(), stop.clone(), reads.clone());
            thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let g = l.read();
                    // SAFETY: plain reads of fields the read guard protects.
                    let (a, b) =
                        unsafe { (std::ptr::read_volatile(&g.0), std::ptr::read_volatile(&g.1)) };
                    assert_eq!(a, b, "a reader overlapped a writer");
                    drop(g);
                    reads.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let t = Instant::now();
    let mut writes = 0u64;
    while (writes < 2000 || reads.load(Relaxed) < 100_000) && t.elapsed() < Duration::from_secs(5) {
        let mut g = l.write();
        g.0 += 1;
        std::hint::black_box(&mut *g);
        g.1 += 1;
        drop(g);
        writes += 1;
    }
    stop.store(true, Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let reads = reads.load(Relaxed);
    assert!(reads > 0, "no reader ran in 5 s");
    assert_eq!(*l.read(), (writes, writes));
    assert_eq!(rw_stats(RwLockKind::Percpu).membarriers, 0);
    println!("child: ok ({reads} reads, {writes} writes)");
}
