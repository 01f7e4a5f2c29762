//! `kho demo`: a whole simulated live update. This process is the machine's "firmware" and
//! supervisor: it creates the sparse RAM file and an anonymous results file (a memfd), writes
//! a cold boot block, and starts the first kernel (`kho kernel`, hidden) as a child with both
//! descriptors inherited. That kernel fills a workload, preserves it, finalizes the handover,
//! poisons every page not handed over and `exec()`s the next kernel, which validates the
//! handover, reserves preserved memory, restores and verifies every byte, changes the
//! workload and kexecs again. Each kernel appends its report to the results file; when the
//! chain ends, however it ends (the last kernel, a refused handover, a next kernel that fails
//! or is killed), the supervisor prints the verdict (text, or one JSON document with
//! `--json`). The results file has no name, so nothing is left in `/tmp` on any exit path.
//!
//! Trust: the boot block is simulated RAM, so the next kernel checks the configuration it
//! carries and never takes a program or a file name from it; which binary runs next comes
//! from the command line (`--next-kernel`), passed from parent to child.
//!
//! `--next-max-order` smaller than the preserving kernel's: folios above the next kernel's
//! maximum order are kept reserved (`--oversized reserve`, the default): `restore_folio`
//! refuses them and the workload restores them as order-0 pages (a guest's huge pages come
//! back split, data intact), and preserves them as pages from then on. With
//! `--oversized reject` the next kernel refuses the whole handover and boots cold (exit 1).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kho_sim::boot::BootBlock;
use kho_sim::kernel::{KernelReport, Observer, SimConfig, Stage, run_kernel};
use kho_sim::kexec::{exec_next_kernel, next_kernel_command};
use kho_sim::workload::WorkloadConfig;
use kho_sim::{RAM_BASE, ScratchSizes};
use kho_sim::{Ram, Results};

use crate::memsrc;

/// Parses a size: the one grammar of every numeric flag ([`memsrc::parse_number`]).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    memsrc::parse_number(s, "size").map_err(|e| e.to_string())
}

fn parse_scratch(s: &str) -> Result<ScratchSizes, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [l, g, n] = parts.as_slice() else {
        return Err("expected three sizes: LOWMEM,GLOBAL,PERNODE (e.g. 16M,64M,64M)".into());
    };
    Ok(ScratchSizes { lowmem: parse_size(l)?, global: parse_size(g)?, per_node: parse_size(n)? })
}

/// Arguments of `kho demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// RAM size (sparse: only written pages cost memory), e.g. 4G, 64G, 1T.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    ram: u64,
    /// Guest memory preserved as 2 MiB folios (order 9).
    #[arg(long, default_value = "640M", value_parser = parse_size)]
    guest: u64,
    /// Page cache preserved as 4 KiB folios (order 0).
    #[arg(long = "page-cache", default_value = "256M", value_parser = parse_size)]
    page_cache: u64,
    /// A vmalloc-style table: separately allocated pages handed over with the kho_vmalloc ABI.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    table: u64,
    /// Percent of each subsystem's items replaced between kexecs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    churn: u32,
    /// Number of kexecs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    kexecs: u64,
    /// The first kernel's maximum page order.
    #[arg(long = "max-order", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=20))]
    max_order: u32,
    /// The next kernels' maximum page order (default: the same as --max-order).
    #[arg(long = "next-max-order", value_parser = clap::value_parser!(u32).range(1..=20))]
    next_max_order: Option<u32>,
    /// Preserved blocks above the next kernel's maximum order: keep them reserved and restore
    /// them as pages, or refuse the handover.
    #[arg(long, default_value = "reserve", value_parser = ["reserve", "reject"])]
    oversized: String,
    /// Seed of all pseudo-random data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Handover format.
    #[arg(long, default_value = "v4", value_parser = ["v1", "v4"])]
    format: String,
    /// kho-v1 bitmap size in bytes (512: Linux 6.16/6.17; 4096: 6.18). Only kho-v1 uses it.
    #[arg(long = "v1-bitmap-bytes", visible_alias = "bitmap-bytes", value_name = "BYTES",
          value_parser = crate::inspect::parse_bitmap_bytes)]
    bitmap_bytes: Option<u64>,
    /// Scratch sizes for a cold boot, like kho_scratch=LOWMEM,GLOBAL,PERNODE.
    #[arg(long, default_value = "16M,64M,64M", value_parser = parse_scratch)]
    scratch: ScratchSizes,
    /// NUMA nodes (one scratch area each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Testing: corrupt the first handover after finalize.
    #[arg(long, value_parser = ["chunk", "bitmap-ptr", "fdt"])]
    corrupt: Option<String>,
    /// Testing: the page cache "forgets" to preserve one folio in the first kernel.
    #[arg(long = "forget-preserve")]
    forget_preserve: bool,
    /// The next kernels' binary (default: this executable). Checked before anything runs;
    /// the first kernel is always this executable.
    #[arg(long = "next-kernel", value_name = "PATH")]
    next_kernel: Option<PathBuf>,
    /// Keep RAM in this file instead of an anonymous memfd, so it outlives a crashed kernel
    /// (needed for --crash-after and --resume).
    #[arg(long = "ram-file", value_name = "PATH")]
    ram_file: Option<PathBuf>,
    /// Testing: the first kernel kills itself (SIGKILL) after finalize (before the boot block
    /// is written) or after writing the boot block (before exec).
    #[arg(long = "crash-after", value_parser = ["finalize", "boot-block"], requires = "ram_file")]
    crash_after: Option<String>,
    /// Boot the RAM in --ram-file as the next kernel would after a crash: a complete handover
    /// is accepted and restored; anything less is refused as a whole and the kernel boots cold.
    #[arg(long, requires = "ram_file", conflicts_with = "crash_after")]
    resume: bool,
}

/// Arguments of the hidden `kho kernel` entry point: everything a kernel learns from its
/// trusted parent rather than from simulated RAM.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// The inherited RAM file descriptor.
    #[arg(long = "ram-fd")]
    ram_fd: i32,
    /// The inherited results file descriptor.
    #[arg(long = "results-fd")]
    results_fd: i32,
    /// The binary to exec as the next kernel (default: this executable).
    #[arg(long = "next-kernel")]
    next_kernel: Option<PathBuf>,
    /// Print nothing on stdout (the supervisor prints one JSON document).
    #[arg(long)]
    json: bool,
    /// Started by the supervising `kho demo`: die with it.
    #[arg(long)]
    first: bool,
}

struct Ui {
    json: bool,
    bar: Option<(String, ProgressBar)>,
    tty: bool,
}

impl Ui {
    fn new(json: bool) -> Self {
        Self { json, bar: None, tty: std::io::stderr().is_terminal() }
    }
}

impl Observer for Ui {
    fn stage(&mut self, generation: u64, s: &Stage) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.json {
            crate::outln!("  kernel {generation}  {:<9} {:>10.1} ms  {}", s.name, s.ms, s.detail);
        }
    }
    fn note(&mut self, generation: u64, msg: &str) {
        crate::errln!("kho kernel {generation}: {msg}");
    }
    fn progress(&mut self, label: &str, done: u64, total: u64) {
        if !self.tty || total < (256 << 20) {
            return;
        }
        if self.bar.as_ref().is_none_or(|(l, _)| l != label) {
            let b = ProgressBar::new(total);
            if let Ok(st) = ProgressStyle::with_template("  {msg:<9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            {
                b.set_style(st.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            self.bar = Some((label.to_string(), b));
        }
        if let Some((_, b)) = &self.bar {
            b.set_position(done);
        }
    }
}

fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    }
}

/// Checks `--next-kernel` before anything runs: an executable regular file.
fn check_next_kernel(p: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).with_context(|| format!("--next-kernel {}: cannot use it", p.display()))?;
    if !meta.is_file() {
        bail!("--next-kernel {}: not a regular file", p.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("--next-kernel {}: not executable", p.display());
    }
    std::fs::canonicalize(p).with_context(|| format!("--next-kernel {}: cannot resolve it", p.display()))
}

/// Warnings for flags the combination given ignores.
fn ignored_flags(a: &DemoArgs) -> Vec<String> {
    let mut w = Vec::new();
    if a.format == "v4" && a.bitmap_bytes.is_some() {
        w.push("--v1-bitmap-bytes is ignored with --format v4 (kho-v4 has no bitmap size)".to_string());
    }
    if a.oversized == "reject" && a.next_max_order.is_none_or(|n| n >= a.max_order) {
        w.push(
            "--oversized reject has no effect unless --next-max-order is below --max-order (no block can be \
             oversized)"
                .to_string(),
        );
    }
    w
}

/// `kho demo`.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let next_kernel = a.next_kernel.as_deref().map(check_next_kernel).transpose()?;
    for w in ignored_flags(&a) {
        crate::errln!("kho demo: warning: {w}");
    }
    let cfg = SimConfig {
        ram: a.ram,
        workload: WorkloadConfig { guest: a.guest, page_cache: a.page_cache, table: a.table, churn_percent: a.churn },
        kexecs: a.kexecs,
        seed: a.seed,
        format: a.format.clone(),
        bitmap_bytes: a.bitmap_bytes.unwrap_or(512),
        max_order: a.max_order,
        next_max_order: a.next_max_order.unwrap_or(a.max_order),
        oversized: a.oversized.clone(),
        scratch: a.scratch,
        nodes: a.nodes,
        corrupt: a.corrupt.clone(),
        forget_preserve: a.forget_preserve,
        json: a.json,
        early_pages: 64,
        crash_after: a.crash_after.clone(),
    };
    if !cfg.ram.is_multiple_of(4096) || cfg.ram <= RAM_BASE {
        bail!("--ram must be a multiple of 4 KiB above 1 MiB");
    }
    cfg.check().context("invalid demo configuration")?;
    let ram = match &a.ram_file {
        Some(path) if a.resume => Ram::open(path).context("cannot open the RAM file to resume")?,
        Some(path) => Ram::create_at(path, cfg.ram).context("cannot create the machine's RAM file")?,
        None => Ram::create(cfg.ram).context("cannot create the machine's RAM")?,
    };
    // What the summary compares against: the run in the boot block when resuming one.
    let mut summary_cfg = cfg.clone();
    let resumed = if a.resume {
        let path = a.ram_file.as_deref().context("--resume needs --ram-file")?;
        match BootBlock::read(&ram) {
            Ok(bb) => {
                crate::errln!(
                    "kho demo --resume: complete handover found in {} (kernel {}); restoring it (the run's \
                     configuration comes from the handover; workload, format and scratch flags are ignored)",
                    path.display(),
                    bb.generation
                );
                if let Ok(c) = serde_json::from_str::<SimConfig>(&bb.config) {
                    summary_cfg = SimConfig { json: cfg.json, ..c };
                }
                true
            }
            Err(e) => {
                crate::errln!("kho demo --resume: no complete handover in {}: {e}; booting cold", path.display());
                summary_cfg.crash_after = None;
                false
            }
        }
    } else {
        false
    };
    if !resumed {
        cold_boot_block(&ram, &summary_cfg)?;
    }
    if !cfg.json && !resumed {
        let w = cfg.workload;
        crate::outln!(
            "kho demo: {} RAM ({:?}, sparse), workload {} (guest {} in 2 MiB folios, page cache {} in 4 KiB folios, \
             table {} as a vmalloc area), kho-{}, {} kexecs, max order {} -> {}, seed {}",
            gib(cfg.ram),
            ram.backing(),
            gib(w.guest + w.page_cache + w.table),
            gib(w.guest),
            gib(w.page_cache),
            gib(w.table),
            cfg.format,
            cfg.kexecs,
            cfg.max_order,
            cfg.next_max_order,
            cfg.seed
        );
    }
    let results = Results::create().context("cannot create the results file")?;
    let exe = std::env::current_exe().context("cannot find this executable for the first kernel")?;
    let mut cmd = next_kernel_command(&ram, &results, &exe, next_kernel.as_deref(), cfg.json)?;
    cmd.arg("--first");
    crate::out::flush();
    let mut child = cmd.spawn().with_context(|| format!("cannot start the first kernel {}", exe.display()))?;
    drop(ram);
    let status = child.wait().context("cannot wait for the kernels")?;
    summarize(&summary_cfg, &results, Some(status))
}

/// Writes the boot block the first kernel boots from: no handover, generation 0, the run's
/// configuration (written by this trusted process, checked again by the kernel).
fn cold_boot_block(ram: &Ram, cfg: &SimConfig) -> anyhow::Result<()> {
    let config = serde_json::to_string(cfg)?;
    BootBlock { kho: None, generation: 0, ram_size: ram.size(), finalize_start_ns: 0, exec_start_ns: 0, config }
        .write(ram)
        .context("cannot write the first boot block")
}

/// `kho kernel`: one kernel of the chain, started by the supervisor or by exec from the
/// previous kernel, with the RAM and results descriptors inherited. Its configuration comes
/// from the boot block (simulated RAM) and is checked; the next program from its command line.
pub fn kernel(a: KernelArgs) -> anyhow::Result<ExitCode> {
    if a.first {
        kho_sim::kexec::die_with_parent().context("kho kernel")?;
    }
    let results = Results::from_inherited_fd(a.results_fd).context("kho kernel: cannot adopt the results file")?;
    let ram = Ram::from_inherited_fd(a.ram_fd).context("kho kernel: cannot adopt the RAM")?;
    let bb = BootBlock::read(&ram).context("kho kernel: no usable boot block")?;
    BootBlock::consume(&ram).context("kho kernel: cannot consume the boot block")?;
    let cfg: SimConfig = serde_json::from_str(&bb.config).context("kho kernel: bad configuration in the boot block")?;
    cfg.check().context("kho kernel: the configuration in the boot block is unusable")?;
    let mut ui = Ui::new(a.json);
    let boot = (bb.generation > 0 || bb.kho.is_some()).then_some(&bb);
    let out = run_kernel(ram, boot, &cfg, &mut ui);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            // A failure of the simulated machine itself: record it so the summary shows it.
            let rep = KernelReport {
                generation: bb.generation,
                boot: "failed".into(),
                workload: kho_sim::workload::WorkloadReport { problems: vec![e.to_string()], ..Default::default() },
                ..KernelReport::default()
            };
            results.append(&rep)?;
            return Ok(ExitCode::from(1));
        }
    };
    results.append(&out.report)?;
    let Some(ram) = out.next else { return Ok(ExitCode::SUCCESS) };
    if !a.json {
        crate::outln!("  kexec -> kernel {}", out.report.generation + 1);
    }
    let exe = match &a.next_kernel {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this executable for the next kernel")?,
    };
    crate::out::flush();
    let err = exec_next_kernel(&ram, &results, &exe, a.next_kernel.as_deref(), a.json);
    Err(anyhow::Error::new(err))
}

/// How the last kernel process ended, when it did not end well.
fn describe_exit(status: std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return None;
    }
    Some(match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended abnormally".to_string(),
    })
}

fn summarize(cfg: &SimConfig, results: &Results, status: Option<std::process::ExitStatus>) -> anyhow::Result<ExitCode> {
    let mut problems: Vec<String> = Vec::new();
    let reports = match results.read_all() {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("the kernels' results are unreadable: {e}"));
            Vec::new()
        }
    };
    let last = reports.last().map_or(0, |r| r.generation);
    let exit = status.and_then(describe_exit);
    for r in &reports {
        if let Some(why) = &r.refused {
            problems.push(format!("kernel {}: handover refused: {why}", r.generation));
        }
        problems.extend(r.workload.problems.iter().map(|p| format!("kernel {}: {p}", r.generation)));
        problems.extend(r.conflicts.iter().map(|p| format!("kernel {}: memory map: {p}", r.generation)));
    }
    let ended_well = reports.last().is_some_and(|r| r.generation >= cfg.kexecs || !r.ok());
    if !ended_well {
        let who = if reports.is_empty() { "the first kernel".to_string() } else { format!("kernel {}", last + 1) };
        let how = exit.unwrap_or_else(|| "ended".to_string());
        problems.push(format!(
            "the run stopped after {last} of {} kexecs: {who} {how} without reporting (no verdict from it)",
            cfg.kexecs
        ));
    } else if let Some(how) = exit
        && problems.is_empty()
    {
        problems.push(format!("the last kernel {how}"));
    }
    let ok = problems.is_empty();
    let verified: u64 = reports.iter().map(|r| r.workload.verified_bytes).sum();
    if cfg.json {
        let doc = serde_json::json!({
            "verdict": if ok { "pass" } else { "fail" },
            "kexecs": last,
            "kexecs_requested": cfg.kexecs,
            "verified_bytes": verified,
            "problems": problems,
            "config": cfg,
            "kernels": reports,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        crate::outln!();
        crate::outln!(
            "{:>6} {:<6} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>8} {:>11} {:>11}",
            "kernel",
            "boot",
            "exec ms",
            "validate",
            "reserve",
            "restore",
            "verify",
            "blackout",
            "preserve",
            "finalize",
            "poison",
            "metadata",
            "preserved"
        );
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
        for r in &reports {
            crate::outln!(
                "{:>6} {:<6} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>8} {:>11} {:>11}",
                r.generation,
                if r.boot == "kho" { "kho" } else { "cold" },
                f(r.exec_ms),
                f(r.stage_ms("validate")),
                f(r.stage_ms("reserve")),
                f(r.stage_ms("restore")),
                f(r.stage_ms("verify")),
                f(r.blackout_ms),
                f(r.stage_ms("preserve")),
                f(r.stage_ms("finalize")),
                f(r.stage_ms("poison")),
                if r.metadata_bytes > 0 { format!("{} KiB", r.metadata_bytes >> 10) } else { "-".into() },
                if r.preserved_bytes > 0 { gib(r.preserved_bytes) } else { "-".into() },
            );
        }
        crate::outln!("(times in ms; blackout = previous kernel's finalize start to this kernel's restore done)");
        if ok {
            crate::outln!("verdict: PASS: {last} kexecs, {} verified byte for byte, nothing lost", gib(verified));
        } else {
            crate::outln!("verdict: FAIL");
            for p in &problems {
                crate::outln!("  - {p}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
