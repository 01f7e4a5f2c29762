//! kexec, simulated: poison what was not handed over, then `exec()` the next kernel.
//!
//! **Poison.** Before the exec, every page of RAM that holds data and is neither preserved
//! nor KHO metadata is overwritten with [`POISON_BYTE`], so memory that was not preserved
//! is visibly lost after the kexec instead of silently surviving in the RAM file (a real
//! kexec gives no such guarantee either way; the simulator makes loss deterministic).
//! Pages that hold data are found with `SEEK_DATA`/`SEEK_HOLE`. Pages that were never
//! written are holes: they read as zero and are **not** poisoned, because writing them
//! would allocate the whole RAM file (4 GiB to 1 TiB) for nothing: a hole holds no data
//! that could wrongly survive.
//!
//! **Exec.** The RAM and results descriptors' `FD_CLOEXEC` flags are cleared and the next
//! kernel binary runs `kho kernel --ram-fd N --results-fd M`; it finds the run's
//! configuration in the boot block (and checks it), but never the program that runs next.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use kho_core::{PAGE_SIZE, PhysAddr, PhysRange, PhysRead};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::ram::{RAM_BASE, Ram};
use crate::results::Results;

/// The byte every poisoned page is filled with (Linux's `POISON_FREE`).
pub const POISON_BYTE: u8 = 0x6b;

/// What poisoning did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonStats {
    /// Data extents the RAM file had.
    pub extents: u64,
    /// Pages that held data.
    pub data_pages: u64,
    /// Pages poisoned.
    pub poisoned_pages: u64,
}

pub use kho_core::types::merge_ranges;

/// Poisons every page of RAM holding data outside `keep` (sorted, merged ranges).
///
/// # Errors
/// [`SimError::Ram`] if the data extents cannot be found, or a memory error.
pub fn poison_unpreserved(ram: &Ram, keep: &[PhysRange]) -> Result<PoisonStats, SimError> {
    let pattern = [POISON_BYTE; 64];
    let extents = ram.data_extents(RAM_BASE, ram.size())?;
    let mut st = PoisonStats { extents: extents.len() as u64, ..PoisonStats::default() };
    let mut k = 0usize;
    for (s, e) in extents {
        st.data_pages += (e - s).div_ceil(PAGE_SIZE);
        let mut pos = s;
        while pos < e {
            while k < keep.len() && keep[k].end().as_u64() <= pos {
                k += 1;
            }
            let (gap_end, skip_to) = match keep.get(k) {
                Some(r) if r.start().as_u64() <= pos => (pos, r.end().as_u64()),
                Some(r) => (r.start().as_u64().min(e), r.end().as_u64()),
                None => (e, e),
            };
            if gap_end > pos {
                ram.fill(pos, gap_end - pos, &pattern)?;
                st.poisoned_pages += (gap_end - pos).div_ceil(PAGE_SIZE);
            }
            pos = if gap_end >= e { e } else { skip_to.min(e) };
        }
    }
    Ok(st)
}

/// True if the page at `phys` is entirely poison.
///
/// # Errors
/// A memory error outside RAM.
pub fn is_poisoned(mem: &impl PhysRead, phys: PhysAddr) -> Result<bool, SimError> {
    let mut buf = [0u8; PAGE_SIZE as usize];
    mem.read_phys(phys, &mut buf)?;
    Ok(buf.iter().all(|&b| b == POISON_BYTE))
}

/// Replaces this process with the next kernel: `exe kernel --ram-fd N --results-fd M`, plus
/// `--next-kernel PATH` when the run names one, so every later kernel learns which program
/// follows it from its trusted parent's command line, never from simulated RAM. Returns only
/// if the exec failed.
#[must_use]
pub fn exec_next_kernel(ram: &Ram, results: &Results, exe: &Path, next_kernel: Option<&Path>, json: bool) -> SimError {
    let mut cmd = match next_kernel_command(ram, results, exe, next_kernel, json) {
        Ok(c) => c,
        Err(e) => return e,
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let err = cmd.exec();
    SimError::Io(format!("cannot exec the next kernel {}: {err}", exe.display()))
}

/// Makes this kernel process die (SIGTERM) when the process that started the chain does:
/// a Ctrl-C or SIGTERM to `kho demo` ends the whole run, not just its supervisor. The setting
/// survives `exec()`, so it is made once, in the first kernel.
///
/// # Errors
/// [`SimError::Io`] if the parent is already gone (the kernel was re-parented) or `prctl`
/// fails.
pub fn die_with_parent() -> Result<(), SimError> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .map_err(|e| SimError::Io(format!("cannot set the parent-death signal: {e}")))?;
    match rustix::process::getppid() {
        Some(p) if !p.is_init() => Ok(()),
        _ => Err(SimError::Io("the supervising `kho demo` is gone".into())),
    }
}

/// The command line of a kernel process: `exe kernel --ram-fd N --results-fd M
/// [--next-kernel PATH] [--json]`, with both descriptors made inheritable. `json` asks the
/// kernel to print nothing on stdout (the supervisor prints one JSON document).
///
/// # Errors
/// [`SimError`] if a descriptor's `FD_CLOEXEC` cannot be cleared.
pub fn next_kernel_command(
    ram: &Ram,
    results: &Results,
    exe: &Path,
    next_kernel: Option<&Path>,
    json: bool,
) -> Result<Command, SimError> {
    let fd = ram.inherit_fd()?;
    let rfd = results.inherit_fd()?;
    let mut cmd = Command::new(exe);
    cmd.arg("kernel").arg("--ram-fd").arg(fd.to_string()).arg("--results-fd").arg(rfd.to_string());
    if let Some(p) = next_kernel {
        cmd.arg("--next-kernel").arg(p);
    }
    if json {
        cmd.arg("--json");
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_core::PhysWrite;

    #[test]
    fn poisons_only_data_outside_keep() {
        let ram = Ram::create(64 << 20).unwrap();
        let base = RAM_BASE;
        for i in 0..8u64 {
            ram.write_phys(PhysAddr::new(base + i * PAGE_SIZE), &[1u8; 4096]).unwrap();
        }
        ram.write_phys(PhysAddr::new(32 << 20), &[2u8; 16]).unwrap();
        let keep = merge_ranges(vec![
            PhysRange::new(PhysAddr::new(base + 2 * PAGE_SIZE), 2 * PAGE_SIZE).unwrap(),
            PhysRange::new(PhysAddr::new(base + 7 * PAGE_SIZE), PAGE_SIZE).unwrap(),
        ]);
        let st = poison_unpreserved(&ram, &keep).unwrap();
        assert_eq!(st.data_pages, 9);
        assert_eq!(st.poisoned_pages, 6);
        let poisoned: Vec<bool> =
            (0..8u64).map(|i| is_poisoned(&ram, PhysAddr::new(base + i * PAGE_SIZE)).unwrap()).collect();
        assert_eq!(poisoned, [true, true, false, false, true, true, true, false]);
        assert!(is_poisoned(&ram, PhysAddr::new(32 << 20)).unwrap());
        // A hole stays a hole (reads as zero, costs nothing).
        assert!(!is_poisoned(&ram, PhysAddr::new(16 << 20)).unwrap());
        assert!(ram.allocated_bytes().unwrap() < 1 << 20);
    }
}
