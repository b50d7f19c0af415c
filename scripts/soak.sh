#!/usr/bin/env bash
# Soak: QEMU guests killed and restarted under iperf3 traffic, while pvnet's open fds,
# threads and resident memory are watched.
#
#   scripts/soak.sh [--minutes N] [--queues N] [--accel auto|kvm|tcg] [--log-dir DIR]
#                   [--pvnet-bin PATH | --no-build]
#
# Three guests on one pvnet (release build, sockets in a temp dir, --stats-format json):
#   A (10.0.0.1) runs iperf3 servers for the whole run;
#   B (10.0.0.2) streams iperf3 to A for the whole run (one TCP stream, N minutes + 1);
#   C (10.0.0.3) boots, pings A, starts its own iperf3 stream to A, and is killed a few
#     seconds later — alternately with SIGKILL (the socket just drops) and SIGTERM (QEMU
#     shuts down) — then booted again, until the time is up.
# After every kill (once pvnet had two seconds to notice) pvnet's fds, threads and anonymous
# resident memory are sampled from /proc. Passes when: B's iperf3 ran to the end with data,
# pvnet never died, fds and threads after the last cycle equal those after the first, its
# anonymous RSS grew less than 32 MiB, C's port counted one connection per boot, and pvnet
# logged no ERROR line.
#
# Exit status: 0 pass; 1 fail (with the reason); 77 SKIP (QEMU or the guest image cannot be
# installed here).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

minutes=5 queues=4 accel=auto log_dir="" build=1 pvnet_bin="" mem=256
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) need "$@"; minutes=$2; shift ;;
    --queues) need "$@"; queues=$2; shift ;;
    --accel) need "$@"; accel=$2; shift ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    --pvnet-bin) need "$@"; pvnet_bin=$2; build=0; shift ;;
    --no-build) build=0 ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done
{ [[ $minutes =~ ^[0-9]+$ ]] && [ "$minutes" -ge 1 ]; } || die "--minutes must be a positive integer"
{ [[ $queues =~ ^[0-9]+$ ]] && [ "$queues" -ge 1 ] && [ "$queues" -le 32 ]; } || die "--queues must be 1..32"
secs=$((minutes * 60))

work=$(mktemp -d /tmp/pvnet-soak.XXXXXX)
pids=() switch_pid="" c_pid=""
cleanup() {
  local p
  for p in "${pids[@]}" $c_pid; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$switch_pid" ] && kill -0 "$switch_pid" 2>/dev/null; then
    kill -TERM "$switch_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$switch_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$switch_pid" 2>/dev/null || true
  fi
  for p in "${pids[@]}" $c_pid $switch_pid; do { wait "$p"; } 2>/dev/null || true; done
  if [ -n "$log_dir" ] && mkdir -p "$log_dir"; then cp "$work"/*.log "$log_dir"/ 2>/dev/null || true; fi
  rm -rf "$work"
  return 0
}
trap 'cleanup 2>/dev/null' EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

vm_setup "$accel" "$queues"

bin=$(pvnet_binary "$build" "$pvnet_bin") || exit 1
socks=("$work/a.sock" "$work/b.sock" "$work/c.sock")
"$bin" --socket "${socks[0]}" --socket "${socks[1]}" --socket "${socks[2]}" \
  --queues "$queues" --stats-format json </dev/null >"$work/switch.log" 2>&1 &
switch_pid=$!
for _ in $(seq 300); do
  [ -S "${socks[0]}" ] && [ -S "${socks[1]}" ] && [ -S "${socks[2]}" ] && break
  kill -0 "$switch_pid" 2>/dev/null || { tail -5 "$work/switch.log" >&2; die "pvnet exited at start"; }
  sleep 0.1
done

boot() { # index role ip extra-cmdline; sets qemu_pid
  local i=$1 role=$2 ip=$3 extra=$4 mac
  mac=$(printf '52:54:00:00:00:%02x' $((i + 1)))
  # shellcheck disable=SC2046
  "$PVNET_QEMU" -nodefaults -no-user-config -display none -no-reboot -name "pvnet-soak-g$i" \
    $(accel_args "$acc") -smp 1 -m "${mem}M" \
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off pvnet.role=$role pvnet.ip=$ip/24 pvnet.queues=$queues $extra" \
    -chardev "socket,id=chr0,path=${socks[$i]}" \
    -netdev "vhost-user,id=net0,chardev=chr0,queues=$queues" \
    -device "virtio-net-pci,netdev=net0,mac=$mac,mq=on,vectors=$vectors" \
    -serial "file:$work/guest$i.log" </dev/null >>"$work/qemu$i.log" 2>&1 &
  qemu_pid=$!
}

# /proc figures of pvnet: fds threads anon_anon_rss_kib (RssAnon: its own heap and stacks; the
# guests' shared memory it touches is RssShmem and comes and goes with the guests)
sample() {
  local fds threads rss
  fds=$(find "/proc/$switch_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  threads=$(find "/proc/$switch_pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  rss=$(awk '/^RssAnon:/ {print $2}' "/proc/$switch_pid/status" 2>/dev/null)
  echo "$fds $threads ${rss:-0}"
}

# A's second iperf3 server (C's) gives up on a vanished client after 2 s of silence.
boot 0 server 10.0.0.1 "pvnet.rcvtimeout=2000"
pids+=("$qemu_pid")
# B streams for the whole cycling window plus a margin, so that it is still streaming when
# the last cycle is sampled.
boot 1 client 10.0.0.2 "pvnet.peer=10.0.0.1 pvnet.port=5201 pvnet.secs=$((secs + 60))"
pids+=("$qemu_pid")
log "pvnet pid $switch_pid; A and B booting ($acc, $queues queue pairs); soak for ${minutes} min"
fail=""
# B must be streaming before C starts cycling.
for _ in $(seq 600); do
  grep -q '^PVNET-PING' "$work/guest1.log" 2>/dev/null && break
  grep -q PVNET-ERROR "$work/guest1.log" 2>/dev/null && { fail="B: $(grep -m1 PVNET-ERROR "$work/guest1.log")"; break; }
  sleep 0.5
done
[ -z "$fail" ] && ! grep -q '^PVNET-PING' "$work/guest1.log" && fail="B never reached A"
t_cycles_end=$((SECONDS + secs))
t_end=$((t_cycles_end + 60 + 120))

cycles=0 first="" last="" samples="$work/samples.txt"
: >"$samples"
while [ -z "$fail" ] && [ "$SECONDS" -lt "$t_cycles_end" ]; do
  : >"$work/guest2.log"
  boot 2 client 10.0.0.3 "pvnet.peer=10.0.0.1 pvnet.port=5202 pvnet.secs=3600"
  c_pid=$qemu_pid
  # Until C reached A (its iperf3 starts right after), at most 120 s.
  for _ in $(seq 240); do
    grep -q '^PVNET-PING' "$work/guest2.log" 2>/dev/null && break
    kill -0 "$c_pid" 2>/dev/null || break
    sleep 0.5
  done
  grep -q '^PVNET-PING' "$work/guest2.log" || { fail="C (boot $((cycles + 1))) never reached A"; break; }
  sleep $((2 + RANDOM % 5))
  if [ $((cycles % 2)) = 0 ]; then sig=KILL; else sig=TERM; fi
  kill -"$sig" "$c_pid" 2>/dev/null || true
  { wait "$c_pid"; } 2>/dev/null || true
  c_pid=""
  # pvnet notices the disconnect and prepares the port for the next frontend.""
  cycles=$((cycles + 1))
  sleep 2
  kill -0 "$switch_pid" 2>/dev/null || { fail="pvnet died"; break; }
  s=$(sample)
  echo "$cycles $sig $s" >>"$samples"
  [ -n "$first" ] || first=$s
  last=$s
  log "cycle $cycles (SIG$sig): pvnet fds/threads/anon_rss_kib $s"
done

# B's stream ends by itself; wait for its result.
while [ -z "$fail" ] && ! grep -q PVNET-DONE "$work/guest1.log" 2>/dev/null; do
  [ "$SECONDS" -lt "$t_end" ] || { fail="B did not finish in time"; break; }
  kill -0 "$switch_pid" 2>/dev/null || { fail="pvnet died"; break; }
  sleep 1
done
b_result=$(grep -m1 '^PVNET-RESULT' "$work/guest1.log" 2>/dev/null | tr -d '\r' || true)
kill -USR1 "$switch_pid" 2>/dev/null || true
sleep 1
c_conns=$(grep -E '"port":2[,}]' "$work/switch.log" | tail -1 | grep -oE '"connections":[0-9]+' | cut -d: -f2)
errors=$(grep -vE '^\{' "$work/switch.log" | grep -cE '(^|[ \[])ERROR[ \]]' || true)

echo "== soak: ${minutes} min, $queues queue pairs, accel $acc: $cycles kill/restart cycles of C"
echo "  B: ${b_result:-no result}"
echo "  pvnet fds/threads/anon_rss_kib after cycle 1: ${first:-?}   after cycle $cycles: ${last:-?}"
echo "  C's port: ${c_conns:-?} connections; pvnet ERROR lines: $errors"
if [ -z "$fail" ]; then
  read -r f0 t0 r0 <<<"$first"
  read -r f1 t1 r1 <<<"$last"
  bps=$(sed -n 's/.*recv_bps=\([0-9.e+]*\).*/\1/p' <<<"$b_result")
  if [ -z "$b_result" ] || ! awk -v b="${bps:-0}" 'BEGIN {exit !(b > 0)}'; then
    fail="B's iperf3 moved no data"
  elif [ "$cycles" -lt 2 ]; then fail="only $cycles cycles (too short a run?)"
  elif [ "$f1" != "$f0" ]; then fail="pvnet's open fds changed: $f0 -> $f1"
  elif [ "$t1" != "$t0" ]; then fail="pvnet's threads changed: $t0 -> $t1"
  elif [ $((r1 - r0)) -gt 32768 ]; then fail="pvnet's anonymous RSS grew by $(((r1 - r0) / 1024)) MiB"
  elif [ "${c_conns:-0}" -ne "$cycles" ]; then fail="C's port counted ${c_conns:-0} connections for $cycles boots"
  elif [ "$errors" != 0 ]; then fail="$errors ERROR lines in pvnet's log"
  fi
fi
if [ -n "$fail" ]; then
  {
    echo "soak: FAILED ($fail). Last lines:"
    for f in "$work"/guest*.log "$work/switch.log"; do
      [ -s "$f" ] && { echo "--- ${f##*/}"; tail -8 "$f"; }
    done
  } >&2
  exit 1
fi
echo "PASS: soak"
