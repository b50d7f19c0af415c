//! The asymmetric fence: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`.
//!
//! A reader that wants to order "store my slot" before "load `writer_activating`" normally
//! needs a full fence (`mfence`/`lock`-prefixed instruction on x86, tens of cycles). With an
//! asymmetric fence the reader only keeps the *compiler* from reordering the two accesses,
//! and the rare writer pays instead: `MEMBARRIER_CMD_PRIVATE_EXPEDITED` makes the kernel run
//! a full memory barrier on every CPU currently running a thread of this process (IPIs) and
//! relies on the barrier implied by a context switch for the threads that are not running.
//! Every reader thread therefore executes a full barrier at *some* point of its program
//! order between the writer's syscall entry and its return, which is exactly what the
//! Dekker argument in `percpu.rs` needs.
//!
//! The command must be registered once per process (`REGISTER_PRIVATE_EXPEDITED`) before it
//! is used; availability is detected with `QUERY`. Where it is missing (old kernel, seccomp,
//! not Linux) [`asymmetric_fence_available`] is `false` (logged once): the `percpu` kind is
//! then built as `percpu-fenced` ([`resolve_rw`](crate::family::resolve_rw), used by
//! `with_rw_family!` and `AnyRwLock`), and a hard-wired `percpu` lock takes its fenced
//! out-of-line read path on every read (see `percpu.rs`). The answer is given before any
//! reader's fast path runs and never changes, so readers and writers always agree.
//!
//! If the command fails once registered (e.g. `EPERM` from a seccomp filter installed after
//! start-up), `heavy_barrier` returns the error after a few retries of transient ones; the
//! writer then gives up the write lock and panics with that error (a writer without the
//! barrier cannot exclude readers, and retrying a permanent error would livelock it).
//!
//! # The model under `--cfg loom`
//!
//! loom cannot interrupt a thread to run a fence in it, so the pair is modelled by what it
//! guarantees. Each thread index owns a *barrier cell*. The reader side (`light_barrier`)
//! is one `AcqRel` read-modify-write of the reader's own cell: by itself it orders nothing
//! (no other thread touches that cell unless a writer's barrier does), exactly like the
//! compiler fence it stands for. The writer side (`heavy_barrier`) is a `SeqCst` fence,
//! an `AcqRel` RMW of the registry's high-water mark (every thread that exists, or will
//! exist, is ordered before or after this point), an `AcqRel` RMW of the cell of every
//! registered thread, and a `SeqCst` fence. RMWs of one location are totally ordered, so for
//! every reader either its light barrier comes first (its earlier accesses happen-before the
//! writer's later ones: the writer sees its slot) or the writer's RMW does (the writer's
//! earlier accesses happen-before the reader's later ones: the reader sees
//! `writer_activating`): the guarantee of a real membarrier, with its "point in each thread's
//! program order" pinned to that thread's light barriers. Weakening the writer side to a
//! local fence is caught by the models (`tests/loom_rw.rs`).

#[cfg(not(loom))]
use std::sync::OnceLock;

// Command numbers from the stable kernel ABI (`include/uapi/linux/membarrier.h`).
#[cfg(all(not(loom), target_os = "linux"))]
const CMD_QUERY: libc::c_long = 0;
#[cfg(all(not(loom), target_os = "linux"))]
const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
#[cfg(all(not(loom), target_os = "linux"))]
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

#[cfg(not(loom))]
static AVAILABLE: OnceLock<bool> = OnceLock::new();

/// The answer, cached for the read fast path: 0 = not asked yet, 1 = yes, 2 = no.
#[cfg(not(loom))]
static CACHED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[cfg(all(not(loom), target_os = "linux"))]
fn membarrier(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) takes no pointers; an unknown or
    // unsupported command only returns -1 with errno set.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    }
}

#[cfg(all(not(loom), target_os = "linux"))]
fn detect_and_register() -> bool {
    let mask = membarrier(CMD_QUERY);
    if mask < 0 {
        log::info!(
            "pvnet-locks: membarrier unavailable ({}); percpu rwlocks use a full reader fence",
            std::io::Error::last_os_error()
        );
        return false;
    }
    let needed = CMD_PRIVATE_EXPEDITED | CMD_REGISTER_PRIVATE_EXPEDITED;
    if mask & needed != needed {
        log::info!(
            "pvnet-locks: membarrier PRIVATE_EXPEDITED not supported (mask {mask:#x}); \
             percpu rwlocks use a full reader fence"
        );
        return false;
    }
    if membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) < 0 {
        log::info!(
            "pvnet-locks: membarrier registration failed ({}); percpu rwlocks use a full \
             reader fence",
            std::io::Error::last_os_error()
        );
        return false;
    }
    log::debug!("pvnet-locks: membarrier PRIVATE_EXPEDITED registered");
    true
}

#[cfg(all(not(loom), not(target_os = "linux")))]
fn detect_and_register() -> bool {
    log::info!("pvnet-locks: no membarrier on this OS; percpu rwlocks use a full reader fence");
    false
}

/// Whether the process can use the asymmetric fence (registering for it on first call).
///
/// The answer never changes once given, so readers and writers always agree on which
/// protocol they run.
#[inline]
pub fn asymmetric_fence_available() -> bool {
    #[cfg(not(loom))]
    {
        // Acquire pairs with the Release below: a thread that sees "yes" also sees the
        // registration done.
        match CACHED.load(std::sync::atomic::Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => detect_once(),
        }
    }
    #[cfg(loom)]
    {
        true
    }
}

#[cfg(not(loom))]
#[cold]
fn detect_once() -> bool {
    let yes = *AVAILABLE.get_or_init(detect_and_register);
    CACHED.store(
        if yes { 1 } else { 2 },
        std::sync::atomic::Ordering::Release,
    );
    yes
}

/// The writer's heavy barrier failed (membarrier returned an error after registration).
#[derive(Debug, thiserror::Error)]
#[error("membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed: {0}")]
pub struct BarrierError(#[source] pub std::io::Error);

/// Attempts of a transiently failing membarrier (`ENOMEM`, `EAGAIN`, `EINTR`) before the
/// error is returned.
#[cfg(all(not(loom), target_os = "linux"))]
const TRANSIENT_RETRIES: u32 = 3;

/// The writer's heavy barrier: on `Ok` return, every thread of the process has executed a
/// full memory barrier since this call began. Only call it when
/// [`asymmetric_fence_available`] returned `true`.
pub(crate) fn heavy_barrier() -> Result<(), BarrierError> {
    #[cfg(all(not(loom), target_os = "linux"))]
    {
        let mut attempt = 0;
        loop {
            if membarrier(CMD_PRIVATE_EXPEDITED) == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::ENOMEM) | Some(libc::EAGAIN) | Some(libc::EINTR)
            );
            attempt += 1;
            if !transient || attempt > TRANSIENT_RETRIES {
                return Err(BarrierError(e));
            }
            log::warn!("pvnet-locks: membarrier failed ({e}); retrying");
            std::thread::yield_now();
        }
    }
    #[cfg(all(not(loom), not(target_os = "linux")))]
    {
        crate::sync::fence(crate::sync::Ordering::SeqCst);
        Ok(())
    }
    #[cfg(loom)]
    {
        model::heavy();
        Ok(())
    }
}

/// The reader's side of the asymmetric fence: keeps the compiler from moving the reader's
/// slot store after its `writer_activating` load; no instruction.
#[inline(always)]
pub(crate) fn light_barrier() {
    #[cfg(not(loom))]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(loom)]
    model::light();
}

/// The loom model of the pair (see the module docs).
#[cfg(loom)]
mod model {
    use crate::registry;
    use crate::sync::{fence, AtomicUsize, Ordering::*};

    loom::lazy_static! {
        static ref CELLS: Vec<AtomicUsize> =
            (0..registry::LOOM_THREADS).map(|_| AtomicUsize::new(0)).collect();
    }

    pub(super) fn light() {
        // A thread without an index (or beyond the model's blocks) has no reader slot and
        // never takes the fast path.
        if let Some(c) = registry::current().and_then(|i| CELLS.get(i)) {
            c.fetch_add(1, AcqRel);
        }
    }

    pub(super) fn heavy() {
        fence(SeqCst);
        let threads = registry::model_every_thread();
        for c in CELLS.iter().take(threads) {
            c.fetch_add(1, AcqRel);
        }
        fence(SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn detection_is_stable_and_barrier_returns() {
        let a = asymmetric_fence_available();
        assert_eq!(a, asymmetric_fence_available());
        if a {
            heavy_barrier().unwrap();
            // Other threads exist and run: the barrier must still return.
            let h = std::thread::spawn(|| {
                for _ in 0..1000 {
                    std::hint::black_box(0);
                }
            });
            heavy_barrier().unwrap();
            h.join().unwrap();
        }
    }
}
