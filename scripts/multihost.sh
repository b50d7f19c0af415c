#!/usr/bin/env bash
# Two "hosts" on one machine, joined by Linux's VXLAN: each host is a network namespace with
# a bridge; each runs its own pvnet with one guest (QEMU, vhost-user) and one tap (--tap),
# the tap enslaved to the host's bridge together with a VXLAN device whose underlay is a
# veth pair between the two namespaces. Guest A (10.0.0.1, behind pvnet 1 on host 1) pings
# guest B (10.0.0.2, behind pvnet 2 on host 2) and runs iperf3 to it. docs/uplink.md has
# the same set-up as a recipe for two real hosts.
#
#   scripts/multihost.sh [flags] [-- extra pvnet flags]
#
# Flags: --queues N (1)  --secs N (10)  --streams N (1)  --mem MB (512)  --vcpus N (1)
#        --accel auto|kvm|tcg (auto)  --no-build  --pvnet-bin PATH  --log-dir DIR
# Exit status: 0 traffic passed, 1 failure, 77 QEMU, the guest image, iperf3, VXLAN or
# network namespaces are not available here.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

queues=1 secs=10 streams=1 mem=512 vcpus=1 accel=auto build=1 pvnet_bin="" log_dir=""
pvnet_args=()
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --queues) need "$@"; queues=$2; shift ;;
    --secs) need "$@"; secs=$2; shift ;;
    --streams) need "$@"; streams=$2; shift ;;
    --mem) need "$@"; mem=$2; shift ;;
    --vcpus) need "$@"; vcpus=$2; shift ;;
    --accel) need "$@"; accel=$2; shift ;;
    --no-build) build=0 ;;
    --pvnet-bin) need "$@"; pvnet_bin=$2; build=0; shift ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; pvnet_args+=("$@"); break ;;
    *) die "unknown flag '$1' (see --help; pvnet flags go after --)" ;;
  esac
  shift
done
isnum() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "${2:-1}" ]; }
{ isnum "$queues" && [ "$queues" -le 32 ]; } || die "--queues must be 1..32"
{ isnum "$vcpus" && isnum "$secs" && isnum "$streams" && isnum "$mem" 64; } ||
  die "--vcpus/--secs/--streams/--mem must be positive integers"

# ---------------------------------------------------------------- cleanup
work=$(mktemp -d /tmp/pvnet-mh.XXXXXX)
h=(upl-h1-$$ upl-h2-$$) taps=(uplha$$ uplhb$$)
pids=()
cleanup() {
  set +e
  local p n
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for n in "${h[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  for n in "${taps[@]}"; do ip link del "$n" 2>/dev/null || true; done
  if [ -n "$log_dir" ] && mkdir -p "$log_dir"; then cp -r "$work"/*.log "$log_dir"/ 2>/dev/null || true; fi
  rm -rf "$work"
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- prerequisites
command -v iperf3 >/dev/null || ensure_pkgs iperf3 ||
  { echo "SKIP: cannot install iperf3"; exit "$PVNET_SKIP_RC"; }
[ -e /dev/net/tun ] || { echo "SKIP: no /dev/net/tun here"; exit "$PVNET_SKIP_RC"; }
vm_setup "$accel" "$queues"
bin=$(pvnet_binary "$build" "$pvnet_bin") || exit 1

# ---------------------------------------------------------------- the two hosts
# Underlay: a veth pair, 192.168.77.1 <-> .2, MTU 1600 so that VXLAN (50 bytes of headers)
# carries the guests' 1500-byte frames whole.
for i in 0 1; do
  ip netns add "${h[$i]}" 2>/dev/null ||
    { echo "SKIP: cannot create network namespaces"; exit "$PVNET_SKIP_RC"; }
  ip -n "${h[$i]}" link set lo up
done
ip link add ul0 netns "${h[0]}" mtu 1600 type veth peer name ul0 netns "${h[1]}" mtu 1600
for i in 0 1; do
  n=${h[$i]} me=192.168.77.$((i + 1)) peer=192.168.77.$((2 - i))
  ip -n "$n" addr add "$me/24" dev ul0
  ip -n "$n" link set ul0 up
  ip -n "$n" link add vx0 type vxlan id 42 local "$me" remote "$peer" dstport 4789 dev ul0 ||
    { echo "SKIP: no VXLAN support in this kernel"; exit "$PVNET_SKIP_RC"; }
  ip -n "$n" link set vx0 mtu 1500
  ip -n "$n" link add br0 type bridge
  ip -n "$n" link set vx0 master br0
  ip -n "$n" link set vx0 up
  ip -n "$n" link set br0 up
done

# One pvnet per host: the guest's socket and the tap, the tap then moved into its host.
for i in 0 1; do
  sock=$work/g$i.sock
  "$bin" --socket "$sock" --queues "$queues" --tap "${taps[$i]}" --tap-queues "$queues" \
    --stats-format json "${pvnet_args[@]}" </dev/null >"$work/pvnet$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$sock" ] && [ -e "/sys/class/net/${taps[$i]}" ] && break; sleep 0.1; done
  [ -S "$sock" ] || die "pvnet $i did not start (see $work/pvnet$i.log)"
  ip link set "${taps[$i]}" netns "${h[$i]}"
  ip -n "${h[$i]}" link set "${taps[$i]}" master br0
  ip -n "${h[$i]}" link set "${taps[$i]}" up
done

# ---------------------------------------------------------------- guests
boot() { # index role ip extra-cmdline
  local i=$1 role=$2 ip=$3 extra=$4
  # shellcheck disable=SC2046
  "$PVNET_QEMU" -nodefaults -no-user-config -display none -no-reboot -name "pvnet-mh$i" \
    $(accel_args "$acc") -smp "$vcpus" -m "${mem}M" \
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off pvnet.role=$role pvnet.ip=$ip/24 pvnet.queues=$queues $extra" \
    -chardev "socket,id=chr0,path=$work/g$i.sock" \
    -netdev "vhost-user,id=net0,chardev=chr0,queues=$queues" \
    -device "virtio-net-pci,netdev=net0,mac=52:54:00:00:01:0$((i + 1)),mq=on,vectors=$vectors" \
    -serial "file:$work/guest$i.log" </dev/null >"$work/qemu$i.log" 2>&1 &
  pids+=($!)
}
boot 1 server 10.0.0.2 ""
boot 0 client 10.0.0.1 "pvnet.peer=10.0.0.2 pvnet.port=5201 pvnet.streams=$streams pvnet.secs=$secs"
log "guests booting (accel $acc); guest A on host 1 -> guest B on host 2 over VXLAN"
t0=$SECONDS failed=""
until grep -q PVNET-DONE "$work/guest0.log" 2>/dev/null; do
  [ $((SECONDS - t0)) -lt $((300 + 2 * secs)) ] || { failed="timeout"; break; }
  grep -q PVNET-ERROR "$work/guest0.log" 2>/dev/null && { failed="guest A error"; break; }
  sleep 0.5
done
for i in 0 1; do kill -USR1 "${pids[$i]}" 2>/dev/null || true; done
sleep 0.5
vx=$(ip -n "${h[0]}" -s link show vx0 | awk '/TX:/ {getline; print $2 " packets, " $1 " bytes"}')
grep -E "PVNET-(PING|RESULT|ERROR)" "$work/guest0.log" || true
log "host 1 vx0 transmitted: $vx"
if [ -n "$failed" ] || ! grep -q "PVNET-RESULT" "$work/guest0.log"; then
  echo "multihost: FAILED (${failed:-no iperf3 result})" >&2
  tail -15 "$work/guest0.log" "$work/pvnet0.log" "$work/pvnet1.log" >&2 || true
  exit 1
fi
grep -q "PVNET-PING peer=10.0.0.2 loss=0%" "$work/guest0.log" || die "ping lost packets"
python3 - "$work/guest0.log" <<'PY'
import re, sys
for l in open(sys.argv[1], errors="replace"):
    m = re.search(r"PVNET-RESULT round=(\d+) sent_bps=(\S+) recv_bps=(\S+) retransmits=(\S+)", l)
    if m:
        print("multihost (preliminary): guest A -> guest B over VXLAN: %.3f Gbit/s, %s retransmits"
              % (float(m.group(3)) / 1e9, m.group(4)))
PY
