//! Memory-source scaling at 10^6 elements (issue 10, class 2): opening an ELF core with 10^5,
//! 3 * 10^5 and 10^6 program headers (the `PN_XNUM` extension), listed at descending addresses.
//! Each segment is added in O(log n); with a sorted vector every insert at the front moved
//! every segment present (about 30 minutes at 10^6). Time per header must stay flat.
//!
//! Run: `cargo bench -p kho-cli --bench memsrc` (add `-- --quick` for a short run).

#![allow(dead_code, unused_imports, missing_debug_implementations, clippy::all)]

#[path = "../src/memsrc/mod.rs"]
mod memsrc;

use std::hint::black_box;
use std::io::Write;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// An ELF64 core with `n` one-page `PT_LOAD`s (no file data) at descending addresses;
/// `e_phnum` is `PN_XNUM` and section header 0 holds the count.
fn core_with(n: usize) -> Vec<u8> {
    let phoff = 64usize;
    let shoff = phoff + 56 * n;
    let mut out = vec![0u8; shoff + 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&4u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
    out[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    out[58..60].copy_from_slice(&64u16.to_le_bytes());
    out[60..62].copy_from_slice(&1u16.to_le_bytes());
    for i in 0..n {
        let ph = phoff + 56 * i;
        let paddr = 0x1000_0000u64 + (n - 1 - i) as u64 * 0x2000;
        out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes()); // p_memsz
    }
    // Section header 0: sh_info (offset 44) holds the real program header count.
    out[shoff + 44..shoff + 48].copy_from_slice(&(n as u32).to_le_bytes());
    out
}

fn elf_program_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("elf_open_program_headers");
    g.sample_size(10);
    for n in [100_000usize, 300_000, 1_000_000] {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&core_with(n)).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), f.path(), |b, path| {
            b.iter(|| {
                let m = memsrc::elf::open(black_box(path)).unwrap();
                assert_eq!(m.segment_count(), n);
            });
        });
    }
    g.finish();
}

criterion_group!(benches, elf_program_headers);
criterion_main!(benches);
