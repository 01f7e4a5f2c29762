//! `kho inspect` / `kho validate` on the real Linux 7.3.4 handover, and on damaged or
//! incomplete versions of it.

mod inspect_common;

use std::io::Write;

use inspect_common::*;

fn golden_args() -> Vec<String> {
    let mut a = vec!["--fdt".into(), cap("fdt.dtb"), "--fdt-phys".into(), "0x182000".into(), "--mem".into(), cap_mem()];
    a.extend(cap_scratch());
    a
}

#[test]
fn golden_inspect_json_matches_truth() {
    let mut args = vec!["inspect".to_string(), "--json".into()];
    args.extend(golden_args());
    let out = kho(&args);
    assert_eq!(out.code, 0, "{out:?}");
    let r = out.json();
    let truth = truth();

    assert_eq!(r["schema"], 1);
    assert_eq!(r["format"], "kho-v4");
    assert_eq!(r["valid"], true);
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{}", r["problems"]);
    // Exactly the truth, in the same (address) order.
    assert_eq!(r["preserved"], truth["preserved"]);
    assert_eq!(r["totals"]["blocks"], 31);
    assert_eq!(r["totals"]["bytes"], 8_413_184);
    assert_eq!(r["root_fdt"]["phys"], 0x18_2000);
    assert_eq!(r["root_fdt"]["memory_map"], 0x18_1000);
    assert_eq!(r["v1_bitmap_bytes"], 512);
    let scratch: Vec<(u64, u64)> = r["scratch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["start"].as_u64().unwrap(), s["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(scratch, [(0x6740_0000, 0x400_0000), (0x6b40_0000, 0x1000_0000), (0x7b40_0000, 0x200_0000)]);
    let orders: Vec<(u64, u64)> = r["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["order"].as_u64().unwrap(), o["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(orders, [(0, 6), (1, 4), (2, 4), (3, 7), (4, 1), (5, 3), (6, 3), (7, 1), (9, 1), (10, 1)]);

    let subs = r["subtrees"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    let test = &subs[0];
    assert_eq!((test["name"].as_str(), test["kind"].as_str()), (Some("kho_test"), Some("test_kho")));
    assert_eq!((test["phys"].as_u64(), test["size"].as_u64()), (Some(0x29_2000), Some(240)));
    assert_eq!(test["decoded"]["nr_folios"], 26);
    assert_eq!(blocks(&test["decoded"]["folios"]), blocks(&truth["test_kho_folios"]));
    let meta = &subs[1];
    assert_eq!((meta["name"].as_str(), meta["kind"].as_str()), (Some("kexec-metadata"), Some("kexec-metadata")));
    assert_eq!(meta["decoded"]["version"], 1);
    assert_eq!(meta["decoded"]["previous_release"], "7.3.4");
    assert_eq!(meta["decoded"]["kexec_count"], 1);

    // The coalesced ranges cover exactly the preserved bytes.
    let covered: u64 = r["ranges"].as_array().unwrap().iter().map(|x| x["size"].as_u64().unwrap()).sum();
    assert_eq!(covered, 8_413_184);
    assert_eq!(r["ranges"][0]["start"], 0x18_2000);
}

#[test]
fn golden_text_and_validate() {
    let mut args = vec!["validate".to_string()];
    args.extend(golden_args());
    let out = kho(&args);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.lines().next(),
        Some("valid: kho-v4 handover, 31 preserved block(s), 8413184 bytes in 14 range(s), 2 sub-blob(s)")
    );

    let mut args = vec!["inspect".to_string()];
    args.extend(golden_args());
    let out = kho(&args);
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "format:          kho-v4",
        "root FDT:        0x182000, 293 bytes",
        "kho_test         0x292000, 240 bytes, test_kho",
        "version 1, previous release \"7.3.4\", kexec count 1",
        "order 10:        1 block(s)       4 MiB",
        "valid: every check passed",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?} in:\n{}", out.stdout);
    }
}

#[test]
fn setup_data_pointer_to_a_scratch_array_the_dump_left_out() {
    // The capture keeps only pages reachable from the FDT: the scratch array the setup_data
    // names reads as zeros, which validate must call out by address.
    let out = kho(["validate", "--setup-data", &cap("kernel2-setup_data-SETUP_KEXEC_KHO.bin"), "--mem", &cap_mem()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("kho_scratch entry at 0x7d3f0000: found 0"), "{}", out.stdout);
    // The FDT itself was found in memory at the setup_data address.
    let out =
        kho(["inspect", "--json", "--setup-data", &cap("kernel2-setup_data-SETUP_KEXEC_KHO.bin"), "--mem", &cap_mem()]);
    let r = out.json();
    assert_eq!(r["root_fdt"]["phys"], 0x18_2000);
    assert_eq!(r["preserved"], truth()["preserved"]);
}

#[test]
fn truncated_debugfs_fdt_is_completed_from_memory() {
    // Linux 7.3's debugfs kho/out/fdt: 233 of the FDT's 293 bytes. The full FDT is the
    // preserved page at 0x182000, found through the memory map the prefix still holds.
    let mut args: Vec<String> =
        ["inspect", "--json", "--fdt", &cap("debugfs/kernel1-out-fdt.truncated.dtb"), "--mem", &cap_mem()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(cap_scratch());
    let out = kho(&args);
    assert_eq!(out.code, 0, "{out:?}");
    let r = out.json();
    assert_eq!(r["valid"], true, "{}", r["problems"]);
    assert_eq!(r["root_fdt"]["phys"], 0x18_2000);
    assert_eq!(r["root_fdt"]["size"], 293);
    assert_eq!(r["preserved"], truth()["preserved"]);
    assert_eq!(r["subtrees"][0]["decoded"]["nr_folios"], 26);
    let notes: Vec<&str> = r["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(
        notes.iter().any(|n| n.contains("holds 233 of the FDT's 293 bytes") && n.contains("memory at 0x182000")),
        "{notes:#?}"
    );
    assert!(
        r["inputs"]["fdt"].as_str().unwrap().ends_with("(233 of 293 bytes) + memory at 0x182000"),
        "{}",
        r["inputs"]
    );
}

#[test]
fn truncated_fdt_without_its_memory_is_invalid_and_says_why() {
    // Only the first 1.5 MiB of RAM: the radix root at 0x181000 is there, the FDT page at
    // 0x182000 is not, so the prefix cannot be completed.
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&capture_prefix(0x18_2000)).unwrap();
    let mem = format!("{}@0", img.path().display());
    let out = kho(["validate", "--fdt", &cap("debugfs/kernel1-out-fdt.truncated.dtb"), "--mem", &mem]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("malformed FDT: truncated: totalsize is 293 bytes but only 233 are available"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("is cut short (233 of 293 bytes) and the full FDT was not found in memory"),
        "{}",
        out.stdout
    );
    let out = kho(["inspect", "--json", "--fdt", &cap("debugfs/kernel1-out-fdt.truncated.dtb"), "--mem", &mem]);
    assert_eq!(out.code, 1);
    let r = out.json();
    assert_eq!(r["valid"], false);
    assert_eq!(r["problems"][0]["kind"], "fdt");
    assert!(r["problems"][0]["message"].as_str().unwrap().contains("truncated"));
}

#[test]
fn missing_files_are_usage_errors_naming_the_path() {
    let out = kho(["validate", "--fdt", "/nonexistent/kho/fdt.dtb", "--mem", &cap_mem()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/kho/fdt.dtb"), "{}", out.stderr);
    assert!(out.stderr.contains("No such file"), "{}", out.stderr);
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", "/nonexistent/mem.img@0"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/mem.img"), "{}", out.stderr);
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", "mem.img"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("expected FILE@BASE"), "{}", out.stderr);
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", "mem.img@0xnope"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("\"0xnope\": not a number"), "{}", out.stderr);
    let out = kho(["validate", "--fdt", &cap("fdt.dtb")]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no memory source"), "{}", out.stderr);
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", &cap_mem(), "--v1-bitmap-bytes", "1024"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("512 or 4096"), "{}", out.stderr);
    // Two images claiming the same bytes.
    let out = kho([
        "validate",
        "--fdt",
        &cap("fdt.dtb"),
        "--mem",
        &cap_mem(),
        "--mem",
        &format!("{}@0x1000", cap("fdt.dtb")),
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("both cover [0x1000, 0x1125)"), "{}", out.stderr);
}

#[test]
fn wrong_magic_is_invalid() {
    let mut fdt = std::fs::read(capture().join("fdt.dtb")).unwrap();
    fdt[0] = 0xde;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&fdt).unwrap();
    let out = kho(["validate", "--fdt", &f.path().display().to_string(), "--mem", &cap_mem()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("root FDT at 0x0: malformed FDT: bad magic (expected 0xd00dfeed)"), "{}", out.stdout);
}

#[test]
fn incompatible_version_is_named() {
    let mut fdt = std::fs::read(capture().join("fdt.dtb")).unwrap();
    let at = fdt.windows(6).position(|w| w == b"kho-v4").unwrap();
    fdt[at + 5] = b'3';
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&fdt).unwrap();
    let out =
        kho(["validate", "--fdt", &f.path().display().to_string(), "--fdt-phys", "0x182000", "--mem", &cap_mem()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("handover at 0x182000 is \"kho-v3\"; supported: kho-v1, kho-v4"), "{}", out.stdout);
}

#[test]
fn memory_missing_from_the_dump_is_named() {
    // Only the first 2 MiB of RAM: the radix tree's lower levels (at 0x2c4000 and up) and
    // most preserved blocks are not in the dump.
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&capture_prefix(2 << 20)).unwrap();
    let mem = format!("{}@0", img.path().display());
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--fdt-phys", "0x182000", "--mem", &mem]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("kho_radix_node entry at 0x18"), "{}", out.stdout);
    assert!(out.stdout.contains("is outside RAM"), "{}", out.stdout);

    // 4 MiB: the whole tree is there, but preserved blocks reach 16 MiB.
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&capture_prefix(4 << 20)).unwrap();
    let mem = format!("{}@0", img.path().display());
    let out = kho(["inspect", "--json", "--fdt", &cap("fdt.dtb"), "--fdt-phys", "0x182000", "--mem", &mem]);
    assert_eq!(out.code, 1, "{out:?}");
    let r = out.json();
    let msgs: Vec<&str> = r["problems"].as_array().unwrap().iter().map(|p| p["message"].as_str().unwrap()).collect();
    assert!(msgs.contains(&"preserved block at 0x330000: [0x330000, 0x800000) is outside RAM"), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("[0xe00000, 0x1000000) is outside RAM")), "{msgs:#?}");
}

#[test]
fn elf_core_of_the_capture_reads_the_same() {
    // An ELF core like QEMU's dump-guest-memory: two PT_LOADs; the second's p_filesz stops
    // short of p_memsz (the zero tail is not in the file).
    let data = capture_prefix(16 << 20);
    let split = 2 << 20;
    let tail_start = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let file_end = tail_start.next_multiple_of(4096);
    let loads =
        [(0u64, &data[..split], split as u64), (split as u64, &data[split..file_end], (data.len() - split) as u64)];
    let mut core = vec![0u8; 64 + 56 * loads.len()];
    core[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    core[16..18].copy_from_slice(&4u16.to_le_bytes());
    core[18..20].copy_from_slice(&62u16.to_le_bytes());
    core[20..24].copy_from_slice(&1u32.to_le_bytes());
    core[32..40].copy_from_slice(&64u64.to_le_bytes());
    core[52..54].copy_from_slice(&64u16.to_le_bytes());
    core[54..56].copy_from_slice(&56u16.to_le_bytes());
    core[56..58].copy_from_slice(&(loads.len() as u16).to_le_bytes());
    let mut offset = core.len() as u64;
    for (i, (paddr, bytes, memsz)) in loads.iter().enumerate() {
        let ph = 64 + 56 * i;
        core[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        for (at, v) in [(8, offset), (16, *paddr), (24, *paddr), (32, bytes.len() as u64), (40, *memsz), (48, 4096)] {
            core[ph + at..ph + at + 8].copy_from_slice(&v.to_le_bytes());
        }
        offset += bytes.len() as u64;
    }
    for (_, bytes, _) in &loads {
        core.extend_from_slice(bytes);
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&core).unwrap();
    let mut args = vec!["inspect".to_string(), "--json".into(), "--fdt".into(), cap("fdt.dtb"), "--elf".into()];
    args.push(f.path().display().to_string());
    args.extend(cap_scratch());
    let out = kho(&args);
    assert_eq!(out.code, 0, "{out:?}");
    let r = out.json();
    assert_eq!(r["preserved"], truth()["preserved"]);
    assert_eq!(r["inputs"]["ram"][0]["end"], 16 << 20);
    assert!(r["inputs"]["memory"][0].as_str().unwrap().contains("2 segment(s)"), "{}", r["inputs"]["memory"]);
}

#[test]
fn no_input_off_a_kho_host_explains_live_mode() {
    if std::path::Path::new("/sys/kernel/debug/kho").exists() {
        return; // a real KHO host: live mode would run.
    }
    let out = kho(["inspect"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/sys/kernel/debug/kho/out/fdt and in/fdt do not exist"), "{}", out.stderr);
    assert!(out.stderr.contains("give --fdt FILE or --setup-data FILE"), "{}", out.stderr);
}
