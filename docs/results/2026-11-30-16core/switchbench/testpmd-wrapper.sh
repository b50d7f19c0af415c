#!/bin/sh
# Debian 12's dpdk-testpmd with its libraries and the four PMDs pvnet's scripts use.
d=$(dirname "$(readlink -f "$0")")
set -- -d "$d/pmds/librte_mempool_ring.so.23" -d "$d/pmds/librte_net_virtio.so.23" \
  -d "$d/pmds/librte_net_vhost.so.23" -d "$d/pmds/librte_net_null.so.23" "$@"
LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/dpdk-testpmd" "$@"
