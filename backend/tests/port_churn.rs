//! Ports added and deleted over and over (with a guest on each, listening and client
//! ports) leave nothing behind: file descriptors, threads and mappings come back to the
//! same figures, and the slot is reused.

use pvnet_backend::server::PortMode;
use pvnet_backend::{Config, Server};
use pvnet_testkit::harness::{self, tmpdir};
use pvnet_testkit::{procstat, GuestConfig, TestGuest};
use std::path::Path;
use std::time::Duration;

fn guest_cfg() -> GuestConfig {
    GuestConfig {
        queue_pairs: 2,
        rx_fill: Some(2048),
        ..GuestConfig::default()
    }
}

/// One port added, used by a guest and deleted; returns the slot it had.
fn cycle(server: &Server, d: &Path, i: usize) -> usize {
    let (idx, g) = if i % 2 == 0 {
        let p = d.join("churn.sock");
        let idx = server
            .add_port(PortMode::Socket, &p)
            .expect("add socket port");
        (idx, TestGuest::connect(&p, guest_cfg()).expect("guest"))
    } else {
        let p = d.join("qemu.sock");
        let idx = server
            .add_port(PortMode::Client, &p)
            .expect("add client port");
        let g = TestGuest::listen(&p, guest_cfg(), Duration::from_secs(10)).expect("listen");
        (idx, g)
    };
    harness::wait_enabled(server.switch(), idx, 2);
    let info = server.del_port(&format!("port{idx}")).expect("delete");
    assert_eq!(info.idx, idx);
    drop(g);
    assert!(server.grants(idx).is_empty());
    assert!(!d.join("churn.sock").exists());
    idx
}

#[test]
fn add_delete_cycles_leak_nothing() {
    let d = tmpdir("churn");
    let server = Server::start(Config {
        sockets: vec![d.join("p0.sock")],
        queue_pairs: 2,
        max_ports: 2,
        ..Config::default()
    })
    .expect("server");
    for i in 0..2 {
        assert_eq!(cycle(&server, &d, i), 1, "the free slot is reused");
    }
    let before = procstat::quiet();
    for i in 2..12 {
        cycle(&server, &d, i);
    }
    let after = procstat::quiet();
    assert_eq!(
        (after.fds, after.threads, after.maps),
        (before.fds, before.threads, before.maps),
        "fds now: {}",
        procstat::fd_list()
    );
    server.shutdown();
}
