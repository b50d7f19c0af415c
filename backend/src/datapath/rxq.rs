//! A guest's RX ring as the destination of a delivery, for one RX queue of one port.
//!
//! [`RxRing`] is pvnet's own copy of the ring's state (virtio-queue's `Queue`: sizes,
//! addresses, `next_avail`, `next_used`), taken from the guest's vring when the ring starts and
//! written back when it stops (`stop_vring`), and kept under the queue's `--queue-lock` in the
//! [`Fabric`](crate::switch::Fabric): every sender that delivers into this queue takes that
//! lock, never vhost-user-backend's `VringRwLock`.
//!
//! The named steps of [`RxRing::deliver`] (one lock hold for one destination queue's share of
//! a burst), after DPDK's `virtio_dev_rx_split`:
//! 1. [`RxRing::reserve`] (`reserve_avail_buf` + `fill_vec_buf`): RX chains popped through
//!    one avail-ring snapshot until the frame fits (mergeable buffers) or one chain holds it;
//!    when the ring runs dry, ask for a kick ([`Kicks::arm`]) and continue only with buffers
//!    the guest published meanwhile — each chain is popped at most once per frame, so a
//!    frame costs O(ring) at worst, never O(ring²);
//! 2. [`RxRing::copy_frame`] (`copy_mbuf_to_desc`): header and frame written in one forward
//!    walk over the reserved buffers;
//! 3. [`UsedShadow`]: used entries staged, published with one used-index store per hold;
//! 4. the call decision ([`needs_call`]); the caller signals after unlocking.
//!
//! Kicks on RX rings: pvnet asks for them only while a sender is held back on the ring
//! ([`RxRing::reserve`] arms them when it runs out of buffers); [`RxRing::kicked`] wakes the
//! held-back senders only when buffers really were posted, and then stops asking.

use crate::datapath::chain::{read_chain, Dir, MAX_CHAIN_DESCS};
use crate::datapath::copy::{self, CopyError, SegCursor, Side};
use crate::datapath::ring::{needs_call, Kicks, RingLayout, UsedShadow};
use crate::datapath::{Data, Fate, FrameSet, LogLimit, Seg};
use crate::net;
use crate::stats::{Drop, RxStats};
use crate::switch::Vring;
use pvnet_grant::{GrantMemory, GrantReadGuard, RegionHint};
use pvnet_locks::family::RwFamily;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vhost_user_backend::{VringState, VringT};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Header plus frame bytes assembled locally and written with one grant copy.
const SMALL: usize = 256;

/// What a held-back sender registers with a full RX queue: an eventfd in the sender's worker
/// epoll set, and a flag that a polling worker checks without a system call.
pub struct Waker {
    fd: EventFd,
    pending: AtomicBool,
}

impl Waker {
    /// A new waker (non-blocking eventfd).
    pub fn new() -> std::io::Result<Self> {
        Ok(Waker {
            fd: EventFd::new(EFD_NONBLOCK)?,
            pending: AtomicBool::new(false),
        })
    }

    /// The eventfd, for the worker's epoll set.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// Wakes the worker (one eventfd write per batch of wakes).
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.fd.write(1);
        }
    }

    /// Whether a wake is pending (no system call).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Consumes a pending wake. The eventfd is read before the flag is cleared, so a wake
    /// that races with this either finds the flag set (and is seen by the caller's retry,
    /// which follows) or sets it anew and writes the eventfd again.
    pub fn take(&self) -> bool {
        let _ = self.fd.read();
        self.pending.swap(false, Ordering::AcqRel)
    }
}

/// One RX queue of a port as every sender shares it, besides its ring (which lives under
/// the queue lock in the [`Fabric`](crate::switch::Fabric)).
pub struct RxSlot {
    /// Senders held back by this full ring; woken when the guest posts buffers. Changed
    /// only with the queue lock held.
    waiters: Mutex<Vec<Arc<Waker>>>,
    /// Receive counters (written under the queue lock).
    pub stats: RxStats,
    /// A sender already waited the whole back-pressure bound on this ring: further frames
    /// are dropped at once until buffers are really posted (not merely kicked).
    pub stalled: AtomicBool,
}

impl Default for RxSlot {
    fn default() -> Self {
        RxSlot {
            waiters: Mutex::new(Vec::new()),
            stats: RxStats::default(),
            stalled: AtomicBool::new(false),
        }
    }
}

impl RxSlot {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Waker>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `w` to be woken (once) when the guest posts buffers (queue lock held).
    pub fn add_waiter(&self, w: &Arc<Waker>) {
        let mut l = self.waiters();
        if !l.iter().any(|x| Arc::ptr_eq(x, w)) {
            l.push(w.clone());
        }
    }

    /// Takes every registered waiter (queue lock held); wake them after unlocking.
    pub fn take_waiters(&self) -> Vec<Arc<Waker>> {
        std::mem::take(&mut *self.waiters())
    }

    fn clear_stall(&self) {
        if self.stalled.load(Ordering::Relaxed) {
            self.stalled.store(false, Ordering::Release);
        }
    }
}

/// Result of [`RxRing::reserve`].
enum Reserve {
    /// `heads` and `bufs` hold the frame's buffers.
    Ok,
    /// Not enough buffers; kicks are armed.
    Full,
    /// The frame cannot be delivered into this ring.
    Drop(Drop),
}

/// An attached RX ring (see the module documentation).
pub struct RxRing {
    queue: Queue,
    lay: RingLayout,
    vring: Vring,
    hint: RegionHint,
    kicks: Kicks,
    /// Used index at the last call decision.
    signalled: u16,
    mrg: bool,
    hdr_len: usize,
    features: u64,
    shadow: UsedShadow,
    /// The frame being assembled: its buffers, and its chains (head, capacity).
    bufs: Vec<Seg>,
    heads: Vec<(u16, u32)>,
    log: LogLimit,
}

impl RxRing {
    /// Takes the state of `vring` if it is started and enabled and its layout is valid.
    /// `features` are the guest's acknowledged virtio features.
    pub fn attach(vring: &Vring, features: u64) -> Option<RxRing> {
        let st = vring.get_ref();
        let state: &VringState<_> = &st;
        if !state.is_enabled() || !state.get_queue().ready() {
            return None;
        }
        let queue = Queue::try_from(state.get_queue().state()).ok()?;
        drop(st);
        let lay = RingLayout::of(&queue)?;
        let event_idx = queue.event_idx_enabled();
        Some(RxRing {
            signalled: queue.next_used(),
            queue,
            lay,
            vring: vring.clone(),
            hint: RegionHint::default(),
            kicks: Kicks::new(event_idx),
            mrg: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            hdr_len: net::net_hdr_len(features),
            features,
            shadow: UsedShadow::with_capacity(64),
            bufs: Vec::with_capacity(64),
            heads: Vec::with_capacity(64),
            log: LogLimit::default(),
        })
    }

    /// The guest's acknowledged features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Stops asking the guest for kicks (no sender is waiting yet).
    pub fn quiet<F: RwFamily>(&mut self, g: &GrantReadGuard<'_, F>) {
        let mem = GrantMemory::new(g, self.hint);
        self.kicks.disarm(&self.lay, &mem);
        self.hint = mem.hint();
    }

    /// Writes the ring position back into the vring (the frontend reads it with
    /// GET_VRING_BASE) and gives the vring back.
    pub fn detach(self) -> Vring {
        self.vring.set_queue_next_avail(self.queue.next_avail());
        self.vring.set_queue_next_used(self.queue.next_used());
        self.vring
    }

    /// The guest kicked this ring. Returns whether buffers were really posted (the held-back
    /// senders may retry: they are taken from `slot` and returned); a kick without new
    /// buffers changes nothing (kicks stay armed, a stall stays).
    pub fn kicked<F: RwFamily>(
        &mut self,
        g: &GrantReadGuard<'_, F>,
        slot: &RxSlot,
    ) -> Option<Vec<Arc<Waker>>> {
        let mem = GrantMemory::new(g, self.hint);
        let posted = self
            .lay
            .read_avail_idx(&mem)
            .is_ok_and(|a| a != self.queue.next_avail());
        if posted {
            self.kicks.disarm(&self.lay, &mem);
            slot.clear_stall();
        }
        self.hint = mem.hint();
        posted.then(|| slot.take_waiters())
    }

    /// Delivers `frames` in order into this ring (queue lock held), writing each frame's fate
    /// into `fates`. Stops at the first frame that does not fit: it and every later frame
    /// are [`Fate::Full`], `waker` is registered with `slot` and kicks are armed. Returns
    /// the vring to signal (used-buffer notification) after unlocking, if the guest wants
    /// one.
    pub fn deliver<F: RwFamily>(
        &mut self,
        src: (&GrantReadGuard<'_, F>, &mut RegionHint),
        dst: &GrantReadGuard<'_, F>,
        frames: &dyn FrameSet,
        fates: &mut [Fate],
        slot: &RxSlot,
        waker: &Arc<Waker>,
    ) -> Option<Vring> {
        let mut dhint = self.hint;
        let n = frames.count().min(fates.len());
        let mut i = 0;
        while i < n {
            let f = frames.get(i);
            let need = self.hdr_len + f.len;
            fates[i] = match self.reserve(dst, &mut dhint, need, slot) {
                Reserve::Ok => match self.copy_frame(src.0, src.1, dst, &mut dhint, &f) {
                    Ok(()) => {
                        slot.stats.frame(f.len);
                        Fate::Delivered
                    }
                    Err(_) => {
                        self.abandon();
                        Fate::Dropped(Drop::NotGranted)
                    }
                },
                Reserve::Full => {
                    slot.add_waiter(waker);
                    fates[i..n].fill(Fate::Full);
                    break;
                }
                Reserve::Drop(d) => Fate::Dropped(d),
            };
            i += 1;
        }
        let mem = GrantMemory::new(dst, dhint);
        if let Err(e) = self.shadow.flush(&mut self.queue, &self.lay, &mem) {
            if self.log.allow() {
                log::warn!("RX used ring not writable: {e}");
            }
        }
        let call = needs_call(&self.queue, &self.lay, &mem, self.signalled);
        self.signalled = self.queue.next_used();
        self.hint = mem.hint();
        if call {
            slot.stats.notified();
        }
        call.then(|| self.vring.clone())
    }

    /// Returns the chains of the frame being assembled as used and empty (they are the
    /// guest's again, in ring order).
    fn abandon(&mut self) {
        for &(h, _) in &self.heads {
            self.shadow.push(h, 0);
        }
        self.heads.clear();
        self.bufs.clear();
    }

    /// Reserves buffers for `need` bytes (header included) into `heads` / `bufs`.
    fn reserve<F: RwFamily>(
        &mut self,
        dst: &GrantReadGuard<'_, F>,
        hint: &mut RegionHint,
        need: usize,
        slot: &RxSlot,
    ) -> Reserve {
        self.heads.clear();
        self.bufs.clear();
        let mut cap = 0usize;
        // Chains one frame may pop, malformed ones included: a guest re-posting bad chains as
        // fast as they come back cannot keep the queue lock.
        let mut budget = 2 * usize::from(self.lay.size());
        loop {
            let mem = GrantMemory::new(dst, *hint);
            let step = self.pop_until(&mem, need, &mut cap, &mut budget);
            *hint = mem.hint();
            match step {
                Pop::Enough => {
                    slot.clear_stall();
                    return Reserve::Ok;
                }
                Pop::TooSmall => return Reserve::Drop(Drop::RxTooSmall),
                Pop::Bad => {
                    // A malformed chain: the frame being assembled is abandoned (its chains
                    // return empty, the bad one too) and assembly starts over.
                    slot.stats.drop(Drop::RxBadChain);
                    if self.log.allow() {
                        log::debug!("malformed RX chain returned empty");
                    }
                    self.abandon();
                    cap = 0;
                }
                Pop::BadRing => return self.give_back(Reserve::Drop(Drop::RxBadRing)),
                Pop::Budget => return self.give_back(Reserve::Drop(Drop::RxBadChain)),
                Pop::Dry => {
                    // Ask for a kick at the index we stopped at. Buffers published since
                    // will not kick: take them now (incrementally, nothing is popped twice).
                    let mem = GrantMemory::new(dst, *hint);
                    let at = self.queue.next_avail();
                    let seen = self.kicks.arm(&self.lay, &mem, at);
                    *hint = mem.hint();
                    match seen {
                        Ok(s) if s != at => continue,
                        Ok(_) => return self.give_back(Reserve::Full),
                        Err(_) => return self.give_back(Reserve::Drop(Drop::RxBadRing)),
                    }
                }
            }
        }
    }

    /// Puts the chains of the frame being assembled back on the avail ring (they were
    /// popped in order, so moving `next_avail` back returns exactly them).
    fn give_back(&mut self, r: Reserve) -> Reserve {
        // At most one ring's worth of chains: fits u16.
        let n = self.heads.len() as u16;
        self.queue
            .set_next_avail(self.queue.next_avail().wrapping_sub(n));
        self.heads.clear();
        self.bufs.clear();
        r
    }

    /// Pops chains through one avail-index snapshot until `cap` reaches `need`.
    fn pop_until<F: RwFamily>(
        &mut self,
        mem: &GrantMemory<'_, '_, F>,
        need: usize,
        cap: &mut usize,
        budget: &mut usize,
    ) -> Pop {
        let mut it = match self.queue.iter(mem) {
            Ok(it) => it,
            Err(e) => {
                if self.log.allow() {
                    log::warn!("RX ring unreadable: {e}");
                }
                return Pop::BadRing;
            }
        };
        while *cap < need {
            if *budget == 0 {
                return Pop::Budget;
            }
            let Some(chain) = it.next() else {
                return Pop::Dry;
            };
            *budget -= 1;
            let head = chain.head_index();
            let start = self.bufs.len();
            let Ok(info) = read_chain(chain, Dir::Writable, usize::MAX, &mut self.bufs) else {
                self.heads.push((head, 0));
                return Pop::Bad;
            };
            let granted = self.bufs[start..]
                .iter()
                .all(|s| mem.check_range(GuestAddress(s.gpa), s.len as usize, Permissions::Write));
            let first = self.heads.is_empty();
            if !granted || self.bufs.len() > MAX_CHAIN_DESCS || (first && info.bytes < self.hdr_len)
            {
                self.heads.push((head, 0));
                return Pop::Bad;
            }
            if !self.mrg && info.bytes < need {
                // Too small without mergeable buffers: the chain stays for a smaller frame.
                it.go_to_previous_position();
                self.bufs.truncate(start);
                return Pop::TooSmall;
            }
            self.heads
                .push((head, u32::try_from(info.bytes).unwrap_or(u32::MAX)));
            *cap += info.bytes;
            if !self.mrg {
                break;
            }
        }
        Pop::Enough
    }

    /// Writes the header and the frame into the reserved buffers and stages their used
    /// entries (`copy_mbuf_to_desc` + `update_shadow_used_ring`).
    fn copy_frame<F: RwFamily>(
        &mut self,
        sg: &GrantReadGuard<'_, F>,
        sh: &mut RegionHint,
        dg: &GrantReadGuard<'_, F>,
        dh: &mut RegionHint,
        f: &crate::datapath::FrameSrc<'_>,
    ) -> Result<(), CopyError> {
        let dhl = self.hdr_len;
        let mut h = f.hdr;
        // At most u16::MAX chains per frame (checked when reserving).
        h.num_buffers = if self.mrg { self.heads.len() as u16 } else { 1 };
        let hb = h.to_bytes();
        let mut dc = SegCursor::new(&self.bufs);
        match f.data {
            Data::Local(b) if dhl + b.len() <= SMALL => {
                let mut small = [0u8; SMALL];
                small[..dhl].copy_from_slice(&hb[..dhl]);
                small[dhl..dhl + b.len()].copy_from_slice(b);
                copy::write_from(dg, dh, &mut dc, &small[..dhl + b.len()])?;
            }
            Data::Local(b) => {
                copy::write_from(dg, dh, &mut dc, &hb[..dhl])?;
                copy::write_from(dg, dh, &mut dc, b)?;
            }
            Data::Guest { segs, skip } => {
                copy::write_from(dg, dh, &mut dc, &hb[..dhl])?;
                let mut sc = SegCursor::new(segs);
                if !sc.skip(skip) {
                    return Err(CopyError::Short);
                }
                copy::copy(
                    Side {
                        guard: sg,
                        hint: sh,
                        cur: &mut sc,
                    },
                    Side {
                        guard: dg,
                        hint: dh,
                        cur: &mut dc,
                    },
                    f.len,
                )?;
            }
        }
        // Used lengths: each chain as full as the frame made it, in order.
        let mut left = dhl + f.len;
        for &(head, cap) in &self.heads {
            let n = left.min(cap as usize);
            left -= n;
            // n <= cap, a u32.
            self.shadow.push(head, n as u32);
        }
        self.heads.clear();
        self.bufs.clear();
        Ok(())
    }
}

/// What [`RxRing::pop_until`] ended with.
enum Pop {
    /// The frame fits.
    Enough,
    /// The snapshot ran out of chains.
    Dry,
    /// A malformed chain (its head is the last in `heads`).
    Bad,
    /// A single chain is too small and mergeable buffers are off.
    TooSmall,
    /// The avail index is bogus or unreadable.
    BadRing,
    /// The frame popped more chains than its budget.
    Budget,
}
