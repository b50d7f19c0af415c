#!/usr/bin/env bash
# CI smoke test: real QEMU + the real Linux virtio-net driver through pvnet.
#
#   scripts/vm-smoke.sh [--accel auto|kvm|tcg] [--keep-logs DIR] [--pvnet-bin PATH]
#
# Two guests, 16 queue pairs each, ping and a 3-second iperf3 through a release build of pvnet.
# Passes when: the guests ping each other without loss, iperf3 moves data (> 0 Gbit/s), the
# guest driver really uses 16 queue pairs, and pvnet reports statistics with zero drops caused
# by bad input and no ERROR log line. Installs QEMU, busybox-static, iperf3, ethtool and the
# Debian kernel .deb itself (apt-get); a few minutes on a clean 2-core machine.
#
# Exit status: 0 pass; 1 fail (with the reason and the consoles' last lines);
# 77 SKIP (a needed component, e.g. QEMU, cannot be installed here; a "SKIP:" line says which).
set -uo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

accel=auto keep="" bin=""
while [ $# -gt 0 ]; do
  case $1 in
    --accel) accel=${2:?}; shift ;;
    --keep-logs) keep=${2:?}; shift ;;
    --pvnet-bin) bin=${2:?}; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) echo "vm-smoke: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done

t0=$SECONDS
args=(--queues 16 --guests 2 --secs 3 --streams 2 --format json --timeout 300 --accel "$accel")
[ -n "$keep" ] && args+=(--log-dir "$keep")
[ -n "$bin" ] && args+=(--pvnet-bin "$bin")
out=$("$PVNET_ROOT/scripts/vm2vm.sh" "${args[@]}")
rc=$?
if [ "$rc" = "$PVNET_SKIP_RC" ]; then
  echo "SKIP: vm-smoke: $(printf '%s\n' "$out" | grep -m1 '^SKIP' | sed 's/^SKIP: *//' || true)"
  exit "$PVNET_SKIP_RC"
fi
echo "$out" | cut -c1-400
field() { printf '%s\n' "$out" | grep -oE "\"$1\":(\"[^\"]*\"|[0-9.]+|null)" | head -1 | cut -d: -f2- | tr -d '"'; }
fail() { echo "FAIL: vm-smoke: $*" >&2; exit 1; }
[ "$rc" = 0 ] || fail "scripts/vm2vm.sh exited with $rc (its stderr above says why)"
gbps=$(field gbps_median)
awk -v g="${gbps:-0}" 'BEGIN {exit !(g > 0)}' || fail "no throughput (gbps_median=${gbps:-?})"
loss=$(field ping_loss)
[ "${loss##*:}" = "0%" ] || fail "ping loss '$loss'"
q=$(field guest_queues)
[ "$q" = 16 ] || fail "the guest driver uses $q queue pairs, expected 16"
[ "$(field pvnet_stats)" != null ] || fail "pvnet printed no statistics"
bad=$(field bad_input_drops)
[ "$bad" = 0 ] || fail "$bad drops caused by bad input in pvnet's statistics"
errs=$(field log_errors)
[ "$errs" = 0 ] || fail "$errs ERROR lines in pvnet's log"
echo "PASS: vm-smoke: $gbps Gbit/s, ping loss $loss, 16 queue pairs, 0 bad-input drops ($((SECONDS - t0)) s)"
