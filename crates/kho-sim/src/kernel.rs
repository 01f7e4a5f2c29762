//! One simulated kernel's life, from boot to kexec.
//!
//! 1. **Boot.** With a handover in the boot block: validate it (`Handover::parse`), bring up
//!    memory management on the handed-over scratch areas in scratch-only mode, make the
//!    kernel's early allocations there, reserve the preserved memory, then free the rest of
//!    RAM. A handover that fails validation is discarded with its reason printed, and the
//!    kernel boots cold (fresh scratch, nothing reserved), as Linux does.
//! 2. **Restore and verify** the workload (generation > 0).
//! 3. Unless this is the last kernel: **fill** (first kernel), **preserve**, **churn** (later
//!    kernels), **publish** the blobs, **finalize**, write the boot block, **poison**
//!    everything not handed over, and return the RAM for the exec.
//!
//! The blackout of a kexec is measured from the previous kernel's finalize start to the end
//! of this kernel's restore (wall clock across the exec); verification is the simulator's
//! oracle, not part of the blackout, and is reported separately.

use std::time::Instant;

use kho_core::fdt::FdtTree;
use kho_core::incoming::{Handover, IncomingConfig, OversizedPolicy};
use kho_core::outgoing::{Kho, OutgoingConfig};
use kho_core::{BitmapBytes, Field, FormatVersion, Order, PAGE_SIZE, PhysAddr, PhysRange, PhysRead, PhysWrite};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::boot::{BootBlock, now_ns};
use crate::kexec::{PoisonStats, merge_ranges, poison_unpreserved};
use crate::machine::{Machine, MemStats, ScratchSizes, cold_scratch_layout};
use crate::ram::Ram;
use crate::workload::{Workload, WorkloadConfig, WorkloadReport};

/// Everything a run needs; carried across exec in the boot block.
///
/// It is read back from simulated RAM, so the next kernel checks it ([`SimConfig::check`])
/// and nothing in it names a file or a program: the next kernel's binary and the results
/// file come from the command line the trusted parent process wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// RAM file size in bytes.
    pub ram: u64,
    /// Workload sizes.
    pub workload: WorkloadConfig,
    /// Kexecs to perform.
    pub kexecs: u64,
    /// Seed of all pseudo-random data.
    pub seed: u64,
    /// Wire format: "v1" or "v4".
    pub format: String,
    /// kho-v1 bitmap size (512 or 4096).
    pub bitmap_bytes: u64,
    /// The first kernel's maximum order.
    pub max_order: u32,
    /// Every later kernel's maximum order.
    pub next_max_order: u32,
    /// "reserve" or "reject": blocks above the next kernel's maximum order.
    pub oversized: String,
    /// Scratch sizes for cold boots.
    pub scratch: ScratchSizes,
    /// NUMA nodes (one scratch area each).
    pub nodes: u32,
    /// Corrupt the first handover: "chunk", "bitmap-ptr" or "fdt".
    pub corrupt: Option<String>,
    /// Drop one page-cache folio's preservation in the first kernel.
    pub forget_preserve: bool,
    /// Print one JSON document at the end instead of text.
    pub json: bool,
    /// Pages each kernel allocates early in boot (from scratch on a KHO boot).
    pub early_pages: u64,
    /// Testing: the first kernel kills itself (SIGKILL) right after "finalize" or right
    /// after writing the "boot-block", before exec.
    #[serde(default)]
    pub crash_after: Option<String>,
}

impl SimConfig {
    fn format(&self) -> Result<FormatVersion, SimError> {
        match self.format.as_str() {
            "v1" => Ok(FormatVersion::V1),
            "v4" => Ok(FormatVersion::V4),
            f => Err(SimError::Config(format!("unknown format {f:?} (expected v1 or v4)"))),
        }
    }
    fn bitmap(&self) -> Result<BitmapBytes, SimError> {
        BitmapBytes::from_bytes(self.bitmap_bytes)
            .ok_or_else(|| SimError::Config(format!("bitmap size {} (expected 512 or 4096)", self.bitmap_bytes)))
    }
    fn policy(&self) -> Result<OversizedPolicy, SimError> {
        match self.oversized.as_str() {
            "reserve" => Ok(OversizedPolicy::Reserve),
            "reject" => Ok(OversizedPolicy::Reject),
            o => Err(SimError::Config(format!("unknown oversized policy {o:?} (expected reserve or reject)"))),
        }
    }
    /// Checks the configuration before the first boot.
    ///
    /// # Errors
    /// [`SimError::Config`] naming the bad value.
    pub fn check(&self) -> Result<(), SimError> {
        if let Some(c) = &self.crash_after
            && c != "finalize"
            && c != "boot-block"
        {
            return Err(SimError::Config(format!("crash point {c:?}: expected \"finalize\" or \"boot-block\"")));
        }
        self.format()?;
        self.bitmap()?;
        self.policy()?;
        for o in [self.max_order, self.next_max_order] {
            if !(1..=20).contains(&o) {
                return Err(SimError::Config(format!("maximum order {o} (expected 1 to 20)")));
            }
        }
        if let Some(c) = &self.corrupt
            && !["chunk", "bitmap-ptr", "fdt"].contains(&c.as_str())
        {
            return Err(SimError::Config(format!("unknown corruption {c:?} (expected chunk, bitmap-ptr or fdt)")));
        }
        let w = &self.workload;
        if w.guest == 0 && w.page_cache == 0 && w.table == 0 {
            return Err(SimError::Config(
                "the workload is empty (--guest 0 --page-cache 0 --table 0): nothing would be preserved, so the \
                 run could not fail"
                    .into(),
            ));
        }
        if self.kexecs == 0 || self.kexecs > 1000 {
            return Err(SimError::Config(format!("{} kexecs (expected 1 to 1000)", self.kexecs)));
        }
        let layout = cold_scratch_layout(self.ram, self.scratch, self.nodes)?;
        let scratch: u64 = layout.iter().map(|r| r.len()).sum();
        let w = self.workload.guest + self.workload.page_cache + self.workload.table;
        let usable = self.ram.saturating_sub(crate::RAM_BASE + scratch);
        if w.saturating_mul(5) / 4 + (16 << 20) > usable {
            return Err(SimError::Config(format!(
                "a workload of {} MiB (plus churn and blobs) does not fit in {} MiB of RAM outside scratch",
                w >> 20,
                usable >> 20
            )));
        }
        Ok(())
    }
}

/// One timed stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Name.
    pub name: String,
    /// Milliseconds.
    pub ms: f64,
    /// What it did.
    pub detail: String,
}

/// What one kernel did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelReport {
    /// Kexecs before this kernel.
    pub generation: u64,
    /// "cold", "kho" or "cold (handover refused)".
    pub boot: String,
    /// Why the handover was refused.
    pub refused: Option<String>,
    /// This kernel's maximum order.
    pub max_order: u32,
    /// Scratch areas `[start, end)` in use.
    pub scratch: Vec<[u64; 2]>,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// Previous kernel's exec to this kernel's start, ms.
    pub exec_ms: Option<f64>,
    /// Previous kernel's finalize start to the end of this kernel's restore, ms.
    pub blackout_ms: Option<f64>,
    /// Outgoing: metadata bytes of this kernel's handover.
    pub metadata_bytes: u64,
    /// Outgoing: bytes preserved.
    pub preserved_bytes: u64,
    /// Outgoing: blocks preserved.
    pub preserved_blocks: u64,
    /// Outgoing: blob bytes.
    pub blob_bytes: u64,
    /// Incoming: preserved blocks nobody restored, released.
    pub released_unclaimed: u64,
    /// Incoming: blocks above this kernel's maximum order.
    pub oversized_blocks: u64,
    /// Workload counters and problems.
    pub workload: WorkloadReport,
    /// What poisoning did.
    pub poison: Option<PoisonStats>,
    /// Memory-map inconsistencies.
    pub conflicts: Vec<String>,
    /// Memory counters at the end.
    pub mem: Option<MemStats>,
    /// RAM file bytes actually allocated.
    pub ram_allocated_bytes: u64,
}

impl KernelReport {
    /// True if nothing went wrong in this kernel.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.refused.is_none() && self.workload.problems.is_empty() && self.conflicts.is_empty()
    }
    /// A stage's time.
    #[must_use]
    pub fn stage_ms(&self, name: &str) -> Option<f64> {
        self.stages.iter().find(|s| s.name == name).map(|s| s.ms)
    }
}

/// Receives stage results and progress while a kernel runs.
pub trait Observer {
    /// A stage finished.
    fn stage(&mut self, generation: u64, stage: &Stage);
    /// A message (boot, refusal).
    fn note(&mut self, generation: u64, msg: &str);
    /// Progress of a long stage.
    fn progress(&mut self, label: &str, done: u64, total: u64);
}

/// What happens after a kernel.
#[derive(Debug)]
pub struct KernelOutcome {
    /// The report.
    pub report: KernelReport,
    /// RAM with the boot block written and everything not handed over poisoned: exec the
    /// next kernel on it. `None` when the run ends here.
    pub next: Option<Ram>,
}

struct Timer<'a> {
    obs: &'a mut dyn Observer,
    generation: u64,
    stages: Vec<Stage>,
}

impl Timer<'_> {
    fn done(&mut self, name: &str, t: Instant, detail: String) {
        let s = Stage { name: name.into(), ms: t.elapsed().as_secs_f64() * 1e3, detail };
        self.obs.stage(self.generation, &s);
        self.stages.push(s);
    }
}

fn ms_between(a: u64, b: u64) -> f64 {
    b.saturating_sub(a) as f64 / 1e6
}

fn order(o: u32) -> Result<Order, SimError> {
    Order::new(o).ok_or_else(|| SimError::Config(format!("order {o} out of range")))
}

/// Runs one kernel on `ram`, booted with `boot` (None: the first, cold boot).
///
/// # Errors
/// Failures of the simulator itself (not of the handover, which go in the report).
pub fn run_kernel(
    ram: Ram,
    boot: Option<&BootBlock>,
    cfg: &SimConfig,
    obs: &mut dyn Observer,
) -> Result<KernelOutcome, SimError> {
    let start_ns = now_ns();
    let generation = boot.map_or(0, |b| b.generation);
    let max_order = if generation == 0 { cfg.max_order } else { cfg.next_max_order };
    let mut rep = KernelReport { generation, max_order, ..KernelReport::default() };
    if let Some(b) = boot {
        rep.exec_ms = (b.exec_start_ns != 0).then(|| ms_between(b.exec_start_ns, start_ns));
    }
    let mut t = Timer { obs, generation, stages: Vec::new() };
    let policy = cfg.policy()?;
    let incoming = IncomingConfig {
        ram: vec![ram.range()],
        max_order: order(max_order)?,
        v1_bitmap_bytes: cfg.bitmap()?,
        oversized: policy,
        limits: kho_core::Limits::default(),
    };

    // ---- boot ---------------------------------------------------------------------------
    let mut handover = None;
    if let Some(ptr) = boot.and_then(|b| b.kho) {
        let t0 = Instant::now();
        match Handover::parse(&ram, &ptr, &incoming) {
            Ok(h) => {
                let d = format!(
                    "{} blocks, {} bytes preserved, {} metadata pages, {} sub-blobs",
                    h.preserved_blocks(),
                    h.preserved_bytes(),
                    h.metadata_pages().len(),
                    h.subtrees().len()
                );
                t.done("validate", t0, d);
                handover = Some(h);
            }
            Err(e) => {
                t.done("validate", t0, "refused".into());
                let msg = e.to_string();
                t.obs.note(generation, &format!("handover refused: {msg}; discarding it and booting cold"));
                rep.refused = Some(msg);
            }
        }
    }
    let machine = match &mut handover {
        Some(h) => {
            rep.boot = "kho".into();
            let m = Machine::boot(ram, h.scratch().to_vec(), max_order, true)?;
            early_allocations(&m, cfg.early_pages)?;
            let t0 = Instant::now();
            h.reserve(&mut m.memmap());
            m.end_scratch_only();
            t.done("reserve", t0, format!("{} ranges", h.reserved_ranges().len()));
            rep.oversized_blocks = h.oversized_blocks();
            m
        }
        None => {
            rep.boot = if rep.refused.is_some() { "cold (handover refused)".into() } else { "cold".into() };
            let scratch = cold_scratch_layout(ram.size(), cfg.scratch, cfg.nodes)?;
            let m = Machine::boot(ram, scratch, max_order, false)?;
            early_allocations(&m, cfg.early_pages)?;
            m
        }
    };
    rep.scratch = machine.scratch().iter().map(|r| [r.start().as_u64(), r.end().as_u64()]).collect();

    // ---- restore and verify ---------------------------------------------------------------
    let mut workload = Workload::empty(cfg.seed ^ generation);
    if let Some(h) = &mut handover {
        let t0 = Instant::now();
        let handover_pages: Vec<PhysRange> = boot
            .and_then(|b| b.kho)
            .map(|p| {
                [PhysRange::new(p.fdt, p.fdt_size.max(1)), PhysRange::new(p.scratch, p.scratch_size.max(1))]
                    .into_iter()
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        let (w, wr) = Workload::restore(&machine, h, policy, cfg.seed, &handover_pages);
        let restored_ns = now_ns();
        t.done(
            "restore",
            t0,
            format!(
                "{} folios, {} page runs, {} oversized folios as pages",
                wr.folios_restored, wr.page_runs_restored, wr.oversized_as_pages
            ),
        );
        rep.blackout_ms = boot.map(|b| ms_between(b.finalize_start_ns, restored_ns));
        rep.workload = wr;
        rep.released_unclaimed = h.release_unclaimed(&mut machine.memmap());
        let t0 = Instant::now();
        let mut wr = std::mem::take(&mut rep.workload);
        w.verify(&machine, &mut wr, &mut |d, n| t.obs.progress("verify", d, n));
        t.done("verify", t0, format!("{} bytes checked, {} problems", wr.verified_bytes, wr.problems.len()));
        rep.workload = wr;
        workload = w;
    } else if generation > 0 {
        rep.workload
            .problems
            .push(format!("kernel {generation} booted cold: the whole workload of the previous kernel is lost"));
    }
    handover = None;
    drop(handover);
    rep.conflicts = machine.conflicts();

    if !rep.ok() || generation >= cfg.kexecs {
        rep.mem = Some(machine.stats());
        rep.ram_allocated_bytes = machine.ram().allocated_bytes().unwrap_or(0);
        rep.stages = t.stages;
        return Ok(KernelOutcome { report: rep, next: None });
    }

    // ---- change, preserve, finalize --------------------------------------------------------
    if generation == 0 {
        let t0 = Instant::now();
        workload.create(&machine, &cfg.workload, &mut |d, n| t.obs.progress("fill", d, n))?;
        t.done("fill", t0, format!("{} bytes of seeded data", workload.bytes()));
    }
    let mut scratch = machine.scratch().to_vec();
    scratch.sort_unstable();
    let out_cfg = OutgoingConfig {
        ram: vec![machine.ram_range()],
        scratch,
        max_order: order(max_order)?,
        bitmap_bytes: cfg.bitmap()?,
        max_subtrees: 64,
    };
    let kho = Kho::new(&machine, out_cfg).map_err(SimError::kho("start the outgoing handover"))?;
    let t0 = Instant::now();
    let n = workload.preserve(&machine, &kho, cfg.forget_preserve && generation == 0)?;
    t.done("preserve", t0, format!("{n} items"));
    if generation > 0 {
        let t0 = Instant::now();
        let replaced = workload.churn(&machine, &kho, cfg.workload.churn_percent)?;
        rep.workload.items_replaced = replaced;
        t.done("churn", t0, format!("{replaced} items replaced (new ones preserved, old ones unpreserved and freed)"));
    }
    rep.workload.items_preserved = n;
    rep.workload.workload_bytes = workload.bytes();
    let t0 = Instant::now();
    rep.blob_bytes = workload.publish(&machine, &kho, generation)?;
    t.done("publish", t0, format!("3 blobs, {} bytes", rep.blob_bytes));

    let finalize_start_ns = now_ns();
    let t0 = Instant::now();
    let fin = kho.finalize(cfg.format()?).map_err(SimError::kho("finalize"))?;
    rep.metadata_bytes = fin.metadata_bytes;
    rep.preserved_bytes = fin.preserved_bytes;
    rep.preserved_blocks = fin.preserved_blocks;
    t.done(
        "finalize",
        t0,
        format!(
            "{}: {} metadata bytes for {} preserved bytes in {} blocks",
            fin.format.compatible(),
            fin.metadata_bytes,
            fin.preserved_bytes,
            fin.preserved_blocks
        ),
    );

    let t0 = Instant::now();
    let mut keep = kho
        .preserved()
        .map_err(SimError::kho("preserved set"))?
        .coalesced_ranges()
        .map_err(SimError::kho("preserved ranges"))?;
    keep.extend(fin.metadata_pages.iter().filter_map(|&p| PhysRange::new(p, PAGE_SIZE)));
    let keep = merge_ranges(keep);
    let poison = poison_unpreserved(machine.ram(), &keep)?;
    t.done("poison", t0, format!("{} of {} data pages poisoned", poison.poisoned_pages, poison.data_pages));
    rep.poison = Some(poison);
    if let (Some(c), 0) = (&cfg.corrupt, generation) {
        let what = corrupt(&machine, &fin.ptr, fin.format, c)?;
        t.obs.note(generation, &format!("corrupted the handover: {what}"));
    }
    drop(kho);
    rep.mem = Some(machine.stats());
    rep.ram_allocated_bytes = machine.ram().allocated_bytes().unwrap_or(0);
    rep.stages = t.stages;
    let ram = machine.into_ram();
    let config = serde_json::to_string(cfg).map_err(|e| SimError::Config(e.to_string()))?;
    let bb = BootBlock {
        kho: Some(fin.ptr),
        generation: generation + 1,
        ram_size: ram.size(),
        finalize_start_ns,
        exec_start_ns: now_ns(),
        config,
    };
    crash_point(cfg, generation, "finalize");
    bb.write(&ram)?;
    crash_point(cfg, generation, "boot-block");
    Ok(KernelOutcome { report: rep, next: Some(ram) })
}

/// Testing hook: dies by SIGKILL at `point` in the first kernel if the run asks for it (a
/// kexec that dies half-way: nothing after this point happens, not even stdio flushing).
fn crash_point(cfg: &SimConfig, generation: u64, point: &str) {
    if generation == 0 && cfg.crash_after.as_deref() == Some(point) {
        eprintln!("kho kernel 0: killed after {point} (testing --crash-after)");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// The kernel's own early allocations (on a KHO boot they can only come from scratch).
fn early_allocations(m: &Machine, pages: u64) -> Result<(), SimError> {
    for i in 0..pages {
        let p = m.alloc(0)?;
        m.write_phys(p.phys(), format!("early kernel data page {i}").as_bytes())?;
    }
    Ok(())
}

/// Damages the finalized handover for testing; returns what was changed.
fn corrupt(m: &Machine, ptr: &kho_core::HandoverPtr, format: FormatVersion, what: &str) -> Result<String, SimError> {
    let mut fdt = vec![0u8; PAGE_SIZE as usize];
    m.read_phys(ptr.fdt, &mut fdt)?;
    if what == "fdt" {
        m.write_phys(ptr.fdt, &[0xde])?;
        return Ok(format!("first byte of the root FDT at {} (its magic)", ptr.fdt));
    }
    let tree = FdtTree::parse(&fdt, Field::RootFdt, ptr.fdt).map_err(SimError::kho("read back the root FDT"))?;
    let map = PhysAddr::new(
        tree.root.le64(ptr.fdt, "/", "preserved-memory-map").map_err(SimError::kho("read preserved-memory-map"))?,
    );
    match (format, what) {
        (FormatVersion::V1, "chunk") => {
            m.write_phys(PhysAddr::new(map.as_u64() + 13), &[0x7f])?;
            Ok(format!("one byte of khoser_mem_chunk.hdr.num_elms of the chunk at {map}"))
        }
        (FormatVersion::V1, _) => {
            let at = PhysAddr::new(map.as_u64() + 24);
            m.write_u64(at, m.ram().size() + 0x10_0000)?;
            Ok(format!("khoser_mem_bitmap_ptr.bitmap at {at} now points past the end of RAM"))
        }
        (FormatVersion::V4, _) => {
            // Find the root table's first used entry and break it.
            let mut node = vec![0u8; PAGE_SIZE as usize];
            m.read_phys(map, &mut node)?;
            let i = node.chunks_exact(8).position(|c| c.iter().any(|&b| b != 0)).unwrap_or(0);
            let at = PhysAddr::new(map.as_u64() + 8 * i as u64);
            let bad = if what == "chunk" { m.read_u64(at)? | 0x123 } else { m.ram().size() + 0x10_0000 };
            m.write_u64(at, bad)?;
            Ok(format!("radix root entry {i} at {at} set to {bad:#x}"))
        }
    }
}
