#!/bin/bash
# Datapath scaling on the 16-core host: worker threads per port against queue pairs.
D=target/devrun
export PVNET_BENCH_DEBUG=1
run() { local name=$1; shift; echo "=== $name: $*"; local t=$SECONDS; timeout 150 $D/datapath --bench "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$? ($((SECONDS-t)) s)"; grep -E "^\| |queue lock|ns/frame" "$OUT/$name.txt" | sed 's/("pvnet-memguard", 0), ("pvnet-port0", 0), ("pvnet-port1", 0), //; s/"pvnet-memguard": 0.0, "pvnet-port0": 0.0, "pvnet-port1": 0.0, //'; }
nproc
run auto 1 3 64 1,2,4,8,16 --locks=percpu+pvqspin
run w1 1 3 64 1,4,16 --workers=1 --locks=percpu+pvqspin
run w2 1 3 64 2,4,16 --workers=2 --locks=percpu+pvqspin
run w16 1 3 64 16 --workers=16 --locks=percpu+pvqspin,rwlock+qspin,rwlock+pvqspin,percpu+qspin
