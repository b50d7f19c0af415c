//! The data path: frames from a guest's TX ring to other guests' RX rings, in bursts.
//!
//! A worker thread ([`worker::Worker`]) serves one or more queue pairs of one port; each
//! pair is a [`qpair::QueuePair`] that owns its state and does its work without knowing the
//! vhost-user device. One TX burst of a pair ([`qpair::QueuePair::tx_burst`]) goes through
//! these named steps (DPDK's `lib/vhost/virtio_net.c` is the model):
//!
//! | step | function | DPDK |
//! |---|---|---|
//! | fetch: one avail-index read, up to [`burst::BURST`] chains to segment lists | [`burst::fetch`], [`chain::read_chain`] | `fill_vec_buf` |
//! | prefetch the first line of every frame | [`burst::prefetch`] | `rte_prefetch0` |
//! | parse headers, sanitise, port security, learn; route (FDB, flow hash) | [`burst::classify`] | (the switch) |
//! | per destination port, per RX queue, in one queue-lock hold: reserve, copy, stage used | `qpair::QueuePair::deliver_to` → [`rxq::RxRing::deliver`] | `reserve_avail_buf`, `copy_mbuf_to_desc` |
//! | publish each ring's used index once: the sender's TX ring, then the receivers' RX rings | [`ring::UsedShadow::flush`], [`rxq::RxRing::publish`] | `flush_shadow_used_ring` |
//! | notify each ring once, if it asked | [`ring::needs_call`] | `vhost_vring_call` |
//!
//! Grant checks: every ring and buffer access goes through the source's or the destination's
//! grant table under its read guard ([`pvnet_grant::GrantMemory`] for rings,
//! [`copy`] for buffers), with a [`pvnet_grant::RegionHint`] per stream of accesses so that a
//! lookup is a range check. Guards are taken per step (source guard to fetch and parse, the
//! pair of guards per destination, the source guard to publish), never across a wait, so
//! when a memory-table writer (SET_MEM_TABLE, REM_MEM_REG) returns, no step uses the old
//! mapping — rings included.
//!
//! Back-pressure: a unicast frame whose destination queue is full is held back
//! ([`held::HeldBack`]): its TX chain stays unconsumed while later frames to other
//! destinations go on; the destination's next posting of RX buffers wakes the sender
//! ([`rxq::Waker`]), and after `Config::backpressure_bound` the held-back frames are dropped
//! and the queue is marked stalled (sooner when they keep half the sender's TX ring from its
//! traffic to other ports, see [`held`]). Flooded copies to a full queue are dropped at once.
//!
//! Tap ports (the uplink, `crate::tap`) take part as one more kind of destination
//! ([`tapdest`]: `writev` into a tap queue) and one more kind of sender ([`tapsrc`]: bursts
//! read from a tap queue, switched through the same destinations).
//!
//! Module layering (each file uses only the ones before it): [`chain`], [`ring`], [`copy`]
//! (ring and buffer steps) ← [`rxslot`], [`rxq`] (a guest RX ring as a destination) ←
//! `tap::queue` ← `switch` (ports, fabric) ← [`dest`], [`burst`], [`held`], [`order`], [`soft`],
//! [`tapdest`] ← [`qpair`], [`tapsrc`] ← [`poll`], [`worker`], `tap::run` ← `device` ←
//! `server`.
//!
//! The helpers a frame passes through one by one (`chain::read_chain`, `copy::read_into`,
//! `copy::write_hdr_and`, the RX ring's per-frame copy, a unicast frame's verdict) are
//! `#[inline(always)]`: at full load the stores into guest lines that the frontend's core owns
//! fill the store buffer, and every call's register saves are stores that wait behind them.
//! Inlining them took 64 B frames from 64–65 to 60–62 ns and 1500 B from 91–92 to 87–90 at
//! one pair, and 64 B at 8 pairs from 71–72 to 68 (docs/benchmarks.md, ninth round), where
//! taking instructions off the frame path (fewer table probes or translations) had not
//! moved the figure.

pub mod burst;
pub mod chain;
pub mod copy;
pub mod dest;
pub mod held;
pub mod order;
pub mod pmd;
pub mod poll;
pub mod qpair;
pub mod ring;
pub mod rxq;
pub mod rxslot;
pub mod soft;
pub mod tapdest;
pub mod tapsrc;
pub mod worker;

use crate::net::HdrWords;
use crate::stats::DropReason;
use std::time::{Duration, Instant};
use vhost_user_backend::VringRwLock;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory as vhost-user-backend shares it with the device (the data path reaches
/// guest memory through the grant tables instead).
pub type Gm = GuestMemoryAtomic<GuestMemoryMmap>;
/// The vring type of every port (kick and call fds, and the ring state vhost-user-backend
/// keeps for the frontend's requests).
pub type Vring = VringRwLock<Gm>;

/// A guest buffer: guest-physical address and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seg {
    pub gpa: u64,
    pub len: u32,
}

/// Frame bytes a sender's frame is delivered with from pvnet's own copy, whatever its
/// length: the Ethernet header, as [`burst::classify`] read and checked it (port security,
/// learning, routing). The guest may rewrite its buffers at any time — between the check
/// and the copy, or while a frame is held back — and what receivers get must be what was
/// checked.
pub const CHECKED: usize = crate::net::eth::ETH_HLEN;

/// Where the bytes of a frame offered to a destination are.
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    /// `head` (the frame's first bytes, at most [`CHECKED`], from pvnet's copy), then the
    /// rest in the sender's guest buffers: after `skip` bytes (its virtio header) and
    /// `head.len()` more.
    Guest {
        head: &'a [u8],
        segs: &'a [Seg],
        skip: usize,
    },
    /// In a local buffer (a small frame read while parsing, or software-offloaded output).
    Local(&'a [u8]),
}

/// One frame offered to a destination.
#[derive(Clone, Copy, Debug)]
pub struct FrameSrc<'a> {
    /// The virtio-net header the receiver gets (`num_buffers` is filled in on delivery), as
    /// words: see [`HdrWords`] for why.
    pub hdr: HdrWords,
    /// Frame bytes (after the header).
    pub len: usize,
    pub data: Data<'a>,
}

/// An ordered set of frames offered to one destination queue.
pub trait FrameSet {
    /// Number of frames.
    fn count(&self) -> usize;
    /// Frame `i` (`i < count()`).
    fn get(&self, i: usize) -> FrameSrc<'_>;
    /// The length of frame `i`: what [`FrameSet::get`] says, for less work (no default: the
    /// RX reservation asks it of every frame, and a default through `get` built each frame
    /// twice).
    fn frame_len(&self, i: usize) -> usize;
}

/// What became of a frame offered to a destination queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Not offered yet.
    Pending,
    /// Copied into the destination.
    Delivered,
    /// The destination has no room now (the sender is registered to be woken).
    Full,
    /// The destination queue is not attached (no guest, ring disabled).
    NotReady,
    /// Not deliverable for this reason.
    Dropped(DropReason),
}

/// At most one log line per second from one place (guests control how often errors
/// happen; logs must not be a way to flood the host).
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<Instant>,
}

impl LogLimit {
    /// Whether a line may be logged now.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}
