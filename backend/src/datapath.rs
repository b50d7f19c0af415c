//! The data path: a worker takes frames from its guest's TX ring, switches them, and copies
//! them (grant copies, guest to guest) into the destination's RX ring under the ring's lock.
//!
//! Back-pressure: when a unicast destination ring is full the TX chain is put back on the TX
//! ring (`go_to_previous_position`), the worker registers its wake eventfd with the RX slot
//! and arms a timer; the destination's RX kick (guest posted buffers) wakes it, the timer
//! bounds the wait to `Config::backpressure_bound`, after which that frame is dropped and
//! counted and the ring is marked stalled: frames for it are dropped at once (no more
//! waiting) until its guest posts buffers again.
//! Flooded copies to a full port are dropped (counted) at once.

use crate::device::NetDevice;
use crate::net::{self, gso, Delivery, VirtioNetHdr};
use crate::rx::{
    fill, gather, needs_signal, publish, r_signalled, release, set_signalled, Deliver, RxHold, Src,
};
use crate::stats::Drop;
use crate::switch::{Locks, Pair, Port};
use pvnet_grant::{read_pair, Access};
use pvnet_locks::family::MutexApi;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vhost_user_backend::VringT;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// TX chains handled per batch (one grant hold, one used-index update and notification
/// round per ring).
const BATCH: usize = 128;
/// Frame bytes (after the virtio header) read up front for switching and hashing.
const PREFIX: usize = 256;
/// Largest frame accepted from a guest (after the virtio header).
pub const MAX_FRAME: usize = gso::MAX_GSO_FRAME;

/// Locks a mutex, ignoring poisoning (a panicked worker must not wedge the port).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-worker (per queue pair) state; only its own worker thread uses it.
pub struct Worker {
    port: usize,
    queue: usize,
    /// Woken by a destination's RX kick.
    pub wake: Arc<EventFd>,
    /// Bounds back-pressure waits.
    pub timer: TimerFd,
    blocked_since: Option<Instant>,
    /// RX queue of the destination that held this worker back.
    full_q: usize,
    /// Length of the frame `forward` last parsed (counted once the chain is consumed).
    frame_len: usize,
    segs: Vec<(u64, u32)>,
    pub(crate) rxsegs: Vec<(u64, u32)>,
    pub(crate) popped: Vec<(u16, u32)>,
    touched: Vec<(usize, usize)>,
    /// Used entries of the TX batch in progress (published with one index update).
    tx_used: Vec<(u16, u32)>,
    /// TX used index at the last notification decision.
    tx_signalled: u16,
    /// The forwarding table's clock, read once per batch.
    now: u32,
    lin: Vec<u8>,
    scratch: Vec<u8>,
    last_log: Option<Instant>,
}

impl Worker {
    pub fn new(port: usize, queue: usize) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK status flag changes.
        let r = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Worker {
            port,
            queue,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            timer,
            blocked_since: None,
            full_q: 0,
            frame_len: 0,
            segs: Vec::with_capacity(64),
            rxsegs: Vec::with_capacity(64),
            popped: Vec::with_capacity(32),
            touched: Vec::with_capacity(8),
            tx_used: Vec::with_capacity(BATCH),
            tx_signalled: 0,
            now: 0,
            lin: Vec::new(),
            scratch: Vec::new(),
            last_log: None,
        })
    }

    fn drop_frame(&mut self, port: &Port, reason: Drop) {
        port.tx[self.queue].drop(reason);
        let now = Instant::now();
        if self
            .last_log
            .map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_log = Some(now);
            log::warn!(
                "port {} queue {}: dropped frame ({}); further drops counted silently for 1s",
                self.port,
                self.queue,
                reason.name()
            );
        }
    }

    fn unblock(&mut self) {
        if self.blocked_since.take().is_some() {
            let _ = self.timer.clear();
        }
    }
}

/// What happened to one TX chain.
enum Outcome {
    /// Consumed (delivered or dropped): return it to the guest.
    Done,
    /// Held back by a full destination: leave it on the TX ring.
    Blocked,
}

impl<L: Locks> NetDevice<L> {
    /// Handles the TX ring of pair `q`: called on TX kicks, wake-ups and timer expiry.
    pub(crate) fn run_tx(
        &self,
        q: usize,
        tx: &crate::switch::Vring,
        _timer: bool,
    ) -> io::Result<()> {
        let Some(wm) = self.workers.get(q) else {
            return Ok(());
        };
        let mut w = lock(wm);
        let sw = &*self.sw;
        let port = &sw.ports[self.port];
        let mem = self.mem.memory();
        let event_idx = self.event_idx.load(Ordering::Acquire);
        // Consecutive batches that consumed nothing: a ring whose avail index is bogus (more
        // than a ring size ahead) yields no chain, yet always looks non-empty.
        let mut idle = 0u32;
        loop {
            // Its memory file shrank: the connection loop is disconnecting it.
            if self.poisoned() {
                return Ok(());
            }
            let mut cache: Option<(usize, Pair<'_, L>)> = None;
            let mut held: Option<RxHold<'_, L>> = None;
            let mut vs = tx.get_mut();
            let _ = vs.get_queue_mut().disable_notification(&*mem);
            w.now = sw.fdb.now();
            w.tx_used.clear();
            let mut blocked = false;
            // Chains are popped one by one: with virtio-queue's batch iterator (`iter`, one
            // avail-index read per batch) the 64 KiB bench lost wake-ups after back-pressure
            // (cause not found yet; see docs/benchmarks.md).
            while w.tx_used.len() < BATCH {
                let Some(chain) = vs.get_queue_mut().pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                match self.forward(&mut w, chain, &mut cache, &mut held) {
                    Outcome::Done => {
                        if w.frame_len > 0 {
                            port.tx[q].frame(w.frame_len);
                        }
                        w.tx_used.push((head, 0));
                    }
                    Outcome::Blocked => {
                        vs.get_queue_mut().go_to_previous_position();
                        blocked = true;
                        break;
                    }
                }
            }
            // The RX run ends before the grant guards go (queue lock inside grant read).
            release(&mut held, &mut w.touched);
            drop(cache);
            let n = w.tx_used.len();
            if n > 0 {
                let qu = vs.get_queue_mut();
                if let Err(e) = publish(qu, &mem, &w.tx_used) {
                    log::error!("port {}: TX used: {e}", self.port);
                }
                if needs_signal(qu, &mem, event_idx, w.tx_signalled) {
                    port.tx[q].notified();
                    let _ = vs.signal_used_queue();
                }
                w.tx_signalled = vs.get_queue().next_used();
            }
            idle = if n == 0 { idle + 1 } else { 0 };
            let more = if blocked {
                false
            } else if n == BATCH {
                true
            } else {
                // Chains published while notifications were off are taken now; but after two
                // empty rounds the avail index is bogus: wait for the guest's next kick.
                vs.get_queue_mut()
                    .enable_notification(&*mem)
                    .unwrap_or(false)
                    && idle < 2
            };
            drop(vs);
            self.flush_rx_notifications(&mut w);
            if !more {
                return Ok(());
            }
        }
    }

    /// Signals every RX queue this batch delivered into, if its guest asked for it.
    fn flush_rx_notifications(&self, w: &mut Worker) {
        for (p, q) in w.touched.drain(..) {
            let Some(slot) = self.sw.ports.get(p).and_then(|port| port.rx.get(q)) else {
                continue;
            };
            let ring = self.fabric.ports[p].rings[q].lock();
            let Some(r) = ring.as_ref() else { continue };
            let feats = self.sw.ports[p].features.load(Ordering::Acquire);
            let mem = r.mem.memory();
            let vs = r.vring.get_ref();
            let qu = vs.get_queue();
            let event_idx = feats & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            let notify = needs_signal(qu, &mem, event_idx, r_signalled(r));
            set_signalled(r, qu.next_used());
            if notify {
                slot.stats.notified();
                let _ = vs.signal_used_queue();
            }
        }
    }

    /// Switches one TX chain.
    fn forward<'s>(
        &'s self,
        w: &mut Worker,
        chain: DescriptorChain<&GuestMemoryMmap>,
        cache: &mut Option<(usize, Pair<'s, L>)>,
        held: &mut Option<RxHold<'s, L>>,
    ) -> Outcome {
        let sw = &*self.sw;
        let port = &sw.ports[self.port];
        // 1. Collect and validate the descriptors.
        w.segs.clear();
        w.frame_len = 0;
        let mut total = 0usize;
        let mut count = 0usize;
        let mut cut = false;
        let mut bad = None;
        for d in chain {
            count += 1;
            cut = d.has_next();
            if d.is_write_only() {
                bad.get_or_insert(Drop::WritableInTx);
                continue;
            }
            if d.len() == 0 {
                continue;
            }
            total = total.saturating_add(d.len() as usize);
            if total > MAX_FRAME + net::hdr::HDR_LEN {
                bad.get_or_insert(Drop::TooLarge);
                continue;
            }
            w.segs.push((d.addr().0, d.len()));
        }
        if count == 0 {
            bad = Some(Drop::BadChain);
        } else if cut {
            bad = Some(Drop::ChainLoop);
        }
        let feats = self.acked.load(Ordering::Acquire);
        let hl = net::net_hdr_len(feats);
        if bad.is_none() && total < hl + net::eth::ETH_HLEN {
            bad = Some(Drop::TooShort);
        }
        if let Some(r) = bad {
            w.drop_frame(port, r);
            return Outcome::Done;
        }
        // 2. Read the header and frame prefix through the source grants.
        if cache.is_none() {
            release(held, &mut w.touched);
            let g = &self.fabric.ports[self.port].grants;
            *cache = Some((self.port, read_pair(g, g)));
        }
        let mut pre = [0u8; net::hdr::HDR_LEN + PREFIX];
        let frame_len = total - hl;
        let plen = frame_len.min(PREFIX);
        {
            let Some((_, pair)) = cache.as_ref() else {
                return Outcome::Done;
            };
            let g = pair.src();
            if w.segs.iter().any(|&(a, l)| {
                g.check(GuestAddress(a), l as usize, Access::ReadOnly)
                    .is_err()
            }) {
                w.drop_frame(port, Drop::NotGranted);
                return Outcome::Done;
            }
            if gather(g, &w.segs, 0, &mut pre[..hl + plen]).is_err() {
                w.drop_frame(port, Drop::NotGranted);
                return Outcome::Done;
            }
        }
        let Ok(hdr) = VirtioNetHdr::from_bytes(&pre[..hl]) else {
            w.drop_frame(port, Drop::TooShort);
            return Outcome::Done;
        };
        let frame = &pre[hl..hl + plen];
        let mut dmac = [0u8; 6];
        let mut smac = [0u8; 6];
        dmac.copy_from_slice(&frame[..6]);
        smac.copy_from_slice(&frame[6..12]);
        w.frame_len = frame_len;
        if !net::is_multicast(&smac) {
            sw.fdb.learn_at(&smac, self.port, w.now);
        }
        let hash = net::flow_hash(frame);
        // 3. Destination(s).
        let known = if net::is_multicast(&dmac) {
            None
        } else {
            sw.fdb.lookup_at(&dmac, w.now)
        };
        // A frame that fit in the prefix is delivered from it (one local write per copy).
        let small = (frame_len <= PREFIX).then_some(frame);
        let src_len = (hl, frame_len, small);
        match known {
            Some(d) if d == self.port => {
                w.drop_frame(port, Drop::NoDest);
                Outcome::Done
            }
            Some(d) if sw.ports[d].connected.load(Ordering::Acquire) => {
                match self.deliver_to(w, cache, held, d, hash, &hdr, src_len) {
                    Deliver::Ok => {
                        w.unblock();
                        Outcome::Done
                    }
                    Deliver::Dropped(r) => {
                        w.unblock();
                        w.drop_frame(port, r);
                        Outcome::Done
                    }
                    Deliver::NotReady => {
                        w.unblock();
                        w.drop_frame(port, Drop::NoDest);
                        Outcome::Done
                    }
                    Deliver::Full => self.hold_back(w, d, hash),
                }
            }
            _ => {
                // Flood to every other connected port; full ports drop their copy.
                let mut any = false;
                for d in 0..sw.ports.len() {
                    if d == self.port || !sw.ports[d].connected.load(Ordering::Acquire) {
                        continue;
                    }
                    match self.deliver_to(w, cache, held, d, hash, &hdr, src_len) {
                        Deliver::Ok => any = true,
                        Deliver::Full => w.drop_frame(port, Drop::FloodFull),
                        Deliver::Dropped(r) => w.drop_frame(port, r),
                        Deliver::NotReady => {}
                    }
                }
                if !any && sw.ports.len() == 1 {
                    w.drop_frame(port, Drop::NoDest);
                }
                w.unblock();
                Outcome::Done
            }
        }
    }

    /// A unicast destination is full: hold the chain back (bounded), or drop past the bound.
    fn hold_back(&self, w: &mut Worker, d: usize, hash: u32) -> Outcome {
        let port = &self.sw.ports[self.port];
        let now = Instant::now();
        let since = *w.blocked_since.get_or_insert(now);
        let waited = now.duration_since(since);
        let bound = self.sw.cfg.backpressure_bound;
        if waited >= bound {
            w.unblock();
            if let Some(slot) = self.sw.ports[d].rx.get(w.full_q) {
                slot.stalled.store(true, Ordering::Release);
            }
            w.drop_frame(port, Drop::RxFullTimeout);
            return Outcome::Done;
        }
        if waited.is_zero() {
            port.tx[w.queue].backpressure();
        }
        // The wake eventfd was registered with the RX slot under its lock (see deliver_one).
        log::trace!(
            "port {} queue {}: held back by port {d} (flow {hash:#x})",
            self.port,
            w.queue
        );
        let _ = w
            .timer
            .reset(bound - waited + Duration::from_millis(1), None);
        Outcome::Blocked
    }

    /// Delivers the current frame to port `d`, applying the offload plan for its features.
    #[allow(clippy::too_many_arguments)]
    fn deliver_to<'s>(
        &'s self,
        w: &mut Worker,
        cache: &mut Option<(usize, Pair<'s, L>)>,
        held: &mut Option<RxHold<'s, L>>,
        d: usize,
        hash: u32,
        hdr: &VirtioNetHdr,
        (hl, frame_len, small): (usize, usize, Option<&[u8]>),
    ) -> Deliver {
        let sw = &*self.sw;
        let dport = &sw.ports[d];
        if cache.as_ref().map_or(true, |(k, _)| *k != d) {
            // Never wait for grant locks while holding a queue lock.
            release(held, &mut w.touched);
            *cache = None;
            *cache = Some((
                d,
                read_pair(
                    &self.fabric.ports[self.port].grants,
                    &self.fabric.ports[d].grants,
                ),
            ));
        }
        let Some((_, pair)) = cache.as_ref() else {
            return Deliver::NotReady;
        };
        let dfeat = dport.features.load(Ordering::Acquire);
        let segs = std::mem::take(&mut w.segs);
        let res = match gso::plan(hdr, dfeat) {
            Delivery::PassThrough => {
                let src = small.map_or(Src::Guest(&segs, hl), Src::Local);
                self.deliver_one(w, pair, held, d, hash, hdr, src, frame_len)
            }
            plan => self.deliver_soft(w, pair, held, d, hash, hdr, &segs, hl, frame_len, plan),
        };
        w.segs = segs;
        res
    }

    /// Software offload fallback: linearize, then complete the checksum or segment.
    #[allow(clippy::too_many_arguments)]
    fn deliver_soft<'s>(
        &'s self,
        w: &mut Worker,
        pair: &Pair<'_, L>,
        held: &mut Option<RxHold<'s, L>>,
        d: usize,
        hash: u32,
        hdr: &VirtioNetHdr,
        segs: &[(u64, u32)],
        hl: usize,
        frame_len: usize,
        plan: Delivery,
    ) -> Deliver {
        let mut lin = std::mem::take(&mut w.lin);
        lin.resize(frame_len, 0);
        if gather(pair.src(), segs, hl, &mut lin[..frame_len]).is_err() {
            w.lin = lin;
            return Deliver::Dropped(Drop::NotGranted);
        }
        let res = if plan == Delivery::CompleteCsum {
            match net::complete_csum(
                &mut lin,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            ) {
                Ok(()) => self.deliver_one(
                    w,
                    pair,
                    held,
                    d,
                    hash,
                    &VirtioNetHdr::plain(),
                    Src::Local(&lin),
                    frame_len,
                ),
                Err(_) => Deliver::Dropped(Drop::BadOffload),
            }
        } else {
            let mut scratch = std::mem::take(&mut w.scratch);
            if scratch.len() < gso::SCRATCH_LEN {
                scratch.resize(gso::SCRATCH_LEN, 0);
            }
            let mut last = Deliver::Ok;
            let r = gso::segment(hdr, &lin, &mut scratch, |h, f| {
                match self.deliver_one(w, pair, held, d, hash, h, Src::Local(f), f.len()) {
                    Deliver::Ok => Ok(()),
                    other => {
                        last = other;
                        Err(())
                    }
                }
            });
            w.scratch = scratch;
            match r {
                Ok(_) => Deliver::Ok,
                // Some segments may already be delivered: never hold back a partial frame.
                Err(gso::GsoError::Emit { sent, .. }) if sent > 0 => match last {
                    Deliver::Full => Deliver::Dropped(Drop::FloodFull),
                    o => o,
                },
                Err(gso::GsoError::Emit { .. }) => last,
                Err(gso::GsoError::Invalid(_)) => Deliver::Dropped(Drop::BadOffload),
            }
        };
        w.lin = lin;
        res
    }

    /// Copies one frame into one RX queue of port `d` under the queue lock, which stays held
    /// (`held`) while the following frames go to the same queue.
    #[allow(clippy::too_many_arguments)]
    fn deliver_one<'s>(
        &'s self,
        w: &mut Worker,
        pair: &Pair<'_, L>,
        held: &mut Option<RxHold<'s, L>>,
        d: usize,
        hash: u32,
        hdr: &VirtioNetHdr,
        src: Src<'_>,
        frame_len: usize,
    ) -> Deliver {
        let dport = &self.sw.ports[d];
        let Some(q) = dport.pick_queue(hash) else {
            return Deliver::NotReady;
        };
        let slot = &dport.rx[q];
        if held.as_ref().map_or(true, |h| (h.d, h.q) != (d, q)) {
            // One queue lock at a time.
            release(held, &mut w.touched);
            *held = Some(RxHold {
                d,
                q,
                guard: self.fabric.ports[d].rings[q].lock(),
                staged: false,
            });
        }
        let Some(h) = held.as_mut() else {
            return Deliver::NotReady;
        };
        let Some(r) = h.guard.as_mut() else {
            dport.enabled.fetch_and(!(1u64 << q), Ordering::AcqRel);
            release(held, &mut w.touched);
            return Deliver::NotReady;
        };
        let res = fill::<L>(w, pair, r, dport, &slot.stats, hdr, src, frame_len);
        match res {
            Deliver::Ok => {
                slot.stats.frame(frame_len);
                h.staged = true;
            }
            Deliver::Full if slot.stalled.load(Ordering::Acquire) => {
                // Its guest has not posted buffers for a whole bound: do not wait again.
                return Deliver::Dropped(Drop::RxFullTimeout);
            }
            Deliver::Full => {
                // Registered under the queue lock (see `RxSlot::wake_waiters`).
                w.full_q = q;
                slot.add_waiter(&w.wake);
            }
            Deliver::NotReady => {
                dport.enabled.fetch_and(!(1u64 << q), Ordering::AcqRel);
            }
            // Counted by the caller (sender side).
            Deliver::Dropped(_) => {}
        }
        res
    }
}
