//! End-to-end tests of the `pvnet-bench` binary's command line (tiny runs only: the figures
//! of these runs mean nothing, the tests check that each subcommand runs and prints its rows).

use std::path::PathBuf;
use std::process::{Command, Output};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvnet-bench"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvnet-bench-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn stdout(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

#[test]
fn help_lists_every_subcommand() {
    let s = stdout(&bench().arg("--help").output().expect("run"));
    for c in [
        "lockbench",
        "grantbench",
        "switchbench-report",
        "plot",
        "xcpu",
    ] {
        assert!(s.contains(c), "{c} missing from --help: {s}");
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        &["lockbench", "--mode", "bogus"][..],
        &["plot"][..],
        &[
            "plot", "f.csv", "--x", "a", "--y", "b", "--where", "nocolumn",
        ][..],
        &["no-such-command"][..],
        &["xcpu", "--cpus", "0,0"][..],
        &["xcpu", "--cpus", "0"][..],
    ] {
        let out = bench().args(args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.starts_with("pvnet-bench: "), "{err}");
    }
}

#[test]
fn lockbench_tiny_run_prints_json_rows() {
    let out = bench()
        .args(["lockbench", "--mode", "spin", "--locks", "qspin,tas"])
        .args([
            "--threads",
            "1",
            "--secs",
            "0.02",
            "--rounds",
            "1",
            "--format",
            "json",
        ])
        .output()
        .expect("run");
    let s = stdout(&out);
    let rows: Vec<serde_json::Value> = s
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON row"))
        .collect();
    assert_eq!(rows.len(), 2, "{s}");
    assert_eq!(rows[0]["lock"], "qspin");
    assert!(rows.iter().all(|r| r["ops_per_sec"].as_f64() > Some(0.0)));
}

#[test]
fn plot_writes_an_svg_of_a_results_file_and_fails_cleanly() {
    let d = tmpdir("plot");
    let csv = d.join("results.csv");
    std::fs::write(
        &csv,
        "config,round,gbps,status\na,1,1.5,ok\nb,1,3,ok\na,2,2.5,ok\nb,2,0,failed\n",
    )
    .expect("write");
    let svg = d.join("chart.svg");
    let out = bench()
        .arg("plot")
        .arg(&csv)
        .args(["--x", "config", "--y", "gbps", "--where", "status=ok"])
        .args(["--title", "t", "--out"])
        .arg(&svg)
        .output()
        .expect("run");
    assert_eq!(stdout(&out), "", "--out writes nothing to stdout");
    let s = std::fs::read_to_string(&svg).expect("chart written");
    assert!(
        s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
        "{s}"
    );
    assert!(s.contains("<title>gbps: 2</title>") && s.contains("<title>gbps: 3</title>"));
    // A missing file or column: exit 1, one line naming it.
    let out = bench()
        .arg("plot")
        .arg(d.join("missing.csv"))
        .args(["--x", "config", "--y", "gbps"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing.csv"), "{err}");
    let out = bench()
        .arg("plot")
        .arg(&csv)
        .args(["--x", "nope", "--y", "gbps"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--x nope: no such column"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn xcpu_prints_one_round_trip_line() {
    let s = stdout(
        &bench()
            .args(["xcpu", "--cpus", "0,1", "--trips", "100", "--batches", "3"])
            .output()
            .expect("run"),
    );
    let line = s.trim_end();
    assert_eq!(line.lines().count(), 1, "{s}");
    let ns: f64 = line
        .strip_prefix("xcpu_rtt_ns=")
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no xcpu_rtt_ns=<ns> first: {s}"));
    assert!(ns.is_finite() && ns > 0.0, "{s}");
    assert!(line.contains(" cpus=0,1 trips=100 batches=3"), "{s}");
}
