#!/usr/bin/env bash
# Builds pvnet's fuzz targets (libFuzzer, AddressSanitizer, overflow checks) with a nightly
# toolchain and runs each one for a bounded time.
#
#   fuzz/run.sh [--secs N] [--merge] [TARGET...]
#
# Targets (default: all): net_frame, tx_ring, vhost_msgs, tap_frames (see fuzz/fuzz_targets/). Each run
# starts from the committed seeds in fuzz/corpus/TARGET (copied to target/fuzz/corpus, so the
# seeds do not grow), stops after N seconds (default 20), and prints one line:
#   fuzz TARGET: N s, RUNS runs, EXECS exec/s, cov COV, ft FT, corpus UNITS
# --merge replaces the generated seeds in fuzz/corpus/TARGET (40-hex-digit names; the named,
# hand-made seeds stay) with the smallest set of inputs of seeds + run that covers every edge
# reached (libFuzzer's -set_cover_merge), for refreshing the committed seeds.
#
# The build uses the same flags as cargo-fuzz, through plain `cargo +nightly build`, so that
# CI needs no cargo-fuzz install. `cargo fuzz run TARGET` works too where cargo-fuzz exists.
#
# Exit status: 0 no target crashed; 1 a crash, hang (timeout), or out-of-memory (the input is
# saved under target/fuzz/artifacts/TARGET/ and named in the output); 77 SKIP: no nightly
# toolchain can be had.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

secs=20 merge=0 targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --secs) secs=${2:?--secs needs a value}; shift ;;
    --merge) merge=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    -*) echo "fuzz/run.sh: unknown flag $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(net_frame tx_ring vhost_msgs tap_frames)

if ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null &&
    rustup toolchain install nightly --profile minimal >&2 2>/dev/null &&
    cargo +nightly --version >/dev/null 2>&1; then
    :
  else
    echo "SKIP: fuzz: no nightly Rust toolchain (rustup toolchain install nightly)"
    exit 77
  fi
fi

triple=$(rustc +nightly -vV | awk '/^host:/ {print $2}')
# What cargo-fuzz passes (coverage-guided libFuzzer build with AddressSanitizer).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers"
export CARGO_TARGET_DIR=$PWD/fuzz/target
echo "fuzz: building ${targets[*]} ($(cargo +nightly --version))"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
if ! cargo +nightly build -q --release --manifest-path fuzz/Cargo.toml --target "$triple" "${bins[@]}"; then
  echo "fuzz: build failed" >&2
  exit 1
fi

work=$PWD/target/fuzz
failed=0
for t in "${targets[@]}"; do
  bin=$CARGO_TARGET_DIR/$triple/release/$t
  seeds=fuzz/corpus/$t
  corpus=$work/corpus/$t
  art=$work/artifacts/$t
  mkdir -p "$seeds" "$art"
  rm -rf "$corpus" && mkdir -p "$corpus" && cp -r "$seeds"/. "$corpus"/
  log=$work/$t.log
  # -timeout: one input may take at most 20 s (a hang is a failure); the outer timeout is a
  # safety net. libFuzzer stops by itself after -max_total_time.
  extra=() asan=${ASAN_OPTIONS:-}
  # vhost_msgs runs a real Server whose port threads keep working between inputs (the next
  # device is prepared while the fuzzer moves on) and are still running at exit:
  # LeakSanitizer reports their live allocations, per input and at exit. Leaks per
  # connection are checked by the fd, thread, mapping and RSS counts of
  # backend/tests/{lifecycle,soak}.rs instead.
  if [ "$t" = vhost_msgs ]; then
    extra+=(-detect_leaks=0)
    asan=${asan:+$asan:}detect_leaks=0
  fi
  # Temporary files (vhost_msgs' sockets: a short path) are removed afterwards.
  tmp=$(mktemp -d /tmp/pvnet-fuzz.XXXXXX)
  TMPDIR=$tmp ASAN_OPTIONS=$asan timeout $((secs + 120)) "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$art/" "${extra[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
  [ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -1)
  field() { awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) {print $(i + 1); exit}}' <<<"$done_line"; }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  echo "fuzz $t: ${secs} s, ${runs:-?} runs, ${eps:-?} exec/s, cov $(field cov:), ft $(field ft:), corpus $(field corp: | cut -d/ -f1)"
  if [ "$rc" != 0 ]; then
    failed=1
    echo "fuzz $t: FAILED (rc $rc); last lines of $log:" >&2
    grep -vE '^#[0-9]+[[:space:]]' "$log" | tail -30 >&2
    ls "$art" >&2 2>/dev/null
  elif [ "$merge" = 1 ]; then
    # The smallest set of inputs that keeps every covered edge (not every feature).
    mkdir -p "$work/merged/$t" && rm -rf "${work:?}/merged/$t"/*
    TMPDIR=$tmp ASAN_OPTIONS=$asan "$bin" -set_cover_merge=1 -use_counters=0 -use_cmp=0 "$work/merged/$t" "$seeds" "$corpus" \
      >"$work/$t.merge.log" 2>&1 &&
      find "$seeds" -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete &&
      cp "$work/merged/$t"/* "$seeds"/ &&
      echo "fuzz $t: seeds now $(find "$seeds" -type f | wc -l) files"
  fi
  rm -rf "$tmp"
done
exit "$failed"
