#!/usr/bin/env python3
"""Render one pvnet JSON statistics report (stdin: one line per port, then the lock
counters, as printed by `pvnet --stats-format json`) as a per-port, per-queue table."""
import json
import sys


def drops(d):
    s = " ".join(f"{k}={v}" for k, v in sorted(d.items()) if v)
    return s or "-"


def main():
    cols = ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "backpressure",
            "tx_notifications", "rx_notifications", "tx_kicks", "rx_kicks")
    head = ("port", "queue", "tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "bp",
            "tx_notif", "rx_notif", "tx_kicks", "rx_kicks")
    print("%-4s %-5s %10s %13s %10s %13s %7s %9s %9s %9s %9s  drops" % head)
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if "port" in o:
            rows = [(str(i), q) for i, q in enumerate(o.get("queues", []))
                    if any(q.get(c) for c in cols)]
            rows.append(("all", o.get("total", {})))
            for name, q in rows:
                print("%-4s %-5s %10d %13d %10d %13d %7d %9d %9d %9d %9d  %s" % (
                    o["port"], name, *(q.get(c, 0) for c in cols), drops(q.get("drops", {}))))
        else:
            for key in ("grant_lock", "queue_lock"):
                if key in o:
                    st = o[key].get("stats", {})
                    nz = " ".join(f"{k}={v}" for k, v in st.items() if v)
                    print(f"{key} {o[key].get('kind', '?')}: {nz or '-'}")


if __name__ == "__main__":
    main()
