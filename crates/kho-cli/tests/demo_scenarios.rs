//! `kho demo` end to end: every kexec is a real exec() of the built `kho` binary.

use std::process::Command;

use serde_json::Value;

const SMALL: &[&str] = &["--ram", "1G", "--guest", "16M", "--page-cache", "4M", "--table", "2M"];

fn demo(extra: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kho"))
        .arg("demo")
        .args(SMALL)
        .arg("--json")
        .args(extra)
        .output()
        .expect("run kho");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), doc, stderr)
}

fn kernels(doc: &Value) -> &Vec<Value> {
    doc["kernels"].as_array().expect("kernels")
}

#[test]
fn ten_kexecs_keep_every_preserved_byte_and_poison_the_rest() {
    let (code, doc, stderr) = demo(&["--kexecs", "10", "--churn", "20"]);
    assert_eq!(code, 0, "{doc:#}\n{stderr}");
    assert_eq!(doc["verdict"], "pass");
    let ks = kernels(&doc);
    assert_eq!(ks.len(), 11);
    for k in &ks[1..] {
        assert_eq!(k["boot"], "kho");
        assert_eq!(k["scratch"], ks[0]["scratch"], "scratch areas reused exactly");
        assert!(k["workload"]["verified_bytes"].as_u64().unwrap() >= 20 << 20);
        assert!(k["workload"]["problems"].as_array().unwrap().is_empty());
        for stage in ["validate", "reserve", "restore", "verify"] {
            assert!(k["stages"].as_array().unwrap().iter().any(|s| s["name"] == stage && s["ms"].is_number()));
        }
        assert!(k["blackout_ms"].as_f64().unwrap() > 0.0);
    }
    // From the second KHO boot on, the pages released by the churn were checked to hold poison.
    for k in &ks[2..] {
        assert!(k["workload"]["released_pages_checked"].as_u64().unwrap() > 0, "{k:#}");
    }
    for k in &ks[..10] {
        assert!(k["poison"]["poisoned_pages"].as_u64().unwrap() > 0);
        assert!(k["metadata_bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn smaller_next_max_order_restores_huge_folios_as_pages() {
    let (code, doc, stderr) = demo(&["--kexecs", "2", "--next-max-order", "8"]);
    assert_eq!(code, 0, "{doc:#}\n{stderr}");
    let ks = kernels(&doc);
    // 16 MiB of guest memory = 8 folios of order 9, all above the next kernel's order 8.
    assert_eq!(ks[1]["workload"]["oversized_as_pages"], 8);
    assert!(ks[1]["oversized_blocks"].as_u64().unwrap() >= 8);
    // The second next kernel got them preserved as pages: no oversized blocks any more.
    assert_eq!(ks[2]["oversized_blocks"], 0);
    assert_eq!(ks[2]["workload"]["problems"].as_array().unwrap().len(), 0);

    let (code, doc, stderr) = demo(&["--kexecs", "1", "--next-max-order", "8", "--oversized", "reject"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("order 9 is above the maximum order 8"), "{stderr}");
    assert_eq!(kernels(&doc)[1]["boot"], "cold (handover refused)");
}

#[test]
fn corrupted_handovers_are_refused_naming_the_field() {
    for (format, corrupt, field) in [
        ("v1", "chunk", "khoser_mem_chunk.hdr.num_elms"),
        ("v1", "bitmap-ptr", "khoser_mem_bitmap_ptr.bitmap"),
        ("v4", "fdt", "root FDT"),
        ("v4", "bitmap-ptr", "kho_radix_node entry"),
    ] {
        let (code, doc, stderr) = demo(&["--kexecs", "2", "--format", format, "--corrupt", corrupt]);
        assert_eq!(code, 1, "{format} {corrupt}: {stderr}");
        assert!(stderr.contains("handover refused") && stderr.contains(field), "{format} {corrupt}: {stderr}");
        assert_eq!(doc["verdict"], "fail");
        let k1 = &kernels(&doc)[1];
        assert_eq!(k1["boot"], "cold (handover refused)");
        assert!(k1["refused"].as_str().unwrap().contains(field));
    }
}

#[test]
fn a_forgotten_preservation_is_detected_as_poison() {
    let (code, doc, _) = demo(&["--kexecs", "1", "--forget-preserve"]);
    assert_eq!(code, 1);
    let problems = doc["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| {
            let p = p.as_str().unwrap();
            p.contains("sim-page-cache") && p.contains("holds poison") && p.contains("0x")
        }),
        "{problems:#?}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let st = Command::new(env!("CARGO_BIN_EXE_kho")).args(["demo", "--ram", "4X"]).status().unwrap();
    assert_eq!(st.code(), Some(2));
    let st = Command::new(env!("CARGO_BIN_EXE_kho")).args(["demo", "--ram", "64M"]).status().unwrap();
    assert_eq!(st.code(), Some(2));
}
