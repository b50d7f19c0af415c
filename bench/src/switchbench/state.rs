//! The report split by machine state. On a virtual machine the host may move the switch's and
//! the client's CPUs apart for minutes (a cache line's round trip between them, measured by
//! `pvnet-bench xcpu` before and after every run, goes from ~100 ns to ~500): both switches
//! slow down, by different amounts, so a median over runs of both states compares neither.
//! This table takes the medians and ratios again over the runs of each state alone.

use super::{case_cells, markdown, num, summarize, Run, Summary, CASE_HEAD};

/// A run whose round trip (the larger of before and after) stayed below this many ns ran
/// in the near state; any other measured run in the far state (or while the state changed).
/// The default of `--near-xcpu-ns`: an AMD EPYC VM's near state read 60–110 ns, its far
/// ~500; an Intel Xeon VM's usual state reads 250–380 ns.
pub const NEAR_XCPU_NS: f64 = 300.0;

/// The near / far table, or `None` when the runs do not show both states (the main table then
/// compares runs of one state already, or no round trip was measured).
pub(super) fn render(runs: &[Run], near_ns: f64) -> Option<String> {
    let (near, far): (Vec<Run>, Vec<Run>) = runs
        .iter()
        .filter(|r| r.xcpu_ns.is_some())
        .cloned()
        .partition(|r| r.xcpu_ns.is_some_and(|x| x < near_ns));
    if near.iter().all(|r| !r.ok) || far.iter().all(|r| !r.ok) {
        return None;
    }
    let (near, far) = (summarize(&near), summarize(&far));
    let head: Vec<&str> = CASE_HEAD
        .iter()
        .chain(&[
            "near runs",
            "Mpps",
            "ns/frame",
            "ratio",
            "far runs",
            "Mpps",
            "ns/frame",
            "ratio",
        ])
        .copied()
        .collect();
    let rows: Vec<Vec<String>> = summarize(runs)
        .iter()
        .map(|s| {
            let mut row = case_cells(s);
            for part in [&near, &far] {
                row.extend(cells(
                    part.iter()
                        .find(|p| p.case == s.case && p.config == s.config),
                ));
            }
            row
        })
        .collect();
    let right = [
        true, true, false, false, false, false, true, true, true, true, true, true, true, true,
    ];
    let mut o = format!(
        "\nBy machine state (near: cross-CPU round trip below {near_ns:.0} ns before and after \
         the run; far: above, or changing during it); medians and ratios over the good runs \
         of each state:\n"
    );
    o.push_str(&markdown(&head, &rows, &right));
    Some(o)
}

/// Good runs, median Mpps, CPU ns per frame and ratio of one state ("-" without good runs).
fn cells(s: Option<&Summary>) -> [String; 4] {
    match s.filter(|s| s.runs_ok > 0) {
        Some(s) => [
            s.runs_ok.to_string(),
            num(s.mpps, 3),
            num(s.cpu_ns_per_frame, 0),
            s.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
        ],
        None => ["0".into(), "-".into(), "-".into(), "-".into()],
    }
}
