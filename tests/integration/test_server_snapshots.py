"""recsyncd snapshots and pruning (issue 11, server side): chunk uploads, listing,
chunk fetches, and the prune pass (run through the --test-hooks route
POST /api/v1/test/prune so no test waits for the thread)."""

import base64
import os
import re
import sqlite3
import time
import unittest
import uuid

from harness import ServerProcess, backend_name, make_records, new_host

DAY_MS = 86400000


def chunk_body(snap_id, frontier, chunk=0, chunks=1, data=b"chunk-0", tag="kv"):
    return {"id": snap_id, "tag": tag, "frontier": frontier, "chunk": chunk, "chunks": chunks,
            "data": base64.b64encode(data).decode()}


def metric(text, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    if m is None:
        raise AssertionError("metric %s missing from /metrics" % name)
    return int(m.group(1))


class SnapshotTests(unittest.TestCase):
    """Uploads, listing and fetching; no pruning (the thread is off)."""

    def setUp(self):
        self.server = ServerProcess(self, args=["--prune-interval-ms", "0", "--max-payload", "4096"])
        self.alice = self.server.register()
        self.c = self.alice.client()
        self.assertEqual(self.alice.upload(make_records(self.alice.host, "kv", 0, 5)).status, 200)

    def post(self, body):
        return self.c.post("/api/v1/snapshots", body)

    def listing(self, tag=None):
        r = self.c.get("/api/v1/snapshots" + ("?tag=%s" % tag if tag else ""))
        self.assertEqual(r.status, 200, r)
        return r.json["snapshots"]

    def test_chunks_complete_a_snapshot_idempotently_and_conflicts_are_named(self):
        sid = str(uuid.uuid4())
        fr = [{"host": self.alice.host, "end": 5}]
        r = self.post(chunk_body(sid, fr, 1, 2, b"second"))
        self.assertEqual((r.status, r.json), (200, {"id": sid, "complete": False, "stored": 1}))
        self.assertEqual(self.listing(), [], "an incomplete snapshot must never be listed")
        r = self.c.get("/api/v1/snapshot?id=%s&chunk=1" % sid)
        self.assertEqual(r.status, 404, r)
        # The same chunk again: accepted, nothing new stored.
        r = self.post(chunk_body(sid, fr, 1, 2, b"second"))
        self.assertEqual((r.status, r.json["stored"]), (200, 1))
        # Different data for a stored chunk, another tag, chunk count or frontier: 409 naming it.
        for body, word in ((chunk_body(sid, fr, 1, 2, b"other"), "different data"),
                           (chunk_body(sid, fr, 0, 2, b"x", tag="history"), "tag"),
                           (chunk_body(sid, fr, 0, 3, b"x"), "chunks"),
                           (chunk_body(sid, [{"host": self.alice.host, "end": 4}], 0, 2, b"x"), "frontier")):
            r = self.post(body)
            self.assertEqual((r.status, r.json["error"]), (409, "conflict"), r)
            self.assertIn(word, r.json["message"])
            self.assertIn(sid, r.json["message"])
        seq = self.alice.index()["seq"]
        r = self.post(chunk_body(sid, fr, 0, 2, b"first"))
        self.assertEqual(r.json, {"id": sid, "complete": True, "stored": 2})
        r = self.post(chunk_body(sid, fr, 0, 2, b"first"))  # re-sent after completion
        self.assertEqual(r.json, {"id": sid, "complete": True, "stored": 2})
        got = self.listing("kv")
        self.assertEqual(len(got), 1)
        s = got[0]
        self.assertEqual((s["id"], s["tag"], s["frontier"], s["chunks"], s["bytes"], s["seq"]),
                         (sid, "kv", fr, 2, len(b"first") + len(b"second"), seq))
        self.assertLess(abs(s["created_ms"] - time.time() * 1000), 60000)
        for i, data in enumerate((b"first", b"second")):
            r = self.c.get("/api/v1/snapshot?id=%s&chunk=%d" % (sid, i))
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json, {"id": sid, "chunk": i, "chunks": 2,
                                      "data": base64.b64encode(data).decode()})
        self.assertEqual(self.c.get("/api/v1/snapshot?id=%s&chunk=2" % sid).status, 404)
        self.assertEqual(self.listing("history"), [])
        # Another user sees none of it, and cannot fetch it by id.
        bob = self.server.register()
        self.assertEqual(bob.client().get("/api/v1/snapshots").json, {"snapshots": []})
        r = bob.client().get("/api/v1/snapshot?id=%s&chunk=0" % sid)
        self.assertEqual((r.status, r.json["error"]), (404, "not_found"), r)
        m = self.server.metrics()
        self.assertEqual(metric(m, "recsyncd_snapshot_chunks_stored_total"), 2)
        self.assertEqual(metric(m, "recsyncd_snapshots"), 1)
        self.assertEqual(metric(m, "recsyncd_snapshot_bytes"), 11)

    def test_listing_is_newest_first_and_filters_by_tag(self):
        self.assertEqual(self.alice.upload(make_records(self.alice.host, "history", 0, 2)).status, 200)
        ids = []
        for n, tag in enumerate(("kv", "history", "kv")):
            sid = str(uuid.uuid4())
            ids.append(sid)
            r = self.post(chunk_body(sid, [{"host": self.alice.host, "end": 1 + n}], tag=tag))
            self.assertTrue(r.json["complete"], r)
            # A record between them moves the seq, so each snapshot takes a higher one.
            self.assertEqual(self.alice.upload(make_records(self.alice.host, "kv", 5 + n, 1)).status, 200)
        self.assertEqual([s["id"] for s in self.listing()], [ids[2], ids[1], ids[0]])
        self.assertEqual([s["id"] for s in self.listing("kv")], [ids[2], ids[0]])
        seqs = [s["seq"] for s in self.listing()]
        self.assertEqual(seqs, sorted(seqs, reverse=True))
        self.assertGreater(seqs[0], seqs[2])

    def test_a_frontier_above_the_servers_end_is_refused(self):
        other = new_host()
        cases = (([{"host": self.alice.host, "end": 6}], "%s/kv ends at 6 but the server holds 5" % self.alice.host),
                 ([{"host": other, "end": 1}], "%s/kv ends at 1 but the server holds 0" % other))
        for fr, text in cases:
            r = self.post(chunk_body(str(uuid.uuid4()), fr))
            self.assertEqual((r.status, r.json["error"]), (409, "conflict"), r)
            self.assertIn(text, r.json["message"])
        # At the end exactly, and 0 for a host with no shard, are fine.
        r = self.post(chunk_body(str(uuid.uuid4()), [{"host": self.alice.host, "end": 5}, {"host": other, "end": 0}]))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(self.listing()), 1)

    def test_validation_names_the_field_and_stores_nothing(self):
        sid = str(uuid.uuid4())
        fr = [{"host": self.alice.host, "end": 1}]
        good = chunk_body(sid, fr, 0, 2)
        bad = [
            (dict(good, id="nope"), 400, "id:"),
            ({k: v for k, v in good.items() if k != "id"}, 400, "id: missing"),
            (dict(good, tag="Bad Tag"), 400, "tag:"),
            (dict(good, chunks=0), 400, "chunks:"),
            (dict(good, chunks=1000001), 400, "chunks:"),
            (dict(good, chunk=2), 400, "chunk: 2 is not below chunks (2)"),
            (dict(good, chunk=-1), 400, "chunk:"),
            (dict(good, frontier={}), 400, "frontier: not an array"),
            ({k: v for k, v in good.items() if k != "frontier"}, 400, "frontier: missing"),
            (dict(good, frontier=[{"host": "x", "end": 1}]), 400, "frontier[0].host"),
            (dict(good, frontier=[{"host": self.alice.host, "end": -1}]), 400, "frontier[0].end"),
            (dict(good, frontier=fr + fr), 400, "listed twice"),
            (dict(good, frontier=[{"host": new_host(), "end": 0}] * 10001), 400, "frontier:"),
            (dict(good, data=""), 400, "data:"),
            (dict(good, data="not base64!"), 400, "data:"),
            (dict(good, data=base64.b64encode(os.urandom(4096 + 1025)).decode()), 413, "data:"),
        ]
        for body, status, text in bad:
            r = self.post(body)
            self.assertEqual(r.status, status, (text, r))
            self.assertIn(text, r.json["message"])
        # --max-payload + 1024 exactly is accepted.
        r = self.post(dict(good, data=base64.b64encode(os.urandom(4096 + 1024)).decode()))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stored"], 1, "the refused chunks must have stored nothing")
        self.assertEqual(self.c.get("/api/v1/snapshots?tag=Bad").status, 400)
        for q, text in (("id=x&chunk=0", "id:"), ("chunk=0", "id: missing"), ("id=%s" % sid, "chunk: missing"),
                        ("id=%s&chunk=x" % sid, "chunk:")):
            r = self.c.get("/api/v1/snapshot?" + q)
            self.assertEqual(r.status, 400, r)
            self.assertIn(text, r.json["message"])
        self.assertEqual(self.server.client().get("/api/v1/snapshots").status, 401)
        self.assertEqual(self.server.client().post("/api/v1/snapshots", good).status, 401)

    def test_the_prune_hook_needs_test_hooks(self):
        r = self.server.client().post("/api/v1/test/prune", {})
        self.assertEqual(r.status, 404, r)


class PruneTests(unittest.TestCase):
    """The prune pass: floors, the 410, device expiry, snapshot retention, metrics."""

    def start(self, *args):
        self.server = ServerProcess(self, args=["--prune-interval-ms", "0"] + list(args), hooks=True)
        self.a = self.server.register()
        self.b = self.a.login(host=new_host())

    def prune(self):
        r = self.server.client().post("/api/v1/test/prune", {})
        self.assertEqual(r.status, 200, r)
        return r.json

    def ack(self, acct, end, host=None, tag="kv"):
        r = acct.client().post("/api/v1/acks", {"frontier": [{"host": host or self.a.host, "tag": tag, "end": end}]})
        self.assertEqual(r.status, 200, r)

    def snapshot(self, end, tag="kv", data=b"state"):
        sid = str(uuid.uuid4())
        r = self.a.client().post("/api/v1/snapshots", chunk_body(sid, [{"host": self.a.host, "end": end}],
                                                                 data=data, tag=tag))
        self.assertEqual((r.status, r.json["complete"]), (200, True), r)
        return sid

    def shard(self):
        for s in self.a.index()["shards"]:
            if s["host"] == self.a.host and s["tag"] == "kv":
                return s["start"], s["end"]
        self.fail("no shard")

    def test_nothing_is_pruned_until_every_device_acked_and_a_snapshot_covers(self):
        self.start()
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 0, 30)).status, 200)
        self.ack(self.a, 30)
        self.assertEqual(self.prune()["records_pruned"], 0)  # no snapshot yet, b silent
        self.snapshot(20)
        self.assertEqual(self.prune()["records_pruned"], 0, "device b never acked: it holds the floor at 0")
        self.assertEqual(self.shard(), (0, 30))
        self.ack(self.b, 12)
        r = self.prune()
        self.assertEqual((r["records_pruned"], r["shards_pruned"]), (12, 1), "floor = min(acks 12, snapshot 20)")
        self.assertEqual(self.shard(), (12, 30))
        self.ack(self.b, 30)
        self.assertEqual(self.prune()["records_pruned"], 8, "floor = min(acks 30, snapshot 20)")
        self.assertEqual(self.shard(), (20, 30))
        self.assertEqual(self.prune()["records_pruned"], 0, "a second pass finds nothing more")
        # Reads: below start is 410 snapshot_required, at start works.
        r = self.a.page(self.a.host, "kv", start=19)
        self.assertEqual((r.status, r.json["error"]), (410, "snapshot_required"), r)
        self.assertIn("starts at idx 20", r.json["message"])
        self.assertIn("%s/kv" % self.a.host, r.json["message"])
        self.assertEqual(self.a.page(self.a.host, "kv", start=0).status, 410)
        r = self.a.page(self.a.host, "kv", start=20)
        self.assertEqual(r.status, 200, r)
        self.assertEqual([x["idx"] for x in r.json["records"]], list(range(20, 30)))
        # Uploads continue at the end.
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 30, 2)).status, 200)
        self.assertEqual(self.shard(), (20, 32))
        m = self.server.metrics()
        self.assertEqual(metric(m, "recsyncd_records_pruned_total"), 20)
        self.assertEqual(metric(m, "recsyncd_pruned_below_floor"), 20)
        self.assertEqual(metric(m, "recsyncd_prune_runs_total"), 5)  # the thread is off
        self.assertEqual(metric(m, "recsyncd_prune_errors_total"), 0)
        self.assertLess(abs(metric(m, "recsyncd_prune_last_run_timestamp_seconds") - time.time()), 60)
        self.assertEqual(metric(m, "recsyncd_records"), 12)

    def test_the_newest_snapshot_sets_the_floor_and_old_ones_are_deleted(self):
        self.start("--snapshots-kept", "2")
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 0, 40)).status, 200)
        self.ack(self.a, 40)
        self.ack(self.b, 40)
        s1 = self.snapshot(30, data=b"one")
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 40, 1)).status, 200)
        s2 = self.snapshot(10, data=b"two")  # newer, lower: the floor follows the newest
        self.assertEqual(self.prune()["records_pruned"], 10)
        self.assertEqual(self.shard()[0], 10)
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 41, 1)).status, 200)
        s3 = self.snapshot(35, data=b"three")
        # An incomplete snapshot (1 of 2 chunks) is not listed, not counted and not deleted yet.
        r = self.a.client().post("/api/v1/snapshots", chunk_body(str(uuid.uuid4()), [], 0, 2, b"half"))
        self.assertEqual(r.json["complete"], False)
        r = self.prune()
        self.assertEqual((r["records_pruned"], r["snapshots_deleted"]), (25, 1), r)
        self.assertEqual(self.shard()[0], 35)
        listed = [s["id"] for s in self.a.client().get("/api/v1/snapshots?tag=kv").json["snapshots"]]
        self.assertEqual(listed, [s3, s2])
        self.assertEqual(self.a.client().get("/api/v1/snapshot?id=%s&chunk=0" % s1).status, 404)
        m = self.server.metrics()
        self.assertEqual(metric(m, "recsyncd_snapshots"), 2)
        self.assertEqual(metric(m, "recsyncd_snapshot_bytes"), len(b"two") + len(b"three"))
        self.assertEqual(metric(m, "recsyncd_snapshots_deleted_total"), 1)

    def test_an_expired_device_no_longer_holds_the_floor(self):
        self.start("--device-expiry", "2s")
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 0, 10)).status, 200)
        self.snapshot(8)
        deadline = time.monotonic() + 20
        # a keeps acking (an ack marks it seen); b stays silent past the expiry.
        self.ack(self.a, 10)
        self.assertEqual(self.prune()["records_pruned"], 0, "b was seen at login moments ago")
        time.sleep(2.5)
        self.ack(self.a, 10)
        while time.monotonic() < deadline:
            r = self.prune()
            if r["records_pruned"]:
                break
            time.sleep(0.2)
        self.assertEqual(r["records_pruned"], 8)
        self.assertEqual(self.shard(), (8, 10))

    def test_a_device_that_acks_stays_active(self):
        self.start("--device-expiry", "2s")
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 0, 10)).status, 200)
        self.snapshot(10)
        time.sleep(2.5)
        # Both expired; b comes back and acks 3: it holds the floor again, a (silent) does not.
        self.ack(self.b, 3)
        self.assertEqual(self.prune()["records_pruned"], 3)
        self.assertEqual(self.shard(), (3, 10))

    def test_records_below_the_floor_are_gone_from_the_database(self):
        if backend_name() != "sqlite":
            self.skipTest("reads the SQLite file; the PostgreSQL run checks counts through /metrics")
        self.start()
        self.assertEqual(self.a.upload(make_records(self.a.host, "kv", 0, 25, payload_size=100)).status, 200)
        self.assertEqual(self.a.upload(make_records(self.a.host, "history", 0, 5)).status, 200)
        self.ack(self.a, 25)
        self.ack(self.b, 25)
        self.snapshot(15)
        self.assertEqual(self.prune()["records_pruned"], 15)
        self.server.stop()
        db = sqlite3.connect(self.server.db.url)
        try:
            host = uuid.UUID(self.a.host).bytes
            rows = db.execute("SELECT idx FROM records WHERE host = ? AND tag = 'kv' ORDER BY idx",
                              (host,)).fetchall()
            self.assertEqual([r[0] for r in rows], list(range(15, 25)))
            self.assertEqual(db.execute("SELECT count(*) FROM records WHERE tag = 'history'").fetchone()[0], 5)
            self.assertEqual(db.execute("SELECT start_idx, end_idx FROM shards WHERE host = ? AND tag = 'kv'",
                                        (host,)).fetchone(), (15, 25))
            recs, nbytes = db.execute("SELECT records, bytes FROM users").fetchone()
            stored = db.execute("SELECT total(length(data)) FROM records").fetchone()[0]
            snap = db.execute("SELECT total(bytes) FROM snapshots").fetchone()[0]
            self.assertEqual(recs, 15)
            self.assertEqual(nbytes, stored + snap, "the user's bytes are what is left, snapshots included")
            self.assertEqual(db.execute("SELECT count(*) FROM devices WHERE last_seen_ms > 0").fetchone()[0], 2)
        finally:
            db.close()

    def test_the_thread_prunes_on_its_own(self):
        self.server = ServerProcess(self, args=["--prune-interval-ms", "100"])
        a = self.server.register()
        self.assertEqual(a.upload(make_records(a.host, "kv", 0, 6)).status, 200)
        r = a.client().post("/api/v1/acks", {"frontier": [{"host": a.host, "tag": "kv", "end": 6}]})
        self.assertEqual(r.status, 200)
        r = a.client().post("/api/v1/snapshots", chunk_body(str(uuid.uuid4()), [{"host": a.host, "end": 4}]))
        self.assertEqual(r.status, 200)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if a.index()["shards"][0]["start"] == 4:
                break
            time.sleep(0.1)
        self.assertEqual(a.index()["shards"][0], {"host": a.host, "tag": "kv", "start": 4, "end": 6})


if __name__ == "__main__":
    unittest.main()
