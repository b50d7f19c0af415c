#!/usr/bin/env bash
# The cargo tests again and again on a loaded machine, to find tests that rest on timing
# (CI runs them on 2 busy cores). Each failing test is named with how often it failed.
#
#   scripts/flakehunt.sh [--runs N] [--load L] [-- cargo test arguments]
#
#   --runs N   runs of `cargo test --workspace --all-targets` (default 4)
#   --load L   busy loops kept running meanwhile (default: one per CPU plus one)
#   after --   other cargo test arguments instead of the workspace (e.g. -- -p pvnet --test cli)
#
# Exit 0 when every run passed, 1 otherwise; the runs' output stays in target/flakehunt/.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

runs=4
load=$(($(nproc) + 1))
args=(--workspace --all-targets)
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=${2:?--runs N}; shift 2 ;;
    --load) load=${2:?--load L}; shift 2 ;;
    --) shift; args=("$@"); break ;;
    *) echo "flakehunt.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
  esac
done
case "$runs$load" in *[!0-9]*) echo "flakehunt.sh: --runs and --load take numbers" >&2; exit 2 ;; esac

out=target/flakehunt
mkdir -p "$out"
echo "flakehunt: building the tests"
cargo test "${args[@]}" --no-run >"$out/build.log" 2>&1 || { echo "build failed: $out/build.log" >&2; exit 1; }

pids=()
stop_load() { [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null; pids=(); }
trap stop_load EXIT
for _ in $(seq 1 "$load"); do
  (while :; do :; done) &
  pids+=($!)
done

bad=0
for i in $(seq 1 "$runs"); do
  log="$out/run-$i.log"
  if cargo test "${args[@]}" >"$log" 2>&1; then
    echo "run $i/$runs: ok"
  else
    bad=$((bad + 1))
    echo "run $i/$runs: FAILED ($log)"
    grep -E '^test .* FAILED$' "$log" | sed 's/^/  /'
  fi
done
stop_load

echo "flakehunt: $bad of $runs runs failed with $load busy loops"
if [ "$bad" -gt 0 ]; then
  echo "failing tests (runs):"
  cat "$out"/run-*.log | grep -E '^test .* FAILED$' | sort | uniq -c | sort -rn
  exit 1
fi
