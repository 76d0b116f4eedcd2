"""The client SIGKILLed at 20+ random points of a large pull: after each kill
`verify` passes (every record opens, every shard is contiguous), the store
never goes backwards, and the next sync finishes with a store identical to
the source. The same for a large push (the server only ever holds whole
pages, and a fresh device pulls exactly the source), and for a bulk
`append --lines` (each kill leaves all of a batch or none of it)."""

import os
import random
import signal
import subprocess
import sys
import time
import unittest

from harness import recsync_bin

from device import Device, make_devices, server_url
from harness import ServerProcess

# 60 pages of 40: every kill lands somewhere in a pull or push of 60 page
# transactions (what is checked holds page by page: whole pages only, never
# backwards, the resume identical), and the test fails at once against a
# client that commits a pulled page record by record. 6000 records (150
# pages) spent 2.5x the time on the same checks.
RECORDS = 2400
PAGE = 40
KILLS = 22
BULK = 8000  # lines per `append --lines` batch killed (one transaction each)
# In a ThreadSanitizer build (tests/CMakeLists.txt sets RS_TEST_SANITIZER) the batch is 2,000
# lines: `append` runs on one thread (nothing for TSan to watch but the same code) at 5-15x
# ASan's cost, so its kills still land inside the batch's transaction (printed). The pull and
# push (threads) keep their sizes.
if os.environ.get("RS_TEST_SANITIZER") == "thread":
    BULK = 2000


class ClientKilledMidPull(unittest.TestCase):
    def test_sigkill_at_random_points_of_a_pull(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        a.append_lines("big", ["payload-%05d-%s" % (i, "x" * (i % 50)) for i in range(RECORDS)])
        self.assertEqual(a.sync()["uploaded"], RECORDS)
        source = [row for row in a.records() if row[1] == "big"]
        key = a.key_export()

        # How long an uninterrupted pull takes, to spread the kills over it.
        probe = Device(self, "probe", key=key)
        probe.login(server_url(server), a_user(a), a.password)
        t0 = time.monotonic()
        self.assertEqual(probe.sync(page=PAGE)["downloaded"], RECORDS)
        span = time.monotonic() - t0

        rng = random.Random(os.environ.get("RS_TEST_SEED", "client-kill"))
        kills = mid_pull = 0
        have = 0
        for _ in range(KILLS * 4):
            if kills >= KILLS:
                break
            p = b.popen_sync("--page-records", str(PAGE))
            time.sleep(rng.uniform(span * 0.05, span * 0.6))
            if p.poll() is None:
                p.kill()
                kills += 1
            p.communicate(timeout=60)
            b.verify()
            rows = len(b.records())
            self.assertGreaterEqual(rows, have, "the store went backwards after a kill")
            if 0 < rows < RECORDS and rows % PAGE == 0:
                mid_pull += 1
            self.assertEqual(rows % PAGE, 0, "a partial page was kept: %d records" % rows)
            have = rows
            if rows == RECORDS:
                # Pulled everything: start over with a fresh store to kill again.
                b = Device(self, "b%d" % kills, key=key)
                b.login(server_url(server), a_user(a), a.password)
                have = 0
        print("\n  pull: %d kills, %d mid-pull, span %.2fs" % (kills, mid_pull, span), file=sys.stderr)
        self.assertGreaterEqual(kills, KILLS)
        self.assertGreaterEqual(mid_pull, KILLS // 4, "too few kills landed mid-pull")
        r = b.sync(page=PAGE)
        self.assertIn(r["outcome"], ("pull", "noop"))
        b.verify()
        self.assertEqual([row for row in b.records() if row[1] == "big"], source)
        self.assertEqual(b.sync()["outcome"], "noop")


class ClientKilledMidPushOrAppend(unittest.TestCase):
    def test_sigkill_at_random_points_of_a_push(self):
        server = ServerProcess(self)
        lines = ["push-%05d-%s" % (i, "y" * (i % 60)) for i in range(RECORDS)]
        rng = random.Random(os.environ.get("RS_TEST_SEED", "client-kill-push"))

        # The length of an uninterrupted push, to spread the kills over it.
        probe, = make_devices(self, server, 1, names=["probe"])
        probe.append_lines("big", lines)
        t0 = time.monotonic()
        self.assertEqual(probe.sync(page=PAGE)["uploaded"], RECORDS)
        span = time.monotonic() - t0

        def fresh_source():
            d, = make_devices(self, server, 1, names=["a"])
            d.append_lines("big", lines)
            return d, [row for row in d.records() if row[1] == "big"]

        def check_pulled(d, source):
            """A fresh device of the same user pulls exactly the source."""
            b = Device(self, "b", key=d.key_export())
            b.login(server_url(server), a_user(d), d.password)
            self.assertEqual(b.sync()["downloaded"], RECORDS)
            self.assertEqual([row for row in b.records() if row[1] == "big"], source)

        a, source = fresh_source()
        kills = mid_push = 0
        remote = 0
        for _ in range(KILLS * 4):
            if kills >= KILLS:
                break
            p = a.popen_sync("--page-records", str(PAGE))
            time.sleep(rng.uniform(span * 0.05, span * 0.6))
            if p.poll() is None:
                p.kill()
                kills += 1
            p.communicate(timeout=60)
            a.verify()
            self.assertEqual([row for row in a.records() if row[1] == "big"], source)
            st = a.status(timeout_ms=10000)
            ends = [sh["remote_end"] for sh in st["shards"] if sh["tag"] == "big" and sh["own"]]
            now = ends[0] if ends and ends[0] is not None else 0
            self.assertGreaterEqual(now, remote, "the server's shard went backwards")
            self.assertEqual(now % PAGE, 0, "the server kept a partial page: end %d" % now)
            if 0 < now < RECORDS:
                mid_push += 1
            remote = now
            if remote == RECORDS:
                # Pushed everything: check it, then kill pushes of a fresh device.
                check_pulled(a, source)
                a, source = fresh_source()
                remote = 0
        print("\n  push: %d kills, %d mid-push, span %.2fs" % (kills, mid_push, span), file=sys.stderr)
        self.assertGreaterEqual(kills, KILLS)
        self.assertGreaterEqual(mid_push, KILLS // 4, "too few kills landed mid-push")
        a.sync(page=PAGE)
        self.assertEqual(a.sync()["outcome"], "noop")
        check_pulled(a, source)

    def test_sigkill_during_bulk_appends_keeps_whole_batches(self):
        a = Device(self, "a")
        batch = BULK
        data = "".join("line-%06d-%s\n" % (i, "z" * (i % 80)) for i in range(batch)).encode()
        t0 = time.monotonic()
        a.run("append", "bulk", "--lines", input=data)
        span = time.monotonic() - t0
        have = batch
        rng = random.Random(os.environ.get("RS_TEST_SEED", "client-kill-append"))
        killed = 0
        for _ in range(12):
            p = subprocess.Popen([recsync_bin(), "--dir", a.dir, "append", "bulk", "--lines"],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.addCleanup(kill_quietly, p)
            try:
                p.stdin.write(data)
                p.stdin.close()
            except BrokenPipeError:
                pass
            time.sleep(rng.uniform(0.0, span))
            if p.poll() is None:
                p.kill()
                killed += 1
            p.wait(timeout=60)
            a.verify()
            rows = len(a.records())
            self.assertIn(rows, (have, have + batch), "a kill left part of a batch")
            have = rows
        print("\n  append: %d of 12 kills during a batch of %d, span %.2fs" % (killed, batch, span),
              file=sys.stderr)
        self.assertGreaterEqual(killed, 3, "too few kills landed during an append")
        self.assertEqual(a.run("verify").rc, 0)


def kill_quietly(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    if p.stderr:
        p.stderr.close()


def a_user(device):
    return device.status()["user"]


if __name__ == "__main__":
    unittest.main()
