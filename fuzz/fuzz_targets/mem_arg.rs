//! kho-cli's text parsers: `--mem FILE@BASE` (`MemSpec::from_str`), numbers with K/M/G/T
//! suffixes (`parse_number`) and `/proc/iomem` (`devmem::parse_iomem`), compiled here by
//! path. Invariants: no panic, every error displays, a parsed number prints and parses back,
//! and `/proc/iomem` RAM comes out sorted and disjoint.
#![no_main]

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../crates/kho-cli/src/memsrc/mod.rs"]
mod memsrc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match memsrc::parse_number(&text, "value") {
        Ok(v) => assert_eq!(memsrc::parse_number(&format!("{v:#x}"), "value"), Ok(v)),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match text.parse::<memsrc::MemSpec>() {
        Ok(spec) => assert!(!spec.path.as_os_str().is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match memsrc::devmem::parse_iomem(&text) {
        Ok(ranges) => {
            assert!(!ranges.is_empty());
            for w in ranges.windows(2) {
                assert!(w[0].end() < w[1].start(), "iomem ranges not sorted, disjoint and coalesced: {w:?}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
