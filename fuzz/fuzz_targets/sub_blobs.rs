//! Sub-blob decoders on raw bytes: `memblock::parse`, `kexec_metadata::parse`,
//! `test_kho::parse` and `vmalloc::KhoVmalloc::from_bytes`. Invariants: no panic, every
//! error displays, and whatever parses survives a round trip through its encoder.
#![no_main]

use kho_core::PhysAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kho_fuzz::sub_blob_parsers(data, PhysAddr::new(0x29_2000));
});
