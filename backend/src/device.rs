//! The vhost-user virtio-net device of one port, for one connection (a fresh instance per
//! accepted frontend). One worker thread per queue pair: thread `i` owns RX queue `2i` and
//! TX queue `2i+1`.

use crate::datapath::Worker;
use crate::switch::{Fabric, Gm, Locks, RxRing, Switch, Vring};
use pvnet_locks::family::MutexApi;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Epoll token offsets above `num_queues()` for the per-worker extra fds.
pub const TOKEN_WAKE: u64 = 1;
/// Back-pressure timer token offset.
pub const TOKEN_TIMER: u64 = 2;

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
    pub(crate) workers: Box<[Mutex<Worker>]>,
    pub(crate) event_idx: AtomicBool,
    pub(crate) acked: AtomicU64,
    /// Set when the connection is being torn down: workers must not attach rings any more.
    pub(crate) closed: AtomicBool,
    /// Pair `i`'s RX ring was attached to the switch by this connection.
    attached: Box<[AtomicBool]>,
}

impl<L: Locks> NetDevice<L> {
    /// A device for `port` with empty memory.
    pub fn new(fabric: Arc<Fabric<L>>, port: usize) -> io::Result<Self> {
        let sw = fabric.sw.clone();
        let pairs = usize::from(sw.cfg.queue_pairs);
        let workers = (0..pairs)
            .map(|q| Worker::new(port, q).map(Mutex::new))
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
            attached: (0..pairs).map(|_| AtomicBool::new(false)).collect(),
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

    /// Attaches (or refreshes) pair `q`'s RX ring in the switch from this thread's vrings.
    fn refresh_rx(&self, q: usize, rx: &Vring) {
        let port = &self.sw.ports[self.port];
        let Some(slot) = self.fabric.ports[self.port].rings.get(q) else {
            return;
        };
        let usable = {
            let st = rx.get_ref();
            st.is_enabled() && st.get_queue().ready()
        };
        // Fast path (every event): nothing changed, no lock taken.
        let bit = port.enabled.load(Ordering::Acquire) & (1u64 << q) != 0;
        let attached = self
            .attached
            .get(q)
            .is_some_and(|a| a.load(Ordering::Acquire));
        if usable == bit && (!usable || attached) {
            return;
        }
        let mut ring = slot.lock();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if usable {
            if ring.is_none() {
                if let Some(a) = self.attached.get(q) {
                    a.store(true, Ordering::Release);
                }
                *ring = Some(RxRing {
                    vring: rx.clone(),
                    mem: self.mem.clone(),
                    signalled: AtomicU16::new(0),
                });
            }
            port.enabled.fetch_or(1 << q, Ordering::AcqRel);
        } else {
            port.enabled.fetch_and(!(1u64 << q), Ordering::AcqRel);
        }
    }

    /// Detaches every RX ring of this port from the switch and wakes their waiters; after
    /// this returns no other worker touches this connection's rings or memory.
    pub fn detach(&self) {
        self.closed.store(true, Ordering::Release);
        let port = &self.sw.ports[self.port];
        port.enabled.store(0, Ordering::Release);
        for (q, ring) in self.fabric.ports[self.port].rings.iter().enumerate() {
            *ring.lock() = None;
            self.fabric.wake_waiters(self.port, q);
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
        (0..self.num_pairs()).map(|i| 0b11u64 << (2 * i)).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let [rx, tx] = vrings else {
            return Err(io::Error::other("worker without its queue pair"));
        };
        let q = thread_id;
        self.refresh_rx(q, rx);
        let nq = self.num_queues() as u64;
        let ev = u64::from(device_event);
        if let Some(t) = self.sw.ports[self.port].tx.get(q) {
            t.kicked(ev);
        }
        match ev {
            0 => {
                // The guest posted RX buffers: senders held back by this ring retry.
                self.fabric.wake_waiters(self.port, q);
                Ok(())
            }
            1 => self.run_tx(q, tx, false),
            e if e == nq + TOKEN_WAKE => {
                if let Some(w) = self.workers.get(q) {
                    let w = crate::datapath::lock(w);
                    let _ = w.wake.read();
                }
                self.run_tx(q, tx, false)
            }
            e if e == nq + TOKEN_TIMER => {
                if let Some(w) = self.workers.get(q) {
                    let mut w = crate::datapath::lock(w);
                    let _ = w.timer.wait();
                }
                self.run_tx(q, tx, true)
            }
            _ => Ok(()),
        }
    }
}
