//! The uplink with real tap devices: a test guest ↔ pvnet ↔ tap moved into a fresh network
//! namespace with an address. From the namespace side: `ping` (large echoes, so replies are
//! written to the tap straight from the guest's buffers) and a TCP stream to the guest; then
//! a TCP stream from the guest (TSO frames written to the tap whole, or segmented by pvnet
//! when the tap takes no offloads); with offloads on both sides, on the tap only (pvnet
//! segments and completes checksums in software for the guest), and off. Skips (printing `SKIP:`) only where the machine has no
//! `/dev/net/tun`, or forbids creating taps or network namespaces.

mod hostile;
mod stack;

use pvnet_backend::stats::DropReason;
use pvnet_backend::tap::{TapConfig, TapError};
use pvnet_backend::{Config, ServeError, Server};
use pvnet_testkit::features as f;
use pvnet_testkit::harness::{guest_config, tmpdir, wait_enabled, TmpDir};
use pvnet_testkit::{TestGuest, VirtioNetHdr};
use stack::{pattern, Ends, Sender, Stack, MSS};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST_IP: [u8; 4] = [10, 213, 0, 1];
const GUEST_IP: [u8; 4] = [10, 213, 0, 2];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x21, 0x01];
const PORT: u16 = 5201;
const STREAM: u64 = 3 << 20;
const GUEST_STREAM: u64 = 1 << 20;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop (with the interfaces in it).
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Result<Netns, String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        Ok(Netns(name.into()))
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl std::ops::Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// Runs `f` in a thread that entered namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns on a namespace file we hold open; it changes only this thread's
        // network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Sends `n` ICMP echo requests with `size` payload bytes to `dst` (a raw socket, in the
/// calling thread's namespace); returns how many were answered (each within 5 s).
fn ping(dst: [u8; 4], n: u16, size: usize) -> Result<u16, String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket creation; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(err("raw ICMP socket"));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO with a timeval that lives for the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst);
    let id = (std::process::id() & 0xffff) as u16;
    let mut answered = 0;
    for seq in 0..n {
        let mut m = vec![8u8, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend((0..size).map(|i| (i * 13) as u8));
        let c = pvnet_testkit::frames::internet_checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: sends from a buffer and an address that live for the call.
        let r = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(err("sendto"));
        }
        let mut buf = vec![0u8; 2048];
        loop {
            // SAFETY: receives into a buffer we own, at most its length.
            let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                return Err(err(&format!("no answer to echo {seq}")));
            }
            let p = &buf[..r as usize];
            let ihl = usize::from(p[0] & 0xf) * 4;
            let icmp = &p[ihl..];
            if icmp.len() == m.len() && icmp[0] == 0 && icmp[4..8] == m[4..8] {
                if icmp[8..] != m[8..] {
                    return Err(format!("echo {seq} came back changed"));
                }
                answered += 1;
                break;
            }
        }
    }
    Ok(answered)
}

/// The guest's side: answers and receives until `stop`.
fn responder(mut g: TestGuest, stop: Arc<AtomicBool>) -> (Stack, TestGuest) {
    let mut st = Stack::new(GUEST_MAC, GUEST_IP, PORT);
    while !stop.load(Ordering::Acquire) {
        let frames = g
            .recv_until(None, 1, Duration::from_millis(5))
            .expect("receive");
        for (_, r) in frames {
            for out in st.handle(&r.hdr, &r.frame) {
                g.send_wait(0, &VirtioNetHdr::plain(), &out, Duration::from_secs(5))
                    .expect("send");
            }
        }
    }
    (st, g)
}

/// The MAC address of interface `dev` in namespace `ns`.
fn ns_mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let o = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let hex = String::from_utf8_lossy(&o.stdout);
    let v: Vec<u8> = hex
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC"))
        .collect();
    v.try_into().expect("6 bytes")
}

/// Receives what came for `s` for a moment and answers it.
fn pump(g: &mut TestGuest, s: &mut Sender) -> Result<(), String> {
    let frames = g
        .recv_until(None, 1, Duration::from_millis(5))
        .map_err(|e| format!("receive: {e}"))?;
    for (_, r) in frames {
        if let Some(a) = s.on_frame(&r.frame) {
            g.send_wait(0, &VirtioNetHdr::plain(), &a, Duration::from_secs(5))
                .map_err(|e| format!("send: {e}"))?;
        }
    }
    Ok(())
}

/// A TCP stream of `total` bytes from the guest to the host side in TSO frames (MSS 1448)
/// as [`Sender`] paces them; returns how often it had to send bytes again.
fn guest_stream(g: &mut TestGuest, ends: Ends, total: u64) -> Result<u32, String> {
    let mut s = Sender::new(ends);
    let t0 = Instant::now();
    let late = |what: &str| format!("{what} after {:?}", t0.elapsed());
    let plain = VirtioNetHdr::plain();
    g.send_wait(0, &plain, &s.syn(), Duration::from_secs(5))
        .map_err(|e| format!("SYN: {e}"))?;
    while s.rcv_nxt.is_none() {
        pump(g, &mut s)?;
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(late("no SYN+ACK"));
        }
    }
    while s.acked < total {
        while let Some((off, n)) = s.next_piece(total, Instant::now()) {
            let data: Vec<u8> = (off..off + n).map(pattern).collect();
            let (h, f) = s.data(off, &data, Some(MSS));
            g.send_wait(0, &h, &f, Duration::from_secs(5))
                .map_err(|e| format!("send: {e}"))?;
        }
        pump(g, &mut s)?;
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(late(&format!(
                "{} of {total} bytes acknowledged (window {}, {} retransmissions)",
                s.acked, s.wnd, s.retransmits
            )));
        }
    }
    g.send_wait(0, &plain, &s.fin(total), Duration::from_secs(5))
        .map_err(|e| format!("FIN: {e}"))?;
    while !s.peer_fin {
        pump(g, &mut s)?;
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(late("no FIN from the host side"));
        }
    }
    Ok(s.retransmits)
}

/// Whether an error means the machine forbids taps.
fn forbidden(e: &ServeError) -> bool {
    let io = match e {
        ServeError::Tap(TapError::Open { err, .. } | TapError::SetIff { err, .. }) => err,
        _ => return false,
    };
    matches!(
        io.raw_os_error(),
        Some(libc::EPERM | libc::EACCES | libc::ENOENT | libc::ENODEV)
    )
}

/// One run: tap offloads `tap_offload`, guest offloads (GUEST_CSUM/TSO) `guest_offload`.
fn uplink_run(tag: &str, tap_offload: bool, guest_offload: bool, queues: u16) {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIP: uplink {tag}: no /dev/net/tun on this machine");
        return;
    }
    let pid = std::process::id() % 100_000;
    let tap = format!("uplt{pid}{tag}");
    let ns = match Netns::new(&format!("upl-t{pid}{tag}")) {
        Ok(n) => n,
        Err(e) => {
            println!("SKIP: uplink {tag}: cannot create a network namespace: {e}");
            return;
        }
    };
    let d = tmpdir(&format!("uplink-{tag}"));
    let cfg = Config {
        sockets: vec![d.join("g.sock")],
        queue_pairs: 2,
        backpressure_bound: Duration::from_secs(5),
        // The multi-queue run also polls (guest rings and tap queues, --poll-us).
        poll_us: if queues > 1 { 50 } else { 0 },
        uplink: TapConfig {
            names: vec![tap.clone()],
            queues,
            offload: tap_offload,
        },
        ..Config::default()
    };
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) if forbidden(&e) => {
            println!("SKIP: uplink {tag}: this machine forbids tap devices: {e}");
            return;
        }
        Err(e) => panic!("server: {e}"),
    };
    let sw = server.switch().clone();
    assert_eq!(sw.ports.len(), 2);
    assert!(sw.ports[1].tap().is_some());
    assert_eq!(sw.ports[1].queues(), usize::from(queues));
    // Into the namespace, with an address.
    ip(&["link", "set", &tap, "netns", &ns.0]).expect("move the tap");
    let host = format!(
        "{}.{}.{}.{}/24",
        HOST_IP[0], HOST_IP[1], HOST_IP[2], HOST_IP[3]
    );
    for cmd in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "addr", "add", &host, "dev", &tap],
        vec!["ip", "link", "set", &tap, "up"],
    ] {
        let o = ns.exec(&cmd);
        assert!(o.status.success(), "{cmd:?}: {o:?}");
    }
    let mut gc = guest_config(2, GUEST_MAC);
    if !guest_offload {
        gc.features &= !(f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::GUEST_ECN);
    }
    let g = TestGuest::connect(&server.paths()[0], gc).expect("connect");
    wait_enabled(&sw, 0, 2);
    // The host side may have flooded frames before the guest came (no_dest): not this
    // test's traffic.
    let tap_drops_before: u64 = (0..usize::from(queues))
        .map(|q| sw.ports[1].queue_snapshot(q).total_drops())
        .sum();
    let stop = Arc::new(AtomicBool::new(false));
    let st = {
        let stop = stop.clone();
        std::thread::spawn(move || responder(g, stop))
    };
    let guest = format!(
        "{}.{}.{}.{}",
        GUEST_IP[0], GUEST_IP[1], GUEST_IP[2], GUEST_IP[3]
    );
    let _ = &host;
    // ping: small and large echoes.
    let small = in_netns(&ns.0, || ping(GUEST_IP, 3, 56));
    let big = in_netns(&ns.0, || ping(GUEST_IP, 3, 1400));
    // A TCP stream from the namespace side.
    let addr: SocketAddr = format!("{guest}:{PORT}").parse().expect("address");
    let sent = in_netns(&ns.0, move || -> Result<u64, String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_write_timeout(Some(Duration::from_secs(30))).ok();
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let buf: Vec<u8> = (0..STREAM).map(pattern).collect();
        s.write_all(&buf).map_err(|e| format!("write: {e}"))?;
        s.shutdown(std::net::Shutdown::Write).ok();
        // The guest's FIN ends the stream.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).map_err(|e| format!("read: {e}"))?;
        Ok(buf.len() as u64)
    });
    stop.store(true, Ordering::Release);
    let (st, mut g) = st.join().expect("responder");
    // A TCP stream from the guest: TSO frames written to the tap whole (offloads on) or
    // segmented by pvnet first (off).
    let hmac = ns_mac(&ns, &tap);
    let listener = in_netns(&ns.0, || {
        std::net::TcpListener::bind(("10.213.0.1", PORT + 1)).expect("listen")
    });
    let host_rx = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut got = Vec::new();
        c.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(got)
    });
    let ends = Ends {
        mac: (GUEST_MAC, hmac),
        ip: (GUEST_IP, HOST_IP),
        port: (40001, PORT + 1),
    };
    let written = |sw: &pvnet_backend::Switch| -> u64 {
        (0..usize::from(queues))
            .map(|q| sw.ports[1].queue_snapshot(q).rx_frames)
            .sum()
    };
    let before = written(&sw);
    let up = guest_stream(&mut g, ends, GUEST_STREAM);
    let got = host_rx.join().expect("host receiver");
    let to_tap = written(&sw) - before;
    let mut tap_port = sw.ports[1].queue_snapshot(0);
    for q in 1..usize::from(queues) {
        tap_port.add(&sw.ports[1].queue_snapshot(q));
    }
    let guest_port = {
        let mut s = sw.ports[0].queue_snapshot(0);
        s.add(&sw.ports[0].queue_snapshot(1));
        s
    };
    println!(
        "uplink {tag}: pings {} largest frame {} gso frames {} partial-csum frames {} \
         guest stream {up:?} retransmissions, tap port {tap_port:?}",
        st.pings, st.largest, st.gso_frames, st.partial_frames
    );
    assert_eq!(small, Ok(3), "ping");
    assert_eq!(big, Ok(3), "ping with 1400-byte payloads");
    assert_eq!(sent, Ok(STREAM), "TCP stream from the namespace");
    assert_eq!(st.errors, Vec::<String>::new());
    assert_eq!(up.map(|_| ()), Ok(()), "TCP stream from the guest");
    let got = got.expect("host side");
    assert_eq!(got.len() as u64, GUEST_STREAM);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)),
        "guest stream bytes differ"
    );
    // 66 TSO frames of 16,000 bytes, or some 725 segments when pvnet segments them.
    let segments = GUEST_STREAM / 1448;
    if tap_offload {
        assert!(
            to_tap < segments / 4,
            "{to_tap} frames to the tap: segmented?"
        );
    } else {
        assert!(
            to_tap >= segments,
            "{to_tap} frames to the tap: not segmented?"
        );
    }
    assert_eq!((st.received, st.fin), (STREAM, true));
    assert!(st.pings >= 6);
    if tap_offload && guest_offload {
        assert!(
            st.gso_frames > 0,
            "the kernel's TSO frames reach the guest whole"
        );
    } else {
        assert_eq!(
            (st.gso_frames, st.partial_frames),
            (0, 0),
            "complete frames only"
        );
        assert!(st.largest <= 1514, "frame of {} bytes", st.largest);
    }
    // Frames went both ways through the tap port, and nothing was lost on the way.
    assert!(
        tap_port.tx_frames > 0 && tap_port.rx_frames > 0,
        "{tap_port:?}"
    );
    assert_eq!(tap_port.total_drops() - tap_drops_before, 0, "{tap_port:?}");
    assert_eq!(guest_port.total_drops(), 0, "{guest_port:?}");
    assert_eq!(tap_port.drops_for(DropReason::TapError), 0);
    if tap_offload {
        // Offload metadata the kernel refuses (a checksum start beyond the frame) passes
        // pvnet to an offloading tap as it is: the tap's EINVAL is a counted drop.
        let frame = pvnet_testkit::frames::ipv4_tcp(
            GUEST_MAC, hmac, GUEST_IP, HOST_IP, PORT, 40000, 7, &[1; 100],
        );
        let bad = pvnet_testkit::frames::csum_hdr(1000, 16);
        g.send(0, &bad, &frame).expect("send");
        let t0 = Instant::now();
        let guest_drops = |r| {
            (0..2)
                .map(|q| sw.ports[0].queue_snapshot(q).drops_for(r))
                .sum::<u64>()
        };
        while guest_drops(DropReason::BadOffload) == 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            guest_drops(DropReason::BadOffload),
            1,
            "EINVAL from the tap not counted"
        );
        g.disconnect();
    } else {
        g.disconnect();
    }
    server.shutdown();
    // pvnet created the tap: it goes with the server (here, with the namespace's copy).
    drop(ns);
}

#[test]
fn uplink_ping_and_tcp_offloads_on() {
    uplink_run("a", true, true, 1);
}

#[test]
fn uplink_ping_and_tcp_software_offloads_for_the_guest() {
    uplink_run("b", true, false, 1);
}

#[test]
fn uplink_ping_and_tcp_offloads_off() {
    uplink_run("c", false, false, 1);
}

#[test]
fn uplink_ping_and_tcp_multiqueue_tap() {
    uplink_run("d", true, true, 4);
}

/// A switch with one socket and the tap `name`, and its socket directory (`tmpdir(tag)`).
fn tap_server(tag: &str, name: &str) -> Result<(Server, TmpDir), ServeError> {
    let d = tmpdir(tag);
    let s = Server::start(Config {
        sockets: vec![d.join("g.sock")],
        queue_pairs: 1,
        uplink: TapConfig {
            names: vec![name.into()],
            ..TapConfig::default()
        },
        ..Config::default()
    })?;
    Ok((s, d))
}

#[test]
fn a_created_tap_goes_with_pvnet_a_persistent_one_stays() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIP: tap lifetime: no /dev/net/tun on this machine");
        return;
    }
    let pid = std::process::id() % 100_000;
    let exists = |n: &str| std::path::Path::new("/sys/class/net").join(n).exists();
    // Created by pvnet: up while it runs, gone when its descriptors close.
    let made = format!("uplc{pid}");
    let (s, d) = match tap_server("tap-created", &made) {
        Ok(sd) => sd,
        Err(e) if forbidden(&e) => {
            println!("SKIP: tap lifetime: this machine forbids tap devices: {e}");
            return;
        }
        Err(e) => panic!("server: {e}"),
    };
    assert!(s.switch().ports[1].tap().is_some_and(|t| t.created));
    let flags = std::fs::read_to_string(format!("/sys/class/net/{made}/flags")).expect("flags");
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex");
    assert_eq!(flags & 1, 1, "tap not up (flags {flags:#x})");
    // The tap's descriptors close with the server (and with the process, whatever way it
    // ends).
    s.shutdown();
    drop(s);
    drop(d);
    assert!(!exists(&made), "the tap pvnet created outlived it");
    // Persistent, made beforehand: attached to, and left in place.
    let kept = format!("uplp{pid}");
    if let Err(e) = ip(&["tuntap", "add", "dev", &kept, "mode", "tap"]) {
        println!("SKIP: tap lifetime: cannot create a persistent tap: {e}");
        return;
    }
    let (s, _d) = tap_server("tap-persistent", &kept).expect("server on a persistent tap");
    assert!(s.switch().ports[1].tap().is_some_and(|t| !t.created));
    s.shutdown();
    drop(s);
    let stayed = exists(&kept);
    let _ = ip(&["tuntap", "del", "dev", &kept, "mode", "tap"]);
    assert!(stayed, "a persistent tap was removed");
}

#[test]
fn two_taps_switch_between_two_namespaces() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIP: tap to tap: no /dev/net/tun on this machine");
        return;
    }
    let pid = std::process::id() % 100_000;
    let (ta, tb) = (format!("uplx{pid}a"), format!("uplx{pid}b"));
    let (na, nb) = match (
        Netns::new(&format!("upl-x{pid}a")),
        Netns::new(&format!("upl-x{pid}b")),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            println!("SKIP: tap to tap: cannot create network namespaces: {e}");
            return;
        }
    };
    let d = tmpdir("tap-to-tap");
    let server = match Server::start(Config {
        sockets: vec![d.join("g.sock")],
        queue_pairs: 1,
        uplink: TapConfig {
            names: vec![ta.clone(), tb.clone()],
            ..TapConfig::default()
        },
        ..Config::default()
    }) {
        Ok(s) => s,
        Err(e) if forbidden(&e) => {
            println!("SKIP: tap to tap: this machine forbids tap devices: {e}");
            return;
        }
        Err(e) => panic!("server: {e}"),
    };
    for (tap, ns, addr) in [(&ta, &na, "10.214.0.1/24"), (&tb, &nb, "10.214.0.2/24")] {
        ip(&["link", "set", tap, "netns", &ns.0]).expect("move the tap");
        for cmd in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", addr, "dev", tap],
            vec!["ip", "link", "set", tap, "up"],
        ] {
            let o = ns.exec(&cmd);
            assert!(o.status.success(), "{cmd:?}: {o:?}");
        }
    }
    let answered = in_netns(&na.0, || ping([10, 214, 0, 2], 3, 1000));
    assert_eq!(answered, Ok(3));
    // A TCP stream from a to b: the kernel's TSO frames go from one tap to the other whole.
    let listener = in_netns(&nb.0, || {
        std::net::TcpListener::bind("10.214.0.2:5201").expect("listen")
    });
    let rx = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("read");
        got
    });
    in_netns(&na.0, || {
        let addr: SocketAddr = "10.214.0.2:5201".parse().expect("address");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30))).ok();
        let buf: Vec<u8> = (0..STREAM).map(pattern).collect();
        s.write_all(&buf).expect("write");
    });
    let got = rx.join().expect("receiver");
    assert_eq!(got.len() as u64, STREAM);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)),
        "stream bytes differ"
    );
    let sw = server.switch().clone();
    let (a, b) = (sw.ports[1].queue_snapshot(0), sw.ports[2].queue_snapshot(0));
    println!("tap to tap: a {a:?}\nb {b:?}");
    assert_eq!(a.total_drops() + b.total_drops(), 0, "{a:?} {b:?}");
    // Fewer frames than MSS-sized segments: TSO frames crossed whole.
    assert!(a.tx_frames < STREAM / 1448, "{a:?}");
    drop(sw);
    server.shutdown();
    drop((na, nb));
}
