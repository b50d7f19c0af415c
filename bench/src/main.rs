//! `pvnet-bench`: pvnet's benchmarks and the renderers of their results.
//!
//! * `lockbench`: lock scaling, every rwlock and spinlock kind side by side ([`lockbench`]);
//! * `grantbench`: grant-table lookups and grant copies per rwlock kind ([`grantbench`]);
//! * `switchbench-report`: table and chart of `scripts/switchbench.sh`'s runs
//!   ([`switchbench`]);
//! * `xcpu`: the round trip of a cache line between two CPUs ([`xcpu`]), which
//!   `scripts/switchbench.sh` records before every run;
//! * `plot`: an SVG chart of any CSV or JSON-lines results file ([`plotfile`]), e.g.
//!   `scripts/compare.sh`'s `results.csv`.
//!
//! Results are [`rows::Row`]s (lockbench, grantbench) rendered as a table, CSV or JSON lines,
//! and charted by [`plot`]. The criterion benches (`benches/locks.rs`, `benches/grant.rs`)
//! measure single-thread costs of the same locks and tables.

mod grantbench;
mod lockbench;
mod pin;
mod plot;
mod plotfile;
mod rows;
mod switchbench;
mod xcpu;

use clap::{Parser, Subcommand};

/// pvnet-bench — benchmarks of pvnet's locks, grant table and switch.
#[derive(Debug, Parser)]
#[command(name = "pvnet-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lock scaling benchmark: rwlock and spinlock kinds side by side.
    Lockbench(lockbench::Args),
    /// Grant-table lookup and copy benchmark, per rwlock kind.
    Grantbench(grantbench::Args),
    /// Table and chart of scripts/switchbench.sh's runs (medians, ratios to DPDK testpmd).
    SwitchbenchReport(switchbench::Args),
    /// SVG chart of a CSV or JSON-lines results file (medians over repeated rows).
    Plot(plotfile::Args),
    /// Round trip of one cache line between two CPUs (ns), as switchbench records it.
    Xcpu(xcpu::Args),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // A usage error: one line on stderr, exit code 2 (clap's own rendering adds a
            // usage block and hints over several lines).
            let msg = e.kind().to_string();
            let first = e.to_string();
            let first = first.lines().next().unwrap_or(&msg);
            eprintln!("pvnet-bench: {}", first.trim_start_matches("error: "));
            std::process::exit(2);
        }
        Err(e) => {
            // Help and version go to stdout, exit 0.
            e.exit();
        }
    };
    // Warnings (a CPU that cannot be pinned, a lock kind built as another) on stderr;
    // RUST_LOG=debug shows each measurement as it is taken.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_default_env()
        .try_init();
    let res = match cli.cmd {
        Cmd::Lockbench(a) => lockbench::run(a),
        Cmd::Grantbench(a) => grantbench::run(a),
        Cmd::SwitchbenchReport(a) => switchbench::run(a),
        Cmd::Plot(a) => plotfile::run(a),
        Cmd::Xcpu(a) => xcpu::run(a),
    };
    if let Err(e) = res {
        eprintln!("pvnet-bench: {e:#}");
        std::process::exit(1);
    }
}
