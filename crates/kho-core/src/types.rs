//! Address newtypes: physical addresses, page frame numbers, orders, ranges and blocks.
//!
//! Arithmetic is explicit and checked (no operator overloads), following rust-vmm's
//! `GuestAddress`: on the incoming side every value comes from untrusted memory, and an
//! overflow must become an error, not a wrapped address.

use core::fmt;

/// log2 of the page size. Every format derives its geometry from this one constant, so a
/// 16 KiB or 64 KiB build changes it here (Linux does not support kexec between page sizes).
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in a page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Bytes in a page, as `usize` for buffers.
pub const PAGE_BYTES: usize = 1 << PAGE_SHIFT;
/// Physical addresses are at most 52 bits wide on x86-64 and arm64; so are KHO's radix keys.
pub const PHYS_ADDR_BITS: u32 = 52;
/// One past the highest page frame number representable.
pub const PFN_LIMIT: u64 = 1 << (PHYS_ADDR_BITS - PAGE_SHIFT);
/// Largest order any structure in this crate accepts: a block of this order spans the whole
/// 52-bit physical address space. Kernels have a much smaller maximum (see [`Order`]).
pub const ORDER_LIMIT: u8 = (PHYS_ADDR_BITS - PAGE_SHIFT) as u8;

/// A physical address. Zero is a valid value here, but KHO pointers treat it as NULL.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// Wraps a raw address.
    #[must_use]
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }
    /// The raw value.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// `self + bytes`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
    /// `self + bytes`, stopping at the top of the address space.
    #[must_use]
    pub const fn saturating_add(self, bytes: u64) -> Self {
        Self(self.0.saturating_add(bytes))
    }
    /// Rounded down to a multiple of `align` (a power of two).
    #[must_use]
    pub const fn align_down(self, align: u64) -> Self {
        Self(self.0 & !align.wrapping_sub(1))
    }
    /// Rounded up to a multiple of `align` (a power of two), or `None` past 2^64.
    #[must_use]
    pub const fn align_up(self, align: u64) -> Option<Self> {
        match self.0.checked_add(align.wrapping_sub(1)) {
            Some(v) => Some(Self(v & !align.wrapping_sub(1))),
            None => None,
        }
    }
    /// The page this address lies in.
    #[must_use]
    pub const fn page_base(self) -> Self {
        self.align_down(PAGE_SIZE)
    }
    /// `self - other` in bytes, or `None` if `other > self`.
    #[must_use]
    pub const fn checked_offset_from(self, other: Self) -> Option<u64> {
        self.0.checked_sub(other.0)
    }
    /// True if the address is a multiple of `align` (a power of two).
    #[must_use]
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align.wrapping_sub(1)) == 0
    }
    /// True if the address is page aligned.
    #[must_use]
    pub const fn is_page_aligned(self) -> bool {
        self.is_aligned(PAGE_SIZE)
    }
    /// The frame that contains this address, or `None` past [`PFN_LIMIT`].
    #[must_use]
    pub const fn containing_pfn(self) -> Option<Pfn> {
        Pfn::new(self.0 >> PAGE_SHIFT)
    }
    /// The frame that starts at this address: `None` if unaligned or out of range.
    #[must_use]
    pub const fn pfn(self) -> Option<Pfn> {
        if self.is_page_aligned() { self.containing_pfn() } else { None }
    }
    /// True for the NULL value of a KHO pointer.
    #[must_use]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{:#x}", self.0)
    }
}
impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A page frame number, always below [`PFN_LIMIT`] so that its address never overflows.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(u64);

impl Pfn {
    /// A frame number, or `None` at or past [`PFN_LIMIT`].
    #[must_use]
    pub const fn new(raw: u64) -> Option<Self> {
        if raw < PFN_LIMIT { Some(Self(raw)) } else { None }
    }
    /// The raw frame number.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The address of the frame's first byte.
    #[must_use]
    pub const fn phys(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
    /// `self + pages`, or `None` past [`PFN_LIMIT`].
    #[must_use]
    pub const fn checked_add(self, pages: u64) -> Option<Self> {
        match self.0.checked_add(pages) {
            Some(v) => Self::new(v),
            None => None,
        }
    }
    /// The largest order this frame is naturally aligned to (capped at [`ORDER_LIMIT`]).
    #[must_use]
    pub const fn alignment_order(self) -> Order {
        let tz = self.0.trailing_zeros();
        if tz >= ORDER_LIMIT as u32 { Order(ORDER_LIMIT) } else { Order(tz as u8) }
    }
    /// True if the frame is the first of a naturally aligned block of `order`.
    #[must_use]
    pub const fn is_aligned_to(self, order: Order) -> bool {
        self.0 & (order.nr_pages() - 1) == 0
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn:{:#x}", self.0)
    }
}
impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A page order: a block of order `n` is `2^n` pages, naturally aligned.
///
/// Always at most [`ORDER_LIMIT`]; a kernel's own maximum (Linux `MAX_PAGE_ORDER`) is a
/// separate, configured bound, because the next kernel may support fewer orders than the
/// one that preserved the memory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Order(u8);

impl Order {
    /// Order 0: one page.
    pub const ZERO: Self = Self(0);
    /// Linux x86-64's `MAX_PAGE_ORDER` (4 MiB blocks with 4 KiB pages).
    pub const LINUX_X86_MAX: Self = Self(10);
    /// The largest order representable (see [`ORDER_LIMIT`]).
    pub const LIMIT: Self = Self(ORDER_LIMIT);

    /// An order, or `None` above [`ORDER_LIMIT`].
    #[must_use]
    pub const fn new(raw: u32) -> Option<Self> {
        if raw <= ORDER_LIMIT as u32 { Some(Self(raw as u8)) } else { None }
    }
    /// The raw order.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self.0 as u32
    }
    /// Pages in a block of this order.
    #[must_use]
    pub const fn nr_pages(self) -> u64 {
        1 << self.0
    }
    /// Bytes in a block of this order.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        1 << (self.0 as u32 + PAGE_SHIFT)
    }
    /// The smaller of two orders.
    #[must_use]
    pub const fn min(self, other: Self) -> Self {
        if self.0 <= other.0 { self } else { other }
    }
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "order:{}", self.0)
    }
}
impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A half-open physical range `[start, end)`, never empty and never wrapping.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysRange {
    start: PhysAddr,
    end: PhysAddr,
}

impl PhysRange {
    /// `[start, start + len)`, or `None` if empty or overflowing.
    #[must_use]
    pub const fn new(start: PhysAddr, len: u64) -> Option<Self> {
        match start.checked_add(len) {
            Some(end) if len > 0 => Some(Self { start, end }),
            _ => None,
        }
    }
    /// `[start, end)`, or `None` if empty.
    #[must_use]
    pub const fn from_bounds(start: PhysAddr, end: PhysAddr) -> Option<Self> {
        if start.0 < end.0 { Some(Self { start, end }) } else { None }
    }
    /// First byte.
    #[must_use]
    pub const fn start(self) -> PhysAddr {
        self.start
    }
    /// One past the last byte.
    #[must_use]
    pub const fn end(self) -> PhysAddr {
        self.end
    }
    /// Length in bytes.
    #[must_use]
    pub const fn len(self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Always false: ranges are never empty. Present for clippy's `len_without_is_empty`.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        false
    }
    /// True if the ranges share at least one byte.
    #[must_use]
    pub const fn overlaps(self, other: Self) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }
    /// True if `other` lies entirely inside `self`.
    #[must_use]
    pub const fn contains_range(self, other: Self) -> bool {
        self.start.0 <= other.start.0 && other.end.0 <= self.end.0
    }
    /// True if `addr` lies inside the range.
    #[must_use]
    pub const fn contains(self, addr: PhysAddr) -> bool {
        self.start.0 <= addr.0 && addr.0 < self.end.0
    }
}

/// Sorts ranges and merges those that overlap or touch: the union as the fewest ranges.
#[must_use]
pub fn merge_ranges(mut ranges: alloc::vec::Vec<PhysRange>) -> alloc::vec::Vec<PhysRange> {
    ranges.sort_unstable();
    let mut out: alloc::vec::Vec<PhysRange> = alloc::vec::Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}
impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A naturally aligned block of `2^order` pages: the unit KHO records.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pfn: Pfn,
    order: Order,
}

impl Block {
    /// A block, or `None` if `pfn` is not aligned to `order` or the block passes [`PFN_LIMIT`].
    #[must_use]
    pub const fn new(pfn: Pfn, order: Order) -> Option<Self> {
        if !pfn.is_aligned_to(order) {
            return None;
        }
        match pfn.checked_add(order.nr_pages() - 1) {
            Some(_) => Some(Self { pfn, order }),
            None => None,
        }
    }
    /// The block that starts at `phys`, or `None` if misaligned or out of range.
    #[must_use]
    pub const fn at(phys: PhysAddr, order: Order) -> Option<Self> {
        match phys.pfn() {
            Some(pfn) => Self::new(pfn, order),
            None => None,
        }
    }
    /// First frame.
    #[must_use]
    pub const fn pfn(self) -> Pfn {
        self.pfn
    }
    /// Order.
    #[must_use]
    pub const fn order(self) -> Order {
        self.order
    }
    /// First byte.
    #[must_use]
    pub const fn phys(self) -> PhysAddr {
        self.pfn.phys()
    }
    /// Frames after the last one (may equal [`PFN_LIMIT`]).
    #[must_use]
    pub const fn end_pfn(self) -> u64 {
        self.pfn.0 + self.order.nr_pages()
    }
    /// The block's bytes as a range.
    #[must_use]
    pub const fn range(self) -> PhysRange {
        PhysRange { start: self.phys(), end: PhysAddr(self.end_pfn() << PAGE_SHIFT) }
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({:#x}, order {})", self.phys().0, self.order.0)
    }
}
impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} (order {})", self.phys().0, self.order.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfn_limit_keeps_addresses_in_range() {
        assert!(Pfn::new(PFN_LIMIT).is_none());
        let last = Pfn::new(PFN_LIMIT - 1).unwrap();
        assert_eq!(last.phys().as_u64(), (PFN_LIMIT - 1) << PAGE_SHIFT);
        assert!(last.checked_add(1).is_none());
    }

    #[test]
    fn block_requires_natural_alignment() {
        let pfn = Pfn::new(0x200).unwrap();
        assert!(Block::new(pfn, Order::new(9).unwrap()).is_some());
        assert!(Block::new(pfn, Order::new(10).unwrap()).is_none());
        let b = Block::at(PhysAddr::new(0x4000_0000), Order::new(9).unwrap()).unwrap();
        assert_eq!(b.range().len(), 2 << 20);
        assert!(Block::at(PhysAddr::new(0x4000_0800), Order::ZERO).is_none());
    }

    #[test]
    fn ranges_reject_empty_and_wrapping() {
        assert!(PhysRange::new(PhysAddr::new(0x1000), 0).is_none());
        assert!(PhysRange::new(PhysAddr::new(u64::MAX), 2).is_none());
        let a = PhysRange::new(PhysAddr::new(0x1000), 0x1000).unwrap();
        let b = PhysRange::new(PhysAddr::new(0x1fff), 1).unwrap();
        let c = PhysRange::new(PhysAddr::new(0x2000), 1).unwrap();
        assert!(a.overlaps(b) && !a.overlaps(c));
    }

    #[test]
    fn merge_unions_overlapping_and_touching_ranges() {
        let r = |s: u64, l: u64| PhysRange::new(PhysAddr::new(s), l).unwrap();
        let merged =
            merge_ranges(alloc::vec![r(0x5000, 0x1000), r(0x1000, 0x2000), r(0x2000, 0x2000), r(0x4000, 0x1000)]);
        assert_eq!(merged, [r(0x1000, 0x5000)]);
        assert_eq!(merge_ranges(alloc::vec![r(0x3000, 1), r(0x1000, 1)]), [r(0x1000, 1), r(0x3000, 1)]);
    }

    #[test]
    fn order_limit_is_enforced() {
        assert!(Order::new(u32::from(ORDER_LIMIT)).is_some());
        assert!(Order::new(u32::from(ORDER_LIMIT) + 1).is_none());
        assert_eq!(Order::LIMIT.bytes(), 1 << PHYS_ADDR_BITS);
    }
}
