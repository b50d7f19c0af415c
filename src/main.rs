//! `pvnet`: a vhost-user multi-queue virtual switch for QEMU guests.
//!
//! The benchmarks of its locks, grant table and data path live in the `pvnet-bench` crate
//! (`bench/`).

mod ctl;
mod serve;

use clap::{Parser, Subcommand};

/// pvnet — a vhost-user multi-queue network backend that switches Ethernet frames between
/// QEMU guests. With no subcommand it runs the switch.
#[derive(Debug, Parser)]
#[command(name = "pvnet", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: serve::Args,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the switch (the default when no subcommand is given).
    Serve(serve::Args),
    /// Talk to a running switch through its control socket.
    Ctl(ctl::Args),
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
            eprintln!("pvnet: {}", first.trim_start_matches("error: "));
            std::process::exit(2);
        }
        Err(e) => {
            // Help and version go to stdout, exit 0.
            e.exit();
        }
    };
    let res = match cli.cmd {
        None => serve::run(cli.serve),
        Some(Cmd::Serve(a)) => serve::run(a),
        Some(Cmd::Ctl(a)) => ctl::run(a),
    };
    if let Err(e) = res {
        eprintln!("pvnet: {e:#}");
        std::process::exit(1);
    }
}
