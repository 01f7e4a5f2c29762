//! Where the handover is: `HandoverPtr::from_setup_data_payload`, `from_setup_data_node` and
//! `from_chosen` (with hand-built `/chosen` nodes and with `/chosen` found in an arbitrary FDT).
//! Invariants: no panic, every error displays, and what decodes re-encodes to the same bytes.
#![no_main]

use kho_core::fdt::{FdtNode, FdtTree};
use kho_core::format::handover_ptr::{CHOSEN_FDT, CHOSEN_SCRATCH, HandoverPtr, KHO_DATA_BYTES};
use kho_core::{Field, PhysAddr};
use kho_fuzz::{Cursor, show};
use libfuzzer_sys::fuzz_target;

fn cells(node: &FdtNode, name: &str, default: u32) -> u32 {
    node.get(name).and_then(|v| <[u8; 4]>::try_from(v).ok()).map_or(default, u32::from_be_bytes)
}

fn chosen(node: &FdtNode, ac: u32, sc: u32) {
    match HandoverPtr::from_chosen(node, ac, sc) {
        Ok(p) => {
            let [(n1, v1), (n2, v2)] = p.to_chosen(ac, sc);
            assert_eq!((n1, n2), (CHOSEN_FDT, CHOSEN_SCRATCH));
            assert_eq!(Some(v1.as_slice()), node.get(CHOSEN_FDT));
            assert_eq!(Some(v2.as_slice()), node.get(CHOSEN_SCRATCH));
        }
        Err(e) => {
            show(&e);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let at = PhysAddr::new(0x9_0000);
    match HandoverPtr::from_setup_data_payload(data, at) {
        Ok(p) => assert_eq!(&p.to_setup_data_payload()[..], &data[..KHO_DATA_BYTES]),
        Err(e) => {
            assert!(data.len() < KHO_DATA_BYTES);
            show(&e);
        }
    }
    match HandoverPtr::from_setup_data_node(data, at) {
        Ok((p, next)) => {
            let node = p.to_setup_data_node(next);
            assert_eq!(&node[..12], &data[..12]);
            assert_eq!(&node[16..], &data[16..16 + KHO_DATA_BYTES]);
        }
        Err(e) => {
            show(&e);
        }
    }

    // A hand-built /chosen: cell counts anywhere in u32 (they come from the DT's root node).
    let mut c = Cursor::new(data);
    let ac = match c.u8() {
        x @ 0..=7 => u32::from(x),
        _ => c.u32(),
    };
    let sc = match c.u8() {
        x @ 0..=7 => u32::from(x),
        _ => c.u32(),
    };
    let present = c.u8();
    let n1 = usize::from(c.u8() % 40);
    let v1 = c.bytes(n1);
    let n2 = usize::from(c.u8() % 40);
    let v2 = c.bytes(n2);
    let mut node = FdtNode::new("chosen");
    if present & 1 != 0 {
        node = node.prop(CHOSEN_FDT, v1);
    }
    if present & 2 != 0 {
        node = node.prop(CHOSEN_SCRATCH, v2);
    }
    chosen(&node, ac, sc);

    // /chosen of a whole device tree, cells from its root as a boot loader would.
    if let Ok(tree) = FdtTree::parse(c.rest(), Field::ChosenKhoFdt, at) {
        if let Some(ch) = tree.root.find_child("chosen") {
            let ac = cells(&tree.root, "#address-cells", 2);
            let sc = cells(&tree.root, "#size-cells", 1);
            chosen(ch, ac, sc);
        }
    }
});
