//! The root KHO FDT from raw bytes: `fdt::FdtTree::parse` and `format::root::parse`.
//! Invariants: no panic; every error displays; a parsed tree (and a parsed root) survives a
//! round trip through its own serializer.
#![no_main]

use kho_core::fdt::FdtTree;
use kho_core::format::{Limits, root};
use kho_core::{Field, PhysAddr};
use kho_fuzz::show;
use libfuzzer_sys::fuzz_target;

/// True if some node has two properties of the same name. The FDT spec forbids it; the
/// parser keeps both (lookups see the first, as libfdt's do) but the writer keeps one, so
/// such trees cannot round-trip (finding F1 in docs/fuzzing.md).
fn has_duplicate_props(n: &kho_core::fdt::FdtNode) -> bool {
    n.props.iter().enumerate().any(|(i, (a, _))| n.props[..i].iter().any(|(b, _)| a == b))
        || n.children.iter().any(has_duplicate_props)
}

fuzz_target!(|data: &[u8]| {
    let at = PhysAddr::new(0x18_2000);
    match FdtTree::parse(data, Field::RootFdt, at) {
        Ok(tree) => {
            if let (false, Ok(dtb)) = (has_duplicate_props(&tree.root), tree.to_dtb()) {
                let again = FdtTree::parse(&dtb, Field::RootFdt, at).expect("a tree we serialized parses");
                assert_eq!(again, tree, "FDT round trip changed the tree");
            }
        }
        Err(e) => {
            show(&e);
        }
    }
    let limits = Limits::default();
    match root::parse(data, at, &limits) {
        Ok(r) => {
            assert!(r.subtrees.len() <= limits.max_subtrees);
            if let Ok(dtb) = root::build(r.version, r.memory_map, &r.subtrees) {
                let again = root::parse(&dtb, at, &limits).expect("a root we built parses");
                assert_eq!(again, r, "root FDT round trip changed the root");
            }
        }
        Err(e) => {
            show(&e);
        }
    }
});
