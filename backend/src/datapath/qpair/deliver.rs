//! Step B of a [`QueuePair`] burst: delivery to one destination port — the whole burst
//! straight from its records when it all goes to one queue as it is
//! (`QueuePair::deliver_whole_burst`), otherwise held-back frames first, then the burst's,
//! queue by queue in runs, software offloads one frame at a time — and the destination's
//! verdicts applied to each frame.

use super::{FrameId, Outcome, PortCtx, QueuePair};
use crate::datapath::burst::{Burst, Frame, Route};
use crate::datapath::dest::{
    next_run, offer_run, pick_queues, Destination, GuestPort, RunOffer, SrcGrants,
};
use crate::datapath::held::HeldBack;
use crate::datapath::soft::Soft;
use crate::datapath::tapdest::TapDest;
use crate::datapath::{Data, Fate, FrameSet, FrameSrc};
use crate::net::{gso, Delivery, HdrWords};
use crate::stats::{DropReason, TxStats};
use crate::switch::{Locks, PortKind};
use std::ops::Range;
use std::sync::atomic::Ordering;

/// The frames of one run, as a [`FrameSet`].
struct Run<'a> {
    ids: &'a [FrameId],
    burst: &'a Burst,
    held: &'a HeldBack,
}

impl FrameSet for Run<'_> {
    fn count(&self) -> usize {
        self.ids.len()
    }

    fn get(&self, i: usize) -> FrameSrc<'_> {
        match self.ids.get(i) {
            Some(FrameId::Burst(k)) => self.burst.src(*k),
            Some(FrameId::Held(k)) => match self.held.get(*k) {
                Some(h) => h.src(),
                None => empty(),
            },
            None => empty(),
        }
    }

    fn frame_len(&self, i: usize) -> usize {
        match self.ids.get(i) {
            Some(FrameId::Burst(k)) => self.burst.frames.get(*k).map_or(0, |f| f.len as usize),
            Some(FrameId::Held(k)) => self.held.get(*k).map_or(0, |h| h.frame.len as usize),
            None => 0,
        }
    }
}

/// What becomes of unicast frame `f` given the verdict of its destination, port `d`.
#[inline(always)]
fn unicast_outcome<L: Locks>(cx: &PortCtx<'_, L>, d: usize, f: &Frame, fate: Fate) -> Outcome {
    match fate {
        Fate::Delivered => Outcome::Done,
        Fate::Full if cx.sw().queue_stalled(d, f.key) => {
            // Its guest already let a sender wait a whole bound.
            Outcome::Drop(DropReason::RxFullTimeout)
        }
        Fate::Full => Outcome::Hold(d),
        Fate::NotReady | Fate::Pending => Outcome::Drop(DropReason::NoDest),
        Fate::Dropped(r) => Outcome::Drop(r),
    }
}

/// Every frame of a burst, in order, as a [`FrameSet`].
struct WholeBurst<'a>(&'a Burst);

impl FrameSet for WholeBurst<'_> {
    fn count(&self) -> usize {
        self.0.frames.len()
    }

    fn get(&self, i: usize) -> FrameSrc<'_> {
        self.0.src(i)
    }

    fn frame_len(&self, i: usize) -> usize {
        self.0.frames.get(i).map_or(0, |f| f.len as usize)
    }
}

/// A queue pair's run for queue `q` of `dest`, as [`offer_run`] walks it.
struct QueueRun<'r, 'c, L: Locks, D> {
    qp: &'r mut QueuePair,
    cx: &'r PortCtx<'c, L>,
    dest: &'r D,
    q: usize,
    run: &'r [FrameId],
}

impl<L: Locks, D: Destination<L>> RunOffer for QueueRun<'_, '_, L, D> {
    fn passes(&self, k: usize, dfeat: u64) -> bool {
        self.qp
            .frame_of(self.run[k])
            .is_some_and(|f| gso::plan(&f.hdr, dfeat) == Delivery::PassThrough)
    }

    fn offer(&mut self, ks: Range<usize>) {
        let qp = &mut *self.qp;
        let set = Run {
            ids: &self.run[ks.clone()],
            burst: &qp.burst,
            held: &qp.held,
        };
        let mut src = SrcGrants {
            table: self.cx.grants(),
            hint: &mut qp.hint,
        };
        let fates = &mut qp.fates[ks];
        self.dest.deliver(self.q, &mut src, &set, fates, &qp.waker);
    }

    fn offer_soft(&mut self, k: usize, dfeat: u64) -> Fate {
        self.qp
            .deliver_soft(self.cx, self.dest, self.q, self.run[k], dfeat)
    }

    fn fates(&mut self) -> &mut [Fate] {
        &mut self.qp.fates
    }
}

fn empty() -> FrameSrc<'static> {
    FrameSrc {
        hdr: HdrWords::PLAIN,
        len: 0,
        data: Data::Local(&[]),
    }
}

impl QueuePair {
    /// Delivers to port `d` everything waiting for it: its held-back frames, then this
    /// burst's unicast frames to it and flooded frames, queue by queue in order.
    pub(super) fn deliver_to<L: Locks>(&mut self, cx: &PortCtx<'_, L>, d: usize, stats: &TxStats) {
        let Some(port) = cx.sw().ports.get(d) else {
            return;
        };
        match &port.kind {
            PortKind::Tap(t) => self.deliver_to_dest(cx, d, &TapDest::new(port, t), stats),
            PortKind::Guest => {
                if let Some(dest) = GuestPort::deferred(cx.fabric, d) {
                    self.deliver_to_dest(cx, d, &dest, stats);
                }
            }
        }
    }

    /// [`QueuePair::deliver_to`] for destination `dest` (port `d`).
    fn deliver_to_dest<L: Locks, D: Destination<L>>(
        &mut self,
        cx: &PortCtx<'_, L>,
        d: usize,
        dest: &D,
        stats: &TxStats,
    ) {
        if self.deliver_whole_burst(cx, d, dest) {
            return;
        }
        self.ids.clear();
        self.ids.extend(self.held.for_dest(d).map(FrameId::Held));
        for (i, f) in self.burst.frames.iter().enumerate() {
            match f.route {
                Route::Port(p) if p == d => self.ids.push(FrameId::Burst(i)),
                Route::Flood if d != cx.port => self.ids.push(FrameId::Burst(i)),
                _ => {}
            }
        }
        if self.ids.is_empty() {
            return;
        }
        let mut queues = std::mem::take(&mut self.queues);
        pick_queues(
            dest,
            self.ids.iter().map(|&id| self.key_of(id)),
            &mut queues,
        );
        self.queues = queues;
        // Queue by queue, in order of first appearance; each queue's frames in order.
        let ids = std::mem::take(&mut self.ids);
        let mut run = std::mem::take(&mut self.run);
        while let Some(q) = next_run(&ids, &mut self.queues, &mut run) {
            self.fates.clear();
            self.fates.resize(run.len(), Fate::NotReady);
            if let Some(q) = q {
                let dfeat = dest.features();
                let n = run.len();
                offer_run(
                    &mut QueueRun {
                        qp: self,
                        cx,
                        dest,
                        q,
                        run: &run,
                    },
                    n,
                    dfeat,
                );
                self.mark_staged(d, q);
            }
            self.apply(cx, d, &run, stats);
        }
        self.ids = ids;
        self.run = run;
    }

    /// The common case at full load: every frame of the burst is for port `d`, unicast, as
    /// it is, and for one of its queues, and no frame waits for `d`. Delivered straight from
    /// the burst's records (no frame ids, no runs: 64 B / 1 pair 69-70 -> 62-64 ns per frame,
    /// 1500 B 96-98 -> 90-91, alternating runs, docs/benchmarks.md eighth round);
    /// returns false when the case does not apply.
    fn deliver_whole_burst<L: Locks, D: Destination<L>>(
        &mut self,
        cx: &PortCtx<'_, L>,
        d: usize,
        dest: &D,
    ) -> bool {
        let frames = &self.burst.frames;
        let Some(first) = frames.first() else {
            return false;
        };
        if self.held.waiting_for(d) || !dest.port().connected.load(Ordering::Acquire) {
            return false;
        }
        let Some(q) = dest.pick_queue(first.key) else {
            return false;
        };
        let dfeat = dest.features();
        let one_queue = dest.port().enabled_pairs() == 1;
        // A frame with the first one's steering key goes to its queue (under `--rx-steer
        // queue` every frame of a burst has the sending queue's key): no queue picked per
        // frame (a division and a walk over the enabled queues; 8 pairs, 64 B, alternating runs:
        // 75-76 -> 71-74 ns per frame).
        let whole = frames.iter().all(|f| {
            f.route == Route::Port(d)
                && (one_queue || f.key == first.key || dest.pick_queue(f.key) == Some(q))
                && gso::plan(&f.hdr, dfeat) == Delivery::PassThrough
        });
        if !whole {
            return false;
        }
        self.fates.clear();
        self.fates.resize(frames.len(), Fate::NotReady);
        let set = WholeBurst(&self.burst);
        let mut src = SrcGrants {
            table: cx.grants(),
            hint: &mut self.hint,
        };
        dest.deliver(q, &mut src, &set, &mut self.fates, &self.waker);
        self.mark_staged(d, q);
        for i in 0..self.fates.len() {
            self.settle_unicast(cx, d, i, self.fates[i]);
        }
        true
    }

    /// Queue `q` of port `d` has frames of this burst to publish in step C.
    fn mark_staged(&mut self, d: usize, q: usize) {
        if !self.staged.contains(&(d, q)) {
            self.staged.push((d, q));
        }
    }

    fn key_of(&self, id: FrameId) -> u32 {
        match id {
            FrameId::Burst(k) => self.burst.frames.get(k).map_or(0, |f| f.key),
            FrameId::Held(k) => self.held.get(k).map_or(0, |h| h.frame.key),
        }
    }

    fn frame_of(&self, id: FrameId) -> Option<&Frame> {
        match id {
            FrameId::Burst(k) => self.burst.frames.get(k),
            FrameId::Held(k) => self.held.get(k).map(|h| &h.frame),
        }
    }

    /// A frame the receiver cannot take as it is ([`soft`](crate::datapath::soft)):
    /// prepared under the source guard, then delivered as complete frames.
    fn deliver_soft<L: Locks, D: Destination<L>>(
        &mut self,
        cx: &PortCtx<'_, L>,
        dest: &D,
        q: usize,
        id: FrameId,
        dfeat: u64,
    ) -> Fate {
        let Some(f) = self.frame_of(id).copied() else {
            return Fate::Dropped(DropReason::BadChain);
        };
        let data = match id {
            FrameId::Burst(k) => self.burst.src(k).data,
            FrameId::Held(k) => match self.held.get(k) {
                Some(h) => h.src().data,
                None => return Fate::Dropped(DropReason::BadChain),
            },
        };
        let prepared = {
            let g = cx.grants().read();
            self.soft.prepare(&g, &mut self.hint, data, &f, dfeat)
        };
        if let Err(r) = prepared {
            return Fate::Dropped(r);
        }
        let (set, fates) = self.soft.output();
        let mut src = SrcGrants {
            table: cx.grants(),
            hint: &mut self.hint,
        };
        dest.deliver(q, &mut src, &set, fates, &self.waker);
        Soft::fold(fates)
    }

    /// Applies the destination's verdicts on `run` (frames for port `d`).
    fn apply<L: Locks>(&mut self, cx: &PortCtx<'_, L>, d: usize, run: &[FrameId], stats: &TxStats) {
        for (&id, &fate) in run.iter().zip(&self.fates) {
            match id {
                FrameId::Held(k) => match fate {
                    Fate::Delivered => self.held.finish(k, None, stats),
                    // Its queue went away while it waited for room there.
                    Fate::NotReady => self.held.finish(k, Some(DropReason::RxFullTimeout), stats),
                    Fate::Dropped(r) => self.held.finish(k, Some(r), stats),
                    Fate::Full | Fate::Pending => {}
                },
                FrameId::Burst(i) => {
                    let (Some(f), Some(o)) = (self.burst.frames.get(i), self.outcome.get_mut(i))
                    else {
                        continue;
                    };
                    if f.route == Route::Flood {
                        // One copy of a flooded frame: a full or broken port loses its copy.
                        match fate {
                            Fate::Full => stats.count_drop(DropReason::FloodFull),
                            Fate::Dropped(r) => stats.count_drop(r),
                            _ => {}
                        }
                        continue;
                    }
                    *o = unicast_outcome(cx, d, f, fate);
                }
            }
        }
    }

    /// Applies the verdict of port `d` on burst frame `i`, a unicast frame.
    fn settle_unicast<L: Locks>(&mut self, cx: &PortCtx<'_, L>, d: usize, i: usize, fate: Fate) {
        if let (Some(f), Some(o)) = (self.burst.frames.get(i), self.outcome.get_mut(i)) {
            *o = unicast_outcome(cx, d, f, fate);
        }
    }
}
