//! Frontends that lie about or pull away their guest memory: a region larger than its
//! file is refused with an error reply, and a memory file truncated while in use costs its
//! own port only (the SIGBUS is contained, the frontend disconnected), while other ports keep
//! switching and the port accepts the next frontend.
//!
//! Each test here would take the whole test process down with SIGBUS without its defence.

use pvnet_backend::{Config, Server};
use pvnet_testkit::harness::tmpdir;
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

fn server(d: &Path, ports: usize) -> Server {
    server_on(d, ports, 0)
}

/// With `pmd_threads` switch-wide polling threads (0: workers per port).
fn server_on(d: &Path, ports: usize, pmd_threads: u16) -> Server {
    Server::start(Config {
        sockets: (0..ports).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: 1,
        pmd_threads,
        backpressure_bound: Duration::from_millis(100),
        ..Config::default()
    })
    .expect("server")
}

fn mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, 0x20 + i]
}

fn guest(path: &Path, i: u8) -> TestGuest {
    let cfg = GuestConfig {
        mem_size: 1 << 20,
        mac: mac(i),
        ..GuestConfig::default()
    };
    let mut g = TestGuest::connect(path, cfg).expect("connect");
    g.post_rx(0, 64, 2048).expect("post");
    g
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `from` sends one unicast frame to `to_mac` tagged `n`; `to` must receive it.
fn exchange(from: &mut TestGuest, to: &mut TestGuest, from_mac: [u8; 6], to_mac: [u8; 6], n: u16) {
    let f = frames::ipv4_udp(
        from_mac,
        to_mac,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        9,
        n,
        b"steady",
    );
    let t0 = Instant::now();
    while from.send(0, &VirtioNetHdr::plain(), &f).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "TX ring stuck");
        from.reclaim_tx(0);
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now();
    loop {
        let got = to.recv(0, Duration::from_millis(100)).expect("recv");
        let hit = got.iter().any(|r| {
            frames::parse(&r.frame)
                .is_some_and(|p| p.ports.is_some_and(|(_, d)| d == n) && p.src == from_mac)
        });
        if hit {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "frame {n} from {from_mac:x?} never arrived"
        );
    }
}

#[test]
// `..Default::default()` fills the extra fields vhost has with its "xen" feature.
#[allow(clippy::needless_update)]
fn region_larger_than_its_file_gets_an_error() {
    let d = tmpdir("small");
    let s = server(&d, 2);
    let mut fe = Frontend::connect(&s.paths()[0], 2).expect("connect");
    fe.set_owner().expect("owner");
    let offered = fe.get_features().expect("features");
    let pf = fe.get_protocol_features().expect("protocol features");
    assert!(pf.contains(VhostUserProtocolFeatures::REPLY_ACK));
    fe.set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK)
        .expect("set protocol");
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_features(offered).expect("set features");
    // 4 KiB of file declared as 1 MiB of guest memory.
    let f = pvnet_grant::memfd::memfd(c"pvnet-hostile", 4096).expect("memfd");
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: 0,
        mmap_handle: f.as_raw_fd(),
        ..Default::default()
    };
    let r = fe.set_mem_table(&[region]);
    assert!(r.is_err(), "undersized region accepted");
    assert!(
        s.grants(0).is_empty(),
        "nothing was granted from the refused table"
    );
    drop(fe);
    // The port accepts the next frontend and switches.
    let mut a = guest(&s.paths()[0], 0);
    let mut b = guest(&s.paths()[1], 1);
    wait("rings attached", Duration::from_secs(10), || {
        s.switch().ports.iter().all(|p| p.enabled_pairs() == 1)
    });
    exchange(&mut a, &mut b, mac(0), mac(1), 1);
    exchange(&mut b, &mut a, mac(1), mac(0), 2);
    drop((a, b));
    s.shutdown();
}

#[test]
fn truncated_memory_costs_only_its_own_port() {
    truncated_memory(0);
}

/// The same with one polling thread serving all three ports (`--pmd-threads 1`): the fault
/// is taken on the thread the steady ports depend on too.
#[test]
fn truncated_memory_costs_only_its_own_port_on_a_shared_pmd_thread() {
    truncated_memory(1);
}

fn truncated_memory(pmd_threads: u16) {
    let d = tmpdir(&format!("trunc{pmd_threads}"));
    let s = server_on(&d, 3, pmd_threads);
    let sw = s.switch().clone();
    // Port 0: the victim (its frontend will shrink its memory files). Ports 1, 2: steady.
    let a = guest(&s.paths()[0], 0);
    let mut b = guest(&s.paths()[1], 1);
    let mut c = guest(&s.paths()[2], 2);
    wait("rings attached", Duration::from_secs(10), || {
        sw.ports.iter().all(|p| p.enabled_pairs() == 1)
    });
    let files: Vec<File> = a
        .memory()
        .iter()
        .map(|r| {
            r.file_offset()
                .expect("memfd")
                .file()
                .try_clone()
                .expect("dup")
        })
        .collect();
    let mut n = 0u16;
    let mut truncated_at = None;
    while n < 400 {
        n += 1;
        // Unicast both ways, plus a broadcast that floods into port 0's RX ring.
        exchange(&mut b, &mut c, mac(1), mac(2), n);
        exchange(&mut c, &mut b, mac(2), mac(1), n);
        let bc = frames::ipv4_udp(
            mac(1),
            frames::BROADCAST,
            [10, 0, 0, 1],
            [10, 0, 0, 255],
            9,
            n,
            b"all",
        );
        let _ = b.send(0, &VirtioNetHdr::plain(), &bc);
        if n == 50 {
            // From here on, `a`'s memory must not be touched by this test either.
            for f in &files {
                f.set_len(0).expect("truncate");
            }
            truncated_at = Some(Instant::now());
        }
        if truncated_at.is_some() && !sw.ports[0].connected.load(Ordering::Acquire) && n > 100 {
            break;
        }
    }
    let t = truncated_at.expect("truncated");
    wait("victim disconnected", Duration::from_secs(10), || {
        !sw.ports[0].connected.load(Ordering::Acquire) && s.grants(0).is_empty()
    });
    eprintln!(
        "victim disconnected {:?} after the truncation; faults contained: {}",
        t.elapsed(),
        sw.ports[0].guard.faults()
    );
    assert!(sw.ports[0].guard.faults() >= 1);
    assert_eq!(sw.ports[0].guard.disconnects(), 1);
    assert_eq!(sw.ports[1].guard.faults() + sw.ports[2].guard.faults(), 0);
    assert!(sw.ports[1].connected.load(Ordering::Acquire));
    assert!(sw.ports[2].connected.load(Ordering::Acquire));
    // Steady ports keep exchanging after the victim is gone.
    for k in 0..50 {
        exchange(&mut b, &mut c, mac(1), mac(2), 1000 + k);
        exchange(&mut c, &mut b, mac(2), mac(1), 1000 + k);
    }
    // The victim's port takes a new frontend, which switches normally.
    drop(a);
    drop(files);
    let mut a2 = guest(&s.paths()[0], 0);
    wait("new frontend attached", Duration::from_secs(10), || {
        sw.ports[0].enabled_pairs() == 1
    });
    exchange(&mut a2, &mut b, mac(0), mac(1), 7);
    exchange(&mut b, &mut a2, mac(1), mac(0), 8);
    assert!(!sw.ports[0].guard.poisoned());
    let json = pvnet_backend::report::render(&sw, pvnet_backend::report::StatsFormat::Json);
    assert!(json.contains("\"memory_fault_disconnects\":1"), "{json}");
    drop((a2, b, c));
    s.shutdown();
}
