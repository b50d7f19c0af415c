//! [`TestGuest`]: the vhost-user frontend plus the split-ring virtio-net driver.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::config::features;
use crate::mem::GuestMem;
use crate::ring::{DescSpec, DriverRing, NextSlot};
use crate::{Error, GuestConfig, NetConfig, VirtioNetHdr};

/// How long [`TestGuest::connect`] keeps retrying while the socket does not accept yet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// With `tx_split`, frame bytes are cut into descriptors of at most this size.
const TX_SPLIT_PIECE: usize = 16 << 10;

/// A frame received on an RX ring, reassembled from its buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The net header as the device wrote it (from the first buffer).
    pub hdr: VirtioNetHdr,
    /// The Ethernet frame, header stripped.
    pub frame: Vec<u8>,
    /// How many RX buffers (used entries) it occupied.
    pub buffers: u16,
}

/// Where a [`RawDesc`]'s `next` field points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RawNext {
    /// The next descriptor of the slice (its table slot); 0 for the last one.
    #[default]
    Follow,
    /// The descriptor at this position of the slice (e.g. 0 to make a loop).
    Chain(usize),
    /// This raw descriptor-table index, unchecked (may be out of range).
    Raw(u16),
}

/// A descriptor exactly as the caller wants it in the table, for hostile / malformed chains.
/// `flags` are raw `VRING_DESC_F_*` bits (NEXT = 1, WRITE = 2, INDIRECT = 4); the kit does not
/// add NEXT by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical buffer address (may be outside guest memory).
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// What to write in the `next` field.
    pub next: RawNext,
}

struct Partial {
    hdr: VirtioNetHdr,
    frame: Vec<u8>,
    want: u16,
    got: u16,
}

struct Pair {
    rx: DriverRing,
    tx: DriverRing,
    partial: Option<Partial>,
    tx_done: usize,
    rx_calls: Cell<u64>,
    tx_calls: Cell<u64>,
}

/// An in-process guest: a connected vhost-user frontend with its memory and rings.
pub struct TestGuest {
    frontend: Frontend,
    mem: GuestMem,
    cfg: GuestConfig,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
    hdr_len: usize,
    pairs: Vec<Pair>,
    auto_repost: bool,
    device_errors: u64,
}

// `..Default::default()` fills the extra fields vhost has with its "xen" feature.
#[allow(clippy::needless_update)]
fn region_info(r: &crate::mem::RegionInfo) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.gpa,
        memory_size: r.len,
        userspace_addr: r.host,
        mmap_offset: 0,
        mmap_handle: r.fd,
        ..Default::default()
    }
}

fn vh<T>(request: &'static str, r: vhost::Result<T>) -> Result<T, Error> {
    r.map_err(|source| Error::Vhost { request, source })
}

fn drain(fd: &EventFd, counter: &Cell<u64>) {
    if let Ok(v) = fd.read() {
        counter.set(counter.get() + v);
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
fn wait_readable(fds: &[i32], timeout: Duration) -> Result<(), Error> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd structs
    // that outlives the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
    Ok(())
}

impl TestGuest {
    /// Connects to the device at `socket` (retrying for a few seconds until it accepts) and
    /// brings it up like QEMU does: owner, features (the AND of `cfg.features` and the offer,
    /// plus `VHOST_USER_F_PROTOCOL_FEATURES`), protocol features (MQ, REPLY_ACK, CONFIG,
    /// CONFIGURE_MEM_SLOTS where offered), memory table, every vring, and enables all rings.
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
        // Retry until the device accepts and answers: a listener that is about to be replaced
        // (a device restarting after the previous frontend left) may accept and then reset.
        let deadline = Instant::now() + timeout;
        let (mut frontend, offered) = loop {
            let attempt = Frontend::connect(socket, nq).and_then(|f| {
                f.set_owner()?;
                let offered = f.get_features()?;
                Ok((f, offered))
            });
            match attempt {
                Ok(ok) => break ok,
                Err(source) if Instant::now() >= deadline => {
                    return Err(Error::Connect {
                        path: socket.to_path_buf(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let acked = (cfg.features | features::PROTOCOL_FEATURES) & offered;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if acked & features::PROTOCOL_FEATURES != 0 {
            let pf = vh("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
            protocol = pf
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
        }
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
            });
        }
        for (p, pair) in pairs.iter().enumerate() {
            for (q, ring) in [(2 * p, &pair.rx), (2 * p + 1, &pair.tx)] {
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
                vh("SET_VRING_BASE", frontend.set_vring_base(q, 0))?;
                vh("SET_VRING_CALL", frontend.set_vring_call(q, &ring.call))?;
                vh("SET_VRING_KICK", frontend.set_vring_kick(q, &ring.kick))?;
            }
        }
        let hdr_len = if acked & (features::VERSION_1 | features::MRG_RXBUF) != 0 {
            VirtioNetHdr::LEN
        } else {
            VirtioNetHdr::LEGACY_LEN
        };
        let mut guest = TestGuest {
            frontend,
            mem,
            cfg,
            acked,
            protocol,
            hdr_len,
            pairs,
            auto_repost: true,
            device_errors: 0,
        };
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

    fn pair(&mut self, pair: u16) -> Result<&mut Pair, Error> {
        self.pairs
            .get_mut(usize::from(pair))
            .ok_or(Error::NoSuchPair(pair))
    }

    /// Posts up to `count` RX buffers of `buf_len` bytes (one writable descriptor each) and
    /// kicks; returns how many were posted (fewer when the ring fills up).
    pub fn post_rx(&mut self, pair: u16, count: usize, buf_len: u32) -> Result<usize, Error> {
        if buf_len == 0 {
            return Err(Error::InvalidArgument("RX buffer length 0".into()));
        }
        let m = self.mem.mem().clone();
        let room = self.pair(pair)?.rx.free_descs().min(count);
        for _ in 0..room {
            let addr = self.mem.alloc_buf(buf_len)?;
            let p = &mut self.pairs[usize::from(pair)];
            p.rx.add_chain(
                &m,
                &[(addr, buf_len, VRING_DESC_F_WRITE as u16)],
                &[],
                vec![(addr, buf_len)],
            )?;
        }
        self.pairs[usize::from(pair)].rx.publish(&m)?;
        Ok(room)
    }

    /// Re-post consumed RX buffers automatically in [`Self::recv`] (default on).
    pub fn set_auto_repost(&mut self, on: bool) {
        self.auto_repost = on;
    }

    /// Sends one frame: writes `hdr` + `frame` into guest memory, adds a TX chain (one
    /// descriptor, or header + frame pieces with `tx_split`), publishes and kicks if the device
    /// wants a kick. Reclaims used TX chains first when short of descriptors;
    /// `Err(RingFull)` if there is still no room.
    pub fn send(&mut self, pair: u16, hdr: &VirtioNetHdr, frame: &[u8]) -> Result<(), Error> {
        match self.send_batch(pair, &[(*hdr, frame)])? {
            0 => Err(Error::RingFull),
            _ => Ok(()),
        }
    }

    /// Queues as many of `frames` as fit (reclaiming used TX chains when needed), then
    /// publishes them with at most one kick; returns how many were queued.
    pub fn send_batch(
        &mut self,
        pair: u16,
        frames: &[(VirtioNetHdr, &[u8])],
    ) -> Result<usize, Error> {
        let m = self.mem.mem().clone();
        self.pair(pair)?;
        let mut sent = 0;
        for (hdr, frame) in frames {
            let pieces = if self.cfg.tx_split {
                1 + frame.len().div_ceil(TX_SPLIT_PIECE).max(1)
            } else {
                1
            };
            if self.pairs[usize::from(pair)].tx.free_descs() < pieces {
                self.reclaim_inner(pair)?;
                if self.pairs[usize::from(pair)].tx.free_descs() < pieces {
                    break;
                }
            }
            let total = self.hdr_len + frame.len();
            let len = u32::try_from(total)
                .map_err(|_| Error::InvalidArgument(format!("frame of {total} bytes")))?;
            let addr = self.mem.alloc_buf(len)?;
            m.write_slice(&hdr.to_bytes()[..self.hdr_len], GuestAddress(addr))?;
            m.write_slice(frame, GuestAddress(addr + self.hdr_len as u64))?;
            let next = VRING_DESC_F_NEXT as u16;
            let descs: Vec<DescSpec> = if self.cfg.tx_split {
                let mut d = vec![(addr, self.hdr_len as u32, next)];
                let mut off = self.hdr_len;
                loop {
                    let n = (total - off).min(TX_SPLIT_PIECE);
                    d.push((addr + off as u64, n as u32, next));
                    off += n;
                    if off >= total {
                        break;
                    }
                }
                if let Some(last) = d.last_mut() {
                    last.2 = 0;
                }
                d
            } else {
                vec![(addr, len, 0)]
            };
            self.pairs[usize::from(pair)]
                .tx
                .add_chain(&m, &descs, &[], vec![(addr, len)])?;
            sent += 1;
        }
        self.pairs[usize::from(pair)].tx.publish(&m)?;
        Ok(sent)
    }

    fn raw_chain(descs: &[RawDesc]) -> (Vec<DescSpec>, Vec<Option<NextSlot>>) {
        let d = descs.iter().map(|d| (d.addr, d.len, d.flags)).collect();
        let n = descs
            .iter()
            .map(|d| match d.next {
                RawNext::Follow => None,
                RawNext::Chain(i) => Some(NextSlot::Chain(i)),
                RawNext::Raw(r) => Some(NextSlot::Raw(r)),
            })
            .collect();
        (d, n)
    }

    /// Places an arbitrary (possibly malformed or hostile) descriptor chain on the TX ring of
    /// `pair` and kicks. Buffers are whatever the caller put at those addresses
    /// ([`Self::alloc`], [`Self::write_guest`]); indirect tables too.
    pub fn send_chain(&mut self, pair: u16, descs: &[RawDesc]) -> Result<(), Error> {
        let m = self.mem.mem().clone();
        let (d, n) = Self::raw_chain(descs);
        if self.pair(pair)?.tx.free_descs() < d.len() {
            self.reclaim_inner(pair)?;
        }
        let p = self.pair(pair)?;
        p.tx.add_chain(&m, &d, &n, Vec::new())?;
        p.tx.publish(&m)
    }

    /// Like [`Self::send_chain`] but on the RX ring: an arbitrary buffer chain offered to the
    /// device for receiving (e.g. read-only or out-of-range buffers). If the device uses it,
    /// [`Self::recv`] skips it and counts a device error.
    pub fn post_rx_chain(&mut self, pair: u16, descs: &[RawDesc]) -> Result<(), Error> {
        let m = self.mem.mem().clone();
        let (d, n) = Self::raw_chain(descs);
        let p = self.pair(pair)?;
        p.rx.add_chain(&m, &d, &n, Vec::new())?;
        p.rx.publish(&m)
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

    fn reclaim_inner(&mut self, pair: u16) -> Result<(), Error> {
        let m = self.mem.mem().clone();
        let p = self.pair(pair)?;
        drain(&p.tx.call, &p.tx_calls);
        let used = p.tx.harvest(&m)?;
        let mut bufs = Vec::new();
        let mut bad = 0;
        for (id, _) in used {
            match p.tx.release(id) {
                Some(inf) => {
                    bufs.extend(inf.bufs);
                    p.tx_done += 1;
                }
                None => bad += 1,
            }
        }
        self.device_errors += bad;
        for (a, l) in bufs {
            self.mem.free_buf(a, l);
        }
        Ok(())
    }

    /// Number of TX chains the device returned (used) since the last call.
    pub fn reclaim_tx(&mut self, pair: u16) -> usize {
        if self.reclaim_inner(pair).is_err() {
            return 0;
        }
        std::mem::take(&mut self.pairs[usize::from(pair)].tx_done)
    }

    /// TX chains handed to the device and not yet returned, on `pair`.
    pub fn tx_in_flight(&self, pair: u16) -> usize {
        self.pairs
            .get(usize::from(pair))
            .map_or(0, |p| p.tx.in_flight())
    }

    /// RX buffers currently posted to the device on `pair`.
    pub fn rx_posted(&self, pair: u16) -> usize {
        self.pairs
            .get(usize::from(pair))
            .map_or(0, |p| p.rx.in_flight())
    }

    /// Used entries that made no sense (unknown id, length beyond the buffer, no header,
    /// a chain without kit buffers, num_buffers 0): a correct device keeps this at 0.
    pub fn device_errors(&self) -> u64 {
        self.device_errors
    }

    /// Turns device notifications (interrupts) on or off per ring of `pair`: with EVENT_IDX
    /// through `used_event`, otherwise with `VRING_AVAIL_F_NO_INTERRUPT` (a hint only).
    pub fn set_interrupts(&mut self, pair: u16, rx_on: bool, tx_on: bool) -> Result<(), Error> {
        let m = self.mem.mem().clone();
        let p = self.pair(pair)?;
        p.rx.set_suppress(&m, !rx_on)?;
        p.tx.set_suppress(&m, !tx_on)
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

    /// Harvests used RX entries of `pair`, reassembles frames, re-posts (or frees) buffers.
    fn collect_rx(&mut self, pair: u16) -> Result<Vec<RxFrame>, Error> {
        let m = self.mem.mem().clone();
        let mrg = self.acked & features::MRG_RXBUF != 0;
        let hdr_len = self.hdr_len;
        let idx = usize::from(pair);
        let used = self.pair(pair)?.rx.harvest(&m)?;
        let mut out = Vec::new();
        let mut done_bufs = Vec::new();
        for (id, len) in used {
            let Some(inf) = self.pairs[idx].rx.release(id) else {
                self.device_errors += 1;
                continue;
            };
            let Some(&(addr, blen)) = inf.bufs.first() else {
                self.device_errors += 1;
                continue;
            };
            done_bufs.push((addr, blen));
            if len > blen {
                self.device_errors += 1;
            }
            let len = len.min(blen) as usize;
            let mut data = vec![0u8; len];
            m.read_slice(&mut data, GuestAddress(addr))?;
            let p = &mut self.pairs[idx];
            if let Some(mut part) = p.partial.take() {
                part.frame.extend_from_slice(&data);
                part.got += 1;
                if part.got >= part.want {
                    out.push(RxFrame {
                        hdr: part.hdr,
                        frame: part.frame,
                        buffers: part.got,
                    });
                } else {
                    p.partial = Some(part);
                }
                continue;
            }
            let Some(hdr) = (len >= hdr_len)
                .then(|| VirtioNetHdr::from_bytes(&data[..hdr_len]))
                .flatten()
            else {
                self.device_errors += 1;
                continue;
            };
            let want = if mrg { hdr.num_buffers } else { 1 };
            if want == 0 {
                self.device_errors += 1;
            }
            let part = Partial {
                hdr,
                frame: data[hdr_len..].to_vec(),
                want: want.max(1),
                got: 1,
            };
            if part.got >= part.want {
                out.push(RxFrame {
                    hdr: part.hdr,
                    frame: part.frame,
                    buffers: 1,
                });
            } else {
                p.partial = Some(part);
            }
        }
        if self.auto_repost {
            let p = &mut self.pairs[idx];
            for &(addr, blen) in &done_bufs {
                p.rx.add_chain(
                    &m,
                    &[(addr, blen, VRING_DESC_F_WRITE as u16)],
                    &[],
                    vec![(addr, blen)],
                )?;
            }
            p.rx.publish(&m)?;
        } else {
            for (a, l) in done_bufs {
                self.mem.free_buf(a, l);
            }
        }
        Ok(out)
    }

    /// Waits (on the RX call eventfd, or by polling when RX interrupts are off) until used RX
    /// entries arrive or `timeout` passes, and returns the complete frames (empty on timeout).
    pub fn recv(&mut self, pair: u16, timeout: Duration) -> Result<Vec<RxFrame>, Error> {
        Ok(self
            .recv_until(Some(pair), 1, timeout)?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    /// Gathers frames from one pair (`Some`) or all pairs (`None`) until at least `n_frames`
    /// arrived or `timeout` passed; returns what arrived, tagged with the pair.
    pub fn recv_until(
        &mut self,
        pair: Option<u16>,
        n_frames: usize,
        timeout: Duration,
    ) -> Result<Vec<(u16, RxFrame)>, Error> {
        let pairs: Vec<u16> = match pair {
            Some(p) => {
                self.pair(p)?;
                vec![p]
            }
            None => (0..self.cfg.queue_pairs).collect(),
        };
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            for &p in &pairs {
                out.extend(self.collect_rx(p)?.into_iter().map(|f| (p, f)));
            }
            if out.len() >= n_frames {
                return Ok(out);
            }
            let m = self.mem.mem().clone();
            let mut pending = false;
            let mut polling = false;
            let mut fds = Vec::with_capacity(pairs.len());
            for &p in &pairs {
                let r = &self.pairs[usize::from(p)];
                pending |= r.rx.arm(&m)?;
                polling |= r.rx.suppressed();
                fds.push(r.rx.call.as_raw_fd());
            }
            if pending {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            let mut wait = deadline - now;
            if polling {
                wait = wait.min(Duration::from_millis(1));
            }
            wait_readable(&fds, wait)?;
            for &p in &pairs {
                let r = &self.pairs[usize::from(p)];
                drain(&r.rx.call, &r.rx_calls);
            }
        }
    }

    /// Closes the vhost-user socket and unmaps guest memory.
    pub fn disconnect(self) {
        drop(self);
    }
}
