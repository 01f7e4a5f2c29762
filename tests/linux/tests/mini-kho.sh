#!/usr/bin/env bash
# Issue 13: the no_std engine in a real kernel. kho-mini (kernels/kho-mini, a bare-metal
# Rust kernel embedding kho-core) between two Linux 7.3 kernels, every folio checked at
# each hop:
#
#  roundtrip  Linux 1 boots cold; test_kho preserves its folios. `kexec -s` (Linux's own
#             kexec_file_load, which adds its KHO handover) starts kho-mini.bzImage with the
#             payload (the next Linux, its initrd and command line) as initrd. kho-mini
#             validates Linux's handover with kho-core, reserves it, restores every kho_test
#             folio and checks test_kho's checksum; preserves them again plus 6 folios of its
#             own, writes a kho-v4 handover (kho_test + kexec-metadata blobs) and starts
#             Linux 3, whose test_kho must verify all of them ("KHO restore succeeded") and
#             whose KHO reports "exec from: kho-mini-<version> (count 2)".
#  chain      Linux 1 -> kho-mini -> kho-mini -> Linux 3: the second kho-mini is started by
#             the first (the payload's kernel is kho-mini again, carrying the real payload
#             as its initrd); it verifies Linux's folios plus the first one's own, adds six,
#             and Linux 3 verifies them all ("exec from: kho-mini-<version> (count 3)").
#  pvh        kho-mini started directly by QEMU (PVH entry): no handover, a cold boot; its
#             own folios reach Linux, whose test_kho verifies them.
#  loader     `kho kexec` (kexec_load with a test_kho handover written by this project's
#             engine) starts kho-mini: it verifies those folios and hands them on to Linux 3.
#  refused    `kho kexec --corrupt unknown-compatible`: kho-mini refuses the handover
#             (compatible "kho-v9") and reports a cold boot, then still hands its own folios
#             to Linux 3, which verifies them.
#  checksum   `kho kexec --corrupt checksum`: the handover is valid but test_kho's checksum
#             is off: kho-mini reports "KHO restore FAILED" naming the checksum.
#  defects    `--corrupt missing-folio` (a listed folio is not preserved: "never preserved")
#             and `--corrupt wrong-order` (listed with a smaller order than preserved: the
#             order mismatch is named); in both kho-mini restores nothing it cannot check.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "${KHO_LINUX_LIB:-$here/../lib.sh}"
repo="$(cd "$here/../../.." && pwd)"

kdir="$(build_kernel)"
kho_bin="$(build_kho)"
kexec_bin="$(command -v kexec)" || die "kexec-tools missing: run tests/linux/install-deps.sh"
work="$(mktemp -d /tmp/kho-mini.XXXXXX)"
log "work directory: $work"
OUT="$work/mini" CARGO_LOCKED=1 bash "$repo/kernels/kho-mini/build.sh" >&2 || die "kho-mini build failed"
mini="$work/mini"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/kernels/kho-mini/Cargo.toml" | head -1)"

cat >"$work/guest.sh" <<'GUEST'
section() { # NAME COMMAND...: output between markers, then the exit status
  name="$1"; shift
  echo "=== BEGIN $name ==="
  "$@" >/tmp/out 2>/tmp/err; rc=$?
  cat /tmp/out
  sed 's/^/stderr: /' /tmp/err
  echo "=== END $name rc=$rc ==="
}
if grep -q kho_mini_stage=3 /proc/cmdline; then
  echo "KHO-MINI: stage 3 (Linux after kho-mini)"
  dmesg | grep -E "KHO|test_kho"
  section inspect-in kho inspect --incoming
  exit 0
fi
echo "KHO-MINI: stage 1 (Linux before kho-mini)"
dmesg | grep -E "KHO|test_kho"
if [ -e /boot/kho-kexec-args ]; then
  # shellcheck disable=SC2046
  section kho-kexec kho kexec --kernel /boot/kho-mini.bzImage --initrd /boot/payload.bin --append kho-mini \
    --handover test $(cat /boot/kho-kexec-args)
else
  section kexec-load kexec -s -l /boot/kho-mini.bzImage --initrd=/boot/payload.bin --append=kho-mini
fi
echo "KHO-MINI: kexec -e"
kexec -e
echo "KHO-MINI: kexec -e returned $?"
GUEST

append3="console=ttyS0 kho=on no_timer_check panic=-1 kho_mini_stage=3"
make_initramfs "$work/stage3.cpio" "$work/guest.sh" "$kho_bin:/bin/kho"
"$mini/kho-mini-tool" pack --kernel "$kdir/bzImage" --initrd "$work/stage3.cpio" --cmdline "$append3" "$work/payload.bin"
append1="console=ttyS0 kho=on kho_scratch=32M,128M,32M panic=-1"
stage1() { # OUT [EXTRA SRC:DST...]
  local out="$1"; shift
  make_initramfs "$out" "$work/guest.sh" "$kho_bin:/bin/kho" "$kexec_bin:/sbin/kexec" \
    "$mini/kho-mini.bzImage:/boot/kho-mini.bzImage" "$work/payload.bin:/boot/payload.bin" "$@"
}
cases="${KHO_MINI_CASES:-roundtrip chain pvh loader refused checksum defects}"

for c in $cases; do
  log "--- case $c"
  logf="$work/$c.log"
  case "$c" in
  roundtrip)
    stage1 "$work/stage1.cpio"
    boot_qemu "$kdir/bzImage" "$work/stage1.cpio" "$append1" 240 "$logf" || die "QEMU: $?"
    expect_line "$logf" "KHO-MINI: stage 1" "Linux 1 up"
    expect_line "$logf" "^kho-mini: started at" "kho-mini entered from Linux's kexec"
    expect_line "$logf" "^kho-mini: handover kho-v4 valid" "kho-mini accepts Linux's handover"
    expect_line "$logf" "^kho-mini: exec from: 7\.3\.[0-9]+ \(count 1\)" "kho-mini reads Linux's kexec-metadata"
    expect_line "$logf" "^kho-mini: KHO restore verified [0-9]+ folios" "kho-mini verifies every test_kho folio"
    n="$(grep -Eo "^kho-mini: KHO restore verified [0-9]+" "$logf" | grep -Eo "[0-9]+$")"
    expect_line "$logf" "^kho-mini: outgoing kho-v4 handover: .* $((n + 6)) folios in kho_test" "kho-mini hands over $n + 6 folios"
    expect_line "$logf" "^kho-mini: self-check: kho-core accepts the handover" "kho-mini's own check"
    expect_line "$logf" "KHO: exec from: kho-mini-$version \(count 2\)" "Linux 3 reads kho-mini's kexec-metadata"
    expect_line "$logf" "test_kho: KHO restore succeeded" "Linux 3 verifies all $((n + 6)) folios"
    expect_line "$logf" "KHO-MINI: stage 3" "Linux 3 user space"
    grep -q "kho-mini-$version" <(sed -n '/=== BEGIN inspect-in ===/,/=== END inspect-in/p' "$logf") \
      || die "kho inspect --incoming in Linux 3 does not show kho-mini's kexec-metadata"
    log "ok: kho inspect --incoming in Linux 3 shows kho-mini-$version"
    ;;
  chain)
    "$mini/kho-mini-tool" pack --kernel "$mini/kho-mini.bzImage" --initrd "$work/payload.bin" \
      --cmdline "kho-mini second" "$work/payload-chain.bin"
    make_initramfs "$work/stage1-chain.cpio" "$work/guest.sh" "$kho_bin:/bin/kho" "$kexec_bin:/sbin/kexec" \
      "$mini/kho-mini.bzImage:/boot/kho-mini.bzImage" "$work/payload-chain.bin:/boot/payload.bin"
    boot_qemu "$kdir/bzImage" "$work/stage1-chain.cpio" "$append1" 240 "$logf" || die "QEMU: $?"
    expect_line "$logf" "^kho-mini: KHO restore verified [0-9]+ folios" "the first kho-mini verifies Linux's folios"
    n="$(grep -Eo "^kho-mini: KHO restore verified [0-9]+" "$logf" | head -1 | grep -Eo "[0-9]+$")"
    expect_line "$logf" "^kho-mini: .*command line \"kho-mini second\"" "the second kho-mini is up"
    expect_line "$logf" "^kho-mini: exec from: kho-mini-$version \(count 2\)" "the second reads the first's kexec-metadata"
    expect_line "$logf" "^kho-mini: KHO restore verified $((n + 6)) folios" "the second verifies $n + 6 folios"
    expect_line "$logf" "^kho-mini: outgoing kho-v4 handover: .* $((n + 12)) folios in kho_test" "the second hands over $n + 12"
    expect_line "$logf" "KHO: exec from: kho-mini-$version \(count 3\)" "Linux 3 reads the second's kexec-metadata"
    expect_line "$logf" "test_kho: KHO restore succeeded" "Linux 3 verifies all $((n + 12)) folios"
    ;;
  pvh)
    boot_qemu "$mini/kho-mini.elf" "$work/payload.bin" "kho-mini" 180 "$logf" || die "QEMU: $?"
    expect_line "$logf" "^kho-mini: started at 0x100000-.*PVH" "kho-mini started by QEMU (PVH)"
    expect_line "$logf" "^kho-mini: no KHO handover; cold boot" "kho-mini boots cold"
    expect_line "$logf" "^kho-mini: outgoing kho-v4 handover: .* 6 folios in kho_test" "kho-mini hands over 6 folios"
    expect_line "$logf" "KHO: exec from: kho-mini-$version \(count 1\)" "Linux reads kho-mini's kexec-metadata"
    expect_line "$logf" "test_kho: KHO restore succeeded" "Linux verifies kho-mini's folios"
    ;;
  loader)
    echo "--seed 7" >"$work/args-loader"
    stage1 "$work/stage1-loader.cpio" "$work/args-loader:/boot/kho-kexec-args"
    boot_qemu "$kdir/bzImage" "$work/stage1-loader.cpio" "$append1" 240 "$logf" || die "QEMU: $?"
    expect_line "$logf" "^kho-mini: handover kho-v4 valid" "kho-mini accepts kho kexec's handover"
    expect_line "$logf" "^kho-mini: KHO restore verified [0-9]+ folios" "kho-mini verifies the loader's folios"
    n="$(grep -Eo "^kho-mini: KHO restore verified [0-9]+" "$logf" | grep -Eo "[0-9]+$")"
    expect_line "$logf" "^kho-mini: outgoing kho-v4 handover: .* $((n + 6)) folios in kho_test" "kho-mini hands over $n + 6 folios"
    expect_line "$logf" "KHO: exec from: kho-mini-$version \(count 2\)" "Linux 3 reads kho-mini's kexec-metadata"
    expect_line "$logf" "test_kho: KHO restore succeeded" "Linux 3 verifies all $((n + 6)) folios"
    ;;
  refused)
    echo "--corrupt unknown-compatible" >"$work/args-refused"
    stage1 "$work/stage1-refused.cpio" "$work/args-refused:/boot/kho-kexec-args"
    boot_qemu "$kdir/bzImage" "$work/stage1-refused.cpio" "$append1" 240 "$logf" || die "QEMU: $?"
    expect_line "$logf" "^kho-mini: handover refused: .*kho-v9.*; cold boot" "kho-mini refuses the corrupted handover"
    if grep -q "^kho-mini: KHO restore verified" "$logf"; then die "kho-mini restored from a refused handover"; fi
    expect_line "$logf" "^kho-mini: outgoing kho-v4 handover: .* 6 folios in kho_test" "kho-mini hands over its own 6 folios"
    expect_line "$logf" "KHO: exec from: kho-mini-$version \(count 1\)" "Linux 3 reads kho-mini's kexec-metadata"
    expect_line "$logf" "test_kho: KHO restore succeeded" "Linux 3 verifies kho-mini's folios"
    ;;
  checksum)
    echo "--corrupt checksum" >"$work/args-checksum"
    stage1 "$work/stage1-checksum.cpio" "$work/args-checksum:/boot/kho-kexec-args"
    boot_qemu "$kdir/bzImage" "$work/stage1-checksum.cpio" "$append1" 240 "$logf" || die "QEMU: $?"
    expect_line "$logf" "^kho-mini: handover kho-v4 valid" "the handover itself is valid"
    expect_line "$logf" "^kho-mini: KHO restore FAILED: kho_test csum: found 0x[0-9a-f]+, expected 0x[0-9a-f]+" "kho-mini names the wrong checksum"
    if grep -q "^kho-mini: KHO restore verified" "$logf"; then die "kho-mini verified a wrong checksum"; fi
    expect_line "$logf" "test_kho: KHO restore succeeded" "Linux 3 still verifies kho-mini's own folios"
    ;;
  defects)
    # (not "d": make_initramfs loops over a global of that name)
    for defect in missing-folio wrong-order; do
      echo "--corrupt $defect" >"$work/args-$defect"
      stage1 "$work/stage1-$defect.cpio" "$work/args-$defect:/boot/kho-kexec-args"
      logf="$work/$defect.log"
      boot_qemu "$kdir/bzImage" "$work/stage1-$defect.cpio" "$append1" 240 "$logf" || die "QEMU: $?"
      case "$defect" in
        missing-folio) want="^kho-mini: KHO restore FAILED: restore of 0x[0-9a-f]+: never preserved" ;;
        wrong-order) want="^kho-mini: KHO restore FAILED: kho_test folio at 0x[0-9a-f]+: preserved as order [0-9]+, listed as order [0-9]+" ;;
      esac
      expect_line "$logf" "$want" "kho-mini names the $defect defect"
      if grep -q "^kho-mini: KHO restore verified" "$logf"; then die "kho-mini verified a $defect handover"; fi
      expect_line "$logf" "^kho-mini: outgoing kho-v4 handover: .* 6 folios in kho_test" "only kho-mini's own 6 folios go on"
      expect_line "$logf" "test_kho: KHO restore succeeded" "Linux 3 verifies them"
    done
    ;;
  *) die "unknown case $c" ;;
  esac
done
log "mini-kho: cases passed: $cases"
