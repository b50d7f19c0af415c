//! The switch's shared state, in two parts:
//!
//! * [`Switch`] (not generic): configuration, ports with their counters and state, and the
//!   forwarding database — what statistics, tests and the control plane read;
//! * [`Fabric`] (generic over the lock set [`Locks`]): what the data path locks — each
//!   port's grant table and RX rings. It is compiled once per (`--grant-lock`,
//!   `--queue-lock`) pair and chosen once at start-up (see `server`), so a lock operation on
//!   the data path costs the algorithm itself, no run-time dispatch.
//!
//! Both live as long as the process; connections come and go.

use crate::config::Config;
use crate::datapath::pmd::Pmd;
use crate::datapath::rxq::{RxRing, RxSlot};
use crate::fdb::Fdb;
use crate::memguard::MemGuard;
use crate::stats::{QueueSnapshot, TxStats};
use crate::tap::TapPort;
use pvnet_grant::GrantInfo;
use pvnet_grant::GrantTable;
use pvnet_locks::family::{MutexApi, RwFamily, SpinFamily};
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub use crate::datapath::{Gm, Vring};

/// The lock algorithms the data path is compiled for: the grant tables' rwlock and the RX
/// queues' spinlock.
pub trait Locks: Send + Sync + 'static {
    /// `--grant-lock`.
    type Grant: RwFamily;
    /// `--queue-lock`.
    type Queue: SpinFamily;
}

/// The lock set of grant family `G` and queue family `Q`.
pub struct LockSet<G, Q>(PhantomData<fn() -> (G, Q)>);

impl<G: RwFamily, Q: SpinFamily> Locks for LockSet<G, Q> {
    type Grant = G;
    type Queue = Q;
}

/// A port's grant table under lock set `L`.
pub type Grants<L> = GrantTable<<L as Locks>::Grant>;
/// An RX queue's lock under lock set `L`; `None` while no guest has the ring enabled.
pub type RingLock<L> = <<L as Locks>::Queue as SpinFamily>::Lock<Option<RxRing>>;
/// A held RX queue lock under lock set `L`.
pub type RingGuard<'a, L> = <RingLock<L> as MutexApi<Option<RxRing>>>::Guard<'a>;

/// What is behind a port.
#[derive(Clone)]
pub enum PortKind {
    /// A vhost-user socket (a guest connects).
    Guest,
    /// A tap device (the uplink to the host's network stack); always connected, one RX
    /// queue per tap queue.
    Tap(Arc<TapPort>),
}

/// One slot of the switch's port table: a port (one vhost-user socket, listened on or
/// connected to, or a tap device) while `in_use`, else free for a vhost-user port added at
/// run time. The index is the
/// port's identity on the data path (FDB entries, destination masks); a slot keeps its
/// rings, locks and counters across occupants.
pub struct Port {
    pub idx: usize,
    pub mac: [u8; 6],
    pub kind: PortKind,
    /// RX queues, one per pair (their rings and locks are in the [`Fabric`]).
    pub rx: Box<[RxSlot]>,
    /// Per-pair transmit counters.
    pub tx: Box<[TxStats]>,
    /// Bit i set: RX queue i is attached and enabled.
    pub enabled: AtomicU64,
    /// Virtio features the connected guest acknowledged.
    pub features: AtomicU64,
    /// A guest is connected.
    pub connected: AtomicBool,
    /// The slot holds a port (set before its connection loop starts, cleared after it
    /// ended).
    pub in_use: AtomicBool,
    /// Number of connections accepted so far.
    pub connections: AtomicU64,
    /// The connected guest's memory mappings, guarded against a truncated memory file.
    pub guard: MemGuard,
}

impl Port {
    /// The tap behind this port, if it is a tap port.
    pub fn tap(&self) -> Option<&Arc<TapPort>> {
        match &self.kind {
            PortKind::Tap(t) => Some(t),
            PortKind::Guest => None,
        }
    }

    /// Number of queue pairs (a tap port: its tap queues).
    pub fn queues(&self) -> usize {
        self.rx.len()
    }

    /// Number of enabled RX queues.
    pub fn enabled_pairs(&self) -> u32 {
        self.enabled.load(Ordering::Acquire).count_ones()
    }

    /// The RX queue for a frame with steering key `key` (its flow hash, or the index of the
    /// queue it was sent on; see [`RxSteer`](crate::config::RxSteer)): the `(key % n)`-th
    /// enabled queue.
    pub fn pick_queue(&self, key: u32) -> Option<usize> {
        let mask = self.enabled.load(Ordering::Acquire);
        let n = mask.count_ones();
        if n == 0 {
            return None;
        }
        let mut k = key % n;
        let mut m = mask;
        loop {
            let bit = m.trailing_zeros() as usize;
            if k == 0 {
                return Some(bit);
            }
            k -= 1;
            m &= m - 1;
        }
    }

    /// Counters of pair `q`.
    pub fn queue_snapshot(&self, q: usize) -> QueueSnapshot {
        let mut s = self.tx.get(q).map(|t| t.snapshot()).unwrap_or_default();
        if let Some(r) = self.rx.get(q) {
            r.stats.add_to(&mut s);
        }
        s
    }
}

/// The whole switch: configuration, ports and forwarding database.
pub struct Switch {
    pub cfg: Config,
    pub ports: Vec<Port>,
    pub fdb: Fdb,
    /// How many slots hold a port (kept with [`Switch::set_in_use`]).
    in_use: AtomicUsize,
}

impl Switch {
    /// Builds the port table of a validated configuration ([`Config::table_size`] slots,
    /// the first [`Config::port_count`] of them in use).
    pub fn new(cfg: Config) -> Arc<Self> {
        Self::with_taps(cfg, Vec::new())
    }

    /// Builds the port table: the vhost-user ports given at start (sockets, then clients),
    /// then one port per tap, then free slots up to [`Config::table_size`].
    pub fn with_taps(cfg: Config, taps: Vec<Arc<TapPort>>) -> Arc<Self> {
        let pairs = usize::from(cfg.queue_pairs);
        let given = cfg.vhost_port_count();
        let guest = |idx: usize, in_use: bool| Port {
            idx,
            mac: cfg.mac_of(idx),
            kind: PortKind::Guest,
            rx: (0..pairs).map(|_| RxSlot::default()).collect(),
            tx: (0..pairs).map(|_| TxStats::default()).collect(),
            enabled: AtomicU64::new(0),
            features: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            in_use: AtomicBool::new(in_use),
            connections: AtomicU64::new(0),
            guard: MemGuard::new(),
        };
        let mut ports: Vec<Port> = (0..given).map(|idx| guest(idx, true)).collect();
        for t in taps {
            let idx = ports.len();
            let n = t.queues.len().min(64);
            let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            ports.push(Port {
                idx,
                mac: cfg.mac_of(idx),
                rx: (0..n).map(|_| RxSlot::default()).collect(),
                tx: (0..n).map(|_| TxStats::default()).collect(),
                enabled: AtomicU64::new(mask),
                features: AtomicU64::new(t.features()),
                connected: AtomicBool::new(true),
                in_use: AtomicBool::new(true),
                connections: AtomicU64::new(1),
                guard: MemGuard::new(),
                kind: PortKind::Tap(t),
            });
        }
        let used = ports.len();
        while ports.len() < cfg.table_size() {
            ports.push(guest(ports.len(), false));
        }
        Arc::new(Switch {
            in_use: AtomicUsize::new(used),
            cfg,
            ports,
            fdb: Fdb::new(),
        })
    }

    /// The RX queue of port `d` that steering key `key` maps to now.
    fn rx_slot_for(&self, d: usize, key: u32) -> Option<&RxSlot> {
        let p = self.ports.get(d)?;
        p.rx.get(p.pick_queue(key)?)
    }

    /// Whether the RX queue of port `d` that steering key `key` maps to is stalled (its
    /// guest let a sender wait a whole back-pressure bound).
    pub fn queue_stalled(&self, d: usize, key: u32) -> bool {
        self.rx_slot_for(d, key)
            .is_some_and(|s| s.stalled.load(Ordering::Acquire))
    }

    /// Marks the RX queue of port `d` that steering key `key` maps to as stalled.
    pub fn mark_stalled(&self, d: usize, key: u32) {
        if let Some(s) = self.rx_slot_for(d, key) {
            s.stalled.store(true, Ordering::Release);
        }
    }

    /// Marks slot `idx` as holding a port (or free again); returns whether it changed.
    pub fn set_in_use(&self, idx: usize, on: bool) -> bool {
        let Some(p) = self.ports.get(idx) else {
            return false;
        };
        let changed = p.in_use.swap(on, Ordering::AcqRel) != on;
        if changed {
            if on {
                self.in_use.fetch_add(1, Ordering::AcqRel);
            } else {
                self.in_use.fetch_sub(1, Ordering::AcqRel);
            }
        }
        changed
    }

    /// How many slots hold a port (one load: the data path asks per burst).
    pub fn ports_in_use_count(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// The ports in use (slots holding a port), with their indexes.
    pub fn ports_in_use(&self) -> impl Iterator<Item = (usize, &Port)> {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.in_use.load(Ordering::Acquire))
    }
}

/// What callers that are not compiled per lock set may ask of a [`Fabric`].
pub trait FabricView: Send + Sync {
    /// The lock kinds the data path was compiled for (grant table, RX queues).
    fn lock_kinds(&self) -> (RwLockKind, SpinLockKind);
    /// The grants of port `p` (allocates; not for the data path).
    fn grants(&self, p: usize) -> Vec<GrantInfo>;
}

impl<L: Locks> FabricView for Fabric<L> {
    fn lock_kinds(&self) -> (RwLockKind, SpinLockKind) {
        (L::Grant::KIND, L::Queue::KIND)
    }

    fn grants(&self, p: usize) -> Vec<GrantInfo> {
        self.ports
            .get(p)
            .map(|pf| pf.grants.grants())
            .unwrap_or_default()
    }
}

/// What the data path of one port locks: its guest's grants and its RX rings.
pub struct PortFabric<L: Locks> {
    /// Grants of the connected guest's memory (revoked on disconnect).
    pub grants: Grants<L>,
    /// RX rings, one per pair, each under its `--queue-lock`.
    pub rings: Box<[RingLock<L>]>,
}

/// The switch's data-path state for lock set `L`, beside the [`Switch`] it serves.
pub struct Fabric<L: Locks> {
    pub sw: Arc<Switch>,
    pub ports: Vec<PortFabric<L>>,
    /// The switch-wide polling threads' state (`--pmd-threads`; empty: workers per port).
    pub pmds: Vec<Arc<Pmd>>,
}

impl<L: Locks> Fabric<L> {
    /// Grant tables and RX-ring locks for every port of `sw`, with workers per port.
    pub fn new(sw: Arc<Switch>) -> Arc<Self> {
        Self::with_pmds(sw, Vec::new())
    }

    /// [`Fabric::new`] whose ports' workers run on the polling threads `pmds` (their
    /// threads are the caller's to start, with [`Pmd::run`]).
    pub fn with_pmds(sw: Arc<Switch>, pmds: Vec<Arc<Pmd>>) -> Arc<Self> {
        let ports = sw
            .ports
            .iter()
            .map(|p| PortFabric {
                grants: GrantTable::new(),
                rings: (0..p.queues()).map(|_| RingLock::<L>::new(None)).collect(),
            })
            .collect();
        Arc::new(Fabric { sw, ports, pmds })
    }

    /// Detaches RX queue `q` of port `p` (its guest stopped or disabled the ring, or went
    /// away): used entries a sender staged and has not published yet are published, the
    /// ring's position is written back into its vring, the queue leaves the port's enabled
    /// set, and the senders held back by it are woken (their retry finds the queue gone).
    /// Returns whether a ring was attached.
    pub fn detach_rx(&self, p: usize, q: usize) -> bool {
        let (Some(pf), Some(port)) = (self.ports.get(p), self.sw.ports.get(p)) else {
            return false;
        };
        let (Some(lock), Some(slot)) = (pf.rings.get(q), port.rx.get(q)) else {
            return false;
        };
        // Lock order: grant guard, then queue lock.
        let grants = pf.grants.read();
        let (ring, waiters) = {
            let mut g = lock.lock();
            port.enabled.fetch_and(!(1u64 << q), Ordering::AcqRel);
            let mut ring = g.take();
            // A stall was this ring's guest's doing: the next ring here starts without one.
            slot.clear_stall();
            if let Some(r) = ring.as_mut() {
                // The guest stops the ring: no used-buffer notification is owed.
                let _ = r.publish(&grants, slot);
            }
            (ring, slot.take_waiters())
        };
        drop(grants);
        for w in waiters {
            w.wake();
        }
        ring.map(RxRing::detach).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_queue_uses_only_enabled_pairs() {
        let sw = Switch::new(Config {
            sockets: vec!["/nonexistent/x".into()],
            queue_pairs: 8,
            ..Config::default()
        });
        let p = &sw.ports[0];
        assert_eq!(p.pick_queue(7), None);
        p.enabled.store(0b1011_0000, Ordering::Release);
        assert_eq!(p.enabled_pairs(), 3);
        let picked: Vec<_> = (0..6).map(|h| p.pick_queue(h)).collect();
        assert_eq!(picked, [4, 5, 7, 4, 5, 7].map(Some));
        // A flow always maps to the same queue.
        assert_eq!(p.pick_queue(0xdead_beef), p.pick_queue(0xdead_beef));
    }

    /// A queue stalled by one guest (it let a sender wait a whole bound) is not stalled for
    /// the next guest on the port: its first full ring holds frames back, as any ring's.
    #[test]
    fn a_stall_ends_with_its_ring() {
        let sw = Switch::new(Config {
            sockets: vec!["/nonexistent/x".into()],
            queue_pairs: 2,
            ..Config::default()
        });
        let fabric =
            Fabric::<LockSet<pvnet_locks::family::Percpu, pvnet_locks::family::StdMutex>>::new(
                sw.clone(),
            );
        let slot = &sw.ports[0].rx[1];
        slot.stalled.store(true, Ordering::Release);
        fabric.detach_rx(0, 1);
        assert!(!slot.stalled.load(Ordering::Acquire));
    }
}
