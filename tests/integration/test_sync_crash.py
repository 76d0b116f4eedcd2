"""The client SIGKILLed at 20+ random points of a large pull: after each kill
`verify` passes (every record opens, every shard is contiguous), the store
never goes backwards, and the next sync finishes with a store identical to
the source."""

import os
import random
import time
import unittest

from device import Device, make_devices, server_url
from harness import ServerProcess

RECORDS = 6000
PAGE = 40
KILLS = 22


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
            time.sleep(rng.uniform(0.0, span * 0.25))
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
        self.assertGreaterEqual(kills, KILLS)
        self.assertGreaterEqual(mid_pull, KILLS // 4, "too few kills landed mid-pull")
        r = b.sync(page=PAGE)
        self.assertIn(r["outcome"], ("pull", "noop"))
        b.verify()
        self.assertEqual([row for row in b.records() if row[1] == "big"], source)
        self.assertEqual(b.sync()["outcome"], "noop")


def a_user(device):
    return device.status()["user"]


if __name__ == "__main__":
    unittest.main()
