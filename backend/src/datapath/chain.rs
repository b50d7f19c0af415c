//! Descriptor chains to segment lists (DPDK's `fill_vec_buf`): one walk over a chain that
//! virtio-queue yields (direct or through an indirect table), checking what a guest controls —
//! direction of every descriptor, number of descriptors, total length, a chain cut short by an
//! invalid `next` or a loop — and appending the non-empty buffers to a segment list.
//!
//! The walk stops after [`MAX_CHAIN_DESCS`] descriptors (Linux vhost-net's limit), so a chain
//! costs at most that many descriptor reads whatever its table claims; longer chains are
//! refused with [`ChainError::TooLong`]. Nothing here touches a buffer: the segments are
//! guest addresses, checked against the grant table later, by the code that copies.
//!
//! [`read_chain`] is pure apart from the descriptor reads it makes through the chain's
//! memory, which makes it the entry point for fuzzing chain validation (build a ring in a
//! `virtio_queue::mock::MockSplitQueue`, pop a chain, call it).

use crate::datapath::Seg;
use crate::stats::Drop;
use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

/// Most descriptors one chain may have (Linux vhost-net's `UIO_MAXIOV`).
pub const MAX_CHAIN_DESCS: usize = 1024;

/// Which way the buffers of a chain go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// A TX chain: every descriptor must be device-readable.
    Readable,
    /// An RX chain: every descriptor must be device-writable.
    Writable,
}

/// Why a chain is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No descriptor could be read (bad head, unreadable or malformed indirect table).
    #[error("empty or unreadable chain")]
    Empty,
    /// The chain ends on a descriptor that still has `NEXT` (invalid `next`, a loop, or more
    /// descriptors than the table holds).
    #[error("chain cut short (loop or invalid next)")]
    Cut,
    /// A descriptor goes the wrong way (writable in a TX chain, readable in an RX chain).
    #[error("descriptor of the wrong direction")]
    Direction,
    /// More than [`MAX_CHAIN_DESCS`] descriptors.
    #[error("more than {MAX_CHAIN_DESCS} descriptors")]
    TooLong,
    /// More bytes than the caller accepts.
    #[error("chain longer than the largest frame")]
    TooLarge,
}

impl ChainError {
    /// The drop reason counted for a refused TX chain.
    pub fn tx_drop(self) -> Drop {
        match self {
            ChainError::Empty => Drop::BadChain,
            ChainError::Cut => Drop::ChainLoop,
            ChainError::Direction => Drop::WritableInTx,
            ChainError::TooLong => Drop::ChainTooLong,
            ChainError::TooLarge => Drop::TooLarge,
        }
    }
}

/// What a chain holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainInfo {
    /// Head descriptor index (what the used ring returns).
    pub head: u16,
    /// Total bytes of its buffers.
    pub bytes: usize,
    /// Number of non-empty buffers appended to the segment list.
    pub segs: usize,
}

/// Walks `chain`, appending its non-empty buffers to `segs` (the chain's segments are
/// `segs[len_before..]`); on error `segs` is restored to its length before the call.
///
/// The checks, in the order their errors win: a chain cut short ([`ChainError::Cut`]) or
/// longer than [`MAX_CHAIN_DESCS`] ([`ChainError::TooLong`]), then a chain without any
/// readable descriptor ([`ChainError::Empty`]), then the first wrong-direction descriptor,
/// then a total above `max_bytes`.
pub fn read_chain<M>(
    chain: DescriptorChain<M>,
    dir: Dir,
    max_bytes: usize,
    segs: &mut Vec<Seg>,
) -> Result<ChainInfo, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let start = segs.len();
    let head = chain.head_index();
    let mut count = 0usize;
    let mut bytes = 0usize;
    let mut cut = false;
    let mut first_err = None;
    for d in chain {
        count += 1;
        if count > MAX_CHAIN_DESCS {
            segs.truncate(start);
            return Err(ChainError::TooLong);
        }
        cut = d.has_next();
        if d.is_write_only() != (dir == Dir::Writable) {
            first_err.get_or_insert(ChainError::Direction);
            continue;
        }
        if d.len() == 0 {
            continue;
        }
        bytes = bytes.saturating_add(d.len() as usize);
        if bytes > max_bytes {
            first_err.get_or_insert(ChainError::TooLarge);
            continue;
        }
        if first_err.is_none() {
            segs.push(Seg {
                gpa: d.addr().0,
                len: d.len(),
            });
        }
    }
    let err = if cut {
        Some(ChainError::Cut)
    } else if count == 0 {
        Some(ChainError::Empty)
    } else {
        first_err
    };
    match err {
        Some(e) => {
            segs.truncate(start);
            Err(e)
        }
        None => Ok(ChainInfo {
            head,
            bytes,
            segs: segs.len() - start,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).expect("memory")
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Runs `read_chain` on the first chain of a 16-entry mock ring holding `descs` (head 0).
    fn run(
        descs: &[RawDescriptor],
        dir: Dir,
        max: usize,
    ) -> (Result<ChainInfo, ChainError>, Vec<Seg>) {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(descs, 0).expect("chain");
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.iter(&m).expect("iter").next().expect("chain");
        let mut segs = vec![Seg { gpa: 1, len: 1 }];
        let r = read_chain(chain, dir, max, &mut segs);
        (r, segs)
    }

    #[test]
    fn good_chain_appends_non_empty_buffers() {
        let (r, segs) = run(
            &[
                desc(0x1000, 12, NEXT, 1),
                desc(0x2000, 0, NEXT, 2),
                desc(0x3000, 100, 0, 0),
            ],
            Dir::Readable,
            1000,
        );
        let info = r.expect("good");
        assert_eq!((info.head, info.bytes, info.segs), (0, 112, 2));
        assert_eq!(
            &segs[1..],
            &[
                Seg {
                    gpa: 0x1000,
                    len: 12
                },
                Seg {
                    gpa: 0x3000,
                    len: 100
                }
            ]
        );
    }

    #[test]
    fn each_bad_chain_has_its_error_and_leaves_segs_alone() {
        let cases: Vec<(Vec<RawDescriptor>, Dir, ChainError)> = vec![
            (
                vec![desc(0x1000, 12, WRITE, 0)],
                Dir::Readable,
                ChainError::Direction,
            ),
            (
                vec![desc(0x1000, 12, 0, 0)],
                Dir::Writable,
                ChainError::Direction,
            ),
            // A loop: 0 -> 1 -> 0 ...
            (
                vec![desc(0x1000, 12, NEXT, 1), desc(0x2000, 12, NEXT, 0)],
                Dir::Readable,
                ChainError::Cut,
            ),
            // `next` outside the table.
            (
                vec![desc(0x1000, 12, NEXT, 400)],
                Dir::Readable,
                ChainError::Cut,
            ),
            (
                vec![desc(0x1000, 2000, 0, 0)],
                Dir::Readable,
                ChainError::TooLarge,
            ),
            // Indirect table outside memory.
            (
                vec![desc(0x7_0000_0000, 64, INDIRECT, 0)],
                Dir::Readable,
                ChainError::Empty,
            ),
        ];
        for (descs, dir, want) in cases {
            let (r, segs) = run(&descs, dir, 1000);
            assert_eq!(r, Err(want), "{descs:?}");
            assert_eq!(segs.len(), 1, "segs restored");
        }
    }

    #[test]
    fn indirect_chain_longer_than_the_limit_is_refused_after_the_limit() {
        // An indirect table of 65,535 one-byte descriptors: refused after MAX_CHAIN_DESCS + 1
        // reads, not walked to its end.
        let m = mem();
        let table = 0x10_0000u64;
        let n = 65_535u32;
        for i in 0..n {
            let d = desc(0x20_0000 + u64::from(i), 1, NEXT, (i + 1) as u16);
            let d = if i + 1 == n {
                desc(0x20_0000, 1, 0, 0)
            } else {
                d
            };
            m.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
                .expect("indirect");
        }
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(table, 16 * n, INDIRECT, 0)], 0)
            .expect("head");
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.iter(&m).expect("iter").next().expect("chain");
        let mut segs = Vec::new();
        assert_eq!(
            read_chain(chain, Dir::Readable, usize::MAX, &mut segs),
            Err(ChainError::TooLong)
        );
        assert!(segs.is_empty());
        // At the limit: accepted.
        for i in 0..MAX_CHAIN_DESCS as u32 {
            let last = i + 1 == MAX_CHAIN_DESCS as u32;
            let d = desc(0x20_0000, 1, if last { 0 } else { NEXT }, (i + 1) as u16);
            m.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
                .expect("indirect");
        }
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(table, 16 * MAX_CHAIN_DESCS as u32, INDIRECT, 0)], 0)
            .expect("head");
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.iter(&m).expect("iter").next().expect("chain");
        let info = read_chain(chain, Dir::Readable, usize::MAX, &mut segs).expect("at limit");
        assert_eq!((info.segs, info.bytes), (MAX_CHAIN_DESCS, MAX_CHAIN_DESCS));
    }
}
