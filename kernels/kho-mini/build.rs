//! Passes the linker script to the kernel binary when building for bare metal.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bin=kho-mini=-T{dir}/link.ld");
        println!("cargo:rustc-link-arg-bin=kho-mini=-zmax-page-size=4096");
    }
}
