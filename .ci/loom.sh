#!/usr/bin/env bash
# Model-checks the outgoing engine's locking with loom (crates/kho-core/tests/loom.rs).
#
# Under --cfg loom the engine's lock is loom's Mutex and every interleaving of the small
# scenarios is explored. Builds into its own target directory so the changed RUSTFLAGS do not
# invalidate the normal build cache. LOOM_MAX_PREEMPTIONS bounds the search; the default, 3,
# runs the four models (4, 5, 4 and 106 interleavings) in well under a second once built (the first build of
# the separate target directory takes about four minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
start=$(date +%s)
cargo test -p kho-core --test loom --release -- --test-threads=1 "$@"
echo "loom: passed with LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS in $(( $(date +%s) - start ))s"
