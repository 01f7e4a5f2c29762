#!/usr/bin/env bash
# Runs every real-Linux test (tests/linux/tests/*.sh) under QEMU. The kernel is built once and
# cached in /var/cache/kho-linux (about 5 minutes on 2 cores the first time); each test then
# boots it under TCG. Needs what tests/linux/install-deps.sh installs (run it first, as root).
# Usage: tests/linux/run.sh [NAME...]   (NAME: a test file's name without .sh; default all)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
bash "$here/install-deps.sh" >&2
build_kernel >/dev/null
tests=()
if [ $# -gt 0 ]; then
  for n in "$@"; do tests+=("$here/tests/$n.sh"); done
else
  for f in "$here"/tests/*.sh; do tests+=("$f"); done
fi
failed=()
for t in "${tests[@]}"; do
  name="$(basename "$t" .sh)"
  log "=== $name"
  t0=$SECONDS
  if bash "$t"; then
    log "=== $name: PASS ($((SECONDS - t0)) s)"
  else
    log "=== $name: FAIL ($((SECONDS - t0)) s)"
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  die "${#failed[@]} of ${#tests[@]} real-Linux test(s) failed: ${failed[*]}"
fi
log "all ${#tests[@]} real-Linux test(s) passed"
