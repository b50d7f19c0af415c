//! Tests of `pvnet-bench switchbench-report` (parsing, medians, ratios, every output format).

use super::*;

const RUNS: &str = "\
round,size,pairs,loop,dest,flows,config,switch,status,mpps,gbps,reports,window_s,frames,cpu_s,ctxsw,tx_kicks,rx_kicks,full_ring_drops,other_drops,drops,switch_cpu_other_pct,client_cpu_other_pct
1,64,1,closed,learned,many,pvnet,pvnet,ok,1.0,0.5,5,5.0,5000000,5.0,500,1000,2000,0,0,,1.5,0.5
1,64,1,closed,learned,many,testpmd,testpmd,ok,4.0,2.0,5,5.0,20000000,5.0,10,,,0,0,,1.5,0.5
2,64,1,closed,learned,many,pvnet,pvnet,ok,1.2,0.6,5,5.0,6000000,4.8,600,1200,2400,3,0,rx_full_timeout=3,1.5,0.5
2,64,1,closed,learned,many,testpmd,testpmd,ok,3.0,1.5,5,5.0,15000000,5.0,10,,,0,0,,1.5,0.5
3,64,1,closed,learned,many,pvnet,pvnet,failed: pvnet dropped 2 frames,0.9,0.4,5,5.0,4500000,5.0,500,900,1800,0,2,no_dest=2,1.5,0.5
3,64,1,closed,learned,many,testpmd,testpmd,retried,50.0,25,5,5.0,25000000,5.0,10,,,0,0,,90,1
3,64,1,closed,learned,many,testpmd,testpmd,ok,5.0,2.5,5,5.0,25000000,5.0,10,,,0,0,,1.5,0.5
";

#[test]
fn medians_ratios_and_per_frame_figures() {
    let sums = summarize(&parse_runs(RUNS).unwrap());
    assert_eq!(sums.len(), 2);
    let p = &sums[0];
    assert_eq!((p.config.as_str(), p.runs_ok, p.runs), ("pvnet", 2, 3));
    // Only the two good runs count: median of 1.0 and 1.2.
    assert!((p.mpps - 1.1).abs() < 1e-9, "{p:?}");
    // testpmd: median of 4, 3, 5 = 4; ratio 1.1 / 4.
    assert!((sums[1].mpps - 4.0).abs() < 1e-9);
    assert!((p.ratio.unwrap() - 1.1 / 4.0).abs() < 1e-9);
    assert_eq!(sums[1].ratio, None);
    // CPU per frame: 5 s / 5e6 = 1000 ns and 4.8 s / 6e6 = 800 ns -> 900.
    assert!((p.cpu_ns_per_frame - 900.0).abs() < 1e-6);
    // Kicks per 1000 frames: 0.2 tx and 0.4 rx in both good runs.
    let (t, r) = p.kicks_per_kframe.unwrap();
    assert!((t - 0.2).abs() < 1e-9 && (r - 0.4).abs() < 1e-9);
    assert!(
        sums[1].kicks_per_kframe.is_none(),
        "testpmd counts no kicks"
    );
    // Drops are summed over every run, failed ones included.
    assert_eq!((p.full_ring_drops, p.other_drops), (3, 2));
    let drops: Vec<(&str, u64)> = p.drops.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(drops, [("no_dest", 2), ("rx_full_timeout", 3)]);
    assert_eq!(p.mpps_rounds[..2], [1.0, 1.2]);
    assert!(p.mpps_rounds[2].is_nan(), "a failed round has no figure");
    assert_eq!(p.other_load, Some((1.5, 0.5)));
}

#[test]
fn every_format_renders_every_row() {
    let sums = summarize(&parse_runs(RUNS).unwrap());
    let idle =
        parse_idle("config,switch,pairs,secs,cpu_s,ctxsw,status\npvnet,pvnet,8,10.0,0.05,40,ok\n")
            .unwrap();
    let text = render_text(&sums, &idle);
    assert!(text.contains("0.28x"), "{text}");
    assert!(text.contains("no_dest=2 rx_full_timeout=3"), "{text}");
    assert!(
        text.contains("1.00 1.20 -"),
        "failed round shown as '-': {text}"
    );
    assert!(
        text.contains("|     64 |     1 | closed | learned |"),
        "{text}"
    );
    assert!(text.contains("|-------:|"), "{text}");
    assert!(text.contains("0.5"), "idle CPU %: {text}");
    let csv = render_csv(&sums, &idle);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    let ncol = CSV_HEAD.split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == ncol), "{csv}");
    let json = render_json(&sums, &idle);
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["kind"] == "case" || v["kind"] == "idle");
    }
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["mpps_rounds"], serde_json::json!([1.0, 1.2, null]));
    let svg = svg(&sums);
    assert!(svg.starts_with("<svg") && svg.contains("testpmd"));
    assert!(svg.contains(">64B 1q<"), "{svg}");
}

#[test]
fn bad_input_is_an_error_with_its_line() {
    let bad = RUNS.replace(
        "1,64,1,closed,learned,many,pvnet,pvnet,ok,1.0",
        "1,64,x,closed,learned,many,pvnet,pvnet,ok,1.0",
    );
    let e = format!("{:#}", parse_runs(&bad).unwrap_err());
    assert!(e.contains("line 2") && e.contains("pairs"), "{e}");
    assert!(parse_runs("").is_err());
    let e = format!("{:#}", parse_runs("round,size\n1,64\n").unwrap_err());
    assert!(e.contains("no column"), "{e}");
}

#[test]
fn cross_cpu_round_trips_are_shown_per_round() {
    // The script's newer columns: each run's round trip before and after it (the larger
    // counts); a run without them (older runs.csv) shows '-', and files without the
    // columns at all still parse.
    let runs = "\
round,size,pairs,loop,dest,flows,config,switch,status,mpps,gbps,reports,window_s,frames,cpu_s,ctxsw,tx_kicks,rx_kicks,full_ring_drops,other_drops,drops,switch_cpu_other_pct,client_cpu_other_pct,xcpu_before_ns,xcpu_after_ns
1,64,1,closed,learned,many,pvnet,pvnet,ok,12.0,6,5,5.0,60000000,5.0,10,0,0,0,0,,0,0,101.4,98.0
2,64,1,closed,learned,many,pvnet,pvnet,ok,6.0,3,5,5.0,30000000,5.0,10,0,0,0,0,,0,0,104.0,523.6
3,64,1,closed,learned,many,pvnet,pvnet,ok,12.2,6,5,5.0,61000000,5.0,10,0,0,0,0,,0,0,,
";
    let sums = summarize(&parse_runs(runs).unwrap());
    assert_eq!(sums[0].xcpu_rounds, [Some(101.4), Some(523.6), None]);
    assert_eq!(xcpu_median(&sums[0]), Some((101.4 + 523.6) / 2.0));
    let text = render_text(&sums, &[]);
    assert!(text.contains("101 524 -"), "{text}");
    let csv = render_csv(&sums, &[]);
    assert!(
        csv.lines().nth(1).unwrap().ends_with(",312.5000,,,"),
        "{csv}"
    );
    let json: serde_json::Value = serde_json::from_str(render_json(&sums, &[]).trim()).unwrap();
    assert_eq!(
        json["xcpu_rtt_ns_rounds"],
        serde_json::json!([101.4, 523.6, null])
    );
    // Without the columns.
    let sums = summarize(&parse_runs(RUNS).unwrap());
    assert!(sums[0].xcpu_rounds.iter().all(Option::is_none));
    assert_eq!(xcpu_median(&sums[0]), None);
}

#[test]
fn frames_per_burst_from_the_window_counts() {
    // pvnet's TX frames and bursts in each run's window: 64 and 32 frames per burst, median
    // 48; testpmd has none ('-', empty, null); files without the columns still parse.
    let runs = "\
round,size,pairs,loop,dest,flows,config,switch,status,mpps,gbps,reports,window_s,frames,cpu_s,ctxsw,tx_kicks,rx_kicks,full_ring_drops,other_drops,drops,switch_cpu_other_pct,client_cpu_other_pct,xcpu_before_ns,xcpu_after_ns,sw_tx_frames,tx_bursts
1,64,1,closed,learned,many,pvnet,pvnet,ok,12.0,6,5,5.0,60000000,5.0,10,0,0,0,0,,0,0,100,100,6400,100
1,64,1,closed,learned,many,testpmd,testpmd,ok,20.0,10,5,5.0,100000000,5.0,10,,,0,0,,0,0,100,100,,
2,64,1,closed,learned,many,pvnet,pvnet,ok,6.0,3,5,5.0,30000000,5.0,10,0,0,0,0,,0,0,100,100,3200,100
";
    let sums = summarize(&parse_runs(runs).unwrap());
    assert_eq!(sums[0].frames_per_burst, Some(48.0));
    assert_eq!(sums[1].frames_per_burst, None);
    let text = render_text(&sums, &[]);
    let col = |line: &str| line.split('|').nth(15).map(str::trim).map(String::from);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(col(lines[0]).as_deref(), Some("frames/burst"), "{text}");
    assert_eq!(col(lines[2]).as_deref(), Some("48.0"), "{text}");
    assert_eq!(col(lines[3]).as_deref(), Some("-"), "{text}");
    let csv = render_csv(&sums, &[]);
    assert!(csv.lines().nth(1).unwrap().ends_with(",48.0000,,"), "{csv}");
    assert!(csv.lines().nth(2).unwrap().ends_with(",,,"), "{csv}");
    let json: Vec<serde_json::Value> = render_json(&sums, &[])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json[0]["frames_per_burst"], serde_json::json!(48.0));
    assert!(json[1]["frames_per_burst"].is_null());
    let old = summarize(&parse_runs(RUNS).unwrap());
    assert!(old.iter().all(|s| s.frames_per_burst.is_none()));
}

#[test]
fn runs_are_compared_again_within_each_machine_state() {
    // Near (both round trips < 300 ns): pvnet 10 and 12 vs testpmd 20 -> 0.55x; far: pvnet 9
    // vs testpmd 20 and 10 (a run whose state changed counts as far) -> 0.60x. The all-runs
    // medians mix them: pvnet 10, testpmd 20 -> 0.50x, a ratio no state showed.
    let runs = "\
round,size,pairs,loop,dest,flows,config,switch,status,mpps,gbps,reports,window_s,frames,cpu_s,ctxsw,tx_kicks,rx_kicks,full_ring_drops,other_drops,drops,switch_cpu_other_pct,client_cpu_other_pct,xcpu_before_ns,xcpu_after_ns
1,64,1,closed,learned,many,pvnet,pvnet,ok,10.0,5,5,5.0,50000000,5.0,10,0,0,0,0,,0,0,100,110
1,64,1,closed,learned,many,testpmd,testpmd,ok,20.0,10,5,5.0,100000000,5.0,10,,,0,0,,0,0,100,500
2,64,1,closed,learned,many,pvnet,pvnet,ok,9.0,4,5,5.0,45000000,5.0,10,0,0,0,0,,0,0,510,520
2,64,1,closed,learned,many,testpmd,testpmd,ok,10.0,5,5,5.0,50000000,5.0,10,,,0,0,,0,0,500,490
3,64,1,closed,learned,many,pvnet,pvnet,ok,12.0,6,5,5.0,60000000,5.0,10,0,0,0,0,,0,0,90,95
3,64,1,closed,learned,many,testpmd,testpmd,ok,20.0,10,5,5.0,100000000,5.0,10,,,0,0,,0,0,100,100
";
    let runs = parse_runs(runs).unwrap();
    let all = summarize(&runs);
    assert!((all[0].ratio.unwrap() - 0.5).abs() < 1e-9);
    let text = state::render(&runs, state::NEAR_XCPU_NS).expect("both states");
    let pvnet = text
        .lines()
        .find(|l| l.contains("| pvnet"))
        .expect("pvnet row");
    let cells: Vec<&str> = pvnet.split('|').map(str::trim).collect();
    // | frames | pairs | loop | dest | flows | switch | near runs, Mpps, ns, ratio | far ...
    assert_eq!(
        &cells[7..15],
        ["2", "11.000", "92", "0.55x", "1", "9.000", "111", "0.60x"]
    );
    // One state only (or no round trips): nothing to add.
    let near_only: Vec<Run> = runs
        .iter()
        .filter(|r| r.xcpu_ns.is_some_and(|x| x < 300.0))
        .cloned()
        .collect();
    assert!(state::render(&near_only, state::NEAR_XCPU_NS).is_none());
    // A machine whose usual state is slower (--near-xcpu-ns 600): every run near, one state.
    assert!(state::render(&runs, 600.0).is_none());
    assert!(state::render(&parse_runs(RUNS).unwrap(), state::NEAR_XCPU_NS).is_none());
}

#[test]
fn busy_time_per_frame_and_client_share_from_the_runs() {
    // The switch's busy ns per frame and the client's busy share: medians over the good runs
    // (pvnet 30 and 40 -> 35, client 60 and 70 -> 65; testpmd 50 and 80 in its one run); a
    // case whose runs did not all measure them shows none, and older files still parse.
    let runs = "\
round,size,pairs,loop,dest,flows,config,switch,status,mpps,gbps,reports,window_s,frames,cpu_s,ctxsw,tx_kicks,rx_kicks,full_ring_drops,other_drops,drops,switch_cpu_other_pct,client_cpu_other_pct,xcpu_before_ns,xcpu_after_ns,sw_tx_frames,tx_bursts,sw_busy_ns_per_frame,client_busy_pct
1,64,1,closed,learned,many,pvnet,pvnet,ok,12.0,6,5,5.0,60000000,5.0,10,0,0,0,0,,0,0,100,100,6400,100,30,60
1,64,1,closed,learned,many,testpmd,testpmd,ok,20.0,10,5,5.0,100000000,5.0,10,,,0,0,,0,0,100,100,,,50,80
2,64,1,closed,learned,many,pvnet,pvnet,ok,6.0,3,5,5.0,30000000,5.0,10,0,0,0,0,,0,0,100,100,3200,100,40,70
1,64,2,closed,learned,many,pvnet,pvnet,ok,6.0,3,5,5.0,30000000,5.0,10,0,0,0,0,,0,0,100,100,3200,100,40,
";
    let sums = summarize(&parse_runs(runs).unwrap());
    assert_eq!(
        (sums[0].busy_ns_per_frame, sums[0].client_busy_pct),
        (Some(35.0), Some(65.0))
    );
    assert_eq!(
        (sums[1].busy_ns_per_frame, sums[1].client_busy_pct),
        (Some(50.0), Some(80.0))
    );
    assert_eq!(sums[2].busy_ns_per_frame, Some(40.0));
    assert_eq!(sums[2].client_busy_pct, None);
    let text = render_text(&sums, &[]);
    let cells = |line: &str| -> Vec<String> {
        line.split('|')
            .skip(12)
            .take(2)
            .map(|c| c.trim().to_string())
            .collect()
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        cells(lines[0]),
        ["busy ns/frame", "client busy %"],
        "{text}"
    );
    assert_eq!(cells(lines[2]), ["35", "65"], "{text}");
    assert_eq!(cells(lines[4]), ["40", "-"], "{text}");
    let csv = render_csv(&sums, &[]);
    assert!(
        csv.lines().nth(1).unwrap().ends_with(",35.0000,65.0000"),
        "{csv}"
    );
    let json: Vec<serde_json::Value> = render_json(&sums, &[])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json[1]["busy_ns_per_frame"], serde_json::json!(50.0));
    assert!(json[2]["client_busy_pct"].is_null());
    let old = summarize(&parse_runs(RUNS).unwrap());
    assert!(old.iter().all(|s| s.busy_ns_per_frame.is_none()));
}
