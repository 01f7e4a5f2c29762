//! Test memory: sparse 4 KiB pages over a list of RAM ranges; reads and writes outside RAM
//! fail as the identity map's do.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::cell::RefCell;

use kho_core::{MemError, PhysAddr, PhysRead, PhysWrite};

/// Sparse physical memory for host tests.
#[derive(Debug, Default, Clone)]
pub struct TestMem {
    ram: alloc::vec::Vec<(u64, u64)>,
    pages: RefCell<BTreeMap<u64, Box<[u8; 4096]>>>,
}

impl TestMem {
    /// RAM given as (start, length) pairs.
    pub fn new(ram: &[(u64, u64)]) -> Self {
        Self { ram: ram.to_vec(), pages: RefCell::default() }
    }

    fn backed(&self, phys: u64, len: u64) -> bool {
        let Some(end) = phys.checked_add(len) else { return false };
        self.ram.iter().any(|&(s, l)| phys >= s && end <= s + l)
    }

    /// Writes bytes (test setup; panics outside RAM).
    pub fn write(&self, phys: u64, data: &[u8]) {
        self.write_phys(PhysAddr::new(phys), data).expect("test write inside RAM");
    }

    /// Reads bytes (test check; panics outside RAM).
    pub fn read(&self, phys: u64, len: usize) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec![0u8; len];
        self.read_phys(PhysAddr::new(phys), &mut v).expect("test read inside RAM");
        v
    }
}

impl PhysRead for TestMem {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        if !self.backed(phys.as_u64(), buf.len() as u64) {
            return Err(MemError::read(phys, buf.len() as u64));
        }
        let pages = self.pages.borrow();
        let mut addr = phys.as_u64();
        for chunk in buf.chunks_mut(4096) {
            let mut done = 0;
            while done < chunk.len() {
                let off = (addr & 4095) as usize;
                let n = (4096 - off).min(chunk.len() - done);
                match pages.get(&(addr >> 12)) {
                    Some(p) => chunk[done..done + n].copy_from_slice(&p[off..off + n]),
                    None => chunk[done..done + n].fill(0),
                }
                done += n;
                addr += n as u64;
            }
        }
        Ok(())
    }
}

impl PhysWrite for TestMem {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        if !self.backed(phys.as_u64(), data.len() as u64) {
            return Err(MemError::write(phys, data.len() as u64));
        }
        let mut pages = self.pages.borrow_mut();
        let mut addr = phys.as_u64();
        let mut done = 0;
        while done < data.len() {
            let off = (addr & 4095) as usize;
            let n = (4096 - off).min(data.len() - done);
            let p = pages.entry(addr >> 12).or_insert_with(|| Box::new([0u8; 4096]));
            p[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
            addr += n as u64;
        }
        Ok(())
    }
}
