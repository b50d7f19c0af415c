//! Rendering of the summarised runs: the Markdown table, CSV, JSON lines and the SVG chart.

use super::{drops_text, per_frame, Case, Idle, Summary};
use crate::plot;
use crate::rows::median;
use std::fmt::Write as _;

pub(super) fn num(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "-".to_string()
    }
}

fn idle_pct(i: &Idle) -> f64 {
    if i.secs > 0.0 {
        100.0 * i.cpu_s / i.secs
    } else {
        f64::NAN
    }
}

/// Aligned Markdown table.
pub(super) fn markdown(head: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain(std::iter::once(head[c].len()))
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if right[c] {
                    format!("{s:>w$}", w = widths[c])
                } else {
                    format!("{s:<w$}", w = widths[c])
                }
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut o = line(head.iter().map(|s| s.to_string()).collect());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, w)| {
            if right[c] {
                format!("{}:", "-".repeat(w + 1))
            } else {
                "-".repeat(w + 2)
            }
        })
        .collect();
    o.push_str(&format!("|{}|\n", rule.join("|")));
    for r in rows {
        o.push_str(&line(r.clone()));
    }
    o
}

/// The columns that name a case and its switch, first in every table.
pub(super) const CASE_HEAD: [&str; 6] = ["frames", "pairs", "loop", "dest", "flows", "switch"];

/// The cells of [`CASE_HEAD`] for summary `s`.
pub(super) fn case_cells(s: &Summary) -> Vec<String> {
    vec![
        s.case.size.clone(),
        s.case.pairs.to_string(),
        s.case.looping.clone(),
        s.case.dest.clone(),
        s.case.flows.clone(),
        s.config.clone(),
    ]
}

pub(super) fn render_text(sums: &[Summary], idle: &[Idle]) -> String {
    let head = [
        "Mpps",
        "Gbit/s",
        "ratio",
        "CPU %",
        "CPU ns/frame",
        "busy ns/frame",
        "client busy %",
        "kicks/1k tx+rx",
        "frames/burst",
        "ctxsw/1k",
        "drops (all runs)",
        "other load %",
        "runs",
        "Mpps per round",
        "xCPU ns per round",
    ];
    let head: Vec<&str> = CASE_HEAD.iter().chain(&head).copied().collect();
    let rows: Vec<Vec<String>> = sums
        .iter()
        .map(|s| {
            let mut row = case_cells(s);
            row.extend([
                num(s.mpps, 3),
                num(s.gbps, 2),
                s.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                num(s.cpu_pct, 0),
                num(s.cpu_ns_per_frame, 0),
                s.busy_ns_per_frame.map_or("-".into(), |b| num(b, 0)),
                s.client_busy_pct.map_or("-".into(), |c| num(c, 0)),
                s.kicks_per_kframe
                    .map_or("-".into(), |(t, r)| format!("{}+{}", num(t, 1), num(r, 1))),
                s.frames_per_burst.map_or("-".into(), |b| num(b, 1)),
                num(s.ctxsw_per_kframe, 2),
                drops_text(s),
                s.other_load
                    .map_or("-".into(), |(a, b)| format!("{}/{}", num(a, 0), num(b, 0))),
                format!("{}/{}", s.runs_ok, s.runs),
                s.mpps_rounds
                    .iter()
                    .map(|m| num(*m, 2))
                    .collect::<Vec<_>>()
                    .join(" "),
                s.xcpu_rounds
                    .iter()
                    .map(|x| x.map_or("-".into(), |v| num(v, 0)))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
            row
        })
        .collect();
    let right = [
        true, true, false, false, false, false, true, true, true, true, true, true, true, true,
        true, true, true, true, true, false, false,
    ];
    let mut o = markdown(&head, &rows, &right);
    o.push_str(LEGEND);
    if !idle.is_empty() {
        o.push('\n');
        let head = [
            "idle: switch",
            "pairs",
            "seconds",
            "CPU % of one core",
            "ctxsw/s",
            "status",
        ];
        let rows: Vec<Vec<String>> = idle
            .iter()
            .map(|i| {
                vec![
                    i.config.clone(),
                    i.pairs.to_string(),
                    num(i.secs, 1),
                    num(idle_pct(i), 1),
                    num(per_frame(i.ctxsw, i.secs, 1.0), 1),
                    i.status.clone(),
                ]
            })
            .collect();
        o.push_str(&markdown(
            &head,
            &rows,
            &[false, true, true, true, true, false],
        ));
    }
    o
}

const LEGEND: &str = "\
Mpps, Gbit/s: frames (L2 bytes) the frontends received, both directions summed in the closed \
loop; steady-state average per run, median over the runs. ratio: pvnet / testpmd as the \
switch, same case. CPU %: the switch process's CPU use; CPU ns/frame: its CPU time per \
frame received (a polling switch uses its core whatever it forwards). busy ns/frame: the \
switch's time in work that moved frames, per frame (pvnet: its busy_ns counter over the frames \
it took in the window; testpmd: its busy cycles per packet over the run, --record-core-cycles). \
client busy %: the share of the client's core spent forwarding (testpmd's busy cycles per \
packet times the packets per second): near 100 the client, not the switch, sets the rate, \
and Mpps / (client busy % / 100) is the most any switch could reach in that case. \
kicks/1k: kicks pvnet handled on TX + RX queues per 1,000 frames. \
frames/burst: frames pvnet took from the TX rings per non-empty burst (64, the limit, when \
the switch is the bottleneck; smaller when it waits for the frontends). \
ctxsw/1k: the switch's context switches per 1,000 frames. drops: pvnet's drops by reason \
over all runs (rx_full_timeout and flood_full: a full receive ring). other load %: CPU time other processes took on the switch / client \
CPU (a busy machine disturbs the figures). runs: good / all; a failed run shows as - in \
Mpps per round. xCPU ns per round: each run's cache-line round trip between the switch's and \
the client's CPU (pvnet-bench xcpu, the larger of before and after the run; on a virtual \
machine the host may place the two CPUs far apart for a while: compare runs of one state).\n";

pub(super) const CSV_HEAD: &str =
    "kind,size,pairs,loop,dest,flows,config,switch,mpps,gbps,ratio,cpu_pct,\
cpu_ns_per_frame,tx_kicks_per_1k_frames,rx_kicks_per_1k_frames,ctxsw_per_1k_frames,\
full_ring_drops,other_drops,switch_cpu_other_pct,client_cpu_other_pct,runs_ok,runs,\
idle_secs,ctxsw_per_s,xcpu_rtt_ns,frames_per_burst,busy_ns_per_frame,client_busy_pct";

/// The median cross-CPU round trip of a summary's runs (None: not measured).
pub(super) fn xcpu_median(s: &Summary) -> Option<f64> {
    let v: Vec<f64> = s.xcpu_rounds.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| median(v))
}

pub(super) fn render_csv(sums: &[Summary], idle: &[Idle]) -> String {
    let f = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            String::new()
        }
    };
    let mut o = format!("{CSV_HEAD}\n");
    for s in sums {
        let (tk, rk) = s
            .kicks_per_kframe
            .map_or((String::new(), String::new()), |(t, r)| (f(t), f(r)));
        let (so, co) = s
            .other_load
            .map_or((String::new(), String::new()), |(a, b)| (f(a), f(b)));
        let _ = writeln!(
            o,
            "case,{},{},{},{},{},{},{},{},{},{},{},{},{tk},{rk},{},{},{},{so},{co},{},{},,,{},{},{},{}",
            s.case.size,
            s.case.pairs,
            s.case.looping,
            s.case.dest,
            s.case.flows,
            s.config,
            s.switch,
            f(s.mpps),
            f(s.gbps),
            s.ratio.map_or(String::new(), f),
            f(s.cpu_pct),
            f(s.cpu_ns_per_frame),
            f(s.ctxsw_per_kframe),
            s.full_ring_drops,
            s.other_drops,
            s.runs_ok,
            s.runs,
            xcpu_median(s).map_or(String::new(), f),
            s.frames_per_burst.map_or(String::new(), f),
            s.busy_ns_per_frame.map_or(String::new(), f),
            s.client_busy_pct.map_or(String::new(), f)
        );
    }
    for i in idle {
        let switch = if i.config == "testpmd" {
            "testpmd"
        } else {
            "pvnet"
        };
        let _ = writeln!(
            o,
            "idle,,{},,,,{},{switch},,,,{},,,,,,,,,{},1,{},{},,,,",
            i.pairs,
            i.config,
            f(idle_pct(i)),
            usize::from(i.status == "ok"),
            f(i.secs),
            f(per_frame(i.ctxsw, i.secs, 1.0))
        );
    }
    o
}

pub(super) fn render_json(sums: &[Summary], idle: &[Idle]) -> String {
    let fin = |v: f64| v.is_finite().then_some(v);
    let mut o = String::new();
    for s in sums {
        let v = serde_json::json!({
            "kind": "case",
            "size": s.case.size, "pairs": s.case.pairs, "loop": s.case.looping,
            "dest": s.case.dest, "flows": s.case.flows,
            "config": s.config, "switch": s.switch,
            "mpps": fin(s.mpps), "gbps": fin(s.gbps), "ratio": s.ratio,
            "cpu_pct": fin(s.cpu_pct), "cpu_ns_per_frame": fin(s.cpu_ns_per_frame),
            "tx_kicks_per_1k_frames": s.kicks_per_kframe.and_then(|k| fin(k.0)),
            "rx_kicks_per_1k_frames": s.kicks_per_kframe.and_then(|k| fin(k.1)),
            "frames_per_burst": s.frames_per_burst.and_then(fin),
            "busy_ns_per_frame": s.busy_ns_per_frame.and_then(fin),
            "client_busy_pct": s.client_busy_pct.and_then(fin),
            "ctxsw_per_1k_frames": fin(s.ctxsw_per_kframe),
            "full_ring_drops": s.full_ring_drops, "other_drops": s.other_drops,
            "drops": s.drops,
            "switch_cpu_other_pct": s.other_load.and_then(|l| fin(l.0)),
            "client_cpu_other_pct": s.other_load.and_then(|l| fin(l.1)),
            "runs_ok": s.runs_ok, "runs": s.runs,
            "mpps_rounds": s.mpps_rounds.iter().map(|m| fin(*m)).collect::<Vec<_>>(),
            "xcpu_rtt_ns": xcpu_median(s),
            "xcpu_rtt_ns_rounds": s.xcpu_rounds,
        });
        let _ = writeln!(o, "{v}");
    }
    for i in idle {
        let v = serde_json::json!({
            "kind": "idle", "config": i.config, "pairs": i.pairs, "secs": fin(i.secs),
            "cpu_pct": fin(idle_pct(i)), "ctxsw_per_s": fin(per_frame(i.ctxsw, i.secs, 1.0)),
            "status": i.status,
        });
        let _ = writeln!(o, "{v}");
    }
    o
}

/// Bar chart of the median Mpps: one cluster per frame size and pair count, one bar per
/// switch configuration (and loop/destination, when the runs hold several of them), so
/// that the cluster labels stay short enough for the x axis.
pub(super) fn svg(sums: &[Summary]) -> String {
    fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    let cat = |c: &Case| {
        let size = if c.size.parse::<u32>().is_ok() {
            format!("{}B", c.size)
        } else {
            c.size.clone()
        };
        format!("{size} {}q", c.pairs)
    };
    let (mut cats, mut traffic) = (Vec::new(), Vec::new());
    for s in sums {
        push(&mut cats, cat(&s.case));
        push(&mut traffic, (s.case.looping.clone(), s.case.dest.clone()));
    }
    let name = |s: &Summary| {
        if traffic.len() > 1 {
            format!("{} {}/{}", s.config, s.case.looping, s.case.dest)
        } else {
            s.config.clone()
        }
    };
    let mut names = Vec::new();
    for s in sums {
        push(&mut names, name(s));
    }
    let series: Vec<plot::Series> = names
        .iter()
        .map(|n| plot::Series {
            name: n.clone(),
            points: sums
                .iter()
                .filter(|s| name(s) == *n && s.mpps.is_finite())
                .filter_map(|s| {
                    let k = cats.iter().position(|x| *x == cat(&s.case))?;
                    Some((k as f64, s.mpps))
                })
                .collect(),
        })
        .collect();
    let title = match traffic.as_slice() {
        [(l, d)] => format!("Switch with DPDK virtio-user frontends, {l} loop, {d}: median Mpps"),
        _ => "Switch with DPDK virtio-user frontends: median Mpps".to_string(),
    };
    let chart = plot::Chart {
        title: &title,
        x_label: "frame size, queue pairs",
        y_label: "Mpps received by the frontends",
    };
    plot::bars(&chart, &cats, &series)
}
