//! `pvnet-bench switchbench-report`: the table (and chart) of `scripts/switchbench.sh`.
//!
//! The script runs the switch with DPDK virtio-user frontends and writes one CSV line per run
//! (`runs.csv`: raw counts of the steady-state window) and one per idle measurement
//! (`idle.csv`). This command groups the runs by case (frame size, queue pairs, loop,
//! destination, flows) and switch configuration, takes medians over the rounds, and prints
//! them with the ratio of each pvnet configuration to DPDK testpmd as the switch in the same
//! case. Per-frame figures are computed per run from raw counts, then the median is taken.
//!
//! It reads files and renders text, CSV or JSON, and an SVG through [`crate::plot`].

use crate::plot;
use crate::rows::median;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A Markdown table for people (and docs).
    Text,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Flags of `pvnet-bench switchbench-report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Per-run results written by scripts/switchbench.sh (runs.csv).
    #[arg(long, value_name = "FILE")]
    pub runs: PathBuf,
    /// Idle-cost results written by scripts/switchbench.sh (idle.csv).
    #[arg(long, value_name = "FILE")]
    pub idle: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also write an SVG bar chart of the median Mpps per case and switch to this file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// One run (one line of runs.csv).
#[derive(Clone, Debug, PartialEq)]
struct Run {
    case: Case,
    config: String,
    switch: String,
    ok: bool,
    mpps: f64,
    gbps: f64,
    window_s: f64,
    frames: f64,
    cpu_s: f64,
    ctxsw: f64,
    /// pvnet only: kicks handled on TX and RX queues in the window.
    kicks: Option<(f64, f64)>,
    full_ring_drops: u64,
    other_drops: u64,
    /// pvnet's drops by reason over the run ("reason=count" pairs).
    drops: Vec<(String, u64)>,
    /// Percent of the switch's / the client's CPU that other processes used in the window.
    other_load: Option<(f64, f64)>,
    /// Cache-line round trip between the switch's and the client's CPU (ns), the larger of
    /// the measurements before and after the run (`pvnet-bench xcpu`).
    xcpu_ns: Option<f64>,
}

/// What a run measured: the traffic, independent of the switch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Case {
    size: String,
    pairs: u32,
    looping: String,
    dest: String,
    flows: String,
}

/// Medians of one (case, switch configuration).
#[derive(Clone, Debug)]
struct Summary {
    case: Case,
    config: String,
    switch: String,
    mpps: f64,
    gbps: f64,
    ratio: Option<f64>,
    cpu_pct: f64,
    cpu_ns_per_frame: f64,
    kicks_per_kframe: Option<(f64, f64)>,
    ctxsw_per_kframe: f64,
    full_ring_drops: u64,
    other_drops: u64,
    /// Drops by reason, summed over every run.
    drops: std::collections::BTreeMap<String, u64>,
    /// Medians of the other processes' load on the switch's / client's CPU (percent).
    other_load: Option<(f64, f64)>,
    runs_ok: usize,
    runs: usize,
    mpps_rounds: Vec<f64>,
    /// Each run's cross-CPU round trip (ns), in the order of `mpps_rounds`.
    xcpu_rounds: Vec<Option<f64>>,
}

/// One idle measurement (one line of idle.csv).
#[derive(Clone, Debug)]
struct Idle {
    config: String,
    pairs: u32,
    secs: f64,
    cpu_s: f64,
    ctxsw: f64,
    status: String,
}

/// A CSV file with a header; fields never contain commas (the script writes them so).
struct Table {
    cols: HashMap<String, usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(text: &str) -> anyhow::Result<Table> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let head = lines.next().context("empty file (no header line)")?;
        let cols = head
            .split(',')
            .enumerate()
            .map(|(i, c)| (c.trim().to_string(), i))
            .collect();
        let rows = lines
            .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
            .collect();
        Ok(Table { cols, rows })
    }

    fn get<'a>(&self, row: &'a [String], col: &str) -> anyhow::Result<&'a str> {
        let i = *self
            .cols
            .get(col)
            .with_context(|| format!("no column '{col}'"))?;
        Ok(row.get(i).map_or("", String::as_str))
    }

    fn num(&self, row: &[String], col: &str) -> anyhow::Result<f64> {
        let v = self.get(row, col)?;
        v.parse()
            .with_context(|| format!("column '{col}': '{v}' is not a number"))
    }

    /// An optional column: missing or empty is `None`.
    fn opt_num(&self, row: &[String], col: &str) -> anyhow::Result<Option<f64>> {
        if !self.cols.contains_key(col) {
            return Ok(None);
        }
        match self.get(row, col)? {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .with_context(|| format!("column '{col}': '{v}' is not a number")),
        }
    }
}

fn parse_runs(text: &str) -> anyhow::Result<Vec<Run>> {
    let t = Table::parse(text)?;
    let mut runs = Vec::new();
    for (n, row) in t.rows.iter().enumerate() {
        // Repeated because other processes disturbed it (--max-other-load): not counted.
        if t.get(row, "status")? == "retried" {
            continue;
        }
        let run = (|| -> anyhow::Result<Run> {
            let kicks = match (t.opt_num(row, "tx_kicks")?, t.opt_num(row, "rx_kicks")?) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            };
            Ok(Run {
                case: Case {
                    size: t.get(row, "size")?.to_string(),
                    pairs: t.num(row, "pairs")? as u32,
                    looping: t.get(row, "loop")?.to_string(),
                    dest: t.get(row, "dest")?.to_string(),
                    flows: t.get(row, "flows")?.to_string(),
                },
                config: t.get(row, "config")?.to_string(),
                switch: t.get(row, "switch")?.to_string(),
                ok: t.get(row, "status")? == "ok",
                mpps: t.num(row, "mpps")?,
                gbps: t.num(row, "gbps")?,
                window_s: t.num(row, "window_s")?,
                frames: t.num(row, "frames")?,
                cpu_s: t.num(row, "cpu_s")?,
                ctxsw: t.num(row, "ctxsw")?,
                kicks,
                full_ring_drops: t.num(row, "full_ring_drops")? as u64,
                other_drops: t.num(row, "other_drops")? as u64,
                drops: parse_drops(t.get(row, "drops")?)?,
                other_load: match (
                    t.opt_num(row, "switch_cpu_other_pct")?,
                    t.opt_num(row, "client_cpu_other_pct")?,
                ) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
                xcpu_ns: match (
                    t.opt_num(row, "xcpu_before_ns")?,
                    t.opt_num(row, "xcpu_after_ns")?,
                ) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                },
            })
        })()
        .with_context(|| format!("line {}", n + 2))?;
        runs.push(run);
    }
    Ok(runs)
}

/// "flood_full=3 no_dest=1" (the script's `drops` column) as pairs.
fn parse_drops(field: &str) -> anyhow::Result<Vec<(String, u64)>> {
    field
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("drops: '{kv}' is not reason=count"))?;
            let n = v
                .parse()
                .with_context(|| format!("drops: '{kv}' is not reason=count"))?;
            Ok((k.to_string(), n))
        })
        .collect()
}

fn drops_text(s: &Summary) -> String {
    if s.drops.is_empty() {
        return "0".into();
    }
    s.drops
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_idle(text: &str) -> anyhow::Result<Vec<Idle>> {
    let t = Table::parse(text)?;
    t.rows
        .iter()
        .enumerate()
        .map(|(n, row)| {
            (|| -> anyhow::Result<Idle> {
                Ok(Idle {
                    config: t.get(row, "config")?.to_string(),
                    pairs: t.num(row, "pairs")? as u32,
                    secs: t.num(row, "secs")?,
                    cpu_s: t.num(row, "cpu_s")?,
                    ctxsw: t.num(row, "ctxsw")?,
                    status: t.get(row, "status")?.to_string(),
                })
            })()
            .with_context(|| format!("line {}", n + 2))
        })
        .collect()
}

/// Median of `v` (mean of the middle two for an even count); NaN when empty.
fn per_frame(x: f64, frames: f64, scale: f64) -> f64 {
    if frames > 0.0 {
        x * scale / frames
    } else {
        f64::NAN
    }
}

fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut keys: Vec<(Case, String, String)> = Vec::new();
    for r in runs {
        let k = (r.case.clone(), r.config.clone(), r.switch.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out: Vec<Summary> = keys
        .into_iter()
        .map(|(case, config, switch)| {
            let all: Vec<&Run> = runs
                .iter()
                .filter(|r| r.case == case && r.config == config)
                .collect();
            let ok: Vec<&Run> = all.iter().copied().filter(|r| r.ok).collect();
            let med = |f: &dyn Fn(&Run) -> f64| median(ok.iter().map(|r| f(r)).collect());
            let kicks = ok.iter().all(|r| r.kicks.is_some()) && !ok.is_empty();
            Summary {
                mpps: med(&|r| r.mpps),
                gbps: med(&|r| r.gbps),
                ratio: None,
                cpu_pct: med(&|r| {
                    if r.window_s > 0.0 {
                        100.0 * r.cpu_s / r.window_s
                    } else {
                        f64::NAN
                    }
                }),
                cpu_ns_per_frame: med(&|r| per_frame(r.cpu_s, r.frames, 1e9)),
                kicks_per_kframe: kicks.then(|| {
                    (
                        med(&|r| per_frame(r.kicks.map_or(0.0, |k| k.0), r.frames, 1e3)),
                        med(&|r| per_frame(r.kicks.map_or(0.0, |k| k.1), r.frames, 1e3)),
                    )
                }),
                ctxsw_per_kframe: med(&|r| per_frame(r.ctxsw, r.frames, 1e3)),
                other_load: ok.iter().all(|r| r.other_load.is_some()).then(|| {
                    (
                        med(&|r| r.other_load.map_or(f64::NAN, |l| l.0)),
                        med(&|r| r.other_load.map_or(f64::NAN, |l| l.1)),
                    )
                }),
                full_ring_drops: all.iter().map(|r| r.full_ring_drops).sum(),
                other_drops: all.iter().map(|r| r.other_drops).sum(),
                drops: all.iter().flat_map(|r| r.drops.iter()).fold(
                    std::collections::BTreeMap::new(),
                    |mut m, (k, v)| {
                        *m.entry(k.clone()).or_default() += v;
                        m
                    },
                ),
                runs_ok: ok.len(),
                runs: all.len(),
                mpps_rounds: all
                    .iter()
                    .map(|r| if r.ok { r.mpps } else { f64::NAN })
                    .collect(),
                xcpu_rounds: all.iter().map(|r| r.xcpu_ns).collect(),
                case,
                config,
                switch,
            }
        })
        .collect();
    // Ratios to testpmd as the switch in the same case.
    let reference: Vec<(Case, f64)> = out
        .iter()
        .filter(|s| s.switch == "testpmd")
        .map(|s| (s.case.clone(), s.mpps))
        .collect();
    for s in out.iter_mut().filter(|s| s.switch != "testpmd") {
        s.ratio = reference
            .iter()
            .find(|(c, _)| *c == s.case)
            .map(|(_, m)| s.mpps / m)
            .filter(|r| r.is_finite());
    }
    out
}

fn num(v: f64, prec: usize) -> String {
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
fn markdown(head: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
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
const CASE_HEAD: [&str; 6] = ["frames", "pairs", "loop", "dest", "flows", "switch"];

/// The cells of [`CASE_HEAD`] for summary `s`.
fn case_cells(s: &Summary) -> Vec<String> {
    vec![
        s.case.size.clone(),
        s.case.pairs.to_string(),
        s.case.looping.clone(),
        s.case.dest.clone(),
        s.case.flows.clone(),
        s.config.clone(),
    ]
}

fn render_text(sums: &[Summary], idle: &[Idle]) -> String {
    let head = [
        "Mpps",
        "Gbit/s",
        "ratio",
        "CPU %",
        "CPU ns/frame",
        "kicks/1k tx+rx",
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
                s.kicks_per_kframe
                    .map_or("-".into(), |(t, r)| format!("{}+{}", num(t, 1), num(r, 1))),
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
        true, true, false, false,
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
frame received. kicks/1k: kicks pvnet handled on TX + RX queues per 1,000 frames. \
ctxsw/1k: the switch's context switches per 1,000 frames. drops: pvnet's drops by reason \
over all runs (rx_full_timeout and flood_full: a full receive ring). other load %: CPU time other processes took on the switch / client \
CPU (a busy machine disturbs the figures). runs: good / all; a failed run shows as - in \
Mpps per round. xCPU ns per round: each run's cache-line round trip between the switch's and \
the client's CPU (pvnet-bench xcpu, the larger of before and after the run; on a virtual \
machine the host may place the two CPUs far apart for a while: compare runs of one state).\n";

const CSV_HEAD: &str = "kind,size,pairs,loop,dest,flows,config,switch,mpps,gbps,ratio,cpu_pct,\
cpu_ns_per_frame,tx_kicks_per_1k_frames,rx_kicks_per_1k_frames,ctxsw_per_1k_frames,\
full_ring_drops,other_drops,switch_cpu_other_pct,client_cpu_other_pct,runs_ok,runs,\
idle_secs,ctxsw_per_s,xcpu_rtt_ns";

/// The median cross-CPU round trip of a summary's runs (None: not measured).
fn xcpu_median(s: &Summary) -> Option<f64> {
    let v: Vec<f64> = s.xcpu_rounds.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| median(v))
}

fn render_csv(sums: &[Summary], idle: &[Idle]) -> String {
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
            "case,{},{},{},{},{},{},{},{},{},{},{},{},{tk},{rk},{},{},{},{so},{co},{},{},,,{}",
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
            xcpu_median(s).map_or(String::new(), f)
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
            "idle,,{},,,,{},{switch},,,,{},,,,,,,,,{},1,{},{},",
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

fn render_json(sums: &[Summary], idle: &[Idle]) -> String {
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
fn svg(sums: &[Summary]) -> String {
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

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runs = parse_runs(&read(&args.runs)?)
        .with_context(|| format!("parsing {}", args.runs.display()))?;
    if runs.is_empty() {
        bail!("{}: no runs", args.runs.display());
    }
    let idle = match &args.idle {
        Some(p) => parse_idle(&read(p)?).with_context(|| format!("parsing {}", p.display()))?,
        None => Vec::new(),
    };
    let sums = summarize(&runs);
    let text = match args.format {
        Format::Text => {
            let mut t = render_text(&sums, &idle);
            t.extend(state::render(&runs, state::NEAR_XCPU_NS));
            t
        }
        Format::Csv => render_csv(&sums, &idle),
        Format::Json => render_json(&sums, &idle),
    };
    print!("{text}");
    if let Some(p) = &args.plot {
        std::fs::write(p, svg(&sums)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

mod state;
#[cfg(test)]
mod tests;
