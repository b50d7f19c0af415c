//! [`TestGuest`]: the vhost-user frontend (bring-up, config space, ring enabling, memory)
//! around the split-ring virtio-net driver. Sending and receiving are in `txrx`, the polling
//! mode in `poll`, misbehaviour in `hostile`.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::config::features;
use crate::mem::{GuestMem, RegionInfo};
use crate::ring::DriverRing;
use crate::{Error, GuestConfig, NetConfig, VirtioNetHdr};

/// How long [`TestGuest::connect`] keeps retrying while the socket does not accept yet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A frame whose first RX buffers arrived and whose others are still to come.
pub(crate) struct Partial {
    pub hdr: VirtioNetHdr,
    pub frame: Vec<u8>,
    pub want: u16,
    pub got: u16,
}

/// What the driver keeps per queue pair.
pub(crate) struct Pair {
    pub rx: DriverRing,
    pub tx: DriverRing,
    pub partial: Option<Partial>,
    /// TX chains returned since the last [`TestGuest::reclaim_tx`].
    pub tx_done: usize,
    pub rx_calls: Cell<u64>,
    pub tx_calls: Cell<u64>,
    /// Pre-filled TX slots not in flight (polling mode).
    pub slots: Vec<(u64, u32)>,
    /// RX buffers still to come of the frame [`TestGuest::count_rx`] counted last.
    pub count_rest: u16,
}

/// How consumed RX buffers go back to the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repost {
    /// All buffers consumed in one receive call, with one avail-index publication (and at
    /// most one kick), as a NAPI poll does.
    #[default]
    Batch,
    /// Each buffer on its own, with its own publication and kick decision, as a slow guest
    /// refilling one buffer at a time does.
    OneByOne,
    /// Not at all: buffers are freed (the ring runs dry unless the test posts more).
    Off,
}

/// An in-process guest: a connected vhost-user frontend with its memory and rings.
pub struct TestGuest {
    pub(crate) frontend: Frontend,
    pub(crate) mem: GuestMem,
    pub(crate) cfg: GuestConfig,
    pub(crate) acked: u64,
    pub(crate) protocol: VhostUserProtocolFeatures,
    pub(crate) hdr_len: usize,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) repost: Repost,
    pub(crate) device_errors: u64,
    pub(crate) sleeps: u64,
    pub(crate) timeouts: u64,
    /// Where a reading receiver copies its frames to (a socket buffer, say).
    pub(crate) sink: Vec<u8>,
    /// The socket this guest listens on for the device (server mode, [`TestGuest::listen`]).
    pub(crate) listener: Option<std::os::unix::net::UnixListener>,
}

// `..Default::default()` fills the extra fields vhost has with its "xen" feature.
#[allow(clippy::needless_update)]
pub(crate) fn region_info(r: &RegionInfo) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.gpa,
        memory_size: r.len,
        userspace_addr: r.host,
        mmap_offset: 0,
        mmap_handle: r.fd,
        ..Default::default()
    }
}

pub(crate) fn vh<T>(request: &'static str, r: vhost::Result<T>) -> Result<T, Error> {
    r.map_err(|source| Error::Vhost { request, source })
}

/// Adds what `fd` counted since the last read to `counter`.
pub(crate) fn drain(fd: &EventFd, counter: &Cell<u64>) {
    if let Ok(v) = fd.read() {
        counter.set(counter.get() + v);
    }
}

/// Connects (retrying until `deadline`: a listener about to be replaced, by a device restarting
/// after the previous frontend left, may accept and then reset) and reads the feature offer.
fn connect_frontend(socket: &Path, nq: u64, timeout: Duration) -> Result<(Frontend, u64), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = Frontend::connect(socket, nq).and_then(|f| {
            f.set_owner()?;
            let offered = f.get_features()?;
            Ok((f, offered))
        });
        match attempt {
            Ok(ok) => return Ok(ok),
            Err(source) if Instant::now() >= deadline => {
                return Err(Error::Connect {
                    path: socket.to_path_buf(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Negotiates the protocol features the kit uses (MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS
/// where offered) and checks the device has `nq` queues.
pub(crate) fn negotiate_protocol(
    frontend: &mut Frontend,
    acked: u64,
    nq: u64,
) -> Result<VhostUserProtocolFeatures, Error> {
    if acked & features::PROTOCOL_FEATURES == 0 {
        return Ok(VhostUserProtocolFeatures::empty());
    }
    let pf = vh("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
    let protocol = pf
        & (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
    vh(
        "SET_PROTOCOL_FEATURES",
        frontend.set_protocol_features(protocol),
    )?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let n = vh("GET_QUEUE_NUM", frontend.get_queue_num())?;
        if n < nq {
            return Err(Error::InvalidArgument(format!(
                "device has {n} queues, {nq} wanted"
            )));
        }
    }
    Ok(protocol)
}

/// Tells the device where vring `q` lives and which eventfds it uses.
pub(crate) fn set_up_vring(
    frontend: &mut Frontend,
    mem: &GuestMem,
    q: usize,
    ring: &DriverRing,
    base: u16,
) -> Result<(), Error> {
    let vring = VringConfigData {
        queue_max_size: ring.size,
        queue_size: ring.size,
        flags: 0,
        desc_table_addr: mem.host_addr(ring.desc)?,
        used_ring_addr: mem.host_addr(ring.used)?,
        avail_ring_addr: mem.host_addr(ring.avail)?,
        log_addr: None,
    };
    vh("SET_VRING_NUM", frontend.set_vring_num(q, ring.size))?;
    vh("SET_VRING_ADDR", frontend.set_vring_addr(q, &vring))?;
    vh("SET_VRING_BASE", frontend.set_vring_base(q, base))?;
    vh("SET_VRING_CALL", frontend.set_vring_call(q, &ring.call))?;
    vh("SET_VRING_KICK", frontend.set_vring_kick(q, &ring.kick))
}

impl TestGuest {
    /// Connects to the device at `socket` (retrying for a few seconds until it accepts) and
    /// brings it up like QEMU does: owner, features (the AND of `cfg.features` and the offer,
    /// plus `VHOST_USER_F_PROTOCOL_FEATURES`), protocol features (MQ, REPLY_ACK, CONFIG,
    /// CONFIGURE_MEM_SLOTS where offered), memory table, every vring, RX buffers when
    /// [`GuestConfig::rx_fill`] asks for them, and enables all rings.
    pub fn connect(socket: &Path, cfg: GuestConfig) -> Result<TestGuest, Error> {
        Self::connect_with_timeout(socket, cfg, CONNECT_TIMEOUT)
    }

    /// [`Self::connect`] with a chosen retry deadline for the socket to appear and answer.
    pub fn connect_with_timeout(
        socket: &Path,
        cfg: GuestConfig,
        timeout: Duration,
    ) -> Result<TestGuest, Error> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > 0x4000 {
            return Err(Error::InvalidArgument(format!(
                "queue_pairs {}",
                cfg.queue_pairs
            )));
        }
        let nq = 2 * u64::from(cfg.queue_pairs);
        let (frontend, offered) = connect_frontend(socket, nq, timeout)?;
        Self::bring_up(frontend, offered, cfg, socket)
    }

    /// Brings up the device behind `frontend` (whose feature offer was `offered`).
    pub(crate) fn bring_up(
        mut frontend: Frontend,
        offered: u64,
        cfg: GuestConfig,
        socket: &Path,
    ) -> Result<TestGuest, Error> {
        let nq = 2 * u64::from(cfg.queue_pairs);
        let acked = (cfg.features | features::PROTOCOL_FEATURES) & offered;
        let protocol = negotiate_protocol(&mut frontend, acked, nq)?;
        if cfg.queue_pairs > 1
            && (acked & features::MQ == 0 || !protocol.contains(VhostUserProtocolFeatures::MQ))
        {
            return Err(Error::Unsupported(
                "multiqueue (VIRTIO_NET_F_MQ + protocol MQ)",
            ));
        }
        vh("SET_FEATURES", frontend.set_features(acked))?;

        let mut mem = GuestMem::new(cfg.mem_size)?;
        let regions: Vec<VhostUserMemoryRegionInfo> =
            mem.regions()?.iter().map(region_info).collect();
        vh("SET_MEM_TABLE", frontend.set_mem_table(&regions))?;

        let event_idx = acked & features::EVENT_IDX != 0;
        let mut pairs = Vec::with_capacity(usize::from(cfg.queue_pairs));
        for _ in 0..cfg.queue_pairs {
            pairs.push(Pair {
                rx: DriverRing::new(&mut mem, cfg.queue_size, event_idx)?,
                tx: DriverRing::new(&mut mem, cfg.queue_size, event_idx)?,
                partial: None,
                tx_done: 0,
                rx_calls: Cell::new(0),
                tx_calls: Cell::new(0),
                slots: Vec::new(),
                count_rest: 0,
            });
        }
        for (p, pair) in pairs.iter().enumerate() {
            set_up_vring(&mut frontend, &mem, 2 * p, &pair.rx, 0)?;
            set_up_vring(&mut frontend, &mem, 2 * p + 1, &pair.tx, 0)?;
        }
        let hdr_len = pvnet_backend::net::net_hdr_len(acked);
        let mut guest = TestGuest {
            frontend,
            mem,
            cfg,
            acked,
            protocol,
            hdr_len,
            pairs,
            repost: Repost::Batch,
            device_errors: 0,
            sleeps: 0,
            timeouts: 0,
            sink: Vec::new(),
            listener: None,
        };
        if let Some(len) = guest.cfg.rx_fill {
            for p in 0..guest.cfg.queue_pairs {
                guest.post_rx(p, usize::from(guest.cfg.queue_size), len)?;
            }
        }
        let n = guest.cfg.queue_pairs;
        guest.set_enabled_pairs(n)?;
        log::debug!(
            "testkit: connected to {} with features {acked:#x}, protocol {protocol:?}",
            socket.display()
        );
        Ok(guest)
    }

    /// The negotiated virtio feature bits (including `VHOST_USER_F_PROTOCOL_FEATURES`).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// True if `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn event_idx(&self) -> bool {
        self.acked & features::EVENT_IDX != 0
    }

    /// True if `VIRTIO_NET_F_MRG_RXBUF` was negotiated.
    pub fn mergeable_rx(&self) -> bool {
        self.acked & features::MRG_RXBUF != 0
    }

    /// The negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Size of the net header in use (12 with VERSION_1 or MRG_RXBUF, else 10).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The configuration this guest was built with.
    pub fn guest_config(&self) -> &GuestConfig {
        &self.cfg
    }

    /// The guest's MAC address ([`GuestConfig::mac`]).
    pub fn mac(&self) -> [u8; 6] {
        self.cfg.mac
    }

    /// Reads the device config space with GET_CONFIG (needs protocol feature CONFIG).
    pub fn config(&mut self) -> Result<NetConfig, Error> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::Unsupported("GET_CONFIG (protocol feature CONFIG)"));
        }
        let buf = [0u8; NetConfig::LEN];
        let (_, data) = vh(
            "GET_CONFIG",
            self.frontend.get_config(
                0,
                NetConfig::LEN as u32,
                vhost::vhost_user::message::VhostUserConfigFlags::empty(),
                &buf,
            ),
        )?;
        NetConfig::from_bytes(&data).ok_or(Error::Unsupported("a 12-byte net config space"))
    }

    /// Enables pairs `0..n` and disables pairs `n..` (SET_VRING_ENABLE on both rings), as the
    /// Linux driver does for `ethtool -L combined n`. Without protocol features rings are always
    /// enabled and only `n == queue_pairs` is accepted.
    pub fn set_enabled_pairs(&mut self, n: u16) -> Result<(), Error> {
        if n == 0 || n > self.cfg.queue_pairs {
            return Err(Error::InvalidArgument(format!("enabled pairs {n}")));
        }
        if self.acked & features::PROTOCOL_FEATURES == 0 {
            return if n == self.cfg.queue_pairs {
                Ok(())
            } else {
                Err(Error::Unsupported("SET_VRING_ENABLE (protocol features)"))
            };
        }
        for p in 0..self.cfg.queue_pairs {
            let on = p < n;
            let q = 2 * usize::from(p);
            vh("SET_VRING_ENABLE", self.frontend.set_vring_enable(q, on))?;
            vh(
                "SET_VRING_ENABLE",
                self.frontend.set_vring_enable(q + 1, on),
            )?;
        }
        Ok(())
    }

    /// Guest addresses of the used index (`used.idx`) of pair `pair`'s RX and TX rings, for
    /// a test thread that watches the device's publications through a clone of
    /// [`Self::memory`] (an atomic `u16` load each).
    pub fn used_idx_addrs(&mut self, pair: u16) -> Result<(u64, u64), Error> {
        let p = self.pair(pair)?;
        Ok((p.rx.used + 2, p.tx.used + 2))
    }

    pub(crate) fn pair(&mut self, pair: u16) -> Result<&mut Pair, Error> {
        self.pairs
            .get_mut(usize::from(pair))
            .ok_or(Error::NoSuchPair(pair))
    }

    /// Copies `data` into guest memory at guest-physical `addr`.
    pub fn write_guest(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        Ok(self.mem.mem().write_slice(data, GuestAddress(addr))?)
    }

    /// Reads `len` bytes of guest memory at guest-physical `addr`.
    pub fn read_guest(&self, addr: u64, len: usize) -> Result<Vec<u8>, Error> {
        let mut v = vec![0u8; len];
        self.mem.mem().read_slice(&mut v, GuestAddress(addr))?;
        Ok(v)
    }

    /// Allocates `len` bytes (64-byte aligned, never freed) from the guest's bump allocator.
    pub fn alloc(&mut self, len: u64) -> Result<u64, Error> {
        self.mem.alloc(len, 64)
    }

    /// Guest memory regions as `(guest-physical start, length)`: two adjacent ones from 0, then
    /// one at 4 GiB. Anything else (e.g. `regions[1].0 + regions[1].1`) is outside every region.
    pub fn memory_regions(&self) -> Vec<(u64, u64)> {
        self.mem
            .regions()
            .map(|r| r.iter().map(|r| (r.gpa, r.len)).collect())
            .unwrap_or_default()
    }

    /// The guest memory itself, for direct inspection.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        self.mem.mem()
    }

    /// Used entries that made no sense (unknown id, length beyond the buffer, no header,
    /// a chain without kit buffers, num_buffers 0): a correct device keeps this at 0.
    pub fn device_errors(&self) -> u64 {
        self.device_errors
    }

    /// How often the device signalled the call eventfds of `pair`: `(rx, tx)`.
    pub fn notifications(&self, pair: u16) -> (u64, u64) {
        match self.pairs.get(usize::from(pair)) {
            Some(p) => {
                drain(&p.rx.call, &p.rx_calls);
                drain(&p.tx.call, &p.tx_calls);
                (p.rx_calls.get(), p.tx_calls.get())
            }
            None => (0, 0),
        }
    }

    /// How often the driver kicked the device on `pair`: `(rx, tx)`.
    pub fn kicks(&self, pair: u16) -> (u64, u64) {
        self.pairs
            .get(usize::from(pair))
            .map_or((0, 0), |p| (p.rx.kicks, p.tx.kicks))
    }

    /// Kicks of every ring of this guest.
    pub fn total_kicks(&self) -> u64 {
        self.pairs.iter().map(|p| p.rx.kicks + p.tx.kicks).sum()
    }

    /// Turns device notifications (interrupts) on or off per ring of `pair`: with EVENT_IDX
    /// through `used_event`, otherwise with `VRING_AVAIL_F_NO_INTERRUPT` (a hint only).
    pub fn set_interrupts(&mut self, pair: u16, rx_on: bool, tx_on: bool) -> Result<(), Error> {
        let p = self.pair(pair)?;
        p.rx.set_suppress(!rx_on);
        p.tx.set_suppress(!tx_on);
        Ok(())
    }

    /// Closes the vhost-user socket and unmaps guest memory.
    pub fn disconnect(self) {
        drop(self);
    }
}
