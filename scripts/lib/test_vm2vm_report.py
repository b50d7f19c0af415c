#!/usr/bin/env python3
"""Tests of vm2vm_report.py on a work directory laid out as scripts/vm2vm.sh leaves it.

  python3 -m unittest discover -s scripts/lib -p 'test_*.py'
"""
import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import unittest

import vm2vm_report

# A label that a printf-built JSON or CSV line would break: quotes, a backslash, a comma.
NASTY = 'it\'s "q" \\ back\\slash, comma'


def port(p, drops, tx=0):
    total = {"tx_frames": tx, "rx_frames": tx, "drops": drops}
    return json.dumps({"port": p, "connected": True, "total": total, "queues": [total]})


LOCKS = json.dumps({"grant_lock": {"kind": "percpu", "stats": {}},
                    "queue_lock": {"kind": "pvqspin", "stats": {"spins": 3}}})


class Vm2vmReport(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="pvnet-vm2vm-test.")
        self.addCleanup(shutil.rmtree, self.work)
        # Serial consoles end lines with \r\n.
        self.write("guest0.log", [
            "PVNET-INIT role=client", "PVNET-NET ip=10.0.0.1/24 queues=16 tso=on cpus=1",
            "PVNET-PING peer=10.0.0.2 loss=0%",
            "PVNET-RESULT round=1 sent_bps=3000000000 recv_bps=2000000000 retransmits=4",
            "PVNET-RESULT round=2 sent_bps=5000000000 recv_bps=4000000000 retransmits=1",
            "PVNET-DONE"], end="\r\n")
        self.write("guest1.log", ["PVNET-INIT role=server", "PVNET-READY"], end="\r\n")
        self.write("guest2.log", [
            "PVNET-PING peer=10.0.0.1 loss=0%",
            "PVNET-RESULT round=1 sent_bps=1000000000 recv_bps=1000000000 retransmits=0",
            "PVNET-RESULT round=2 sent_bps=1000000000 recv_bps=1000000000 retransmits=0"],
            end="\r\n")
        # An earlier report (SIGUSR1) and the exit report: only the last one counts. Drop
        # reasons as pvnet names them, one that this repository never listed among them.
        self.write("switch.log", [
            "[2026-01-01T00:00:00Z WARN  pvnet] something", port(0, {"too_short": 50}),
            port(1, {}), LOCKS,
            "[2026-01-01T00:00:01Z ERROR pvnet_backend] one error line",
            port(0, {"too_short": 1, "rx_full_timeout": 2, "chain_too_long": 3}, tx=10),
            port(1, {"no_dest": 4, "flood_full": 0}, tx=20),
            port(2, {"spoofed_mac": 5}), LOCKS])

    def write(self, name, lines, end="\n"):
        with open(os.path.join(self.work, name), "w", encoding="utf-8", newline="") as f:
            f.write("".join(line + end for line in lines))

    def run_report(self, fmt, *extra, clients="0 2", repeat=2):
        args = ["--work", self.work, "--format", fmt, "--clients", clients,
                "--repeat", str(repeat), "--label", NASTY, "--switch", "pvnet",
                "--grant-lock", "percpu", "--queue-lock", "pvqspin", "--queues", "16",
                "--vcpus", "1", "--guests", "3", "--streams", "1", "--secs", "3",
                "--offload", "on", "--accel", "tcg",
                "--flow-control", "rx_full_timeout flood_full no_dest", *extra]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = vm2vm_report.main(args)
        return rc, out.getvalue(), err.getvalue()

    def test_json_is_valid_for_any_label_and_counts_drops_by_pvnets_names(self):
        rc, out, _ = self.run_report("json")
        self.assertEqual(rc, 0)
        self.assertEqual(len(out.splitlines()), 1)
        o = json.loads(out)
        self.assertEqual(o["label"], NASTY)
        self.assertEqual(o["status"], "ok")
        # Per round: 2 + 1 and 4 + 1 Gbit/s over both clients; the median of 3 and 5.
        self.assertEqual(o["gbps_median"], 4.0)
        self.assertEqual(o["retransmits"], 5)
        self.assertEqual(o["ping_loss"], "10.0.0.2:0% 10.0.0.1:0%")
        self.assertEqual(o["guest_queues"], 16)
        # The exit report only: bad input 1 + 3 + 5 (chain_too_long and spoofed_mac were
        # never listed anywhere here), flow control 2 + 4.
        self.assertEqual(o["bad_input_drops"], 9)
        self.assertEqual(o["flow_control_drops"], 6)
        self.assertEqual(o["drops"], {"too_short": 1, "rx_full_timeout": 2,
                                      "chain_too_long": 3, "no_dest": 4, "spoofed_mac": 5})
        self.assertEqual(o["log_errors"], 1)
        self.assertEqual(len(o["pvnet_stats"]), 4)
        self.assertEqual([r["gbps"] for r in o["rounds"]], [2.0, 4.0, 1.0, 1.0])
        self.assertIs(o["reverse"], False)
        # scripts/vm-smoke.sh reads fields as "key":value.
        self.assertIn('"bad_input_drops":9', out)

    def test_csv_quotes_the_label(self):
        rc, out, _ = self.run_report("csv")
        self.assertEqual(rc, 0)
        rows = list(csv.reader(io.StringIO(out)))
        self.assertEqual(rows[0][0], "label")
        self.assertEqual(len(rows), 5)
        for r in rows[1:]:
            self.assertEqual(len(r), 16)
            self.assertEqual(r[0], NASTY)
            self.assertEqual(r[15], "ok")
        self.assertEqual(rows[1][13], "2.0000")

    def test_text(self):
        rc, out, _ = self.run_report("text", "--reverse")
        self.assertEqual(rc, 0)
        self.assertTrue(out.startswith(f"== {NASTY}: pvnet, 3 guests x 1 vCPU, 16 queue pairs"))
        self.assertIn("x 2 round(s), reverse\n", out)
        self.assertIn("  median: 4.000 Gbit/s   retransmits: 5", out)
        self.assertIn("  pvnet: bad-input drops 9, flow-control drops 6, ERROR log lines 1", out)
        self.assertIn("queue_lock pvqspin: spins=3", out)

    def test_failures_exit_1_with_the_reason(self):
        rc, out, err = self.run_report("json", repeat=3)
        self.assertEqual(rc, 1)
        self.assertEqual(json.loads(out)["status"], "failed: missing iperf3 results")
        self.assertIn("vm2vm: FAILED (missing iperf3 results)", err)
        rc, out, err = self.run_report("json", "--failed", 'guest "0" error')
        self.assertEqual(rc, 1)
        self.assertEqual(json.loads(out)["status"], 'failed: guest "0" error')
        os.remove(os.path.join(self.work, "switch.log"))
        for name in ("guest0.log", "guest2.log"):
            self.write(name, ["PVNET-RESULT round=1 sent_bps=0 recv_bps=0 retransmits=0"])
        rc, out, err = self.run_report("json", repeat=1)
        self.assertEqual(rc, 1)
        o = json.loads(out)
        self.assertEqual(o["status"], "failed: zero throughput")
        self.assertIsNone(o["pvnet_stats"])
        rc, out, _ = self.run_report("text", repeat=1)
        self.assertIn("(no statistics in pvnet's output)", out)


if __name__ == "__main__":
    unittest.main()
