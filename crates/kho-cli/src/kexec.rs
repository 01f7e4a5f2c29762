//! `kho kexec`: load the next kernel with `kexec_load(2)` and hand it memory preserved by this
//! project's engine.
//!
//! The x86 boot parameters are built here, not by the kernel: the running system's zero page
//! (`/sys/kernel/boot_params/data`: e820 table, screen_info, ACPI RSDP) plus the bzImage's
//! setup header, the command line, the initrd and one `SETUP_KEXEC_KHO` setup_data entry
//! that points at a kho-v4 handover written by `kho-core`. With `--handover test` that
//! handover is what Linux's `test_kho` module would have left (random folios, their x86
//! checksum, a vmalloc'd `folios_info`, the `kho_test` blob), so the next Linux's `test_kho`
//! verifies it and prints "KHO restore succeeded". Before anything is loaded the handover is
//! checked by our own incoming side, running `test_kho`'s restore path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use kho_boot::bootparams::BootParams;
use kho_boot::bzimage::BzImage;
use kho_boot::handover::{self, Corruption, Staging, TestSpec};
use kho_boot::plan::{self, Placed, Placement, Request};
use kho_boot::{BootSegmentLayout, boot_segment};
use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::types::{PAGE_SIZE, PhysAddr, PhysRange};
use serde_json::json;

/// What to hand over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandoverKind {
    /// A `test_kho`-compatible handover: random folios the next Linux verifies.
    Test,
    /// No handover: a plain kexec (no setup_data entry).
    None,
}

/// Defects for negative tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CorruptArg {
    /// test_kho's checksum off by one: the next Linux prints "KHO restore failed".
    Checksum,
    /// One listed folio not preserved: kho_restore_folio fails, "KHO restore failed".
    MissingFolio,
    /// One folio listed with a smaller order than preserved: "KHO restore failed".
    WrongOrder,
    /// Root compatible "kho-v9": the next Linux disables KHO revival (a cold boot).
    UnknownCompatible,
}

impl From<CorruptArg> for Corruption {
    fn from(c: CorruptArg) -> Self {
        match c {
            CorruptArg::Checksum => Self::Checksum,
            CorruptArg::MissingFolio => Self::MissingFolio,
            CorruptArg::WrongOrder => Self::WrongOrder,
            CorruptArg::UnknownCompatible => Self::UnknownCompatible,
        }
    }
}

/// Arguments of `kho kexec`.
#[derive(Debug, Args)]
pub struct KexecArgs {
    /// The next kernel (an x86-64 bzImage, boot protocol 2.12 or later).
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: PathBuf,
    /// Initial ramdisk for the next kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// The next kernel's command line (default: this kernel's, from /proc/cmdline).
    #[arg(long, value_name = "CMDLINE")]
    pub append: Option<String>,
    /// What to hand over.
    #[arg(long, value_enum, default_value = "test")]
    pub handover: HandoverKind,
    /// Bytes of folios in the test handover (test_kho's max_mem), e.g. 8M.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    pub test_mem: u64,
    /// Seed of the test folios' orders and contents.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A scratch area ADDR:LEN for the next kernel (repeat; default: debugfs
    /// kho/out/scratch_phys and scratch_len of the running kernel).
    #[arg(long = "scratch", value_name = "ADDR:LEN", value_parser = parse_area)]
    pub scratch: Vec<PhysRange>,
    /// The running system's zero page.
    #[arg(long, value_name = "FILE", default_value = "/sys/kernel/boot_params/data")]
    pub boot_params: PathBuf,
    /// EFI system table summary, for the ACPI RSDP address when the zero page has none.
    #[arg(long, value_name = "FILE", default_value = "/sys/firmware/efi/systab", hide = true)]
    pub efi_systab: PathBuf,
    /// Where debugfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/sys/kernel/debug")]
    pub debugfs: PathBuf,
    /// Print the segment plan and check the handover with our own incoming side; load
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After loading, reboot into the new kernel at once (reboot(LINUX_REBOOT_CMD_KEXEC)).
    #[arg(long, conflicts_with = "dry_run")]
    pub exec: bool,
    /// Print the plan as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// TEST AID: hand over a deliberately broken handover, which the next kernel must refuse.
    /// Our own check must refuse it too; the load goes ahead anyway.
    #[arg(long, value_enum, value_name = "DEFECT")]
    pub corrupt: Option<CorruptArg>,
}

fn parse_num(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&t[..t.len() - 1], 10),
        Some(b'M') => (&t[..t.len() - 1], 20),
        Some(b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n = parse_num(num)?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_area(s: &str) -> Result<PhysRange, String> {
    let (a, l) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected ADDR:LEN"))?;
    let (addr, len) = (parse_num(a)?, parse_size(l)?);
    if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
        return Err(format!("{s:?}: address and length must be non-zero multiples of 4096"));
    }
    PhysRange::new(PhysAddr::new(addr), len).ok_or_else(|| format!("{s:?}: range overflows"))
}

/// Reads debugfs `kho/out/scratch_phys` and `scratch_len`: one `0x%llx` line per area.
fn debugfs_scratch(debugfs: &Path) -> anyhow::Result<Vec<PhysRange>> {
    let dir = debugfs.join("kho/out");
    let read = |name: &str| -> anyhow::Result<Vec<u64>> {
        let p = dir.join(name);
        let text = fs::read_to_string(&p).with_context(|| {
            format!("cannot read {} (is debugfs mounted and KHO enabled with kho=on? or pass --scratch)", p.display())
        })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_num(l).map_err(anyhow::Error::msg).with_context(|| format!("{}", p.display())))
            .collect()
    };
    let (phys, len) = (read("scratch_phys")?, read("scratch_len")?);
    if phys.len() != len.len() {
        bail!("scratch_phys has {} lines, scratch_len {}", phys.len(), len.len());
    }
    phys.iter().zip(&len).map(|(&p, &l)| parse_area(&format!("{p:#x}:{l:#x}")).map_err(anyhow::Error::msg)).collect()
}

/// The ACPI RSDP address from `/sys/firmware/efi/systab` (`ACPI20=0x...`, else `ACPI=0x...`).
fn efi_rsdp(systab: &str) -> Option<u64> {
    let find = |key: &str| {
        systab.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| parse_num(v).ok()).filter(|&v| v != 0)
    };
    find("ACPI20=").or_else(|| find("ACPI="))
}

/// The kexec-metadata to write: this kernel's release and its incoming count + 1.
fn metadata(debugfs: &Path) -> (String, u32) {
    let release =
        fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |s| s.trim().into());
    let p = debugfs.join("kho/in/sub_fdts/kexec-metadata");
    let count =
        fs::read(p).ok().and_then(|b| KexecMetadata::parse(&b, PhysAddr::new(0)).ok()).map_or(0, |m| m.kexec_count);
    (release, count.saturating_add(1))
}

struct Segment<'a> {
    placed: Placed,
    buf: &'a [u8],
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
}

/// Runs `kho kexec`.
///
/// # Errors
/// Unreadable or unusable inputs (exit 2).
pub fn run(a: KexecArgs) -> anyhow::Result<ExitCode> {
    if a.corrupt.is_some() && a.handover == HandoverKind::None {
        bail!("--corrupt needs --handover test");
    }
    let file = fs::read(&a.kernel).with_context(|| format!("cannot read {}", a.kernel.display()))?;
    let bz = BzImage::parse(&file).with_context(|| format!("{}", a.kernel.display()))?;
    let initrd = match &a.initrd {
        Some(p) => Some(fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let cmdline = match &a.append {
        Some(s) => s.clone(),
        None => {
            fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline (or pass --append)")?.trim().into()
        }
    };
    kho_boot::check_cmdline(&bz, &cmdline)?;
    let fw_bytes = fs::read(&a.boot_params).with_context(|| format!("cannot read {}", a.boot_params.display()))?;
    let mut firmware = BootParams::from_bytes(&fw_bytes).with_context(|| format!("{}", a.boot_params.display()))?;
    if firmware.acpi_rsdp_addr.get() == 0 {
        // Booted through EFI, the kernel found the RSDP in the EFI tables; the next kernel gets
        // no EFI data from us, so hand it the RSDP directly (as Linux's own loader does).
        if let Some(rsdp) = fs::read_to_string(&a.efi_systab).ok().as_deref().and_then(efi_rsdp) {
            firmware.acpi_rsdp_addr.set(rsdp);
        }
    }
    let ram = firmware.ram_ranges();
    if usize::from(firmware.e820_entries) == kho_boot::bootparams::E820_MAX_ENTRIES {
        crate::errln!(
            "kho kexec: note: the zero page's e820 table is full (128 entries); entries the firmware passed beyond \
             it (SETUP_E820_EXT) are not carried over"
        );
    }
    if a.efi_systab.exists() {
        crate::errln!(
            "kho kexec: note: EFI boot: the next kernel gets the ACPI RSDP but no EFI memory map or runtime services"
        );
    }
    if ram.is_empty() {
        bail!("{}: no RAM in the e820 table", a.boot_params.display());
    }
    let mut scratch = if a.scratch.is_empty() { debugfs_scratch(&a.debugfs)? } else { a.scratch.clone() };
    scratch.sort_by_key(|r| r.start());
    for w in scratch.windows(2) {
        if w[0].overlaps(w[1]) {
            bail!("scratch areas {:?} and {:?} overlap", w[0], w[1]);
        }
    }
    for s in &scratch {
        if !ram.iter().any(|r| r.contains_range(*s)) {
            bail!("scratch area {s:?} is not inside one RAM range of the e820 table");
        }
    }

    // The segment plan.
    let limit = if bz.above_4g() { u64::MAX } else { 1 << 32 };
    let orders = handover::folio_orders(a.test_mem, a.seed);
    let mut reqs = Vec::new();
    let (arena_len, arena_align) = handover::arena_size(&orders);
    if a.handover == HandoverKind::Test {
        reqs.push(Request {
            what: "handover",
            size: arena_len,
            align: arena_align,
            min: 0,
            limit,
            placement: Placement::OutsideScratch,
        });
    }
    let kernel_mem = bz.init_size().max(bz.kernel().len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    reqs.push(Request {
        what: "kernel",
        size: kernel_mem,
        align: bz.alignment(),
        min: bz.pref_address(),
        limit,
        placement: if bz.relocatable() {
            Placement::PreferScratch
        } else {
            Placement::Fixed(PhysAddr::new(bz.pref_address()))
        },
    });
    if let Some(i) = &initrd {
        let ilimit = if bz.above_4g() { u64::MAX } else { u64::from(bz.hdr.initrd_addr_max.get()) + 1 };
        reqs.push(Request {
            what: "initrd",
            size: i.len() as u64,
            align: PAGE_SIZE,
            min: 16 << 20,
            limit: ilimit,
            placement: Placement::PreferScratch,
        });
    }
    let boot_len = BootSegmentLayout::new(cmdline.len()).size as u64;
    reqs.push(Request {
        what: "boot",
        size: boot_len,
        align: PAGE_SIZE,
        min: 0,
        limit,
        placement: Placement::PreferScratch,
    });
    let placed = plan::place(&ram, &scratch, &reqs)?;
    plan::check(&placed, &ram, &scratch, &["handover"])?;
    let find = |what: &str| placed.iter().find(|p| p.what == what).copied();
    let kernel_at = find("kernel").context("plan has no kernel")?.range.start();
    let boot_at = find("boot").context("plan has no boot segment")?.range.start();
    let initrd_at = find("initrd").map(|p| p.range.start());

    // The handover, written by our engine into its segment, then checked by our incoming side.
    let mut staged = None;
    let mut written = None;
    let mut verdict = json!(null);
    let mut ok = true;
    if let Some(hp) = find("handover") {
        let staging = Staging::new(hp.range.start(), arena_len);
        let spec = TestSpec {
            orders: orders.clone(),
            seed: a.seed,
            ram: ram.clone(),
            scratch: scratch.clone(),
            metadata: Some(metadata(&a.debugfs)),
            corrupt: a.corrupt.map(Corruption::from),
        };
        let w = handover::write_test_handover(&staging, &spec).context("writing the handover")?;
        let check = handover::verify_test_handover(&staging, &w.ptr, &ram);
        verdict = match (&check, a.corrupt) {
            (Ok(v), None) => json!({"accepted": true, "folios": v.folios, "csum": format!("{:#010x}", v.csum),
                "preserved_blocks": v.preserved_blocks, "preserved_bytes": v.preserved_bytes}),
            (Ok(_), Some(c)) => {
                ok = false;
                json!({"accepted": true, "error": format!("our incoming side accepted the --corrupt {} handover", Corruption::from(c).name())})
            }
            (Err(e), None) => {
                ok = false;
                json!({"accepted": false, "error": e.to_string()})
            }
            (Err(e), Some(_)) => json!({"accepted": false, "refused_as_expected": e.to_string()}),
        };
        staged = Some(staging.into_bytes());
        written = Some(w);
    }
    let boot = boot_segment(
        boot_at,
        &firmware,
        &bz,
        kernel_at,
        &cmdline,
        initrd_at.zip(initrd.as_ref().map(|i| i.len() as u64)),
        written.as_ref().map(|w| &w.ptr),
    )?;

    let mut segments: Vec<Segment<'_>> = Vec::new();
    for p in &placed {
        let buf: &[u8] = match p.what {
            "handover" => staged.as_deref().unwrap_or(&[]),
            "kernel" => bz.kernel(),
            "initrd" => initrd.as_deref().unwrap_or(&[]),
            _ => &boot.bytes,
        };
        segments.push(Segment { placed: *p, buf });
    }
    report(&a, &bz, &cmdline, &scratch, &segments, boot.entry, written.as_ref(), &verdict);
    if !ok {
        crate::errln!("kho kexec: our own incoming side disagrees with what was expected; nothing loaded");
        return Ok(ExitCode::from(1));
    }
    if a.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    load(boot.entry, &segments)?;
    if !a.json {
        crate::outln!(
            "loaded: {} segments, entry {}; run `kexec -e` (or pass --exec) to boot it",
            segments.len(),
            boot.entry
        );
    }
    if a.exec {
        exec()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &KexecArgs,
    bz: &BzImage<'_>,
    cmdline: &str,
    scratch: &[PhysRange],
    segments: &[Segment<'_>],
    entry: PhysAddr,
    written: Option<&handover::Written>,
    verdict: &serde_json::Value,
) {
    let seg_json: Vec<_> = segments
        .iter()
        .map(|s| {
            json!({"what": s.placed.what, "mem": s.placed.range.start().as_u64(), "memsz": s.placed.range.len(),
                "bufsz": s.buf.len(), "in_scratch": s.placed.in_scratch})
        })
        .collect();
    let ho = written.map(|w| {
        json!({"format": "kho-v4", "fdt": w.ptr.fdt.as_u64(), "scratch_array": w.ptr.scratch.as_u64(),
            "scratch_array_bytes": w.ptr.scratch_size, "folios": w.folios.len(), "csum": format!("{:#010x}", w.csum),
            "blob_csum": format!("{:#010x}", w.blob_csum), "preserved_blocks": w.preserved_blocks,
            "preserved_bytes": w.preserved_bytes, "metadata_pages": w.metadata_pages.len(),
            "corrupt": a.corrupt.map(|c| Corruption::from(c).name())})
    });
    if a.json {
        let doc = json!({
            "kernel": {"path": a.kernel.display().to_string(), "protocol": format!("{}.{}", bz.version() >> 8, bz.version() & 0xff),
                "payload_bytes": bz.kernel().len(), "init_size": bz.init_size(), "alignment": bz.alignment(),
                "pref_address": bz.pref_address(), "relocatable": bz.relocatable()},
            "cmdline": cmdline,
            "scratch": scratch.iter().map(|s| json!({"addr": s.start().as_u64(), "len": s.len()})).collect::<Vec<_>>(),
            "segments": seg_json,
            "entry": entry.as_u64(),
            "handover": ho,
            "self_check": verdict,
            "dry_run": a.dry_run,
        });
        crate::outln!("{doc:#}");
        return;
    }
    crate::outln!(
        "kernel: {} (boot protocol {}.{}, {} payload, init_size {}, align {:#x}, pref_address {:#x})",
        a.kernel.display(),
        bz.version() >> 8,
        bz.version() & 0xff,
        mib(bz.kernel().len() as u64),
        mib(bz.init_size()),
        bz.alignment(),
        bz.pref_address()
    );
    crate::outln!("cmdline: {cmdline}");
    for s in scratch {
        crate::outln!("scratch: {:#x}-{:#x} ({})", s.start().as_u64(), s.end().as_u64(), mib(s.len()));
    }
    crate::outln!("{:<9} {:>12} {:>12} {:>12}  where", "segment", "mem", "memsz", "bufsz");
    for s in segments {
        crate::outln!(
            "{:<9} {:>#12x} {:>#12x} {:>#12x}  {}",
            s.placed.what,
            s.placed.range.start().as_u64(),
            s.placed.range.len(),
            s.buf.len(),
            if s.placed.in_scratch { "scratch" } else { "outside scratch" }
        );
    }
    crate::outln!("entry: {entry} (trampoline: rsi = zero page, jump to kernel + 0x200)");
    if let Some(w) = written {
        crate::outln!(
            "handover: kho-v4, FDT {}, scratch array {} ({} bytes), {} folios, csum {:#010x}, {} blocks ({}) preserved{}",
            w.ptr.fdt,
            w.ptr.scratch,
            w.ptr.scratch_size,
            w.folios.len(),
            w.csum,
            w.preserved_blocks,
            mib(w.preserved_bytes),
            a.corrupt.map_or(String::new(), |c| format!(", CORRUPTED: {}", Corruption::from(c).name()))
        );
        match verdict.get("accepted").and_then(serde_json::Value::as_bool) {
            Some(true) if a.corrupt.is_none() => crate::outln!(
                "self-check: our incoming side accepts it; test_kho restore path: {} folios restored, csum {} matches",
                verdict["folios"],
                verdict["csum"].as_str().unwrap_or("?")
            ),
            Some(false) if a.corrupt.is_some() => {
                crate::outln!(
                    "self-check: refused as expected: {}",
                    verdict["refused_as_expected"].as_str().unwrap_or("?")
                );
            }
            _ => crate::outln!("self-check: FAILED: {}", verdict["error"].as_str().unwrap_or("?")),
        }
    }
}

const KEXEC_ARCH_X86_64: libc::c_ulong = 62 << 16;

/// `struct kexec_segment` of the `kexec_load` ABI.
#[repr(C)]
struct KexecSegment {
    buf: *const libc::c_void,
    bufsz: libc::size_t,
    mem: libc::c_ulong,
    memsz: libc::size_t,
}

fn load(entry: PhysAddr, segments: &[Segment<'_>]) -> anyhow::Result<()> {
    let raw: Vec<KexecSegment> = segments
        .iter()
        .map(|s| KexecSegment {
            buf: s.buf.as_ptr().cast(),
            bufsz: s.buf.len(),
            mem: s.placed.range.start().as_u64() as libc::c_ulong,
            memsz: s.placed.range.len() as libc::size_t,
        })
        .collect();
    // SAFETY: kexec_load reads `raw.len()` segment descriptors from `raw`, and from each
    // `bufsz` bytes at `buf`; every descriptor points into a slice that outlives this call.
    // The kernel copies everything before returning and keeps no pointer into our memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            entry.as_u64() as libc::c_ulong,
            raw.len() as libc::c_ulong,
            raw.as_ptr(),
            KEXEC_ARCH_X86_64,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("kexec_load failed: {e} (needs root/CAP_SYS_BOOT and CONFIG_KEXEC; see dmesg)");
    }
    Ok(())
}

fn exec() -> anyhow::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with LINUX_REBOOT_CMD_KEXEC takes no pointer; on success it does not
    // return (the loaded kernel starts).
    let r = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) };
    let e = std::io::Error::last_os_error();
    bail!("reboot(LINUX_REBOOT_CMD_KEXEC) returned {r}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_grammar() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert!(parse_size("1x").is_err());
        let r = parse_area("0x2000000:32M").unwrap();
        assert_eq!((r.start().as_u64(), r.len()), (0x200_0000, 32 << 20));
        assert!(parse_area("0x2000001:32M").is_err());
        assert!(parse_area("0x2000000").is_err());
    }

    #[test]
    fn rsdp_from_efi_systab() {
        assert_eq!(efi_rsdp("SMBIOS3=0x7f9c7000\nACPI20=0x7fb7e014\nACPI=0x7fb7e000\n"), Some(0x7fb7_e014));
        assert_eq!(efi_rsdp("ACPI=0xf5a20\n"), Some(0xf_5a20));
        assert_eq!(efi_rsdp("SMBIOS=0x1\nACPI20=junk\n"), None);
    }
}
