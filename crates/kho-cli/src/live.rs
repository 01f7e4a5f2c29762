//! Live-host specifics of `kho inspect` / `kho validate`.
//!
//! **A truncated root FDT.** Linux 7.3 registers debugfs `kho/out/fdt` with the FDT's size at
//! KHO init; subsystems that add subtrees later grow the FDT in place, so the file shows only
//! a prefix (e.g. 233 of 293 bytes). The prefix still holds the header (with the real
//! `totalsize`) and most of the structure block, including the root node's properties, but
//! usually not the strings block, so property names cannot be resolved. The full FDT lives
//! in RAM, in a page that is itself a preserved block. [`find_full_fdt`] recovers it: every
//! 8-byte property of the root node is a candidate memory-map pointer (the one named
//! `preserved-memory-map` when the name is readable); the candidate's map is walked, and the
//! preserved block whose first bytes equal the prefix is the FDT.
//!
//! **A consumed handover.** By the time user space runs in the next kernel, Linux has freed
//! the memory map's pages and the subsystems have restored (and often freed) their memory;
//! only the root FDT, the scratch areas and the blobs themselves can still be checked.

use kho_core::fdt::{FDT_HEADER_BYTES, FDT_MAGIC};
use kho_core::format::root::PROP_MEMORY_MAP;
use kho_core::format::{FormatVersion, Limits, WalkContext, v1, v4};
use kho_core::{BitmapBytes, BlockSet, PhysAddr, PhysRange, PhysRead};

/// The message `inspect`/`validate` print for a handover the running kernel has consumed.
pub const CONSUMED_MESSAGE: &str =
    "consumed by the running kernel: FDT, scratch and blobs checked; memory map not checkable after boot";

/// Where x86 Linux shows the setup_data entries it was booted with (`N/type`, `N/data`).
pub const SYSFS_SETUP_DATA: &str = "/sys/kernel/boot_params/setup_data";

/// x86 `SETUP_KEXEC_KHO`: the setup_data type of the KHO pointer.
pub const SETUP_KEXEC_KHO: u64 = 10;

/// The `data` file of the first `SETUP_KEXEC_KHO` entry under `dir` (normally
/// [`SYSFS_SETUP_DATA`]), entries taken in numeric order; `None` if there is none or `dir`
/// cannot be read (not x86, or not booted by a KHO kexec).
#[must_use]
pub fn find_kho_setup_data(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut entries: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    entries.sort_unstable();
    entries.into_iter().find_map(|(_, p)| {
        let ty = std::fs::read_to_string(p.join("type")).ok()?;
        let ty = crate::memsrc::parse_number(ty.trim(), "setup_data type").ok()?;
        (ty == SETUP_KEXEC_KHO).then(|| p.join("data"))
    })
}

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// What a truncated FDT prefix tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The header's `totalsize`.
    pub totalsize: u32,
    /// The format, if the root `compatible` value was inside the prefix.
    pub version: Option<FormatVersion>,
    /// Root-node 8-byte property values that may be the memory map (little-endian u64).
    pub map_candidates: Vec<PhysAddr>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// `totalsize` of an FDT whose header is complete but whose body is cut short, or `None` if
/// the bytes are not an FDT header or hold the whole FDT.
#[must_use]
pub fn truncated_totalsize(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < FDT_HEADER_BYTES || be32(bytes, 0)? != FDT_MAGIC {
        return None;
    }
    let total = be32(bytes, 4)?;
    (u64::from(total) > bytes.len() as u64).then_some(total)
}

/// Reads the root node's properties from the part of the structure block inside `prefix`.
///
/// # Errors
/// A description of what is wrong if the prefix is not a truncated FDT or its structure
/// block is malformed before the cut.
pub fn scan_prefix(prefix: &[u8]) -> Result<Prefix, String> {
    let totalsize = truncated_totalsize(prefix).ok_or("not a truncated FDT (bad magic, or totalsize fits)")?;
    let off_struct = be32(prefix, 8).ok_or("header cut")? as usize;
    let off_strings = be32(prefix, 12).ok_or("header cut")? as usize;
    let name_at = |nameoff: u32| -> Option<&[u8]> {
        let start = off_strings.checked_add(nameoff as usize)?;
        let rest = prefix.get(start..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        Some(&rest[..end])
    };
    let mut p = Prefix { totalsize, version: None, map_candidates: Vec::new() };
    let mut off = off_struct;
    let mut depth = 0usize;
    // Each step consumes at least four bytes, so this loop ends within prefix.len() / 4 steps.
    while let Some(token) = be32(prefix, off) {
        off += 4;
        match token {
            FDT_BEGIN_NODE => {
                let Some(rest) = prefix.get(off..) else { break };
                let Some(n) = rest.iter().position(|&c| c == 0) else { break };
                off += (n + 1).next_multiple_of(4);
                depth += 1;
            }
            FDT_END_NODE => {
                depth = depth.checked_sub(1).ok_or(format!("FDT_END_NODE at offset {} with no open node", off - 4))?;
                if depth == 0 {
                    break;
                }
            }
            FDT_PROP => {
                let (Some(len), Some(nameoff)) = (be32(prefix, off), be32(prefix, off + 4)) else { break };
                let start = off + 8;
                let Some(value) = start.checked_add(len as usize).and_then(|end| prefix.get(start..end)) else {
                    break;
                };
                if depth == 1 {
                    if let Some(v) = std::str::from_utf8(value.strip_suffix(&[0]).unwrap_or(value))
                        .ok()
                        .and_then(FormatVersion::from_compatible)
                    {
                        p.version = Some(v);
                    }
                    let named = name_at(nameoff);
                    if value.len() == 8 && named.is_none_or(|n| n == PROP_MEMORY_MAP.as_bytes()) {
                        let mut le = [0u8; 8];
                        le.copy_from_slice(value);
                        p.map_candidates.push(PhysAddr::new(u64::from_le_bytes(le)));
                    }
                }
                off = start + (len as usize).next_multiple_of(4);
            }
            FDT_NOP => {}
            FDT_END => break,
            t => return Err(format!("unknown structure token {t:#x} at offset {}", off - 4)),
        }
    }
    if p.map_candidates.is_empty() {
        return Err("the prefix holds no root property that could be the memory map".into());
    }
    Ok(p)
}

/// The full root FDT found in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFdt {
    /// Its bytes (`totalsize` of them).
    pub bytes: Vec<u8>,
    /// Its physical address.
    pub phys: PhysAddr,
    /// Preserved blocks compared with the prefix before it was found.
    pub blocks_compared: u64,
}

/// Finds the full root FDT whose first bytes are `prefix` among the blocks the prefix's
/// memory map preserves (see the module documentation).
///
/// # Errors
/// Why it could not be found: a prefix that cannot be scanned, no candidate map that walks,
/// or no preserved block that starts with the prefix.
pub fn find_full_fdt<M: PhysRead + ?Sized>(
    prefix: &[u8],
    mem: &M,
    ram: &[PhysRange],
    scratch: &[PhysRange],
    limits: Limits,
    v1_bitmap: BitmapBytes,
) -> Result<FoundFdt, String> {
    let p = scan_prefix(prefix)?;
    let total = u64::from(p.totalsize);
    if total > limits.max_blob_bytes {
        return Err(format!("totalsize {total} is above the blob limit {}", limits.max_blob_bytes));
    }
    let mut scratch = scratch.to_vec();
    scratch.sort_unstable();
    let mut compared = 0u64;
    let mut why = Vec::new();
    let mut head = vec![0u8; prefix.len()];
    for &map in &p.map_candidates {
        let mut ctx = WalkContext::new(mem, ram, &scratch, limits);
        let mut set = BlockSet::new();
        // A walk that stops early still yields the blocks before the problem; the FDT's own
        // page is usually among the first.
        let walked = match p.version {
            Some(FormatVersion::V1) => v1::decode(&mut ctx, map, PhysAddr::new(0), v1_bitmap, &mut set),
            _ => v4::decode(&mut ctx, map, PhysAddr::new(0), &mut set),
        };
        if let Err(e) = &walked {
            why.push(format!("memory map candidate {map}: {e}"));
        }
        for b in set.iter() {
            if b.range().len() < total {
                continue;
            }
            compared += 1;
            if mem.read_phys(b.phys(), &mut head).is_err() || head != prefix {
                continue;
            }
            let mut bytes = vec![0u8; usize::try_from(total).map_err(|_| "totalsize does not fit in memory")?];
            mem.read_phys(b.phys(), &mut bytes).map_err(|e| format!("reading the FDT at {}: {e}", b.phys()))?;
            return Ok(FoundFdt { bytes, phys: b.phys(), blocks_compared: compared });
        }
        if walked.is_ok() {
            why.push(format!("memory map candidate {map}: no preserved block starts with the prefix"));
        }
    }
    Err(format!("{} ({compared} preserved block(s) compared)", why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_core::fdt::{FdtNode, FdtTree};

    /// A root FDT shaped as Linux 7.3 writes it: compatible, memory map, one sub-node.
    fn root_fdt(map: u64) -> Vec<u8> {
        let sub = FdtNode::new("kho_test").prop_le64("preserved-data", 0x5000).prop_le64("blob-size", 240);
        let root = FdtNode::new("").prop_str("compatible", "kho-v4").prop_le64(PROP_MEMORY_MAP, map).child(sub);
        FdtTree { root }.to_dtb().unwrap()
    }

    #[test]
    fn prefix_yields_totalsize_version_and_map_without_strings() {
        let fdt = root_fdt(0x1234_5000);
        let strings = be32(&fdt, 12).unwrap() as usize;
        // Cut before the strings block: names are unreadable, the values are not.
        let p = scan_prefix(&fdt[..strings - 3]).unwrap();
        assert_eq!(p.totalsize as usize, fdt.len());
        assert_eq!(p.version, Some(FormatVersion::V4));
        // The sub-node's 8-byte properties are at depth 2 and are not candidates.
        assert_eq!(p.map_candidates, vec![PhysAddr::new(0x1234_5000)]);
    }

    #[test]
    fn complete_or_foreign_bytes_are_not_a_truncated_fdt() {
        let fdt = root_fdt(0x1000);
        assert_eq!(truncated_totalsize(&fdt), None);
        assert!(scan_prefix(&fdt).is_err());
        assert_eq!(truncated_totalsize(&[0u8; 64]), None);
        assert_eq!(truncated_totalsize(&fdt[..20]), None);
        // Header only: no property, so nothing to follow.
        let e = scan_prefix(&fdt[..FDT_HEADER_BYTES]).unwrap_err();
        assert!(e.contains("no root property"), "{e}");
    }

    #[test]
    fn the_kho_setup_data_entry_is_found_by_type() {
        let dir = tempfile::tempdir().unwrap();
        for (n, ty) in [("0", "0x9"), ("10", "0xa"), ("2", "0xa"), ("junk", "0xa")] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
            std::fs::write(dir.path().join(n).join("type"), format!("{ty}\n")).unwrap();
        }
        // Numeric order: entry 2 comes before entry 10; "junk" is not an entry.
        assert_eq!(find_kho_setup_data(dir.path()), Some(dir.path().join("2").join("data")));
        std::fs::write(dir.path().join("2").join("type"), "0x1\n").unwrap();
        assert_eq!(find_kho_setup_data(dir.path()), Some(dir.path().join("10").join("data")));
        std::fs::write(dir.path().join("10").join("type"), "0x9\n").unwrap();
        assert_eq!(find_kho_setup_data(dir.path()), None);
        assert_eq!(find_kho_setup_data(&dir.path().join("absent")), None);
    }

    #[test]
    fn hostile_prefixes_never_panic() {
        // Every cut of a real-shaped FDT, with every byte of the structure block set to each
        // of a few values (huge lengths, odd tokens, missing terminators): errors, no panic.
        let fdt = root_fdt(0x1234_5000);
        let mut seen_ok = 0;
        for cut in FDT_HEADER_BYTES..fdt.len() {
            for at in 8..cut {
                for v in [0x00, 0x01, 0x03, 0x09, 0x7f, 0xff] {
                    let mut b = fdt[..cut].to_vec();
                    b[at] = v;
                    if let Ok(p) = scan_prefix(&b) {
                        assert!(!p.map_candidates.is_empty());
                        seen_ok += 1;
                    }
                }
            }
        }
        assert!(seen_ok > 0);
    }

    #[test]
    fn a_bad_token_is_reported_not_skipped() {
        let mut fdt = root_fdt(0x1000);
        let s = be32(&fdt, 8).unwrap() as usize;
        fdt[s..s + 4].copy_from_slice(&7u32.to_be_bytes());
        let e = scan_prefix(&fdt[..fdt.len() - 8]).unwrap_err();
        assert!(e.contains("unknown structure token 0x7"), "{e}");
    }
}
