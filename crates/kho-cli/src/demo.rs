//! `kho demo`: a whole simulated live update. The first kernel (this process) boots cold on
//! a sparse RAM file, fills a workload, preserves it, finalizes the handover, poisons every
//! page not handed over and `exec()`s the next kernel (`kho kernel`, hidden) with the RAM
//! file descriptor inherited. Each next kernel validates the handover, reserves preserved
//! memory, restores and verifies every byte, changes the workload and kexecs again. Each
//! kernel appends its report to a results file named in the boot block; the last one prints
//! the summary (text, or one JSON document with `--json`).
//!
//! `--next-max-order` smaller than the preserving kernel's: folios above the next kernel's
//! maximum order are kept reserved (`--oversized reserve`, the default): `restore_folio`
//! refuses them and the workload restores them as order-0 pages (a guest's huge pages come
//! back split, data intact), and preserves them as pages from then on. With
//! `--oversized reject` the next kernel refuses the whole handover and boots cold (exit 1).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kho_sim::Ram;
use kho_sim::boot::BootBlock;
use kho_sim::kernel::{
    KernelOutcome, KernelReport, Observer, SimConfig, Stage, append_result, read_results, run_kernel,
};
use kho_sim::kexec::exec_next_kernel;
use kho_sim::workload::WorkloadConfig;
use kho_sim::{RAM_BASE, ScratchSizes};

/// Parses a size such as `4G`, `512M`, `64k`, `1T` or a plain byte count.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size such as 4G or 512M"))?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_bitmap(s: &str) -> Result<u64, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err("expected 512 or 4096".into()),
    }
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
    /// kho-v1 bitmap size in bytes (512: Linux 6.16/6.17; 4096: 6.18).
    #[arg(long = "bitmap-bytes", default_value_t = 512, value_parser = parse_bitmap)]
    bitmap_bytes: u64,
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
    /// The next kernel's binary (default: this executable).
    #[arg(long = "next-kernel")]
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

/// Arguments of the hidden `kho kernel` entry point.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// The inherited RAM file descriptor.
    #[arg(long = "ram-fd")]
    ram_fd: i32,
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
            println!("  kernel {generation}  {:<9} {:>10.1} ms  {}", s.name, s.ms, s.detail);
        }
    }
    fn note(&mut self, generation: u64, msg: &str) {
        eprintln!("kho kernel {generation}: {msg}");
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

/// `kho demo`.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let results =
        std::env::temp_dir().join(format!("kho-demo-{}-{}.jsonl", std::process::id(), kho_sim::boot::now_ns()));
    let cfg = SimConfig {
        ram: a.ram,
        workload: WorkloadConfig { guest: a.guest, page_cache: a.page_cache, table: a.table, churn_percent: a.churn },
        kexecs: a.kexecs,
        seed: a.seed,
        format: a.format,
        bitmap_bytes: a.bitmap_bytes,
        max_order: a.max_order,
        next_max_order: a.next_max_order.unwrap_or(a.max_order),
        oversized: a.oversized,
        scratch: a.scratch,
        nodes: a.nodes,
        corrupt: a.corrupt,
        forget_preserve: a.forget_preserve,
        results,
        next_kernel: a.next_kernel,
        json: a.json,
        early_pages: 64,
        crash_after: a.crash_after,
    };
    if !cfg.ram.is_multiple_of(4096) || cfg.ram <= RAM_BASE {
        bail!("--ram must be a multiple of 4 KiB above 1 MiB");
    }
    cfg.check().context("invalid demo configuration")?;
    if a.resume {
        let path = a.ram_file.as_deref().context("--resume needs --ram-file")?;
        return resume(path, cfg);
    }
    let ram = match &a.ram_file {
        Some(path) => Ram::create_at(path, cfg.ram).context("cannot create the machine's RAM file")?,
        None => Ram::create(cfg.ram).context("cannot create the machine's RAM")?,
    };
    if !cfg.json {
        let w = cfg.workload;
        println!(
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
    let mut ui = Ui::new(cfg.json);
    let out = run_kernel(ram, None, &cfg, &mut ui);
    after_kernel(out, &cfg)
}

/// `kho demo --resume`: boot a RAM file left by a kernel that died during kexec. The boot
/// block is the commit point: present and intact, the handover is complete and is restored;
/// absent or torn, nothing of it is trusted and the kernel boots cold with `cfg`.
fn resume(path: &std::path::Path, mut cfg: SimConfig) -> anyhow::Result<ExitCode> {
    let ram = Ram::open(path).context("cannot open the RAM file to resume")?;
    let mut ui = Ui::new(cfg.json);
    match BootBlock::read(&ram) {
        Ok(bb) => {
            BootBlock::consume(&ram).context("cannot consume the boot block")?;
            let mut next: SimConfig =
                serde_json::from_str(&bb.config).context("bad configuration in the boot block")?;
            next.results = cfg.results;
            next.json = cfg.json;
            eprintln!(
                "kho demo --resume: complete handover found in {} (kernel {}); restoring it",
                path.display(),
                bb.generation
            );
            let out = run_kernel(ram, Some(&bb), &next, &mut ui);
            after_kernel(out, &next)
        }
        Err(e) => {
            eprintln!("kho demo --resume: no complete handover in {}: {e}; booting cold", path.display());
            cfg.crash_after = None;
            let out = run_kernel(ram, None, &cfg, &mut ui);
            after_kernel(out, &cfg)
        }
    }
}

/// `kho kernel`: the next kernel, started by exec with the RAM fd inherited.
pub fn kernel(a: KernelArgs) -> anyhow::Result<ExitCode> {
    let ram = Ram::from_inherited_fd(a.ram_fd).context("kho kernel: cannot adopt the RAM")?;
    let bb = BootBlock::read(&ram).context("kho kernel: no usable boot block")?;
    BootBlock::consume(&ram).context("kho kernel: cannot consume the boot block")?;
    let cfg: SimConfig = serde_json::from_str(&bb.config).context("kho kernel: bad configuration in the boot block")?;
    let mut ui = Ui::new(cfg.json);
    let out = run_kernel(ram, Some(&bb), &cfg, &mut ui);
    after_kernel(out, &cfg)
}

fn after_kernel(out: Result<KernelOutcome, kho_sim::SimError>, cfg: &SimConfig) -> anyhow::Result<ExitCode> {
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            // A failure of the simulated machine itself: record it so the summary shows it.
            let rep = KernelReport {
                boot: "failed".into(),
                workload: kho_sim::workload::WorkloadReport { problems: vec![e.to_string()], ..Default::default() },
                ..KernelReport::default()
            };
            let _ = append_result(&cfg.results, &rep);
            return summarize(cfg);
        }
    };
    append_result(&cfg.results, &out.report)?;
    match out.next {
        Some(ram) => {
            if !cfg.json {
                println!("  kexec -> kernel {}", out.report.generation + 1);
            }
            let exe = match &cfg.next_kernel {
                Some(p) => p.clone(),
                None => std::env::current_exe().context("cannot find this executable for the next kernel")?,
            };
            let err = exec_next_kernel(&ram, &exe);
            Err(anyhow::Error::new(err))
        }
        None => summarize(cfg),
    }
}

fn summarize(cfg: &SimConfig) -> anyhow::Result<ExitCode> {
    let reports = read_results(&cfg.results)?;
    let _ = std::fs::remove_file(&cfg.results);
    let last = reports.last().map_or(0, |r| r.generation);
    let mut problems: Vec<String> = Vec::new();
    for r in &reports {
        if let Some(why) = &r.refused {
            problems.push(format!("kernel {}: handover refused: {why}", r.generation));
        }
        problems.extend(r.workload.problems.iter().map(|p| format!("kernel {}: {p}", r.generation)));
        problems.extend(r.conflicts.iter().map(|p| format!("kernel {}: memory map: {p}", r.generation)));
    }
    if last < cfg.kexecs && problems.is_empty() {
        problems.push(format!("the run stopped after {last} of {} kexecs", cfg.kexecs));
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
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!();
        println!(
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
            println!(
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
        println!("(times in ms; blackout = previous kernel's finalize start to this kernel's restore done)");
        if ok {
            println!("verdict: PASS: {last} kexecs, {} verified byte for byte, nothing lost", gib(verified));
        } else {
            println!("verdict: FAIL");
            for p in &problems {
                println!("  - {p}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
