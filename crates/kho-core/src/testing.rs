//! Platforms for tests, fuzzing and examples: sparse in-memory RAM, a metadata page pool
//! with fault injection, and a memory map that records what it was told. Safe code only, so
//! everything built on them also runs under Miri.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use spin::Mutex;

use crate::platform::{Access, AllocError, MemError, MemMap, MetaAlloc, PhysRead, PhysWrite};
use crate::types::{Block, PAGE_BYTES, PAGE_SHIFT, PAGE_SIZE, Pfn, PhysAddr, PhysRange};

/// Physical memory as a sparse map of pages; untouched pages read as zero. With RAM ranges
/// set, any access outside them fails like an unbacked address.
#[derive(Debug, Default)]
pub struct SparseMem {
    ram: Vec<PhysRange>,
    pages: Mutex<BTreeMap<u64, Box<[u8; PAGE_BYTES]>>>,
}

impl SparseMem {
    /// Memory where every address is backed.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Memory backed only inside `ram`.
    #[must_use]
    pub fn with_ram(ram: &[PhysRange]) -> Self {
        Self { ram: ram.to_vec(), pages: Mutex::default() }
    }
    fn backed(&self, access: Access, phys: PhysAddr, len: usize) -> Result<(), MemError> {
        let err = MemError { access, phys, len: len as u64 };
        let Some(r) = PhysRange::new(phys, (len as u64).max(1)) else { return Err(err) };
        if self.ram.is_empty() || self.ram.iter().any(|ram| ram.contains_range(r)) { Ok(()) } else { Err(err) }
    }
    /// Writes bytes, for setting up tests.
    ///
    /// # Panics
    /// If the bytes are not backed.
    pub fn write_bytes(&self, phys: PhysAddr, data: &[u8]) {
        self.write_phys(phys, data).expect("test memory write outside RAM");
    }
    /// Zeroes a page (forgets it).
    pub fn zero_page(&self, page: PhysAddr) {
        self.pages.lock().remove(&(page.as_u64() >> PAGE_SHIFT));
    }
    /// Pages that hold non-zero data or were written.
    #[must_use]
    pub fn touched_pages(&self) -> usize {
        self.pages.lock().len()
    }
}

impl PhysRead for SparseMem {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.backed(Access::Read, phys, buf.len())?;
        let pages = self.pages.lock();
        let mut addr = phys.as_u64();
        let mut done = 0;
        while done < buf.len() {
            let off = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_BYTES - off).min(buf.len() - done);
            match pages.get(&(addr >> PAGE_SHIFT)) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
            addr += n as u64;
        }
        Ok(())
    }
}

impl PhysWrite for SparseMem {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.backed(Access::Write, phys, data.len())?;
        let mut pages = self.pages.lock();
        let mut addr = phys.as_u64();
        let mut done = 0;
        while done < data.len() {
            let off = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_BYTES - off).min(data.len() - done);
            let p = pages.entry(addr >> PAGE_SHIFT).or_insert_with(|| Box::new([0u8; PAGE_BYTES]));
            p[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
            addr += n as u64;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Pool {
    next: u64,
    end: u64,
    free: Vec<u64>,
    live: BTreeSet<u64>,
    allocs: u64,
    fail_at: Option<u64>,
    writes: u64,
    fail_write_at: Option<u64>,
}

/// A test platform: [`SparseMem`] plus a metadata page pool carved from one range, with
/// fault injection ("the n-th allocation from now fails", "the n-th write from now fails").
#[derive(Debug)]
pub struct TestPlatform {
    /// The memory.
    pub mem: SparseMem,
    pool: Mutex<Pool>,
}

impl TestPlatform {
    /// RAM `ram`; metadata pages come from `pool` (which must lie inside RAM).
    #[must_use]
    pub fn new(ram: &[PhysRange], pool: PhysRange) -> Self {
        Self {
            mem: SparseMem::with_ram(ram),
            pool: Mutex::new(Pool { next: pool.start().as_u64(), end: pool.end().as_u64(), ..Pool::default() }),
        }
    }
    /// Makes allocation number `n` (0-based, counted from now) fail; `None` disables.
    pub fn fail_alloc_at(&self, n: Option<u64>) {
        let mut p = self.pool.lock();
        p.allocs = 0;
        p.fail_at = n;
    }
    /// Allocations attempted since the last [`TestPlatform::fail_alloc_at`].
    #[must_use]
    pub fn alloc_attempts(&self) -> u64 {
        self.pool.lock().allocs
    }
    /// Makes write number `n` (0-based, counted from now) fail with a write [`MemError`];
    /// `None` disables.
    pub fn fail_write_at(&self, n: Option<u64>) {
        let mut p = self.pool.lock();
        p.writes = 0;
        p.fail_write_at = n;
    }
    /// Writes attempted since the last [`TestPlatform::fail_write_at`].
    #[must_use]
    pub fn write_attempts(&self) -> u64 {
        self.pool.lock().writes
    }
    /// Metadata pages currently allocated.
    #[must_use]
    pub fn live_meta_pages(&self) -> BTreeSet<u64> {
        self.pool.lock().live.clone()
    }
}

impl PhysRead for TestPlatform {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read_phys(phys, buf)
    }
}
impl PhysWrite for TestPlatform {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let mut p = self.pool.lock();
        let n = p.writes;
        p.writes += 1;
        if p.fail_write_at == Some(n) {
            return Err(MemError::write(phys, data.len() as u64));
        }
        drop(p);
        self.mem.write_phys(phys, data)
    }
}
impl MetaAlloc for TestPlatform {
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        let mut p = self.pool.lock();
        let n = p.allocs;
        p.allocs += 1;
        if p.fail_at == Some(n) {
            return Err(AllocError);
        }
        let page = if let Some(pg) = p.free.pop() {
            pg
        } else if p.next + PAGE_SIZE <= p.end {
            p.next += PAGE_SIZE;
            p.next - PAGE_SIZE
        } else {
            return Err(AllocError);
        };
        p.live.insert(page);
        drop(p);
        self.mem.zero_page(PhysAddr::new(page));
        Ok(PhysAddr::new(page))
    }
    fn free_meta_page(&self, page: PhysAddr) {
        let mut p = self.pool.lock();
        assert!(p.live.remove(&page.as_u64()), "double free of metadata page {page}");
        p.free.push(page.as_u64());
    }
}

/// A memory map that records every call, for assertions.
#[derive(Debug, Default, Clone)]
pub struct RecordingMap {
    /// RAM this "kernel" manages.
    pub ram: Vec<PhysRange>,
    /// Batches passed to `reserve`.
    pub reserved: Vec<Vec<PhysRange>>,
    /// Blocks claimed as folios.
    pub folios: Vec<Block>,
    /// Blocks claimed as order-0 pages.
    pub pages: Vec<Block>,
    /// Blocks released.
    pub released: Vec<Block>,
    /// Every frame `pfn_valid` was asked about.
    pub validity_checks: Vec<Pfn>,
}

impl MemMap for RecordingMap {
    fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.ram.iter().any(|r| r.contains(pfn.phys()))
    }
    fn reserve(&mut self, ranges: &[PhysRange]) {
        self.reserved.push(ranges.to_vec());
    }
    fn claim_folio(&mut self, block: Block) {
        self.folios.push(block);
    }
    fn claim_pages(&mut self, block: Block) {
        self.pages.push(block);
    }
    fn release(&mut self, block: Block) {
        self.released.push(block);
    }
}
