//! Adaptive polling: after a burst that found work, a worker keeps looking at its TX rings
//! (guest kicks off) for a while before it re-enables kicks and sleeps in epoll — Linux
//! vhost-net's `busyloop_timeout`, with KVM's `halt_poll_ns` grow/shrink rule for the length:
//!
//! * the window starts at `--poll-us` and never exceeds it;
//! * it shrinks (halves) when a poll ran out without finding work, or when the poller was
//!   preempted while polling (its core is wanted by someone else);
//! * it grows back (doubles, from a small start) when the worker slept and was woken again
//!   sooner than the full window: polling would have caught that work.
//!
//! Never more pollers than cores: a process-wide count of polling workers, at most the
//! number of CPUs this process may run on; a worker that finds them all taken does not poll.
//! While polling, the worker yields the CPU every few microseconds of idle spinning, so a
//! runnable thread on the same core is not kept waiting for the whole window.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Smallest window a grown window starts from.
const GROW_START_US: u32 = 8;
/// Idle spin iterations between yields.
const SPINS_PER_YIELD: u32 = 64;

struct Budget {
    active: AtomicUsize,
    limit: usize,
}

fn budget() -> &'static Budget {
    static B: OnceLock<Budget> = OnceLock::new();
    B.get_or_init(|| Budget {
        active: AtomicUsize::new(0),
        limit: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// A polling slot: while held, its worker counts against the process-wide budget.
pub struct Slot(());

impl Slot {
    /// Takes a slot if fewer workers than CPUs are polling.
    pub fn try_take() -> Option<Slot> {
        let b = budget();
        b.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < b.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        budget().active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Involuntary context switches of the calling thread so far.
fn preemptions() -> u64 {
    // SAFETY: getrusage fills the rusage struct we own; RUSAGE_THREAD is valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with a valid pointer.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if r == 0 {
        ru.ru_nivcsw as u64
    } else {
        0
    }
}

/// The calling thread's CPU time so far (zero if the clock cannot be read).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_THREAD_CPUTIME_ID is valid on
    // Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// One worker's polling state.
pub struct Poller {
    max_us: u32,
    window_us: u32,
    slot: Option<Slot>,
    /// When the current idle spell started (no work found since).
    idle_since: Option<Instant>,
    spins: u32,
    preempt_mark: u64,
    /// When the worker last went to sleep in epoll.
    slept_at: Option<Instant>,
}

impl Poller {
    /// Polling for up to `max_us` microseconds (0: never poll).
    pub fn new(max_us: u32) -> Self {
        Poller {
            max_us,
            window_us: max_us,
            slot: None,
            idle_since: None,
            spins: 0,
            preempt_mark: 0,
            slept_at: None,
        }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        Duration::from_micros(u64::from(self.window_us))
    }

    /// The worker was woken from epoll: a wake-up soon after going to sleep means a longer
    /// window would have caught the work.
    pub fn woken(&mut self) {
        if let Some(t) = self.slept_at.take() {
            if t.elapsed() < Duration::from_micros(u64::from(self.max_us)) {
                self.window_us = (self.window_us.max(GROW_START_US / 2) * 2).min(self.max_us);
            }
        }
    }

    /// A round found work: the idle spell (if any) ends.
    pub fn work(&mut self) {
        self.idle_since = None;
        self.spins = 0;
    }

    /// A round found nothing. Returns true to keep polling (spin and look again), false to
    /// go to sleep (the caller re-enables kicks and returns to epoll).
    pub fn idle(&mut self) -> bool {
        if self.window_us == 0 {
            return self.sleep();
        }
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        if self.slot.is_none() {
            self.slot = Slot::try_take();
            self.preempt_mark = preemptions();
            if self.slot.is_none() {
                return self.sleep();
            }
        }
        if now.duration_since(since) >= self.window() {
            // Ran out without finding work.
            self.window_us /= 2;
            return self.sleep();
        }
        self.spins += 1;
        if self.spins % SPINS_PER_YIELD == 0 {
            if preemptions() != self.preempt_mark {
                // Someone else wants this core.
                self.window_us /= 2;
                return self.sleep();
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        true
    }

    /// Ends polling (gives the slot back).
    pub fn sleep(&mut self) -> bool {
        self.slot = None;
        self.idle_since = None;
        self.spins = 0;
        self.slept_at = Some(Instant::now());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_shrinks_when_polling_finds_nothing_and_grows_on_early_wakeups() {
        let mut p = Poller::new(64);
        assert_eq!(p.window_us, 64);
        // Spin until the window runs out.
        let t0 = Instant::now();
        while p.idle() {
            assert!(t0.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(p.window_us, 32);
        // Woken right after sleeping: grows back.
        p.woken();
        assert_eq!(p.window_us, 64);
        // Never beyond the maximum; 0 never polls.
        p.woken();
        assert_eq!(p.window_us, 64);
        let mut z = Poller::new(0);
        assert!(!z.idle());
    }

    #[test]
    fn no_more_slots_than_cpus() {
        let limit = budget().limit;
        let slots: Vec<_> = std::iter::from_fn(Slot::try_take).take(limit + 1).collect();
        // Other tests may hold slots concurrently: never more than the limit in total.
        assert!(slots.len() <= limit);
        drop(slots);
        assert!(budget().active.load(Ordering::Acquire) <= limit);
    }
}
