#!/usr/bin/env bash
# Guest <-> host through an uplink: one QEMU guest (Debian kernel, scripts/guest-image.sh)
# whose virtio-net device reaches a tap device that sits in a fresh network namespace with
# an address (10.0.0.254/24, the "host"). From the namespace: ping, then iperf3 to the guest
# (host -> guest) and iperf3 -R (guest -> host). Also run as `scripts/vm2vm.sh --uplink`.
#
#   scripts/uplink.sh [flags] [-- extra pvnet flags]
#
# Backends of the guest's NIC (--backend, repeatable; default pvnet):
#   pvnet      pvnet with --socket (the guest, vhost-user) and --tap (the uplink port)
#   tap        QEMU's own -netdev tap (virtio-net emulated in QEMU's user space)
#   vhost      QEMU's -netdev tap,vhost=on (the kernel's vhost-net; needs /dev/vhost-net)
#   --compare  = --backend pvnet --backend tap --backend vhost
# With several backends each round runs all of them, in an order rotated per round, with a
# fresh guest each; the summary gives medians over rounds and the ratios to pvnet, and for
# pvnet its CPU time per second and per frame and its context switches (wake-ups) per frame
# (frames through the tap port, both ways, from its statistics).
#
# Flags:
#   --queues N (1)  --tap-queues N (= --queues)  --mem MB (512)  --vcpus N (1)
#   --offload on|off (on)  --accel auto|kvm|tcg (auto)  --secs N (10)  --rounds N (1)
#   --streams N (1)  --no-build  --pvnet-bin PATH  --log-dir DIR
# --offload is the guest's (ethtool -K eth0 ... off, as in vm2vm.sh); the tap's offloads
# follow what the guest negotiated, with QEMU as with pvnet (pvnet: -- --tap-offload false
# makes the kernel hand over complete frames only).
# Exit status: 0 traffic passed, 1 failure, 77 QEMU, the guest image, iperf3 or network
# namespaces are not available here.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=scripts/lib/dpdk.sh
. "$PVNET_ROOT/scripts/lib/dpdk.sh" # proc_cpu_ticks, proc_ctxsw, pvnet_snapshot

backends=() queues=1 tap_queues="" mem=512 vcpus=1 offload=on accel=auto secs=10 rounds=1
streams=1 build=1 pvnet_bin="" log_dir=""
pvnet_args=()
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --backend) need "$@"; backends+=("$2"); shift ;;
    --compare) backends=(pvnet tap vhost) ;;
    --queues) need "$@"; queues=$2; shift ;;
    --tap-queues) need "$@"; tap_queues=$2; shift ;;
    --mem) need "$@"; mem=$2; shift ;;
    --vcpus) need "$@"; vcpus=$2; shift ;;
    --offload) need "$@"; offload=$2; shift ;;
    --accel) need "$@"; accel=$2; shift ;;
    --secs) need "$@"; secs=$2; shift ;;
    --rounds) need "$@"; rounds=$2; shift ;;
    --streams) need "$@"; streams=$2; shift ;;
    --no-build) build=0 ;;
    --pvnet-bin) need "$@"; pvnet_bin=$2; build=0; shift ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; pvnet_args+=("$@"); break ;;
    *) die "unknown flag '$1' (see --help; pvnet flags go after --)" ;;
  esac
  shift
done
[ ${#backends[@]} -gt 0 ] || backends=(pvnet)
[ -n "$tap_queues" ] || tap_queues=$queues
isnum() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "${2:-1}" ]; }
{ isnum "$queues" && [ "$queues" -le 32 ] && isnum "$tap_queues" && [ "$tap_queues" -le 32 ]; } ||
  die "--queues/--tap-queues must be 1..32"
{ isnum "$vcpus" && isnum "$secs" && isnum "$rounds" && isnum "$streams" && isnum "$mem" 64; } ||
  die "--vcpus/--secs/--rounds/--streams/--mem must be positive integers"
case $offload in on | off) ;; *) die "--offload must be on or off" ;; esac
for b in "${backends[@]}"; do
  case $b in pvnet | tap | vhost) ;; *) die "--backend must be pvnet, tap or vhost" ;; esac
done

# ---------------------------------------------------------------- cleanup
work=$(mktemp -d /tmp/pvnet-upl.XXXXXX)
ns=upl-vm$$ tapname=uplvm$$
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$tapname" 2>/dev/null || true
}
cleanup() {
  set +e
  stop_all
  if [ -n "$log_dir" ] && mkdir -p "$log_dir"; then cp -r "$work"/*.log "$log_dir"/ 2>/dev/null || true; fi
  rm -rf "$work"
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- prerequisites
command -v python3 >/dev/null || ensure_pkgs python3 || die "cannot install python3"
command -v iperf3 >/dev/null || ensure_pkgs iperf3 ||
  { echo "SKIP: cannot install iperf3"; exit "$PVNET_SKIP_RC"; }
[ -e /dev/net/tun ] || { echo "SKIP: no /dev/net/tun here"; exit "$PVNET_SKIP_RC"; }
ip netns add "$ns" 2>/dev/null || { echo "SKIP: cannot create network namespaces"; exit "$PVNET_SKIP_RC"; }
ip netns del "$ns"
vm_setup "$accel" "$queues"
log "QEMU $("$PVNET_QEMU" --version | awk 'NR==1 {print $4}'), accel $acc, backends ${backends[*]}"
bin=""
if printf '%s\n' "${backends[@]}" | grep -qx pvnet; then
  bin=$(pvnet_binary "$build" "$pvnet_bin") || exit 1
fi

# ---------------------------------------------------------------- one run
# run BACKEND ROUND: boots the guest on BACKEND, moves the tap into the namespace, runs ping
# and both iperf3 directions from there; appends "BACKEND ROUND dir Gbit/s retransmits
# switch-cpu-s" lines to $work/results.
run() {
  local b=$1 r=$2 net sock="$work/g.sock" pv="" t0
  ip netns add "$ns"
  case $b in
    pvnet)
      "$bin" --socket "$sock" --queues "$queues" --tap "$tapname" --tap-queues "$tap_queues" \
        --stats-format json "${pvnet_args[@]}" </dev/null >"$work/pvnet-$b-$r.log" 2>&1 &
      pv=$!
      pids+=("$pv")
      for _ in $(seq 100); do [ -S "$sock" ] && [ -e "/sys/class/net/$tapname" ] && break; sleep 0.1; done
      [ -S "$sock" ] || die "pvnet did not start (see $work/pvnet-$b-$r.log)"
      net=(-chardev "socket,id=chr0,path=$sock" -netdev "vhost-user,id=net0,chardev=chr0,queues=$queues")
      ;;
    tap | vhost)
      local v=""
      [ "$b" = vhost ] && v=",vhost=on"
      net=(-netdev "tap,id=net0,ifname=$tapname,script=no,downscript=no,queues=$queues$v")
      ;;
  esac
  # shellcheck disable=SC2046
  "$PVNET_QEMU" -nodefaults -no-user-config -display none -no-reboot -name "pvnet-upl" \
    $(accel_args "$acc") -smp "$vcpus" -m "${mem}M" \
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off pvnet.role=server pvnet.ip=10.0.0.2/24 pvnet.queues=$queues pvnet.offload=$offload" \
    "${net[@]}" -device "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:02,mq=on,vectors=$vectors" \
    -serial "file:$work/guest-$b-$r.log" </dev/null >"$work/qemu-$b-$r.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -e "/sys/class/net/$tapname" ] && break; sleep 0.1; done
  [ -e "/sys/class/net/$tapname" ] || { tail -5 "$work/qemu-$b-$r.log" >&2; die "$b: no tap $tapname"; }
  ip link set "$tapname" netns "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add 10.0.0.254/24 dev "$tapname"
  ip -n "$ns" link set "$tapname" up
  t0=$SECONDS
  until grep -q PVNET-READY "$work/guest-$b-$r.log" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 300 ] || die "$b: guest not ready after 300 s"
    grep -q PVNET-ERROR "$work/guest-$b-$r.log" 2>/dev/null && die "$b: guest error"
    sleep 0.5
  done
  until ip netns exec "$ns" busybox ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do
    [ $((SECONDS - t0)) -lt 360 ] || die "$b: guest unreachable from the host side"
  done
  ip netns exec "$ns" busybox ping -c 5 -W 2 10.0.0.2 >"$work/ping-$b-$r.log" 2>&1 ||
    die "$b: ping failed"
  local dir args
  for dir in host-to-guest guest-to-host; do
    args=(-c 10.0.0.2 -t "$secs" -P "$streams" -J)
    [ "$dir" = guest-to-host ] && args+=(-R)
    local c0=0 c1=0 x0=0 x1=0 s0="" s1=""
    if [ -n "$pv" ]; then
      c0=$(proc_cpu_ticks "$pv") x0=$(proc_ctxsw "$pv")
      s0=$(pvnet_snapshot "$pv" "$work/pvnet-$b-$r.log" 2 3 | grep '"port":1' || true)
    fi
    ip netns exec "$ns" iperf3 "${args[@]}" >"$work/iperf-$b-$r-$dir.json" 2>&1 ||
      die "$b: iperf3 $dir failed: $(tail -3 "$work/iperf-$b-$r-$dir.json")"
    if [ -n "$pv" ]; then
      c1=$(proc_cpu_ticks "$pv") x1=$(proc_ctxsw "$pv")
      s1=$(pvnet_snapshot "$pv" "$work/pvnet-$b-$r.log" 2 3 | grep '"port":1' || true)
    fi
    python3 - "$work/iperf-$b-$r-$dir.json" "$b" "$r" "$dir" "$((c1 - c0))" "$secs" \
      "$((x1 - x0))" "${s0:-{\}}" "${s1:-{\}}" >>"$work/results" <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
end = j["end"]
bps = end["sum_received"]["bits_per_second"]
rt = end["sum_sent"].get("retransmits", 0)
ticks = int(sys.argv[5])
cpu = ticks / os.sysconf("SC_CLK_TCK") / float(sys.argv[6])
# Frames through the tap port (both ways) during the run, from pvnet's statistics.
def frames(s):
    t = json.loads(s).get("total", {})
    return t.get("tx_frames", 0) + t.get("rx_frames", 0)
f = frames(sys.argv[9]) - frames(sys.argv[8])
ns = ticks / os.sysconf("SC_CLK_TCK") * 1e9 / f if f > 0 else 0
wake = int(sys.argv[7]) / f if f > 0 else 0
print(sys.argv[2], sys.argv[3], sys.argv[4], "%.3f" % (bps / 1e9), rt, "%.2f" % cpu,
      "%.0f" % ns, "%.3f" % wake)
PY
    log "$b round $r $dir: $(tail -1 "$work/results")"
  done
  [ -n "$pv" ] && kill -USR1 "$pv" 2>/dev/null && sleep 0.3
  stop_all
}

n=${#backends[@]}
for r in $(seq "$rounds"); do
  for k in $(seq 0 $((n - 1))); do
    b=${backends[$(((k + r - 1) % n))]}
    if [ "$b" = vhost ] && [ ! -e /dev/vhost-net ]; then
      echo "SKIP: vhost backend: no /dev/vhost-net on this machine (module vhost_net)"
      continue
    fi
    run "$b" "$r"
  done
done

# ---------------------------------------------------------------- summary
[ -s "$work/results" ] || die "no results"
python3 - "$work/results" "$acc" "$queues" "$offload" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("uplink (preliminary): accel %s, %s queue pair(s), offload %s; medians over rounds"
      % (sys.argv[2], sys.argv[3], sys.argv[4]))
print("%-8s %-14s %7s %10s %8s %12s %14s %12s" % ("backend", "direction", "rounds", "Gbit/s", "retr",
      "pvnet CPU/s", "pvnet ns/frame", "ctxsw/frame"))
med = {}
for b in dict.fromkeys(r[0] for r in rows):
    for d in ("host-to-guest", "guest-to-host"):
        sel = [r for r in rows if r[0] == b and r[2] == d]
        if not sel:
            continue
        g = statistics.median(float(r[3]) for r in sel)
        rt = statistics.median(int(r[4]) for r in sel)
        cpu = statistics.median(float(r[5]) for r in sel)
        nsf = statistics.median(float(r[6]) for r in sel)
        wk = statistics.median(float(r[7]) for r in sel)
        med[(b, d)] = g
        pv = b == "pvnet"
        print("%-8s %-14s %7d %10.3f %8d %12s %14s %12s" % (b, d, len(sel), g, rt,
              "%.2f" % cpu if pv else "-", "%.0f" % nsf if pv else "-", "%.3f" % wk if pv else "-"))
for b in ("tap", "vhost"):
    for d in ("host-to-guest", "guest-to-host"):
        if (b, d) in med and ("pvnet", d) in med and med[(b, d)] > 0:
            print("ratio pvnet/%s %s: %.2f" % (b, d, med[("pvnet", d)] / med[(b, d)]))
PY
