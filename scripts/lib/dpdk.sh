# shellcheck shell=bash
# DPDK testpmd as a vhost-user frontend (net_virtio_user ports, the "guests") and as the
# reference switch (net_vhost ports), for scripts/switchbench.sh and scripts/dpdk-interop.sh.
# Sourced after scripts/lib/common.sh; never executed.
#
# Every process started here is recorded in DPDK_PIDS (and its file prefix in
# DPDK_PREFIXES); dpdk_cleanup stops them all and removes their runtime directories. An
# interactive testpmd reads its commands from a FIFO that this shell holds open read-write,
# so that writing a command never blocks and never raises SIGPIPE, even when testpmd died.
#
#   PVNET_TESTPMD   testpmd binary (default dpdk-testpmd)
#   PVNET_DPDK_HUGE 1: testpmd on 2 MB hugepages instead of --no-huge (switchbench --huge)

PVNET_TESTPMD=${PVNET_TESTPMD:-dpdk-testpmd}
# Debian 12 (DPDK 22.11) packages: testpmd (dpdk-dev), and the drivers it loads at run time
# (not pulled in by dpdk-dev itself): virtio-user, vhost, null ports and the ring mempool.
DPDK_PKGS=(dpdk dpdk-dev librte-net-virtio23 librte-net-vhost23 librte-net-null23
  librte-mempool-ring23)

declare -a DPDK_PIDS=() DPDK_PREFIXES=()
declare -A DPDK_FD=() DPDK_PID=() DPDK_LOG=()

# ensure_dpdk: testpmd and its drivers are installed (installs them when missing).
ensure_dpdk() {
  local p missing=0
  command -v "$PVNET_TESTPMD" >/dev/null || missing=1
  for p in "${DPDK_PKGS[@]}"; do have_pkg "$p" || missing=1; done
  [ "$missing" = 0 ] && return 0
  # A testpmd given explicitly (PVNET_TESTPMD) is trusted to come with its drivers.
  [ "$PVNET_TESTPMD" != dpdk-testpmd ] && command -v "$PVNET_TESTPMD" >/dev/null && return 0
  ensure_pkgs "${DPDK_PKGS[@]}" && command -v "$PVNET_TESTPMD" >/dev/null
}

dpdk_version() {
  dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || echo "?"
}

# dpdk_start NAME CPU LOG interactive|batch EAL-AND-APP-ARGS...: starts testpmd pinned to
# CPU (taskset; main and forwarding lcore both on it) with a unique --file-prefix.
# "interactive": commands go in with dpdk_cmd NAME. "batch": stdin is /dev/null (the
# arguments must keep it running, e.g. --stats-period).
dpdk_start() {
  local name=$1 cpu=$2 log=$3 mode=$4
  shift 4
  local prefix="pvnet-$$-$name-${#DPDK_PIDS[@]}" fifo="" fd
  DPDK_PREFIXES+=("$prefix")
  # 4 KB pages by default; PVNET_DPDK_HUGE=1 (switchbench --huge): 2 MB hugepages from
  # memfd (--in-memory: no hugetlbfs files left behind), one file per segment so that a
  # virtio-user port shares its memory in one region.
  local eal_mem=(--no-huge)
  [ "${PVNET_DPDK_HUGE:-0}" = 1 ] && eal_mem=(--in-memory --single-file-segments)
  local cmd=(taskset -c "$cpu" stdbuf -oL "$PVNET_TESTPMD" --lcores "0@$cpu,1@$cpu"
    --no-pci "${eal_mem[@]}" --file-prefix "$prefix" "$@")
  if [ "$mode" = interactive ]; then
    fifo="${log%.log}.cmd"
    rm -f "$fifo"
    mkfifo "$fifo" || return 1
    # Read-write: opening never blocks, and writes never see SIGPIPE.
    exec {fd}<>"$fifo"
    DPDK_FD[$name]=$fd
    echo "# ${cmd[*]}" >"$log"
    # (testpmd itself does not keep the write end: "quit" or EOF ends it.)
    "${cmd[@]}" <"$fifo" >>"$log" 2>&1 {fd}>&- &
  else
    echo "# ${cmd[*]}" >"$log"
    "${cmd[@]}" </dev/null >>"$log" 2>&1 &
  fi
  DPDK_PID[$name]=$!
  DPDK_LOG[$name]=$log
  DPDK_PIDS+=("$!")
}

# dpdk_cmd NAME COMMAND...: one line to an interactive testpmd.
dpdk_cmd() {
  local name=$1
  shift
  local fd=${DPDK_FD[$name]:-}
  [ -n "$fd" ] || return 1
  printf '%s\n' "$*" >&"$fd"
}

dpdk_alive() { kill -0 "${DPDK_PID[$1]}" 2>/dev/null; }

# dpdk_explain NAME WHAT: one line that says what failed, then the log's last lines.
dpdk_explain() {
  local name=$1 what=$2 log=${DPDK_LOG[$1]}
  echo "ERROR: $what (testpmd '$name', log $log); its last lines:" >&2
  grep -v '^#' "$log" 2>/dev/null | grep -v '^\s*$' | tail -8 | sed 's/^/    /' >&2
}

# dpdk_wait_prompt NAME TIMEOUT_S: an interactive testpmd has set up its ports and reads
# commands. Fails (with the log tail) when it exits or does not get there in time.
dpdk_wait_prompt() {
  local name=$1 t=$2
  for _ in $(seq $((t * 10))); do
    grep -q 'testpmd> ' "${DPDK_LOG[$name]}" 2>/dev/null && return 0
    if ! dpdk_alive "$name"; then
      dpdk_explain "$name" "testpmd exited during start-up"
      return 1
    fi
    sleep 0.1
  done
  dpdk_explain "$name" "testpmd did not reach its prompt within ${t}s"
  return 1
}

# dpdk_wait_sockets NAME TIMEOUT_S SOCKET...: a vhost-user server created its sockets.
dpdk_wait_sockets() {
  local name=$1 t=$2 s ok
  shift 2
  for _ in $(seq $((t * 10))); do
    ok=1
    for s in "$@"; do [ -S "$s" ] || ok=0; done
    [ "$ok" = 1 ] && return 0
    if ! kill -0 "${DPDK_PID[$name]}" 2>/dev/null; then
      dpdk_explain "$name" "process exited before creating its sockets"
      return 1
    fi
    sleep 0.1
  done
  dpdk_explain "$name" "no vhost-user sockets after ${t}s"
  return 1
}

# dpdk_stop NAME [TIMEOUT_S]: "quit" (interactive) or SIGTERM, SIGKILL after the timeout.
dpdk_stop() {
  local name=$1 t=${2:-5} pid=${DPDK_PID[$1]:-}
  [ -n "$pid" ] || return 0
  if [ -n "${DPDK_FD[$name]:-}" ]; then
    dpdk_cmd "$name" stop
    dpdk_cmd "$name" quit
  else
    kill -TERM "$pid" 2>/dev/null
  fi
  for _ in $(seq $((t * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    sleep 0.5
    kill -KILL "$pid" 2>/dev/null && log "testpmd '$name' did not quit: killed"
  fi
  wait "$pid" 2>/dev/null
  local fd=${DPDK_FD[$name]:-}
  if [ -n "$fd" ]; then
    exec {fd}>&-
    unset "DPDK_FD[$name]"
  fi
  unset "DPDK_PID[$name]"
  return 0
}

# dpdk_cleanup: stops every testpmd still running, removes their runtime directories.
dpdk_cleanup() {
  local n p
  for n in "${!DPDK_PID[@]}"; do dpdk_stop "$n" 2; done
  for p in "${DPDK_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${DPDK_PREFIXES[@]}"; do
    rm -rf "/var/run/dpdk/$p" "${XDG_RUNTIME_DIR:-/nonexistent}/dpdk/$p" 2>/dev/null
  done
  return 0
}

# dpdk_port_reports LOG: the "show port stats" reports in LOG, one line per report and
# port: "REPORT PORT RX_PACKETS RX_BYTES RX_PPS RX_BPS TX_PACKETS" (REPORT counts from 0 per
# port, in the order the reports were printed).
dpdk_port_reports() {
  awk '
    /NIC statistics for port [0-9]+/ { match($0, /port [0-9]+/); p = substr($0, RSTART + 5, RLENGTH - 5) + 0
      inblk = 1; rxp = rxb = txp = 0; next }
    inblk && /RX-packets:/ { rxp = $2; rxb = $NF }
    inblk && /TX-packets:/ { txp = $2 }
    inblk && /Rx-pps:/ { pps = $2; bps = $4 }
    inblk && /Tx-pps:/ { print n[p]++, p, rxp, rxb, pps, bps, txp; inblk = 0 }
  ' "$1"
}

# dpdk_port_rates W S: "PORT MPPS" per port, from dpdk_port_reports lines on stdin: the
# port's RX packets per second averaged over reports W+1..W+S (the steady state).
dpdk_port_rates() {
  awk -v w="$1" -v s="$2" '
    $1 > w && $1 <= w + s { sum[$2] += $5; n[$2]++ }
    END { for (p in sum) printf "%d %.6f\n", p, sum[p] / n[p] / 1e6 }' | sort -n
}

# dpdk_one_way PORT-RATES: succeeds when one port of a closed loop receives less than a
# quarter of what the busiest port receives ("PORT MPPS" lines on stdin, two ports or more).
# Both directions of a closed loop are loops of their own with the same frames; one that
# lost all its frames (e.g. dropped by the client on a full TX ring) stays empty while the
# other runs on, and the sum of the two would pass for a slower switch.
dpdk_one_way() {
  awk 'NR == 1 || $2 < lo { lo = $2 } NR == 1 || $2 > hi { hi = $2 }
    END { exit !(NR >= 2 && lo < hi / 4) }'
}

# dpdk_fwd_totals LOG: the last "Forward statistics" block of every port (printed by
# "stop"): "PORT RX_PACKETS TX_PACKETS TX_DROPPED".
dpdk_fwd_totals() {
  awk '
    /Forward statistics for port [0-9]+/ { match($0, /port [0-9]+/); p = substr($0, RSTART + 5, RLENGTH - 5) + 0; inblk = 1; next }
    inblk && /RX-packets:/ { rx[p] = $2 }
    inblk && /TX-packets:/ { tx[p] = $2; td[p] = $4; inblk = 0 }
    END { for (p in rx) print p, rx[p], tx[p], td[p] }
  ' "$1" | sort -n
}

# testpmd_busy LOG: "CYCLES_PER_PACKET MHZ" from the last forwarding statistics in LOG of a
# testpmd started with --record-core-cycles (its busy cycles, those of polls that found
# packets, per packet received); nothing when LOG has none.
testpmd_busy() {
  sed -n 's/^ *CPU cycles\/packet=\([0-9.]*\) .* at \([0-9]*\) MHz Clock.*/\1 \2/p' "$1" | tail -n 1
}

# ---------------------------------------------------------------- process accounting
# proc_cpu_ticks PID: user + system time of the whole process (all threads), in clock ticks.
proc_cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# proc_ctxsw PID: voluntary + involuntary context switches summed over the process's threads.
proc_ctxsw() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

# cpu_busy CPU: "BUSY TOTAL" clock ticks of one CPU from /proc/stat (busy: everything but
# idle and iowait, steal included: time this CPU did not give to whoever waited for it).
cpu_busy() {
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# ---------------------------------------------------------------- pvnet statistics
# pvnet_snapshot PID LOG NPORTS TIMEOUT_S: asks pvnet (SIGUSR1) for a JSON report and prints
# it (NPORTS port lines and the lock line) once it is complete in LOG.
pvnet_snapshot() {
  local pid=$1 log=$2 nports=$3 t=$4 before
  before=$(grep -c '^{' "$log" 2>/dev/null)
  kill -USR1 "$pid" 2>/dev/null || return 1
  for _ in $(seq $((t * 50))); do
    if [ "$(grep -c '^{' "$log")" -ge $((before + nports + 1)) ]; then
      grep '^{' "$log" | tail -n +$((before + 1)) | head -n $((nports + 1))
      return 0
    fi
    sleep 0.02
  done
  return 1
}

# pvnet_totals: reads JSON port lines (stdin) and prints "KEY VALUE" lines summed over the
# ports' "total" objects: tx_frames, tx_bursts, rx_frames, tx_bytes, rx_bytes, tx_kicks, rx_kicks,
# backpressure, tx_notifications, rx_notifications, busy_ns and drop_<reason> for every drop
# reason (printed as integers: the sums pass 2^31).
pvnet_totals() {
  awk '
    /"port":/ && match($0, /"total":\{[^{}]*\{[^{}]*\}[^{}]*\}/) {
      t = substr($0, RSTART + 8, RLENGTH - 8)
      if (match(t, /"drops":\{[^{}]*\}/)) {
        d = substr(t, RSTART + 9, RLENGTH - 10); t = substr(t, 1, RSTART - 1) substr(t, RSTART + RLENGTH)
        n = split(d, kv, ","); for (i = 1; i <= n; i++) if (split(kv[i], a, ":") == 2) { gsub(/"/, "", a[1]); s["drop_" a[1]] += a[2] }
      }
      gsub(/[{}]/, "", t); n = split(t, kv, ",")
      for (i = 1; i <= n; i++) if (split(kv[i], a, ":") == 2) { gsub(/"/, "", a[1]); s[a[1]] += a[2] }
    }
    END { for (k in s) printf "%s %.0f\n", k, s[k] }' | sort
}

