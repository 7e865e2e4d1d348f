#!/usr/bin/env bash
# build.sh: build the kernel test bed once into the cache and print its
# directory. Idempotent and safe to run concurrently (flock); later runs only
# check that the artefacts exist.
#
# The bed is a User-Mode Linux kernel (a Linux kernel that runs as an ordinary
# host process: no KVM, no QEMU) built from Debian's linux-source-6.1 with the
# options in uml.config, plus a tiny root tree (busybox-static and the host's
# ip/tc/devlink/bridge with their shared libraries, and init.c compiled
# statically as /init) that the kernel mounts from the host through hostfs.
#
# Cache layout ($KERNEL_CACHE, default $CACHE_DIR/kernel):
#   debs/                      downloaded .debs (linux-source-6.1, busybox-static)
#   linux-<key>                stripped UML kernel; <key> hashes uml.config + KERNEL_REV
#   linux-<key>.config         its final .config
#   root-<key>/                root tree; <key> hashes init.c, this script and ROOT_REV
#
# Env: KERNEL_CACHE, CACHE_DIR, KERNEL_JOBS (default nproc).
set -euo pipefail

KERNEL_REV=1   # bump when the kernel build steps change
ROOT_REV=1     # bump when the root tree layout changes

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/multi-networkpolicy-tc}
KERNEL_CACHE=${KERNEL_CACHE:-$CACHE_DIR/kernel}
log() { echo "[kernel-bed] $*" >&2; }

options() { sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/uml.config" | grep -v '^$'; }
kernel_key=$( { echo "$KERNEL_REV"; options; } | sha256sum | cut -c1-12)
root_key=$( { echo "$ROOT_REV"; cat "$here/init.c" "$here/build.sh"; } | sha256sum | cut -c1-12)
KERNEL=$KERNEL_CACHE/linux-$kernel_key
ROOT=$KERNEL_CACHE/root-$root_key

# apt_install PKG...: install the packages that are missing (CI starts on a fresh Debian as root).
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || { log "missing packages ${missing[*]} and not root to install them"; exit 1; }
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
}

# apt_download PKG: fetch PKG's .deb into debs/ unless one is already there.
apt_download() {
  local p=$1
  ls "$KERNEL_CACHE/debs/${p}"_*.deb >/dev/null 2>&1 && return 0
  mkdir -p "$KERNEL_CACHE/debs"
  log "downloading $p"
  (cd "$KERNEL_CACHE/debs" && apt-get download "$p" >&2) ||
    { apt-get update -q >&2 && (cd "$KERNEL_CACHE/debs" && apt-get download "$p" >&2); }
}

build_kernel() {
  [[ -x $KERNEL && -f $KERNEL.config ]] && return 0
  apt_install flex bison bc make gcc libc6-dev binutils xz-utils
  apt_download linux-source-6.1
  local src=$KERNEL_CACHE/src-$kernel_key start=$SECONDS
  log "building the UML kernel $kernel_key (one-time; 11-20 min on 2 cores) in $src"
  rm -rf "$src" && mkdir -p "$src"
  dpkg-deb --fsys-tarfile "$KERNEL_CACHE"/debs/linux-source-6.1_*.deb |
    tar -xO ./usr/src/linux-source-6.1.tar.xz | tar -xJ -C "$src" --strip-components=1
  cd "$src"
  make -s ARCH=um defconfig >&2
  local o args=()
  while read -r o; do args+=(--enable "$o"); done < <(options)
  # No modules (everything built in), no debug info (halves the build time).
  ./scripts/config "${args[@]}" --disable MODULES --disable DEBUG_INFO \
    --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT --disable DEBUG_INFO_DWARF4 --disable DEBUG_INFO_DWARF5 \
    --enable DEBUG_INFO_NONE
  make -s ARCH=um olddefconfig >&2
  local missing=()
  while read -r o; do grep -qx "CONFIG_$o=y" .config || missing+=("$o"); done < <(options)
  if ((${#missing[@]})); then
    log "kernel config lacks required options (dependency not met?): ${missing[*]}"; exit 1
  fi
  make -s ARCH=um -j"${KERNEL_JOBS:-$(nproc)}" linux >&2
  strip -o "$KERNEL.tmp" linux
  cp .config "$KERNEL.config"
  mv "$KERNEL.tmp" "$KERNEL"
  cd "$KERNEL_CACHE" && rm -rf "$src"
  log "kernel built in $((SECONDS - start)) s: $KERNEL ($(du -h "$KERNEL" | cut -f1))"
}

build_root() {
  [[ -x $ROOT/init ]] && return 0
  apt_install iproute2 gcc libc6-dev
  apt_download busybox-static
  log "building the root tree $ROOT"
  local tmp=$ROOT.tmp a l
  rm -rf "$tmp" && mkdir -p "$tmp"/{bin,sbin,usr/sbin,usr/bin,lib64,lib/x86_64-linux-gnu,proc,sys,dev,tmp,run,host,ctl,root,etc}
  dpkg-deb --fsys-tarfile "$KERNEL_CACHE"/debs/busybox-static_*.deb | tar -xO ./bin/busybox > "$tmp/bin/busybox"
  chmod +x "$tmp/bin/busybox"
  # busybox's sh prefers its own applets over PATH: leave out the ones that
  # would shadow the real iproute2 tools.
  for a in $("$tmp/bin/busybox" --list); do
    case $a in busybox|ip|tc|bridge|devlink) ;; *) ln -sf busybox "$tmp/bin/$a" ;; esac
  done
  mkdir -p "$tmp/var" && ln -s ../run "$tmp/var/run"
  cp /usr/sbin/ip /usr/sbin/tc /usr/sbin/devlink /usr/sbin/bridge "$tmp/usr/sbin/"
  for a in "$tmp"/usr/sbin/*; do ldd "$a" | awk '/=> \//{print $3} /^\t\/lib64/{print $1}'; done | sort -u |
    while read -r l; do mkdir -p "$tmp$(dirname "$l")"; cp -L "$l" "$tmp$l"; done
  # tc looks up action/qdisc plugins and the ematch map here; harmless if absent.
  [[ -d /usr/lib/tc ]] && mkdir -p "$tmp/usr/lib" && cp -r /usr/lib/tc "$tmp/usr/lib/"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$tmp/etc/passwd"
  echo 'root:x:0:' > "$tmp/etc/group"
  printf '127.0.0.1 localhost\n::1 localhost\n' > "$tmp/etc/hosts"
  printf 'sctp 132 SCTP\ntcp 6 TCP\nudp 17 UDP\nicmp 1 ICMP\nipv6-icmp 58 IPv6-ICMP\n' > "$tmp/etc/protocols"
  gcc -static -Os -Wall -o "$tmp/init" "$here/init.c"
  rm -rf "$ROOT" && mv "$tmp" "$ROOT"
}

mkdir -p "$KERNEL_CACHE"
exec 9>"$KERNEL_CACHE/.lock"
flock 9
build_kernel
build_root
# Builds for other keys (another checkout, an older uml.config) are removed
# once unused for a day, so the cache does not grow; a boot of another
# checkout may still be using a younger one (runs do not hold the lock).
find "$KERNEL_CACHE" -mindepth 1 -maxdepth 1 \( -name 'linux-*' -o -name 'root-*' -o -name 'src-*' \) \
  ! -path "$KERNEL" ! -path "$KERNEL.config" ! -path "$ROOT" -mmin +1440 -exec rm -rf {} +
echo "KERNEL=$KERNEL"
echo "ROOT=$ROOT"
