//! A set of preserved blocks, stored the way the wire formats store them: per order, a sparse
//! map from unit index to a bitmap of [`UNIT_BITS`] blocks.
//!
//! This is the incoming side's index (restore looks a block up in O(log n) and the set costs
//! one bit per possible block, not a struct per page), the sink every decoder writes into, and
//! the input of the encoders. One unit is a 4096-byte bitmap: exactly one kho-v4 radix leaf, or
//! one Linux 6.18 kho-v1 bitmap, or eight 6.16 ones.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::error::{DecodeError, DecodeErrorKind, Field, Result};
use crate::types::{Block, ORDER_LIMIT, Order, PFN_LIMIT, Pfn, PhysAddr, PhysRange};

/// Bits (blocks) per unit bitmap.
pub const UNIT_BITS: u64 = 32768;
/// `u64` words per unit bitmap.
pub const UNIT_WORDS: usize = (UNIT_BITS / 64) as usize;

type Unit = Box<[u64; UNIT_WORDS]>;

fn new_unit() -> Unit {
    Box::new([0u64; UNIT_WORDS])
}

/// A set of naturally aligned blocks of any order (orders are independent: overlap between
/// orders is detected by [`BlockSet::coalesced_ranges`], not prevented on insert).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BlockSet {
    /// Per order present: its units and how many blocks they hold (the one count kept; the
    /// set's length is their sum), so reports need no pass over the bitmaps.
    orders: BTreeMap<Order, OrderUnits>,
}

/// The units of one order and the number of blocks set in them.
#[derive(Clone, Default, PartialEq, Eq)]
struct OrderUnits {
    units: BTreeMap<u64, Unit>,
    count: u64,
}

impl core::fmt::Debug for BlockSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockSet").field("blocks", &self.len()).finish_non_exhaustive()
    }
}

/// Position of a block: (unit index, word, bit mask).
fn locate(block: Block) -> (u64, usize, u64) {
    let n = block.pfn().as_u64() >> block.order().as_u32();
    #[allow(clippy::cast_possible_truncation)] // < UNIT_WORDS
    let word = ((n % UNIT_BITS) / 64) as usize;
    (n / UNIT_BITS, word, 1u64 << (n % 64))
}

/// One run of consecutive blocks of one order: `[start, end)` in frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First frame.
    pub start: u64,
    /// One past the last frame.
    pub end: u64,
    /// Order of the blocks in the run.
    pub order: Order,
}

impl BlockSet {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of blocks.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.orders.values().map(|o| o.count).sum()
    }

    /// True if the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Adds a block; returns false if it was already present.
    pub fn insert(&mut self, block: Block) -> bool {
        let (unit, word, mask) = locate(block);
        let o = self.orders.entry(block.order()).or_default();
        let w = &mut o.units.entry(unit).or_insert_with(new_unit)[word];
        if *w & mask != 0 {
            return false;
        }
        *w |= mask;
        o.count += 1;
        true
    }

    /// Removes a block; returns false if it was absent. Empty units are freed.
    pub fn remove(&mut self, block: Block) -> bool {
        let (unit, word, mask) = locate(block);
        let order = block.order();
        let Some(o) = self.orders.get_mut(&order) else { return false };
        let Some(u) = o.units.get_mut(&unit) else { return false };
        if u[word] & mask == 0 {
            return false;
        }
        u[word] &= !mask;
        o.count -= 1;
        // Only a word that just became empty can make the unit empty: restoring a dense
        // unit in order scans it once per 64 blocks, not once per block.
        if u[word] == 0 && u.iter().all(|&w| w == 0) {
            o.units.remove(&unit);
        }
        if o.count == 0 {
            self.orders.remove(&order);
        }
        true
    }

    /// True if exactly this block is in the set.
    #[must_use]
    pub fn contains(&self, block: Block) -> bool {
        let (unit, word, mask) = locate(block);
        self.orders.get(&block.order()).and_then(|o| o.units.get(&unit)).is_some_and(|u| u[word] & mask != 0)
    }

    /// The orders present, ascending.
    pub fn orders(&self) -> impl Iterator<Item = Order> + '_ {
        self.orders.keys().copied()
    }

    /// Number of blocks of each order present, ascending by order.
    #[must_use]
    pub fn count_by_order(&self) -> Vec<(Order, u64)> {
        self.orders.iter().map(|(&o, u)| (o, u.count)).collect()
    }

    /// Total bytes covered by the blocks (saturating).
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.count_by_order().iter().fold(0u64, |acc, &(o, n)| acc.saturating_add(n.saturating_mul(o.bytes())))
    }

    /// The bitmaps of one order: `(first frame of the unit, words)`, ascending.
    pub fn units(&self, order: Order) -> impl Iterator<Item = (u64, &[u64; UNIT_WORDS])> + '_ {
        let shift = order.as_u32();
        self.orders
            .get(&order)
            .into_iter()
            .flat_map(move |o| o.units.iter().map(move |(&i, u)| ((i * UNIT_BITS) << shift, &**u)))
    }

    /// The lowest block of `order`, found a word at a time.
    #[must_use]
    pub fn first_block(&self, order: Order) -> Option<Block> {
        let (base, words) = self.units(order).next()?;
        let (wi, w) = words.iter().enumerate().find(|(_, w)| **w != 0)?;
        let n = (wi as u64) * 64 + u64::from(w.trailing_zeros());
        Block::new(Pfn::new(base + (n << order.as_u32()))?, order)
    }

    /// Every block, ascending by order and then by address.
    pub fn iter(&self) -> impl Iterator<Item = Block> + '_ {
        self.orders().flat_map(move |order| {
            self.units(order).flat_map(move |(base, words)| {
                words.iter().enumerate().flat_map(move |(wi, &w)| {
                    BitIter(w).filter_map(move |bit| {
                        let n = (wi as u64) * 64 + u64::from(bit);
                        Block::new(Pfn::new(base + (n << order.as_u32()))?, order)
                    })
                })
            })
        })
    }

    /// Every block sorted by address (blocks of different orders interleaved).
    #[must_use]
    pub fn sorted_by_address(&self) -> Vec<Block> {
        let mut v: Vec<Block> = self.iter().collect();
        v.sort_unstable_by_key(|b| (b.pfn(), b.order()));
        v
    }

    /// The block of any order that starts at `pfn`, if exactly one does (overlap-free sets
    /// have at most one).
    #[must_use]
    pub fn block_starting_at(&self, pfn: Pfn) -> Option<Block> {
        self.orders().filter(|&o| pfn.is_aligned_to(o)).filter_map(|o| Block::new(pfn, o)).find(|&b| self.contains(b))
    }

    /// The block of any order that contains `pfn`, if any.
    #[must_use]
    pub fn block_containing(&self, pfn: Pfn) -> Option<Block> {
        self.orders()
            .filter_map(|o| {
                let start = pfn.as_u64() & !(o.nr_pages() - 1);
                Block::new(Pfn::new(start)?, o)
            })
            .find(|&b| self.contains(b))
    }

    /// ORs a decoded bitmap into the set. `words[i]` bit `b` stands for the block of `order` at
    /// frame `base_pfn + ((64*i + b) << order)`. `base_pfn` must be aligned to `64 << order`
    /// (every wire format guarantees it; decoders check it before calling).
    ///
    /// # Errors
    /// [`DecodeErrorKind::Duplicate`] if a block was already present (a duplicated bitmap), and
    /// [`DecodeErrorKind::BadValue`] for blocks past the addressable range; `at` is where the bitmap
    /// was read, for the message.
    pub fn insert_words(
        &mut self,
        order: Order,
        base_pfn: u64,
        words: &[u64],
        at: PhysAddr,
    ) -> Result<(), DecodeError> {
        let shift = order.as_u32();
        let first = base_pfn >> shift;
        debug_assert_eq!(first % 64, 0, "decoders align bitmap bases");
        let Some(last_word) = words.iter().rposition(|&w| w != 0) else { return Ok(()) };
        let top_bit = 63 - u64::from(words[last_word].leading_zeros());
        let last_block = first + (last_word as u64) * 64 + top_bit;
        if last_block >= PFN_LIMIT >> shift {
            return Err(DecodeError::new(
                Field::Block,
                at,
                DecodeErrorKind::BadValue {
                    found: last_block.saturating_mul(order.bytes()),
                    expected: "a block below the 52-bit physical address limit",
                },
            ));
        }
        let o = self.orders.entry(order).or_default();
        let mut added = 0u64;
        let mut i = 0usize;
        // One map lookup per unit, then plain word ORs: decoders hand in 64 to 512 words.
        while i < words.len() {
            let n = first + (i as u64) * 64;
            #[allow(clippy::cast_possible_truncation)] // < UNIT_WORDS
            let slot0 = ((n % UNIT_BITS) / 64) as usize;
            let take = (UNIT_WORDS - slot0).min(words.len() - i);
            let chunk = &words[i..i + take];
            if chunk.iter().any(|&w| w != 0) {
                let unit = o.units.entry(n / UNIT_BITS).or_insert_with(new_unit);
                for (j, (&w, slot)) in chunk.iter().zip(&mut unit[slot0..slot0 + take]).enumerate() {
                    let dup = *slot & w;
                    if dup != 0 {
                        let pfn = (n + (j as u64) * 64 + u64::from(dup.trailing_zeros())) << shift;
                        let block = Pfn::new(pfn).and_then(|p| Block::new(p, order)).expect("checked above");
                        o.count += added;
                        return Err(DecodeError::new(Field::Block, at, DecodeErrorKind::Duplicate { block }));
                    }
                    *slot |= w;
                    added += u64::from(w.count_ones());
                }
            }
            i += take;
        }
        o.count += added;
        if o.count == 0 {
            self.orders.remove(&order);
        }
        Ok(())
    }

    /// Runs of adjacent blocks of each order, found a word at a time, sorted by start.
    #[must_use]
    pub fn runs(&self) -> Vec<Run> {
        let mut out = Vec::new();
        for order in self.orders() {
            let shift = order.as_u32();
            let mut cur: Option<Run> = None;
            for (base, words) in self.units(order) {
                let first = base >> shift;
                // A full unit is one run of 32768 blocks (dense memory: 128 MiB at order 0).
                if words.iter().all(|&w| w == u64::MAX) {
                    extend_run(&mut cur, &mut out, first << shift, (first + UNIT_BITS) << shift, order);
                    continue;
                }
                for (wi, &w0) in words.iter().enumerate() {
                    let mut w = w0;
                    let mut bit = 0u32;
                    while w != 0 {
                        let skip = w.trailing_zeros();
                        bit += skip;
                        w = if skip == 64 { 0 } else { w >> skip };
                        let ones = w.trailing_ones();
                        let n = first + (wi as u64) * 64 + u64::from(bit);
                        extend_run(&mut cur, &mut out, n << shift, (n + u64::from(ones)) << shift, order);
                        bit += ones;
                        w = if ones == 64 { 0 } else { w >> ones };
                    }
                }
            }
            if let Some(r) = cur {
                out.push(r);
            }
        }
        out.sort_unstable_by_key(|r| (r.start, r.order));
        out
    }

    /// The blocks as one sorted list of disjoint, coalesced physical ranges: what the next
    /// kernel reserves. Cost is linear in the number of runs, not in pages.
    ///
    /// # Errors
    /// [`DecodeErrorKind::Overlap`] naming two blocks of different orders that overlap.
    pub fn coalesced_ranges(&self) -> Result<Vec<PhysRange>, DecodeError> {
        self.coalesced().collect()
    }

    /// The same ranges as [`BlockSet::coalesced_ranges`], found lazily in address order: each
    /// order's runs are read a word at a time from its bitmaps and the (at most
    /// [`MAX_ORDERS`]) per-order streams are merged by start address. The state is one cursor
    /// per order present, never a list of runs, so memory does not grow with the set.
    ///
    /// Yields `Err` ([`DecodeErrorKind::Overlap`], exactly as `coalesced_ranges`) at the first
    /// overlap, then stops.
    #[must_use]
    pub fn coalesced(&self) -> CoalescedRanges<'_> {
        let mut cursors = Vec::with_capacity(self.orders.len());
        for (&order, per_order) in &self.orders {
            let mut runs = OrderRuns {
                order,
                units: per_order.units.iter(),
                words: None,
                first: 0,
                wi: 0,
                w: 0,
                bit: 0,
                cur: None,
            };
            let head = runs.next();
            cursors.push((head, runs));
        }
        CoalescedRanges { cursors, prev: None, pending: None, failed: false }
    }
}

/// Most distinct orders a set can hold (orders `0..=ORDER_LIMIT`): the bound on the cursors a
/// [`CoalescedRanges`] keeps.
pub const MAX_ORDERS: usize = ORDER_LIMIT as usize + 1;

/// The runs of one order, ascending, read lazily from its bitmaps.
#[derive(Debug, Clone)]
pub struct OrderRuns<'a> {
    order: Order,
    units: alloc::collections::btree_map::Iter<'a, u64, Unit>,
    /// The unit being scanned, if any.
    words: Option<&'a [u64; UNIT_WORDS]>,
    /// First block index of that unit.
    first: u64,
    /// Index of the word in `w`.
    wi: usize,
    /// The bits of word `wi` not yet consumed, shifted down by `bit`.
    w: u64,
    bit: u32,
    /// The run being extended.
    cur: Option<Run>,
}

impl OrderRuns<'_> {
    /// The next piece of consecutive blocks (frames `[start, end)`), within one word or one
    /// full unit.
    fn next_piece(&mut self) -> Option<(u64, u64)> {
        let shift = self.order.as_u32();
        loop {
            if let Some(words) = self.words {
                if self.w == 0 {
                    self.wi += 1;
                    if self.wi >= UNIT_WORDS {
                        self.words = None;
                    } else {
                        self.w = words[self.wi];
                        self.bit = 0;
                    }
                    continue;
                }
                let skip = self.w.trailing_zeros();
                self.bit += skip;
                self.w >>= skip; // skip < 64: w != 0
                let ones = self.w.trailing_ones();
                let n = self.first + (self.wi as u64) * 64 + u64::from(self.bit);
                self.bit += ones;
                self.w = if ones == 64 { 0 } else { self.w >> ones };
                return Some((n << shift, (n + u64::from(ones)) << shift));
            }
            let (&i, u) = self.units.next()?;
            let first = i * UNIT_BITS;
            // A full unit is one piece of 32768 blocks (dense memory: 128 MiB at order 0).
            if u.iter().all(|&w| w == u64::MAX) {
                return Some((first << shift, (first + UNIT_BITS) << shift));
            }
            self.words = Some(&**u);
            self.first = first;
            self.wi = 0;
            self.w = u[0];
            self.bit = 0;
        }
    }
}

impl Iterator for OrderRuns<'_> {
    type Item = Run;
    fn next(&mut self) -> Option<Run> {
        loop {
            let Some((start, end)) = self.next_piece() else { return self.cur.take() };
            match &mut self.cur {
                Some(r) if r.end == start => r.end = end,
                _ => {
                    if let Some(done) = self.cur.replace(Run { start, end, order: self.order }) {
                        return Some(done);
                    }
                }
            }
        }
    }
}

/// The lazy merge behind [`BlockSet::coalesced`]: one [`OrderRuns`] cursor (and its next run)
/// per order present, at most [`MAX_ORDERS`], plus the range being coalesced.
#[derive(Debug, Clone)]
pub struct CoalescedRanges<'a> {
    cursors: Vec<(Option<Run>, OrderRuns<'a>)>,
    prev: Option<Run>,
    pending: Option<PhysRange>,
    failed: bool,
}

impl CoalescedRanges<'_> {
    /// Number of per-order cursors: the whole state, apart from fixed-size fields.
    #[must_use]
    pub fn cursors(&self) -> usize {
        self.cursors.len()
    }

    /// The run with the lowest `(start, order)` across orders (cursors are in ascending order,
    /// so a strict `<` on start breaks ties by order, like sorting by `(start, order)`).
    fn pop_min(&mut self) -> Option<Run> {
        let mut best: Option<(usize, u64)> = None;
        for (i, (head, _)) in self.cursors.iter().enumerate() {
            if let Some(r) = head
                && best.is_none_or(|(_, s)| r.start < s)
            {
                best = Some((i, r.start));
            }
        }
        let (i, _) = best?;
        let (head, runs) = &mut self.cursors[i];
        let r = head.take();
        *head = runs.next();
        r
    }
}

impl Iterator for CoalescedRanges<'_> {
    type Item = Result<PhysRange, DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let Some(r) = self.pop_min() else { return self.pending.take().map(Ok) };
            if let Some(p) = self.prev
                && r.start < p.end
            {
                self.failed = true;
                self.pending = None;
                let block = run_block(r.start, r.order);
                let other = overlapping_block(p, r.start);
                return Some(Err(DecodeError::new(
                    Field::Block,
                    block.phys(),
                    DecodeErrorKind::Overlap { block, other },
                )));
            }
            self.prev = Some(r);
            let range = frames_to_range(r.start, r.end);
            match &mut self.pending {
                Some(last) if last.end().as_u64() == range.start().as_u64() => {
                    *last = PhysRange::from_bounds(last.start(), range.end()).expect("non-empty");
                }
                _ => {
                    if let Some(done) = self.pending.replace(range) {
                        return Some(Ok(done));
                    }
                }
            }
        }
    }
}

/// Appends frames `[start, end)` of `order` to the open run if it continues it, else closes
/// the open run into `out` and opens a new one.
fn extend_run(cur: &mut Option<Run>, out: &mut Vec<Run>, start: u64, end: u64, order: Order) {
    match cur {
        Some(r) if r.end == start => r.end = end,
        _ => {
            if let Some(r) = cur.take() {
                out.push(r);
            }
            *cur = Some(Run { start, end, order });
        }
    }
}

fn frames_to_range(start: u64, end: u64) -> PhysRange {
    let s = PhysAddr::new(start << crate::types::PAGE_SHIFT);
    let e = PhysAddr::new(end << crate::types::PAGE_SHIFT);
    PhysRange::from_bounds(s, e).expect("runs are non-empty")
}

fn run_block(pfn: u64, order: Order) -> Block {
    Pfn::new(pfn).and_then(|p| Block::new(p, order)).expect("runs hold valid blocks")
}

/// The block of run `p` that contains frame `pfn` (or the run's last block).
fn overlapping_block(p: Run, pfn: u64) -> Block {
    let size = p.order.nr_pages();
    let start = if pfn < p.end { pfn & !(size - 1) } else { p.end - size };
    run_block(start.max(p.start), p.order)
}

/// Iterates the set bits of a word, lowest first.
#[derive(Debug, Clone, Copy)]
pub struct BitIter(pub u64);

impl Iterator for BitIter {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(b)
    }
}

const _: () = assert!(ORDER_LIMIT < 64);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    fn blk(pfn: u64, order: u32) -> Block {
        Block::new(Pfn::new(pfn).unwrap(), Order::new(order).unwrap()).unwrap()
    }

    #[test]
    fn coalesces_adjacent_blocks_across_orders() {
        let mut s = BlockSet::new();
        s.insert(blk(0x100, 0));
        s.insert(blk(0x101, 0));
        s.insert(blk(0x102, 1));
        s.insert(blk(0x104, 2));
        s.insert(blk(0x200, 9));
        let r = s.coalesced_ranges().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], PhysRange::new(PhysAddr::new(0x100_000), 8 * 4096).unwrap());
        assert_eq!(r[1], PhysRange::new(PhysAddr::new(0x200_000), 512 * 4096).unwrap());
    }

    #[test]
    fn overlap_between_orders_is_named() {
        let mut s = BlockSet::new();
        s.insert(blk(0x200, 9));
        s.insert(blk(0x203, 0));
        let e = s.coalesced_ranges().unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::Block,
                blk(0x203, 0).phys(),
                DecodeErrorKind::Overlap { block: blk(0x203, 0), other: blk(0x200, 9) }
            )
        );
    }

    #[test]
    fn duplicate_bitmap_is_a_duplicate() {
        let mut s = BlockSet::new();
        let words = [0b1010u64; 8];
        s.insert_words(Order::ZERO, 0, &words, PhysAddr::new(0x5000)).unwrap();
        assert_eq!(s.len(), 16);
        let e = s.insert_words(Order::ZERO, 0, &[0b10], PhysAddr::new(0x6000)).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(Field::Block, PhysAddr::new(0x6000), DecodeErrorKind::Duplicate { block: blk(1, 0) })
        );
    }

    #[test]
    fn first_block_is_the_lowest_of_its_order() {
        let mut s = BlockSet::new();
        s.insert(blk(0x9000, 3));
        s.insert(blk(0x8_8008, 3));
        s.insert(blk(0x10, 0));
        assert_eq!(s.first_block(Order::new(3).unwrap()), Some(blk(0x9000, 3)));
        assert_eq!(s.first_block(Order::ZERO), Some(blk(0x10, 0)));
        assert_eq!(s.first_block(Order::new(1).unwrap()), None);
    }

    #[test]
    fn lookups_find_the_covering_block() {
        let mut s = BlockSet::new();
        s.insert(blk(0x400, 10));
        assert_eq!(s.block_starting_at(Pfn::new(0x400).unwrap()), Some(blk(0x400, 10)));
        assert_eq!(s.block_starting_at(Pfn::new(0x401).unwrap()), None);
        assert_eq!(s.block_containing(Pfn::new(0x7ff).unwrap()), Some(blk(0x400, 10)));
        assert_eq!(s.block_containing(Pfn::new(0x800).unwrap()), None);
    }

    /// The pre-streaming `coalesced_ranges`: every run collected and sorted, then coalesced.
    fn reference_coalesced(s: &BlockSet) -> Result<Vec<PhysRange>, DecodeError> {
        let mut out: Vec<PhysRange> = Vec::new();
        let mut prev: Option<Run> = None;
        for r in s.runs() {
            if let Some(p) = prev
                && r.start < p.end
            {
                let block = run_block(r.start, r.order);
                let other = overlapping_block(p, r.start);
                return Err(DecodeError::new(Field::Block, block.phys(), DecodeErrorKind::Overlap { block, other }));
            }
            let range = frames_to_range(r.start, r.end);
            match out.last_mut() {
                Some(last) if last.end() == range.start() => {
                    *last = PhysRange::from_bounds(last.start(), range.end()).unwrap();
                }
                _ => out.push(range),
            }
            prev = Some(r);
        }
        Ok(out)
    }

    #[test]
    fn streaming_state_is_one_cursor_per_order() {
        // One block of every order: the most cursors a set can need (they overlap, which is
        // fine: only the state is measured).
        let mut s = BlockSet::new();
        for o in 0..u32::from(ORDER_LIMIT) {
            s.insert(blk(1u64 << o, o));
        }
        s.insert(blk(0, u32::from(ORDER_LIMIT)));
        let it = s.coalesced();
        assert_eq!(it.cursors(), MAX_ORDERS);
        // Fixed-size state: the iterator itself is a few words, each cursor a few more, and
        // there is never more than one cursor per order, whatever the number of runs.
        assert!(core::mem::size_of::<CoalescedRanges<'_>>() <= 96);
        assert!(core::mem::size_of::<OrderRuns<'_>>() <= 192);
        // A million alternate pages (half a million runs) still needs one cursor.
        let mut dense = BlockSet::new();
        let words = alloc::vec![0x5555_5555_5555_5555u64; (1 << 20) / 64];
        dense.insert_words(Order::ZERO, 0, &words, PhysAddr::new(0)).unwrap();
        let it = dense.coalesced();
        assert_eq!(it.cursors(), 1);
        assert_eq!(it.count(), 1 << 19);
    }

    #[test]
    fn full_units_stream_as_one_range() {
        let mut s = BlockSet::new();
        let ones = alloc::vec![u64::MAX; UNIT_WORDS * 3];
        s.insert_words(Order::ZERO, 0, &ones, PhysAddr::new(0)).unwrap();
        s.insert(blk(3 * UNIT_BITS, 0));
        s.insert(blk(3 * UNIT_BITS + 2, 1));
        let got: Vec<PhysRange> = s.coalesced().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            alloc::vec![
                PhysRange::new(PhysAddr::new(0), (3 * UNIT_BITS + 1) * 4096).unwrap(),
                PhysRange::new(PhysAddr::new((3 * UNIT_BITS + 2) * 4096), 2 * 4096).unwrap(),
            ]
        );
        assert_eq!(reference_coalesced(&s).unwrap(), got);
    }

    proptest! {
        #[test]
        fn streamed_ranges_equal_the_collected_ones(
            blocks in proptest::collection::vec((0u64..(3 * UNIT_BITS), 0u32..12), 0..300),
            full in proptest::collection::vec((0u64..4, 0u32..2), 0..3),
            orders in 1u32..12,
        ) {
            let mut s = BlockSet::new();
            for (unit, order) in full {
                let o = Order::new(order).unwrap();
                let ones = alloc::vec![u64::MAX; UNIT_WORDS];
                let _ = s.insert_words(o, (unit * UNIT_BITS) << order, &ones, PhysAddr::new(0));
            }
            for (pfn, order) in blocks {
                let order = order % orders;
                s.insert(blk(pfn & !((1 << order) - 1), order));
            }
            let want = reference_coalesced(&s);
            let streamed: Result<Vec<PhysRange>, DecodeError> = s.coalesced().collect();
            prop_assert_eq!(&streamed, &want);
            prop_assert_eq!(&s.coalesced_ranges(), &want);
            // After an overlap error the stream ends.
            let mut it = s.coalesced();
            while let Some(r) = it.next() {
                if r.is_err() {
                    prop_assert!(it.next().is_none());
                    break;
                }
            }
        }
    }

    proptest! {
        #[test]
        fn matches_a_btreeset_model(ops in proptest::collection::vec((any::<bool>(), 0u64..4096, 0u32..4), 0..200)) {
            let mut s = BlockSet::new();
            let mut model = BTreeSet::new();
            for (ins, pfn, order) in ops {
                let b = blk(pfn & !((1 << order) - 1), order);
                if ins {
                    prop_assert_eq!(s.insert(b), model.insert(b));
                } else {
                    prop_assert_eq!(s.remove(b), model.remove(&b));
                }
            }
            prop_assert_eq!(s.len(), model.len() as u64);
            let got: BTreeSet<Block> = s.iter().collect();
            prop_assert_eq!(got, model.clone());
            // The model decides whether coalescing must succeed: it fails exactly when two
            // blocks overlap, naming two overlapping blocks of the set; otherwise the runs are
            // exactly the model's pages merged into maximal ranges.
            let overlapping = model.iter().any(|a| model.iter().any(|b| a != b && a.range().overlaps(b.range())));
            match s.coalesced_ranges() {
                Err(e) => {
                    prop_assert!(overlapping, "refused a set without overlap: {}", e);
                    let DecodeErrorKind::Overlap { block, other } = e.kind else {
                        return Err(TestCaseError::fail(format!("not an overlap: {e}")));
                    };
                    prop_assert!(model.contains(&block) && model.contains(&other) && block.range().overlaps(other.range()));
                }
                Ok(ranges) => {
                    prop_assert!(!overlapping, "accepted overlapping blocks");
                    let pages: BTreeSet<u64> =
                        model.iter().flat_map(|b| b.pfn().as_u64()..b.end_pfn()).collect();
                    let mut want: Vec<(u64, u64)> = Vec::new();
                    for p in pages {
                        match want.last_mut() {
                            Some(last) if last.1 == p => last.1 = p + 1,
                            _ => want.push((p, p + 1)),
                        }
                    }
                    let got: Vec<(u64, u64)> =
                        ranges.iter().map(|r| (r.start().as_u64() / 4096, r.end().as_u64() / 4096)).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
