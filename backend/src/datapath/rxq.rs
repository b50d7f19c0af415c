//! A guest's RX ring as the destination of a delivery, for one RX queue of one port.
//!
//! [`RxRing`] is pvnet's own copy of the ring's state (virtio-queue's `Queue`: sizes,
//! addresses, `next_avail`, `next_used`), taken from the guest's vring when the ring starts and
//! written back when it stops (`stop_vring`), and kept under the queue's `--queue-lock` in the
//! [`Fabric`](crate::switch::Fabric): every sender that delivers into this queue takes that
//! lock, never vhost-user-backend's `VringRwLock`.
//!
//! The named steps of [`RxRing::deliver`] (one lock hold for one destination queue's share of
//! a burst, at most [`HOLD_BYTES`] of frames), after DPDK's `virtio_dev_rx_split`:
//! 1. reserve (`RxState::pop_until`; DPDK's `reserve_avail_buf` + `fill_vec_buf`): RX chains
//!    popped through one avail-ring snapshot and the descriptor table translated once, until
//!    the frame fits (mergeable buffers) or one chain holds it; when the ring runs dry, ask
//!    for a kick ([`Kicks::arm`]) at the guest's newest index and continue with buffers
//!    published meanwhile — each chain is popped at most once per frame, so a frame costs
//!    O(ring) at worst, never O(ring²);
//! 2. copy (`RxState::copy_frame`; `copy_mbuf_to_desc`): header and frame written in one
//!    forward walk over the reserved buffers, the header as two word stores
//!    ([`copy::write_hdr_and`]: never assembled locally and copied out at once);
//! 3. [`UsedShadow`]: used entries staged;
//! 4. publish ([`RxRing::publish`]): the staged entries and one used-index store, then the
//!    call decision ([`needs_call`]); the caller signals after unlocking. A guest sender
//!    publishes after its hold, once it has returned its own TX chains (see
//!    [`qpair`](crate::datapath::qpair)): a receiver never sees a frame whose sender's chain
//!    is still taken (but for IN_ORDER chains queued behind one held back for another port),
//!    so a frontend that forwards what it receives back out (DPDK testpmd) finds its TX slot
//!    free. Entries staged by one sender are also published by the next
//!    sender's publication, and by [`Fabric::detach_rx`](crate::switch::Fabric::detach_rx).
//!
//! Kicks on RX rings: pvnet asks for them only while a sender is held back on the ring (the
//! reserve step arms them when it runs out of buffers); [`RxRing::kicked`] wakes the
//! held-back senders only when buffers really were posted, and then stops asking.

use crate::datapath::chain::{read_chain, DescTable, Dir, MAX_CHAIN_DESCS};
use crate::datapath::copy::{self, CopyError, SegCursor, Side};
use crate::datapath::ring::{needs_call, one_slice, AvailSnapshot, Kicks, RingLayout, UsedShadow};
pub use crate::datapath::rxslot::{RxSlot, Waker};
use crate::datapath::Vring;
use crate::datapath::{Data, Fate, FrameSet, FrameSrc, LogLimit, Seg};
use crate::net;
use crate::stats::DropReason;
use pvnet_grant::{Access, GrantMemory, GrantReadGuard, RegionHint};
use pvnet_locks::family::RwFamily;
use std::sync::Arc;
use vhost_user_backend::{VringState, VringT};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileSlice};

/// Most frame bytes copied into one ring per queue-lock hold (a larger share of a burst is
/// delivered in several holds, so other senders never wait for more than this).
pub const HOLD_BYTES: usize = 256 * 1024;
/// Largest average frame of a hold for which the first line of every receive buffer is
/// prefetched before the copies. Larger frames' copies stream many lines each, which the
/// hardware prefetcher follows; 64 prefetches issued ahead of them only fill the miss
/// buffers (the prefetch instruction itself then stalls): skipping them took 1500 B frames
/// from 105-108 to 100-103 ns at 1 pair, alternating runs, small frames unchanged.
const PREFETCH_MAX_AVG: usize = 512;

/// An attached RX ring (see the module documentation): virtio-queue's `Queue` (positions,
/// addresses) and everything else, apart, so that a hold can keep one avail-ring snapshot
/// (an [`AvailSnapshot`], the queue's position written back after the hold) while it works on
/// the rest.
pub struct RxRing {
    queue: Queue,
    st: RxState,
}

/// An RX ring's state besides its `Queue`.
struct RxState {
    lay: RingLayout,
    vring: Vring,
    /// Translation hints: the ring's fields, and the buffers.
    ring_hint: RegionHint,
    buf_hint: RegionHint,
    kicks: Kicks,
    /// Used index at the last call decision.
    signalled: u16,
    mrg: bool,
    hdr_len: usize,
    features: u64,
    shadow: UsedShadow,
    /// The buffers and chains (head, capacity) reserved in this hold, frame after frame;
    /// the frame being assembled starts at `cur`.
    bufs: Vec<Seg>,
    heads: Vec<(u16, u32)>,
    cur: Reserved,
    reserved: Vec<Reserved>,
    log: LogLimit,
}

/// One frame's reservation in a hold: frame `frame` of the offered set, its chains
/// `heads[h0..h1]` and buffers `bufs[b0..b1]`.
#[derive(Clone, Copy, Debug, Default)]
struct Reserved {
    /// The frame, or [`ABANDONED`]: chains given up (returned empty).
    frame: u32,
    h0: u32,
    h1: u32,
    b0: u32,
    b1: u32,
    /// The host address of the one buffer, translated and checked writable by
    /// [`RxState::pop_whole`] under this hold's destination guard (0: the copy translates).
    host: usize,
}

/// [`Reserved::frame`] of chains given up while assembling a frame.
const ABANDONED: u32 = u32::MAX;

/// What [`RxState::pop_until`] ended with.
#[derive(Debug, PartialEq, Eq)]
enum Pop {
    /// The frame fits.
    Enough,
    /// The snapshot ran out of chains.
    Dry,
    /// A malformed chain (its head is the last in `heads`).
    Bad,
    /// A single chain is too small and mergeable buffers are off.
    TooSmall,
    /// The frame popped more chains than its budget.
    Budget,
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
        Self::new(queue, vring.clone(), features)
    }

    fn new(queue: Queue, vring: Vring, features: u64) -> Option<RxRing> {
        let lay = RingLayout::of(&queue)?;
        let event_idx = queue.event_idx_enabled();
        Some(RxRing {
            st: RxState {
                signalled: queue.next_used(),
                lay,
                vring,
                ring_hint: RegionHint::default(),
                buf_hint: RegionHint::default(),
                kicks: Kicks::new(event_idx),
                mrg: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
                hdr_len: net::net_hdr_len(features),
                features,
                shadow: UsedShadow::with_capacity(64),
                bufs: Vec::with_capacity(64),
                heads: Vec::with_capacity(64),
                cur: Reserved::default(),
                reserved: Vec::with_capacity(64),
                log: LogLimit::default(),
            },
            queue,
        })
    }

    /// The guest's acknowledged features.
    pub fn features(&self) -> u64 {
        self.st.features
    }

    /// Stops asking the guest for kicks (no sender is waiting yet).
    pub fn quiet<F: RwFamily>(&mut self, g: &GrantReadGuard<'_, F>) {
        let mem = GrantMemory::new(g, self.st.ring_hint);
        self.st.kicks.disarm(&self.st.lay, &mem);
        self.st.ring_hint = mem.hint();
    }

    /// Writes the ring position back into the vring (the frontend reads it with
    /// GET_VRING_BASE) and gives the vring back.
    pub fn detach(self) -> Vring {
        let v = self.st.vring;
        v.set_queue_next_avail(self.queue.next_avail());
        v.set_queue_next_used(self.queue.next_used());
        v
    }

    /// The guest kicked this ring. Returns the held-back senders to wake when buffers were
    /// really posted; a kick without new buffers leaves the senders waiting and a stall in
    /// place. Kicks still asked for are asked for again at the ring's position: another
    /// sender may have taken the buffers the kick was for, and with EVENT_IDX the guest
    /// kicks only when its index crosses `avail_event` — left behind, never again.
    pub fn kicked<F: RwFamily>(
        &mut self,
        g: &GrantReadGuard<'_, F>,
        slot: &RxSlot,
    ) -> Option<Vec<Arc<Waker>>> {
        let mem = GrantMemory::new(g, self.st.ring_hint);
        let next = self.queue.next_avail();
        let mut posted = self.st.lay.read_avail_idx(&mem).is_ok_and(|a| a != next);
        if !posted && self.st.kicks.armed() {
            // Posted between the read and the request: no kick will come for those.
            posted = self
                .st
                .kicks
                .arm(&self.st.lay, &mem, next)
                .is_ok_and(|a| a != next);
        }
        if posted {
            self.st.kicks.disarm(&self.st.lay, &mem);
            slot.clear_stall();
        }
        self.st.ring_hint = mem.hint();
        posted.then(|| slot.take_waiters())
    }

    /// Delivers `frames` in order into this ring (queue lock held), writing each frame's fate
    /// into `fates`. Stops at the first frame that does not fit: it and every later frame
    /// are [`Fate::Full`], `waker` is registered with `slot` and kicks are armed; and after
    /// [`HOLD_BYTES`] of frames: the frames not offered stay [`Fate::Pending`] for the next
    /// hold. The delivered frames' used entries are staged: the guest sees them at the next
    /// [`RxRing::publish`].
    pub fn deliver<F: RwFamily>(
        &mut self,
        src: (&GrantReadGuard<'_, F>, &mut RegionHint),
        dst: &GrantReadGuard<'_, F>,
        frames: &dyn FrameSet,
        fates: &mut [Fate],
        slot: &RxSlot,
        waker: &Arc<Waker>,
    ) {
        let mem = GrantMemory::new(dst, self.st.ring_hint);
        let mut bh = self.st.buf_hint;
        let bufs = BufGuards {
            sg: src.0,
            sh: src.1,
            dg: dst,
            dh: &mut bh,
        };
        self.deliver_with(&mem, bufs, frames, fates, slot, waker);
        self.st.ring_hint = mem.hint();
        self.st.buf_hint = bh;
    }

    /// Whether used entries are staged and not yet published.
    pub fn staged(&self) -> bool {
        !self.st.shadow.is_empty()
    }

    /// Publishes the staged used entries (queue lock held; `dst`: this ring's guest's grants)
    /// with one used-index store. Returns the vring to signal (used-buffer notification)
    /// after unlocking, if the guest wants one.
    pub fn publish<F: RwFamily>(
        &mut self,
        dst: &GrantReadGuard<'_, F>,
        slot: &RxSlot,
    ) -> Option<Vring> {
        if !self.staged() {
            return None;
        }
        let mem = GrantMemory::new(dst, self.st.ring_hint);
        let call = self.publish_with(&mem, slot);
        self.st.ring_hint = mem.hint();
        call
    }

    /// [`RxRing::publish`] through `mem`.
    fn publish_with<M: GuestMemory<Bitmap = ()>>(
        &mut self,
        mem: &M,
        slot: &RxSlot,
    ) -> Option<Vring> {
        let RxRing { queue, st } = self;
        if let Err(e) = st.shadow.flush(queue, &st.lay, mem) {
            if st.log.allow() {
                log::warn!("RX used ring not writable: {e}");
            }
        }
        let call = needs_call(queue, &st.lay, mem, st.signalled);
        st.signalled = queue.next_used();
        if call {
            slot.stats.notified();
        }
        call.then(|| st.vring.clone())
    }

    /// [`RxRing::deliver`] with the ring's fields read and written through `mem` (the
    /// destination's grants; a test double in unit tests).
    fn deliver_with<F: RwFamily, M: GuestMemory<Bitmap = ()>>(
        &mut self,
        mem: &M,
        bufs: BufGuards<'_, '_, '_, F>,
        frames: &dyn FrameSet,
        fates: &mut [Fate],
        slot: &RxSlot,
        waker: &Arc<Waker>,
    ) {
        let BufGuards { sg, sh, dg, dh } = bufs;
        let RxRing { queue, st } = self;
        let n = frames.count().min(fates.len());
        let mut held_bytes = 0usize;
        // One avail-index read per hold: a snapshot, taken again only when it runs dry; the
        // descriptor table translated once.
        let table = st.lay.desc_table(mem);
        let avail = st.lay.avail_ring(mem).filter(|_| table.is_some());
        let mut it = avail.and_then(|a| AvailSnapshot::take(a, queue.next_avail()).ok());
        if it.is_none() && st.log.allow() {
            log::warn!("RX ring unreadable (bogus avail index or ring outside memory)");
        }
        // Reserve every frame's buffers first (one avail snapshot), then prefetch the first
        // line of each (small frames only, see PREFETCH_MAX_AVG), then copy: the cache misses
        // on lines the guest's core last touched overlap instead of adding up frame after
        // frame.
        st.heads.clear();
        st.bufs.clear();
        st.reserved.clear();
        // Chains the general walk may pop in this hold, malformed ones included: a guest
        // re-posting bad chains as fast as they come back cannot keep the queue lock (a
        // budget per frame let one hold of 320 frames walk 640 rings' worth). The
        // one-buffer shortcut pops at most one chain per frame.
        let mut budget = 2 * usize::from(st.lay.size());
        for i in 0..n {
            let len = frames.frame_len(i);
            let need = st.hdr_len + len;
            st.begin_frame(i);
            // The common case first: the next chain is one buffer that holds the frame.
            if let (Some(iter), Some(table)) = (it.as_mut(), table.as_ref()) {
                if let Some(host) = st.pop_whole(iter, table, (dg, dh), need) {
                    slot.clear_stall();
                    st.end_frame(host);
                    fates[i] = Fate::Pending;
                    held_bytes += len;
                    if held_bytes >= HOLD_BYTES {
                        break;
                    }
                    continue;
                }
            }
            let mut cap = 0usize;
            fates[i] = loop {
                let (Some(iter), Some(table)) = (it.as_mut(), table.as_ref()) else {
                    break Fate::Dropped(DropReason::RxBadRing);
                };
                match st.pop_until(iter, mem, table, need, &mut cap, &mut budget) {
                    Pop::Enough => {
                        slot.clear_stall();
                        st.end_frame(0);
                        break Fate::Pending;
                    }
                    Pop::TooSmall => break Fate::Dropped(DropReason::RxTooSmall),
                    Pop::Bad => {
                        // The frame being assembled is abandoned (its chains return empty,
                        // the bad one too) and assembly starts over.
                        slot.stats.count_drop(DropReason::RxBadChain);
                        st.abandon();
                        cap = 0;
                    }
                    Pop::Budget => {
                        for _ in 0..st.frame_chains() {
                            iter.back();
                        }
                        st.forget_frame();
                        break Fate::Dropped(DropReason::RxBadChain);
                    }
                    Pop::Dry => {
                        // Ask for a kick at the index we stopped at; buffers published since
                        // will not kick, so take them now (incrementally: nothing popped is
                        // popped again). Full only when nothing was published after the
                        // request: the guest's next posting kicks.
                        let at = iter.next_avail();
                        queue.set_next_avail(at);
                        it = None;
                        match st.kicks.arm(&st.lay, mem, at) {
                            Ok(seen) if seen != at => {
                                it = avail.and_then(|a| AvailSnapshot::take(a, at).ok());
                                continue;
                            }
                            r => {
                                // At most a ring's worth of chains: fits u16.
                                let back = st.frame_chains() as u16;
                                queue.set_next_avail(at.wrapping_sub(back));
                                st.forget_frame();
                                break match r {
                                    Ok(_) => Fate::Full,
                                    Err(_) => Fate::Dropped(DropReason::RxBadRing),
                                };
                            }
                        }
                    }
                }
            };
            if fates[i] == Fate::Full {
                slot.add_waiter(waker);
                fates[i..n].fill(Fate::Full);
                break;
            }
            held_bytes += len;
            if held_bytes >= HOLD_BYTES {
                break;
            }
        }
        if let Some(iter) = &it {
            queue.set_next_avail(iter.next_avail());
        }
        if held_bytes <= PREFETCH_MAX_AVG * st.reserved.len() {
            st.prefetch(dg, dh);
        }
        for k in 0..st.reserved.len() {
            let r = st.reserved[k];
            if r.frame == ABANDONED {
                st.return_empty(r);
                continue;
            }
            let i = r.frame as usize;
            let f = frames.get(i);
            fates[i] = match st.copy_frame(sg, sh, dg, dh, &f, r) {
                Ok(()) => {
                    slot.stats.frame(f.len);
                    Fate::Delivered
                }
                Err(_) => Fate::Dropped(DropReason::NotGranted),
            };
        }
    }
}

/// The buffer side of a delivery: source guard and hint, destination guard and hint.
struct BufGuards<'x, 's, 'd, F: RwFamily> {
    sg: &'x GrantReadGuard<'s, F>,
    sh: &'x mut RegionHint,
    dg: &'x GrantReadGuard<'d, F>,
    dh: &'x mut RegionHint,
}

impl RxState {
    /// Starts assembling frame `i` at the ends of the hold's lists.
    fn begin_frame(&mut self, i: usize) {
        // At most one burst of frames, a ring's worth of chains, MAX_CHAIN_DESCS buffers
        // per frame: all fit u32.
        self.cur = Reserved {
            frame: i as u32,
            h0: self.heads.len() as u32,
            h1: 0,
            b0: self.bufs.len() as u32,
            b1: 0,
            host: 0,
        };
    }

    /// Chains popped for the frame being assembled.
    fn frame_chains(&self) -> usize {
        self.heads.len() - self.cur.h0 as usize
    }

    /// The frame being assembled is reserved (`host`: see [`Reserved::host`]).
    fn end_frame(&mut self, host: usize) {
        // Built whole (writing two fields of `cur` and copying it would stall on store
        // forwarding).
        let r = Reserved {
            frame: self.cur.frame,
            h0: self.cur.h0,
            h1: self.heads.len() as u32,
            b0: self.cur.b0,
            b1: self.bufs.len() as u32,
            host,
        };
        self.reserved.push(r);
    }

    /// Forgets the frame being assembled (its chains were given back to the ring).
    fn forget_frame(&mut self) {
        self.heads.truncate(self.cur.h0 as usize);
        self.bufs.truncate(self.cur.b0 as usize);
    }

    /// Gives up the chains of the frame being assembled: they go back used and empty, staged
    /// in ring order with the frames reserved around them (IN_ORDER guests rely on that;
    /// before, they were staged ahead of the frames reserved earlier in the hold); the frame
    /// starts over after them.
    fn abandon(&mut self) {
        let r = Reserved {
            frame: ABANDONED,
            h0: self.cur.h0,
            h1: self.heads.len() as u32,
            b0: self.cur.b0,
            b1: self.bufs.len() as u32,
            host: 0,
        };
        self.reserved.push(r);
        self.cur.h0 = r.h1;
        self.cur.b0 = r.b1;
    }

    /// Stages the chains of an abandoned reservation as used and empty.
    fn return_empty(&mut self, r: Reserved) {
        for &(h, _) in self
            .heads
            .get(r.h0 as usize..r.h1 as usize)
            .unwrap_or_default()
        {
            self.shadow.push(h, 0);
        }
    }

    /// Hints the CPU to fetch the first line of every reserved frame's first buffer.
    fn prefetch<F: RwFamily>(&self, dg: &GrantReadGuard<'_, F>, dh: &mut RegionHint) {
        for r in self.reserved.iter().filter(|r| r.frame != ABANDONED) {
            if r.host != 0 {
                copy::prefetch_ptr(r.host as *const u8);
                continue;
            }
            // A reservation has at least one buffer, none empty (read_chain skips those).
            if r.b1 > r.b0 {
                if let Some(b) = self.bufs.get(r.b0 as usize) {
                    copy::prefetch_gpa(dg, dh, b.gpa);
                }
            }
        }
    }

    /// Pops the next chain of `it` if it is a single writable buffer of at least `need`
    /// bytes, granted for writing in one piece: [`RxState::pop_until`]'s result for that
    /// chain, without its general walk, and the buffer's host address (translated once for
    /// the prefetch and the copy, under `dst`, the destination's guard, held for the whole
    /// hold). Anything else stays on the ring (`None`) for `pop_until` to judge.
    #[inline(always)]
    fn pop_whole<F: RwFamily>(
        &mut self,
        it: &mut AvailSnapshot<'_>,
        table: &DescTable<'_>,
        dst: (&GrantReadGuard<'_, F>, &mut RegionHint),
        need: usize,
    ) -> Option<usize> {
        let head = it.next()?;
        let d = table
            .get(head)
            .filter(|d| d.flags() == VRING_DESC_F_WRITE as u16 && d.len() as usize >= need);
        let host = d.and_then(|d| {
            let (g, hint) = dst;
            g.host_range_hinted(hint, d.addr().0, d.len() as usize, Access::WriteOnly)
        });
        let (Some(d), Some(host)) = (d, host) else {
            it.back();
            return None;
        };
        let host = host as usize;
        self.bufs.push(Seg {
            gpa: d.addr().0,
            len: d.len(),
        });
        self.heads.push((head, d.len()));
        Some(host)
    }

    /// Pops chains from the snapshot `it` until `cap` reaches `need` (`reserve_avail_buf` +
    /// `fill_vec_buf`).
    fn pop_until<'m, M: GuestMemory<Bitmap = ()>>(
        &mut self,
        it: &mut AvailSnapshot<'m>,
        mem: &'m M,
        table: &DescTable<'m>,
        need: usize,
        cap: &mut usize,
        budget: &mut usize,
    ) -> Pop {
        let mut indirect =
            |gpa: u64, len: u32| one_slice(mem, gpa, len as usize, Permissions::Read);
        while *cap < need {
            if *budget == 0 {
                return Pop::Budget;
            }
            let Some(head) = it.next() else {
                return Pop::Dry;
            };
            *budget -= 1;
            let start = self.bufs.len();
            let r = read_chain(
                table,
                head,
                &mut indirect,
                Dir::Writable,
                usize::MAX,
                &mut self.bufs,
            );
            let Ok(info) = r else {
                self.heads.push((head, 0));
                return Pop::Bad;
            };
            let granted = self.bufs[start..]
                .iter()
                .all(|s| mem.check_range(GuestAddress(s.gpa), s.len as usize, Permissions::Write));
            let first = self.frame_chains() == 0;
            let too_many = self.bufs.len() - self.cur.b0 as usize > MAX_CHAIN_DESCS;
            if !granted || too_many || (first && info.bytes < self.hdr_len) {
                self.heads.push((head, 0));
                return Pop::Bad;
            }
            if !self.mrg && info.bytes < need {
                // Too small without mergeable buffers: the chain stays for a smaller frame.
                it.back();
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
    #[inline(always)]
    fn copy_frame<F: RwFamily>(
        &mut self,
        sg: &GrantReadGuard<'_, F>,
        sh: &mut RegionHint,
        dg: &GrantReadGuard<'_, F>,
        dh: &mut RegionHint,
        f: &FrameSrc<'_>,
        r: Reserved,
    ) -> Result<(), CopyError> {
        let heads = self
            .heads
            .get(r.h0 as usize..r.h1 as usize)
            .unwrap_or_default();
        let bufs = self
            .bufs
            .get(r.b0 as usize..r.b1 as usize)
            .unwrap_or_default();
        let dhl = self.hdr_len;
        // At most a ring's worth of chains per frame.
        let h = f
            .hdr
            .with_num_buffers(if self.mrg { heads.len() as u16 } else { 1 });
        if let ([buf], &[(head, _)]) = (bufs, heads) {
            if r.host != 0 {
                // SAFETY: `pop_whole` translated this buffer, `buf.len` bytes at `r.host`,
                // granted writable, under `dg`, which the hold keeps for the whole delivery
                // (a grant's mapping lives as long as any read guard of its table); guest
                // memory is only ever accessed through volatile copies.
                let d = unsafe { VolatileSlice::new(r.host as *mut u8, buf.len as usize) };
                let copied = match f.data {
                    Data::Local(b) => copy::write_hdr_into(d, h, dhl, b),
                    Data::Guest { head, segs, skip } => {
                        let head = &head[..head.len().min(f.len)];
                        let k = head.len();
                        copy::write_hdr_into(d, h, dhl, head).and_then(|()| {
                            let mut sc = SegCursor::new(segs);
                            let rest = d.offset(dhl + k).map_err(|_| CopyError::Short)?;
                            match sc.skip(skip + k) {
                                true => copy::read_to_slice(sg, sh, &mut sc, rest, f.len - k),
                                false => Err(CopyError::Short),
                            }
                        })
                    }
                };
                let n = if copied.is_ok() { dhl + f.len } else { 0 };
                // n <= buf.len (pop_whole's condition), a u32.
                self.shadow.push(head, n as u32);
                return copied;
            }
        }
        let mut dc = SegCursor::new(bufs);
        let copied = match f.data {
            Data::Local(b) => copy::write_hdr_and(dg, dh, &mut dc, h, dhl, b),
            Data::Guest { head, segs, skip } => {
                let head = &head[..head.len().min(f.len)];
                copy::write_hdr_and(dg, dh, &mut dc, h, dhl, head).and_then(|()| {
                    let mut sc = SegCursor::new(segs);
                    if !sc.skip(skip + head.len()) {
                        return Err(CopyError::Short);
                    }
                    let src = Side {
                        guard: sg,
                        hint: sh,
                        cur: &mut sc,
                    };
                    let dst = Side {
                        guard: dg,
                        hint: dh,
                        cur: &mut dc,
                    };
                    copy::copy(src, dst, f.len - head.len())
                })
            }
        };
        // Used lengths: each chain as full as the frame made it, in order (all zero when
        // the copy failed: the chains return empty).
        let mut left = if copied.is_ok() { dhl + f.len } else { 0 };
        for &(head, cap) in heads {
            let n = left.min(cap as usize);
            left -= n;
            // n <= cap, a u32.
            self.shadow.push(head, n as u32);
        }
        copied
    }
}

#[cfg(test)]
mod tests;
