//! The kho-mini kernel: the machine seam (entry, page tables, serial port, identity-mapped
//! memory, heap, jump to the next kernel) around the safe flow in the library.
//!
//! Entry points (image offsets; see `link.ld`):
//! - `0x000` `pvh_start32`: QEMU's PVH boot, 32-bit protected mode, paging off, `ebx` =
//!   `hvm_start_info`. Maps the first GiB, enters long mode, continues as below.
//! - `0x200` `_start`: 64-bit mode, `rsi` = boot_params (how kexec's trampoline starts a
//!   bzImage: identity map, flat GDT, interrupts off).
//!
//! Both then: load this kernel's GDT and exception IDT, apply the image's own relative
//! relocations, identity-map the first 64 GiB with 2 MiB pages (under a 5-level root when
//! CR4.LA57 is on), and call `kmain`.
//!
//! Every `unsafe` block is in this file and carries a `// SAFETY:` line.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("kho-mini is a kernel: build it with kernels/kho-mini/build.sh");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod kernel;
