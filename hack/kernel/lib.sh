# lib.sh: boots the kernel test bed. Sourced by run.sh and test.sh.
#
# bed_boot CMDFILE: boots the UML kernel, runs the shell script CMDFILE as
# root (PID 1's child; the host's / is mounted read-only at /host), streams
# the script's stdout and stderr to our stdout, and returns its exit code.
# If the guest produced no exit code, prints the kernel console tail and
# returns BED_RC_TIMEOUT (timeout) or BED_RC_CRASH (panic, crash, killed).
#
# Env: BED_TIMEOUT (seconds, default 900), BED_MEM (MiB, default 1024),
#      BED_CONSOLE_LOG (keep the kernel console in this file),
#      BED_VERBOSE=1 (print the kernel console after the run),
#      BED_UML_ARGS (extra kernel arguments, e.g. eth0=tuntap,TAP to give the
#      guest a network interface onto a tap device of the host).

BED_RC_TIMEOUT=124
BED_RC_CRASH=125

bed_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# bed_quote ARG: ARG quoted for sh.
bed_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# bed_ensure: builds the bed if needed; sets BED_KERNEL and BED_ROOT.
bed_ensure() {
  local out
  out=$("$bed_here/build.sh") || { echo "kernel-bed: building the bed failed" >&2; return 1; }
  BED_KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$out")
  BED_ROOT=$(sed -n 's/^ROOT=//p' <<<"$out")
}

# bed_new_ctl: creates the per-boot control directory in BED_CTL (removed on exit).
bed_new_ctl() {
  BED_CTL=$(mktemp -d "${TMPDIR:-/tmp}/kernel-bed.XXXXXX")
  trap 'rm -rf "$BED_CTL"' EXIT
}

bed_boot() {
  local cmd=$1 memdir console rc urc pid
  cp "$cmd" "$BED_CTL/cmd"
  console=${BED_CONSOLE_LOG:-$BED_CTL/console.log}
  # UML backs guest memory with a file in TMPDIR: use tmpfs when there is one.
  memdir=$BED_CTL
  ulimit -c 0 # a UML kernel panic aborts the process: no core files
  [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] && memdir=/dev/shm
  # timeout (not --foreground) kills UML's whole process group on expiry;
  # we forward our own INT/TERM to it so no guest outlives this script.
  TMPDIR=$memdir timeout -k 5 "${BED_TIMEOUT:-900}" "$BED_KERNEL" \
    mem="${BED_MEM:-1024}M" uml_dir="$BED_CTL" \
    root=/dev/root rootfstype=hostfs rootflags="$BED_ROOT" ro init=/init bed_ctl="$BED_CTL" \
    quiet dummy.numdummies=0 ifb.numifbs=0 con=null con0=null,fd:4 con1=null,fd:1 ${BED_UML_ARGS:-} </dev/null 4>"$console" &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null' INT TERM
  wait "$pid"; urc=$?
  # A signal interrupts the first wait; the second collects the real status.
  kill -0 "$pid" 2>/dev/null && { wait "$pid"; urc=$?; }
  trap - INT TERM
  if [[ ${BED_VERBOSE:-0} == 1 ]]; then
    echo "--- kernel console ---" >&2; tr -d '\r' <"$console" >&2
  fi
  if [[ -s $BED_CTL/rc ]]; then
    rc=$(<"$BED_CTL/rc")
    return "$rc"
  fi
  if [[ $urc == 124 ]]; then
    echo "kernel-bed: timed out after ${BED_TIMEOUT:-900} s (BED_TIMEOUT); kernel console tail:" >&2
    rc=$BED_RC_TIMEOUT
  else
    echo "kernel-bed: the guest ended without an exit code (uml exit $urc: panic or crash); kernel console tail:" >&2
    rc=$BED_RC_CRASH
  fi
  tr -d '\r' <"$console" | tail -n 40 >&2
  return "$rc"
}
