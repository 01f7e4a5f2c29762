//! Raw memory images: `--mem FILE@BASE`, file offset 0 at physical address `BASE`.
//!
//! A name ending in `.zst` is a zstd stream. It is decompressed once, streaming, into a sparse
//! page map that keeps only the pages that are not all zero: a dump of a 2 GiB guest in which
//! almost everything is zero costs a few megabytes, not 2 GiB. (`ruzstd` is a pure-Rust
//! decoder, so the tool needs no C library.)

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use super::{Backing, MemSource, MemSpec, MemSrcError, Segment, SparsePages, segment_range};
use kho_core::PAGE_SIZE;

/// Opens one `--mem` image.
///
/// # Errors
/// [`MemSrcError::Io`] if unreadable, [`MemSrcError::Zstd`] for a corrupt stream,
/// [`MemSrcError::Empty`] / [`MemSrcError::Wraps`] for a size that does not fit at the base.
pub fn open(spec: &MemSpec) -> Result<MemSource, MemSrcError> {
    let io = |source| MemSrcError::Io { path: spec.path.clone(), source };
    let file = File::open(&spec.path).map_err(io)?;
    let what = spec.path.display().to_string();
    if is_zst(&spec.path) {
        let (len, pages) = decompress(&spec.path, file)?;
        let mut m = MemSource::from_pages(&what, spec.base, len, pages)?;
        m.descriptions.clear();
        m.descriptions.push(format!(
            "raw image {what} (zstd, {len:#x} bytes, {} non-zero pages) at {:#x}",
            m.nonzero_pages(),
            spec.base
        ));
        return Ok(m);
    }
    let len = file.metadata().map_err(io)?.len();
    let range = segment_range(&what, spec.base, len)?;
    let mut m = MemSource::new();
    m.add_segment(Segment {
        range,
        data_len: len,
        backing: Backing::File { file: Arc::new(file), offset: 0 },
        origin: Arc::from(what.as_str()),
    })?;
    m.descriptions.push(format!("raw image {what} ({len:#x} bytes) at {range}"));
    Ok(m)
}

fn is_zst(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("zst"))
}

impl MemSource {
    /// Pages held in sparse page maps (for descriptions).
    fn nonzero_pages(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match &s.backing {
                Backing::Pages(p) => p.len(),
                Backing::File { .. } => 0,
            })
            .sum()
    }
}

/// Decompresses a zstd file into (length, non-zero pages).
fn decompress(path: &Path, file: File) -> Result<(u64, SparsePages), MemSrcError> {
    let zerr = |reason: String| MemSrcError::Zstd { path: path.to_path_buf(), reason };
    let mut dec = ruzstd::decoding::StreamingDecoder::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| zerr(e.to_string()))?;
    let page = PAGE_SIZE as usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut pages = SparsePages::new();
    let mut total: u64 = 0;
    // `fill` bytes of `buf` are valid; pages are cut from its start as they complete.
    let mut fill = 0usize;
    loop {
        let n = dec.read(&mut buf[fill..]).map_err(|e| zerr(e.to_string()))?;
        fill += n;
        let eof = n == 0;
        let whole = if eof { fill } else { fill - fill % page };
        for (i, chunk) in buf[..whole].chunks(page).enumerate() {
            if !is_zero(chunk) {
                let mut p = vec![0u8; page];
                p[..chunk.len()].copy_from_slice(chunk);
                pages.insert(total / PAGE_SIZE + i as u64, p.into_boxed_slice());
            }
        }
        total += whole as u64;
        buf.copy_within(whole..fill, 0);
        fill -= whole;
        if eof {
            return Ok((total, pages));
        }
    }
}

/// True if every byte is zero (compares eight bytes at a time).
fn is_zero(b: &[u8]) -> bool {
    let (words, tail) = b.split_at(b.len() - b.len() % 8);
    words.chunks_exact(8).all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
        && tail.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_core::{PhysAddr, PhysRead};
    use std::io::Write;

    #[test]
    fn plain_image_at_a_base() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let spec = MemSpec { path: f.path().to_path_buf(), base: 0x1_0000_0000 };
        let m = open(&spec).unwrap();
        let mut buf = [0u8; 16];
        m.read_phys(PhysAddr::new(0x1_0000_1ff8), &mut buf[..8]).unwrap();
        assert_eq!(&buf[..8], &data[0x1ff8..]);
        assert!(m.read_phys(PhysAddr::new(0x1_0000_1ff8), &mut buf).is_err());
        assert!(m.read_phys(PhysAddr::new(0xffff_fff8), &mut buf).is_err());
        assert_eq!(m.ram().len(), 1);
        assert_eq!(m.ram()[0].len(), 0x2000);
    }

    #[test]
    fn missing_and_empty_images_are_errors() {
        let spec = MemSpec { path: "/nonexistent/kho-mem.img".into(), base: 0 };
        let e = open(&spec).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kho-mem.img"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = open(&MemSpec { path: f.path().to_path_buf(), base: 0 }).unwrap_err();
        assert!(matches!(e, MemSrcError::Empty { .. }), "{e}");
    }

    #[test]
    fn corrupt_zstd_is_an_error() {
        let mut f = tempfile::Builder::new().suffix(".zst").tempfile().unwrap();
        f.write_all(b"definitely not zstd").unwrap();
        let e = open(&MemSpec { path: f.path().to_path_buf(), base: 0 }).unwrap_err();
        assert!(matches!(e, MemSrcError::Zstd { .. }), "{e}");
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4096]));
        let mut p = [0u8; 4101];
        p[4100] = 1;
        assert!(!is_zero(&p));
        p[4100] = 0;
        p[7] = 1;
        assert!(!is_zero(&p));
    }
}
