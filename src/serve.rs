//! `pvnet serve`.

/// Flags of `pvnet serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("'serve' is not built yet")
}
