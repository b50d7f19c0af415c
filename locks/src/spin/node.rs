//! Per-thread MCS queue nodes shared by the queued spinlocks (`qspin` and `pvqspin`).
//!
//! Linux keeps four `mcs_spinlock` nodes per CPU (one per context that may nest: task,
//! softirq, hardirq, NMI). Here every thread owns a [`NodeBlock`] of [`MAX_NODES`] nodes and
//! uses node `i` for its `i`-th concurrently running slow path (a thread may hold several
//! pvnet spinlocks while it waits for another one). A slow path nested deeper than
//! [`MAX_NODES`] spins on the lock word instead, as Linux does.
//!
//! A node is named by its *tail code* `(thread index + 1) << 18 | nesting << 16`, exactly the
//! bits the lock word stores, so a waiter finds its predecessor by decoding the old tail, and
//! the `next` link and the PV hash table store codes rather than pointers (no `unsafe`).
//! Blocks live in a global table indexed by the [`registry`](crate::registry) thread index
//! and are never freed: a stale code always names valid memory (possibly reused by a newer
//! thread with the same index, which the protocols tolerate).

use crate::sync::{AtomicU32, Ordering};
use crossbeam_utils::CachePadded;

/// Nodes per thread: nesting depth of concurrently running slow paths.
pub(crate) const MAX_NODES: usize = 4;

pub(crate) const TAIL_IDX_OFFSET: u32 = 16;
pub(crate) const TAIL_IDX_BITS: u32 = 2;
pub(crate) const TAIL_CPU_OFFSET: u32 = TAIL_IDX_OFFSET + TAIL_IDX_BITS;
pub(crate) const TAIL_MASK: u32 = !((1 << TAIL_IDX_OFFSET) - 1);

/// One MCS queue node (cache-padded by its block).
pub(crate) struct Node {
    /// Set to 1 by the predecessor when this node becomes the queue head.
    pub(crate) locked: AtomicU32,
    /// Tail code of the successor, 0 while there is none.
    pub(crate) next: AtomicU32,
    /// PV: running / halted / hashed; the futex word this thread sleeps on.
    pub(crate) state: AtomicU32,
    /// PV: bumped by the owner while it spins, read by its successor ("is it running?").
    pub(crate) heartbeat: AtomicU32,
}

impl Node {
    fn new() -> Self {
        Node {
            locked: AtomicU32::new(0),
            next: AtomicU32::new(0),
            state: AtomicU32::new(0),
            heartbeat: AtomicU32::new(0),
        }
    }
}

/// The nodes of one thread index.
pub(crate) struct NodeBlock {
    pub(crate) nodes: [CachePadded<Node>; MAX_NODES],
    /// Slow paths of the owning thread in progress. Only the owner touches it, so it is a
    /// plain (non-model-checked) atomic.
    pub(crate) count: std::sync::atomic::AtomicU32,
}

impl NodeBlock {
    fn new() -> Self {
        NodeBlock {
            nodes: [(); MAX_NODES].map(|_| CachePadded::new(Node::new())),
            count: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

/// Encodes (thread index, nesting level) as lock-word tail bits; never 0.
#[inline]
pub(crate) fn encode_tail(thread: usize, idx: usize) -> u32 {
    (((thread as u32) + 1) << TAIL_CPU_OFFSET) | ((idx as u32) << TAIL_IDX_OFFSET)
}

/// Splits non-zero tail bits into (thread index, nesting level).
#[inline]
pub(crate) fn decode_tail_parts(tail: u32) -> (usize, usize) {
    let cpu = (tail >> TAIL_CPU_OFFSET) as usize;
    let idx = ((tail >> TAIL_IDX_OFFSET) & ((1 << TAIL_IDX_BITS) - 1)) as usize;
    (cpu.wrapping_sub(1), idx)
}

/// The node named by non-zero tail bits.
#[inline]
pub(crate) fn decode_tail(tail: u32) -> &'static Node {
    let (thread, idx) = decode_tail_parts(tail);
    &published_block(thread).nodes[idx]
}

#[cfg(not(loom))]
mod table {
    use super::NodeBlock;
    use crate::registry::MAX_THREADS;
    use std::sync::atomic::{AtomicPtr, Ordering};

    static BLOCKS: [AtomicPtr<NodeBlock>; MAX_THREADS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_THREADS];

    pub(crate) fn thread_index() -> Option<usize> {
        crate::registry::current()
    }

    /// The calling thread's block (allocated on first use of this index, never freed).
    pub(crate) fn own_block(thread: usize) -> &'static NodeBlock {
        let slot = &BLOCKS[thread];
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: non-null pointers in BLOCKS come from `Box::leak` below and are never
            // freed or replaced, so they are valid for 'static.
            return unsafe { &*p };
        }
        let fresh: &'static mut NodeBlock = Box::leak(Box::new(NodeBlock::new()));
        match slot.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            // Only the thread owning this index installs its block, so this cannot race;
            // if it ever did, the leaked block is simply unused.
            // SAFETY: as above, the winner's pointer is a leaked, never-freed block.
            Err(p) => unsafe { &*p },
        }
    }

    /// The block of a thread whose tail was read from a lock word: it was installed (with
    /// Release) before that tail was published, and the tail was read with Acquire.
    pub(crate) fn published_block(thread: usize) -> &'static NodeBlock {
        // An out-of-range or unpublished index would be a bug in the lock word protocol;
        // fall back to allocating so that we never dereference null.
        own_block(thread.min(MAX_THREADS - 1))
    }
}

#[cfg(loom)]
mod table {
    use super::NodeBlock;

    /// Threads a loom model may use (main thread included).
    pub(crate) const LOOM_MAX_THREADS: usize = 4;

    loom::lazy_static! {
        static ref BLOCKS: Vec<NodeBlock> =
            (0..LOOM_MAX_THREADS).map(|_| NodeBlock::new()).collect();
        static ref NEXT_INDEX: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(0);
    }

    loom::thread_local! {
        static INDEX: usize =
            NEXT_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Under loom all model threads share one OS thread, so the registry's `thread_local`
    /// cannot tell them apart: hand out indices per model execution instead.
    pub(crate) fn thread_index() -> Option<usize> {
        let i = INDEX.with(|i| *i);
        (i < LOOM_MAX_THREADS).then_some(i)
    }

    pub(crate) fn own_block(thread: usize) -> &'static NodeBlock {
        &BLOCKS[thread.min(LOOM_MAX_THREADS - 1)]
    }

    pub(crate) fn published_block(thread: usize) -> &'static NodeBlock {
        own_block(thread)
    }
}

pub(crate) use table::{own_block, published_block, thread_index};

/// A claimed node: the calling thread's next free nesting level. Dropping it gives the
/// level back (the `release:` label of Linux's slow path).
pub(crate) struct Claim {
    pub(crate) block: &'static NodeBlock,
    pub(crate) idx: usize,
    pub(crate) tail: u32,
}

impl Claim {
    /// Claims a node, or `None` if the thread has no index (thread-local teardown) or all
    /// [`MAX_NODES`] levels are busy: the caller must then spin on the lock word.
    #[inline]
    pub(crate) fn new() -> Option<Claim> {
        let thread = thread_index()?;
        let block = own_block(thread);
        let idx = block
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        if idx >= MAX_NODES {
            block
                .count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        let tail = encode_tail(thread, idx);
        let node = &block.nodes[idx];
        node.locked.store(0, Ordering::Relaxed);
        node.next.store(0, Ordering::Relaxed);
        Some(Claim { block, idx, tail })
    }

    #[inline]
    pub(crate) fn node(&self) -> &'static Node {
        &self.block.nodes[self.idx]
    }
}

impl Drop for Claim {
    #[inline]
    fn drop(&mut self) {
        self.block
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::registry::MAX_THREADS;

    #[test]
    fn tail_roundtrip_and_fits_the_word() {
        for &t in &[0usize, 1, 77, MAX_THREADS - 1] {
            for i in 0..MAX_NODES {
                let code = encode_tail(t, i);
                assert_ne!(code, 0);
                assert_eq!(code & !TAIL_MASK, 0, "tail must not touch locked/pending");
                assert_eq!(decode_tail_parts(code), (t, i));
            }
        }
        // The largest thread index still fits the 14 tail bits.
        let top = encode_tail(MAX_THREADS - 1, MAX_NODES - 1);
        assert_eq!(decode_tail_parts(top), (MAX_THREADS - 1, MAX_NODES - 1));
    }

    #[test]
    fn claims_nest_four_deep_then_refuse() {
        let a = Claim::new().unwrap();
        let b = Claim::new().unwrap();
        let c = Claim::new().unwrap();
        let d = Claim::new().unwrap();
        assert_eq!((a.idx, b.idx, c.idx, d.idx), (0, 1, 2, 3));
        assert!(Claim::new().is_none());
        assert!(std::ptr::eq(decode_tail(d.tail), d.node()));
        drop(d);
        let d2 = Claim::new().unwrap();
        assert_eq!(d2.idx, 3);
    }
}
