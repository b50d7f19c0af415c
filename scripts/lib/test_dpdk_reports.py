#!/usr/bin/env python3
"""Tests of scripts/lib/dpdk.sh's report helpers on testpmd output as the client prints it.

  python3 -m unittest discover -s scripts/lib -p 'test_*.py'

The helpers are shell functions: each test sources common.sh and dpdk.sh in bash and feeds a
client log written the way testpmd prints "show port stats all".
"""
import os
import subprocess
import tempfile
import unittest

LIB = os.path.dirname(os.path.abspath(__file__))


def port_block(port, rx_packets, rx_pps):
    """One port's "show port stats" block (the lines dpdk_port_reports reads)."""
    return (
        f"  ######################## NIC statistics for port {port}  ########################\n"
        f"  RX-packets: {rx_packets}        RX-missed: 0          RX-bytes:  {rx_packets * 64}\n"
        "  RX-errors: 0\n"
        "  RX-nombuf:  0\n"
        f"  TX-packets: {rx_packets}        TX-errors: 0          TX-bytes:  {rx_packets * 64}\n"
        "\n"
        "  Throughput (since last show)\n"
        f"  Rx-pps:      {rx_pps}          Rx-bps:   {rx_pps * 512}\n"
        f"  Tx-pps:      {rx_pps}          Tx-bps:   {rx_pps * 512}\n"
    )


def client_log(rates):
    """A log of len(rates) reports; rates[k] = (port 0 pps, port 1 pps) of report k."""
    out, total = [], [0, 0]
    for r in rates:
        for p in (0, 1):
            total[p] += r[p]
            out.append(port_block(p, total[p], r[p]))
    return "".join(out)


def bash(script, log_text):
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
        f.write(log_text)
        path = f.name
    try:
        cmd = f'. "{LIB}/common.sh"; . "{LIB}/dpdk.sh"; LOG="{path}"; {script}'
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)


RATES = 'dpdk_port_reports "$LOG" | dpdk_port_rates 1 3'
ONE_WAY = RATES + " | dpdk_one_way"


class PortRates(unittest.TestCase):
    def test_rates_average_the_steady_reports_per_port(self):
        # Report 0 (start) and 1 (warm-up) are left out; 2..4 averaged; 5 is past the window.
        log = client_log([(0, 0), (9e6, 1e6), (4e6, 5e6), (6e6, 5e6), (5e6, 5e6), (1, 1)])
        r = bash(RATES, log)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split("\n")[:2], ["0 5.000000", "1 5.000000"])

    def test_a_balanced_closed_loop_is_not_one_way(self):
        log = client_log([(0, 0), (5e6, 5e6), (5.5e6, 4.5e6), (6e6, 4e6), (5e6, 5e6)])
        self.assertNotEqual(bash(ONE_WAY, log).returncode, 0)

    def test_a_loop_with_one_direction_stopped_is_one_way(self):
        # The run of 2026-12-01 that reported 3.5 Mpps: port 0 stuck, port 1 at 3.2 Mpps.
        log = client_log([(0, 0), (0, 3e6), (0, 3.2e6), (0, 3.2e6), (0, 3.3e6)])
        self.assertEqual(bash(ONE_WAY, log).returncode, 0)

    def test_a_slow_but_running_direction_is_not_one_way(self):
        log = client_log([(0, 0), (2e6, 6e6), (2e6, 6e6), (2e6, 6e6), (2e6, 6e6)])
        self.assertNotEqual(bash(ONE_WAY, log).returncode, 0)

    def test_one_port_alone_is_not_one_way(self):
        self.assertNotEqual(bash('printf "0 5.0\\n" | dpdk_one_way', "").returncode, 0)


def fwd_stats(cycles_per_packet, mhz):
    """The end of testpmd's forwarding statistics with --record-core-cycles (as 22.11 prints)."""
    return (
        "  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++\n"
        "  RX-packets: 56907040       RX-dropped: 0             RX-total: 56907040\n"
        "  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++\n"
        "\n"
        f"  CPU cycles/packet={cycles_per_packet} (total cycles=10729412597 / total mac "
        f"packets=56907040) at {mhz} MHz Clock\n"
        "\n"
        "Done.\n"
    )


class Busy(unittest.TestCase):
    def test_the_last_report_s_cycles_per_packet_and_clock(self):
        # The learning bursts print their own (few packets) before the measured run's.
        log = fwd_stats("1004.28", 2300) + "testpmd> stop\n" + fwd_stats("188.54", 2300)
        r = bash('testpmd_busy "$LOG"', log)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "188.54 2300\n")

    def test_nothing_without_record_core_cycles(self):
        r = bash('testpmd_busy "$LOG"', "  RX-packets: 5 RX-dropped: 0\nDone.\n")
        self.assertEqual(r.stdout, "")


class PvnetTotals(unittest.TestCase):
    def test_sums_past_two_to_the_31_stay_integers(self):
        # awk's default output format wrote such sums as 1.1567e+10, which $((...)) rejects.
        lines = (
            '{"port":0,"total":{"tx_frames":3000000000,"busy_ns":11567000000,"drops":{"no_dest":1}}}\n'
            '{"port":1,"total":{"tx_frames":1,"busy_ns":5,"drops":{"no_dest":2}}}\n'
        )
        r = bash('pvnet_totals < "$LOG"', lines)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(
            r.stdout.split("\n")[:3],
            ["busy_ns 11567000005", "drop_no_dest 3", "tx_frames 3000000001"],
        )


if __name__ == "__main__":
    unittest.main()
