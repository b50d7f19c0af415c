//! `--metrics ADDR`: the switch's counters in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client` on every scrape from the same counters `pvnet ctl stats` reads, and
//! served over HTTP by `tiny_http` at `/metrics`.
//!
//! Families (all with prefix `pvnet_`): per port and queue pair (`port`, `queue` labels)
//! `tx_frames`, `tx_bytes`, `tx_bursts`, `rx_frames`, `rx_bytes`, `backpressure`, `tx_notifications`,
//! `rx_notifications`, `tx_kicks`, `rx_kicks`, `busy_ns` (counters, `_total`), `drops` (counter, extra
//! label `reason`); per port `port_connected`, `port_enabled_pairs` (gauges),
//! `port_connections`, `port_memory_faults` (counters); lock events of the grant and queue
//! locks (`lock_events_total{lock,kind,event}`).

use crate::stats::{DropReason, QueueSnapshot};
use crate::switch::Switch;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use pvnet_locks::family::resolve_rw;
use pvnet_locks::{rw_stats, spin_stats};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long writing an answer may make no progress before the client is given up (see
/// [`GivenUp`]): a client that does not read its answers holds the one serving thread (the
/// other scrapes, and [`Metrics::stop`]) up this long, not forever. `SO_SNDTIMEO` of the
/// connections: it bounds each send(2), and a send that progresses starts a new one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest time an answer may take to write (a client that reads, but too slowly, is given
/// up as well): checked between the pieces of the body tiny_http writes.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// A client given up is forgotten when it has sent nothing for this long.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most clients given up that are remembered at once.
const MAX_GIVEN_UP: usize = 256;

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint {0}: {1}")]
    Bind(String, String),
    #[error("metrics endpoint: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

type Labels = Vec<(&'static str, String)>;

/// A per-queue counter: metric name, help, and how to read it from a snapshot.
type QueueCounter = (&'static str, &'static str, fn(&QueueSnapshot) -> u64);

/// The per-queue counters.
const QUEUE_COUNTERS: [QueueCounter; 11] = [
    ("tx_frames", "Frames taken from the guest's TX ring.", |s| {
        s.tx_frames
    }),
    (
        "tx_bytes",
        "Bytes (without virtio header) taken from the guest's TX ring.",
        |s| s.tx_bytes,
    ),
    (
        "tx_bursts",
        "Non-empty bursts taken from the guest's TX ring (tx_frames / tx_bursts: the mean burst).",
        |s| s.tx_bursts,
    ),
    (
        "rx_frames",
        "Frames delivered into the guest's RX ring.",
        |s| s.rx_frames,
    ),
    (
        "rx_bytes",
        "Bytes delivered into the guest's RX ring.",
        |s| s.rx_bytes,
    ),
    (
        "backpressure",
        "Times a sender was held back by a full RX ring.",
        |s| s.backpressure,
    ),
    (
        "tx_notifications",
        "Calls to the guest for its TX ring.",
        |s| s.tx_notifications,
    ),
    (
        "rx_notifications",
        "Calls to the guest for its RX ring.",
        |s| s.rx_notifications,
    ),
    (
        "tx_kicks",
        "Kicks from the guest handled on the TX queue.",
        |s| s.tx_kicks,
    ),
    (
        "rx_kicks",
        "Kicks from the guest handled on the RX queue.",
        |s| s.rx_kicks,
    ),
    (
        "busy_ns",
        "Nanoseconds the worker spent in rounds that moved frames (a worker serving several pairs counts on its first).",
        |s| s.busy_ns,
    ),
];

/// Encodes the switch's counters on every scrape.
struct SwitchCollector(Arc<Switch>);

impl std::fmt::Debug for SwitchCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwitchCollector")
    }
}

fn queue_labels(p: usize, q: usize) -> Labels {
    vec![("port", p.to_string()), ("queue", q.to_string())]
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl SwitchCollector {
    /// Snapshots of every queue of every port in use.
    fn queues(&self) -> Vec<(usize, usize, QueueSnapshot)> {
        let sw = &self.0;
        sw.ports_in_use()
            .flat_map(|(p, port)| (0..port.queues()).map(move |q| (p, q, port.queue_snapshot(q))))
            .collect()
    }

    fn encode_queues(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snaps = self.queues();
        for (name, help, get) in QUEUE_COUNTERS {
            let rows: Vec<_> = snaps
                .iter()
                .map(|(p, q, s)| (queue_labels(*p, *q), get(s)))
                .collect();
            counter(enc, name, help, &rows)?;
        }
        let rows: Vec<_> = snaps
            .iter()
            .flat_map(|(p, q, s)| {
                DropReason::ALL.iter().map(move |d| {
                    let mut l = queue_labels(*p, *q);
                    l.push(("reason", d.name().to_string()));
                    (l, s.drops_for(*d))
                })
            })
            .collect();
        counter(enc, "drops", "Frames dropped, by reason.", &rows)
    }

    fn encode_ports(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ports: Vec<_> = self.0.ports_in_use().collect();
        let rows = |f: &dyn Fn(&crate::switch::Port) -> i64| -> Vec<(Labels, i64)> {
            ports
                .iter()
                .map(|(p, port)| (vec![("port", p.to_string())], f(port)))
                .collect()
        };
        let connected = rows(&|p| i64::from(p.connected.load(Ordering::Acquire)));
        gauge(enc, "port_connected", "A guest is connected.", &connected)?;
        let pairs = rows(&|p| i64::from(p.enabled_pairs()));
        gauge(enc, "port_enabled_pairs", "Queue pairs enabled.", &pairs)?;
        let as_u64 = |v: Vec<(Labels, i64)>| -> Vec<(Labels, u64)> {
            v.into_iter().map(|(l, n)| (l, n as u64)).collect()
        };
        let conns = as_u64(rows(&|p| p.connections.load(Ordering::Acquire) as i64));
        counter(enc, "port_connections", "Frontend connections.", &conns)?;
        let faults = as_u64(rows(&|p| p.guard.faults() as i64));
        counter(
            enc,
            "port_memory_faults",
            "Faults in guest memory contained.",
            &faults,
        )
    }

    fn encode_locks(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cfg = &self.0.cfg;
        let g = resolve_rw(cfg.grant_lock);
        let mut rows = Vec::new();
        for (lock, kind, fields) in [
            ("grant", g.to_string(), rw_stats(g).fields()),
            (
                "queue",
                cfg.queue_lock.to_string(),
                spin_stats(cfg.queue_lock).fields(),
            ),
        ] {
            for (event, n) in fields {
                let l = vec![
                    ("lock", lock.to_string()),
                    ("kind", kind.clone()),
                    ("event", event.to_string()),
                ];
                rows.push((l, n));
            }
        }
        counter(
            enc,
            "lock_events",
            "Lock events (slow paths, spins, halts, kicks, ...).",
            &rows,
        )
    }
}

impl Collector for SwitchCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_queues(&mut enc)?;
        self.encode_ports(&mut enc)?;
        self.encode_locks(&mut enc)
    }
}

/// The registry of `sw`'s metrics.
pub fn registry(sw: Arc<Switch>) -> Registry {
    let mut r = Registry::with_prefix("pvnet");
    r.register_collector(Box::new(SwitchCollector(sw)));
    r
}

/// `sw`'s metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut s, registry);
    s
}

/// A running metrics endpoint.
pub struct Metrics {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Metrics {
    /// Serves `sw`'s metrics at `http://ADDR/metrics` (`ADDR` as `host:port`; port 0 picks
    /// a free one, see [`Metrics::addr`]).
    pub fn start(addr: &str, sw: Arc<Switch>) -> Result<Metrics, MetricsError> {
        let bind_err =
            |e: &dyn std::fmt::Display| MetricsError::Bind(addr.to_string(), e.to_string());
        let listener = TcpListener::bind(addr).map_err(|e| bind_err(&e))?;
        set_send_timeout(&listener, WRITE_TIMEOUT).map_err(|e| bind_err(&e))?;
        let server = tiny_http::Server::from_listener(listener, None).map_err(|e| bind_err(&e))?;
        let bound = server
            .server_addr()
            .to_ip()
            .map_or_else(|| addr.to_string(), |a| a.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let reg = registry(sw);
        let thread = std::thread::Builder::new()
            .name("pvnet-metrics".into())
            .spawn(move || serve(&server, &reg, &st))
            .map_err(MetricsError::Thread)?;
        Ok(Metrics {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The address served (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops serving.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets `SO_SNDTIMEO` on `listener`; on Linux the connections it accepts inherit it. (Not
/// `SO_RCVTIMEO`: on a listening socket that bounds `accept` itself, and tiny_http's accept
/// thread ends at the first accept error.)
fn set_send_timeout(listener: &TcpListener, d: Duration) -> std::io::Result<()> {
    socket2::SockRef::from(listener).set_write_timeout(Some(d))
}

/// The clients whose answer could not be written (they do not read, or not fast enough):
/// their further requests are dropped unanswered, without writing anything, so that such a
/// client holds the serving thread up once (for [`WRITE_TIMEOUT`] without progress, at most
/// about [`ANSWER_DEADLINE`]), not once per request it pipelined. A client is known by its address (unique among open connections) and
/// forgotten once it has sent nothing for [`FORGET_AFTER`] (a new connection from the same
/// address is then served again), or when [`MAX_GIVEN_UP`] newer ones are known.
#[derive(Default)]
struct GivenUp(HashMap<SocketAddr, Instant>);

impl GivenUp {
    /// Whether `peer` was given up; notes that it was seen now.
    fn seen(&mut self, peer: SocketAddr, now: Instant) -> bool {
        if self.0.is_empty() {
            return false;
        }
        self.0
            .retain(|_, t| now.saturating_duration_since(*t) < FORGET_AFTER);
        match self.0.get_mut(&peer) {
            Some(t) => {
                *t = now;
                true
            }
            None => false,
        }
    }

    fn add(&mut self, peer: SocketAddr, now: Instant) {
        if self.0.len() >= MAX_GIVEN_UP {
            if let Some(oldest) = self.0.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(peer, now);
    }
}

/// An answer's body, read by tiny_http as it writes the answer: it fails (and with it the
/// answer) once [`ANSWER_DEADLINE`] has passed or the endpoint is stopping.
struct Body<'a> {
    data: std::io::Cursor<Vec<u8>>,
    until: Instant,
    stop: &'a AtomicBool,
}

impl std::io::Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the metrics endpoint is stopping"));
        }
        if Instant::now() >= self.until {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "answer not taken in time",
            ));
        }
        self.data.read(buf)
    }
}

fn serve(server: &tiny_http::Server, reg: &Registry, stop: &AtomicBool) {
    let mut given_up = GivenUp::default();
    while !stop.load(Ordering::SeqCst) {
        let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let peer = req.remote_addr().copied();
        if peer.is_some_and(|p| given_up.seen(p, Instant::now())) {
            // Dropping the request itself would write a 500 answer; its bare writer writes
            // nothing.
            drop(req.into_writer());
            continue;
        }
        let (code, text) = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
            (200, render(reg))
        } else {
            (404, "not found; try /metrics\n".to_string())
        };
        let mut resp = tiny_http::Response::empty(code);
        let ct = match code {
            200 => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            _ => "text/plain; charset=UTF-8",
        };
        if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", ct) {
            resp.add_header(h);
        }
        let len = text.len();
        let body = Body {
            data: std::io::Cursor::new(text.into_bytes()),
            until: Instant::now() + ANSWER_DEADLINE,
            stop,
        };
        let resp = resp.with_data(body, Some(len));
        if let Err(e) = req.respond(resp) {
            if let Some(p) = peer {
                log::debug!("metrics: cannot answer {p} ({e}); ignoring its requests for now");
                given_up.add(p, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn families_and_labels() {
        let sw = Switch::new(Config {
            sockets: vec!["/nonexistent/a".into(), "/nonexistent/b".into()],
            queue_pairs: 2,
            ..Config::default()
        });
        sw.ports[1].tx[1].frame(100);
        let text = render(&registry(sw));
        assert!(
            text.contains("# TYPE pvnet_tx_frames_total counter"),
            "{text}"
        );
        assert!(
            text.contains("pvnet_tx_frames_total{port=\"1\",queue=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pvnet_tx_bytes_total{port=\"1\",queue=\"1\"} 100\n"),
            "{text}"
        );
        assert!(text.contains("pvnet_drops_total{port=\"0\",queue=\"0\",reason=\"no_dest\"} 0"));
        assert!(
            text.contains("pvnet_port_connected{port=\"0\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pvnet_lock_events_total{lock=\"queue\""),
            "{text}"
        );
    }

    /// A client that pipelines scrapes and never reads the answers holds up neither the
    /// other scrapers nor `stop`.
    #[test]
    fn a_client_not_reading_stalls_neither_scrapes_nor_stop() {
        use std::io::{Read, Write};
        use std::net::TcpStream;
        use std::time::Instant;
        let sw = Switch::new(Config {
            sockets: vec!["/nonexistent/a".into(), "/nonexistent/b".into()],
            queue_pairs: 16,
            ..Config::default()
        });
        let m = Metrics::start("127.0.0.1:0", sw).expect("metrics");
        let addr = m.addr().to_string();
        let mut hog = TcpStream::connect(&addr).expect("connect");
        let hog_writer = std::thread::spawn(move || {
            let reqs = b"GET /metrics HTTP/1.1\r\nHost: pvnet\r\n\r\n".repeat(2000);
            let _ = hog.write_all(&reqs);
            hog
        });
        // Enough time for the answers to fill the socket buffers.
        std::thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut c = TcpStream::connect(&addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: pvnet\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        let read = c.read_to_string(&mut answer);
        assert!(
            read.is_ok() && answer.starts_with("HTTP/1.1 200"),
            "no scrape while a client does not read ({read:?} after {:?}): {:.80}",
            t0.elapsed(),
            answer
        );
        assert!(answer.contains("pvnet_tx_frames_total{port=\"1\",queue=\"15\"} 0"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            m.stop();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("stop hung on a client that does not read");
        drop(hog_writer);
    }
}
