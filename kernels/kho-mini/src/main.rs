//! The kho-mini kernel binary (x86_64-unknown-none only; see `build.sh`).

fn main() {
    eprintln!("kho-mini is a kernel: build it with kernels/kho-mini/build.sh");
    std::process::exit(2);
}
