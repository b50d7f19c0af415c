//! Small dependency-free SVG charts for benchmark rows ([`rows::Row`]).
//!
//! * [`svg_lines`]: x = threads, y = ops/s, one line per lock (and group, when a run holds
//!   several groups). Used by `lockbench --plot`.
//! * [`svg_bars`]: one cluster per group (and thread count, when several), one bar per lock.
//!
//! Both build on [`lines`] / [`bars`], which take plain [`Series`] for any other chart.
//! Axes switch to a logarithmic scale by themselves when the data spans a wide range (lock
//! throughputs easily span three orders of magnitude); the axis label then says "(log)".

use crate::rows::{self, Row};
use std::fmt::Write as _;

/// A named sequence of (x, y) points. For [`bars`], x is the category index.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Titles of a chart.
#[derive(Clone, Copy, Debug)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

const W: f64 = 860.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Escapes text for SVG content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// A linear or logarithmic mapping of data values onto a pixel range.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Axis {
    /// `log_ratio`: switch to a log scale when max/min of positive data reaches it.
    /// `tight`: a log axis ends at the data instead of at whole decades.
    fn new(
        vals: &[f64],
        from: f64,
        to: f64,
        log_ratio: f64,
        zero_based: bool,
        tight: bool,
    ) -> Axis {
        let fin: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
        let mut lo = fin.iter().copied().fold(f64::INFINITY, f64::min);
        let mut hi = fin.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if fin.is_empty() {
            (lo, hi) = (0.0, 1.0);
        }
        let log = lo > 0.0 && hi / lo >= log_ratio;
        if log && tight {
            // Nothing to round: lo > 0 and hi >= lo * log_ratio.
        } else if log {
            lo = 10f64.powf(lo.log10().floor());
            hi = 10f64.powf(hi.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
        } else {
            if zero_based {
                lo = lo.min(0.0);
            }
            if hi <= lo {
                hi = lo + 1.0;
            }
            let step = nice_step(hi - lo);
            lo = (lo / step).floor() * step;
            hi = (hi / step).ceil() * step;
        }
        Axis {
            lo,
            hi,
            log,
            from,
            to,
        }
    }

    fn map(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.from + f * (self.to - self.from)
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().round() as i32,
                self.hi.log10().round() as i32,
            );
            (a..=b).map(|e| 10f64.powi(e)).collect()
        } else {
            let step = nice_step(self.hi - self.lo);
            let n = ((self.hi - self.lo) / step).round() as usize;
            (0..=n).map(|i| self.lo + i as f64 * step).collect()
        }
    }
}

/// A 1/2/5 × 10^k step giving about five intervals over `range`.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1000.0 {
        format!("{v:.0}")
    } else if v.abs() < 1.0 {
        format!("{v}")
    } else {
        // "10.00G" -> "10G", "2.50M" -> "2.5M": tick labels need no trailing zeros.
        let s = rows::si(v);
        let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
        if num.contains('.') {
            format!("{}{unit}", num.trim_end_matches('0').trim_end_matches('.'))
        } else {
            s
        }
    }
}

fn header(out: &mut String, c: &Chart, y: &Axis) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        esc(c.title)
    );
    for t in y.ticks() {
        let py = y.map(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            esc(&label(t))
        );
    }
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        esc(c.y_label),
        if y.log { " (log)" } else { "" }
    );
}

fn footer(out: &mut String, c: &Chart, x_log: bool, names: &[&str]) {
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - RIGHT - LEFT,
        H - BOTTOM - TOP
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 16.0,
        esc(c.x_label),
        if x_log { " (log)" } else { "" }
    );
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{:.1}" width="14" height="10" fill="{}"/><text x="{}" y="{:.1}">{}</text>"#,
            W - RIGHT + 12.0,
            y,
            PALETTE[i % PALETTE.len()],
            W - RIGHT + 32.0,
            y + 9.0,
            esc(n)
        );
    }
    out.push_str("</svg>\n");
}

/// A line chart: one polyline with markers per series; x ticks at the data's x values.
pub fn lines(c: &Chart, series: &[Series]) -> String {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let x = Axis::new(&xs, LEFT + 20.0, W - RIGHT - 20.0, 4.0, false, true);
    let y = Axis::new(&ys, H - BOTTOM, TOP, 20.0, true, false);
    let mut out = String::new();
    header(&mut out, c, &y);
    let mut xticks: Vec<f64> = xs.iter().copied().filter(|v| v.is_finite()).collect();
    xticks.sort_by(f64::total_cmp);
    xticks.dedup();
    if xticks.len() > 12 {
        xticks = x.ticks();
    }
    for t in xticks {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x.map(t),
            H - BOTTOM + 16.0,
            esc(&label(t))
        );
    }
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let mut pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let _ = writeln!(out, r#"<g class="series" data-name="{}">"#, esc(&s.name));
        let path: Vec<String> = pts
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x.map(px), y.map(py)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{col}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(px, py) in &pts {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{col}"><title>{}: {}</title></circle>"#,
                x.map(px),
                y.map(py),
                esc(&s.name),
                esc(&label(py))
            );
        }
        out.push_str("</g>\n");
    }
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    footer(&mut out, c, x.log, &names);
    out
}

/// A grouped bar chart: `categories` along x; each series puts its bar for category `k` at
/// the point whose x is `k` (missing points leave a gap). The y axis starts at zero.
pub fn bars(c: &Chart, categories: &[String], series: &[Series]) -> String {
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    ys.push(0.0);
    let y = Axis::new(&ys, H - BOTTOM, TOP, f64::INFINITY, true, false);
    let mut out = String::new();
    header(&mut out, c, &y);
    let ncat = categories.len().max(1) as f64;
    let cat_w = (W - RIGHT - LEFT) / ncat;
    let bar_w = cat_w * 0.8 / series.len().max(1) as f64;
    for (k, name) in categories.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + cat_w * (k as f64 + 0.5),
            H - BOTTOM + 16.0,
            esc(name)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let _ = writeln!(out, r#"<g class="series" data-name="{}">"#, esc(&s.name));
        for &(k, v) in &s.points {
            if !(k.is_finite() && v.is_finite()) || k < 0.0 || k >= ncat {
                continue;
            }
            let x0 = LEFT + cat_w * (k.floor() + 0.1) + bar_w * i as f64;
            let (top, base) = (y.map(v.max(0.0)), y.map(0.0));
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{top:.1}" width="{bar_w:.1}" height="{:.1}" fill="{col}"><title>{}: {}</title></rect>"#,
                (base - top).max(0.0),
                esc(&s.name),
                esc(&label(v))
            );
        }
        out.push_str("</g>\n");
    }
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    footer(&mut out, c, false, &names);
    out
}

/// The series name of a row: its lock, plus its group when the rows hold several groups.
fn series_name(r: &Row, many_groups: bool) -> String {
    if many_groups && !r.group.is_empty() {
        format!("{} ({})", r.lock, r.group)
    } else {
        r.lock.clone()
    }
}

fn distinct<T: PartialEq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut v = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// Line chart of benchmark rows: x = threads, y = ops/s, one line per lock (+ group).
pub fn svg_lines(rows: &[Row], title: &str) -> String {
    let many = distinct(rows.iter().map(|r| &r.group)).len() > 1;
    let names = distinct(rows.iter().map(|r| series_name(r, many)));
    let series: Vec<Series> = names
        .into_iter()
        .map(|name| Series {
            points: rows
                .iter()
                .filter(|r| series_name(r, many) == name)
                .map(|r| (r.threads as f64, r.ops_per_sec))
                .collect(),
            name,
        })
        .collect();
    let c = Chart {
        title,
        x_label: "threads",
        y_label: "operations per second",
    };
    lines(&c, &series)
}

/// Bar chart of benchmark rows: one cluster per group (and thread count, when the rows hold
/// several), one bar per lock, y = ops/s.
// For grantbench, which plots one cluster per configuration.
#[allow(dead_code)]
pub fn svg_bars(rows: &[Row], title: &str) -> String {
    let many_threads = distinct(rows.iter().map(|r| r.threads)).len() > 1;
    let cat = |r: &Row| {
        if many_threads {
            format!("{} / {} thr", r.group, r.threads)
        } else {
            r.group.clone()
        }
    };
    let categories = distinct(rows.iter().map(cat));
    let names = distinct(rows.iter().map(|r| r.lock.clone()));
    let series: Vec<Series> = names
        .into_iter()
        .map(|name| Series {
            points: rows
                .iter()
                .filter(|r| r.lock == name)
                .filter_map(|r| {
                    let c = cat(r);
                    categories
                        .iter()
                        .position(|x| *x == c)
                        .map(|k| (k as f64, r.ops_per_sec))
                })
                .collect(),
            name,
        })
        .collect();
    let c = Chart {
        title,
        x_label: "",
        y_label: "operations per second",
    };
    bars(&c, &categories, &series)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that every element is closed in order and returns the element names seen.
    pub(crate) fn well_formed(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
            } else {
                let name = tag
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/');
                seen.push(name.to_string());
                if !tag.ends_with('/') {
                    stack.push(name.to_string());
                }
            }
            let text = &rest[end + 1
                ..rest[end + 1..]
                    .find('<')
                    .map_or(rest.len(), |i| i + end + 1)];
            assert!(!text.contains('>'), "unescaped '>' in text: {text}");
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert_eq!(seen.first().map(String::as_str), Some("svg"));
        seen
    }

    fn rows() -> Vec<Row> {
        let mut v = Vec::new();
        for (lock, base) in [("percpu", 3e9), ("std", 4e7), ("a<b&c", 1e6)] {
            for t in [1usize, 2, 8] {
                v.push(Row::new("lockbench", "read-only", lock, t, base / t as f64));
            }
        }
        v
    }

    #[test]
    fn line_chart_is_well_formed_with_one_series_per_lock() {
        let svg = svg_lines(&rows(), "rw <read-only>");
        well_formed(&svg);
        assert_eq!(svg.matches(r#"class="series""#).count(), 3);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 9);
        assert!(svg.contains(r#"data-name="a&lt;b&amp;c""#));
        assert!(svg.contains("(log)"), "3e9 vs 1.25e5 needs a log y axis");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn bar_chart_is_well_formed_and_handles_edge_cases() {
        let svg = svg_bars(&rows(), "bars");
        well_formed(&svg);
        assert_eq!(svg.matches(r#"class="series""#).count(), 3);
        assert_eq!(svg.matches("<title>").count(), 9);
        // Empty and degenerate inputs still give a valid document.
        for svg in [
            svg_lines(&[], "empty"),
            svg_bars(&[], "empty"),
            svg_lines(&[Row::new("b", "", "x", 1, 0.0)], "zero"),
        ] {
            well_formed(&svg);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }
}
