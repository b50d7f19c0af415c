//! Helpers shared by the end-to-end tests of the `pvnet` binary.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn pvnet() -> Command {
    // The default control socket goes under XDG_RUNTIME_DIR: keep it out of /run.
    let mut c = Command::new(env!("CARGO_BIN_EXE_pvnet"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

/// A fresh directory under the system temporary directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvnet-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `p` as a `&str` (every test path is UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A pvnet process of a test: killed and reaped when dropped, so a test that fails half-way
/// leaves no switch running behind it.
pub struct Pvnet(Option<Child>);

impl Pvnet {
    /// Guards a child spawned by other means (extra environment, other pipes).
    pub fn from_child(c: Child) -> Pvnet {
        Pvnet(Some(c))
    }

    /// The child, unguarded (to wait for it by other means).
    pub fn into_child(mut self) -> Child {
        self.0.take().expect("a live child")
    }
}

impl std::ops::Deref for Pvnet {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a live child")
    }
}

impl std::ops::DerefMut for Pvnet {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a live child")
    }
}

impl Drop for Pvnet {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts pvnet with `args`, stderr piped (for its log), stdout piped.
pub fn spawn(args: &[&str]) -> Pvnet {
    Pvnet(Some(
        pvnet()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pvnet"),
    ))
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill() on the pid of a child we spawned and have not reaped yet.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill");
}

/// Waits for `path` to accept connections.
pub fn wait_listening(path: &Path) {
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{} never answered",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (at most `limit`, then kills it and fails) for `child` to exit; returns its status,
/// stdout and stderr.
pub fn wait_bounded(child: Pvnet, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = child.into_child();
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let o = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = out.read_to_string(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = err.read_to_string(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pvnet did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        o.join().expect("stdout reader"),
        e.join().expect("stderr reader"),
    )
}

/// Kills `child` (SIGKILL) and reaps it.
pub fn kill(child: Pvnet) {
    drop(child);
}
