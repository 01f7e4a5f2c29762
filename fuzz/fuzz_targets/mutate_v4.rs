//! Structure-aware kho-v4: build a valid handover with `Kho` from a few preserve ops decoded
//! from the input, finalize as kho-v4, apply input-chosen byte
//! and word mutations to the FDT and metadata pages, then parse. See
//! `kho_fuzz::run_mutate` for the input layout and the invariants.
#![no_main]

use kho_core::format::FormatVersion;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kho_fuzz::run_mutate(data, FormatVersion::V4);
});
