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

use crate::rows::median;
use anyhow::{bail, Context};
use render::{case_cells, markdown, num, render_csv, render_json, render_text, svg, CASE_HEAD};
#[cfg(test)]
use render::{xcpu_median, CSV_HEAD};
use std::collections::HashMap;
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
    /// Cross-CPU round trip (ns) below which a run counts as taken in the machine's near
    /// state, for the table by state (switchbench.sh passes its --max-xcpu-ns).
    #[arg(long, value_name = "NS", default_value_t = state::NEAR_XCPU_NS)]
    pub near_xcpu_ns: f64,
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
    /// pvnet only: frames taken from the TX rings in the window, and in how many bursts.
    bursts: Option<(f64, f64)>,
    full_ring_drops: u64,
    other_drops: u64,
    /// pvnet's drops by reason over the run ("reason=count" pairs).
    drops: Vec<(String, u64)>,
    /// Percent of the switch's / the client's CPU that other processes used in the window.
    other_load: Option<(f64, f64)>,
    /// Cache-line round trip between the switch's and the client's CPU (ns), the larger of
    /// the measurements before and after the run (`pvnet-bench xcpu`).
    xcpu_ns: Option<f64>,
    /// The switch's busy time per frame (ns): pvnet's `busy_ns` per frame taken from the
    /// TX rings in the window, testpmd's busy cycles per packet (`--record-core-cycles`).
    busy_ns_per_frame: Option<f64>,
    /// Percent of the client core's time spent in polls that found frames (testpmd's busy
    /// cycles per packet times the frames per second).
    client_busy_pct: Option<f64>,
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
    /// pvnet only: frames per TX burst (the burst limit when the switch is the bottleneck).
    frames_per_burst: Option<f64>,
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
    /// Median busy time of the switch per frame (ns), when every good run measured it.
    busy_ns_per_frame: Option<f64>,
    /// Median busy share of the client's core (percent), when every good run measured it.
    client_busy_pct: Option<f64>,
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
                bursts: match (
                    t.opt_num(row, "sw_tx_frames")?,
                    t.opt_num(row, "tx_bursts")?,
                ) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
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
                busy_ns_per_frame: t.opt_num(row, "sw_busy_ns_per_frame")?,
                client_busy_pct: t.opt_num(row, "client_busy_pct")?,
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
            let bursts = ok.iter().all(|r| r.bursts.is_some()) && !ok.is_empty();
            let measured = |f: fn(&Run) -> Option<f64>| {
                (!ok.is_empty() && ok.iter().all(|r| f(r).is_some()))
                    .then(|| med(&|r| f(r).unwrap_or(f64::NAN)))
            };
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
                frames_per_burst: bursts
                    .then(|| med(&|r| r.bursts.map_or(f64::NAN, |(f, b)| per_frame(f, b, 1.0)))),
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
                busy_ns_per_frame: measured(|r| r.busy_ns_per_frame),
                client_busy_pct: measured(|r| r.client_busy_pct),
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
            t.extend(state::render(&runs, args.near_xcpu_ns));
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

mod render;
mod state;
#[cfg(test)]
mod tests;
