"""A device that fell behind while the others pruned never uploads a snapshot
nobody can load.

b syncs, goes silent past --device-expiry, a writes more and a snapshot,
the server prunes to it. b then runs ``recsync snapshot`` before syncing:
its snapshot covers a's shard only below the server's start. Uploaded, it
would be the newest and (with --snapshots-kept 1) push a's usable one out,
so a new device and b itself could no longer sync a's records (held back,
"an older snapshot than its index allows") until someone wrote another.
The client refuses to upload it; the new device and b start from a's.
"""

import json
import time
import unittest

from device import Device, make_devices, server_url
from harness import Client, ServerProcess


class StaleSnapshot(unittest.TestCase):
    def prune(self, server):
        c = Client(server.port, timeout=30)
        try:
            r = c.post("/api/v1/test/prune", {})
        finally:
            c.close()
        self.assertEqual(r.status, 200, r)
        return r.json

    def test_behind_device_does_not_upload_a_snapshot_below_the_start(self):
        server = ServerProcess(self, hooks=True, args=["--device-expiry", "1s", "--snapshots-kept",
                                                       "1", "--prune-interval-ms", "0"])
        a, b = make_devices(self, server, 2, user="stale-user", password="pw-stale-123456")
        for k in range(3):
            a.run("kv", "set", "n", "k%d" % k, "v%d" % k)
        a.run("sync")
        b.run("sync")
        for k in range(3, 5):
            a.run("kv", "set", "n", "k%d" % k, "v%d" % k)
        a.run("sync")
        a.run("snapshot", "kv")
        time.sleep(1.3)  # past --device-expiry: neither device holds the floor
        self.assertEqual(self.prune(server)["records_pruned"], 5)

        out = b.run("snapshot", "kv")
        self.assertIn("uploaded 0 snapshots", out.text)
        self.assertIn("below where the server starts it", out.err.decode())
        self.assertEqual(self.prune(server)["snapshots_deleted"], 0)

        d = Device(self, "late", key=a.key_export())
        d.login(server_url(server), "stale-user", "pw-stale-123456")
        for dev in (d, b):
            report = json.loads(dev.run("sync", "--json").text)
            self.assertEqual(report.get("held", []), [], report)
            self.assertEqual(dev.run("kv", "get", "n", "k4").text.strip(), "v4")


if __name__ == "__main__":
    unittest.main()
