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
    RELOCATABLE_KERNEL, SETUP_HEADER, VERSION, XLF_5LEVEL, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64, XLOADFLAGS,
    put16, put32, put64,
};

/// Offset of the 64-bit entry point in the protected-mode part.
pub const ENTRY_64_OFFSET: u64 = 0x200;
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
    use crate::bootparams::{le16, le32, le64};
    use kho_boot::bzimage::BzImage;

    #[test]
    fn wrapped_image_passes_the_loaders_checks() {
        let flat: Vec<u8> = (0..0x3000u32).map(|i| i as u8).collect();
        let img = wrap(&flat, 0x8_0000);
        assert_eq!(img.len(), 1024 + 0x3000);
        let bz = BzImage::parse(&img).unwrap();
        assert_eq!(bz.kernel(), &flat[..]);
        assert_eq!(bz.setup_bytes(), 1024);
        assert_eq!(bz.version(), 0x020f);
        assert_eq!(bz.init_size(), 0x8_0000);
        assert_eq!(bz.alignment(), 0x20_0000);
        assert!(bz.relocatable());
        assert!(bz.above_4g());
        assert_eq!(bz.hdr.xloadflags.get(), XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G | XLF_5LEVEL);
        assert_eq!(bz.header_bytes().len(), 0x26c - 0x1f1);
        assert_eq!(le32(&img, INIT_SIZE), 0x8_0000);
        assert_eq!(le16(&img, BOOT_FLAG), 0xaa55);
        assert_eq!(le64(&img, PREF_ADDRESS), 0x100_0000);
        assert_eq!(img[LOADFLAGS] & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(le32(&img, KERNEL_ALIGNMENT), 0x20_0000);
        assert_eq!(img[RELOCATABLE_KERNEL], 1);
        assert_eq!(le32(&img, HEADER_MAGIC), HDRS);
        assert_eq!(le16(&img, VERSION), WRAP_VERSION);
        assert_eq!(img[SETUP_HEADER], 1);
        assert_eq!(le16(&img, XLOADFLAGS) & XLF_KERNEL_64, XLF_KERNEL_64);
    }

    #[test]
    fn init_size_must_cover_the_image() {
        // init_size smaller than the image is refused by the loader's check (build.sh passes
        // the image size).
        assert!(BzImage::parse(&wrap(&[0u8; 0x5000], 0x1000)).is_err());
        assert!(BzImage::parse(&wrap(&[0u8; 0x5000], 0x5000)).is_ok());
    }
}
