//! The reader threads of the tap ports: one per tap queue, each in its own epoll loop with
//! five sources — the queue's descriptor (`EPOLLIN`: frames from the host; `EPOLLOUT`, only
//! while a sender waits for room), the [`Waker`] that a full destination wakes, the
//! back-pressure timer, the queue's control eventfd (a sender asks for the room watch) and
//! the stop eventfd. The descriptor is read only while no frame is held back, so a full
//! guest keeps the frames in the tap's own queue instead of in pvnet; no loop spins except
//! the bounded, adaptive polling that `--poll-us` asks for ([`Poller`]). Room appearing
//! (`EPOLLOUT`) also ends a stall that an expired sender marked on the queue.

use crate::datapath::poll::Poller;
use crate::datapath::rxq::Waker;
use crate::datapath::tapsrc::TapSource;
use crate::datapath::worker::SLICE;
use crate::switch::{Fabric, Locks};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

const TOK_FD: u64 = 0;
const TOK_WAKE: u64 = 1;
const TOK_TIMER: u64 = 2;
const TOK_CTL: u64 = 3;
const TOK_STOP: u64 = 4;

/// The running reader threads of every tap port.
pub struct Uplinks {
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Uplinks {
    /// Starts one reader thread per queue of every tap port of `fabric`.
    pub fn start<L: Locks>(fabric: &Arc<Fabric<L>>) -> io::Result<Uplinks> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let mut up = Uplinks {
            stop,
            threads: Vec::new(),
        };
        for (p, port) in fabric.sw.ports.iter().enumerate() {
            let Some(tap) = port.tap() else { continue };
            for q in 0..tap.queues.len() {
                let (f, stop) = (fabric.clone(), up.stop.clone());
                let t = std::thread::Builder::new()
                    .name(format!("pvnet-tap{p}q{q}"))
                    .spawn(move || {
                        if let Err(e) = reader(&f, p, q, &stop) {
                            log::error!("tap port {p} queue {q}: {e}");
                        }
                    })?;
                up.threads.push(t);
            }
        }
        Ok(up)
    }

    /// Stops and joins the reader threads.
    pub fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Uplinks {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Interest in the queue's descriptor: frames while nothing is held, room while asked.
fn fd_events(read: bool, room: bool) -> EventSet {
    let mut e = EventSet::empty();
    if read {
        e |= EventSet::IN;
    }
    if room {
        e |= EventSet::OUT;
    }
    e
}

fn reader<L: Locks>(fabric: &Fabric<L>, p: usize, q: usize, stop: &EventFd) -> io::Result<()> {
    let sw = &fabric.sw;
    let port = &sw.ports[p];
    let Some(tap) = port.tap() else {
        return Ok(());
    };
    let tq = &tap.queues[q];
    let slot = &port.rx[q];
    let bound = sw.cfg.backpressure_bound;
    let waker = Arc::new(Waker::new()?);
    let mut timer = TimerFd::new()?;
    let ep = Epoll::new()?;
    let add = |fd: i32, ev: EventSet, tok: u64| {
        ep.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, tok))
    };
    add(tq.fd(), EventSet::IN, TOK_FD)?;
    add(waker.fd().as_raw_fd(), EventSet::IN, TOK_WAKE)?;
    add(timer.as_raw_fd(), EventSet::IN, TOK_TIMER)?;
    add(tq.ctl.as_raw_fd(), EventSet::IN, TOK_CTL)?;
    add(stop.as_raw_fd(), EventSet::IN, TOK_STOP)?;
    let mut src = TapSource::new(p, q, waker.clone());
    let mut poller = Poller::new(sw.cfg.poll_us);
    let (mut interest, mut room, mut broken) = (EventSet::IN, false, false);
    let mut timer_at: Option<Instant> = None;
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        // Work: bursts until the queue is empty (then polling while it pays, as for guest
        // rings with --poll-us), a frame is held back, or the slice ends.
        let start = Instant::now();
        let mut more = false;
        while !broken && !src.held() {
            match src.read_burst(tq.fd(), sw) {
                Ok(n) => {
                    if n > 0 {
                        poller.work();
                        src.deliver(fabric, false);
                    }
                    if src.drained() && !src.held() && !poller.idle() {
                        break;
                    }
                }
                Err(e) => {
                    src.read_failed(&tap.name, &e);
                    poller.sleep();
                    break;
                }
            }
            if start.elapsed() >= SLICE {
                more = true;
                break;
            }
        }
        if src.held() {
            poller.sleep();
        }
        let want = fd_events(!src.held(), room);
        if !broken && want != interest {
            ep.ctl(
                ControlOperation::Modify,
                tq.fd(),
                EpollEvent::new(want, TOK_FD),
            )?;
            interest = want;
        }
        let next = src.deadline(bound);
        if next != timer_at {
            timer_at = next;
            match next {
                Some(t) => {
                    let d = t
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1));
                    timer.reset(d, None)?;
                }
                None => timer.clear()?,
            }
        }
        let n = match ep.wait(if more { 0 } else { -1 }, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if !more {
            poller.woken();
        }
        for ev in &events[..n] {
            let set = ev.event_set();
            match ev.data() {
                TOK_FD => {
                    if !broken && set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                        // The device went away under us (deleted from outside): stop
                        // watching it — epoll reports errors whatever the interest, so the
                        // descriptor leaves the set (no spinning). Writes to it fail and
                        // are counted (tap_error).
                        log::error!("tap {} queue {q}: device gone", tap.name);
                        broken = true;
                        let _ = ep.ctl(ControlOperation::Delete, tq.fd(), EpollEvent::default());
                        // Senders waiting for room would wait for nothing.
                        let waiters = {
                            let _g = tq.write_lock();
                            slot.take_waiters()
                        };
                        for w in waiters {
                            w.wake();
                        }
                        continue;
                    }
                    if room && set.contains(EventSet::OUT) {
                        room = false;
                        let waiters = {
                            let _g = tq.write_lock();
                            slot.clear_stall();
                            slot.take_waiters()
                        };
                        for w in waiters {
                            w.wake();
                        }
                    }
                }
                TOK_WAKE => {
                    waker.take();
                    src.deliver(fabric, true);
                }
                TOK_TIMER => {
                    let _ = timer.wait();
                    timer_at = None;
                    src.expire(sw, Instant::now(), bound);
                    src.deliver(fabric, true);
                }
                TOK_CTL => {
                    let _ = tq.ctl.read();
                    room |= tq.take_want_room();
                }
                TOK_STOP => return Ok(()),
                _ => {}
            }
        }
    }
}
