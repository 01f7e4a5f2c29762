//! A platform like a kernel's direct map: metadata pages are plain words in one arena, read
//! and written in place, so the numbers measure the engine and not a test harness.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use kho_core::{AllocError, MemError, MetaAlloc, PAGE_SIZE, PhysAddr, PhysRead, PhysWrite};

/// Metadata memory at `[base, base + bytes)`, page-allocated by a bump pointer plus a free
/// list. Words are relaxed atomics (plain loads and stores on x86-64) so two threads can
/// preserve at once.
#[derive(Debug)]
pub struct DirectMap {
    base: u64,
    words: Box<[AtomicU64]>,
    pool: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    next: u64,
    free: Vec<u64>,
    live: u64,
    peak: u64,
}

impl DirectMap {
    /// An arena of `bytes` (rounded to pages) at physical address `base`.
    #[must_use]
    pub fn new(base: u64, bytes: u64) -> Self {
        let n = usize::try_from(bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE / 8).expect("arena fits in memory");
        let words = std::iter::repeat_with(|| AtomicU64::new(0)).take(n).collect();
        Self { base, words, pool: Mutex::new(Pool { next: base, ..Pool::default() }) }
    }

    /// The arena's physical range start.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The arena's size in bytes.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// Most pages live at once since creation.
    #[must_use]
    pub fn peak_pages(&self) -> u64 {
        self.pool.lock().map_or(0, |p| p.peak)
    }

    #[inline]
    fn index(&self, phys: u64) -> Option<usize> {
        usize::try_from(phys.checked_sub(self.base)? / 8).ok().filter(|&i| i < self.words.len())
    }

    /// The word at `phys` (8-byte aligned), as a kernel dereferences its direct map; 0 when
    /// outside the arena.
    #[inline]
    #[must_use]
    pub fn load(&self, phys: u64) -> u64 {
        self.index(phys).map_or(0, |i| self.words[i].load(Relaxed))
    }

    /// The words of the page at `phys` (page aligned, inside the arena).
    #[must_use]
    pub fn page_words(&self, phys: u64) -> &[AtomicU64] {
        let i = self.index(phys).unwrap_or(0);
        let n = (PAGE_SIZE / 8) as usize;
        &self.words[i..(i + n).min(self.words.len())]
    }
}

impl PhysRead for DirectMap {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let err = MemError::read(phys, buf.len() as u64);
        let p = phys.as_u64();
        if p.is_multiple_of(8) {
            let first = self.index(p).ok_or(err)?;
            let n = buf.len().div_ceil(8);
            let words = self.words.get(first..first + n).ok_or(err)?;
            for (chunk, w) in buf.chunks_mut(8).zip(words) {
                chunk.copy_from_slice(&w.load(Relaxed).to_le_bytes()[..chunk.len()]);
            }
            return Ok(());
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let a = p + i as u64;
            let w = self.index(a & !7).ok_or(err)?;
            *b = self.words[w].load(Relaxed).to_le_bytes()[(a & 7) as usize];
        }
        Ok(())
    }
    #[inline]
    fn read_u64(&self, phys: PhysAddr) -> Result<u64, MemError> {
        let p = phys.as_u64();
        match self.index(p) {
            Some(i) if p.is_multiple_of(8) => Ok(self.words[i].load(Relaxed)),
            _ => {
                let mut b = [0u8; 8];
                self.read_phys(phys, &mut b)?;
                Ok(u64::from_le_bytes(b))
            }
        }
    }
}

impl PhysWrite for DirectMap {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let err = MemError::write(phys, data.len() as u64);
        let p = phys.as_u64();
        for (i, chunk) in data.chunks(8).enumerate() {
            let a = p + 8 * i as u64;
            if a.is_multiple_of(8) && chunk.len() == 8 {
                let w = self.index(a).ok_or(err)?;
                self.words[w].store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Relaxed);
            } else {
                for (j, &b) in chunk.iter().enumerate() {
                    let a = a + j as u64;
                    let w = self.index(a & !7).ok_or(err)?;
                    let mut bytes = self.words[w].load(Relaxed).to_le_bytes();
                    bytes[(a & 7) as usize] = b;
                    self.words[w].store(u64::from_le_bytes(bytes), Relaxed);
                }
            }
        }
        Ok(())
    }
    #[inline]
    fn write_u64(&self, phys: PhysAddr, value: u64) -> Result<(), MemError> {
        let p = phys.as_u64();
        match self.index(p) {
            Some(i) if p.is_multiple_of(8) => {
                self.words[i].store(value, Relaxed);
                Ok(())
            }
            _ => self.write_phys(phys, &value.to_le_bytes()),
        }
    }
}

impl MetaAlloc for DirectMap {
    fn alloc_meta_page(&self) -> Result<PhysAddr, AllocError> {
        let page = {
            let mut p = self.pool.lock().map_err(|_| AllocError)?;
            let page = match p.free.pop() {
                Some(page) => page,
                None => {
                    if p.next + PAGE_SIZE > self.base + self.bytes() {
                        return Err(AllocError);
                    }
                    p.next += PAGE_SIZE;
                    p.next - PAGE_SIZE
                }
            };
            p.live += 1;
            p.peak = p.peak.max(p.live);
            page
        };
        for w in self.page_words(page) {
            w.store(0, Relaxed);
        }
        Ok(PhysAddr::new(page))
    }
    fn free_meta_page(&self, page: PhysAddr) {
        if let Ok(mut p) = self.pool.lock() {
            p.live = p.live.saturating_sub(1);
            p.free.push(page.as_u64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_pages_are_zeroed_on_reuse() {
        let m = DirectMap::new(1 << 30, 4 * PAGE_SIZE);
        let p = m.alloc_meta_page().unwrap();
        assert_eq!(p, PhysAddr::new(1 << 30));
        m.write_u64(PhysAddr::new(p.as_u64() + 8), 0xdead_beef).unwrap();
        assert_eq!(m.load(p.as_u64() + 8), 0xdead_beef);
        let mut b = [0u8; 3];
        m.read_phys(PhysAddr::new(p.as_u64() + 8), &mut b).unwrap();
        assert_eq!(b, [0xef, 0xbe, 0xad]);
        m.free_meta_page(p);
        let q = m.alloc_meta_page().unwrap();
        assert_eq!(q, p);
        assert_eq!(m.load(p.as_u64() + 8), 0);
        assert_eq!(m.read_u64(PhysAddr::new(0)), Err(MemError::read(PhysAddr::new(0), 8)));
    }

    #[test]
    fn the_arena_runs_out() {
        let m = DirectMap::new(1 << 30, PAGE_SIZE);
        assert!(m.alloc_meta_page().is_ok());
        assert_eq!(m.alloc_meta_page(), Err(AllocError));
        assert_eq!(m.peak_pages(), 1);
    }
}
