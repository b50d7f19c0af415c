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
                &w,
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
    use super::next_run;

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
