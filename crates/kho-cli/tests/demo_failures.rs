//! The demo's own failure paths (issue 10, "the tool's own failures"): a closed pipe, a next
//! kernel that fails or does not exist, an empty workload, signals, and no file left behind
//! in the temp dir on any of these paths.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const KHO: &str = env!("CARGO_BIN_EXE_kho");
const SMALL: &[&str] = &["--ram", "256M", "--guest", "8M", "--page-cache", "4M", "--table", "2M"];

/// `kho demo ARGS` with TMPDIR pointing at a fresh directory, so leftovers can be counted.
fn demo_in(tmp: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(KHO);
    c.arg("demo").args(SMALL).args(extra).env("TMPDIR", tmp);
    c
}

fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_closed_pipe_ends_the_output_not_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // `kho demo | head -1`: read one line, then close the pipe.
    let mut child =
        demo_in(tmp.path(), &["--kexecs", "2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("kho demo:"), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "the run still passes: {stderr}");
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn a_failing_next_kernel_still_gets_a_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let out = demo_in(tmp.path(), &["--kexecs", "2", "--next-kernel", "/bin/false"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    assert!(stdout.contains("kernel 1 exited with status 1 without reporting"), "{stdout}");
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
}

#[test]
fn a_missing_next_kernel_is_refused_before_the_fill() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let plain = plain.to_str().unwrap().to_string();
    for bad in ["/nonexistent/kho", "/", plain.as_str()] {
        let out = demo_in(tmp.path(), &["--next-kernel", bad]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--next-kernel") && stderr.contains(bad), "{stderr}");
        // Nothing ran: not even the first kernel's first stage.
        assert!(!String::from_utf8_lossy(&out.stdout).contains("kernel 0"), "{bad}");
    }
}

#[test]
fn an_empty_workload_is_a_usage_error() {
    let out = Command::new(KHO).args(["demo", "--guest", "0", "--page-cache", "0", "--table", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workload is empty"));
}

#[test]
fn sizes_take_every_spelling_and_ignored_flags_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(KHO)
        .args(["demo", "--ram", "0x10000000", "--guest", "8MiB", "--page-cache", "4 M", "--table", "2MB"])
        .args(["--kexecs", "1", "--bitmap-bytes", "4096", "--json"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: --v1-bitmap-bytes is ignored with --format v4"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["config"]["ram"], 0x1000_0000u64);
    assert_eq!(doc["config"]["workload"]["table"], 2u64 << 20);
}

#[test]
fn sigterm_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child =
        demo_in(tmp.path(), &["--kexecs", "50"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    // The kernels die with the supervisor (parent-death signal), and nothing is left.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ps = Command::new("pgrep").args(["-f", "kho kernel --ram-fd"]).output();
    if let Ok(ps) = ps {
        let ours: Vec<_> = String::from_utf8_lossy(&ps.stdout).lines().map(str::to_string).collect();
        for pid in &ours {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&env).contains(tmp.path().to_str().unwrap()), "kernel {pid} survived");
        }
    }
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
}
