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

# bed_ensure: builds the bed if needed, sets BED_KERNEL, BED_ROOT and
# BED_XSAVE_PROBE, and runs bed_preflight.
bed_ensure() {
  local out
  local rc=0
  out=$("$bed_here/build.sh") || rc=$?
  # 3: a host the bed cannot run on, which build.sh said in one line.
  ((rc == 0 || rc == 3)) || echo "kernel-bed: building the bed failed (exit $rc)" >&2
  ((rc == 0)) || return 1
  BED_KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$out")
  BED_ROOT=$(sed -n 's/^ROOT=//p' <<<"$out")
  BED_XSAVE_PROBE=$(sed -n 's/^XSAVE_PROBE=//p' <<<"$out")
  bed_preflight
}

# bed_cannot_run CAUSE FIX: the one line that says why the bed cannot run here.
bed_cannot_run() { echo "kernel-bed: cannot run on this host: $1; fix: $2" >&2; return 1; }

# bed_preflight: checks, before booting, what a UML kernel needs of the host,
# so that a host it cannot run on gets one line naming the cause and the fix
# rather than a kernel panic 40 lines deep. Needs BED_KERNEL (and its .meta,
# written by build.sh) and BED_XSAVE_PROBE.
bed_preflight() {
  local arch size built out
  arch=$(uname -m)
  [[ $arch == x86_64 ]] ||
    bed_cannot_run "the bed is an x86-64 User-Mode Linux kernel and this host is $arch" \
      "run make test-kernel on an x86-64 host" || return
  # The probe asks the host kernel, through ptrace, for the FP state size
  # its ptrace accepts; a failure means UML's ptrace would fail too.
  out=$("$BED_XSAVE_PROBE" 2>&1) ||
    bed_cannot_run "${out#xsave-size: }" "run as root where ptrace is allowed, on an x86-64 CPU with XSAVE" || return
  size=$out
  built=$(sed -n 's/^xsave_size=//p' "$BED_KERNEL.meta" 2>/dev/null)
  [[ -n $built ]] ||
    bed_cannot_run "$BED_KERNEL has no $BED_KERNEL.meta saying which host it was built for" \
      "remove it and run hack/kernel/build.sh" || return
  [[ $size == "$built" ]] ||
    bed_cannot_run "$BED_KERNEL saves ${built}-byte FP state, this CPU's XSAVE area is ${size} bytes (the host's ptrace refuses any other size: EFAULT)" \
      "run hack/kernel/build.sh without BED_HOST_XSAVE_SIZE to build the kernel for this host" || return
  [[ -r /dev/net/tun || -z ${BED_UML_ARGS:-} ]] ||
    bed_cannot_run "BED_UML_ARGS asks for a network device and /dev/net/tun is missing" "modprobe tun, or run where /dev/net/tun exists" || return
}

# bed_explain_crash CONSOLE: one line naming the cause of a known UML crash.
bed_explain_crash() {
  local c=$1
  if grep -q 'fp regs failed' "$c"; then
    echo "kernel-bed: UML could not move FP state through ptrace (its HOST_FP_SIZE is not this host's XSAVE size); fix: rebuild with hack/kernel/build.sh on this host" >&2
  elif grep -q 'corrupted stack end detected' "$c"; then
    echo "kernel-bed: a kernel stack overflowed in the guest; fix: raise stack_order in hack/kernel/build.sh" >&2
  elif grep -q 'Out of memory\|oom-kill' "$c"; then
    echo "kernel-bed: the guest ran out of memory; fix: raise BED_MEM (MiB, now ${BED_MEM:-1024})" >&2
  fi
}

# bed_new_ctl: creates the per-boot control directory in BED_CTL (removed on exit).
bed_new_ctl() {
  BED_CTL=$(mktemp -d "${TMPDIR:-/tmp}/kernel-bed.XXXXXX")
  trap 'rm -rf "$BED_CTL"' EXIT
}

# bed_memdir: where UML's guest memory file goes: /dev/shm when it is a
# tmpfs with room for BED_MEM, else the control directory's file system.
bed_memdir() {
  local need=$(( (${BED_MEM:-1024} + 64) * 1024 )) d
  for d in /dev/shm "$BED_CTL"; do
    [[ $d == /dev/shm && $(stat -f -c %T /dev/shm 2>/dev/null) != tmpfs ]] && continue
    (( $(df --output=avail -k "$d" | tail -n1) >= need )) && { echo "$d"; return 0; }
  done
  bed_cannot_run "no room for ${BED_MEM:-1024} MiB of guest memory in /dev/shm or $BED_CTL" \
    "free space there, point TMPDIR elsewhere, or lower BED_MEM"
}

bed_boot() {
  local cmd=$1 memdir console rc urc pid
  cp "$cmd" "$BED_CTL/cmd"
  console=${BED_CONSOLE_LOG:-$BED_CTL/console.log}
  # UML backs guest memory with a file in TMPDIR: use tmpfs when there is one.
  ulimit -c 0 # a UML kernel panic aborts the process: no core files
  memdir=$(bed_memdir) || return
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
  bed_explain_crash "$console"
  return "$rc"
}
