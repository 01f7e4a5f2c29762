//! A thin wrapper over `dtoolkit` for the few FDTs KHO uses: the root handover FDT and small
//! sub-blobs (memblock, test_kho). Callers see owned, depth-bounded trees and raw property
//! bytes, never dtoolkit types, so the parser can be swapped without touching the formats.
//!
//! Reading: `dtoolkit` validates the whole structure block before the first lookup (it
//! survived 21,692 malformed blobs without a panic in our research) and we bound depth and
//! node count on top. Writing: its serializer lays the blob out as libfdt's sequential-write
//! API does (header, empty reservation map, structure, strings in first-use order).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use dtoolkit::fdt::Fdt;
use dtoolkit::model::{DeviceTree, DeviceTreeNode, DeviceTreeProperty};
use dtoolkit::{Node, Property};

use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::types::PhysAddr;

/// FDT header magic.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the FDT header.
pub const FDT_HEADER_BYTES: usize = 40;
/// Deepest node level kept by [`FdtTree::parse`] (root = 0). KHO's blobs need 2.
pub const MAX_DEPTH: usize = 4;
/// Most nodes kept by [`FdtTree::parse`].
pub const MAX_NODES: usize = 4096;

/// One node: its name, properties in blob order, children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FdtNode {
    /// Node name (empty for the root).
    pub name: String,
    /// `(name, value)` pairs.
    pub props: Vec<(String, Vec<u8>)>,
    /// Child nodes.
    pub children: Vec<FdtNode>,
}

impl FdtNode {
    /// A node with no properties or children.
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), props: Vec::new(), children: Vec::new() }
    }
    /// Adds a property (builder style).
    #[must_use]
    pub fn prop(mut self, name: &str, value: &[u8]) -> Self {
        self.props.push((name.to_string(), value.to_vec()));
        self
    }
    /// Adds a NUL-terminated string property.
    #[must_use]
    pub fn prop_str(self, name: &str, value: &str) -> Self {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.prop(name, &v)
    }
    /// Adds a raw little-endian u64 property, as KHO stores its u64 values (spec §0).
    #[must_use]
    pub fn prop_le64(self, name: &str, value: u64) -> Self {
        self.prop(name, &value.to_le_bytes())
    }
    /// Adds a child (builder style).
    #[must_use]
    pub fn child(mut self, child: FdtNode) -> Self {
        self.children.push(child);
        self
    }
    /// A property's raw bytes.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.props.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
    /// A child by name.
    #[must_use]
    pub fn find_child(&self, name: &str) -> Option<&FdtNode> {
        self.children.iter().find(|c| c.name == name)
    }
    /// True if the `compatible` string list contains `compat`: libfdt's stringlist match,
    /// where every entry must be NUL-terminated (six bytes "kho-v4" without the NUL match
    /// nothing, and Linux boots cold on them).
    #[must_use]
    pub fn is_compatible(&self, compat: &str) -> bool {
        self.get("compatible")
            .and_then(|v| v.strip_suffix(&[0]))
            .is_some_and(|v| v.split(|&b| b == 0).any(|s| s == compat.as_bytes()))
    }
    /// The first entry of `compatible`, lossily decoded, for messages.
    #[must_use]
    pub fn first_compatible(&self) -> Option<String> {
        let v = self.get("compatible")?;
        let first = v.split(|&b| b == 0).next()?;
        Some(String::from_utf8_lossy(first).into_owned())
    }
    /// Reads an exactly-8-byte little-endian u64 property of the FDT at `at`, node `path`.
    ///
    /// # Errors
    /// [`DecodeErrorKind::MissingProperty`] or [`DecodeErrorKind::PropertyLength`].
    pub fn le64(&self, at: PhysAddr, path: &str, prop: &'static str) -> Result<u64, DecodeError> {
        self.exact::<8>(at, path, prop).map(u64::from_le_bytes)
    }
    /// Reads an exactly-4-byte little-endian u32 property.
    ///
    /// # Errors
    /// [`DecodeErrorKind::MissingProperty`] or [`DecodeErrorKind::PropertyLength`].
    pub fn le32(&self, at: PhysAddr, path: &str, prop: &'static str) -> Result<u32, DecodeError> {
        self.exact::<4>(at, path, prop).map(u32::from_le_bytes)
    }
    /// The property's bytes, which must be exactly `N` long: one place names both failures.
    fn exact<const N: usize>(&self, at: PhysAddr, path: &str, prop: &'static str) -> Result<[u8; N], DecodeError> {
        let fail = |kind| DecodeError::new(Field::for_property(prop), at, kind);
        let v =
            self.get(prop).ok_or_else(|| fail(DecodeErrorKind::MissingProperty { node: path.to_string(), prop }))?;
        v.try_into().map_err(|_| {
            fail(DecodeErrorKind::PropertyLength { node: path.to_string(), prop, len: v.len(), expected: N })
        })
    }
}

/// A parsed FDT: the root node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FdtTree {
    /// The root node.
    pub root: FdtNode,
}

/// Reads `totalsize` from an FDT header, checking the magic.
///
/// # Errors
/// [`DecodeErrorKind::BadFdt`] if the header is short or the magic is wrong.
pub fn header_totalsize(header: &[u8], what: Field, at: PhysAddr) -> Result<u32, DecodeError> {
    let bad = |reason: &str| DecodeError::new(what, at, DecodeErrorKind::BadFdt { reason: reason.to_string() });
    let magic = header.get(0..4).ok_or_else(|| bad("shorter than the FDT header"))?;
    if u32::from_be_bytes(magic.try_into().unwrap_or_default()) != FDT_MAGIC {
        return Err(bad("bad magic (expected 0xd00dfeed)"));
    }
    let size = header.get(4..8).ok_or_else(|| bad("shorter than the FDT header"))?;
    Ok(u32::from_be_bytes(size.try_into().unwrap_or_default()))
}

impl FdtTree {
    /// Parses a blob that may be followed by slack (the blob is cut at its `totalsize`).
    /// `what` and `at` name the blob in errors.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadFdt`] for any structural problem, including a `totalsize` larger than the
    /// bytes given (a truncated blob).
    pub fn parse(bytes: &[u8], what: Field, at: PhysAddr) -> Result<Self, DecodeError> {
        let total = header_totalsize(bytes, what, at)? as usize;
        let bad = |reason: String| DecodeError::new(what, at, DecodeErrorKind::BadFdt { reason });
        if total > bytes.len() {
            return Err(bad(alloc::format!(
                "truncated: totalsize is {total} bytes but only {} are available",
                bytes.len()
            )));
        }
        let fdt = Fdt::new(&bytes[..total]).map_err(|e| bad(e.to_string()))?;
        let mut budget = MAX_NODES;
        let root = convert(&fdt.root(), 0, &mut budget).map_err(bad)?;
        Ok(Self { root })
    }

    /// Serializes the tree to a DTB.
    ///
    /// # Errors
    /// [`OutgoingError::BadValue`] for a name the FDT format cannot hold.
    pub fn to_dtb(&self) -> Result<Vec<u8>, OutgoingError> {
        let mut tree = DeviceTree::new();
        fill(&mut tree.root, &self.root)?;
        Ok(tree.to_dtb())
    }
}

fn convert(
    node: &dtoolkit::fdt::FdtNode<'_>,
    depth: usize,
    budget: &mut usize,
) -> core::result::Result<FdtNode, String> {
    *budget = budget.checked_sub(1).ok_or_else(|| alloc::format!("more than {MAX_NODES} nodes"))?;
    let mut out = FdtNode::new(node.name());
    for p in node.properties() {
        out.props.push((p.name().to_string(), p.value().to_vec()));
    }
    // The DT spec forbids two properties of one name; which one a reader sees would depend
    // on its lookup order, so such a node is malformed.
    if let Some(dup) = duplicate_name(out.props.iter().map(|(n, _)| n.as_str()), &mut 0) {
        return Err(alloc::format!("node {:?} has two properties named {:?}", node.name(), dup));
    }
    if depth < MAX_DEPTH {
        for c in node.children() {
            out.children.push(convert(&c, depth + 1, budget)?);
        }
    }
    Ok(out)
}

/// The first name (in sorted order) that occurs twice, found by sorting: O(n log n) name
/// comparisons, each counted in `comparisons` (tests bound the work with it).
pub(crate) fn duplicate_name<'a>(names: impl Iterator<Item = &'a str>, comparisons: &mut u64) -> Option<&'a str> {
    let mut sorted: Vec<&str> = names.collect();
    sorted.sort_unstable_by(|a, b| {
        *comparisons += 1;
        a.cmp(b)
    });
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

fn fill(dst: &mut DeviceTreeNode, src: &FdtNode) -> Result<(), OutgoingError> {
    let bad = || OutgoingError::BadValue {
        what: Field::SubtreeName,
        at: PhysAddr::new(0),
        found: 0,
        expected: "a valid FDT node or property name",
    };
    for (name, value) in &src.props {
        dst.add_property(DeviceTreeProperty::new(name.as_str(), value.as_slice()).map_err(|_| bad())?);
    }
    for c in &src.children {
        let mut child = DeviceTreeNode::new(c.name.as_str()).map_err(|_| bad())?;
        fill(&mut child, c)?;
        dst.add_child(child);
    }
    Ok(())
}

/// True if `name` is acceptable as a KHO sub-node name: 1..=63 bytes of the FDT node-name
/// character set, no `@` or `/` (Linux uses plain names such as `memblock`, `LUO`).
#[must_use]
pub fn is_valid_subtree_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b",._+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_raw_le64_values() {
        let t = FdtTree {
            root: FdtNode::new("")
                .prop_str("compatible", "kho-v1")
                .prop_le64("preserved-memory-map", 0x10_1000)
                .child(FdtNode::new("memblock").prop_le64("fdt", 0x30_0000)),
        };
        let dtb = t.to_dtb().unwrap();
        let back = FdtTree::parse(&dtb, Field::RootFdt, PhysAddr::new(0)).unwrap();
        assert_eq!(back, t);
        assert!(back.root.is_compatible("kho-v1"));
        assert_eq!(back.root.le64(PhysAddr::new(0), "/", "preserved-memory-map").unwrap(), 0x10_1000);
    }

    #[test]
    fn truncated_blob_is_refused_with_sizes() {
        let t = FdtTree { root: FdtNode::new("").prop_str("compatible", "kho-v4") };
        let dtb = t.to_dtb().unwrap();
        let e = FdtTree::parse(&dtb[..dtb.len() - 4], Field::RootFdt, PhysAddr::new(0x1000)).unwrap_err();
        assert!(
            matches!(&e, DecodeError { kind: DecodeErrorKind::BadFdt { reason, .. }, .. } if reason.contains("truncated")),
            "{e}"
        );
    }

    #[test]
    fn wrong_length_u64_is_named() {
        let n = FdtNode::new("x").prop("preserved-data", &[1, 2, 3, 4]);
        let e = n.le64(PhysAddr::new(0x2000), "/x", "preserved-data").unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::for_property("preserved-data"),
                PhysAddr::new(0x2000),
                DecodeErrorKind::PropertyLength { node: "/x".into(), prop: "preserved-data", len: 4, expected: 8 }
            )
        );
    }

    /// A DTB whose root node has exactly `props`, in order (duplicates allowed).
    fn raw_dtb(props: &[(&str, &[u8])]) -> Vec<u8> {
        let mut st: Vec<u8> = Vec::new();
        let mut strings: Vec<u8> = Vec::new();
        st.extend_from_slice(&1u32.to_be_bytes());
        st.extend_from_slice(&[0; 4]); // "" padded to 4
        for (name, value) in props {
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            st.extend_from_slice(&3u32.to_be_bytes());
            st.extend_from_slice(&(value.len() as u32).to_be_bytes());
            st.extend_from_slice(&off.to_be_bytes());
            st.extend_from_slice(value);
            while !st.len().is_multiple_of(4) {
                st.push(0);
            }
        }
        st.extend_from_slice(&2u32.to_be_bytes());
        st.extend_from_slice(&9u32.to_be_bytes());
        let (rsv, off_st) = (40u32, 56u32);
        let off_str = off_st + st.len() as u32;
        let total = off_str + strings.len() as u32;
        let mut out = Vec::new();
        for v in [FDT_MAGIC, total, off_st, off_str, rsv, 17, 16, 0, strings.len() as u32, st.len() as u32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&st);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    #[cfg_attr(miri, ignore = "10^5 names: a counting test, hours under Miri")]
    fn duplicate_properties_are_found_in_n_log_n_comparisons() {
        let n = 100_000usize;
        let names: Vec<String> = (0..n).map(|i| alloc::format!("p{:06}", (i * 7919) % n)).collect();
        let mut work = 0u64;
        assert_eq!(duplicate_name(names.iter().map(String::as_str), &mut work), None);
        // n log2 n is 1.7 million; the quadratic scan did n^2 / 2 = 5 * 10^9.
        let bound = 2 * n as u64 * u64::from(n.ilog2() + 1);
        assert!(work <= bound, "{work} comparisons for {n} names (bound {bound})");
        let mut with_dup = names.clone();
        with_dup.push("p000042".into());
        assert_eq!(duplicate_name(with_dup.iter().map(String::as_str), &mut 0), Some("p000042"));
    }

    #[test]
    fn a_node_with_two_properties_of_one_name_is_malformed() {
        // dtoolkit's writer keeps one property per name, so the blob is laid out by hand.
        let dtb = raw_dtb(&[("compatible", b"kho-v4\0"), ("x", &[1; 8]), ("x", &[2; 8])]);
        assert!(FdtTree::parse(&raw_dtb(&[("x", &[1; 8]), ("y", &[2; 8])]), Field::RootFdt, PhysAddr::new(0)).is_ok());
        let e = FdtTree::parse(&dtb, Field::RootFdt, PhysAddr::new(0x1000)).unwrap_err();
        assert!(e.to_string().contains("two properties named \"x\""), "{e}");
    }

    #[test]
    fn subtree_names_are_checked() {
        assert!(is_valid_subtree_name("kexec-metadata"));
        assert!(is_valid_subtree_name("LUO"));
        assert!(!is_valid_subtree_name(""));
        assert!(!is_valid_subtree_name("a/b"));
        assert!(!is_valid_subtree_name("a@1"));
    }
}
