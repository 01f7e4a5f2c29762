//! `kho kexec --dry-run` on synthetic inputs: a bzImage-shaped file, a QEMU-like zero page
//! (1 GiB of RAM) and three scratch areas. The plan must keep the handover out of scratch, and
//! our own incoming side must accept the handover, or refuse each deliberate defect.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const MIB: u64 = 1 << 20;
const SCRATCH: [(u64, u64); 3] = [(0x0200_0000, 16 * MIB), (0x3000_0000, 128 * MIB), (0x3800_0000, 32 * MIB)];

fn write_inputs(dir: &Path) {
    // A bzImage: 16 setup sectors + 3 MiB of "kernel", Linux 7.3's header values.
    let setup = 17 * 512;
    let mut f = vec![0u8; setup + 3 * MIB as usize];
    f[0x1f1] = 16;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x201] = 0x6a;
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1;
    f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    f[0x234] = 1;
    f[0x236..0x238].copy_from_slice(&3u16.to_le_bytes());
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&(24 * MIB as u32).to_le_bytes());
    std::fs::write(dir.join("bzImage"), &f).unwrap();
    // Zero page: e820 RAM [0, 0x9fc00) and [1 MiB, 0x3ffe0000), reserved around.
    let mut bp = vec![0u8; 4096];
    let e820 = [(0u64, 0x9fc00u64, 1u32), (0x9fc00, 0x400, 2), (0x10_0000, 0x3fee_0000, 1), (0x3ffe_0000, 0x2_0000, 2)];
    for (i, (a, s, t)) in e820.iter().enumerate() {
        let o = 0x2d0 + i * 20;
        bp[o..o + 8].copy_from_slice(&a.to_le_bytes());
        bp[o + 8..o + 16].copy_from_slice(&s.to_le_bytes());
        bp[o + 16..o + 20].copy_from_slice(&t.to_le_bytes());
    }
    bp[0x1e8] = e820.len() as u8;
    bp[0x1ef] = 0xff; // sentinel as firmware left it
    std::fs::write(dir.join("boot_params"), &bp).unwrap();
    std::fs::write(dir.join("initrd"), vec![7u8; 1_000_000]).unwrap();
    // A debugfs with the scratch files, as Linux writes them.
    let out = dir.join("debugfs/kho/out");
    std::fs::create_dir_all(&out).unwrap();
    let phys: String = SCRATCH.iter().map(|(a, _)| format!("{a:#x}\n")).collect();
    let len: String = SCRATCH.iter().map(|(_, l)| format!("{l:#x}\n")).collect();
    std::fs::write(out.join("scratch_phys"), phys).unwrap();
    std::fs::write(out.join("scratch_len"), len).unwrap();
}

fn dry_run(dir: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_kho"))
        .arg("kexec")
        .arg("--kernel")
        .arg(dir.join("bzImage"))
        .arg("--initrd")
        .arg(dir.join("initrd"))
        .args(["--append", "console=ttyS0 kho=on"])
        .arg("--boot-params")
        .arg(dir.join("boot_params"))
        .arg("--debugfs")
        .arg(dir.join("debugfs"))
        .args(["--dry-run", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), doc)
}

#[test]
fn plan_keeps_the_handover_out_of_scratch_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let (code, doc) = dry_run(dir.path(), &[]);
    assert_eq!(code, 0, "{doc:#}");
    let segs = doc["segments"].as_array().unwrap();
    let names: Vec<&str> = segs.iter().map(|s| s["what"].as_str().unwrap()).collect();
    assert_eq!(names, ["handover", "kernel", "initrd", "boot"]);
    let mut ranges = Vec::new();
    for s in segs {
        let (mem, memsz) = (s["mem"].as_u64().unwrap(), s["memsz"].as_u64().unwrap());
        assert_eq!(mem % 4096, 0);
        assert_eq!(memsz % 4096, 0);
        assert!(s["bufsz"].as_u64().unwrap() <= memsz);
        assert!(mem >= MIB && mem + memsz <= 0x3ffe_0000, "{s}");
        let in_scratch = SCRATCH.iter().any(|&(a, l)| mem < a + l && a < mem + memsz);
        if s["what"] == "handover" {
            assert!(!in_scratch, "handover overlaps scratch: {s}");
        } else {
            assert!(s["in_scratch"].as_bool().unwrap(), "{s}");
        }
        ranges.push((mem, mem + memsz));
    }
    ranges.sort_unstable();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "overlap: {ranges:x?}");
    // Kernel: 2 MiB aligned, at or above pref_address, init_size of memory.
    let k = &segs[1];
    assert_eq!(k["mem"].as_u64().unwrap() % (2 * MIB), 0);
    assert_eq!(k["memsz"].as_u64().unwrap(), 24 * MIB);
    // Entry: the trampoline, inside the boot segment after the zero page, below the stack page.
    let (entry, boot) = (doc["entry"].as_u64().unwrap(), segs[3]["mem"].as_u64().unwrap());
    assert!(entry >= boot + 4096 && entry + 32 <= boot + segs[3]["memsz"].as_u64().unwrap() - 4096);
    let check = &doc["self_check"];
    assert_eq!(check["accepted"], true, "{check}");
    assert_eq!(check["csum"], doc["handover"]["csum"]);
    assert_eq!(check["folios"], doc["handover"]["folios"]);
    assert!(doc["handover"]["preserved_bytes"].as_u64().unwrap() >= 8 * MIB);
}

#[test]
fn each_corruption_is_refused_by_our_own_side() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    for (defect, needle) in [
        ("checksum", "checksum of the restored folios"),
        ("missing-folio", "folio "),
        ("wrong-order", "listed with order"),
        ("unknown-compatible", "kho-v9"),
    ] {
        let (code, doc) = dry_run(dir.path(), &["--corrupt", defect]);
        assert_eq!(code, 0, "{defect}: {doc:#}");
        let why = doc["self_check"]["refused_as_expected"].as_str().unwrap_or_else(|| panic!("{defect}: {doc:#}"));
        assert!(why.contains(needle), "{defect}: {why}");
        assert_eq!(doc["handover"]["corrupt"], defect);
    }
}

#[test]
fn unusable_inputs_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    std::fs::write(dir.path().join("notakernel"), vec![0u8; 4096]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kho"))
        .args(["kexec", "--dry-run", "--append", "x", "--kernel"])
        .arg(dir.path().join("notakernel"))
        .arg("--boot-params")
        .arg(dir.path().join("boot_params"))
        .args(["--scratch", "0x2000000:16M"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("boot_flag"), "{err}");
    // Missing debugfs and no --scratch: a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_kho"))
        .args(["kexec", "--dry-run", "--append", "x", "--kernel"])
        .arg(dir.path().join("bzImage"))
        .arg("--boot-params")
        .arg(dir.path().join("boot_params"))
        .arg("--debugfs")
        .arg(dir.path().join("nonexistent"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scratch"));
}

#[test]
fn handover_none_is_a_plain_kexec() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let (code, doc) = dry_run(dir.path(), &["--handover", "none"]);
    assert_eq!(code, 0, "{doc:#}");
    let names: Vec<&str> = doc["segments"].as_array().unwrap().iter().map(|s| s["what"].as_str().unwrap()).collect();
    assert_eq!(names, ["kernel", "initrd", "boot"]);
    assert!(doc["handover"].is_null() && doc["self_check"].is_null(), "{doc:#}");
    // --corrupt without a handover is a usage error.
    let (code, _) = dry_run_status(dir.path(), &["--handover", "none", "--corrupt", "checksum"]);
    assert_eq!(code, 2);
}

fn dry_run_status(dir: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kho"))
        .arg("kexec")
        .arg("--kernel")
        .arg(dir.join("bzImage"))
        .args(["--append", "x", "--dry-run"])
        .arg("--boot-params")
        .arg(dir.join("boot_params"))
        .arg("--debugfs")
        .arg(dir.join("debugfs"))
        .args(extra)
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}
