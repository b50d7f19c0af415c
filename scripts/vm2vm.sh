#!/usr/bin/env bash
# VM-to-VM iperf3 through pvnet (or DPDK testpmd as the reference switch).
#
#   scripts/vm2vm.sh [flags] [-- extra pvnet flags]
#
# Builds pvnet (cargo build --release), starts it on vhost-user sockets in a temp dir, boots
# QEMU guests (Debian kernel, scripts/guest-image.sh) with N virtio-net queue pairs, runs
# iperf3 from guest A (10.0.0.1) to guest B (10.0.0.2), prints Gbit/s, retransmits and
# pvnet's statistics. Every process and socket it starts is cleaned up, also on Ctrl-C.
#
# Switch:
#   --switch pvnet|testpmd   the vhost-user switch (default pvnet)
#   --grant-lock KIND        pvnet --grant-lock (percpu, percpu-fenced, rwlock, std, parking-lot)
#   --queue-lock KIND        pvnet --queue-lock (pvqspin, qspin, ticket, tas, std, parking-lot)
#   --pvnet-arg ARG          one more pvnet flag (repeatable); so is everything after `--`
#   --no-build               use the existing release binary
#   --pvnet-bin PATH         run this pvnet binary (no build)
#   --client-mode            QEMU listens on the sockets (server=on) and pvnet connects
#                            (--client); pvnet is killed (SIGKILL) and started again in the
#                            middle of the first iperf3 run, which must still complete
# Guests:
#   --queues N               queue pairs per guest (default 16); guests run ethtool -L combined N
#   --vcpus N                vCPUs per guest (default 1; 2 oversubscribes a 2-core host)
#   --guests 2|3             3: guest C (10.0.0.3) pings A and B, then runs a second iperf3
#                            client into B at the same time (flooding + learning, 3 ports)
#   --mem MB                 guest memory (default 512, memfd-backed and shared)
#   --offload on|off         guest TSO/GSO/checksum offloads (default on)
#   --accel auto|kvm|tcg     auto (default) boots the guest kernel under KVM once and falls
#                            back to TCG (-accel tcg,thread=multi -cpu max) when that fails
# Traffic:
#   --streams N (1)  --secs N (10)  --repeat N (1)  --reverse (B sends to A)
# Output:
#   --format text|json|csv   (default text); --label NAME names the configuration
#   --log-dir DIR            keep serial consoles and switch output there
#   --timeout S              give up after S seconds (default: computed from secs/repeat)
# Uplink:
#   --uplink                 guest <-> host through a tap in a network namespace instead:
#                            runs scripts/uplink.sh with the other flags (see its --help)
# Exit status: 0 traffic passed, 1 failure, 77 QEMU or the guest image cannot be installed.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

for a in "$@"; do
  [ "$a" = -- ] && break
  if [ "$a" = --uplink ]; then
    rest=()
    for b in "$@"; do [ "$b" = --uplink ] || rest+=("$b"); done
    exec "$(dirname "$0")/uplink.sh" "${rest[@]}"
  fi
done

switch=pvnet grant_lock="" queue_lock="" build=1 pvnet_bin="" client_mode=0
queues=16 vcpus=1 guests=2 mem=512 offload=on accel=auto
streams=1 secs=10 repeat=1 reverse=0
format=text label="" log_dir="" timeout_s=""
pvnet_args=()
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --switch) need "$@"; switch=$2; shift ;;
    --grant-lock) need "$@"; grant_lock=$2; shift ;;
    --queue-lock) need "$@"; queue_lock=$2; shift ;;
    --pvnet-arg) need "$@"; pvnet_args+=("$2"); shift ;;
    --no-build) build=0 ;;
    --client-mode) client_mode=1 ;;
    --pvnet-bin) need "$@"; pvnet_bin=$2; build=0; shift ;;
    --queues) need "$@"; queues=$2; shift ;;
    --vcpus) need "$@"; vcpus=$2; shift ;;
    --guests) need "$@"; guests=$2; shift ;;
    --mem) need "$@"; mem=$2; shift ;;
    --offload) need "$@"; offload=$2; shift ;;
    --accel) need "$@"; accel=$2; shift ;;
    --streams) need "$@"; streams=$2; shift ;;
    --secs) need "$@"; secs=$2; shift ;;
    --repeat) need "$@"; repeat=$2; shift ;;
    --reverse) reverse=1 ;;
    --format) need "$@"; format=$2; shift ;;
    --label) need "$@"; label=$2; shift ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    --timeout) need "$@"; timeout_s=$2; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; pvnet_args+=("$@"); break ;;
    *) die "unknown flag '$1' (see --help; pvnet flags go after --)" ;;
  esac
  shift
done
isnum() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "${2:-1}" ]; }
{ isnum "$queues" && [ "$queues" -le 32 ]; } || die "--queues must be 1..32"
{ isnum "$vcpus" && isnum "$streams" && isnum "$secs" && isnum "$repeat" && isnum "$mem" 64; } ||
  die "--vcpus/--streams/--secs/--repeat/--mem must be positive integers"
[ "$guests" = 2 ] || [ "$guests" = 3 ] || die "--guests must be 2 or 3"
case $switch in pvnet | testpmd) ;; *) die "--switch must be pvnet or testpmd" ;; esac
case $format in text | json | csv) ;; *) die "--format must be text, json or csv" ;; esac
case $offload in on | off) ;; *) die "--offload must be on or off" ;; esac
[ "$switch" = testpmd ] && [ "$guests" = 3 ] && die "testpmd io forwarding pairs ports: use --guests 2"
[ "$switch" = testpmd ] && [ "$client_mode" = 1 ] && die "--client-mode is for --switch pvnet"
[ -n "$label" ] || label=$switch${grant_lock:+ $grant_lock}${queue_lock:++$queue_lock}
[ -n "$timeout_s" ] || timeout_s=$((150 + repeat * (secs + 20)))

# ---------------------------------------------------------------- cleanup
work=$(mktemp -d /tmp/pvnet-vm.XXXXXX)
pids=() switch_pid=""
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$switch_pid" ] && kill -0 "$switch_pid" 2>/dev/null; then
    kill -TERM "$switch_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$switch_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$switch_pid" 2>/dev/null || true
  fi
  for p in "${pids[@]}" $switch_pid; do wait "$p" 2>/dev/null || true; done
  if [ -n "$log_dir" ] && mkdir -p "$log_dir"; then cp -r "$work"/*.log "$log_dir"/ 2>/dev/null || true; fi
  rm -rf "$work"
  [ "$switch" = testpmd ] && rm -rf "/var/run/dpdk/pvnet-$$" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- prerequisites
command -v python3 >/dev/null || ensure_pkgs python3 || die "cannot install python3 (it renders the results)"
vm_setup "$accel" "$queues"
log "QEMU $("$PVNET_QEMU" --version | awk 'NR==1 {print $4}'), accel $acc, vectors=$vectors"

socks=()
for i in $(seq 0 $((guests - 1))); do socks+=("$work/sock$i"); done
if [ "$switch" = pvnet ]; then
  bin=$(pvnet_binary "$build" "$pvnet_bin") || exit 1
  cmd=("$bin")
  port_flag=--socket
  [ "$client_mode" = 1 ] && port_flag=--client
  for s in "${socks[@]}"; do cmd+=("$port_flag" "$s"); done
  cmd+=(--queues "$queues" --stats-format json --control "$work/control.sock")
  [ -n "$grant_lock" ] && cmd+=(--grant-lock "$grant_lock")
  [ -n "$queue_lock" ] && cmd+=(--queue-lock "$queue_lock")
  cmd+=("${pvnet_args[@]}")
else
  [ -z "$grant_lock$queue_lock" ] || die "--grant-lock/--queue-lock are pvnet flags"
  command -v dpdk-testpmd >/dev/null || ensure_pkgs dpdk-dev librte-net-vhost23 librte-mempool-ring23 ||
    die "cannot install dpdk-testpmd (Debian package dpdk-dev)"
  tso=1
  [ "$offload" = off ] && tso=0
  # io forwarding port0 <-> port1 on one polling lcore; no hugepages, no PCI.
  cmd=(dpdk-testpmd -l 0-1 --no-pci --no-huge -m 1024 --file-prefix "pvnet-$$"
    --vdev "net_vhost0,iface=${socks[0]},queues=$queues,tso=$tso"
    --vdev "net_vhost1,iface=${socks[1]},queues=$queues,tso=$tso"
    -- --forward-mode=io --rxq="$queues" --txq="$queues" --nb-cores=1 -a --stats-period 3600
    "${pvnet_args[@]}")
fi
log "starting: ${cmd[*]}"
"${cmd[@]}" </dev/null >"$work/switch.log" 2>&1 &
switch_pid=$!
# In client mode QEMU creates the sockets; pvnet keeps trying to connect until it does.
ok=$client_mode
for _ in $(seq 300); do
  [ "$ok" = 1 ] && break
  ok=1
  for s in "${socks[@]}"; do [ -S "$s" ] || ok=0; done
  [ "$ok" = 1 ] && break
  kill -0 "$switch_pid" 2>/dev/null || { tail -20 "$work/switch.log" >&2; die "$switch exited at start"; }
  sleep 0.1
done
[ "$ok" = 1 ] || die "$switch did not create its sockets"

# Client mode: once the first iperf3 run is under way (the client pinged its peer), kill
# pvnet with SIGKILL half-way through it and start it again; it reconnects to QEMU's sockets
# by itself and the run must complete.
restarted=0
restart_switch() {
  sleep "$(( secs / 2 > 2 ? secs / 2 : 2 ))"
  log "client mode: kill -9 $switch (pid $switch_pid) in the middle of iperf3 ($((SECONDS - t0)) s after the boot), then start it again"
  kill -KILL "$switch_pid" 2>/dev/null || true
  wait "$switch_pid" 2>/dev/null || true
  echo "vm2vm: pvnet killed (SIGKILL) and restarted" >>"$work/switch.log"
  "${cmd[@]}" </dev/null >>"$work/switch.log" 2>&1 &
  switch_pid=$!
  restarted=1
}

# ---------------------------------------------------------------- guests
boot() { # index role ip extra-cmdline
  local i=$1 role=$2 ip=$3 extra=$4 mac
  mac=$(printf '52:54:00:00:00:%02x' $((i + 1)))
  # shellcheck disable=SC2046
  "$PVNET_QEMU" -nodefaults -no-user-config -display none -no-reboot -name "pvnet-g$i" \
    $(accel_args "$acc") -smp "$vcpus" -m "${mem}M" \
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off pvnet.role=$role pvnet.ip=$ip/24 pvnet.queues=$queues pvnet.offload=$offload $extra" \
    -chardev "socket,id=chr0,path=${socks[$i]}${chardev_server}" \
    -netdev "vhost-user,id=net0,chardev=chr0,queues=$queues" \
    -device "virtio-net-pci,netdev=net0,mac=$mac,mq=on,vectors=$vectors" \
    -serial "file:$work/guest$i.log" </dev/null >"$work/qemu$i.log" 2>&1 &
  pids+=($!)
}
chardev_server=""
[ "$client_mode" = 1 ] && chardev_server=",server=on,wait=off"
traffic="pvnet.streams=$streams pvnet.secs=$secs pvnet.repeat=$repeat pvnet.reverse=$reverse"
boot 1 server 10.0.0.2 ""
boot 0 client 10.0.0.1 "pvnet.peer=10.0.0.2 pvnet.port=5201 $traffic"
clients=(0)
if [ "$guests" = 3 ]; then
  boot 2 client 10.0.0.3 "pvnet.peer=10.0.0.2 pvnet.port=5202 pvnet.ping=10.0.0.1 $traffic"
  clients+=(2)
fi
log "guests booting ($guests x $vcpus vCPU, $queues queue pairs), timeout ${timeout_s}s"

t0=$SECONDS failed=""
for c in "${clients[@]}"; do
  while kill -0 "${pids[$c]}" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge "$timeout_s" ]; then failed="timeout after ${timeout_s}s"; break 2; fi
    kill -0 "$switch_pid" 2>/dev/null || { failed="$switch died"; break 2; }
    grep -q PVNET-ERROR "$work/guest$c.log" 2>/dev/null && { failed="guest $c error"; break 2; }
    if [ "$client_mode" = 1 ] && [ "$restarted" = 0 ] &&
      grep -q "PVNET-PING peer=10.0.0.2" "$work/guest$c.log" 2>/dev/null; then
      restart_switch
    fi
    # A powered-off guest can keep QEMU waiting on its vhost-user backend: done is done.
    grep -q PVNET-DONE "$work/guest$c.log" 2>/dev/null && break
    sleep 0.5
  done
done
if [ "$client_mode" = 1 ] && [ "$restarted" = 0 ] && [ -z "$failed" ]; then
  failed="client mode: the run ended before pvnet could be restarted in its middle"
fi
# Statistics while the guests are still attached, then at exit.
if [ "$switch" = pvnet ] && kill -0 "$switch_pid" 2>/dev/null; then
  kill -USR1 "$switch_pid" 2>/dev/null || true
  sleep 0.5
fi
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
if kill -0 "$switch_pid" 2>/dev/null; then
  kill -TERM "$switch_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$switch_pid" 2>/dev/null || break; sleep 0.1; done
fi
kill -KILL "$switch_pid" 2>/dev/null && log "$switch ignored SIGTERM; killed"
wait "$switch_pid" 2>/dev/null || true
switch_pid=""

# ---------------------------------------------------------------- results
# scripts/lib/vm2vm_report.py reads the consoles and pvnet's JSON statistics in $work and
# prints the results; it exits 1 when the run failed (missing results, no throughput).
report=(python3 "$PVNET_ROOT/scripts/lib/vm2vm_report.py" --work "$work" --format "$format"
  --clients "${clients[*]}" --repeat "$repeat" --label "$label" --switch "$switch"
  --grant-lock "$grant_lock" --queue-lock "$queue_lock" --queues "$queues" --vcpus "$vcpus"
  --guests "$guests" --streams "$streams" --secs "$secs" --offload "$offload" --accel "$acc"
  --flow-control "$PVNET_FLOW_CONTROL_DROPS" --failed "$failed")
[ "$reverse" = 1 ] && report+=(--reverse)
if ! "${report[@]}"; then
  {
    echo "vm2vm: last console lines:"
    for f in "$work"/guest*.log "$work"/qemu*.log "$work"/switch.log; do
      [ -s "$f" ] && { echo "--- ${f##*/}"; tail -15 "$f"; }
    done
  } >&2
  exit 1
fi
