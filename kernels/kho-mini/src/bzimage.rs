//! The bzImage container (Linux `Documentation/arch/x86/boot.rst`): a boot sector and setup
//! code (`setup_sects + 1` sectors of 512 bytes, holding the setup header at 0x1f1), then
//! the protected-mode kernel, whose 64-bit entry is at offset 0x200.
//!
//! The mini kernel reads the next Linux's header to place it, and is itself packed in the
//! same container ([`wrap`]), so any loader that can start a 64-bit bzImage (kexec's
//! trampoline: `rsi` = boot_params, jump to load address + 0x200) can start it.

use alloc::vec::Vec;

use crate::bootparams::{
    BOOT_FLAG, HDRS, HEADER_JUMP, HEADER_MAGIC, INIT_SIZE, KERNEL_ALIGNMENT, LOADED_HIGH, LOADFLAGS, PREF_ADDRESS,
    RELOCATABLE_KERNEL, SETUP_HEADER, VERSION, XLF_5LEVEL, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64, XLOADFLAGS, le16,
    le32, le64, put16, put32, put64,
};
use crate::error::{Result, bad};

/// Offset of the 64-bit entry point in the protected-mode part.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// Oldest boot protocol with `xloadflags` (2.12).
pub const MIN_VERSION: u16 = 0x020c;
/// Boot protocol version the mini kernel's own header claims (2.15, as Linux 7.3's).
pub const WRAP_VERSION: u16 = 0x020f;
/// `code32_start` (u32).
const CODE32_START: usize = 0x214;
/// `initrd_addr_max` (u32).
const INITRD_ADDR_MAX: usize = 0x22c;
/// `min_alignment` (u8, log2).
const MIN_ALIGNMENT: usize = 0x235;
/// `cmdline_size` (u32).
const CMDLINE_SIZE: usize = 0x238;
/// Setup header end for protocol 2.15 (`kernel_info_offset` is its last field).
const HEADER_END_2_15: usize = 0x26c;

/// Bytes of a bzImage's head that [`BzImage::parse`] may need: the largest setup part
/// (`setup_sects` = 255) is 128 KiB.
pub const MAX_SETUP_BYTES: usize = 256 * 512;

/// A parsed bzImage header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImage {
    /// Bytes of the boot sector and setup code (the setup header is at 0x1f1 of them).
    pub setup_len: usize,
    /// Bytes of the protected-mode kernel that follows, loaded as is.
    pub kernel_len: u64,
    /// Boot protocol version.
    pub version: u16,
    /// Bytes the kernel needs from its load address while it starts (decompression).
    pub init_size: u64,
    /// Load address alignment for a relocatable kernel.
    pub alignment: u64,
    /// Whether it may be loaded anywhere (aligned); otherwise at `pref_address`.
    pub relocatable: bool,
    /// Preferred load address.
    pub pref_address: u64,
    /// `xloadflags`.
    pub xloadflags: u16,
}

impl BzImage {
    /// Parses and checks the header of a bzImage of `total` bytes whose first bytes are
    /// `image` (at least the setup header): boot flag, "HdrS", protocol 2.12 or later, a
    /// 64-bit entry, a power-of-two alignment, and a protected-mode part inside the file.
    ///
    /// # Errors
    /// [`crate::MiniError::BadValue`] naming the header field.
    pub fn parse(image: &[u8], total: u64) -> Result<Self> {
        if image.len() < HEADER_END_2_15 || total < image.len() as u64 {
            return Err(bad("bzImage", 0, total, "a file longer than its setup header"));
        }
        let flag = le16(image, BOOT_FLAG);
        if flag != 0xaa55 {
            return Err(bad("bzImage hdr.boot_flag", BOOT_FLAG as u64, flag.into(), "0xaa55"));
        }
        let magic = le32(image, HEADER_MAGIC);
        if magic != HDRS {
            return Err(bad("bzImage hdr.header", HEADER_MAGIC as u64, magic.into(), "\"HdrS\""));
        }
        let version = le16(image, VERSION);
        if version < MIN_VERSION {
            return Err(bad("bzImage hdr.version", VERSION as u64, version.into(), "boot protocol 2.12 or later"));
        }
        let xloadflags = le16(image, XLOADFLAGS);
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(bad("bzImage hdr.xloadflags", XLOADFLAGS as u64, xloadflags.into(), "XLF_KERNEL_64 set"));
        }
        let sects = match image[SETUP_HEADER] {
            0 => 4,
            n => usize::from(n),
        };
        let pm = (sects + 1) * 512;
        if pm as u64 >= total {
            return Err(bad("bzImage hdr.setup_sects", SETUP_HEADER as u64, sects as u64, "setup inside the file"));
        }
        let alignment = u64::from(le32(image, KERNEL_ALIGNMENT));
        if !alignment.is_power_of_two() {
            return Err(bad("bzImage hdr.kernel_alignment", KERNEL_ALIGNMENT as u64, alignment, "a power of two"));
        }
        let kernel_len = total - pm as u64;
        let init_size = u64::from(le32(image, INIT_SIZE)).max(kernel_len);
        Ok(Self {
            setup_len: pm,
            kernel_len,
            version,
            init_size,
            alignment,
            relocatable: image[RELOCATABLE_KERNEL] != 0,
            pref_address: le64(image, PREF_ADDRESS),
            xloadflags,
        })
    }
}

/// Packs a flat 64-bit kernel image (entry at offset 0x200, position independent) as a
/// bzImage: one boot sector holding the setup header and one setup sector (empty: there is
/// no real-mode entry), then the image. `init_size` is the memory the kernel needs from
/// its load address (the whole image: it carries its stack and page tables).
#[must_use]
pub fn wrap(flat: &[u8], init_size: u32) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut out = alloc::vec![0u8; (usize::from(setup_sects) + 1) * 512];
    out[SETUP_HEADER] = setup_sects;
    put16(&mut out, BOOT_FLAG, 0xaa55);
    out[0x200] = 0xeb; // jmp short: the header's length is in the next byte
    out[HEADER_JUMP] = (HEADER_END_2_15 - HEADER_MAGIC) as u8;
    put32(&mut out, HEADER_MAGIC, HDRS);
    put16(&mut out, VERSION, WRAP_VERSION);
    out[LOADFLAGS] = LOADED_HIGH;
    put32(&mut out, CODE32_START, 0x10_0000);
    put32(&mut out, INITRD_ADDR_MAX, 0x7fff_ffff);
    put32(&mut out, KERNEL_ALIGNMENT, 0x20_0000);
    out[RELOCATABLE_KERNEL] = 1;
    out[MIN_ALIGNMENT] = 12;
    put16(&mut out, XLOADFLAGS, XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G | XLF_5LEVEL);
    put32(&mut out, CMDLINE_SIZE, 4095);
    put64(&mut out, PREF_ADDRESS, 0x100_0000);
    put32(&mut out, INIT_SIZE, init_size);
    out.extend_from_slice(flat);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MiniError;

    #[test]
    fn wrapped_image_parses_back() {
        let flat: Vec<u8> = (0..0x3000u32).map(|i| i as u8).collect();
        let img = wrap(&flat, 0x8_0000);
        assert_eq!(img.len(), 1024 + 0x3000);
        let bz = BzImage::parse(&img, img.len() as u64).unwrap();
        assert_eq!(&img[bz.setup_len..], &flat[..]);
        assert_eq!(bz.kernel_len, 0x3000);
        assert_eq!(bz.setup_len, 1024);
        assert_eq!(bz.version, 0x020f);
        assert_eq!(bz.init_size, 0x8_0000);
        assert_eq!(bz.alignment, 0x20_0000);
        assert!(bz.relocatable);
        assert_eq!(bz.xloadflags, 0x23);
        // The header ends where hdr[0x201] says.
        assert_eq!(0x202 + usize::from(img[0x201]), 0x26c);
    }

    #[test]
    fn init_size_is_at_least_the_file() {
        let img = wrap(&[0u8; 0x5000], 0x1000);
        assert_eq!(BzImage::parse(&img, img.len() as u64).unwrap().init_size, 0x5000);
    }

    #[test]
    fn header_checks_name_the_field() {
        let mut img = wrap(&[0u8; 0x1000], 0x1000);
        img[0x236] = 0; // no 64-bit entry
        let e = BzImage::parse(&img, img.len() as u64).unwrap_err();
        assert!(matches!(e, MiniError::BadValue { what: "bzImage hdr.xloadflags", found: 0, .. }), "{e}");
        let mut img = wrap(&[0u8; 0x1000], 0x1000);
        put16(&mut img, VERSION, 0x020b);
        let e = BzImage::parse(&img, img.len() as u64).unwrap_err();
        assert!(matches!(e, MiniError::BadValue { what: "bzImage hdr.version", found: 0x20b, .. }), "{e}");
        let mut img = wrap(&[0u8; 0x1000], 0x1000);
        img[0x1fe] = 0;
        assert!(matches!(
            BzImage::parse(&img, img.len() as u64),
            Err(MiniError::BadValue { what: "bzImage hdr.boot_flag", .. })
        ));
        let mut img = wrap(&[0u8; 0x1000], 0x1000);
        img[SETUP_HEADER] = 100;
        assert!(matches!(
            BzImage::parse(&img, img.len() as u64),
            Err(MiniError::BadValue { what: "bzImage hdr.setup_sects", .. })
        ));
        assert!(BzImage::parse(&img[..0x100], 0x100).is_err());
    }
}
