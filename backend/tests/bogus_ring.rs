//! A receiver whose RX avail index is bogus (more than a ring ahead of the device): frames
//! to it are dropped and counted (`rx_bad_ring`) at once, the sender's ring keeps moving, and
//! the logs stay quiet (at most one line per second per ring, not one per retry). Its own
//! test binary: it counts every log record of the process.

use pvnet_backend::stats::DropReason;
use pvnet_backend::{Config, Server};
use pvnet_testkit::frames::tagged::{self as frames, HELLO, MAGIC};
use pvnet_testkit::harness::{connect, mac, tmpdir};
use pvnet_testkit::VirtioNetHdr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static RECORDS: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl log::Log for Counter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            RECORDS.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn flush(&self) {}
}

static COUNTER: Counter = Counter;

#[test]
fn bogus_rx_avail_index_drops_at_once_with_quiet_logs() {
    log::set_logger(&COUNTER).expect("logger");
    log::set_max_level(log::LevelFilter::Warn);
    let d = tmpdir("bogusring");
    let s = Server::start(Config {
        sockets: (0..2).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: 1,
        backpressure_bound: Duration::from_secs(5),
        ..Config::default()
    })
    .expect("server");
    let guest = |i: usize| connect(&s.paths()[i], 1, mac(i));
    let (mut a, mut b) = (guest(0), guest(1));
    // B is learned (a hello from B reaches A).
    let t0 = Instant::now();
    let mut rx = Vec::new();
    while rx.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "hello lost");
        let hello = frames::build([0xff; 6], mac(1), HELLO, 0, 0, 60);
        b.try_send(0, &VirtioNetHdr::plain(), &hello).expect("send");
        std::thread::sleep(Duration::from_millis(5));
        rx = a.poll_rx().expect("receive");
    }
    // B's RX avail index jumps 1000 entries ahead of anything it posted.
    b.set_avail_idx(0, 256 + 1000).expect("avail idx");
    let before = RECORDS.load(Ordering::Relaxed);
    for k in 0..20 {
        let f = frames::build(mac(1), mac(0), MAGIC, 1, k, 100);
        let t = Instant::now();
        while !a.try_send(0, &VirtioNetHdr::plain(), &f).expect("send") {
            assert!(t.elapsed() < Duration::from_secs(2), "A's TX ring stuck");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let t = Instant::now();
    while a.tx_in_flight(0) > 0 {
        assert!(t.elapsed() < Duration::from_secs(2), "A's frames held back");
        std::thread::sleep(Duration::from_millis(1));
    }
    let logged = RECORDS.load(Ordering::Relaxed) - before;
    assert!(logged <= 3, "{logged} log records for 20 frames");
    let snap = s.switch().ports[0].queue_snapshot(0);
    assert_eq!(snap.drops_for(DropReason::RxBadRing), 20, "{snap:?}");
    drop((a, b));
    s.shutdown();
}
