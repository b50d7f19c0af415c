#!/bin/bash
# Quiet-machine figures on the 16-core device host (no GPU use). Output under $OUT.
D=target/devrun; B=$D/pvnet-bench
set -u
{
date -u; nproc; lscpu | grep -E "Model name|^Socket|Core\(s\)|Thread\(s\)|NUMA node\(s\)"; uname -r; grep PRETTY /etc/os-release
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
run() { local name=$1; shift; echo "=== $name: $*"; local t=$SECONDS; "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$? ($((SECONDS-t)) s)"; tail -40 "$OUT/$name.txt"; }
RW=percpu,percpu-fenced,sharded,rwlock,std,parking-lot
run rw_read $B lockbench --mode rw --locks $RW --threads 1,2,8,16 --secs 0.5 --rounds 3
run rw_cs64 $B lockbench --mode rw --locks $RW --threads 1,2,8,16 --secs 0.5 --rounds 3 --cs-bytes 64
run rw_writer $B lockbench --mode rw --locks $RW --threads 2,16 --secs 0.5 --rounds 3 --write-every-us 10000
run spin $B lockbench --mode spin --locks pvqspin,qspin,ticket,std,parking-lot --threads 1,2,8,16,32 --secs 0.5 --rounds 3
run spin_preempt $B lockbench --mode spin --locks pvqspin,qspin,std,parking-lot --threads 8,16 --secs 0.5 --rounds 3 --preempt
run grant_lookup $B grantbench --pin --threads 1,2,8,16 --sizes 64 --ops lookup --mode per-buffer --locks percpu,percpu-fenced,rwlock,std,parking-lot --secs 0.2 --rounds 3
run grant_copy $B grantbench --pin --threads 1,16 --sizes 1500,65536 --ops copy --mode per-buffer --locks percpu,rwlock --secs 0.2 --rounds 3
export PVNET_BENCH_DEBUG=1
run datapath timeout 120 $D/datapath --bench 1 3 64,1500 1,16
run datapath_strict timeout 120 $D/datapath --bench --strict 1 3 64 1,16
date -u
