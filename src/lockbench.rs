//! `pvnet lockbench`.

/// Flags of `pvnet lockbench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("'lockbench' is not built yet")
}
