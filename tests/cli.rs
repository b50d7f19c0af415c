//! End-to-end tests of the `pvnet` binary's command line (no guests needed).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pvnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvnet"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvnet-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn assert_usage_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_lists_every_flag() {
    let out = pvnet().arg("--help").output().expect("run pvnet");
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--socket",
        "--queues",
        "--queue-size",
        "--grant-lock",
        "--queue-lock",
        "--mac",
        "--mtu",
        "--stats-interval",
        "--stats-format",
        "--log-level",
    ] {
        assert!(s.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bad_values_exit_2_with_one_line() {
    let d = tmpdir("bad");
    let sock = d.join("a.sock");
    let sock = sock.to_str().expect("utf-8 path");
    let out = pvnet()
        .args(["--socket", sock, "--grant-lock", "bogus"])
        .output()
        .expect("run");
    assert_usage_error(&out, "bogus");
    let out = pvnet()
        .args(["--socket", sock, "--queues", "33"])
        .output()
        .expect("run");
    assert_usage_error(&out, "--queues");
    let out = pvnet()
        .args(["--socket", sock, "--queue-size", "100"])
        .output()
        .expect("run");
    assert_usage_error(&out, "--queue-size");
    let out = pvnet()
        .args(["--socket", sock, "--mac", "01:00:5e:00:00:01"])
        .output()
        .expect("run");
    assert_usage_error(&out, "MAC");
    let out = pvnet().output().expect("run");
    assert_usage_error(&out, "--socket");
    assert!(!std::path::Path::new(sock).exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unusable_socket_paths_exit_2() {
    let d = tmpdir("paths");
    let missing = d.join("no/such/dir/a.sock");
    let out = pvnet()
        .args(["--socket", missing.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_usage_error(&out, "socket path");
    // A regular file in the way is neither used nor deleted.
    let file = d.join("file");
    std::fs::write(&file, b"keep me").expect("write");
    let out = pvnet()
        .args(["--socket", file.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_usage_error(&out, "not a socket");
    assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sigterm_removes_sockets_and_exits_0() {
    let d = tmpdir("term");
    let a = d.join("a.sock");
    let b = d.join("b.sock");
    let child = pvnet()
        .args([
            "--socket",
            a.to_str().expect("utf-8"),
            "--socket",
            b.to_str().expect("utf-8"),
        ])
        .args(["--queues", "2", "--stats-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while !(a.exists() && b.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "sockets never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill() on the pid of a child we spawned and have not reaped yet.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert!(!a.exists() && !b.exists(), "sockets left behind");
    // Final statistics: one JSON line per port plus the lock counters.
    let s = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = s.lines().collect();
    assert_eq!(lines.len(), 3, "{s}");
    for l in lines {
        serde_json::from_str::<serde_json::Value>(l).expect("JSON line");
    }
    let _ = std::fs::remove_dir_all(&d);
}
