//! `kho inspect` and `kho validate`: read a handover from files and a memory source, run
//! every incoming check of the engine, decode the sub-blobs whose ABI is known, and report.
//!
//! Inputs (see [`InputArgs`]):
//! - the root FDT: `--fdt FILE` (debugfs `kho/out/fdt` or `kho/in/fdt`, or a dump), or read
//!   from memory at the address in `--setup-data FILE` (the x86 `kho_data` payload);
//! - memory: `--elf FILE` (QEMU `dump-guest-memory`, `/proc/vmcore`, `/proc/kcore`),
//!   `--dev-mem`, or `--mem FILE@BASE` (repeatable, `.zst` allowed);
//! - scratch areas: `--scratch-phys FILE --scratch-len FILE` (debugfs text), or the array
//!   `--setup-data` points to.
//!
//! With no input at all, on a live Linux host: `/sys/kernel/debug/kho/out/fdt` (what the next
//! kexec would hand over; `in/fdt` if there is no `out/`, or with `--incoming`), the scratch
//! files next to it, and `/proc/kcore` for memory (`--dev-mem` alone keeps these defaults and
//! reads `/dev/mem` instead). That needs root and a mounted debugfs. A root FDT cut short (Linux
//! 7.3's debugfs file keeps the size the FDT had at KHO init) is completed from memory: see
//! [`crate::live`]. An incoming handover is reported as consumed by the running kernel.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kho_core::fdt::{FDT_HEADER_BYTES, FDT_MAGIC, FdtNode, FdtTree, header_totalsize};
use kho_core::format::root::{self, Subtree};
use kho_core::format::{WalkContext, scratch, v1, v4};
use kho_core::incoming::{Handover, IncomingConfig, OversizedPolicy};
use kho_core::{
    BitmapBytes, BlockSet, DecodeError, Field, FormatVersion, HandoverPtr, Limits, Order, PAGE_SIZE, PhysAddr,
    PhysRange, PhysRead,
};

use crate::live;
use crate::memsrc::{self, MemSource, MemSpec};
use crate::report::{self, BlockEntry, OrderCount, Problem, Range, Report, Totals};

/// Where debugfs shows KHO on a live host.
const DEBUGFS_KHO: &str = "/sys/kernel/debug/kho";

/// Inputs shared by `inspect`, `validate` and `convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// Root KHO FDT file (e.g. /sys/kernel/debug/kho/out/fdt). Without it, the FDT is read from
    /// memory at the address --setup-data gives.
    #[arg(long, value_name = "FILE", visible_alias = "from-fdt")]
    pub fdt: Option<PathBuf>,
    /// Physical address of the root FDT, when known (for messages and the reports; it comes
    /// from --setup-data otherwise).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub fdt_phys: Option<u64>,
    /// Memory from an ELF core: QEMU dump-guest-memory, /proc/vmcore or /proc/kcore.
    #[arg(long, value_name = "FILE", conflicts_with = "dev_mem")]
    pub elf: Option<PathBuf>,
    /// Memory from /dev/mem (RAM ranges from /proc/iomem; needs root). Alone, it keeps the
    /// live defaults (debugfs FDT and scratch files) and replaces /proc/kcore.
    #[arg(long)]
    pub dev_mem: bool,
    /// Live mode: the handover this kernel was booted with (debugfs kho/in/fdt) instead of
    /// the one the next kexec would pass (kho/out/fdt). Linux has consumed it by the time
    /// user space runs: the FDT, scratch areas and blobs are checked, the memory map is not.
    #[arg(long, conflicts_with_all = ["fdt", "setup_data", "scratch_phys"])]
    pub incoming: bool,
    /// A raw memory image whose first byte is physical address BASE (hex with 0x, or
    /// decimal, K/M/G/T units). Repeatable; a .zst file is decompressed (see --zst-limit).
    #[arg(long = "mem", value_name = "FILE@BASE")]
    pub mem: Vec<MemSpec>,
    /// Most bytes a .zst --mem image may decompress to; a larger one is refused (decompress
    /// it once with `zstd -d`: raw images are read on demand).
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    pub zst_limit: u64,
    /// debugfs scratch_phys: one 0x%llx address per line.
    #[arg(long, value_name = "FILE", requires = "scratch_len", conflicts_with = "setup_data")]
    pub scratch_phys: Option<PathBuf>,
    /// debugfs scratch_len: one 0x%llx size per line.
    #[arg(long, value_name = "FILE", requires = "scratch_phys")]
    pub scratch_len: Option<PathBuf>,
    /// The 32-byte x86 setup_data payload (struct kho_data): FDT address and size, scratch
    /// array address and size. The scratch array (and the FDT, without --fdt) is then read
    /// from memory.
    #[arg(long, value_name = "FILE")]
    pub setup_data: Option<PathBuf>,
    /// kho-v1 bitmap size to assume: 512 (Linux 6.16, 6.17) or 4096 (6.18). The format does
    /// not record it.
    #[arg(long, value_name = "BYTES", default_value_t = 512, value_parser = parse_bitmap_bytes,
          visible_alias = "bitmap-bytes")]
    pub v1_bitmap_bytes: u64,
    /// The next kernel's maximum folio order.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=40))]
    pub max_order: u32,
    /// Treat blocks above --max-order as invalid (by default they are reported and counted).
    #[arg(long)]
    pub reject_oversized: bool,
    /// List every preserved block and range in the report, however many. Without it, lists
    /// longer than 4096 entries are left out (counts and totals are always complete).
    #[arg(long)]
    pub blocks: bool,
}

/// Arguments of `kho inspect` and `kho validate`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Print the report as JSON (schema: docs/cli-json.md).
    #[arg(long)]
    pub json: bool,
}

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inspect,
    Validate,
}

fn parse_size(s: &str) -> Result<u64, String> {
    memsrc::parse_number(s, "size").map_err(|e| e.to_string())
}

fn parse_addr(s: &str) -> Result<u64, String> {
    memsrc::parse_number(s, "address").map_err(|e| e.to_string())
}

pub fn parse_bitmap_bytes(s: &str) -> Result<u64, String> {
    match memsrc::parse_number(s, "bitmap size") {
        Ok(n @ (512 | 4096)) => Ok(n),
        _ => Err(format!("{s:?}: the kho-v1 bitmap size is 512 or 4096 bytes")),
    }
}

/// Runs `inspect` or `validate`: 0 valid, 1 invalid (report printed), usage errors as `Err`.
///
/// # Errors
/// Unreadable input files and inconsistent arguments (exit code 2).
pub fn run(a: InspectArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let loaded = load(&a.input)?;
    let analysis = analyze(&loaded, &a.input);
    let r = &analysis.report;
    if a.json {
        // Streamed to stdout as it is serialized: no second copy of the report in memory.
        let mut w = crate::out::Stdout::new();
        serde_json::to_writer_pretty(&mut w, r).context("writing JSON")?;
        std::io::Write::write_all(&mut w, b"\n").context("writing JSON")?;
    } else if mode == Mode::Validate {
        crate::outp!("{}", validate_text(r));
    } else {
        crate::outp!("{}", r.to_text());
    }
    Ok(if r.valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The short text `kho validate` prints.
fn validate_text(r: &Report) -> String {
    let what = r.format.as_deref().map_or_else(|| "handover".to_string(), |f| format!("{f} handover"));
    let mut s = if r.valid && r.consumed {
        format!(
            "{}\n  ({what}, {} sub-blob(s), {} scratch area(s))\n",
            live::CONSUMED_MESSAGE,
            r.subtrees.len(),
            r.scratch.len()
        )
    } else if r.valid {
        format!(
            "valid: {what}, {} preserved block(s), {} bytes in {} range(s), {} sub-blob(s)\n",
            r.totals.blocks,
            r.totals.bytes,
            r.totals.ranges,
            r.subtrees.len()
        )
    } else {
        let mut s = format!("invalid: {what}, {} problem(s):\n", r.problems.len());
        for p in &r.problems {
            s.push_str(&format!("  [{}] {}\n", p.kind, p.message));
        }
        s
    };
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    for w in &r.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

/// Everything read from the inputs before the engine runs.
pub struct Loaded {
    /// Physical memory.
    pub mem: MemSource,
    /// The root FDT bytes, if they could be had.
    pub fdt: Option<Vec<u8>>,
    /// Where the root FDT is, if known.
    pub fdt_phys: Option<PhysAddr>,
    /// The FDT's origin, for the report.
    pub fdt_origin: String,
    /// Scratch areas.
    pub scratch: Vec<PhysRange>,
    /// Where they came from.
    pub scratch_origin: String,
    /// Problems found while loading (handover data that is wrong, not bad usage).
    pub problems: Vec<Problem>,
    /// Remarks.
    pub notes: Vec<String>,
    /// The running kernel has consumed this handover (live `kho/in`): its memory map and the
    /// memory its blobs point to are no longer there to check.
    pub consumed: bool,
}

/// The engine configuration the arguments ask for, over `ram`.
#[must_use]
pub fn incoming_config(a: &InputArgs, ram: Vec<PhysRange>) -> IncomingConfig {
    let mut cfg = IncomingConfig::new(ram);
    cfg.max_order = Order::new(a.max_order).unwrap_or(Order::LINUX_X86_MAX);
    cfg.v1_bitmap_bytes = BitmapBytes::from_bytes(a.v1_bitmap_bytes).unwrap_or_default();
    cfg.oversized = if a.reject_oversized { OversizedPolicy::Reject } else { OversizedPolicy::Reserve };
    cfg
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Parses a debugfs `scratch_phys` or `scratch_len` file: one number per non-empty line.
fn read_numbers(path: &Path) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| memsrc::parse_number(l, &format!("{}:{}", path.display(), i + 1)).map_err(anyhow::Error::from))
        .collect()
}

/// Scratch areas from the two debugfs files.
fn scratch_from_files(phys: &Path, len: &Path) -> anyhow::Result<Vec<PhysRange>> {
    let (p, l) = (read_numbers(phys)?, read_numbers(len)?);
    if p.len() != l.len() {
        bail!("{} has {} entries but {} has {}", phys.display(), p.len(), len.display(), l.len());
    }
    let mut out = Vec::with_capacity(p.len());
    for (i, (&a, &n)) in p.iter().zip(&l).enumerate() {
        let r = PhysRange::new(PhysAddr::new(a), n).with_context(|| {
            format!(
                "scratch area {i}: {n:#x} bytes at {a:#x} is empty or wraps ({} / {})",
                phys.display(),
                len.display()
            )
        })?;
        out.push(r);
    }
    out.sort_unstable();
    Ok(out)
}

/// Opens every memory source the arguments name (or `/proc/kcore` in live mode).
fn open_memory(a: &InputArgs, live: bool) -> anyhow::Result<MemSource> {
    let mut mem = MemSource::new();
    if let Some(p) = &a.elf {
        mem.merge(memsrc::elf::open(p)?)?;
    }
    if a.dev_mem {
        mem.merge(memsrc::devmem::open(Path::new("/dev/mem"), Path::new("/proc/iomem"))?)?;
    }
    let zst = memsrc::raw::ZstLimits { max_bytes: a.zst_limit, ..memsrc::raw::ZstLimits::default() };
    for spec in &a.mem {
        mem.merge(memsrc::raw::open_with(spec, &zst)?)?;
    }
    if mem.segment_count() == 0 {
        if live {
            let kcore = Path::new("/proc/kcore");
            mem = memsrc::elf::open(kcore)
                .context("live mode reads memory from /proc/kcore (needs root and CONFIG_PROC_KCORE)")?;
        } else {
            bail!("no memory source: give --elf FILE, --dev-mem or --mem FILE@BASE");
        }
    }
    Ok(mem)
}

/// Decodes a `--setup-data` file: exactly the 32-byte `kho_data` payload (as
/// `/sys/kernel/boot_params/setup_data/N/data` shows it), or a whole 48-byte `setup_data`
/// node of type 10. Any other size is a usage error (exit 2), not a handover problem: the file
/// is not what the flag asks for.
fn setup_data_file(p: &Path, bytes: &[u8]) -> anyhow::Result<HandoverPtr> {
    use kho_core::format::handover_ptr::KHO_DATA_BYTES;
    let ptr = match bytes.len() {
        KHO_DATA_BYTES => HandoverPtr::from_setup_data_payload(bytes, PhysAddr::new(0)),
        n if n == KHO_DATA_BYTES + 16 => HandoverPtr::from_setup_data_node(bytes, PhysAddr::new(0)).map(|(p, _)| p),
        n => bail!(
            "--setup-data {}: {n} bytes; expected the {KHO_DATA_BYTES}-byte kho_data payload (or a {}-byte \
             setup_data node of type 10)",
            p.display(),
            KHO_DATA_BYTES + 16
        ),
    };
    ptr.with_context(|| format!("--setup-data {}", p.display()))
}

/// Reads the root FDT at the setup_data address with the engine's one reader (which checks
/// the pointer, `fdt_size` and the 52-bit limit first, as the library and simulator do).
fn fdt_from_memory(mem: &MemSource, ptr: &HandoverPtr, limits: &Limits) -> Result<Vec<u8>, DecodeError> {
    let mut cfg = IncomingConfig::new(mem.ram());
    cfg.limits = *limits;
    kho_core::incoming::read_root_fdt(mem, ptr, &cfg)
}

/// Reads every input. Usage problems (missing files, bad arguments) are errors; problems
/// with the handover data itself are collected in [`Loaded::problems`].
///
/// # Errors
/// Unreadable files, inconsistent arguments.
pub fn load(a: &InputArgs) -> anyhow::Result<Loaded> {
    let only_dev_mem = a.dev_mem && a.elf.is_none() && a.mem.is_empty();
    let has_memory = a.elf.is_some() || a.dev_mem || !a.mem.is_empty();
    let live = a.fdt.is_none()
        && a.setup_data.is_none()
        && a.scratch_phys.is_none()
        && (!has_memory || only_dev_mem || a.incoming);
    if a.incoming && !live {
        bail!("--incoming reads this host's debugfs kho/in: it cannot be combined with --fdt or --setup-data");
    }
    let mut notes = Vec::new();
    let mut consumed = false;
    let (fdt_path, scratch_files) = if live {
        let base = Path::new(DEBUGFS_KHO);
        let out = base.join("out/fdt");
        let inp = base.join("in/fdt");
        let fdt = if a.incoming {
            if !inp.exists() {
                bail!(
                    "--incoming: {} does not exist (this kernel was not booted with a KHO handover, or its consumers are done with it)",
                    inp.display()
                );
            }
            consumed = true;
            inp
        } else if out.exists() {
            if inp.exists() {
                notes.push("this kernel was booted with a KHO handover: `kho inspect --incoming` reports it".into());
            }
            out
        } else if inp.exists() {
            notes.push(
                "live mode: no kho/out/fdt (Linux 7.3 does not show it in a kernel booted by a KHO kexec); \
                 inspecting the incoming kho/in/fdt"
                    .into(),
            );
            consumed = true;
            inp
        } else {
            bail!(
                "no input given, and {DEBUGFS_KHO}/out/fdt and in/fdt do not exist (not a KHO-enabled Linux host, \
                 debugfs not mounted, or not root); give --fdt FILE or --setup-data FILE and a memory source"
            );
        };
        let (sp, sl) = (base.join("out/scratch_phys"), base.join("out/scratch_len"));
        let scratch = (sp.exists() && sl.exists()).then_some((sp, sl));
        (Some(fdt), scratch)
    } else {
        if a.fdt.is_none() && a.setup_data.is_none() {
            bail!("no handover given: pass --fdt FILE or --setup-data FILE");
        }
        let scratch = a.scratch_phys.clone().zip(a.scratch_len.clone());
        (a.fdt.clone(), scratch)
    };
    // In the kernel a handover started, x86 sysfs still shows the SETUP_KEXEC_KHO entry the
    // previous kernel passed: the FDT's address and the scratch array as this kernel got them.
    let auto_setup_data = if consumed && a.setup_data.is_none() {
        live::find_kho_setup_data(Path::new(live::SYSFS_SETUP_DATA))
    } else {
        None
    };
    let scratch_files = if auto_setup_data.is_some() { None } else { scratch_files };
    let mem = open_memory(a, live)?;
    notes.extend(mem.notes().iter().cloned());
    let mut problems = Vec::new();
    let limits = Limits::default();

    let ptr = match a.setup_data.as_ref().or(auto_setup_data.as_ref()) {
        Some(p) => {
            let bytes = read_file(p, "setup_data payload")?;
            Some(setup_data_file(p, &bytes)?)
        }
        None => None,
    };
    if let (Some(path), Some(p)) = (&auto_setup_data, &ptr) {
        notes.push(format!(
            "the handover this kernel received, as x86 setup_data SETUP_KEXEC_KHO ({}) gave it: FDT at {}, \
             scratch array at {} ({} bytes)",
            path.display(),
            p.fdt,
            p.scratch,
            p.scratch_size
        ));
    }
    let fdt_phys = a.fdt_phys.map(PhysAddr::new).or(ptr.map(|p| p.fdt));

    let (mut fdt, mut fdt_origin) = match (&fdt_path, &ptr) {
        (Some(path), ptr) => {
            // The FDT comes from a file, but the setup_data pointer must still be one the next
            // kernel would accept.
            if let Some(Err(e)) = ptr.map(|p| kho_core::incoming::check_handover_ptr(&p, &limits)) {
                problems.push(Problem::from_error(&e));
            }
            (Some(read_file(path, "root FDT")?), path.display().to_string())
        }
        (None, Some(ptr)) => match fdt_from_memory(&mem, ptr, &limits) {
            Ok(b) => (Some(b), format!("memory at {}", ptr.fdt)),
            Err(e) => {
                problems.push(Problem::from_error(&e));
                (None, format!("memory at {}", ptr.fdt))
            }
        },
        (None, None) => (None, "(none)".to_string()),
    };

    let (scratch, scratch_origin) = if let Some((sp, sl)) = &scratch_files {
        (scratch_from_files(sp, sl)?, format!("{} + {}", sp.display(), sl.display()))
    } else if let Some(ptr) = &ptr {
        let origin = format!("kho_scratch[] at {} ({} bytes)", ptr.scratch, ptr.scratch_size);
        match scratch::decode(&mem, &mem.ram(), ptr.scratch, ptr.scratch_size, limits.max_scratch_areas) {
            Ok(s) => (s, origin),
            Err(e) => {
                problems.push(Problem::from_error(&e));
                (Vec::new(), origin)
            }
        }
    } else {
        notes.push("no scratch areas given (--scratch-phys/--scratch-len or --setup-data): the scratch-overlap checks were skipped".into());
        (Vec::new(), "none".to_string())
    };
    let mut fdt_phys = fdt_phys;
    if let Some(total) = fdt.as_deref().and_then(live::truncated_totalsize) {
        let prefix = fdt.take().unwrap_or_default();
        let have = prefix.len();
        match live::find_full_fdt(
            &prefix,
            &mem,
            &mem.ram(),
            &scratch,
            limits,
            BitmapBytes::from_bytes(a.v1_bitmap_bytes).unwrap_or_default(),
        ) {
            Ok(found) if fdt_phys.is_none_or(|p| p == found.phys) => {
                notes.push(format!(
                    "{fdt_origin} holds {have} of the FDT's {total} bytes (Linux sizes the debugfs file at KHO init; \
                     subtrees added later grow the FDT); the full FDT was read from memory at {}, a preserved block",
                    found.phys
                ));
                fdt_origin = format!("{fdt_origin} ({have} of {total} bytes) + memory at {}", found.phys);
                fdt_phys = Some(found.phys);
                fdt = Some(found.bytes);
            }
            Ok(found) => {
                notes.push(format!(
                    "{fdt_origin} is cut short ({have} of {total} bytes); its full copy is in memory at {}, not at the given {}",
                    found.phys,
                    fdt_phys.unwrap_or(PhysAddr::new(0))
                ));
                fdt = Some(prefix);
            }
            Err(why) => {
                notes.push(format!(
                    "{fdt_origin} is cut short ({have} of {total} bytes) and the full FDT was not found in memory: {why}"
                ));
                fdt = Some(prefix);
            }
        }
    }
    if fdt_phys.is_none() && !consumed {
        notes.push("root FDT address unknown (give --fdt-phys or --setup-data): messages show it as 0x0".into());
    }
    Ok(Loaded { mem, fdt, fdt_phys, fdt_origin, scratch, scratch_origin, problems, notes, consumed })
}

/// The outcome of the checks: the report, and the handover when it is valid.
pub struct Analysis {
    /// What to print.
    pub report: Report,
    /// The parsed handover, when every engine check passed.
    pub handover: Option<Handover>,
    /// Preserved blocks found (complete when valid; what the walk reached otherwise).
    pub preserved: BlockSet,
    /// The root's sub-blobs (sizes resolved where possible).
    pub subtrees: Vec<Subtree>,
    /// The root FDT's format, if it parsed.
    pub format: Option<FormatVersion>,
}

/// Runs every check on the loaded inputs and builds the report.
#[must_use]
pub fn analyze(l: &Loaded, a: &InputArgs) -> Analysis {
    let ram = l.mem.ram();
    let cfg = incoming_config(a, ram.clone());
    let fdt_phys = l.fdt_phys.unwrap_or(PhysAddr::new(0));
    let mut r = Report {
        schema: report::SCHEMA,
        v1_bitmap_bytes: a.v1_bitmap_bytes,
        max_order: a.max_order,
        inputs: report::Inputs {
            fdt: Some(l.fdt_origin.clone()),
            memory: l.mem.descriptions().to_vec(),
            ram: ram.iter().map(|&x| Range::from(x)).collect(),
            scratch: l.scratch_origin.clone(),
        },
        scratch: l.scratch.iter().map(|&x| Range::from(x)).collect(),
        problems: l.problems.clone(),
        notes: l.notes.clone(),
        ..Report::default()
    };
    r.root_fdt.phys = l.fdt_phys.map(PhysAddr::as_u64);
    let mut out =
        Analysis { report: r, handover: None, preserved: BlockSet::new(), subtrees: Vec::new(), format: None };
    let Some(fdt) = &l.fdt else {
        out.report.valid = false;
        return out;
    };
    let r = &mut out.report;
    r.root_fdt.size =
        fdt.get(4..8).map_or(fdt.len() as u64, |b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
    if l.consumed {
        analyze_consumed(l, fdt, fdt_phys, &cfg, &mut out);
        return out;
    }

    let v = Handover::validate_fdt(&l.mem, fdt, fdt_phys, &l.scratch, &cfg);
    r.problems.extend(v.problems.iter().map(Problem::from_error));
    let root = root::parse(fdt, fdt_phys, &cfg.limits).ok();
    if let Some(root) = &root {
        r.format = Some(root.version.compatible().to_string());
        r.root_fdt.memory_map = Some(root.memory_map.as_u64());
        out.format = Some(root.version);
    }
    let mut walk_complete = v.handover.is_some();
    let (preserved, ranges, subtrees, oversized) = match &v.handover {
        Some(h) => {
            r.root_fdt.metadata_pages = h.metadata_pages().len() as u64;
            (h.preserved().clone(), h.reserved_ranges().to_vec(), h.subtrees().to_vec(), h.oversized_blocks())
        }
        None => match &root {
            Some(root) => {
                // Walk again without the whole-handover checks, to show what is there.
                let mut scratch = l.scratch.clone();
                scratch.sort_unstable();
                let mut ctx = WalkContext::new(&l.mem, &ram, &scratch, cfg.limits);
                let mut set = BlockSet::new();
                let walked = match root.version {
                    FormatVersion::V1 => v1::decode(&mut ctx, root.memory_map, fdt_phys, cfg.v1_bitmap_bytes, &mut set),
                    FormatVersion::V4 => v4::decode(&mut ctx, root.memory_map, fdt_phys, &mut set),
                };
                walk_complete = walked.is_ok();
                if walked.is_err() {
                    r.notes.push(
                        "the preserved set below is partial: the walk stopped at the first structural problem".into(),
                    );
                }
                r.root_fdt.metadata_pages = ctx.metadata_pages.len() as u64;
                let ranges = set.coalesced_ranges().unwrap_or_default();
                let over = set.count_by_order().iter().filter(|(o, _)| *o > cfg.max_order).map(|(_, n)| n).sum();
                let subs = root.subtrees.iter().cloned().map(|s| resolve_v1_size(&l.mem, root.version, s)).collect();
                (set, ranges, subs, over)
            }
            None => (BlockSet::new(), Vec::new(), Vec::new(), 0),
        },
    };
    fill_preserved(r, &preserved, &ranges, oversized, a.blocks);
    let mut scratch = l.scratch.clone();
    scratch.sort_unstable();
    let bctx = blobs::Ctx {
        mem: &l.mem,
        ram: &ram,
        scratch: &scratch,
        limits: cfg.limits,
        preserved: &preserved,
        ranges: &ranges,
        check_preserved: walk_complete,
        follow: true,
    };
    for s in &subtrees {
        let (entry, problems, warnings) = decode_subtree(&bctx, s);
        r.subtrees.push(entry);
        r.problems.extend(problems);
        r.warnings.extend(warnings);
    }
    r.valid = r.problems.is_empty() && v.handover.is_some();
    if r.format.as_deref() == Some("kho-v1") {
        r.notes.push(format!(
            "kho-v1 bitmaps assumed to be {} bytes (--v1-bitmap-bytes); the format does not record it",
            a.v1_bitmap_bytes
        ));
    }
    out.handover = v.handover;
    out.preserved = preserved;
    out.subtrees = subtrees;
    out
}

/// A handover the running kernel has consumed (live `kho/in`): the memory map's pages are
/// freed and the blobs' memory restored, so only the root FDT, the scratch areas and the
/// blobs themselves are checked. Valid when those pass.
fn analyze_consumed(l: &Loaded, fdt: &[u8], fdt_phys: PhysAddr, cfg: &IncomingConfig, out: &mut Analysis) {
    let r = &mut out.report;
    r.consumed = true;
    let ram = &cfg.ram;
    let mut scratch = l.scratch.clone();
    scratch.sort_unstable();
    for (i, s) in scratch.iter().enumerate() {
        if let Err(e) = kho_core::format::check_in_ram(ram, Field::ScratchEntry, s.start(), *s) {
            r.problems.push(Problem::from_error(&e));
        }
        if let Some(next) = scratch.get(i + 1)
            && next.overlaps(*s)
        {
            r.problems.push(Problem::new("value", format!("scratch areas {s} and {next} overlap")));
        }
    }
    let root = match root::parse(fdt, fdt_phys, &cfg.limits) {
        Ok(root) => root,
        Err(e) => {
            r.problems.push(Problem::from_error(&e));
            r.valid = false;
            return;
        }
    };
    r.format = Some(root.version.compatible().to_string());
    r.root_fdt.memory_map = Some(root.memory_map.as_u64());
    out.format = Some(root.version);
    let subtrees: Vec<Subtree> =
        root.subtrees.iter().cloned().map(|s| resolve_v1_size(&l.mem, root.version, s)).collect();
    let empty = BlockSet::new();
    let bctx = blobs::Ctx {
        mem: &l.mem,
        ram,
        scratch: &scratch,
        limits: cfg.limits,
        preserved: &empty,
        ranges: &[],
        check_preserved: false,
        follow: false,
    };
    for s in &subtrees {
        if let Some(range) = s.size.and_then(|n| PhysRange::new(s.phys, n)) {
            let placed = kho_core::format::check_in_ram(ram, Field::Blob, s.phys, range)
                .and_then(|()| kho_core::format::check_not_in_scratch(&scratch, Field::Blob, s.phys, range));
            if let Err(e) = placed {
                r.problems.push(Problem::new("blob", format!("sub-blob {:?}: {e}", s.name)));
            }
        }
        // A blob's owner may free it once restored: content that no longer decodes is told,
        // not held against the handover (its placement, from the FDT, is checked above).
        let (entry, problems, warnings) = decode_subtree(&bctx, s);
        r.subtrees.push(entry);
        r.warnings.extend(warnings);
        r.notes.extend(
            problems
                .into_iter()
                .map(|p| format!("{} (its owner may have reused the memory after restoring)", p.message)),
        );
    }
    r.valid = r.problems.is_empty();
    out.subtrees = subtrees;
}

/// A kho-v1 sub-blob's size is its FDT's `totalsize`.
fn resolve_v1_size(mem: &MemSource, version: FormatVersion, mut s: Subtree) -> Subtree {
    if version == FormatVersion::V1 && s.size.is_none() {
        let mut hdr = [0u8; FDT_HEADER_BYTES];
        if mem.read_phys(s.phys, &mut hdr).is_ok() {
            s.size = header_totalsize(&hdr, Field::Blob, s.phys).ok().map(u64::from);
        }
    }
    s
}

/// Most blocks (and ranges) listed without `--blocks`: a report costs what the metadata
/// costs, not what the preserved set describes (1 TiB at order 0 is 2^28 blocks).
pub const LIST_LIMIT: u64 = 4096;

fn fill_preserved(r: &mut Report, set: &BlockSet, ranges: &[PhysRange], oversized: u64, all: bool) {
    let list_blocks = all || set.len() <= LIST_LIMIT;
    if list_blocks {
        r.preserved = set
            .sorted_by_address()
            .iter()
            .map(|b| BlockEntry { phys: b.phys().as_u64(), order: b.order().as_u32() })
            .collect();
    } else {
        r.notes.push(format!(
            "{} preserved blocks: the block list is left out above {LIST_LIMIT} (--blocks lists them all); the \
             per-order counts and totals are complete",
            set.len()
        ));
    }
    let list_ranges = all || ranges.len() as u64 <= LIST_LIMIT;
    let shown = if list_ranges { ranges.len() } else { LIST_LIMIT as usize };
    r.ranges = ranges.iter().take(shown).map(|&x| Range::from(x)).collect();
    if !list_ranges {
        r.notes
            .push(format!("{} ranges: only the first {LIST_LIMIT} are listed (--blocks lists them all)", ranges.len()));
    }
    r.lists_complete = list_blocks && list_ranges;
    r.orders = set
        .count_by_order()
        .iter()
        .map(|&(o, n)| OrderCount { order: o.as_u32(), count: n, bytes: n.saturating_mul(o.bytes()) })
        .collect();
    let bytes = set.total_bytes();
    r.totals = Totals {
        blocks: set.len(),
        bytes,
        pages: bytes / PAGE_SIZE,
        ranges: ranges.len() as u64,
        oversized_blocks: oversized,
    };
}

/// Reads a sub-blob and decodes it by name (known ABIs) or by content (any FDT).
fn decode_subtree(c: &blobs::Ctx<'_>, s: &Subtree) -> (report::Subtree, Vec<Problem>, Vec<String>) {
    let mut entry = report::Subtree {
        name: s.name.clone(),
        phys: s.phys.as_u64(),
        size: s.size,
        kind: "binary".into(),
        decoded: None,
        error: None,
    };
    let mut problems = Vec::new();
    let Some(size) = s.size.filter(|&n| n > 0 && n <= c.limits.max_blob_bytes) else {
        entry.error = Some("size unknown or above the blob limit".into());
        return (entry, problems, Vec::new());
    };
    let mut blob = vec![0u8; usize::try_from(size).unwrap_or(0)];
    if let Err(e) = c.mem.read_phys(s.phys, &mut blob) {
        entry.error = Some(DecodeError::unreadable(Field::Blob, e).to_string());
        return (entry, problems, Vec::new());
    }
    let d = blobs::decode(c, &s.name, &blob, s.phys);
    entry.kind = d.kind.to_string();
    entry.decoded = d.value;
    problems.extend(d.problems.into_iter().map(|m| Problem::new("blob", format!("sub-blob {:?}: {m}", s.name))));
    if let Some(e) = d.error {
        problems.push(Problem::new("blob", format!("sub-blob {:?} at {}: {e}", s.name, s.phys)));
        entry.error = Some(e);
    }
    let warnings = d.warning.into_iter().map(|w| format!("sub-blob {:?} at {}: {w}", s.name, s.phys)).collect();
    (entry, problems, warnings)
}

/// Decoders for the sub-blob ABIs the tool knows (by sub-node name, as Linux looks them up,
/// or by the FDT's compatible), and a generic FDT dump for the rest.
mod blobs {
    use super::*;
    use kho_core::Block;
    use kho_core::format::kexec_metadata::KexecMetadata;
    use kho_core::format::memblock;
    use kho_core::format::test_kho::{self, TestKho};
    use kho_core::format::vmalloc;
    use serde_json::{Value, json};

    /// What the decoders may look at.
    pub struct Ctx<'a> {
        pub mem: &'a MemSource,
        pub ram: &'a [PhysRange],
        pub scratch: &'a [PhysRange],
        pub limits: Limits,
        pub preserved: &'a BlockSet,
        pub ranges: &'a [PhysRange],
        /// False when the preserved set is partial: "is it preserved" checks would only
        /// repeat the structural problem.
        pub check_preserved: bool,
        /// False when the memory blobs point to is gone (a consumed handover): blobs are
        /// decoded, pointers out of them are shown but not followed.
        pub follow: bool,
    }

    /// One decoded blob.
    pub struct Decoded {
        pub kind: &'static str,
        pub value: Option<Value>,
        /// Content that decodes but breaks a rule (e.g. data that is not preserved).
        pub problems: Vec<String>,
        /// Why it does not decode.
        pub error: Option<String>,
        /// Content the next kernel ignores with a warning (the handover stays valid).
        pub warning: Option<String>,
    }

    impl Decoded {
        fn ok(kind: &'static str, value: Value, problems: Vec<String>) -> Self {
            Self { kind, value: Some(value), problems, error: None, warning: None }
        }
        fn err(kind: &'static str, e: &DecodeError) -> Self {
            Self { kind, value: None, problems: Vec::new(), error: Some(e.to_string()), warning: None }
        }
    }

    /// kexec-metadata: Linux ignores a blob of another version with a warning (spec §2.5,
    /// consumer check 3), so it is a warning here too, not an invalid handover.
    fn decode_kexec_metadata(blob: &[u8], at: PhysAddr) -> Decoded {
        let version = blob.get(..4).map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
        match version {
            Some(v) if v != kho_core::format::kexec_metadata::VERSION => Decoded {
                kind: "kexec-metadata",
                value: Some(json!({ "version": v, "ignored": true })),
                problems: Vec::new(),
                error: None,
                warning: Some(format!(
                    "kexec-metadata version {v}, not {}: Linux warns and ignores this blob",
                    kho_core::format::kexec_metadata::VERSION
                )),
            },
            _ => match KexecMetadata::parse(blob, at) {
                Ok(m) => Decoded::ok(
                    "kexec-metadata",
                    json!({
                        "version": m.version,
                        "previous_release": m.previous_release,
                        "kexec_count": m.kexec_count,
                    }),
                    Vec::new(),
                ),
                Err(e) => Decoded::err("kexec-metadata", &e),
            },
        }
    }

    fn is_preserved_range(c: &Ctx<'_>, r: PhysRange) -> bool {
        if !c.check_preserved {
            return true;
        }
        let i = c.ranges.partition_point(|x| x.end() <= r.start());
        c.ranges.get(i).is_some_and(|x| x.contains_range(r))
    }

    pub fn decode(c: &Ctx<'_>, name: &str, blob: &[u8], at: PhysAddr) -> Decoded {
        let is_fdt = blob.get(..4).is_some_and(|m| m == FDT_MAGIC.to_be_bytes());
        let compat = if is_fdt {
            FdtTree::parse(blob, Field::Blob, at).ok().and_then(|t| t.root.first_compatible())
        } else {
            None
        };
        match (name, compat.as_deref()) {
            ("kexec-metadata", _) => decode_kexec_metadata(blob, at),
            (test_kho::SUBTREE_NAME, _) | (_, Some(test_kho::COMPATIBLE)) => decode_test_kho(c, blob, at),
            ("memblock", _) | (_, Some(memblock::COMPATIBLE)) => match memblock::parse(blob, at) {
                Ok(regions) => {
                    let mut problems = Vec::new();
                    let rs: Vec<Value> = regions
                        .iter()
                        .map(|r| {
                            let preserved = PhysRange::new(r.start, r.size).is_some_and(|x| is_preserved_range(c, x));
                            if !preserved {
                                problems.push(format!(
                                    "reserve_mem region {:?} ({:#x} bytes at {}) is not preserved",
                                    r.name, r.size, r.start
                                ));
                            }
                            json!({"name": r.name, "start": r.start.as_u64(), "size": r.size, "preserved": preserved})
                        })
                        .collect();
                    Decoded::ok("memblock", json!({ "regions": rs }), problems)
                }
                Err(e) => Decoded::err("memblock", &e),
            },
            _ if is_fdt => match FdtTree::parse(blob, Field::Blob, at) {
                Ok(tree) => Decoded::ok("fdt", fdt_json(&tree.root), Vec::new()),
                Err(e) => Decoded::err("fdt", &e),
            },
            _ => Decoded { kind: "binary", value: None, problems: Vec::new(), error: None, warning: None },
        }
    }

    /// test_kho: the blob, its vmalloc'd `folios_info`, and every folio, each of which must
    /// be preserved with exactly the order the array records (what the module's restore
    /// checks), as must the vmalloc chunk pages and pieces.
    fn decode_test_kho(c: &Ctx<'_>, blob: &[u8], at: PhysAddr) -> Decoded {
        let t = match TestKho::parse(blob, at) {
            Ok(t) => t,
            Err(e) => return Decoded::err("test_kho", &e),
        };
        let mut problems = Vec::new();
        let info = json!({
            "first": t.folios_info.first.as_u64(),
            "total_pages": t.folios_info.total_pages,
            "flags": t.folios_info.flags,
            "order": t.folios_info.order,
        });
        let mut v = json!({
            "compatible": test_kho::COMPATIBLE,
            "magic": test_kho::MAGIC,
            "nr_folios": t.nr_folios,
            "csum": t.csum,
            "folios_info": info,
        });
        if !c.follow {
            return Decoded::ok("test_kho", v, problems);
        }
        let mut ctx = WalkContext::new(c.mem, c.ram, c.scratch, c.limits);
        let area = vmalloc::decode_chain(&mut ctx, &t.folios_info, at);
        let folios = test_kho::decode_folios(&mut ctx, &t, at);
        if let Ok(area) = &area {
            let order = Order::new(u32::from(t.folios_info.order)).unwrap_or(Order::ZERO);
            let chunk_blocks = area.chunk_pages.iter().filter_map(|&p| Block::at(p, Order::ZERO));
            for b in chunk_blocks.chain(area.blocks(order)) {
                if !is_preserved_range(c, b.range()) {
                    problems.push(format!("folios_info page {b} is not preserved"));
                }
            }
            v["vmalloc_chunks"] = json!(area.chunk_pages.iter().map(|p| p.as_u64()).collect::<Vec<_>>());
            v["vmalloc_pieces"] = json!(area.pieces.iter().map(|p| p.as_u64()).collect::<Vec<_>>());
        }
        match folios {
            Ok(folios) => {
                for b in &folios {
                    if c.check_preserved && !c.preserved.contains(*b) {
                        problems.push(format!("folio {b} is not preserved with that order"));
                    }
                }
                v["folios"] = json!(
                    folios
                        .iter()
                        .map(|b| json!({"phys": b.phys().as_u64(), "order": b.order().as_u32()}))
                        .collect::<Vec<_>>()
                );
                Decoded::ok("test_kho", v, problems)
            }
            Err(e) => Decoded { kind: "test_kho", value: Some(v), problems, error: Some(e.to_string()), warning: None },
        }
    }

    /// A generic FDT as JSON: `name`, first `compatible`, `properties` (strings as strings,
    /// 4- and 8-byte values as little-endian numbers, as KHO stores them, anything else as
    /// hex), `children`.
    pub fn fdt_json(n: &FdtNode) -> Value {
        let mut props = serde_json::Map::new();
        for (k, v) in &n.props {
            props.insert(k.clone(), prop_json(v));
        }
        let children: Vec<Value> = n.children.iter().map(fdt_json).collect();
        json!({
            "name": n.name,
            "compatible": n.first_compatible(),
            "properties": props,
            "children": children,
        })
    }

    fn prop_json(v: &[u8]) -> Value {
        let printable = |s: &[u8]| !s.is_empty() && s.iter().all(|&b| (0x20..0x7f).contains(&b));
        if let Some((&0, body)) = v.split_last()
            && body.split(|&b| b == 0).all(printable)
        {
            let parts: Vec<&str> = body.split(|&b| b == 0).filter_map(|s| std::str::from_utf8(s).ok()).collect();
            return if parts.len() == 1 { json!(parts[0]) } else { json!(parts) };
        }
        match v.len() {
            4 => json!(u32::from_le_bytes([v[0], v[1], v[2], v[3]])),
            8 => json!(u64::from_le_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]])),
            _ => json!(v.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        input: InputArgs,
    }

    #[test]
    fn long_lists_are_left_out_unless_asked_for() {
        // 5000 order-0 blocks, every other page: 5000 blocks, 5000 ranges.
        let mut set = BlockSet::new();
        for i in 0..5000u64 {
            set.insert(kho_core::Block::at(PhysAddr::new(0x100_0000 + i * 0x2000), Order::ZERO).unwrap());
        }
        let ranges = set.coalesced_ranges().unwrap();
        let mut r = Report::default();
        fill_preserved(&mut r, &set, &ranges, 0, false);
        assert!(r.preserved.is_empty());
        assert_eq!(r.ranges.len() as u64, LIST_LIMIT);
        assert!(!r.lists_complete);
        assert_eq!((r.totals.blocks, r.totals.ranges, r.totals.pages), (5000, 5000, 5000));
        assert!(r.notes.iter().any(|n| n.contains("--blocks")), "{:?}", r.notes);
        let mut r = Report::default();
        fill_preserved(&mut r, &set, &ranges, 0, true);
        assert_eq!((r.preserved.len(), r.ranges.len()), (5000, 5000));
        assert!(r.lists_complete);
    }

    fn capture(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/captures/linux-7.3.4-test_kho").join(file)
    }

    /// The next kernel's view of the Linux 7.3.4 capture: kho/in/fdt, consumed.
    fn consumed(scratch: Vec<PhysRange>) -> (Loaded, InputArgs) {
        let input = Args::parse_from(["kho"]).input;
        let mem = memsrc::raw::open(&MemSpec { path: capture("mem.img.zst"), base: 0 }).unwrap();
        let fdt = std::fs::read(capture("debugfs/kernel2-in-fdt.dtb")).unwrap();
        let l = Loaded {
            mem,
            fdt: Some(fdt),
            fdt_phys: None,
            fdt_origin: "kho/in/fdt".into(),
            scratch,
            scratch_origin: "test".into(),
            problems: Vec::new(),
            notes: Vec::new(),
            consumed: true,
        };
        (l, input)
    }

    fn capture_scratch() -> Vec<PhysRange> {
        scratch_from_files(
            &capture("debugfs/kernel1-out-scratch_phys.txt"),
            &capture("debugfs/kernel1-out-scratch_len.txt"),
        )
        .unwrap()
    }

    #[test]
    fn a_consumed_handover_checks_fdt_scratch_and_blobs_only() {
        let (l, a) = consumed(capture_scratch());
        let r = analyze(&l, &a).report;
        assert!(r.valid, "{:?}", r.problems);
        assert!(r.consumed);
        assert_eq!(r.format.as_deref(), Some("kho-v4"));
        assert_eq!(r.root_fdt.memory_map, Some(0x18_1000));
        assert_eq!(r.root_fdt.size, 293);
        // No walk: nothing claimed about preserved memory.
        assert_eq!((r.preserved.len(), r.totals.blocks, r.root_fdt.metadata_pages), (0, 0, 0));
        let names: Vec<&str> = r.subtrees.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["kho_test", "kexec-metadata"]);
        let t = r.subtrees[0].decoded.as_ref().unwrap();
        assert_eq!(t["nr_folios"], 26);
        // The folios_info pages are freed by now: shown, not followed.
        assert!(t.get("folios").is_none() && t.get("vmalloc_chunks").is_none(), "{t}");
        assert_eq!(r.subtrees[1].decoded.as_ref().unwrap()["kexec_count"], 1);
        let text = validate_text(&r);
        assert!(text.starts_with(live::CONSUMED_MESSAGE), "{text}");
        assert!(text.contains("(kho-v4 handover, 2 sub-blob(s), 3 scratch area(s))"), "{text}");
        let text = r.to_text();
        assert!(text.contains("preserved: not checkable after boot"), "{text}");
        assert!(text.contains("nr_folios 26, csum 1120136128, folios not followed"), "{text}");
        assert!(text.contains("memory map:      0x181000 (radix root; not walked: Linux frees it at boot)"), "{text}");
        assert!(r.to_json().unwrap().contains("\"consumed\": true"));
    }

    #[test]
    fn a_consumed_handover_whose_blobs_were_reused_is_not_invalid() {
        // The same FDT over memory that reads as zero: both blobs no longer decode.
        let (mut l, a) = consumed(capture_scratch());
        l.mem = MemSource::from_pages("zeroed RAM", 0, 2 << 30, Default::default()).unwrap();
        let r = analyze(&l, &a).report;
        assert!(r.valid && r.consumed, "{:?}", r.problems);
        assert_eq!(r.subtrees.len(), 2);
        assert!(r.subtrees[0].error.is_some(), "{:?}", r.subtrees);
        let reused: Vec<&String> = r.notes.iter().filter(|n| n.contains("may have reused the memory")).collect();
        assert_eq!(reused.len(), 1, "{:#?}", r.notes);
        assert!(reused[0].contains("sub-blob \"kho_test\" at 0x292000"), "{}", reused[0]);
        // Zeroed kexec-metadata reads as version 0: Linux warns and ignores it (spec §2.5).
        assert_eq!(r.subtrees[1].decoded.as_ref().unwrap()["ignored"], true);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("kexec-metadata version 0, not 1"), "{}", r.warnings[0]);
    }

    #[test]
    fn a_consumed_handover_with_a_blob_in_scratch_is_invalid() {
        // A scratch area over the kho_test blob (0x292000, 240 bytes).
        let mut scratch = capture_scratch();
        scratch.push(PhysRange::new(PhysAddr::new(0x29_0000), 0x1_0000).unwrap());
        let (l, a) = consumed(scratch);
        let r = analyze(&l, &a).report;
        assert!(!r.valid && r.consumed);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].message.contains("sub-blob \"kho_test\""), "{}", r.problems[0].message);
        assert!(r.problems[0].message.contains("scratch"), "{}", r.problems[0].message);
    }
}
