//! Writes the seed corpora under `fuzz/corpus/<target>/`: real captures from `tests/data`
//! and small handovers the engine builds on the fuzz machine (RAM at 1 MiB, metadata in the
//! first pages so it lands in the image part of the input).
//!
//! Run from `fuzz/`: `cargo +nightly run --example gen_corpus` (an optional argument names
//! another output directory). Re-running overwrites the `seed-*` files and leaves the rest of
//! the corpus alone.

use std::fs;
use std::path::{Path, PathBuf};

use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::format::test_kho::{TestKho, folio_entry};
use kho_core::format::vmalloc::{self, KhoVmalloc};
use kho_core::format::{BitmapBytes, FormatVersion, Limits, memblock, root};
use kho_core::testing::TestPlatform;
use kho_core::{Block, Kho, Order, OutgoingConfig, PAGE_SIZE, Pfn, PhysAddr, PhysRange, PhysRead};
use kho_fuzz::{IMAGE_MAX_PAGES, Mutation, RAM_BASE, dump_image, encode_mutate, ram, range, scratch_to};

/// Pool pages for seed handovers; pages above it (up to the image size) hold blobs.
const SEED_POOL_PAGES: u64 = 48;
const BLOB_PAGE: u64 = RAM_BASE + 56 * PAGE_SIZE;
const VM_PAGE: u64 = RAM_BASE + 60 * PAGE_SIZE;

struct Out {
    dir: PathBuf,
    written: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let d = self.dir.join(target);
        fs::create_dir_all(&d).expect("create corpus directory");
        fs::write(d.join(format!("seed-{name}")), bytes).expect("write seed");
        self.written += 1;
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data(rel: &str) -> Vec<u8> {
    fs::read(repo().join("tests/data").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn blk(phys: u64, order: u32) -> Block {
    Block::at(PhysAddr::new(phys), Order::new(order).unwrap()).unwrap()
}

/// A preserved set: a few folios of mixed orders and a page range, all above the image.
fn shapes() -> Vec<(&'static str, Vec<Block>, Option<(u64, u64)>)> {
    vec![
        ("empty", vec![], None),
        ("folios", vec![blk(0x40_0000, 0), blk(0x40_2000, 1), blk(0x60_0000, 9), blk(0x1c0_0000, 10)], None),
        ("range", vec![blk(0x50_0000, 0)], Some((0x100_0000 >> 12, 300))),
        ("wide", vec![blk(0x20_0000, 0), blk(0x1f0_0000, 0), blk(0x180_0000, 3)], Some((0x70_0000 >> 12, 17))),
    ]
}

fn scratch() -> Vec<PhysRange> {
    vec![range(RAM_BASE + (8 << 20), 4 << 20)]
}

/// Builds and finalizes one seed handover; returns the platform and the result.
fn handover(
    blocks: &[Block],
    pages: Option<(u64, u64)>,
    format: FormatVersion,
    bitmap: BitmapBytes,
) -> (TestPlatform, kho_core::Finalized) {
    let plat = TestPlatform::new(&ram(), range(RAM_BASE, SEED_POOL_PAGES * PAGE_SIZE));
    let mut cfg = OutgoingConfig::new(ram(), scratch());
    cfg.bitmap_bytes = bitmap;
    let fin = {
        let kho = Kho::new(&plat, cfg).unwrap();
        for b in blocks {
            kho.preserve_folio(b.pfn(), b.order()).unwrap();
        }
        if let Some((pfn, n)) = pages {
            kho.preserve_pages(Pfn::new(pfn).unwrap(), n).unwrap();
        }
        let mb = memblock::build(&[memblock::ReserveMem {
            name: "trace".into(),
            start: PhysAddr::new(RAM_BASE + (16 << 20)),
            size: 1 << 20,
        }])
        .unwrap();
        plat.mem.write_bytes(PhysAddr::new(BLOB_PAGE), &mb);
        kho.add_subtree("memblock", PhysAddr::new(BLOB_PAGE), mb.len() as u64).unwrap();
        if format == FormatVersion::V4 {
            let md = KexecMetadata::new("7.3.4-seed", 1).to_bytes();
            plat.mem.write_bytes(PhysAddr::new(BLOB_PAGE + PAGE_SIZE), &md);
            kho.add_subtree("kexec-metadata", PhysAddr::new(BLOB_PAGE + PAGE_SIZE), md.len() as u64).unwrap();
        }
        kho.finalize(format).unwrap()
    };
    (plat, fin)
}

fn le(v: &mut Vec<u8>, x: u64, n: usize) {
    v.extend_from_slice(&x.to_le_bytes()[..n]);
}

fn main() {
    let dir = std::env::args().nth(1).map_or_else(|| repo().join("fuzz/corpus"), PathBuf::from);
    let mut out = Out { dir, written: 0 };

    // ---- real data --------------------------------------------------------------------
    for (name, rel) in [
        ("linux-7.3.4-fdt", "captures/linux-7.3.4-test_kho/fdt.dtb"),
        ("linux-7.3.4-in-fdt", "captures/linux-7.3.4-test_kho/debugfs/kernel2-in-fdt.dtb"),
        ("linux-7.3.4-out-fdt-truncated", "captures/linux-7.3.4-test_kho/debugfs/kernel1-out-fdt.truncated.dtb"),
        ("spec-v1-small", "spec-examples/v1-small/fdt.dtb"),
    ] {
        out.put("root_fdt", name, &data(rel));
    }
    for (name, rel) in [
        ("linux-kho_test-out", "captures/linux-7.3.4-test_kho/debugfs/kernel1-out-sub_fdts-kho_test.bin"),
        ("linux-kho_test-in", "captures/linux-7.3.4-test_kho/debugfs/kernel2-in-sub_fdts-kho_test.bin"),
        ("linux-kexec-metadata", "captures/linux-7.3.4-test_kho/debugfs/kernel2-in-sub_fdts-kexec-metadata.bin"),
    ] {
        out.put("sub_blobs", name, &data(rel));
    }
    let setup = data("captures/linux-7.3.4-test_kho/kernel2-setup_data-SETUP_KEXEC_KHO.bin");
    out.put("handover_ptr", "linux-kho_data", &setup);

    // ---- built blobs --------------------------------------------------------------------
    let mb = memblock::build(&[
        memblock::ReserveMem { name: "trace".into(), start: PhysAddr::new(0x1_0000_0000), size: 1 << 20 },
        memblock::ReserveMem { name: "oops".into(), start: PhysAddr::new(0x2_0000_0000), size: 1 << 16 },
    ])
    .unwrap();
    out.put("sub_blobs", "memblock", &mb);
    out.put("sub_blobs", "kexec-metadata", &KexecMetadata::new("6.18.0-rc3", 2).to_bytes());
    let desc = KhoVmalloc { first: PhysAddr::new(0x29_3000), total_pages: 1, flags: vmalloc::FLAG_ALLOC, order: 0 };
    out.put("sub_blobs", "kho_vmalloc", &desc.to_bytes());
    let tk = TestKho { nr_folios: 3, folios_info: desc, csum: 0x1234_5678 };
    out.put("sub_blobs", "test_kho", &tk.to_blob().unwrap());

    let p = kho_core::HandoverPtr {
        fdt: PhysAddr::new(0x18_2000),
        fdt_size: PAGE_SIZE,
        scratch: PhysAddr::new(0x18_3000),
        scratch_size: 48,
    };
    out.put("handover_ptr", "setup_data-node", &p.to_setup_data_node(PhysAddr::new(0)));
    // Cursor layout: ac, sc, present, len1, v1, len2, v2, then a device tree with /chosen.
    let chosen = p.to_chosen(2, 2);
    let mut v = vec![2u8, 2, 3, chosen[0].1.len() as u8];
    v.extend_from_slice(&chosen[0].1);
    v.push(chosen[1].1.len() as u8);
    v.extend_from_slice(&chosen[1].1);
    let mut ch = kho_core::fdt::FdtNode::new("chosen");
    for (name, value) in &chosen {
        ch = ch.prop(name, value);
    }
    let dt = kho_core::fdt::FdtTree {
        root: kho_core::fdt::FdtNode::new("")
            .prop("#address-cells", &2u32.to_be_bytes())
            .prop("#size-cells", &2u32.to_be_bytes())
            .child(ch),
    };
    v.extend_from_slice(&dt.to_dtb().unwrap());
    out.put("handover_ptr", "chosen-2-2", &v);

    // ---- handovers on the fuzz machine ---------------------------------------------------
    let variants = [
        ("v1-512", FormatVersion::V1, BitmapBytes::B512),
        ("v1-4096", FormatVersion::V1, BitmapBytes::B4096),
        ("v4", FormatVersion::V4, BitmapBytes::B512),
    ];
    for (vname, format, bitmap) in variants {
        for (sname, blocks, pages) in shapes() {
            let (plat, fin) = handover(&blocks, pages, format, bitmap);
            let name = format!("{vname}-{sname}");
            let image = dump_image(&plat.mem, IMAGE_MAX_PAGES as u64);
            let mut fdt = vec![0u8; PAGE_SIZE as usize];
            plat.read_phys(fin.ptr.fdt, &mut fdt).unwrap();
            let r = root::parse(&fdt, fin.ptr.fdt, &Limits::default()).unwrap();
            let (soff, spages) = scratch_to(scratch()[0]);
            let b4096 = u8::from(bitmap == BitmapBytes::B4096);

            // v1_chunks / v4_radix: flags, pointer, scratch, limit, image.
            let mut v = vec![b4096];
            le(&mut v, r.memory_map.as_u64(), 8);
            le(&mut v, u64::from(soff), 4);
            le(&mut v, u64::from(spages), 4);
            le(&mut v, 0, 2);
            v.extend_from_slice(&image);
            out.put(if format == FormatVersion::V1 { "v1_chunks" } else { "v4_radix" }, &name, &v);

            // handover_image: kho_data, config, restores, image.
            let mut v = fin.ptr.to_setup_data_payload().to_vec();
            v.push(b4096 | (10 << 2));
            let first = blocks.first().map_or(0, |b| (b.phys().as_u64() - RAM_BASE) / PAGE_SIZE);
            let (ppfn, pn) = pages.unwrap_or((RAM_BASE >> 12, 1));
            for x in [first, 0, ppfn - (RAM_BASE >> 12), pn - 1] {
                le(&mut v, x, 2);
            }
            v.extend_from_slice(&image);
            out.put("handover_image", &name, &v);
            // The seed must decode to the handover it came from.
            let mut icfg = kho_core::IncomingConfig::new(ram());
            icfg.v1_bitmap_bytes = bitmap;
            let h = kho_core::Handover::parse(&kho_fuzz::image_mem(&image), &fin.ptr, &icfg)
                .unwrap_or_else(|e| panic!("seed {name} does not parse: {e}"));
            assert_eq!(h.preserved_blocks(), fin.preserved_blocks, "seed {name}");

            // scratch_array: flags, array, size, max, image.
            if format == FormatVersion::V4 {
                let mut v = vec![0u8];
                le(&mut v, fin.ptr.scratch.as_u64(), 8);
                le(&mut v, fin.ptr.scratch_size, 8);
                le(&mut v, 0, 2);
                v.extend_from_slice(&image);
                out.put("scratch_array", &name, &v);
            }
            if sname == "folios" {
                out.put("root_fdt", &name, &fdt[..usize::try_from(u32::from_be_bytes(fdt[4..8].try_into().unwrap())).unwrap()]);
            }
        }
    }

    // vmalloc_chain: a two-piece area whose content is a test_kho folios_info array.
    for (name, order, npieces) in [("order0", 0u32, 2u64), ("order1", 1, 1)] {
        let plat = TestPlatform::new(&ram(), range(RAM_BASE, SEED_POOL_PAGES * PAGE_SIZE));
        let folios = [blk(0x40_0000, 0), blk(0x60_0000, 9), blk(0x1f0_0000, 2)];
        let mut arr = Vec::new();
        for &b in &folios {
            arr.extend_from_slice(&folio_entry(b).to_le_bytes());
        }
        plat.mem.write_bytes(PhysAddr::new(VM_PAGE), &arr);
        let o = Order::new(order).unwrap();
        let pieces: Vec<PhysAddr> =
            (0..npieces).map(|i| PhysAddr::new(VM_PAGE + i * o.bytes())).collect();
        let (desc, _) = vmalloc::encode(&plat, &pieces, o, vmalloc::FLAG_ALLOC).unwrap();
        let image = dump_image(&plat.mem, IMAGE_MAX_PAGES as u64);
        let mut v = vec![0u8];
        v.extend_from_slice(&desc.to_bytes());
        let (soff, spages) = scratch_to(scratch()[0]);
        le(&mut v, u64::from(soff), 4);
        le(&mut v, u64::from(spages), 4);
        le(&mut v, folios.len() as u64, 4);
        v.extend_from_slice(&image);
        out.put("vmalloc_chain", name, &v);
    }

    // Structure-aware targets: a few op lists, unmutated and lightly mutated.
    let ops = [(0u8, 0x100u16, 0u8), (0, 0x400, 9), (1, 0x1000, 200), (0, 0x3000, 10), (2, 0x100, 0)];
    let muts = [
        Mutation { target: 1, kind: 1, offset: 8, value: 41 },
        Mutation { target: 0, kind: 0, offset: 0x40, value: 0xff },
        Mutation { target: 2, kind: 2, offset: 0, value: 1 },
    ];
    for (target, flags) in [("mutate_v1", 0u8), ("mutate_v1", 3), ("mutate_v4", 2)] {
        let tag = format!("flags{flags}");
        out.put(target, &format!("{tag}-plain"), &encode_mutate(flags, &ops, &[]));
        out.put(target, &format!("{tag}-mutated"), &encode_mutate(flags, &ops[..3], &muts));
    }

    // kho-cli parsers.
    out.put("elf_core", "two-loads", &elf_core(&[(RAM_BASE, 0x2000, 0x1000), (0x1_0000_0000, 0x1000, 0x1000)]));
    out.put("elf_core", "kcore-style", &elf_core(&[(u64::MAX, 0x1000, 0x1000), (0, 0x1000, 0)]));
    for (name, text) in [
        ("mem-spec", "mem.img@0x100000000"),
        ("number-suffix", "16_M"),
        ("iomem", "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n00100000-7ffdffff : System RAM\n  01000000-01ffffff : Kernel code\n"),
        ("iomem-hidden", "00000000-00000000 : System RAM\n"),
    ] {
        out.put("mem_arg", name, text.as_bytes());
    }
    println!("wrote {} seeds under {}", out.written, out.dir.display());
}

/// A minimal little-endian ELF64 core with one `PT_LOAD` per `(paddr, memsz, filesz)`; the
/// file data follows the headers, filled with a pattern.
fn elf_core(loads: &[(u64, u64, u64)]) -> Vec<u8> {
    let phoff = 64u64;
    let data_off = phoff + 56 * loads.len() as u64;
    let mut v = Vec::new();
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    v.extend_from_slice(&[0; 8]);
    le(&mut v, 4, 2); // e_type ET_CORE
    le(&mut v, 62, 2); // e_machine x86-64
    le(&mut v, 1, 4); // e_version
    le(&mut v, 0, 8); // e_entry
    le(&mut v, phoff, 8);
    le(&mut v, 0, 8); // e_shoff
    le(&mut v, 0, 4); // e_flags
    le(&mut v, 64, 2); // e_ehsize
    le(&mut v, 56, 2); // e_phentsize
    le(&mut v, loads.len() as u64, 2);
    le(&mut v, 64, 2); // e_shentsize
    le(&mut v, 0, 2); // e_shnum
    le(&mut v, 0, 2); // e_shstrndx
    let mut off = data_off;
    for &(paddr, memsz, filesz) in loads {
        le(&mut v, 1, 4); // PT_LOAD
        le(&mut v, 4, 4); // PF_R
        le(&mut v, off, 8);
        le(&mut v, 0xffff_8880_0000_0000 + paddr.min(1 << 40), 8);
        le(&mut v, paddr, 8);
        le(&mut v, filesz, 8);
        le(&mut v, memsz, 8);
        le(&mut v, 0x1000, 8);
        off += filesz;
    }
    let total = usize::try_from(off).unwrap();
    let mut i = 0u8;
    while v.len() < total {
        v.push(i);
        i = i.wrapping_add(37);
    }
    v
}
