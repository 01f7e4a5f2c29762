//! The checks every entry point shares (issue 10, class 4): `incoming::check_handover_ptr`
//! on an arbitrary `kho_data` payload, `incoming::check_scratch` on arbitrary scratch lists,
//! and `incoming::read_root_fdt` over a RAM image.
//!
//! Input: 32 bytes of `kho_data`, `n: u8` scratch areas of 16 bytes (start, length), then the
//! RAM image. Invariants: no panic, every error displays; an accepted pointer has an FDT size
//! between 40 bytes and the blob limit and both ranges below 2^52; accepted scratch comes back
//! sorted and pairwise disjoint; a root FDT read from memory is no longer than `fdt_size`.
#![no_main]

use kho_core::incoming::{IncomingConfig, check_handover_ptr, check_scratch, read_root_fdt};
use kho_core::{HandoverPtr, Limits, PhysAddr, PhysRange};
use kho_fuzz::{Cursor, image_mem, ram, show};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 52;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let ptr = HandoverPtr {
        fdt: PhysAddr::new(c.u64()),
        fdt_size: c.u64(),
        scratch: PhysAddr::new(c.u64()),
        scratch_size: c.u64(),
    };
    let limits = Limits::default();
    match check_handover_ptr(&ptr, &limits) {
        Ok(()) => {
            assert!(ptr.fdt_size >= 40 && ptr.fdt_size <= limits.max_blob_bytes);
            assert!(ptr.fdt.as_u64().checked_add(ptr.fdt_size).is_some_and(|e| e <= LIMIT));
            assert!(ptr.scratch.as_u64() < LIMIT);
        }
        Err(e) => {
            show(&e);
        }
    }
    let n = usize::from(c.u8() % 32);
    let areas: Vec<PhysRange> = (0..n).filter_map(|_| PhysRange::new(PhysAddr::new(c.u64()), c.u64())).collect();
    match check_scratch(&areas) {
        Ok(sorted) => {
            assert_eq!(sorted.len(), areas.len());
            for w in sorted.windows(2) {
                assert!(w[0].end() <= w[1].start(), "scratch not sorted and disjoint: {w:?}");
            }
        }
        Err(e) => {
            show(&e);
        }
    }
    let mem = image_mem(c.rest());
    match read_root_fdt(&mem, &ptr, &IncomingConfig::new(ram())) {
        Ok(fdt) => assert!(fdt.len() as u64 <= ptr.fdt_size),
        Err(e) => {
            show(&e);
        }
    }
});
