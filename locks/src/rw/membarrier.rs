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
//! not Linux) [`asymmetric_fence_available`] is `false` and the `percpu` lock kind
//! silently behaves as `percpu-fenced` (both sides take a full fence); this is logged once.
//!
//! Under `--cfg loom` the asymmetric fence is modelled as available, with the writer's
//! membarrier approximated by a `SeqCst` fence (see `tests/loom_rw.rs`).

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

/// The writer's heavy barrier: on return, every thread of the process has executed a full
/// memory barrier since this call began. Only call it when
/// [`asymmetric_fence_available`] returned `true`.
pub(crate) fn heavy_barrier() {
    #[cfg(all(not(loom), target_os = "linux"))]
    {
        let mut failures = 0u32;
        // After a successful registration the command can only fail transiently (e.g.
        // ENOMEM for the CPU mask); readers rely on it, so retry until it succeeds.
        while membarrier(CMD_PRIVATE_EXPEDITED) < 0 {
            if failures == 0 {
                log::warn!(
                    "pvnet-locks: membarrier failed ({}); retrying",
                    std::io::Error::last_os_error()
                );
            }
            failures = failures.saturating_add(1);
            std::thread::yield_now();
        }
    }
    #[cfg(all(not(loom), not(target_os = "linux")))]
    crate::sync::fence(crate::sync::Ordering::SeqCst);
    #[cfg(loom)]
    crate::sync::fence(crate::sync::Ordering::SeqCst);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn detection_is_stable_and_barrier_returns() {
        let a = asymmetric_fence_available();
        assert_eq!(a, asymmetric_fence_available());
        if a {
            heavy_barrier();
            // Other threads exist and run: the barrier must still return.
            let h = std::thread::spawn(|| {
                for _ in 0..1000 {
                    std::hint::black_box(0);
                }
            });
            heavy_barrier();
            h.join().unwrap();
        }
    }
}
