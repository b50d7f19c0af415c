//! A worker thread's share of a port: the queue pairs it serves (one, or several with
//! `--workers`), the eventfd that wakes it when a destination it waits for gets room, the
//! timer that bounds those waits, and its polling state.
//!
//! vhost-user-backend runs the thread's epoll loop and calls the device's `handle_event`
//! with a [`Token`]; [`Worker::handle`] does the work:
//! * [`Token::Tx`] (a guest kick), [`Token::Wake`], [`Token::Timer`] → [`Worker::run`]:
//!   one TX burst per pair in turn, round after round until a round finds nothing; then
//!   polling ([`Poller`]) while it pays; then kicks re-enabled and a last look before
//!   sleeping.
//!   One call works for at most [`SLICE`]: a worker with more to do wakes itself and returns,
//!   so that the epoll loop serves its other events (RX kicks, vring changes, exit) in time;
//! * [`Token::Rx`] → [`QueuePair::rx_event`] (attach the RX ring, or wake held-back senders).

use crate::datapath::burst::Burst;
use crate::datapath::poll::{thread_cpu_time, Poller};
use crate::datapath::qpair::{PortCtx, QueuePair};
use crate::datapath::rxq::Waker;
use crate::switch::{Locks, Vring};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

/// Epoll token offset (above the number of vrings) of a worker's wake eventfd.
pub const TOKEN_WAKE: u64 = 1;
/// Epoll token offset of a worker's back-pressure timer.
pub const TOKEN_TIMER: u64 = 2;
/// Longest time one event handling call keeps working before it lets the epoll loop run.
pub const SLICE: Duration = Duration::from_millis(1);

/// What an event of a worker's epoll set is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The RX ring of the worker's `k`-th pair (a kick, or the ring became ready).
    Rx(usize),
    /// The TX ring of the worker's `k`-th pair.
    Tx(usize),
    /// A destination this worker waits for got room.
    Wake,
    /// A back-pressure bound expired.
    Timer,
    /// Anything else (ignored).
    Other,
}

impl Token {
    /// Decodes vhost-user-backend's `device_event`: vrings of the thread first (RX, TX per
    /// pair, in pair order), extra listeners above `num_queues`.
    pub fn decode(device_event: u16, num_queues: usize) -> Token {
        let e = u64::from(device_event);
        let nq = num_queues as u64;
        match e {
            e if e < nq => {
                let k = (e / 2) as usize;
                if e % 2 == 0 {
                    Token::Rx(k)
                } else {
                    Token::Tx(k)
                }
            }
            e if e == nq + TOKEN_WAKE => Token::Wake,
            e if e == nq + TOKEN_TIMER => Token::Timer,
            _ => Token::Other,
        }
    }
}

/// One worker thread's state (see the module documentation).
pub struct Worker {
    pairs: Vec<QueuePair>,
    waker: Arc<Waker>,
    /// The back-pressure timer of a worker with a thread of its own (a [`Pmd`] thread bounds
    /// its sleep by [`Worker::deadline`] instead).
    ///
    /// [`Pmd`]: crate::datapath::pmd::Pmd
    timer: Option<TimerFd>,
    timer_at: Option<Instant>,
    poller: Poller,
    /// The thread's vrings, kept from the first event (for `stop_vring`).
    vrings: Vec<Vring>,
    /// Burst buffers lent to each pair in turn ([`QueuePair::tx_burst_in`]).
    scratch: Burst,
}

impl Worker {
    /// A worker for the port's queue pairs `pairs` (in vring order), polling for up to
    /// `poll_us` microseconds after work, on a thread of its own: with its own wake eventfd
    /// and back-pressure timer ([`Worker::fds`]).
    pub fn new(pairs: &[usize], poll_us: u32) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK status flag changes.
        let r = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut w = Self::with_waker(pairs, poll_us, Arc::new(Waker::new()?));
        w.timer = Some(timer);
        Ok(w)
    }

    /// [`Worker::new`] run by a [`Pmd`](crate::datapath::pmd::Pmd) thread and woken through
    /// its `waker` (shared by every worker it runs); no timer (the thread's sleep is bounded
    /// by [`Worker::deadline`]), so no descriptor of its own.
    pub fn with_waker(pairs: &[usize], poll_us: u32, waker: Arc<Waker>) -> Self {
        Worker {
            pairs: pairs
                .iter()
                .map(|&q| QueuePair::new(q, waker.clone()))
                .collect(),
            waker,
            timer: None,
            timer_at: None,
            poller: Poller::new(poll_us),
            vrings: Vec::new(),
            scratch: Burst::default(),
        }
    }

    /// The wake eventfd and, for a worker with a thread of its own, the timer: for the
    /// thread's epoll set.
    pub fn fds(&self) -> (i32, Option<i32>) {
        (
            self.waker.fd().as_raw_fd(),
            self.timer.as_ref().map(|t| t.as_raw_fd()),
        )
    }

    /// The local index of pair `q`, if this worker serves it.
    pub fn local(&self, q: usize) -> Option<usize> {
        self.pairs.iter().position(|p| p.q == q)
    }

    /// Handles one event of the thread's epoll set.
    pub fn handle<L: Locks>(&mut self, cx: &PortCtx<'_, L>, tok: Token, vrings: &[Vring]) {
        self.note_vrings(vrings);
        self.poller.woken();
        match tok {
            Token::Rx(k) => self.rx_kick(cx, k),
            Token::Tx(k) => {
                if let Some(qp) = self.pairs.get(k) {
                    cx.fabric.sw.ports[cx.port].tx[qp.q].kicked(1);
                }
                self.run(cx, vrings, false);
            }
            Token::Wake => {
                self.waker.take();
                self.run(cx, vrings, true);
            }
            Token::Timer => {
                if let Some(t) = &mut self.timer {
                    let _ = t.wait();
                }
                self.timer_at = None;
                self.run(cx, vrings, true);
            }
            Token::Other => {}
        }
    }

    /// Bursts on every pair, round after round, then polling, then kicks (see the module
    /// documentation). `retry`: held-back frames are offered again in the first round.
    /// The CPU time spent in rounds that moved frames is counted as the worker's busy time
    /// ([`TxStats::busy`](crate::stats::TxStats::busy), on its first pair; see `BusyTime`).
    pub fn run<L: Locks>(&mut self, cx: &PortCtx<'_, L>, vrings: &[Vring], retry: bool) {
        let busy = self.rounds(cx, vrings, retry);
        self.add_busy(cx, busy);
    }

    /// [`Worker::run`]'s loop; returns the CPU time spent in rounds that found work.
    fn rounds<L: Locks>(&mut self, cx: &PortCtx<'_, L>, vrings: &[Vring], retry: bool) -> Duration {
        let start = Instant::now();
        let mut round_start = start;
        let mut busy = BusyTime::default();
        let mut retry = retry;
        loop {
            let Round { work, full, .. } =
                bursts(&mut self.pairs, &mut self.scratch, cx, vrings, retry);
            retry = false;
            // One clock read per round: the busy time and the slice both use it.
            let now = Instant::now();
            busy.round(work, now.duration_since(round_start));
            round_start = now;
            if !cx.memory_usable() {
                self.poller.sleep();
                return busy.finish();
            }
            self.update_timer(cx);
            if self.waker.is_pending() {
                // Woken while busy: offer the held-back frames again now.
                self.waker.take();
                retry = true;
                continue;
            }
            if now.duration_since(start) >= SLICE {
                // More to do: come back after the epoll loop had a look at other events.
                self.poller.sleep();
                self.waker.wake();
                return busy.finish();
            }
            if work || full {
                // Look again at once: asking for kicks after every round that found work
                // costs more than one empty round.
                self.poller.work();
                continue;
            }
            if self.poller.idle() {
                // The spin between rounds is idle time, not the next round's.
                round_start = Instant::now();
                continue;
            }
            // Going to sleep: ask for kicks, and look once more (a publication between the
            // last burst and the request would not kick).
            if !arm(&mut self.pairs, cx, vrings) {
                return busy.finish();
            }
            round_start = Instant::now();
        }
    }

    /// The vrings of the thread that serves this worker's events (kept from the first).
    pub fn note_vrings(&mut self, vrings: &[Vring]) {
        if self.vrings.is_empty() {
            self.vrings = vrings.to_vec();
        }
    }

    /// An RX event on local pair `k` (a kick, or the ring became ready): counted, and
    /// handed to [`QueuePair::rx_event`].
    pub fn rx_kick<L: Locks>(&mut self, cx: &PortCtx<'_, L>, k: usize) {
        if let (Some(qp), Some(rx)) = (self.pairs.get_mut(k), self.vrings.get(2 * k)) {
            cx.fabric.sw.ports[cx.port].tx[qp.q].kicked(0);
            qp.rx_event(cx, rx);
        }
    }

    /// Whether [`Worker::note_vrings`] kept the vrings.
    pub fn has_vrings(&self) -> bool {
        !self.vrings.is_empty()
    }

    /// A TX kick on local pair `k` of a worker a [`Pmd`](crate::datapath::pmd::Pmd) thread
    /// runs: counted, and the thread woken (no system call while it is awake already).
    pub fn forward_kick<L: Locks>(&self, cx: &PortCtx<'_, L>, k: usize) {
        if let Some(qp) = self.pairs.get(k) {
            cx.fabric.sw.ports[cx.port].tx[qp.q].kicked(1);
        }
        self.waker.wake();
    }

    /// One burst on each pair, in the buffers `scratch` (a worker run by a [`Pmd`] thread,
    /// `--pmd-threads`; the vrings are those [`Worker::note_vrings`] kept). `retry`:
    /// held-back frames are offered again.
    ///
    /// [`Pmd`]: crate::datapath::pmd::Pmd
    pub fn round<L: Locks>(
        &mut self,
        scratch: &mut Burst,
        cx: &PortCtx<'_, L>,
        retry: bool,
    ) -> Round {
        bursts(&mut self.pairs, scratch, cx, &self.vrings, retry)
    }

    /// Asks for kicks on every TX ring and looks once more; true when that look found
    /// chains (the caller then runs a round instead of sleeping).
    pub fn arm<L: Locks>(&mut self, cx: &PortCtx<'_, L>) -> bool {
        arm(&mut self.pairs, cx, &self.vrings)
    }

    /// The earliest bound of a held-back frame of this worker's pairs.
    pub fn deadline<L: Locks>(&self, cx: &PortCtx<'_, L>) -> Option<Instant> {
        self.pairs.iter().filter_map(|p| p.deadline(cx)).min()
    }

    /// Counts `busy` as this worker's busy time (on its first pair).
    pub fn add_busy<L: Locks>(&self, cx: &PortCtx<'_, L>, busy: Duration) {
        if let Some(qp) = self.pairs.first() {
            cx.fabric.sw.ports[cx.port].tx[qp.q].busy(busy);
        }
    }

    /// Arms the timer for the earliest held-back frame's bound.
    fn update_timer<L: Locks>(&mut self, cx: &PortCtx<'_, L>) {
        let next = self.deadline(cx);
        if next == self.timer_at {
            return;
        }
        let Some(timer) = self.timer.as_mut() else {
            return;
        };
        self.timer_at = next;
        match next {
            Some(t) => {
                // At least 1 ms, so that a deadline just passed still fires.
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                let _ = timer.reset(d, None);
            }
            None => {
                let _ = timer.clear();
            }
        }
    }

    /// The TX ring of pair `q` stops: its held-back frames are dropped and their chains
    /// returned (see [`QueuePair::stop`]).
    pub fn stop_tx<L: Locks>(&mut self, cx: &PortCtx<'_, L>, q: usize) {
        let Some(k) = self.local(q) else { return };
        if let (Some(qp), Some(tx)) = (self.pairs.get_mut(k), self.vrings.get(2 * k + 1)) {
            qp.stop(cx, tx);
        }
    }
}

/// What one round of bursts over a worker's pairs did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    /// Chains taken or held-back frames resumed.
    pub work: bool,
    /// Some burst stopped at its size limit (more may be waiting).
    pub full: bool,
    /// Chains taken.
    pub taken: u64,
}

/// One burst on each pair whose TX vring is known.
fn bursts<L: Locks>(
    pairs: &mut [QueuePair],
    scratch: &mut Burst,
    cx: &PortCtx<'_, L>,
    vrings: &[Vring],
    retry: bool,
) -> Round {
    let mut r = Round::default();
    for (k, qp) in pairs.iter_mut().enumerate() {
        let Some(tx) = vrings.get(2 * k + 1) else {
            continue;
        };
        let p = qp.tx_burst_in(scratch, cx, tx, retry);
        r.work |= p.taken > 0 || p.resumed > 0;
        r.full |= p.full;
        r.taken += p.taken as u64;
    }
    r
}

/// Kicks re-enabled on every pair's TX ring, with a last look: true when chains arrived.
fn arm<L: Locks>(pairs: &mut [QueuePair], cx: &PortCtx<'_, L>, vrings: &[Vring]) -> bool {
    let mut moved = false;
    for (k, qp) in pairs.iter_mut().enumerate() {
        if let Some(tx) = vrings.get(2 * k + 1) {
            moved |= qp.arm_kicks(cx, tx);
        }
    }
    moved
}

/// A worker's busy time within one [`Worker::run`]: the thread's CPU time over each phase of
/// consecutive rounds that moved frames. CPU time, not wall time: workers of several ports
/// may share a core, and a round during which the thread was preempted would otherwise count
/// the other thread's time too. The thread's CPU clock (a system call, ~0.3 µs) is read
/// when a phase opens and when it closes, never per round: under load a phase lasts a whole
/// [`SLICE`]; under light load the two reads come after the burst's frames were delivered.
/// The opening round's own length is taken from the wall clock; a phase ends with the first
/// round that moved nothing (that round counted in).
#[derive(Default)]
pub(crate) struct BusyTime {
    total: Duration,
    /// The thread's CPU time when the open phase began.
    open: Option<Duration>,
}

impl BusyTime {
    /// A round ended that did (`work`) or did not move frames, `wall` after it began.
    pub(crate) fn round(&mut self, work: bool, wall: Duration) {
        match (work, self.open) {
            (true, None) => self.open = Some(thread_cpu_time().saturating_sub(wall)),
            (false, Some(began)) => {
                self.total += thread_cpu_time().saturating_sub(began);
                self.open = None;
            }
            _ => {}
        }
    }

    /// The busy time of the phases closed so far.
    pub(crate) fn total(&self) -> Duration {
        self.total
    }

    /// The busy time, the open phase (if any) closed now.
    pub(crate) fn finish(mut self) -> Duration {
        self.round(false, Duration::ZERO);
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_the_thread_s_cpu_time_not_the_wall_clock() {
        // A phase during which the thread sleeps (as when another worker on its core runs)
        // adds next to nothing; a phase of spinning adds about its length.
        let mut b = BusyTime::default();
        b.round(true, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(60));
        b.round(true, Duration::ZERO);
        b.round(false, Duration::ZERO);
        assert!(b.total < Duration::from_millis(20), "{:?}", b.total);
        let t0 = Instant::now();
        b.round(true, Duration::ZERO);
        while t0.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        let total = b.finish();
        assert!(total >= Duration::from_millis(15), "{total:?}");
        // Idle rounds alone are no busy time.
        let mut idle = BusyTime::default();
        idle.round(false, Duration::from_millis(5));
        assert_eq!(idle.finish(), Duration::ZERO);
    }

    #[test]
    fn only_a_worker_with_a_thread_of_its_own_has_a_timer() {
        // A polling thread bounds its sleep by the workers' deadlines: a timerfd per worker
        // there would be a descriptor per worker per connection, never read.
        let own = Worker::new(&[0, 2], 0).unwrap();
        assert!(own.fds().1.is_some());
        let waker = Arc::new(Waker::new().unwrap());
        let on_pmd = Worker::with_waker(&[0, 2], 0, waker.clone());
        assert_eq!(on_pmd.fds(), (waker.fd().as_raw_fd(), None));
    }

    #[test]
    fn tokens_decode() {
        // A thread with two pairs of a 16-pair device (32 vrings).
        assert_eq!(Token::decode(0, 32), Token::Rx(0));
        assert_eq!(Token::decode(1, 32), Token::Tx(0));
        assert_eq!(Token::decode(3, 32), Token::Tx(1));
        assert_eq!(Token::decode(33, 32), Token::Wake);
        assert_eq!(Token::decode(34, 32), Token::Timer);
        assert_eq!(Token::decode(32, 32), Token::Other);
    }
}
