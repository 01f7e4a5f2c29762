#!/usr/bin/env bash
# kho-mini (kernels/kho-mini, its own Cargo workspace): format, clippy for the host and for
# bare metal, the host tests, and the kernel image build with its entry-point checks. The
# QEMU test (Linux -> kho-mini -> Linux) is tests/linux/tests/mini-kho.sh, run with the
# other real-Linux tests.
set -euo pipefail
cd "$(dirname "$0")/../kernels/kho-mini"
cargo fmt -- --check
cargo clippy --locked --all-targets -- -D warnings
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none \
    || rustup target add x86_64-unknown-none >/dev/null 2>&1; then
  cargo clippy --locked --target x86_64-unknown-none --lib --bin kho-mini -- -D warnings
fi
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib
cargo test --locked
CARGO_LOCKED=1 bash build.sh
