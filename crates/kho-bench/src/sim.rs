//! Blackout of a simulated kexec through the simulator's own path (kho-sim's machine, buddy
//! allocator and memory map), without the process exec and without filling data, so a
//! 64 GiB guest fits a small machine: the blackout does not depend on what the pages hold.
//! Stages as `kho demo` times them: finalize, poison, validate, boot on scratch, reserve,
//! restore.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kho_core::{FormatVersion, IncomingConfig, Kho, Order, OutgoingConfig, PAGE_SIZE, PhysRange};
use kho_sim::kexec::{merge_ranges, poison_unpreserved};
use kho_sim::machine::cold_scratch_layout;
use kho_sim::{Machine, Ram, ScratchSizes};
use serde::Serialize;

/// One simulated kexec's stages, ms.
#[derive(Debug, Clone, Serialize)]
pub struct SimBlackout {
    /// Guest bytes preserved as 2 MiB folios.
    pub guest: u64,
    /// Folios.
    pub folios: u64,
    /// Wire format.
    pub format: String,
    /// Outgoing preserve of every folio (not in the blackout).
    pub preserve_ms: f64,
    /// Stages in the blackout.
    pub finalize_ms: f64,
    /// Poisoning of unpreserved data pages (the simulator's oracle).
    pub poison_ms: f64,
    /// `Handover::parse`.
    pub validate_ms: f64,
    /// Memory management brought up on scratch.
    pub boot_ms: f64,
    /// Reserve.
    pub reserve_ms: f64,
    /// Restore of every folio.
    pub restore_ms: f64,
    /// Sum of the stages: the blackout without the process exec.
    pub blackout_ms: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Preserves `guest` bytes of 2 MiB folios, finalizes, "kexecs" into a new machine on the same
/// RAM and restores every folio.
///
/// # Errors
/// Any simulator or engine failure, as text.
pub fn blackout(guest: u64, format: FormatVersion) -> Result<SimBlackout, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let ram = Ram::create(guest + (1 << 30)).map_err(|x| e(&x))?;
    let scratch = cold_scratch_layout(ram.size(), ScratchSizes::default(), 1).map_err(|x| e(&x))?;
    let m = Machine::boot(ram, scratch, 10, false).map_err(|x| e(&x))?;
    let mut sorted = m.scratch().to_vec();
    sorted.sort_unstable();
    let kho = Kho::new(&m, OutgoingConfig::new(vec![m.ram_range()], sorted)).map_err(|x| e(&x))?;
    let n = guest >> 21;
    let order = Order::new(9).ok_or("order")?;
    let mut folios = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let t = Instant::now();
    for _ in 0..n {
        let p = m.alloc(9).map_err(|x| e(&x))?;
        kho.preserve_folio(p, order).map_err(|x| e(&x))?;
        folios.push(p);
    }
    let preserve_ms = ms(t);

    let t = Instant::now();
    let fin = kho.finalize(format).map_err(|x| e(&x))?;
    let finalize_ms = ms(t);
    let t = Instant::now();
    let mut keep = kho.preserved().map_err(|x| e(&x))?.coalesced_ranges().map_err(|x| e(&x))?;
    keep.extend(fin.metadata_pages.iter().filter_map(|&p| PhysRange::new(p, PAGE_SIZE)));
    let keep = merge_ranges(keep);
    poison_unpreserved(m.ram(), &keep).map_err(|x| e(&x))?;
    let poison_ms = ms(t);
    drop(kho);
    let ram = m.into_ram();

    let t = Instant::now();
    let mut h =
        kho_core::Handover::parse(&ram, &fin.ptr, &IncomingConfig::new(vec![ram.range()])).map_err(|x| e(&x))?;
    let validate_ms = ms(t);
    let t = Instant::now();
    let m = Machine::boot(ram, h.scratch().to_vec(), 10, true).map_err(|x| e(&x))?;
    let boot_ms = ms(t);
    let t = Instant::now();
    h.reserve(&mut m.memmap());
    m.end_scratch_only();
    let reserve_ms = ms(t);
    let t = Instant::now();
    for p in &folios {
        h.restore_folio(&mut m.memmap(), p.phys()).map_err(|x| e(&x))?;
    }
    let restore_ms = ms(t);
    Ok(SimBlackout {
        guest,
        folios: n,
        format: format.compatible().to_string(),
        preserve_ms,
        finalize_ms,
        poison_ms,
        validate_ms,
        boot_ms,
        reserve_ms,
        restore_ms,
        blackout_ms: finalize_ms + poison_ms + validate_ms + boot_ms + reserve_ms + restore_ms,
    })
}

/// One kernel of a real `kho demo` run (with exec and data).
#[derive(Debug, Clone, Serialize)]
pub struct DemoKernel {
    /// Generation (1 = first kexec).
    pub generation: u64,
    /// Blackout as the demo reports it, ms (includes the exec).
    pub blackout_ms: f64,
    /// The exec itself, ms.
    pub exec_ms: f64,
    /// Restore stage, ms.
    pub restore_ms: f64,
    /// Reserve stage, ms.
    pub reserve_ms: f64,
}

/// Runs `exe demo --json args...` and picks out every kexec's blackout.
///
/// # Errors
/// The demo failed or printed something unexpected.
pub fn demo(exe: &Path, args: &[&str]) -> Result<Vec<DemoKernel>, String> {
    let out = Command::new(exe).arg("demo").arg("--json").args(args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("kho demo exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let kernels = v.get("kernels").and_then(|k| k.as_array()).ok_or("no kernels in the demo's JSON")?;
    let stage = |k: &serde_json::Value, name: &str| {
        k.get("stages")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().find(|x| x.get("name").and_then(|n| n.as_str()) == Some(name)))
            .and_then(|x| x.get("ms"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    Ok(kernels
        .iter()
        .filter_map(|k| {
            Some(DemoKernel {
                generation: k.get("generation")?.as_u64()?,
                blackout_ms: k.get("blackout_ms")?.as_f64()?,
                exec_ms: k.get("exec_ms").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
                restore_ms: stage(k, "restore"),
                reserve_ms: stage(k, "reserve"),
            })
        })
        .collect())
}
