//! `/dev/mem`: the live machine's physical memory, read with `pread` at the physical address.
//!
//! RAM comes from the top-level `System RAM` lines of `/proc/iomem`. Non-root readers see
//! every address there as zero, so all-zero ranges mean "not allowed to know" and are an
//! error rather than an empty map. Note that kernels built with `CONFIG_STRICT_DEVMEM` (most
//! distribution kernels) refuse `/dev/mem` reads of RAM: the reads then fail and the tool
//! reports the pointer it could not follow. `/proc/kcore` (`--elf /proc/kcore`) works there.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::{Backing, MemSource, MemSrcError, Segment};
use kho_core::types::merge_ranges;
use kho_core::{PhysAddr, PhysRange};

/// Opens `dev` (normally `/dev/mem`) with RAM ranges parsed from `iomem` (normally
/// `/proc/iomem`).
///
/// # Errors
/// [`MemSrcError::Io`] if either file cannot be read, [`MemSrcError::NoRam`] if `iomem`
/// names no usable `System RAM` range.
pub fn open(dev: &Path, iomem: &Path) -> Result<MemSource, MemSrcError> {
    let text =
        std::fs::read_to_string(iomem).map_err(|source| MemSrcError::Io { path: iomem.to_path_buf(), source })?;
    let ram = parse_iomem(&text)?;
    let file = File::open(dev).map_err(|source| MemSrcError::Io { path: dev.to_path_buf(), source })?;
    let file = Arc::new(file);
    let what = dev.display().to_string();
    let mut m = MemSource::new();
    for r in &ram {
        m.add_segment(Segment {
            range: *r,
            data_len: r.len(),
            backing: Backing::File { file: Arc::clone(&file), offset: r.start().as_u64() },
            origin: Arc::from(format!("{what} {r}").as_str()),
        })?;
    }
    let total: u64 = ram.iter().map(|r| r.len()).sum();
    m.descriptions.push(format!(
        "{what}: {} System RAM range(s) from {}, {total:#x} bytes",
        ram.len(),
        iomem.display()
    ));
    m.ram_override = Some(ram);
    Ok(m)
}

/// The top-level `System RAM` ranges of an `/proc/iomem` text, sorted and coalesced.
/// Lines look like `00100000-7ffdffff : System RAM` (inclusive end); nested (indented)
/// lines are parts of their parent and are ignored.
///
/// # Errors
/// [`MemSrcError::NoRam`] if there is no such line, or every one reads `0-0` (the file was
/// read without root).
pub fn parse_iomem(text: &str) -> Result<Vec<PhysRange>, MemSrcError> {
    let mut ranges = Vec::new();
    let mut hidden = false;
    for line in text.lines() {
        if line.starts_with(' ') {
            continue;
        }
        let Some((span, name)) = line.split_once(" : ") else { continue };
        if name.trim() != "System RAM" {
            continue;
        }
        let Some((a, b)) = span.trim().split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
        if a == 0 && b == 0 {
            hidden = true;
            continue;
        }
        if let Some(r) = b.checked_add(1).and_then(|end| PhysRange::from_bounds(PhysAddr::new(a), PhysAddr::new(end))) {
            ranges.push(r);
        }
    }
    if ranges.is_empty() {
        let reason = if hidden {
            "/proc/iomem shows all addresses as 0: run as root".to_string()
        } else {
            "/proc/iomem has no top-level \"System RAM\" line".to_string()
        };
        return Err(MemSrcError::NoRam { reason });
    }
    Ok(merge_ranges(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_core::PhysRead;
    use std::io::Write;

    const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
00100000-7ffdffff : System RAM
  01000000-01e00fff : Kernel code
  02000000-0262ffff : Kernel data
7ffe0000-7fffffff : Reserved
100000000-17fffffff : System RAM
";

    #[test]
    fn iomem_system_ram_lines() {
        let r = parse_iomem(IOMEM).unwrap();
        let want: Vec<_> = [(0x1000, 0x9fc00), (0x10_0000, 0x8000_0000 - 0x2_0000), (0x1_0000_0000, 0x1_8000_0000)]
            .iter()
            .map(|&(a, b)| PhysRange::from_bounds(PhysAddr::new(a), PhysAddr::new(b)).unwrap())
            .collect();
        assert_eq!(r, want);
    }

    #[test]
    fn iomem_without_root_is_an_error() {
        let hidden = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n";
        let e = parse_iomem(hidden).unwrap_err();
        assert!(e.to_string().contains("run as root"), "{e}");
        let e = parse_iomem("garbage\n").unwrap_err();
        assert!(e.to_string().contains("System RAM"), "{e}");
    }

    #[test]
    fn reads_at_the_physical_address() {
        // A stand-in for /dev/mem: a file whose offset is the physical address.
        let mut dev = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..0x3000u32).map(|i| (i / 16) as u8).collect();
        dev.write_all(&data).unwrap();
        let mut iomem = tempfile::NamedTempFile::new().unwrap();
        iomem.write_all(b"00000000-00000fff : Reserved\n00001000-00002fff : System RAM\n").unwrap();
        let m = open(dev.path(), iomem.path()).unwrap();
        let mut buf = [0u8; 4];
        m.read_phys(PhysAddr::new(0x2010), &mut buf).unwrap();
        assert_eq!(buf, [1; 4]);
        assert!(m.read_phys(PhysAddr::new(0x10), &mut buf).is_err());
        assert!(m.read_phys(PhysAddr::new(0x2ffe), &mut buf).is_err());
        assert_eq!(m.ram(), vec![PhysRange::new(PhysAddr::new(0x1000), 0x2000).unwrap()]);
    }
}
