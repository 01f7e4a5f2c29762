//! The `kho kexec` loader's inputs: an arbitrary file as a bzImage (`BzImage::parse`), an
//! arbitrary zero page (`BootParams::from_bytes`), and for what parses, a segment plan over the
//! zero page's e820 RAM with fuzzed scratch areas, and the boot segment built from it.
//! Invariants: no panic; an accepted image's parts add up; a plan obeys every rule
//! (`plan::check`: page aligned, in RAM, disjoint, handover outside scratch); the boot segment's
//! zero page reads back with the command line, initrd and setup_data where they were put.
#![no_main]

use kho_boot::bootparams::BootParams;
use kho_boot::bzimage::BzImage;
use kho_boot::plan::{self, Placement, Request};
use kho_boot::{BootSegmentLayout, boot_segment};
use kho_core::PhysAddr;
use kho_core::format::handover_ptr::HandoverPtr;
use kho_core::types::PhysRange;
use kho_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let split = usize::from(c.u16());
    let zero_page = c.bytes(4096);
    let rest = c.rest();
    let (image, extra) = rest.split_at(split.min(rest.len()));
    let Ok(fw) = BootParams::from_bytes(zero_page) else { return };
    let ram = fw.ram_ranges();
    assert!(ram.windows(2).all(|w| w[0].end() <= w[1].start()));
    let Ok(bz) = BzImage::parse(image) else { return };
    assert_eq!(bz.setup_bytes() + bz.kernel().len(), image.len());
    let mut e = Cursor::new(extra);
    let scratch: Vec<PhysRange> = ram
        .iter()
        .filter_map(|r| {
            let off = (e.u64() % r.len().max(1)) & !0xfff;
            let len = (e.u32() as u64 & !0xfff).max(0x1000);
            PhysRange::new(r.start().checked_add(off)?, len).filter(|s| r.contains_range(*s))
        })
        .collect();
    let cmdline = "console=ttyS0 kho=on";
    let reqs = [
        Request {
            what: "handover",
            size: u64::from(e.u32()),
            align: 1 << (e.u8() % 24),
            min: 0,
            limit: u64::MAX,
            placement: Placement::OutsideScratch,
        },
        Request {
            what: "kernel",
            size: bz.init_size(),
            align: bz.alignment(),
            min: bz.pref_address(),
            limit: u64::MAX,
            placement: Placement::PreferScratch,
        },
        Request {
            what: "boot",
            size: BootSegmentLayout::new(cmdline.len()).size as u64,
            align: 4096,
            min: 0,
            limit: u64::MAX,
            placement: Placement::PreferScratch,
        },
    ];
    let Ok(placed) = plan::place(&ram, &scratch, &reqs) else { return };
    plan::check(&placed, &ram, &scratch, &["handover"]).expect("a plan place() made obeys check()");
    let ptr = HandoverPtr {
        fdt: placed[0].range.start(),
        fdt_size: 4096,
        scratch: placed[0].range.start(),
        scratch_size: 48,
    };
    let boot_at = placed[2].range.start();
    match boot_segment(
        boot_at,
        &fw,
        &bz,
        placed[1].range.start(),
        cmdline,
        Some((PhysAddr::new(0x100_0000), 7)),
        Some(&ptr),
    ) {
        Ok(seg) => {
            let bp = BootParams::from_bytes(&seg.bytes[..4096]).expect("our zero page reads back");
            assert_eq!(bp.cmd_line_addr(), boot_at.as_u64() + 4096);
            assert_eq!(bp.initrd(), (0x100_0000, 7));
            assert_eq!(bp.e820(), fw.e820());
            assert_eq!(bp.hdr.type_of_loader, 0xff);
            assert!(bp.hdr.setup_data.get() > boot_at.as_u64());
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
