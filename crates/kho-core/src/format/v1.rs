//! `kho-v1` (Linux 6.16-6.19, spec §1.3): the preserved-memory map is a linked list of
//! one-page chunks. Each chunk has a 16-byte header (`next` chunk address, `order`,
//! `num_elms`) and up to [`CHUNK_CAPACITY`] entries of (`phys_start`, `bitmap` address).
//! A chunk never mixes orders. The bitmap size (512 or 4096 bytes) is not recorded anywhere.

use alloc::collections::BTreeSet;
use core::mem::offset_of;

use alloc::vec::Vec;
use zerocopy::{FromZeros, IntoBytes};

use crate::blockset::BlockSet;
use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::format::abi::{self, BitmapPtr, Chunk, ChunkHeader};
use crate::format::{BitmapBytes, WalkContext};
use crate::platform::{PhysRead, Platform};
use crate::types::{Order, PAGE_BYTES, PAGE_SHIFT, PAGE_SIZE, PFN_LIMIT, PhysAddr};

/// Header bytes of a chunk ([`ChunkHeader`]).
pub const CHUNK_HEADER_BYTES: usize = core::mem::size_of::<ChunkHeader>();
/// Bytes per entry ([`BitmapPtr`]).
pub const ENTRY_BYTES: usize = core::mem::size_of::<BitmapPtr>();
/// Entries per chunk: 255 with 4 KiB pages.
pub const CHUNK_CAPACITY: usize = abi::CHUNK_ENTRIES;

/// One entry to serialize: bitmap of `order` whose bit 0 is the block at `phys_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Order of every block in the bitmap.
    pub order: Order,
    /// Address of the block bit 0 stands for.
    pub phys_start: PhysAddr,
    /// Address of the bitmap.
    pub bitmap: PhysAddr,
}

/// A serialized chunk list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkList {
    /// First chunk (NULL if there are no entries).
    pub first: PhysAddr,
    /// Every chunk page, in list order.
    pub pages: Vec<PhysAddr>,
}

/// Writes `entries` (sorted by order) as a chunk list in pages from the platform. On error,
/// every page taken is given back.
///
/// # Errors
/// [`OutgoingError::OutOfMemory`], or [`OutgoingError::Memory`] for a failed write.
pub fn encode<P: Platform + ?Sized>(plat: &P, entries: &[Entry]) -> Result<ChunkList, OutgoingError> {
    let mut list = ChunkList::default();
    let result = encode_into(plat, entries, &mut list);
    if let Err(e) = result {
        free(plat, &list);
        return Err(e);
    }
    Ok(list)
}

fn encode_into<P: Platform + ?Sized>(plat: &P, entries: &[Entry], list: &mut ChunkList) -> Result<(), OutgoingError> {
    let write = |at: PhysAddr, c: &Chunk| {
        plat.write_phys(at, c.as_bytes()).map_err(|e| OutgoingError::memory(Field::ChunkNext, e))
    };
    let mut page = Chunk::new_zeroed();
    let mut cur: Option<PhysAddr> = None;
    for e in entries {
        let n = page.hdr.num_elms.get() as usize;
        let start_new = match cur {
            Some(_) => page.hdr.order.get() != e.order.as_u32() || n == CHUNK_CAPACITY,
            None => true,
        };
        if start_new {
            let chunk = plat.alloc_meta_page()?;
            list.pages.push(chunk);
            match cur {
                Some(prev) => {
                    page.hdr.next = chunk.as_u64().into();
                    write(prev, &page)?;
                }
                None => list.first = chunk,
            }
            page = Chunk::new_zeroed();
            page.hdr.order = e.order.as_u32().into();
            cur = Some(chunk);
        }
        let n = page.hdr.num_elms.get();
        if let Some(slot) = page.bitmaps.get_mut(n as usize) {
            *slot = BitmapPtr { phys_start: e.phys_start.as_u64().into(), bitmap: e.bitmap.as_u64().into() };
        }
        page.hdr.num_elms = (n + 1).into();
    }
    if let Some(chunk) = cur {
        write(chunk, &page)?;
    }
    Ok(())
}

/// Gives a chunk list's pages back to the platform.
pub fn free<P: Platform + ?Sized>(plat: &P, list: &ChunkList) {
    for &p in &list.pages {
        plat.free_meta_page(p);
    }
}

/// Walks the chunk list at `first` (read from the FDT at `at`) into `out`, checking: every
/// chunk pointer (aligned, in RAM, not in scratch, readable, within the page budget), no
/// cycle, `order` representable, `num_elms` within capacity, `phys_start` aligned to the span
/// of one bitmap and below the 52-bit limit, every bitmap pointer (aligned to its size, in
/// RAM, not in scratch, readable, named by one entry only), and no block recorded twice. A NULL `first` is an empty
/// map. Work is bounded by the page budget.
///
/// # Errors
/// The first violation, as a typed error naming the field and its address.
pub fn decode<M: PhysRead + ?Sized>(
    ctx: &mut WalkContext<'_, M>,
    first: PhysAddr,
    at: PhysAddr,
    bitmap: BitmapBytes,
    out: &mut BlockSet,
) -> Result<(), DecodeError> {
    let mut visited = BTreeSet::new();
    let mut bitmaps = BTreeSet::new();
    let (mut cur, mut at, mut what) = (first, at, Field::PreservedMemoryMap);
    let mut page = [0u8; PAGE_BYTES];
    let mut bm_bytes = alloc::vec![0u8; bitmap.bytes() as usize];
    let mut words = alloc::vec![0u64; bitmap.words()];
    while !cur.is_null() {
        if !visited.insert(cur) {
            return Err(DecodeError::new(what, at, DecodeErrorKind::Cycle { target: cur }));
        }
        ctx.read_meta_page(what, at, cur, &mut page)?;
        let chunk: &Chunk = zerocopy::transmute_ref!(&page);
        let (raw_order, num) = (chunk.hdr.order.get(), chunk.hdr.num_elms.get());
        let field_at = |off: usize| abi::field_addr(cur, off);
        let order = Order::new(raw_order).ok_or(DecodeError::new(
            Field::ChunkOrder,
            field_at(offset_of!(ChunkHeader, order)),
            DecodeErrorKind::OrderTooLarge { order: u64::from(raw_order), max: u32::from(crate::types::ORDER_LIMIT) },
        ))?;
        if num as usize > CHUNK_CAPACITY {
            return Err(DecodeError::new(
                Field::ChunkNumElms,
                field_at(offset_of!(ChunkHeader, num_elms)),
                DecodeErrorKind::BadValue {
                    found: u64::from(num),
                    expected: "at most 255 entries (a chunk's capacity)",
                },
            ));
        }
        // Bytes one bitmap spans; alignment of phys_start. At huge orders it passes 2^64 and
        // only phys_start 0 is possible.
        let span_shift = bitmap.bits().trailing_zeros() + order.as_u32() + PAGE_SHIFT;
        for (i, entry) in chunk.bitmaps.iter().take(num as usize).enumerate() {
            let off = offset_of!(Chunk, bitmaps) + i * ENTRY_BYTES;
            let entry_at = field_at(off);
            let phys_start = entry.phys_start.get();
            let span_mask = if span_shift >= 64 { u64::MAX } else { (1u64 << span_shift) - 1 };
            if phys_start & span_mask != 0 {
                return Err(DecodeError::new(
                    Field::ChunkPhysStart,
                    entry_at,
                    DecodeErrorKind::Misaligned { value: phys_start, align: span_mask.wrapping_add(1) },
                ));
            }
            if phys_start >> PAGE_SHIFT >= PFN_LIMIT {
                return Err(DecodeError::new(
                    Field::ChunkPhysStart,
                    entry_at,
                    DecodeErrorKind::BadValue {
                        found: phys_start,
                        expected: "an address below the 52-bit physical limit",
                    },
                ));
            }
            let bm = PhysAddr::new(entry.bitmap.get());
            let bm_at = field_at(off + offset_of!(BitmapPtr, bitmap));
            // Linux allocates one bitmap per entry. A bitmap named by many entries would let a
            // small map describe unbounded memory (one alternating bitmap behind 2^16 entries
            // per MiB of chunks is 2^27 ranges): refused, so work stays bounded by metadata.
            if !bitmaps.insert(bm.as_u64()) {
                return Err(DecodeError::new(
                    Field::ChunkBitmap,
                    bm_at,
                    DecodeErrorKind::BadValue { found: bm.as_u64(), expected: "a bitmap no other entry names" },
                ));
            }
            ctx.read_meta(Field::ChunkBitmap, bm_at, bm, &mut bm_bytes, bitmap.bytes())?;
            for (w, b) in words.iter_mut().zip(bm_bytes.chunks_exact(8)) {
                *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            out.insert_words(order, phys_start >> PAGE_SHIFT, &words, bm)?;
        }
        what = Field::ChunkNext;
        at = cur;
        cur = PhysAddr::new(chunk.hdr.next.get());
    }
    Ok(())
}

const _: () = assert!(CHUNK_HEADER_BYTES + CHUNK_CAPACITY * ENTRY_BYTES == PAGE_BYTES);
const _: () = assert!(PAGE_SIZE as usize == PAGE_BYTES);
