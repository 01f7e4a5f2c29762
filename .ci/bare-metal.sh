#!/usr/bin/env bash
# Proves kho-core needs no std: build it for x86_64-unknown-none. Uses the stable target
# when rustup can install it, else the nightly toolchain's -Zbuild-std=core,alloc.
set -euo pipefail
cd "$(dirname "$0")/.."
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none \
    || rustup target add x86_64-unknown-none >/dev/null 2>&1; then
    cargo build -p kho-core --locked --target x86_64-unknown-none
    echo "bare-metal build: ok (stable target)"
    exit 0
fi
echo "stable x86_64-unknown-none unavailable; trying nightly -Zbuild-std"
rustup component add rust-src --toolchain nightly >/dev/null 2>&1 || true
cargo +nightly build -p kho-core --locked --target x86_64-unknown-none -Zbuild-std=core,alloc
echo "bare-metal build: ok (nightly build-std)"
