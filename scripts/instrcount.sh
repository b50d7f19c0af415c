#!/usr/bin/env bash
# Instructions per frame: pvnet under valgrind's callgrind in scripts/switchbench.sh's closed
# loop (DPDK virtio-user guests, learned unicast), counted exactly. A count does not depend on
# how busy or how far apart this machine's CPUs are, so it compares two builds where timing
# runs on a shared VM disagree from one minute to the next; the data path is bound by its
# instructions at 64 B (a change that removed ~50 per frame gained ~2 ns, docs/benchmarks.md,
# eleventh round). It says nothing about cache misses: confirm a gain with alternating timed
# runs.
#
#   scripts/instrcount.sh [--size B] [--pairs N] [--huge] [--secs S] [--pvnet-bin PATH]
#                         [--grant-lock KIND] [--queue-lock KIND] [--pvnet-arg ARG]
#                         [--top N] [--keep DIR]
#
#   --size B (64)          frame bytes
#   --pairs N (1)          queue pairs per port
#   --huge                 guests on 2 MB hugepages (as switchbench.sh --huge)
#   --secs S (6)           seconds of traffic (callgrind slows pvnet ~50x; the count is per frame)
#   --pvnet-bin PATH       the pvnet binary (default: target/release/pvnet, built here)
#   --grant-lock KIND      pvnet's --grant-lock and --queue-lock (default: pvnet's own): the
#   --queue-lock KIND      lock kinds' cost per frame where timing cannot separate them
#   --pvnet-arg ARG        one more pvnet flag (repeatable), e.g. --pvnet-arg --pmd-threads=1
#   --top N (0)            also the N symbols with the most instructions per frame (code inlined
#                          into a function counts in that function)
#   --keep DIR             keep the callgrind output and the switchbench logs in DIR
#
# Output: one line "instructions per frame: X (I instructions, F frames)", where F is the sum
# of pvnet's own tx_frames over both ports at exit and I every instruction pvnet executed,
# start-up and idle polling included (a few per mille).
# Exit status: 0 counted; 1 failure; 77 SKIP (valgrind or DPDK missing and not installable).
set -uo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
cd "$PVNET_ROOT" || exit 1

size=64 pairs=1 huge=() secs=6 bin="" top=0 keep="" locks=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift ;;
    --pairs) pairs=$2; shift ;;
    --huge) huge=(--huge) ;;
    --secs) secs=$2; shift ;;
    --pvnet-bin) bin=$2; shift ;;
    --grant-lock | --queue-lock) locks+=("$1" "$2"); shift ;;
    --pvnet-arg) extra+=(--pvnet-arg "$2"); shift ;;
    --top) top=$2; shift ;;
    --keep) keep=$2; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "ERROR: unknown flag $1 (--help)" >&2; exit 1 ;;
  esac
  shift
done

command -v valgrind >/dev/null || ensure_pkgs valgrind ||
  { echo "SKIP: valgrind cannot be installed here (Debian package valgrind)"; exit "$PVNET_SKIP_RC"; }
if [ -z "$bin" ]; then
  cargo build --release --bin pvnet >/dev/null 2>&1 || { echo "ERROR: cargo build failed" >&2; exit 1; }
  bin=$PVNET_ROOT/target/release/pvnet
fi
bin=$(readlink -f "$bin")

dir=$(mktemp -d /tmp/pvnet-instrcount.XXXXXX)
trap '[ -n "$keep" ] && mkdir -p "$keep" && cp -r "$dir"/. "$keep"/; rm -rf "$dir"' EXIT
cat >"$dir/pvnet" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$dir/callgrind.out "$bin" "\$@"
EOF
chmod +x "$dir/pvnet"

scripts/switchbench.sh "${huge[@]}" "${locks[@]}" "${extra[@]}" --sizes "$size" --pairs "$pairs" --loops closed --dests learned \
  --rounds 1 --idle 0 --secs "$secs" --warmup 1 --no-testpmd --pvnet-bin "$dir/pvnet" \
  --out "$dir/sb" >"$dir/switchbench.log" 2>&1
switchbench_ok "$?" "$dir/switchbench.log" "$dir/callgrind.out" ""
python3 - "$dir" "$top" <<'EOF'
import glob, json, re, subprocess, sys
d, top = sys.argv[1], int(sys.argv[2])
last = {}
for log in glob.glob(f"{d}/sb/logs/*/switch.log"):
    for line in open(log, errors="replace"):
        if line.startswith("{") and '"port"' in line:
            try:
                s = json.loads(line)
            except ValueError:
                continue
            last[s["port"]] = s
frames = sum(s["total"]["tx_frames"] for s in last.values())
out = subprocess.run(["callgrind_annotate", "--auto=no", f"{d}/callgrind.out"], capture_output=True, text=True).stdout
m = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out)
if not m or frames == 0:
    sys.exit("ERROR: no instruction total or no frames (pvnet's statistics missing?)")
total = int(m.group(1).replace(",", ""))
print(f"instructions per frame: {total / frames:.0f} ({total} instructions, {frames} frames)")
# Rows are per (source file, function): sum each function's rows (its own and inlined code).
by_fn = {}
for l in out.splitlines():
    if not re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", l) or "PROGRAM TOTALS" in l:
        continue
    n = int(l.split()[0].replace(",", ""))
    name = re.sub(r"^.*?%\)\s+", "", l)
    name = re.sub(r"\s*\[.*\]$", "", name).split(":", 1)[-1]
    by_fn[name] = by_fn.get(name, 0) + n
for name, n in sorted(by_fn.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {n / frames:8.1f}  {name[:110]}")
EOF
