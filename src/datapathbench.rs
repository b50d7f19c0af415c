//! `pvnet datapathbench`.

/// Flags of `pvnet datapathbench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("'datapathbench' is not built yet")
}
