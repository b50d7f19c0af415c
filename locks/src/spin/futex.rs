//! `futex(2)` wait and wake on a 32-bit atomic word: the user-space `pv_wait` / `pv_kick`.
//!
//! `futex_wait` sleeps only if the word still holds `expected` when the kernel looks at it
//! (atomically with respect to `futex_wake` on the same word), so a waker that changes the
//! word *before* waking can never be missed. It may also return spuriously (signals,
//! `EAGAIN`, timeouts); every caller re-checks its condition in a loop.
//!
//! Under `--cfg loom` the same two functions are a faithful model built from a loom
//! `Mutex` + `Condvar`: `wait` compares the value under the mutex and registers itself as a
//! waiter on that address; `wake` marks up to `n` waiters *of that address* as woken under
//! the mutex. A waiter returns only when woken for its own address (no spurious returns are
//! modelled), so a lost wake-up shows up as a loom deadlock.

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

#[cfg(loom)]
mod model {
    use loom::sync::{Condvar, Mutex};

    pub(super) struct Waiter {
        pub(super) addr: usize,
        pub(super) id: u64,
        pub(super) woken: bool,
    }

    #[derive(Default)]
    pub(super) struct Table {
        pub(super) next_id: u64,
        pub(super) waiters: Vec<Waiter>,
    }

    pub(super) struct Futexes {
        pub(super) table: Mutex<Table>,
        pub(super) cv: Condvar,
    }

    loom::lazy_static! {
        pub(super) static ref FUTEXES: Futexes = Futexes {
            table: Mutex::new(Table::default()),
            cv: Condvar::new(),
        };
    }
}

/// Loom model of `FUTEX_WAIT_PRIVATE` (see the module docs). The timeout is ignored.
#[cfg(loom)]
pub fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) -> bool {
    use crate::sync::Ordering;
    let f = &*model::FUTEXES;
    let addr = word as *const AtomicU32 as usize;
    let mut t = f.table.lock().unwrap();
    if word.load(Ordering::SeqCst) != expected {
        return false;
    }
    let id = t.next_id;
    t.next_id += 1;
    t.waiters.push(model::Waiter {
        addr,
        id,
        woken: false,
    });
    loop {
        t = f.cv.wait(t).unwrap();
        if let Some(pos) = t.waiters.iter().position(|w| w.id == id && w.woken) {
            t.waiters.remove(pos);
            return true;
        }
    }
}

/// Loom model of `FUTEX_WAKE_PRIVATE` (see the module docs).
#[cfg(loom)]
pub fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    let f = &*model::FUTEXES;
    let addr = word as *const AtomicU32 as usize;
    let mut t = f.table.lock().unwrap();
    let mut woke = 0usize;
    for w in t.waiters.iter_mut() {
        if woke as u32 >= n {
            break;
        }
        if w.addr == addr && !w.woken {
            w.woken = true;
            woke += 1;
        }
    }
    if woke > 0 {
        f.cv.notify_all();
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
