//! The x86-64 boot protocol for a Kexec HandOver loader, `no_std` + `alloc`.
//!
//! Linux's kexec tools cannot hand preserved memory to the next kernel from user space: only
//! `kexec_file_load` attaches the running kernel's own KHO state. This crate has what a loader
//! needs to do it with `kexec_load` (or a bare-metal kernel to do it itself):
//!
//! - [`bootparams`]: the 4096-byte zero page and the setup header as little-endian types,
//!   and [`bootparams::build`], which fills the next kernel's zero page;
//! - [`bzimage`]: parsing and checking a 64-bit bzImage;
//! - [`trampoline`]: 32 bytes of code that set `rsi` and jump to the 64-bit entry;
//! - [`plan`]: where each segment goes (handover outside scratch, at most 16 segments);
//! - [`handover`]: a `test_kho`-compatible handover written with `kho-core`, and the same
//!   module's restore path run on our own incoming side;
//! - [`boot_segment`]: zero page, command line, the `SETUP_KEXEC_KHO` setup_data node and the
//!   trampoline, laid out in one segment.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bootparams;
pub mod bzimage;
pub mod error;
pub mod handover;
pub mod plan;
pub mod trampoline;

use alloc::vec::Vec;

use kho_core::format::handover_ptr::{HandoverPtr, KHO_DATA_BYTES};
use kho_core::types::{PAGE_SIZE, PhysAddr};
use zerocopy::IntoBytes;

use bootparams::{BOOT_PARAMS_BYTES, BootLayout, BootParams};
use bzimage::{BzImage, ENTRY_64_OFFSET};
pub use error::BootError;

/// Bytes of a setup_data node header (`next`, `type`, `len`).
pub const SETUP_DATA_HEADER_BYTES: usize = 16;
/// Offset of the command line in the boot segment.
pub const CMDLINE_OFFSET: usize = BOOT_PARAMS_BYTES;

fn align16(v: usize) -> usize {
    v.div_ceil(16) * 16
}

/// Offsets inside the boot segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSegmentLayout {
    /// The setup_data node.
    pub setup_data: usize,
    /// The trampoline.
    pub trampoline: usize,
    /// Total bytes (whole pages; the last page is the trampoline's stack).
    pub size: usize,
}

impl BootSegmentLayout {
    /// Layout for a command line of `cmdline_len` bytes (without NUL): zero page, command line,
    /// setup_data node, trampoline, and one page of stack.
    #[must_use]
    pub fn new(cmdline_len: usize) -> Self {
        let setup_data = align16(CMDLINE_OFFSET + cmdline_len + 1);
        let trampoline = align16(setup_data + SETUP_DATA_HEADER_BYTES + KHO_DATA_BYTES);
        let code_end = trampoline + trampoline::CODE_BYTES;
        let size = code_end.div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize + PAGE_SIZE as usize;
        Self { setup_data, trampoline, size }
    }
}

/// The boot segment and the entry point for `kexec_load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSegment {
    /// Bytes to load at `base`.
    pub bytes: Vec<u8>,
    /// The entry point: the trampoline.
    pub entry: PhysAddr,
    /// The zero page as built.
    pub params: BootParams,
}

/// Checks a command line against the kernel's limit.
///
/// # Errors
/// [`BootError::CmdlineNul`], [`BootError::CmdlineTooLong`].
pub fn check_cmdline(kernel: &BzImage<'_>, cmdline: &str) -> Result<(), BootError> {
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootError::CmdlineNul { at });
    }
    let max = kernel.cmdline_size() as usize + 1;
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong { len: cmdline.len() + 1, max });
    }
    Ok(())
}

/// Builds the boot segment that will be loaded at `base`: the next kernel's zero page (see
/// [`bootparams::build`]), the command line, a `SETUP_KEXEC_KHO` node for `handover` (the
/// only setup_data entry; none if `handover` is `None`) and the trampoline that enters the
/// kernel loaded at `kernel_load` with `rsi` = the zero page.
///
/// # Errors
/// As [`check_cmdline`].
pub fn boot_segment(
    base: PhysAddr,
    firmware: &BootParams,
    kernel: &BzImage<'_>,
    kernel_load: PhysAddr,
    cmdline: &str,
    initrd: Option<(PhysAddr, u64)>,
    handover: Option<&HandoverPtr>,
) -> Result<BootSegment, BootError> {
    check_cmdline(kernel, cmdline)?;
    let lay = BootSegmentLayout::new(cmdline.len());
    let at = |off: usize| PhysAddr::new(base.as_u64() + off as u64);
    let mut bytes = alloc::vec![0u8; lay.size];
    bytes[CMDLINE_OFFSET..CMDLINE_OFFSET + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    let setup_data = match handover {
        Some(ptr) => {
            let node = ptr.to_setup_data_node(PhysAddr::new(0));
            bytes[lay.setup_data..lay.setup_data + node.len()].copy_from_slice(&node);
            at(lay.setup_data)
        }
        None => PhysAddr::new(0),
    };
    let layout = BootLayout { cmdline: at(CMDLINE_OFFSET), initrd, setup_data };
    let params = bootparams::build(firmware, kernel.header_bytes(), &layout);
    bytes[..BOOT_PARAMS_BYTES].copy_from_slice(params.as_bytes());
    let entry = kernel_load.as_u64() + ENTRY_64_OFFSET;
    let code = trampoline::build(base.as_u64(), base.as_u64() + lay.size as u64, entry);
    bytes[lay.trampoline..lay.trampoline + code.len()].copy_from_slice(&code);
    Ok(BootSegment { bytes, entry: at(lay.trampoline), params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_core::format::handover_ptr::SETUP_KEXEC_KHO;
    use trampoline::Insn;

    #[test]
    fn boot_segment_links_everything() {
        let f = bzimage::tests::image(30, 8192);
        let bz = BzImage::parse(&f).unwrap();
        let mut fw = BootParams::zeroed();
        fw.e820_entries = 1;
        fw.e820_table[0].addr.set(0x10_0000);
        fw.e820_table[0].size.set(0x3fe0_0000);
        fw.e820_table[0].kind.set(1);
        fw.hdr.setup_data.set(0xdead_0000);
        let ptr = HandoverPtr {
            fdt: PhysAddr::new(0x3ec0_0000),
            fdt_size: 4096,
            scratch: PhysAddr::new(0x3ec0_1000),
            scratch_size: 48,
        };
        let base = PhysAddr::new(0x3c00_0000);
        let seg = boot_segment(
            base,
            &fw,
            &bz,
            PhysAddr::new(0x3000_0000),
            "console=ttyS0 kho=on",
            Some((PhysAddr::new(0x3800_0000), 12345)),
            Some(&ptr),
        )
        .unwrap();
        let lay = BootSegmentLayout::new(20);
        assert_eq!(seg.bytes.len(), lay.size);
        assert_eq!(lay.size % 4096, 0);
        let bp = BootParams::from_bytes(&seg.bytes[..4096]).unwrap();
        assert_eq!(bp.cmd_line_addr(), base.as_u64() + 4096);
        assert_eq!(&seg.bytes[4096..4096 + 21], b"console=ttyS0 kho=on\0");
        assert_eq!(bp.initrd(), (0x3800_0000, 12345));
        // setup_data -> our node only: next 0, type 10, len 32, payload = the pointer.
        let sd = (bp.hdr.setup_data.get() - base.as_u64()) as usize;
        assert_eq!(sd, lay.setup_data);
        assert_eq!(u64::from_le_bytes(seg.bytes[sd..sd + 8].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(seg.bytes[sd + 8..sd + 12].try_into().unwrap()), SETUP_KEXEC_KHO);
        assert_eq!(u32::from_le_bytes(seg.bytes[sd + 12..sd + 16].try_into().unwrap()), 32);
        assert_eq!(&seg.bytes[sd + 16..sd + 48], &ptr.to_setup_data_payload());
        // Entry: the trampoline, which loads rsi = zero page and jumps to load + 0x200.
        let t = (seg.entry.as_u64() - base.as_u64()) as usize;
        let insns = trampoline::decode(&seg.bytes[t..t + trampoline::CODE_BYTES]).unwrap();
        assert_eq!(insns[0], Insn::MovImm64 { reg: "rsi", imm: base.as_u64() });
        assert_eq!(insns[1], Insn::MovImm64 { reg: "rsp", imm: base.as_u64() + lay.size as u64 });
        assert_eq!(insns[2], Insn::MovImm64 { reg: "rax", imm: 0x3000_0200 });
        assert!(t + 32 <= lay.size - 4096, "a whole page of stack above the code");
    }

    #[test]
    fn command_line_limits() {
        let f = bzimage::tests::image(4, 100);
        let bz = BzImage::parse(&f).unwrap();
        let long = "x".repeat(2048);
        assert_eq!(check_cmdline(&bz, &long), Err(BootError::CmdlineTooLong { len: 2049, max: 2048 }));
        assert!(check_cmdline(&bz, &long[..2047]).is_ok());
        assert_eq!(check_cmdline(&bz, "a\0b"), Err(BootError::CmdlineNul { at: 1 }));
    }
}
