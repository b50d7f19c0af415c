//! Rendering of the switch's counters: a text table or JSON lines, per port and per queue
//! pair, with the lock counters of the grant-lock and queue-lock kinds.
//!
//! Per queue pair (and per port in `total`): `tx_frames`/`tx_bytes` taken from the guest's TX
//! ring in `tx_bursts` non-empty bursts, `rx_frames`/`rx_bytes` delivered into its RX ring,
//! `backpressure` (sender held back by a full RX ring), `tx_notifications`/`rx_notifications`
//! (calls to the guest), `tx_kicks`/`rx_kicks` (kicks from the guest handled on the TX / RX
//! queue), `busy_ns` (worker time in rounds that moved frames; a worker serving several
//! pairs counts it on its first pair) and `drops` by reason. `scripts/switchbench.sh` reads these JSON keys.

use crate::stats::DropReason;
use crate::stats::{QueueSnapshot, NR_DROPS};
use crate::switch::Switch;
use pvnet_locks::family::resolve_rw;
use pvnet_locks::{rw_stats, spin_stats};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Output format of the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StatsFormat {
    #[default]
    Text,
    Json,
}

fn port_total(sw: &Switch, p: usize) -> QueueSnapshot {
    let mut t = QueueSnapshot::default();
    for q in 0..sw.ports[p].queues() {
        t.add(&sw.ports[p].queue_snapshot(q));
    }
    t
}

/// Renders the counters of every port (per-queue rows only for queues with traffic).
pub fn render(sw: &Switch, fmt: StatsFormat) -> String {
    match fmt {
        StatsFormat::Text => render_text(sw),
        StatsFormat::Json => render_json(sw),
    }
}

fn drops_text(s: &QueueSnapshot) -> String {
    let mut out = String::new();
    for d in DropReason::ALL.iter().take(NR_DROPS) {
        let n = s.drops_for(*d);
        if n > 0 {
            let _ = write!(out, " {}={n}", d.name());
        }
    }
    if out.is_empty() {
        out.push_str(" -");
    }
    out
}

fn render_text(sw: &Switch) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<6} {:<5} {:>12} {:>14} {:>11} {:>12} {:>14} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}  drops",
        "port",
        "queue",
        "tx_frames",
        "tx_bytes",
        "tx_bursts",
        "rx_frames",
        "rx_bytes",
        "bp",
        "tx_notif",
        "rx_notif",
        "tx_kicks",
        "rx_kicks",
        "busy_ms"
    );
    for (p, _) in sw.ports_in_use() {
        let mut rows = Vec::new();
        for q in 0..sw.ports[p].queues() {
            let s = sw.ports[p].queue_snapshot(q);
            if s != QueueSnapshot::default() {
                rows.push((q.to_string(), s));
            }
        }
        rows.push(("all".to_string(), port_total(sw, p)));
        for (q, s) in rows {
            let _ = writeln!(
                o,
                "{:<6} {:<5} {:>12} {:>14} {:>11} {:>12} {:>14} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {}",
                p,
                q,
                s.tx_frames,
                s.tx_bytes,
                s.tx_bursts,
                s.rx_frames,
                s.rx_bytes,
                s.backpressure,
                s.tx_notifications,
                s.rx_notifications,
                s.tx_kicks,
                s.rx_kicks,
                s.busy_ns / 1_000_000,
                drops_text(&s)
            );
        }
    }
    for (p, port) in sw.ports_in_use() {
        if port.guard.faults() > 0 {
            let _ = writeln!(
                o,
                "port {p}: memory faults={} (frontends disconnected for it: {})",
                port.guard.faults(),
                port.guard.disconnects()
            );
        }
    }
    let g = rw_stats(resolve_rw(sw.cfg.grant_lock));
    let l = spin_stats(sw.cfg.queue_lock);
    let f = |v: &[(&str, u64)]| {
        v.iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(o, "grant-lock {}: {}", sw.cfg.grant_lock, f(&g.fields()));
    let _ = writeln!(o, "queue-lock {}: {}", sw.cfg.queue_lock, f(&l.fields()));
    o
}

/// The counters of port `p` as one JSON object (what `--stats-format json` prints per port).
pub fn port_json(sw: &Switch, p: usize) -> serde_json::Value {
    let port = &sw.ports[p];
    let queues: Vec<serde_json::Value> = (0..sw.ports[p].queues())
        .map(|q| port.queue_snapshot(q).to_json())
        .collect();
    serde_json::json!({
        "port": p,
        "tap": port.tap().map(|t| t.name.clone()),
        "connected": port.connected.load(Ordering::Acquire),
        "enabled_pairs": port.enabled_pairs(),
        "connections": port.connections.load(Ordering::Acquire),
        "memory_faults": port.guard.faults(),
        "memory_fault_disconnects": port.guard.disconnects(),
        "total": port_total(sw, p).to_json(),
        "queues": queues,
    })
}

/// The lock counters of the grant-lock and queue-lock kinds as one JSON object.
pub fn locks_json(sw: &Switch) -> serde_json::Value {
    let lockj = |v: &[(&str, u64)]| -> serde_json::Value {
        v.iter()
            .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    serde_json::json!({
        "grant_lock": {"kind": resolve_rw(sw.cfg.grant_lock).to_string(), "stats": lockj(&rw_stats(resolve_rw(sw.cfg.grant_lock)).fields())},
        "queue_lock": {"kind": sw.cfg.queue_lock.to_string(), "stats": lockj(&spin_stats(sw.cfg.queue_lock).fields())},
    })
}

fn render_json(sw: &Switch) -> String {
    let mut o = String::new();
    for (p, _) in sw.ports_in_use() {
        let _ = writeln!(o, "{}", port_json(sw, p));
    }
    let _ = writeln!(o, "{}", locks_json(sw));
    o
}
