//! A kexec that dies half-way: the first kernel is killed (SIGKILL) after finalize or after
//! writing the boot block, before exec, and the machine restarts from the same RAM file. The
//! handover is either complete and accepted (every byte verified) or refused as a whole and
//! the kernel boots cold: never partly applied. A torn boot block is refused too.

use std::path::Path;
use std::process::{Command, Output};

const KHO: &str = env!("CARGO_BIN_EXE_kho");
const SMALL: [&str; 8] = ["--ram", "256M", "--guest", "16M", "--page-cache", "8M", "--table", "4M"];

fn crash(ram: &Path, point: &str) -> Output {
    let out = Command::new(KHO)
        .arg("demo")
        .args(SMALL)
        .args(["--kexecs", "2", "--ram-file"])
        .arg(ram)
        .args(["--crash-after", point])
        .output()
        .unwrap();
    // The first kernel dies by SIGKILL; the supervising `kho demo` survives it and gives a
    // verdict naming the signal.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("killed after {point}")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verdict: FAIL") && stdout.contains("killed by signal 9"), "{stdout}");
    out
}

fn resume(ram: &Path) -> (serde_json::Value, String, i32) {
    let out = Command::new(KHO)
        .args(["demo", "--json", "--resume", "--kexecs", "1"])
        .args(SMALL)
        .arg("--ram-file")
        .arg(ram)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("resume prints one JSON document");
    (doc, String::from_utf8_lossy(&out.stderr).into_owned(), out.status.code().unwrap_or(-1))
}

#[test]
fn killed_after_finalize_leaves_no_handover_and_the_restart_boots_cold() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    crash(&ram, "finalize");
    let (doc, stderr, code) = resume(&ram);
    assert!(stderr.contains("no complete handover"), "{stderr}");
    assert!(stderr.contains("booting cold"), "{stderr}");
    let first = &doc["kernels"][0];
    assert_eq!(first["boot"], "cold");
    assert_eq!(first["generation"], 0);
    // Nothing of the dead kernel's handover was restored; the cold kernel ran its own cycle.
    assert_eq!(doc["verdict"], "pass", "{doc}");
    assert_eq!(code, 0);
}

#[test]
fn killed_after_the_boot_block_the_restart_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    crash(&ram, "boot-block");
    let (doc, stderr, code) = resume(&ram);
    assert!(stderr.contains("complete handover found"), "{stderr}");
    let first = &doc["kernels"][0];
    assert_eq!(first["boot"], "kho");
    assert_eq!(first["generation"], 1);
    assert_eq!(first["refused"], serde_json::Value::Null);
    assert_eq!(doc["verdict"], "pass", "{doc}");
    assert!(doc["verified_bytes"].as_u64().unwrap() >= 28 << 20, "the whole workload was verified: {doc}");
    assert_eq!(code, 0);
    // The boot block was consumed: a second restart cannot replay the same handover.
    let (_, stderr, _) = resume(&ram);
    assert!(stderr.contains("no complete handover") && stderr.contains("bad magic"), "{stderr}");
}

#[test]
fn a_torn_boot_block_is_refused_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    crash(&ram, "boot-block");
    // Scribble on the generation field (boot block at 0x1000, offset 48): a torn write.
    let mut bytes = std::fs::read(&ram).unwrap()[0x1000..0x1100].to_vec();
    bytes[48] ^= 0xff;
    let f = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0x1000).unwrap();
    let (doc, stderr, _) = resume(&ram);
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert_eq!(doc["kernels"][0]["boot"], "cold");
}
