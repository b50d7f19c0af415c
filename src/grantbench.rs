//! `pvnet grantbench`.

/// Flags of `pvnet grantbench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("'grantbench' is not built yet")
}
