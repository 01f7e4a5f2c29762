//! kho-v1 chunk list: `v1::decode` over arbitrary RAM pages from an arbitrary pointer, with
//! both bitmap sizes.
//!
//! Input: `flags: u8` (bit 1: `first` is an offset into the image instead of an address),
//! `first: u64`, scratch `(page offset: u32, pages: u32)`, `page limit: u16` (0 = default),
//! then the RAM image. Invariants: no panic; every error displays; on success the walk read
//! no more pages than its budget and only pages inside RAM and outside scratch, and the set
//! it produced is consistent.
#![no_main]

use kho_core::format::{BitmapBytes, Limits, WalkContext, v1};
use kho_core::{BlockSet, PAGE_SIZE, PhysAddr};
use kho_fuzz::{Cursor, IMAGE_MAX_PAGES, RAM_BASE, assert_ranges_ok, image_mem, ram, scratch_from, show};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let mut first = c.u64();
    let scratch: Vec<_> = scratch_from(c.u32(), c.u32()).into_iter().collect();
    let limit = c.u16();
    if flags & 2 != 0 {
        first = RAM_BASE + first % (IMAGE_MAX_PAGES as u64 * PAGE_SIZE);
    }
    let mem = image_mem(c.rest());
    let ram = ram();
    let mut limits = Limits::default();
    if limit != 0 {
        limits.max_metadata_pages = u64::from(limit);
    }
    for bitmap in [BitmapBytes::B512, BitmapBytes::B4096] {
        let mut ctx = WalkContext::new(&mem, &ram, &scratch, limits);
        let mut set = BlockSet::new();
        match v1::decode(&mut ctx, PhysAddr::new(first), PhysAddr::new(0x18_2000), bitmap, &mut set) {
            Ok(()) => {
                assert!(ctx.metadata_pages.len() as u64 <= limits.max_metadata_pages);
                let pages: Vec<_> =
                    ctx.metadata_pages.iter().map(|&p| kho_fuzz::range(p.as_u64(), PAGE_SIZE)).collect();
                assert_ranges_ok(&pages, &ram, &scratch, "metadata page");
                assert_eq!(set.iter().count() as u64, set.len());
                if let Err(e) = set.coalesced_ranges() {
                    show(&e);
                }
            }
            Err(e) => {
                show(&e);
            }
        }
    }
});
