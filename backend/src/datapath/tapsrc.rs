//! Frames from the host: one tap queue as the sending side of the switch ([`TapSource`]).
//!
//! A burst, in the steps of a guest's TX burst (see [`qpair`](crate::datapath::qpair)):
//! 1. read ([`TapSource::read_burst`]): up to [`TAP_BURST`] frames, one `read` each, into
//!    buffers allocated once, until the queue is empty;
//! 2. classify: the same hostile-input rules as for a guest — frames shorter than a
//!    virtio-net and an Ethernet header (`too_short`) or filling the whole buffer
//!    (`too_large`) are dropped, the header is sanitised (only `NEEDS_CSUM` survives), the
//!    source MAC learned (never a multicast one), the destination looked up, the flow
//!    hashed; port security does not apply (an uplink carries many MACs);
//! 3. deliver per destination port and queue, in order, through the same [`Destination`]s
//!    as a guest's frames, with software offloads ([`Soft::prepare_local`]) for receivers
//!    that lack a feature the frame's header asks for. A frame that no port takes (its
//!    unicast port went away, or no other port is attached to flood it to) is a counted
//!    `no_dest` drop.
//!
//! Back-pressure: a unicast frame whose destination queue is full is held back in its
//! buffer; the queue's reader stops reading (the tap's own queue fills, and the kernel
//! accounts what it cannot queue) until the destination posts buffers and wakes it, or
//! until `Config::backpressure_bound` passes — then the held frames are dropped
//! (`rx_full_timeout`) and the destination queue is marked stalled, as for a guest sender.
//! Flooded copies to a full queue are dropped at once (`flood_full`).

use crate::datapath::burst::Route;
use crate::datapath::dest::{
    next_run, offer_run, pick_queues, Destination, GuestPort, RunOffer, SrcGrants,
};
use crate::datapath::rxq::Waker;
use crate::datapath::soft::Soft;
use crate::datapath::tapdest::TapDest;
use crate::datapath::{Data, Fate, FrameSet, FrameSrc, LogLimit};
use crate::net::{self, gso, hdr::HDR_LEN, hdr::NEEDS_CSUM, Delivery, HdrWords, VirtioNetHdr};
use crate::stats::{DropReason, TxStats};
use crate::switch::{Fabric, Grants, Locks, PortKind, Switch};
use pvnet_grant::RegionHint;
use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most frames read from a tap queue per burst.
pub const TAP_BURST: usize = 32;
/// Size of one read buffer: the virtio-net header and the largest GSO frame.
pub const TAP_BUF: usize = HDR_LEN + gso::MAX_GSO_FRAME;

/// Where a frame of the burst stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Routed, not yet offered.
    Pending,
    /// Its unicast destination (port) was full; waiting since then.
    Held(usize, Instant),
    /// Delivered, dropped (counted) or flooded: its buffer is free.
    Done,
}

#[derive(Clone, Copy, Debug)]
struct TapFrame {
    slot: usize,
    hdr: VirtioNetHdr,
    len: usize,
    hash: u32,
    route: Route,
    state: State,
}

/// One tap queue's sending side (see the module documentation).
pub struct TapSource {
    port: usize,
    q: usize,
    bufs: Vec<Box<[u8]>>,
    frames: Vec<TapFrame>,
    waker: Arc<Waker>,
    soft: Soft,
    hint: RegionHint,
    ids: Vec<usize>,
    queues: Vec<(Option<usize>, bool)>,
    run: Vec<usize>,
    fates: Vec<Fate>,
    /// The last read burst found the queue empty.
    drained: bool,
    log: LogLimit,
}

/// Frames of one run, from the read buffers.
struct Run<'a> {
    ids: &'a [usize],
    frames: &'a [TapFrame],
    bufs: &'a [Box<[u8]>],
}

impl FrameSet for Run<'_> {
    fn count(&self) -> usize {
        self.ids.len()
    }

    fn get(&self, i: usize) -> FrameSrc<'_> {
        let f = self.ids.get(i).and_then(|&k| self.frames.get(k));
        let data = f
            .and_then(|f| self.bufs.get(f.slot)?.get(HDR_LEN..HDR_LEN + f.len))
            .unwrap_or_default();
        FrameSrc {
            hdr: f.map_or(HdrWords::PLAIN, |f| f.hdr.into()),
            len: data.len(),
            data: Data::Local(data),
        }
    }

    fn frame_len(&self, i: usize) -> usize {
        // Local frames: `get` is a few bounds checks.
        self.get(i).len
    }
}

/// A tap queue's run for queue `q` of `dest`, as [`offer_run`] walks it.
struct TapRun<'r, L: Locks> {
    src: &'r mut TapSource,
    grants: &'r Grants<L>,
    dest: &'r dyn Destination<L>,
    q: usize,
    run: &'r [usize],
}

impl<L: Locks> RunOffer for TapRun<'_, L> {
    fn passes(&self, k: usize, dfeat: u64) -> bool {
        gso::plan(&self.src.frames[self.run[k]].hdr, dfeat) == Delivery::PassThrough
    }

    fn offer(&mut self, ks: Range<usize>) {
        let t = &mut *self.src;
        let set = Run {
            ids: &self.run[ks.clone()],
            frames: &t.frames,
            bufs: &t.bufs,
        };
        let mut src = SrcGrants {
            table: self.grants,
            hint: &mut t.hint,
        };
        let fates = &mut t.fates[ks];
        self.dest.deliver(self.q, &mut src, &set, fates, &t.waker);
    }

    fn offer_soft(&mut self, k: usize, dfeat: u64) -> Fate {
        let t = &mut *self.src;
        let f = t.frames[self.run[k]];
        let data = &t.bufs[f.slot][HDR_LEN..HDR_LEN + f.len];
        if let Err(r) = t.soft.prepare_local(data, &f.hdr, dfeat) {
            return Fate::Dropped(r);
        }
        let (set, fates) = t.soft.output();
        let mut src = SrcGrants {
            table: self.grants,
            hint: &mut t.hint,
        };
        self.dest.deliver(self.q, &mut src, &set, fates, &t.waker);
        Soft::fold(fates)
    }

    fn fates(&mut self) -> &mut [Fate] {
        &mut self.src.fates
    }
}

impl TapSource {
    /// The sending side of queue `q` of tap port `port`, woken through `waker`.
    pub fn new(port: usize, q: usize, waker: Arc<Waker>) -> Self {
        TapSource {
            port,
            q,
            bufs: (0..TAP_BURST)
                .map(|_| vec![0u8; TAP_BUF].into_boxed_slice())
                .collect(),
            frames: Vec::with_capacity(TAP_BURST),
            waker,
            soft: Soft::default(),
            hint: RegionHint::default(),
            ids: Vec::with_capacity(TAP_BURST),
            queues: Vec::with_capacity(TAP_BURST),
            run: Vec::with_capacity(TAP_BURST),
            fates: Vec::with_capacity(TAP_BURST),
            drained: false,
            log: LogLimit::default(),
        }
    }

    /// Whether frames are held back (no new frame is read until they leave).
    pub fn held(&self) -> bool {
        self.frames
            .iter()
            .any(|f| matches!(f.state, State::Held(..)))
    }

    /// When the oldest held-back frame's time is up.
    pub fn deadline(&self, bound: Duration) -> Option<Instant> {
        self.frames
            .iter()
            .filter_map(|f| match f.state {
                State::Held(_, t) => Some(t + bound),
                _ => None,
            })
            .min()
    }

    /// Whether the last [`TapSource::read_burst`] emptied the queue (read until `EAGAIN`).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Step 1: reads up to [`TAP_BURST`] frames from `fd`, and classifies them (step 2).
    /// Returns the number read (0: the queue is empty). Call only when nothing is held.
    pub fn read_burst(&mut self, fd: RawFd, sw: &Switch) -> io::Result<usize> {
        self.frames.clear();
        self.drained = false;
        let stats = &sw.ports[self.port].tx[self.q];
        let now = sw.fdb.now();
        let mut n = 0;
        while n < TAP_BURST {
            let buf = &mut self.bufs[n];
            // SAFETY: reads into a buffer we own, at most its length.
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        self.drained = true;
                        break;
                    }
                    Some(libc::EINTR) => continue,
                    _ if n > 0 => break,
                    _ => return Err(e),
                }
            }
            // r >= 0 and at most buf.len().
            let r = r as usize;
            let route = classify(&mut self.bufs[n], r, self.port, sw, now, stats);
            let (hdr, len, hash) = route.1;
            self.frames.push(TapFrame {
                slot: n,
                hdr,
                len,
                hash,
                route: route.0,
                state: match route.0 {
                    Route::Drop(d) => {
                        stats.count_drop(d);
                        State::Done
                    }
                    _ => State::Pending,
                },
            });
            n += 1;
        }
        Ok(n)
    }

    /// Step 3 for every pending or held frame (held ones only when `retry`): delivers,
    /// destination by destination, and decides each frame's end.
    pub fn deliver<L: Locks>(&mut self, fabric: &Fabric<L>, retry: bool) {
        let sw = &fabric.sw;
        let me = self.port;
        let bit = |d: usize| 1u64.checked_shl(d as u32).unwrap_or(0);
        let mut dests = 0u64;
        let mut flood = None;
        for f in &self.frames {
            match (f.state, f.route) {
                (State::Pending, Route::Port(d)) => dests |= bit(d),
                (State::Pending, Route::Flood) => {
                    let m = *flood.get_or_insert_with(|| {
                        sw.ports
                            .iter()
                            .enumerate()
                            .filter(|(d, p)| *d != me && p.connected.load(Ordering::Acquire))
                            .fold(0u64, |m, (d, _)| m | bit(d))
                    });
                    dests |= m;
                }
                (State::Held(d, _), _) if retry => dests |= bit(d),
                _ => {}
            }
        }
        for d in 0..sw.ports.len().min(64) {
            if dests & bit(d) == 0 {
                continue;
            }
            let port = &sw.ports[d];
            match &port.kind {
                PortKind::Tap(t) => self.deliver_to(fabric, d, &TapDest::new(port, t), retry),
                PortKind::Guest => {
                    if let Some(g) = GuestPort::new(fabric, d) {
                        self.deliver_to(fabric, d, &g, retry);
                    }
                }
            }
        }
        let stats = &sw.ports[me].tx[self.q];
        for f in &mut self.frames {
            if f.state == State::Pending {
                if f.route != Route::Flood || flood == Some(0) {
                    // A unicast frame never offered (its port vanished), or a flooded one
                    // with no other port attached: nobody took it.
                    stats.count_drop(DropReason::NoDest);
                }
                f.state = State::Done;
            }
        }
    }

    /// Delivers to port `d` what waits for it, queue by queue in order.
    fn deliver_to<L: Locks>(
        &mut self,
        fabric: &Fabric<L>,
        d: usize,
        dest: &dyn Destination<L>,
        retry: bool,
    ) {
        let sw = &fabric.sw;
        self.ids.clear();
        for (k, f) in self.frames.iter().enumerate() {
            let mine = match (f.state, f.route) {
                (State::Held(h, _), _) => retry && h == d,
                (State::Pending, Route::Port(p)) => p == d,
                (State::Pending, Route::Flood) => d != self.port,
                _ => false,
            };
            if mine {
                self.ids.push(k);
            }
        }
        let hashes = self.ids.iter().map(|&k| self.frames[k].hash);
        pick_queues(dest, hashes, &mut self.queues);
        let ids = std::mem::take(&mut self.ids);
        let mut run = std::mem::take(&mut self.run);
        while let Some(q) = next_run(&ids, &mut self.queues, &mut run) {
            self.fates.clear();
            self.fates.resize(run.len(), Fate::NotReady);
            if let Some(q) = q {
                let dfeat = dest.features();
                let grants = &fabric.ports[self.port].grants;
                let n = run.len();
                offer_run(
                    &mut TapRun {
                        src: self,
                        grants,
                        dest,
                        q,
                        run: &run,
                    },
                    n,
                    dfeat,
                );
            }
            self.apply(sw, d, &run);
        }
        self.ids = ids;
        self.run = run;
    }

    /// Applies the destination's verdicts on `run` (frames for port `d`).
    fn apply(&mut self, sw: &Switch, d: usize, run: &[usize]) {
        let stats = &sw.ports[self.port].tx[self.q];
        let now = Instant::now();
        // One back-pressure count per wait for a destination, not per frame held.
        let mut waiting = self
            .frames
            .iter()
            .any(|f| matches!(f.state, State::Held(h, _) if h == d));
        for (&k, &fate) in run.iter().zip(&self.fates) {
            let f = &mut self.frames[k];
            if f.route == Route::Flood && f.state == State::Pending {
                // One copy of a flooded frame: a full or broken port loses its copy.
                match fate {
                    Fate::Full => stats.count_drop(DropReason::FloodFull),
                    Fate::Dropped(r) => stats.count_drop(r),
                    _ => {}
                }
                continue;
            }
            let held = matches!(f.state, State::Held(..));
            f.state = match fate {
                Fate::Delivered => State::Done,
                Fate::Full if sw.queue_stalled(d, f.hash) => {
                    stats.count_drop(DropReason::RxFullTimeout);
                    State::Done
                }
                Fate::Full => match f.state {
                    s @ State::Held(..) => s,
                    _ => {
                        if !waiting {
                            stats.backpressure();
                            waiting = true;
                        }
                        State::Held(d, now)
                    }
                },
                Fate::NotReady | Fate::Pending => {
                    // A held frame whose queue went away while it waited.
                    stats.count_drop(if held {
                        DropReason::RxFullTimeout
                    } else {
                        DropReason::NoDest
                    });
                    State::Done
                }
                Fate::Dropped(r) => {
                    stats.count_drop(r);
                    State::Done
                }
            };
        }
    }

    /// Drops every frame held longer than `bound` (`rx_full_timeout`) and marks its
    /// destination queue stalled.
    pub fn expire(&mut self, sw: &Switch, now: Instant, bound: Duration) {
        let stats = &sw.ports[self.port].tx[self.q];
        for f in &mut self.frames {
            if let State::Held(d, t) = f.state {
                if now.saturating_duration_since(t) >= bound {
                    f.state = State::Done;
                    stats.count_drop(DropReason::RxFullTimeout);
                    sw.mark_stalled(d, f.hash);
                }
            }
        }
    }

    /// Logs a read error (at most once a second).
    pub fn read_failed(&mut self, name: &str, e: &io::Error) {
        if self.log.allow() {
            log::warn!("tap {name} queue {}: read: {e}", self.q);
        }
    }
}

/// Step 2 for one frame of `r` bytes in `buf`: the route, and the sanitised header, frame
/// length and flow hash.
fn classify(
    buf: &mut [u8],
    r: usize,
    me: usize,
    sw: &Switch,
    now: u32,
    stats: &TxStats,
) -> (Route, (VirtioNetHdr, usize, u32)) {
    let none = (VirtioNetHdr::plain(), 0, 0);
    if r < HDR_LEN + net::eth::ETH_HLEN {
        return (Route::Drop(DropReason::TooShort), none);
    }
    if r >= buf.len() {
        // Possibly cut short by the buffer: never forwarded.
        return (Route::Drop(DropReason::TooLarge), none);
    }
    let len = r - HDR_LEN;
    stats.frame(len);
    let Ok(mut hdr) = VirtioNetHdr::from_bytes(&buf[..HDR_LEN]) else {
        return (Route::Drop(DropReason::TooShort), none);
    };
    hdr.flags &= NEEDS_CSUM;
    hdr.num_buffers = 0;
    let frame = &buf[HDR_LEN..r];
    let mut dmac = [0u8; 6];
    let mut smac = [0u8; 6];
    dmac.copy_from_slice(&frame[..6]);
    smac.copy_from_slice(&frame[6..12]);
    if !net::is_multicast(&smac) {
        sw.fdb.learn_at(&smac, me, now);
    }
    let known = (!net::is_multicast(&dmac))
        .then(|| sw.fdb.lookup_at(&dmac, now))
        .flatten();
    let route = match known {
        Some(d) if d == me => Route::Drop(DropReason::NoDest),
        Some(d) => Route::Port(d),
        None if sw.ports_in_use_count() < 2 => Route::Drop(DropReason::NoDest),
        None => Route::Flood,
    };
    let hash = net::flow_hash(&frame[..frame.len().min(net::HASH_PREFIX)]);
    (route, (hdr, len, hash))
}
