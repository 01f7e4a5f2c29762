//! Replays every input the fuzzers (`fuzz/`, see `docs/fuzzing.md`) ever crashed on.
//!
//! Each file in `tests/fuzz_regressions/` is named `<decoder>__<ErrorVariant>__<what>.bin`:
//! the decoder it goes through and the `Error` variant it must be refused with. Refusal with
//! exactly that typed error is the test, not merely the absence of a panic. The input layouts
//! are the fuzz targets' own (documented in `fuzz/src/lib.rs` and each target):
//!
//! - `root_fdt`: raw bytes through `format::root::parse`.
//! - `fdt`: raw bytes through `fdt::FdtTree::parse`.
//! - `sub_blob_<memblock|kexec_metadata|test_kho|vmalloc>`: raw bytes through that parser.
//! - `setup_data`: raw bytes through `HandoverPtr::from_setup_data_node`.
//! - `chosen`: the `handover_ptr` target's hand-built `/chosen` layout (cell-count selectors,
//!   presence flags, two length-prefixed property values) through `HandoverPtr::from_chosen`.

use std::path::Path;

use kho_core::fdt::{FdtNode, FdtTree};
use kho_core::format::handover_ptr::{CHOSEN_FDT, CHOSEN_SCRATCH, HandoverPtr};
use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::format::test_kho::TestKho;
use kho_core::format::vmalloc::KhoVmalloc;
use kho_core::format::{Limits, memblock, root};
use kho_core::{DecodeError, DecodeErrorKind, Field, PhysAddr};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions");

/// Little-endian reader that yields zeros past the end (as the fuzz targets read headers).
struct Cursor<'a>(&'a [u8], usize);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> u8 {
        let b = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let s = self.1.min(self.0.len());
        let e = self.1.saturating_add(n).min(self.0.len());
        self.1 = self.1.saturating_add(n);
        &self.0[s..e]
    }
}

/// The `handover_ptr` target's `/chosen` input: selector bytes 0..=7 are the cell count
/// itself, anything else is followed by a raw u32 count.
fn chosen(data: &[u8]) -> Result<HandoverPtr, DecodeError> {
    let mut c = Cursor(data, 0);
    let cells = |c: &mut Cursor<'_>| match c.u8() {
        x @ 0..=7 => u32::from(x),
        _ => c.u32(),
    };
    let ac = cells(&mut c);
    let sc = cells(&mut c);
    let present = c.u8();
    let n1 = usize::from(c.u8() % 40);
    let v1 = c.bytes(n1).to_vec();
    let n2 = usize::from(c.u8() % 40);
    let v2 = c.bytes(n2).to_vec();
    let mut node = FdtNode::new("chosen");
    if present & 1 != 0 {
        node = node.prop(CHOSEN_FDT, &v1);
    }
    if present & 2 != 0 {
        node = node.prop(CHOSEN_SCRATCH, &v2);
    }
    HandoverPtr::from_chosen(&node, ac, sc)
}

/// Runs `data` through `decoder`; `Ok(())` if the decoder accepted it.
fn replay(decoder: &str, data: &[u8]) -> Result<(), DecodeError> {
    let at = PhysAddr::new(0x18_2000);
    match decoder {
        "root_fdt" => root::parse(data, at, &Limits::default()).map(drop),
        "fdt" => FdtTree::parse(data, Field::RootFdt, at).map(drop),
        "sub_blob_memblock" => memblock::parse(data, at).map(drop),
        "sub_blob_kexec_metadata" => KexecMetadata::parse(data, at).map(drop),
        "sub_blob_test_kho" => TestKho::parse(data, at).map(drop),
        "sub_blob_vmalloc" => KhoVmalloc::from_bytes(data, at).map(drop),
        "setup_data" => HandoverPtr::from_setup_data_node(data, at).map(drop),
        "chosen" => chosen(data).map(drop),
        other => panic!("unknown decoder {other:?} in a fuzz regression file name"),
    }
}

/// The variant name of an error's kind (`Debug` starts with it).
fn variant(e: &DecodeError) -> String {
    format!("{:?}", e.kind).split([' ', '(', '{']).next().unwrap_or_default().to_string()
}

#[test]
fn every_fuzz_regression_input_is_refused_with_its_typed_error() {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(DIR).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, "__");
        let (Some(decoder), Some(want), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("{name}: expected <decoder>__<ErrorVariant>__<what>.bin");
        };
        let data = std::fs::read(&path).unwrap();
        match replay(decoder, &data) {
            Ok(()) => panic!("{name}: accepted, expected Error::{want}"),
            Err(e) => {
                assert_eq!(variant(&e), want, "{name}: wrong error: {e}");
                assert!(!e.to_string().is_empty(), "{name}: empty message");
            }
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs found in {DIR}");
}

/// F1 (docs/fuzzing.md): an FDT node with two properties of the same name is malformed (the
/// DT spec forbids it); the parser must refuse it rather than let lookups pick one.
#[test]
fn duplicate_property_names_are_refused() {
    let data = std::fs::read(Path::new(DIR).join("root_fdt__BadFdt__duplicate-compatible.bin")).unwrap();
    let e = FdtTree::parse(&data, Field::RootFdt, PhysAddr::new(0)).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::BadFdt { .. }), "{e}");
}
