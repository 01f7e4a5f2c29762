//! x86 `struct boot_params` (the "zero page", Linux `Documentation/arch/x86/zero-page.rst`
//! and `boot.rst`) as the mini kernel receives it in `rsi`: decoded defensively (magic,
//! entry count, bounded `setup_data` walk). The next Linux's zero page is built by
//! `kho-boot`, the user-space loader's crate. Only the fields this kernel reads or writes
//! are named; every offset is a fact of the boot protocol.

use alloc::vec::Vec;

use kho_core::format::handover_ptr::{HandoverPtr, SETUP_KEXEC_KHO};
use kho_core::{PAGE_SIZE, PhysAddr, PhysRange, PhysRead};

use crate::error::{MiniError, Result, bad};

/// Bytes of `struct boot_params`.
pub const BOOT_PARAMS_BYTES: usize = 4096;
/// `ext_ramdisk_image` (u32, high half of the initrd address).
pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
/// `ext_ramdisk_size` (u32).
pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
/// `ext_cmd_line_ptr` (u32).
pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `e820_entries` (u8).
pub const E820_ENTRIES: usize = 0x1e8;
/// `sentinel` (u8): a loader that leaves it non-zero makes Linux clear fields it may not
/// have set.
pub const SENTINEL: usize = 0x1ef;
/// Start of `struct setup_header` (`setup_sects`).
pub const SETUP_HEADER: usize = 0x1f1;
/// `boot_flag` (u16, 0xAA55).
pub const BOOT_FLAG: usize = 0x1fe;
/// The byte that gives the setup header's length: it ends at `0x202 + hdr[0x201]`.
pub const HEADER_JUMP: usize = 0x201;
/// `header` magic "HdrS".
pub const HEADER_MAGIC: usize = 0x202;
/// `version` (u16).
pub const VERSION: usize = 0x206;
/// `type_of_loader` (u8).
pub const TYPE_OF_LOADER: usize = 0x210;
/// `loadflags` (u8).
pub const LOADFLAGS: usize = 0x211;
/// `ramdisk_image` (u32).
pub const RAMDISK_IMAGE: usize = 0x218;
/// `ramdisk_size` (u32).
pub const RAMDISK_SIZE: usize = 0x21c;
/// `cmd_line_ptr` (u32).
pub const CMD_LINE_PTR: usize = 0x228;
/// `kernel_alignment` (u32).
pub const KERNEL_ALIGNMENT: usize = 0x230;
/// `relocatable_kernel` (u8).
pub const RELOCATABLE_KERNEL: usize = 0x234;
/// `xloadflags` (u16).
pub const XLOADFLAGS: usize = 0x236;
/// `cmdline_size` (u32).
pub const CMDLINE_SIZE: usize = 0x238;
/// `setup_data` (u64): head of the `struct setup_data` list.
pub const SETUP_DATA: usize = 0x250;
/// `pref_address` (u64).
pub const PREF_ADDRESS: usize = 0x258;
/// `init_size` (u32).
pub const INIT_SIZE: usize = 0x260;
/// `e820_table[128]`, 20 bytes per entry.
pub const E820_TABLE: usize = 0x2d0;
/// Entries `e820_table` holds.
pub const E820_MAX: usize = 128;
/// `"HdrS"` as a little-endian u32.
pub const HDRS: u32 = 0x5372_6448;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit: the kernel and boot structures may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `xloadflags` bit: the kernel can be entered with 5-level paging on.
pub const XLF_5LEVEL: u16 = 1 << 5;
/// `loadflags` bit: the protected-mode code is loaded at 0x100000 or above.
pub const LOADED_HIGH: u8 = 1 << 0;
/// Most `setup_data` nodes followed before giving up.
pub const MAX_SETUP_DATA: usize = 64;
/// Bytes of a `struct setup_data` header (`next`, `type`, `len`).
pub const SETUP_DATA_HEADER: u64 = 16;

#[cfg(test)]
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from(le32(b, off)) | (u64::from(le32(b, off + 4)) << 32)
}
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// One `struct boot_e820_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
    /// Type (1 = RAM).
    pub kind: u32,
}

/// One `struct setup_data` node of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupData {
    /// Address of the node (its header).
    pub addr: PhysAddr,
    /// `type`.
    pub kind: u32,
    /// `len`: payload bytes after the 16-byte header.
    pub len: u32,
}

impl SetupData {
    /// The bytes the node occupies, header included.
    #[must_use]
    pub fn range(&self) -> Option<PhysRange> {
        PhysRange::new(self.addr, SETUP_DATA_HEADER + u64::from(self.len))
    }
}

/// What the mini kernel needs from the boot_params it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The e820 table, as given.
    pub e820: Vec<E820Entry>,
    /// `setup_data` head (0 = none).
    pub setup_data: PhysAddr,
    /// Command line address (0 = none).
    pub cmdline: PhysAddr,
    /// The initrd, if any.
    pub initrd: Option<PhysRange>,
}

impl BootInfo {
    /// Decodes the zero page found at `at`.
    ///
    /// # Errors
    /// [`MiniError::BadValue`] for a missing "HdrS" magic, an `e820_entries` above 128, or an
    /// initrd range that wraps.
    pub fn parse(bp: &[u8; BOOT_PARAMS_BYTES], at: PhysAddr) -> Result<Self> {
        let field = |off: usize| at.as_u64() + off as u64;
        let magic = le32(bp, HEADER_MAGIC);
        if magic != HDRS {
            return Err(bad("boot_params.hdr.header", field(HEADER_MAGIC), magic.into(), "\"HdrS\" (0x53726448)"));
        }
        let n = bp[E820_ENTRIES] as usize;
        if n > E820_MAX {
            return Err(bad("boot_params.e820_entries", field(E820_ENTRIES), n as u64, "at most 128 entries"));
        }
        let e820 = (0..n)
            .map(|i| {
                let off = E820_TABLE + i * 20;
                E820Entry { addr: le64(bp, off), size: le64(bp, off + 8), kind: le32(bp, off + 16) }
            })
            .collect();
        let cmdline = PhysAddr::new(u64::from(le32(bp, CMD_LINE_PTR)) | (u64::from(le32(bp, EXT_CMD_LINE_PTR)) << 32));
        let rd_addr = u64::from(le32(bp, RAMDISK_IMAGE)) | (u64::from(le32(bp, EXT_RAMDISK_IMAGE)) << 32);
        let rd_size = u64::from(le32(bp, RAMDISK_SIZE)) | (u64::from(le32(bp, EXT_RAMDISK_SIZE)) << 32);
        let initrd = if rd_addr == 0 || rd_size == 0 {
            None
        } else {
            Some(PhysRange::new(PhysAddr::new(rd_addr), rd_size).ok_or_else(|| {
                bad(
                    "boot_params.hdr.ramdisk_image",
                    field(RAMDISK_IMAGE),
                    rd_addr,
                    "an initrd range that does not wrap",
                )
            })?)
        };
        Ok(Self { e820, setup_data: PhysAddr::new(le64(bp, SETUP_DATA)), cmdline, initrd })
    }

    /// Usable RAM: e820 type-1 entries shrunk to whole pages, sorted and merged.
    #[must_use]
    pub fn ram(&self) -> Vec<PhysRange> {
        let mut v: Vec<PhysRange> = self
            .e820
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .filter_map(|e| {
                let start = e.addr.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
                let end = e.addr.checked_add(e.size)? & !(PAGE_SIZE - 1);
                (end > start).then(|| PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end)))?
            })
            .collect();
        v.sort_unstable();
        kho_core::types::merge_ranges(v)
    }
}

/// Walks the `setup_data` chain from `first`: at most [`MAX_SETUP_DATA`] nodes, no node
/// visited twice, every header readable.
///
/// # Errors
/// [`MiniError::Unreadable`] for a node memory does not back, [`MiniError::BadValue`] for a
/// cycle or a chain longer than the bound.
pub fn walk_setup_data<M: PhysRead + ?Sized>(mem: &M, first: PhysAddr) -> Result<Vec<SetupData>> {
    let mut out: Vec<SetupData> = Vec::new();
    let mut next = first;
    let mut from = 0u64;
    while !next.is_null() {
        if out.iter().any(|s| s.addr == next) {
            return Err(bad("setup_data.next", from, next.as_u64(), "a node not already in the chain"));
        }
        if out.len() >= MAX_SETUP_DATA {
            return Err(bad("setup_data.next", from, out.len() as u64, "a chain of at most 64 nodes"));
        }
        let mut hdr = [0u8; SETUP_DATA_HEADER as usize];
        mem.read_phys(next, &mut hdr).map_err(|err| MiniError::Unreadable { what: "setup_data", err })?;
        out.push(SetupData { addr: next, kind: le32(&hdr, 8), len: le32(&hdr, 12) });
        from = next.as_u64();
        next = PhysAddr::new(le64(&hdr, 0));
    }
    Ok(out)
}

/// The `SETUP_KEXEC_KHO` node of the chain, decoded, if there is one.
///
/// # Errors
/// [`MiniError::Unreadable`] if its payload is not backed; the engine's error for a node
/// whose `len` is below 32.
pub fn find_kho<M: PhysRead + ?Sized>(mem: &M, chain: &[SetupData]) -> Result<Option<HandoverPtr>> {
    let Some(node) = chain.iter().find(|s| s.kind == SETUP_KEXEC_KHO) else { return Ok(None) };
    let mut buf = [0u8; SETUP_DATA_HEADER as usize + kho_core::format::handover_ptr::KHO_DATA_BYTES];
    let len = (SETUP_DATA_HEADER as usize + node.len as usize).min(buf.len());
    mem.read_phys(node.addr, &mut buf[..len]).map_err(|err| MiniError::Unreadable { what: "setup_data", err })?;
    let (ptr, _) = HandoverPtr::from_setup_data_node(&buf[..len], node.addr)?;
    Ok(Some(ptr))
}

/// Reads the NUL-terminated command line at `at` (at most `max` bytes).
///
/// # Errors
/// [`MiniError::Unreadable`].
pub fn read_cmdline<M: PhysRead + ?Sized>(mem: &M, at: PhysAddr, max: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if at.is_null() {
        return Ok(out);
    }
    let mut b = [0u8; 1];
    for i in 0..max as u64 {
        let p = PhysAddr::new(at.as_u64() + i);
        mem.read_phys(p, &mut b).map_err(|err| MiniError::Unreadable { what: "cmd_line_ptr", err })?;
        if b[0] == 0 {
            break;
        }
        out.push(b[0]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::TestMem;

    fn zero_page() -> [u8; BOOT_PARAMS_BYTES] {
        let mut bp = [0u8; BOOT_PARAMS_BYTES];
        put32(&mut bp, HEADER_MAGIC, HDRS);
        bp
    }

    fn e820(bp: &mut [u8; BOOT_PARAMS_BYTES], entries: &[(u64, u64, u32)]) {
        bp[E820_ENTRIES] = entries.len() as u8;
        for (i, &(a, s, t)) in entries.iter().enumerate() {
            let off = E820_TABLE + i * 20;
            put64(bp, off, a);
            put64(bp, off + 8, s);
            put32(bp, off + 16, t);
        }
    }

    #[test]
    fn e820_ram_is_page_aligned_sorted_and_merged() {
        let mut bp = zero_page();
        // As QEMU's SeaBIOS reports 1 GiB: low RAM, reserved EBDA/BIOS, high RAM, plus a
        // second RAM entry adjacent to the first high one, out of order.
        e820(
            &mut bp,
            &[
                (0x0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0xf0000, 0x10000, 2),
                (0x2000_0000, 0x1ffe_0000, 1),
                (0x10_0000, 0x1ff0_0000, 1),
                (0xfffc_0000, 0x4_0000, 2),
            ],
        );
        let info = BootInfo::parse(&bp, PhysAddr::new(0x1000)).unwrap();
        assert_eq!(info.e820.len(), 6);
        let ram: Vec<(u64, u64)> = info.ram().iter().map(|r| (r.start().as_u64(), r.end().as_u64())).collect();
        assert_eq!(ram, vec![(0, 0x9f000), (0x10_0000, 0x3ffe_0000)]);
    }

    #[test]
    fn bad_magic_and_entry_count_are_named() {
        let mut bp = [0u8; BOOT_PARAMS_BYTES];
        let e = BootInfo::parse(&bp, PhysAddr::new(0x7000)).unwrap_err();
        assert_eq!(e, bad("boot_params.hdr.header", 0x7202, 0, "\"HdrS\" (0x53726448)"));
        put32(&mut bp, HEADER_MAGIC, HDRS);
        bp[E820_ENTRIES] = 129;
        let e = BootInfo::parse(&bp, PhysAddr::new(0x7000)).unwrap_err();
        assert!(matches!(e, MiniError::BadValue { what: "boot_params.e820_entries", found: 129, .. }), "{e}");
    }

    #[test]
    fn initrd_and_cmdline_use_the_ext_fields() {
        let mut bp = zero_page();
        put32(&mut bp, RAMDISK_IMAGE, 0x3000_0000);
        put32(&mut bp, EXT_RAMDISK_IMAGE, 1);
        put32(&mut bp, RAMDISK_SIZE, 0x20_0000);
        put32(&mut bp, CMD_LINE_PTR, 0x2_0000);
        let info = BootInfo::parse(&bp, PhysAddr::new(0)).unwrap();
        assert_eq!(info.initrd, PhysRange::new(PhysAddr::new(0x1_3000_0000), 0x20_0000));
        assert_eq!(info.cmdline, PhysAddr::new(0x2_0000));
    }

    #[test]
    fn setup_data_chain_finds_kho_and_refuses_cycles() {
        let mem = TestMem::new(&[(0, 1 << 20)]);
        let ptr = HandoverPtr {
            fdt: PhysAddr::new(0x5000),
            fdt_size: 4096,
            scratch: PhysAddr::new(0x6000),
            scratch_size: 48,
        };
        // RNG seed node (type 9) -> KHO node -> end.
        let mut rng = Vec::new();
        rng.extend_from_slice(&0x3000u64.to_le_bytes());
        rng.extend_from_slice(&9u32.to_le_bytes());
        rng.extend_from_slice(&8u32.to_le_bytes());
        rng.extend_from_slice(&[0xaa; 8]);
        mem.write(0x2000, &rng);
        mem.write(0x3000, &ptr.to_setup_data_node(PhysAddr::new(0)));
        let chain = walk_setup_data(&mem, PhysAddr::new(0x2000)).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], SetupData { addr: PhysAddr::new(0x2000), kind: 9, len: 8 });
        assert_eq!(chain[1].kind, SETUP_KEXEC_KHO);
        assert_eq!(find_kho(&mem, &chain).unwrap(), Some(ptr));
        assert_eq!(find_kho(&mem, &chain[..1]).unwrap(), None);
        // Point the KHO node back at the first: a cycle.
        mem.write(0x3000, &0x2000u64.to_le_bytes());
        let e = walk_setup_data(&mem, PhysAddr::new(0x2000)).unwrap_err();
        assert_eq!(e, bad("setup_data.next", 0x3000, 0x2000, "a node not already in the chain"));
        // A node outside memory.
        let e = walk_setup_data(&mem, PhysAddr::new(0x10_0000)).unwrap_err();
        assert!(matches!(e, MiniError::Unreadable { what: "setup_data", .. }), "{e}");
    }
}
