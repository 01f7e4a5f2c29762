//! `kho demo` (owned by the simulator work; placeholder until it lands).
use std::process::ExitCode;

/// Arguments of `kho demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Arguments of the hidden `kho kernel` entry point.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {}

pub fn run(_a: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kho demo is not built yet")
}

pub fn kernel(_a: KernelArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kho kernel is not built yet")
}
