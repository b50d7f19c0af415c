#!/usr/bin/env bash
# The switch with a real third-party frontend: DPDK's virtio-user PMD (dpdk-testpmd with two
# net_virtio_user ports, one per switch port) sends frames through pvnet, side by side with
# DPDK testpmd as the switch (two net_vhost ports, io forwarding, one polling core), the way
# DPDK's virtio-user loopback / PVP test plans measure a vhost-user switch.
#
#   scripts/switchbench.sh [flags]
#
# Cases. Each flag takes a comma-separated list. Without any of them the standard set runs
# (closed loop + learned unicast for every size and pair count; closed + flooded at 64 and
# 1500 B, open + learned at 64 and 1500 B, open + flooded at 64 B, all with 1 pair); --full
# runs the whole cross product; naming some of them runs the cross product of those lists
# with the unnamed ones over all their values.
#   --sizes 64,1500,imix     frame bytes without FCS; imix: 64, 594 and 1514 B in equal shares
#                            (closed loop only: the open-loop source sends one size)
#   --pairs 1,2,8            queue pairs per port (DPDK 22.11's virtio-user accepts at most 8)
#   --loops closed,open      closed: the client forwards between its two ports (testpmd mac
#                            forwarding, started with tx_first 32); open: port A only sends
#                            (frames from a DPDK null port), port B only receives
#   --dests learned,flooded  learned: to the other port's MAC after the switch saw it;
#                            flooded: to a MAC no port has (unknown unicast)
#   --flows many|one         many (default): testpmd --txonly-multi-flow, frames spread over
#                            the RX queues; one: one flow, one RX queue. Open loop: always one.
#   --full                   every combination (about twice the standard set's time)
# Switches:
#   --grant-lock LIST        pvnet --grant-lock kinds   } one pvnet configuration per pair of
#   --queue-lock LIST        pvnet --queue-lock kinds   } the two lists (default: pvnet's own)
#   --no-testpmd             pvnet only (no reference, no ratios)
#   --pvnet-arg ARG          one more flag for every pvnet run (repeatable)
#   --pvnet-bin PATH         run this pvnet binary as the switch (the report is rendered by
#                            this tree's pvnet-bench either way)
#   --client-retry           the client's mac forwarding retries a full TX ring instead of
#                            dropping (testpmd "set fwd mac retry"): a closed loop then keeps
#                            its frames whatever the switch does while a receiver is full
#   --client-vdev ARGS       more net_virtio_user arguments for both client ports, e.g.
#                            in_order=0 (the client then uses the ring the same way with
#                            either switch)
#   --no-build               use target/release/pvnet and pvnet-bench as they are
#   --huge                   both testpmd processes (client and reference switch) on 2 MB
#                            hugepages (EAL --in-memory --single-file-segments) instead of
#                            --no-huge 4 KB pages: the guest memory every switch maps is then
#                            huge-paged too, as in OVS-DPDK or QEMU with hugepage-backed memory.
#                            Needs 512 free 2 MB pages (reserved here through
#                            /proc/sys/vm/nr_hugepages when short, and given back at exit)
# Measurement:
#   --rounds N (3)           each round runs every case once per switch, the switches'
#                            order rotated per round; the table shows medians over rounds
#   --warmup S (2)           one-second reports dropped at the start of each run
#   --secs S (5)             one-second reports averaged per run (steady state)
#   --idle S (10)            idle cost: both frontends connected, no traffic (0: skip)
#   --max-other-load PCT     repeat a run (up to --retries N, default 2) when other processes
#                            took more than PCT % of the switch's or the client's CPU in its
#                            window; the last try counts (default 0: never repeat)
#   --max-xcpu-ns NS         repeat a run (same --retries) when a cache line's round trip
#                            between the switch's and the client's CPU, measured before and
#                            after every run (pvnet-bench xcpu; runs.csv columns xcpu_before_ns,
#                            xcpu_after_ns), exceeded NS: on a VM the host may place the two
#                            CPUs far apart for minutes (default 0: never repeat). Whatever
#                            this flag, when the runs show both states (a round trip below and
#                            above NS, or 300 ns without the flag) the report adds a table of
#                            medians and ratios over each state's runs alone
#   --switch-cpu N           CPU of the switch, all its threads (default: first allowed CPU)
#   --client-cpu N           CPU of the client's main and forwarding lcore (default: second)
#   --pvnet-cpus LIST        CPUs of pvnet's threads (taskset list, default: --switch-cpu), e.g.
#                            0,1: pvnet's workers run in parallel and share a CPU with the
#                            client, the contended, over-committed case the lock kinds are for
#                            (testpmd as the switch keeps its one core: compare pvnet
#                            configurations with each other there, e.g. with --no-testpmd;
#                            the "other load" of such runs is pooled over both CPUs)
# Output:
#   --format text|csv|json   (default text)   --plot FILE   SVG bar chart of the medians
#   --out DIR                runs.csv, idle.csv, table.txt and per-run logs
#                            (default target/switchbench/<time>)
#
# Per case: Mpps and Gbit/s that the client received (both directions summed in the closed
# loop), averaged over the steady-state reports; the switch's CPU time per frame
# (/proc/PID/stat), the switch's busy time per frame (pvnet's busy_ns counter; testpmd's
# busy cycles, --record-core-cycles: both count only work that moved frames, which a polling
# switch's CPU time does not tell apart), the client's busy share of its core (testpmd's
# busy cycles again: near 100%, the client sets the rate), pvnet's kicks handled per 1,000
# frames (its tx_kicks + rx_kicks counters), pvnet's frames per TX burst (tx_frames /
# tx_bursts: 64, the limit, when pvnet is the bottleneck), the switch's context switches per 1,000 frames (/proc/PID/task/*/status)
# and pvnet's drops by reason. A pvnet run that drops frames for a reason other than a full
# receive ring (rx_full_timeout, flood_full) fails; so does any run that cannot start or moves
# no frames: the script then exits 1 after the table, each failure explained in one line.
set -uo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=scripts/lib/dpdk.sh
. "$PVNET_ROOT/scripts/lib/dpdk.sh"

ALL_SIZES=64,1500,imix ALL_PAIRS=1,2,8 ALL_LOOPS=closed,open ALL_DESTS=learned,flooded
sizes="" pairs_list="" loops="" dests="" flows=many full=0
glocks="" qlocks="" client_vdev="" testpmd=1 pvnet_args=() pvnet_bin="" build=1 huge=0 client_retry=0
rounds=3 warmup=2 secs=5 idle=10 switch_cpu="" client_cpu="" pvnet_cpus="" max_load=0 retries=2
max_xcpu=0
format=text plot="" out=""
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) need "$@"; sizes=$2; shift ;;
    --pairs) need "$@"; pairs_list=$2; shift ;;
    --loops) need "$@"; loops=$2; shift ;;
    --dests) need "$@"; dests=$2; shift ;;
    --flows) need "$@"; flows=$2; shift ;;
    --full) full=1 ;;
    --grant-lock) need "$@"; glocks=$2; shift ;;
    --queue-lock) need "$@"; qlocks=$2; shift ;;
    --no-testpmd) testpmd=0 ;;
    --pvnet-arg) need "$@"; pvnet_args+=("$2"); shift ;;
    --pvnet-bin) need "$@"; pvnet_bin=$2; shift ;;
    --client-vdev) need "$@"; client_vdev=,$2; shift ;;
    --no-build) build=0 ;;
    --client-retry) client_retry=1 ;;
    --huge) huge=1 ;;
    --rounds) need "$@"; rounds=$2; shift ;;
    --warmup) need "$@"; warmup=$2; shift ;;
    --secs) need "$@"; secs=$2; shift ;;
    --idle) need "$@"; idle=$2; shift ;;
    --max-other-load) need "$@"; max_load=$2; shift ;;
    --retries) need "$@"; retries=$2; shift ;;
    --max-xcpu-ns) need "$@"; max_xcpu=$2; shift ;;
    --switch-cpu) need "$@"; switch_cpu=$2; shift ;;
    --client-cpu) need "$@"; client_cpu=$2; shift ;;
    --pvnet-cpus) need "$@"; pvnet_cpus=$2; shift ;;
    --format) need "$@"; format=$2; shift ;;
    --plot) need "$@"; plot=$2; shift ;;
    --out) need "$@"; out=$2; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done

# ---------------------------------------------------------------- validation
isint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ]; }
isint "$rounds" 1 || die "--rounds must be a positive integer"
isint "$warmup" 1 || die "--warmup must be >= 1 (the first report after the start is partial)"
isint "$secs" 1 || die "--secs must be a positive integer"
isint "$idle" 0 || die "--idle must be a non-negative integer"
if ! isint "$max_load" 0 || [ "$max_load" -gt 100 ]; then
  die "--max-other-load must be a percentage (0..100)"
fi
isint "$retries" 0 || die "--retries must be a non-negative integer"
isint "$max_xcpu" 0 || die "--max-xcpu-ns must be a non-negative integer (nanoseconds)"
case $format in text | csv | json) ;; *) die "--format must be text, csv or json" ;; esac
case $flows in many | one) ;; *) die "--flows must be many or one" ;; esac
check_list() { # name value allowed-regex
  local v
  IFS=, read -r -a _l <<<"$2"
  [ ${#_l[@]} -gt 0 ] || die "--$1 needs at least one value"
  for v in "${_l[@]}"; do [[ $v =~ ^($3)$ ]] || die "--$1: '$v' is not one of ${3//|/, }"; done
}
[ -z "$sizes" ] || check_list sizes "$sizes" '64|1500|imix'
[ -z "$pairs_list" ] || check_list pairs "$pairs_list" '[1-8]'
[ -z "$loops" ] || check_list loops "$loops" 'closed|open'
[ -z "$dests" ] || check_list dests "$dests" 'learned|flooded'

# The cases: "size pairs loop dest" lines.
cases=()
if [ "$full" = 0 ] && [ -z "$sizes$pairs_list$loops$dests" ]; then
  for s in 64 1500 imix; do for p in 1 2 8; do cases+=("$s $p closed learned"); done; done
  cases+=("64 1 closed flooded" "1500 1 closed flooded" "64 1 open learned"
    "1500 1 open learned" "64 1 open flooded")
else
  IFS=, read -r -a S <<<"${sizes:-$ALL_SIZES}"
  IFS=, read -r -a P <<<"${pairs_list:-$ALL_PAIRS}"
  IFS=, read -r -a L <<<"${loops:-$ALL_LOOPS}"
  IFS=, read -r -a D <<<"${dests:-$ALL_DESTS}"
  for l in "${L[@]}"; do for d in "${D[@]}"; do for s in "${S[@]}"; do for p in "${P[@]}"; do
    if [ "$l" = open ] && [ "$s" = imix ]; then
      log "skipping imix/$p pairs/open/$d: the open-loop source sends one frame size"
      continue
    fi
    cases+=("$s $p $l $d")
  done; done; done; done
fi
[ ${#cases[@]} -gt 0 ] || die "no case left to run"

# Switch configurations: "pvnet GRANT QUEUE" (empty kinds: pvnet's defaults) and "testpmd".
configs=()
IFS=, read -r -a G <<<"${glocks:-}"
IFS=, read -r -a Q <<<"${qlocks:-}"
[ ${#G[@]} -gt 0 ] || G=("")
[ ${#Q[@]} -gt 0 ] || Q=("")
for g in "${G[@]}"; do for q in "${Q[@]}"; do configs+=("pvnet ${g:--} ${q:--}"); done; done
[ "$testpmd" = 1 ] && configs+=("testpmd - -")
config_label() { # kind grant queue
  if [ "$1" = testpmd ]; then echo testpmd; return; fi
  local g=$2 q=$3
  [ "$g" = - ] && g=default
  [ "$q" = - ] && q=default
  if [ "$g$q" = defaultdefault ]; then echo pvnet; else echo "pvnet $g+$q"; fi
}

# CPUs: the switch on one, the client's lcores on another (the machine may have only two).
mapfile -t allowed < <(taskset -pc $$ 2>/dev/null | awk -F': ' '{print $2}' | tr ',' '\n' |
  awk -F- 'NF == 2 {for (i = $1; i <= $2; i++) print i; next} NF {print $1}')
[ ${#allowed[@]} -ge 2 ] || die "needs 2 CPUs (switch and client on their own each); this process may use ${#allowed[@]}"
switch_cpu=${switch_cpu:-${allowed[0]}}
client_cpu=${client_cpu:-${allowed[1]}}
[ "$switch_cpu" != "$client_cpu" ] || die "--switch-cpu and --client-cpu must differ"
pvnet_cpus=${pvnet_cpus:-$switch_cpu}
[[ $pvnet_cpus =~ ^[0-9]+([-,][0-9]+)*$ ]] || die "--pvnet-cpus takes a CPU list such as 0,1 or 0-3"

# ---------------------------------------------------------------- prerequisites
ensure_dpdk || die "cannot install DPDK (Debian packages ${DPDK_PKGS[*]})"
tdir=${CARGO_TARGET_DIR:-$PVNET_ROOT/target}
if [ "$build" = 1 ]; then
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain or pass --no-build"
  log "cargo build --release -p pvnet -p pvnet-bench"
  (cd "$PVNET_ROOT" && cargo build --release -q -p pvnet -p pvnet-bench) >&2 || die "cargo build failed"
fi
report_bin=$tdir/release/pvnet-bench
[ -x "$report_bin" ] || die "no pvnet-bench binary at $report_bin (drop --no-build)"
if [ -n "$pvnet_bin" ]; then
  [ -x "$pvnet_bin" ] || die "--pvnet-bin $pvnet_bin is not executable"
else
  pvnet_bin=$tdir/release/pvnet
  [ -x "$pvnet_bin" ] || die "no pvnet binary at $pvnet_bin (drop --no-build)"
fi
[ -n "$out" ] || out=$tdir/switchbench/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/logs" || die "cannot create $out"
[ -z "$plot" ] || touch "$plot" 2>/dev/null || die "cannot write --plot $plot"

# ---------------------------------------------------------------- cleanup
work=$(mktemp -d /tmp/pvnet-switchbench.XXXXXX) || die "mktemp failed"
pvnet_pid="" huge_restore=""
cleanup() {
  if [ -n "$pvnet_pid" ]; then
    kill -TERM "$pvnet_pid" 2>/dev/null
    sleep 0.3
    kill -KILL "$pvnet_pid" 2>/dev/null
    wait "$pvnet_pid" 2>/dev/null
  fi
  dpdk_cleanup
  rm -rf "$work"
  # Hugepages reserved for --huge go back (only what this run added).
  [ -n "$huge_restore" ] && echo "$huge_restore" >/proc/sys/vm/nr_hugepages 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# --huge: two testpmd processes with -m 512 each.
HUGE_PAGES_NEEDED=512
free_huge() { awk '/^HugePages_Free:/ {print $2}' /proc/meminfo; }
if [ "$huge" = 1 ]; then
  if [ "$(free_huge)" -lt "$HUGE_PAGES_NEEDED" ]; then
    total=$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)
    want=$((total + HUGE_PAGES_NEEDED - $(free_huge)))
    if echo "$want" >/proc/sys/vm/nr_hugepages 2>/dev/null; then
      huge_restore=$total
    else
      log "cannot write /proc/sys/vm/nr_hugepages (not root?)"
    fi
  fi
  [ "$(free_huge)" -ge "$HUGE_PAGES_NEEDED" ] ||
    die "--huge needs $HUGE_PAGES_NEEDED free 2 MB hugepages, $(free_huge) free: reserve them (echo N > /proc/sys/vm/nr_hugepages) or run without --huge"
  export PVNET_DPDK_HUGE=1
  memory_note="memory: 2 MB hugepages"
else
  export PVNET_DPDK_HUGE=0
  memory_note="memory: 4 KB pages (testpmd --no-huge)"
fi

# ---------------------------------------------------------------- one run
MAC_A=02:00:00:5b:00:0a MAC_B=02:00:00:5b:00:0b
UNKNOWN_A=02:00:00:5b:ff:0a UNKNOWN_B=02:00:00:5b:ff:0b

now() { echo "$EPOCHREALTIME"; }
sleep_until() { # epoch seconds (fractional)
  local d
  d=$(awk -v t="$1" -v n="$EPOCHREALTIME" 'BEGIN {d = t - n; print (d > 0 ? d : 0)}')
  sleep "$d"
}

# start_switch KIND GRANT QUEUE PAIRS LOG SOCK_A SOCK_B: sets sw_pid, or fails with a reason.
start_switch() {
  local kind=$1 g=$2 q=$3 pairs=$4 log=$5 sa=$6 sb=$7
  if [ "$kind" = testpmd ]; then
    dpdk_start sw "$switch_cpu" "$log" batch -m 512 \
      --vdev "net_vhost0,iface=$sa,queues=$pairs" --vdev "net_vhost1,iface=$sb,queues=$pairs" \
      -- --forward-mode=io --nb-cores=1 --rxq="$pairs" --txq="$pairs" --record-core-cycles \
      --total-num-mbufs=$((8192 + 1024 * pairs)) -a --stats-period 3600 || return 1
    sw_pid=${DPDK_PID[sw]}
    dpdk_wait_sockets sw 20 "$sa" "$sb"
    return
  fi
  local cmd=("$pvnet_bin" --socket "$sa" --socket "$sb" --queues "$pairs" --stats-format json)
  [ "$g" = - ] || cmd+=(--grant-lock "$g")
  [ "$q" = - ] || cmd+=(--queue-lock "$q")
  cmd+=("${pvnet_args[@]}")
  echo "# taskset -c $pvnet_cpus ${cmd[*]}" >"$log"
  taskset -c "$pvnet_cpus" "${cmd[@]}" </dev/null >>"$log" 2>&1 &
  pvnet_pid=$!
  sw_pid=$pvnet_pid
  for _ in $(seq 100); do
    [ -S "$sa" ] && [ -S "$sb" ] && return 0
    kill -0 "$pvnet_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "ERROR: pvnet did not create its sockets (log $log); its last lines:" >&2
  grep -v '^[#{]' "$log" | tail -8 | sed 's/^/    /' >&2
  return 1
}

# stop_switch KIND: pvnet prints its final statistics on SIGTERM.
stop_switch() {
  if [ "$1" = testpmd ]; then
    dpdk_stop sw 5
    return
  fi
  [ -n "$pvnet_pid" ] || return 0
  kill -TERM "$pvnet_pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pvnet_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pvnet_pid" 2>/dev/null && log "pvnet ignored SIGTERM for 5 s: killed"
  wait "$pvnet_pid" 2>/dev/null
  pvnet_pid=""
}

# start_client SIZE PAIRS LOOP DEST LOG SOCK_A SOCK_B: the frontends, interactive.
# Ports: 0 = A, 1 = B (virtio-user); open loop adds 2 = null source, 3 = null sink (no RX).
start_client() {
  local size=$1 pairs=$2 loop=$3 dest=$4 log=$5 sa=$6 sb=$7
  local peer_a=$MAC_B peer_b=$MAC_A
  if [ "$dest" = flooded ]; then peer_a=$UNKNOWN_B peer_b=$UNKNOWN_A; fi
  local vdevs=(--vdev "net_virtio_user0,path=$sa,queues=$pairs,mac=$MAC_A$client_vdev"
    --vdev "net_virtio_user1,path=$sb,queues=$pairs,mac=$MAC_B$client_vdev")
  local app=(-i --forward-mode=mac --nb-cores=1 --rxq="$pairs" --txq="$pairs" --rxd=256 --txd=256
    --eth-peer="0,$peer_a" --eth-peer="1,$peer_b" --record-core-cycles)
  local nports=2
  if [ "$loop" = open ]; then
    vdevs+=(--vdev "net_null0,size=$size" --vdev "net_null1,size=$size,no-rx=1")
    app+=(--port-topology=chained)
    nports=4
  else
    case $size in
      imix) app+=("--txpkts=64,530,920") ;;
      *) app+=(--txpkts="$size") ;;
    esac
    [ "$flows" = many ] && app+=(--txonly-multi-flow)
  fi
  app+=(--total-num-mbufs=$((8192 + 2048 * nports * pairs)))
  dpdk_start cl "$client_cpu" "$log" interactive -m 512 "${vdevs[@]}" -- "${app[@]}" || return 1
  dpdk_wait_prompt cl 40
}

# run_one SIZE PAIRS LOOP DEST KIND GRANT QUEUE ROUND: appends one line to runs.csv.
runs_csv=$out/runs.csv
echo "round,size,pairs,loop,dest,flows,config,switch,status,mpps,gbps,reports,window_s,frames,cpu_s,ctxsw,tx_kicks,rx_kicks,full_ring_drops,other_drops,drops,switch_cpu_other_pct,client_cpu_other_pct,xcpu_before_ns,xcpu_after_ns,sw_tx_frames,tx_bursts,sw_busy_ns_per_frame,client_busy_pct" >"$runs_csv"
nrun=0 failures=() run_load=0 run_xcpu=""
# The round trip of a cache line between the switch's and the client's CPU in ns (empty when
# it cannot be measured): the state of the machine a run was taken in.
xcpu_rtt() {
  "$report_bin" xcpu --cpus "$switch_cpu,$client_cpu" --trips 5000 --batches 3 2>/dev/null |
    sed -n 's/^xcpu_rtt_ns=\([0-9.]*\) .*/\1/p'
}
run_one() {
  local size=$1 pairs=$2 loop=$3 dest=$4 kind=$5 g=$6 q=$7 round=$8
  local label case_flows=$flows
  label=$(config_label "$kind" "$g" "$q")
  [ "$loop" = open ] && case_flows=one
  nrun=$((nrun + 1))
  local tag="r$round-$size-${pairs}q-$loop-$dest-${label// /-}"
  tag=${tag//+/-}
  local dir=$out/logs/$tag sa=$work/$nrun-a.sock sb=$work/$nrun-b.sock
  mkdir -p "$dir"
  local status=ok reason="" sw_pid=""
  local mpps=0 gbps=0 nrep=0 window=0 frames=0 cpu=0 ctx=0 txk="" rxk="" txf="" txb="" full=0 other=0 detail=""
  local sw_other="" cl_other="" xb xa sw_busy="" cl_busy=""
  fail() { status="failed"; reason=$1; }
  xb=$(xcpu_rtt)

  # A process that cannot start would fail every later run the same way: stop here.
  start_switch "$kind" "$g" "$q" "$pairs" "$dir/switch.log" "$sa" "$sb" ||
    die "$label could not start as the switch ($size B, $pairs pairs, $loop loop, $dest)"
  start_client "$size" "$pairs" "$loop" "$dest" "$dir/client.log" "$sa" "$sb" ||
    die "the client testpmd could not start with $label as the switch ($size B, $pairs pairs, $loop loop)"
  if [ "$status" = ok ]; then
    # Learning: one txonly burst from every port (the switch learns both source MACs), the
    # frames received and dropped by rxonly; then the measured traffic.
    [ "$loop" = open ] && dpdk_cmd cl "set portlist 2,0,3,1"
    [ "$size" = imix ] && dpdk_cmd cl "set txsplit rand"
    dpdk_cmd cl "set fwd rxonly"
    # Repeated until both ports received (a switch may enable its queues a little after the
    # frontend came up: testpmd's vhost ports do, under load).
    local learned=0 n0
    for _ in $(seq 20); do
      n0=$(grep -c 'Forward statistics for port 1 ' "$dir/client.log")
      dpdk_cmd cl "start tx_first 1"
      sleep 0.5
      dpdk_cmd cl "stop"
      for _ in $(seq 50); do
        [ "$(grep -c 'Forward statistics for port 1 ' "$dir/client.log")" -gt "$n0" ] && break
        sleep 0.1
      done
      sleep 0.1
      learned=$(dpdk_fwd_totals "$dir/client.log" | awk '$1 <= 1 && $2 > 0 {n++} END {print n + 0}')
      [ "$learned" = 2 ] && break
    done
    [ "$learned" = 2 ] || fail "the learning bursts did not cross the switch in both directions (20 tries)"
  fi
  if [ "$status" = ok ]; then
    if [ "$client_retry" = 1 ]; then dpdk_cmd cl "set fwd mac retry"; else dpdk_cmd cl "set fwd mac"; fi
    if [ "$loop" = closed ]; then dpdk_cmd cl "start tx_first 32"; else dpdk_cmd cl "start"; fi
    local t0 k t_w="" t_e="" cpu0=0 cpu1=0 ctx0=0 ctx1=0 snap0="" snap1="" load0="" load1=""
    t0=$(now)
    dpdk_cmd cl "show port stats all"
    for k in $(seq 1 $((warmup + secs))); do
      sleep_until "$(awk -v a="$t0" -v k="$k" 'BEGIN {printf "%.6f", a + k}')"
      if ! kill -0 "$sw_pid" 2>/dev/null; then fail "$label exited during the run"; break; fi
      if ! dpdk_alive cl; then fail "the client testpmd exited during the run"; break; fi
      if [ "$k" = "$warmup" ] || [ "$k" = $((warmup + secs)) ]; then
        local c x tt ld
        tt=$(now)
        c=$(proc_cpu_ticks "$sw_pid")
        x=$(proc_ctxsw "$sw_pid")
        ld="$(cpu_busy "$switch_cpu") $(cpu_busy "$client_cpu") $(proc_cpu_ticks "${DPDK_PID[cl]}")"
        dpdk_cmd cl "show port stats all"
        if [ "$k" = "$warmup" ]; then
          t_w=$tt cpu0=$c ctx0=$x load0=$ld
        else
          t_e=$tt cpu1=$c ctx1=$x load1=$ld
        fi
        if [ "$kind" = pvnet ]; then
          local snap
          snap=$(pvnet_snapshot "$sw_pid" "$dir/switch.log" 2 3 | pvnet_totals)
          if [ "$k" = "$warmup" ]; then snap0=$snap; else snap1=$snap; fi
        fi
      else
        dpdk_cmd cl "show port stats all"
      fi
    done
    dpdk_cmd cl "stop"
    sleep 0.3
  fi
  dpdk_stop cl 5
  stop_switch "$kind"
  xa=$(xcpu_rtt)
  run_xcpu=$(awk -v a="$xb" -v b="$xa" 'BEGIN {print (a == "" && b == "") ? "" : (a + 0 > b + 0 ? a : b)}')

  if [ "$status" = ok ]; then
    # Client reports: index 0 at the start, 1..warmup dropped, the next `secs` averaged.
    local rep
    rep=$(dpdk_port_reports "$dir/client.log")
    read -r mpps gbps nrep frames < <(printf '%s\n' "$rep" | awk -v w="$warmup" -v s="$secs" '
      $2 <= 1 { pps[$1] += $5; bps[$1] += $6; rx[$1] += $3 }
      END {
        for (k = w + 1; k <= w + s; k++) if (k in pps) { n++; p += pps[k]; b += bps[k] }
        f = ((w + s) in rx && w in rx) ? rx[w + s] - rx[w] : 0
        printf "%.6f %.6f %d %d\n", (n ? p / n / 1e6 : 0), (n ? b / n / 1e9 : 0), n, f
      }')
    window=$(awk -v a="$t_w" -v b="$t_e" 'BEGIN {printf "%.3f", b - a}')
    local hz
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$hz" 'BEGIN {printf "%.3f", (b - a) / hz}')
    ctx=$((ctx1 - ctx0))
    # CPU time that other processes took on the two CPUs during the window (a shared or
    # virtual machine): switch CPU busy - switch process, client CPU busy - client process.
    # pvnet on more CPUs (--pvnet-cpus) also runs on the client's: then both figures are the
    # two CPUs' pooled busy time less both processes'.
    local pooled=0
    [ "$kind" = pvnet ] && [ "$pvnet_cpus" != "$switch_cpu" ] && pooled=1
    read -r sw_other cl_other < <(awk -v a="$load0" -v b="$load1" -v s0="$cpu0" -v s1="$cpu1" -v pooled="$pooled" 'BEGIN {
      split(a, x, " "); split(b, y, " ")
      so = (y[1] - x[1]) - (s1 - s0); co = (y[3] - x[3]) - (y[5] - x[5])
      st = y[2] - x[2]; ct = y[4] - x[4]
      if (pooled) { so += co; st += ct; co = so; ct = st }
      printf "%.1f %.1f\n", (st > 0 && so > 0 ? 100 * so / st : 0), (ct > 0 && co > 0 ? 100 * co / ct : 0) }')
    [ "$nrep" = "$secs" ] || fail "$nrep of $secs steady-state reports in the client's log"
    awk -v m="$mpps" 'BEGIN {exit !(m > 0)}' || fail "no frames received in the steady state"
    if [ "$loop" = closed ]; then
      local rates
      rates=$(printf '%s\n' "$rep" | dpdk_port_rates "$warmup" "$secs")
      if printf '%s\n' "$rates" | dpdk_one_way; then
        fail "one direction of the closed loop stopped (Mpps received per client port: $(printf '%s\n' "$rates" | awk '{printf "%s%s %.3f", (NR > 1 ? ", " : ""), $1, $2}'))"
      fi
    fi
    # Busy time: the client's share of its core, the switch's per frame (testpmd_busy).
    cl_busy=$(testpmd_busy "$dir/client.log" | awk -v m="$mpps" '{printf "%.1f", 100 * $1 * m / $2}')
    [ "$kind" = testpmd ] && sw_busy=$(testpmd_busy "$dir/switch.log" | awk '{printf "%.1f", 1000 * $1 / $2}')
    if [ "$kind" = pvnet ]; then
      val() { printf '%s\n' "$1" | awk -v k="$2" '$1 == k {print $2; f = 1} END {if (!f) print 0}'; }
      sw_busy=$(awk -v b=$(($(val "$snap1" busy_ns) - $(val "$snap0" busy_ns))) \
        -v f=$(($(val "$snap1" tx_frames) - $(val "$snap0" tx_frames))) 'BEGIN {if (f > 0) printf "%.1f", b / f}')
      txk=$(($(val "$snap1" tx_kicks) - $(val "$snap0" tx_kicks)))
      rxk=$(($(val "$snap1" rx_kicks) - $(val "$snap0" rx_kicks)))
      txf=$(($(val "$snap1" tx_frames) - $(val "$snap0" tx_frames)))
      txb=$(($(val "$snap1" tx_bursts) - $(val "$snap0" tx_bursts)))
      if [ -z "$snap0" ] || [ -z "$snap1" ]; then
        fail "pvnet did not answer SIGUSR1 with statistics"
      fi
      # Drops over the whole run, from the report pvnet printed at exit.
      local final
      final=$(grep '^{' "$dir/switch.log" | tail -n 3 | pvnet_totals)
      [ -n "$final" ] || fail "pvnet printed no statistics at exit"
      detail=$(printf '%s\n' "$final" | awk '$1 ~ /^drop_/ && $2 > 0 {sub(/^drop_/, "", $1); printf "%s%s=%s", sep, $1, $2; sep = " "}')
      read -r full other < <(printf '%s\n' "$final" | awk -v fr=" $PVNET_FULL_RING_DROPS " '
        $1 ~ /^drop_/ { r = substr($1, 6); if (index(fr, " " r " ")) f += $2; else o += $2 }
        END {print f + 0, o + 0}')
      if [ "$other" -gt 0 ]; then
        fail "pvnet dropped $other frames for reasons other than a full ring: $detail"
      fi
    fi
  fi
  local note=""
  [ "$status" = ok ] || note="$reason"
  run_load=$(awk -v a="${sw_other:-0}" -v b="${cl_other:-0}" 'BEGIN {print (a > b ? a : b)}')
  echo "$round,$size,$pairs,$loop,$dest,$case_flows,$label,$kind,${status}${note:+: ${note//,/;}},$mpps,$gbps,$nrep,$window,$frames,$cpu,$ctx,$txk,$rxk,$full,$other,$detail,$sw_other,$cl_other,$xb,$xa,$txf,$txb,$sw_busy,$cl_busy" >>"$runs_csv"
  if [ "$status" = ok ]; then
    log "  $label: $(printf '%.3f' "$mpps") Mpps, $(printf '%.3f' "$gbps") Gbit/s, switch CPU $cpu s in ${window}s${txk:+, kicks tx $txk rx $rxk}${detail:+, drops: $detail}; other load on CPU $switch_cpu/$client_cpu: $sw_other%/$cl_other%; xCPU round trip ${xb:-?}/${xa:-?} ns"
  else
    echo "FAIL: $size B, $pairs pairs, $loop loop, $dest, $label, round $round: $reason (logs: $dir)" >&2
    failures+=("$size B $pairs pairs $loop $dest $label round $round: $reason")
  fi
}

# idle_one KIND GRANT QUEUE PAIRS: switch and client connected, no traffic, for $idle s.
idle_csv=$out/idle.csv
echo "config,switch,pairs,secs,cpu_s,ctxsw,status" >"$idle_csv"
idle_one() {
  local kind=$1 g=$2 q=$3 pairs=$4 label
  label=$(config_label "$kind" "$g" "$q")
  nrun=$((nrun + 1))
  local dir=$out/logs/idle-${label// /-} sa=$work/$nrun-a.sock sb=$work/$nrun-b.sock
  dir=${dir//+/-}
  mkdir -p "$dir"
  local status=ok sw_pid="" c0 c1 x0 x1 t0 t1 cpu=0 ctx=0
  if start_switch "$kind" "$g" "$q" "$pairs" "$dir/switch.log" "$sa" "$sb" &&
    start_client 64 "$pairs" closed learned "$dir/client.log" "$sa" "$sb"; then
    sleep 1
    t0=$(now) c0=$(proc_cpu_ticks "$sw_pid") x0=$(proc_ctxsw "$sw_pid")
    sleep "$idle"
    t1=$(now) c1=$(proc_cpu_ticks "$sw_pid") x1=$(proc_ctxsw "$sw_pid")
    kill -0 "$sw_pid" 2>/dev/null || status="failed: $label exited"
    local hz
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN {printf "%.3f", (b - a) / hz}')
    ctx=$((x1 - x0))
    idle_secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  else
    status="failed: could not start"
    idle_secs=0
  fi
  dpdk_stop cl 5
  stop_switch "$kind"
  echo "$label,$kind,$pairs,$idle_secs,$cpu,$ctx,$status" >>"$idle_csv"
  log "  idle $label: $cpu s CPU in ${idle_secs}s, $ctx context switches ($status)"
  [ "$status" = ok ] || failures+=("idle $label: $status")
}

# ---------------------------------------------------------------- the runs
ncfg=${#configs[@]}
total_runs=$((rounds * ${#cases[@]} * ncfg))
per_run=$((warmup + secs + 5))
log "switchbench: ${#cases[@]} cases x $ncfg switches x $rounds rounds = $total_runs runs (~$((total_runs * per_run / 60 + 1)) min)"
pvnet_note=""
[ "$pvnet_cpus" = "$switch_cpu" ] || pvnet_note=" (pvnet: CPUs $pvnet_cpus)"
log "pinning: switch on CPU $switch_cpu (all threads)$pvnet_note, client testpmd on CPU $client_cpu (main and forwarding lcore); DPDK $(dpdk_version); $memory_note"
t_start=$SECONDS
for r in $(seq 1 "$rounds"); do
  for c in "${cases[@]}"; do
    read -r size pairs loop dest <<<"$c"
    log "round $r/$rounds: $size B, $pairs pairs, $loop loop, $dest"
    for k in $(seq 0 $((ncfg - 1))); do
      read -r kind g q <<<"${configs[$(((k + r - 1) % ncfg))]}"
      for try in $(seq 0 "$retries"); do
        run_one "$size" "$pairs" "$loop" "$dest" "$kind" "$g" "$q" "$r"
        if [ "$try" -ge "$retries" ]; then break; fi
        tail -n 1 "$runs_csv" | cut -d, -f9 | grep -qx ok || break
        if [ "$max_load" != 0 ] && awk -v l="$run_load" -v m="$max_load" 'BEGIN {exit !(l > m)}'; then
          log "  other processes took $run_load% of a CPU (> $max_load%): repeating this run"
        elif [ "$max_xcpu" != 0 ] && [ -n "$run_xcpu" ] &&
          awk -v x="$run_xcpu" -v m="$max_xcpu" 'BEGIN {exit !(x > m)}'; then
          log "  cross-CPU round trip $run_xcpu ns (> $max_xcpu ns): repeating this run"
        else
          break
        fi
        # The superseded run stays in runs.csv, marked, and out of the medians.
        sed -i '$ s/^\(\([^,]*,\)\{8\}\)ok,/\1retried,/' "$runs_csv"
      done
    done
  done
done
if [ "$idle" -gt 0 ]; then
  idle_pairs=$(printf '%s\n' "${cases[@]}" | awk '{print $2}' | sort -n | tail -1)
  log "idle cost: $idle s with both frontends connected ($idle_pairs pairs), no traffic"
  for cfg in "${configs[@]}"; do
    read -r kind g q <<<"$cfg"
    idle_one "$kind" "$g" "$q" "$idle_pairs"
  done
fi
elapsed=$((SECONDS - t_start))

# ---------------------------------------------------------------- report
report=("$report_bin" switchbench-report --runs "$runs_csv" --idle "$idle_csv")
# The runs kept under --max-xcpu-ns are the near state of the table by state.
[ "$max_xcpu" != 0 ] && report+=(--near-xcpu-ns "$max_xcpu")
[ -n "$plot" ] && report+=(--plot "$plot")
{
  echo "# scripts/switchbench.sh: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), DPDK $(dpdk_version), pvnet $(git -C "$PVNET_ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$PVNET_ROOT" diff --quiet HEAD 2>/dev/null || echo +changes)"
  echo "# pinning: switch on CPU $switch_cpu (all threads)$pvnet_note, client on CPU $client_cpu; $rounds rounds, per run $warmup s warm-up then $secs s averaged; flows: $flows; $memory_note$([ "$client_retry" = 1 ] && echo "; client retries full TX rings"); wall time $((elapsed / 60)) min $((elapsed % 60)) s"
  "${report[@]}" --format text
} >"$out/table.txt" || die "switchbench-report failed on $runs_csv"
case $format in
  text) cat "$out/table.txt" ;;
  *) "${report[@]}" --format "$format" ;;
esac
log "results: $runs_csv, $idle_csv, $out/table.txt${plot:+, $plot}; logs in $out/logs"
if [ ${#failures[@]} -gt 0 ]; then
  echo "switchbench: ${#failures[@]} failed run(s):" >&2
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
