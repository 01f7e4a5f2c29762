//! kho-v4's preserved-memory map (spec §2.2): a fixed-depth radix tree of one-page nodes.
//!
//! Every preserved block becomes one key, `(1 << (64 - shift)) | (phys >> shift)` with
//! `shift = PAGE_SHIFT + order`: the single "order bit" sits just above the block index, so
//! one key carries both the order and the address. Table nodes are arrays of child physical
//! addresses (0 = empty); leaves are bitmaps, one bit per key. The root's address is the
//! root FDT's `preserved-memory-map`.
//!
//! Because a leaf whose first key is at least `2^BITMAP_LOG2` has the order bit in the part of
//! the key the tree path fixes, every key in such a leaf has the same order and the leaf is a
//! plain bitmap of consecutive blocks: it is exactly one [`BlockSet`] unit, copied a word at a
//! time both ways. Only leaf 0 (orders so large that no real kernel uses them) mixes orders
//! and is handled bit by bit.
//!
//! Linux trusts this tree completely (§2.8). The decoder here checks every node pointer
//! (alignment, RAM, scratch, page budget, readability), refuses any page reached twice, and
//! refuses key 0, keys beyond the key width and orders above [`ORDER_LIMIT`].

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::blockset::{BlockSet, UNIT_BITS, UNIT_WORDS};
use crate::error::{DecodeError, DecodeErrorKind, Field, OutgoingError, Result};
use crate::format::WalkContext;
use crate::format::abi::RadixNode;
use crate::platform::{MetaAlloc, PhysRead, Platform};
use crate::types::{Block, ORDER_LIMIT, Order, PAGE_BYTES, PAGE_SHIFT, PFN_LIMIT, PhysAddr};

/// Significant bits of a key: the frame number plus the order bit (`KHO_RADIX_KEY_WIDTH`).
pub const KEY_WIDTH: u32 = 64 - PAGE_SHIFT + 1;
/// log2 of the entries in one table node (`PAGE_SIZE / 8`).
pub const TABLE_LOG2: u32 = PAGE_SHIFT - 3;
/// log2 of the bits in one leaf (`PAGE_SIZE * 8`).
pub const BITMAP_LOG2: u32 = PAGE_SHIFT + 3;
/// Levels, leaf included: `ceil((KEY_WIDTH - BITMAP_LOG2) / TABLE_LOG2) + 1` (6 for 4 KiB).
pub const DEPTH: u32 = (KEY_WIDTH - BITMAP_LOG2).div_ceil(TABLE_LOG2) + 1;
/// Level of the root table (the leaf is level 0).
pub const ROOT_LEVEL: u32 = DEPTH - 1;
/// Entries per table node.
pub const TABLE_ENTRIES: usize = 1 << TABLE_LOG2;
/// Bits (keys) per leaf.
pub const LEAF_BITS: u64 = 1 << BITMAP_LOG2;
/// `u64` words per leaf.
pub const LEAF_WORDS: usize = PAGE_BYTES / 8;

// One leaf holds a whole number of BlockSet units, so encoding copies units into leaves.
const _: () = assert!(LEAF_BITS >= UNIT_BITS && LEAF_BITS.is_multiple_of(UNIT_BITS));
const _: () = assert!(LEAF_WORDS as u64 * 64 == LEAF_BITS);
// The top level's index covers every key bit: the tree is deep enough (spec §4 bug l).
const _: () = assert!(BITMAP_LOG2 + ROOT_LEVEL * TABLE_LOG2 >= KEY_WIDTH);
// ...and no deeper than needed: the root's index shift is inside the key.
const _: () = assert!(level_shift(ROOT_LEVEL) < KEY_WIDTH);

/// Shift of the index a table node at `level` (1..=ROOT_LEVEL) uses:
/// `(level - 1) * TABLE_LOG2 + BITMAP_LOG2`.
#[must_use]
pub const fn level_shift(level: u32) -> u32 {
    (level - 1) * TABLE_LOG2 + BITMAP_LOG2
}

/// Index of `key` in the table node at `level` (1..=ROOT_LEVEL).
#[must_use]
pub const fn table_index(key: u64, level: u32) -> usize {
    ((key >> level_shift(level)) & (TABLE_ENTRIES as u64 - 1)) as usize
}

/// Bit of `key` in its leaf.
#[must_use]
pub const fn leaf_bit(key: u64) -> u64 {
    key & (LEAF_BITS - 1)
}

/// The radix key of a block.
#[must_use]
pub const fn encode_key(block: Block) -> u64 {
    let shift = PAGE_SHIFT + block.order().as_u32();
    (1u64 << (64 - shift)) | (block.phys().as_u64() >> shift)
}

/// The `(order, phys)` a key stands for, or `None` for key 0 or an order bit above the key
/// width. The order is not bounded here (it may exceed [`ORDER_LIMIT`]); callers check it.
#[must_use]
pub const fn decode_key(key: u64) -> Option<(u32, u64)> {
    if key == 0 {
        return None;
    }
    let top = 63 - key.leading_zeros();
    if top >= KEY_WIDTH {
        return None;
    }
    let order = 64 - PAGE_SHIFT - top;
    // The order bit falls off the top; a shift of 64 (key 1) leaves address 0.
    let phys = match key.checked_shl(PAGE_SHIFT + order) {
        Some(p) => p,
        None => 0,
    };
    Some((order, phys))
}

/// The order bit of `order`: the lowest key of that order.
const fn order_bit(order: Order) -> u64 {
    1u64 << (64 - PAGE_SHIFT - order.as_u32())
}

/// A tree written to memory: its root (for `preserved-memory-map`) and every page it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadixTree {
    /// The root table node.
    pub root: PhysAddr,
    /// Every node and leaf page, root first, in allocation order.
    pub pages: Vec<PhysAddr>,
}

/// Pages allocated so far while building, freed again unless the build completes.
struct Builder<'a, P: Platform + ?Sized> {
    plat: &'a P,
    pages: Vec<PhysAddr>,
    /// `(level, key >> (BITMAP_LOG2 + level * TABLE_LOG2))` -> page, for nodes below the root.
    nodes: BTreeMap<(u32, u64), PhysAddr>,
    root: PhysAddr,
}

impl<P: Platform + ?Sized> Builder<'_, P> {
    fn alloc(&mut self) -> Result<PhysAddr, OutgoingError> {
        let page = self.plat.alloc_meta_page()?;
        self.pages.push(page);
        Ok(page)
    }

    /// The leaf that holds `key`, creating the path to it.
    fn leaf_for(&mut self, key: u64) -> Result<PhysAddr, OutgoingError> {
        let mut node = self.root;
        for level in (1..=ROOT_LEVEL).rev() {
            let child_level = level - 1;
            let id = (child_level, key >> (BITMAP_LOG2 + child_level * TABLE_LOG2));
            node = match self.nodes.get(&id) {
                Some(&child) => child,
                None => {
                    let child = self.alloc()?;
                    self.nodes.insert(id, child);
                    let entry = entry_addr(node, table_index(key, level));
                    self.plat
                        .write_u64(entry, child.as_u64())
                        .map_err(|e| OutgoingError::memory(Field::RadixEntry, e))?;
                    child
                }
            };
        }
        Ok(node)
    }

    /// Sets one key's bit (read-modify-write of its leaf word).
    fn set_key(&mut self, key: u64) -> Result<(), OutgoingError> {
        let leaf = self.leaf_for(key)?;
        let bit = leaf_bit(key);
        let word = word_addr(leaf, bit / 64);
        let map = |e| OutgoingError::memory(Field::RadixKey, e);
        let old = self.plat.read_u64(word).map_err(map)?;
        self.plat.write_u64(word, old | (1u64 << (bit % 64))).map_err(map)
    }

    fn add_order(&mut self, blocks: &BlockSet, order: Order) -> Result<(), OutgoingError> {
        let obit = order_bit(order);
        let shift = order.as_u32();
        for (base_pfn, words) in blocks.units(order) {
            let first = base_pfn >> shift;
            if obit >= UNIT_BITS {
                // The whole unit shares the order bit: one contiguous run of leaf words.
                let key = obit | first;
                let leaf = self.leaf_for(key)?;
                let mut bytes = [0u8; UNIT_WORDS * 8];
                for (dst, w) in bytes.chunks_exact_mut(8).zip(words.iter()) {
                    dst.copy_from_slice(&w.to_le_bytes());
                }
                let at = word_addr(leaf, leaf_bit(key) / 64);
                self.plat.write_phys(at, &bytes).map_err(|e| OutgoingError::memory(Field::RadixKey, e))?;
            } else {
                // Leaf 0: orders so large that their keys interleave with other orders.
                for (wi, &w) in words.iter().enumerate() {
                    let mut rest = w;
                    while rest != 0 {
                        let n = first + (wi as u64) * 64 + u64::from(rest.trailing_zeros());
                        rest &= rest - 1;
                        self.set_key(obit | n)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn entry_addr(node: PhysAddr, index: usize) -> PhysAddr {
    PhysAddr::new(node.as_u64() + (index as u64) * 8)
}

fn word_addr(leaf: PhysAddr, word: u64) -> PhysAddr {
    PhysAddr::new(leaf.as_u64() + word * 8)
}

/// Builds the tree for `blocks` in pages from [`MetaAlloc::alloc_meta_page`] (which are
/// zeroed), written with [`PhysWrite::write_phys`](crate::platform::PhysWrite::write_phys).
/// An empty set still gets a root, as in Linux, so `preserved-memory-map` is never NULL.
///
/// # Errors
/// [`OutgoingError::OutOfMemory`] when a page cannot be had, [`OutgoingError::Memory`] when a
/// page cannot be written. Either way every page allocated so far is freed again first.
pub fn encode<P: Platform + ?Sized>(plat: &P, blocks: &BlockSet) -> Result<RadixTree, OutgoingError> {
    let root = plat.alloc_meta_page()?;
    let mut b = Builder { plat, pages: alloc::vec![root], nodes: BTreeMap::new(), root };
    let mut result = Ok(());
    for order in blocks.orders() {
        result = b.add_order(blocks, order);
        if result.is_err() {
            break;
        }
    }
    match result {
        Ok(()) => Ok(RadixTree { root, pages: b.pages }),
        Err(e) => {
            for &p in &b.pages {
                plat.free_meta_page(p);
            }
            Err(e)
        }
    }
}

/// Returns every page of a tree built by [`encode`].
pub fn free<P: MetaAlloc + ?Sized>(plat: &P, tree: &RadixTree) {
    for &p in &tree.pages {
        plat.free_meta_page(p);
    }
}

/// A table node being walked: where it is, the next entry to look at, the key bits its path
/// fixes.
struct Frame {
    level: u32,
    page: PhysAddr,
    next: usize,
    prefix: u64,
}

/// Walks the tree at `root` (read from the root FDT at `root_at`) with every check, adding
/// each key's block to `out`. Work is bounded by the fixed depth and the context's page
/// budget; leaves are decoded a word at a time.
///
/// # Errors
/// - [`DecodeErrorKind::Null`] (`PreservedMemoryMap`) for a NULL root; the root pointer's other checks
///   also name `PreservedMemoryMap` at `root_at`.
/// - For a node pointer, `RadixEntry` at the entry's address: [`DecodeErrorKind::Misaligned`],
///   [`DecodeErrorKind::OutsideRam`], [`DecodeErrorKind::InScratch`], [`DecodeErrorKind::TooMany`] (page budget),
///   [`DecodeErrorKind::Unreadable`], [`DecodeErrorKind::Cycle`] (a page reached twice), and
///   [`DecodeErrorKind::BadValue`] for a root entry whose index lies beyond the key width.
/// - For a key, `RadixKey` at its leaf word: [`DecodeErrorKind::BadValue`] for key 0 or an address past
///   the 52-bit limit, [`DecodeErrorKind::OrderTooLarge`] above [`ORDER_LIMIT`].
/// - [`DecodeErrorKind::Overlap`] if a block is already in `out`.
pub fn decode<M: PhysRead + ?Sized>(
    ctx: &mut WalkContext<'_, M>,
    root: PhysAddr,
    root_at: PhysAddr,
    out: &mut BlockSet,
) -> Result<(), DecodeError> {
    if root.is_null() {
        return Err(DecodeError::new(Field::PreservedMemoryMap, root_at, DecodeErrorKind::Null));
    }
    // One page buffer per level: only one node per level is live during a depth-first walk.
    let mut bufs: Vec<Box<[u8; PAGE_BYTES]>> = (0..DEPTH).map(|_| Box::new([0u8; PAGE_BYTES])).collect();
    let mut words: Box<[u64; LEAF_WORDS]> = Box::new([0u64; LEAF_WORDS]);
    let mut visited = BTreeSet::new();

    let [.., root_buf] = bufs.as_mut_slice() else { unreachable!("DEPTH levels") };
    ctx.read_meta_page(Field::PreservedMemoryMap, root_at, root, root_buf)?;
    visited.insert(root.as_u64());
    let mut stack: Vec<Frame> = Vec::with_capacity(DEPTH as usize);
    stack.push(Frame { level: ROOT_LEVEL, page: root, next: 0, prefix: 0 });

    while let Some(frame) = stack.last_mut() {
        let Some(buf) = bufs.get(frame.level as usize) else { break };
        let node: &RadixNode = zerocopy::transmute_ref!(&**buf);
        let found = (frame.next..TABLE_ENTRIES).find(|&i| node.table[i].get() != 0);
        let Some(i) = found else {
            stack.pop();
            continue;
        };
        frame.next = i + 1;
        let at = entry_addr(frame.page, i);
        let child = PhysAddr::new(node.table[i].get());
        let shift = level_shift(frame.level);
        if shift + TABLE_LOG2 > KEY_WIDTH && (i as u64) >= (1u64 << (KEY_WIDTH - shift)) {
            return Err(DecodeError::new(
                Field::RadixEntry,
                at,
                DecodeErrorKind::BadValue {
                    found: i as u64,
                    expected: "a root index inside the key width (keys are at most KEY_WIDTH bits)",
                },
            ));
        }
        let prefix = frame.prefix | ((i as u64) << shift);
        let level = frame.level - 1;
        if visited.contains(&child.as_u64()) {
            return Err(DecodeError::new(Field::RadixEntry, at, DecodeErrorKind::Cycle { target: child }));
        }
        let Some(dst) = bufs.get_mut(level as usize) else { break };
        ctx.read_meta_page(Field::RadixEntry, at, child, dst)?;
        visited.insert(child.as_u64());
        if level == 0 {
            let leaf: &RadixNode = zerocopy::transmute_ref!(&**dst);
            for (w, b) in words.iter_mut().zip(&leaf.table) {
                *w = b.get();
            }
            decode_leaf(child, prefix, &words, out)?;
        } else {
            stack.push(Frame { level, page: child, next: 0, prefix });
        }
    }
    Ok(())
}

/// Adds the keys of one leaf whose first key is `start` (a multiple of [`LEAF_BITS`]).
fn decode_leaf(leaf: PhysAddr, start: u64, words: &[u64; LEAF_WORDS], out: &mut BlockSet) -> Result<(), DecodeError> {
    let Some(last) = words.iter().rposition(|&w| w != 0) else { return Ok(()) };
    if start < LEAF_BITS {
        return decode_mixed_leaf(leaf, start, words, out);
    }
    // The order bit is fixed by the path: one order, consecutive blocks.
    let Some((order_raw, _)) = decode_key(start) else {
        return Err(DecodeError::new(
            Field::RadixKey,
            leaf,
            DecodeErrorKind::BadValue { found: start, expected: "a key inside the key width" },
        ));
    };
    let Some(order) = Order::new(order_raw) else {
        return Err(DecodeError::new(
            Field::RadixKey,
            leaf,
            DecodeErrorKind::OrderTooLarge { order: u64::from(order_raw), max: u32::from(ORDER_LIMIT) },
        ));
    };
    let first = start & !order_bit(order);
    let top_bit = 63 - u64::from(words.get(last).copied().unwrap_or(1).leading_zeros());
    let last_index = first + (last as u64) * 64 + top_bit;
    if last_index >= PFN_LIMIT >> order.as_u32() {
        return Err(DecodeError::new(
            Field::RadixKey,
            word_addr(leaf, last as u64),
            DecodeErrorKind::BadValue {
                found: order_bit(order) | last_index,
                expected: "a key whose block lies below the 52-bit physical address limit",
            },
        ));
    }
    out.insert_words(order, first << order.as_u32(), &words[..], leaf)
}

/// Leaf 0 holds key 0 (invalid) and the keys of the largest orders side by side.
fn decode_mixed_leaf(
    leaf: PhysAddr,
    start: u64,
    words: &[u64; LEAF_WORDS],
    out: &mut BlockSet,
) -> Result<(), DecodeError> {
    for (wi, &w) in words.iter().enumerate() {
        let mut rest = w;
        while rest != 0 {
            let key = start | ((wi as u64) * 64 + u64::from(rest.trailing_zeros()));
            rest &= rest - 1;
            let at = word_addr(leaf, wi as u64);
            let block = key_block(key, at)?;
            if !out.insert(block) {
                return Err(DecodeError::new(Field::RadixKey, at, DecodeErrorKind::Duplicate { block }));
            }
        }
    }
    Ok(())
}

/// The block of one key read at `at`, with every check.
fn key_block(key: u64, at: PhysAddr) -> Result<Block, DecodeError> {
    let Some((order_raw, phys)) = decode_key(key) else {
        return Err(DecodeError::new(
            Field::RadixKey,
            at,
            DecodeErrorKind::BadValue { found: key, expected: "a non-zero key inside the key width" },
        ));
    };
    let Some(order) = Order::new(order_raw) else {
        return Err(DecodeError::new(
            Field::RadixKey,
            at,
            DecodeErrorKind::OrderTooLarge { order: u64::from(order_raw), max: u32::from(ORDER_LIMIT) },
        ));
    };
    PhysAddr::new(phys).pfn().and_then(|p| Block::new(p, order)).ok_or(DecodeError::new(
        Field::RadixKey,
        at,
        DecodeErrorKind::BadValue {
            found: key,
            expected: "a key whose block lies below the 52-bit physical address limit",
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Limits;
    use crate::testing::{SparseMem, TestPlatform};
    use crate::types::{PAGE_SIZE, PhysRange};
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn blk(phys: u64, order: u32) -> Block {
        Block::at(PhysAddr::new(phys), Order::new(order).unwrap()).unwrap()
    }

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    /// RAM [0, 64 GiB); metadata pool at [1 GiB, 1 GiB + 64 MiB).
    fn platform() -> TestPlatform {
        TestPlatform::new(&[range(0, 64 * GIB)], range(GIB, 64 << 20))
    }

    fn decode_all(
        mem: &SparseMem,
        ram: &[PhysRange],
        scratch: &[PhysRange],
        root: PhysAddr,
    ) -> Result<BlockSet, DecodeError> {
        let mut ctx = WalkContext::new(mem, ram, scratch, Limits::default());
        let mut out = BlockSet::new();
        decode(&mut ctx, root, PhysAddr::new(0x1000), &mut out)?;
        Ok(out)
    }

    #[test]
    fn geometry_matches_the_spec_table() {
        assert_eq!((KEY_WIDTH, TABLE_LOG2, BITMAP_LOG2, DEPTH), (53, 9, 15, 6));
        let shifts: Vec<u32> = (1..=ROOT_LEVEL).map(level_shift).collect();
        assert_eq!(shifts, [15, 24, 33, 42, 51]);
    }

    #[test]
    fn worked_example_order_0() {
        let b = blk(0x1_2345_6000, 0);
        let key = encode_key(b);
        assert_eq!(key, 0x0010_0000_0012_3456);
        let idx: Vec<usize> = (1..=ROOT_LEVEL).rev().map(|l| table_index(key, l)).collect();
        assert_eq!(idx, [2, 0, 0, 0, 0x24]);
        assert_eq!(leaf_bit(key), 0x3456);
        assert_eq!(decode_key(key), Some((0, 0x1_2345_6000)));
    }

    #[test]
    fn worked_example_order_9() {
        let b = blk(0x4000_0000, 9);
        let key = encode_key(b);
        assert_eq!(key, 0x0000_0800_0000_0200);
        let idx: Vec<usize> = (1..=ROOT_LEVEL).rev().map(|l| table_index(key, l)).collect();
        assert_eq!(idx, [0, 2, 0, 0, 0]);
        assert_eq!(leaf_bit(key), 0x200);
        assert_eq!(decode_key(key), Some((9, 0x4000_0000)));
    }

    #[test]
    fn decode_key_rejects_zero_and_overwide_keys() {
        assert_eq!(decode_key(0), None);
        assert_eq!(decode_key(1 << KEY_WIDTH), None);
        assert_eq!(decode_key(1), Some((52, 0)));
        let top = encode_key(blk(0, u32::from(ORDER_LIMIT)));
        assert_eq!(decode_key(top), Some((u32::from(ORDER_LIMIT), 0)));
    }

    #[test]
    fn empty_set_gets_a_root_and_decodes_empty() {
        let plat = platform();
        let tree = encode(&plat, &BlockSet::new()).unwrap();
        assert_eq!(tree.pages, [tree.root]);
        let out = decode_all(&plat.mem, &[range(0, 64 * GIB)], &[], tree.root).unwrap();
        assert!(out.is_empty());
        free(&plat, &tree);
        assert!(plat.live_meta_pages().is_empty());
    }

    #[test]
    fn mixed_orders_including_leaf_zero_round_trip() {
        let plat = platform();
        let mut set = BlockSet::new();
        for b in [
            blk(0x1_2345_6000, 0),
            blk(0x4000_0000, 9),
            blk(0, u32::from(ORDER_LIMIT)),
            blk(0, 39),
            blk(1 << 51, 39),
            blk(0, 38),
            blk(3 << 50, 38),
            blk(0x8_0000_0000, 18),
            blk((PFN_LIMIT - 1) << PAGE_SHIFT, 0),
        ] {
            set.insert(b);
        }
        let tree = encode(&plat, &set).unwrap();
        let out = decode_all(&plat.mem, &[range(0, 64 * GIB)], &[], tree.root).unwrap();
        assert_eq!(out.iter().collect::<Vec<_>>(), set.iter().collect::<Vec<_>>());
    }

    #[test]
    fn every_allocation_failure_rolls_back() {
        let plat = platform();
        let mut set = BlockSet::new();
        for i in 0..40u64 {
            set.insert(blk((i * 0x1234_5000 % (60 * GIB)) & !0x1f_ffff, (i % 10) as u32));
        }
        set.insert(blk(0, 39));
        plat.fail_alloc_at(None);
        let tree = encode(&plat, &set).unwrap();
        let needed = plat.alloc_attempts();
        assert_eq!(needed, tree.pages.len() as u64);
        free(&plat, &tree);
        let before = plat.live_meta_pages();
        for n in 0..needed {
            plat.fail_alloc_at(Some(n));
            assert_eq!(encode(&plat, &set), Err(OutgoingError::OutOfMemory), "allocation {n}");
            assert_eq!(plat.live_meta_pages(), before, "leak after failing allocation {n}");
        }
        plat.fail_alloc_at(None);
    }

    /// Writes a hand-made tree: `pages[level]` chain from the root to one leaf for `key`.
    fn hand_tree(mem: &SparseMem, base: u64, key: u64) -> (PhysAddr, Vec<PhysAddr>) {
        let pages: Vec<PhysAddr> = (0..DEPTH).map(|i| PhysAddr::new(base + u64::from(i) * PAGE_SIZE)).collect();
        for level in (1..=ROOT_LEVEL).rev() {
            let parent = pages[level as usize];
            let child = pages[level as usize - 1];
            mem.write_bytes(entry_addr(parent, table_index(key, level)), &child.as_u64().to_le_bytes());
        }
        let bit = leaf_bit(key);
        mem.write_bytes(word_addr(pages[0], bit / 64), &(1u64 << (bit % 64)).to_le_bytes());
        (pages[ROOT_LEVEL as usize], pages)
    }

    fn ram() -> Vec<PhysRange> {
        alloc::vec![range(0, 64 * GIB)]
    }

    #[test]
    fn hand_built_tree_decodes() {
        let mem = SparseMem::new();
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, _) = hand_tree(&mem, 0x10_0000, key);
        let out = decode_all(&mem, &ram(), &[], root).unwrap();
        assert_eq!(out.iter().collect::<Vec<_>>(), [blk(0x1_2345_6000, 0)]);
    }

    #[test]
    fn null_root_is_refused() {
        let mem = SparseMem::new();
        let e = decode_all(&mem, &ram(), &[], PhysAddr::new(0)).unwrap_err();
        assert_eq!(e, DecodeError::new(Field::PreservedMemoryMap, PhysAddr::new(0x1000), DecodeErrorKind::Null));
    }

    #[test]
    fn misaligned_entry_is_named() {
        let mem = SparseMem::new();
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        let at = entry_addr(pages[3], table_index(key, 3));
        mem.write_bytes(at, &(pages[2].as_u64() + 8).to_le_bytes());
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::RadixEntry,
                at,
                DecodeErrorKind::Misaligned { value: pages[2].as_u64() + 8, align: PAGE_SIZE }
            )
        );
    }

    #[test]
    fn entry_outside_ram_is_named() {
        let mem = SparseMem::new();
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        let at = entry_addr(pages[1], table_index(key, 1));
        mem.write_bytes(at, &(100 * GIB).to_le_bytes());
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(Field::RadixEntry, at, DecodeErrorKind::OutsideRam { range: range(100 * GIB, PAGE_SIZE) })
        );
    }

    #[test]
    fn entry_in_scratch_is_named() {
        let mem = SparseMem::new();
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        let scratch = [range(pages[2].as_u64(), PAGE_SIZE)];
        let at = entry_addr(pages[3], table_index(key, 3));
        let e = decode_all(&mem, &ram(), &scratch, root).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::RadixEntry,
                at,
                DecodeErrorKind::InScratch { range: range(pages[2].as_u64(), PAGE_SIZE), scratch: scratch[0] }
            )
        );
    }

    #[test]
    fn shared_subtree_is_a_cycle() {
        let mem = SparseMem::new();
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        // A second L1 entry pointing at the same leaf.
        let at = entry_addr(pages[1], table_index(key, 1) + 1);
        mem.write_bytes(at, &pages[0].as_u64().to_le_bytes());
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert_eq!(e, DecodeError::new(Field::RadixEntry, at, DecodeErrorKind::Cycle { target: pages[0] }));
        // An entry pointing back at the root.
        let mem = SparseMem::new();
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        let at = entry_addr(pages[2], 7);
        mem.write_bytes(at, &root.as_u64().to_le_bytes());
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert_eq!(e, DecodeError::new(Field::RadixEntry, at, DecodeErrorKind::Cycle { target: root }));
    }

    #[test]
    fn huge_order_and_zero_keys_are_refused() {
        // Key 1 << 11 has order 41 > ORDER_LIMIT.
        let mem = SparseMem::new();
        let (root, pages) = hand_tree(&mem, 0x10_0000, 1 << 11);
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert_eq!(
            e,
            DecodeError::new(
                Field::RadixKey,
                word_addr(pages[0], 32),
                DecodeErrorKind::OrderTooLarge { order: 41, max: 40 }
            )
        );
        let mem = SparseMem::new();
        let (root, pages) = hand_tree(&mem, 0x10_0000, 0);
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::RadixKey, at, kind: DecodeErrorKind::BadValue { found: 0, .. }, .. } if at == pages[0]),
            "{e}"
        );
    }

    #[test]
    fn keys_past_the_address_limit_are_refused() {
        // Order 0, block index 2^40: address 2^52.
        let mem = SparseMem::new();
        let key = (1u64 << 52) | (1 << 40);
        let (root, _) = hand_tree(&mem, 0x10_0000, key);
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::RadixKey, kind: DecodeErrorKind::BadValue { found, .. }, .. } if found == key),
            "{e}"
        );
    }

    #[test]
    fn root_entry_beyond_key_width_is_refused() {
        let mem = SparseMem::new();
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        let at = entry_addr(root, 4);
        mem.write_bytes(at, &pages[4].as_u64().to_le_bytes());
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::RadixEntry, at: a, kind: DecodeErrorKind::BadValue { found: 4, .. }, .. } if a == at),
            "{e}"
        );
    }

    #[test]
    fn page_budget_is_enforced() {
        let mem = SparseMem::new();
        let (root, _) = hand_tree(&mem, 0x10_0000, encode_key(blk(0x1_2345_6000, 0)));
        let r = ram();
        let limits = Limits { max_metadata_pages: 3, ..Limits::default() };
        let mut ctx = WalkContext::new(&mem, &r, &[], limits);
        let e = decode(&mut ctx, root, PhysAddr::new(0x1000), &mut BlockSet::new()).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::RadixEntry, kind: DecodeErrorKind::TooMany { limit: 3, .. }, .. }),
            "{e}"
        );
    }

    #[test]
    fn unreadable_node_is_named() {
        // RAM says the page exists but the memory does not back it.
        let mem = SparseMem::with_ram(&[range(0, GIB)]);
        let key = encode_key(blk(0x1_2345_6000, 0));
        let (root, pages) = hand_tree(&mem, 0x10_0000, key);
        let at = entry_addr(pages[1], table_index(key, 1));
        mem.write_bytes(at, &(2 * GIB).to_le_bytes());
        let e = decode_all(&mem, &ram(), &[], root).unwrap_err();
        assert_eq!(
            e,
            DecodeError::unreadable(
                Field::RadixEntry,
                crate::platform::MemError::read(PhysAddr::new(2 * GIB), PAGE_SIZE)
            )
        );
    }

    /// 1 TiB preserved at order 0: 8192 full leaves. Prints the decode time.
    #[test]
    fn one_tib_at_order_zero_decodes_fast() {
        const TIB: u64 = 1 << 40;
        let plat = TestPlatform::new(&[range(0, 2 * TIB)], range(TIB + GIB, 64 << 20));
        let mut set = BlockSet::new();
        let full = [u64::MAX; UNIT_WORDS];
        for u in 0..(TIB >> PAGE_SHIFT) / UNIT_BITS {
            set.insert_words(Order::ZERO, u * UNIT_BITS, &full, PhysAddr::new(0)).unwrap();
        }
        let t0 = std::time::Instant::now();
        let tree = encode(&plat, &set).unwrap();
        let enc = t0.elapsed();
        let r = [range(0, 2 * TIB)];
        let mut ctx = WalkContext::new(&plat.mem, &r, &[], Limits::default());
        let mut out = BlockSet::new();
        let t1 = std::time::Instant::now();
        decode(&mut ctx, tree.root, PhysAddr::new(0x1000), &mut out).unwrap();
        let dec = t1.elapsed();
        std::eprintln!("1 TiB order 0: {} pages, encode {enc:?}, decode {dec:?}", tree.pages.len());
        assert_eq!(out.len(), TIB >> PAGE_SHIFT);
        assert_eq!(ctx.metadata_pages.len(), tree.pages.len());
        assert!(out == set);
        assert!(dec.as_secs() < 5, "decode took {dec:?}");
    }

    fn arb_block() -> impl Strategy<Value = Block> {
        prop_oneof![
            8 => (0u32..12, 0u64..(1 << 24)).prop_map(|(o, n)| blk((n << (o + PAGE_SHIFT)) % (64 * GIB), o)),
            1 => (0u32..=u32::from(ORDER_LIMIT), 0u64..4).prop_map(|(o, n)| {
                let n = n % (1 << (u32::from(ORDER_LIMIT) - o));
                blk(n << (o + PAGE_SHIFT), o)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip_matches_a_btreeset_model(blocks in proptest::collection::vec(arb_block(), 0..64)) {
            let plat = TestPlatform::new(&[range(0, 1 << 52)], range(GIB, 64 << 20));
            let model: BTreeSet<Block> = blocks.iter().copied().collect();
            let mut set = BlockSet::new();
            for &b in &blocks {
                set.insert(b);
            }
            let tree = encode(&plat, &set).unwrap();
            for &b in &model {
                let key = encode_key(b);
                prop_assert_eq!(decode_key(key), Some((b.order().as_u32(), b.phys().as_u64())));
            }
            let r = [range(0, 1 << 52)];
            let mut ctx = WalkContext::new(&plat.mem, &r, &[], Limits::default());
            let mut out = BlockSet::new();
            decode(&mut ctx, tree.root, PhysAddr::new(0x1000), &mut out).unwrap();
            let got: BTreeSet<Block> = out.iter().collect();
            prop_assert_eq!(got, model);
            prop_assert_eq!(ctx.metadata_pages.len(), tree.pages.len());
            free(&plat, &tree);
            prop_assert!(plat.live_meta_pages().is_empty());
        }
    }
}
