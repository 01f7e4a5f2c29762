//! Splitting a page range into the naturally aligned blocks KHO records.
//!
//! Each block's order is the smallest of: the start frame's alignment, the largest power of
//! two that fits in what remains, and the configured maximum order. The seed review found
//! both of the first two bounds missing in v5 (an unbounded `ilog2` order, and a split that
//! ignored alignment, so `pfn >> order` named the wrong pages).

use crate::types::{Block, Order, Pfn};

/// Iterator over the blocks of `[start, start + count)`; see the module docs.
#[derive(Debug, Clone)]
pub struct Split {
    next: u64,
    end: u64,
    max_order: Order,
}

/// Splits `count` pages starting at `start` into aligned blocks no larger than `max_order`.
/// The caller has checked that the range ends at or below `PFN_LIMIT`.
#[must_use]
pub fn split_range(start: Pfn, count: u64, max_order: Order) -> Split {
    Split { next: start.as_u64(), end: start.as_u64().saturating_add(count), max_order }
}

impl Iterator for Split {
    type Item = Block;
    fn next(&mut self) -> Option<Block> {
        if self.next >= self.end {
            return None;
        }
        let pfn = Pfn::new(self.next)?;
        let remaining = self.end - self.next;
        let fit = Order::new(63 - remaining.leading_zeros()).unwrap_or(Order::LIMIT);
        let order = pfn.alignment_order().min(fit).min(self.max_order);
        let block = Block::new(pfn, order)?;
        self.next = block.end_pfn();
        Some(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn pfn(n: u64) -> Pfn {
        Pfn::new(n).unwrap()
    }
    fn ord(n: u32) -> Order {
        Order::new(n).unwrap()
    }

    /// Review finding 1: v5 used `ilog2(end - pfn)` unbounded, so a 1 GiB range became one
    /// order-18 block, beyond the kernel's maximum order.
    #[test]
    fn order_bounded_when_splitting_a_range() {
        let blocks: Vec<Block> = split_range(pfn(0x40000), 0x40000, ord(10)).collect();
        assert_eq!(blocks.len(), 256);
        assert!(blocks.iter().all(|b| b.order() == ord(10)));
        let unbounded: Vec<Block> = split_range(pfn(0x40000), 0x40000, Order::LIMIT).collect();
        assert_eq!(unbounded, [Block::new(pfn(0x40000), ord(18)).unwrap()]);
    }

    /// Review finding 2: v5 recorded phys 4096 size 8192 as order 1 at pfn 1, which as a bit
    /// index (`pfn >> order` = 0) meant pfns 0-1, not 1-2.
    #[test]
    fn alignment_respected_when_splitting() {
        let blocks: Vec<Block> = split_range(pfn(1), 2, ord(10)).collect();
        assert_eq!(blocks, [Block::new(pfn(1), ord(0)).unwrap(), Block::new(pfn(2), ord(0)).unwrap()]);
        let blocks: Vec<Block> = split_range(pfn(3), 13, ord(10)).collect();
        let shapes: Vec<(u64, u32)> = blocks.iter().map(|b| (b.pfn().as_u64(), b.order().as_u32())).collect();
        assert_eq!(shapes, [(3, 0), (4, 2), (8, 3)]);
    }

    proptest! {
        #[test]
        fn blocks_tile_the_range_exactly(start in 0u64..1 << 30, count in 1u64..1 << 20, max in 0u32..20) {
            let mut next = start;
            for b in split_range(pfn(start), count, ord(max)) {
                prop_assert_eq!(b.pfn().as_u64(), next);
                prop_assert!(b.order() <= ord(max));
                prop_assert!(b.pfn().is_aligned_to(b.order()));
                next = b.end_pfn();
            }
            prop_assert_eq!(next, start + count);
        }
    }
}
