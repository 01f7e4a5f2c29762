//! ELF core files: QEMU `dump-guest-memory`, `/proc/vmcore`, `/proc/kcore`.
//!
//! Only the headers are parsed, with the `object` crate (maintained by the gimli project,
//! used by std's backtraces; it checks the ident, class, endianness, entry sizes and the
//! `PN_XNUM` extension so we do not re-implement them). The header bytes are read with
//! `pread` into a buffer and handed to `object`; segment data is never loaded, only read on
//! demand at `p_offset + (phys - p_paddr)`. A `PT_LOAD` segment whose `p_filesz` is shorter
//! than `p_memsz` reads as zero past `p_filesz`.
//!
//! Physical addresses come from `p_paddr`. `/proc/kcore` also describes memory that has no
//! single physical address (vmalloc, modules, vmemmap): the kernel writes `p_paddr = -1` for
//! those (older kernels wrote 0). In a kcore — the file is `/proc/kcore`, or some segment has
//! `p_paddr = -1` — segments with `p_paddr` 0 or -1 are skipped, and so is the kernel-text
//! segment that maps the same physical pages as the direct map a second time. Each skip is
//! recorded as a note. In any other core, two segments that claim the same physical bytes
//! are an error.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use object::Endianness;
use object::elf::{ET_CORE, FileHeader64, PN_XNUM, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};

use super::{Backing, MemSource, MemSrcError, Segment};
use kho_core::{PhysAddr, PhysRange};

/// Largest header area read (ELF header, program headers, section header 0).
const MAX_HEADER_BYTES: u64 = 64 << 20;

/// Opens an ELF64 little-endian core file.
///
/// # Errors
/// [`MemSrcError::Io`], [`MemSrcError::BadElf`], [`MemSrcError::Empty`] when no segment has a
/// physical address, [`MemSrcError::Overlap`] for overlapping segments outside kcore.
pub fn open(path: &Path) -> Result<MemSource, MemSrcError> {
    let io = |source| MemSrcError::Io { path: path.to_path_buf(), source };
    let bad = |reason: String| MemSrcError::BadElf { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(io)?;

    let mut ehdr = vec![0u8; 64];
    read_prefix(&file, &mut ehdr).map_err(io)?;
    let hdr = FileHeader64::<Endianness>::parse(ehdr.as_slice()).map_err(|e| bad(e.to_string()))?;
    let endian = hdr.endian().map_err(|e| bad(e.to_string()))?;
    if endian != Endianness::Little {
        return Err(bad("big-endian core; KHO exists only on little-endian x86-64 and arm64".into()));
    }
    if hdr.e_type(endian) != ET_CORE {
        return Err(bad(format!("e_type is {}, not ET_CORE (4)", hdr.e_type(endian))));
    }
    // Everything the header parser may look at: program headers and section header 0 (which
    // holds the real count when e_phnum is PN_XNUM).
    let phoff = hdr.e_phoff(endian);
    let mut need = phoff.saturating_add(u64::from(hdr.e_phnum(endian)) * u64::from(hdr.e_phentsize(endian)));
    if hdr.e_phnum(endian) == PN_XNUM {
        need = need.max(hdr.e_shoff(endian).saturating_add(64));
    }
    if need > MAX_HEADER_BYTES {
        return Err(bad(format!("headers claim {need:#x} bytes; at most {MAX_HEADER_BYTES:#x} are read")));
    }
    let mut head = vec![0u8; need.max(64) as usize];
    read_prefix(&file, &mut head).map_err(io)?;
    let phnum = hdr.phnum(endian, head.as_slice()).map_err(|e| bad(e.to_string()))?;
    let need = phoff.saturating_add(u64::from(phnum) * u64::from(hdr.e_phentsize(endian)));
    if need > MAX_HEADER_BYTES {
        return Err(bad(format!("{phnum} program headers do not fit in {MAX_HEADER_BYTES:#x} bytes")));
    }
    if need as usize > head.len() {
        head.resize(need as usize, 0);
        read_prefix(&file, &mut head).map_err(io)?;
    }
    let phdrs = hdr.program_headers(endian, head.as_slice()).map_err(|e| bad(e.to_string()))?;

    let loads: Vec<_> = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == PT_LOAD)
        .map(|p| (p.p_paddr(endian), p.p_offset(endian), p.p_filesz(endian), p.p_memsz(endian), p.p_vaddr(endian)))
        .collect();
    let kcore = is_kcore_path(path) || loads.iter().any(|l| l.0 == u64::MAX);
    let what = path.display().to_string();
    let file = Arc::new(file);
    let mut m = MemSource::new();
    let mut skipped_no_paddr = 0usize;
    // In a kcore the kernel-text segment (listed first) maps part of RAM a second time; the
    // direct map covers all of it. Larger segments go first, so the one covering RAM is kept
    // and the alias is the one skipped.
    let mut order: Vec<usize> = (0..loads.len()).collect();
    if kcore {
        order.sort_by_key(|&i| (std::cmp::Reverse(loads[i].3), i));
    }
    for i in order {
        let (paddr, offset, filesz, memsz, vaddr) = loads[i];
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(bad(format!("PT_LOAD #{i} at p_paddr {paddr:#x}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")));
        }
        if paddr == u64::MAX || (kcore && paddr == 0) {
            skipped_no_paddr += 1;
            continue;
        }
        let origin: Arc<str> = Arc::from(format!("{what} PT_LOAD #{i}").as_str());
        let Some(range) = PhysRange::new(PhysAddr::new(paddr), memsz) else {
            return Err(bad(format!("PT_LOAD #{i}: {memsz:#x} bytes at p_paddr {paddr:#x} wrap")));
        };
        if offset.checked_add(filesz).is_none() {
            return Err(bad(format!("PT_LOAD #{i}: p_offset {offset:#x} + p_filesz {filesz:#x} overflows")));
        }
        if kcore && m.overlaps_any(range) {
            m.notes.push(format!("{what}: PT_LOAD #{i} (vaddr {vaddr:#x}) maps {range} a second time; skipped"));
            continue;
        }
        m.add_segment(Segment {
            range,
            data_len: filesz,
            backing: Backing::File { file: Arc::clone(&file), offset },
            origin,
        })?;
    }
    if skipped_no_paddr > 0 {
        m.notes.push(format!(
            "{what}: {skipped_no_paddr} PT_LOAD segment(s) without a physical address (p_paddr 0 or -1) skipped"
        ));
    }
    if m.segment_count() == 0 {
        return Err(MemSrcError::Empty { what: format!("{what} (no PT_LOAD segment with a physical address)") });
    }
    let covered: u64 = m.ram().iter().map(|r| r.len()).sum();
    m.descriptions.push(format!(
        "ELF core {what}{}: {} segment(s), {covered:#x} bytes",
        if kcore { " (kcore)" } else { "" },
        m.segment_count()
    ));
    Ok(m)
}

/// Reads the first `buf.len()` bytes; a file shorter than that is an error.
fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<()> {
    file.read_exact_at(buf, 0)
}

fn is_kcore_path(path: &Path) -> bool {
    path == Path::new("/proc/kcore") || std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/proc/kcore"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kho_core::{MemError, PhysRead};
    use std::io::Write;

    /// One `PT_LOAD` of a test core: physical address, bytes in the file, bytes in memory.
    pub(crate) struct Load<'a> {
        pub paddr: u64,
        pub data: &'a [u8],
        pub memsz: u64,
    }

    /// Builds an ELF64 little-endian core (`PT_NOTE` first, as real cores have, then the
    /// loads) and returns its bytes.
    pub(crate) fn build_core(loads: &[Load<'_>]) -> Vec<u8> {
        let phnum = loads.len() + 1;
        let mut out = vec![0u8; 64 + 56 * phnum];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // ELFDATA2LSB
        out[6] = 1; // EV_CURRENT
        out[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        // PT_NOTE with no data.
        out[64..68].copy_from_slice(&4u32.to_le_bytes());
        for (i, l) in loads.iter().enumerate() {
            let off = out.len() as u64;
            let ph = 64 + 56 * (i + 1);
            let mut put = |at: usize, v: u64| out[ph + at..ph + at + 8].copy_from_slice(&v.to_le_bytes());
            put(8, off); // p_offset
            put(16, 0xffff_8880_0000_0000u64.wrapping_add(l.paddr)); // p_vaddr
            put(24, l.paddr);
            put(32, l.data.len() as u64);
            put(40, l.memsz);
            put(48, 4096);
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            out[ph + 4..ph + 8].copy_from_slice(&6u32.to_le_bytes()); // PF_R | PF_W
            out.extend_from_slice(l.data);
        }
        out
    }

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn reads_through_segments_with_zero_tail_and_holes() {
        let a: Vec<u8> = (0..0x2000u32).map(|i| (i % 253) as u8).collect();
        let b = vec![0x5au8; 0x800];
        let core = build_core(&[
            Load { paddr: 0x10_0000, data: &a, memsz: 0x2000 },
            // Adjacent to the first; half its bytes are in the file, the rest read as zero.
            Load { paddr: 0x10_2000, data: &b, memsz: 0x1000 },
            Load { paddr: 0x20_0000, data: &b, memsz: 0x800 },
        ]);
        let f = write_temp(&core);
        let m = open(f.path()).unwrap();
        assert_eq!(m.segment_count(), 3);
        let mut buf = [0u8; 16];
        m.read_phys(PhysAddr::new(0x10_0100), &mut buf).unwrap();
        assert_eq!(&buf[..], &a[0x100..0x110]);
        // Across the boundary between the two adjacent segments.
        m.read_phys(PhysAddr::new(0x10_1ff8), &mut buf).unwrap();
        assert_eq!(&buf[..8], &a[0x1ff8..]);
        assert_eq!(&buf[8..], &[0x5a; 8]);
        // Across p_filesz into the zero tail.
        m.read_phys(PhysAddr::new(0x10_27f8), &mut buf).unwrap();
        assert_eq!(buf, [0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Past the end of the second segment into the hole.
        let e = m.read_phys(PhysAddr::new(0x10_2ff8), &mut buf).unwrap_err();
        assert_eq!(e, MemError::read(PhysAddr::new(0x10_2ff8), 16));
        // In the hole, before everything, and past the last segment.
        assert!(m.read_phys(PhysAddr::new(0x15_0000), &mut buf).is_err());
        assert!(m.read_phys(PhysAddr::new(0), &mut buf).is_err());
        assert!(m.read_phys(PhysAddr::new(0x20_07f8), &mut buf).is_err());
        m.read_phys(PhysAddr::new(0x20_07f0), &mut buf).unwrap();
        assert_eq!(buf, [0x5a; 16]);
        let ram = m.ram();
        assert_eq!(
            ram,
            vec![
                PhysRange::new(PhysAddr::new(0x10_0000), 0x3000).unwrap(),
                PhysRange::new(PhysAddr::new(0x20_0000), 0x800).unwrap()
            ]
        );
    }

    #[test]
    fn kcore_segments_without_paddr_are_skipped() {
        let d = vec![1u8; 0x1000];
        let core = build_core(&[
            Load { paddr: u64::MAX, data: &d, memsz: 0x1000 },
            Load { paddr: 0x1000, data: &d, memsz: 0x1000 },
            Load { paddr: 0, data: &d, memsz: 0x1000 },
            // Kernel text: the same physical page again.
            Load { paddr: 0x1000, data: &d, memsz: 0x1000 },
        ]);
        let f = write_temp(&core);
        let m = open(f.path()).unwrap();
        assert_eq!(m.segment_count(), 1);
        assert_eq!(m.notes().len(), 2, "{:?}", m.notes());
        assert!(m.notes().iter().any(|n| n.contains("2 PT_LOAD segment(s) without a physical address")));
        assert!(m.read_phys(PhysAddr::new(0), &mut [0u8; 4]).is_err());
    }

    /// Sets `p_vaddr` of program header `index` (0 is the `PT_NOTE`) in a core built by
    /// [`build_core`].
    fn set_vaddr(core: &mut [u8], index: usize, vaddr: u64) {
        let ph = 64 + 56 * index;
        core[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
    }

    #[test]
    fn kcore_keeps_the_direct_map_over_the_kernel_text_alias() {
        // As Linux lays out /proc/kcore on x86-64: the kernel text first (a small window that
        // maps physical 0x20_0000.. through 0xffffffff8xxxxxxx), then vmalloc (p_paddr -1),
        // then the direct map of each RAM range, which covers the text's pages again.
        let text = vec![0xaau8; 0x2000];
        let low: Vec<u8> = (0..0x9_f000u32).map(|i| (i / 4096) as u8).collect();
        let high: Vec<u8> = (0..0x40_0000u32).map(|i| (i / 4096) as u8 ^ 0x55).collect();
        let mut core = build_core(&[
            Load { paddr: 0x20_0000, data: &text, memsz: 0x2000 },
            Load { paddr: u64::MAX, data: &[], memsz: 0x1000 },
            Load { paddr: 0x1000, data: &low, memsz: 0x9_f000 },
            Load { paddr: 0x10_0000, data: &high, memsz: 0x40_0000 },
        ]);
        set_vaddr(&mut core, 1, 0xffff_ffff_8120_0000);
        let f = write_temp(&core);
        let m = open(f.path()).unwrap();
        assert_eq!(m.segment_count(), 2);
        assert_eq!(
            m.ram(),
            vec![
                PhysRange::new(PhysAddr::new(0x1000), 0x9_f000).unwrap(),
                PhysRange::new(PhysAddr::new(0x10_0000), 0x40_0000).unwrap()
            ]
        );
        // All of RAM reads through the direct map, including the text's pages.
        let mut buf = [0u8; 8];
        m.read_phys(PhysAddr::new(0x20_0010), &mut buf).unwrap();
        assert_eq!(buf, [(0x10_0000u32 / 4096) as u8 ^ 0x55; 8]);
        m.read_phys(PhysAddr::new(0x4f_fff8), &mut buf).unwrap();
        assert_eq!(buf, [(0x3f_f000u32 / 4096) as u8 ^ 0x55; 8]);
        m.read_phys(PhysAddr::new(0x5000), &mut buf).unwrap();
        assert_eq!(buf, [4; 8]);
        let alias = m.notes().iter().find(|n| n.contains("a second time")).expect("a note about the alias");
        assert!(alias.contains("PT_LOAD #0") && alias.contains("0xffffffff81200000"), "{alias}");
    }

    #[test]
    fn overlapping_segments_outside_kcore_are_an_error() {
        let d = vec![1u8; 0x1000];
        let core = build_core(&[
            Load { paddr: 0x1000, data: &d, memsz: 0x1000 },
            Load { paddr: 0x1800, data: &d, memsz: 0x1000 },
        ]);
        let f = write_temp(&core);
        let e = open(f.path()).unwrap_err();
        assert!(matches!(e, MemSrcError::Overlap { .. }), "{e}");
        assert!(e.to_string().contains("PT_LOAD #1"), "{e}");
    }

    #[test]
    fn malformed_cores_are_refused_with_reasons() {
        let f = write_temp(b"not an elf file at all, but long enough to hold an ELF header ....");
        assert!(matches!(open(f.path()), Err(MemSrcError::BadElf { .. })));
        let f = write_temp(b"\x7fELF");
        assert!(matches!(open(f.path()), Err(MemSrcError::Io { .. })));
        let d = vec![1u8; 16];
        let mut core = build_core(&[Load { paddr: 0x1000, data: &d, memsz: 0x1000 }]);
        core[16] = 2; // ET_EXEC
        let f = write_temp(&core);
        let e = open(f.path()).unwrap_err();
        assert!(e.to_string().contains("ET_CORE"), "{e}");
        let mut core = build_core(&[Load { paddr: 0x1000, data: &d, memsz: 0x1000 }]);
        core[56..58].copy_from_slice(&0x4000u16.to_le_bytes()); // phnum past the file
        let f = write_temp(&core);
        assert!(open(f.path()).is_err());
        // filesz > memsz.
        let core = build_core(&[Load { paddr: 0x1000, data: &d, memsz: 8 }]);
        let f = write_temp(&core);
        let e = open(f.path()).unwrap_err();
        assert!(e.to_string().contains("p_filesz"), "{e}");
        // Only a PT_NOTE: no memory.
        let f = write_temp(&build_core(&[]));
        assert!(matches!(open(f.path()), Err(MemSrcError::Empty { .. })));
    }

    #[test]
    fn truncated_data_fails_the_read_not_the_open() {
        let d = vec![7u8; 0x1000];
        let mut core = build_core(&[Load { paddr: 0x4000, data: &d, memsz: 0x1000 }]);
        core.truncate(core.len() - 0x800);
        let f = write_temp(&core);
        let m = open(f.path()).unwrap();
        let mut buf = [0u8; 8];
        m.read_phys(PhysAddr::new(0x4000), &mut buf).unwrap();
        assert_eq!(buf, [7; 8]);
        assert!(m.read_phys(PhysAddr::new(0x4ff8), &mut buf).is_err());
    }
}
