//! The outgoing tracker: per order, a sparse map from bitmap index to a bitmap of
//! `bitmap_bytes * 8` blocks (the seed's two-level design), with the bitmaps themselves in
//! metadata pages the platform provides, so finalize only has to link them into chunks.
//!
//! A bitmap is allocated on first use and freed when unpreserve empties it. 512-byte bitmaps
//! are packed eight to a page (as Linux 6.16's kmalloc-512 did); a page is returned to the
//! platform when its last bitmap is freed.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::blockset::BlockSet;
use crate::error::{Field, OutgoingError, Result};
use crate::format::BitmapBytes;
use crate::platform::{MetaAlloc, PhysRead, PhysWrite};
use crate::types::{Block, ORDER_LIMIT, Order, PAGE_SIZE, Pfn, PhysAddr};

/// Where one bitmap of the tracker lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapRef {
    /// Order of the blocks it tracks.
    pub order: Order,
    /// Bitmap index: it covers blocks `index * bits .. (index + 1) * bits` of its order.
    pub index: u64,
    /// Physical address of the bitmap.
    pub phys: PhysAddr,
}

/// Bitmap index -> bitmap address for one order, in two levels: 512-slot tables, found by
/// table number. Tables below [`DIRECT_TABLES`] (32 TiB of order-0 frames) sit in an array
/// indexed directly, so a preserve costs one array index and one slot read; higher ones (a
/// sparse or hostile address) in a sorted map. Iteration stays sorted, which serialization
/// needs.
#[derive(Debug, Default)]
struct OrderIndex {
    direct: Vec<Option<Table>>,
    far: BTreeMap<u64, Table>,
    len: usize,
}

type Table = (u32, Box<[u64; TABLE_SLOTS]>);

const TABLE_SLOTS: usize = 512;
/// Tables held in the directly indexed array (at most 64 KiB of pointers per order).
const DIRECT_TABLES: u64 = 4096;

impl OrderIndex {
    fn split(index: u64) -> (u64, usize) {
        #[allow(clippy::cast_possible_truncation)] // < TABLE_SLOTS
        (index / TABLE_SLOTS as u64, (index % TABLE_SLOTS as u64) as usize)
    }
    #[inline]
    fn table(&self, t: u64) -> Option<&Table> {
        if t < DIRECT_TABLES {
            #[allow(clippy::cast_possible_truncation)] // < DIRECT_TABLES
            self.direct.get(t as usize)?.as_ref()
        } else {
            self.far.get(&t)
        }
    }
    fn table_mut(&mut self, t: u64) -> Option<&mut Table> {
        if t < DIRECT_TABLES {
            #[allow(clippy::cast_possible_truncation)] // < DIRECT_TABLES
            self.direct.get_mut(t as usize)?.as_mut()
        } else {
            self.far.get_mut(&t)
        }
    }
    fn remove_table(&mut self, t: u64) {
        if t < DIRECT_TABLES {
            #[allow(clippy::cast_possible_truncation)] // < DIRECT_TABLES
            if let Some(slot) = self.direct.get_mut(t as usize) {
                *slot = None;
            }
            while matches!(self.direct.last(), Some(None)) {
                self.direct.pop();
            }
        } else {
            self.far.remove(&t);
        }
    }
    #[inline]
    fn get(&self, index: u64) -> Option<PhysAddr> {
        let (t, i) = Self::split(index);
        let raw = self.table(t)?.1[i];
        (raw != 0).then_some(PhysAddr::new(raw))
    }
    fn insert(&mut self, index: u64, bitmap: PhysAddr) {
        let (t, i) = Self::split(index);
        let new = || (0, Box::new([0; TABLE_SLOTS]));
        let (used, table) = if t < DIRECT_TABLES {
            #[allow(clippy::cast_possible_truncation)] // < DIRECT_TABLES
            let t = t as usize;
            if self.direct.len() <= t {
                self.direct.resize_with(t + 1, || None);
            }
            self.direct[t].get_or_insert_with(new)
        } else {
            self.far.entry(t).or_insert_with(new)
        };
        *used += 1;
        table[i] = bitmap.as_u64();
        self.len += 1;
    }
    fn remove(&mut self, index: u64) {
        let (t, i) = Self::split(index);
        let mut empty = false;
        if let Some((used, table)) = self.table_mut(t) {
            table[i] = 0;
            *used -= 1;
            empty = *used == 0;
            self.len -= 1;
        }
        if empty {
            self.remove_table(t);
        }
    }
    /// Every table with number in `tlo..=thi`, ascending.
    fn tables(&self, tlo: u64, thi: u64) -> impl Iterator<Item = (u64, &Table)> + '_ {
        let dend = (self.direct.len() as u64).min(thi.saturating_add(1));
        let direct = (tlo.min(dend)..dend).filter_map(move |t| {
            #[allow(clippy::cast_possible_truncation)] // < direct.len()
            self.direct[t as usize].as_ref().map(|x| (t, x))
        });
        let flo = tlo.max(DIRECT_TABLES);
        let far = (thi >= flo).then(|| self.far.range(flo..=thi)).into_iter().flatten();
        direct.chain(far.map(|(&t, x)| (t, x)))
    }
    /// Entries with index in `lo..=hi`, ascending.
    fn range(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, PhysAddr)> + '_ {
        let (tlo, thi) = (lo / TABLE_SLOTS as u64, hi / TABLE_SLOTS as u64);
        self.tables(tlo, thi).flat_map(move |(t, (_, table))| {
            table.iter().enumerate().filter_map(move |(i, &raw)| {
                let index = t * TABLE_SLOTS as u64 + i as u64;
                (raw != 0 && (lo..=hi).contains(&index)).then_some((index, PhysAddr::new(raw)))
            })
        })
    }
    fn iter(&self) -> impl Iterator<Item = (u64, PhysAddr)> + '_ {
        self.range(0, u64::MAX)
    }
}

#[derive(Debug)]
pub(crate) struct Tracker {
    bitmap: BitmapBytes,
    /// Indexed by order; `present` has bit `o` set while order `o` has any bitmap.
    orders: Vec<OrderIndex>,
    present: u64,
    free_slots: Vec<PhysAddr>,
    page_use: BTreeMap<u64, u32>,
    /// Lowest and one past the highest bitmap page ever used: a block outside needs no
    /// look-up in `page_use`.
    page_bounds: (u64, u64),
    blocks: u64,
    bytes: u64,
}

fn platform_err(e: crate::platform::MemError) -> OutgoingError {
    OutgoingError::memory(Field::ChunkBitmap, e)
}

impl Tracker {
    pub(crate) fn new(bitmap: BitmapBytes) -> Self {
        let orders = (0..=ORDER_LIMIT).map(|_| OrderIndex::default()).collect();
        Self {
            bitmap,
            orders,
            present: 0,
            free_slots: Vec::new(),
            page_use: BTreeMap::new(),
            page_bounds: (u64::MAX, 0),
            blocks: 0,
            bytes: 0,
        }
    }

    pub(crate) fn bitmap_bytes(&self) -> BitmapBytes {
        self.bitmap
    }

    /// (bitmap index, word offset in bytes, mask) of a block.
    fn locate(&self, block: Block) -> (u64, u64, u64) {
        let n = block.pfn().as_u64() >> block.order().as_u32();
        let bits = self.bitmap.bits();
        let bit = n % bits;
        (n / bits, (bit / 64) * 8, 1u64 << (bit % 64))
    }

    fn slot(&self, order: Order, index: u64) -> Option<PhysAddr> {
        self.orders.get(order.as_u32() as usize)?.get(index)
    }

    pub(crate) fn contains<M: PhysRead + ?Sized>(&self, mem: &M, block: Block) -> Result<bool, OutgoingError> {
        let (index, off, mask) = self.locate(block);
        let Some(bm) = self.slot(block.order(), index) else { return Ok(false) };
        let w = mem.read_u64(PhysAddr::new(bm.as_u64() + off)).map_err(platform_err)?;
        Ok(w & mask != 0)
    }

    /// Any block of `order` inside frames `[start, end)` (both aligned to `order`)?
    fn any_in<M: PhysRead + ?Sized>(
        &self,
        mem: &M,
        order: Order,
        start: u64,
        end: u64,
    ) -> Result<Option<Block>, OutgoingError> {
        let Some(units) = self.orders.get(order.as_u32() as usize) else { return Ok(None) };
        let bits = self.bitmap.bits();
        let (first, last) = (start >> order.as_u32(), (end >> order.as_u32()).saturating_sub(1));
        for (index, bm) in units.range(first / bits, last / bits) {
            let lo = first.max(index * bits) - index * bits;
            let hi = last.min(index * bits + bits - 1) - index * bits;
            for word in lo / 64..=hi / 64 {
                let mut w = mem.read_u64(PhysAddr::new(bm.as_u64() + word * 8)).map_err(platform_err)?;
                let (wlo, whi) = (word * 64, word * 64 + 63);
                if lo > wlo {
                    w &= !0u64 << (lo - wlo);
                }
                if hi < whi {
                    w &= !0u64 >> (whi - hi);
                }
                if w != 0 {
                    let n = index * bits + word * 64 + u64::from(w.trailing_zeros());
                    let pfn = Pfn::new(n << order.as_u32()).expect("tracked blocks are in range");
                    return Ok(Block::new(pfn, order));
                }
            }
        }
        Ok(None)
    }

    /// The tracked block that overlaps `block`, if any (exact duplicates included).
    pub(crate) fn overlapping<M: PhysRead + ?Sized>(
        &self,
        mem: &M,
        block: Block,
    ) -> Result<Option<Block>, OutgoingError> {
        let (s, e) = (block.pfn().as_u64(), block.end_pfn());
        for order in self.present_orders() {
            if order >= block.order() {
                let start = s & !(order.nr_pages() - 1);
                let candidate = Block::new(Pfn::new(start).expect("in range"), order).expect("aligned");
                if self.contains(mem, candidate)? {
                    return Ok(Some(candidate));
                }
            } else if let Some(b) = self.any_in(mem, order, s, e)? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    fn alloc_slot<P: PhysWrite + MetaAlloc + ?Sized>(
        &mut self,
        plat: &P,
        scratch: &[crate::types::PhysRange],
    ) -> Result<PhysAddr, OutgoingError> {
        if let Some(s) = self.free_slots.pop() {
            *self.page_use.entry(s.as_u64() & !(PAGE_SIZE - 1)).or_default() += 1;
            return Ok(s);
        }
        let page = plat.alloc_meta_page()?;
        if let Err(e) = check_meta_page(scratch, Field::ChunkBitmap, page) {
            plat.free_meta_page(page);
            return Err(e);
        }
        let per_page = PAGE_SIZE / self.bitmap.bytes();
        for i in (1..per_page).rev() {
            self.free_slots.push(PhysAddr::new(page.as_u64() + i * self.bitmap.bytes()));
        }
        self.page_use.insert(page.as_u64(), 1);
        self.page_bounds = (self.page_bounds.0.min(page.as_u64()), self.page_bounds.1.max(page.as_u64() + PAGE_SIZE));
        Ok(page)
    }

    /// Returns an all-zero slot to the free list (its page to the platform when unused).
    fn release_slot<P: MetaAlloc + ?Sized>(&mut self, plat: &P, slot: PhysAddr) {
        let page = slot.as_u64() & !(PAGE_SIZE - 1);
        let used = self.page_use.get_mut(&page).expect("slot belongs to a tracked page");
        *used -= 1;
        if *used == 0 {
            self.page_use.remove(&page);
            self.free_slots.retain(|s| s.as_u64() & !(PAGE_SIZE - 1) != page);
            plat.free_meta_page(PhysAddr::new(page));
        } else {
            self.free_slots.push(slot);
        }
    }

    /// Sets a block's bit (the caller checked overlap and bounds).
    pub(crate) fn insert<P: PhysWrite + MetaAlloc + ?Sized>(
        &mut self,
        plat: &P,
        scratch: &[crate::types::PhysRange],
        block: Block,
    ) -> Result<(), OutgoingError> {
        let (index, off, mask) = self.locate(block);
        let (bm, fresh) = match self.slot(block.order(), index) {
            Some(bm) => (bm, false),
            None => (self.alloc_slot(plat, scratch)?, true),
        };
        let addr = PhysAddr::new(bm.as_u64() + off);
        let set = plat.read_u64(addr).and_then(|w| plat.write_u64(addr, w | mask));
        if let Err(e) = set {
            if fresh {
                // The slot is still all zero: give it back without writing to it.
                self.release_slot(plat, bm);
            }
            return Err(platform_err(e));
        }
        if fresh {
            let o = block.order().as_u32() as usize;
            if let Some(units) = self.orders.get_mut(o) {
                units.insert(index, bm);
                self.present |= 1 << o;
            }
        }
        self.blocks += 1;
        self.bytes += block.order().bytes();
        Ok(())
    }

    /// Clears a block's bit; frees the bitmap when it becomes empty.
    pub(crate) fn remove<P: PhysWrite + MetaAlloc + ?Sized>(
        &mut self,
        plat: &P,
        block: Block,
    ) -> Result<bool, OutgoingError> {
        let (index, off, mask) = self.locate(block);
        let Some(bm) = self.slot(block.order(), index) else { return Ok(false) };
        let addr = PhysAddr::new(bm.as_u64() + off);
        let w = plat.read_u64(addr).map_err(platform_err)?;
        if w & mask == 0 {
            return Ok(false);
        }
        plat.write_u64(addr, w & !mask).map_err(platform_err)?;
        self.blocks -= 1;
        self.bytes -= block.order().bytes();
        if w & !mask == 0 && self.bitmap_is_empty(plat, bm)? {
            let o = block.order().as_u32() as usize;
            if let Some(units) = self.orders.get_mut(o) {
                units.remove(index);
                if units.len == 0 {
                    self.present &= !(1 << o);
                }
            }
            // Checked all zero above: no write needed to recycle it.
            self.release_slot(plat, bm);
        }
        Ok(true)
    }

    fn bitmap_is_empty<M: PhysRead + ?Sized>(&self, mem: &M, bm: PhysAddr) -> Result<bool, OutgoingError> {
        let mut buf = [0u8; 512];
        for off in (0..self.bitmap.bytes()).step_by(512) {
            mem.read_phys(PhysAddr::new(bm.as_u64() + off), &mut buf).map_err(platform_err)?;
            if buf.iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every bitmap, ascending by order then index: what finalize links into chunks.
    pub(crate) fn bitmaps(&self) -> impl Iterator<Item = BitmapRef> + '_ {
        self.present_orders().flat_map(|order| {
            let units = &self.orders[order.as_u32() as usize];
            units.iter().map(move |(index, phys)| BitmapRef { order, index, phys })
        })
    }

    /// Copies the tracked blocks into a [`BlockSet`].
    pub(crate) fn snapshot<M: PhysRead + ?Sized>(&self, mem: &M) -> Result<BlockSet, OutgoingError> {
        let mut set = BlockSet::new();
        let mut buf = alloc::vec![0u8; self.bitmap.bytes() as usize];
        let mut words = alloc::vec![0u64; self.bitmap.words()];
        for r in self.bitmaps() {
            mem.read_phys(r.phys, &mut buf).map_err(platform_err)?;
            for (w, b) in words.iter_mut().zip(buf.chunks_exact(8)) {
                *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            let base = (r.index * self.bitmap.bits()) << r.order.as_u32();
            set.insert_words(r.order, base, &words, r.phys)?;
        }
        Ok(set)
    }

    /// Orders that have at least one bitmap, ascending.
    fn present_orders(&self) -> impl Iterator<Item = Order> + '_ {
        let mut bits = self.present;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let o = bits.trailing_zeros();
            bits &= bits - 1;
            Order::new(o)
        })
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Pages holding bitmaps.
    pub(crate) fn bitmap_pages(&self) -> BTreeSet<u64> {
        self.page_use.keys().copied().collect()
    }
    /// The first bitmap page inside `[start, end)`, if any.
    pub(crate) fn bitmap_page_in(&self, start: u64, end: u64) -> Option<u64> {
        if end <= self.page_bounds.0 || start >= self.page_bounds.1 {
            return None;
        }
        self.page_use.range(start..end).next().map(|(&p, _)| p)
    }
    /// Number of pages holding bitmaps.
    pub(crate) fn bitmap_page_count(&self) -> usize {
        self.page_use.len()
    }
    pub(crate) fn bitmap_count(&self) -> usize {
        self.orders.iter().map(|o| o.len).sum()
    }
}

/// Metadata must live outside scratch: the next kernel allocates from scratch before it has
/// read the metadata (Linux 6.18 added the same check after KFENCE put bitmaps there).
pub(crate) fn check_meta_page(
    scratch: &[crate::types::PhysRange],
    what: Field,
    page: PhysAddr,
) -> Result<(), OutgoingError> {
    let range = crate::types::PhysRange::new(page, PAGE_SIZE).ok_or(OutgoingError::BadValue {
        what,
        at: page,
        found: page.as_u64(),
        expected: "a page below 2^64",
    })?;
    Ok(crate::format::check_not_in_scratch(scratch, what, page, range)?)
}
