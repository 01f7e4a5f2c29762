//! `kho`: run a simulated live update, and inspect or validate real Linux KHO handovers.
//!
//! Exit codes (stable): 0 success; 1 an invalid handover or a failed verification; 2 a usage
//! error (bad arguments, unreadable input files).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod convert;
mod demo;
mod inspect;
mod memsrc;
mod report;

/// Kexec HandOver (KHO): keep memory intact across kexec, and check that it will be.
#[derive(Debug, Parser)]
#[command(name = "kho", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole simulated live update: preserve, kexec into a new process, restore, verify.
    Demo(demo::DemoArgs),
    /// Show what a handover preserves: format, sub-blobs, scratch areas, preserved memory.
    Inspect(inspect::InspectArgs),
    /// Check a handover with every incoming check; exit 1 and name each problem if invalid.
    Validate(inspect::InspectArgs),
    /// Rewrite a handover from one format to the other (kho-v1 <-> kho-v4).
    Convert(convert::ConvertArgs),
    /// Internal: the "next kernel" entry point that `kho demo` execs into.
    #[command(hide = true)]
    Kernel(demo::KernelArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Inspect(a) => inspect::run(a, inspect::Mode::Inspect),
        Command::Validate(a) => inspect::run(a, inspect::Mode::Validate),
        Command::Convert(a) => convert::run(a),
        Command::Kernel(a) => demo::kernel(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kho: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
