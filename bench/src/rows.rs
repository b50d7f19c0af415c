//! Benchmark output shared by `lockbench` and `grantbench`: one row per
//! measurement, printed as an aligned table, CSV or JSON lines, and optionally plotted.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Output format of a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

/// One measurement. `lock`, `threads` and `ops_per_sec` are always present; `ratio` is
/// relative to the first configuration measured in the same group (same `group` and
/// `threads`). `extra` holds benchmark-specific columns (sizes, Gbit/s, lock counters, …).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub bench: String,
    /// What is being compared within the group: a lock kind or a lock-kind combination.
    pub lock: String,
    /// The group a ratio is computed in (e.g. "read-only", "64B batched"), may be empty.
    pub group: String,
    pub threads: usize,
    pub ops_per_sec: f64,
    pub ratio: f64,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Row {
    pub fn new(bench: &str, group: &str, lock: &str, threads: usize, ops_per_sec: f64) -> Row {
        Row {
            bench: bench.to_string(),
            lock: lock.to_string(),
            group: group.to_string(),
            threads,
            ops_per_sec,
            ratio: 1.0,
            extra: BTreeMap::new(),
        }
    }

    /// Adds a benchmark-specific column.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Row {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// Fills in `ratio`: each row's `ops_per_sec` over that of the first row with the same
/// `group` and `threads` (the first configuration named on the command line).
pub fn compute_ratios(rows: &mut [Row]) {
    let mut base: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for r in rows.iter() {
        base.entry((r.group.clone(), r.threads))
            .or_insert(r.ops_per_sec);
    }
    for r in rows.iter_mut() {
        let b = base[&(r.group.clone(), r.threads)];
        r.ratio = if b > 0.0 { r.ops_per_sec / b } else { 0.0 };
    }
}

fn extra_keys(rows: &[Row]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for r in rows {
        for k in r.extra.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// The median of the finite values of `v` (the mean of the two middle ones for an even
/// count); NaN when there is none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Human-friendly operations per second: `12.3M`, `456k`, …
pub fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// Renders `rows` in `format`.
pub fn render(rows: &[Row], format: Format) -> String {
    let keys = extra_keys(rows);
    let mut out = String::new();
    match format {
        Format::Json => {
            for r in rows {
                let line = serde_json::to_string(r).unwrap_or_default();
                let _ = writeln!(out, "{line}");
            }
        }
        Format::Csv => {
            let mut hdr = vec!["bench", "group", "lock", "threads", "ops_per_sec", "ratio"];
            hdr.extend(keys.iter().map(String::as_str));
            let _ = writeln!(out, "{}", hdr.join(","));
            for r in rows {
                let mut cols = vec![
                    r.bench.clone(),
                    r.group.clone(),
                    r.lock.clone(),
                    r.threads.to_string(),
                    format!("{:.0}", r.ops_per_sec),
                    format!("{:.3}", r.ratio),
                ];
                cols.extend(keys.iter().map(|k| cell(r.extra.get(k))));
                let _ = writeln!(out, "{}", cols.join(","));
            }
        }
        Format::Table => {
            let mut hdr: Vec<String> = ["group", "lock", "threads", "ops/s", "ratio"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            hdr.extend(keys.iter().cloned());
            let mut table: Vec<Vec<String>> = vec![hdr];
            for r in rows {
                let mut cols = vec![
                    r.group.clone(),
                    r.lock.clone(),
                    r.threads.to_string(),
                    si(r.ops_per_sec),
                    format!("{:.2}x", r.ratio),
                ];
                cols.extend(keys.iter().map(|k| cell(r.extra.get(k))));
                table.push(cols);
            }
            let ncol = table[0].len();
            let widths: Vec<usize> = (0..ncol)
                .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
                .collect();
            for row in &table {
                let line: Vec<String> = row
                    .iter()
                    .enumerate()
                    .map(|(c, s)| format!("{s:>w$}", w = widths[c]))
                    .collect();
                let _ = writeln!(out, "{}", line.join("  ").trim_end());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_formats() {
        let mut rows = vec![
            Row::new("lockbench", "ro", "a", 2, 100.0).with("spins", 3u64),
            Row::new("lockbench", "ro", "b", 2, 250.0),
            Row::new("lockbench", "ro", "a", 4, 50.0),
        ];
        compute_ratios(&mut rows);
        assert_eq!(rows[1].ratio, 2.5);
        assert_eq!(rows[2].ratio, 1.0);
        let csv = render(&rows, Format::Csv);
        assert!(csv.starts_with("bench,group,lock,threads,ops_per_sec,ratio,spins\n"));
        assert!(csv.contains("lockbench,ro,b,2,250,2.500,\n"), "{csv}");
        let json = render(&rows, Format::Json);
        let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(v["lock"], "a");
        assert_eq!(v["threads"], 2);
        assert_eq!(v["spins"], 3);
        assert!(render(&rows, Format::Table).contains("2.50x"));
    }
}
