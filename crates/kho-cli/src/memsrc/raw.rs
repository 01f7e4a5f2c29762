//! Raw memory images: `--mem FILE@BASE`, file offset 0 at physical address `BASE`.
//!
//! A name ending in `.zst` is a zstd stream. It is decompressed once, streaming, into a sparse
//! page map that keeps only the pages that are not all zero: a dump of a 2 GiB guest in which
//! almost everything is zero costs a few megabytes, not 2 GiB. (`ruzstd` is a pure-Rust
//! decoder, so the tool needs no C library.)
//!
//! zstd expands without bound (a 384 KB stream can hold 8 GiB of zeros), so decompression is
//! capped ([`ZstLimits`]): past the decompressed size or the non-zero bytes held, the image is
//! refused with an error that says how to go on (decompress it once with `zstd -d`: a raw
//! image is read on demand, never loaded). Only regular files are images: a directory or a
//! device given as `--mem` is refused.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use super::{Backing, MemSource, MemSpec, MemSrcError, Segment, SparsePages, segment_range};
use kho_core::PAGE_SIZE;

/// Caps on decompressing a `.zst` image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstLimits {
    /// Most bytes the stream may decompress to (zeros included: they cost time, not memory).
    pub max_bytes: u64,
    /// Most non-zero bytes held in memory.
    pub max_resident: u64,
}

impl Default for ZstLimits {
    /// 64 GiB decompressed (about a minute of work), 2 GiB held.
    fn default() -> Self {
        Self { max_bytes: 64 << 30, max_resident: 2 << 30 }
    }
}

/// Opens one `--mem` image with the default [`ZstLimits`] (tests).
///
/// # Errors
/// As [`open_with`].
#[cfg(test)]
pub fn open(spec: &MemSpec) -> Result<MemSource, MemSrcError> {
    open_with(spec, &ZstLimits::default())
}

/// Opens one `--mem` image.
///
/// # Errors
/// [`MemSrcError::Io`] if unreadable, [`MemSrcError::NotAFile`] for a directory or device,
/// [`MemSrcError::Zstd`] for a corrupt or over-limit stream, [`MemSrcError::Empty`] /
/// [`MemSrcError::Wraps`] for a size that does not fit at the base.
pub fn open_with(spec: &MemSpec, limits: &ZstLimits) -> Result<MemSource, MemSrcError> {
    let io = |source| MemSrcError::Io { path: spec.path.clone(), source };
    let file = File::open(&spec.path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file" };
        return Err(MemSrcError::NotAFile { path: spec.path.clone(), kind });
    }
    let what = spec.path.display().to_string();
    if is_zst(&spec.path) {
        let (len, pages) = decompress(&spec.path, file, limits)?;
        let mut m = MemSource::from_pages(&what, spec.base, len, pages)?;
        m.descriptions.clear();
        m.descriptions.push(format!(
            "raw image {what} (zstd, {len:#x} bytes, {} non-zero pages) at {:#x}",
            m.nonzero_pages(),
            spec.base
        ));
        return Ok(m);
    }
    let len = meta.len();
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
            .values()
            .map(|s| match &s.backing {
                Backing::Pages(p) => p.len(),
                Backing::File { .. } => 0,
            })
            .sum()
    }
}

/// Decompresses a zstd file into (length, non-zero pages), within `limits`.
fn decompress(path: &Path, file: File, limits: &ZstLimits) -> Result<(u64, SparsePages), MemSrcError> {
    let zerr = |reason: String| MemSrcError::Zstd { path: path.to_path_buf(), reason };
    let mut dec = ruzstd::decoding::StreamingDecoder::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| zerr(format!("not a zstd stream ({e})")))?;
    let page = PAGE_SIZE as usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut pages = SparsePages::new();
    let mut total: u64 = 0;
    // `fill` bytes of `buf` are valid; pages are cut from its start as they complete.
    let mut fill = 0usize;
    loop {
        let n = dec.read(&mut buf[fill..]).map_err(|e| zerr(format!("corrupt after {total:#x} bytes ({e})")))?;
        fill += n;
        let eof = n == 0;
        let whole = if eof { fill } else { fill - fill % page };
        for (i, chunk) in buf[..whole].chunks(page).enumerate() {
            if !is_zero(chunk) {
                if (pages.len() as u64 + 1) * PAGE_SIZE > limits.max_resident {
                    return Err(zerr(format!(
                        "holds more than {:#x} non-zero bytes, the most kept in memory; decompress it once \
                         (zstd -d) and pass the raw image, which is read on demand",
                        limits.max_resident
                    )));
                }
                let mut p = vec![0u8; page];
                p[..chunk.len()].copy_from_slice(chunk);
                pages.insert(total / PAGE_SIZE + i as u64, p.into_boxed_slice());
            }
        }
        total += whole as u64;
        if total > limits.max_bytes {
            return Err(zerr(format!(
                "decompresses to more than {:#x} bytes (--zst-limit); decompress it once (zstd -d) and pass the \
                 raw image, which is read on demand",
                limits.max_bytes
            )));
        }
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
        let msg = e.to_string();
        assert!(msg.contains("not a zstd stream") && !msg.contains("{ "), "plain words, no Debug value: {msg}");
    }

    fn zst_of(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".zst").tempfile().unwrap();
        let enc = ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest);
        f.write_all(&enc).unwrap();
        f
    }

    #[test]
    fn zstd_expansion_is_capped_with_advice() {
        // 4 MiB of zeros compress to a few hundred bytes.
        let f = zst_of(&vec![0u8; 4 << 20]);
        let spec = MemSpec { path: f.path().to_path_buf(), base: 0 };
        let ok = open_with(&spec, &ZstLimits { max_bytes: 4 << 20, max_resident: 0 }).unwrap();
        assert_eq!(ok.ram()[0].len(), 4 << 20);
        let e = open_with(&spec, &ZstLimits { max_bytes: 1 << 20, max_resident: 1 << 20 }).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("decompresses to more than 0x100000 bytes") && msg.contains("zstd -d"), "{msg}");
        // Non-zero data counts against what is held in memory.
        let f = zst_of(&vec![0x5au8; 64 << 10]);
        let spec = MemSpec { path: f.path().to_path_buf(), base: 0 };
        let e = open_with(&spec, &ZstLimits { max_bytes: 1 << 30, max_resident: 32 << 10 }).unwrap_err();
        assert!(e.to_string().contains("non-zero bytes"), "{e}");
    }

    #[test]
    fn a_directory_is_not_an_image() {
        let d = tempfile::tempdir().unwrap();
        let e = open(&MemSpec { path: d.path().to_path_buf(), base: 0 }).unwrap_err();
        assert!(matches!(e, MemSrcError::NotAFile { kind: "a directory", .. }), "{e}");
        assert!(e.to_string().contains("a directory"), "{e}");
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
