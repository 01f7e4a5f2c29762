//! One set of checks on every CLI input path (issue 10, class 4) and Linux's leniency on
//! optional blobs (class 6), on the Linux 7.3.4 capture.

mod inspect_common;

use std::io::Write;

use inspect_common::*;

/// The first 16 MiB of the capture (every structure and preserved block is there), with
/// `patch` applied, as a `--mem` argument (the file lives as long as the returned handle).
fn image(patch: impl FnOnce(&mut Vec<u8>)) -> (tempfile::NamedTempFile, String) {
    let mut data = capture_prefix(16 << 20);
    patch(&mut data);
    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&data).unwrap();
    let arg = format!("{}@0", img.path().display());
    (img, arg)
}

fn validate(mem: &str, extra: &[&str]) -> Out {
    let mut args: Vec<String> =
        ["validate", "--fdt", &cap("fdt.dtb"), "--fdt-phys", "0x182000", "--mem", mem].map(String::from).to_vec();
    args.extend(extra.iter().map(ToString::to_string));
    kho(args)
}

#[test]
fn kexec_metadata_of_another_version_is_a_warning_not_invalid() {
    let (_f, mem) = image(|_| {});
    let out = validate(&mem, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    // kexec-metadata is at 0x188000; its first u32 is the version.
    let (_f, mem) = image(|d| d[0x18_8000..0x18_8004].copy_from_slice(&2u32.to_le_bytes()));
    let out = validate(&mem, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("warning: sub-blob \"kexec-metadata\" at 0x188000: kexec-metadata version 2, not 1"),
        "{}",
        out.stdout
    );
    let out = kho(["inspect", "--json", "--fdt", &cap("fdt.dtb"), "--fdt-phys", "0x182000", "--mem", &mem]);
    let r = out.json();
    assert_eq!(r["valid"], true);
    assert_eq!(r["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(r["subtrees"][1]["decoded"]["ignored"], true);
}

#[test]
fn overlapping_scratch_areas_from_debugfs_files_are_refused() {
    let (_f, mem) = image(|_| {});
    let d = tempfile::tempdir().unwrap();
    let (sp, sl) = (d.path().join("scratch_phys"), d.path().join("scratch_len"));
    std::fs::write(&sp, "0x2000000\n0x2800000\n").unwrap();
    std::fs::write(&sl, "0x1000000\n0x1000000\n").unwrap();
    let out = validate(&mem, &["--scratch-phys", sp.to_str().unwrap(), "--scratch-len", sl.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("[0x2800000, 0x3800000)") && out.stdout.contains("[0x2000000, 0x3000000)"),
        "{}",
        out.stdout
    );
}

#[test]
fn setup_data_fdt_size_is_checked_on_every_path() {
    let (_f, mem) = image(|_| {});
    let d = tempfile::tempdir().unwrap();
    for size in [0u64, 1 << 63] {
        let mut payload = Vec::new();
        for v in [0x18_2000u64, size, 0x18_3000, 16] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        let sd = d.path().join(format!("sd-{size}"));
        std::fs::write(&sd, &payload).unwrap();
        // FDT from memory, and FDT from a file with the pointer alongside: same refusal.
        for with_fdt in [false, true] {
            let mut args = vec!["validate".to_string(), "--setup-data".into(), sd.display().to_string()];
            args.extend(["--mem".into(), mem.clone()]);
            if with_fdt {
                args.extend(["--fdt".into(), cap("fdt.dtb")]);
            }
            let out = kho(&args);
            assert_eq!(out.code, 1, "{size:#x} {with_fdt}: {out:?}");
            assert!(
                out.stdout.contains(&format!("{size}")) && out.stdout.contains("FDT size between the 40-byte header"),
                "{}",
                out.stdout
            );
        }
    }
}
