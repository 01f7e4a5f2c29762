//! Memory sources: where `kho inspect`, `kho validate` and `kho convert` read physical memory
//! from.
//!
//! Every source is turned into one [`MemSource`]: a sorted list of disjoint physical segments,
//! each backed by a file read with `pread` (an ELF core's `PT_LOAD` data, `/dev/mem`, a raw
//! image) or by a sparse page map (a decompressed `.zst` image). Reads that touch any byte no
//! segment covers fail with [`MemError`]; nothing here panics on hostile input.
//!
//! Files are read with `pread` rather than memory-mapped: the tool reads a few pages of
//! metadata, so a mapping buys nothing, and `pread` needs no `unsafe` and cannot fault with
//! `SIGBUS` when somebody truncates the dump while it is being read. `/proc/kcore` cannot be
//! mapped at all.

pub mod devmem;
pub mod elf;
pub mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use kho_core::types::merge_ranges;
use kho_core::{MemError, PAGE_SIZE, PhysAddr, PhysRange, PhysRead};

/// Why a memory source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MemSrcError {
    /// A `--mem` argument or a number in it is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A file could not be opened or read (the OS error is the source, which `{:#}` in the
    /// binary's error report prints after the path).
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not an ELF64 little-endian core, or its headers are malformed.
    #[error("{}: not a usable ELF core file: {reason}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `--mem` path is a directory or a device, not an image file.
    #[error("{}: {kind}, not a memory image file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A zstd stream is corrupt.
    #[error("{}: cannot decompress zstd image: {reason}", path.display())]
    Zstd {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// An image has no bytes, or an ELF core has no usable segment.
    #[error("{what}: covers no memory")]
    Empty {
        /// The source.
        what: String,
    },
    /// An image does not fit in the 64-bit physical address space at its base.
    #[error("{what}: {len:#x} bytes at {base:#x} run past the end of the physical address space")]
    Wraps {
        /// The source.
        what: String,
        /// Its base.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// Two sources (or two segments of one ELF core) claim the same physical bytes.
    #[error("{first} and {second} both cover {overlap}")]
    Overlap {
        /// The source added first.
        first: String,
        /// The source added second.
        second: String,
        /// The bytes both claim.
        overlap: PhysRange,
    },
    /// `/proc/iomem` could not tell where RAM is.
    #[error("/dev/mem: cannot find RAM: {reason}")]
    NoRam {
        /// Why.
        reason: String,
    },
}

/// A malformed `FILE@BASE` argument or number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No `@` separates the file from its base address.
    #[error("--mem {arg:?}: expected FILE@BASE (e.g. mem.img@0x100000000), found no '@'")]
    MissingAt {
        /// The whole argument.
        arg: String,
    },
    /// The file part is empty.
    #[error("--mem {arg:?}: the file name before '@' is empty")]
    EmptyPath {
        /// The whole argument.
        arg: String,
    },
    /// A number is not hex (`0x…`) or decimal, or does not fit in 64 bits.
    #[error(
        "{what} {text:?}: not a number or size (hex with 0x, or decimal, optionally followed by K, M, G, T or P, \
         also written KiB or KB, all binary)"
    )]
    BadNumber {
        /// What the number is (argument name).
        what: String,
        /// The text.
        text: String,
    },
}

/// Parses an address or size, the one grammar of every numeric flag: `0x`-prefixed hex or
/// decimal, `_` separators allowed, then an optional unit, case-insensitive: `K`, `M`, `G`,
/// `T`, `P`, each also as `KiB`/`KB`, `GiB`/`GB` and so on. Every unit is binary (`1G` =
/// `1GiB` = `1GB` = 2^30 bytes), as Linux's `memparse` and memory vendors count; a space
/// between number and unit is allowed. `what` names the value in the error.
///
/// # Errors
/// [`SpecError::BadNumber`] for anything else, including overflow.
pub fn parse_number(text: &str, what: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::BadNumber { what: what.to_string(), text: text.to_string() };
    let t: String = text.trim().chars().filter(|&c| c != '_').collect();
    let lower = t.to_ascii_lowercase();
    let (digits, shift) = split_unit(&lower).ok_or_else(bad)?;
    let digits = digits.trim_end();
    if digits.is_empty() {
        return Err(bad());
    }
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u64::from_str_radix(hex, 16).map_err(|_| bad())?
    } else {
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        digits.parse::<u64>().map_err(|_| bad())?
    };
    value.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Splits a lower-cased number into its digits and the unit's shift (0 without a unit);
/// `None` when a unit is half written (`"ib"` with no letter before it).
fn split_unit(t: &str) -> Option<(&str, u32)> {
    fn shift(c: char) -> Option<u32> {
        match c {
            'k' => Some(10),
            'm' => Some(20),
            'g' => Some(30),
            't' => Some(40),
            'p' => Some(50),
            _ => None,
        }
    }
    let hex = t.starts_with("0x");
    let before_b = t.strip_suffix('b').and_then(|x| x.chars().last());
    // In hex, a trailing 'b' is a digit unless a unit letter precedes it ("0x1b" vs "0x10gb").
    let (body, needs_unit) = if let Some(x) = t.strip_suffix("ib") {
        (x, true)
    } else if let Some(x) = t.strip_suffix('b').filter(|_| !hex || before_b.and_then(shift).is_some()) {
        (x, hex)
    } else {
        (t, false)
    };
    match body.chars().last().and_then(|c| shift(c).map(|s| (c, s))) {
        Some((c, s)) => Some((&body[..body.len() - c.len_utf8()], s)),
        None if needs_unit => None,
        None => Some((body, 0)),
    }
}

/// One `--mem FILE@BASE` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemSpec {
    /// The image file (a `.zst` suffix means zstd-compressed).
    pub path: PathBuf,
    /// Physical address of the image's first byte.
    pub base: u64,
}

impl std::str::FromStr for MemSpec {
    type Err = SpecError;
    fn from_str(arg: &str) -> Result<Self, SpecError> {
        // The last '@' separates: file names may contain '@', numbers never do.
        let (path, base) = arg.rsplit_once('@').ok_or_else(|| SpecError::MissingAt { arg: arg.to_string() })?;
        if path.is_empty() {
            return Err(SpecError::EmptyPath { arg: arg.to_string() });
        }
        let base = parse_number(base, &format!("--mem {arg:?}: base address"))?;
        Ok(Self { path: PathBuf::from(path), base })
    }
}

/// Pages of a sparse image: page index (relative to the segment) to contents. Missing pages
/// read as zero.
pub type SparsePages = BTreeMap<u64, Box<[u8]>>;

/// What holds a segment's bytes.
#[derive(Clone)]
enum Backing {
    /// `pread` from a file at `offset + (addr - segment start)`.
    File { file: Arc<File>, offset: u64 },
    /// Whole pages; absent pages are zero.
    Pages(Arc<SparsePages>),
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::File { offset, .. } => write!(f, "File {{ offset: {offset:#x} }}"),
            Backing::Pages(p) => write!(f, "Pages({} non-zero)", p.len()),
        }
    }
}

/// One stretch of physical memory with its backing.
#[derive(Debug, Clone)]
struct Segment {
    /// Physical bytes covered (an ELF segment's `p_memsz`).
    range: PhysRange,
    /// Bytes that come from the backing (`p_filesz`); the rest reads as zero.
    data_len: u64,
    backing: Backing,
    /// Which source, for messages.
    origin: Arc<str>,
}

impl Segment {
    /// Fills `buf` from offset `off` of the segment (caller keeps it inside `range`).
    fn read(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let len = buf.len() as u64;
        let from_data = self.data_len.saturating_sub(off).min(len) as usize;
        let (data, zeros) = buf.split_at_mut(from_data);
        zeros.fill(0);
        if data.is_empty() {
            return Ok(());
        }
        match &self.backing {
            Backing::File { file, offset } => {
                let pos = offset
                    .checked_add(off)
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset overflows"))?;
                file.read_exact_at(data, pos)
            }
            Backing::Pages(pages) => {
                let mut done = 0usize;
                let mut at = off;
                while done < data.len() {
                    let in_page = (at % PAGE_SIZE) as usize;
                    let n = (PAGE_SIZE as usize - in_page).min(data.len() - done);
                    match pages.get(&(at / PAGE_SIZE)) {
                        Some(p) if p.len() >= in_page + n => {
                            data[done..done + n].copy_from_slice(&p[in_page..in_page + n]);
                        }
                        _ => data[done..done + n].fill(0),
                    }
                    done += n;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }
}

/// Physical memory assembled from one or more sources.
#[derive(Debug, Clone, Default)]
pub struct MemSource {
    /// Keyed by start address, pairwise disjoint. A map, not a sorted vector: a core with a
    /// million program headers is added in O(n log n), not O(n^2) element moves.
    segments: BTreeMap<u64, Segment>,
    /// Segments looked at by overlap checks so far (a work counter for tests: at most two
    /// per segment added, whatever the number of segments).
    probes: u64,
    /// RAM as the source knows it (e.g. `/proc/iomem`), if it knows better than its segments.
    ram_override: Option<Vec<PhysRange>>,
    /// One line per source, for reports.
    descriptions: Vec<String>,
    /// Things worth telling the operator (skipped segments and the like).
    notes: Vec<String>,
}

impl MemSource {
    /// No memory at all.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The segment that holds `addr` or, failing that, the first one starting after it.
    fn segment_at_or_after(&self, addr: u64) -> Option<&Segment> {
        let before = self.segments.range(..=addr).next_back().map(|(_, s)| s).filter(|s| s.range.end().as_u64() > addr);
        before.or_else(|| self.segments.range(addr..).next().map(|(_, s)| s))
    }

    /// The segment overlapping `range` with the lowest address, if any.
    fn first_overlap(&mut self, range: PhysRange) -> Option<&Segment> {
        self.probes += 2;
        self.segment_at_or_after(range.start().as_u64()).filter(|s| s.range.overlaps(range))
    }

    /// Adds a segment, refusing overlap with any segment already present. O(log n).
    fn add_segment(&mut self, seg: Segment) -> Result<(), MemSrcError> {
        if let Some(next) = self.first_overlap(seg.range) {
            let start = next.range.start().max(seg.range.start());
            let end = next.range.end().min(seg.range.end());
            return Err(MemSrcError::Overlap {
                first: next.origin.to_string(),
                second: seg.origin.to_string(),
                overlap: PhysRange::from_bounds(start, end).unwrap_or(seg.range),
            });
        }
        self.segments.insert(seg.range.start().as_u64(), seg);
        Ok(())
    }

    /// True if some segment overlaps `range`. O(log n).
    fn overlaps_any(&mut self, range: PhysRange) -> bool {
        self.first_overlap(range).is_some()
    }

    /// Segments examined by overlap checks so far (bounded work: two per check).
    #[cfg(test)]
    pub(crate) fn probes(&self) -> u64 {
        self.probes
    }

    /// Adds every segment of `other` (and its RAM knowledge, descriptions and notes).
    ///
    /// # Errors
    /// [`MemSrcError::Overlap`] if `other` covers bytes already covered.
    pub fn merge(&mut self, other: MemSource) -> Result<(), MemSrcError> {
        for s in other.segments.into_values() {
            self.add_segment(s)?;
        }
        if let Some(r) = other.ram_override {
            let mut all = self.ram_override.take().unwrap_or_default();
            all.extend(r);
            self.ram_override = Some(merge_ranges(all));
        }
        self.descriptions.extend(other.descriptions);
        self.notes.extend(other.notes);
        Ok(())
    }

    /// RAM this source covers, sorted and coalesced: what the range checks accept.
    #[must_use]
    pub fn ram(&self) -> Vec<PhysRange> {
        match &self.ram_override {
            Some(r) => r.clone(),
            None => merge_ranges(self.segments.values().map(|s| s.range).collect()),
        }
    }

    /// One line per source that was opened.
    #[must_use]
    pub fn descriptions(&self) -> &[String] {
        &self.descriptions
    }

    /// Remarks about the sources (segments skipped, assumptions made).
    #[must_use]
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Number of backed segments.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Memory backed by a sparse page map, for building images in memory (tests, `convert`).
    /// `pages` maps page index relative to `base` to page contents.
    ///
    /// # Errors
    /// [`MemSrcError::Empty`] for a zero length, [`MemSrcError::Wraps`] past 2^64.
    pub fn from_pages(what: &str, base: u64, len: u64, pages: SparsePages) -> Result<Self, MemSrcError> {
        let mut m = Self::new();
        let range = segment_range(what, base, len)?;
        m.add_segment(Segment {
            range,
            data_len: len,
            backing: Backing::Pages(Arc::new(pages)),
            origin: Arc::from(what),
        })?;
        m.descriptions.push(format!("{what}: {range}"));
        Ok(m)
    }
}

/// The range `[base, base + len)`, or the matching error.
fn segment_range(what: &str, base: u64, len: u64) -> Result<PhysRange, MemSrcError> {
    if len == 0 {
        return Err(MemSrcError::Empty { what: what.to_string() });
    }
    PhysRange::new(PhysAddr::new(base), len).ok_or(MemSrcError::Wraps { what: what.to_string(), base, len })
}

impl PhysRead for MemSource {
    /// Reads across adjacent segments as one stretch; any byte in a hole between segments (or
    /// outside all of them), or an I/O error from the backing file, fails the whole read.
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let err = MemError::read(phys, buf.len() as u64);
        if buf.is_empty() {
            return Ok(());
        }
        // The last byte must be addressable; this also rules out reads that wrap.
        phys.checked_add(buf.len() as u64 - 1).ok_or(err)?;
        let mut cur = phys.as_u64();
        let mut done = 0usize;
        while done < buf.len() {
            let seg = self.segment_at_or_after(cur).ok_or(err)?;
            if !seg.range.contains(PhysAddr::new(cur)) {
                return Err(err);
            }
            let off = cur - seg.range.start().as_u64();
            let avail = seg.range.end().as_u64() - cur;
            let n = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len() - done);
            seg.read(off, &mut buf[done..done + n]).map_err(|_| err)?;
            done += n;
            cur += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's backend contract (kho_core::testing::check_phys_read), on a memory source
    /// made of two merged segments: reads inside agree, reads past the end fail as reads.
    #[test]
    fn memory_source_keeps_the_engine_backend_contract() {
        let mut pages = SparsePages::new();
        pages.insert(1, vec![0x5a; 4096].into_boxed_slice());
        let mut m = MemSource::from_pages("a", 0x1_0000, 0x2000, pages).unwrap();
        m.merge(MemSource::from_pages("b", 0x1_2000, 0x1000, SparsePages::new()).unwrap()).unwrap();
        kho_core::testing::check_phys_read(&m, PhysRange::new(PhysAddr::new(0x1_0000), 0x3000).unwrap());
    }

    fn page(fill: u8) -> Box<[u8]> {
        vec![fill; PAGE_SIZE as usize].into_boxed_slice()
    }

    #[test]
    fn numbers_in_hex_decimal_and_suffixes() {
        assert_eq!(parse_number("0x100000000", "x"), Ok(0x1_0000_0000));
        assert_eq!(parse_number("4096", "x"), Ok(4096));
        assert_eq!(parse_number("0x1_0000", "x"), Ok(0x1_0000));
        assert_eq!(parse_number("2G", "x"), Ok(2 << 30));
        assert_eq!(parse_number("16k", "x"), Ok(16 << 10));
        for (text, want) in [
            ("2GiB", 2u64 << 30),
            ("2GB", 2 << 30),
            ("2 GiB", 2 << 30),
            ("0x10G", 16 << 30),
            ("512MiB", 512 << 20),
            ("1T", 1 << 40),
            ("1tb", 1 << 40),
            ("4096B", 4096),
            ("0x1b", 0x1b),
            ("0x1bk", 0x1b << 10),
        ] {
            assert_eq!(parse_number(text, "x"), Ok(want), "{text}");
        }
        for bad in [
            "",
            "0x",
            "12z",
            "-1",
            "0xg",
            "99999999999999999999",
            "0xffffffffffffffffT",
            "M",
            "GiB",
            "2GiG",
            "1.5G",
            "+4",
        ] {
            assert!(
                matches!(parse_number(bad, "the base"), Err(SpecError::BadNumber { ref text, .. }) if text == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mem_spec_parse_and_errors() {
        let s: MemSpec = "dir/mem.img@0x100000000".parse().unwrap();
        assert_eq!(s, MemSpec { path: "dir/mem.img".into(), base: 0x1_0000_0000 });
        let s: MemSpec = "a@b.img@0".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("a@b.img"));
        assert_eq!("mem.img".parse::<MemSpec>(), Err(SpecError::MissingAt { arg: "mem.img".into() }));
        assert_eq!("@0x1000".parse::<MemSpec>(), Err(SpecError::EmptyPath { arg: "@0x1000".into() }));
        let e = "mem.img@0xzz".parse::<MemSpec>().unwrap_err();
        assert!(matches!(&e, SpecError::BadNumber { text, .. } if text == "0xzz"));
        assert!(e.to_string().contains("mem.img@0xzz"), "{e}");
    }

    #[test]
    fn sparse_reads_cross_adjacent_segments_and_fail_in_holes() {
        let mut a = SparsePages::new();
        a.insert(1, page(0xaa));
        let mut m = MemSource::from_pages("a", 0x1_0000, 0x2000, a).unwrap();
        let mut b = SparsePages::new();
        b.insert(0, page(0xbb));
        m.merge(MemSource::from_pages("b", 0x1_2000, 0x1000, b).unwrap()).unwrap();
        let c = MemSource::from_pages("c", 0x2_0000, 0x1000, SparsePages::new()).unwrap();
        m.merge(c).unwrap();

        let mut buf = [0u8; 8];
        m.read_phys(PhysAddr::new(0x1_1ffc), &mut buf).unwrap();
        assert_eq!(buf, [0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb]);
        m.read_phys(PhysAddr::new(0x1_0000), &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        // Into the hole after b, from before it, and in no segment at all.
        let e = m.read_phys(PhysAddr::new(0x1_2ffc), &mut buf).unwrap_err();
        assert_eq!(e, MemError::read(PhysAddr::new(0x1_2ffc), 8));
        assert!(m.read_phys(PhysAddr::new(0xfffc), &mut buf).is_err());
        assert!(m.read_phys(PhysAddr::new(0x3_0000), &mut buf).is_err());
        assert!(m.read_phys(PhysAddr::new(u64::MAX - 3), &mut buf).is_err());
        assert_eq!(
            m.ram(),
            vec![
                PhysRange::new(PhysAddr::new(0x1_0000), 0x3000).unwrap(),
                PhysRange::new(PhysAddr::new(0x2_0000), 0x1000).unwrap()
            ]
        );
    }

    #[test]
    fn adding_many_segments_costs_logarithmic_work_each() {
        // Descending addresses: the worst case for a sorted vector (every insert at the front
        // moved every segment already present: n^2 / 2 moves, 5 * 10^9 here).
        let n = 100_000u64;
        let mut m = MemSource::new();
        for i in (0..n).rev() {
            m.add_segment(Segment {
                range: PhysRange::new(PhysAddr::new(0x1000 + i * 0x2000), 0x1000).unwrap(),
                data_len: 0,
                backing: Backing::Pages(Arc::new(SparsePages::new())),
                origin: Arc::from("t"),
            })
            .unwrap();
        }
        assert_eq!(m.segment_count() as u64, n);
        assert_eq!(m.probes(), 2 * n, "two neighbours looked at per segment added");
        let mut b = [0u8; 4];
        m.read_phys(PhysAddr::new(0x1000 + (n - 1) * 0x2000 + 0xffc), &mut b).unwrap();
        assert!(m.read_phys(PhysAddr::new(0x2ffe), &mut b).is_err(), "a read into a hole fails");
    }

    #[test]
    fn overlapping_sources_are_refused() {
        let mut m = MemSource::from_pages("first.img", 0x1000, 0x2000, SparsePages::new()).unwrap();
        let e = m.merge(MemSource::from_pages("second.img", 0x2000, 0x2000, SparsePages::new()).unwrap()).unwrap_err();
        match e {
            MemSrcError::Overlap { first, second, overlap } => {
                assert_eq!((first.as_str(), second.as_str()), ("first.img", "second.img"));
                assert_eq!(overlap, PhysRange::new(PhysAddr::new(0x2000), 0x1000).unwrap());
            }
            other => panic!("{other}"),
        }
        assert!(matches!(MemSource::from_pages("z", 0, 0, SparsePages::new()), Err(MemSrcError::Empty { .. })));
        assert!(matches!(
            MemSource::from_pages("w", u64::MAX - 10, 0x1000, SparsePages::new()),
            Err(MemSrcError::Wraps { .. })
        ));
    }
}
