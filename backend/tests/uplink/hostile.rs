//! The host side misbehaving, and back-pressure both ways, with a `SOCK_SEQPACKET` socket
//! pair standing in for the tap device (the test writes what "the kernel" hands pvnet, and
//! reads what pvnet writes): malformed frames from the host side are dropped and counted
//! by reason while the port keeps working; a guest without RX buffers holds the host's
//! frames back (none lost), and a host side that does not read holds the guest's frames
//! back until it does (none lost).

use pvnet_backend::net::hdr::{DATA_VALID, HDR_LEN};
use pvnet_backend::stats::DropReason;
use pvnet_backend::tap::{TapConfig, TapDevice};
use pvnet_backend::{Config, Server};
use pvnet_testkit::features as f;
use pvnet_testkit::frames::{self, eth};
use pvnet_testkit::harness::{guest_config, tmpdir, wait_enabled, TmpDir};
use pvnet_testkit::{RxFrame, TestGuest, VirtioNetHdr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const GUEST: [u8; 6] = [0x02, 0, 0, 0, 0x22, 0x01];
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0x22, 0x99];

/// A socket pair: (pvnet's end, non-blocking, with send buffer `sndbuf` if given; the
/// host's end, blocking with a 5 s receive timeout).
fn pair(sndbuf: Option<libc::c_int>) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two-element array we own; the result is checked.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own; only O_NONBLOCK changes.
    unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if let Some(n) = sndbuf {
        // SAFETY: SO_SNDBUF with an int that lives for the call.
        unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&n as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO with a timeval that lives for the call.
    unsafe {
        libc::setsockopt(
            b.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    (a, b)
}

/// The host side writes one message: header bytes `h` then `frame`.
fn host_send(fd: &OwnedFd, h: &VirtioNetHdr, frame: &[u8]) {
    let mut m = h.to_bytes()[..HDR_LEN].to_vec();
    m.extend_from_slice(frame);
    host_send_raw(fd, &m);
}

fn host_send_raw(fd: &OwnedFd, m: &[u8]) {
    // SAFETY: sends from a buffer that lives for the call.
    let r = unsafe { libc::send(fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
    assert_eq!(r, m.len() as isize, "{}", std::io::Error::last_os_error());
}

/// The host side reads one message: (header, frame).
fn host_recv(fd: &OwnedFd) -> Option<(VirtioNetHdr, Vec<u8>)> {
    let mut b = vec![0u8; 70_000];
    // SAFETY: receives into a buffer we own, at most its length.
    let r = unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
    if r < HDR_LEN as isize {
        return None;
    }
    b.truncate(r as usize);
    let h = VirtioNetHdr::from_bytes(&b[..HDR_LEN]).ok()?;
    Some((h, b.split_off(HDR_LEN)))
}

/// A switch with one guest port and one tap port on `dev`, and its socket directory.
fn start(name: &str, dev: OwnedFd) -> (Server, TmpDir) {
    let d = tmpdir(name);
    let cfg = Config {
        sockets: vec![d.join("g.sock")],
        queue_pairs: 1,
        backpressure_bound: Duration::from_secs(10),
        uplink: TapConfig {
            names: vec!["uplfake".into()],
            ..TapConfig::default()
        },
        ..Config::default()
    };
    let tap = TapDevice {
        name: "uplfake".into(),
        fds: vec![dev],
        created: false,
        offload: true,
    };
    (Server::start_with_taps(cfg, vec![tap]).expect("server"), d)
}

/// Stops the switch and removes its socket directory.
fn finish(s: Server, d: TmpDir) {
    s.shutdown();
    drop(d);
}

/// Frames received by `g` until `n` arrived (at most 20 s).
fn collect(g: &mut TestGuest, n: usize) -> Vec<RxFrame> {
    let mut out = Vec::new();
    let t0 = Instant::now();
    while out.len() < n && t0.elapsed() < Duration::from_secs(20) {
        for (_, r) in g
            .recv_until(None, n - out.len(), Duration::from_millis(200))
            .expect("receive")
        {
            out.push(r);
        }
    }
    out
}

fn tcp(payload: usize, seq: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + seq as usize) as u8).collect();
    frames::ipv4_tcp(
        HOST,
        GUEST,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        5201,
        40000,
        seq,
        &data,
    )
}

#[test]
fn malformed_frames_from_the_host_are_counted_drops() {
    let (dev, host) = pair(None);
    let (s, dir) = start("uplink-hostile", dev);
    let sw = s.switch().clone();
    let mut gc = guest_config(1, GUEST);
    // No receive offloads: pvnet must complete checksums and segment for this guest.
    gc.features &= !(f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::GUEST_ECN);
    let mut g = TestGuest::connect(&s.paths()[0], gc).expect("connect");
    wait_enabled(&sw, 0, 1);
    // The guest says hello (pvnet learns its MAC; the host side sees it).
    let hello = eth(frames::BROADCAST, GUEST, 0x88b5, &[1; 50]);
    g.send(0, &VirtioNetHdr::plain(), &hello).expect("send");
    let (h, got) = host_recv(&host).expect("hello at the host side");
    assert_eq!((h.flags, h.gso_type, got), (0, 0, hello));

    let good = tcp(100, 1);
    // Runts: shorter than the virtio-net header; a header and half an Ethernet header.
    host_send_raw(&host, &[0u8; 5]);
    host_send_raw(&host, &[0u8; HDR_LEN + 10]);
    // As large as pvnet's whole read buffer: possibly cut short, never forwarded.
    host_send_raw(&host, &vec![0u8; pvnet_backend::datapath::tapsrc::TAP_BUF]);
    // NEEDS_CSUM with a checksum start beyond the frame.
    let mut h = frames::csum_hdr(2000, 16);
    host_send(&host, &h, &good);
    // TSO asked for an ARP frame.
    h = frames::tso_hdr(true, 34, 54, 100);
    let arp = eth(GUEST, HOST, 0x0806, &[0u8; 400]);
    host_send(&host, &h, &arp);
    // An unknown GSO type.
    h = VirtioNetHdr::plain();
    h.gso_type = 0x33;
    h.gso_size = 100;
    host_send(&host, &h, &good);
    // Flags the device alone may set: delivered, but not believed.
    h = VirtioNetHdr::plain();
    h.flags = DATA_VALID | 0x80;
    host_send(&host, &h, &tcp(100, 2));
    // A multicast source MAC: delivered, never learned.
    let mc = [0x03, 0, 0, 0, 0, 7];
    let from_mc = eth(GUEST, mc, 0x88b5, &[2; 60]);
    host_send(&host, &VirtioNetHdr::plain(), &from_mc);
    // A sound TSO frame: segmented for the guest.
    let big = tcp(4000, 3);
    let (ph, partial) = frames::partial_csum(&big).expect("partial");
    let mut th = frames::tso_hdr(true, 34, 54, 1000);
    th.flags = ph.flags;
    host_send(&host, &th, &partial);
    // The port still works.
    host_send(&host, &VirtioNetHdr::plain(), &good);

    let got = collect(&mut g, 1 + 1 + 4 + 1);
    // A burst's drops are counted once the whole burst was offered: the guest may have its
    // frames a moment before.
    let t0 = Instant::now();
    while sw.ports[1].queue_snapshot(0).total_drops() < 6 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let q = sw.ports[1].queue_snapshot(0);
    println!("tap port after hostile frames: {q:?}");
    assert_eq!(got.len(), 7, "{got:?}");
    assert_eq!(got[0].frame, tcp(100, 2));
    assert_eq!(
        got[0].hdr.flags, 0,
        "DATA_VALID from the host side must not survive"
    );
    assert_eq!(got[1].frame, from_mc);
    for seg in &got[2..6] {
        assert_eq!(seg.hdr.gso_type, 0);
        frames::verify_checksums(&seg.frame).expect("segment checksums");
        assert_eq!(seg.frame.len(), 54 + 1000);
    }
    assert_eq!(got[6].frame, good);
    assert_eq!(q.drops_for(DropReason::TooShort), 2, "{q:?}");
    assert_eq!(q.drops_for(DropReason::TooLarge), 1, "{q:?}");
    assert_eq!(q.drops_for(DropReason::BadOffload), 3, "{q:?}");
    assert_eq!(q.total_drops(), 6, "{q:?}");
    assert_eq!(sw.fdb.lookup(&mc), None, "a multicast source was learned");
    assert_eq!(sw.fdb.lookup(&HOST), Some(1));
    g.disconnect();
    finish(s, dir);
}

#[test]
fn a_full_guest_holds_host_frames_back_and_loses_none() {
    let (dev, host) = pair(None);
    let (s, dir) = start("uplink-bp-guest", dev);
    let sw = s.switch().clone();
    // No RX buffers until the test posts them.
    let mut gc = guest_config(1, GUEST);
    gc.rx_fill = None;
    let mut g = TestGuest::connect(&s.paths()[0], gc).expect("connect");
    wait_enabled(&sw, 0, 1);
    g.send(
        0,
        &VirtioNetHdr::plain(),
        &eth(frames::BROADCAST, GUEST, 0x88b5, &[1; 50]),
    )
    .expect("send");
    host_recv(&host).expect("hello");
    let n = 100u32;
    let sent: Vec<Vec<u8>> = (0..n).map(|i| tcp(200, i)).collect();
    for fr in &sent {
        host_send(&host, &VirtioNetHdr::plain(), fr);
    }
    // The reader holds them back (its wait is counted) instead of dropping them.
    let t0 = Instant::now();
    while sw.ports[1].queue_snapshot(0).backpressure == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never held back");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    g.post_rx(0, 256, 2048).expect("post");
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < sent.len() && t0.elapsed() < Duration::from_secs(20) {
        for (_, r) in g
            .recv_until(None, 1, Duration::from_millis(100))
            .expect("receive")
        {
            got.push(r.frame);
        }
        g.post_rx(0, 256, 2048).expect("post");
    }
    let q = sw.ports[1].queue_snapshot(0);
    assert_eq!(got, sent, "every frame, in order");
    assert_eq!(q.total_drops(), 0, "{q:?}");
    g.disconnect();
    finish(s, dir);
}

#[test]
fn a_full_tap_holds_guest_frames_back_and_loses_none() {
    // A small send buffer: pvnet's writes fail with EAGAIN until the host side reads.
    let (dev, host) = pair(Some(4096));
    let (s, dir) = start("uplink-bp-tap", dev);
    let sw = s.switch().clone();
    let mut g = TestGuest::connect(&s.paths()[0], guest_config(1, GUEST)).expect("connect");
    wait_enabled(&sw, 0, 1);
    // The host's MAC becomes known to the switch.
    host_send(
        &host,
        &VirtioNetHdr::plain(),
        &eth(GUEST, HOST, 0x88b5, &[1; 50]),
    );
    collect(&mut g, 1);
    let n = 300u32;
    let sent: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let d: Vec<u8> = (0..1000).map(|k| (k + i as usize) as u8).collect();
            frames::ipv4_tcp(
                GUEST,
                HOST,
                [10, 0, 0, 2],
                [10, 0, 0, 1],
                40000,
                5201,
                i,
                &d,
            )
        })
        .collect();
    let sender = std::thread::spawn(move || {
        for fr in &sent {
            g.send_wait(0, &VirtioNetHdr::plain(), fr, Duration::from_secs(20))
                .expect("send");
        }
        (g, sent)
    });
    // Let the writes hit the full buffer before reading.
    let t0 = Instant::now();
    while sw.ports[0].queue_snapshot(0).backpressure == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never held back");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut got = Vec::new();
    while got.len() < n as usize {
        match host_recv(&host) {
            Some((_, fr)) => got.push(fr),
            None => break,
        }
    }
    let (g, sent) = sender.join().expect("sender");
    let gq = sw.ports[0].queue_snapshot(0);
    let tq = sw.ports[1].queue_snapshot(0);
    assert_eq!(got.len(), sent.len(), "guest {gq:?} tap {tq:?}");
    assert!(got == sent, "frames changed or reordered");
    assert_eq!(gq.total_drops() + tq.total_drops(), 0, "{gq:?} {tq:?}");
    g.disconnect();
    finish(s, dir);
}

#[test]
fn a_guest_leaving_while_host_frames_wait_for_it_costs_no_bound() {
    let (dev, host) = pair(None);
    let (s, dir) = start("uplink-leave", dev);
    let sw = s.switch().clone();
    let mut gc = guest_config(1, GUEST);
    gc.rx_fill = None;
    let mut g = TestGuest::connect(&s.paths()[0], gc).expect("connect");
    wait_enabled(&sw, 0, 1);
    g.send(
        0,
        &VirtioNetHdr::plain(),
        &eth(frames::BROADCAST, GUEST, 0x88b5, &[1; 50]),
    )
    .expect("send");
    host_recv(&host).expect("hello");
    for i in 0..20 {
        host_send(&host, &VirtioNetHdr::plain(), &tcp(200, i));
    }
    let t0 = Instant::now();
    while sw.ports[1].queue_snapshot(0).backpressure == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never held back");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The guest goes away: the held frames are dropped and counted at once (not after the
    // 10 s bound), and the reader goes on with the next guest.
    let t_leave = Instant::now();
    g.disconnect();
    while sw.ports[1].queue_snapshot(0).total_drops() < 20 {
        assert!(
            t_leave.elapsed() < Duration::from_secs(5),
            "held frames not released: {:?}",
            sw.ports[1].queue_snapshot(0)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let q = sw.ports[1].queue_snapshot(0);
    assert_eq!(
        q.drops_for(DropReason::RxFullTimeout) + q.drops_for(DropReason::NoDest),
        20,
        "{q:?}"
    );
    let mut g = TestGuest::connect(&s.paths()[0], guest_config(1, GUEST)).expect("reconnect");
    wait_enabled(&sw, 0, 1);
    let next = tcp(200, 99);
    host_send(&host, &VirtioNetHdr::plain(), &next);
    let got = collect(&mut g, 1);
    assert_eq!(got.first().map(|r| &r.frame), Some(&next));
    g.disconnect();
    finish(s, dir);
}

/// A tap port shares the port table with vhost-user ports added at run time: it is listed
/// with kind `tap`, and an added port takes a free slot after it, never the tap's.
#[test]
fn ports_added_at_run_time_skip_the_tap_slot() {
    use pvnet_backend::server::PortMode;
    let (dev, _host) = pair(None);
    let d = tmpdir("upltable");
    let cfg = Config {
        sockets: vec![d.join("g.sock")],
        queue_pairs: 1,
        max_ports: 4,
        uplink: TapConfig {
            names: vec!["uplfake".into()],
            ..TapConfig::default()
        },
        ..Config::default()
    };
    let tap = TapDevice {
        name: "uplfake".into(),
        fds: vec![dev],
        created: false,
        offload: true,
    };
    let s = Server::start_with_taps(cfg, vec![tap]).expect("server");
    let kinds: Vec<(usize, PortMode)> = s.ports().iter().map(|p| (p.idx, p.kind)).collect();
    assert_eq!(kinds, [(0, PortMode::Socket), (1, PortMode::Tap)]);
    let idx = s
        .add_port(PortMode::Socket, &d.join("h.sock"))
        .expect("add a port");
    assert_eq!(idx, 2, "the tap's slot was taken");
    assert_eq!(s.switch().ports_in_use_count(), 3);
    assert!(
        s.del_port("port1").is_err(),
        "a tap port is not deleted at run time"
    );
    s.del_port("port2").expect("delete the added port");
    s.shutdown();
}
