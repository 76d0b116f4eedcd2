"""bench/capacity still runs: a tiny step (20 users of 3 devices, every
device holding an event stream, 2 s of the mix), the paced push phase and
a storm of every device's no-op sync, on SQLite, against the build's own
recsyncd and bench_capacity. Every JSON line must carry every field with a
sane value: syncs of each kind happened without errors, every stream
opened and saw propagation, and the server's RSS, descriptors and CPU were
read from /proc. About 15 s."""

import json
import os
import signal
import subprocess
import unittest

from harness import REPO, recsyncd_bin

KINDS = ("noop", "incr_push", "incr_pull", "full", "live")
PER_KIND = ("n", "errors", "p50_ms", "p99_ms", "max_ms")
COMMON = ("backend", "phase", "users", "devices", "writers", "streams", "stream_cap", "seconds",
          "syncs", "syncs_per_s", "records_per_s", "server_rss_mib", "server_hwm_mib",
          "server_fds", "server_cpu_ms", "server_cpu_ms_per_1k_syncs", "stream_kib", "generator_cpu_ms",
          "target_per_s", "missed", "loadavg")


class CapacitySmoke(unittest.TestCase):
    def run_capacity(self):
        build = os.path.dirname(os.path.dirname(os.path.abspath(recsyncd_bin())))
        if not os.path.exists(os.path.join(build, "bin", "bench_capacity")):
            self.skipTest("no %s/bin/bench_capacity in this build" % build)
        env = dict(os.environ, BENCH_BUILD_DIR=build, CAP_BUILD="0", CAP_BACKENDS="sqlite",
                   CAP_STEPS="20", CAP_SECONDS="2", CAP_WRITERS="10", CAP_WORKERS="4",
                   CAP_INCR_PCT="20", CAP_FULL_PERMILLE="50", CAP_INCR_RATE="20", CAP_INCR_S="2",
                   CAP_STORM_DEVICES="60", CAP_STORM_S="2")
        p = subprocess.Popen([os.path.join(REPO, "bench", "capacity")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the script's own group: it, recsyncd, the generator
            out, err = p.communicate()
            self.fail("bench/capacity did not finish in 90 s: %s" % err.decode()[-2000:])
        self.assertEqual(p.returncode, 0, err.decode()[-3000:])
        return [json.loads(l) for l in out.decode().splitlines() if l.startswith("{")], err.decode()

    def test_every_field_sane(self):
        lines, err = self.run_capacity()
        env = [l for l in lines if l["bench"] == "capacity_env"]
        self.assertEqual(len(env), 1, lines)
        self.assertGreater(int(env[0]["nofile"]), 0)
        phases = {l["phase"]: l for l in lines if l["bench"] == "capacity"}
        self.assertEqual(sorted(phases), ["incr", "mix", "storm"], lines)
        for name, l in phases.items():
            for f in COMMON:
                self.assertIn(f, l, name)
            self.assertEqual(l["backend"], "sqlite")
            self.assertEqual(l["users"], 20)
            self.assertEqual(l["devices"], 60)
            self.assertGreater(l["server_rss_mib"], 1, name)
            self.assertGreater(l["server_fds"], 3, name)
            self.assertGreater(l["server_cpu_ms"], 0, name)
            self.assertGreater(l["syncs"], 0, name)
            self.assertGreater(l["syncs_per_s"], 0, name)
            self.assertEqual(len(l["loadavg"]), 3)

        mix = phases["mix"]
        self.assertEqual(mix["streams"], 60, err[-2000:])
        self.assertGreaterEqual(mix["server_fds"], 60, "every stream is a descriptor of the server")
        self.assertGreater(mix["stream_kib"], 0)
        self.assertGreater(mix["records_per_s"], 0)
        for k in KINDS:
            for f in PER_KIND:
                self.assertIn("%s_%s" % (k, f), mix)
            self.assertEqual(mix[k + "_errors"], 0, (k, err[-2000:]))
            self.assertGreater(mix[k + "_n"], 0, k)
            self.assertGreater(mix[k + "_p50_ms"], 0, k)
            self.assertLessEqual(mix[k + "_p50_ms"], mix[k + "_p99_ms"], k)
            self.assertLessEqual(mix[k + "_p99_ms"], mix[k + "_max_ms"], k)
            self.assertLess(mix[k + "_max_ms"], 60000, k)

        incr = phases["incr"]
        self.assertEqual(incr["incr_push_errors"], 0)
        self.assertGreater(incr["incr_push_n"], 10, "20/s for 2 s")
        self.assertGreater(incr["live_n"], 0, "pushes reach the other devices' streams")

        storm = phases["storm"]
        self.assertEqual(storm["storm_n"], 60, "every device synced once")
        self.assertEqual(storm["storm_errors"], 0)
        self.assertEqual(storm["missed"], 0, "60 syncs paced over 2 s")
        self.assertGreater(storm["target_per_s"], 0)
        self.assertEqual(storm["streams"], 0, "streams are closed before the storm")
        self.assertLessEqual(storm["storm_p50_ms"], storm["storm_p99_ms"])


if __name__ == "__main__":
    unittest.main()
