//! Preserved vmalloc areas (spec §2.3, since Linux 6.18): a 16-byte `struct kho_vmalloc`
//! descriptor, embedded in its owner's blob, that heads a chain of one-page chunks listing
//! the physical address of every `2^order`-page piece of the area.
//!
//! Chunk layout: `hdr.next` (u64, 0 = end) then 511 (for 4 KiB pages) u64 piece addresses,
//! where a 0 entry ends the chunk early. Linux's restore is bounded only by `total_pages`;
//! the decoder here also checks every chunk pointer, refuses cycles and duplicate pieces,
//! bounds the chunk count by what `total_pages` needs, and checks each piece is aligned to
//! its order and inside RAM, outside scratch.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::mem::offset_of;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::format::WalkContext;
use crate::format::abi::{self, KhoVmallocDesc, VmallocChunk};
use crate::platform::{PhysRead, Platform};
use crate::types::{Block, ORDER_LIMIT, Order, PAGE_BYTES, PhysAddr};

/// Bytes of `struct kho_vmalloc`.
pub const DESC_BYTES: usize = core::mem::size_of::<KhoVmallocDesc>();
/// Piece addresses per chunk: `(PAGE_SIZE - 8) / 8` (`KHO_VMALLOC_SIZE`, 511 for 4 KiB).
pub const CHUNK_ENTRIES: usize = abi::VMALLOC_CHUNK_ENTRIES;
/// `flags` bit: the area came from `vmalloc` (`VM_ALLOC`).
pub const FLAG_ALLOC: u16 = 0x1;
/// `flags` bit: the area may use huge mappings (`VM_ALLOW_HUGE_VMAP`).
pub const FLAG_HUGE_VMAP: u16 = 0x2;
/// Every flag bit Linux 7.3 knows; others make its restore fail.
pub const KNOWN_FLAGS: u16 = FLAG_ALLOC | FLAG_HUGE_VMAP;

/// `struct kho_vmalloc`: where the chunk chain starts and what the area looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KhoVmalloc {
    /// First chunk (NULL for an empty area).
    pub first: PhysAddr,
    /// Pages in the area (a multiple of `2^order`).
    pub total_pages: u32,
    /// [`FLAG_ALLOC`] / [`FLAG_HUGE_VMAP`].
    pub flags: u16,
    /// Order of every piece.
    pub order: u16,
}

impl KhoVmalloc {
    /// Decodes the 16 bytes of a descriptor found at `at`.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadValue`] (`Blob`) if `bytes` is not exactly 16 bytes long, and
    /// (`VmallocFlags`) for flag bits Linux does not define.
    pub fn from_bytes(bytes: &[u8], at: PhysAddr) -> Result<Self, DecodeError> {
        let Ok(b) = KhoVmallocDesc::read_from_bytes(bytes) else {
            return Err(DecodeError::new(
                Field::Blob,
                at,
                DecodeErrorKind::BadValue { found: bytes.len() as u64, expected: "a 16-byte struct kho_vmalloc" },
            ));
        };
        let desc = Self {
            first: PhysAddr::new(b.first.get()),
            total_pages: b.total_pages.get(),
            flags: b.flags.get(),
            order: b.order.get(),
        };
        if desc.flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::new(
                Field::VmallocFlags,
                abi::field_addr(at, offset_of!(KhoVmallocDesc, flags)),
                DecodeErrorKind::BadValue {
                    found: u64::from(desc.flags),
                    expected: "only KHO_VMALLOC_ALLOC (0x1) and KHO_VMALLOC_HUGE_VMAP (0x2)",
                },
            ));
        }
        Ok(desc)
    }

    /// The 16 bytes Linux expects.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; DESC_BYTES] {
        let d = KhoVmallocDesc {
            first: self.first.as_u64().into(),
            total_pages: self.total_pages.into(),
            flags: self.flags.into(),
            order: self.order.into(),
        };
        zerocopy::transmute!(d)
    }
}

/// A decoded area: its pieces in area order and the chunk pages that listed them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmallocArea {
    /// Physical address of each `2^order`-page piece, in virtual-address order.
    pub pieces: Vec<PhysAddr>,
    /// The chunk pages (Linux preserves them as order-0 blocks and frees them on restore).
    pub chunk_pages: Vec<PhysAddr>,
}

impl VmallocArea {
    /// The pieces as preserved blocks of `order`.
    #[must_use]
    pub fn blocks(&self, order: Order) -> Vec<Block> {
        self.pieces.iter().filter_map(|&p| Block::at(p, order)).collect()
    }
}

/// Walks the chunk chain of `desc` (found at `at`) with every check.
///
/// # Errors
/// - [`DecodeErrorKind::OrderTooLarge`] (`VmallocOrder`) above [`ORDER_LIMIT`].
/// - Chunk pointers (`VmallocChunk`, at the `first`/`next` field): as
///   [`WalkContext::read_meta_page`], plus [`DecodeErrorKind::Cycle`] for a chunk seen twice and
///   [`DecodeErrorKind::TooMany`] for more chunks than `total_pages` needs (one spare allowed, as Linux
///   may leave an empty trailing chunk).
/// - Pieces (`VmallocPiece`, at the entry): as [`WalkContext::check_pointer`], plus
///   [`DecodeErrorKind::Overlap`] for a duplicate and [`DecodeErrorKind::TooMany`] past `total_pages` pages.
/// - [`DecodeErrorKind::BadValue`] (`VmallocTotalPages`) if the chain lists fewer pages.
pub fn decode_chain<M: PhysRead + ?Sized>(
    ctx: &mut WalkContext<'_, M>,
    desc: &KhoVmalloc,
    at: PhysAddr,
) -> Result<VmallocArea, DecodeError> {
    let Some(order) = Order::new(u32::from(desc.order)) else {
        return Err(DecodeError::new(
            Field::VmallocOrder,
            abi::field_addr(at, offset_of!(KhoVmallocDesc, order)),
            DecodeErrorKind::OrderTooLarge { order: u64::from(desc.order), max: u32::from(ORDER_LIMIT) },
        ));
    };
    let total = u64::from(desc.total_pages);
    let max_chunks = (total >> order.as_u32()) / CHUNK_ENTRIES as u64 + 1;
    let mut area = VmallocArea::default();
    let mut seen_chunks = BTreeSet::new();
    let mut seen_pieces = BTreeSet::new();
    let mut pages = 0u64;
    let mut buf = alloc::boxed::Box::new([0u8; PAGE_BYTES]);
    let (mut chunk, mut chunk_at) = (desc.first, at);
    while !chunk.is_null() {
        if seen_chunks.contains(&chunk.as_u64()) {
            return Err(DecodeError::new(Field::VmallocChunk, chunk_at, DecodeErrorKind::Cycle { target: chunk }));
        }
        if area.chunk_pages.len() as u64 >= max_chunks {
            return Err(DecodeError::new(
                Field::VmallocChunk,
                chunk_at,
                DecodeErrorKind::TooMany { limit: max_chunks },
            ));
        }
        ctx.read_meta_page(Field::VmallocChunk, chunk_at, chunk, &mut buf)?;
        seen_chunks.insert(chunk.as_u64());
        area.chunk_pages.push(chunk);
        let page: &VmallocChunk = zerocopy::transmute_ref!(&*buf);
        for (i, raw) in page.phys.iter().map(|p| p.get()).enumerate() {
            if raw == 0 {
                break;
            }
            let entry_at = abi::field_addr(chunk, offset_of!(VmallocChunk, phys) + i * 8);
            let piece = PhysAddr::new(raw);
            ctx.check_pointer(Field::VmallocPiece, entry_at, piece, order.bytes(), order.bytes())?;
            pages += order.nr_pages();
            if pages > total {
                return Err(DecodeError::new(Field::VmallocPiece, entry_at, DecodeErrorKind::TooMany { limit: total }));
            }
            if !seen_pieces.insert(raw) {
                let block = Block::at(piece, order).ok_or(DecodeError::new(
                    Field::VmallocPiece,
                    entry_at,
                    DecodeErrorKind::Misaligned { value: raw, align: order.bytes() },
                ))?;
                return Err(DecodeError::new(Field::VmallocPiece, entry_at, DecodeErrorKind::Duplicate { block }));
            }
            area.pieces.push(piece);
        }
        chunk_at = chunk;
        chunk = PhysAddr::new(page.next.get());
    }
    if pages != total {
        return Err(DecodeError::new(
            Field::VmallocTotalPages,
            abi::field_addr(at, offset_of!(KhoVmallocDesc, total_pages)),
            DecodeErrorKind::BadValue { found: total, expected: "the number of pages the chunk chain lists" },
        ));
    }
    Ok(area)
}

/// Reads the first `buf.len()` bytes of a decoded area (pieces of `order`, in order).
///
/// # Errors
/// [`DecodeErrorKind::BadValue`] (`VmallocTotalPages`, at `at`) if the area is shorter than `buf`;
/// [`DecodeErrorKind::Unreadable`] (`VmallocPiece`) if memory does not back a piece.
pub fn read_area<M: PhysRead + ?Sized>(
    mem: &M,
    area: &VmallocArea,
    order: Order,
    at: PhysAddr,
    buf: &mut [u8],
) -> Result<(), DecodeError> {
    let piece_bytes = usize::try_from(order.bytes()).unwrap_or(usize::MAX);
    let mut pieces = area.pieces.iter();
    for dst in buf.chunks_mut(piece_bytes) {
        let Some(&piece) = pieces.next() else {
            return Err(DecodeError::new(
                Field::VmallocTotalPages,
                at,
                DecodeErrorKind::BadValue {
                    found: area.pieces.len() as u64,
                    expected: "an area large enough for the data it holds",
                },
            ));
        };
        mem.read_phys(piece, dst).map_err(|e| DecodeError::unreadable(Field::VmallocPiece, e))?;
    }
    Ok(())
}

/// Writes the chunk chain for `pieces` (each `2^order` pages, in area order) in pages from
/// the platform's metadata allocator, and returns the descriptor and the chunk pages, which
/// the caller must preserve as order-0 blocks (Linux does; the next kernel restores them).
/// Unlike Linux, no empty trailing chunk is written when the last one fills exactly.
///
/// # Errors
/// - [`OutgoingError::BadValue`] (`VmallocFlags`) for unknown flag bits, (`VmallocTotalPages`)
///   if the area has more than `u32::MAX` pages, (`VmallocPiece`, found 0) for a NULL piece;
/// - [`OutgoingError::Misaligned`] (`VmallocPiece`) for a piece not aligned to its order (`at`
///   is the piece's index, as an address);
/// - [`OutgoingError::OutOfMemory`], [`OutgoingError::Memory`]: every chunk allocated so far is
///   freed first.
pub fn encode<P: Platform + ?Sized>(
    plat: &P,
    pieces: &[PhysAddr],
    order: Order,
    flags: u16,
) -> Result<(KhoVmalloc, Vec<PhysAddr>), OutgoingError> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(OutgoingError::BadValue {
            what: Field::VmallocFlags,
            at: PhysAddr::new(0),
            found: u64::from(flags),
            expected: "only KHO_VMALLOC_ALLOC (0x1) and KHO_VMALLOC_HUGE_VMAP (0x2)",
        });
    }
    let total_pages = (pieces.len() as u64).checked_mul(order.nr_pages()).and_then(|n| u32::try_from(n).ok()).ok_or(
        OutgoingError::BadValue {
            what: Field::VmallocTotalPages,
            at: PhysAddr::new(0),
            found: pieces.len() as u64,
            expected: "an area of at most u32::MAX pages",
        },
    )?;
    for (i, &p) in pieces.iter().enumerate() {
        let at = PhysAddr::new(i as u64);
        if p.is_null() {
            return Err(OutgoingError::BadValue {
                what: Field::VmallocPiece,
                at,
                found: 0,
                expected: "a non-NULL piece address",
            });
        }
        if !p.is_aligned(order.bytes()) {
            return Err(OutgoingError::Misaligned {
                what: Field::VmallocPiece,
                at,
                value: p.as_u64(),
                align: order.bytes(),
            });
        }
    }
    let mut chunks: Vec<PhysAddr> = Vec::with_capacity(pieces.len().div_ceil(CHUNK_ENTRIES));
    match write_chunks(plat, pieces, &mut chunks) {
        Ok(()) => {
            let first = chunks.first().copied().unwrap_or_default();
            let order_raw = u16::try_from(order.as_u32()).unwrap_or(u16::MAX);
            Ok((KhoVmalloc { first, total_pages, flags, order: order_raw }, chunks))
        }
        Err(e) => {
            for &c in &chunks {
                plat.free_meta_page(c);
            }
            Err(e)
        }
    }
}

fn write_chunks<P: Platform + ?Sized>(
    plat: &P,
    pieces: &[PhysAddr],
    chunks: &mut Vec<PhysAddr>,
) -> Result<(), OutgoingError> {
    for group in pieces.chunks(CHUNK_ENTRIES) {
        let chunk = plat.alloc_meta_page()?;
        chunks.push(chunk);
        if let [.., prev, _] = chunks.as_slice() {
            plat.write_u64(*prev, chunk.as_u64()).map_err(|e| OutgoingError::memory(Field::VmallocChunk, e))?;
        }
        let mut page = VmallocChunk::new_zeroed();
        for (dst, p) in page.phys.iter_mut().zip(group) {
            *dst = p.as_u64().into();
        }
        plat.write_phys(chunk, page.as_bytes()).map_err(|e| OutgoingError::memory(Field::VmallocChunk, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Limits;
    use crate::testing::{SparseMem, TestPlatform};
    use crate::types::PhysRange;

    const GIB: u64 = 1 << 30;

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    fn platform() -> TestPlatform {
        TestPlatform::new(&[range(0, 4 * GIB)], range(GIB, 16 << 20))
    }

    fn pieces(n: u64, order: u32) -> Vec<PhysAddr> {
        (0..n).map(|i| PhysAddr::new(2 * GIB + (i << (order + 12)))).collect()
    }

    fn walk(mem: &SparseMem, desc: &KhoVmalloc, scratch: &[PhysRange]) -> Result<VmallocArea, DecodeError> {
        let ram = [range(0, 4 * GIB)];
        let mut ctx = WalkContext::new(mem, &ram, scratch, Limits::default());
        decode_chain(&mut ctx, desc, PhysAddr::new(0x5000))
    }

    #[test]
    fn descriptor_round_trips_and_checks_flags() {
        let d = KhoVmalloc { first: PhysAddr::new(0x2c_d000), total_pages: 1, flags: FLAG_ALLOC, order: 0 };
        let b = d.to_bytes();
        assert_eq!(b, [0x00, 0xd0, 0x2c, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(KhoVmalloc::from_bytes(&b, PhysAddr::new(0)).unwrap(), d);
        let mut bad = b;
        bad[12] = 0x4;
        assert!(matches!(
            KhoVmalloc::from_bytes(&bad, PhysAddr::new(0x100)),
            Err(DecodeError { field: Field::VmallocFlags, at, kind: DecodeErrorKind::BadValue { found: 4, .. }, .. }) if at == PhysAddr::new(0x10c)
        ));
        assert!(matches!(
            KhoVmalloc::from_bytes(&b[..15], PhysAddr::new(0)),
            Err(DecodeError { field: Field::Blob, kind: DecodeErrorKind::BadValue { found: 15, .. }, .. })
        ));
    }

    #[test]
    fn encode_decode_round_trip_across_chunks() {
        for (n, order) in [(0u64, 0u32), (1, 0), (511, 0), (512, 2), (1500, 1)] {
            let plat = platform();
            let ps = pieces(n, order);
            let (desc, chunks) = encode(&plat, &ps, Order::new(order).unwrap(), FLAG_ALLOC).unwrap();
            assert_eq!(u64::from(desc.total_pages), n << order);
            assert_eq!(chunks.len(), ps.len().div_ceil(CHUNK_ENTRIES));
            let area = walk(&plat.mem, &desc, &[]).unwrap();
            assert_eq!(area.pieces, ps);
            assert_eq!(area.chunk_pages, chunks);
        }
    }

    #[test]
    fn empty_trailing_chunk_is_accepted() {
        let plat = platform();
        let ps = pieces(511, 0);
        let (desc, chunks) = encode(&plat, &ps, Order::ZERO, FLAG_ALLOC).unwrap();
        // Link an empty chunk after the full one, as Linux does.
        plat.mem.write_bytes(chunks[0], &0x30_0000u64.to_le_bytes());
        let area = walk(&plat.mem, &desc, &[]).unwrap();
        assert_eq!(area.chunk_pages, [chunks[0], PhysAddr::new(0x30_0000)]);
    }

    #[test]
    fn allocation_failure_rolls_back() {
        let plat = platform();
        let ps = pieces(1200, 0);
        for n in 0..3 {
            plat.fail_alloc_at(Some(n));
            assert_eq!(encode(&plat, &ps, Order::ZERO, FLAG_ALLOC), Err(OutgoingError::OutOfMemory));
            assert!(plat.live_meta_pages().is_empty());
        }
        plat.fail_alloc_at(None);
    }

    #[test]
    fn encode_refuses_bad_arguments() {
        let plat = platform();
        let e = encode(&plat, &[PhysAddr::new(0x1000)], Order::new(1).unwrap(), 0).unwrap_err();
        assert!(matches!(e, OutgoingError::Misaligned { what: Field::VmallocPiece, .. }), "{e}");
        let e = encode(&plat, &[PhysAddr::new(0)], Order::ZERO, 0).unwrap_err();
        assert!(matches!(e, OutgoingError::BadValue { what: Field::VmallocPiece, found: 0, .. }), "{e}");
        let e = encode(&plat, &[], Order::ZERO, 8).unwrap_err();
        assert!(matches!(e, OutgoingError::BadValue { what: Field::VmallocFlags, .. }), "{e}");
    }

    #[test]
    fn hostile_chains_are_refused() {
        let plat = platform();
        let ps = pieces(3, 0);
        let (desc, chunks) = encode(&plat, &ps, Order::ZERO, FLAG_ALLOC).unwrap();
        let c = chunks[0];

        // Chunk pointing at itself.
        plat.mem.write_bytes(c, &c.as_u64().to_le_bytes());
        let e = walk(&plat.mem, &KhoVmalloc { total_pages: 1000, ..desc }, &[]).unwrap_err();
        assert_eq!(e, DecodeError::new(Field::VmallocChunk, c, DecodeErrorKind::Cycle { target: c }));
        plat.mem.write_bytes(c, &0u64.to_le_bytes());

        // More pages than total_pages.
        let e = walk(&plat.mem, &KhoVmalloc { total_pages: 2, ..desc }, &[]).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::VmallocPiece,
                PhysAddr::new(c.as_u64() + 24),
                DecodeErrorKind::TooMany { limit: 2 }
            )
        );

        // Fewer pages than total_pages.
        let e = walk(&plat.mem, &KhoVmalloc { total_pages: 4, ..desc }, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError { field: Field::VmallocTotalPages, kind: DecodeErrorKind::BadValue { found: 4, .. }, .. }
            ),
            "{e}"
        );

        // Order too large.
        let e = walk(&plat.mem, &KhoVmalloc { order: 41, ..desc }, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError { field: Field::VmallocOrder, kind: DecodeErrorKind::OrderTooLarge { order: 41, .. }, .. }
            ),
            "{e}"
        );

        // Misaligned piece for order 1.
        let e = walk(&plat.mem, &KhoVmalloc { order: 1, total_pages: 6, ..desc }, &[]).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::VmallocPiece, kind: DecodeErrorKind::Misaligned { .. }, .. }),
            "{e}"
        );

        // Piece in scratch.
        let scratch = [range(ps[1].as_u64(), 0x1000)];
        let e = walk(&plat.mem, &desc, &scratch).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::VmallocPiece, kind: DecodeErrorKind::InScratch { .. }, .. }),
            "{e}"
        );

        // Duplicate piece.
        plat.mem.write_bytes(PhysAddr::new(c.as_u64() + 16), &ps[0].as_u64().to_le_bytes());
        let e = walk(&plat.mem, &desc, &[]).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::VmallocPiece, kind: DecodeErrorKind::Duplicate { .. }, .. }),
            "{e}"
        );

        // Chunk outside RAM.
        let e = walk(&plat.mem, &KhoVmalloc { first: PhysAddr::new(8 * GIB), ..desc }, &[]).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::VmallocChunk, at, kind: DecodeErrorKind::OutsideRam { .. }, .. } if at == PhysAddr::new(0x5000))
        );
    }

    #[test]
    fn read_area_spans_pieces() {
        let plat = platform();
        let ps = pieces(2, 0);
        plat.mem.write_bytes(ps[0], &[1u8; 4096]);
        plat.mem.write_bytes(ps[1], &[2u8; 16]);
        let area = VmallocArea { pieces: ps, chunk_pages: Vec::new() };
        let mut buf = [0u8; 4100];
        read_area(&plat.mem, &area, Order::ZERO, PhysAddr::new(0), &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 1) && buf[4096..].iter().all(|&b| b == 2));
        let mut big = alloc::vec![0u8; 3 * 4096];
        assert!(read_area(&plat.mem, &area, Order::ZERO, PhysAddr::new(0), &mut big).is_err());
    }
}
