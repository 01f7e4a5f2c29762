//! `kho bench`: runs the kho-bench sweep (engine against models of Linux 6.16 and 7.3 and the
//! hardware floor) and writes docs/bench/results.{md,json} and plots.

use std::path::PathBuf;
use std::process::ExitCode;

const CHILD: &str = "KHO_BENCH_CHILD";
const TUNABLES: &str = "glibc.malloc.trim_threshold=68719476736:glibc.malloc.mmap_threshold=33554432";

/// Arguments of `kho bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `small` (1-4 GiB, under 2 minutes; what CI runs) or `full` (1 GiB to 1 TiB).
    #[arg(long, default_value = "small", value_parser = ["small", "full"])]
    size: String,
    /// Print the whole report as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Directory for results.md, results.json and the plots.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Skip the `kho demo` run (its blackout with a real exec).
    #[arg(long = "no-demo")]
    no_demo: bool,
    /// Only these shapes (order0, 2m, 1g, mix, 1-per-16m, scattered-N); skips the
    /// simulated kexec.
    #[arg(long = "shape", value_delimiter = ',')]
    shapes: Vec<String>,
    /// Sizes instead of the sweep's, e.g. 64G,1T.
    #[arg(long = "sizes", value_delimiter = ',', value_parser = crate::demo::parse_size)]
    sizes: Vec<u64>,
}

/// Runs the benchmark.
///
/// # Errors
/// A failed measurement or an unwritable output directory.
pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    // glibc gives freed heap memory back to the kernel, so every timed run that allocates
    // (the incoming index: 32 MiB per TiB at order 0) would pay page faults and zeroing that
    // a kernel, allocating from its mapped direct map, does not. Run the sweep in a child
    // with trimming off and large blocks kept on the heap.
    if std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe()?;
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(CHILD, "1")
            .env("GLIBC_TUNABLES", TUNABLES)
            .status()?;
        return Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(2)).unwrap_or(2)));
    }
    let size = if a.size == "full" { kho_bench::Size::Full } else { kho_bench::Size::Small };
    let demo_exe = if a.no_demo { None } else { std::env::current_exe().ok() };
    let opts = kho_bench::Options { size, out: Some(a.out.clone()), demo_exe, only_shapes: a.shapes, sizes: a.sizes };
    let report = kho_bench::run(&opts, &mut |line| eprintln!("{line}")).map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for h in kho_bench::report::headline(&report) {
            println!("{h}");
        }
        println!("results: {}/results.md, results.json, boot-*.png/svg", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
