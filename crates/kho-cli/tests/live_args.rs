//! Live-mode arguments of `kho inspect` / `kho validate` (the live runs themselves are in
//! tests/linux/tests/live-inspect.sh, under QEMU).

mod inspect_common;

use inspect_common::*;

#[test]
fn incoming_off_a_kho_booted_host_is_a_usage_error_naming_the_file() {
    if std::path::Path::new("/sys/kernel/debug/kho/in/fdt").exists() {
        return; // a kernel started by a KHO kexec: --incoming would run.
    }
    for cmd in ["inspect", "validate"] {
        let out = kho([cmd, "--incoming"]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("--incoming: /sys/kernel/debug/kho/in/fdt does not exist"), "{}", out.stderr);
    }
}

#[test]
fn incoming_refuses_explicit_handover_inputs() {
    for extra in [["--fdt", "x.dtb"], ["--setup-data", "kho_data.bin"], ["--scratch-phys", "p"]] {
        let out = kho(["inspect", "--incoming", extra[0], extra[1]]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    }
}

#[test]
fn dev_mem_alone_stays_in_live_mode() {
    if std::path::Path::new("/sys/kernel/debug/kho").exists() {
        return; // a real KHO host: live mode would run.
    }
    // With --dev-mem only, the tool still looks for the debugfs handover (and says so)
    // instead of asking for --fdt.
    let out = kho(["validate", "--dev-mem"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/sys/kernel/debug/kho/out/fdt and in/fdt do not exist"), "{}", out.stderr);
}
