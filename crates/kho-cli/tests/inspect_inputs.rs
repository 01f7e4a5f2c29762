//! Unreadable or malformed inputs to `kho inspect` / `kho validate` are usage errors (exit 2)
//! with a message naming the file and what was expected; nothing panics.

mod inspect_common;

use inspect_common::*;

fn assert_usage(out: &Out, words: &[&str]) {
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    for w in words {
        assert!(out.stderr.contains(w), "missing {w:?}: {}", out.stderr);
    }
}

#[test]
fn a_directory_as_mem_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", &format!("{}@0", d.path().display())]);
    assert_usage(&out, &["a directory", "not a memory image file"]);
}

#[test]
fn a_setup_data_file_of_the_wrong_size_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for len in [0usize, 31, 33, 64] {
        let f = d.path().join(format!("sd{len}"));
        std::fs::write(&f, vec![0u8; len]).unwrap();
        let out = kho(["validate", "--setup-data", f.to_str().unwrap(), "--mem", &cap_mem()]);
        assert_usage(&out, &[&format!("{len} bytes"), "32-byte kho_data payload"]);
    }
}

#[test]
fn a_corrupt_zst_is_refused_in_plain_words() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bad.img.zst");
    std::fs::write(&f, b"\x28\xb5\x2f\xfd garbage after a zstd magic").unwrap();
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", &format!("{}@0", f.display())]);
    assert_usage(&out, &["cannot decompress zstd image"]);
    assert!(!out.stderr.contains(" { "), "no Debug value: {}", out.stderr);
}

#[test]
fn the_zst_limit_is_a_size_flag() {
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", &cap_mem(), "--zst-limit", "1MiB"]);
    assert_usage(&out, &["decompresses to more than 0x100000 bytes", "zstd -d"]);
    let out = kho(["validate", "--fdt", &cap("fdt.dtb"), "--mem", &cap_mem(), "--zst-limit", "3 GB"]);
    assert_ne!(out.code, 2, "{out:?}");
}

#[test]
fn inspect_output_survives_a_closed_pipe() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kho"))
        .args(["inspect", "--json", "--fdt", &cap("fdt.dtb"), "--mem", &cap_mem(), "--fdt-phys", "0x182000"])
        .args(cap_scratch())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(first, *b"{");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    assert_eq!(out.status.code(), Some(0));
}
