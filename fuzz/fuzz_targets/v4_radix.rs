//! kho-v4 radix tree: `v4::decode` over arbitrary RAM pages from an arbitrary root.
//!
//! Input: as `v1_chunks` (`flags`, `root: u64`, scratch, page limit, image). Invariants: no
//! panic; every error displays; on success only pages inside RAM and outside scratch were
//! read, within the budget, and every decoded block re-encodes to a key that decodes back.
#![no_main]

use kho_core::format::{Limits, WalkContext, v4};
use kho_core::{BlockSet, PAGE_SIZE, PhysAddr};
use kho_fuzz::{Cursor, IMAGE_MAX_PAGES, RAM_BASE, assert_ranges_ok, image_mem, ram, scratch_from, show};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let mut root = c.u64();
    let scratch: Vec<_> = scratch_from(c.u32(), c.u32()).into_iter().collect();
    let limit = c.u16();
    if flags & 2 != 0 {
        root = RAM_BASE + root % (IMAGE_MAX_PAGES as u64 * PAGE_SIZE);
    }
    let mem = image_mem(c.rest());
    let ram = ram();
    let mut limits = Limits::default();
    if limit != 0 {
        limits.max_metadata_pages = u64::from(limit);
    }
    let mut ctx = WalkContext::new(&mem, &ram, &scratch, limits);
    let mut set = BlockSet::new();
    match v4::decode(&mut ctx, PhysAddr::new(root), PhysAddr::new(0x18_2000), &mut set) {
        Ok(()) => {
            assert!(ctx.metadata_pages.len() as u64 <= limits.max_metadata_pages);
            let pages: Vec<_> = ctx.metadata_pages.iter().map(|&p| kho_fuzz::range(p.as_u64(), PAGE_SIZE)).collect();
            assert_ranges_ok(&pages, &ram, &scratch, "radix node");
            let mut n = 0u64;
            for b in set.iter().take(1 << 16) {
                let key = v4::encode_key(b);
                let (order, phys) = v4::decode_key(key).expect("encoded keys decode");
                assert_eq!((order, phys), (b.order().as_u32(), b.phys().as_u64()));
                n += 1;
            }
            assert!(n <= set.len());
            if let Err(e) = set.coalesced_ranges() {
                show(&e);
            }
        }
        Err(e) => {
            show(&e);
        }
    }
});
