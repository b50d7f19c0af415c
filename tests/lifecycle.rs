//! The `pvnet` binary's life cycle with guests attached: a signal shuts it down through the
//! server's shutdown path (frontends disconnected, grants revoked, sockets removed), and in
//! client mode a killed and restarted pvnet reconnects to the frontends by itself.

mod common;

use common::*;
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn guest_cfg(mac: [u8; 6]) -> GuestConfig {
    GuestConfig {
        queue_pairs: 1,
        mac,
        rx_fill: Some(2048),
        tx_limit: Some(16),
        ..GuestConfig::default()
    }
}

/// Numbers of "N grants revoked" in the log.
fn revoked_counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let i = l.find(" grants revoked")?;
            let head = &l[..i];
            head.rsplit(['(', ' ']).next()?.parse().ok()
        })
        .collect()
}

#[test]
fn sigterm_disconnects_guests_revokes_grants_and_removes_sockets() {
    let d = tmpdir("term-guest");
    let (a, b) = (d.join("a.sock"), d.join("b.sock"));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let child = spawn(&["--socket", s(&a), "--socket", s(&b), "--queues", "1", "-v"]);
        wait_listening(&a);
        wait_listening(&b);
        let ga = TestGuest::connect(&a, guest_cfg([2, 0, 0, 0, 0, 1])).expect("connect a");
        let gb = TestGuest::connect(&b, guest_cfg([2, 0, 0, 0, 0, 2])).expect("connect b");
        signal(&child, sig);
        let (st, _, log) = wait_bounded(child, Duration::from_secs(20));
        assert_eq!(st.code(), Some(0), "{log}");
        assert!(!a.exists() && !b.exists(), "sockets left behind");
        assert!(log.contains("shutdown complete"), "{log}");
        // Both guests were disconnected by pvnet, each with its memory's grants revoked.
        let after = &log[log.find("shutting down").expect("signal logged")..];
        let revoked = revoked_counts(after);
        assert_eq!(revoked.len(), 2, "{log}");
        assert!(revoked.iter().all(|&n| n > 0), "{log}");
        assert!(ga.device_gone() && gb.device_gone());
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Counters of one guest of the client-mode run.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    reconnects: AtomicU64,
}

/// A listening guest: sends UDP frames to `peer` and counts what it receives, taking the
/// device's new connections as they come, until `stop`.
fn client_guest(
    path: std::path::PathBuf,
    me: [u8; 6],
    peer: [u8; 6],
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut g = TestGuest::listen(&path, guest_cfg(me), Duration::from_secs(30)).expect("listen");
    let f = frames::ipv4_udp(
        me,
        peer,
        [10, 0, 0, me[5]],
        [10, 0, 0, peer[5]],
        9,
        9,
        &[7; 64],
    );
    while !stop.load(Ordering::Relaxed) {
        if g.reconnect(Duration::ZERO).expect("reconnect") {
            c.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let _ = g.try_send(0, &VirtioNetHdr::plain(), &f).expect("send");
        let n = g.poll_rx().expect("receive").len() as u64;
        c.received.fetch_add(n, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// Frontends listen (QEMU `server=on`), pvnet connects; pvnet is killed with SIGKILL in
/// the middle of the traffic and started again: traffic resumes within 2 s, the frontends
/// only accepted pvnet's new connections.
#[test]
fn client_mode_survives_a_pvnet_restart() {
    let d = tmpdir("client");
    let (pa, pb) = (d.join("qemu-a.sock"), d.join("qemu-b.sock"));
    let macs = [[2, 0, 0, 0, 0, 0x21], [2, 0, 0, 0, 0, 0x22]];
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<Counters>> = (0..2).map(|_| Arc::default()).collect();
    let guests: Vec<_> = [(&pa, 0), (&pb, 1)]
        .into_iter()
        .map(|(p, i)| {
            let (p, c, st) = (p.clone(), counters[i].clone(), stop.clone());
            std::thread::spawn(move || client_guest(p, macs[i], macs[1 - i], c, st))
        })
        .collect();
    wait_for("frontend sockets", Duration::from_secs(10), || {
        pa.exists() && pb.exists()
    });
    let args = [
        "--client",
        s(&pa),
        "--client",
        s(&pb),
        "--queues",
        "1",
        "-v",
    ];
    let received = || {
        counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .min()
    };
    let first = spawn(&args);
    wait_for("traffic", Duration::from_secs(20), || {
        received().unwrap_or(0) > 50
    });
    kill(first);
    let before = received().unwrap_or(0);
    let second = spawn(&args);
    let took = wait_for("traffic after the restart", Duration::from_secs(2), || {
        received().unwrap_or(0) > before + 20
    });
    eprintln!("traffic resumed {took:?} after pvnet was started again");
    stop.store(true, Ordering::Relaxed);
    for g in guests {
        g.join().expect("guest thread");
    }
    for c in &counters {
        assert_eq!(
            c.reconnects.load(Ordering::Relaxed),
            1,
            "one new connection each"
        );
    }
    signal(&second, libc::SIGTERM);
    let (st, _, log) = wait_bounded(second, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `Type=notify`: READY=1 reaches NOTIFY_SOCKET once the sockets listen, STOPPING=1 at a
/// signal.
#[test]
fn readiness_is_notified_once_the_sockets_listen() {
    let d = tmpdir("notify");
    let (a, n) = (d.join("a.sock"), d.join("notify.sock"));
    let ns = std::os::unix::net::UnixDatagram::bind(&n).expect("notify socket");
    ns.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let child = Pvnet::from_child(
        pvnet()
            .args(["--socket", s(&a), "--queues", "1", "--no-control"])
            .env("NOTIFY_SOCKET", &n)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let mut buf = [0u8; 512];
    let len = ns.recv(&mut buf).expect("READY");
    let msg = String::from_utf8_lossy(&buf[..len]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(
        std::os::unix::net::UnixStream::connect(&a).is_ok(),
        "READY before the socket listened"
    );
    signal(&child, libc::SIGTERM);
    let len = ns.recv(&mut buf).expect("STOPPING");
    assert!(String::from_utf8_lossy(&buf[..len]).contains("STOPPING=1"));
    let (st, _, log) = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}
