//! Helpers shared by the `inspect_*` integration tests: run the built `kho`, find the Linux
//! capture, cut prefixes of its memory image.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a run of `kho` produced.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the built `kho` binary with `args`.
pub fn kho<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let o = Command::new(env!("CARGO_BIN_EXE_kho")).args(args).output().expect("run kho");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The Linux 7.3.4 test_kho capture.
pub fn capture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/captures/linux-7.3.4-test_kho")
}

pub fn cap(file: &str) -> String {
    capture().join(file).display().to_string()
}

/// `--mem` argument for the compressed capture image at 0.
pub fn cap_mem() -> String {
    format!("{}@0", cap("mem.img.zst"))
}

/// The debugfs scratch files as arguments.
pub fn cap_scratch() -> Vec<String> {
    vec![
        "--scratch-phys".into(),
        cap("debugfs/kernel1-out-scratch_phys.txt"),
        "--scratch-len".into(),
        cap("debugfs/kernel1-out-scratch_len.txt"),
    ]
}

/// truth.json.
pub fn truth() -> serde_json::Value {
    let text = std::fs::read_to_string(capture().join("truth.json")).expect("truth.json");
    serde_json::from_str(&text).expect("truth.json parses")
}

/// The first `len` bytes of the decompressed capture image (physical `[0, len)`).
pub fn capture_prefix(len: usize) -> Vec<u8> {
    let f = std::fs::File::open(capture().join("mem.img.zst")).expect("open mem.img.zst");
    let mut dec = ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(f)).expect("zstd header");
    let mut out = vec![0u8; len];
    dec.read_exact(&mut out).expect("decompress prefix");
    out
}

/// `{phys, order}` pairs of a JSON array, sorted.
pub fn blocks(v: &serde_json::Value) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = v
        .as_array()
        .expect("an array")
        .iter()
        .map(|b| (b["phys"].as_u64().expect("phys is a number"), b["order"].as_u64().expect("order is a number")))
        .collect();
    out.sort_unstable();
    out
}
