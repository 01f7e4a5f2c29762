//! `kho inspect` / `kho validate` (placeholder until it lands).
use std::process::ExitCode;

/// Arguments shared by `kho inspect` and `kho validate`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {}

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inspect,
    Validate,
}

pub fn run(_a: InspectArgs, _m: Mode) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kho inspect is not built yet")
}
