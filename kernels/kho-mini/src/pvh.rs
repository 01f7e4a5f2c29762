//! QEMU's PVH boot (the Xen `hvm_start_info` handed over in `ebx`), turned into the
//! boot_params the rest of the kernel reads. It lets the mini kernel be started directly by
//! QEMU (`-kernel kho-mini.elf -initrd payload`) with no Linux before it: a cold boot.
//!
//! `struct hvm_start_info` (Xen `arch-x86/hvm/start_info.h`): magic u32 0x336ec578 @0,
//! version u32 @4, flags @8, nr_modules u32 @12, modlist_paddr u64 @16, cmdline_paddr u64
//! @24, rsdp_paddr u64 @32, memmap_paddr u64 @40 and memmap_entries u32 @48 (version 1).
//! Memory map entries are 24 bytes {addr, size, type u32, reserved}; module entries 32 bytes
//! {paddr, size, cmdline_paddr, reserved}.

use alloc::boxed::Box;

use kho_core::{PhysAddr, PhysRead};

use crate::bootparams::{
    BOOT_PARAMS_BYTES, CMD_LINE_PTR, E820_ENTRIES, E820_MAX, E820_TABLE, EXT_CMD_LINE_PTR, EXT_RAMDISK_IMAGE,
    EXT_RAMDISK_SIZE, HDRS, HEADER_MAGIC, RAMDISK_IMAGE, RAMDISK_SIZE, le32, le64, put32, put64,
};
use crate::error::{MiniError, Result, bad};

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;
/// `boot_params.acpi_rsdp_addr` (u64).
pub const ACPI_RSDP_ADDR: usize = 0x070;

/// Builds boot_params from the start info at `at`: e820 from the memory map, command line,
/// the first module as initrd, the ACPI RSDP.
///
/// # Errors
/// [`MiniError::BadValue`] for a wrong magic, version 0 (no memory map) or more than 128
/// memory map entries; [`MiniError::Unreadable`].
pub fn boot_params_from_start_info<M: PhysRead + ?Sized>(
    mem: &M,
    at: PhysAddr,
) -> Result<Box<[u8; BOOT_PARAMS_BYTES]>> {
    let rd = |p: u64, buf: &mut [u8]| {
        mem.read_phys(PhysAddr::new(p), buf).map_err(|err| MiniError::Unreadable { what: "hvm_start_info", err })
    };
    let mut si = [0u8; 56];
    rd(at.as_u64(), &mut si)?;
    let a = at.as_u64();
    if le32(&si, 0) != MAGIC {
        return Err(bad("hvm_start_info.magic", a, le32(&si, 0).into(), "0x336ec578"));
    }
    if le32(&si, 4) < 1 {
        return Err(bad("hvm_start_info.version", a + 4, le32(&si, 4).into(), "version 1 (with a memory map)"));
    }
    let n = le32(&si, 48) as usize;
    if n > E820_MAX {
        return Err(bad("hvm_start_info.memmap_entries", a + 48, n as u64, "at most 128 entries"));
    }
    let mut bp = Box::new([0u8; BOOT_PARAMS_BYTES]);
    put32(&mut bp[..], HEADER_MAGIC, HDRS);
    let map = le64(&si, 40);
    for i in 0..n {
        let mut e = [0u8; 24];
        rd(map + i as u64 * 24, &mut e)?;
        let off = E820_TABLE + i * 20;
        bp[off..off + 20].copy_from_slice(&e[..20]);
    }
    bp[E820_ENTRIES] = n as u8;
    let cmd = le64(&si, 24);
    put32(&mut bp[..], CMD_LINE_PTR, cmd as u32);
    put32(&mut bp[..], EXT_CMD_LINE_PTR, (cmd >> 32) as u32);
    if le32(&si, 12) > 0 {
        let mut m = [0u8; 32];
        rd(le64(&si, 16), &mut m)?;
        let (p, s) = (le64(&m, 0), le64(&m, 8));
        put32(&mut bp[..], RAMDISK_IMAGE, p as u32);
        put32(&mut bp[..], EXT_RAMDISK_IMAGE, (p >> 32) as u32);
        put32(&mut bp[..], RAMDISK_SIZE, s as u32);
        put32(&mut bp[..], EXT_RAMDISK_SIZE, (s >> 32) as u32);
    }
    put64(&mut bp[..], ACPI_RSDP_ADDR, le64(&si, 32));
    Ok(bp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootparams::BootInfo;
    use crate::testmem::TestMem;

    #[test]
    fn start_info_becomes_boot_params() {
        let mem = TestMem::new(&[(0, 1 << 20)]);
        let mut si = [0u8; 56];
        si[..4].copy_from_slice(&MAGIC.to_le_bytes());
        si[4..8].copy_from_slice(&1u32.to_le_bytes());
        si[12..16].copy_from_slice(&1u32.to_le_bytes());
        si[16..24].copy_from_slice(&0x6100u64.to_le_bytes());
        si[24..32].copy_from_slice(&0x6200u64.to_le_bytes());
        si[32..40].copy_from_slice(&0xf_5a40u64.to_le_bytes());
        si[40..48].copy_from_slice(&0x6300u64.to_le_bytes());
        si[48..52].copy_from_slice(&2u32.to_le_bytes());
        mem.write(0x6000, &si);
        let mut m = [0u8; 32];
        m[..8].copy_from_slice(&0x3f00_0000u64.to_le_bytes());
        m[8..16].copy_from_slice(&0x12345u64.to_le_bytes());
        mem.write(0x6100, &m);
        for (i, (a, s, t)) in [(0u64, 0x9fc00u64, 1u32), (0x10_0000, 0x3ff0_0000, 1)].into_iter().enumerate() {
            let mut e = [0u8; 24];
            e[..8].copy_from_slice(&a.to_le_bytes());
            e[8..16].copy_from_slice(&s.to_le_bytes());
            e[16..20].copy_from_slice(&t.to_le_bytes());
            mem.write(0x6300 + i as u64 * 24, &e);
        }
        let bp = boot_params_from_start_info(&mem, PhysAddr::new(0x6000)).unwrap();
        let info = BootInfo::parse(&bp, PhysAddr::new(0)).unwrap();
        assert_eq!(info.e820.len(), 2);
        assert_eq!(info.e820[1].size, 0x3ff0_0000);
        assert_eq!(info.cmdline, PhysAddr::new(0x6200));
        assert_eq!(info.initrd.map(|r| (r.start().as_u64(), r.len())), Some((0x3f00_0000, 0x12345)));
        assert_eq!(le64(&bp[..], ACPI_RSDP_ADDR), 0xf_5a40);
        mem.write(0x6000, &[0u8; 4]);
        let e = boot_params_from_start_info(&mem, PhysAddr::new(0x6000)).unwrap_err();
        assert!(matches!(e, MiniError::BadValue { what: "hvm_start_info.magic", found: 0, .. }), "{e}");
    }
}
