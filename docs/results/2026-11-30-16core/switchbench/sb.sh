#!/bin/bash
# scripts/switchbench.sh on the 16-core host with the carried DPDK 22.11 testpmd bundle.
mkdir -p target/release && cp target/devrun/pvnet-bench target/release/pvnet-bench
nproc; grep PRETTY /etc/os-release
export PVNET_TESTPMD=$PWD/target/devrun/dpdk/testpmd
scripts/switchbench.sh --no-build --pvnet-bin target/devrun/pvnet --sizes 64,1500 --pairs 1,2,8 \
  --loops closed --dests learned --rounds 3 --secs 4 --warmup 1 --idle 5 --out "$OUT/sb" 2>&1 | tee "$OUT/sb.log" | grep -v "^\[.*round\|^\[.*  pvnet\|^\[.*  testpmd"
