//! `--metrics`: the Prometheus endpoint of a running `pvnet`, scraped and parsed, agrees with
//! `pvnet ctl stats --json`.

mod common;

use common::*;
use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// GET http://addr/path; returns (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("response");
    let (head, body) = r.split_once("\r\n\r\n").expect("HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Samples of the text format: `name{labels}` -> value (comments skipped; every other
/// line must parse).
fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("bad value {l:?}")),
            )
        })
        .collect()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn metrics_match_ctl_stats() {
    let d = tmpdir("metrics");
    let (a, b, control) = (d.join("a.sock"), d.join("b.sock"), d.join("ctl.sock"));
    let addr = format!("127.0.0.1:{}", free_port());
    let child = spawn(&[
        "--socket",
        s(&a),
        "--socket",
        s(&b),
        "--queues",
        "2",
        "--control",
        s(&control),
        "--metrics",
        &addr,
    ]);
    wait_listening(&a);
    wait_listening(&b);
    let cfg = |mac| GuestConfig {
        queue_pairs: 2,
        mac,
        rx_fill: Some(2048),
        ..GuestConfig::default()
    };
    let (ma, mb) = ([2, 0, 0, 0, 0, 0x31], [2, 0, 0, 0, 0, 0x32]);
    let mut ga = TestGuest::connect(&a, cfg(ma)).expect("a");
    let mut gb = TestGuest::connect(&b, cfg(mb)).expect("b");
    // Until B's rings are up, a frame to it has nowhere to go (dropped, no_dest): send one
    // at a time until one arrives; the metrics and `ctl stats` below count these too.
    let t0 = std::time::Instant::now();
    let mut warm = 0u32;
    loop {
        assert!(t0.elapsed() < Duration::from_secs(20), "B never received");
        let f = frames::ipv4_udp(ma, mb, [10, 0, 0, 1], [10, 0, 0, 2], 999, 9, &[1; 100]);
        ga.send(0, &VirtioNetHdr::plain(), &f).expect("send");
        warm += 1;
        let n = gb
            .recv_until(None, 1, Duration::from_millis(200))
            .expect("recv")
            .len();
        ga.reclaim_tx(0);
        if n > 0 {
            break;
        }
    }
    let mut got = 0;
    for i in 0..50u16 {
        let f = frames::ipv4_udp(ma, mb, [10, 0, 0, 1], [10, 0, 0, 2], i, 9, &[1; 100]);
        ga.send(i % 2, &VirtioNetHdr::plain(), &f).expect("send");
        got += gb
            .recv_until(None, 1, Duration::from_secs(10))
            .expect("recv")
            .len();
        ga.reclaim_tx(i % 2);
    }
    assert_eq!(got, 50);
    let (status, body) = get(&addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let m = parse(&body);
    let out = pvnet()
        .args(["ctl", "--control", s(&control), "stats", "--json"])
        .output()
        .expect("ctl");
    assert!(out.status.success());
    let st: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let mut compared = 0;
    for p in st["ports"].as_array().expect("ports") {
        let port = p["port"].as_u64().expect("port");
        for (q, qs) in p["queues"].as_array().expect("queues").iter().enumerate() {
            for k in [
                "tx_frames",
                "tx_bytes",
                "tx_bursts",
                "rx_frames",
                "rx_bytes",
                "backpressure",
                "tx_kicks",
            ] {
                let key = format!("pvnet_{k}_total{{port=\"{port}\",queue=\"{q}\"}}");
                let want = qs[k].as_u64().expect("counter") as f64;
                assert_eq!(m.get(&key), Some(&want), "{key}");
                compared += 1;
            }
            for (reason, n) in qs["drops"].as_object().expect("drops") {
                let key = format!(
                    "pvnet_drops_total{{port=\"{port}\",queue=\"{q}\",reason=\"{reason}\"}}"
                );
                assert_eq!(m.get(&key), Some(&(n.as_u64().expect("n") as f64)), "{key}");
            }
        }
    }
    assert_eq!(compared, 2 * 2 * 7);
    let tx: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("pvnet_tx_frames_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(tx, f64::from(50 + warm));
    // The workers that moved those frames were busy for some time.
    let busy: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("pvnet_busy_ns_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(busy > 0.0, "no busy time in the metrics");
    assert_eq!(m.get("pvnet_port_connected{port=\"1\"}"), Some(&1.0));
    assert!(get(&addr, "/other").0.contains("404"));
    drop((ga, gb));
    signal(&child, libc::SIGTERM);
    let (st, _, log) = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}
