//! Client mode (`Config::clients`): the frontend listens, the port connects, and connects
//! again to the next frontend on the same path after the first one went away.

use pvnet_backend::server::{PortMode, BACKOFF_MAX};
use pvnet_backend::{Config, Server};
use pvnet_testkit::harness::{self, full_listener, tmpdir};
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(mac: [u8; 6]) -> GuestConfig {
    GuestConfig {
        mac,
        rx_fill: Some(2048),
        ..GuestConfig::default()
    }
}

/// `from` sends to `to` until `to` receives one frame.
fn exchange(from: &mut TestGuest, to: &mut TestGuest, src: [u8; 6], dst: [u8; 6]) {
    let f = frames::ipv4_udp(src, dst, [10, 0, 0, 1], [10, 0, 0, 2], 5, 5, b"client mode");
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no frame got through"
        );
        from.reclaim_tx(0);
        let _ = from.try_send(0, &VirtioNetHdr::plain(), &f).expect("send");
        if !to
            .recv(0, Duration::from_millis(50))
            .expect("recv")
            .is_empty()
        {
            return;
        }
    }
}

#[test]
fn client_port_connects_to_the_next_frontend() {
    let d = tmpdir("client-next");
    let (q, a) = (d.join("qemu.sock"), d.join("a.sock"));
    let server = Server::start(Config {
        sockets: vec![a.clone()],
        clients: vec![q.clone()],
        queue_pairs: 1,
        ..Config::default()
    })
    .expect("server");
    let sw = server.switch().clone();
    let (ma, mq) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut ga = TestGuest::connect(&a, cfg(ma)).expect("socket port guest");
    // The port (1: after the sockets) connects to the listening frontend by itself.
    let mut g1 = TestGuest::listen(&q, cfg(mq), Duration::from_secs(10)).expect("frontend 1");
    exchange(&mut ga, &mut g1, ma, mq);
    exchange(&mut g1, &mut ga, mq, ma);
    // The frontend goes away (QEMU stopped) for a while, then a new one listens there.
    drop(g1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!sw.ports[1].connected.load(Ordering::Acquire));
    let t0 = Instant::now();
    let mut g2 = TestGuest::listen(&q, cfg(mq), BACKOFF_MAX * 3).expect("frontend 2");
    // Within one back-off step of the frontend's return (plus its set-up).
    assert!(t0.elapsed() < BACKOFF_MAX * 2, "took {:?}", t0.elapsed());
    exchange(&mut ga, &mut g2, ma, mq);
    exchange(&mut g2, &mut ga, mq, ma);
    assert_eq!(sw.ports[1].connections.load(Ordering::Acquire), 2);
    drop((ga, g2));
    server.shutdown();
}

/// A frontend that listens but never accepts (its backlog full: hung, or flooded) holds the
/// port in its connection attempts, not in one of them: the port is deleted, and the switch
/// shut down, all the same.
#[test]
fn del_port_and_shutdown_do_not_wait_for_a_frontend_that_never_accepts() {
    let d = tmpdir("client-full");
    let (q1, q2) = (d.join("qemu1.sock"), d.join("qemu2.sock"));
    let (_l1, _c1) = full_listener(&q1);
    let (_l2, _c2) = full_listener(&q2);
    let server = Arc::new(
        Server::start(Config {
            sockets: vec![d.join("a.sock")],
            clients: vec![q1],
            queue_pairs: 1,
            max_ports: 3,
            ..Config::default()
        })
        .expect("server"),
    );
    let idx = server.add_port(PortMode::Client, &q2).expect("add");
    // Both ports are in connect() by now.
    std::thread::sleep(Duration::from_millis(300));
    let s = server.clone();
    let info = harness::within(Duration::from_secs(5), "del-port", move || {
        s.del_port(&format!("port{idx}"))
    })
    .expect("deleted");
    assert_eq!(info.idx, idx);
    harness::within(Duration::from_secs(5), "shutdown", move || {
        server.shutdown()
    });
}
