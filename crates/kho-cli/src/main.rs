//! `kho`: run a simulated live update, and inspect or validate real Linux KHO handovers.
//!
//! Exit codes (stable): 0 success; 1 an invalid handover or a failed verification; 2 a usage
//! error (bad arguments, unreadable input files).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod convert;
mod demo;
mod inspect;
mod kexec;
mod live;
mod memsrc;
#[macro_use]
mod out;
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
    #[command(after_help = "Examples:
  kho demo                                   4 GiB sparse RAM, 1 GiB workload, 3 kexecs
  kho demo --ram 1T --kexecs 10 --json       a TiB host, ten live updates, one JSON report
  kho demo --format v1 --bitmap-bytes 4096   Linux 6.18's kho-v1 variant
  kho demo --next-max-order 8                next kernels support smaller folios (see README)
  kho demo --corrupt chunk                   a damaged handover: refused by name, cold boot, exit 1

Exit status: 0 every preserved byte verified; 1 a lost or corrupted byte or a refused
handover; 2 a usage error.")]
    Demo(demo::DemoArgs),
    /// Show what a handover preserves: format, sub-blobs, scratch areas, preserved memory.
    #[command(after_help = "Examples:
  sudo kho inspect                           this host's handover (debugfs + /proc/kcore)
  sudo kho inspect --incoming                the handover this kernel was booted with
  kho inspect --fdt fdt.dtb --elf vmcore --scratch-phys scratch_phys --scratch-len scratch_len
  kho inspect --setup-data kho_data.bin --mem ram.bin@0      FDT and scratch found in memory
  kho inspect --fdt fdt.dtb --mem ram.img.zst@0 --json       schema: docs/cli-json.md")]
    Inspect(inspect::InspectArgs),
    /// Check a handover with every incoming check; exit 1 and name each problem if invalid.
    #[command(after_help = "Examples:
  kho validate --fdt fdt.dtb --mem low.bin@0 --mem high.bin@0x100000000
  kho validate --fdt fdt.dtb --elf vmcore --max-order 10 --reject-oversized --json

Exit status: 0 valid; 1 invalid (every problem is named: field, address, value, expected);
2 a usage error (bad arguments, unreadable input).")]
    Validate(inspect::InspectArgs),
    /// Rewrite a handover from one format to the other (kho-v1 <-> kho-v4).
    #[command(after_help = "Example:
  kho convert --fdt fdt.dtb --mem ram.img@0 --to v1 --out-dir out/
  kho inspect --fdt out/fdt.dtb --mem out/mem.img@0           the same preserved set")]
    Convert(convert::ConvertArgs),
    /// Measure the engine against models of Linux 6.16 and 7.3 and the hardware floor.
    #[command(after_help = "Examples:
  kho bench                                  small sweep (1-4 GiB), results in docs/bench/
  kho bench --size full --out /tmp/b         1 GiB to 1 TiB (about 4 GiB of memory)
  kho bench --json --no-demo                 the report as JSON on stdout")]
    Bench(bench::BenchArgs),
    /// Load the next Linux with kexec_load and hand it memory preserved by this project's engine.
    #[command(after_help = "Examples:
  kho kexec --kernel bzImage --initrd initrd.cpio --append 'console=ttyS0 kho=on' --dry-run
  kho kexec --kernel bzImage --initrd initrd.cpio --append 'console=ttyS0 kho=on' --exec
  kho kexec ... --corrupt checksum --exec      TEST AID: the next Linux must refuse it

The zero page is built from /sys/kernel/boot_params/data (e820, screen_info, RSDP) and the
bzImage's setup header; scratch areas come from debugfs kho/out/scratch_phys and scratch_len
(or --scratch). With --handover test the next Linux's test_kho module verifies the folios and
prints \"KHO restore succeeded\". --corrupt (checksum|missing-folio|wrong-order|
unknown-compatible) is a test aid for negative controls: our own check must refuse the
handover too, and it is loaded anyway.

Exit status: 0 planned (and loaded unless --dry-run); 1 our own incoming side refused the
handover (or accepted a --corrupt one), nothing loaded; 2 a usage error or a failed load.")]
    Kexec(kexec::KexecArgs),
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
        Command::Bench(a) => bench::run(a),
        Command::Kexec(a) => kexec::run(a),
        Command::Kernel(a) => demo::kernel(a),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            errln!("kho: error: {e:#}");
            ExitCode::from(2)
        }
    };
    out::flush();
    code
}
