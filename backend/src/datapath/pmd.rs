//! Switch-wide polling threads (`--pmd-threads N`): OVS-DPDK's PMD threads, testpmd's
//! forwarding lcores. Without them every port has worker threads of its own (run by its
//! vhost-user daemon), so two ports on one core are two threads that the kernel switches
//! between every few milliseconds, each direction running alone in its slice. A [`Pmd`]
//! thread instead serves queue pairs of every port: one burst per pair of each member in
//! turn, round after round, then polling while it pays ([`Poller`]), then kicks re-enabled
//! and a sleep on its own eventfd.
//!
//! ```text
//!   daemon thread of port A ──TX kick──► wake ─┐          ┌─ round: A.w0, B.w1, …
//!   daemon thread of port B ──TX kick──► wake ─┼─► Pmd ───┤  idle: poll, then arm kicks
//!   RX ring got room (held-back senders) ─────┘          └─ sleep: poll(2) on the wake fd
//! ```
//!
//! A member is one worker of one connection ([`Member`], implemented by the port's device):
//! the port's daemon thread keeps handling its vhost-user messages and RX events and forwards
//! TX kicks as wakes; the [`Pmd`] runs the worker's bursts. The member list is locked for one
//! round at a time, so [`Pmd::detach`] returns only once the thread is done with a
//! connection for good (its rings and memory may then go).

use crate::datapath::burst::Burst;
use crate::datapath::poll::Poller;
use crate::datapath::rxq::Waker;
use crate::datapath::worker::{BusyTime, Round};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a [`Pmd`] thread runs: worker `w` of one connection's device.
pub trait Member: Send + Sync {
    /// Whether the connection's rings and buffers may be touched now.
    fn usable(&self) -> bool;
    /// One burst on each pair of worker `w`, in `scratch`'s buffers.
    fn round(&self, w: usize, scratch: &mut Burst, retry: bool) -> Round;
    /// Kicks re-enabled on worker `w`'s TX rings, with a last look: true when chains came.
    fn arm(&self, w: usize) -> bool;
    /// The earliest bound of a frame worker `w` holds back.
    fn deadline(&self, w: usize) -> Option<Instant>;
    /// Counts `busy` as worker `w`'s busy time.
    fn add_busy(&self, w: usize, busy: Duration);
}

struct Entry {
    key: usize,
    member: Arc<dyn Member>,
    w: usize,
    /// Chains taken in the open busy phase (its busy time is shared out by them).
    taken: u64,
}

/// One switch-wide polling thread's shared state (the thread runs [`Pmd::run`]).
pub struct Pmd {
    id: usize,
    waker: Arc<Waker>,
    members: Mutex<Vec<Entry>>,
    stop: AtomicBool,
}

impl Pmd {
    /// The state of PMD thread `id`.
    pub fn new(id: usize) -> io::Result<Pmd> {
        Ok(Pmd {
            id,
            waker: Arc::new(Waker::new()?),
            members: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    /// This thread's number.
    pub fn id(&self) -> usize {
        self.id
    }

    /// What wakes the thread: kicks forwarded by the daemons, held-back senders' wakes.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }

    fn members(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds worker `w` of `member` (identified by `key` for [`Pmd::detach`]).
    pub fn attach(&self, key: usize, member: Arc<dyn Member>, w: usize) {
        self.members().push(Entry {
            key,
            member,
            w,
            taken: 0,
        });
        self.waker.wake();
    }

    /// Removes every worker attached with `key`. When this returns the thread is in none of
    /// their rounds and never enters one again.
    pub fn detach(&self, key: usize) {
        self.members().retain(|e| e.key != key);
    }

    /// Number of workers attached.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Whether no worker is attached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends [`Pmd::run`] (after its current round).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The thread's loop, polling for up to `poll_us` microseconds after work; returns
    /// after [`Pmd::stop`].
    pub fn run(&self, poll_us: u32) {
        let mut poller = Poller::new(poll_us);
        let mut scratch = Burst::default();
        let mut busy = BusyTime::default();
        let mut retry = false;
        let mut round_start = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            if self.waker.is_pending() {
                self.waker.take();
                retry = true;
            }
            let mut members = self.members();
            let r = round(&mut members, &mut scratch, retry);
            retry = false;
            let now = Instant::now();
            account(
                &mut busy,
                &mut members,
                r.work,
                now.duration_since(round_start),
            );
            round_start = now;
            if r.work || r.full {
                poller.work();
                continue;
            }
            if poller.idle() {
                round_start = Instant::now();
                continue;
            }
            // Going to sleep: kicks on, one more look on every ring (all of them: each
            // `arm` re-enables its own kicks).
            let moved = members
                .iter()
                .filter(|e| e.member.usable())
                .fold(false, |m, e| e.member.arm(e.w) | m);
            if moved {
                round_start = Instant::now();
                continue;
            }
            let deadline = members
                .iter()
                .filter(|e| e.member.usable())
                .filter_map(|e| e.member.deadline(e.w))
                .min();
            drop(members);
            if self.sleep(deadline) {
                retry = true;
            }
            poller.woken();
            round_start = Instant::now();
        }
    }

    /// Sleeps until woken or until `deadline`; true when the next round is to offer
    /// held-back frames again (woken, or the deadline passed).
    fn sleep(&self, deadline: Option<Instant>) -> bool {
        // Rounded up to whole milliseconds, at least 1, so that the thread never wakes
        // before the bound and a bound just passed still gives the frame its retry.
        let timeout = deadline.map_or(-1, |t| {
            let us = t.saturating_duration_since(Instant::now()).as_micros();
            i32::try_from(us.div_ceil(1000).max(1)).unwrap_or(i32::MAX)
        });
        let mut pfd = libc::pollfd {
            fd: self.waker.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, on the waker's eventfd, which lives as long as `self`.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            // Consume the count here, whatever the pending flag says: a wake that set the
            // flag, lost it to a `take` at the top of the loop and only then wrote the
            // eventfd leaves a count behind with the flag clear, and that count would make
            // every later poll return at once (a thread spinning while idle).
            self.waker.take();
            return true;
        }
        n == 0 || deadline.is_some_and(|t| Instant::now() >= t)
    }
}

/// One burst on every pair of every usable member.
fn round(members: &mut [Entry], scratch: &mut Burst, retry: bool) -> Round {
    let mut r = Round::default();
    for e in members.iter_mut() {
        if !e.member.usable() {
            continue;
        }
        let m = e.member.round(e.w, scratch, retry);
        e.taken += m.taken;
        r.work |= m.work;
        r.full |= m.full;
        r.taken += m.taken;
    }
    r
}

/// The thread's busy time (its CPU time over phases of rounds that moved frames, see
/// [`BusyTime`]), shared out among the members at the end of each phase by the chains
/// each took in it.
fn account(busy: &mut BusyTime, members: &mut [Entry], work: bool, wall: Duration) {
    let before = busy.total();
    busy.round(work, wall);
    let closed = busy.total().saturating_sub(before);
    if closed.is_zero() {
        return;
    }
    let taken: u64 = members.iter().map(|e| e.taken).sum();
    for e in members.iter_mut() {
        if taken > 0 && e.taken > 0 {
            let share = closed.as_nanos() * u128::from(e.taken) / u128::from(taken);
            e.member.add_busy(
                e.w,
                Duration::from_nanos(u64::try_from(share).unwrap_or(u64::MAX)),
            );
        }
        e.taken = 0;
    }
}

#[cfg(test)]
mod tests;
