//! The process-wide `SIGBUS` handler and the reaper thread it wakes.
//!
//! The handler runs on the faulting thread, in the middle of whatever that thread was doing
//! (a memcpy into guest memory, a ring read), possibly holding locks. It must therefore
//! only read the lock-free registry, issue system calls (`mmap`, `write`, `sigaction`) and
//! store atomics; the rest — logging, disconnecting — happens on the reaper thread.

use super::registry;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

/// The reaper's eventfd (written by the handler; never closed once created).
static NOTIFY: AtomicI32 = AtomicI32::new(-1);
static INSTALL: Once = Once::new();

/// Installs the handler and starts the reaper (once per process).
pub(super) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: eventfd(2) has no memory effects; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            log::error!(
                "memguard: eventfd: {}; SIGBUS in guest memory will not be contained",
                std::io::Error::last_os_error()
            );
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("pvnet-memguard".into())
            .spawn(move || reaper(fd));
        if let Err(e) = spawned {
            log::error!("memguard: cannot start the reaper thread: {e}");
            // SAFETY: closing the eventfd we just created and nobody else knows.
            unsafe { libc::close(fd) };
            return;
        }
        NOTIFY.store(fd, Ordering::Release);
        // SAFETY: a zeroed sigaction is valid; we fill in a handler with the SA_SIGINFO
        // signature and an empty mask before passing it to sigaction(2).
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            log::error!(
                "memguard: sigaction(SIGBUS): {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

fn reaper(fd: RawFd) {
    loop {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a u64 we own from an eventfd that is never closed.
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::error!(
                "memguard: reaper: {}; faults are still contained",
                std::io::Error::last_os_error()
            );
            return;
        }
        super::reap();
    }
}

/// Restores the default action: the faulting access is retried on return and kills the
/// process exactly as it would have without this handler (a signal sent with kill(2) is
/// raised again).
fn default_action(code: libc::c_int) {
    // SAFETY: signal(2)/raise(3) with valid arguments; both are async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        if code <= 0 {
            libc::raise(libc::SIGBUS);
        }
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's
    // life. The interrupted code must find errno as it left it.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: see above.
    let saved = unsafe { *errno };
    handle(sig, info, ctx);
    // SAFETY: see above.
    unsafe { *errno = saved };
}

fn handle(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    if info.is_null() {
        return default_action(0);
    }
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; si_addr is
    // meaningful for SIGBUS.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code != libc::BUS_ADRERR {
        return default_action(code);
    }
    let Some((owner, start, end, gran)) = registry::find(addr) else {
        return default_action(code);
    };
    let page = start + (addr - start) / gran * gran;
    let len = gran.min(end - page);
    // SAFETY: `page..page + len` lies inside a guest memory mapping that is registered, so
    // it is mapped and owned by vm-memory, and the faulting thread is using it (it cannot be
    // unmapped under us). Replacing those pages with private zero pages changes only what
    // that mapping shows (zeros instead of a missing file page); Rust code reaches guest
    // memory only through volatile accesses, which tolerate any content.
    let p = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return default_action(code);
    }
    super::poison(owner);
    let fd = NOTIFY.load(Ordering::Acquire);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) of 8 bytes from a u64 on our stack to an eventfd that is never
        // closed; async-signal-safe. A failure (counter overflow) only delays the reaper.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}
