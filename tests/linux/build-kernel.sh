#!/usr/bin/env bash
# Builds (once) the small KHO-enabled x86_64 kernel the real-Linux tests boot, and prints the
# cache directory holding bzImage, config and System.map. A second run finds it in the cache.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
build_kernel
