//! Golden test against a real Linux 7.3.4 handover (tests/data/captures/linux-7.3.4-test_kho):
//! decode the kho-v4 radix tree from the captured RAM and compare every preserved block with
//! the capture's ground truth, then decode the test_kho and kexec-metadata sub-blobs.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;

use kho_core::fdt::{FdtNode, FdtTree};
use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::format::test_kho::{self, TestKho};
use kho_core::format::{Limits, WalkContext, v4, vmalloc};
use kho_core::testing::SparseMem;
use kho_core::{Block, BlockSet, Field, Order, PAGE_SIZE, PhysAddr, PhysRange, PhysRead};

const RAM_BYTES: u64 = 2 << 30;

fn capture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/captures/linux-7.3.4-test_kho")
}

fn read(name: &str) -> Vec<u8> {
    let p = capture_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Streams `mem.img.zst` into sparse memory, keeping only the non-zero pages.
fn load_memory(ram: &[PhysRange]) -> SparseMem {
    let file = std::fs::File::open(capture_dir().join("mem.img.zst")).expect("mem.img.zst");
    let mut dec = ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(file)).expect("zstd frame");
    let mem = SparseMem::with_ram(ram);
    let mut buf = vec![0u8; 1 << 20];
    let mut phys = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = dec.read(&mut buf[filled..]).expect("zstd stream");
            if n == 0 {
                break;
            }
            filled += n;
        }
        for page in buf[..filled].chunks(PAGE_SIZE as usize) {
            let words = page.chunks_exact(8).map(|w| u64::from_ne_bytes(w.try_into().unwrap()));
            if words.fold(0u64, |acc, w| acc | w) != 0 {
                mem.write_bytes(PhysAddr::new(phys), page);
            }
            phys += page.len() as u64;
        }
        if filled < buf.len() {
            break;
        }
    }
    assert_eq!(phys, RAM_BYTES, "image size");
    mem
}

fn json_blocks(v: &serde_json::Value) -> BTreeSet<(u64, u32)> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|b| (b["phys"].as_u64().unwrap(), u32::try_from(b["order"].as_u64().unwrap()).unwrap()))
        .collect()
}

fn scratch_areas() -> Vec<PhysRange> {
    let parse = |name: &str| -> Vec<u64> {
        String::from_utf8(read(name))
            .unwrap()
            .lines()
            .map(|l| u64::from_str_radix(l.trim().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    let phys = parse("debugfs/kernel1-out-scratch_phys.txt");
    let len = parse("debugfs/kernel1-out-scratch_len.txt");
    let mut areas: Vec<PhysRange> =
        phys.iter().zip(&len).map(|(&p, &l)| PhysRange::new(PhysAddr::new(p), l).unwrap()).collect();
    areas.sort();
    areas
}

/// A sub-blob's bytes, read from memory through its `preserved-data` / `blob-size`.
fn sub_blob(root: &FdtNode, fdt_at: PhysAddr, mem: &SparseMem, name: &str) -> (PhysAddr, Vec<u8>) {
    let node = root.find_child(name).unwrap_or_else(|| panic!("no /{name}"));
    let path = format!("/{name}");
    let data = PhysAddr::new(node.le64(fdt_at, &path, "preserved-data").unwrap());
    let size = node.le64(fdt_at, &path, "blob-size").unwrap();
    let mut blob = vec![0u8; usize::try_from(size).unwrap()];
    mem.read_phys(data, &mut blob).unwrap();
    (data, blob)
}

#[test]
fn linux_7_3_capture_decodes_exactly() {
    let truth: serde_json::Value = serde_json::from_slice(&read("truth.json")).unwrap();
    assert_eq!(truth["format"], "kho-v4");
    assert_eq!(truth["ram_bytes"].as_u64(), Some(RAM_BYTES));
    let fdt_at = PhysAddr::new(truth["root_fdt_phys"].as_u64().unwrap());

    let ram = [PhysRange::new(PhysAddr::new(0), RAM_BYTES).unwrap()];
    let t0 = std::time::Instant::now();
    let mem = load_memory(&ram);
    let load_time = t0.elapsed();

    // The root FDT in the image is the captured one.
    let dtb = read("fdt.dtb");
    let mut in_ram = vec![0u8; dtb.len()];
    mem.read_phys(fdt_at, &mut in_ram).unwrap();
    assert_eq!(in_ram, dtb);
    let fdt = FdtTree::parse(&dtb, Field::RootFdt, fdt_at).unwrap();
    assert!(fdt.root.is_compatible("kho-v4"));
    let root = PhysAddr::new(fdt.root.le64(fdt_at, "/", "preserved-memory-map").unwrap());

    // The radix tree.
    let scratch = scratch_areas();
    let mut ctx = WalkContext::new(&mem, &ram, &scratch, Limits::default());
    let mut out = BlockSet::new();
    let t1 = std::time::Instant::now();
    v4::decode(&mut ctx, root, fdt_at, &mut out).unwrap();
    let decode_time = t1.elapsed();
    let got: BTreeSet<(u64, u32)> = out.iter().map(|b| (b.phys().as_u64(), b.order().as_u32())).collect();
    assert_eq!(got, json_blocks(&truth["preserved"]));
    assert_eq!(out.len() as usize, got.len());
    out.coalesced_ranges().expect("no two preserved blocks overlap");
    // At least one root-to-leaf path; no radix node is itself a preserved block.
    assert!(ctx.metadata_pages.len() >= v4::DEPTH as usize);
    for &p in &ctx.metadata_pages {
        let pfn = p.pfn().unwrap();
        assert!(out.block_containing(pfn).is_none(), "radix node {p} is not itself preserved");
    }

    // Re-encoding the decoded set and decoding that gives the same set.
    let plat = kho_core::testing::TestPlatform::new(
        &[PhysRange::new(PhysAddr::new(0), 8 << 30).unwrap()],
        PhysRange::new(PhysAddr::new(4 << 30), 1 << 20).unwrap(),
    );
    let tree = v4::encode(&plat, &out).unwrap();
    let ram8 = [PhysRange::new(PhysAddr::new(0), 8 << 30).unwrap()];
    let mut ctx2 = WalkContext::new(&plat.mem, &ram8, &[], Limits::default());
    let mut again = BlockSet::new();
    v4::decode(&mut ctx2, tree.root, PhysAddr::new(0), &mut again).unwrap();
    assert!(again == out);
    assert_eq!(tree.pages.len(), ctx.metadata_pages.len(), "same tree shape as Linux");

    // test_kho: the blob in RAM equals what debugfs showed, and its folios are the truth.
    let (blob_at, blob) = sub_blob(&fdt.root, fdt_at, &mem, test_kho::SUBTREE_NAME);
    assert_eq!(blob, read("debugfs/kernel1-out-sub_fdts-kho_test.bin"));
    let t = TestKho::parse(&blob, blob_at).unwrap();
    assert_eq!(t.nr_folios, 26);
    assert_eq!(t.csum, 0x42c3_ebc0);
    assert_eq!(
        t.folios_info,
        vmalloc::KhoVmalloc { first: PhysAddr::new(0x2c_d000), total_pages: 1, flags: vmalloc::FLAG_ALLOC, order: 0 }
    );
    let area = vmalloc::decode_chain(&mut ctx, &t.folios_info, blob_at).unwrap();
    assert_eq!(area.chunk_pages, [PhysAddr::new(0x2c_d000)]);
    assert_eq!(area.pieces, [PhysAddr::new(0x2c_9000)]);
    for b in area.blocks(Order::ZERO).into_iter().chain(area.chunk_pages.iter().map(|&p| page(p))) {
        assert!(out.contains(b), "vmalloc page {b} is preserved");
    }
    let folios = test_kho::decode_folios(&mut ctx, &t, blob_at).unwrap();
    assert_eq!(folios.len(), 26);
    let folio_set: BTreeSet<(u64, u32)> = folios.iter().map(|b| (b.phys().as_u64(), b.order().as_u32())).collect();
    assert_eq!(folio_set, json_blocks(&truth["test_kho_folios"]));
    assert!(folios.iter().all(|&b| out.contains(b)));
    // Array order is the kernel's allocation order, as its log printed it.
    assert_eq!(folios[0], Block::at(PhysAddr::new(0x34_0000), Order::new(5).unwrap()).unwrap());
    assert_eq!(folios[25], Block::at(PhysAddr::new(0x2c_0000), Order::ZERO).unwrap());

    // kexec-metadata.
    let (meta_at, meta) = sub_blob(&fdt.root, fdt_at, &mem, "kexec-metadata");
    assert_eq!(meta, read("debugfs/kernel2-in-sub_fdts-kexec-metadata.bin"));
    let m = KexecMetadata::parse(&meta, meta_at).unwrap();
    assert_eq!((m.version, m.previous_release.as_str(), m.kexec_count), (1, "7.3.4", 1));
    assert_eq!(m.to_bytes().as_slice(), meta.as_slice());

    eprintln!(
        "capture: loaded {} pages in {load_time:?}; radix walk of {} pages, {} blocks in {decode_time:?}",
        mem.touched_pages(),
        ctx.metadata_pages.len(),
        out.len()
    );
}

fn page(p: PhysAddr) -> Block {
    Block::at(p, Order::ZERO).unwrap()
}

#[test]
fn debugfs_kho_test_blob_is_the_same_in_both_kernels() {
    let out = read("debugfs/kernel1-out-sub_fdts-kho_test.bin");
    let inc = read("debugfs/kernel2-in-sub_fdts-kho_test.bin");
    assert_eq!(out, inc);
    let t = TestKho::parse(&inc, PhysAddr::new(0x29_2000)).unwrap();
    assert_eq!(TestKho::parse(&t.to_blob().unwrap(), PhysAddr::new(0)).unwrap(), t);
}
