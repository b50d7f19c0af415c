#!/usr/bin/env bash
# Compare lock back-ends (and DPDK testpmd as the reference switch) with real guests.
#
#   scripts/compare.sh [flags] [-- flags for every scripts/vm2vm.sh run]
#
#   --configs LIST    comma-separated GRANT+QUEUE lock pairs, first = baseline of the ratios
#                     (default percpu+pvqspin,rwlock+qspin,percpu+qspin,rwlock+pvqspin)
#   --with-testpmd    add DPDK testpmd (installs Debian's dpdk-dev when missing)
#   --no-testpmd      leave testpmd out (default: included when dpdk-testpmd is installed)
#   --rounds N        rounds (default 3); each round runs every configuration once, in an
#                     order rotated per round, so slow drift of the machine hits all alike
#   --secs N (10) --streams N (1) --queues N (16) --vcpus N (1) --guests 2|3 (2)
#   --offload on|off (on) --accel auto|kvm|tcg (auto)
#   --pvnet-bin PATH  use this pvnet binary instead of building one
#   --out DIR         results.csv, table.txt, chart.svg (default target/compare/<time>); the
#                     chart is drawn by `pvnet-bench plot` (built here, release)
# Prints a table of medians (Gbit/s) with ratios to the first configuration, and pvnet's
# queue-lock counters (spins, halts) averaged per run.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

configs="percpu+pvqspin,rwlock+qspin,percpu+qspin,rwlock+pvqspin"
testpmd=auto rounds=3 out="" pvnet_bin=""
vm=(--secs 10 --streams 1 --queues 16 --vcpus 1 --guests 2 --offload on --accel auto)
setvm() { # flag value: replace the flag's value in vm[]
  local i
  for i in "${!vm[@]}"; do
    if [ "${vm[$i]}" = "$1" ]; then vm[i + 1]=$2; fi
  done
}
while [ $# -gt 0 ]; do
  case $1 in
    --configs) configs=${2:?}; shift ;;
    --with-testpmd) testpmd=yes ;;
    --no-testpmd) testpmd=no ;;
    --rounds) rounds=${2:?}; shift ;;
    --secs | --streams | --queues | --vcpus | --guests | --offload | --accel) setvm "$1" "${2:?}"; shift ;;
    --out) out=${2:?}; shift ;;
    --pvnet-bin) pvnet_bin=${2:?}; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; vm+=("$@"); break ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
if [ "$testpmd" = auto ]; then
  command -v dpdk-testpmd >/dev/null && testpmd=yes || testpmd=no
fi
if [ "$testpmd" = yes ] && ! command -v dpdk-testpmd >/dev/null; then
  ensure_pkgs dpdk-dev librte-net-vhost23 librte-mempool-ring23 || die "cannot install dpdk-testpmd"
fi
IFS=, read -r -a cfgs <<<"$configs"
[ "$testpmd" = yes ] && cfgs+=(testpmd)
[ -n "$out" ] || out=$PVNET_ROOT/target/compare/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"

tdir=${CARGO_TARGET_DIR:-$PVNET_ROOT/target}
pkgs=(-p pvnet-bench)
[ -n "$pvnet_bin" ] || pkgs+=(-p pvnet)
log "cargo build --release ${pkgs[*]}"
(cd "$PVNET_ROOT" && cargo build --release -q "${pkgs[@]}") >&2 || die "cargo build failed"
pvnet_bin=${pvnet_bin:-$tdir/release/pvnet}
bench_bin=$tdir/release/pvnet-bench

csv=$out/results.csv
echo "config,round,gbps,retransmits,status,qlock_slow_paths,qlock_spins,qlock_halts" >"$csv"
# Queue-lock counters of one run: the last lock report in pvnet's output ("0,0,0" if none).
qlock() {
  # (`|| true`: no match — a testpmd run — must not end the script under pipefail + set -e.)
  { grep -h '"queue_lock"' "$1" 2>/dev/null || true; } | tail -1 | sed 's/.*"queue_lock"//' |
    awk '{n = split("slow_paths spins halts", k, " "); out = ""
      for (i = 1; i <= n; i++) { v = 0; if (match($0, "\"" k[i] "\":[0-9]+")) { v = substr($0, RSTART, RLENGTH); sub(/.*:/, "", v) }
        out = out (i > 1 ? "," : "") v }
      print out} END {if (NR == 0) print "0,0,0"}'
}
n=${#cfgs[@]}
for r in $(seq 1 "$rounds"); do
  for k in $(seq 0 $((n - 1))); do
    c=${cfgs[$(((k + r - 1) % n))]}
    if [ "$c" = testpmd ]; then
      a=(--switch testpmd)
    else
      a=(--switch pvnet --grant-lock "${c%%+*}" --queue-lock "${c##*+}" --pvnet-bin "$pvnet_bin")
    fi
    log "round $r/$rounds: $c"
    res=$("$PVNET_ROOT/scripts/vm2vm.sh" "${a[@]}" --label "$c" --format csv \
      --log-dir "$out/logs/$c-r$r" "${vm[@]}") || log "run failed: $c round $r (logs in $out/logs/$c-r$r)"
    # Sum the clients of this run (1 with --guests 2, 2 with --guests 3).
    row=$(printf '%s\n' "$res" | awk -F, -v c="$c" -v r="$r" 'NR > 1 && NF >= 16 {g += $14; t += $15; s = $16}
      END {printf "%s,%s,%.4f,%d,%s\n", c, r, g, t, (s == "" ? "failed" : s)}')
    row="$row,$(qlock "$out/logs/$c-r$r/switch.log")"
    echo "$row" >>"$csv"
    log "  -> $row"
  done
done

# ---------------------------------------------------------------- table of medians
table=$(awk -F, -v order="$(IFS=,; echo "${cfgs[*]}")" '
  NR > 1 { if ($5 == "ok") v[$1] = v[$1] " " $3; else bad[$1]++; sp[$1] += $7; ha[$1] += $8; nr[$1]++ }
  function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    if (n == 0) return 0
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    m = split(order, cs, ",")
    printf "%-22s %10s %8s %6s %6s %12s %10s  %s\n", "configuration", "Gbit/s", "ratio", "runs", "failed", "qlock_spins", "qlock_halts", "all runs (Gbit/s)"
    base = median(v[cs[1]])
    for (i = 1; i <= m; i++) {
      c = cs[i]; med = median(v[c]); k = split(v[c], tmp, " ")
      printf "%-22s %10.3f %8s %6d %6d %12d %10.1f  %s\n", c, med, (base > 0 ? sprintf("%.2fx", med / base) : "-"), k, bad[c] + 0, (nr[c] ? sp[c] / nr[c] : 0), (nr[c] ? ha[c] / nr[c] : 0), v[c]
    }
  }' "$csv")
{
  echo "# scripts/compare.sh --configs $configs --rounds $rounds $([ "$testpmd" = yes ] && echo --with-testpmd) ${vm[*]}"
  echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, QEMU $("$PVNET_QEMU" --version | awk 'NR==1 {print $4}'), median of $rounds rounds, ratio to the first row"
  echo "$table"
} | tee "$out/table.txt"

# ---------------------------------------------------------------- SVG bar chart
"$bench_bin" plot "$csv" --kind bars --x config --y gbps --where status=ok \
  --x-values "$(IFS=,; echo "${cfgs[*]}")" --x-label configuration --y-label "Gbit/s" \
  --title "VM-to-VM iperf3, median Gbit/s ($rounds rounds)" --out "$out/chart.svg" ||
  die "pvnet-bench plot failed on $csv"
log "results: $csv, $out/table.txt, $out/chart.svg"
