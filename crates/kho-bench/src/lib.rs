//! `kho bench`: the KHO engine measured against models of Linux 6.16's and Linux 7.3's
//! boot-time algorithms and against the hardware floor, all in the same run, with results
//! written as Markdown, JSON and log-log plots (PNG and SVG).
//!
//! See `docs/bench/README.md` for what each number means.

pub mod baseline;
pub mod platform;
pub mod plot;
pub mod report;
pub mod run;
pub mod shapes;
pub mod sim;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::baseline::PageMarks;
use crate::run::{Row, SweepConfig, human};
use crate::shapes::{Layout, Shape};

/// How much to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// 1 GiB and 4 GiB; CI's run-only check (well under 2 minutes on 2 cores).
    Small,
    /// 1 GiB to 1 TiB (needs about 4 GiB of memory and a few minutes).
    Full,
}

/// Options of `kho bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sweep size.
    pub size: Size,
    /// Where results go (`results.md`, `results.json`, plots); `None`: write nothing.
    pub out: Option<PathBuf>,
    /// The `kho` binary, to run `kho demo` for its blackout (`None`: skip).
    pub demo_exe: Option<PathBuf>,
    /// Only these shapes (names as in the tables); empty: all.
    pub only_shapes: Vec<String>,
    /// These sizes instead of the sweep's; empty: the sweep's.
    pub sizes: Vec<u64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Sweep size.
    pub size: Size,
    /// Host description.
    pub host: String,
    /// Sweep rows.
    pub rows: Vec<Row>,
    /// Targeted scattered cases (rows too, kept apart for the targets table).
    pub scattered: Vec<Row>,
    /// Simulated kexec blackout of a guest in 2 MiB folios (no exec).
    pub sim: Vec<sim::SimBlackout>,
    /// `kho demo` blackout per kexec (with exec).
    pub demo: Vec<sim::DemoKernel>,
    /// `kho demo` arguments used.
    pub demo_args: Vec<String>,
    /// Total run time, s.
    pub seconds: f64,
}

fn host() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    format!("{cpu}, {cores} cores")
}

/// Runs the benchmark; `log` receives progress lines.
///
/// # Errors
/// Writing the results or plots failed, or a simulated run failed.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let t0 = std::time::Instant::now();
    let gib = 1u64 << 30;
    #[allow(clippy::type_complexity)] // one tuple per sweep size, read once below
    let (sizes, scattered, guest, demo_args): (Vec<u64>, Vec<(u64, u64)>, u64, Vec<&str>) = match opts.size {
        Size::Small => (
            vec![gib, 4 * gib],
            vec![(4096, 64 * gib)],
            4 * gib,
            vec!["--guest", "128M", "--page-cache", "64M", "--table", "32M"],
        ),
        Size::Full => (
            vec![gib, 4 * gib, 16 * gib, 64 * gib, 256 * gib, 1024 * gib],
            vec![(65536, 1024 * gib), (1 << 21, 1024 * gib)],
            64 * gib,
            vec![],
        ),
    };
    let sizes = if opts.sizes.is_empty() { sizes } else { opts.sizes.clone() };
    let keep = |s: &Shape| opts.only_shapes.is_empty() || opts.only_shapes.contains(&s.name());
    let scattered: Vec<(u64, u64)> = scattered.into_iter().filter(|&(n, _)| keep(&Shape::Scattered(n))).collect();
    let sc = SweepConfig {
        sizes: sizes.clone(),
        shapes: [Shape::Order0, Shape::Huge2m, Shape::Giga1g, Shape::Mix, Shape::Sparse16m]
            .into_iter()
            .filter(|s| keep(s))
            .collect(),
        op_cap: if opts.size == Size::Small { 1 << 18 } else { 1 << 22 },
        baseline_budget: Duration::from_secs(if opts.size == Size::Small { 2 } else { 20 }),
        repeat_budget: Duration::from_millis(if opts.size == Size::Small { 100 } else { 300 }),
    };
    let max_span =
        sc.shapes.iter().flat_map(|&s| sizes.iter().map(move |&z| Layout::new(s, z).span_pages())).max().unwrap_or(1);
    log(&format!("model memmap for {} pages", max_span.min(1 << 28)));
    let mut marks = PageMarks::new(max_span);
    let mut rows = Vec::new();
    for &shape in &sc.shapes {
        for &size in &sc.sizes {
            let l = Layout::new(shape, size);
            if l.count == 0 {
                continue;
            }
            let row = run::measure(&l, &sc, &mut marks, log);
            log(&report::row_line(&row));
            rows.push(row);
        }
    }
    let mut scattered_rows = Vec::new();
    for &(count, span) in &scattered {
        let l = Layout::new(Shape::Scattered(count), span);
        let row = run::measure(&l, &sc, &mut marks, log);
        log(&report::row_line(&row));
        scattered_rows.push(row);
    }
    drop(marks);
    let mut sims = Vec::new();
    let guest = if opts.only_shapes.is_empty() { guest } else { 0 };
    for format in [kho_core::FormatVersion::V1, kho_core::FormatVersion::V4] {
        log(&format!("simulated kexec: {} guest in 2 MiB folios, {}", human(guest), format.compatible()));
        if guest > 0 {
            sims.push(sim::blackout(guest, format)?);
        }
    }
    let mut demo = Vec::new();
    if let Some(exe) = &opts.demo_exe {
        log(&format!("kho demo {}", demo_args.join(" ")));
        demo = sim::demo(exe, &demo_args)?;
    }
    let report = Report {
        size: opts.size,
        host: host(),
        rows,
        scattered: scattered_rows,
        sim: sims,
        demo,
        demo_args: demo_args.iter().map(|s| (*s).to_string()).collect(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &opts.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("results.json"), json + "\n").map_err(|e| e.to_string())?;
        std::fs::write(dir.join("results.md"), report::markdown(&report)).map_err(|e| e.to_string())?;
        plot::all(&report, dir)?;
    }
    Ok(report)
}
