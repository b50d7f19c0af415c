//! Multi-port traffic runs: every guest in its own thread sends verifiable frames to every
//! other guest and checks what it receives (byte-exact, per-flow order, no loss).

use super::frames::{self, HELLO, MAGIC, SIZES};
use super::{Guest, Opts};
use pvnet_backend::{Config, Server};
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvnet-bt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

pub fn server(name: &str, ports: usize, pairs: u16, gl: RwLockKind, ql: SpinLockKind) -> Server {
    let d = tmpdir(name);
    let cfg = Config {
        sockets: (0..ports).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: pairs,
        grant_lock: gl,
        queue_lock: ql,
        // Debug builds on 2 oversubscribed cores: receivers can be slow to drain.
        backpressure_bound: Duration::from_secs(5),
        ..Config::default()
    };
    Server::start(cfg).expect("server")
}

pub fn mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + i as u8]
}

#[derive(Clone)]
pub struct Run {
    pub ports: usize,
    pub pairs: u16,
    pub frames_per_guest: u32,
    pub flows: u16,
    pub opts: Vec<Opts>,
    /// Every received frame must be for this guest (false: others' floods are ignored).
    pub strict: bool,
}

impl Run {
    pub fn new(ports: usize, pairs: u16, frames_per_guest: u32) -> Run {
        Run {
            ports,
            pairs,
            frames_per_guest,
            flows: 2 * pairs,
            opts: (0..ports)
                .map(|i| {
                    let mut o = Opts::new(pairs, 0);
                    o.mac = mac(i);
                    o
                })
                .collect(),
            strict: true,
        }
    }
}

/// What one guest saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub received: u64,
    pub merged: u64,
    pub max_buffers: u16,
    pub hellos: u64,
    pub foreign: u64,
}

pub fn hdr() -> [u8; 12] {
    [0; 12]
}

/// Connects every guest to `server`, exchanges hellos (learning), then the traffic.
pub fn run(server: &Server, run: &Run) -> Vec<Seen> {
    let n = run.ports;
    let barrier = Arc::new(Barrier::new(n));
    let paths = server.paths().to_vec();
    let handles: Vec<_> = (0..n)
        .map(|me| {
            let (barrier, path, run) = (barrier.clone(), paths[me].clone(), run.clone());
            let sw = server.switch().clone();
            std::thread::spawn(move || guest_main(me, path, run, barrier, sw))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("guest thread"))
        .collect()
}

fn guest_main(
    me: usize,
    path: PathBuf,
    run: Run,
    barrier: Arc<Barrier>,
    sw: Arc<pvnet_backend::Switch>,
) -> Seen {
    let mut g = Guest::connect(&path, run.opts[me].clone());
    let peers: Vec<usize> = (0..run.ports).filter(|&p| p != me).collect();
    let mut seen = Seen::default();
    let mut rx = Vec::new();
    // The worker threads attach the rings shortly after SET_VRING_ENABLE.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sw.ports[me].enabled_pairs() < u32::from(run.pairs) {
        assert!(Instant::now() < deadline, "guest {me}: rings never enabled");
        std::thread::sleep(Duration::from_millis(1));
    }
    barrier.wait();
    // Hello (broadcast) so that every switch port learns every MAC; repeated until every
    // peer was heard (a peer's rings may still be attaching).
    let hello = frames::build([0xff; 6], mac(me), HELLO, 0, 0, 60);
    let mut heard = std::collections::HashSet::new();
    let mut last_hello: Option<Instant> = None;
    while heard.len() < peers.len() {
        assert!(Instant::now() < deadline, "guest {me}: hellos not received");
        if last_hello.map_or(true, |t| t.elapsed() > Duration::from_millis(20)) {
            let _ = g.send(0, &hdr(), &hello);
            last_hello = Some(Instant::now());
        }
        rx.clear();
        g.poll_rx(&mut rx);
        for (_, _, f, _) in rx.drain(..) {
            let (m, src, ..) = frames::check(&f).expect("hello intact");
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
    // Every peer has heard everybody before the traffic starts.
    barrier.wait();
    // Frames addressed to me: every peer sends frames_per_guest split over its peers.
    let expect: u64 = peers
        .iter()
        .map(|&p| {
            let others: Vec<usize> = (0..run.ports).filter(|&x| x != p).collect();
            let k = others.iter().position(|&x| x == me).expect("peer") as u32;
            let np = others.len() as u32;
            u64::from((run.frames_per_guest + np - 1 - k) / np)
        })
        .sum();
    let mut next_seq: HashMap<([u8; 6], u16), u32> = HashMap::new();
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
            let f = frames::build(mac(dst), mac(me), MAGIC, flow, seq, len);
            if !g.send(flow % run.pairs, &hdr(), &f) {
                break;
            }
            flow_seq[usize::from(flow)] += 1;
            sent += 1;
            progress = true;
        }
        rx.clear();
        g.poll_rx(&mut rx);
        for (_, _, f, nb) in rx.drain(..) {
            let (magic, src, flow, seq) =
                frames::check(&f).unwrap_or_else(|e| panic!("guest {me}: {e}"));
            if magic == HELLO {
                continue; // a repeated hello
            }
            if !run.strict && (magic != MAGIC || f[0..6] != mac(me)) {
                seen.foreign += 1;
                continue;
            }
            assert_eq!(magic, MAGIC, "guest {me}: unexpected frame");
            assert_eq!(&f[0..6], &mac(me), "guest {me}: frame for someone else");
            let want = next_seq.entry((src, flow)).or_insert(0);
            assert_eq!(
                seq, *want,
                "guest {me}: flow {flow} from {src:?} out of order"
            );
            *want += 1;
            seen.received += 1;
            if nb > 1 {
                seen.merged += 1;
            }
            seen.max_buffers = seen.max_buffers.max(nb);
            progress = true;
        }
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
    // Let the device finish with our TX chains before disconnecting.
    let t0 = Instant::now();
    while (0..run.pairs).map(|p| g.tx_in_flight(p)).sum::<usize>() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "TX chains never returned"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    barrier.wait();
    seen
}
