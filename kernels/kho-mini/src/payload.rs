//! The payload: how the next Linux travels with the mini kernel. The first kexec loads the
//! mini kernel with this blob as its initrd (boot_params `ramdisk_image`/`ramdisk_size`), so
//! a loader needs nothing beyond starting a bzImage with an initrd. Layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"KHOMINI1"` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | header bytes (64) |
//! | 16 | 8 + 8 | kernel: offset, length (a bzImage) |
//! | 32 | 8 + 8 | initrd: offset, length (0 = none) |
//! | 48 | 8 + 8 | command line: offset, length (without NUL) |
//!
//! Offsets are from the start of the payload; each part is 4 KiB aligned by [`pack`].

use alloc::vec::Vec;

use crate::bootparams::{le32, le64, put32, put64};
use crate::error::{Result, bad};

/// Magic at offset 0.
pub const MAGIC: &[u8; 8] = b"KHOMINI1";
/// Layout version.
pub const VERSION: u32 = 1;
/// Header bytes.
pub const HEADER_BYTES: usize = 64;

/// Where the parts are, as offsets into the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The next kernel (bzImage).
    pub kernel: (u64, u64),
    /// Its initrd (length 0 = none).
    pub initrd: (u64, u64),
    /// Its command line.
    pub cmdline: (u64, u64),
}

impl Payload {
    /// Decodes the header of a payload of `total` bytes (`at` is its physical address, for
    /// messages) and checks that every part lies inside it.
    ///
    /// # Errors
    /// [`crate::MiniError::BadValue`] naming the field.
    pub fn parse(hdr: &[u8], total: u64, at: u64) -> Result<Self> {
        if hdr.len() < HEADER_BYTES || total < HEADER_BYTES as u64 {
            return Err(bad("payload", at, total, "a payload of at least its 64-byte header"));
        }
        if &hdr[..8] != MAGIC {
            return Err(bad("payload magic", at, le64(hdr, 0), "\"KHOMINI1\""));
        }
        let version = le32(hdr, 8);
        if version != VERSION {
            return Err(bad("payload version", at + 8, version.into(), "version 1"));
        }
        let part = |off: usize, what: &'static str, required: bool| -> Result<(u64, u64)> {
            let (o, l) = (le64(hdr, off), le64(hdr, off + 8));
            if l == 0 && !required {
                return Ok((0, 0));
            }
            let end = o.checked_add(l).ok_or_else(|| bad(what, at + off as u64, o, "a part that does not wrap"))?;
            if end > total || (l > 0 && o < HEADER_BYTES as u64) {
                return Err(bad(what, at + off as u64, o, "a part inside the payload, after its header"));
            }
            if required && l == 0 {
                return Err(bad(what, at + off as u64 + 8, 0, "a non-empty part"));
            }
            Ok((o, l))
        };
        Ok(Self {
            kernel: part(16, "payload kernel", true)?,
            initrd: part(32, "payload initrd", false)?,
            cmdline: part(48, "payload cmdline", false)?,
        })
    }
}

/// Builds a payload from its parts.
#[must_use]
pub fn pack(kernel: &[u8], initrd: &[u8], cmdline: &[u8]) -> Vec<u8> {
    let mut out = alloc::vec![0u8; HEADER_BYTES];
    out[..8].copy_from_slice(MAGIC);
    put32(&mut out, 8, VERSION);
    put32(&mut out, 12, HEADER_BYTES as u32);
    for (i, part) in [kernel, initrd, cmdline].into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let off = out.len().next_multiple_of(4096);
        out.resize(off, 0);
        out.extend_from_slice(part);
        let field = 16 + i * 16;
        put64(&mut out, field, off as u64);
        put64(&mut out, field + 8, part.len() as u64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MiniError;

    #[test]
    fn packs_and_parses() {
        let p = pack(b"KERNEL", b"INITRD!", b"console=ttyS0");
        let h = Payload::parse(&p, p.len() as u64, 0x100_0000).unwrap();
        let get = |(o, l): (u64, u64)| &p[o as usize..(o + l) as usize];
        assert_eq!(get(h.kernel), b"KERNEL");
        assert_eq!(get(h.initrd), b"INITRD!");
        assert_eq!(get(h.cmdline), b"console=ttyS0");
        assert_eq!(h.kernel.0 % 4096, 0);
    }

    #[test]
    fn refuses_parts_outside_and_bad_magic() {
        let p = pack(b"K", b"", b"");
        assert_eq!(Payload::parse(&p, p.len() as u64, 0).unwrap().initrd, (0, 0));
        assert_eq!(p.len(), 0x1001);
        let e = Payload::parse(&p, p.len() as u64 - 1, 0x1000).unwrap_err();
        assert!(matches!(e, MiniError::BadValue { what: "payload kernel", .. }), "{e}");
        let mut q = p.clone();
        q[0] = b'X';
        assert!(matches!(
            Payload::parse(&q, q.len() as u64, 0),
            Err(MiniError::BadValue { what: "payload magic", .. })
        ));
        let mut q = p.clone();
        put64(&mut q, 16, u64::MAX);
        assert!(matches!(
            Payload::parse(&q, q.len() as u64, 0),
            Err(MiniError::BadValue { what: "payload kernel", .. })
        ));
        let q = pack(b"", b"x", b"");
        let e = Payload::parse(&q, q.len() as u64, 0).unwrap_err();
        assert!(matches!(e, MiniError::BadValue { what: "payload kernel", found: 0, .. }), "{e}");
    }
}
