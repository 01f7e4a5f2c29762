//! The `kho_scratch[]` array: `scratch::decode` over arbitrary RAM pages.
//!
//! Input: `flags: u8` (bit 1: `array` is an offset into the image), `array: u64`,
//! `size: u64`, `max areas: u16` (0 = 4096), then the RAM image. Invariants: no panic, every
//! error displays; decoded areas are page aligned, inside RAM, sorted and disjoint, one per
//! 16 bytes.
#![no_main]

use kho_core::format::scratch;
use kho_core::{PAGE_SIZE, PhysAddr};
use kho_fuzz::{Cursor, IMAGE_MAX_PAGES, RAM_BASE, image_mem, ram, show};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let mut array = c.u64();
    let size = c.u64();
    let max = match c.u16() {
        0 => 4096,
        n => u64::from(n),
    };
    if flags & 2 != 0 {
        array = RAM_BASE + array % (IMAGE_MAX_PAGES as u64 * PAGE_SIZE);
    }
    let mem = image_mem(c.rest());
    let ram = ram();
    match scratch::decode(&mem, &ram, PhysAddr::new(array), size, max) {
        Ok(areas) => {
            assert_eq!(areas.len() as u64, size / scratch::ENTRY_BYTES);
            assert!(areas.len() as u64 <= max);
            for a in &areas {
                assert!(a.start().is_page_aligned() && a.end().is_page_aligned());
                assert!(ram.iter().any(|r| r.contains_range(*a)));
            }
            for w in areas.windows(2) {
                assert!(w[0].end() <= w[1].start(), "unsorted or overlapping areas {w:?}");
            }
            assert_eq!(scratch::encode(&areas).len() as u64, size);
        }
        Err(e) => {
            show(&e);
        }
    }
});
