"""recsyncd killed with SIGKILL mid-upload: no partial batch is ever visible, and the retry completes.
The random kills are shown to land inside the batch's write transaction
(harness: the database's ``writing()``), not only before or after it."""

import json
import random
import threading
import time
import unittest

from harness import Client, ServerProcess, make_records


def upload_in_thread(port, token, body, headers=None):
    """Posts `body` from a thread; returns (thread, result dict)."""
    result = {}

    def run():
        c = Client(port, token=token, timeout=60)
        try:
            result["response"] = c.post("/api/v1/records", body, headers=headers)
        except OSError as e:
            result["error"] = e
        finally:
            c.close()

    t = threading.Thread(target=run)
    t.start()
    return t, result


class CrashTests(unittest.TestCase):
    def check_shard(self, acct, end):
        """The shard holds exactly idx [0, end), each once, readable in pages."""
        start, got = 0, 0
        for _ in range(1000):
            r = acct.page(acct.host, "kv", start=start, limit=5000)
            self.assertEqual(r.status, 200, r)
            for i, rec in enumerate(r.json["records"]):
                self.assertEqual(rec["idx"], start + i)
            got += len(r.json["records"])
            if r.json["next"] is None:
                break
            start = r.json["next"]
        self.assertEqual(got, end)

    def test_kill_inside_the_write_transaction_leaves_the_old_end(self):
        server = ServerProcess(self, hooks=True)
        acct = server.register()
        first = make_records(acct.host, "kv", 0, 100)
        self.assertEqual(acct.upload(first).status, 200)
        big = make_records(acct.host, "kv", 100, 5000, payload_size=200)
        body = json.dumps({"records": big})
        t, result = upload_in_thread(server.port, acct.token, body, {"X-Recsync-Test-Stall-Ms": "5000"})
        time.sleep(1.5)  # written, not committed
        server.kill()
        t.join(30)
        self.assertFalse(t.is_alive())
        self.assertNotIn("response", result)  # the client never got an answer
        server.start()
        self.assertEqual(acct.index()["shards"], [{"host": acct.host, "tag": "kv", "start": 0, "end": 100}])
        self.assertEqual(acct.index()["seq"], 100)
        self.check_shard(acct, 100)
        # The client's retry completes.
        r = acct.client().post("/api/v1/records", body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["inserted"], 5000)
        self.check_shard(acct, 5100)

    def test_kill_at_random_points_of_large_uploads(self):
        """Kills at random points of 8000-record uploads, each placed by
        what was going on when it landed: before the batch's write
        transaction, inside it (the database's write lock held just before
        the kill, and the batch not there after the restart: it was open
        until the kill), or after its commit. Rounds go on (at most
        MAX_ROUNDS) until MIN_MID_WRITE kills landed inside a write; the
        test fails if they never do, since then it checked nothing of what
        it claims. The first MIN_ROUNDS kills land at random moments; any
        later one is aimed: it waits (bounded) until the database's write
        lock is taken and kills then, so a slow build (ThreadSanitizer,
        where the write is a small part of an upload) does not spend
        MAX_ROUNDS hoping for random kills to land inside the write."""
        MIN_ROUNDS, MAX_ROUNDS, MIN_MID_WRITE = 8, 30, 2
        server = ServerProcess(self)
        acct = server.register()
        rng = random.Random(1234)
        end = 0
        # Measure one upload to spread the kills over its whole duration.
        batch = make_records(acct.host, "kv", end, 8000, payload_size=100)
        t0 = time.monotonic()
        self.assertEqual(acct.upload(batch).status, 200)
        duration = time.monotonic() - t0
        end += 8000
        outcomes = {"before": 0, "mid_write": 0, "after": 0}
        round_ = aimed = 0
        while round_ < MIN_ROUNDS or (outcomes["mid_write"] < MIN_MID_WRITE and round_ < MAX_ROUNDS):
            batch = make_records(acct.host, "kv", end, 8000, payload_size=100)
            body = json.dumps({"records": batch})
            t, result = upload_in_thread(server.port, acct.token, body)
            if round_ < MIN_ROUNDS:
                time.sleep(rng.uniform(0.0, duration * 1.2))
            else:
                aimed += 1
                deadline = time.monotonic() + duration * 2 + 1.0
                while not server.db.writing() and t.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.001)
            writing = server.db.writing()
            server.kill()
            t.join(30)
            self.assertFalse(t.is_alive())
            server.start()
            got = acct.shard_end("kv")
            self.assertIn(got, (end, end + 8000), "round %d: a partial batch is visible" % round_)
            self.assertEqual(acct.index()["seq"], got)
            if "response" in result and result["response"].status == 200:
                self.assertEqual(got, end + 8000, "an acknowledged batch was lost")
            if got == end + 8000:
                outcomes["after"] += 1
            elif writing:
                outcomes["mid_write"] += 1
            else:
                outcomes["before"] += 1
            r = acct.client().post("/api/v1/records", body)  # the retry
            self.assertEqual(r.status, 200, r)
            end += 8000
            self.assertEqual(acct.shard_end("kv"), end)
            round_ += 1
        self.check_shard(acct, end)
        print("%d kills (%d aimed at the write lock): %d before the batch's write, %d inside a write, "
              "%d after its commit" % (round_, aimed, outcomes["before"], outcomes["mid_write"],
                                      outcomes["after"]))
        self.assertGreaterEqual(outcomes["mid_write"], MIN_MID_WRITE,
                                "no kill landed while the batch was being written: %s" % outcomes)

if __name__ == "__main__":
    unittest.main()
