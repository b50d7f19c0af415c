#!/bin/sh
# /init of pvnet's test guest (busybox sh). Copied into the initramfs by scripts/guest-image.sh.
#
# Kernel command line parameters (all optional):
#   pvnet.role=server|client|probe   server: iperf3 servers on ports 5201/5202 until powered off
#                                    client: ping + iperf3 against pvnet.peer, then power off
#                                    probe:  print PVNET-PROBE-OK and power off (KVM probe)
#   pvnet.ip=10.0.0.1/24     address of eth0 inside the guests' private L2 segment
#   pvnet.queues=N           ethtool -L eth0 combined N
#   pvnet.offload=on|off     off: ethtool -K eth0 tso/gso/gro/csum off
#   pvnet.peer=10.0.0.2      client: iperf3/ping target
#   pvnet.port=5201          client: iperf3 server port
#   pvnet.streams=1 pvnet.secs=10 pvnet.repeat=1 pvnet.reverse=0
#   pvnet.ping=IP,IP         client: extra addresses to ping first (flooding/learning)
#   pvnet.json=1             client: also print iperf3's JSON between markers
#   pvnet.rcvtimeout=MS      server: iperf3 --rcv-timeout on port 5202 (a client that vanished
#                            mid-test frees the server after MS ms; default iperf3's 120000)
# Console markers (one per line): PVNET-INIT, PVNET-PROBE-OK, PVNET-NET, PVNET-READY, PVNET-PING,
# PVNET-RESULT, PVNET-JSON-BEGIN/END, PVNET-ERROR, PVNET-DONE.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp /run

arg() {
  read -r cmdline </proc/cmdline
  # Word splitting on purpose: the kernel command line is space-separated words.
  for w in $cmdline; do
    case $w in "pvnet.$1="*) echo "${w#*=}"; return ;; esac
  done
  echo "$2"
}
off() { echo PVNET-DONE; sync; sleep 0.3; poweroff -f; sleep 5; }
fail() { echo "PVNET-ERROR $*"; off; }

role=$(arg role server)
echo "PVNET-INIT role=$role"
if [ "$role" = probe ]; then echo PVNET-PROBE-OK; off; fi

for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
  failover net_failover virtio_net; do
  [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko"
done
i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1)); [ $i -gt 100 ] && fail "no eth0 (virtio-net did not probe)"
  sleep 0.1
done

ip=$(arg ip 10.0.0.1/24)
queues=$(arg queues 1)
ip link set lo up
ip addr add "$ip" dev eth0 || fail "ip addr add $ip"
ethtool -L eth0 combined "$queues" || echo "PVNET-WARN ethtool -L eth0 combined $queues failed"
if [ "$(arg offload on)" = off ]; then
  ethtool -K eth0 tso off gso off gro off tx off rx off sg off >/dev/null 2>&1
fi
ip link set eth0 up || fail "ip link set eth0 up"
cur=$(ethtool -l eth0 2>/dev/null | awk '/^Current/ {c=1} c && /^Combined/ {print $2; exit}')
tso=$(ethtool -k eth0 2>/dev/null | awk '/^tcp-segmentation-offload/ {print $2}')
echo "PVNET-NET ip=$ip queues=${cur:-?} tso=${tso:-?} cpus=$(grep -c ^processor /proc/cpuinfo)"

if [ "$role" = server ]; then
  iperf3 -s -p 5201 >/dev/null 2>&1 &
  rcv=$(arg rcvtimeout "")
  iperf3 -s -p 5202 ${rcv:+--rcv-timeout "$rcv"} >/dev/null 2>&1 &
  echo PVNET-READY
  while :; do sleep 3600; done
fi

peer=$(arg peer 10.0.0.2)
# Wait for the peer: the first packets also teach pvnet the MAC addresses (ARP floods).
i=0
until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -ge 90 ] && fail "peer $peer unreachable"
done
for p in $(arg ping "" | tr , ' ') $peer; do
  loss=$(ping -c 5 -i 0.2 -W 2 "$p" 2>&1 | awk '/packet loss/ {for (i = 1; i <= NF; i++) if ($i ~ /%$/) print $i}')
  echo "PVNET-PING peer=$p loss=${loss:-?}"
done

streams=$(arg streams 1)
secs=$(arg secs 10)
repeat=$(arg repeat 1)
port=$(arg port 5201)
rev=""
[ "$(arg reverse 0)" = 1 ] && rev=-R
r=1
while [ $r -le "$repeat" ]; do
  try=0
  until iperf3 -c "$peer" -p "$port" -P "$streams" -t "$secs" $rev -J >/tmp/r.json 2>&1; do
    try=$((try + 1))
    if [ $try -ge 15 ]; then
      echo PVNET-JSON-BEGIN; cat /tmp/r.json; echo PVNET-JSON-END
      fail "iperf3 round $r failed"
    fi
    sleep 1
  done
  awk -v r=$r '
    /"sum_sent"/ {s = "sent"} /"sum_received"/ {s = "recv"}
    s != "" && /"bits_per_second"/ {v = $0; sub(/.*:/, "", v); gsub(/[ \t,]/, "", v); bps[s] = v}
    s == "sent" && /"retransmits"/ {v = $0; sub(/.*:/, "", v); gsub(/[ \t,]/, "", v); rt = v}
    /}/ {s = ""}
    END {printf "PVNET-RESULT round=%d sent_bps=%s recv_bps=%s retransmits=%s\n", r, bps["sent"], bps["recv"], rt}
  ' /tmp/r.json
  if [ "$(arg json 0)" = 1 ]; then echo PVNET-JSON-BEGIN; cat /tmp/r.json; echo PVNET-JSON-END; fi
  r=$((r + 1))
done
off
