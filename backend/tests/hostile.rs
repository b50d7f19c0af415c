//! Guests that misbehave on purpose, through real vhost-user sockets: each test is a way one
//! guest could stall, slow down or fool the switch or other guests, and checks the bound
//! pvnet keeps (time bounds here are seconds: stalls, not speed).

use pvnet_backend::stats::DropReason;
use pvnet_backend::{Config, Server};
use pvnet_testkit::frames::tagged::{self as frames, HELLO, MAGIC};
use pvnet_testkit::harness::{guest_config, mac, server_with, TestServer};
use pvnet_testkit::{desc, GuestConfig, RawDesc, Repost, TestGuest, VirtioNetHdr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};
use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::EventFd;

fn start(name: &str, ports: usize, bound: Duration, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let d = Config::default();
    server_with(name, ports, 1, d.grant_lock, d.queue_lock, |c| {
        c.backpressure_bound = bound;
        tweak(c);
    })
}

fn connect(s: &Server, i: usize, tweak: impl FnOnce(&mut GuestConfig)) -> TestGuest {
    let mut o = guest_config(1, mac(i));
    tweak(&mut o);
    let g = TestGuest::connect(&s.paths()[i], o).expect("connect");
    let t0 = Instant::now();
    while s.switch().ports[i].enabled_pairs() < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "port {i} never enabled"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    g
}

/// Every guest says hello (broadcast) until every other guest heard it: the switch has
/// learned every MAC.
fn learn(gs: &mut [&mut TestGuest]) {
    let n = gs.len();
    let t0 = Instant::now();
    let mut heard = vec![vec![false; n]; n];
    while heard
        .iter()
        .enumerate()
        .any(|(i, h)| (0..n).any(|j| j != i && !h[j]))
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "hellos lost");
        for (i, g) in gs.iter_mut().enumerate() {
            let h = frames::build([0xff; 6], g.mac(), HELLO, 0, i as u32, 60);
            g.try_send(0, &VirtioNetHdr::plain(), &h).expect("send");
        }
        std::thread::sleep(Duration::from_millis(5));
        for (i, g) in gs.iter_mut().enumerate() {
            for (_, r) in g.poll_rx().expect("receive") {
                if let Ok((HELLO, src, _, _)) = frames::check(&r.frame) {
                    if let Some(j) = (0..n).find(|&j| mac(j) == src) {
                        heard[i][j] = true;
                    }
                }
            }
        }
    }
}

fn send(g: &mut TestGuest, f: &[u8]) {
    g.send_wait(0, &VirtioNetHdr::plain(), f, Duration::from_secs(10))
        .expect("TX ring stuck");
}

/// Receives on `g` until `n` frames of `flow` arrived; returns when, or None after `limit`.
fn recv_flow(g: &mut TestGuest, flow: u16, n: usize, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut got = 0;
    while got < n {
        if t0.elapsed() > limit {
            return None;
        }
        got += g
            .poll_rx()
            .expect("receive")
            .iter()
            .filter(|(_, r)| matches!(frames::check(&r.frame), Ok((MAGIC, _, fl, _)) if fl == flow))
            .count();
        std::thread::sleep(Duration::from_micros(200));
    }
    Some(t0.elapsed())
}

/// A TX chain through an indirect table of 65,535 one-byte descriptors is refused after
/// 1,024 descriptor reads (counted `chain_too_long`), at once; another guest's frames to the
/// same receiver are not held up meanwhile.
#[test]
fn huge_indirect_chain_is_dropped_at_once() {
    let s = start("hugechain", 3, Duration::from_secs(5), |_| {});
    let (mut a, mut b, mut c) = (
        connect(&s, 0, |_| {}),
        connect(&s, 1, |_| {}),
        connect(&s, 2, |_| {}),
    );
    learn(&mut [&mut a, &mut b, &mut c]);
    // A frame to B (header + 65,523 bytes), one byte per descriptor.
    let n: u32 = 65_535;
    let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
    bytes.extend(frames::build(mac(1), mac(0), MAGIC, 9, 0, n as usize - 12));
    let data = a.alloc(bytes.len() as u64).expect("alloc");
    a.write_guest(data, &bytes).expect("frame");
    let descs: Vec<RawDesc> = (0..n)
        .map(|i| {
            let last = i + 1 == n;
            RawDesc::new(data + u64::from(i), 1, if last { 0 } else { desc::NEXT })
        })
        .collect();
    let (table, table_len) = a.write_indirect(&descs).expect("table");
    // Every chain sent so far (hellos) is back, so the next one returned is the long one.
    let t0 = Instant::now();
    while a.tx_outstanding(0) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "hellos not returned");
        a.reclaim_tx(0);
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now();
    a.send_chain(0, &[RawDesc::new(table, table_len, desc::INDIRECT)])
        .expect("chain");
    // C keeps sending to B meanwhile.
    for k in 0..50 {
        send(&mut c, &frames::build(mac(1), mac(2), MAGIC, 3, k, 100));
    }
    let got = recv_flow(&mut b, 3, 50, Duration::from_secs(5));
    assert!(got.is_some(), "C's frames to B held up");
    while a.tx_outstanding(0) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the long chain was not returned within 2 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let snap = s.switch().ports[0].queue_snapshot(0);
    assert_eq!(snap.drops_for(DropReason::ChainTooLong), 1, "{snap:?}");
    assert_eq!(snap.total_drops(), 1, "{snap:?}");
    drop((a, b, c));
    s.shutdown();
}

/// A receiver whose RX ring is full holds back the frames to it, not the sender's frames to
/// others; once a sender waited the whole bound the receiver is stalled, and kicks without
/// new buffers do not make senders wait again; posting buffers ends the stall.
#[test]
fn full_receiver_holds_back_only_its_own_frames_and_bare_kicks_do_not_rearm() {
    full_receiver(true, 0);
}

#[test]
fn full_receiver_without_in_order_returns_later_chains_first() {
    full_receiver(false, 0);
}

/// The same on one polling thread for all three ports (`--pmd-threads 1`): the bound is
/// kept by the thread's sleep timeout instead of a worker's timer, kicks arrive forwarded.
#[test]
fn full_receiver_holds_back_only_its_own_frames_on_a_pmd_thread() {
    full_receiver(true, 1);
}

/// A sends to a full B and then to C; `in_order`: A negotiates `VIRTIO_F_IN_ORDER`, so its
/// TX chains must come back in ring order although the frames to C were delivered while the
/// frames to B waited (without it, pvnet returns C's chains first).
fn full_receiver(in_order: bool, pmd_threads: u16) {
    let bound = Duration::from_secs(2);
    let s = start(
        &format!("fullrx{}-{pmd_threads}", u8::from(in_order)),
        3,
        bound,
        |c| c.pmd_threads = pmd_threads,
    );
    let (mut a, mut b, mut c) = (
        connect(&s, 0, |o| {
            if !in_order {
                o.features &= !(1 << VIRTIO_F_IN_ORDER);
            }
        }),
        connect(&s, 1, |_| {}),
        connect(&s, 2, |_| {}),
    );
    learn(&mut [&mut a, &mut b, &mut c]);
    // B's 256 RX buffers fill up (B never reads), then 4 more frames wait for B.
    for k in 0..260 {
        send(&mut a, &frames::build(mac(1), mac(0), MAGIC, 1, k, 100));
    }
    // Frames to C behind them in A's TX ring are not held back.
    for k in 0..10 {
        send(&mut a, &frames::build(mac(2), mac(0), MAGIC, 2, k, 100));
    }
    let got = recv_flow(&mut c, 2, 10, bound * 3);
    assert!(
        got.is_some_and(|t| t < bound / 2),
        "frames to C waited behind frames to a full B: {got:?}"
    );
    // The 4 held-back frames are dropped after the bound; B's queue is stalled.
    let t0 = Instant::now();
    let port = &s.switch().ports[0];
    while port.tx[0].drops(DropReason::RxFullTimeout) < 4 {
        assert!(t0.elapsed() < bound * 3, "held-back frames never timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t0.elapsed() < bound * 2);
    // B kicks without posting buffers: frames to B are still dropped at once.
    for k in 0..10 {
        b.bare_kick(0).expect("kick");
        std::thread::sleep(Duration::from_millis(5));
        send(
            &mut a,
            &frames::build(mac(1), mac(0), MAGIC, 1, 1000 + k, 100),
        );
        let t = Instant::now();
        while a.tx_in_flight(0) > 0 {
            assert!(
                t.elapsed() < bound / 2,
                "a bare kick made frame {k} wait for B again"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(port.tx[0].drops(DropReason::RxFullTimeout), 14);
    // B drains (and re-posts its buffers): the stall ends, frames to B flow again.
    assert!(recv_flow(&mut b, 1, 256, Duration::from_secs(5)).is_some());
    for k in 0..20 {
        send(&mut a, &frames::build(mac(1), mac(0), MAGIC, 4, k, 100));
    }
    assert!(recv_flow(&mut b, 4, 20, Duration::from_secs(5)).is_some());
    assert_eq!(port.tx[0].drops(DropReason::RxFullTimeout), 14);
    while a.tx_in_flight(0) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (tx, rx) = a.out_of_order(0);
    if in_order {
        assert_eq!((tx, rx), (0, 0), "chains returned out of ring order");
    } else {
        assert!(
            tx > 0,
            "chains of frames to C came back after the held ones"
        );
    }
    assert_eq!(b.out_of_order(0).1, 0, "RX buffers used out of order");
    drop((a, b, c));
    s.shutdown();
}

/// A chain published on A's TX ring: header + a frame to `dst`.
fn raw_chain(a: &mut TestGuest, dst: [u8; 6], len: usize) -> u16 {
    let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
    bytes.extend(frames::build(dst, a.mac(), MAGIC, 5, 0, len));
    let addr = a.alloc(bytes.len() as u64).expect("alloc");
    a.write_guest(addr, &bytes).expect("frame");
    a.pin_chain(0, &[RawDesc::new(addr, bytes.len() as u32, 0)])
        .expect("chain")
}

/// Ends the test process with a message if the test is still running after `limit` (a
/// regression here is a hang, and a hung test must still fail).
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn arm(name: &'static str, limit: Duration) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < limit {
                if d.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("test {name}: still running after {limit:?}: hung");
            std::process::exit(101);
        });
        Watchdog(done)
    }
}

impl std::ops::Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A chain published on A's TX ring: header + a frame to `dst` spread over an indirect table
/// of `n` 64-byte descriptors.
fn indirect_chain(a: &mut TestGuest, dst: [u8; 6], n: u32) -> u16 {
    let len = 64 * n as usize;
    let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
    bytes.extend(frames::build(dst, a.mac(), MAGIC, 5, 0, len - 12));
    let data = a.alloc(len as u64).expect("alloc");
    a.write_guest(data, &bytes).expect("frame");
    let descs: Vec<RawDesc> = (0..n)
        .map(|i| {
            let last = i + 1 == n;
            RawDesc::new(
                data + 64 * u64::from(i),
                64,
                if last { 0 } else { desc::NEXT },
            )
        })
        .collect();
    let (table, table_len) = a.write_indirect(&descs).expect("table");
    a.pin_chain(0, &[RawDesc::new(table, table_len, desc::INDIRECT)])
        .expect("chain")
}

/// Keeps at least 128 chains (of 256) queued on A's TX ring (a guest that never lets it run dry)
/// while B drains, for `d`; `each` runs every round.
fn flood_tx(
    a: &mut TestGuest,
    b: &mut TestGuest,
    head: u16,
    d: Duration,
    mut each: impl FnMut(&mut TestGuest) -> bool,
) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if a.tx_outstanding(0) < 192 {
            a.repost_pinned(0, head, 64).expect("repost");
        }
        b.poll_rx().expect("receive");
        if each(a) {
            return;
        }
    }
}

/// A frontend closes its socket while its TX ring stays full: the port's workers notice the
/// connection is closing, the port is torn down (grants revoked) and accepts again.
#[test]
fn disconnect_completes_while_the_tx_ring_stays_full() {
    disconnect_while_full(0);
}

/// The same on a switch-wide polling thread (`--pmd-threads 1`), which serves the other port
/// too: the teardown takes the connection's worker off the thread while it is busy with it.
#[test]
fn disconnect_completes_while_the_tx_ring_stays_full_on_a_pmd_thread() {
    disconnect_while_full(1);
}

fn disconnect_while_full(pmd_threads: u16) {
    let s = start(
        &format!("busydisc{pmd_threads}"),
        2,
        Duration::from_secs(5),
        |c| c.pmd_threads = pmd_threads,
    );
    let _w = Watchdog::arm("disconnect", Duration::from_secs(60));
    let (mut a, mut b) = (connect(&s, 0, |_| {}), connect(&s, 1, |_| {}));
    learn(&mut [&mut a, &mut b]);
    // Frames to A's own MAC (dropped, no_dest: nothing waits), each through an indirect
    // table of 1,000 descriptors, so that taking one costs the device far more than
    // re-publishing it costs the guest: the device never catches up.
    let head = indirect_chain(&mut a, mac(0), 1000);
    let port = &s.switch().ports[0];
    flood_tx(&mut a, &mut b, head, Duration::from_secs(5), |_| {
        port.tx[0].drops(DropReason::NoDest) >= 20
    });
    assert!(
        port.tx[0].drops(DropReason::NoDest) >= 20,
        "the chains are not taken"
    );
    a.shutdown_socket().expect("shutdown");
    let t0 = Instant::now();
    let mut revoked = false;
    flood_tx(&mut a, &mut b, head, Duration::from_secs(5), |_| {
        revoked = s.grants(0).is_empty();
        revoked
    });
    assert!(
        revoked,
        "port 0 not torn down {:?} after its frontend left",
        t0.elapsed()
    );
    drop(a);
    // The port accepts a new frontend.
    let mut a2 = connect(&s, 0, |_| {});
    learn(&mut [&mut a2, &mut b]);
    assert_eq!(
        s.switch().ports[0]
            .connections
            .load(std::sync::atomic::Ordering::Acquire),
        2
    );
    drop((a2, b));
    s.shutdown();
}

/// SET_MEM_TABLE under traffic: once the backend has handled it, the old memory's rings are
/// never touched again (the grant table's guarantee holds for ring accesses too).
#[test]
fn replaced_memory_is_not_used_after_set_mem_table() {
    let _w = Watchdog::arm("remap", Duration::from_secs(60));
    let s = start("remap", 2, Duration::from_secs(5), |_| {});
    let (mut a, mut b) = (connect(&s, 0, |_| {}), connect(&s, 1, |_| {}));
    learn(&mut [&mut a, &mut b]);
    let head = raw_chain(&mut a, mac(1), 60);
    flood_tx(&mut a, &mut b, head, Duration::from_millis(200), |_| false);
    let _fresh = a.replace_memory().expect("SET_MEM_TABLE");
    let old = a.memory().clone();
    let u0 = a.tx_used_idx_in(&old, 0).expect("used idx");
    // The guest keeps publishing in the old memory; the device must not see it any more.
    flood_tx(&mut a, &mut b, head, Duration::from_millis(300), |_| false);
    let u1 = a.tx_used_idx_in(&old, 0).expect("used idx");
    assert_eq!(
        u0, u1,
        "TX used ring in the replaced memory written after SET_MEM_TABLE"
    );
    drop((a, b));
    s.shutdown();
}

/// A sender's virtio header flags that only the device may set (DATA_VALID: "checksum
/// already verified", RSC_INFO) never reach a receiver; NEEDS_CSUM does.
#[test]
fn tx_header_flags_are_sanitised() {
    let s = start("hdrflags", 2, Duration::from_secs(5), |_| {});
    let (mut a, mut b) = (connect(&s, 0, |_| {}), connect(&s, 1, |_| {}));
    learn(&mut [&mut a, &mut b]);
    let h = VirtioNetHdr {
        flags: 2 | 4, // VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO
        ..VirtioNetHdr::plain()
    };
    send_with(&mut a, &h, &frames::build(mac(1), mac(0), MAGIC, 6, 0, 100));
    let mut rx = Vec::new();
    let t0 = Instant::now();
    while rx.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "frame lost");
        rx = b.poll_rx().expect("receive");
    }
    let r = &rx[0].1;
    assert!(frames::check(&r.frame).is_ok());
    assert_eq!(r.hdr.flags, 0, "sender's flags reached the receiver");
    drop((a, b));
    s.shutdown();
}

fn send_with(g: &mut TestGuest, h: &VirtioNetHdr, f: &[u8]) {
    g.send_wait(0, h, f, Duration::from_secs(10))
        .expect("TX ring stuck");
}

/// With `--port-security`, a frame whose source MAC is not the port's is dropped and
/// counted, and the spoofed MAC is not learned.
#[test]
fn port_security_drops_spoofed_source_macs() {
    let s = start("portsec", 3, Duration::from_secs(5), |c| {
        c.port_security = true;
        c.macs = (0..3).map(mac).collect();
    });
    let (mut a, mut b, mut c) = (
        connect(&s, 0, |_| {}),
        connect(&s, 1, |_| {}),
        connect(&s, 2, |_| {}),
    );
    learn(&mut [&mut a, &mut b, &mut c]);
    // A pretends to be C.
    for k in 0..5 {
        send(&mut a, &frames::build(mac(1), mac(2), MAGIC, 7, k, 100));
    }
    let t0 = Instant::now();
    let port = &s.switch().ports[0];
    while port.tx[0].drops(DropReason::SpoofedMac) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "spoofed frames not dropped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(s.switch().fdb.lookup(&mac(2)), Some(2), "C's MAC stolen");
    // A's own MAC works.
    send(&mut a, &frames::build(mac(1), mac(0), MAGIC, 8, 0, 100));
    assert!(recv_flow(&mut b, 8, 1, Duration::from_secs(5)).is_some());
    assert_eq!(recv_flow(&mut b, 7, 1, Duration::from_millis(100)), None);
    drop((a, b, c));
    s.shutdown();
}

/// A frontend's call descriptor is written by whichever thread delivers into its rings —
/// other guests' workers. B hands pvnet a pipe that nobody reads (`pipe`), or an eventfd
/// whose counter it set one below the maximum (`!pipe`): a blocking write would wait for
/// good once the pipe is full (64 KiB, 8,192 calls) or at once, and A's worker with it (the
/// A-to-B traffic, A's traffic to anyone, the switch's shutdown). The pipe is refused; an
/// eventfd is made non-blocking, so a full one costs B its notifications, nothing more.
fn a_call_fd_that_never_drains(pipe: bool) {
    let _w = Watchdog::arm("call_fd", Duration::from_secs(60));
    let s = start(
        &format!("callfd{}", u8::from(pipe)),
        2,
        Duration::from_secs(2),
        |_| {},
    );
    let mut a = connect(&s, 0, |_| {});
    // Without EVENT_IDX and with interrupts on, B wants a call after every publication.
    let mut b = connect(&s, 1, |o| o.features &= !(1 << VIRTIO_RING_F_EVENT_IDX));
    b.set_interrupts(0, true, true).expect("interrupts");
    learn(&mut [&mut a, &mut b]);
    let mut fds = [0i32; 2];
    let mut keep = None;
    if pipe {
        // SAFETY: pipe2 writes two descriptors into `fds`, which this test then owns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fds[1] is the pipe's write end, open and owned here; handed over once.
        let w = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) };
        assert!(
            b.set_vring_call_fd(0, w).is_err(),
            "a pipe accepted as a call descriptor"
        );
    } else {
        // A blocking eventfd of B's own (the kit's are non-blocking), full but for one.
        let e = EventFd::new(0).expect("eventfd");
        let copy = e.try_clone().expect("dup");
        // SAFETY: `copy` owns its descriptor; the OwnedFd takes it over.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(copy.into_raw_fd()) };
        b.set_vring_call_fd(0, fd).expect("an eventfd refused");
        e.write(u64::MAX - 1).expect("counter");
        keep = Some(e);
    }
    let t0 = Instant::now();
    for k in 0..20_000u32 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "A stalled after {k} frames"
        );
        send(&mut a, &frames::build(mac(1), mac(0), MAGIC, 4, k, 60));
        b.poll_rx().expect("receive");
    }
    let tx = &s.switch().ports[0].tx[0];
    while tx.snapshot().tx_frames < 20_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "A stalled: {:?}",
            tx.snapshot()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop((a, b, keep));
    s.shutdown();
    if pipe {
        // SAFETY: fds[0], the pipe's read end, is open and owned here.
        unsafe { libc::close(fds[0]) };
    }
}

#[test]
fn a_pipe_as_call_descriptor_is_refused() {
    a_call_fd_that_never_drains(true);
}

#[test]
fn a_full_call_eventfd_stalls_no_sender() {
    a_call_fd_that_never_drains(false);
}

/// pvnet offers no RESET_DEVICE; a frontend that acknowledges it anyway and resets the
/// device is refused and disconnected (upstream took the acknowledgement and disabled the
/// rings without taking them out of the switch: other guests went on writing into them).
/// The port then takes the next frontend.
#[test]
fn a_reset_of_a_feature_never_offered_ends_the_connection() {
    let s = start("reset", 2, Duration::from_secs(2), |_| {});
    let mut a = connect(&s, 0, |_| {});
    let mut b = connect(&s, 1, |_| {});
    learn(&mut [&mut a, &mut b]);
    let offered = b.protocol_features().bits();
    let reset = VhostUserProtocolFeatures::RESET_DEVICE.bits();
    assert_eq!(
        offered & reset,
        0,
        "RESET_DEVICE offered: this test has to change"
    );
    let _ = b.ack_protocol_features(offered | reset);
    let _ = b.reset_device();
    let t0 = Instant::now();
    while s.switch().ports[1].enabled_pairs() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "B's rings still in the switch after a reset"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(b);
    let mut b = connect(&s, 1, |_| {});
    learn(&mut [&mut a, &mut b]);
    drop((a, b));
    s.shutdown();
}

/// A receiver that never reads cannot take its sender's TX ring from the sender's traffic
/// to everyone else: frames held back for it keep their chains from the sender (under
/// IN_ORDER, every chain behind them too), and once those are half the ring they are
/// dropped (`rx_full_timeout`) and the receiver's queue stalled — long before the bound.
fn full_receiver_takes_at_most_half_the_sender_s_ring(in_order: bool) {
    let bound = Duration::from_secs(60);
    let s = start(&format!("halfring{}", u8::from(in_order)), 3, bound, |_| {});
    let mut a = connect(&s, 0, |o| {
        o.tx_limit = None;
        if !in_order {
            o.features &= !(1 << VIRTIO_F_IN_ORDER);
        }
    });
    let (mut b, mut c) = (connect(&s, 1, |_| {}), connect(&s, 2, |_| {}));
    learn(&mut [&mut a, &mut b, &mut c]);
    let t0 = Instant::now();
    // B's 256 RX buffers fill up (B never reads again); then A keeps sending, to B (all
    // held back) and, in the same stream, to C.
    for k in 0..256 {
        send(&mut a, &frames::build(mac(1), mac(0), MAGIC, 1, k, 100));
    }
    let n = 600;
    for k in 0..n {
        let to_b = k % 4 == 0 && !in_order || k == 0;
        let f = match to_b {
            true => frames::build(mac(1), mac(0), MAGIC, 1, 256 + k, 100),
            false => frames::build(mac(2), mac(0), MAGIC, 2, k, 100),
        };
        // A's ring has 256 slots: without the limit it is full of held-back chains after
        // the first ~256 frames, and this waits for the 60 s bound.
        a.send_wait(0, &VirtioNetHdr::plain(), &f, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("A's TX ring stuck at frame {k}: {e}"));
        c.poll_rx().expect("receive");
    }
    assert!(t0.elapsed() < bound / 4);
    let tx = &s.switch().ports[0].tx[0];
    assert!(
        tx.drops(DropReason::RxFullTimeout) > 0,
        "nothing was held back"
    );
    drop((a, b, c));
    s.shutdown();
}

#[test]
fn a_full_receiver_takes_at_most_half_the_sender_s_ring() {
    full_receiver_takes_at_most_half_the_sender_s_ring(false);
}

#[test]
fn a_full_receiver_takes_at_most_half_the_sender_s_ring_in_order() {
    full_receiver_takes_at_most_half_the_sender_s_ring(true);
}

/// Port security checks a frame's source MAC in pvnet's copy of its first bytes; the sender
/// can still rewrite its buffer afterwards — here while the frame waits, held back, for a
/// full receiver (frames longer than the burst's prefix are read from the guest's buffer
/// again when copied, held back or not). Receivers must get the MAC that was checked.
#[test]
fn a_sender_rewriting_a_checked_frame_cannot_spoof_its_source_mac() {
    let s = start("respoof", 3, Duration::from_secs(10), |c| {
        c.port_security = true;
        c.macs = (0..3).map(mac).collect();
    });
    let (mut a, mut b) = (connect(&s, 0, |_| {}), connect(&s, 1, |_| {}));
    learn(&mut [&mut a, &mut b]);
    // B's 256 RX buffers fill up (B does not read yet); frame 256 waits for B.
    let n = 257;
    for k in 0..n {
        send(&mut a, &frames::build(mac(1), mac(0), MAGIC, 3, k, 200));
    }
    let tx = &s.switch().ports[0].tx[0];
    let t0 = Instant::now();
    while tx.snapshot().backpressure == 0 || a.tx_in_flight(0) != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "frame 256 not held back"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Checked and held: A now claims C's MAC in it.
    let hl = a.hdr_len() as u64;
    let held = a.tx_buffers_in_flight(0);
    assert_eq!(held.len(), 1);
    a.write_guest(held[0].0 + hl + 6, &mac(2)).expect("rewrite");
    let mut got = 0;
    while got < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{got} of {n} frames arrived; spoofed drops {}",
            tx.drops(DropReason::SpoofedMac)
        );
        for (_, r) in b.poll_rx().expect("receive") {
            let (_, src, flow, seq) = frames::check(&r.frame).expect("intact");
            assert_eq!((flow, seq), (3, got));
            assert_eq!(
                src,
                mac(0),
                "frame {seq}: a source MAC that was never checked"
            );
            got += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    drop((a, b));
    s.shutdown();
}

/// 64 KiB frames into 4 KiB mergeable RX buffers that the receiver re-posts one by one (each
/// with its own EVENT_IDX kick decision) while the sender waits for room: every time the
/// ring runs dry the sender asks for a kick at the guest's newest index, so no posting is
/// missed (a lost wake-up would stall the sender until the back-pressure bound).
#[test]
fn rx_buffers_posted_one_by_one_never_lose_the_wakeup() {
    let bound = Duration::from_secs(30);
    let s = start("trickle", 2, bound, |_| {});
    let mut a = connect(&s, 0, |_| {});
    let mut b = connect(&s, 1, |o| {
        o.rx_fill = Some(4096);
        o.queue_size = 64;
    });
    b.set_rx_repost(Repost::OneByOne);
    learn(&mut [&mut a, &mut b]);
    let n = 300u32;
    let (mut sent, mut got) = (0u32, 0u32);
    let t0 = Instant::now();
    while got < n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "stalled: sent {sent}, received {got} of {n} after {:?}",
            t0.elapsed()
        );
        if sent < n
            && a.try_send(
                0,
                &VirtioNetHdr::plain(),
                &frames::build(mac(1), mac(0), MAGIC, 10, sent, 65_549),
            )
            .expect("send")
        {
            sent += 1;
        }
        for (_, r) in b.poll_rx().expect("receive") {
            let (m, _, flow, seq) = frames::check(&r.frame).expect("intact");
            assert_eq!((m, flow, seq), (MAGIC, 10, got));
            got += 1;
        }
    }
    let snap = s.switch().ports[0].queue_snapshot(0);
    assert_eq!(snap.total_drops(), 0, "{snap:?}");
    drop((a, b));
    s.shutdown();
}

/// A lone port on a switch with spare slots for ports added later: a frame flooded to nobody
/// is counted `no_dest`, as on a one-port table.
#[test]
fn flood_with_no_other_port_in_use_counts_no_dest() {
    let s = start("lonepool", 1, Duration::from_secs(1), |c| c.max_ports = 4);
    assert!(s.switch().ports.len() > 1, "spare slots");
    let mut a = connect(&s, 0, |_| {});
    for k in 0..5 {
        send(&mut a, &frames::build([0xff; 6], mac(0), MAGIC, 1, k, 60));
    }
    let t0 = Instant::now();
    while s.switch().ports[0].tx[0].drops(DropReason::NoDest) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no_dest not counted: {:?}",
            s.switch().ports[0].queue_snapshot(0)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(a);
    s.shutdown();
}

/// A receiver never sees a frame before its sender's TX chain is back. A frontend that
/// forwards what it receives (DPDK testpmd's `mac` forwarding) drops a frame when its TX ring
/// has no free slot; when the frame it forwards still holds a slot of that very ring, closed
/// loops under back pressure lost every frame of one direction (docs/benchmarks.md, seventh
/// round). A thread watches B's RX used index and A's TX used index while A sends to B, whose
/// ring runs dry now and then (A's frames held back): A's count must never lag.
#[test]
fn a_frame_is_visible_only_after_its_tx_chain_is_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};

    let s = start("order", 2, Duration::from_secs(10), |_| {});
    let mut a = connect(&s, 0, |o| o.tx_limit = None);
    let mut b = connect(&s, 1, |o| o.queue_size = 64);
    learn(&mut [&mut a, &mut b]);
    // Quiet: the last hellos are through before the counts start (a hello of A's half
    // published when the watcher takes its base counts would look early).
    let t0 = Instant::now();
    while a.tx_in_flight(0) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "A's hellos stuck");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(100));
    let _ = (a.poll_rx().expect("receive"), b.poll_rx().expect("receive"));
    let (rx_b, _) = b.used_idx_addrs(0).expect("pair");
    let (_, tx_a) = a.used_idx_addrs(0).expect("pair");
    let (mb, ma) = (b.memory().clone(), a.memory().clone());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let load = |m: &vm_memory::GuestMemoryMmap<()>, at| {
                m.load::<u16>(GuestAddress(at), Ordering::Acquire)
                    .expect("used idx")
            };
            let (r0, t0) = (load(&mb, rx_b), load(&ma, tx_a));
            let (mut early, mut looks) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                // RX first: the device publishes A's TX index before B's RX index.
                let r = load(&mb, rx_b).wrapping_sub(r0);
                let t = load(&ma, tx_a).wrapping_sub(t0);
                early += u64::from(r > t);
                looks += 1;
            }
            (early, looks)
        })
    };
    std::thread::sleep(Duration::from_millis(10));
    let n = 4000u32;
    let (mut sent, mut got) = (0u32, 0u32);
    let hdr = VirtioNetHdr::plain();
    let delivered = || s.switch().ports[1].queue_snapshot(0).rx_frames;
    let base = delivered();
    let t0 = Instant::now();
    while got < n {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "stalled: sent {sent}, received {got} of {n}, in flight {}, {:?}, B {:?} posted {}",
            a.tx_in_flight(0),
            s.switch().ports[0].queue_snapshot(0),
            s.switch().ports[1].queue_snapshot(0),
            b.rx_posted(0)
        );
        // Three batches into B's 64 buffers: once they are full the switch holds A's frames
        // back...
        for _ in 0..3 {
            let frames: Vec<Vec<u8>> = (sent..(sent + 32).min(n))
                .map(|k| frames::build(mac(1), mac(0), MAGIC, 1, k, 60))
                .collect();
            let batch: Vec<_> = frames.iter().map(|f| (hdr, f.as_slice())).collect();
            sent += a.send_batch(0, &batch).expect("send") as u32;
        }
        let t1 = Instant::now();
        let full = base + u64::from(got.saturating_add(64).min(n));
        while delivered() < full && t1.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(100));
        }
        // ...until B takes its frames and posts its buffers again.
        for (_, r) in b.poll_rx().expect("receive") {
            let (m, _, flow, seq) = frames::check(&r.frame).expect("intact");
            assert_eq!((m, flow, seq), (MAGIC, 1, got));
            got += 1;
        }
        a.reclaim_tx(0);
    }
    stop.store(true, Ordering::Relaxed);
    let (early, looks) = watcher.join().expect("watcher");
    let tx = s.switch().ports[0].queue_snapshot(0);
    assert_eq!(tx.total_drops(), 0, "{tx:?}");
    assert!(tx.backpressure > 0, "B's ring never ran dry: {tx:?}");
    assert_eq!(
        early, 0,
        "{early} of {looks} looks saw frames in B's RX ring before A's TX chains were back"
    );
    drop((a, b));
    s.shutdown();
}
