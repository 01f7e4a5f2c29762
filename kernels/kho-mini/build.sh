#!/usr/bin/env bash
# Builds the kho-mini kernel for x86_64-unknown-none and packs it three ways:
#   kho-mini.elf      the linked kernel; QEMU boots it directly through its PVH note
#                     (qemu-system-x86_64 -kernel kho-mini.elf -initrd payload.bin)
#   kho-mini.bin      the flat image: offset 0x200 is the 64-bit entry (rsi = boot_params)
#   kho-mini.bzImage  the flat image behind a bzImage setup header (protocol 2.15,
#                     relocatable, XLF_KERNEL_64), so any bzImage loader starts it
#                     (Linux's own kexec_file_load, `kexec -s`, included)
#   kho-mini-tool     the host tool that packs the payload (next kernel, initrd, cmdline)
# and checks with objdump that the entry points are where the header and the note say.
# Output directory: $OUT (default: $CARGO_TARGET_DIR or kernels/kho-mini/target, + /kho-mini).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
out="${OUT:-$target_dir/kho-mini}"
profile="${PROFILE:-release}"
mkdir -p "$out"
flag=(); [ "$profile" = release ] && flag=(--release)
# The stable target when rustup has or can install it, else nightly's -Zbuild-std (as
# .ci/bare-metal.sh does for kho-core).
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none \
    || rustup target add x86_64-unknown-none >/dev/null 2>&1; then
  cargo build ${CARGO_LOCKED:+--locked} "${flag[@]}" --target x86_64-unknown-none --bin kho-mini
else
  echo "build.sh: stable x86_64-unknown-none unavailable; trying nightly -Zbuild-std" >&2
  rustup component add rust-src --toolchain nightly >/dev/null 2>&1 || true
  cargo +nightly build ${CARGO_LOCKED:+--locked} "${flag[@]}" --target x86_64-unknown-none --bin kho-mini \
    -Zbuild-std=core,alloc
fi
elf="$target_dir/x86_64-unknown-none/$profile/kho-mini"
cp "$elf" "$out/kho-mini.elf"
objcopy -O binary --set-section-flags .bss=alloc,load,contents "$elf" "$out/kho-mini.bin"
size=$(stat -c %s "$out/kho-mini.bin")
cargo build ${CARGO_LOCKED:+--locked} -q --bin kho-mini-tool
cp "$target_dir/debug/kho-mini-tool" "$out/kho-mini-tool"
"$out/kho-mini-tool" wrap "$out/kho-mini.bin" "$size" "$out/kho-mini.bzImage"

sym() { nm "$elf" | awk -v s="$1" '$3 == s { print $1 }'; }
fail() { echo "build.sh: $*" >&2; exit 1; }
[ "$((16#$(sym __image_start)))" -eq 0 ] || fail "__image_start is not 0"
[ "$((16#$(sym pvh_start32)))" -eq 0 ] || fail "pvh_start32 is not at offset 0"
[ "$((16#$(sym _start)))" -eq $((0x200)) ] || fail "_start is not at offset 0x200"
# The first instructions of the flat image at 0x200 are the 64-bit entry's: cli; cld.
first=$(objdump -D -b binary -m i386:x86-64 --start-address=0x200 --stop-address=0x202 "$out/kho-mini.bin" | awk '/^ +200:/ { print $3 }')
[ "$first" = "cli" ] || fail "offset 0x200 of kho-mini.bin is '$first', not the entry's cli"
# The PVH note gives the 32-bit entry's physical address: the ELF's load address.
note=$(readelf -n "$elf" | awk '/Xen/ { x = 1 } x && /description data/ { print; exit }')
echo "$note" | grep -q "00 00 10 00 00 00 00 00" || fail "PVH note does not point at 0x100000: $note"
paddr=$(readelf -lW "$elf" | awk '$1 == "LOAD" { print $4; exit }')
[ "$((paddr))" -eq $((0x100000)) ] || fail "ELF load address $paddr is not 0x100000"
echo "kho-mini: $out/kho-mini.bzImage ($(stat -c %s "$out/kho-mini.bzImage") bytes; 64-bit entry at +0x200, PVH entry 0x100000)"
