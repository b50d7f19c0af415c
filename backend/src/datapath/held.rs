//! Frames held back by full destinations, per TX queue.
//!
//! A unicast frame whose destination queue is full is not dropped: its TX chain stays
//! unconsumed (not returned to the guest) and the frame waits here, with its buffers, while
//! later frames of the same TX queue to other destinations go on. Frames to a destination
//! that already has frames waiting are held behind them, so a flow is never reordered.
//! Held frames are offered again before any new frame to the same destination, when the
//! destination's guest posts RX buffers (the sender is woken), and when their time is up:
//! after `Config::backpressure_bound` they are dropped (`rx_full_timeout`) and the queue is
//! marked stalled — at once, instead, when the chains they keep from the sender (under
//! IN_ORDER with every chain behind them) hold half its TX ring's worth of buffers while the
//! sender sends to other ports too (`QueuePair::tx_burst`): a full receiver does not take
//! the sender's ring from its other traffic.
//!
//! Bounded: at most [`HELD_FRAMES`] frames and about [`HELD_SEGS`] buffers per TX queue
//! (the fetch step takes no more than the room left); a queue that reaches the bound takes
//! no new chains until frames leave.

use crate::datapath::burst::{Frame, Room};
use crate::datapath::{Data, FrameSrc, Seg, CHECKED};
use crate::stats::{DropReason, TxStats};
use std::time::{Duration, Instant};

/// Most frames held back per TX queue.
pub const HELD_FRAMES: usize = 256;
/// Buffers held back per TX queue beyond which no new chain is fetched.
pub const HELD_SEGS: usize = 8192;

/// One held-back frame.
pub struct Held {
    pub frame: Frame,
    pub dest: usize,
    segs: Vec<Seg>,
    /// The frame's first bytes as they were checked (see [`CHECKED`]): the guest may have
    /// rewritten its buffer since.
    head: [u8; CHECKED],
    head_len: u8,
    since: Instant,
    /// Delivered or dropped: its chain goes back to the guest at the next publication.
    done: bool,
}

impl Held {
    /// The frame as a destination sees it: its checked head, the rest from the guest's
    /// buffers.
    pub fn src(&self) -> FrameSrc<'_> {
        FrameSrc {
            hdr: self.frame.hdr.into(),
            len: self.frame.len as usize,
            data: Data::Guest {
                head: &self.head[..usize::from(self.head_len)],
                segs: &self.segs,
                skip: usize::from(self.frame.hl),
            },
        }
    }

    /// Whether it was delivered or dropped.
    pub fn done(&self) -> bool {
        self.done
    }
}

/// The held-back frames of one TX queue.
#[derive(Default)]
pub struct HeldBack {
    list: Vec<Held>,
    spare: Vec<Vec<Seg>>,
    segs: usize,
}

impl HeldBack {
    /// Number of frames held (done ones included until [`HeldBack::release`]).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Frame `k`.
    pub fn get(&self, k: usize) -> Option<&Held> {
        self.list.get(k)
    }

    /// The buffers of the frames held (done ones included until [`HeldBack::release`]).
    pub fn bufs(&self) -> usize {
        self.segs
    }

    /// What the next fetch may take.
    pub fn room(&self) -> Room {
        Room {
            frames: HELD_FRAMES.saturating_sub(self.list.len()),
            segs: HELD_SEGS.saturating_sub(self.segs).max(1),
        }
    }

    /// Ports with frames waiting, as a bit mask.
    pub fn dests(&self) -> u64 {
        self.list
            .iter()
            .filter(|h| !h.done)
            .fold(0, |m, h| m | 1u64.checked_shl(h.dest as u32).unwrap_or(0))
    }

    /// Ports of every frame held, done ones included (until [`HeldBack::release`]).
    pub fn all_dests(&self) -> u64 {
        self.list
            .iter()
            .fold(0, |m, h| m | 1u64.checked_shl(h.dest as u32).unwrap_or(0))
    }

    /// Whether frames to port `d` are waiting.
    pub fn waiting_for(&self, d: usize) -> bool {
        self.list.iter().any(|h| !h.done && h.dest == d)
    }

    /// Indexes of the frames waiting for port `d`, in order.
    pub fn for_dest(&self, d: usize) -> impl Iterator<Item = usize> + '_ {
        self.list
            .iter()
            .enumerate()
            .filter(move |(_, h)| !h.done && h.dest == d)
            .map(|(k, _)| k)
    }

    /// Holds `frame` (its buffers `segs`) back for port `dest`.
    /// Holds `frame` (its buffers `segs`, its first bytes as checked `head`, at most
    /// [`CHECKED`] of them kept) for port `dest`.
    pub fn hold(&mut self, frame: Frame, segs: &[Seg], head: &[u8], dest: usize, now: Instant) {
        let mut h = [0u8; CHECKED];
        let n = head.len().min(CHECKED);
        h[..n].copy_from_slice(&head[..n]);
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(segs);
        self.segs += v.len();
        let mut frame = frame;
        frame.seg0 = 0;
        self.list.push(Held {
            frame,
            dest,
            segs: v,
            head: h,
            // n <= CHECKED, a u8.
            head_len: n as u8,
            since: now,
            done: false,
        });
    }

    /// Marks frame `k` delivered (or dropped, counting `reason`).
    pub fn finish(&mut self, k: usize, reason: Option<DropReason>, stats: &TxStats) {
        if let Some(h) = self.list.get_mut(k) {
            if !h.done {
                h.done = true;
                if let Some(r) = reason {
                    stats.count_drop(r);
                }
            }
        }
    }

    /// Drops every frame held longer than `bound` (counted `rx_full_timeout`); calls
    /// `stalled(dest, key)` for each, so that the caller marks the destination queue.
    pub fn expire(
        &mut self,
        now: Instant,
        bound: Duration,
        stats: &TxStats,
        mut stalled: impl FnMut(usize, u32),
    ) {
        for h in self.list.iter_mut().filter(|h| !h.done) {
            if now.saturating_duration_since(h.since) >= bound {
                h.done = true;
                stats.count_drop(DropReason::RxFullTimeout);
                stalled(h.dest, h.frame.key);
            }
        }
    }

    /// When the oldest waiting frame's time is up.
    pub fn deadline(&self, bound: Duration) -> Option<Instant> {
        self.list
            .iter()
            .filter(|h| !h.done)
            .map(|h| h.since + bound)
            .min()
    }

    /// Hands the chains of done frames to `finished` (which stages them as used) and forgets
    /// those frames.
    pub fn release(&mut self, mut finished: impl FnMut(u16)) {
        let mut k = 0;
        while k < self.list.len() {
            if self.list[k].done {
                let h = self.list.remove(k);
                finished(h.frame.head);
                self.segs -= h.segs.len();
                self.spare.push(h.segs);
            } else {
                k += 1;
            }
        }
    }

    /// Drops every held frame (the sender's TX ring stops while they wait for room): all
    /// chains are staged as used; counted `rx_full_timeout` (they were held back by a full
    /// receiver and their wait ended without room).
    pub fn drop_all(&mut self, finished: impl FnMut(u16), stats: &TxStats) {
        for k in 0..self.list.len() {
            self.finish(k, Some(DropReason::RxFullTimeout), stats);
        }
        self.release(finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::burst::Route;
    use crate::net::VirtioNetHdr;

    fn frame(head: u16) -> Frame {
        Frame {
            head,
            seg0: 7,
            nsegs: 1,
            hdr: VirtioNetHdr::plain(),
            hl: 12,
            len: 60,
            key: u32::from(head),
            route: Route::Port(1),
        }
    }

    #[test]
    fn held_frames_wait_in_order_expire_and_go_back() {
        let stats = TxStats::default();
        let mut h = HeldBack::default();
        let t0 = Instant::now();
        let seg = [Seg {
            gpa: 0x1000,
            len: 72,
        }];
        let eth = [0xaa; 14];
        h.hold(frame(1), &seg, &eth, 1, t0);
        h.hold(frame(2), &seg, &eth, 2, t0 + Duration::from_millis(10));
        h.hold(frame(3), &seg, &eth, 1, t0 + Duration::from_millis(20));
        assert_eq!(h.for_dest(1).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(h.dests(), 0b110);
        assert_eq!(h.room().frames, HELD_FRAMES - 3);
        assert!(matches!(
            h.get(0).map(|x| x.src().data),
            Some(Data::Guest { skip: 12, head, .. }) if head == eth
        ));
        // Frame 1 delivered; the bound passes for frame 2 only.
        h.finish(0, None, &stats);
        let bound = Duration::from_millis(100);
        assert_eq!(h.deadline(bound), Some(t0 + Duration::from_millis(110)));
        let mut stalled = Vec::new();
        h.expire(t0 + Duration::from_millis(115), bound, &stats, |d, key| {
            stalled.push((d, key))
        });
        assert_eq!(stalled, [(2, 2)]);
        assert_eq!(stats.drops(DropReason::RxFullTimeout), 1);
        let mut used = Vec::new();
        h.release(|head| used.push(head));
        assert_eq!((used.as_slice(), h.len()), (&[1u16, 2][..], 1));
        assert!(h.waiting_for(1) && !h.waiting_for(2));
        h.drop_all(|head| used.push(head), &stats);
        assert_eq!((used.as_slice(), h.len()), (&[1u16, 2, 3][..], 0));
        assert_eq!(stats.drops(DropReason::RxFullTimeout), 2);
    }
}
