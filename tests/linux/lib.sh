# Shell library for the real-Linux harness. Source it (`. tests/linux/lib.sh`); it defines:
#
#   build_kernel                 -> prints the cached kernel directory (bzImage, config, System.map);
#                                   builds it once (tinyconfig + tests/linux/kernel.config), under
#                                   a lock so concurrent callers wait for one build.
#   build_kho                    -> prints the path of a static `kho` binary (release, +crt-static).
#   make_initramfs OUT SCRIPT [SRC:DST ...]
#                                -> writes a newc cpio to OUT: static busybox, /init, the test
#                                   script as /test.sh, plus each SRC copied to DST in the image.
#                                   /init mounts proc, sysfs, devtmpfs and debugfs, runs /test.sh
#                                   (output on the serial console), prints "KHO-GUEST-EXIT: <status>"
#                                   and reboots, which ends QEMU (-no-reboot).
#   boot_qemu KERNEL INITRD APPEND TIMEOUT LOG
#                                -> boots under QEMU TCG with the serial console in LOG; returns
#                                   0 when QEMU exits by itself, 124 on timeout (QEMU is killed).
#   expect_line LOG REGEX WHAT   -> fails (exit 1) with the log tail unless LOG has a line matching
#                                   the extended REGEX.
#
# Everything heavy runs under `nice`; the kernel build uses `-j${KHO_LINUX_JOBS:-2}`.

KHO_LINUX_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KHO_REPO_DIR="$(cd "$KHO_LINUX_DIR/../.." && pwd)"
KHO_CACHE="${KHO_CACHE:-/var/cache/kho-linux}"
KHO_LINUX_TARBALL="${KHO_LINUX_TARBALL:-/usr/src/linux-source-7.3.tar.xz}"
KHO_LINUX_SRC="$KHO_CACHE/src/linux-source-7.3"

log() { printf '[kho-linux %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# Extracts the Debian kernel source once.
kernel_source() {
  if [ ! -f "$KHO_CACHE/src/.extracted" ]; then
    [ -f "$KHO_LINUX_TARBALL" ] || die "$KHO_LINUX_TARBALL missing: run tests/linux/install-deps.sh"
    log "extracting $KHO_LINUX_TARBALL"
    mkdir -p "$KHO_CACHE/src"
    nice -n 10 tar -C "$KHO_CACHE/src" -xJf "$KHO_LINUX_TARBALL"
    touch "$KHO_CACHE/src/.extracted"
  fi
  [ -f "$KHO_LINUX_SRC/Makefile" ] || die "no kernel tree at $KHO_LINUX_SRC"
}

# The cache key: kernel version plus a hash of the config fragment and of this build recipe.
kernel_key() {
  local version hash
  version="$(make -s -C "$KHO_LINUX_SRC" kernelversion)"
  hash="$( (echo "recipe=tinyconfig+fragment v1"; cat "$KHO_LINUX_DIR/kernel.config") | sha256sum | cut -c1-12)"
  echo "$version-$hash"
}

# Checks that every option of the fragment has the wanted value in the final .config.
check_kernel_config() {
  local config="$1" line name bad=0
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        grep -qx "$line" "$config" || { log "config: wanted $line, got: $(grep "^${line%%=*}=\|# ${line%%=*} is not set" "$config" || echo absent)"; bad=1; } ;;
      "# CONFIG_"*" is not set")
        name="${line#\# }"; name="${name%% *}"
        if grep -q "^$name=" "$config"; then log "config: wanted $name off, got: $(grep "^$name=" "$config")"; bad=1; fi ;;
    esac
  done <"$KHO_LINUX_DIR/kernel.config"
  return $bad
}

build_kernel() {
  # One builder at a time (tests run by several developers at once share the cache).
  mkdir -p "$KHO_CACHE"
  local lockfd
  exec {lockfd}>"$KHO_CACHE/.build.lock"
  flock "$lockfd"
  local rc=0
  _build_kernel_locked || rc=$?
  flock -u "$lockfd"
  exec {lockfd}>&-
  return $rc
}

_build_kernel_locked() {
  kernel_source
  local key out build
  key="$(kernel_key)"
  out="$KHO_CACHE/kernels/$key"
  if [ -f "$out/bzImage" ] && [ -f "$out/config" ]; then
    echo "$out"
    return 0
  fi
  build="$KHO_CACHE/build/$key"
  mkdir -p "$build"
  log "configuring kernel $key in $build"
  local mk=(nice -n 10 make -s -C "$KHO_LINUX_SRC" O="$build" ARCH=x86_64)
  if [ ! -f "$build/.config.fragment-applied" ]; then
    "${mk[@]}" tinyconfig >/dev/null
    # merge: fragment lines override tinyconfig's
    "$KHO_LINUX_SRC/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$KHO_LINUX_DIR/kernel.config" >/dev/null
    "${mk[@]}" olddefconfig >/dev/null
    check_kernel_config "$build/.config" || die "kernel config lacks required options (see above)"
    touch "$build/.config.fragment-applied"
  fi
  log "building bzImage (-j${KHO_LINUX_JOBS:-2}, log: $build/build.log)"
  local t0=$SECONDS
  if ! "${mk[@]}" -j"${KHO_LINUX_JOBS:-2}" bzImage >"$build/build.log" 2>&1; then
    tail -30 "$build/build.log" >&2
    die "kernel build failed"
  fi
  check_kernel_config "$build/.config" || die "kernel config changed during the build"
  mkdir -p "$out.tmp"
  cp "$build/arch/x86/boot/bzImage" "$build/.config" "$build/System.map" "$out.tmp/"
  mv "$out.tmp/.config" "$out.tmp/config"
  cp "$build/usr/gen_init_cpio" "$out.tmp/" 2>/dev/null || true
  rm -rf "$out"
  mv "$out.tmp" "$out"
  log "kernel built in $((SECONDS - t0)) s: $out"
  echo "$out"
}

# A static `kho` for the guest, built with its own target directory so it never disturbs the
# developer's dynamic build.
build_kho() {
  local target_dir="${KHO_STATIC_TARGET_DIR:-${CARGO_TARGET_DIR:-$KHO_REPO_DIR/target}/linux-static}"
  log "building static kho (target dir $target_dir)"
  (cd "$KHO_REPO_DIR" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
    nice -n 10 cargo build -q --release --locked --target x86_64-unknown-linux-gnu --bin kho) >&2 \
    || die "static kho build failed"
  local bin="$target_dir/x86_64-unknown-linux-gnu/release/kho"
  file -L "$bin" 2>/dev/null | grep -Eq "statically linked|static-pie linked" || die "$bin is not static"
  # The guest needs no debug info (22 MB -> 4 MB of initramfs).
  strip -o "$bin.stripped" "$bin" || die "strip $bin failed"
  echo "$bin.stripped"
}

# The guest's /init: mounts, a quiet console, the test script, then a reboot that ends QEMU
# (-no-reboot). Markers let the host find the script's exit status on the serial log.
_kho_init_script() {
  cat <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
exec </dev/console >/dev/console 2>&1
dmesg -n 1
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
echo "KHO-GUEST: init up, cmdline: $(cat /proc/cmdline)"
sh /test.sh
echo "KHO-GUEST-EXIT: $?"
sync
reboot -f
INIT
}

# make_initramfs OUT SCRIPT [SRC:DST ...]: see the header. Dynamic executables among the extra
# files get their shared libraries (from ldd) copied along at the same paths.
make_initramfs() {
  local out="$1" script="$2"; shift 2
  local kdir; kdir="$(build_kernel)"
  local gen="$kdir/gen_init_cpio"
  [ -x "$gen" ] || die "no gen_init_cpio in $kdir"
  local busybox; busybox="$(command -v busybox)" || die "busybox missing: run tests/linux/install-deps.sh"
  file -L "$busybox" | grep -Eq "statically linked|static-pie linked" || die "$busybox is not static (install busybox-static)"
  local work; work="$(mktemp -d)"
  _kho_init_script >"$work/init"
  local list="$work/list"
  {
    for d in /bin /sbin /dev /proc /sys /tmp /usr /usr/bin /usr/sbin /lib /lib64 /usr/lib /etc /root; do
      echo "dir $d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "nod /dev/null 0666 0 0 c 1 3"
    echo "file /bin/busybox $busybox 0755 0 0"
    echo "slink /bin/sh busybox 0777 0 0"
    echo "file /init $work/init 0755 0 0"
    echo "file /test.sh $script 0755 0 0"
  } >"$list"
  local spec src dst lib seen_files=" " seen_dirs=" /bin /sbin /dev /proc /sys /tmp /usr /usr/bin /usr/sbin /lib /lib64 /usr/lib /etc /root "
  add_parents() { # every parent directory of $1 not yet listed
    local p="${1%/*}" parts=() q=""
    while [ -n "$p" ]; do parts=("$p" "${parts[@]}"); p="${p%/*}"; done
    for q in "${parts[@]}"; do
      case "$seen_dirs" in *" $q "*) ;; *) echo "dir $q 0755 0 0" >>"$list"; seen_dirs="$seen_dirs$q " ;; esac
    done
  }
  for spec in "$@"; do
    src="${spec%%:*}"; dst="${spec#*:}"
    [ -e "$src" ] || die "initramfs: $src does not exist"
    add_parents "$dst"
    echo "file $dst $(readlink -f "$src") 0755 0 0" >>"$list"
    if file -L "$src" | grep -q "dynamically linked"; then
      for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
        case "$seen_files" in *" $lib "*) continue ;; esac
        seen_files="$seen_files$lib "
        add_parents "$lib"
        echo "file $lib $(readlink -f "$lib") 0755 0 0" >>"$list"
      done
    fi
  done
  "$gen" "$list" >"$out" || die "gen_init_cpio failed"
  rm -rf "$work"
}

# boot_qemu KERNEL INITRD APPEND TIMEOUT LOG: see the header.
boot_qemu() {
  local kernel="$1" initrd="$2" append="$3" timeout_s="$4" log_file="$5" rc=0
  # Under TCG on a loaded host the IO-APIC timer check can miss its ticks and panic the
  # guest ("IO-APIC + timer doesn't work!"); the check proves nothing about KHO, so skip it.
  case " $append " in *" no_timer_check "*) ;; *) append="$append no_timer_check" ;; esac
  log "booting $(basename "$kernel") (timeout ${timeout_s}s, serial: $log_file)"
  local t0=$SECONDS
  timeout --kill-after=10 "$timeout_s" nice -n 5 qemu-system-x86_64 -machine q35 -accel tcg -cpu max \
    -m "${KHO_QEMU_MEM:-1G}" -smp 1 -nographic -nodefaults -no-reboot \
    -serial "file:$log_file" -kernel "$kernel" -initrd "$initrd" -append "$append" </dev/null >/dev/null 2>&1 || rc=$?
  log "QEMU exited with $rc after $((SECONDS - t0)) s"
  return $rc
}

# expect_line LOG REGEX WHAT
expect_line() {
  if ! grep -Eq -- "$2" "$1"; then
    log "serial log tail ($1):"
    tail -40 "$1" | sed 's/^/    | /' >&2
    die "expected $3 (/$2/) on the serial console"
  fi
  log "ok: $3: $(grep -Em1 -- "$2" "$1" | tr -d '\r')"
}
