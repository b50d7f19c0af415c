#!/usr/bin/env python3
"""The results of one scripts/vm2vm.sh run, read from its work directory and printed as
text, one JSON object or CSV rows.

  vm2vm_report.py --work DIR --format text|json|csv --clients "0 2" --repeat N
                  --label NAME --switch pvnet|testpmd [--grant-lock K] [--queue-lock K]
                  --queues N --vcpus N --guests N --streams N --secs N [--reverse]
                  --offload on|off --accel kvm|tcg [--flow-control "REASON ..."]
                  [--failed REASON]

Reads the guests' consoles (DIR/guest<i>.log: PVNET-RESULT, PVNET-NET and PVNET-PING lines
of scripts/lib/guest-init.sh) and the switch's output (DIR/switch.log: pvnet's JSON
statistics, `--stats-format json`). Every string goes through the json and csv modules, so
any label is printed correctly.

pvnet's drops are split by reason as pvnet's own statistics name them (each port's
"total"."drops" object): the reasons given with --flow-control are flow control (a full
receive ring, no destination); every other reason is a frame that bad guest input made
undeliverable, so a reason added to pvnet counts as bad input until it is listed.

Exit status: 0 when the run passed (the iperf3 results of every client and round, a median
above zero, no --failed reason); 1 otherwise, with the reason on stderr.
"""
import argparse
import csv
import io
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stats_table  # noqa: E402  (beside this file)


def read_lines(path):
    """The file's lines without line ends (serial consoles end lines with \\r\\n); [] when
    the file is missing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\r\n").replace("\r", "") for line in f]
    except FileNotFoundError:
        return []


def fields(line):
    """key=value tokens of a marker line, as a dict."""
    return dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)


def number(s, default=0.0):
    try:
        return float(s)
    except (TypeError, ValueError):
        return default


def iperf_rows(work, clients):
    """One row per client and iperf3 round: (client, round, recv_bps, sent_bps, retransmits)."""
    rows = []
    for c in clients:
        for line in read_lines(os.path.join(work, f"guest{c}.log")):
            if line.startswith("PVNET-RESULT"):
                kv = fields(line)
                rows.append((c, int(number(kv.get("round"))), number(kv.get("recv_bps")),
                             number(kv.get("sent_bps")), int(number(kv.get("retransmits")))))
    return rows


def guest_queues(work):
    """Queue pairs guest 0's driver uses (its PVNET-NET line), 0 when unknown."""
    for line in read_lines(os.path.join(work, "guest0.log")):
        if line.startswith("PVNET-NET"):
            return int(number(fields(line).get("queues")))
    return 0


def ping_loss(work):
    """"PEER:LOSS" per PVNET-PING line of every guest, space-separated."""
    out = []
    names = sorted(n for n in os.listdir(work) if re.fullmatch(r"guest\d+\.log", n))
    for n in names:
        for line in read_lines(os.path.join(work, n)):
            if line.startswith("PVNET-PING"):
                kv = fields(line)
                out.append(f"{kv.get('peer', '?')}:{kv.get('loss', '?')}")
    return " ".join(out)


def median(values):
    v = sorted(values)
    if not v:
        return 0.0
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def last_report(lines):
    """pvnet's last statistics report: the JSON objects from the last one of port 0 on."""
    objs = []
    for line in lines:
        if line.startswith("{"):
            try:
                objs.append(json.loads(line))
            except ValueError:
                continue
    starts = [i for i, o in enumerate(objs) if isinstance(o, dict) and o.get("port") == 0]
    return objs[starts[-1]:] if starts else []


def drop_totals(report):
    """Drops per reason summed over the ports' "total" objects, reasons as pvnet names them."""
    totals = {}
    for o in report:
        if "port" in o:
            for reason, n in o.get("total", {}).get("drops", {}).items():
                totals[reason] = totals.get(reason, 0) + int(n)
    return totals


def log_errors(lines):
    """ERROR lines in the switch's log (its JSON statistics lines aside)."""
    pat = re.compile(r"(^|[ \[])ERROR[ \]]")
    return sum(1 for line in lines if not line.startswith("{") and pat.search(line))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.add_argument("--clients", default="0", help="client guest indexes, space-separated")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--label", default="")
    p.add_argument("--switch", default="pvnet")
    p.add_argument("--grant-lock", default="")
    p.add_argument("--queue-lock", default="")
    for n in ("queues", "vcpus", "guests", "streams", "secs"):
        p.add_argument(f"--{n}", type=int, required=True)
    p.add_argument("--reverse", action="store_true")
    p.add_argument("--offload", default="on")
    p.add_argument("--accel", default="")
    p.add_argument("--flow-control", default="", help="drop reasons that are flow control")
    p.add_argument("--failed", default="", help="why the run failed (empty: it did not)")
    return p.parse_args(argv)


def collect(a):
    """Everything the report prints, as one dict in the JSON object's key order."""
    clients = [int(c) for c in a.clients.split()]
    rows = iperf_rows(a.work, clients)
    failed = a.failed
    if not failed and len(rows) < a.repeat * len(clients):
        failed = "missing iperf3 results"
    per_round = {}
    for _, rnd, recv, _, _ in rows:
        per_round[rnd] = per_round.get(rnd, 0.0) + recv
    med = round(median([v / 1e9 for v in per_round.values()]), 3)
    if not failed and med <= 0:
        failed = "zero throughput"
    switch_log = read_lines(os.path.join(a.work, "switch.log"))
    report = last_report(switch_log) if a.switch == "pvnet" else []
    drops = drop_totals(report)
    flow = set(a.flow_control.split())
    return {
        "label": a.label, "switch": a.switch, "grant_lock": a.grant_lock,
        "queue_lock": a.queue_lock, "queues": a.queues, "vcpus": a.vcpus, "guests": a.guests,
        "streams": a.streams, "secs": a.secs, "reverse": a.reverse, "offload": a.offload,
        "accel": a.accel, "status": f"failed: {failed}" if failed else "ok",
        "gbps_median": med, "retransmits": sum(r[4] for r in rows),
        "ping_loss": ping_loss(a.work), "guest_queues": guest_queues(a.work),
        "bad_input_drops": sum(n for r, n in drops.items() if r not in flow),
        "flow_control_drops": sum(n for r, n in drops.items() if r in flow),
        "drops": {r: n for r, n in drops.items() if n},
        "log_errors": log_errors(switch_log) if a.switch == "pvnet" else 0,
        "rounds": [{"guest": c, "round": rnd, "gbps": round(recv / 1e9, 4),
                    "sent_gbps": round(sent / 1e9, 4), "retransmits": rt}
                   for c, rnd, recv, sent, rt in rows],
        "pvnet_stats": report or None,
        # Not printed: for the text format and the exit status.
        "_failed": failed, "_switch_log": switch_log, "_repeat": a.repeat,
    }


def render_json(r):
    return json.dumps({k: v for k, v in r.items() if not k.startswith("_")},
                      separators=(",", ":"))


def render_csv(r):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["label", "switch", "grant_lock", "queue_lock", "queues", "vcpus", "guests",
                "streams", "secs", "offload", "accel", "guest", "round", "gbps",
                "retransmits", "status"])
    pre = [r[k] for k in ("label", "switch", "grant_lock", "queue_lock", "queues", "vcpus",
                          "guests", "streams", "secs", "offload", "accel")]
    for x in r["rounds"]:
        w.writerow(pre + [x["guest"], x["round"], f"{x['gbps']:.4f}", x["retransmits"],
                          r["status"]])
    return out.getvalue().rstrip("\n")


def render_text(r):
    out = [f"== {r['label']}: {r['switch']}, {r['guests']} guests x {r['vcpus']} vCPU, "
           f"{r['queues']} queue pairs, offload {r['offload']}, accel {r['accel']}, "
           f"{r['streams']} stream(s) x {r['secs']}s x {r['_repeat']} round(s)"
           + (", reverse" if r["reverse"] else "")]
    for x in r["rounds"]:
        out.append(f"  guest {x['guest']} round {x['round']}: {x['gbps']:7.3f} Gbit/s received, "
                   f"{x['sent_gbps']:7.3f} sent, {x['retransmits']} retransmits")
    out.append(f"  median: {r['gbps_median']:.3f} Gbit/s   retransmits: {r['retransmits']}   "
               f"ping loss: {r['ping_loss'] or '?'}   guest queues: {r['guest_queues']}   "
               f"status: {r['status']}")
    if r["switch"] == "pvnet":
        out.append(f"  pvnet: bad-input drops {r['bad_input_drops']}, flow-control drops "
                   f"{r['flow_control_drops']}, ERROR log lines {r['log_errors']}")
        if r["pvnet_stats"]:
            lines = [json.dumps(o) for o in r["pvnet_stats"]]
            out += ["    " + t for t in stats_table.table(lines)]
        else:
            out.append("    (no statistics in pvnet's output)")
            out += ["    " + t for t in r["_switch_log"][-5:]]
    return "\n".join(out)


def main(argv=None):
    a = parse_args(argv)
    r = collect(a)
    print({"text": render_text, "json": render_json, "csv": render_csv}[a.format](r))
    if r["_failed"]:
        print(f"vm2vm: FAILED ({r['_failed']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
