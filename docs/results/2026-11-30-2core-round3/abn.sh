#!/usr/bin/env bash
# abn.sh ROUNDS SIZES PAIRS BIN... : alternate N pvnet binaries (name=path or path)
R=$1 S=$2 P=$3; shift 3
cd "$(dirname "$0")/../../.." || exit 1
for r in $(seq 1 "$R"); do
  for spec in "$@"; do
    name=${spec%%=*}; bin=${spec#*=}
    out=/tmp/abn-$name-$r; rm -rf "$out"
    scripts/switchbench.sh --sizes "$S" --pairs "$P" --loops closed --dests learned --rounds 1 --idle 0 --secs 4 --warmup 1 --no-build --no-testpmd --pvnet-bin "$bin" --out "$out" >/dev/null 2>&1
    awk -F, -v w="$name" -v r="$r" 'NR>1 {printf "%-6s r%d %5s B %s pairs: %6.3f Mpps %5.0f ns/frame kicks/1k %.2f\n", w, r, $2, $3, $10, $15/$14*1e9, ($17+$18)/$14*1000}' "$out/runs.csv"
  done
done
