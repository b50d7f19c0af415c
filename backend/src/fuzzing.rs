//! Entry points for the fuzz targets in `fuzz/` (not part of the API; hidden from the docs).
//!
//! [`run_tx`] drives one port's real TX path — descriptor-chain validation, grant checks,
//! header parsing, switching, offload fallback and delivery into another port's RX ring —
//! over a split ring that the caller laid out (with arbitrary, possibly hostile, contents)
//! in guest memory. It goes through the device's public `VhostUserBackend` interface (what
//! the vhost-user worker threads call), so it keeps working whatever the data path looks
//! like inside.

use crate::config::Config;
use crate::device::NetDevice;
use crate::switch::{Fabric, LockSet, Vring};
use pvnet_locks::family::{PercpuFenced, Pvqspin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vhost_user_backend::{VhostUserBackend, VringT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Where the transmitting port's TX ring lies in its guest memory.
#[derive(Clone, Copy, Debug)]
pub struct TxRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Ring size (a power of two, at most 256).
    pub size: u16,
}

/// What one [`run_tx`] did (for the fuzz target's sanity checks).
#[derive(Clone, Copy, Debug, Default)]
pub struct TxReport {
    /// Frames port 0 sent (consumed chains with a frame).
    pub tx_frames: u64,
    /// Frames port 0 dropped, for any reason.
    pub tx_drops: u64,
    /// Frames port 1 received.
    pub rx_frames: u64,
}

/// RX buffers posted on the receiving port, and their size.
const RX_BUFS: u16 = 64;
const RX_BUF_LEN: u32 = 2048;

fn vring(mem: &GuestMemoryMmap, desc: u64, avail: u64, used: u64, size: u16) -> Option<Vring> {
    let gm = vm_memory::GuestMemoryAtomic::new(mem.clone());
    let v = Vring::new(gm, 256).ok()?;
    v.set_queue_size(size);
    v.set_queue_info(desc, avail, used).ok()?;
    v.set_queue_ready(true);
    v.set_enabled(true);
    Some(v)
}

/// The receiving port's memory: an RX ring of size [`RX_BUFS`] with every buffer posted.
fn rx_memory() -> Option<(GuestMemoryMmap, Vring)> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 18)]).ok()?;
    let (desc, avail, used, bufs) = (0x0u64, 0x1000u64, 0x2000u64, 0x4000u64);
    for i in 0..RX_BUFS {
        let d = desc + 16 * u64::from(i);
        let addr = bufs + u64::from(i) * u64::from(RX_BUF_LEN);
        mem.write_obj(addr, GuestAddress(d)).ok()?;
        mem.write_obj(RX_BUF_LEN, GuestAddress(d + 8)).ok()?;
        mem.write_obj(2u16, GuestAddress(d + 12)).ok()?; // VRING_DESC_F_WRITE
        mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
            .ok()?;
    }
    mem.write_obj(RX_BUFS, GuestAddress(avail + 2)).ok()?;
    let v = vring(&mem, desc, avail, used, RX_BUFS)?;
    Some((mem, v))
}

/// The lock set the harness runs with (the fuzz targets look for crashes, not lock speed).
type Harness = LockSet<PercpuFenced, Pvqspin>;

fn device(
    fabric: &Arc<Fabric<Harness>>,
    port: usize,
    mem: &GuestMemoryMmap,
    features: u64,
) -> Arc<NetDevice<Harness>> {
    let sw = &fabric.sw;
    let dev = Arc::new(NetDevice::new(fabric.clone(), port).expect("eventfd/timerfd"));
    dev.memory().lock().unwrap().replace(mem.clone());
    let _ = fabric.ports[port]
        .grants
        .replace_from_memory(&dev.memory().memory());
    let feats = features & dev.features();
    dev.set_event_idx(feats & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0);
    dev.acked_features(feats);
    sw.ports[port].connected.store(true, Ordering::Release);
    dev
}

/// Runs port 0's TX path once over `ring` in `mem` (acknowledged virtio features
/// `features`), delivering into port 1 (a guest that negotiated `rx_features` and posted
/// 64 buffers of 2 KiB). Returns `None` only if the harness itself cannot be set up.
pub fn run_tx(
    mem: &GuestMemoryMmap,
    ring: TxRing,
    features: u64,
    rx_features: u64,
) -> Option<TxReport> {
    let fabric = Fabric::<Harness>::new(crate::switch::Switch::new(Config {
        sockets: vec!["/nonexistent/fuzz0".into(), "/nonexistent/fuzz1".into()],
        queue_pairs: 1,
        ..Config::default()
    }));
    let sw = &fabric.sw;
    let (mem1, rx1) = rx_memory()?;
    let tx1 = vring(&mem1, 0x3000, 0x3800, 0x3c00, 4)?;
    let dev1 = device(&fabric, 1, &mem1, rx_features);
    // An RX event attaches port 1's RX ring to the switch.
    let _ = dev1.handle_event(0, EventSet::IN, &[rx1.clone(), tx1.clone()], 0);
    let dev0 = device(&fabric, 0, mem, features);
    // Port 0's own RX ring: an empty ring somewhere harmless (it receives floods from nobody).
    let rx0 = vring(&mem1, 0x3000, 0x3800, 0x3c00, 4)?;
    let tx0 = vring(mem, ring.desc, ring.avail, ring.used, ring.size)?;
    // A TX kick.
    let _ = dev0.handle_event(1, EventSet::IN, &[rx0, tx0], 0);
    let tx = sw.ports[0].queue_snapshot(0);
    let rx = sw.ports[1].queue_snapshot(0);
    dev0.detach();
    dev1.detach();
    Some(TxReport {
        tx_frames: tx.tx_frames,
        tx_drops: tx.total_drops(),
        rx_frames: rx.rx_frames,
    })
}

/// What one [`run_tap`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct TapReport {
    /// Messages handed to the reading tap port.
    pub offered: usize,
    /// Frames it classified (counted `tx_frames`).
    pub tx_frames: u64,
    /// Its drops, for any reason.
    pub tx_drops: u64,
    /// Messages the receiving tap port wrote.
    pub written: usize,
}

/// A non-blocking `SOCK_SEQPACKET` pair (stands in for a tap queue and the host side).
fn seqpacket_pair() -> Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    let ty = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair fills the two-element array we own; the result is checked.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Some(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Drives the host-to-switch path of a tap port over `msgs` (each one message as a tap
/// hands it over: a 12-byte virtio-net header and a frame, arbitrary bytes): tap port 0
/// reads, classifies and switches them to tap port 1 (which takes offloads as they are when
/// `offload`, else gets them completed or segmented in software). Returns `None` only if
/// the harness itself cannot be set up.
pub fn run_tap(msgs: &[&[u8]], offload: bool) -> Option<TapReport> {
    use crate::datapath::rxq::Waker;
    use crate::datapath::tapsrc::TapSource;
    use crate::tap::{TapDevice, TapPort};
    use std::os::fd::AsRawFd;
    let (a, host_a) = seqpacket_pair()?;
    let (b, host_b) = seqpacket_pair()?;
    let port = |name: &str, fd, offload| {
        let dev = TapDevice {
            name: name.into(),
            fds: vec![fd],
            created: false,
            offload,
        };
        TapPort::new(dev).ok().map(Arc::new)
    };
    let taps = vec![port("fz0", a, true)?, port("fz1", b, offload)?];
    let sw = crate::switch::Switch::with_taps(Config::default(), taps);
    let fabric = Fabric::<Harness>::new(sw.clone());
    let mut r = TapReport::default();
    for m in msgs {
        // SAFETY: sends from a buffer that lives for the call.
        let n = unsafe { libc::send(host_a.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            break;
        }
        r.offered += 1;
    }
    let mut buf = vec![0u8; crate::datapath::tapsrc::TAP_BUF + 64];
    let mut drain = |r: &mut TapReport| loop {
        // SAFETY: receives into a buffer we own, at most its length.
        let n = unsafe { libc::recv(host_b.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            break;
        }
        assert!(
            n as usize >= crate::net::hdr::HDR_LEN,
            "a message without its header"
        );
        r.written += 1;
    };
    let fd = sw.ports[0].tap()?.queues[0].fd();
    let mut src = TapSource::new(0, 0, Arc::new(Waker::new().ok()?));
    for _ in 0..10_000 {
        match src.read_burst(fd, &sw) {
            Ok(0) | Err(_) => break,
            Ok(_) => src.deliver(&fabric, false),
        }
        // A full receiver: the host side reads, the held frames go again (bounded: what
        // still waits then is dropped as after the back-pressure bound).
        for _ in 0..100 {
            if !src.held() {
                break;
            }
            drain(&mut r);
            src.deliver(&fabric, true);
        }
        src.expire(&sw, std::time::Instant::now(), std::time::Duration::ZERO);
    }
    drain(&mut r);
    let s = sw.ports[0].queue_snapshot(0);
    r.tx_frames = s.tx_frames;
    r.tx_drops = s.total_drops();
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host frames through two tap ports: a sound one arrives, a runt is dropped, a TSO
    /// job is segmented for a receiver without offloads.
    #[test]
    fn run_tap_switches_drops_and_segments() {
        let mut good = vec![0u8; 12];
        good.extend_from_slice(&[0xff; 6]);
        good.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
        good.resize(12 + 60, 1);
        let runt = [0u8; 20];
        let r = run_tap(&[&good, &runt, &good], true).expect("harness");
        assert_eq!(
            (r.offered, r.tx_frames, r.tx_drops, r.written),
            (3, 2, 1, 2),
            "{r:?}"
        );
        // gso_type 0x33: nobody can segment it for a receiver without offloads.
        let mut bad = good.clone();
        bad[1] = 0x33;
        bad[4] = 100;
        let r = run_tap(&[&bad, &good], false).expect("harness");
        assert_eq!((r.tx_drops, r.written), (1, 1), "{r:?}");
    }

    /// Runs `f` on a thread; fails if it does not return within 10 s.
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the TX path returned")
    }

    /// Found by the tx_ring fuzz target: an avail index more than a ring size ahead made the
    /// TX loop spin forever (nothing could be popped, yet enable_notification kept reporting
    /// "more"), a worker thread lost at 100% CPU that never took its exit event.
    #[test]
    fn bogus_avail_index_does_not_spin() {
        let r = bounded(|| {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
            mem.write_obj(0x7a15u16, GuestAddress(0x1002)).unwrap();
            let ring = TxRing {
                desc: 0,
                avail: 0x1000,
                used: 0x2000,
                size: 8,
            };
            run_tx(&mem, ring, u64::MAX, u64::MAX).unwrap()
        });
        assert_eq!(r.tx_frames, 0);
    }

    /// A two-descriptor chain (header, then a broadcast frame) reaches port 1; a chain that
    /// points outside guest memory is dropped.
    #[test]
    fn run_tx_moves_a_frame_and_drops_a_bad_chain() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let (desc, avail, used) = (0u64, 0x1000u64, 0x2000u64);
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        frame.resize(60, 0);
        mem.write_slice(&[0u8; 12], GuestAddress(0x4000)).unwrap();
        mem.write_slice(&frame, GuestAddress(0x5000)).unwrap();
        let d = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            mem.write_obj(addr, GuestAddress(desc + 16 * i)).unwrap();
            mem.write_obj(len, GuestAddress(desc + 16 * i + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(desc + 16 * i + 12))
                .unwrap();
            mem.write_obj(next, GuestAddress(desc + 16 * i + 14))
                .unwrap();
        };
        d(0, 0x4000, 12, 1, 1);
        d(1, 0x5000, 60, 0, 0);
        d(2, 0x10_0000, 72, 0, 0);
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        mem.write_obj(2u16, GuestAddress(avail + 6)).unwrap();
        mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
        let ring = TxRing {
            desc,
            avail,
            used,
            size: 8,
        };
        let all = u64::MAX;
        let r = run_tx(&mem, ring, all, all).unwrap();
        assert_eq!(r.tx_frames, 1, "{r:?}");
        assert_eq!(r.rx_frames, 1, "{r:?}");
        assert_eq!(r.tx_drops, 1, "{r:?}");
    }
}
