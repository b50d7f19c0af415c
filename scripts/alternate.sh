#!/usr/bin/env bash
# Times two or more pvnet binaries against each other on this shared, noisy machine: the
# binaries alternate inside every round (never all runs of one, then all of the other), each
# round starts once the two CPUs' cache-line round trip (`pvnet-bench xcpu --cpus 0,1`) reads
# below --max-xcpu-ns (a VM's "near" state: on this one the host moves the two vCPUs apart
# for minutes at a time, and rates differ by ~2x between the states), and each run is
# scripts/switchbench.sh's closed loop with DPDK virtio-user guests, pvnet only.
#
#   scripts/alternate.sh [--rounds N] [--size B] [--pairs N] [--huge] [--secs S]
#                        [--max-xcpu-ns NS] [--out DIR] NAME=BINARY NAME=BINARY...
#
#   --rounds N (5)          rounds; in each, every binary runs once, in the order given
#   --size B (64)           frame bytes
#   --pairs N (1)           queue pairs per port
#   --huge                  guests on 2 MB hugepages (as switchbench.sh --huge)
#   --secs S (4)            seconds of traffic per run (after 1 s of warm-up)
#   --max-xcpu-ns NS (300)  wait (up to 10 minutes a round) for a round trip below this
#   --out DIR               keep every run's switchbench output in DIR/NAME-ROUND
#
# Output: one line per run ("NAME rROUND  B / pairs: Mpps, ns of CPU per frame, the round
# trip before/after the run"), then each binary's median Mpps over the rounds whose runs
# all stayed near (round trip below the bound after every run of the round) and over all.
# Compare binaries by those medians and by how many rounds each won, not by single runs.
# Exit status: 0 done; 1 failure; 77 SKIP (DPDK missing and not installable).
set -uo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
cd "$PVNET_ROOT" || exit 1

rounds=5 size=64 pairs=1 huge=() secs=4 maxx=300 out=""
specs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --size) size=$2; shift ;;
    --pairs) pairs=$2; shift ;;
    --huge) huge=(--huge) ;;
    --secs) secs=$2; shift ;;
    --max-xcpu-ns) maxx=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "ERROR: unknown flag $1 (--help)" >&2; exit 1 ;;
    *=*) specs+=("$1") ;;
    *) echo "ERROR: expected NAME=BINARY, got $1" >&2; exit 1 ;;
  esac
  shift
done
[ "${#specs[@]}" -ge 2 ] || die "give at least two NAME=BINARY"
for spec in "${specs[@]}"; do
  [ -x "${spec#*=}" ] || die "${spec#*=}: not an executable"
done
cargo build --release -p pvnet-bench >/dev/null 2>&1 || die "cargo build of pvnet-bench failed"
# Where cargo put pvnet-bench (CARGO_TARGET_DIR when set: a worktree copy of the scripts
# then finds it; an empty reading would wait out every round's 10 minutes).
bench_bin=${CARGO_TARGET_DIR:-$PVNET_ROOT/target}/release/pvnet-bench
[ -x "$bench_bin" ] || die "no pvnet-bench at $bench_bin"
xcpu() {
  "$bench_bin" xcpu --cpus 0,1 2>/dev/null | tail -1 |
    sed -n 's/.*xcpu_rtt_ns=\([0-9.]*\).*/\1/p'
}

dir=$(mktemp -d /tmp/pvnet-alternate.XXXXXX)
trap 'rm -rf "$dir"' EXIT
results=$dir/results.csv
for r in $(seq 1 "$rounds"); do
  for _ in $(seq 1 30); do
    x=$(xcpu)
    awk -v x="${x:-1e9}" -v m="$maxx" 'BEGIN { exit !(x < m) }' && break
    sleep 20
  done
  for spec in "${specs[@]}"; do
    name=${spec%%=*} bin=$(readlink -f "${spec#*=}")
    o=$dir/$name-$r
    scripts/switchbench.sh "${huge[@]}" --sizes "$size" --pairs "$pairs" --loops closed \
      --dests learned --rounds 1 --idle 0 --secs "$secs" --warmup 1 --no-build --no-testpmd \
      --pvnet-bin "$bin" --out "$o" >"$o.log" 2>&1
    switchbench_ok "$?" "$o.log" "$o/runs.csv" " for $name in round $r"
    [ -n "$out" ] && mkdir -p "$out" && cp -r "$o" "$out/$name-$r"
    # runs.csv columns (switchbench.sh): 10 Mpps, 14 frames, 15 switch CPU seconds,
    # 24/25 round trip before/after.
    awk -F, -v n="$name" -v r="$r" -v m="$maxx" 'NR > 1 {
      ns = $14 > 0 ? $15 / $14 * 1e9 : 0
      printf "%-10s r%-2d %5s B / %s pairs: %7.3f Mpps %5.0f ns/frame  xcpu %s/%s\n", n, r, $2, $3, $10, ns, $24, $25
      printf "%s,%d,%s,%d\n", n, r, $10, ($24 < m && $25 < m) >> "'"$results"'"
    }' "$o/runs.csv"
  done
done
python3 - "$results" <<'EOF'
import csv, statistics, sys
rows = [(n, int(r), float(v), int(near)) for n, r, v, near in csv.reader(open(sys.argv[1]))]
names = list(dict.fromkeys(n for n, *_ in rows))
near_rounds = {r for r in {r for _, r, _, _ in rows} if all(nr for _, rr, _, nr in rows if rr == r)}
for n in names:
    allv = [v for m, _, v, _ in rows if m == n]
    nearv = [v for m, r, v, _ in rows if m == n and r in near_rounds]
    won = sum(1 for r in near_rounds
              if max((v, m) for m, rr, v, _ in rows if rr == r)[1] == n)
    near = f"{statistics.median(nearv):.3f}" if nearv else "-"
    print(f"{n:10s} median Mpps: near rounds ({len(nearv)}) {near}, all ({len(allv)}) "
          f"{statistics.median(allv):.3f}; won {won} of {len(near_rounds)} near rounds")
EOF
