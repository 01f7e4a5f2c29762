//! `kho convert` between kho-v4 and kho-v1, checked by `kho inspect` on the output; and
//! handovers whose memory map loops, made by patching converted images.

mod inspect_common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use inspect_common::*;

fn convert_capture(to: &str, dir: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "convert".to_string(),
        "--from-fdt".into(),
        cap("fdt.dtb"),
        "--fdt-phys".into(),
        "0x182000".into(),
        "--mem".into(),
        cap_mem(),
        "--to".into(),
        to.into(),
        "--out-dir".into(),
        dir.display().to_string(),
    ];
    args.extend(cap_scratch());
    args.extend(extra.iter().map(ToString::to_string));
    kho(&args)
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn mem_arg(dir: &Path) -> String {
    format!("{}@0", dir.join("mem.img").display())
}

#[test]
fn v4_capture_to_v1_and_back_keeps_the_preserved_set() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1");
    let out = convert_capture("v1", &v1, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("kho-v4 -> kho-v1: 31 preserved block(s)"), "{}", out.stdout);
    let m = manifest(&v1);
    assert_eq!(m["format"], "kho-v1");
    assert_eq!(m["root_fdt"]["phys"], 0x18_2000);
    assert_eq!(m["root_fdt"]["reused_source_page"], true);
    assert_eq!(m["dropped_subtrees"], serde_json::json!(["kexec-metadata"]));
    assert_eq!(m["preserved_blocks"], 31);

    // The exact command the converter documents.
    let r = kho(["inspect", "--json", "--fdt", &v1.join("fdt.dtb").display().to_string(), "--mem", &mem_arg(&v1)]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = r.json();
    let truth = truth();
    assert_eq!(r["format"], "kho-v1");
    assert_eq!(r["preserved"], truth["preserved"]);
    // The test module's data came along, so its folios still decode.
    assert_eq!(r["subtrees"][0]["kind"], "test_kho");
    assert_eq!(blocks(&r["subtrees"][0]["decoded"]["folios"]), blocks(&truth["test_kho_folios"]));

    // Through setup_data: FDT, scratch array and memory map all read from the image.
    let s = kho(["validate", "--setup-data", &v1.join("setup_data.bin").display().to_string(), "--mem", &mem_arg(&v1)]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(s.stdout.starts_with("valid: kho-v1 handover, 31 preserved block(s)"), "{}", s.stdout);
    let j = kho([
        "inspect",
        "--json",
        "--setup-data",
        &v1.join("setup_data.bin").display().to_string(),
        "--mem",
        &mem_arg(&v1),
    ]);
    assert_eq!(j.json()["scratch"].as_array().unwrap().len(), 3);

    // And back to kho-v4 from the kho-v1 output.
    let v4 = tmp.path().join("v4");
    let back = kho([
        "convert",
        "--setup-data",
        &v1.join("setup_data.bin").display().to_string(),
        "--mem",
        &mem_arg(&v1),
        "--to",
        "v4",
        "--out-dir",
        &v4.display().to_string(),
    ]);
    assert_eq!(back.code, 0, "{back:?}");
    let r = kho([
        "inspect",
        "--json",
        "--setup-data",
        &v4.join("setup_data.bin").display().to_string(),
        "--mem",
        &mem_arg(&v4),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = r.json();
    assert_eq!(r["format"], "kho-v4");
    assert_eq!(r["preserved"], truth["preserved"]);
    assert_eq!(blocks(&r["subtrees"][0]["decoded"]["folios"]), blocks(&truth["test_kho_folios"]));
}

#[test]
fn metadata_only_output_keeps_the_set_but_not_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert_capture("v4", tmp.path(), &["--metadata-only"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(manifest(tmp.path())["mem_img"]["with_data"], false);
    let fdt = tmp.path().join("fdt.dtb").display().to_string();
    let r = kho(["inspect", "--json", "--fdt", &fdt, "--mem", &mem_arg(tmp.path())]);
    // The preserved set is intact; test_kho's vmalloc'd array (preserved data) is not.
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["preserved"], truth()["preserved"]);
    assert_eq!(j["problems"].as_array().unwrap().len(), 1, "{}", j["problems"]);
    assert!(j["problems"][0]["message"].as_str().unwrap().contains("kho_vmalloc.total_pages"), "{}", j["problems"]);
}

#[test]
fn v1_output_with_4096_byte_bitmaps_needs_the_matching_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert_capture("v1", tmp.path(), &["--out-v1-bitmap-bytes", "4096"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(manifest(tmp.path())["v1_bitmap_bytes"], 4096);
    let fdt = tmp.path().join("fdt.dtb").display().to_string();
    let r = kho(["inspect", "--json", "--fdt", &fdt, "--mem", &mem_arg(tmp.path()), "--v1-bitmap-bytes", "4096"]);
    let j = r.json();
    assert_eq!(j["v1_bitmap_bytes"], 4096);
    assert_eq!(j["preserved"], truth()["preserved"]);

    // 512-byte bitmaps (the default output) packed eight to a page, read as 4096-byte ones:
    // the bitmap pointers are not aligned to the assumed size, which validate names.
    let small = tmp.path().join("small");
    assert_eq!(convert_capture("v1", &small, &[]).code, 0);
    let fdt = small.join("fdt.dtb").display().to_string();
    let r = kho(["validate", "--fdt", &fdt, "--mem", &mem_arg(&small), "--v1-bitmap-bytes", "4096"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("khoser_mem_bitmap_ptr.bitmap at 0x"), "{}", r.stdout);
    assert!(r.stdout.contains("is not aligned to 0x1000"), "{}", r.stdout);
    assert!(r.stdout.contains("kho-v1 bitmaps assumed to be 4096 bytes"), "{}", r.stdout);
}

#[test]
fn convert_refuses_an_invalid_source() {
    let tmp = tempfile::tempdir().unwrap();
    // A truncated FDT whose full copy (at 0x182000) is not in the memory given.
    let mut img = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut img, &capture_prefix(0x18_2000)).unwrap();
    let mem = format!("{}@0", img.path().display());
    let out = kho([
        "convert",
        "--fdt",
        &cap("debugfs/kernel1-out-fdt.truncated.dtb"),
        "--mem",
        &mem,
        "--to",
        "v1",
        "--out-dir",
        &tmp.path().join("x").display().to_string(),
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
    assert!(!tmp.path().join("x").exists());
}

fn read_u64(img: &std::fs::File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    img.read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn a_looping_v1_chunk_list_is_named_as_a_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(convert_capture("v1", tmp.path(), &[]).code, 0);
    let first = manifest(tmp.path())["memory_map"].as_u64().unwrap();
    let img = std::fs::OpenOptions::new().read(true).write(true).open(tmp.path().join("mem.img")).unwrap();
    // Walk to the last chunk and point it back at the first.
    let mut last = first;
    while read_u64(&img, last) != 0 {
        last = read_u64(&img, last);
    }
    assert_ne!(last, first, "the capture needs several chunks (one per order)");
    img.write_all_at(&first.to_le_bytes(), last).unwrap();
    let out = kho([
        "validate",
        "--setup-data",
        &tmp.path().join("setup_data.bin").display().to_string(),
        "--mem",
        &mem_arg(tmp.path()),
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let want = format!("khoser_mem_chunk.hdr.next at {last:#x}: points to {first:#x}, already visited (cycle)");
    assert!(out.stdout.contains(&want), "want {want:?} in:\n{}", out.stdout);
    assert!(out.stdout.contains("[cycle]"), "{}", out.stdout);
}

#[test]
fn a_looping_v4_radix_tree_is_named_as_a_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(convert_capture("v4", tmp.path(), &[]).code, 0);
    let root = manifest(tmp.path())["memory_map"].as_u64().unwrap();
    let img = std::fs::OpenOptions::new().read(true).write(true).open(tmp.path().join("mem.img")).unwrap();
    // The root's first child: make its first non-zero entry point back at the root.
    let child = (0..512).map(|i| read_u64(&img, root + i * 8)).find(|&v| v != 0).unwrap();
    let slot = (0..512).map(|i| child + i * 8).find(|&a| read_u64(&img, a) != 0).unwrap();
    img.write_all_at(&root.to_le_bytes(), slot).unwrap();
    let out = kho([
        "validate",
        "--setup-data",
        &tmp.path().join("setup_data.bin").display().to_string(),
        "--mem",
        &mem_arg(tmp.path()),
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("[cycle]"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("kho_radix_node entry at {slot:#x}: points to {root:#x}")), "{}", out.stdout);
}
