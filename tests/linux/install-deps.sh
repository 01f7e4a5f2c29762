#!/usr/bin/env bash
# Installs what the real-Linux harness needs: Debian's linux-source-7.3 (from trixie-backports,
# pinned low so nothing else on the machine is upgraded from it), QEMU for x86_64 (TCG is
# enough), a static busybox for the initramfs, and the kernel's build dependencies.
# Idempotent: a second run only checks.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
want="linux-source-7.3 qemu-system-x86 busybox-static build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils kexec-tools"
missing=""
for p in $want; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; done
[ -z "$missing" ] && { echo "install-deps: all present"; exit 0; }
src=/etc/apt/sources.list.d/kho-linux-harness.sources
if [ ! -f "$src" ]; then
  $SUDO tee "$src" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie-backports trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO tee /etc/apt/preferences.d/kho-linux-harness >/dev/null <<'PIN'
Package: *
Pin: release n=trixie-backports
Pin-Priority: 100

Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
