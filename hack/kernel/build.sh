#!/usr/bin/env bash
# build.sh [plan]: build the kernel test bed once into the cache and print
# its paths (KERNEL=, ROOT=). Idempotent and safe to run concurrently
# (flock); later runs only check that the artefacts exist. `build.sh plan`
# prints what a build for this host would be (key, XSAVE size, stack order,
# paths) without building anything.
#
# The bed is a User-Mode Linux kernel (a Linux kernel that runs as an ordinary
# host process: no KVM, no QEMU) built from Debian's linux-source-6.1 with the
# options in uml.config, plus a tiny root tree (busybox-static and the host's
# ip/tc/devlink/bridge with their shared libraries, and init.c compiled
# statically as /init) that the kernel mounts from the host through hostfs.
#
# The kernel is built for this host's XSAVE area size (xsave-size.c asks the
# host kernel; 2,696 bytes on AVX-512 CPUs, 11,008 with AMX): UML saves its
# processes' FP state with ptrace using a size fixed at build time, and the
# host refuses any size but its own (docs/kernel-test-bed.md).
#
# Cache layout ($KERNEL_CACHE, default $CACHE_DIR/kernel):
#   debs/                      downloaded .debs (linux-source-6.1, busybox-static)
#   linux-<key>                stripped UML kernel; <key> hashes everything the
#                              build depends on (see kernel_key below)
#   linux-<key>.config         its final .config
#   linux-<key>.meta           what it was built for (xsave_size=, stack_order=, source=)
#   root-<key>/                root tree; <key> hashes init.c, this script and ROOT_REV
#   tools/xsave-size-<hash>    the compiled probe
#
# Exit codes: 0 built (or cached); 3 this host cannot run the bed (one line
# on stderr says why and the fix); others: the build failed.
#
# Env: KERNEL_CACHE, CACHE_DIR, KERNEL_JOBS (default nproc),
#      BED_HOST_XSAVE_SIZE (bytes: build for that host instead of this one).
set -euo pipefail

KERNEL_REV=2   # bump when the kernel build steps change in a way the key misses
ROOT_REV=1     # bump when the root tree layout changes

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/multi-networkpolicy-tc}
KERNEL_CACHE=${KERNEL_CACHE:-$CACHE_DIR/kernel}
log() { echo "[kernel-bed] $*" >&2; }
die() { echo "kernel-bed: $*" >&2; exit 1; }

options() { sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/uml.config" | grep -v '^$'; }

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

# stack_order SIZE: the UML kernel stack order (1<<order pages) for a host
# whose XSAVE area is SIZE bytes. A UML kernel stack holds up to three FP
# save areas of that size besides its call chains: thread_info, at the
# bottom of every stack, carries one (aux_fp_regs) and is copied whole to
# the interrupt stack; every host signal (the timer, SIGIO: UML's
# interrupts) makes the host push a signal frame with the FP state, and
# sig_handler_common() puts a struct uml_pt_regs, FP area included, on the
# stack. Softirqs (bridge, veth, flower, conntrack) then run on top. With
# upstream's 16 KiB an AMX host (11,008 bytes) overflows into thread_info
# and the guest hangs or corrupts memory instead of failing, so size the
# stack for three areas plus 16 KiB of calls: order 3 for AVX-512 hosts,
# order 4 for AMX hosts.
stack_order() {
  local size=$1 order=2
  while (( (4096 << order) < 3 * size + 16384 )); do order=$((order + 1)); done
  echo "$order"
}

# check_xsave_size SIZE: a plausible NT_X86_XSTATE size, or die.
check_xsave_size() {
  [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 576 && $1 <= 65536 && $1 % 8 == 0)) ||
    die "XSAVE size '$1' is not a size in bytes (a multiple of 8 between 576 and 65536)"
}

# xsave_probe: compiles xsave-size.c once and prints its path.
xsave_probe() {
  local p
  p=$KERNEL_CACHE/tools/xsave-size-$(sha256sum "$here/xsave-size.c" | cut -c1-12)
  if [[ ! -x $p ]]; then
    mkdir -p "${p%/*}"
    gcc -O2 -Wall -o "$p.$$" "$here/xsave-size.c" >&2 && mv "$p.$$" "$p"
  fi
  echo "$p"
}

# host_xsave_size: this host's XSAVE size in bytes, or BED_HOST_XSAVE_SIZE.
host_xsave_size() {
  if [[ -n ${BED_HOST_XSAVE_SIZE:-} ]]; then echo "$BED_HOST_XSAVE_SIZE"; return; fi
  local probe out
  probe=$(xsave_probe)
  out=$("$probe" 2>&1) || {
    echo "kernel-bed: cannot run on this host: ${out#xsave-size: }; fix: run as root where ptrace is allowed, on an x86-64 CPU with XSAVE" >&2
    exit 3
  }
  echo "$out"
}

# patch_source SIZE: makes the UML source in . save SIZE bytes of FP state.
# Upstream fixes HOST_FP_SIZE at 2696 bytes (an AVX-512 host) in
# user-offsets.c; the host's ptrace accepts only its own size.
patch_source() {
  local f=arch/x86/um/user-offsets.c
  grep -q 'DEFINE_LONGS(HOST_FP_SIZE, 2696);' "$f" ||
    die "$PWD/$f no longer says 'DEFINE_LONGS(HOST_FP_SIZE, 2696);': update patch_source in hack/kernel/build.sh"
  sed -i "s/DEFINE_LONGS(HOST_FP_SIZE, 2696);/DEFINE_LONGS(HOST_FP_SIZE, $1);/" "$f"
}

# source_deb: the cached linux-source .deb the kernel is built from (the newest
# one downloaded; a machine keeps building from it until the cache is cleared).
source_deb() { find "$KERNEL_CACHE/debs" -maxdepth 1 -name 'linux-source-6.1_*_all.deb' 2>/dev/null | sort -V | tail -n1; }

build_kernel() {
  [[ -x $KERNEL && -f $KERNEL.config && -f $KERNEL.meta ]] && return 0
  local src=$KERNEL_CACHE/src-$kernel_key start=$SECONDS
  log "building the UML kernel $kernel_key for a ${xsave_size}-byte XSAVE area, stack order $stack_order (one-time; 11-20 min on 2 cores) in $src"
  rm -rf "$src" && mkdir -p "$src"
  dpkg-deb --fsys-tarfile "$deb" |
    tar -xO ./usr/src/linux-source-6.1.tar.xz | tar -xJ -C "$src" --strip-components=1
  cd "$src"
  patch_source "$xsave_size"
  make -s ARCH=um defconfig >&2
  local o args=()
  while read -r o; do args+=(--enable "$o"); done < <(options)
  # No modules (everything built in), no debug info (halves the build time).
  ./scripts/config "${args[@]}" --set-val KERNEL_STACK_ORDER "$stack_order" \
    --disable MODULES --disable DEBUG_INFO \
    --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT --disable DEBUG_INFO_DWARF4 --disable DEBUG_INFO_DWARF5 \
    --enable DEBUG_INFO_NONE
  make -s ARCH=um olddefconfig >&2
  local missing=()
  while read -r o; do grep -qx "CONFIG_$o=y" .config || missing+=("$o"); done < <(options)
  grep -qx "CONFIG_KERNEL_STACK_ORDER=$stack_order" .config || missing+=("KERNEL_STACK_ORDER=$stack_order")
  if ((${#missing[@]})); then
    log "kernel config lacks required options (dependency not met?): ${missing[*]}"; exit 1
  fi
  make -s ARCH=um -j"${KERNEL_JOBS:-$(nproc)}" linux >&2
  strip -o "$KERNEL.tmp" linux
  cp .config "$KERNEL.config"
  printf 'xsave_size=%s\nstack_order=%s\nsource=%s\n' "$xsave_size" "$stack_order" "${deb##*/}" >"$KERNEL.meta"
  mv "$KERNEL.tmp" "$KERNEL"
  cd "$KERNEL_CACHE" && rm -rf "$src"
  log "kernel built in $((SECONDS - start)) s: $KERNEL ($(du -h "$KERNEL" | cut -f1))"
}

build_root() {
  [[ -x $ROOT/init ]] && return 0
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

# plan: everything the kernel build depends on, and the key that hashes it:
# the build steps (the functions themselves, as bash prints them), the
# options, the source package, the host's XSAVE size and the stack order it
# implies, and the compiler. A kernel is never reused on a host it was not
# built for, and a changed input rebuilds it.
plan() {
  xsave_size=$(host_xsave_size)
  check_xsave_size "$xsave_size"
  stack_order=$(stack_order "$xsave_size")
  deb=$(source_deb)
  kernel_key=$( {
    echo "$KERNEL_REV"; options; echo "source=${deb##*/}"
    echo "xsave_size=$xsave_size stack_order=$stack_order"
    declare -f build_kernel patch_source stack_order
    gcc -dumpfullversion 2>/dev/null || echo "no gcc"
  } | sha256sum | cut -c1-12)
  root_key=$( { echo "$ROOT_REV"; cat "$here/init.c" "$here/build.sh"; } | sha256sum | cut -c1-12)
  KERNEL=$KERNEL_CACHE/linux-$kernel_key
  ROOT=$KERNEL_CACHE/root-$root_key
}

mkdir -p "$KERNEL_CACHE"
case ${1:-build} in
plan)
  plan
  printf 'XSAVE_SIZE=%s\nSTACK_ORDER=%s\nSOURCE=%s\nKERNEL_KEY=%s\nKERNEL=%s\nROOT=%s\n' \
    "$xsave_size" "$stack_order" "${deb##*/}" "$kernel_key" "$KERNEL" "$ROOT"
  exit 0 ;;
patch) # patch DIR: apply patch_source for this host to a UML source tree (tests)
  xsave_size=$(host_xsave_size); check_xsave_size "$xsave_size"
  cd "${2:?usage: build.sh patch DIR}" && patch_source "$xsave_size"
  exit 0 ;;
build) ;;
*) echo "usage: $0 [build|plan|patch DIR]" >&2; exit 2 ;;
esac

exec 9>"$KERNEL_CACHE/.lock"
flock 9
apt_install flex bison bc make gcc libc6-dev binutils xz-utils iproute2
apt_download linux-source-6.1
apt_download busybox-static
plan
build_kernel
build_root
# Builds for other keys (another checkout, an older uml.config, another
# host's XSAVE size) are removed once unused for a day, so the cache does not
# grow; a boot of another checkout may still be using a younger one (runs do
# not hold the lock).
find "$KERNEL_CACHE" -mindepth 1 -maxdepth 1 \( -name 'linux-*' -o -name 'root-*' -o -name 'src-*' \) \
  ! -path "$KERNEL" ! -path "$KERNEL.config" ! -path "$KERNEL.meta" ! -path "$ROOT" -mmin +1440 -exec rm -rf {} +
echo "KERNEL=$KERNEL"
echo "ROOT=$ROOT"
echo "XSAVE_PROBE=$(xsave_probe)"
