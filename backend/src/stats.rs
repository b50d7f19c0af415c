//! Per-port, per-queue counters.
//!
//! Sender-side counters ([`TxStats`]) belong to one queue pair and are written only by that
//! pair's worker thread; receiver-side counters ([`RxStats`]) belong to one RX queue and are
//! written only under that queue's lock. Both are relaxed atomics on their own cache lines,
//! so no counter is a shared hot spot; readers (the stats printer) get a slightly stale but
//! consistent-enough snapshot.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a frame (or a chain) was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// TX chain whose descriptors loop or outnumber the queue (iteration cut short).
    ChainLoop = 0,
    /// TX chain with no usable descriptor (empty, bad indirect table).
    BadChain,
    /// Write-only descriptor in a TX chain (must be device-readable).
    WritableInTx,
    /// A descriptor address outside every grant.
    NotGranted,
    /// Chain too short for the virtio-net header plus an Ethernet header.
    TooShort,
    /// Frame larger than 64 KiB plus headers.
    TooLarge,
    /// Destination RX ring stayed full past the back-pressure bound (or the sender's TX ring
    /// stopped while the frame was held back by it).
    RxFullTimeout,
    /// Flooded copy not delivered to a port whose RX ring was full.
    FloodFull,
    /// No destination (no other port attached, or known destination is the source).
    NoDest,
    /// Destination RX chain malformed (readable descriptor, not granted, ...).
    RxBadChain,
    /// Destination RX buffer too small for the frame (without MRG_RXBUF).
    RxTooSmall,
    /// GSO/checksum metadata that cannot be honoured in software.
    BadOffload,
    /// TX or RX chain of more than [`crate::datapath::chain::MAX_CHAIN_DESCS`] descriptors
    /// (Linux vhost-net's limit).
    ChainTooLong,
    /// Source MAC other than the port's own with `--port-security`.
    SpoofedMac,
    /// Destination RX ring unreadable (bogus avail index, ring outside granted memory).
    RxBadRing,
    /// A tap device refused the frame (a write error other than a full queue), or a read
    /// from it failed.
    TapError,
}

/// Number of [`DropReason`] reasons.
pub const NR_DROPS: usize = DropReason::TapError as usize + 1;

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; NR_DROPS] = [
        DropReason::ChainLoop,
        DropReason::BadChain,
        DropReason::WritableInTx,
        DropReason::NotGranted,
        DropReason::TooShort,
        DropReason::TooLarge,
        DropReason::RxFullTimeout,
        DropReason::FloodFull,
        DropReason::NoDest,
        DropReason::RxBadChain,
        DropReason::RxTooSmall,
        DropReason::BadOffload,
        DropReason::ChainTooLong,
        DropReason::SpoofedMac,
        DropReason::RxBadRing,
        DropReason::TapError,
    ];

    /// Short name used in tables and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::ChainLoop => "chain_loop",
            DropReason::BadChain => "bad_chain",
            DropReason::WritableInTx => "writable_in_tx",
            DropReason::NotGranted => "not_granted",
            DropReason::TooShort => "too_short",
            DropReason::TooLarge => "too_large",
            DropReason::RxFullTimeout => "rx_full_timeout",
            DropReason::FloodFull => "flood_full",
            DropReason::NoDest => "no_dest",
            DropReason::RxBadChain => "rx_bad_chain",
            DropReason::RxTooSmall => "rx_too_small",
            DropReason::BadOffload => "bad_offload",
            DropReason::ChainTooLong => "chain_too_long",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::RxBadRing => "rx_bad_ring",
            DropReason::TapError => "tap_error",
        }
    }
}

#[derive(Default)]
struct TxInner {
    frames: AtomicU64,
    /// Non-empty bursts taken from the TX ring.
    bursts: AtomicU64,
    bytes: AtomicU64,
    backpressure: AtomicU64,
    notifications: AtomicU64,
    /// Nanoseconds of CPU time the pair's worker spent in rounds that moved frames.
    busy_ns: AtomicU64,
    /// Kick events handled: [RX queue, TX queue] of the pair.
    kicks: [AtomicU64; 2],
    drops: [AtomicU64; NR_DROPS],
}

/// Counters of one queue pair's transmit side (single writer: the pair's worker).
#[derive(Default)]
pub struct TxStats(CachePadded<TxInner>);

fn bump(c: &AtomicU64, n: u64) {
    // Single writer: a load + store is enough and avoids a locked RMW.
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl TxStats {
    /// A frame of `bytes` (without the virtio header) taken from the guest's TX ring.
    pub fn frame(&self, bytes: usize) {
        bump(&self.0.frames, 1);
        bump(&self.0.bytes, bytes as u64);
    }
    /// A burst of at least one chain was taken from the guest's TX ring (`tx_frames /
    /// tx_bursts` is the mean burst: near [`BURST`](crate::datapath::burst::BURST) when
    /// the pair's worker cannot keep up, small when it waits for the guest).
    pub fn burst(&self) {
        bump(&self.0.bursts, 1);
    }
    /// CPU time the pair's worker spent in rounds over its TX rings that moved frames (the
    /// rest of its CPU time is polling, waiting and event handling). A worker serving
    /// several pairs counts its time on its first pair, so the sum over a port's pairs is
    /// the port's busy time; `busy_ns / tx_frames` is the processing cost per frame, which
    /// a polling switch's CPU time per frame is not (DPDK's busy cycles per packet, OVS's
    /// "avg processing cycles per packet").
    pub fn busy(&self, d: std::time::Duration) {
        bump(
            &self.0.busy_ns,
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        );
    }
    /// A sender was held back by a full destination ring.
    pub fn backpressure(&self) {
        bump(&self.0.backpressure, 1);
    }
    /// The guest was notified of used TX buffers.
    pub fn notified(&self) {
        bump(&self.0.notifications, 1);
    }
    /// A kick from the frontend was handled on the pair's queue `queue_in_pair` (0: its RX
    /// queue, the frontend posted buffers; 1: its TX queue, the frontend posted frames); any
    /// other event (back-pressure retry, timer) is not a kick and is ignored. One count per
    /// wake-up of the kick eventfd: kicks sent while one is still pending coalesce.
    pub fn kicked(&self, queue_in_pair: u64) {
        if let Some(c) = usize::try_from(queue_in_pair)
            .ok()
            .and_then(|i| self.0.kicks.get(i))
        {
            bump(c, 1);
        }
    }
    /// A drop for `reason`.
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.0.drops[reason as usize], 1);
    }
    /// Drops counted for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.0.drops[reason as usize].load(Relaxed)
    }
    /// Snapshot.
    pub fn snapshot(&self) -> QueueSnapshot {
        let mut s = QueueSnapshot {
            tx_frames: self.0.frames.load(Relaxed),
            tx_bytes: self.0.bytes.load(Relaxed),
            tx_bursts: self.0.bursts.load(Relaxed),
            backpressure: self.0.backpressure.load(Relaxed),
            tx_notifications: self.0.notifications.load(Relaxed),
            busy_ns: self.0.busy_ns.load(Relaxed),
            rx_kicks: self.0.kicks[0].load(Relaxed),
            tx_kicks: self.0.kicks[1].load(Relaxed),
            ..QueueSnapshot::default()
        };
        for (d, c) in s.drops.iter_mut().zip(self.0.drops.iter()) {
            *d = c.load(Relaxed);
        }
        s
    }
}

#[derive(Default)]
struct RxInner {
    frames: AtomicU64,
    bytes: AtomicU64,
    notifications: AtomicU64,
    drops: [AtomicU64; NR_DROPS],
}

/// Counters of one RX queue (written only under the queue's lock).
#[derive(Default)]
pub struct RxStats(CachePadded<RxInner>);

impl RxStats {
    /// A frame of `bytes` (without the virtio header) delivered into the ring.
    pub fn frame(&self, bytes: usize) {
        bump(&self.0.frames, 1);
        bump(&self.0.bytes, bytes as u64);
    }
    /// The guest was notified of used RX buffers.
    pub fn notified(&self) {
        bump(&self.0.notifications, 1);
    }
    /// A drop attributed to this RX queue.
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.0.drops[reason as usize], 1);
    }
    /// Adds these counters into `s`.
    pub fn add_to(&self, s: &mut QueueSnapshot) {
        s.rx_frames += self.0.frames.load(Relaxed);
        s.rx_bytes += self.0.bytes.load(Relaxed);
        s.rx_notifications += self.0.notifications.load(Relaxed);
        for (d, c) in s.drops.iter_mut().zip(self.0.drops.iter()) {
            *d += c.load(Relaxed);
        }
    }
}

/// A snapshot of one queue pair's counters (both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Non-empty bursts taken from the TX ring.
    pub tx_bursts: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub backpressure: u64,
    pub tx_notifications: u64,
    pub rx_notifications: u64,
    /// Nanoseconds of worker CPU time in rounds that moved frames ([`TxStats::busy`]).
    pub busy_ns: u64,
    /// Kicks handled on the TX queue (the frontend posted frames).
    pub tx_kicks: u64,
    /// Kicks handled on the RX queue (the frontend posted receive buffers).
    pub rx_kicks: u64,
    pub drops: [u64; NR_DROPS],
}

impl QueueSnapshot {
    /// Field-wise sum.
    pub fn add(&mut self, o: &QueueSnapshot) {
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.tx_bursts += o.tx_bursts;
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.backpressure += o.backpressure;
        self.tx_notifications += o.tx_notifications;
        self.rx_notifications += o.rx_notifications;
        self.busy_ns += o.busy_ns;
        self.tx_kicks += o.tx_kicks;
        self.rx_kicks += o.rx_kicks;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    /// Sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Drops for one reason.
    pub fn drops_for(&self, d: DropReason) -> u64 {
        self.drops[d as usize]
    }

    /// Counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|d| (d.name().to_string(), self.drops[*d as usize].into()))
            .collect();
        serde_json::json!({
            "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
            "tx_bursts": self.tx_bursts,
            "rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
            "backpressure": self.backpressure,
            "tx_notifications": self.tx_notifications,
            "rx_notifications": self.rx_notifications,
            "tx_kicks": self.tx_kicks, "rx_kicks": self.rx_kicks,
            "busy_ns": self.busy_ns,
            "drops": drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let t = TxStats::default();
        let r = RxStats::default();
        t.frame(100);
        t.frame(50);
        t.burst();
        t.count_drop(DropReason::TooShort);
        r.frame(60);
        r.count_drop(DropReason::FloodFull);
        t.kicked(1);
        t.kicked(1);
        t.kicked(0);
        t.kicked(2); // not a queue kick
        t.busy(std::time::Duration::from_micros(3));
        t.busy(std::time::Duration::from_nanos(5));
        let mut s = t.snapshot();
        r.add_to(&mut s);
        assert_eq!(
            (s.tx_frames, s.tx_bytes, s.rx_frames, s.rx_bytes),
            (2, 150, 1, 60)
        );
        assert_eq!(s.total_drops(), 2);
        assert_eq!(s.drops_for(DropReason::TooShort), 1);
        assert_eq!((s.tx_kicks, s.rx_kicks), (2, 1));
        assert_eq!(s.tx_bursts, 1);
        assert_eq!(s.to_json()["tx_bursts"], 1);
        assert_eq!(s.to_json()["drops"]["flood_full"], 1);
        assert_eq!(s.to_json()["tx_kicks"], 2);
        assert_eq!(s.to_json()["rx_kicks"], 1);
        assert_eq!(s.to_json()["busy_ns"], 3005);
        let mut two = s;
        two.add(&s);
        assert_eq!(two.busy_ns, 6010);
    }
}
