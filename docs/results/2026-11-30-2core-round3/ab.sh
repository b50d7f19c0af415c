#!/usr/bin/env bash
# A/B: alternate two pvnet binaries through switchbench (pvnet only), print Mpps and ns/frame.
# usage: ab.sh A B ROUNDS SIZES PAIRS   (XA / XB: more pvnet flags for A / B; writes /tmp/ab-*)
A=$1 B=$2 R=${3:-3} S=${4:-64,1500} P=${5:-1}
cd "$(dirname "$0")/../../.." || exit 1
for r in $(seq 1 "$R"); do
  for which in A B; do
    bin=$A; extra=${XA:-}; [ $which = B ] && { bin=$B; extra=${XB:-}; }
    ea=(); for x in $extra; do ea+=(--pvnet-arg "$x"); done
    out=/tmp/ab-$which-$r
    rm -rf "$out"
    scripts/switchbench.sh --sizes "$S" --pairs "$P" --loops closed --dests learned --rounds 1 --idle 0 --secs 4 --warmup 1 --no-build --no-testpmd --pvnet-bin "$bin" "${ea[@]}" --out "$out" >/dev/null 2>&1
    awk -F, -v w="$which" -v r="$r" 'NR>1 {printf "%s r%d %5s B %s pairs: %6.3f Mpps %5.0f ns/frame %6.1f kicks/1k %6.1f ctxsw/1k\n", w, r, $2, $3, $10, $15/$14*1e9, ($17+$18)/$14*1000, $16/$14*1000}' "$out/runs.csv"
  done
done
