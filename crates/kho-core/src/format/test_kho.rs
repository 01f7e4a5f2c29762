//! Linux's `test_kho` module's sub-blob (spec §6): an FDT with root
//! `compatible = "kho-test-v1"` and u32 `magic` 0x4b484f21 ("KHO!"), and a node `data` with
//! `nr_folios` (u32), `folios_info` (a raw 16-byte [`KhoVmalloc`]) and `csum` (u32). The
//! vmalloc'd `folios_info` is an array of `nr_folios` u64s, each `phys | order`: folios are
//! page aligned, so the order fits in the low bits.
//!
//! It is the one real-world producer of every KHO feature at once (folios of many orders, a
//! vmalloc area, an FDT sub-blob), which makes it the golden test of the decoders.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::fdt::{FdtNode, FdtTree};
use crate::format::WalkContext;
use crate::format::vmalloc::{self, KhoVmalloc};
use crate::platform::PhysRead;
use crate::types::{Block, ORDER_LIMIT, Order, PAGE_SIZE, PhysAddr};

/// Root `compatible`.
pub const COMPATIBLE: &str = "kho-test-v1";
/// Root `magic`: "KHO!" read as a little-endian u32.
pub const MAGIC: u32 = 0x4b48_4f21;
/// Sub-node name Linux uses for this blob.
pub const SUBTREE_NAME: &str = "kho_test";

/// The blob's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TestKho {
    /// Entries in the `folios_info` array.
    pub nr_folios: u32,
    /// The vmalloc'd `folios_info` array.
    pub folios_info: KhoVmalloc,
    /// 32-bit `csum_partial` over every folio's content.
    pub csum: u32,
}

impl TestKho {
    /// Parses the blob found at `at`, with the checks Linux's restore path makes.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadFdt`] (`Blob`) for a malformed FDT or a missing `/data` node;
    /// [`DecodeErrorKind::MissingProperty`] / [`DecodeErrorKind::Incompatible`] for the compatible;
    /// [`DecodeErrorKind::MissingProperty`] / [`DecodeErrorKind::PropertyLength`] for a property absent or of the
    /// wrong length; [`DecodeErrorKind::BadValue`] (`Blob`) for a wrong magic; as
    /// [`KhoVmalloc::from_bytes`] for `folios_info`.
    pub fn parse(blob: &[u8], at: PhysAddr) -> Result<Self, DecodeError> {
        let tree = FdtTree::parse(blob, Field::Blob, at)?;
        let root = &tree.root;
        match root.first_compatible() {
            None => {
                return Err(DecodeError::new(
                    Field::for_property("compatible"),
                    at,
                    DecodeErrorKind::MissingProperty { node: "/".to_string(), prop: "compatible" },
                ));
            }
            Some(found) if !root.is_compatible(COMPATIBLE) => {
                return Err(DecodeError::new(
                    Field::Compatible,
                    at,
                    DecodeErrorKind::Incompatible { found, supported: COMPATIBLE },
                ));
            }
            Some(_) => {}
        }
        let magic = root.le32(at, "/", "magic")?;
        if magic != MAGIC {
            return Err(DecodeError::new(
                Field::Blob,
                at,
                DecodeErrorKind::BadValue { found: u64::from(magic), expected: "test_kho magic 0x4b484f21" },
            ));
        }
        let data: &FdtNode = root.find_child("data").ok_or_else(|| {
            DecodeError::new(Field::Blob, at, DecodeErrorKind::BadFdt { reason: "missing node /data".to_string() })
        })?;
        let nr_folios = data.le32(at, "/data", "nr_folios")?;
        let info = data.get("folios_info").ok_or_else(|| {
            DecodeError::new(
                Field::for_property("folios_info"),
                at,
                DecodeErrorKind::MissingProperty { node: "/data".to_string(), prop: "folios_info" },
            )
        })?;
        if info.len() != vmalloc::DESC_BYTES {
            return Err(DecodeError::new(
                Field::for_property("folios_info"),
                at,
                DecodeErrorKind::PropertyLength {
                    node: "/data".to_string(),
                    prop: "folios_info",
                    len: info.len(),
                    expected: vmalloc::DESC_BYTES,
                },
            ));
        }
        let folios_info = KhoVmalloc::from_bytes(info, at)?;
        let csum = data.le32(at, "/data", "csum")?;
        Ok(Self { nr_folios, folios_info, csum })
    }

    /// Builds the blob (for tests and simulations of a Linux producer).
    ///
    /// # Errors
    /// As [`FdtTree::to_dtb`].
    pub fn to_blob(&self) -> Result<Vec<u8>, OutgoingError> {
        let data = FdtNode::new("data")
            .prop("nr_folios", &self.nr_folios.to_le_bytes())
            .prop("folios_info", &self.folios_info.to_bytes())
            .prop("csum", &self.csum.to_le_bytes());
        let root = FdtNode::new("").prop_str("compatible", COMPATIBLE).prop("magic", &MAGIC.to_le_bytes()).child(data);
        FdtTree { root }.to_dtb()
    }
}

/// Encodes one `folios_info` entry.
#[must_use]
pub fn folio_entry(block: Block) -> u64 {
    block.phys().as_u64() | u64::from(block.order().as_u32())
}

/// Walks `folios_info` of the blob at `at` and returns the `nr_folios` folios it lists, in
/// array order. Each folio must be aligned to its order, inside RAM and outside scratch.
///
/// # Errors
/// As [`vmalloc::decode_chain`]; [`DecodeErrorKind::TooMany`] (`Blob`) if the array is larger than the
/// blob-size limit; [`DecodeErrorKind::BadValue`] (`Blob`) if `nr_folios` entries do not fit in the
/// area; for an entry (at its physical address): [`DecodeErrorKind::OrderTooLarge`] and
/// [`WalkContext::check_pointer`]'s errors, naming `Blob`.
pub fn decode_folios<M: PhysRead + ?Sized>(
    ctx: &mut WalkContext<'_, M>,
    t: &TestKho,
    at: PhysAddr,
) -> Result<Vec<Block>, DecodeError> {
    let area = vmalloc::decode_chain(ctx, &t.folios_info, at)?;
    let order = Order::new(u32::from(t.folios_info.order)).unwrap_or(Order::ZERO);
    let bytes = u64::from(t.nr_folios) * 8;
    if bytes > ctx.limits.max_blob_bytes {
        return Err(DecodeError::new(
            Field::Blob,
            at,
            DecodeErrorKind::TooMany { limit: ctx.limits.max_blob_bytes / 8 },
        ));
    }
    if bytes > u64::from(t.folios_info.total_pages) * PAGE_SIZE {
        return Err(DecodeError::new(
            Field::Blob,
            at,
            DecodeErrorKind::BadValue {
                found: u64::from(t.nr_folios),
                expected: "nr_folios entries that fit in folios_info",
            },
        ));
    }
    let mut buf = alloc::vec![0u8; usize::try_from(bytes).unwrap_or(0)];
    vmalloc::read_area(ctx.mem, &area, order, at, &mut buf)?;
    let mut out = Vec::with_capacity(buf.len() / 8);
    for (i, e) in buf.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(e.try_into().unwrap_or_default());
        let entry_at = entry_address(&area, order, i as u64 * 8).unwrap_or(at);
        let raw_order = v & (PAGE_SIZE - 1);
        let phys = PhysAddr::new(v & !(PAGE_SIZE - 1));
        let Some(folio_order) = u32::try_from(raw_order).ok().and_then(Order::new) else {
            return Err(DecodeError::new(
                Field::Blob,
                entry_at,
                DecodeErrorKind::OrderTooLarge { order: raw_order, max: u32::from(ORDER_LIMIT) },
            ));
        };
        let len = folio_order.bytes();
        ctx.check_pointer(Field::Blob, entry_at, phys, len, len)?;
        let block = Block::at(phys, folio_order).ok_or(DecodeError::new(
            Field::Blob,
            entry_at,
            DecodeErrorKind::Misaligned { value: phys.as_u64(), align: len },
        ))?;
        out.push(block);
    }
    Ok(out)
}

/// Physical address of byte `off` of a vmalloc area.
fn entry_address(area: &vmalloc::VmallocArea, order: Order, off: u64) -> Option<PhysAddr> {
    let piece = area.pieces.get(usize::try_from(off / order.bytes()).ok()?)?;
    piece.checked_add(off % order.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Limits;
    use crate::testing::TestPlatform;
    use crate::types::PhysRange;

    const GIB: u64 = 1 << 30;

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    fn blk(phys: u64, order: u32) -> Block {
        Block::at(PhysAddr::new(phys), Order::new(order).unwrap()).unwrap()
    }

    /// Writes a folios_info array for `folios` and returns the blob's content.
    fn setup(plat: &TestPlatform, folios: &[Block]) -> TestKho {
        let array = PhysAddr::new(0x10_0000);
        let mut bytes = Vec::new();
        for &b in folios {
            bytes.extend_from_slice(&folio_entry(b).to_le_bytes());
        }
        let pages = bytes.len().div_ceil(4096).max(1);
        plat.mem.write_bytes(array, &bytes);
        let pieces: Vec<PhysAddr> = (0..pages as u64).map(|i| PhysAddr::new(array.as_u64() + i * 4096)).collect();
        let (info, _) = vmalloc::encode(plat, &pieces, Order::ZERO, vmalloc::FLAG_ALLOC).unwrap();
        TestKho { nr_folios: folios.len() as u32, folios_info: info, csum: 0x42c3_ebc0 }
    }

    #[test]
    fn blob_round_trips() {
        let t = TestKho {
            nr_folios: 26,
            folios_info: KhoVmalloc { first: PhysAddr::new(0x2c_d000), total_pages: 1, flags: 1, order: 0 },
            csum: 0x42c3_ebc0,
        };
        let blob = t.to_blob().unwrap();
        assert_eq!(TestKho::parse(&blob, PhysAddr::new(0x29_2000)).unwrap(), t);
    }

    #[test]
    fn folios_decode_across_pages() {
        let plat = TestPlatform::new(&[range(0, 8 * GIB)], range(GIB, 1 << 20));
        let folios: Vec<Block> = (0..600u64).map(|i| blk(2 * GIB + i * 0x40_0000, (i % 11) as u32)).collect();
        let t = setup(&plat, &folios);
        let ram = [range(0, 8 * GIB)];
        let mut ctx = WalkContext::new(&plat.mem, &ram, &[], Limits::default());
        assert_eq!(decode_folios(&mut ctx, &t, PhysAddr::new(0x9000)).unwrap(), folios);
    }

    #[test]
    fn bad_entries_are_named() {
        let plat = TestPlatform::new(&[range(0, 4 * GIB)], range(GIB, 1 << 20));
        let ram = [range(0, 4 * GIB)];
        let t = setup(&plat, &[blk(2 * GIB, 0), blk(2 * GIB + 0x2000, 1)]);
        // Second entry: order 1 at an address aligned only to order 0.
        plat.mem.write_bytes(PhysAddr::new(0x10_0008), &(2 * GIB + 0x1000 + 1).to_le_bytes());
        let mut ctx = WalkContext::new(&plat.mem, &ram, &[], Limits::default());
        let e = decode_folios(&mut ctx, &t, PhysAddr::new(0x9000)).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::Blob, at, kind: DecodeErrorKind::Misaligned { .. }, .. } if at == PhysAddr::new(0x10_0008)),
            "{e}"
        );
        // Order 41.
        plat.mem.write_bytes(PhysAddr::new(0x10_0008), &(2 * GIB + 41).to_le_bytes());
        let mut ctx = WalkContext::new(&plat.mem, &ram, &[], Limits::default());
        let e = decode_folios(&mut ctx, &t, PhysAddr::new(0x9000)).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::Blob, kind: DecodeErrorKind::OrderTooLarge { order: 41, .. }, .. }),
            "{e}"
        );
        // More folios than the area holds.
        let big = TestKho { nr_folios: 513, ..t };
        let mut ctx = WalkContext::new(&plat.mem, &ram, &[], Limits::default());
        let e = decode_folios(&mut ctx, &big, PhysAddr::new(0x9000)).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::Blob, kind: DecodeErrorKind::BadValue { found: 513, .. }, .. }),
            "{e}"
        );
    }

    #[test]
    fn parse_checks_magic_compatible_and_lengths() {
        let at = PhysAddr::new(0x9000);
        let data = || {
            FdtNode::new("data")
                .prop("nr_folios", &1u32.to_le_bytes())
                .prop("folios_info", &[0u8; 16])
                .prop("csum", &0u32.to_le_bytes())
        };
        let blob = |root: FdtNode| FdtTree { root }.to_dtb().unwrap();

        let r = FdtNode::new("").prop_str("compatible", "kho-test-v2").prop("magic", &MAGIC.to_le_bytes());
        assert!(matches!(
            TestKho::parse(&blob(r.child(data())), at),
            Err(DecodeError { kind: DecodeErrorKind::Incompatible { .. }, .. })
        ));

        let r = FdtNode::new("").prop_str("compatible", COMPATIBLE).prop("magic", &1u32.to_le_bytes());
        let e = TestKho::parse(&blob(r.child(data())), at).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::Blob, kind: DecodeErrorKind::BadValue { found: 1, .. }, .. }),
            "{e}"
        );

        let r = FdtNode::new("").prop_str("compatible", COMPATIBLE).prop("magic", &MAGIC.to_le_bytes());
        let e = TestKho::parse(&blob(r.clone()), at).unwrap_err();
        assert!(matches!(e, DecodeError { kind: DecodeErrorKind::BadFdt { .. }, .. }), "{e}");

        let d = FdtNode::new("data")
            .prop("nr_folios", &1u32.to_le_bytes())
            .prop("folios_info", &[0u8; 8])
            .prop("csum", &0u32.to_le_bytes());
        let e = TestKho::parse(&blob(r.clone().child(d)), at).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError {
                    kind: DecodeErrorKind::PropertyLength { prop: "folios_info", len: 8, expected: 16, .. },
                    ..
                }
            ),
            "{e}"
        );

        let d = FdtNode::new("data").prop("nr_folios", &1u64.to_le_bytes());
        let e = TestKho::parse(&blob(r.child(d)), at).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError {
                    kind: DecodeErrorKind::PropertyLength { prop: "nr_folios", len: 8, expected: 4, .. },
                    ..
                }
            ),
            "{e}"
        );
    }
}
