//! Proves the kit against a real vhost-user daemon: a tiny loopback net device built on
//! vhost-user-backend that moves every TX frame of a pair into RX buffer(s) of the same pair.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pvnet_testkit::frames;
use pvnet_testkit::{features as f, GuestConfig, NetConfig, RawDesc, RawNext, TestGuest};
use pvnet_testkit::{Error, VirtioNetHdr};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringMutex, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

const HDR: usize = pvnet_backend::net::hdr::HDR_LEN;
const WAIT: Duration = Duration::from_secs(10);

/// RX chains popped but not yet filled: `(head, [(addr, len)] of writable descriptors)`.
type RxChain = (u16, Vec<(GuestAddress, u32)>);

/// Per-pair device state kept between events.
#[derive(Default)]
struct PairState {
    /// RX chains already popped. Holding them (instead of putting them back) keeps
    /// virtio-queue's `avail_event` at the driver's avail index, so the driver kicks for the
    /// next buffers it posts.
    stash: VecDeque<RxChain>,
    /// A TX frame (head, header + frame bytes) waiting for RX room.
    pending: Option<(u16, Vec<u8>)>,
}

/// The loopback device. Offers VERSION_1, MRG_RXBUF, MQ, EVENT_IDX, STATUS, MAC, MTU.
struct Loopback {
    pairs: usize,
    offered: u64,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    acked: u64,
    state: Vec<PairState>,
}

impl Loopback {
    fn mrg(&self) -> bool {
        self.acked & f::MRG_RXBUF != 0
    }

    /// Moves TX frames of one pair into its RX buffers until TX is empty or RX has no room.
    /// Returns true if it stopped for lack of RX buffers.
    fn pump(&mut self, pair: usize, rx: &VringMutex, tx: &VringMutex) -> std::io::Result<bool> {
        let (Some(atomic), true) = (self.mem.clone(), pair < self.state.len()) else {
            return Ok(false);
        };
        let mrg = self.mrg();
        let mem = atomic.memory();
        let st = &mut self.state[pair];
        let mut rxs = rx.get_mut();
        let mut txs = tx.get_mut();
        loop {
            let (head, mut data) = match st.pending.take() {
                Some(p) => p,
                None => {
                    let Some(chain) = txs.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                        return Ok(false);
                    };
                    let mut data = Vec::new();
                    let mut ok = true;
                    for d in chain.clone().readable() {
                        let start = data.len();
                        data.resize(start + d.len() as usize, 0);
                        ok &= mem.read_slice(&mut data[start..], d.addr()).is_ok();
                    }
                    if !ok || data.len() < HDR {
                        // Bad chain: return it unread.
                        txs.add_used(chain.head_index(), 0)
                            .map_err(std::io::Error::other)?;
                        continue;
                    }
                    (chain.head_index(), data)
                }
            };
            let room = |c: &RxChain| c.1.iter().map(|d| d.1 as usize).sum::<usize>();
            let mut have: usize = if mrg {
                st.stash.iter().map(room).sum()
            } else {
                st.stash.front().map_or(0, room)
            };
            while have < data.len() && (mrg || st.stash.is_empty()) {
                let Some(c) = rxs.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                    break;
                };
                let ws: Vec<_> = c.clone().writable().map(|d| (d.addr(), d.len())).collect();
                let chain = (c.head_index(), ws);
                have += room(&chain);
                st.stash.push_back(chain);
            }
            if have < data.len() {
                if !mrg && !st.stash.is_empty() {
                    // One buffer too small for this frame: drop the frame.
                    txs.add_used(head, 0).map_err(std::io::Error::other)?;
                    continue;
                }
                st.pending = Some((head, data));
                return Ok(true);
            }
            // How many chains the frame takes: that is num_buffers.
            let mut n = 0u16;
            let mut acc = 0;
            for c in &st.stash {
                n += 1;
                acc += room(c);
                if acc >= data.len() {
                    break;
                }
            }
            data[HDR - 2..HDR].copy_from_slice(&n.to_le_bytes());
            let mut off = 0;
            let mut used = Vec::new();
            for _ in 0..n {
                let Some((bhead, ws)) = st.stash.pop_front() else {
                    break;
                };
                let mut written = 0u32;
                for (addr, len) in ws {
                    let k = (data.len() - off).min(len as usize);
                    mem.write_slice(&data[off..off + k], addr)
                        .map_err(std::io::Error::other)?;
                    off += k;
                    written += k as u32;
                }
                used.push((bhead, written));
            }
            for (bhead, written) in used {
                rxs.add_used(bhead, written)
                    .map_err(std::io::Error::other)?;
            }
            txs.add_used(head, 0).map_err(std::io::Error::other)?;
        }
    }
}

impl VhostUserBackendMut for Loopback {
    type Bitmap = ();
    type Vring = VringMutex;

    fn num_queues(&self) -> usize {
        2 * self.pairs
    }
    fn max_queue_size(&self) -> usize {
        1024
    }
    fn features(&self) -> u64 {
        self.offered | f::PROTOCOL_FEATURES
    }
    fn acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = NetConfig {
            mac: [2, 0, 0, 0, 0, 0xaa],
            status: 1,
            max_virtqueue_pairs: self.pairs as u16,
            mtu: 1500,
        }
        .to_bytes();
        let (o, s) = (offset as usize, size as usize);
        cfg.get(o..o + s).map(<[u8]>::to_vec).unwrap_or_default()
    }
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs).map(|i| 0b11u64 << (2 * i)).collect()
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringMutex],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if device_event >= 2 || vrings.len() < 2 {
            return Ok(());
        }
        let (rx, tx) = (&vrings[0], &vrings[1]);
        loop {
            rx.disable_notification().map_err(std::io::Error::other)?;
            tx.disable_notification().map_err(std::io::Error::other)?;
            let blocked = self.pump(thread_id, rx, tx)?;
            let more_rx = rx.enable_notification().map_err(std::io::Error::other)?;
            let more_tx = tx.enable_notification().map_err(std::io::Error::other)?;
            if (blocked && !more_rx) || (!blocked && !more_tx) {
                break;
            }
        }
        for v in [rx, tx] {
            if v.needs_notification().map_err(std::io::Error::other)? {
                v.signal_used_queue()?;
            }
        }
        Ok(())
    }
}

/// Serves `conns` consecutive frontends on a fresh socket path.
fn serve(pairs: usize, offered: u64, conns: usize) -> (PathBuf, JoinHandle<()>) {
    // The serving thread owns the directory: it goes when the last frontend was served.
    let dir = pvnet_testkit::harness::tmpdir("loopback");
    let path = dir.join("loop.sock");
    let p = path.clone();
    let h = std::thread::spawn(move || {
        let _dir = dir;
        for _ in 0..conns {
            let backend = Arc::new(Mutex::new(Loopback {
                pairs,
                offered,
                mem: None,
                acked: 0,
                state: (0..pairs).map(|_| PairState::default()).collect(),
            }));
            let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
            let mut d = VhostUserDaemon::new("loopback".into(), backend, mem).expect("daemon");
            d.serve(&p).expect("serve");
        }
    });
    (path, h)
}

const DEVICE: u64 =
    f::VERSION_1 | f::MRG_RXBUF | f::MQ | f::EVENT_IDX | f::STATUS | f::MAC | f::MTU;

/// A verifiable frame: sequence number in the payload, pattern derived from it.
fn frame(seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(60);
    let mut payload: Vec<u8> = (0..len - 14)
        .map(|j| (seq as usize * 31 + j) as u8)
        .collect();
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    frames::eth([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0x88b5, &payload)
}

fn seq_of(fr: &[u8]) -> u32 {
    u32::from_be_bytes([fr[14], fr[15], fr[16], fr[17]])
}

/// Sends `sizes.len()` frames round-robin over the pairs, receiving as it goes, and checks
/// every frame comes back byte-exact, in order, on its own pair.
fn exchange(g: &mut TestGuest, pairs: u16, sizes: &[usize]) {
    let mut expect: Vec<std::collections::VecDeque<u32>> = vec![Default::default(); pairs.into()];
    let mut got = 0;
    let check = |g: &mut TestGuest, expect: &mut Vec<std::collections::VecDeque<u32>>| {
        let rx = g.recv_until(None, 1, WAIT).expect("recv");
        assert!(!rx.is_empty(), "loopback returned nothing within {WAIT:?}");
        for (p, r) in &rx {
            let seq = seq_of(&r.frame);
            assert_eq!(
                expect[usize::from(*p)].pop_front(),
                Some(seq),
                "order on pair {p}"
            );
            assert_eq!(
                r.frame,
                frame(seq, sizes[seq as usize]),
                "bytes of frame {seq}"
            );
            assert_eq!(r.hdr.num_buffers, r.buffers);
        }
        rx.len()
    };
    for (i, &len) in sizes.iter().enumerate() {
        let p = (i % usize::from(pairs)) as u16;
        let fr = frame(i as u32, len);
        loop {
            match g.send(p, &VirtioNetHdr::plain(), &fr) {
                Ok(()) => break,
                Err(Error::RingFull) => got += check(g, &mut expect),
                Err(e) => panic!("send: {e}"),
            }
        }
        expect[usize::from(p)].push_back(i as u32);
        if i % 64 == 63 {
            for q in 0..pairs {
                g.reclaim_tx(q);
            }
        }
    }
    while got < sizes.len() {
        got += check(g, &mut expect);
    }
    assert_eq!(got, sizes.len());
    assert_eq!(g.device_errors(), 0);
}

fn varied_sizes(n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| match i % 10 {
            0 => 65_000,
            1 => 60,
            _ => 60 + (i * 7919) % 9000,
        })
        .collect()
}

#[test]
fn thousand_frames_byte_exact_on_2_and_4_pairs() {
    for (pairs, split) in [(2u16, false), (4, true)] {
        let (path, server) = serve(pairs.into(), DEVICE, 1);
        let cfg = GuestConfig {
            queue_pairs: pairs,
            tx_split: split,
            ..GuestConfig::default()
        };
        let mut g = TestGuest::connect(&path, cfg).expect("connect");
        assert_eq!(g.acked_features() & DEVICE, DEVICE);
        assert_eq!(g.hdr_len(), 12);
        for p in 0..pairs {
            assert_eq!(g.post_rx(p, 128, 2048).unwrap(), 128);
        }
        exchange(&mut g, pairs, &varied_sizes(1000));
        g.disconnect();
        server.join().expect("server");
    }
}

#[test]
fn mergeable_rx_reassembles_big_frames_from_small_buffers() {
    let (path, server) = serve(1, DEVICE, 1);
    let mut g = TestGuest::connect(&path, GuestConfig::default()).expect("connect");
    g.post_rx(0, 256, 256).unwrap();
    for (seq, len) in [1000usize, 4000, 65_000, 60, 30_000]
        .into_iter()
        .enumerate()
    {
        let fr = frame(seq as u32, len);
        g.send(0, &VirtioNetHdr::plain(), &fr).unwrap();
        let rx = g.recv_until(Some(0), 1, WAIT).unwrap();
        assert_eq!(rx.len(), 1);
        let r = &rx[0].1;
        assert!(r.frame == fr, "frame {seq} differs");
        assert_eq!(usize::from(r.buffers), (HDR + len.max(60)).div_ceil(256));
        assert_eq!(r.hdr.num_buffers, r.buffers);
    }
    g.disconnect();
    server.join().expect("server");

    // Without MRG_RXBUF every frame takes exactly one (big) buffer.
    let (path, server) = serve(1, DEVICE & !f::MRG_RXBUF, 1);
    let mut g = TestGuest::connect(&path, GuestConfig::default()).expect("connect");
    assert_eq!(g.acked_features() & f::MRG_RXBUF, 0);
    assert_eq!(g.hdr_len(), 12);
    g.post_rx(0, 16, 66_000).unwrap();
    exchange(&mut g, 1, &[65_000, 60, 1514, 9000]);
    g.disconnect();
    server.join().expect("server");
}

/// Waits until `f` holds (the device signals from its own thread), at most `WAIT`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn event_idx_on_and_off() {
    for with in [true, false] {
        let offered = if with { DEVICE } else { DEVICE & !f::EVENT_IDX };
        let (path, server) = serve(1, offered, 1);
        let mut g = TestGuest::connect(&path, GuestConfig::default()).expect("connect");
        assert_eq!(g.acked_features() & f::EVENT_IDX != 0, with);
        g.post_rx(0, 256, 2048).unwrap();
        // TX completions are not wanted, RX ones are.
        g.set_interrupts(0, true, false).unwrap();
        let (rx0, tx0) = g.notifications(0);
        exchange(&mut g, 1, &varied_sizes(300));
        // One more frame while the driver is idle and has consumed everything: with RX
        // interrupts on, its arrival is signalled whatever the timing (the driver does not
        // touch the ring until then, so the device finds `used_event` at its entry).
        g.send(0, &VirtioNetHdr::plain(), &frame(0, 100)).unwrap();
        eventually("RX arrival not signalled", || g.notifications(0).0 > rx0);
        assert!(g.recv(0, WAIT).unwrap()[0].frame == frame(0, 100));
        if with {
            // used_event kept out of reach: the device never signals the TX ring.
            assert_eq!(g.notifications(0).1, tx0);
        } else {
            // NO_INTERRUPT is only a hint; virtio-queue signals without EVENT_IDX.
            eventually("TX not signalled", || g.notifications(0).1 > tx0);
        }
        // Polling mode (RX interrupts off) still receives everything.
        g.set_interrupts(0, false, false).unwrap();
        exchange(&mut g, 1, &varied_sizes(50));
        assert!(g.kicks(0).1 > 0);
        g.disconnect();
        server.join().expect("server");
    }
}

#[test]
fn disconnect_and_reconnect() {
    let (path, server) = serve(2, DEVICE, 2);
    for _ in 0..2 {
        let cfg = GuestConfig {
            queue_pairs: 2,
            ..GuestConfig::default()
        };
        let mut g = TestGuest::connect(&path, cfg).expect("connect");
        g.post_rx(0, 64, 2048).unwrap();
        g.post_rx(1, 64, 2048).unwrap();
        exchange(&mut g, 2, &varied_sizes(100));
        g.disconnect();
    }
    server.join().expect("server");
}

#[test]
fn config_enable_and_raw_chains() {
    let (path, server) = serve(2, DEVICE, 1);
    let cfg = GuestConfig {
        queue_pairs: 2,
        ..GuestConfig::default()
    };
    let mut g = TestGuest::connect(&path, cfg).expect("connect");
    let c = g.config().unwrap();
    assert_eq!(
        (c.mac, c.max_virtqueue_pairs, c.mtu),
        ([2, 0, 0, 0, 0, 0xaa], 2, 1500)
    );
    g.post_rx(1, 8, 2048).unwrap();

    // Pair 1 disabled: a frame sent there waits until it is enabled again.
    g.set_enabled_pairs(1).unwrap();
    g.send(1, &VirtioNetHdr::plain(), &frame(7, 100)).unwrap();
    assert!(g.recv(1, Duration::from_millis(200)).unwrap().is_empty());
    g.set_enabled_pairs(2).unwrap();
    let rx = g.recv(1, WAIT).unwrap();
    assert_eq!(rx.len(), 1);
    assert!(rx[0].frame == frame(7, 100));
    assert!(g.set_enabled_pairs(3).is_err());

    // A hand-made two-descriptor chain with its bytes placed by hand.
    let fr = frame(9, 300);
    let a = g.alloc(HDR as u64).unwrap();
    let b = g.alloc(fr.len() as u64).unwrap();
    g.write_guest(a, &VirtioNetHdr::plain().to_bytes()).unwrap();
    g.write_guest(b, &fr).unwrap();
    let good = [
        RawDesc {
            addr: a,
            len: HDR as u32,
            flags: 1,
            next: RawNext::Follow,
        },
        RawDesc {
            addr: b,
            len: fr.len() as u32,
            flags: 0,
            next: RawNext::Follow,
        },
    ];
    g.send_chain(1, &good).unwrap();
    let rx = g.recv(1, WAIT).unwrap();
    assert!(rx[0].frame == fr);

    // Hostile chains (outside memory, a loop) are consumed without harming the ring.
    let (hi, hl) = g.memory_regions()[2];
    let outside = [RawDesc {
        addr: hi + hl,
        len: 100,
        flags: 0,
        next: RawNext::Follow,
    }];
    let lp = [
        RawDesc {
            addr: a,
            len: HDR as u32,
            flags: 1,
            next: RawNext::Follow,
        },
        RawDesc {
            addr: b,
            len: 64,
            flags: 1,
            next: RawNext::Chain(0),
        },
    ];
    g.reclaim_tx(1);
    g.send_chain(1, &outside).unwrap();
    g.send_chain(1, &lp).unwrap();
    g.send(1, &VirtioNetHdr::plain(), &frame(10, 200)).unwrap();
    // The loop is followed until the queue-size limit, so the loopback turns it into one odd
    // frame (that is the device's business); the good frame after it arrives intact.
    let rx = g.recv_until(Some(1), 2, WAIT).unwrap();
    assert_eq!(rx.len(), 2);
    assert!(rx[1].1.frame == frame(10, 200));
    assert_eq!(g.reclaim_tx(1), 3);
    assert_eq!(g.device_errors(), 0);
    g.disconnect();
    server.join().expect("server");
}

#[test]
fn connect_fails_cleanly_without_a_device() {
    let p = Path::new("/nonexistent-dir/none.sock");
    assert!(matches!(
        TestGuest::connect_with_timeout(p, GuestConfig::default(), Duration::from_millis(100)),
        Err(Error::Connect { .. })
    ));
}

#[test]
fn guests_in_parallel_threads() {
    let handles: Vec<_> = (0..3u16)
        .map(|i| {
            std::thread::spawn(move || {
                let (path, server) = serve(2, DEVICE, 1);
                let cfg = GuestConfig {
                    queue_pairs: 2,
                    mac: [2, 0, 0, 0, 1, i as u8],
                    tx_split: i % 2 == 1,
                    ..GuestConfig::default()
                };
                let mut g = TestGuest::connect(&path, cfg).expect("connect");
                g.post_rx(0, 64, 1024).unwrap();
                g.post_rx(1, 64, 1024).unwrap();
                exchange(&mut g, 2, &varied_sizes(200));
                g.disconnect();
                server.join().expect("server");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("guest thread");
    }
}
