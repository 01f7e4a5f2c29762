//! A whole incoming handover: a small RAM image, a `struct kho_data` pointer (FDT + scratch
//! array) and a configuration, through `Handover::parse`, then reserve, a few restores and
//! release.
//!
//! Input: the 32-byte `kho_data` payload (absolute addresses), `config: u8` (bit 0: 4096-byte
//! kho-v1 bitmaps; bit 1: reject oversized blocks; bits 2-5: maximum order), two restore
//! targets `(page offset: u16, pages: u16)`, then the RAM image.
//! Invariants: no panic; every error displays; on success every reserved range lies inside
//! RAM and outside scratch, scratch lies inside RAM, every sub-blob lies inside a reserved
//! range, counters agree, and restores never hand out a block twice.
#![no_main]

use kho_core::format::BitmapBytes;
use kho_core::format::handover_ptr::HandoverPtr;
use kho_core::testing::RecordingMap;
use kho_core::{Handover, IncomingConfig, Order, OversizedPolicy, PAGE_SIZE, PhysAddr, PhysRange};
use kho_fuzz::{Cursor, RAM_BASE, RAM_PAGES, assert_ranges_ok, image_mem, ram, show};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mut payload = [0u8; 32];
    for b in &mut payload {
        *b = c.u8();
    }
    let ptr = HandoverPtr::from_setup_data_payload(&payload, PhysAddr::new(0x9_0000)).expect("32 bytes");
    let config = c.u8();
    let restores = [(c.u16(), c.u16()), (c.u16(), c.u16())];
    let mem = image_mem(c.rest());
    let ram = ram();
    let mut cfg = IncomingConfig::new(ram.clone());
    if config & 1 != 0 {
        cfg.v1_bitmap_bytes = BitmapBytes::B4096;
    }
    if config & 2 != 0 {
        cfg.oversized = OversizedPolicy::Reject;
    }
    cfg.max_order = Order::new(u32::from((config >> 2) & 0xf)).expect("small order");
    let mut h = match Handover::parse(&mem, &ptr, &cfg) {
        Ok(h) => h,
        Err(e) => {
            show(&e);
            return;
        }
    };
    assert_ranges_ok(h.reserved_ranges(), &ram, h.scratch(), "reserved range");
    assert_ranges_ok(h.scratch(), &ram, &[], "scratch area");
    for s in h.subtrees() {
        let r = PhysRange::new(s.phys, s.size.expect("resolved")).expect("checked");
        assert!(h.reserved_ranges().iter().any(|x| x.contains_range(r)), "sub-blob {} not preserved", s.name);
    }
    assert_eq!(h.preserved().len(), h.preserved_blocks());
    let covered: u64 = h.reserved_ranges().iter().map(|r| r.len()).sum();
    assert_eq!(covered, h.preserved_bytes(), "ranges and blocks disagree");

    let mut map = RecordingMap { ram: ram.clone(), ..RecordingMap::default() };
    h.reserve(&mut map);
    let before = h.preserved().len();
    let mut restored = 0u64;
    for (i, &(off, pages)) in restores.iter().enumerate() {
        let phys = PhysAddr::new(RAM_BASE + (u64::from(off) % RAM_PAGES) * PAGE_SIZE);
        if i == 0 {
            match h.restore_folio(&mut map, phys) {
                Ok(b) => {
                    assert_eq!(b.phys(), phys);
                    assert!(b.order() <= cfg.max_order);
                    restored += 1;
                    assert!(h.restore_folio(&mut map, phys).is_err(), "restored twice");
                }
                Err(e) => {
                    show(&e);
                }
            }
        } else {
            match h.restore_pages(&mut map, phys, u64::from(pages % 1024) + 1) {
                Ok(blocks) => restored += blocks.len() as u64,
                Err(e) => {
                    show(&e);
                }
            }
        }
    }
    assert_eq!(h.preserved().len() + restored, before);
    let released = h.release_unclaimed(&mut map);
    assert_eq!(released + restored, before);
});
