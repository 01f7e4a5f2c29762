//! Decoder scaling at 10^6 elements (issue 10, class 2): every decoder must be O(n log n) or
//! better in its input. Here: an FDT node with 10^4, 10^5 and 10^6 properties (the duplicate
//! check sorts names; it used to compare every pair, 5 * 10^11 comparisons at 10^6). The time
//! per property must stay flat across the three sizes.
//!
//! Run: `cargo bench -p kho-core --bench decoders` (add `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kho_core::fdt::{FDT_MAGIC, FdtTree};
use kho_core::{Field, PhysAddr};

/// A DTB whose root node has `n` distinct 4-byte properties.
fn wide_dtb(n: usize) -> Vec<u8> {
    let mut st: Vec<u8> = Vec::with_capacity(16 * n + 32);
    let mut strings: Vec<u8> = Vec::with_capacity(9 * n);
    st.extend_from_slice(&1u32.to_be_bytes());
    st.extend_from_slice(&[0; 4]);
    for i in 0..n {
        let off = strings.len() as u32;
        strings.extend_from_slice(format!("p{i:07}").as_bytes());
        strings.push(0);
        st.extend_from_slice(&3u32.to_be_bytes());
        st.extend_from_slice(&4u32.to_be_bytes());
        st.extend_from_slice(&off.to_be_bytes());
        st.extend_from_slice(&(i as u32).to_le_bytes());
    }
    st.extend_from_slice(&2u32.to_be_bytes());
    st.extend_from_slice(&9u32.to_be_bytes());
    let off_str = 56 + st.len() as u32;
    let total = off_str + strings.len() as u32;
    let mut out = Vec::with_capacity(total as usize);
    for v in [FDT_MAGIC, total, 56, off_str, 40, 17, 16, 0, strings.len() as u32, st.len() as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&st);
    out.extend_from_slice(&strings);
    out
}

fn fdt_properties(c: &mut Criterion) {
    let mut g = c.benchmark_group("fdt_parse_properties");
    g.sample_size(10);
    for n in [10_000usize, 100_000, 1_000_000] {
        let dtb = wide_dtb(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &dtb, |b, dtb| {
            b.iter(|| {
                let t = FdtTree::parse(black_box(dtb), Field::Blob, PhysAddr::new(0)).unwrap();
                assert_eq!(t.root.props.len(), n);
            });
        });
    }
    g.finish();
}

criterion_group!(benches, fdt_properties);
criterion_main!(benches);
