//! What is preserved: the workloads of the sweep, each an arithmetic sequence of blocks so a
//! terabyte of order-0 pages needs no list in memory.

use kho_core::{Order, PAGE_SHIFT};
use serde::Serialize;

/// Where the benchmark's RAM starts (1 GiB, so 1 GiB blocks are aligned).
pub const RAM_START: u64 = 1 << 30;
const RAM_START_PFN: u64 = RAM_START >> PAGE_SHIFT;
const MIB: u64 = 1 << 20;

/// A workload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Every 4 KiB page of the size, as order-0 folios.
    Order0,
    /// Every 2 MiB of the size as an order-9 folio.
    Huge2m,
    /// Every 1 GiB of the size as an order-18 block.
    Giga1g,
    /// 90% 2 MiB folios, 10% 4 KiB pages of which half are scattered (every fourth page).
    Mix,
    /// One 4 KiB page per 16 MiB of the size (the size is the address span).
    Sparse16m,
    /// `count` single pages spread evenly over the size.
    Scattered(u64),
}

impl Shape {
    /// Short name for tables and file names.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Order0 => "order0".into(),
            Self::Huge2m => "2m".into(),
            Self::Giga1g => "1g".into(),
            Self::Mix => "mix".into(),
            Self::Sparse16m => "1-per-16m".into(),
            Self::Scattered(n) => format!("scattered-{n}"),
        }
    }

    /// One line describing it.
    #[must_use]
    pub fn describe(self) -> String {
        match self {
            Self::Order0 => "all order 0 (4 KiB folios)".into(),
            Self::Huge2m => "all 2 MiB folios (order 9)".into(),
            Self::Giga1g => "all 1 GiB blocks (order 18)".into(),
            Self::Mix => "90% 2 MiB folios, 10% 4 KiB pages (half of them scattered)".into(),
            Self::Sparse16m => "one 4 KiB page per 16 MiB (x axis: address span)".into(),
            Self::Scattered(n) => format!("{n} single pages spread over the span"),
        }
    }
}

/// A shape at one size: its blocks are `block(0..count())`, ascending by address.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    shape: Shape,
    /// Size on the x axis: preserved bytes (dense shapes) or address span (sparse ones).
    pub size: u64,
    /// Address span from [`RAM_START`] in bytes.
    pub span: u64,
    /// Number of blocks.
    pub count: u64,
    // Mix: 2 MiB folios, dense pages, scattered pages.
    n2m: u64,
    ndense: u64,
    stride: u64,
}

const MIX_STRIDE: u64 = 4;

impl Layout {
    /// `shape` at `size` bytes.
    #[must_use]
    pub fn new(shape: Shape, size: u64) -> Self {
        let mut l = Self { shape, size, span: size, count: 0, n2m: 0, ndense: 0, stride: 1 };
        match shape {
            Shape::Order0 => l.count = size >> 12,
            Shape::Huge2m => l.count = size >> 21,
            Shape::Giga1g => l.count = size >> 30,
            Shape::Mix => {
                l.n2m = (size / 10 * 9) >> 21;
                let rest = (size - (l.n2m << 21)) >> 12;
                l.ndense = rest / 2;
                let nscatter = rest - l.ndense;
                l.count = l.n2m + rest;
                l.span = (l.n2m << 21) + (l.ndense << 12) + ((nscatter * MIX_STRIDE) << 12);
            }
            Shape::Sparse16m => {
                l.count = size / (16 * MIB);
                l.stride = (16 * MIB) >> 12;
            }
            Shape::Scattered(n) => {
                l.count = n;
                l.stride = (size >> 12) / n.max(1);
            }
        }
        l
    }

    /// The shape.
    #[must_use]
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Block `i`: (first frame, order).
    #[inline]
    #[must_use]
    pub fn block(&self, i: u64) -> (u64, Order) {
        let o = |n| Order::new(n).expect("small order");
        match self.shape {
            Shape::Order0 => (RAM_START_PFN + i, Order::ZERO),
            Shape::Huge2m => (RAM_START_PFN + (i << 9), o(9)),
            Shape::Giga1g => (RAM_START_PFN + (i << 18), o(18)),
            Shape::Mix => {
                if i < self.n2m {
                    (RAM_START_PFN + (i << 9), o(9))
                } else if i < self.n2m + self.ndense {
                    (RAM_START_PFN + (self.n2m << 9) + (i - self.n2m), Order::ZERO)
                } else {
                    let j = i - self.n2m - self.ndense;
                    (RAM_START_PFN + (self.n2m << 9) + self.ndense + j * MIX_STRIDE, Order::ZERO)
                }
            }
            Shape::Sparse16m | Shape::Scattered(_) => (RAM_START_PFN + i * self.stride, Order::ZERO),
        }
    }

    /// Bytes preserved.
    #[must_use]
    pub fn preserved_bytes(&self) -> u64 {
        match self.shape {
            Shape::Mix => (self.n2m << 21) + ((self.count - self.n2m) << 12),
            _ => (0..self.count.min(1)).map(|i| self.block(i).1.bytes()).sum::<u64>() * self.count,
        }
    }

    /// Pages in the span (one bit each when dense).
    #[must_use]
    pub fn span_pages(&self) -> u64 {
        self.span >> 12
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_ninety_percent_huge_and_ascending() {
        let l = Layout::new(Shape::Mix, 1 << 30);
        assert_eq!(l.n2m, 460);
        let huge = l.n2m << 21;
        assert!(huge * 10 >= (1 << 30) * 9 - (2 << 21) * 10);
        assert_eq!(l.preserved_bytes(), 1 << 30);
        let mut prev = 0;
        for i in 0..l.count {
            let (pfn, order) = l.block(i);
            assert!(pfn >= prev, "block {i} not ascending");
            assert_eq!(pfn % order.nr_pages(), 0);
            prev = pfn + order.nr_pages();
        }
        assert_eq!(prev + MIX_STRIDE - 1, RAM_START_PFN + l.span_pages());
    }

    #[test]
    fn sparse_shapes_space_their_pages() {
        let l = Layout::new(Shape::Sparse16m, 1 << 40);
        assert_eq!(l.count, 65536);
        assert_eq!(l.block(1).0 - l.block(0).0, 4096);
        let s = Layout::new(Shape::Scattered(1 << 21), 1 << 40);
        assert_eq!(s.block(1).0 - s.block(0).0, 128);
        assert_eq!(s.preserved_bytes(), 8 << 30);
        assert_eq!(Layout::new(Shape::Giga1g, 4 << 30).block(3), (RAM_START_PFN + (3 << 18), Order::new(18).unwrap()));
    }
}
