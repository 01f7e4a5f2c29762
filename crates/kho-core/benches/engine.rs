//! Speed targets (issue: "built for TiB hosts"):
//! - preserving a folio costs nanoseconds (a lock, an O(log n) lookup, one word update);
//! - validating and reserving 1 TiB preserved at order 0 takes milliseconds, because the
//!   incoming side works a bitmap word at a time and never per page.
//!
//! Run: `cargo bench -p kho-core --bench engine`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kho_core::format::{BitmapBytes, FormatVersion, v1, v4};
use kho_core::testing::{RecordingMap, TestPlatform};
use kho_core::{
    BlockSet, Handover, HandoverPtr, IncomingConfig, Kho, Order, OutgoingConfig, Pfn, PhysAddr, PhysRange, PhysWrite,
};

const TIB: u64 = 1 << 40;
const RAM_START: u64 = 1 << 30;

fn ram(bytes: u64) -> Vec<PhysRange> {
    vec![PhysRange::new(PhysAddr::new(RAM_START), bytes).unwrap()]
}

/// A platform like a kernel's direct map: metadata pages are plain words, no locks, no
/// lookups, so the benchmark measures the engine, not the test harness.
struct FlatPlatform {
    base: u64,
    words: Vec<std::sync::atomic::AtomicU64>,
    next: std::sync::atomic::AtomicU64,
}

impl FlatPlatform {
    fn new(base: u64, bytes: u64) -> Self {
        let words = (0..bytes / 8).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        Self { base, words, next: std::sync::atomic::AtomicU64::new(base) }
    }
    fn word(&self, phys: PhysAddr) -> Option<&std::sync::atomic::AtomicU64> {
        self.words.get(usize::try_from(phys.as_u64().checked_sub(self.base)? / 8).ok()?)
    }
}

impl kho_core::PhysRead for FlatPlatform {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), kho_core::MemError> {
        let err = kho_core::MemError::read(phys, buf.len() as u64);
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let w = self.word(PhysAddr::new(phys.as_u64() + 8 * i as u64)).ok_or(err)?;
            chunk.copy_from_slice(&w.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
    fn read_u64(&self, phys: PhysAddr) -> Result<u64, kho_core::MemError> {
        let w = self.word(phys).ok_or(kho_core::MemError::read(phys, 8))?;
        Ok(w.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl kho_core::PhysWrite for FlatPlatform {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), kho_core::MemError> {
        let err = kho_core::MemError::write(phys, data.len() as u64);
        for (i, chunk) in data.chunks(8).enumerate() {
            let w = self.word(PhysAddr::new(phys.as_u64() + 8 * i as u64)).ok_or(err)?;
            let mut b = w.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes();
            b[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
    fn write_u64(&self, phys: PhysAddr, value: u64) -> Result<(), kho_core::MemError> {
        self.word(phys).ok_or(kho_core::MemError::write(phys, 8))?.store(value, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl kho_core::MetaAlloc for FlatPlatform {
    fn alloc_meta_page(&self) -> Result<PhysAddr, kho_core::AllocError> {
        let p = self.next.fetch_add(4096, std::sync::atomic::Ordering::Relaxed);
        if p + 4096 > self.base + self.words.len() as u64 * 8 {
            Err(kho_core::AllocError)
        } else {
            Ok(PhysAddr::new(p))
        }
    }
    fn free_meta_page(&self, _page: PhysAddr) {}
}

fn bench_preserve(c: &mut Criterion) {
    let ram = ram(64 << 30);
    let plat = FlatPlatform::new(RAM_START + (60 << 30), 64 << 20);
    let kho = Kho::new(&plat, OutgoingConfig::new(ram.clone(), vec![])).unwrap();
    let base = RAM_START >> 12;
    for i in 0..(1u64 << 19) {
        kho.preserve_folio(Pfn::new(base + i * 8).unwrap(), Order::ZERO).unwrap();
    }
    let mut next = 1u64;
    c.bench_function("direct map: preserve_folio+unpreserve_folio order 0 (16 GiB tracked)", |b| {
        b.iter(|| {
            let pfn = Pfn::new(base + (next % (1 << 19)) * 8 + 1).unwrap();
            next = next.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            kho.preserve_folio(black_box(pfn), Order::ZERO).unwrap();
            kho.unpreserve_folio(pfn, Order::ZERO).unwrap();
        });
    });
    bench_preserve_test_platform(c);
}

fn bench_preserve_test_platform(c: &mut Criterion) {
    let ram = ram(64 << 30);
    let pool = PhysRange::new(PhysAddr::new(RAM_START + (60 << 30)), 1 << 30).unwrap();
    let plat = TestPlatform::new(&ram, pool);
    let kho = Kho::new(&plat, OutgoingConfig::new(ram.clone(), vec![])).unwrap();
    let base = RAM_START >> 12;
    // Pre-populate so lookups hit a realistic map (16 GiB tracked at order 0, 1 bit in 8).
    for i in 0..(1u64 << 19) {
        kho.preserve_folio(Pfn::new(base + i * 8).unwrap(), Order::ZERO).unwrap();
    }
    let mut next = 1u64;
    c.bench_function("test platform: preserve_folio+unpreserve_folio order 0 (16 GiB tracked)", |b| {
        b.iter(|| {
            let pfn = Pfn::new(base + (next % (1 << 19)) * 8 + 1).unwrap();
            next = next.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            kho.preserve_folio(black_box(pfn), Order::ZERO).unwrap();
            kho.unpreserve_folio(pfn, Order::ZERO).unwrap();
        });
    });
}

/// A handover with `[RAM_START, RAM_START + bytes)` preserved at order 0 where `pattern` has
/// a bit set (all ones: every page; 0x5555...: every other page), built directly from
/// bitmaps (preserving 2^28 folios one by one would dominate setup).
fn handover(bytes: u64, format: FormatVersion, pattern: u64) -> (TestPlatform, HandoverPtr, Vec<PhysRange>) {
    let ram = ram(bytes + (4 << 30));
    let meta_base = RAM_START + bytes;
    let plat = TestPlatform::new(&ram, PhysRange::new(PhysAddr::new(meta_base + (1 << 30)), 1 << 30).unwrap());
    let pages = bytes >> 12;
    let memory_map = match format {
        FormatVersion::V1 => {
            let bitmap = BitmapBytes::B512;
            let ones: Vec<u8> = pattern.to_le_bytes().iter().copied().cycle().take(bitmap.bytes() as usize).collect();
            let n = pages / bitmap.bits();
            let mut entries = Vec::new();
            for i in 0..n {
                let at = PhysAddr::new(meta_base + i * bitmap.bytes());
                plat.write_phys(at, &ones).unwrap();
                let phys_start = PhysAddr::new(RAM_START + i * (bitmap.bits() << 12));
                entries.push(v1::Entry { order: Order::ZERO, phys_start, bitmap: at });
            }
            v1::encode(&plat, &entries).unwrap().first
        }
        FormatVersion::V4 => {
            let mut set = BlockSet::new();
            let words = vec![pattern; 512];
            for unit in 0..pages / 32768 {
                set.insert_words(Order::ZERO, (RAM_START >> 12) + unit * 32768, &words, PhysAddr::new(0)).unwrap();
            }
            v4::encode(&plat, &set).unwrap().root
        }
    };
    let scratch = PhysRange::new(PhysAddr::new(meta_base + (2 << 30)), 64 << 20).unwrap();
    let fdt_page = PhysAddr::new(meta_base + (3 << 30));
    let dtb = kho_core::format::root::build(format, memory_map, &[]).unwrap();
    plat.write_phys(fdt_page, &dtb).unwrap();
    let scratch_page = PhysAddr::new(meta_base + (3 << 30) + 4096);
    plat.write_phys(scratch_page, &kho_core::format::scratch::encode(&[scratch])).unwrap();
    let ptr = HandoverPtr { fdt: fdt_page, fdt_size: 4096, scratch: scratch_page, scratch_size: 16 };
    (plat, ptr, ram)
}

/// Times `Handover::parse` plus `reserve` of one prepared handover.
fn parse_and_reserve(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    format: FormatVersion,
    plat: &TestPlatform,
    ptr: &HandoverPtr,
    ram: &[PhysRange],
) {
    let cfg = IncomingConfig::new(ram.to_vec());
    g.bench_function(format.compatible(), |b| {
        b.iter_batched(
            || RecordingMap { ram: ram.to_vec(), ..RecordingMap::default() },
            |mut map| {
                let h = Handover::parse(plat, ptr, &cfg).unwrap();
                h.reserve(&mut map);
                black_box(map.reserved.len())
            },
            BatchSize::SmallInput,
        );
    });
}

fn bench_incoming(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate+reserve 1 TiB at order 0");
    g.sample_size(10);
    for format in [FormatVersion::V1, FormatVersion::V4] {
        let (plat, ptr, ram) = handover(TIB, format, u64::MAX);
        // Sanity: the whole TiB is one reserved range.
        let h = Handover::parse(&plat, &ptr, &IncomingConfig::new(ram.clone())).unwrap();
        assert_eq!(h.preserved_blocks(), TIB >> 12);
        assert_eq!(h.reserved_ranges().len(), 1);
        parse_and_reserve(&mut g, format, &plat, &ptr, &ram);
    }
    g.finish();
}

/// The worst case for coalescing: every other page preserved, so every block is its own
/// range (Linux reserves these one by one into a sorted array: 4.8 s for 65,536 of them
/// measured on this machine).
fn bench_scattered(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate+reserve 16 GiB, every other page (2^21 scattered blocks)");
    g.sample_size(10);
    for format in [FormatVersion::V1, FormatVersion::V4] {
        let (plat, ptr, ram) = handover(16 << 30, format, 0x5555_5555_5555_5555);
        let h = Handover::parse(&plat, &ptr, &IncomingConfig::new(ram.clone())).unwrap();
        assert_eq!(h.reserved_ranges().len(), 1 << 21);
        parse_and_reserve(&mut g, format, &plat, &ptr, &ram);
    }
    g.finish();
}

criterion_group!(benches, bench_preserve, bench_incoming, bench_scattered);
criterion_main!(benches);
