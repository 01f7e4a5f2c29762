//! The bzImage header: what a 64-bit loader needs to know and check before loading one.
//!
//! A bzImage is `setup_sects + 1` 512-byte sectors of real-mode setup code (whose first
//! sector holds the setup header at 0x1f1) followed by the protected-mode kernel, which is
//! what gets loaded. The checks are those of the boot protocol for a 64-bit entry: the
//! boot-sector flag 0xAA55, the "HdrS" magic, protocol 2.12 or later, `LOADED_HIGH`, and
//! `XLF_KERNEL_64` (the 64-bit entry at load address + 0x200).

use zerocopy::FromBytes;

use crate::bootparams::{LOADED_HIGH, SETUP_HEADER_BYTES, SETUP_HEADER_OFFSET, SetupHeader, XLF_KERNEL_64};
use crate::error::BootError;

/// The boot-sector flag.
pub const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS" as a little-endian u32.
pub const HEADER_MAGIC: u32 = 0x5372_6448;
/// Oldest boot protocol with a 64-bit entry and `init_size`/`pref_address` (2.12).
pub const MIN_VERSION: u16 = 0x020c;
/// Offset of the 64-bit entry point from the load address.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// Setup sectors a header value of 0 means.
const DEFAULT_SETUP_SECTS: usize = 4;
/// The setup header must reach at least the end of `init_size` (protocol 2.10+).
const MIN_HEADER_END: usize = 0x264;
/// The zero page has room for the header up to 0x290.
const MAX_HEADER_END: usize = 0x290;

/// A checked bzImage.
#[derive(Debug, Clone, Copy)]
pub struct BzImage<'a> {
    file: &'a [u8],
    /// The setup header as found in the file.
    pub hdr: SetupHeader,
    header_end: usize,
    setup_bytes: usize,
}

fn bad(field: &'static str, offset: usize, found: u64, expected: &'static str) -> BootError {
    BootError::BadField { field, offset, found, expected }
}

impl<'a> BzImage<'a> {
    /// Checks `file` as a 64-bit bzImage.
    ///
    /// # Errors
    /// [`BootError::TooShort`] for a file shorter than two sectors or than its setup code;
    /// [`BootError::BadField`] naming the first header field that rules the image out:
    /// `boot_flag`, `header`, `version`, `loadflags`, `xloadflags`, `setup header end`,
    /// `kernel_alignment` (not a power of two of at least 4 KiB), `init_size` (0 or smaller
    /// than the kernel), `pref_address` (not aligned for a non-relocatable kernel).
    pub fn parse(file: &'a [u8]) -> Result<Self, BootError> {
        if file.len() < 1024 {
            return Err(BootError::TooShort { what: "boot sector and setup header", len: file.len(), need: 1024 });
        }
        let raw = &file[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + SETUP_HEADER_BYTES];
        let hdr = SetupHeader::read_from_bytes(raw).map_err(|_| BootError::TooShort {
            what: "setup header",
            len: file.len(),
            need: SETUP_HEADER_OFFSET + SETUP_HEADER_BYTES,
        })?;
        if hdr.boot_flag.get() != BOOT_FLAG {
            return Err(bad("boot_flag", 0x1fe, hdr.boot_flag.get().into(), "0xaa55 (an x86 boot sector)"));
        }
        if hdr.header.get() != HEADER_MAGIC {
            return Err(bad("header", 0x202, hdr.header.get().into(), "\"HdrS\" (0x53726448)"));
        }
        if hdr.version.get() < MIN_VERSION {
            return Err(bad("version", 0x206, hdr.version.get().into(), "boot protocol 2.12 (0x020c) or later"));
        }
        if hdr.loadflags & LOADED_HIGH == 0 {
            return Err(bad("loadflags", 0x211, hdr.loadflags.into(), "LOADED_HIGH set (a bzImage, not a zImage)"));
        }
        if hdr.xloadflags.get() & XLF_KERNEL_64 == 0 {
            return Err(bad("xloadflags", 0x236, hdr.xloadflags.get().into(), "XLF_KERNEL_64 set (a 64-bit entry)"));
        }
        let header_end = 0x202 + usize::from(file[0x201]);
        if !(MIN_HEADER_END..=MAX_HEADER_END).contains(&header_end) {
            return Err(bad("setup header end", 0x201, header_end as u64, "between 0x264 and 0x290"));
        }
        let align = hdr.kernel_alignment.get();
        if !align.is_power_of_two() || align < 4096 {
            return Err(bad("kernel_alignment", 0x230, align.into(), "a power of two of at least 4096"));
        }
        let sects = match usize::from(hdr.setup_sects) {
            0 => DEFAULT_SETUP_SECTS,
            n => n,
        };
        let setup_bytes = (sects + 1) * 512;
        if file.len() <= setup_bytes {
            return Err(BootError::TooShort { what: "setup code and kernel", len: file.len(), need: setup_bytes + 1 });
        }
        let init = hdr.init_size.get();
        if (init as usize) < file.len() - setup_bytes {
            return Err(bad("init_size", 0x260, init.into(), "at least the size of the protected-mode kernel"));
        }
        if hdr.relocatable_kernel == 0 && hdr.pref_address.get() % u64::from(align) != 0 {
            return Err(bad("pref_address", 0x258, hdr.pref_address.get(), "aligned to kernel_alignment"));
        }
        Ok(Self { file, hdr, header_end, setup_bytes })
    }

    /// The setup header bytes a loader copies into the zero page (0x1f1 up to the end the
    /// jump at 0x200 names).
    #[must_use]
    pub fn header_bytes(&self) -> &'a [u8] {
        &self.file[SETUP_HEADER_OFFSET..self.header_end]
    }

    /// The protected-mode kernel: everything after the setup sectors. This is what is loaded.
    #[must_use]
    pub fn kernel(&self) -> &'a [u8] {
        &self.file[self.setup_bytes..]
    }

    /// Bytes of real-mode setup code (`(setup_sects + 1) * 512`).
    #[must_use]
    pub fn setup_bytes(&self) -> usize {
        self.setup_bytes
    }

    /// Memory the kernel needs from its load address while it decompresses and starts.
    #[must_use]
    pub fn init_size(&self) -> u64 {
        u64::from(self.hdr.init_size.get())
    }

    /// Load-address alignment.
    #[must_use]
    pub fn alignment(&self) -> u64 {
        u64::from(self.hdr.kernel_alignment.get())
    }

    /// Preferred (for a non-relocatable kernel: required) load address.
    #[must_use]
    pub fn pref_address(&self) -> u64 {
        self.hdr.pref_address.get()
    }

    /// The kernel may be loaded at any aligned address.
    #[must_use]
    pub fn relocatable(&self) -> bool {
        self.hdr.relocatable_kernel != 0
    }

    /// The kernel may be loaded above 4 GiB.
    #[must_use]
    pub fn above_4g(&self) -> bool {
        self.hdr.xloadflags.get() & crate::bootparams::XLF_CAN_BE_LOADED_ABOVE_4G != 0
    }

    /// Longest command line the kernel accepts, without the NUL.
    #[must_use]
    pub fn cmdline_size(&self) -> u32 {
        self.hdr.cmdline_size.get()
    }

    /// Boot protocol version, e.g. 0x020f.
    #[must_use]
    pub fn version(&self) -> u16 {
        self.hdr.version.get()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bootparams::XLF_CAN_BE_LOADED_ABOVE_4G;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A minimal bzImage: 1 + `sects` setup sectors and `kernel` bytes of payload, with the
    /// header values of Linux 7.3's x86_64 build.
    pub(crate) fn image(sects: u8, kernel: usize) -> Vec<u8> {
        let mut f = vec![0u8; (usize::from(sects) + 1) * 512 + kernel];
        for (i, b) in f[(usize::from(sects) + 1) * 512..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f[0x1f1] = sects;
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x200] = 0xeb;
        f[0x201] = 0x6a; // header ends at 0x26c
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        f[0x211] = LOADED_HIGH;
        f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        f[0x234] = 1;
        f[0x235] = 21;
        f[0x236..0x238].copy_from_slice(&(XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G).to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&0x200_0000u32.to_le_bytes());
        f
    }

    #[test]
    fn parses_a_linux_like_header() {
        let f = image(30, 5000);
        let b = BzImage::parse(&f).unwrap();
        assert_eq!(b.setup_bytes(), 31 * 512);
        assert_eq!(b.kernel().len(), 5000);
        assert_eq!(b.kernel()[1], 1);
        assert_eq!(b.header_bytes().len(), 0x26c - 0x1f1);
        assert_eq!(b.init_size(), 0x200_0000);
        assert_eq!(b.alignment(), 0x20_0000);
        assert_eq!(b.pref_address(), 0x100_0000);
        assert!(b.relocatable() && b.above_4g());
        assert_eq!(b.cmdline_size(), 2047);
        assert_eq!(b.version(), 0x020f);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let f = image(0, 1000);
        let b = BzImage::parse(&f[..]).unwrap_err();
        // 1 + 0 sectors of file, but the header says 4 + 1: the payload is inside setup code.
        assert!(matches!(b, BootError::TooShort { what: "setup code and kernel", need: 2561, .. }), "{b}");
        let mut f = image(4, 100);
        f[0x1f1] = 0;
        assert_eq!(BzImage::parse(&f).unwrap().setup_bytes(), 2560);
    }

    fn field_error(f: &[u8]) -> (&'static str, u64) {
        match BzImage::parse(f) {
            Err(BootError::BadField { field, found, .. }) => (field, found),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn hostile_headers_are_refused_by_field() {
        let good = image(4, 4096);
        let mut f = good.clone();
        f[0x1fe] = 0;
        assert_eq!(field_error(&f), ("boot_flag", 0xaa00));
        let mut f = good.clone();
        f[0x202] = b'X';
        assert_eq!(field_error(&f).0, "header");
        let mut f = good.clone();
        f[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
        assert_eq!(field_error(&f), ("version", 0x020b));
        let mut f = good.clone();
        f[0x211] = 0;
        assert_eq!(field_error(&f), ("loadflags", 0));
        let mut f = good.clone();
        f[0x236] = XLF_CAN_BE_LOADED_ABOVE_4G as u8;
        assert_eq!(field_error(&f), ("xloadflags", 2));
        let mut f = good.clone();
        f[0x201] = 0xff;
        assert_eq!(field_error(&f), ("setup header end", 0x301));
        let mut f = good.clone();
        f[0x201] = 0x10;
        assert_eq!(field_error(&f), ("setup header end", 0x212));
        let mut f = good.clone();
        f[0x230..0x234].copy_from_slice(&0x30_0000u32.to_le_bytes());
        assert_eq!(field_error(&f), ("kernel_alignment", 0x30_0000));
        let mut f = good.clone();
        f[0x230..0x234].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(field_error(&f), ("kernel_alignment", 0));
        let mut f = good.clone();
        f[0x260..0x264].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(field_error(&f), ("init_size", 100));
        let mut f = good.clone();
        f[0x234] = 0;
        f[0x258..0x260].copy_from_slice(&0x100_1000u64.to_le_bytes());
        assert_eq!(field_error(&f), ("pref_address", 0x100_1000));
    }

    #[test]
    fn short_files_are_refused_without_panicking() {
        for len in [0, 1, 511, 1023] {
            let e = BzImage::parse(&vec![0xffu8; len]).unwrap_err();
            assert_eq!(e, BootError::TooShort { what: "boot sector and setup header", len, need: 1024 });
        }
        // Every truncation of a valid image: an error or a shorter kernel, never a panic.
        let good = image(2, 64);
        for len in 0..good.len() {
            match BzImage::parse(&good[..len]) {
                Ok(b) => assert!(len > 1536 && b.kernel().len() == len - 1536, "truncated to {len}"),
                Err(_) => assert!(len <= 1536, "truncated to {len}"),
            }
        }
        // Random garbage with a valid-looking magic at every possible header byte value.
        let mut f = good.clone();
        for v in 0..=255u8 {
            f[0x1f1] = v;
            f[0x201] = v;
            let _ = BzImage::parse(&f);
        }
    }

    #[test]
    fn random_mutations_never_panic_and_accepted_images_are_consistent() {
        let good = image(8, 20_000);
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            let mut f = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = 0x1f0 + (x as usize % 0x80);
                f[at] = (x >> 32) as u8;
            }
            let len = f.len() - (x >> 48) as usize % 64;
            if let Ok(b) = BzImage::parse(&f[..len]) {
                assert_eq!(b.setup_bytes() + b.kernel().len(), len);
                assert!(b.alignment().is_power_of_two() && b.alignment() >= 4096);
                assert!(b.init_size() >= b.kernel().len() as u64);
                assert!(b.header_bytes().len() <= 0x290 - 0x1f1);
            }
        }
    }
}
