//! Tests of `pvnet-bench plot` (parsing, filters, medians, both chart kinds, errors).

use super::*;
use crate::plot::tests::well_formed;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    a: Args,
}

fn args(v: &[&str]) -> Args {
    Cli::try_parse_from(std::iter::once("plot").chain(v.iter().copied()))
        .expect("flags parse")
        .a
}

/// What scripts/compare.sh writes: one row per configuration per round.
const COMPARE: &str = "\
config,round,gbps,retransmits,status,qlock_slow_paths,qlock_spins,qlock_halts
percpu+pvqspin,1,2.0,0,ok,1,2,3
rwlock+qspin,1,1.0,0,ok,1,2,3
testpmd,1,0.0,0,failed,0,0,0
rwlock+qspin,2,3.0,0,ok,1,2,3
testpmd,2,0.0,0,failed,0,0,0
percpu+pvqspin,2,4.0,0,ok,1,2,3
percpu+pvqspin,3,9.0,0,ok,1,2,3
rwlock+qspin,3,9.0,5,failed: timeout,1,2,3
testpmd,3,0.0,0,failed,0,0,0
";

fn points(g: &Grouped) -> Vec<(String, Vec<(String, f64)>)> {
    g.series.clone()
}

#[test]
fn medians_per_x_over_the_rows_kept_by_where() {
    let a = args(&[
        "r.csv",
        "--x",
        "config",
        "--y",
        "gbps",
        "--where",
        "status=ok",
    ]);
    let g = group(&Table::parse(COMPARE).unwrap(), &a).unwrap();
    // testpmd never ran ok: no category, no bar.
    assert_eq!(g.xs, ["percpu+pvqspin", "rwlock+qspin"]);
    assert_eq!(
        points(&g),
        [(
            "gbps".to_string(),
            vec![
                ("percpu+pvqspin".to_string(), 4.0), // median of 2, 4, 9
                ("rwlock+qspin".to_string(), 2.0),   // median of 1, 3 (round 3 failed)
            ]
        )]
    );
}

#[test]
fn x_values_fix_the_categories_and_keep_empty_ones() {
    let a = args(&[
        "r.csv",
        "--x",
        "config",
        "--y",
        "gbps",
        "--where",
        "status=ok",
        "--x-values",
        "testpmd,rwlock+qspin,percpu+pvqspin",
        "--title",
        "a <b> & c",
    ]);
    let svg = render(COMPARE, &a).unwrap();
    well_formed(&svg);
    // Three category labels, two bars (testpmd has none), the medians in the tooltips.
    for c in ["testpmd", "rwlock+qspin", "percpu+pvqspin"] {
        assert!(svg.contains(&format!(">{c}</text>")), "{c} missing: {svg}");
    }
    assert_eq!(svg.matches("<title>").count(), 2, "{svg}");
    assert!(svg.contains("<title>gbps: 4</title>") && svg.contains("<title>gbps: 2</title>"));
    assert!(svg.contains("a &lt;b&gt; &amp; c"));
    // The bar of rwlock+qspin sits in the second category slot, left of percpu+pvqspin's.
    let x_of = |v: &str| -> f64 {
        let at = svg.find(&format!("<title>gbps: {v}</title>")).unwrap();
        let rect = svg[..at].rfind("<rect x=\"").unwrap() + 9;
        svg[rect..].split('"').next().unwrap().parse().unwrap()
    };
    assert!(x_of("2") < x_of("4"));
}

#[test]
fn quoted_csv_fields_and_series() {
    let csv = "label,threads,rate\n\"a,b \"\"q\"\"\",1,10\n\"a,b \"\"q\"\"\",2,20\nc,1,5\n";
    let a = args(&[
        "r.csv", "--kind", "lines", "--x", "threads", "--y", "rate", "--series", "label",
    ]);
    let g = group(&Table::parse(csv).unwrap(), &a).unwrap();
    assert_eq!(g.series.len(), 2);
    assert_eq!(g.series[0].0, "a,b \"q\"");
    assert_eq!(g.series[0].1.len(), 2);
    let svg = render(csv, &a).unwrap();
    well_formed(&svg);
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("data-name=\"a,b &quot;q&quot;\""));
}

#[test]
fn json_lines_as_lockbench_prints_them() {
    let json = r#"{"bench":"lockbench","lock":"percpu","group":"ro","threads":1,"ops_per_sec":1e8,"ratio":1.0}
{"bench":"lockbench","lock":"percpu","group":"ro","threads":2,"ops_per_sec":2e8,"ratio":1.0}
{"bench":"lockbench","lock":"rwlock","group":"ro","threads":1,"ops_per_sec":5e7,"ratio":0.5}

{"bench":"lockbench","lock":"rwlock","group":"ro","threads":2,"ops_per_sec":2e7,"ratio":0.1}
"#;
    let a = args(&[
        "r.json",
        "--kind",
        "lines",
        "--x",
        "threads",
        "--y",
        "ops_per_sec",
        "--series",
        "lock",
    ]);
    let svg = render(json, &a).unwrap();
    well_formed(&svg);
    assert_eq!(svg.matches("<circle").count(), 4);
    assert!(
        svg.contains(">threads</text>"),
        "x label defaults to the column"
    );
}

#[test]
fn errors_name_the_problem() {
    let t = Table::parse(COMPARE).unwrap();
    let e = group(&t, &args(&["r", "--x", "cfg", "--y", "gbps"]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("--x cfg: no such column") && e.contains("config"),
        "{e}"
    );
    let e = render(COMPARE, &args(&["r", "--x", "round", "--y", "status"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'ok' is not a number"), "{e}");
    let e = render(
        COMPARE,
        &args(&["r", "--kind", "lines", "--x", "config", "--y", "gbps"]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--x config") && e.contains("not a number"),
        "{e}"
    );
    assert!(Cli::try_parse_from(["plot", "r", "--x", "a", "--y", "b", "--where", "x"]).is_err());
    assert!(render("", &args(&["r", "--x", "a", "--y", "b"])).is_err());
    assert!(render(
        "{\"a\":1}\nnot json\n",
        &args(&["r", "--x", "a", "--y", "a"])
    )
    .is_err());
}
