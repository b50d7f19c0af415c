//! One queue pair of a port ([`QueuePair`], after cloud-hypervisor's `NetQueuePair`): it owns
//! the state of its TX side — the burst in progress, the frames held back by full
//! destinations, the TX ring's used shadow and notification state — and does one TX burst at
//! a time, [`QueuePair::tx_burst`], given the port's context ([`PortCtx`]) and its TX vring.
//! It knows nothing of the vhost-user device or of threads; the RX side of the pair is
//! written by the senders (see [`rxq`](crate::datapath::rxq)).
//!
//! A burst, in phases (each with its own grant guard, see [`datapath`](crate::datapath)):
//! A. source guard: [`burst::fetch`], [`burst::prefetch`], [`burst::classify`];
//! B. (`deliver.rs`) per destination port (`QueuePair::deliver_to`), per RX queue, in
//!    order: held-back frames first, then the burst's; software offloads where the receiver
//!    lacks a feature; the destination's verdicts applied (held back, dropped, delivered).
//!    The common case at full load — the whole burst unicast to one queue of one port, as it
//!    is, nothing waiting for that port — goes straight from the burst's records
//!    (`QueuePair::deliver_whole_burst`: no frame ids, no runs);
//! C. source guard: TX used entries published once; then the receivers' RX used entries
//!    staged in B ([`RxRing::publish`]), so that a receiver never sees a frame whose TX chain
//!    its sender still has (a frontend forwarding what it receives, like DPDK testpmd, then
//!    always finds its TX slot; before, one direction of such closed loops under back
//!    pressure lost every frame); the guests called if they asked. One exception: under
//!    IN_ORDER a delivered frame's chain waits behind an earlier chain held back for another,
//!    full, port, and its frame is published all the same (a full guest must not delay the
//!    frames of others).

use crate::config::{Config, RxSteer};
use crate::datapath::burst::{self, Burst, ClassifyCtx, Route};
use crate::datapath::dest::{Destination, GuestPort};
use crate::datapath::held::HeldBack;
use crate::datapath::order::TxOrder;
use crate::datapath::ring::{needs_call, Kicks, RingError, RingLayout, UsedShadow};
use crate::datapath::rxq::{RxRing, Waker};
use crate::datapath::soft::Soft;
use crate::datapath::{Fate, LogLimit};
use crate::net;
use crate::stats::{DropReason, TxStats};
use crate::switch::{Fabric, Grants, Locks, PortKind, Switch, Vring};
use pvnet_grant::{GrantMemory, RegionHint};
use pvnet_locks::family::MutexApi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vhost_user_backend::VringT;
use virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
use virtio_queue::QueueT;

mod deliver;

/// What a queue pair needs to know about its port and the switch.
pub struct PortCtx<'a, L: Locks> {
    pub fabric: &'a Fabric<L>,
    /// This port's index.
    pub port: usize,
    /// Virtio features the port's guest acknowledged.
    pub features: u64,
    /// Set when the connection is closing.
    pub closing: &'a AtomicBool,
}

impl<'a, L: Locks> PortCtx<'a, L> {
    fn sw(&self) -> &'a Switch {
        &self.fabric.sw
    }

    fn cfg(&self) -> &'a Config {
        &self.fabric.sw.cfg
    }

    fn grants(&self) -> &'a Grants<L> {
        &self.fabric.ports[self.port].grants
    }

    /// Whether this port's rings and buffers may be touched now (checked once per burst):
    /// not once the connection is closing, nor once its memory is poisoned (the guest's
    /// memory file shrank under the mapping: the connection loop is disconnecting it).
    pub fn memory_usable(&self) -> bool {
        !self.closing.load(Ordering::Acquire) && !self.sw().ports[self.port].guard.poisoned()
    }
}

/// What one [`QueuePair::tx_burst`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxProgress {
    /// Chains taken from the TX ring.
    pub taken: usize,
    /// The burst was full (more chains may be waiting).
    pub full: bool,
    /// Held-back frames resolved (delivered or dropped).
    pub resumed: usize,
}

/// What becomes of one of the burst's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Not decided yet (a flooded frame stays so until every port had its copy).
    Pending,
    /// Delivered (or, flooded, offered everywhere): its chain goes back.
    Done,
    /// Dropped for this reason: its chain goes back, the drop is counted once.
    Drop(DropReason),
    /// Its unicast destination, port `d`, is full: held back, its chain stays.
    Hold(usize),
}

/// A frame being delivered: one of the burst's or a held-back one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameId {
    Burst(usize),
    Held(usize),
}

/// One queue pair (see the module documentation).
pub struct QueuePair {
    /// Pair index within the port.
    pub q: usize,
    burst: Burst,
    held: HeldBack,
    /// TX chains returned in ring order under IN_ORDER.
    order: TxOrder,
    used: UsedShadow,
    kicks: Kicks,
    /// TX used index at the last call decision (None: not known since the ring started).
    signalled: Option<u16>,
    /// Translation hint into this port's grants.
    hint: RegionHint,
    waker: Arc<Waker>,
    ids: Vec<FrameId>,
    /// The RX queue of each of `ids` (None: not attached), and whether it was delivered.
    queues: Vec<(Option<usize>, bool)>,
    /// (port, queue) of the RX rings this burst delivered to, to publish in step C.
    staged: Vec<(usize, usize)>,
    run: Vec<FrameId>,
    fates: Vec<Fate>,
    /// Per burst frame.
    outcome: Vec<Outcome>,
    /// Frames to other ports that went on (delivered or dropped) while frames were held
    /// back: the sender has traffic besides the full ports' (reset when none is held).
    passed: u32,
    soft: Soft,
    log: LogLimit,
}

impl QueuePair {
    /// Pair `q`, woken through `waker` when a destination it waits for gets room.
    pub fn new(q: usize, waker: Arc<Waker>) -> Self {
        QueuePair {
            q,
            burst: Burst::default(),
            held: HeldBack::default(),
            order: TxOrder::default(),
            used: UsedShadow::with_capacity(burst::BURST),
            kicks: Kicks::new(false),
            signalled: None,
            hint: RegionHint::default(),
            waker,
            ids: Vec::with_capacity(2 * burst::BURST),
            queues: Vec::with_capacity(2 * burst::BURST),
            staged: Vec::with_capacity(8),
            run: Vec::with_capacity(2 * burst::BURST),
            fates: Vec::with_capacity(2 * burst::BURST),
            outcome: Vec::with_capacity(burst::BURST),
            passed: 0,
            soft: Soft::default(),
            log: LogLimit::default(),
        }
    }

    /// Frames held back now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the oldest held-back frame's time is up.
    pub fn deadline<L: Locks>(&self, cx: &PortCtx<'_, L>) -> Option<Instant> {
        self.held.deadline(cx.cfg().backpressure_bound)
    }

    /// [`QueuePair::tx_burst`] in `scratch`'s buffers instead of the pair's own: a worker
    /// lends the same ones to each of its pairs in turn, so that a worker serving eight pairs
    /// touches the lines of one burst's records and frame prefixes (9 KB), not eight bursts'.
    /// A burst is scratch: nothing in it outlives the call (held-back frames are copied out).
    pub fn tx_burst_in<L: Locks>(
        &mut self,
        scratch: &mut Burst,
        cx: &PortCtx<'_, L>,
        tx: &Vring,
        retry: bool,
    ) -> TxProgress {
        std::mem::swap(&mut self.burst, scratch);
        let p = self.tx_burst(cx, tx, retry);
        std::mem::swap(&mut self.burst, scratch);
        p
    }

    /// One TX burst (see the module documentation). `retry`: also offer held-back frames
    /// whose destinations get no new frame in this burst (after a wake or a timeout).
    pub fn tx_burst<L: Locks>(
        &mut self,
        cx: &PortCtx<'_, L>,
        tx: &Vring,
        retry: bool,
    ) -> TxProgress {
        let mut out = TxProgress::default();
        if !cx.memory_usable() {
            return out;
        }
        let mut vs = tx.get_mut();
        if !vs.is_enabled() || !vs.get_queue().ready() {
            return out;
        }
        let stats = &cx.sw().ports[cx.port].tx[self.q];
        let q = vs.get_queue_mut();
        let Some(lay) = RingLayout::of(q) else {
            if self.log.allow() {
                log::warn!(
                    "port {} queue {}: TX ring outside the address space",
                    cx.port,
                    self.q
                );
            }
            return out;
        };
        self.kicks.set_event_idx(q.event_idx_enabled());
        self.order
            .set_in_order(cx.features & (1 << VIRTIO_F_IN_ORDER) != 0, lay.size());
        self.burst.clear();
        // A: fetch, prefetch, classify under the source guard.
        {
            let g = cx.grants().read();
            let mem = GrantMemory::new(&g, self.hint);
            self.kicks.disarm(&lay, &mem);
            let hl = net::net_hdr_len(cx.features);
            let fetched = match (lay.avail_ring(&mem), lay.desc_table(&mem)) {
                (Some(a), Some(t)) => {
                    burst::fetch(&mut self.burst, q, &mem, (a, &t), self.held.room(), hl)
                }
                _ => Err(RingError::Unmapped),
            };
            match fetched {
                Ok(n) => {
                    out.taken = n;
                    if n > 0 {
                        stats.burst();
                    }
                }
                Err(e) => {
                    if self.log.allow() {
                        log::warn!("port {} queue {}: TX ring: {e}", cx.port, self.q);
                    }
                }
            }
            self.hint = mem.hint();
            out.full = out.taken == burst::BURST;
            let read_hdr = burst::reads_hdr(cx.features);
            burst::prefetch(&mut self.burst, &g, &mut self.hint, !read_hdr);
            let port = &cx.sw().ports[cx.port];
            let ccx = ClassifyCtx {
                fdb: &cx.sw().fdb,
                now: cx.sw().fdb.now(),
                port: cx.port,
                mac: port.mac,
                port_security: cx.cfg().port_security,
                read_hdr,
                ports: cx.sw().ports_in_use_count(),
                queues_of: &|d| cx.sw().ports.get(d).map_or(0, |p| p.enabled_pairs()),
                stats,
                sender_queue: (cx.cfg().rx_steer == RxSteer::Queue).then_some(self.q as u32),
            };
            burst::classify(&mut self.burst, &g, &mut self.hint, &ccx);
        }
        // B: deliver, destination by destination.
        self.outcome.clear();
        self.outcome
            .extend(self.burst.frames.iter().map(|f| match f.route {
                Route::Drop(r) => Outcome::Drop(r),
                _ => Outcome::Pending,
            }));
        let mut dests = self.burst_dests(cx);
        if retry {
            dests |= self.held.dests();
        }
        for d in 0..cx.sw().ports.len().min(64) {
            if dests & (1u64 << d) != 0 {
                self.deliver_to(cx, d, stats);
            }
        }
        self.settle_burst(stats);
        if !self.held.is_empty() {
            // The clock is read only when something waits (a clock read is a system call
            // on hosts without a vDSO clock source). Held frames wait at most the bound —
            // and no longer once the chains they keep from the guest (themselves, and under
            // IN_ORDER every chain behind them) hold as many buffers as half its TX ring
            // has descriptors while the sender also sends elsewhere (`passed`): a full
            // receiver must not take the sender's ring from its traffic to everyone else.
            // A sender whose frames all wait for the one full receiver keeps the plain
            // back-pressure (its ring fills, nothing is lost). (Buffers, not chains: a chain
            // of several descriptors takes several of the ring's; a buffer split where
            // guest memory regions meet counts twice, which only ends the wait sooner.)
            let kept = self.held.bufs().max(self.order.kept_bufs());
            let bound = match self.passed > 0 && kept >= usize::from(lay.size()) / 2 {
                true => Duration::ZERO,
                false => cx.cfg().backpressure_bound,
            };
            self.held.expire(Instant::now(), bound, stats, |d, key| {
                cx.sw().mark_stalled(d, key);
            });
        }
        // C: TX chains back, then the frames delivered visible; call the guest after it.
        let before = self.held.len();
        let (order, used) = (&mut self.order, &mut self.used);
        self.held.release(|head| order.released(head, used));
        out.resumed = before - self.held.len();
        if self.held.is_empty() {
            self.passed = 0;
        }
        let call = self.publish_tx(cx, q, &lay);
        self.publish_rx(cx);
        if call {
            stats.notified();
            let _ = vs.signal_used_queue();
        }
        out
    }

    /// Publishes the staged TX used entries under the source guard; returns whether the
    /// guest wants a used-buffer notification.
    fn publish_tx<L: Locks>(
        &mut self,
        cx: &PortCtx<'_, L>,
        q: &mut virtio_queue::Queue,
        lay: &RingLayout,
    ) -> bool {
        if self.used.is_empty() {
            return false;
        }
        let g = cx.grants().read();
        let mem = GrantMemory::new(&g, self.hint);
        let old = self.signalled.unwrap_or(q.next_used());
        if let Err(e) = self.used.flush(q, lay, &mem) {
            if self.log.allow() {
                log::warn!("port {} queue {}: TX used ring: {e}", cx.port, self.q);
            }
        }
        let c = needs_call(q, lay, &mem, old);
        self.signalled = Some(q.next_used());
        self.hint = mem.hint();
        c
    }

    /// Publishes what this burst staged in the receivers' RX rings (and calls them).
    fn publish_rx<L: Locks>(&mut self, cx: &PortCtx<'_, L>) {
        for (d, q) in self.staged.drain(..) {
            if let Some(PortKind::Guest) = cx.sw().ports.get(d).map(|p| &p.kind) {
                if let Some(dest) = GuestPort::deferred(cx.fabric, d) {
                    Destination::<L>::publish(&dest, q);
                }
            }
        }
    }

    /// The RX side of this pair, on an event of its RX ring (a kick, or the ring just
    /// started or enabled): attaches the ring to the switch if it is not attached yet;
    /// otherwise wakes the senders held back by it, if the guest really posted buffers.
    pub fn rx_event<L: Locks>(&mut self, cx: &PortCtx<'_, L>, rx: &Vring) {
        let pf = &cx.fabric.ports[cx.port];
        let port = &cx.sw().ports[cx.port];
        let (Some(lock), Some(slot)) = (pf.rings.get(self.q), port.rx.get(self.q)) else {
            return;
        };
        if !cx.memory_usable() {
            return;
        }
        // Lock order: grant guard, then queue lock (then the vring's own lock, in attach).
        let g = pf.grants.read();
        let mut ring = lock.lock();
        // Again under the lock: a teardown sets `closing` before it detaches the ring under
        // this lock, so an event that waited here for it sees the flag and attaches nothing.
        if !cx.memory_usable() {
            return;
        }
        let waiters = match ring.as_mut() {
            None => {
                if let Some(mut r) = RxRing::attach(rx, cx.features) {
                    r.quiet(&g);
                    *ring = Some(r);
                    port.enabled.fetch_or(1 << self.q, Ordering::AcqRel);
                }
                None
            }
            Some(r) => r.kicked(&g, slot),
        };
        drop(ring);
        drop(g);
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }

    /// Asks the guest to kick on its next TX publication (going idle). Returns true when
    /// chains were published meanwhile (run another burst instead of sleeping).
    pub fn arm_kicks<L: Locks>(&mut self, cx: &PortCtx<'_, L>, tx: &Vring) -> bool {
        if !cx.memory_usable() {
            return false;
        }
        let mut vs = tx.get_mut();
        if !vs.is_enabled() || !vs.get_queue().ready() {
            return false;
        }
        let q = vs.get_queue_mut();
        let Some(lay) = RingLayout::of(q) else {
            return false;
        };
        self.kicks.set_event_idx(q.event_idx_enabled());
        let g = cx.grants().read();
        let mem = GrantMemory::new(&g, self.hint);
        let at = q.next_avail();
        // A bogus index (more than a ring ahead) is not work: the ring is broken and the
        // worker must not spin on it.
        let moved = self
            .kicks
            .arm(&lay, &mem, at)
            .is_ok_and(|s| s != at && s.wrapping_sub(at) <= lay.size());
        self.hint = mem.hint();
        moved
    }

    /// The TX ring stops (GET_VRING_BASE, disable, disconnect): every held-back frame is
    /// dropped and its chain returned, so that the ring's state read by the frontend is
    /// complete.
    pub fn stop<L: Locks>(&mut self, cx: &PortCtx<'_, L>, tx: &Vring) {
        if self.held.is_empty() {
            return;
        }
        self.signalled = None;
        let stats = &cx.sw().ports[cx.port].tx[self.q];
        let (order, used) = (&mut self.order, &mut self.used);
        self.held.drop_all(|head| order.released(head, used), stats);
        let mut vs = tx.get_mut();
        let q = vs.get_queue_mut();
        if let Some(lay) = RingLayout::of(q) {
            let g = cx.grants().read();
            let mem = GrantMemory::new(&g, self.hint);
            let _ = self.used.flush(q, &lay, &mem);
        }
        self.used.clear();
    }

    /// Ports this burst sends to, as a bit mask.
    fn burst_dests<L: Locks>(&self, cx: &PortCtx<'_, L>) -> u64 {
        let bit = |d: usize| 1u64.checked_shl(d as u32).unwrap_or(0);
        let mut m = 0u64;
        let mut flood = false;
        for f in &self.burst.frames {
            match f.route {
                Route::Port(d) => m |= bit(d),
                Route::Flood => flood = true,
                _ => {}
            }
        }
        if flood {
            for (d, p) in cx.sw().ports.iter().enumerate() {
                if d != cx.port && p.connected.load(Ordering::Acquire) {
                    m |= bit(d);
                }
            }
        }
        m
    }

    /// Decides the end of every burst frame: chains of delivered and dropped frames are
    /// staged as used (drops counted once), unicast frames that found their queue full are
    /// held back (their chains stay with the device).
    fn settle_burst(&mut self, stats: &TxStats) {
        // Read the clock only if a frame is held back.
        let mut now: Option<Instant> = None;
        // Where frames were held back before this burst, or its first held one: from there
        // on, the frames to other ports that go on are counted in `passed` (after the loop:
        // the common case, nothing held, pays one branch per frame).
        let mut first_held = (!self.held.is_empty()).then_some(0);
        for i in 0..self.burst.frames.len() {
            let f = self.burst.frames[i];
            let outcome = match (self.outcome[i], f.route) {
                // A unicast frame never offered (cannot happen with <= 64 ports).
                (Outcome::Pending, Route::Port(_)) => Outcome::Drop(DropReason::NoDest),
                (o, _) => o,
            };
            match outcome {
                Outcome::Pending | Outcome::Done => {
                    self.order.finished(f.head, f.nsegs, &mut self.used)
                }
                Outcome::Drop(r) => {
                    stats.count_drop(r);
                    self.order.finished(f.head, f.nsegs, &mut self.used);
                }
                Outcome::Hold(d) => {
                    first_held.get_or_insert(i);
                    self.order.held(f.head, f.nsegs);
                    if !self.held.waiting_for(d) {
                        stats.backpressure();
                    }
                    let t = *now.get_or_insert_with(Instant::now);
                    let b = &self.burst;
                    self.held.hold(f, b.segs_of(i), b.head(i), d, t);
                }
            }
        }
        if let Some(from) = first_held {
            self.count_passed(from);
        }
    }

    /// Counts in `passed` the burst frames from `from` on that went to other ports than
    /// those frames are held for (after `settle_burst`).
    fn count_passed(&mut self, from: usize) {
        let full = self.held.all_dests();
        let passed = self
            .burst
            .frames
            .iter()
            .zip(&self.outcome)
            .skip(from)
            .filter(|(f, o)| !matches!(o, Outcome::Hold(_)) && !to_one_of(f.route, full))
            .count();
        self.passed = self
            .passed
            .saturating_add(u32::try_from(passed).unwrap_or(u32::MAX));
    }
}

/// Whether `route` is unicast to one of the ports of the mask `ports`.
fn to_one_of(route: Route, ports: u64) -> bool {
    matches!(route, Route::Port(d) if ports & 1u64.checked_shl(d as u32).unwrap_or(0) != 0)
}

#[cfg(test)]
mod tests;
