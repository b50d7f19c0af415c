//! The data path: a worker takes frames from its guest's TX ring, switches them, and copies
//! them (grant copies, guest to guest) into the destination's RX ring under the ring's lock.
//!
//! Back-pressure: when a unicast destination ring is full the TX chain is put back on the TX
//! ring (`go_to_previous_position`), the worker registers its wake eventfd with the RX slot
//! and arms a timer; the destination's RX kick (guest posted buffers) wakes it, the timer
//! bounds the wait to [`BLOCK_BOUND`], after which that frame is dropped and counted.
//! Flooded copies to a full port are dropped (counted) at once.

use crate::device::NetDevice;
use crate::net::{self, gso, Delivery, VirtioNetHdr};
use crate::stats::Drop;
use crate::switch::{Port, RxRing};
use pvnet_grant::{read_pair, Access, GuardPair};
use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vhost_user_backend::VringT;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// Longest time a full destination ring may hold a sender back before the frame is dropped.
pub const BLOCK_BOUND: Duration = Duration::from_millis(200);
/// TX chains handled per batch (one grant hold, one notification round).
const BATCH: usize = 64;
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
    /// Length of the frame `forward` last parsed (counted once the chain is consumed).
    frame_len: usize,
    segs: Vec<(u64, u32)>,
    rxsegs: Vec<(u64, u32)>,
    popped: Vec<(u16, u32)>,
    touched: Vec<(usize, usize)>,
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
            frame_len: 0,
            segs: Vec::with_capacity(64),
            rxsegs: Vec::with_capacity(64),
            popped: Vec::with_capacity(32),
            touched: Vec::with_capacity(8),
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

/// Result of one delivery attempt into one RX queue.
enum Deliver {
    Ok,
    Full,
    NotReady,
    Dropped(Drop),
}

/// Where a frame's bytes come from.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// Guest TX descriptors, skipping the first `skip` bytes (the virtio header).
    Guest(&'a [(u64, u32)], usize),
    /// A local buffer (checksummed or segmented copy).
    Local(&'a [u8]),
}

/// Reads `out.len()` bytes at stream offset `skip` of the descriptor list `segs`.
fn gather(
    g: &pvnet_grant::GrantReadGuard<'_, ()>,
    segs: &[(u64, u32)],
    mut skip: usize,
    out: &mut [u8],
) -> Result<(), pvnet_grant::GrantError> {
    let mut done = 0;
    for &(gpa, len) in segs {
        let len = len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        if n == 0 {
            break;
        }
        g.read_into(GuestAddress(gpa + skip as u64), &mut out[done..done + n])?;
        done += n;
        skip = 0;
        if done == out.len() {
            break;
        }
    }
    Ok(())
}

/// Copies `src` (from stream offset `from`, `len` bytes) into the writable list `dst` starting
/// at destination stream offset `at`.
fn scatter(
    pair: &GuardPair<'_, ()>,
    src: Src<'_>,
    from: usize,
    len: usize,
    dst: &[(u64, u32)],
    at: usize,
) -> Result<(), pvnet_grant::GrantError> {
    let mut left = len;
    let mut soff = from;
    let mut doff = at;
    let mut di = 0usize;
    // Find the destination descriptor holding offset `at`.
    let mut dbase = 0usize;
    while di < dst.len() && dbase + dst[di].1 as usize <= doff {
        dbase += dst[di].1 as usize;
        di += 1;
    }
    while left > 0 && di < dst.len() {
        let (dgpa, dlen) = dst[di];
        let dpos = doff - dbase;
        let droom = dlen as usize - dpos;
        let dgpa = dgpa + dpos as u64;
        let n = match src {
            Src::Local(buf) => {
                let n = droom.min(left);
                pair.dst()
                    .write_from(GuestAddress(dgpa), &buf[soff..soff + n])?;
                n
            }
            Src::Guest(segs, skip) => {
                // Locate the source piece holding stream offset skip + soff.
                let mut s = skip + soff;
                let mut piece = None;
                for &(g, l) in segs {
                    if s < l as usize {
                        piece = Some((g + s as u64, l as usize - s));
                        break;
                    }
                    s -= l as usize;
                }
                let Some((sg, sl)) = piece else { break };
                let n = droom.min(left).min(sl);
                pair.copy(GuestAddress(sg), GuestAddress(dgpa), n)?;
                n
            }
        };
        left -= n;
        soff += n;
        doff += n;
        if doff - dbase == dlen as usize {
            dbase += dlen as usize;
            di += 1;
        }
    }
    Ok(())
}

/// Publishes `entries` to the used ring with a single index update (a mergeable frame
/// must appear all at once).
fn publish(
    q: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let Some((&(last_h, last_l), rest)) = entries.split_last() else {
        return Ok(());
    };
    let base = q.next_used();
    let size = q.size();
    for (k, &(h, l)) in rest.iter().enumerate() {
        let slot = u64::from(base.wrapping_add(k as u16) % size);
        let addr = GuestAddress(q.used_ring() + 4 + slot * 8);
        mem.write_obj(u32::from(h).to_le(), addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
        mem.write_obj(l.to_le(), GuestAddress(addr.0 + 4))
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    q.set_next_used(base.wrapping_add(rest.len() as u16));
    q.add_used(mem, last_h, last_l)
}

impl NetDevice {
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
        loop {
            let mut cache: Option<(usize, GuardPair<'_, ()>)> = None;
            let mut vs = tx.get_mut();
            let _ = vs.get_queue_mut().disable_notification(&*mem);
            let mut n = 0;
            let mut blocked = false;
            let mut used = false;
            while n < BATCH {
                let Some(chain) = vs.get_queue_mut().pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                match self.forward(&mut w, chain, &mut cache) {
                    Outcome::Done => {
                        if w.frame_len > 0 {
                            port.tx[q].frame(w.frame_len);
                        }
                        if let Err(e) = vs.get_queue_mut().add_used(&*mem, head, 0) {
                            log::error!("port {}: TX add_used: {e}", self.port);
                        }
                        used = true;
                        n += 1;
                    }
                    Outcome::Blocked => {
                        vs.get_queue_mut().go_to_previous_position();
                        blocked = true;
                        break;
                    }
                }
            }
            drop(cache);
            if used && vs.get_queue_mut().needs_notification(&*mem).unwrap_or(true) {
                port.tx[q].notified();
                let _ = vs.signal_used_queue();
            }
            let more = if blocked {
                false
            } else if n == BATCH {
                true
            } else {
                vs.get_queue_mut()
                    .enable_notification(&*mem)
                    .unwrap_or(false)
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
            let ring = slot.ring.lock();
            let Some(r) = ring.as_ref() else { continue };
            let feats = self.sw.ports[p].features.load(Ordering::Acquire);
            let mem = r.mem.memory();
            let vs = r.vring.get_ref();
            let qu = vs.get_queue();
            let notify = if feats & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 {
                fence(Ordering::SeqCst);
                let ev_addr = GuestAddress(qu.avail_ring() + 4 + 2 * u64::from(qu.size()));
                match mem.read_obj::<u16>(ev_addr) {
                    Ok(ev) => {
                        let new = Wrapping(qu.next_used());
                        let old = Wrapping(r_signalled(r));
                        (new - Wrapping(u16::from_le(ev)) - Wrapping(1)) < (new - old)
                    }
                    Err(_) => true,
                }
            } else {
                true
            };
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
        cache: &mut Option<(usize, GuardPair<'s, ()>)>,
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
            *cache = Some((self.port, read_pair(&port.grants, &port.grants)));
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
            sw.fdb.learn(&smac, self.port);
        }
        let hash = net::flow_hash(frame);
        // 3. Destination(s).
        let known = if net::is_multicast(&dmac) {
            None
        } else {
            sw.fdb.lookup(&dmac)
        };
        let src_len = (hl, frame_len);
        match known {
            Some(d) if d == self.port => {
                w.drop_frame(port, Drop::NoDest);
                Outcome::Done
            }
            Some(d) if sw.ports[d].connected.load(Ordering::Acquire) => {
                match self.deliver_to(w, cache, d, hash, &hdr, src_len) {
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
                    match self.deliver_to(w, cache, d, hash, &hdr, src_len) {
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
        if waited >= BLOCK_BOUND {
            w.unblock();
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
            .reset(BLOCK_BOUND - waited + Duration::from_millis(1), None);
        Outcome::Blocked
    }

    /// Delivers the current frame to port `d`, applying the offload plan for its features.
    fn deliver_to<'s>(
        &'s self,
        w: &mut Worker,
        cache: &mut Option<(usize, GuardPair<'s, ()>)>,
        d: usize,
        hash: u32,
        hdr: &VirtioNetHdr,
        (hl, frame_len): (usize, usize),
    ) -> Deliver {
        let sw = &*self.sw;
        let dport = &sw.ports[d];
        if cache.as_ref().map_or(true, |(k, _)| *k != d) {
            *cache = None;
            *cache = Some((d, read_pair(&sw.ports[self.port].grants, &dport.grants)));
        }
        let Some((_, pair)) = cache.as_ref() else {
            return Deliver::NotReady;
        };
        let dfeat = dport.features.load(Ordering::Acquire);
        let segs = std::mem::take(&mut w.segs);
        let res = match gso::plan(hdr, dfeat) {
            Delivery::PassThrough => {
                self.deliver_one(w, pair, d, hash, hdr, Src::Guest(&segs, hl), frame_len)
            }
            plan => self.deliver_soft(w, pair, d, hash, hdr, &segs, hl, frame_len, plan),
        };
        w.segs = segs;
        res
    }

    /// Software offload fallback: linearize, then complete the checksum or segment.
    #[allow(clippy::too_many_arguments)]
    fn deliver_soft(
        &self,
        w: &mut Worker,
        pair: &GuardPair<'_, ()>,
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
                match self.deliver_one(w, pair, d, hash, h, Src::Local(f), f.len()) {
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

    /// Copies one frame into one RX queue of port `d` under the queue lock.
    #[allow(clippy::too_many_arguments)]
    fn deliver_one(
        &self,
        w: &mut Worker,
        pair: &GuardPair<'_, ()>,
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
        let mut ring = slot.ring.lock();
        let Some(r) = ring.as_mut() else {
            dport.enabled.fetch_and(!(1u64 << q), Ordering::AcqRel);
            return Deliver::NotReady;
        };
        let res = fill(w, pair, r, dport, &slot.stats, hdr, src, frame_len);
        match res {
            Deliver::Ok => {
                slot.stats.frame(frame_len);
                if !w.touched.contains(&(d, q)) {
                    w.touched.push((d, q));
                }
            }
            Deliver::Full => slot.add_waiter(&w.wake),
            Deliver::NotReady => {
                dport.enabled.fetch_and(!(1u64 << q), Ordering::AcqRel);
            }
            Deliver::Dropped(reason) => slot.stats.drop(reason),
        }
        res
    }
}

// The used index at the last notification decision (kept beside the ring, under its lock).
fn r_signalled(r: &RxRing) -> u16 {
    r.signalled.load(Ordering::Relaxed)
}
fn set_signalled(r: &RxRing, v: u16) {
    r.signalled.store(v, Ordering::Relaxed);
}

/// Pops RX chain(s) of ring `r`, writes header + frame, publishes them. Called with the
/// RX queue lock held.
#[allow(clippy::too_many_arguments)]
fn fill(
    w: &mut Worker,
    pair: &GuardPair<'_, ()>,
    r: &mut RxRing,
    dport: &Port,
    stats: &crate::stats::RxStats,
    hdr: &VirtioNetHdr,
    src: Src<'_>,
    frame_len: usize,
) -> Deliver {
    let dfeat = dport.features.load(Ordering::Acquire);
    let mrg = dfeat & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    let dhl = net::net_hdr_len(dfeat);
    let total = dhl + frame_len;
    let mem = r.mem.memory();
    let mut vs = r.vring.get_mut();
    if !vs.is_enabled() || !vs.get_queue().ready() {
        return Deliver::NotReady;
    }
    w.rxsegs.clear();
    w.popped.clear();
    let mut cap = 0usize;
    let mut signal = false;
    let mut retried = false;
    // Phase 1: reserve enough buffers.
    while cap < total {
        let Some(chain) = vs.get_queue_mut().pop_descriptor_chain(&*mem) else {
            for _ in 0..w.popped.len() {
                vs.get_queue_mut().go_to_previous_position();
            }
            w.popped.clear();
            w.rxsegs.clear();
            cap = 0;
            // Ask for a kick when the guest posts buffers; if some arrived meanwhile, retry.
            if !retried
                && vs
                    .get_queue_mut()
                    .enable_notification(&*mem)
                    .unwrap_or(false)
            {
                retried = true;
                continue;
            }
            if signal {
                let _ = vs.signal_used_queue();
            }
            return Deliver::Full;
        };
        let head = chain.head_index();
        let start = w.rxsegs.len();
        let mut ccap = 0usize;
        let mut ok = true;
        let mut cut = false;
        for d in chain {
            cut = d.has_next();
            if d.len() == 0 {
                continue;
            }
            if !d.is_write_only()
                || pair
                    .dst()
                    .check(d.addr(), d.len() as usize, Access::WriteOnly)
                    .is_err()
            {
                ok = false;
                continue;
            }
            ccap += d.len() as usize;
            w.rxsegs.push((d.addr().0, d.len()));
        }
        if !ok || cut || ccap < dhl.min(total) {
            // A malformed RX chain: the frame being assembled is abandoned (its buffers
            // return empty, in ring order) and the bad chain returns empty too.
            for &(h, _) in w.popped.iter() {
                let _ = vs.get_queue_mut().add_used(&*mem, h, 0);
            }
            let _ = vs.get_queue_mut().add_used(&*mem, head, 0);
            w.popped.clear();
            w.rxsegs.clear();
            cap = 0;
            signal = true;
            stats.drop(Drop::RxBadChain);
            log::debug!("port {}: malformed RX chain returned empty", dport.idx);
            continue;
        }
        if !mrg && ccap < total {
            w.rxsegs.truncate(start);
            vs.get_queue_mut().go_to_previous_position();
            if signal {
                let _ = vs.signal_used_queue();
            }
            return Deliver::Dropped(Drop::RxTooSmall);
        }
        let used = ccap.min(total - cap);
        cap += ccap;
        w.popped.push((head, used as u32));
    }
    // Phase 2: header, then the frame.
    let mut h = *hdr;
    h.num_buffers = if mrg { w.popped.len() as u16 } else { 1 };
    let hb = h.to_bytes();
    let ok = scatter(pair, Src::Local(&hb[..dhl]), 0, dhl, &w.rxsegs, 0).is_ok()
        && scatter(pair, src, 0, frame_len, &w.rxsegs, dhl).is_ok();
    if !ok {
        for _ in 0..w.popped.len() {
            vs.get_queue_mut().go_to_previous_position();
        }
        return Deliver::Dropped(Drop::NotGranted);
    }
    // Phase 3: publish all buffers of the frame at once.
    if let Err(e) = publish(vs.get_queue_mut(), &mem, &w.popped) {
        log::error!("RX publish: {e}");
        return Deliver::Dropped(Drop::RxBadChain);
    }
    Deliver::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;

    #[test]
    fn publish_writes_all_entries_then_one_index_update() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
        let mock = MockSplitQueue::new(&mem, 4);
        let mut q: Queue = mock.create_queue().expect("queue");
        // Start near the wrap-around point of a 4-entry ring.
        q.set_next_used(3);
        publish(&mut q, &mem, &[(2, 100), (0, 200), (1, 300)]).expect("publish");
        assert_eq!(q.next_used(), 6);
        let used = mock.used_addr().0;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).expect("idx");
        assert_eq!(idx, 6);
        let elem = |slot: u64| -> (u32, u32) {
            let a = GuestAddress(used + 4 + slot * 8);
            (
                mem.read_obj(a).expect("id"),
                mem.read_obj(GuestAddress(a.0 + 4)).expect("len"),
            )
        };
        assert_eq!(elem(3), (2, 100));
        assert_eq!(elem(0), (0, 200));
        assert_eq!(elem(1), (1, 300));
        publish(&mut q, &mem, &[]).expect("empty publish");
        assert_eq!(q.next_used(), 6);
    }

    #[test]
    fn scatter_spans_descriptors_and_offsets() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
        let t = pvnet_grant::GrantTable::new(pvnet_locks::RwLockKind::Percpu);
        t.replace_from_memory(&mem).expect("grant");
        let pair = read_pair(&t, &t);
        let data: Vec<u8> = (0..100u8).collect();
        // Source: guest bytes at 0x100 (after a 12-byte "header") split in three pieces.
        pair.dst()
            .write_from(GuestAddress(0x100), &[0xee; 12])
            .expect("hdr");
        pair.dst()
            .write_from(GuestAddress(0x10c), &data[..30])
            .expect("a");
        pair.dst()
            .write_from(GuestAddress(0x400), &data[30..31])
            .expect("b");
        pair.dst()
            .write_from(GuestAddress(0x800), &data[31..])
            .expect("c");
        let src = [(0x100u64, 42u32), (0x400, 1), (0x800, 69)];
        let dst = [(0x2000u64, 7u32), (0x3000, 13), (0x4000, 200)];
        scatter(&pair, Src::Guest(&src, 12), 0, 100, &dst, 5).expect("scatter");
        let mut out = vec![0u8; 220];
        let mut at = 0;
        for (g, l) in dst {
            pair.src()
                .read_into(GuestAddress(g), &mut out[at..at + l as usize])
                .expect("read");
            at += l as usize;
        }
        assert_eq!(&out[5..105], &data[..]);
        let mut local = [0u8; 20];
        scatter(&pair, Src::Local(&data[..20]), 0, 20, &dst, 0).expect("local");
        pair.src()
            .read_into(GuestAddress(0x2000), &mut local[..7])
            .expect("r1");
        pair.src()
            .read_into(GuestAddress(0x3000), &mut local[7..20])
            .expect("r2");
        assert_eq!(&local[..], &data[..20]);
        // Outside every grant: refused.
        assert!(scatter(&pair, Src::Local(&data), 0, 10, &[(0x20000, 10)], 0).is_err());
    }
}
