//! `futex(2)` wait and wake on a 32-bit atomic word: the user-space `pv_wait` / `pv_kick`.
//!
//! `futex_wait` sleeps only if the word still holds `expected` when the kernel looks at it
//! (atomically with respect to `futex_wake` on the same word), so a waker that changes the
//! word *before* waking can never be missed. It may also return spuriously (signals,
//! `EAGAIN`, timeouts); every caller re-checks its condition in a loop.
//!
//! Under `--cfg loom` the same two functions are a model built from a loom `Mutex` (the
//! kernel's hash-bucket lock) and one `loom::sync::Notify` per sleeping thread: `wait`
//! compares the value under the mutex and registers itself as a waiter on that address;
//! `wake` marks up to `n` waiters *of that address* as woken and notifies them, under the
//! mutex. A waiter that is never woken blocks forever, so a lost wake-up shows up as a loom
//! deadlock; and `Notify::wait` may also return spuriously (loom explores both outcomes, once
//! per thread and execution), so every caller's spurious-wake-up path is model-checked. The
//! model also counts, per execution, the halts that waiters announced and the wakes
//! ("kicks") issued, and whether each kick came from a lock's unlock (`model::stats`, loom
//! only).

use crate::sync::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, until woken by [`futex_wake`] on the same word, until
/// `timeout` elapses, or spuriously. Returns `true` if the call slept and was woken (as far
/// as the kernel tells), `false` if it returned at once (value differed), timed out or was
/// interrupted. Callers must re-check their condition either way.
#[cfg(not(loom))]
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic for the duration of the call; the
    // kernel only reads it (compare with `expected`) and uses its address as the wait-queue
    // key. `ts_ptr` is null or points at a `timespec` that outlives the call. FUTEX_WAIT
    // takes no other pointers (uaddr2 and val3 are ignored).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc == 0
}

/// Wakes up to `n` threads sleeping in [`futex_wait`] on `word`; returns how many woke.
#[cfg(not(loom))]
pub fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32);
    // SAFETY: FUTEX_WAKE never dereferences `word`; the address is only a wait-queue key
    // (it may even belong to memory that is being reused: a wake of an unrelated waiter is
    // a spurious wake-up, which every waiter tolerates). No other pointers are passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc < 0 {
        0
    } else {
        rc as usize
    }
}

/// The loom model of the futex and its kick accounting (see the module docs).
#[cfg(loom)]
pub mod model {
    use loom::sync::{Mutex, Notify};
    use std::cell::Cell;
    use std::sync::Arc;

    pub(super) struct Waiter {
        pub(super) addr: usize,
        pub(super) id: u64,
        pub(super) woken: bool,
        pub(super) notify: Arc<Notify>,
    }

    /// Per-execution kick accounting.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct KickStats {
        /// Halts announced by waiters (a node made `HALTED`, or a head about to sleep).
        pub halts: u64,
        /// `futex_wake` calls.
        pub kicks: u64,
        /// `futex_wake` calls made outside a lock's unlock.
        pub kicks_outside_unlock: u64,
        /// `futex_wait` calls that returned without being woken.
        pub spurious: u64,
    }

    #[derive(Default)]
    pub(super) struct Table {
        pub(super) next_id: u64,
        pub(super) waiters: Vec<Waiter>,
        pub(super) stats: KickStats,
    }

    loom::lazy_static! {
        pub(super) static ref TABLE: Mutex<Table> = Mutex::new(Table::default());
    }

    loom::thread_local! {
        pub(super) static IN_UNLOCK: Cell<bool> = Cell::new(false);
        /// The thread's sleep: one per thread and execution, so that loom explores at most
        /// one spurious return per thread (a fresh `Notify` per wait could spur forever).
        /// A notification that arrives after a spurious return was already accounted for
        /// makes the thread's next wait return at once: another (bounded) spurious return.
        pub(super) static NOTIFY: Arc<Notify> = Arc::new(Notify::new());
    }

    /// This execution's kick accounting so far.
    pub fn stats() -> KickStats {
        TABLE.lock().unwrap().stats
    }

    /// A waiter announces that it is about to halt.
    pub(crate) fn note_halt() {
        TABLE.lock().unwrap().stats.halts += 1;
    }

    /// Marks the calling thread as inside an unlock while it lives.
    pub(crate) struct UnlockScope(());

    impl UnlockScope {
        pub(crate) fn enter() -> Self {
            IN_UNLOCK.with(|f| f.set(true));
            UnlockScope(())
        }
    }

    impl Drop for UnlockScope {
        fn drop(&mut self) {
            IN_UNLOCK.with(|f| f.set(false));
        }
    }
}

/// Loom model of `FUTEX_WAIT_PRIVATE` (see the module docs). The timeout is ignored.
#[cfg(loom)]
pub fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) -> bool {
    use crate::sync::Ordering;
    let addr = word as *const AtomicU32 as usize;
    let (id, notify) = {
        let mut t = model::TABLE.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return false;
        }
        let id = t.next_id;
        t.next_id += 1;
        let notify = model::NOTIFY.with(|n| n.clone());
        t.waiters.push(model::Waiter {
            addr,
            id,
            woken: false,
            notify: notify.clone(),
        });
        (id, notify)
    };
    // Returns once notified, or spuriously.
    notify.wait();
    let mut t = model::TABLE.lock().unwrap();
    let pos = t.waiters.iter().position(|w| w.id == id);
    let woken = pos.is_some_and(|p| t.waiters.remove(p).woken);
    if !woken {
        t.stats.spurious += 1;
    }
    woken
}

/// Loom model of `FUTEX_WAKE_PRIVATE` (see the module docs).
#[cfg(loom)]
pub fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    let addr = word as *const AtomicU32 as usize;
    let in_unlock = model::IN_UNLOCK.with(|f| f.get());
    let mut t = model::TABLE.lock().unwrap();
    t.stats.kicks += 1;
    if !in_unlock {
        t.stats.kicks_outside_unlock += 1;
    }
    let mut woke = 0usize;
    for w in t.waiters.iter_mut() {
        if woke as u32 >= n {
            break;
        }
        if w.addr == addr && !w.woken {
            w.woken = true;
            w.notify.notify();
            woke += 1;
        }
    }
    woke
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::Ordering;
    use std::sync::Arc;

    #[test]
    fn wait_returns_at_once_when_value_differs() {
        let w = AtomicU32::new(5);
        assert!(!futex_wait(&w, 4, None));
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(1);
        assert!(!futex_wait(&w, 1, Some(Duration::from_millis(5))));
    }

    #[test]
    fn wake_without_waiters_wakes_nobody() {
        let w = AtomicU32::new(0);
        assert_eq!(futex_wake(&w, 1), 0);
    }

    #[test]
    fn wake_releases_a_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let h = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                futex_wait(&w2, 0, None);
            }
            w2.load(Ordering::Acquire)
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(7, Ordering::Release);
        futex_wake(&w, 1);
        assert_eq!(h.join().unwrap(), 7);
    }
}
