//! pvnet's switch with in-process guests: a [`Server`] on sockets in a temporary directory, and
//! traffic runs in which every guest, in its own thread, sends tagged frames to every other
//! guest and checks what it receives (byte-exact, per-flow order, no loss).
//!
//! These helpers are for tests: they panic, with a message saying what did not happen, when
//! something fails.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pvnet_backend::{Config, Server, Switch};
use pvnet_locks::{RwLockKind, SpinLockKind};

use crate::frames::tagged::{self, HELLO, MAGIC, SIZES};
use crate::{GuestConfig, TestGuest, VirtioNetHdr};
use vmm_sys_util::tempdir::TempDir;

/// A fresh, empty directory for sockets under the system temporary directory, named after
/// `name`, removed with everything in it when the returned guard is dropped (a test run
/// leaves nothing behind in /tmp, also when it fails half-way).
///
/// ```
/// let d = pvnet_testkit::harness::tmpdir("doc");
/// let gone = d.to_path_buf();
/// std::fs::write(d.join("a.sock"), b"").unwrap();
/// drop(d);
/// assert!(!gone.exists());
/// ```
pub fn tmpdir(name: &str) -> TmpDir {
    let prefix = std::env::temp_dir().join(format!("pvnet-bt-{name}-"));
    TmpDir(TempDir::new_with_prefix(prefix).expect("temporary directory"))
}

/// A temporary directory of [`tmpdir`]: a [`Path`] that is removed, with everything in it,
/// when dropped (vmm-sys-util's `TempDir`).
pub struct TmpDir(TempDir);

impl Deref for TmpDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.as_path()
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        self.0.as_path()
    }
}

/// A [`Server`] of [`server`] with the directory its sockets live in: the switch stops first,
/// then the directory goes. Derefs to the server.
pub struct TestServer {
    server: Server,
    _dir: TmpDir,
}

impl Deref for TestServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// Closes the listener `l` for good, leaving a stale socket file (what a crashed switch
/// leaves): shut down first, so that it refuses connections even while a child that a
/// parallel test forked and that has not yet exec'd holds a copy of its fd. Closing alone
/// leaves the socket listening in that child, and a connect to the "stale" file succeeds.
pub fn close_listener(l: UnixListener) {
    // SAFETY: shutdown(2) on the socket fd `l` owns, open for the whole call.
    let r = unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
    assert_eq!(r, 0, "shutdown: {}", std::io::Error::last_os_error());
}

/// A listener at `path` that never accepts and whose backlog is full: listening with a
/// backlog of 0, with one connection (returned) queued and never accepted. A blocking
/// `connect` to it sleeps until the listener accepts or closes; a non-blocking one fails with
/// `EAGAIN` (what a hung server, or one flooded with connections, looks like).
pub fn full_listener(path: &Path) -> (UnixListener, UnixStream) {
    let l = UnixListener::bind(path).expect("bind");
    // SAFETY: listen(2) on the socket fd `l` owns, open for the whole call (a second listen
    // on a listening Unix socket sets its backlog).
    let r = unsafe { libc::listen(l.as_raw_fd(), 0) };
    assert_eq!(r, 0, "listen: {}", std::io::Error::last_os_error());
    let queued = UnixStream::connect(path).expect("the one queued connection");
    (l, queued)
}

/// Runs `f` on a thread of its own and returns its result; panics, naming `what`, when it
/// has not returned within `bound` (the thread is left behind: a test that hangs fails
/// instead of hanging the run).
pub fn within<T: Send + 'static>(
    bound: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not done within {bound:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// A switch with `ports` ports of `pairs` queue pairs and the given lock kinds, on sockets in
/// [`tmpdir`]`(name)`.
pub fn server(
    name: &str,
    ports: usize,
    pairs: u16,
    gl: RwLockKind,
    ql: SpinLockKind,
) -> TestServer {
    server_with(name, ports, pairs, gl, ql, |_| {})
}

/// [`server`], with `tweak` applied to the configuration before the switch starts.
pub fn server_with(
    name: &str,
    ports: usize,
    pairs: u16,
    gl: RwLockKind,
    ql: SpinLockKind,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let d = tmpdir(name);
    let mut cfg = Config {
        sockets: (0..ports).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: pairs,
        grant_lock: gl,
        queue_lock: ql,
        // Debug builds on 2 oversubscribed cores: receivers can be slow to drain.
        backpressure_bound: Duration::from_secs(5),
        ..Config::default()
    };
    tweak(&mut cfg);
    TestServer {
        server: Server::start(cfg).expect("server"),
        _dir: d,
    }
}

/// The MAC address of guest `i` of a traffic run.
pub fn mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + i as u8]
}

/// A guest of a traffic run: `pairs` queue pairs, every RX ring filled with 2 KiB mergeable
/// buffers at connect, at most 16 TX frames in flight per pair, header and frame in separate
/// TX descriptors (a Linux skb without headroom), memory for 64 KiB frames on every pair.
pub fn guest_config(pairs: u16, mac: [u8; 6]) -> GuestConfig {
    GuestConfig {
        queue_pairs: pairs,
        mac,
        rx_fill: Some(2048),
        tx_limit: Some(16),
        tx_split: true,
        mem_size: 128 << 20,
        ..GuestConfig::default()
    }
}

/// Connects a [`guest_config`] guest to `path`.
pub fn connect(path: &Path, pairs: u16, mac: [u8; 6]) -> TestGuest {
    TestGuest::connect(path, guest_config(pairs, mac)).expect("connect")
}

/// Waits until port `port` of `sw` has `pairs` pairs enabled: its worker threads attach the
/// rings shortly after SET_VRING_ENABLE.
pub fn wait_enabled(sw: &Switch, port: usize, pairs: u16) {
    let t0 = Instant::now();
    while sw.ports[port].enabled_pairs() < u32::from(pairs) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "port {port}: rings never enabled"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A traffic run.
#[derive(Clone)]
pub struct Run {
    /// Guests, one per port of the switch.
    pub ports: usize,
    /// Queue pairs of every guest.
    pub pairs: u16,
    /// Frames each guest sends (spread over the other guests).
    pub frames_per_guest: u32,
    /// Flows per sender (round robin; flow `f` goes out on pair `f % send_pairs`).
    pub flows: u16,
    /// Pairs the flows go out on (the first ones; `pairs` by default).
    pub send_pairs: u16,
    /// Each guest's configuration ([`guest_config`] by default).
    pub guests: Vec<GuestConfig>,
    /// Every received frame must be for this guest (false: others' floods are ignored).
    pub strict: bool,
}

impl Run {
    /// `ports` [`guest_config`] guests sending `frames_per_guest` frames each over
    /// `2 * pairs` flows.
    pub fn new(ports: usize, pairs: u16, frames_per_guest: u32) -> Run {
        Run {
            ports,
            pairs,
            frames_per_guest,
            flows: 2 * pairs,
            send_pairs: pairs,
            guests: (0..ports).map(|i| guest_config(pairs, mac(i))).collect(),
            strict: true,
        }
    }
}

/// What one guest saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Traffic frames received (all in order, all intact).
    pub received: u64,
    /// Of those, frames that spanned more than one RX buffer.
    pub merged: u64,
    /// Most RX buffers one frame spanned.
    pub max_buffers: u16,
    /// Peers whose hello this guest heard.
    pub hellos: u64,
    /// Frames not for this guest (only without `strict`).
    pub foreign: u64,
}

/// Connects every guest of `run` to `server`, exchanges hellos (so that the switch learns
/// every MAC), then the traffic; returns what each guest saw.
pub fn run(server: &Server, run: &Run) -> Vec<Seen> {
    let barrier = Arc::new(Barrier::new(run.ports));
    let handles: Vec<_> = (0..run.ports)
        .map(|me| {
            let (barrier, run) = (barrier.clone(), run.clone());
            let path = server.paths()[me].clone();
            let sw = server.switch().clone();
            std::thread::spawn(move || guest_main(me, &path, &run, &barrier, &sw))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("guest thread"))
        .collect()
}

/// Broadcasts hellos (repeated: a peer's rings may still be attaching) until every peer was
/// heard.
fn hellos(me: usize, g: &mut TestGuest, run: &Run, peers: &[usize], seen: &mut Seen) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let hello = tagged::build([0xff; 6], mac(me), HELLO, 0, 0, 60);
    let mut heard = HashSet::new();
    let mut last_hello: Option<Instant> = None;
    while heard.len() < peers.len() {
        assert!(Instant::now() < deadline, "guest {me}: hellos not received");
        if last_hello.map_or(true, |t| t.elapsed() > Duration::from_millis(20)) {
            g.try_send(0, &VirtioNetHdr::plain(), &hello)
                .expect("send hello");
            last_hello = Some(Instant::now());
        }
        for (_, r) in g.poll_rx().expect("receive") {
            let (m, src, ..) = tagged::check(&r.frame).expect("hello intact");
            if m == HELLO && peers.iter().any(|&p| mac(p) == src) {
                heard.insert(src);
            } else {
                assert!(!run.strict, "guest {me}: unexpected frame before traffic");
                seen.foreign += 1;
            }
        }
        std::thread::yield_now();
    }
    seen.hellos = heard.len() as u64;
}

/// Frames guest `me` receives: every peer sends `frames_per_guest` split over its peers.
fn expected(me: usize, run: &Run, peers: &[usize]) -> u64 {
    peers
        .iter()
        .map(|&p| {
            let others: Vec<usize> = (0..run.ports).filter(|&x| x != p).collect();
            let k = others.iter().position(|&x| x == me).expect("peer") as u32;
            let np = others.len() as u32;
            u64::from((run.frames_per_guest + np - 1 - k) / np)
        })
        .sum()
}

/// Checks what guest `me` received: tagged, for `me`, in order per (sender, flow).
fn receive(
    me: usize,
    g: &mut TestGuest,
    run: &Run,
    seen: &mut Seen,
    next: &mut HashMap<([u8; 6], u16), u32>,
) -> bool {
    let mut progress = false;
    for (_, r) in g.poll_rx().expect("receive") {
        let f = &r.frame;
        let (magic, src, flow, seq) =
            tagged::check(f).unwrap_or_else(|e| panic!("guest {me}: {e}"));
        if magic == HELLO {
            continue; // a repeated hello
        }
        if !run.strict && (magic != MAGIC || f[0..6] != mac(me)) {
            seen.foreign += 1;
            continue;
        }
        assert_eq!(magic, MAGIC, "guest {me}: unexpected frame");
        assert_eq!(&f[0..6], &mac(me), "guest {me}: frame for someone else");
        let want = next.entry((src, flow)).or_insert(0);
        assert_eq!(
            seq, *want,
            "guest {me}: flow {flow} from {src:?} out of order"
        );
        *want += 1;
        seen.received += 1;
        if r.buffers > 1 {
            seen.merged += 1;
        }
        seen.max_buffers = seen.max_buffers.max(r.buffers);
        progress = true;
    }
    progress
}

fn guest_main(me: usize, path: &Path, run: &Run, barrier: &Barrier, sw: &Switch) -> Seen {
    let mut g = TestGuest::connect(path, run.guests[me].clone()).expect("connect");
    let peers: Vec<usize> = (0..run.ports).filter(|&p| p != me).collect();
    let mut seen = Seen::default();
    wait_enabled(sw, me, run.pairs);
    barrier.wait();
    hellos(me, &mut g, run, &peers, &mut seen);
    // Every peer has heard everybody before the traffic starts.
    barrier.wait();
    let expect = expected(me, run, &peers);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_seq = HashMap::new();
    let mut flow_seq = vec![0u32; usize::from(run.flows)];
    let mut sent = 0u32;
    while sent < run.frames_per_guest || seen.received < expect {
        assert!(
            Instant::now() < deadline,
            "guest {me}: sent {sent}/{}, received {}/{expect}",
            run.frames_per_guest,
            seen.received
        );
        let mut progress = false;
        for _ in 0..8 {
            if sent >= run.frames_per_guest {
                break;
            }
            let flow = (sent % u32::from(run.flows)) as u16;
            let seq = flow_seq[usize::from(flow)];
            let dst = peers[sent as usize % peers.len()];
            let len = SIZES[(sent as usize * 7 + me) % SIZES.len()];
            let f = tagged::build(mac(dst), mac(me), MAGIC, flow, seq, len);
            if !g
                .try_send(flow % run.send_pairs.max(1), &VirtioNetHdr::plain(), &f)
                .expect("send")
            {
                break;
            }
            flow_seq[usize::from(flow)] += 1;
            sent += 1;
            progress = true;
        }
        progress |= receive(me, &mut g, run, &mut seen, &mut next_seq);
        if !progress {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    // Learning: while connected, this guest's MAC maps to its port.
    assert_eq!(
        sw.fdb.lookup(&mac(me)),
        Some(me),
        "guest {me}: MAC not learned"
    );
    assert_eq!(
        g.device_errors(),
        0,
        "guest {me}: nonsense on the used rings"
    );
    // Let the device finish with our TX chains before disconnecting.
    let t0 = Instant::now();
    while (0..run.pairs).map(|p| g.tx_in_flight(p)).sum::<usize>() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "guest {me}: TX chains never returned"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    barrier.wait();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A copy of the listener's fd in another process (a child between fork and exec) does
    /// not keep a closed listener answering.
    #[test]
    fn a_closed_listener_refuses_while_a_forked_child_holds_its_fd() {
        let d = tmpdir("close-listener");
        let p = d.join("a.sock");
        let l = UnixListener::bind(&p).expect("bind");
        // SAFETY: the child only calls the async-signal-safe usleep and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::usleep(2_000_000);
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        close_listener(l);
        let refused = UnixStream::connect(&p).is_err();
        // SAFETY: kill and waitpid on the child forked above, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(refused, "the closed listener still answered");
    }

    /// A test's switch takes its socket directory with it: a day of test runs left thousands
    /// of `pvnet-*` directories in /tmp when nothing removed them.
    #[test]
    fn a_test_server_removes_its_socket_directory() {
        let s = server("gone", 2, 1, RwLockKind::Percpu, SpinLockKind::Pvqspin);
        let dir = s.paths()[0]
            .parent()
            .expect("socket directory")
            .to_path_buf();
        assert!(
            dir.is_dir(),
            "{} missing while the switch runs",
            dir.display()
        );
        assert!(s.paths().iter().all(|p| p.exists()), "sockets not bound");
        drop(s);
        assert!(!dir.exists(), "{} outlived its switch", dir.display());
    }

    /// Two directories of the same name never collide (tests run in parallel threads).
    #[test]
    fn temporary_directories_of_one_name_are_distinct() {
        let (a, b) = (tmpdir("same"), tmpdir("same"));
        assert_ne!(a.to_path_buf(), b.to_path_buf());
        assert!(a.is_dir() && b.is_dir());
    }
}
