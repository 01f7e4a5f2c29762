//! End to end over a byte store: a Linux-like producer (kho-core's outgoing side with a
//! `kho_test` blob in the module's format) -> the mini kernel -> a second mini kernel that
//! checks what the first one handed over; plus the negative controls.

use alloc::string::String;
use alloc::vec::Vec;

use kho_core::format::handover_ptr::HandoverPtr;
use kho_core::format::kexec_metadata::KexecMetadata;
use kho_core::format::test_kho::{self, TestKho};
use kho_core::format::{FormatVersion, vmalloc};
use kho_core::{Block, Kho, Order, OutgoingConfig, PAGE_SIZE, PhysAddr, PhysRange, PhysWrite};

use crate::bootparams::{self, BOOT_PARAMS_BYTES, put32, put64};
use crate::flow::{self, Probe, Verdict};
use crate::memory::{FreeMap, MiniPlatform};
use crate::testmem::TestMem;
use kho_core::format::csum::csum_partial;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BP: u64 = 0x9000;
const IMAGE: u64 = 0x1000_0000;
const PAYLOAD: u64 = 0x1800_0000;
const LINUX_ORDERS: [u32; 7] = [0, 3, 1, 10, 2, 0, 5];

fn r(s: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(s), len).unwrap()
}

fn ram() -> Vec<PhysRange> {
    vec![r(0, 0x9f000), r(MIB, GIB - MIB)]
}

fn scratch() -> Vec<PhysRange> {
    vec![r(0x1000_0000, 256 * MIB)]
}

/// What Linux's test_kho does on its save path, with kho-core as the KHO core: folios of
/// several orders with pseudo-random content, a vmalloc'd `folios_info`, the blob, and a
/// kexec-metadata blob from "7.3.4" count 1.
fn linux_side(mem: &TestMem) -> (HandoverPtr, Vec<Block>, u32) {
    let ram = ram();
    let mut free = FreeMap::new(&ram);
    free.take(r(0, 16 * MIB));
    let plat = MiniPlatform::new(mem, ram.clone(), free, scratch());
    let kho = Kho::new(&plat, OutgoingConfig::new(ram.clone(), scratch())).unwrap();
    let mut folios = Vec::new();
    let mut seed = 0x1234_5678_u64;
    for &o in &LINUX_ORDERS {
        let order = Order::new(o).unwrap();
        let at = plat.alloc_preservable(order.nr_pages()).unwrap();
        let mut bytes = alloc::vec![0u8; order.bytes() as usize];
        for b in &mut bytes {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            *b = (seed >> 33) as u8;
        }
        mem.write(at.start().as_u64(), &bytes);
        let block = Block::at(at.start(), order).unwrap();
        kho.preserve_folio(block.pfn(), order).unwrap();
        folios.push(block);
    }
    let mut csum = 0;
    for b in &folios {
        csum = csum_partial(&mem.read(b.phys().as_u64(), b.order().bytes() as usize), csum);
    }
    let mut entries = Vec::new();
    for &b in &folios {
        entries.extend_from_slice(&test_kho::folio_entry(b).to_le_bytes());
    }
    let piece = plat.alloc_preservable(1).unwrap().start();
    mem.write(piece.as_u64(), &entries);
    kho.preserve_pages(piece.pfn().unwrap(), 1).unwrap();
    let (desc, chunks) = vmalloc::encode(&plat, &[piece], Order::ZERO, vmalloc::FLAG_ALLOC).unwrap();
    for c in chunks {
        kho.preserve_pages(c.pfn().unwrap(), 1).unwrap();
    }
    let blob = TestKho { nr_folios: folios.len() as u32, folios_info: desc, csum }.to_blob().unwrap();
    let at = plat.alloc_preservable(1).unwrap().start();
    mem.write(at.as_u64(), &blob);
    kho.add_subtree(test_kho::SUBTREE_NAME, at, blob.len() as u64).unwrap();
    let meta = KexecMetadata::new("7.3.4", 1).to_bytes();
    let m = plat.alloc_preservable(1).unwrap().start();
    mem.write(m.as_u64(), &meta);
    kho.add_subtree(flow::KEXEC_METADATA, m, 73).unwrap();
    let fin = kho.finalize(FormatVersion::V4).unwrap();
    (fin.ptr, folios, csum)
}

/// The loader's part: boot_params (e820 as QEMU reports 1 GiB), a SETUP_KEXEC_KHO node,
/// a command line, the payload as initrd, and the kernel image in the scratch area.
fn loader_side(mem: &TestMem, ptr: Option<HandoverPtr>) {
    let mut bp = [0u8; BOOT_PARAMS_BYTES];
    put32(&mut bp, bootparams::HEADER_MAGIC, bootparams::HDRS);
    let e820 = [(0u64, 0x9fc00u64, 1u32), (0x9fc00, 0x400, 2), (0xf0000, 0x10000, 2), (MIB, GIB - MIB, 1)];
    bp[bootparams::E820_ENTRIES] = e820.len() as u8;
    for (i, (a, s, t)) in e820.into_iter().enumerate() {
        let off = bootparams::E820_TABLE + i * 20;
        put64(&mut bp, off, a);
        put64(&mut bp, off + 8, s);
        put32(&mut bp, off + 16, t);
    }
    if let Some(p) = ptr {
        mem.write(0x8000, &p.to_setup_data_node(PhysAddr::new(0)));
        put64(&mut bp, bootparams::SETUP_DATA, 0x8000);
    }
    mem.write(0x7000, b"console=ttyS0\0");
    put32(&mut bp, bootparams::CMD_LINE_PTR, 0x7000);
    let kernel: Vec<u8> = (0..0x1_0000u32).map(|i| (i * 7) as u8).collect();
    let bz = crate::bzimage::wrap(&kernel, 8 << 20);
    let pay = crate::payload::pack(&bz, b"INITRD-CONTENT", b"console=ttyS0 kho=on");
    mem.write(PAYLOAD, &pay);
    put32(&mut bp, bootparams::RAMDISK_IMAGE, PAYLOAD as u32);
    put32(&mut bp, bootparams::RAMDISK_SIZE, pay.len() as u32);
    mem.write(BP, &bp);
    mem.write(IMAGE, &[0x90; 0x1000]);
}

/// The next kernel's view: probe and restore only (its initrd is not a payload).
fn check_next(mem: &TestMem, bp: u64, image: u64) -> (Probe, String, flow::Restored) {
    let mut probe = Probe::new(mem, PhysAddr::new(bp), r(image, 2 * MIB)).unwrap();
    probe.heap_region(32 * MIB).unwrap();
    let scratch = probe.scratch.clone().unwrap_or_default();
    let mut plat = MiniPlatform::new(mem, probe.ram.clone(), probe.free.clone(), scratch);
    let mut log = String::new();
    let restored = flow::restore(&mut plat, &probe, &mut log);
    (probe, log, restored)
}

fn boot(mem: &TestMem, bp: u64, image: u64) -> (Probe, String, flow::Summary) {
    let mut probe = Probe::new(mem, PhysAddr::new(bp), r(image, 2 * MIB)).unwrap();
    let heap = probe.heap_region(32 * MIB).unwrap();
    if let Some(s) = &probe.scratch {
        assert!(s.iter().any(|a| a.contains_range(heap)), "heap {heap} in scratch {s:?}");
    }
    let mut log = String::new();
    let sum = flow::run(mem, &probe, &mut log).unwrap_or_else(|e| panic!("{e}\n{log}"));
    (probe, log, sum)
}

#[test]
fn linux_to_mini_to_mini_every_folio_checked() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    let (ptr, linux_folios, linux_csum) = linux_side(&mem);
    loader_side(&mem, Some(ptr));
    let (_, log, first) = boot(&mem, BP, IMAGE);
    let bytes: u64 = linux_folios.iter().map(|b| b.order().bytes()).sum();
    assert_eq!(first.verdict, Verdict::Verified { folios: 7, bytes, csum: linux_csum }, "{log}");
    assert!(log.contains("kho-mini: exec from: 7.3.4 (count 1)"), "{log}");
    assert!(log.contains("kho-mini: KHO restore verified 7 folios"), "{log}");
    assert_eq!(first.outgoing.folios.len(), 7 + flow::OWN_FOLIO_ORDERS.len());
    assert_eq!(&first.outgoing.folios[..7], &linux_folios[..]);
    assert_eq!(first.outgoing.kexec_count, 2);
    // The incoming scratch layout is reused, and nothing handed over lies in it.
    assert_eq!(first.outgoing.ptr.scratch_size, 16);
    for b in &first.outgoing.folios {
        assert!(!scratch()[0].overlaps(b.range()), "{b}");
    }
    // The next kernel was copied where the jump goes, aligned, with its initrd.
    let j = first.jump;
    assert_eq!(j.entry.as_u64(), j.kernel.start().as_u64() + 0x200);
    assert_eq!(j.kernel.start().as_u64() % (2 * MIB), 0);
    assert!(j.kernel.start().as_u64() >= 16 * MIB);
    assert_eq!(
        mem.read(j.kernel.start().as_u64() + 0x201, 3),
        [(0x201 * 7) as u8, (0x202 * 7) as u8, (0x203 * 7) as u8]
    );
    assert_eq!(mem.read(j.initrd.unwrap().start().as_u64(), 14), b"INITRD-CONTENT");
    // Its own folios carry the documented pattern.
    let own = first.outgoing.folios[7];
    let w = u64::from_le_bytes(mem.read(own.phys().as_u64() + 0x18, 8).try_into().unwrap());
    assert_eq!(w, flow::own_word(own.phys().as_u64() + 0x18));

    // Hop 2: the boot_params the mini kernel built, read by another mini kernel.
    let (probe2, log2, second) = check_next(&mem, j.boot_params.as_u64(), 0x1100_0000);
    assert_eq!(second.kexec_count, 2);
    assert_eq!(probe2.cmdline, "console=ttyS0 kho=on");
    assert_eq!(probe2.info.initrd, j.initrd);
    let all: u64 = first.outgoing.folios.iter().map(|b| b.order().bytes()).sum();
    assert_eq!(second.verdict, Verdict::Verified { folios: 13, bytes: all, csum: first.outgoing.csum }, "{log2}");
    assert!(log2.contains(&alloc::format!("kho-mini: exec from: {} (count 2)", flow::RELEASE)), "{log2}");
}

#[test]
fn cold_boot_without_handover_invents_scratch_and_still_hands_over() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    loader_side(&mem, None);
    let (_, log, first) = boot(&mem, BP, IMAGE);
    assert_eq!(first.verdict, Verdict::NoHandover);
    assert!(log.contains("kho-mini: no KHO handover; cold boot"), "{log}");
    assert_eq!(first.outgoing.folios.len(), flow::OWN_FOLIO_ORDERS.len());
    assert_eq!(first.outgoing.kexec_count, 1);
    let (_, log2, second) = check_next(&mem, first.jump.boot_params.as_u64(), 0x1100_0000);
    assert!(matches!(second.verdict, Verdict::Verified { folios: 6, .. }), "{log2}");
}

#[test]
fn corrupted_handover_is_refused_and_the_kernel_boots_cold() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    let (ptr, _, _) = linux_side(&mem);
    // "kho-v4" -> "kho-v9" in the root FDT's strings.
    let fdt = mem.read(ptr.fdt.as_u64(), PAGE_SIZE as usize);
    let pos = fdt.windows(6).position(|w| w == b"kho-v4").unwrap();
    mem.write(ptr.fdt.as_u64() + pos as u64 + 5, b"9");
    loader_side(&mem, Some(ptr));
    let (_, log, first) = boot(&mem, BP, IMAGE);
    assert!(
        matches!(
            &first.verdict,
            Verdict::Refused(crate::MiniError::Kho(kho_core::Error::Decode(kho_core::DecodeError {
                kind: kho_core::DecodeErrorKind::Incompatible { .. },
                ..
            })))
        ),
        "{log}"
    );
    assert!(log.contains("kho-mini: handover refused: ") && log.contains("; cold boot"), "{log}");
    assert_eq!(first.outgoing.folios.len(), flow::OWN_FOLIO_ORDERS.len());
}

#[test]
fn a_changed_folio_fails_the_checksum() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    let (ptr, folios, csum) = linux_side(&mem);
    let p = folios[3].phys().as_u64() + 0x1234;
    let old = mem.read(p, 1)[0];
    mem.write(p, &[old ^ 0x40]);
    loader_side(&mem, Some(ptr));
    let (_, log, first) = boot(&mem, BP, IMAGE);
    match &first.verdict {
        Verdict::Failed(crate::MiniError::Verify { what: "kho_test csum", expected, .. }) => {
            assert_eq!(*expected, u64::from(csum));
        }
        v => panic!("{v:?}\n{log}"),
    }
    assert!(log.contains("kho-mini: KHO restore FAILED: kho_test csum"), "{log}");
}

#[test]
fn a_missing_payload_is_an_error_not_a_panic() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    loader_side(&mem, None);
    let mut bp = mem.read(BP, BOOT_PARAMS_BYTES);
    bp[bootparams::RAMDISK_IMAGE..bootparams::RAMDISK_IMAGE + 8].fill(0);
    mem.write_phys(PhysAddr::new(BP), &bp).unwrap();
    let mut probe = Probe::new(&mem, PhysAddr::new(BP), r(IMAGE, 2 * MIB)).unwrap();
    probe.heap_region(32 * MIB).unwrap();
    let mut log = String::new();
    let e = flow::run(&mem, &probe, &mut log).unwrap_err();
    assert!(alloc::format!("{e}").contains("a payload (initrd)"), "{e}");
}

#[test]
fn a_huge_folio_count_is_refused_not_allocated() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    let (ptr, _, _) = linux_side(&mem);
    // Rewrite the kho_test blob with nr_folios = 2^31: 16 GiB of folios_info.
    let h = kho_core::Handover::parse(&mem, &ptr, &kho_core::IncomingConfig::new(ram())).unwrap();
    let s = h.subtree(test_kho::SUBTREE_NAME).unwrap().clone();
    let blob = mem.read(s.phys.as_u64(), s.size.unwrap() as usize);
    let mut t = TestKho::parse(&blob, s.phys).unwrap();
    t.nr_folios = 1 << 31;
    let big = t.to_blob().unwrap();
    assert_eq!(big.len(), blob.len());
    mem.write(s.phys.as_u64(), &big);
    loader_side(&mem, Some(ptr));
    let (_, log, first) = boot(&mem, BP, IMAGE);
    assert!(matches!(first.verdict, Verdict::Failed(crate::MiniError::Kho(_))), "{log}");
    assert!(log.contains("kho-mini: KHO restore FAILED: "), "{log}");
    assert!(!log.contains("WARNING"), "{log}");
}

/// Hostile boot data: random byte changes in every structure the mini kernel reads before
/// and while it trusts nothing (boot_params, setup_data, the KHO FDT, the scratch array, the
/// payload header, the next bzImage's header, the kho_test and kexec-metadata blobs). Every
/// run must end in a verdict and a result, never a panic.
#[test]
fn mutated_boot_data_never_panics() {
    let base = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    let (ptr, _, _) = linux_side(&base);
    loader_side(&base, Some(ptr));
    let h = kho_core::Handover::parse(&base, &ptr, &kho_core::IncomingConfig::new(ram())).unwrap();
    let mut targets: Vec<(u64, u64)> = vec![
        (BP, 0x1000),
        (0x8000, 48),
        (ptr.fdt.as_u64(), 0x200),
        (ptr.scratch.as_u64(), 16),
        (PAYLOAD, 64),
        (PAYLOAD + 0x1000, 0x300),
        (h.memory_map().as_u64(), 0x1000),
    ];
    for s in h.subtrees() {
        targets.push((s.phys.as_u64(), s.size.unwrap_or(1).min(0x200)));
    }
    let mut seed = 0x9e37_79b9_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = [0u32; 3];
    for _ in 0..400 {
        let mem = base.clone();
        for _ in 0..1 + next() % 4 {
            let (at, len) = targets[(next() % targets.len() as u64) as usize];
            let p = at + next() % len;
            let b = match next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => next() as u8,
            };
            mem.write(p, &[b]);
        }
        let Ok(mut probe) = Probe::new(&mem, PhysAddr::new(BP), r(IMAGE, 2 * MIB)) else {
            outcomes[0] += 1;
            continue;
        };
        if probe.heap_region(32 * MIB).is_none() {
            outcomes[0] += 1;
            continue;
        }
        let mut log = String::new();
        match flow::run(&mem, &probe, &mut log) {
            Ok(_) => outcomes[2] += 1,
            Err(_) => outcomes[1] += 1,
        }
    }
    // Most mutations still boot (a refused handover is a cold boot); some must be refused.
    assert!(outcomes[2] > 100 && outcomes[0] + outcomes[1] > 0, "{outcomes:?}");
}

#[test]
fn huge_initrd_and_payload_sizes_are_refused_not_overflowed() {
    for (size_lo, size_hi) in [(0xffff_f000u32, 0xffff_fffeu32), (0xffff_ffff, 0x0fff_ffff), (0x10_0000, 0x1)] {
        let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
        loader_side(&mem, None);
        let mut bp = mem.read(BP, BOOT_PARAMS_BYTES);
        put32(&mut bp, bootparams::RAMDISK_SIZE, size_lo);
        put32(&mut bp, bootparams::EXT_RAMDISK_SIZE, size_hi);
        mem.write(BP, &bp);
        let Ok(mut probe) = Probe::new(&mem, PhysAddr::new(BP), r(IMAGE, 2 * MIB)) else { continue };
        probe.heap_region(32 * MIB).unwrap();
        let mut log = String::new();
        assert!(flow::run(&mem, &probe, &mut log).is_err(), "{log}");
    }
    // A payload whose kernel claims nearly all of a huge initrd.
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    loader_side(&mem, None);
    put_payload_len(&mem, 16, u64::MAX - 0x2000);
    let mut bp = mem.read(BP, BOOT_PARAMS_BYTES);
    put32(&mut bp, bootparams::EXT_RAMDISK_SIZE, 0xffff_fff0);
    mem.write(BP, &bp);
    if let Ok(mut probe) = Probe::new(&mem, PhysAddr::new(BP), r(IMAGE, 2 * MIB)) {
        probe.heap_region(32 * MIB).unwrap();
        let mut log = String::new();
        assert!(flow::run(&mem, &probe, &mut log).is_err(), "{log}");
    }
}

fn put_payload_len(mem: &TestMem, field: u64, len: u64) {
    mem.write(PAYLOAD + field + 8, &len.to_le_bytes());
}

#[test]
fn a_folio_listed_with_a_smaller_order_is_named() {
    let mem = TestMem::new(&[(0, 0x9f000), (MIB, GIB - MIB)]);
    let (ptr, folios, _) = linux_side(&mem);
    let h = kho_core::Handover::parse(&mem, &ptr, &kho_core::IncomingConfig::new(ram())).unwrap();
    let s = h.subtree(test_kho::SUBTREE_NAME).unwrap().clone();
    let t = TestKho::parse(&mem.read(s.phys.as_u64(), s.size.unwrap() as usize), s.phys).unwrap();
    let ram = ram();
    let mut ctx = kho_core::format::WalkContext::new(&mem, &ram, h.scratch(), kho_core::Limits::default());
    let area = vmalloc::decode_chain(&mut ctx, &t.folios_info, s.phys).unwrap();
    // Entry 1 is the order-3 folio: list it as order 2.
    assert_eq!(folios[1].order().as_u32(), 3);
    let entry = folios[1].phys().as_u64() | 2;
    mem.write(area.pieces[0].as_u64() + 8, &entry.to_le_bytes());
    loader_side(&mem, Some(ptr));
    let (_, log, first) = boot(&mem, BP, IMAGE);
    assert_eq!(
        first.verdict,
        Verdict::Failed(crate::MiniError::OrderMismatch { phys: folios[1].phys(), preserved: 3, listed: 2 }),
        "{log}"
    );
    assert!(log.contains("preserved as order 3, listed as order 2"), "{log}");
    // Nothing unverified goes on: only the mini kernel's own folios.
    assert_eq!(first.outgoing.folios.len(), flow::OWN_FOLIO_ORDERS.len());
}
