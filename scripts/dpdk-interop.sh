#!/usr/bin/env bash
# Interoperability with a second real frontend: DPDK's virtio-user PMD (dpdk-testpmd) talks
# to pvnet over vhost-user, next to QEMU's frontend in scripts/vm-smoke.sh.
#
#   scripts/dpdk-interop.sh [--pvnet-bin PATH] [--keep-logs DIR]
#
# For 1 and 2 queue pairs: pvnet with three ports; one testpmd with three virtio-user ports
# (A, B, C). After one learning burst from every port, A sends to B's MAC and B and C send
# to A's MAC (testpmd tx_first, many flows), 64-byte and then 1500-byte frames. Passes when
# every frame arrives, once, at its port with its size (B gets all of A's, A all of B's and
# C's), C gets nothing (unicast after learning, no flooding), with 2 pairs both queue pairs
# of A and B receive, and pvnet reports zero drops and no ERROR log line.
# Installs DPDK (Debian dpdk, dpdk-dev and the virtio-user driver) and builds pvnet (release)
# when missing; a few seconds per pair count once installed.
#
# Exit status: 0 pass; 1 fail (the reason in one line, then the logs' last lines);
# 77 SKIP (DPDK cannot be installed here; a "SKIP:" line says so).
set -uo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=scripts/lib/dpdk.sh
. "$PVNET_ROOT/scripts/lib/dpdk.sh"

bin="" keep=""
while [ $# -gt 0 ]; do
  case $1 in
    --pvnet-bin) bin=${2:?}; shift ;;
    --keep-logs) keep=${2:?}; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) echo "dpdk-interop: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done

t_start=$SECONDS
if ! ensure_dpdk; then
  echo "SKIP: dpdk-interop: DPDK (Debian ${DPDK_PKGS[*]}) cannot be installed here"
  exit "$PVNET_SKIP_RC"
fi
if [ -z "$bin" ]; then
  log "cargo build --release -p pvnet"
  (cd "$PVNET_ROOT" && cargo build --release -q -p pvnet) >&2 || { echo "FAIL: dpdk-interop: cargo build failed" >&2; exit 1; }
  bin=${CARGO_TARGET_DIR:-$PVNET_ROOT/target}/release/pvnet
fi
[ -x "$bin" ] || { echo "FAIL: dpdk-interop: no pvnet binary at $bin" >&2; exit 1; }
mapfile -t cpus < <(taskset -pc $$ | awk -F': ' '{print $2}' | tr ',' '\n' |
  awk -F- 'NF == 2 {for (i = $1; i <= $2; i++) print i; next} NF {print $1}')
client_cpu=${cpus[${#cpus[@]} - 1]}

work=$(mktemp -d /tmp/pvnet-dpdk-interop.XXXXXX) || exit 1
pvnet_pid=""
cleanup() {
  [ -n "$pvnet_pid" ] && kill -KILL "$pvnet_pid" 2>/dev/null && wait "$pvnet_pid" 2>/dev/null
  dpdk_cleanup
  if [ -n "$keep" ]; then mkdir -p "$keep" && cp "$work"/*.log "$keep"/ 2>/dev/null; fi
  rm -rf "$work"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

MAC_A=02:00:00:1e:00:0a MAC_B=02:00:00:1e:00:0b MAC_C=02:00:00:1e:00:0c
fail() {
  echo "FAIL: dpdk-interop: $*" >&2
  for f in "$work"/*.log; do
    [ -s "$f" ] && { echo "--- ${f##*/}"; grep -v '^{' "$f" | grep -v '^\s*$' | tail -12; } >&2
  done
  exit 1
}

# stats PAIRS: asks testpmd for its port counters and prints, once they are there, one line
# per port (A, B, C): "RX_PACKETS RX_BYTES TX_PACKETS".
stats() {
  local log=$work/client-$1.log n0
  n0=$(dpdk_port_reports "$log" | awk '$2 == 2' | wc -l)
  dpdk_cmd cl "show port stats all"
  for _ in $(seq 50); do
    if [ "$(dpdk_port_reports "$log" | awk '$2 == 2' | wc -l)" -gt "$n0" ]; then
      dpdk_port_reports "$log" | awk '{last[$2] = $3 " " $4 " " $7} END {for (p = 0; p < 3; p++) print last[p]}'
      return 0
    fi
    sleep 0.1
  done
  fail "$1 pairs: testpmd printed no port statistics"
}

# phase PAIRS SIZE: four bursts from every port and queue, then checks what each port got.
phase() {
  local pairs=$1 size=$2 what="$1 pairs, $2 B" rxa bxa txa rxb bxb txb rxc txc
  dpdk_cmd cl "set txpkts $size"
  dpdk_cmd cl "clear port stats all"
  dpdk_cmd cl "start tx_first 4"
  # Until every frame arrived (a few ms normally; 5 s on a very busy machine).
  for _ in $(seq 25); do
    sleep 0.2
    { read -r rxa bxa txa; read -r rxb bxb txb; read -r rxc _ txc; } < <(stats "$pairs")
    [ "${txa:-0}" != 0 ] && [ "$rxb" = "$txa" ] && [ "$rxa" = $((txb + txc)) ] && break
  done
  dpdk_cmd cl "stop"
  { read -r rxa bxa txa; read -r rxb bxb txb; read -r rxc _ txc; } < <(stats "$pairs")
  if [ -z "$txc" ]; then fail "$what: no port statistics from testpmd"; fi
  if [ "$txa" = 0 ] || [ "$txb" = 0 ] || [ "$txc" = 0 ]; then
    fail "$what: testpmd sent nothing on some port (A $txa, B $txb, C $txc)"
  fi
  [ "$rxb" = "$txa" ] || fail "$what: B received $rxb frames, A sent $txa to B's MAC"
  [ "$rxa" = $((txb + txc)) ] || fail "$what: A received $rxa frames, B and C sent $((txb + txc)) to A's MAC"
  [ "$rxc" = 0 ] || fail "$what: C received $rxc frames addressed to A and B (flooded after learning)"
  if [ "$bxa" != $((rxa * size)) ] || [ "$bxb" != $((rxb * size)) ]; then
    fail "$what: received bytes $bxa / $bxb for $rxa / $rxb frames of $size B"
  fi
  log "  $what: A -> B $txa frames, B + C -> A $((txb + txc)), C got 0: ok"
}

# run PAIRS: pvnet and one testpmd with three virtio-user ports.
run() {
  local pairs=$1 s=()
  local plog=$work/pvnet-$1.log clog=$work/client-$1.log
  for p in a b c; do s+=("$work/$pairs-$p.sock"); done
  "$bin" --socket "${s[0]}" --socket "${s[1]}" --socket "${s[2]}" --queues "$pairs" \
    --stats-format json </dev/null >"$plog" 2>&1 &
  pvnet_pid=$!
  for _ in $(seq 100); do
    [ -S "${s[0]}" ] && [ -S "${s[1]}" ] && [ -S "${s[2]}" ] && break
    kill -0 "$pvnet_pid" 2>/dev/null || fail "pvnet exited at start"
    sleep 0.1
  done
  dpdk_start cl "$client_cpu" "$clog" interactive -m 256 \
    --vdev "net_virtio_user0,path=${s[0]},queues=$pairs,mac=$MAC_A" \
    --vdev "net_virtio_user1,path=${s[1]},queues=$pairs,mac=$MAC_B" \
    --vdev "net_virtio_user2,path=${s[2]},queues=$pairs,mac=$MAC_C" \
    -- -i --port-topology=chained --nb-cores=1 --rxq="$pairs" --txq="$pairs" --rxd=256 --txd=256 \
    --total-num-mbufs=16384 --txonly-multi-flow \
    --eth-peer="0,$MAC_B" --eth-peer="1,$MAC_A" --eth-peer="2,$MAC_A" || fail "testpmd could not start"
  dpdk_wait_prompt cl 40 || fail "testpmd (virtio-user, $pairs pairs) did not come up"
  # Learning: one burst from every port (flooded where the destination is still unknown).
  dpdk_cmd cl "set fwd rxonly"
  dpdk_cmd cl "start tx_first 1"
  sleep 0.3
  dpdk_cmd cl "stop"
  phase "$pairs" 64
  phase "$pairs" 1500
  dpdk_stop cl 5
  kill -TERM "$pvnet_pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pvnet_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pvnet_pid" 2>/dev/null && fail "pvnet did not exit on SIGTERM"
  wait "$pvnet_pid" 2>/dev/null
  pvnet_pid=""
  # pvnet's exit report: no drops at all, and with 2 pairs both RX queues of A and B used.
  local final drops
  final=$(grep '^{' "$plog" | tail -n 4)
  [ -n "$final" ] || fail "pvnet printed no statistics"
  drops=$(printf '%s\n' "$final" | pvnet_totals | awk '$1 ~ /^drop_/ && $2 > 0 {printf "%s=%s ", substr($1, 6), $2}')
  [ -z "$drops" ] || fail "$pairs pairs: pvnet dropped frames: $drops"
  local used
  used=$(printf '%s\n' "$final" | grep '"port":[01],' | grep -o '"rx_frames":[0-9]*' | awk -F: '$2 > 0' | wc -l)
  # Each port line holds "rx_frames" once per queue and once in "total".
  [ "$used" -ge $((2 * pairs + 2)) ] || fail "$pairs pairs: only $((used - 2)) RX queues of A and B received frames"
  local errs
  errs=$(grep -vE '^\{' "$plog" | grep -cE '(^|[ \[])ERROR[ \]]')
  [ "$errs" = 0 ] || fail "$pairs pairs: $errs ERROR lines in pvnet's log"
}

log "dpdk-interop: DPDK $(dpdk_version) virtio-user through pvnet, testpmd on CPU $client_cpu"
for pairs in 1 2; do run "$pairs"; done
echo "PASS: dpdk-interop: 1 and 2 queue pairs, 64 and 1500 B, every frame delivered once to its learned port, none flooded, 0 drops ($((SECONDS - t_start)) s)"
