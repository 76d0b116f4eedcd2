"""recsyncd SIGKILLed under load: 20 devices of one user push and pull
(real `recsync` processes, WORKERS at a time) while the server is killed
and restarted KILLS times at seeded random moments. Every request goes
through an honest faultproxy.FaultProxy (faults off) that records which
POST /api/v1/records the server answered 200 and with which records.
Afterwards (server up): each device syncs until it succeeds; every
acknowledged record is on every device and on the server, none twice, and
each device's shard on the server ends exactly at what it wrote.
RS_TEST_SEED changes the seed, RS_KILLS the number of kills."""

import os
import random
import sys
import threading
import time
import unittest

from device import Device, new_user
from faultproxy import FaultProxy
from harness import Client, ServerProcess

DEVICES = 20
WORKERS = 6
TAGS = ["notes", "todo"]
LOAD_SECONDS = 120.0  # the load ends after this even if kills remain (then the test fails)


def norm(uuid_text):
    return uuid_text.replace("-", "").upper()


class KilledUnderLoad(unittest.TestCase):
    def test_sigkill_twenty_times_under_twenty_devices(self):
        seed = os.environ.get("RS_TEST_SEED", "kill-load")
        kills = int(os.environ.get("RS_KILLS", "20"))
        rng = random.Random(seed)
        server = ServerProcess(self)
        proxy = FaultProxy(self, server.port)
        user, password = new_user(), "pw-kill-load"
        first = Device(self, "d0")
        first.register(proxy.url, user, password)
        key = first.key_export()
        devices = [first]
        for i in range(1, DEVICES):
            d = Device(self, "d%02d" % i, key=key)
            d.login(proxy.url, user, password)
            devices.append(d)

        lock = threading.Lock()
        written = {}  # (host, tag) -> records appended there
        appended = set()
        stats = {"syncs_ok": 0, "syncs_failed": 0}
        errors = []
        stop = threading.Event()
        queue = list(range(DEVICES))
        busy = set()

        def worker(wseed):
            wrng = random.Random(wseed)
            while not stop.is_set():
                with lock:
                    free = [i for i in queue if i not in busy]
                    if not free:
                        i = None
                    else:
                        i = wrng.choice(free)
                        busy.add(i)
                if i is None:
                    time.sleep(0.01)
                    continue
                d = devices[i]
                try:
                    tag = wrng.choice(TAGS)
                    n = wrng.randint(1, 30)
                    ids = d.append_lines(tag, ["%s-%s-%d" % (d.name, tag, wrng.getrandbits(32)) for _ in range(n)])
                    r = d.sync(page=wrng.choice([None, 10]), expect=None)
                    with lock:
                        written[(d.host, tag)] = written.get((d.host, tag), 0) + n
                        appended.update(norm(x) for x in ids)
                        if isinstance(r, dict):
                            stats["syncs_ok"] += 1
                        elif r.rc == 1:
                            stats["syncs_failed"] += 1
                        else:
                            errors.append("%s: sync exited %d: %r" % (d.name, r.rc, r))
                except AssertionError as e:
                    with lock:
                        errors.append(str(e))
                finally:
                    with lock:
                        busy.discard(i)

        threads = [threading.Thread(target=worker, args=("%s-%d" % (seed, w),)) for w in range(WORKERS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        done = 0
        try:
            while done < kills and time.monotonic() - t0 < LOAD_SECONDS:
                time.sleep(rng.uniform(0.2, 1.5))
                server.kill()
                done += 1
                time.sleep(rng.uniform(0.0, 0.3))
                server.start()
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        load_seconds = time.monotonic() - t0
        self.assertFalse(any(t.is_alive() for t in threads), "a worker did not end")
        self.assertEqual(errors, [])
        self.assertEqual(done, kills, "only %d kills in %.0fs" % (done, LOAD_SECONDS))

        # Server up: each device syncs until it succeeds, then once more so
        # every device has pulled what the last one pushed.
        for _ in range(2):
            for d in devices:
                for attempt in range(5):
                    r = d.sync(expect=None)
                    if isinstance(r, dict):
                        break
                    time.sleep(0.2)
                else:
                    self.fail("%s: no sync succeeded after the load: %r" % (d.name, r))

        acked = {norm(rid) for rid in proxy.acked}
        self.assertGreater(len(acked), 0)
        reference = devices[0].records()
        ids = [row[3] for row in reference]
        duplicates = len(ids) - len(set(ids))
        self.assertEqual(duplicates, 0, "a record twice")
        self.assertEqual(acked - set(ids), set(), "acknowledged records lost")
        self.assertEqual(set(ids), appended, "every appended record is there once all synced")
        for d in devices[1:]:
            self.assertEqual(d.records(), reference, "%s differs from %s" % (d.name, devices[0].name))
        devices[0].verify()
        devices[-1].verify()

        # The server's own view: each shard [0, written), nothing twice.
        tok = self._token(devices[0])
        c = Client(server.port, token=tok, timeout=30)
        self.addCleanup(c.close)
        r = c.get("/api/v1/index")
        self.assertEqual(r.status, 200, r)
        shards = {(s["host"], s["tag"]): (s["start"], s["end"]) for s in r.json["shards"]}
        for key_, n in written.items():
            self.assertEqual(shards.get(key_), (0, n), "server shard %s/%s" % key_)
        on_server = 0
        for (host, tag), (start, end) in shards.items():
            seen, at = [], start
            for _ in range(1000):
                if at >= end:
                    break
                p = c.get("/api/v1/records?host=%s&tag=%s&start=%d&limit=500" % (host, tag, at))
                self.assertEqual(p.status, 200, p)
                recs = p.json["records"]
                self.assertTrue(recs, "an empty page below the shard's end")
                seen += [norm(x["id"]) for x in recs]
                at += len(recs)
            self.assertEqual(len(seen), len(set(seen)), "a record twice in %s/%s" % (host, tag))
            on_server += len(seen)
        self.assertEqual(on_server, len(ids))
        print("kill under load (%s, seed %r): devices %d, kills %d in %.1fs, syncs ok %d, syncs failed %d, "
              "uploads acknowledged %d (%d records), records found %d on each device and %d on the server, "
              "duplicates %d" % (server.db.name, seed, DEVICES, done, load_seconds, stats["syncs_ok"],
                                 stats["syncs_failed"], proxy.acked_posts, len(acked), len(ids), on_server,
                                 duplicates), file=sys.stderr)
        self.assertGreater(stats["syncs_failed"], 0, "no kill hit a sync")

    @staticmethod
    def _token(device):
        import sqlite3
        con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
        try:
            return con.execute("SELECT value FROM meta WHERE name = 'sync.token'").fetchone()[0]
        finally:
            con.close()


if __name__ == "__main__":
    unittest.main()
