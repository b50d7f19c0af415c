//! The receiving side of a switch port, as the sending side sees it: a [`Destination`]
//! takes an ordered set of frames for one of its queues and says what became of each.
//!
//! A guest port ([`GuestPort`]: vhost-user RX rings under `--queue-lock`, copies under both
//! ports' grant guards) is one kind of destination; a tap port
//! ([`TapDest`](crate::datapath::tapdest::TapDest): `writev` into a tap queue, the sender
//! registered for room when the queue is full) is the other.
//!
//! Lock-hold bound: a guest port delivers at most
//! [`HOLD_BYTES`](crate::datapath::rxq::HOLD_BYTES) of frame data per queue-lock hold; a
//! larger share is delivered in several holds.

use crate::datapath::rxq::Waker;
use crate::datapath::{Fate, FrameSet, FrameSrc};
use crate::switch::{Fabric, Grants, Locks, Port, PortFabric};
use pvnet_grant::{read_pair, RegionHint};
use pvnet_locks::family::MutexApi;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vhost_user_backend::VringT;

/// The RX queue of each of a delivery's frames to `dest` (by steering key; `None` when the
/// port is not connected or has no queue attached), with "not taken yet", into `queues` —
/// what [`next_run`] walks.
pub fn pick_queues<L: Locks, D: Destination<L> + ?Sized>(
    dest: &D,
    keys: impl Iterator<Item = u32>,
    queues: &mut Vec<(Option<usize>, bool)>,
) {
    let connected = dest.port().connected.load(Ordering::Acquire);
    queues.clear();
    queues.extend(keys.map(|k| (connected.then(|| dest.pick_queue(k)).flatten(), false)));
}

/// The next run of a delivery to one port: the first of `ids` not yet taken and every
/// later one bound for the same queue (`queues[k]`: id `k`'s queue, and whether it was
/// taken), in order; returns that queue (`None`: no queue attached), or `None` once every id
/// was taken. Runs come queue by queue, in order of first appearance, so a flow is never
/// reordered.
pub fn next_run<T: Copy>(
    ids: &[T],
    queues: &mut [(Option<usize>, bool)],
    run: &mut Vec<T>,
) -> Option<Option<usize>> {
    let k = queues.iter().position(|&(_, taken)| !taken)?;
    let q = queues[k].0;
    run.clear();
    for (&id, (qj, taken)) in ids.iter().zip(queues.iter_mut()).skip(k) {
        if !*taken && *qj == q {
            *taken = true;
            run.push(id);
        }
    }
    Some(q)
}

/// A sender's run of frames for one destination queue, as [`offer_run`] walks it (a guest
/// queue pair's burst and held-back frames, a tap queue's frames).
pub trait RunOffer {
    /// Whether frame `k` of the run goes to a receiver with features `dfeat` as it is.
    fn passes(&self, k: usize, dfeat: u64) -> bool;
    /// Offers frames `ks` of the run in one delivery; their fates go to `fates()[ks]`.
    fn offer(&mut self, ks: Range<usize>);
    /// Offers frame `k` through the software-offload path; returns its fate.
    fn offer_soft(&mut self, k: usize, dfeat: u64) -> Fate;
    /// The run's fates, one per frame.
    fn fates(&mut self) -> &mut [Fate];
}

/// Offers the `n` frames of `run` to a receiver with features `dfeat`, in order: stretches
/// of frames it takes as they are in one delivery each, frames that need a software offload
/// one by one. After a frame that finds the queue full, every later frame is full too (none
/// is offered: a flow is never reordered).
pub fn offer_run(run: &mut impl RunOffer, n: usize, dfeat: u64) {
    let mut k = 0;
    while k < n {
        let start = k;
        while k < n && run.passes(k, dfeat) {
            k += 1;
        }
        if k > start {
            run.offer(start..k);
            if run.fates()[k - 1] == Fate::Full {
                run.fates()[k..n].fill(Fate::Full);
                return;
            }
        }
        if k < n {
            let fate = run.offer_soft(k, dfeat);
            run.fates()[k] = fate;
            if fate == Fate::Full {
                run.fates()[k..n].fill(Fate::Full);
                return;
            }
            k += 1;
        }
    }
}

/// The sending side's grants, for the copy (and a hint into them).
pub struct SrcGrants<'a, L: Locks> {
    pub table: &'a Grants<L>,
    pub hint: &'a mut RegionHint,
}

/// The receiving side of a port (see the module documentation).
pub trait Destination<L: Locks> {
    /// The switch port behind this destination.
    fn port(&self) -> &Port;
    /// The virtio-net features the receiver negotiated (decides offload pass-through).
    fn features(&self) -> u64 {
        self.port().features.load(Ordering::Acquire)
    }
    /// The queue that receives frames with steering key `key` (see
    /// [`Port::pick_queue`]), or `None` when no queue is attached.
    fn pick_queue(&self, key: u32) -> Option<usize> {
        self.port().pick_queue(key)
    }
    /// Offers `frames`, in order, to queue `q`; writes each one's fate into `fates`. A frame
    /// that does not fit makes it and every later frame [`Fate::Full`] and registers `waker`
    /// to be woken when room appears.
    fn deliver(
        &self,
        q: usize,
        src: &mut SrcGrants<'_, L>,
        frames: &dyn FrameSet,
        fates: &mut [Fate],
        waker: &Arc<Waker>,
    );
    /// Makes what [`Destination::deliver`] left staged on queue `q` visible to the receiver
    /// (a guest port built [`GuestPort::deferred`]); nothing for destinations that deliver
    /// at once.
    fn publish(&self, _q: usize) {}
}

/// A guest port of the switch as a [`Destination`].
pub struct GuestPort<'a, L: Locks> {
    port: &'a Port,
    fabric: &'a PortFabric<L>,
    /// Deliveries stay staged until [`Destination::publish`].
    defer: bool,
}

impl<'a, L: Locks> GuestPort<'a, L> {
    /// Port `d` of `fabric`, if it exists; its guest sees each delivery when it is done.
    pub fn new(fabric: &'a Fabric<L>, d: usize) -> Option<Self> {
        Some(GuestPort {
            port: fabric.sw.ports.get(d)?,
            fabric: fabric.ports.get(d)?,
            defer: false,
        })
    }

    /// Port `d` of `fabric`, if it exists; its guest sees deliveries at
    /// [`Destination::publish`] (a guest sender publishes after returning its TX chains).
    pub fn deferred(fabric: &'a Fabric<L>, d: usize) -> Option<Self> {
        Some(GuestPort {
            defer: true,
            ..Self::new(fabric, d)?
        })
    }

    /// Whether a guest is connected.
    pub fn connected(&self) -> bool {
        self.port.connected.load(Ordering::Acquire)
    }
}

/// Frames `off..off + n` of another set.
struct Window<'s> {
    set: &'s dyn FrameSet,
    off: usize,
    n: usize,
}

impl FrameSet for Window<'_> {
    fn count(&self) -> usize {
        self.n
    }
    fn get(&self, i: usize) -> FrameSrc<'_> {
        self.set.get(self.off + i)
    }
    fn frame_len(&self, i: usize) -> usize {
        self.set.frame_len(self.off + i)
    }
}

impl<L: Locks> Destination<L> for GuestPort<'_, L> {
    fn port(&self) -> &Port {
        self.port
    }

    fn deliver(
        &self,
        q: usize,
        src: &mut SrcGrants<'_, L>,
        frames: &dyn FrameSet,
        fates: &mut [Fate],
        waker: &Arc<Waker>,
    ) {
        let n = frames.count().min(fates.len());
        let (Some(lock), Some(slot)) = (self.fabric.rings.get(q), self.port.rx.get(q)) else {
            fates[..n].fill(Fate::NotReady);
            return;
        };
        // Both guards in address order (never wait for a grant lock holding a queue lock).
        let pair = read_pair(src.table, &self.fabric.grants);
        let mut call = None;
        let mut start = 0;
        fates[..n].fill(Fate::Pending);
        while start < n {
            let w = Window {
                set: frames,
                off: start,
                n: n - start,
            };
            // The first hold takes the set as it is (one dynamic call per frame access, not two).
            let set: &dyn FrameSet = if start == 0 { frames } else { &w };
            // One hold: at most HOLD_BYTES of frames (the ring stops there, leaving the rest
            // Pending for the next hold).
            let mut ring = lock.lock();
            let Some(r) = ring.as_mut() else {
                drop(ring);
                fates[start..n].fill(Fate::NotReady);
                break;
            };
            r.deliver(
                (pair.src(), &mut *src.hint),
                pair.dst(),
                set,
                &mut fates[start..n],
                slot,
                waker,
            );
            if !self.defer {
                call = r.publish(pair.dst(), slot).or(call);
            }
            drop(ring);
            match fates[start..n].iter().position(|f| *f == Fate::Pending) {
                Some(p) if fates[n - 1] != Fate::Full => start += p.max(1),
                _ => break,
            }
        }
        drop(pair);
        // One used-buffer notification per ring per delivery, after every lock is released.
        if let Some(v) = call {
            let _ = v.signal_used_queue();
        }
    }

    fn publish(&self, q: usize) {
        let (Some(lock), Some(slot)) = (self.fabric.rings.get(q), self.port.rx.get(q)) else {
            return;
        };
        // Lock order: grant guard, then queue lock.
        let g = self.fabric.grants.read();
        let mut ring = lock.lock();
        let call = ring.as_mut().and_then(|r| r.publish(&g, slot));
        drop(ring);
        drop(g);
        if let Some(v) = call {
            let _ = v.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{next_run, offer_run, RunOffer, Window};
    use crate::datapath::{Data, Fate, FrameSet, FrameSrc};
    use crate::net::HdrWords;
    use std::ops::Range;

    /// Frames of lengths 10, 11, 12, ...
    struct Lens(usize);

    impl FrameSet for Lens {
        fn count(&self) -> usize {
            self.0
        }
        fn get(&self, i: usize) -> FrameSrc<'_> {
            FrameSrc {
                hdr: HdrWords::PLAIN,
                len: 10 + i,
                data: Data::Local(&[]),
            }
        }
        fn frame_len(&self, i: usize) -> usize {
            10 + i
        }
    }

    #[test]
    fn a_window_says_the_lengths_of_its_own_frames() {
        let all = Lens(8);
        let w = Window {
            set: &all,
            off: 3,
            n: 5,
        };
        for i in 0..w.count() {
            assert_eq!(w.frame_len(i), 13 + i);
            assert_eq!(w.frame_len(i), w.get(i).len);
        }
    }

    /// A run whose frames pass through unless `soft[k]`; the queue has room for `room`
    /// frames; records what was offered.
    struct Fake {
        soft: Vec<bool>,
        room: usize,
        fates: Vec<Fate>,
        offers: Vec<String>,
    }

    impl Fake {
        fn take(&mut self) -> Fate {
            if self.room == 0 {
                return Fate::Full;
            }
            self.room -= 1;
            Fate::Delivered
        }
    }

    impl RunOffer for Fake {
        fn passes(&self, k: usize, _: u64) -> bool {
            !self.soft[k]
        }
        fn offer(&mut self, ks: Range<usize>) {
            self.offers.push(format!("{}..{}", ks.start, ks.end));
            for k in ks {
                // A destination stops at the first frame that does not fit.
                let full = k > 0 && self.fates[k - 1] == Fate::Full;
                self.fates[k] = if full { Fate::Full } else { self.take() };
            }
        }
        fn offer_soft(&mut self, k: usize, _: u64) -> Fate {
            self.offers.push(format!("soft {k}"));
            self.take()
        }
        fn fates(&mut self) -> &mut [Fate] {
            &mut self.fates
        }
    }

    fn fake(soft: &[bool], room: usize) -> Fake {
        Fake {
            soft: soft.to_vec(),
            room,
            fates: vec![Fate::NotReady; soft.len()],
            offers: Vec::new(),
        }
    }

    #[test]
    fn a_run_is_offered_in_stretches_and_soft_frames_in_order() {
        let mut f = fake(&[false, false, true, true, false], 9);
        offer_run(&mut f, 5, 0);
        assert_eq!(f.offers, ["0..2", "soft 2", "soft 3", "4..5"]);
        assert!(f.fates.iter().all(|&x| x == Fate::Delivered));
    }

    #[test]
    fn nothing_after_a_full_frame_is_offered() {
        // Full inside a stretch: the soft frame and the stretch after it are not offered.
        let mut f = fake(&[false, false, true, false], 1);
        offer_run(&mut f, 4, 0);
        assert_eq!(f.offers, ["0..2"]);
        assert_eq!(
            f.fates,
            [Fate::Delivered, Fate::Full, Fate::Full, Fate::Full]
        );
        // Full at a soft frame.
        let mut f = fake(&[false, true, false], 1);
        offer_run(&mut f, 3, 0);
        assert_eq!(f.offers, ["0..1", "soft 1"]);
        assert_eq!(f.fates, [Fate::Delivered, Fate::Full, Fate::Full]);
    }

    #[test]
    fn runs_come_queue_by_queue_in_order_of_first_appearance() {
        let ids = [10, 11, 12, 13, 14, 15];
        let mut queues = vec![
            (Some(2), false),
            (Some(0), false),
            (Some(2), false),
            (None, false),
            (Some(0), false),
            (Some(2), false),
        ];
        let mut run = Vec::new();
        let mut got = Vec::new();
        while let Some(q) = next_run(&ids, &mut queues, &mut run) {
            got.push((q, run.clone()));
        }
        assert_eq!(
            got,
            [
                (Some(2), vec![10, 12, 15]),
                (Some(0), vec![11, 14]),
                (None, vec![13]),
            ]
        );
        assert!(queues.iter().all(|&(_, taken)| taken));
    }
}
