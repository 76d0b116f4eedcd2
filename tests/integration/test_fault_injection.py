"""Seeded rounds of multi-device syncs through a proxy that breaks the
transport (faultproxy.py: delays, requests cut mid-body, answers truncated,
connections reset before and after the server acted, requests sent twice,
stale replays, connections reordered). Each round: every device appends,
all sync at once through the faults (each retrying until a sync succeeds),
then each syncs once more in turn (faults still on); the round must end
converged: every device holds the same records, row for row, `recsync
verify` passes on each, every record appended so far is there (nothing
lost), each once (nothing twice), and the server's shard of each device
ends exactly at what that device wrote. RS_TEST_SEED changes the seed;
RS_FAULT_ROUNDS the number of rounds (default 4)."""

import os
import random
import sys
import threading
import time
import unittest

from device import Device, new_user
from faultproxy import KINDS, FaultProxy
from harness import ServerProcess

DEVICES = 3
TAGS = ["notes", "todo"]
SYNC_ATTEMPTS = 12  # a sync through the faults is retried at most this often
ROUND_SECONDS = 60.0


def norm(uuid_text):
    """A UUID as the store's hex(id) shows it."""
    return uuid_text.replace("-", "").upper()


class FaultRounds(unittest.TestCase):
    def test_seeded_rounds_converge_with_nothing_lost_or_twice(self):
        seed = os.environ.get("RS_TEST_SEED", "fault-rounds")
        rounds = int(os.environ.get("RS_FAULT_ROUNDS", "4"))
        rng = random.Random(seed)
        server = ServerProcess(self)
        proxy = FaultProxy(self, server.port, seed=seed, rate=0.35)
        user, password = new_user(), "pw-faults-1"
        first = Device(self, "d0")
        first.register(proxy.url, user, password)
        key = first.key_export()
        devices = [first]
        for i in range(1, DEVICES):
            d = Device(self, "d%d" % i, key=key)
            d.login(proxy.url, user, password)
            devices.append(d)

        appended = {}  # record id -> (device name, tag)
        written = {}  # (host, tag) -> records that device appended to that tag
        failed_syncs = 0
        proxy.faults = True
        for rnd in range(rounds):
            t0 = time.monotonic()
            for d in devices:
                for tag in rng.sample(TAGS, rng.randint(1, len(TAGS))):
                    n = rng.randint(1, 40)
                    ids = d.append_lines(tag, ["r%d-%s-%s-%d" % (rnd, d.name, tag, i) for i in range(n)])
                    for rid in ids:
                        appended[rid] = (d.name, tag)
                    written[(d.host, tag)] = written.get((d.host, tag), 0) + n

            failures = [0] * len(devices)
            errors = []

            def sync_until_ok(i, d):
                drng = random.Random("%s-%d-%d" % (seed, rnd, i))
                for _ in range(SYNC_ATTEMPTS):
                    page = drng.choice([None, 7, 25])
                    r = d.sync(page=page, expect=None)
                    if isinstance(r, dict):
                        return
                    if r.rc != 1:
                        errors.append("%s: sync exited %d: %r" % (d.name, r.rc, r))
                        return
                    failures[i] += 1
                errors.append("%s: no sync succeeded in %d attempts through the faults" % (d.name, SYNC_ATTEMPTS))

            threads = [threading.Thread(target=sync_until_ok, args=(i, d)) for i, d in enumerate(devices)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(ROUND_SECONDS * 3)
                self.assertFalse(t.is_alive(), "a device's syncs did not end")
            self.assertEqual(errors, [])
            for i, d in enumerate(devices):
                sync_until_ok(i, d)
            self.assertEqual(errors, [])
            failed_syncs += sum(failures)

            # Converged: the same records everywhere, all of them, each once.
            want = {norm(rid) for rid in appended}
            reference = devices[0].records()
            for d in devices:
                rows = d.records()
                ids = [row[3] for row in rows]
                self.assertEqual(len(ids), len(set(ids)), "round %d: %s holds a record twice" % (rnd, d.name))
                self.assertEqual(set(ids), want, "round %d: %s holds %d records, %d appended" % (
                    rnd, d.name, len(rows), len(want)))
                self.assertEqual(rows, reference, "round %d: %s differs from %s" % (rnd, d.name, devices[0].name))
                d.verify()
            shards = {(h, t): (s, e) for h, t, s, e in devices[0].shards()}
            for (host, tag), n in written.items():
                self.assertEqual(shards.get((norm(host), tag)), (0, n),
                                 "round %d: shard %s/%s is not [0, %d)" % (rnd, host, tag, n))
            print("round %d: %d records, %d failed syncs retried, %.1fs" % (
                rnd, len(want), sum(failures), time.monotonic() - t0), file=sys.stderr)

        # Every record the server acknowledged (200 to a POST /api/v1/records)
        # is in the converged stores, once.
        final = [row[3] for row in devices[0].records()]
        acked = {norm(rid) for rid in proxy.acked}
        self.assertEqual(acked - set(final), set(), "acknowledged records missing")
        self.assertEqual(acked, set(final), "records stored that the server never acknowledged")
        duplicates = sum(len(d.records()) - len({r[3] for r in d.records()}) for d in devices)
        self.assertEqual(duplicates, 0)
        with proxy.lock:
            kinds = dict(proxy.injected)
        print("fault rounds (seed %r): rounds %d, requests %d, faults injected %d (%s), reorders overtaken %d, "
              "syncs failed and retried %d, uploads acknowledged %d (%d records), records found %d on each of "
              "%d devices, duplicates %d" % (
                  seed, rounds, proxy.requests, sum(kinds.values()),
                  " ".join("%s=%d" % (k, kinds[k]) for k in KINDS), proxy.overtaken, failed_syncs,
                  proxy.acked_posts, len(acked), len(final), len(devices), duplicates), file=sys.stderr)
        for kind in KINDS:
            self.assertGreater(kinds[kind], 0, "no %s fault was injected" % kind)


if __name__ == "__main__":
    unittest.main()
