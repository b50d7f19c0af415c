//! The vhost-user virtio-net device of one port, for one connection (a fresh instance per
//! accepted frontend): features, config space, memory-table updates, and the dispatch of
//! worker-thread events to the data path ([`Worker::handle`]). The port has
//! [`Config::worker_threads`](crate::Config::worker_threads) worker threads (`--workers`; 0
//! sizes it from the CPUs and ports); thread `w` of `N` serves the pairs `p` with
//! `p % N == w`. Within a thread, vring events are numbered RX, TX per pair in pair order
//! ([`Token`]).
//!
//! With `--pmd-threads N` the same workers (`min(N, pairs)` of them) run on the switch-wide
//! polling threads instead ([`crate::datapath::pmd`]; worker `w` on thread
//! `(port + w) mod N`, attached by [`NetDevice::attach_pmds`]); the daemon then has one
//! thread, which handles RX events and forwards TX kicks ([`Worker::forward_kick`]).

use crate::datapath::burst::Burst;
use crate::datapath::pmd::Member;
use crate::datapath::qpair::PortCtx;
use crate::datapath::worker::{Round, Token, Worker};
use crate::switch::{Fabric, Gm, Locks, Switch, Vring};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

pub use crate::datapath::worker::{TOKEN_TIMER, TOKEN_WAKE};

/// Locks a mutex, ignoring poisoning (a panicked worker must not wedge the port).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Virtio-net features offered (MTU added when configured).
pub fn offered_features(mtu: bool) -> u64 {
    let bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MAC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        // Chains are returned in ring order: RX in the reserve step, TX through
        // `datapath::order` (held-back frames keep the chains behind them).
        VIRTIO_F_IN_ORDER,
    ];
    let mut f = bits.iter().fold(0u64, |f, b| f | (1u64 << b));
    if mtu {
        f |= 1 << VIRTIO_NET_F_MTU;
    }
    f | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The device of port `port` for one connection, compiled for lock set `L`.
pub struct NetDevice<L: Locks> {
    pub(crate) sw: Arc<Switch>,
    pub(crate) fabric: Arc<Fabric<L>>,
    pub(crate) port: usize,
    pub(crate) mem: Gm,
    /// One per worker thread.
    pub(crate) workers: Box<[Mutex<Worker>]>,
    pub(crate) event_idx: AtomicBool,
    pub(crate) acked: AtomicU64,
    /// Set when the connection is being torn down: workers stop after their current burst
    /// and attach nothing any more.
    pub(crate) closed: AtomicBool,
}

impl<L: Locks> NetDevice<L> {
    /// A device for `port` with empty memory.
    pub fn new(fabric: Arc<Fabric<L>>, port: usize) -> io::Result<Self> {
        let sw = fabric.sw.clone();
        let pairs = usize::from(sw.cfg.queue_pairs);
        let pmds = fabric.pmds.len();
        let threads = match pmds {
            0 => sw.cfg.worker_threads().clamp(1, pairs),
            n => n.min(pairs),
        };
        let workers = (0..threads)
            .map(|w| {
                let mine: Vec<usize> = (w..pairs).step_by(threads).collect();
                match fabric.pmds.get((port + w) % pmds.max(1)) {
                    Some(pmd) => Ok(Worker::with_waker(
                        &mine,
                        sw.cfg.poll_us,
                        pmd.waker().clone(),
                    )),
                    None => Worker::new(&mine, sw.cfg.poll_us),
                }
                .map(Mutex::new)
            })
            .collect::<io::Result<Vec<_>>>()?
            .into_boxed_slice();
        Ok(NetDevice {
            sw,
            fabric,
            port,
            mem: Gm::new(GuestMemoryMmap::new()),
            workers,
            event_idx: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// The guest memory handle shared with the daemon.
    pub fn memory(&self) -> Gm {
        self.mem.clone()
    }

    /// A fault hit this port's guest memory (its file shrank under the mapping): the data
    /// path stops touching it and the connection loop disconnects the frontend.
    #[inline]
    pub fn poisoned(&self) -> bool {
        self.sw.ports[self.port].guard.poisoned()
    }

    fn num_pairs(&self) -> usize {
        usize::from(self.sw.cfg.queue_pairs)
    }

    fn ctx(&self) -> PortCtx<'_, L> {
        PortCtx {
            fabric: &self.fabric,
            port: self.port,
            features: self.acked.load(Ordering::Acquire),
            closing: &self.closed,
        }
    }

    /// Whether the workers run on the switch-wide polling threads (`--pmd-threads`): the
    /// daemon then has one thread, for vhost-user messages, RX events and forwarding kicks.
    fn on_pmds(&self) -> bool {
        !self.fabric.pmds.is_empty()
    }

    /// Hands this connection's workers to the polling threads: worker `w` to thread
    /// `(port + w) mod N` (nothing without `--pmd-threads`). [`NetDevice::detach`] takes them
    /// back.
    pub fn attach_pmds(self: &Arc<Self>) {
        let n = self.fabric.pmds.len();
        for w in 0..self.workers.len() {
            if let Some(pmd) = self.fabric.pmds.get((self.port + w) % n.max(1)) {
                pmd.attach(self.pmd_key(), self.clone(), w);
            }
        }
    }

    fn pmd_key(&self) -> usize {
        self as *const Self as usize
    }

    /// An event of the daemon's one thread with `--pmd-threads`: TX kicks wake the polling
    /// thread of the pair's worker; RX events are handled here.
    fn pmd_event(&self, tok: Token, vrings: &[Vring]) {
        let n = self.workers.len().max(1);
        let (Token::Rx(q) | Token::Tx(q)) = tok else {
            return;
        };
        let Some(w) = self.workers.get(q % n) else {
            return;
        };
        if vrings.len() < self.num_queues() {
            // The daemon's one thread has every vring; anything else is not this layout.
            return;
        }
        let mut w = lock(w);
        if !w.has_vrings() {
            // The worker's pairs' vrings, RX and TX per pair in its pair order.
            let mine: Vec<Vring> = (q % n..self.num_pairs())
                .step_by(n)
                .flat_map(|p| vrings.get(2 * p..2 * p + 2).unwrap_or_default())
                .cloned()
                .collect();
            w.note_vrings(&mine);
        }
        let local = q / n;
        let cx = self.ctx();
        match tok {
            Token::Rx(_) => w.rx_kick(&cx, local),
            _ => w.forward_kick(&cx, local),
        }
    }

    /// The worker thread serving pair `q`.
    fn worker_of(&self, q: usize) -> Option<&Mutex<Worker>> {
        self.workers.get(q % self.workers.len().max(1))
    }

    /// Detaches every RX ring of this port from the switch and wakes their waiters; after
    /// this returns no other worker touches this connection's rings or memory, and this
    /// connection's workers stop after their current burst.
    pub fn detach(&self) {
        self.closed.store(true, Ordering::Release);
        for pmd in &self.fabric.pmds {
            pmd.detach(self.pmd_key());
        }
        for q in 0..self.num_pairs() {
            self.fabric.detach_rx(self.port, q);
        }
    }

    fn config_space(&self) -> [u8; 12] {
        let port = &self.sw.ports[self.port];
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&port.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&self.sw.cfg.queue_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.sw.cfg.mtu.unwrap_or(1500).to_le_bytes());
        c
    }
}

impl<L: Locks> VhostUserBackend for NetDevice<L> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.num_pairs()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.sw.cfg.queue_size)
    }

    fn features(&self) -> u64 {
        offered_features(self.sw.cfg.mtu.is_some())
    }

    fn acked_features(&self, features: u64) {
        log::debug!("port {}: features acked {features:#x}", self.port);
        self.acked.store(features, Ordering::Release);
        self.sw.ports[self.port]
            .features
            .store(features, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        c[start..end].to_vec()
    }

    fn update_memory(&self, mem: Gm) -> io::Result<()> {
        let m = mem.memory();
        self.fabric.ports[self.port]
            .grants
            .replace_from_memory(&m)
            .map(|s| log::debug!("port {}: memory table updated: {s:?}", self.port))
            .map_err(io::Error::other)
    }

    fn check_memory_region(&self, region: &GuestRegionMmap) -> io::Result<()> {
        let f = self.sw.ports[self.port]
            .guard
            .guard_region(region)
            .map_err(|e| {
                log::warn!("port {}: memory table refused: {e}", self.port);
                io::Error::new(io::ErrorKind::InvalidInput, e)
            })?;
        log::debug!("port {}: memory region accepted: {f:?}", self.port);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // With the polling threads the daemon has one thread, for every pair.
        let threads = if self.on_pmds() {
            1
        } else {
            self.workers.len().max(1)
        };
        (0..threads)
            .map(|w| {
                (w..self.num_pairs())
                    .step_by(threads)
                    .fold(0u64, |m, p| m | (0b11u64 << (2 * p)))
            })
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&self, index: u32) -> io::Result<()> {
        let q = index as usize / 2;
        if index % 2 == 0 {
            self.fabric.detach_rx(self.port, q);
        } else if let Some(w) = self.worker_of(q) {
            lock(w).stop_tx(&self.ctx(), q);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN || self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let tok = Token::decode(device_event, self.num_queues());
        if self.on_pmds() {
            self.pmd_event(tok, vrings);
            return Ok(());
        }
        let Some(w) = self.workers.get(thread_id) else {
            return Err(io::Error::other("event for an unknown worker thread"));
        };
        lock(w).handle(&self.ctx(), tok, vrings);
        Ok(())
    }
}

impl<L: Locks> Member for NetDevice<L> {
    fn usable(&self) -> bool {
        self.ctx().memory_usable()
    }

    fn round(&self, w: usize, scratch: &mut Burst, retry: bool) -> Round {
        match self.workers.get(w) {
            Some(m) => lock(m).round(scratch, &self.ctx(), retry),
            None => Round::default(),
        }
    }

    fn arm(&self, w: usize) -> bool {
        self.workers
            .get(w)
            .is_some_and(|m| lock(m).arm(&self.ctx()))
    }

    fn deadline(&self, w: usize) -> Option<Instant> {
        self.workers
            .get(w)
            .and_then(|m| lock(m).deadline(&self.ctx()))
    }

    fn add_busy(&self, w: usize, busy: Duration) {
        if let Some(m) = self.workers.get(w) {
            lock(m).add_busy(&self.ctx(), busy);
        }
    }
}
