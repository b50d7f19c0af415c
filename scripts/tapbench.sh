#!/usr/bin/env bash
# Frames per second through the uplink with a real third-party frontend: DPDK testpmd with
# two net_virtio_user ports (A, B) in a closed loop (mac forwarding, tx_first 32), beside the
# guest-to-guest figure of the same client:
#   tap     A -> pvnet 1 -> tap 1 -> Linux bridge (in a fresh namespace) -> tap 2 -> pvnet 2
#           -> B, and back: every frame is written to a tap by one pvnet and read from a tap
#           by the other
#   direct  A -> pvnet -> B and back (one pvnet, two vhost-user ports), as scripts/switchbench.sh
# Each round runs both, in an order rotated per round; the table gives medians over rounds
# of the client's received Mpps (both directions summed), pvnet's CPU time per frame and its
# context switches (wake-ups) per frame (both pvnets summed for "tap").
#
#   scripts/tapbench.sh [--size B] [--rounds N (3)] [--secs S (5)] [--warmup S (2)]
#                       [--no-build] [--pvnet-bin PATH] [--out DIR] [-- extra pvnet flags]
# pvnet runs on the first allowed CPU, the client on the second (as switchbench.sh).
# Exit status: 0 measured, 1 failure, 77 testpmd, taps or network namespaces unavailable.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=scripts/lib/dpdk.sh
. "$PVNET_ROOT/scripts/lib/dpdk.sh"

size=64 rounds=3 secs=5 warmup=2 build=1 pvnet_bin="" out=""
pvnet_args=()
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --size) need "$@"; size=$2; shift ;;
    --rounds) need "$@"; rounds=$2; shift ;;
    --secs) need "$@"; secs=$2; shift ;;
    --warmup) need "$@"; warmup=$2; shift ;;
    --no-build) build=0 ;;
    --pvnet-bin) need "$@"; pvnet_bin=$2; build=0; shift ;;
    --out) need "$@"; out=$2; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; pvnet_args+=("$@"); break ;;
    *) die "unknown flag '$1' (see --help; pvnet flags go after --)" ;;
  esac
  shift
done
for v in "$size" "$rounds" "$secs" "$warmup"; do
  { [[ $v =~ ^[0-9]+$ ]] && [ "$v" -ge 1 ]; } || die "bad number '$v'"
done
{ [ "$size" -ge 60 ] && [ "$size" -le 1514 ]; } || die "--size must be 60..1514"

work=$(mktemp -d /tmp/pvnet-tb.XXXXXX)
[ -n "$out" ] || out=$work/out
mkdir -p "$out"
ns=upl-tb$$ taps=(upltba$$ upltbb$$)
pv=()
stop_pvnets() {
  local p
  for p in "${pv[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pv[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pv=()
}
cleanup() {
  set +e
  dpdk_cleanup
  stop_pvnets
  ip netns del "$ns" 2>/dev/null || true
  for t in "${taps[@]}"; do ip link del "$t" 2>/dev/null || true; done
  rm -rf "$work/"*.sock
  [ "$out" = "$work/out" ] && rm -rf "$work"
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

ensure_dpdk || { echo "SKIP: cannot install DPDK testpmd (${DPDK_PKGS[*]})"; exit "$PVNET_SKIP_RC"; }
[ -e /dev/net/tun ] || { echo "SKIP: no /dev/net/tun here"; exit "$PVNET_SKIP_RC"; }
ip netns add "$ns" 2>/dev/null || { echo "SKIP: cannot create network namespaces"; exit "$PVNET_SKIP_RC"; }
ip -n "$ns" link add br0 type bridge
ip -n "$ns" link set br0 up
# A plain bridge: no netfilter calls on bridged frames (br_netfilter, where loaded).
for t in iptables ip6tables arptables; do
  ip netns exec "$ns" sysctl -q -w "net.bridge.bridge-nf-call-$t=0" 2>/dev/null || true
done
bin=$(pvnet_binary "$build" "$pvnet_bin") || exit 1
mapfile -t cpus < <(taskset -pc $$ | awk -F': ' '{print $2}' | tr ',' '\n' |
  awk -F- '{if (NF == 2) for (i = $1; i <= $2; i++) print i; else print $1}')
[ ${#cpus[@]} -ge 2 ] || die "needs two CPUs"
sw_cpu=${cpus[0]} cl_cpu=${cpus[1]}
MAC_A=02:00:00:00:00:0a MAC_B=02:00:00:00:00:0b

# run KIND ROUND: appends "KIND ROUND MPPS NS_PER_FRAME" to $work/results.
run() {
  local kind=$1 r=$2 log=$out/$1-r$2 sa=$work/a.sock sb=$work/b.sock p
  mkdir -p "$log"
  if [ "$kind" = direct ]; then
    taskset -c "$sw_cpu" "$bin" --socket "$sa" --socket "$sb" --queues 1 "${pvnet_args[@]}" </dev/null >"$log/pvnet.log" 2>&1 &
    pv+=($!)
  else
    local i s
    for i in 0 1; do
      s=$sa; [ "$i" = 1 ] && s=$sb
      taskset -c "$sw_cpu" "$bin" --socket "$s" --queues 1 --tap "${taps[$i]}" "${pvnet_args[@]}" </dev/null >"$log/pvnet$i.log" 2>&1 &
      pv+=($!)
    done
  fi
  for _ in $(seq 100); do [ -S "$sa" ] && [ -S "$sb" ] && break; sleep 0.1; done
  { [ -S "$sa" ] && [ -S "$sb" ]; } || die "$kind: pvnet did not start (logs in $log)"
  if [ "$kind" = tap ]; then
    for t in "${taps[@]}"; do
      for _ in $(seq 50); do [ -e "/sys/class/net/$t" ] && break; sleep 0.1; done
      ip link set "$t" netns "$ns"
      ip -n "$ns" link set "$t" master br0
      ip -n "$ns" link set "$t" up
    done
  fi
  dpdk_start cl "$cl_cpu" "$log/client.log" interactive -m 512 \
    --vdev "net_virtio_user0,path=$sa,queues=1,mac=$MAC_A" \
    --vdev "net_virtio_user1,path=$sb,queues=1,mac=$MAC_B" \
    -- -i --forward-mode=mac --nb-cores=1 --rxd=256 --txd=256 --txpkts="$size" \
    --eth-peer="0,$MAC_B" --eth-peer="1,$MAC_A" --total-num-mbufs=16384 || die "testpmd did not start"
  dpdk_wait_prompt cl 40 || die "testpmd did not come up"
  # Learning: bursts from both ports until both received (the switches and the bridge learn).
  local learned=0 n0
  dpdk_cmd cl "set fwd rxonly"
  for _ in $(seq 20); do
    n0=$(grep -c 'Forward statistics for port 1 ' "$log/client.log" || true)
    dpdk_cmd cl "start tx_first 1"
    sleep 0.5
    dpdk_cmd cl "stop"
    for _ in $(seq 50); do
      [ "$(grep -c 'Forward statistics for port 1 ' "$log/client.log" || true)" -gt "$n0" ] && break
      sleep 0.1
    done
    learned=$(dpdk_fwd_totals "$log/client.log" | awk '$1 <= 1 && $2 > 0 {n++} END {print n + 0}')
    [ "$learned" = 2 ] && break
  done
  [ "$learned" = 2 ] || die "$kind: the learning bursts did not cross in both directions"
  dpdk_cmd cl "set fwd mac"
  dpdk_cmd cl "start tx_first 32"
  sleep "$warmup"
  local c0=0 c1=0 x0=0 x1=0 rep
  for p in "${pv[@]}"; do c0=$((c0 + $(proc_cpu_ticks "$p"))) x0=$((x0 + $(proc_ctxsw "$p"))); done
  dpdk_cmd cl "show port stats all"
  sleep "$secs"
  for p in "${pv[@]}"; do c1=$((c1 + $(proc_cpu_ticks "$p"))) x1=$((x1 + $(proc_ctxsw "$p"))); done
  dpdk_cmd cl "show port stats all"
  sleep 0.5
  dpdk_cmd cl "stop"
  sleep 0.3
  dpdk_stop cl 5
  stop_pvnets
  if [ "$kind" = tap ]; then
    for t in "${taps[@]}"; do ip -n "$ns" link del "$t" 2>/dev/null || true; done
  fi
  rm -f "$sa" "$sb"
  rep=$(dpdk_port_reports "$log/client.log")
  printf '%s\n' "$rep" | awk -v kind="$kind" -v r="$r" -v s="$secs" -v c="$((c1 - c0))" \
    -v x="$((x1 - x0))" -v hz="$(getconf CLK_TCK)" '
    $2 <= 1 { rx[$1] += $3 }
    END {
      f = rx[1] - rx[0]
      printf "%s %d %.4f %.0f %.4f\n", kind, r, f / s / 1e6, (f > 0 ? c / hz * 1e9 / f : 0), (f > 0 ? x / f : 0)
    }' >>"$work/results"
  log "$(tail -1 "$work/results") (kind round Mpps ns/frame ctxsw/frame)"
}

kinds=(tap direct)
for r in $(seq "$rounds"); do
  for k in 0 1; do run "${kinds[$(((k + r - 1) % 2))]}" "$r"; done
done
cp "$work/results" "$out/results.txt"
python3 - "$work/results" "$size" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("tapbench (preliminary): DPDK virtio-user closed loop, %s B frames, medians over rounds" % sys.argv[2])
print("%-7s %7s %9s %14s %16s" % ("path", "rounds", "Mpps", "pvnet ns/frame", "ctxsw/frame"))
m = {}
for k in ("direct", "tap"):
    sel = [r for r in rows if r[0] == k]
    if sel:
        m[k] = statistics.median(float(r[2]) for r in sel)
        print("%-7s %7d %9.3f %14.0f %16.4f" % (k, len(sel), m[k], statistics.median(float(r[3]) for r in sel),
                                              statistics.median(float(r[4]) for r in sel)))
if m.get("direct"):
    print("tap / direct: %.2f" % (m.get("tap", 0) / m["direct"]))
PY
