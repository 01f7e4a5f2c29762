#!/usr/bin/env bash
# Test 1 of issue 9: we read Linux, live.
#
# Kernel 1 (KHO + test_kho built in) boots; test_kho preserves its folios. In the guest,
# `kho inspect`, `kho inspect --json`, `kho validate` with no arguments (debugfs + /proc/kcore)
# and with `--dev-mem` must find exactly the handover's blocks: every folio the kho_test blob
# records (with its order), the root FDT page, each blob, and the folios_info vmalloc pages,
# and nothing else. Then a KHO kexec (kexec-tools `kexec -s`, i.e. kexec_file_load) into the
# same kernel; there test_kho must print "KHO restore succeeded" and `kho inspect --incoming`
# must report the handover kernel 1 passed (same FDT, same blobs), consumed, exit 0.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib.sh"

t_start=$SECONDS
kdir="$(build_kernel)"
kho_bin="$(build_kho)"
kexec_bin="$(command -v kexec)" || die "kexec-tools missing: run tests/linux/install-deps.sh"
work="$(mktemp -d /tmp/kho-live-inspect.XXXXXX)"
log "work directory: $work"

# The guest side: one script for both kernels; `kho_stage=2` on the command line says which.
cat >"$work/guest.sh" <<'GUEST'
section() { # NAME COMMAND...: output between markers, then the exit status
  name="$1"; shift
  echo "=== BEGIN $name ==="
  "$@" >/tmp/out 2>/tmp/err; rc=$?
  cat /tmp/out
  sed 's/^/stderr: /' /tmp/err
  echo "=== END $name rc=$rc ==="
}
K=/sys/kernel/debug/kho
if grep -q kho_stage=2 /proc/cmdline; then
  echo "KHO-T1: stage 2 (after KHO kexec)"
  ls $K $K/in $K/in/sub_fdts
  for d in /sys/kernel/boot_params/setup_data/*; do
    echo "KHO-T1: setup_data $(basename $d): type $(cat $d/type), $(wc -c <$d/data) bytes: $(od -A n -t x8 $d/data | tr -s ' \n' ' ')"
  done
  section inspect-in kho inspect --incoming
  section inspect-in-json kho inspect --incoming --json
  section validate-in kho validate --incoming
  section validate-in-devmem kho validate --incoming --dev-mem
  section inspect-default kho inspect
  section convert-in kho convert --incoming --to v1 --out-dir /tmp/converted
  exit 0
fi
echo "KHO-T1: stage 1"
ls $K/out $K/out/sub_fdts
echo "KHO-T1: debugfs out/fdt has $(wc -c <$K/out/fdt) bytes"
echo "KHO-T1: scratch_phys $(tr '\n' ' ' <$K/out/scratch_phys)scratch_len $(tr '\n' ' ' <$K/out/scratch_len)"
section inspect kho inspect
section inspect-json kho inspect --json
section validate kho validate
section validate-devmem kho validate --dev-mem
section inspect-json-devmem kho inspect --json --dev-mem
append="$(cat /proc/cmdline) kho_stage=2"
section kexec-load kexec -s -l /boot/bzImage --initrd=/boot/stage2.cpio --append="$append"
echo "KHO-T1: kexec -e"
kexec -e
echo "KHO-T1: kexec -e returned $?"
GUEST

make_initramfs "$work/stage2.cpio" "$work/guest.sh" "$kho_bin:/bin/kho"
make_initramfs "$work/stage1.cpio" "$work/guest.sh" "$kho_bin:/bin/kho" "$kexec_bin:/sbin/kexec" \
  "$kdir/bzImage:/boot/bzImage" "$work/stage2.cpio:/boot/stage2.cpio"
log "initramfs: stage 1 $(stat -c %s "$work/stage1.cpio") bytes, stage 2 $(stat -c %s "$work/stage2.cpio") bytes"

serial="$work/serial.log"
append="console=ttyS0 kho=on kho_scratch=32M,256M,32M panic=-1 reboot=t"
boot_t0=$SECONDS
boot_qemu "$kdir/bzImage" "$work/stage1.cpio" "$append" "${KHO_TEST_TIMEOUT:-600}" "$serial" \
  || die "QEMU did not finish by itself (exit $?); serial log: $serial"
boot_s=$((SECONDS - boot_t0))
mkdir -p "$KHO_CACHE/logs"
tr -d '\r' <"$serial" >"$KHO_CACHE/logs/live-inspect.serial.txt"
serial="$KHO_CACHE/logs/live-inspect.serial.txt"
log "serial log kept in $serial"

# --- kernel 1 -------------------------------------------------------------------------------
expect_line "$serial" "KHO-T1: stage 1" "kernel 1 runs the test"
expect_line "$serial" "^=== END inspect rc=0 ===" "kho inspect (debugfs + kcore) exits 0"
expect_line "$serial" "^=== END inspect-json rc=0 ===" "kho inspect --json exits 0"
expect_line "$serial" "^=== END validate rc=0 ===" "kho validate exits 0"
expect_line "$serial" "^=== END validate-devmem rc=0 ===" "kho validate --dev-mem exits 0"
expect_line "$serial" "^=== END inspect-json-devmem rc=0 ===" "kho inspect --json --dev-mem exits 0"
expect_line "$serial" "^valid: kho-v4 handover, [0-9]+ preserved block" "kho validate says valid"
expect_line "$serial" "holds [0-9]+ of the FDT's [0-9]+ bytes" "the truncated debugfs FDT was completed from memory"
expect_line "$serial" "^=== END kexec-load rc=0 ===" "kexec -s -l loads kernel 2"
# --- kernel 2 -------------------------------------------------------------------------------
expect_line "$serial" "KHO: exec from: .* \(count 1\)" "kernel 2 was started by a KHO kexec"
expect_line "$serial" "test_kho: KHO restore succeeded" "test_kho restores its folios in kernel 2"
expect_line "$serial" "KHO-T1: stage 2" "kernel 2 runs the test"
expect_line "$serial" "^=== END inspect-in rc=0 ===" "kho inspect --incoming exits 0"
expect_line "$serial" "^=== END inspect-in-json rc=0 ===" "kho inspect --incoming --json exits 0"
expect_line "$serial" "^=== END validate-in rc=0 ===" "kho validate --incoming exits 0"
expect_line "$serial" "^=== END validate-in-devmem rc=0 ===" "kho validate --incoming --dev-mem exits 0"
expect_line "$serial" "^=== END inspect-default rc=0 ===" "kho inspect with no arguments in kernel 2 exits 0"
expect_line "$serial" "^consumed by the running kernel: FDT, scratch and blobs checked; memory map not checkable after boot" \
  "the consumed handover is reported plainly"
expect_line "$serial" "^=== END convert-in rc=2 ===" "kho convert refuses a consumed handover as a usage error"
expect_line "$serial" "^stderr: kho: error: the handover this kernel received has been consumed" "kho convert says why"
expect_line "$serial" "KHO-GUEST-EXIT: 0" "the guest script ends cleanly"
if grep -q "KHO restore failed\|Kernel panic\|INVALID" "$serial"; then
  grep -n "KHO restore failed\|Kernel panic\|INVALID" "$serial" >&2
  die "failure lines on the serial console"
fi

# Exact comparison of the JSON reports (python3 is only needed on the host).
python3 - "$serial" <<'PY' || die "JSON checks failed"
import json, sys
lines = open(sys.argv[1], errors="replace").read().split("\n")
def section(name):
    start = lines.index(f"=== BEGIN {name} ===")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(f"=== END {name} rc="))
    return [l for l in lines[start + 1:end] if not l.startswith("stderr: ")]
def js(name):
    return json.loads("\n".join(section(name)))
k = js("inspect-json")
d = js("inspect-json-devmem")
i = js("inspect-in-json")
assert k["valid"] and k["format"] == "kho-v4" and not k["problems"], k["problems"]
preserved = {(b["phys"], b["order"]) for b in k["preserved"]}
assert len(preserved) == len(k["preserved"]) == k["totals"]["blocks"]
subs = {s["name"]: s for s in k["subtrees"]}
t = subs["kho_test"]["decoded"]
folios = {(f["phys"], f["order"]) for f in t["folios"]}
assert len(folios) == t["nr_folios"] > 0, (len(folios), t["nr_folios"])
missing = folios - preserved
assert not missing, f"folios not preserved with their order: {sorted(missing)}"
# Every other preserved block is the root FDT page, a blob, or a folios_info vmalloc page.
others = {p for p, _ in preserved - folios}
expected = {k["root_fdt"]["phys"]} | {s["phys"] for s in k["subtrees"]}
expected |= set(t["vmalloc_chunks"]) | set(t["vmalloc_pieces"])
assert others == expected, f"unexplained blocks {sorted(others - expected)}, absent {sorted(expected - others)}"
# /dev/mem sees exactly what /proc/kcore sees.
assert d["valid"] and d["preserved"] == k["preserved"] and d["root_fdt"] == k["root_fdt"]
assert d["subtrees"] == k["subtrees"]
# Kernel 2: the same handover, consumed.
assert i["valid"] and i["consumed"] and not i["problems"], i["problems"]
assert i["root_fdt"]["memory_map"] == k["root_fdt"]["memory_map"]
# Found through x86 setup_data SETUP_KEXEC_KHO: the FDT address and kernel 1's scratch array.
assert i["root_fdt"]["phys"] == k["root_fdt"]["phys"], (i["root_fdt"], k["root_fdt"])
assert i["inputs"]["scratch"].startswith("kho_scratch[] at"), i["inputs"]["scratch"]
assert i["root_fdt"]["size"] == k["root_fdt"]["size"]
assert [(s["name"], s["phys"], s["size"]) for s in i["subtrees"]] == [(s["name"], s["phys"], s["size"]) for s in k["subtrees"]]
ti = {s["name"]: s for s in i["subtrees"]}["kho_test"]["decoded"]
for key in ("nr_folios", "csum", "folios_info", "magic"):
    assert ti[key] == t[key], (key, ti[key], t[key])
assert i["scratch"] == k["scratch"], (i["scratch"], k["scratch"])
# With no arguments, kernel 2 (which has no kho/out/fdt in Linux 7.3) reports the same.
default = section("inspect-default")
assert f"root FDT:        {k['root_fdt']['phys']:#x}, {k['root_fdt']['size']} bytes" in default, default
assert any(l.startswith("consumed by the running kernel") for l in default), default
orders = {}
for _, o in folios:
    orders[o] = orders.get(o, 0) + 1
print(f"KHO-T1 host: {len(preserved)} preserved blocks = {len(folios)} test_kho folios "
      f"(orders {dict(sorted(orders.items()))}) + root FDT + {len(k['subtrees'])} blobs + "
      f"{len(t['vmalloc_chunks']) + len(t['vmalloc_pieces'])} vmalloc pages; "
      f"kcore == /dev/mem; kernel 2 saw the same FDT (memory map {k['root_fdt']['memory_map']:#x}) and blobs")
PY
log "live-inspect: PASS (QEMU ${boot_s} s for both kernels, ${SECONDS}s in all incl. builds)"
rm -rf "$work"
