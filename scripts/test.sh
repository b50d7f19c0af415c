#!/usr/bin/env bash
# pvnet's test command (README "run the tests"; CI calls exactly this).
#
#   scripts/test.sh            unit, stress, property and in-process vhost-user tests,
#                              bounded loom models, the QEMU VM-to-VM smoke test, the
#                              DPDK virtio-user interoperability test and a bounded
#                              fuzzing run
#   scripts/test.sh --quick    the cargo tests only
#
# Steps that need a component this machine lacks (e.g. QEMU cannot be installed) print a
# visible SKIP line and count as skipped, never as passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

quick=0
[ "${1:-}" = "--quick" ] && quick=1

if ! command -v cargo >/dev/null; then
  echo "scripts/test.sh: cargo not found: install a Rust toolchain (https://rustup.rs), then rerun" >&2
  exit 2
fi

passed=0 failed=0 skipped=0
declare -a summary
# free_mib: MiB free on the file system of the checkout (builds, guest images and fuzz
# corpora all live under it).
free_mib() { df -Pm . | awk 'NR == 2 {print $4}'; }
# A failing step on a nearly full disk says so: "No space left" deep in a tool's output is
# easy to miss, and the cure (free space, not a code change) differs.
LOW_DISK_MIB=1024
step() { # name, command...
  local name=$1; shift
  echo
  echo "==== $name: $*"
  local t0=$SECONDS rc
  "$@"; rc=$?
  local dt=$((SECONDS - t0)) free
  free=$(free_mib)
  case $rc in
    0) passed=$((passed + 1)); summary+=("PASS  $name (${dt}s)") ;;
    77) skipped=$((skipped + 1)); summary+=("SKIP  $name (${dt}s)") ;;
    *)
      failed=$((failed + 1))
      if [ "${free:-0}" -lt "$LOW_DISK_MIB" ]; then
        summary+=("FAIL  $name (rc=$rc, ${dt}s; disk nearly full: ${free} MiB free)")
      else
        summary+=("FAIL  $name (rc=$rc, ${dt}s)")
      fi
      ;;
  esac
}
echo "disk: $(free_mib) MiB free under $PWD at the start"

export CARGO_TERM_COLOR=never
step "cargo test (workspace)" cargo test --workspace --all-targets

if [ "$quick" = 0 ]; then
  # Every script through shellcheck (no finding of any severity) and the unit tests of the
  # scripts' Python helpers; SKIP (77) only where shellcheck or python3 cannot be installed.
  step "scripts (shellcheck, helper tests)" scripts/check-scripts.sh
  # loom needs its own build (different cfg): keep it out of the main target dir. The
  # models run in about 5 s once built (rw < 1 s, spin ~3.5 s on 2 cores); three-thread
  # models stay at preemption bound 1 (see tests/loom_rw.rs). The timeout turns a model
  # that explodes (a change that adds a spin-wait, say) into a failure instead of an hour
  # of CI.
  step "loom models (bounded)" timeout 900 env RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
    CARGO_TARGET_DIR=target/loom cargo test -p pvnet-locks --release \
    --test loom_rw --test loom_spin
  step "VM smoke test (QEMU, 2 guests, 16 queue pairs)" scripts/vm-smoke.sh
  # A guest behind pvnet --tap, the tap in a fresh network namespace: ping and iperf3 both
  # ways from the namespace (SKIP 77 where taps, namespaces or QEMU are unavailable).
  step "uplink VM (QEMU guest <-> host through a tap)" timeout 600 scripts/uplink.sh --secs 3
  step "DPDK virtio-user interop (1 and 2 queue pairs)" timeout 600 scripts/dpdk-interop.sh
  # libFuzzer targets (frames/offloads, TX rings, vhost-user messages, tap frames), 20 s each from the
  # committed seeds; any crash, hang or OOM fails. SKIP (77) only without a nightly toolchain.
  step "fuzz (4 targets x 20 s, nightly)" fuzz/run.sh --secs 20
fi

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
echo "steps: $passed passed, $failed failed, $skipped skipped"
echo "disk: $(free_mib) MiB free at the end; target/ holds $(du -sm target 2>/dev/null | cut -f1) MiB, fuzz/target $(du -sm fuzz/target 2>/dev/null | cut -f1) MiB"
[ "$failed" -eq 0 ]
