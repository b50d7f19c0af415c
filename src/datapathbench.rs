//! `pvnet datapathbench`: the switching benchmark lives in the backend's bench target, which
//! brings its own in-process vhost-user guests; this subcommand says how to run it.

/// Flags of `pvnet datapathbench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "the datapath benchmark runs as a bench target: \
         cargo bench -p pvnet-backend --bench datapath -- [SECS [ROUNDS]]"
    )
}
