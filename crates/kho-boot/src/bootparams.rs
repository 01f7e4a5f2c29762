//! The x86 "zero page" (`struct boot_params`, 4096 bytes) and its setup header, as
//! little-endian types with the offsets of the Linux boot protocol
//! (Documentation/arch/x86/zero-page.rst and boot.rst; layout facts from the uapi header
//! `arch/x86/include/uapi/asm/bootparam.h`). Every field is byte-aligned, so the structs have
//! no padding of their own and the compile-time asserts pin each offset.

use alloc::vec::Vec;

use kho_core::types::{PAGE_SIZE, PhysAddr, PhysRange};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::BootError;

/// Size of `struct boot_params`.
pub const BOOT_PARAMS_BYTES: usize = 4096;
/// Offset of the setup header inside boot_params and inside a bzImage.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Most e820 entries the zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES: usize = 128;
/// e820 type of usable RAM.
pub const E820_TYPE_RAM: u32 = 1;
/// `type_of_loader` for a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// `loadflags` bit: the protected-mode code is loaded at 0x100000 (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit: the kernel, boot_params, command line and initrd may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// `struct setup_header` (boot protocol 2.15), at 0x1f1 of boot_params and of a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub root_flags: U16,
    pub syssize: U32,
    pub ram_size: U16,
    pub vid_mode: U16,
    pub root_dev: U16,
    /// 0xAA55.
    pub boot_flag: U16,
    /// A short jump whose second byte (0x201) says where the header ends.
    pub jump: U16,
    /// "HdrS".
    pub header: U32,
    pub version: U16,
    pub realmode_swtch: U32,
    pub start_sys_seg: U16,
    pub kernel_version: U16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub setup_move_size: U16,
    pub code32_start: U32,
    pub ramdisk_image: U32,
    pub ramdisk_size: U32,
    pub bootsect_kludge: U32,
    pub heap_end_ptr: U16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    pub cmd_line_ptr: U32,
    pub initrd_addr_max: U32,
    pub kernel_alignment: U32,
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: U16,
    pub cmdline_size: U32,
    pub hardware_subarch: U32,
    pub hardware_subarch_data: U64,
    pub payload_offset: U32,
    pub payload_length: U32,
    pub setup_data: U64,
    pub pref_address: U64,
    pub init_size: U32,
    pub handover_offset: U32,
    pub kernel_info_offset: U32,
}

/// Size of [`SetupHeader`].
pub const SETUP_HEADER_BYTES: usize = 0x7b;
const _: () = assert!(size_of::<SetupHeader>() == SETUP_HEADER_BYTES);
const _: () = assert!(core::mem::offset_of!(SetupHeader, boot_flag) == 0x1fe - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, header) == 0x202 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, type_of_loader) == 0x210 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, ramdisk_image) == 0x218 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, cmd_line_ptr) == 0x228 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, kernel_alignment) == 0x230 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, xloadflags) == 0x236 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, setup_data) == 0x250 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, pref_address) == 0x258 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, init_size) == 0x260 - SETUP_HEADER_OFFSET);

/// `struct boot_e820_entry` (20 bytes, packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct E820Entry {
    /// First byte.
    pub addr: U64,
    /// Length in bytes.
    pub size: U64,
    /// 1 = RAM, 2 = reserved, 3 = ACPI, ...
    pub kind: U32,
}
const _: () = assert!(size_of::<E820Entry>() == 20);

/// `struct boot_params`. Structures the loader copies whole or leaves zero are kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct BootParams {
    /// `struct screen_info`; `ext_mem_k` is its u16 at offset 2.
    pub screen_info: [u8; 0x40],
    pub apm_bios_info: [u8; 0x14],
    pub _pad2: [u8; 4],
    pub tboot_addr: U64,
    pub ist_info: [u8; 0x10],
    pub acpi_rsdp_addr: U64,
    pub _pad3: [u8; 8],
    pub hd0_info: [u8; 16],
    pub hd1_info: [u8; 16],
    pub sys_desc_table: [u8; 16],
    pub olpc_ofw_header: [u8; 16],
    pub ext_ramdisk_image: U32,
    pub ext_ramdisk_size: U32,
    pub ext_cmd_line_ptr: U32,
    pub _pad4: [u8; 112],
    pub cc_blob_address: U32,
    pub edid_info: [u8; 0x80],
    pub efi_info: [u8; 0x20],
    pub alt_mem_k: U32,
    pub scratch: U32,
    pub e820_entries: u8,
    pub eddbuf_entries: u8,
    pub edd_mbr_sig_buf_entries: u8,
    pub kbd_status: u8,
    pub secure_boot: u8,
    pub _pad5: [u8; 2],
    /// Non-zero tells the kernel a loader copied too much; a clean buffer has 0.
    pub sentinel: u8,
    pub _pad6: [u8; 1],
    pub hdr: SetupHeader,
    pub _pad7: [u8; 0x290 - SETUP_HEADER_OFFSET - SETUP_HEADER_BYTES],
    pub edd_mbr_sig_buffer: [U32; 16],
    pub e820_table: [E820Entry; E820_MAX_ENTRIES],
    pub _pad8: [u8; 48],
    /// `struct edd_info eddbuf[6]`.
    pub eddbuf: [u8; 0x1ec],
    pub _pad9: [u8; 276],
}
const _: () = assert!(size_of::<BootParams>() == BOOT_PARAMS_BYTES);
const _: () = assert!(core::mem::offset_of!(BootParams, acpi_rsdp_addr) == 0x070);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_ramdisk_image) == 0x0c0);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_cmd_line_ptr) == 0x0c8);
const _: () = assert!(core::mem::offset_of!(BootParams, cc_blob_address) == 0x13c);
const _: () = assert!(core::mem::offset_of!(BootParams, efi_info) == 0x1c0);
const _: () = assert!(core::mem::offset_of!(BootParams, alt_mem_k) == 0x1e0);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_entries) == 0x1e8);
const _: () = assert!(core::mem::offset_of!(BootParams, sentinel) == 0x1ef);
const _: () = assert!(core::mem::offset_of!(BootParams, hdr) == SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(BootParams, edd_mbr_sig_buffer) == 0x290);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_table) == 0x2d0);
const _: () = assert!(core::mem::offset_of!(BootParams, eddbuf) == 0xd00);

impl BootParams {
    /// An all-zero zero page.
    #[must_use]
    pub fn zeroed() -> Self {
        <Self as FromZeros>::new_zeroed()
    }

    /// Reads a zero page, such as `/sys/kernel/boot_params/data` (the one the firmware or
    /// boot loader gave the running kernel).
    ///
    /// # Errors
    /// [`BootError::BootParamsSize`] unless `bytes` is exactly 4096 bytes long;
    /// [`BootError::E820Entries`] if it claims more e820 entries than the table holds.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BootError> {
        let bp = Self::read_from_bytes(bytes)
            .map_err(|_| BootError::BootParamsSize { len: bytes.len(), expected: BOOT_PARAMS_BYTES })?;
        if usize::from(bp.e820_entries) > E820_MAX_ENTRIES {
            return Err(BootError::E820Entries { found: bp.e820_entries, max: E820_MAX_ENTRIES });
        }
        Ok(bp)
    }

    /// The e820 entries in use (at most 128).
    #[must_use]
    pub fn e820(&self) -> &[E820Entry] {
        &self.e820_table[..usize::from(self.e820_entries).min(E820_MAX_ENTRIES)]
    }

    /// Usable RAM (e820 type 1), shrunk to whole pages, sorted and merged.
    #[must_use]
    pub fn ram_ranges(&self) -> Vec<PhysRange> {
        ram_ranges(self.e820())
    }

    /// The `ext_mem_k` field of `screen_info` (KiB of memory above 1 MiB, capped at 64 MiB).
    #[must_use]
    pub fn ext_mem_k(&self) -> u16 {
        u16::from_le_bytes([self.screen_info[2], self.screen_info[3]])
    }

    fn set_ext_mem_k(&mut self, v: u16) {
        self.screen_info[2..4].copy_from_slice(&v.to_le_bytes());
    }

    /// The full command-line address (`ext_cmd_line_ptr:cmd_line_ptr`).
    #[must_use]
    pub fn cmd_line_addr(&self) -> u64 {
        (u64::from(self.ext_cmd_line_ptr.get()) << 32) | u64::from(self.hdr.cmd_line_ptr.get())
    }

    /// The full initrd address and size.
    #[must_use]
    pub fn initrd(&self) -> (u64, u64) {
        let addr = (u64::from(self.ext_ramdisk_image.get()) << 32) | u64::from(self.hdr.ramdisk_image.get());
        let size = (u64::from(self.ext_ramdisk_size.get()) << 32) | u64::from(self.hdr.ramdisk_size.get());
        (addr, size)
    }
}

/// Usable RAM from e820 entries: type 1 only, shrunk to whole pages, sorted and merged.
#[must_use]
pub fn ram_ranges(entries: &[E820Entry]) -> Vec<PhysRange> {
    let mut out: Vec<PhysRange> = Vec::new();
    for e in entries.iter().filter(|e| e.kind.get() == E820_TYPE_RAM) {
        let start = e.addr.get().div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let end = e.addr.get().saturating_add(e.size.get()) / PAGE_SIZE * PAGE_SIZE;
        if let Some(r) = PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)).filter(|r| !r.is_empty()) {
            out.push(r);
        }
    }
    kho_core::types::merge_ranges(out)
}

/// Where the pieces the next kernel needs were placed, for [`build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootLayout {
    /// Physical address of the NUL-terminated command line.
    pub cmdline: PhysAddr,
    /// The initrd, if any: address and size in bytes.
    pub initrd: Option<(PhysAddr, u64)>,
    /// Head of the setup_data chain (0 = none).
    pub setup_data: PhysAddr,
}

/// Builds the next kernel's zero page the way a boot loader does: a clean (zeroed) page,
/// the bzImage's own setup header (`header_bytes`, copied as found in the file, up to the
/// end its jump names), then from the running system's zero page `firmware`: screen_info,
/// the e820 table, the ACPI RSDP address, the hardware subarch and the EDD data. Memory sizes
/// (`ext_mem_k`, `alt_mem_k`) are derived from e820 as Linux's own loader does, the loader
/// type is 0xff, `loadflags` 0, and the command line, initrd and setup_data chain come from
/// `layout`. The firmware's setup_data chain, EFI data and sentinel are not carried over.
#[must_use]
pub fn build(firmware: &BootParams, header_bytes: &[u8], layout: &BootLayout) -> BootParams {
    let mut bp = BootParams::zeroed();
    {
        let raw = bp.as_mut_bytes();
        let n = header_bytes.len().min(SETUP_HEADER_BYTES);
        raw[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + n].copy_from_slice(&header_bytes[..n]);
    }
    bp.screen_info = firmware.screen_info;
    bp.acpi_rsdp_addr = firmware.acpi_rsdp_addr;
    bp.hdr.hardware_subarch = firmware.hdr.hardware_subarch;
    bp.hdr.hardware_subarch_data = firmware.hdr.hardware_subarch_data;
    let n = usize::from(firmware.e820_entries).min(E820_MAX_ENTRIES);
    bp.e820_entries = n as u8;
    bp.e820_table[..n].copy_from_slice(&firmware.e820_table[..n]);
    bp.eddbuf = firmware.eddbuf;
    bp.eddbuf_entries = firmware.eddbuf_entries;
    bp.edd_mbr_sig_buffer = firmware.edd_mbr_sig_buffer;
    bp.edd_mbr_sig_buf_entries = firmware.edd_mbr_sig_buf_entries;

    // Memory above 1 MiB, from the RAM entry that spans 1 MiB.
    let (mut ext, mut alt) = (0u16, 0u32);
    for e in bp.e820().iter().filter(|e| e.kind.get() == E820_TYPE_RAM) {
        let start = e.addr.get();
        let end = start.saturating_add(e.size.get()).saturating_sub(1);
        if start <= 0x10_0000 && end > 0x10_0000 {
            let mem_k = (end >> 10) - (0x10_0000 >> 10);
            ext = u16::try_from(mem_k.min(0xfc00)).unwrap_or(0xfc00);
            alt = u32::try_from(mem_k).unwrap_or(u32::MAX);
        }
    }
    bp.set_ext_mem_k(ext);
    bp.alt_mem_k = U32::new(alt);

    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.hdr.loadflags = 0;
    let cmd = layout.cmdline.as_u64();
    bp.hdr.cmd_line_ptr = U32::new(cmd as u32);
    bp.ext_cmd_line_ptr = U32::new((cmd >> 32) as u32);
    if let Some((addr, size)) = layout.initrd {
        bp.hdr.ramdisk_image = U32::new(addr.as_u64() as u32);
        bp.ext_ramdisk_image = U32::new((addr.as_u64() >> 32) as u32);
        bp.hdr.ramdisk_size = U32::new(size as u32);
        bp.ext_ramdisk_size = U32::new((size >> 32) as u32);
    }
    bp.hdr.setup_data = U64::new(layout.setup_data.as_u64());
    bp.sentinel = 0;
    bp
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    pub(crate) fn e820(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr: U64::new(addr), size: U64::new(size), kind: U32::new(kind) }
    }

    /// A zero page like QEMU's SeaBIOS boot with 1 GiB: low RAM, the BIOS hole, RAM to
    /// 1 GiB minus 128 KiB, and a reserved area at the top of 4 GiB.
    pub(crate) fn qemu_firmware() -> BootParams {
        let mut bp = BootParams::zeroed();
        let t = [
            e820(0, 0x9fc00, 1),
            e820(0x9fc00, 0x400, 2),
            e820(0xf0000, 0x10000, 2),
            e820(0x10_0000, 0x3fee_0000, 1),
            e820(0x3ffe_0000, 0x2_0000, 2),
            e820(0xfffc_0000, 0x4_0000, 2),
        ];
        bp.e820_table[..t.len()].copy_from_slice(&t);
        bp.e820_entries = t.len() as u8;
        bp.screen_info[0] = 7;
        bp.screen_info[0x0f] = 0x22;
        bp.acpi_rsdp_addr = U64::new(0xf_5a20);
        bp.sentinel = 0xff;
        bp.hdr.setup_data = U64::new(0x1234_5000);
        bp.hdr.hardware_subarch = U32::new(0);
        bp
    }

    #[test]
    fn layout_matches_the_boot_protocol() {
        let mut bp = BootParams::zeroed();
        bp.hdr.header = U32::new(u32::from_le_bytes(*b"HdrS"));
        bp.hdr.pref_address = U64::new(0x100_0000);
        bp.e820_table[1].kind = U32::new(0xa1b2_c3d4);
        bp.ext_cmd_line_ptr = U32::new(0x55);
        let raw = bp.as_bytes();
        assert_eq!(&raw[0x202..0x206], b"HdrS");
        assert_eq!(u64::from_le_bytes(raw[0x258..0x260].try_into().unwrap()), 0x100_0000);
        assert_eq!(u32::from_le_bytes(raw[0x2d0 + 20 + 16..0x2d0 + 40].try_into().unwrap()), 0xa1b2_c3d4);
        assert_eq!(raw[0xc8], 0x55);
    }

    #[test]
    fn from_bytes_checks_size_and_entries() {
        assert_eq!(BootParams::from_bytes(&[0u8; 4095]), Err(BootError::BootParamsSize { len: 4095, expected: 4096 }));
        let mut raw = vec![0u8; 4096];
        raw[0x1e8] = 129;
        assert_eq!(BootParams::from_bytes(&raw), Err(BootError::E820Entries { found: 129, max: 128 }));
        raw[0x1e8] = 0;
        assert_eq!(BootParams::from_bytes(&raw).unwrap().e820().len(), 0);
    }

    #[test]
    fn ram_is_type_1_page_aligned_and_merged() {
        let t = [e820(0x10_0000, 0x1000_0000, 1), e820(0x1010_0000, 0x800, 1), e820(0x2000_0100, 0x2000, 1)];
        let r = ram_ranges(&t);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!((r[0].start().as_u64(), r[0].end().as_u64()), (0x10_0000, 0x1010_0000));
        assert_eq!((r[1].start().as_u64(), r[1].end().as_u64()), (0x2000_1000, 0x2000_2000));
        assert_eq!(qemu_firmware().ram_ranges().len(), 2);
    }

    #[test]
    fn build_takes_header_from_image_and_system_data_from_firmware() {
        let fw = qemu_firmware();
        let mut hdr = BootParams::zeroed().hdr;
        hdr.header = U32::new(u32::from_le_bytes(*b"HdrS"));
        hdr.version = U16::new(0x020f);
        hdr.init_size = U32::new(0x200_0000);
        hdr.type_of_loader = 0;
        hdr.loadflags = LOADED_HIGH | 0x80;
        let layout = BootLayout {
            cmdline: PhysAddr::new(0x1_2000_1000),
            initrd: Some((PhysAddr::new(0x3000_0000), 0x1_0000_0123)),
            setup_data: PhysAddr::new(0x2000_2000),
        };
        let bp = build(&fw, hdr.as_bytes(), &layout);
        assert_eq!(bp.hdr.header.get(), u32::from_le_bytes(*b"HdrS"));
        assert_eq!(bp.hdr.version.get(), 0x020f);
        assert_eq!(bp.hdr.init_size.get(), 0x200_0000);
        assert_eq!(bp.hdr.type_of_loader, 0xff);
        assert_eq!(bp.hdr.loadflags, 0);
        assert_eq!(bp.cmd_line_addr(), 0x1_2000_1000);
        assert_eq!(bp.initrd(), (0x3000_0000, 0x1_0000_0123));
        assert_eq!(bp.hdr.setup_data.get(), 0x2000_2000, "firmware chain dropped");
        assert_eq!(bp.sentinel, 0);
        assert_eq!(bp.e820(), fw.e820());
        assert_eq!(bp.screen_info[0x0f], 0x22);
        assert_eq!(bp.acpi_rsdp_addr.get(), 0xf_5a20);
        // RAM from 1 MiB to 0x3ffe0000: (0x3ffdffff >> 10) - 1024 KiB.
        assert_eq!(bp.alt_mem_k.get(), (0x3ffd_ffff >> 10) - 1024);
        assert_eq!(bp.ext_mem_k(), 0xfc00);
    }
}
