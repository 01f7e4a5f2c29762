//! The root KHO FDT (spec §1.5, §2.1): `compatible`, `preserved-memory-map` (a raw
//! little-endian u64, not an FDT cell), and one sub-node per subsystem blob. kho-v1 sub-nodes
//! carry `fdt` (the blob is an FDT that knows its own size); kho-v4 ones carry
//! `preserved-data` and `blob-size`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::fdt::{FdtNode, FdtTree, is_valid_subtree_name};
use crate::format::{FormatVersion, Limits};
use crate::types::{PAGE_SIZE, PhysAddr};

/// Root property holding the memory map's address.
pub const PROP_MEMORY_MAP: &str = "preserved-memory-map";
/// kho-v1 sub-node property: blob address.
pub const PROP_V1_FDT: &str = "fdt";
/// kho-v4 sub-node property: blob address.
pub const PROP_V4_DATA: &str = "preserved-data";
/// kho-v4 sub-node property: blob size.
pub const PROP_V4_SIZE: &str = "blob-size";

/// A named subsystem blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtree {
    /// Sub-node name.
    pub name: String,
    /// Blob address.
    pub phys: PhysAddr,
    /// Blob size in bytes (for kho-v1, the blob FDT's `totalsize`, filled in by the reader
    /// once it has looked at the blob; `None` until then).
    pub size: Option<u64>,
}

/// The decoded root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Format version from `compatible`.
    pub version: FormatVersion,
    /// `preserved-memory-map`: first chunk (v1) or radix root (v4).
    pub memory_map: PhysAddr,
    /// Sub-nodes in FDT order.
    pub subtrees: Vec<Subtree>,
}

/// Builds the root FDT; it must fit one page, as Linux passes `fdt_size = PAGE_SIZE`.
///
/// # Errors
/// [`OutgoingError::FdtTooLarge`] or [`OutgoingError::BadValue`] for a name the FDT cannot hold.
pub fn build(version: FormatVersion, memory_map: PhysAddr, subtrees: &[Subtree]) -> Result<Vec<u8>, OutgoingError> {
    let mut root =
        FdtNode::new("").prop_str("compatible", version.compatible()).prop_le64(PROP_MEMORY_MAP, memory_map.as_u64());
    for s in subtrees {
        let node = FdtNode::new(&s.name);
        root = root.child(match version {
            FormatVersion::V1 => node.prop_le64(PROP_V1_FDT, s.phys.as_u64()),
            FormatVersion::V4 => {
                node.prop_le64(PROP_V4_DATA, s.phys.as_u64()).prop_le64(PROP_V4_SIZE, s.size.unwrap_or(0))
            }
        });
    }
    let dtb = FdtTree { root }.to_dtb()?;
    if dtb.len() as u64 > PAGE_SIZE {
        return Err(OutgoingError::FdtTooLarge { needed: dtb.len() as u64, limit: PAGE_SIZE });
    }
    Ok(dtb)
}

/// Parses and checks the root FDT found at `at`: header and structure, a supported
/// `compatible` (any entry of the string list, as libfdt matches), an 8-byte
/// `preserved-memory-map` (non-zero for kho-v4, as Linux 7.3 requires), and per sub-node a
/// valid unique name and 8-byte pointer (and size) properties.
///
/// # Errors
/// [`DecodeErrorKind::BadFdt`], [`DecodeErrorKind::Incompatible`] (listing the supported versions),
/// [`DecodeErrorKind::MissingProperty`], [`DecodeErrorKind::PropertyLength`], [`DecodeErrorKind::Null`],
/// [`DecodeErrorKind::TooMany`], [`DecodeErrorKind::BadValue`] for a bad or duplicate name.
pub fn parse(bytes: &[u8], at: PhysAddr, limits: &Limits) -> Result<Root, DecodeError> {
    let tree = FdtTree::parse(bytes, Field::RootFdt, at)?;
    let root = &tree.root;
    let version = [FormatVersion::V1, FormatVersion::V4]
        .into_iter()
        .find(|v| root.is_compatible(v.compatible()))
        .ok_or_else(|| {
            DecodeError::new(
                Field::Compatible,
                at,
                DecodeErrorKind::Incompatible {
                    found: root.first_compatible().unwrap_or_else(|| String::from("(no compatible property)")),
                    supported: FormatVersion::SUPPORTED,
                },
            )
        })?;
    let memory_map = PhysAddr::new(root.le64(at, "/", PROP_MEMORY_MAP)?);
    if version == FormatVersion::V4 && memory_map.is_null() {
        return Err(DecodeError::new(Field::PreservedMemoryMap, at, DecodeErrorKind::Null));
    }
    if root.children.len() > limits.max_subtrees {
        return Err(DecodeError::new(
            Field::SubtreeName,
            at,
            DecodeErrorKind::TooMany { limit: limits.max_subtrees as u64 },
        ));
    }
    let mut subtrees: Vec<Subtree> = Vec::with_capacity(root.children.len());
    for child in &root.children {
        let path = alloc::format!("/{}", child.name);
        if !is_valid_subtree_name(&child.name) || subtrees.iter().any(|s| s.name == child.name) {
            return Err(DecodeError::new(
                Field::SubtreeName,
                at,
                DecodeErrorKind::BadValue {
                    found: child.name.len() as u64,
                    expected: "a unique sub-node name of 1-63 plain characters",
                },
            ));
        }
        let (phys, size) = match version {
            FormatVersion::V1 => (child.le64(at, &path, PROP_V1_FDT)?, None),
            FormatVersion::V4 => (child.le64(at, &path, PROP_V4_DATA)?, Some(child.le64(at, &path, PROP_V4_SIZE)?)),
        };
        subtrees.push(Subtree { name: child.name.clone(), phys: PhysAddr::new(phys), size });
    }
    Ok(Root { version, memory_map, subtrees })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_v1_example() {
        let dtb = include_bytes!("../../tests/data/spec-examples/v1-small/fdt.dtb");
        let root = parse(dtb, PhysAddr::new(0x1000), &Limits::default()).unwrap();
        assert_eq!(root.version, FormatVersion::V1);
        assert_eq!(root.memory_map, PhysAddr::new(1_052_672));
        assert_eq!(root.subtrees, [Subtree { name: "memblock".into(), phys: PhysAddr::new(3_145_728), size: None }]);
    }

    #[test]
    fn parses_the_linux_7_3_capture() {
        let dtb = include_bytes!("../../tests/data/captures/linux-7.3.4-test_kho/fdt.dtb");
        let root = parse(dtb, PhysAddr::new(0x18_2000), &Limits::default()).unwrap();
        assert_eq!(root.version, FormatVersion::V4);
        assert_eq!(root.memory_map, PhysAddr::new(0x18_1000));
        let names: Vec<&str> = root.subtrees.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["kho_test", "kexec-metadata"]);
        assert_eq!(root.subtrees[1].phys, PhysAddr::new(0x18_8000));
        assert_eq!(root.subtrees[1].size, Some(73));
    }

    #[test]
    fn built_v1_root_matches_the_spec_example_bytes() {
        let subs = [Subtree { name: "memblock".into(), phys: PhysAddr::new(0x30_0000), size: None }];
        let dtb = build(FormatVersion::V1, PhysAddr::new(0x10_1000), &subs).unwrap();
        let want = include_bytes!("../../tests/data/spec-examples/v1-small/fdt.dtb");
        assert_eq!(dtb.as_slice(), want.as_slice());
    }

    #[test]
    fn built_v4_root_matches_the_linux_capture_bytes() {
        let subs = [
            Subtree { name: "kho_test".into(), phys: PhysAddr::new(0x29_2000), size: Some(0xf0) },
            Subtree { name: "kexec-metadata".into(), phys: PhysAddr::new(0x18_8000), size: Some(73) },
        ];
        let dtb = build(FormatVersion::V4, PhysAddr::new(0x18_1000), &subs).unwrap();
        let want = include_bytes!("../../tests/data/captures/linux-7.3.4-test_kho/fdt.dtb");
        let (got, want) = (
            parse(&dtb, PhysAddr::new(0), &Limits::default()).unwrap(),
            parse(want, PhysAddr::new(0), &Limits::default()).unwrap(),
        );
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_version_lists_the_supported_ones() {
        let dtb =
            FdtTree { root: FdtNode::new("").prop_str("compatible", "kho-v3").prop_le64(PROP_MEMORY_MAP, 0x1000) }
                .to_dtb()
                .unwrap();
        let e = parse(&dtb, PhysAddr::new(0x5000), &Limits::default()).unwrap_err();
        assert_eq!(e.to_string(), "handover at 0x5000 is \"kho-v3\"; supported: kho-v1, kho-v4");
    }

    #[test]
    fn v4_needs_a_memory_map() {
        let dtb = FdtTree { root: FdtNode::new("").prop_str("compatible", "kho-v4").prop_le64(PROP_MEMORY_MAP, 0) }
            .to_dtb()
            .unwrap();
        assert_eq!(
            parse(&dtb, PhysAddr::new(0x5000), &Limits::default()).unwrap_err(),
            DecodeError::new(Field::PreservedMemoryMap, PhysAddr::new(0x5000), DecodeErrorKind::Null)
        );
    }
}
