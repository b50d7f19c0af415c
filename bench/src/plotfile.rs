//! `pvnet-bench plot`: an SVG chart of a results file that a script or a benchmark wrote.
//!
//! The file is CSV with a header line (read with the `csv` crate, so quoted fields may hold
//! commas) or JSON lines (one object per line, as `--format json` prints). Rows are filtered
//! with `--where COL=VALUE`, grouped by series (`--series COL`) and x value (`--x COL`), and
//! the rows of one group are combined by the median of `--y COL` (a script that repeats each
//! configuration over rounds writes one row per round). The chart is drawn by [`crate::plot`]:
//! a grouped bar chart, or a line chart over a numeric x.

use crate::plot::{self, Chart, Series};
use crate::rows::median;
use anyhow::{bail, Context as _};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Chart kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// One cluster of bars per x value, one bar per series; the y axis starts at zero.
    Bars,
    /// One line per series over a numeric x.
    Lines,
}

/// Flags of `pvnet-bench plot`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Results file: CSV with a header line, or JSON lines (a file whose first non-blank
    /// character is `{`).
    #[arg(value_name = "FILE")]
    pub input: PathBuf,
    /// Chart kind.
    #[arg(long, value_enum, default_value_t = Kind::Bars)]
    pub kind: Kind,
    /// Column of the x axis (bars: the categories, in order of first appearance).
    #[arg(long, value_name = "COL")]
    pub x: String,
    /// Column of the y axis (numbers); the rows of one series and x value are combined by
    /// their median.
    #[arg(long, value_name = "COL")]
    pub y: String,
    /// Column whose values name the series (default: a single series named after --y).
    #[arg(long, value_name = "COL")]
    pub series: Option<String>,
    /// Keep only the rows whose column COL holds VALUE (repeatable; every one must hold).
    #[arg(long = "where", value_name = "COL=VALUE", value_parser = parse_filter)]
    pub filters: Vec<(String, String)>,
    /// Bars: the x categories and their order, comma-separated (a category without rows
    /// keeps its place, with no bar); default: every x value, in order of first appearance.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub x_values: Vec<String>,
    /// Chart title.
    #[arg(long, default_value = "")]
    pub title: String,
    /// Label of the x axis (default: the --x column's name).
    #[arg(long, value_name = "TEXT")]
    pub x_label: Option<String>,
    /// Label of the y axis (default: the --y column's name).
    #[arg(long, value_name = "TEXT")]
    pub y_label: Option<String>,
    /// Write the SVG to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn parse_filter(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not COL=VALUE")),
    }
}

/// A results file as named columns; every value kept as text.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<BTreeMap<String, String>>,
}

impl Table {
    fn parse(text: &str) -> anyhow::Result<Table> {
        if text.trim_start().starts_with('{') {
            Self::parse_json_lines(text)
        } else {
            Self::parse_csv(text)
        }
    }

    fn parse_csv(text: &str) -> anyhow::Result<Table> {
        let mut rd = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let head: Vec<String> = rd
            .headers()
            .context("CSV header line")?
            .iter()
            .map(str::to_string)
            .collect();
        if head.iter().all(String::is_empty) {
            bail!("empty file (no header line)");
        }
        let mut rows = Vec::new();
        for rec in rd.records() {
            let rec = rec.context("CSV")?;
            rows.push(
                head.iter()
                    .cloned()
                    .zip(rec.iter().map(str::to_string))
                    .collect(),
            );
        }
        Ok(Table { rows })
    }

    fn parse_json_lines(text: &str) -> anyhow::Result<Table> {
        let mut rows = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("line {}", n + 1))?;
            let obj = v
                .as_object()
                .with_context(|| format!("line {}: not a JSON object", n + 1))?;
            let row = obj
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect();
            rows.push(row);
        }
        Ok(Table { rows })
    }

    /// Checks that `col` exists in the file (in its first row: CSV rows all have every
    /// column; JSON lines are expected to share their keys).
    fn require(&self, col: &str, flag: &str) -> anyhow::Result<()> {
        match self.rows.first() {
            Some(r) if !r.contains_key(col) => {
                let have: Vec<&str> = r.keys().map(String::as_str).collect();
                bail!(
                    "{flag} {col}: no such column (the file has: {})",
                    have.join(", ")
                )
            }
            _ => Ok(()),
        }
    }
}

fn distinct(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// The chart's series: per series name, per x value (text), the median y.
struct Grouped {
    xs: Vec<String>,
    series: Vec<(String, Vec<(String, f64)>)>,
}

fn group(t: &Table, a: &Args) -> anyhow::Result<Grouped> {
    t.require(&a.x, "--x")?;
    t.require(&a.y, "--y")?;
    if let Some(s) = &a.series {
        t.require(s, "--series")?;
    }
    for (k, _) in &a.filters {
        t.require(k, "--where")?;
    }
    let kept: Vec<&BTreeMap<String, String>> = t
        .rows
        .iter()
        .filter(|r| {
            a.filters
                .iter()
                .all(|(k, v)| r.get(k).is_some_and(|x| x == v))
        })
        .collect();
    let field = |r: &BTreeMap<String, String>, c: &str| r.get(c).cloned().unwrap_or_default();
    let name = |r: &BTreeMap<String, String>| match &a.series {
        Some(c) => field(r, c),
        None => a.y.clone(),
    };
    let xs = if a.x_values.is_empty() {
        distinct(kept.iter().map(|r| field(r, &a.x)))
    } else {
        a.x_values.clone()
    };
    let mut series = Vec::new();
    for s in distinct(kept.iter().map(|r| name(r))) {
        let mut points = Vec::new();
        for x in distinct(kept.iter().map(|r| field(r, &a.x))) {
            let mut ys = Vec::new();
            for r in kept.iter().filter(|r| name(r) == s && field(r, &a.x) == x) {
                let v = field(r, &a.y);
                let y: f64 = v
                    .parse()
                    .with_context(|| format!("--y {}: '{v}' is not a number", a.y))?;
                ys.push(y);
            }
            if !ys.is_empty() {
                points.push((x, median(ys)));
            }
        }
        series.push((s, points));
    }
    Ok(Grouped { xs, series })
}

/// Renders the chart that `a` asks for from the file's text.
fn render(text: &str, a: &Args) -> anyhow::Result<String> {
    let t = Table::parse(text)?;
    let g = group(&t, a)?;
    let c = Chart {
        title: &a.title,
        x_label: a.x_label.as_deref().unwrap_or(&a.x),
        y_label: a.y_label.as_deref().unwrap_or(&a.y),
    };
    match a.kind {
        Kind::Bars => {
            let series: Vec<Series> = g
                .series
                .into_iter()
                .map(|(name, pts)| Series {
                    name,
                    points: pts
                        .into_iter()
                        .filter_map(|(x, y)| {
                            let k = g.xs.iter().position(|c| *c == x);
                            if k.is_none() {
                                log::warn!("{x}: not in --x-values, left out of the chart");
                            }
                            k.map(|k| (k as f64, y))
                        })
                        .collect(),
                })
                .collect();
            Ok(plot::bars(&c, &g.xs, &series))
        }
        Kind::Lines => {
            let mut series = Vec::new();
            for (name, pts) in g.series {
                let mut points = Vec::new();
                for (x, y) in pts {
                    let xv: f64 = x
                        .parse()
                        .with_context(|| format!("--x {}: '{x}' is not a number", a.x))?;
                    points.push((xv, y));
                }
                series.push(Series { name, points });
            }
            Ok(plot::lines(&c, &series))
        }
    }
}

/// Runs `pvnet-bench plot`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let svg = render(&text, &a).with_context(|| format!("{}", a.input.display()))?;
    match &a.out {
        Some(p) => std::fs::write(p, svg).with_context(|| format!("writing {}", p.display())),
        None => {
            print!("{svg}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
