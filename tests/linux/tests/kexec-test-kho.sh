#!/usr/bin/env bash
# Test 2 of issue 9: Linux reads us. `kho kexec` loads the next Linux with kexec_load(2), builds
# its x86 boot parameters itself and hands it a kho-v4 handover written by this project's engine
# (root FDT, radix tree, a kho_test blob and folios of known content), placed as kexec segments
# outside the scratch areas. The next Linux's test_kho module must verify every folio and print
# "KHO restore succeeded".
#
# Negative controls, one QEMU boot each (`kho kexec --corrupt ...`, a documented test aid), each
# refused by the next kernel as it should:
#   checksum            test_kho: "KHO restore failed"      (csum differs)
#   missing-folio       test_kho: "KHO restore failed"      (kho_restore_folio finds no magic)
#   wrong-order         test_kho: "KHO restore failed"      (folio_order differs from the list)
#   unknown-compatible  KHO: "... is incompatible with 'kho-v4'", "disabling KHO revival"
#
# Usage: tests/linux/tests/kexec-test-kho.sh [CASE...]   (default: ok, ok-32m (32 MiB of folios,
# another seed), ok-kexec-e (load with kho kexec, boot with kexec-tools' `kexec -e`) and the four
# controls)
# Each case is one boot of kernel 1 plus a kexec into kernel 2 under QEMU TCG.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib.sh"

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(ok ok-32m ok-kexec-e checksum missing-folio wrong-order unknown-compatible)

t_start=$SECONDS
kdir="$(build_kernel)"
kho_bin="$(build_kho)"
work="$(mktemp -d /tmp/kho-kexec-test.XXXXXX)"
log "work directory: $work"

cat >"$work/guest.sh" <<'GUEST'
case_="$(sed -n 's/.*kho_case=\([a-z0-9-]*\).*/\1/p' /proc/cmdline)"
if grep -q kho_stage=2 /proc/cmdline; then
  echo "KHO-T2: stage 2 case=$case_"
  dmesg | grep -E "KHO|test_kho" | sed 's/^/KHO-T2-DMESG: /'
  echo "=== BEGIN inspect-in ==="
  kho inspect --incoming 2>&1; echo "=== END inspect-in rc=$? ==="
  exit 0
fi
echo "KHO-T2: stage 1 case=$case_"
corrupt=""
case "$case_" in
  ok) ;;
  ok-32m) corrupt="--test-mem 32M --seed 2" ;;   # more folios and bytes through the checksum
  ok-kexec-e) ;;                                  # load with kho kexec, boot with kexec-tools' kexec -e
  *) corrupt="--corrupt $case_" ;;
esac
append="console=ttyS0 kho=on kho_scratch=32M,256M,32M nokaslr no_timer_check panic=-1 reboot=t kho_stage=2 kho_case=$case_"
echo "=== BEGIN dry-run ==="
kho kexec --kernel /boot/bzImage --initrd /boot/stage2.cpio --append "$append" --dry-run $corrupt 2>&1
echo "=== END dry-run rc=$? ==="
if [ "$case_" = ok-kexec-e ]; then
  kho kexec --kernel /boot/bzImage --initrd /boot/stage2.cpio --append "$append" 2>&1
  echo "KHO-T2: kho kexec (load only) rc=$? kexec_loaded=$(cat /sys/kernel/kexec_loaded)"
  echo "KHO-T2: kho kexec --exec"
  kexec -e
  echo "KHO-T2: kho kexec returned (kexec -e) $?"
  exit 1
fi
echo "KHO-T2: kho kexec --exec"
kho kexec --kernel /boot/bzImage --initrd /boot/stage2.cpio --append "$append" $corrupt --exec 2>&1
echo "KHO-T2: kho kexec returned $?"
GUEST

make_initramfs "$work/stage2.cpio" "$work/guest.sh" "$kho_bin:/bin/kho"
kexec_bin="$(command -v kexec)" || die "kexec-tools missing: run tests/linux/install-deps.sh"
make_initramfs "$work/stage1.cpio" "$work/guest.sh" "$kho_bin:/bin/kho" "$kexec_bin:/sbin/kexec" \
  "$kdir/bzImage:/boot/bzImage" "$work/stage2.cpio:/boot/stage2.cpio"
log "initramfs: stage 1 $(stat -c %s "$work/stage1.cpio") bytes, stage 2 $(stat -c %s "$work/stage2.cpio") bytes"

# absent LOG REGEX WHAT: the opposite of expect_line.
absent() {
  if grep -Eq -- "$2" "$1"; then
    log "unexpected line: $(grep -Em1 -- "$2" "$1")"
    die "did not expect $3 (/$2/)"
  fi
  log "ok: no $3"
}

for c in "${cases[@]}"; do
  raw="$work/serial-$c.raw"
  serial="$work/serial-$c.log"
  append="console=ttyS0 kho=on kho_scratch=32M,256M,32M nokaslr panic=-1 reboot=t kho_case=$c"
  t0=$SECONDS
  boot_qemu "$kdir/bzImage" "$work/stage1.cpio" "$append" "${KHO_TEST_TIMEOUT:-600}" "$raw" \
    || die "case $c: QEMU did not finish by itself (exit $?); serial log: $raw"
  tr -d '\r' <"$raw" >"$serial"
  log "case $c: kernel 1 + kexec + kernel 2 in $((SECONDS - t0)) s"

  expect_line "$serial" "KHO-T2: stage 1 case=$c" "case $c: kernel 1 runs the test"
  expect_line "$serial" "^=== END dry-run rc=0 ===" "case $c: kho kexec --dry-run exits 0"
  expect_line "$serial" "^handover +0x[0-9a-f]+ .* outside scratch" "case $c: the handover segment lies outside scratch"
  expect_line "$serial" "KHO-T2: kho kexec --exec" "case $c: kho kexec --exec runs"
  absent "$serial" "KHO-T2: kho kexec returned" "case $c: a failed kexec_load/reboot"
  expect_line "$serial" "KHO-T2: stage 2 case=$c" "case $c: kernel 2 boots from our kexec_load"
  case "$c" in
    ok | ok-32m | ok-kexec-e)
      [ "$c" != ok-kexec-e ] || expect_line "$serial" "KHO-T2: kho kexec \(load only\) rc=0 kexec_loaded=1" \
        "case $c: kho kexec loads; /sys/kernel/kexec_loaded says so"
      expect_line "$serial" "^self-check: our incoming side accepts it" "our own incoming side accepts the handover"
      expect_line "$serial" "KHO: found kexec handover data" "kernel 2 accepts the SETUP_KEXEC_KHO handover"
      expect_line "$serial" "KHO: exec from: .* \(count 1\)" "kernel 2 reads our kexec-metadata blob"
      expect_line "$serial" "test_kho: KHO restore succeeded" "kernel 2's test_kho verifies every folio"
      absent "$serial" "test_kho: KHO restore failed" "test_kho failure"
      absent "$serial" "disabling KHO revival" "KHO revival disabled"
      expect_line "$serial" "^=== END inspect-in rc=0 ===" "kernel 2's kho inspect --incoming exits 0"
      expect_line "$serial" "^  kexec-metadata +0x[0-9a-f]+, 73 bytes" "kho inspect in kernel 2 shows our kexec-metadata blob"
      expect_line "$serial" "gave it: FDT at 0x[0-9a-f]+, scratch array" "kernel 2's setup_data names our handover"
      ;;
    checksum | missing-folio | wrong-order)
      expect_line "$serial" "^self-check: refused as expected" "case $c: our own incoming side refuses it"
      expect_line "$serial" "KHO: found kexec handover data" "case $c: kernel 2 takes the handover"
      expect_line "$serial" "test_kho: KHO restore failed" "case $c: kernel 2's test_kho refuses it"
      absent "$serial" "test_kho: KHO restore succeeded" "case $c: test_kho success"
      if [ "$c" = missing-folio ]; then # kho_restore_page's magic check fires on the unpreserved folio
        expect_line "$serial" "WARNING: kernel/liveupdate/kexec_handover.c:[0-9]+" "case $c: KHO warns on the folio without magic"
      else # the folios restore; the checksum or the order differs
        absent "$serial" "WARNING: kernel/liveupdate/kexec_handover.c" "case $c: a KHO restore warning"
      fi
      ;;
    unknown-compatible)
      expect_line "$serial" "^self-check: refused as expected.*kho-v9" "case $c: our own incoming side refuses it"
      expect_line "$serial" "KHO: setup: handover FDT \(0x[0-9a-f]+\) is incompatible with 'kho-v4'" \
        "case $c: kernel 2 refuses the compatible"
      expect_line "$serial" "KHO: disabling KHO revival" "case $c: kernel 2 boots cold"
      absent "$serial" "test_kho: KHO restore" "case $c: any test_kho restore"
      ;;
    *) die "unknown case $c" ;;
  esac
done
log "PASS: kexec-test-kho (${cases[*]}) in $((SECONDS - t_start)) s; logs in $work"
