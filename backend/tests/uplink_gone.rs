//! A tap deleted from outside while pvnet holds it (`ip link del`): its reader thread stops
//! watching it instead of spinning on a descriptor that epoll reports as failed forever.
//! (Its own test binary: it measures the CPU time of the process's tap reader threads.)

use pvnet_backend::tap::{TapConfig, TapError};
use pvnet_backend::{Config, ServeError, Server};
use pvnet_testkit::harness::tmpdir;
use std::process::Command;
use std::time::Duration;

/// CPU clock ticks used so far by this process's threads named `pvnet-tap*`.
fn tap_thread_ticks() -> u64 {
    let mut t = 0;
    for e in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("pvnet-tap") {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime
        // the 13th.
        let rest = stat.rsplit_once(") ").map_or("", |x| x.1);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        t += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    }
    t
}

#[test]
fn a_tap_deleted_under_pvnet_does_not_make_it_spin() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIP: deleted tap: no /dev/net/tun on this machine");
        return;
    }
    let name = format!("uplg{}", std::process::id() % 100_000);
    let d = tmpdir("tap-gone");
    let s = match Server::start(Config {
        sockets: vec![d.join("g.sock")],
        queue_pairs: 1,
        uplink: TapConfig {
            names: vec![name.clone()],
            ..TapConfig::default()
        },
        ..Config::default()
    }) {
        Ok(s) => s,
        Err(ServeError::Tap(TapError::Open { err, .. } | TapError::SetIff { err, .. }))
            if matches!(
                err.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            println!("SKIP: deleted tap: this machine forbids tap devices: {err}");
            return;
        }
        Err(e) => panic!("server: {e}"),
    };
    let out = Command::new("ip")
        .args(["link", "del", &name])
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip link del: {out:?}");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = tap_thread_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = tap_thread_ticks() - t0;
    // A spinning reader uses a whole CPU: ~100 ticks a second.
    assert!(
        used < 20,
        "tap reader used {used} ticks in 1 s after the tap went away"
    );
    s.shutdown();
}
