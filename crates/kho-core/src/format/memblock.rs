//! memblock's `reserve_mem` handover (spec §2.4, unchanged since kho-v1): the `memblock`
//! sub-blob is an FDT with root `compatible = "memblock-v1"` and one child per
//! `reserve_mem=size:align:name` region, each with `compatible = "reserve-mem-v1"` and raw
//! little-endian u64 `start` and `size`. The next kernel reuses a region only if the name,
//! both compatibles and the requested size match, so everything is checked here.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::fdt::{FdtNode, FdtTree};
use crate::types::PhysAddr;

/// Root `compatible`.
pub const COMPATIBLE: &str = "memblock-v1";
/// Each region node's `compatible`.
pub const REGION_COMPATIBLE: &str = "reserve-mem-v1";
/// Longest region name Linux accepts (`RESERVE_MEM_NAME_SIZE - 1`).
pub const MAX_NAME_LEN: usize = 15;

/// One `reserve_mem` region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReserveMem {
    /// The name given on the command line (the node name).
    pub name: String,
    /// First byte.
    pub start: PhysAddr,
    /// Bytes.
    pub size: u64,
}

fn check_compatible(node: &FdtNode, at: PhysAddr, path: &str, want: &'static str) -> Result<(), DecodeError> {
    match node.first_compatible() {
        None => Err(DecodeError::new(
            Field::for_property("compatible"),
            at,
            DecodeErrorKind::MissingProperty { node: path.to_string(), prop: "compatible" },
        )),
        Some(_) if node.is_compatible(want) => Ok(()),
        Some(found) => {
            Err(DecodeError::new(Field::Compatible, at, DecodeErrorKind::Incompatible { found, supported: want }))
        }
    }
}

/// Parses the `memblock` blob found at `at`.
///
/// # Errors
/// [`DecodeErrorKind::BadFdt`] (`Blob`) for a malformed FDT or an empty/duplicate name;
/// [`DecodeErrorKind::MissingProperty`] / [`DecodeErrorKind::Incompatible`] for a missing or wrong compatible;
/// [`DecodeErrorKind::MissingProperty`] / [`DecodeErrorKind::PropertyLength`] for `start`/`size` that are absent
/// or not 8 bytes; [`DecodeErrorKind::BadValue`] (`Blob`) for an empty or wrapping region.
pub fn parse(blob: &[u8], at: PhysAddr) -> Result<Vec<ReserveMem>, DecodeError> {
    let tree = FdtTree::parse(blob, Field::Blob, at)?;
    check_compatible(&tree.root, at, "/", COMPATIBLE)?;
    let mut out: Vec<ReserveMem> = Vec::with_capacity(tree.root.children.len());
    for child in &tree.root.children {
        let path = alloc::format!("/{}", child.name);
        if child.name.is_empty() || out.iter().any(|r| r.name == child.name) {
            return Err(DecodeError::new(
                Field::Blob,
                at,
                DecodeErrorKind::BadFdt { reason: alloc::format!("empty or duplicate node {path:?}") },
            ));
        }
        check_compatible(child, at, &path, REGION_COMPATIBLE)?;
        let start = child.le64(at, &path, "start")?;
        let size = child.le64(at, &path, "size")?;
        if size == 0 || start.checked_add(size).is_none() {
            return Err(DecodeError::new(
                Field::Blob,
                at,
                DecodeErrorKind::BadValue {
                    found: size,
                    expected: "a non-empty region that does not wrap the address space",
                },
            ));
        }
        out.push(ReserveMem { name: child.name.clone(), start: PhysAddr::new(start), size });
    }
    Ok(out)
}

/// Builds the `memblock` blob for `regions`, in the order given.
///
/// # Errors
/// [`DecodeErrorKind::BadValue`] (`Argument`) for a name that is empty, longer than
/// [`MAX_NAME_LEN`], not a plain node name, or used twice, and for an empty or wrapping
/// region.
pub fn build(regions: &[ReserveMem]) -> Result<Vec<u8>, OutgoingError> {
    let mut root = FdtNode::new("").prop_str("compatible", COMPATIBLE);
    for (i, r) in regions.iter().enumerate() {
        let bad = |expected| OutgoingError::BadValue { what: Field::Argument, at: r.start, found: i as u64, expected };
        let plain = r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b",._+-".contains(&b));
        if r.name.is_empty() || r.name.len() > MAX_NAME_LEN || !plain {
            return Err(bad("a region name of 1 to 15 node-name characters"));
        }
        if regions[..i].iter().any(|o| o.name == r.name) {
            return Err(bad("region names used once"));
        }
        if r.size == 0 || r.start.checked_add(r.size).is_none() {
            return Err(bad("a non-empty region that does not wrap the address space"));
        }
        root = root.child(
            FdtNode::new(&r.name)
                .prop_str("compatible", REGION_COMPATIBLE)
                .prop_le64("start", r.start.as_u64())
                .prop_le64("size", r.size),
        );
    }
    FdtTree { root }.to_dtb()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, start: u64, size: u64) -> ReserveMem {
        ReserveMem { name: name.into(), start: PhysAddr::new(start), size }
    }

    #[test]
    fn round_trips() {
        let regions = [region("oops", 0x1_0000_0000, 1 << 20), region("trace", 0x4000_0000, 16 << 20)];
        let blob = build(&regions).unwrap();
        assert_eq!(parse(&blob, PhysAddr::new(0x9000)).unwrap(), regions);
        assert_eq!(parse(&build(&[]).unwrap(), PhysAddr::new(0)).unwrap(), []);
    }

    #[test]
    fn values_are_raw_little_endian() {
        let blob = build(&[region("r", 0x1122_3344_5566_7000, 0x1000)]).unwrap();
        let needle = 0x1122_3344_5566_7000u64.to_le_bytes();
        assert!(blob.windows(8).any(|w| w == needle));
    }

    #[test]
    fn wrong_compatibles_and_lengths_are_named() {
        let at = PhysAddr::new(0x7000);
        let t = FdtTree { root: FdtNode::new("").prop_str("compatible", "memblock-v2") };
        let e = parse(&t.to_dtb().unwrap(), at).unwrap_err();
        assert!(
            matches!(&e, DecodeError { kind: DecodeErrorKind::Incompatible { found, supported: "memblock-v1", .. }, .. } if found == "memblock-v2")
        );

        let child = FdtNode::new("r").prop_str("compatible", "reserve-mem-v2");
        let t = FdtTree { root: FdtNode::new("").prop_str("compatible", COMPATIBLE).child(child) };
        let e = parse(&t.to_dtb().unwrap(), at).unwrap_err();
        assert!(
            matches!(e, DecodeError { kind: DecodeErrorKind::Incompatible { supported: "reserve-mem-v1", .. }, .. }),
            "{e}"
        );

        let child = FdtNode::new("r")
            .prop_str("compatible", REGION_COMPATIBLE)
            .prop("start", &[0, 0, 0, 1])
            .prop_le64("size", 4096);
        let t = FdtTree { root: FdtNode::new("").prop_str("compatible", COMPATIBLE).child(child) };
        let e = parse(&t.to_dtb().unwrap(), at).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::for_property("start"),
                at,
                DecodeErrorKind::PropertyLength { node: "/r".into(), prop: "start", len: 4, expected: 8 }
            )
        );

        let child = FdtNode::new("r").prop_str("compatible", REGION_COMPATIBLE).prop_le64("start", 0);
        let t = FdtTree { root: FdtNode::new("").prop_str("compatible", COMPATIBLE).child(child) };
        let e = parse(&t.to_dtb().unwrap(), at).unwrap_err();
        assert!(matches!(e, DecodeError { kind: DecodeErrorKind::MissingProperty { prop: "size", .. }, .. }), "{e}");

        assert!(parse(&[0u8; 8], at).is_err());
    }

    #[test]
    fn build_refuses_bad_regions() {
        assert!(build(&[region("", 0, 1)]).is_err());
        assert!(build(&[region("a-name-that-is-too-long", 0, 1)]).is_err());
        assert!(build(&[region("a/b", 0, 1)]).is_err());
        assert!(build(&[region("a", 0, 1), region("a", 0x1000, 1)]).is_err());
        assert!(build(&[region("a", u64::MAX, 2)]).is_err());
        assert!(build(&[region("a", 0, 0)]).is_err());
    }
}
