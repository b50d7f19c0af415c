//! End-to-end tests of the `pvnet` binary's command line (no guests needed).

mod common;

use common::Pvnet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pvnet() -> Command {
    // The default control socket goes under XDG_RUNTIME_DIR: keep it out of /run.
    let mut c = Command::new(env!("CARGO_BIN_EXE_pvnet"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
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
        "--socket-mode",
        "--socket-group",
        "--queues",
        "--queue-size",
        "--grant-lock",
        "--queue-lock",
        "--mac",
        "--mtu",
        "--stats-interval",
        "--stats-format",
        "--log-level",
        "--client",
        "--max-ports",
        "--control",
        "--no-control",
        "--metrics",
        "--tap",
        "--tap-queues",
        "--tap-offload",
        "--workers",
        "--pmd-threads",
        "--pmd-cpus",
        "--poll-us",
        "--rx-steer",
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
    let out = pvnet()
        .args(["--socket", sock, "--rx-steer", "rss"])
        .output()
        .expect("run");
    assert_usage_error(&out, "rss");
    for (args, says) in [
        (&["--pmd-cpus", "2-1"][..], "CPU list"),
        (
            &["--pmd-cpus", "1023"][..],
            "not one this process may run on",
        ),
        (
            &["--pmd-cpus", "0", "--pmd-threads", "2"][..],
            "--pmd-threads",
        ),
        (&["--pmd-threads", "1", "--workers", "1"][..], "--workers"),
    ] {
        let out = pvnet()
            .args(["--socket", sock])
            .args(args)
            .output()
            .expect("run");
        assert_usage_error(&out, says);
    }
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
    let child = Pvnet::from_child(
        pvnet()
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
            .expect("spawn"),
    );
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
    let out = child.into_child().wait_with_output().expect("wait");
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

/// Starts `pvnet` on `socks` with `extra` flags and waits until every socket answers.
fn start(socks: &[&std::path::Path], extra: &[&str]) -> Pvnet {
    let mut cmd = pvnet();
    for s in socks {
        cmd.args(["--socket", s.to_str().expect("utf-8")]);
    }
    // Killed if the test fails before `stop`.
    let child = Pvnet::from_child(
        cmd.args(["--queues", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let t0 = Instant::now();
    while !socks
        .iter()
        .all(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "sockets never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(child: Pvnet) {
    let child = child.into_child();
    // SAFETY: kill() on the pid of a child we spawned and have not reaped yet.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn socket_mode_and_group() {
    let d = tmpdir("mode");
    let a = d.join("a.sock");
    let child = start(&[&a], &[]);
    assert_eq!(mode_of(&a), 0o600, "default mode");
    stop(child);
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() }.to_string();
    let child = start(&[&a], &["--socket-mode", "0660", "--socket-group", &gid]);
    assert_eq!(mode_of(&a), 0o660);
    stop(child);
    assert!(!a.exists());
    let out = pvnet()
        .args([
            "--socket",
            a.to_str().expect("utf-8"),
            "--socket-mode",
            "u+rw",
        ])
        .output()
        .expect("run");
    assert_usage_error(&out, "--socket-mode");
    let out = pvnet()
        .args([
            "--socket",
            a.to_str().expect("utf-8"),
            "--socket-mode",
            "4755",
        ])
        .output()
        .expect("run");
    assert_usage_error(&out, "--socket-mode");
    let out = pvnet()
        .args(["--socket", a.to_str().expect("utf-8")])
        .args(["--socket-group", "no-such-group-pvnet"])
        .output()
        .expect("run");
    assert_usage_error(&out, "--socket-group");
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `pvnet` with `args`, expecting it to exit by itself within 20 s (killed otherwise).
fn run_bounded(args: &[&str]) -> Output {
    let mut child = pvnet()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pvnet {args:?} kept running: it took over the socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A live listener on the path (another pvnet, or any other process) is never replaced:
/// exit 2 with one line, and the listener keeps its socket.
#[test]
fn live_sockets_are_not_stolen() {
    let d = tmpdir("live");
    let a = d.join("a.sock");
    let first = start(&[&a], &[]);
    let out = run_bounded(&["--socket", a.to_str().expect("utf-8")]);
    assert_usage_error(&out, "another pvnet");
    assert!(
        std::os::unix::net::UnixStream::connect(&a).is_ok(),
        "first pvnet still reachable"
    );
    stop(first);
    let other = std::os::unix::net::UnixListener::bind(&a).expect("bind");
    let out = run_bounded(&["--socket", a.to_str().expect("utf-8")]);
    assert_usage_error(&out, "listening");
    assert!(std::os::unix::net::UnixStream::connect(&a).is_ok());
    pvnet_testkit::harness::close_listener(other);
    // Now stale: replaced.
    let child = start(&[&a], &[]);
    stop(child);
    let _ = std::fs::remove_dir_all(&d);
}

/// `dir/a.sock` spelled through `..` or a symlinked directory is the same port: refused
/// (the second port would otherwise replace the first one's socket).
#[test]
fn duplicate_spellings_of_one_socket_refused() {
    let d = tmpdir("dup");
    std::fs::create_dir(d.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink(&d, d.join("link")).expect("symlink");
    let a = d.join("a.sock");
    for twice in [
        format!("{}/sub/../a.sock", d.display()),
        format!("{}/link/a.sock", d.display()),
    ] {
        let out = run_bounded(&["--socket", a.to_str().expect("utf-8"), "--socket", &twice]);
        assert_usage_error(&out, "given twice");
        assert!(!a.exists());
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_tap_flags_exit_2_with_one_line() {
    let d = tmpdir("tap");
    let sock = d.join("a.sock");
    let sock = sock.to_str().expect("utf-8 path");
    let out = pvnet()
        .args(["--socket", sock, "--tap", "upl0", "--tap-queues", "0"])
        .output()
        .expect("run pvnet");
    assert_usage_error(&out, "--tap-queues");
    let out = pvnet()
        .args(["--socket", sock, "--tap", "a/b"])
        .output()
        .expect("run pvnet");
    assert_usage_error(&out, "invalid tap name");
    let out = pvnet()
        .args(["--socket", sock, "--tap", "upl0", "--tap", "upl0"])
        .output()
        .expect("run pvnet");
    assert_usage_error(&out, "given twice");
    if std::path::Path::new("/dev/net/tun").exists() {
        // An interface that is not a tap cannot be attached to.
        let out = run_bounded(&["--socket", sock, "--tap", "lo"]);
        assert_usage_error(&out, "tap lo");
        assert!(!std::path::Path::new(sock).exists(), "socket left behind");
    }
    let _ = std::fs::remove_dir_all(&d);
}
