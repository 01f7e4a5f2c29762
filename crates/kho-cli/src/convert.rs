//! `kho convert` (placeholder until it lands).
use std::process::ExitCode;

/// Arguments of `kho convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {}

pub fn run(_a: ConvertArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kho convert is not built yet")
}
