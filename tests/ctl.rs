//! `pvnet ctl` against a running `pvnet`: listing, adding and deleting ports, errors with
//! exit code 1 and one line, the control socket's mode and its removal at exit.

mod common;

use common::*;
use std::process::Output;
use std::time::Duration;

fn ctl(control: &std::path::Path, args: &[&str]) -> Output {
    pvnet()
        .args(["ctl", "--control", s(control)])
        .args(args)
        .output()
        .expect("run pvnet ctl")
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn ctl_lists_adds_and_deletes_ports() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmpdir("ctl");
    let (a, c, control) = (d.join("a.sock"), d.join("c.sock"), d.join("ctl.sock"));
    let child = spawn(&["--socket", s(&a), "--queues", "1", "--control", s(&control)]);
    wait_listening(&a);
    wait_listening(&control);
    let mode = std::fs::metadata(&control)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // wait_listening's probe was a frontend for a moment: port0 says "connected" until its
    // thread has seen the probe hang up.
    let t0 = std::time::Instant::now();
    let ports = loop {
        let ports = ok(&ctl(&control, &["ports"]));
        if ports.contains("listening") || t0.elapsed() > Duration::from_secs(10) {
            break ports;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        ports.contains("port0") && ports.contains("listening"),
        "{ports}"
    );
    let added = ok(&ctl(&control, &["add-port", "--socket", s(&c)]));
    assert!(added.contains("port1"), "{added}");
    wait_listening(&c);
    let json = ok(&ctl(&control, &["ports", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{json}");
    fails(
        &ctl(&control, &["add-port", "--socket", s(&c)]),
        "already port 1",
    );
    fails(&ctl(&control, &["del-port", "port5"]), "no port");
    fails(&ctl(&control, &["log-level", "loud"]), "unknown log level");
    fails(
        &ctl(&control, &["add-port", "--tap", "t0"]),
        "not added at run time",
    );
    ok(&ctl(&control, &["del-port", "port1"]));
    assert!(!c.exists(), "deleted port's socket still there");
    ok(&ctl(&control, &["log-level", "debug"]));
    let stats = ok(&ctl(&control, &["stats", "--json"]));
    serde_json::from_str::<serde_json::Value>(&stats).expect("stats JSON");
    assert!(ok(&ctl(&control, &["stats"])).contains("tx_frames"));
    assert!(ok(&ctl(&control, &["fdb", "show"])).contains("mac"));
    ok(&ctl(&control, &["fdb", "flush"]));
    signal(&child, libc::SIGTERM);
    let (st, _, log) = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(!control.exists() && !a.exists(), "sockets left behind");
    fails(
        &ctl(&control, &["ports"]),
        "cannot connect to control socket",
    );
    let _ = std::fs::remove_dir_all(&d);
}
