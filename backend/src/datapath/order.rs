//! In-order return of TX chains, for guests that negotiated `VIRTIO_F_IN_ORDER`.
//!
//! With IN_ORDER the device must return chains in the order the driver made them available
//! (virtio 1.1 §2.6.9; DPDK's virtio PMD then recycles descriptors as a sequence instead of a
//! free list). A switch returns a TX chain when its frame is delivered or dropped, and a
//! frame held back by a full destination ([`held`](crate::datapath::held)) keeps its chain
//! while later frames of the queue go on to other destinations. [`TxOrder`] keeps the order:
//! while a chain is held, the chains finished after it wait behind it, and are staged as used
//! (in ring order) when it finishes. Without IN_ORDER, or with nothing held, every chain is
//! staged at once — the common case costs one branch.
//!
//! Bounded by the ring: a chain is waiting here only while it is taken and not returned, so a
//! driver keeps at most a ring's worth here. One that republishes chains it has not got back
//! (breaking the ring's rules) could make the list grow; past a ring's worth, finished chains
//! are staged at once (that driver gets them out of order, no one else notices).

use crate::datapath::ring::UsedShadow;
use std::collections::VecDeque;

/// The TX chains of one queue between taken and returned, in ring order (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct TxOrder {
    in_order: bool,
    /// Ring size: the most chains a driver can have taken and not returned.
    cap: usize,
    /// Chains not yet staged, oldest first: head, whether finished, buffers; empty
    /// whenever no chain is held back.
    waiting: VecDeque<(u16, bool, u32)>,
    /// The buffers of the chains in `waiting`.
    kept_bufs: usize,
}

impl TxOrder {
    /// Follows the queue's negotiated features (IN_ORDER or not) and its size.
    pub fn set_in_order(&mut self, on: bool, ring_size: u16) {
        self.in_order = on;
        self.cap = usize::from(ring_size);
    }

    /// Chain `head` (taken after every chain given here before; `bufs` buffers) is
    /// finished: staged as used now, or behind the held chains taken before it.
    #[inline]
    pub fn finished(&mut self, head: u16, bufs: u32, used: &mut UsedShadow) {
        if self.waiting.is_empty() || self.waiting.len() >= self.cap {
            used.push(head, 0);
        } else {
            self.waiting.push_back((head, true, bufs));
            self.kept_bufs += bufs as usize;
        }
    }

    /// Chain `head` (taken after every chain given here before; `bufs` buffers) is held
    /// back.
    pub fn held(&mut self, head: u16, bufs: u32) {
        if self.in_order && self.waiting.len() < self.cap {
            self.waiting.push_back((head, false, bufs));
            self.kept_bufs += bufs as usize;
        }
    }

    /// Held chain `head` is finished: staged, with every finished chain after it up to the
    /// next held one.
    pub fn released(&mut self, head: u16, used: &mut UsedShadow) {
        match self
            .waiting
            .iter_mut()
            .find(|(h, done, _)| *h == head && !*done)
        {
            Some(e) => e.1 = true,
            // Held before IN_ORDER applied (or never taken here): nothing waits for it.
            None => {
                used.push(head, 0);
                return;
            }
        }
        while let Some(&(h, true, bufs)) = self.waiting.front() {
            self.waiting.pop_front();
            self.kept_bufs -= bufs as usize;
            used.push(h, 0);
        }
    }

    /// The buffers of the chains kept from the guest here (held ones, and finished ones
    /// behind them).
    pub fn kept_bufs(&self) -> usize {
        self.kept_bufs
    }

    /// Chains kept from the guest: held ones and those waiting behind them.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(used: &UsedShadow) -> Vec<u16> {
        used.staged().map(|(h, _)| h).collect()
    }

    #[test]
    fn chains_behind_a_held_one_wait_for_it_only_in_order() {
        for in_order in [false, true] {
            let mut o = TxOrder::default();
            o.set_in_order(in_order, 256);
            let mut used = UsedShadow::default();
            // Taken: 1, 2 (held), 3, 4 (held), 5.
            o.finished(1, 2, &mut used);
            o.held(2, 2);
            o.finished(3, 2, &mut used);
            o.held(4, 2);
            o.finished(5, 2, &mut used);
            if !in_order {
                assert_eq!(heads(&used), [1, 3, 5]);
                o.released(4, &mut used);
                o.released(2, &mut used);
                assert_eq!(heads(&used), [1, 3, 5, 4, 2]);
                continue;
            }
            assert_eq!(heads(&used), [1]);
            assert_eq!(o.waiting(), 4);
            assert_eq!(o.kept_bufs(), 8);
            // The later held chain finishes first: nothing moves.
            o.released(4, &mut used);
            assert_eq!(heads(&used), [1]);
            o.released(2, &mut used);
            assert_eq!(heads(&used), [1, 2, 3, 4, 5]);
            assert_eq!(o.waiting(), 0);
            assert_eq!(o.kept_bufs(), 0);
            // Nothing held: straight through.
            o.finished(6, 2, &mut used);
            assert_eq!(heads(&used), [1, 2, 3, 4, 5, 6]);
        }
    }

    #[test]
    fn a_driver_republishing_heads_cannot_grow_the_list_past_its_ring() {
        let mut o = TxOrder::default();
        o.set_in_order(true, 4);
        let mut used = UsedShadow::default();
        o.held(9, 2);
        // The same head over and over while 9 is held: at most a ring's worth waits.
        for _ in 0..1000 {
            o.finished(3, 2, &mut used);
        }
        assert_eq!(o.waiting(), 4);
        assert_eq!(used.len(), 997);
        o.released(9, &mut used);
        assert_eq!((o.waiting(), used.len()), (0, 1001));
    }
}
