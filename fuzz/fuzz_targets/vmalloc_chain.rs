//! vmalloc chunk chains: `KhoVmalloc::from_bytes`, `vmalloc::decode_chain`,
//! `vmalloc::read_area` and `test_kho::decode_folios` over arbitrary RAM pages.
//!
//! Input: `flags: u8` (bit 1: `first` is an offset into the image), the 16-byte
//! `struct kho_vmalloc`, scratch `(page offset: u32, pages: u32)`, `nr_folios: u32`, then the
//! RAM image. Invariants: no panic; every error displays; a decoded area lists exactly
//! `total_pages` pages in distinct, aligned pieces inside RAM and outside scratch; decoded
//! folios are inside RAM and outside scratch.
#![no_main]

use kho_core::format::test_kho::{self, TestKho};
use kho_core::format::vmalloc::{self, KhoVmalloc};
use kho_core::format::{Limits, WalkContext};
use kho_core::{Order, PAGE_SIZE, PhysAddr};
use kho_fuzz::{Cursor, IMAGE_MAX_PAGES, RAM_BASE, assert_ranges_ok, image_mem, ram, scratch_from, show};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&c.bytes(16).iter().copied().chain(core::iter::repeat(0)).take(16).collect::<Vec<_>>());
    let scratch: Vec<_> = scratch_from(c.u32(), c.u32()).into_iter().collect();
    let nr_folios = c.u32();
    let mem = image_mem(c.rest());
    let ram = ram();
    let at = PhysAddr::new(0x29_2000);
    let mut desc = match KhoVmalloc::from_bytes(&raw, at) {
        Ok(d) => d,
        Err(e) => {
            show(&e);
            return;
        }
    };
    if flags & 2 != 0 {
        desc.first = PhysAddr::new(RAM_BASE + desc.first.as_u64() % (IMAGE_MAX_PAGES as u64 * PAGE_SIZE));
    }
    let mut ctx = WalkContext::new(&mem, &ram, &scratch, Limits::default());
    match vmalloc::decode_chain(&mut ctx, &desc, at) {
        Ok(area) => {
            let order = Order::new(u32::from(desc.order)).expect("decode_chain checked the order");
            assert_eq!(area.pieces.len() as u64 * order.nr_pages(), u64::from(desc.total_pages));
            let blocks = area.blocks(order);
            assert_eq!(blocks.len(), area.pieces.len(), "every piece is an aligned block");
            let ranges: Vec<_> = blocks.iter().map(|b| b.range()).collect();
            assert_ranges_ok(&ranges, &ram, &scratch, "vmalloc piece");
            let mut sorted = area.pieces.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), area.pieces.len(), "duplicate piece accepted");
            let want = (u64::from(desc.total_pages) * PAGE_SIZE).min(64 << 10);
            let mut buf = vec![0u8; usize::try_from(want).expect("small")];
            if let Err(e) = vmalloc::read_area(&mem, &area, order, at, &mut buf) {
                show(&e);
            }
        }
        Err(e) => {
            show(&e);
        }
    }
    let t = TestKho { nr_folios: nr_folios % (1 << 16), folios_info: desc, csum: 0 };
    let mut ctx = WalkContext::new(&mem, &ram, &scratch, Limits::default());
    match test_kho::decode_folios(&mut ctx, &t, at) {
        Ok(folios) => {
            assert_eq!(folios.len() as u64, u64::from(t.nr_folios));
            let ranges: Vec<_> = folios.iter().map(|b| b.range()).collect();
            assert_ranges_ok(&ranges, &ram, &scratch, "test_kho folio");
        }
        Err(e) => {
            show(&e);
        }
    }
});
