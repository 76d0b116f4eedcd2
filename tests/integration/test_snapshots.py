"""Snapshots and pruning end to end: the real recsync against the real
recsyncd (with --test-hooks, so a test can run a prune pass at once).

* A new device starts from the newest snapshot and pulls only the tail; its
  state is identical to the device that replayed every record, and
  ``verify`` accepts its shards that start above 0 by the snapshot.
* The scenario that breaks Spacedrive: a device offline while the others
  delete a key and a history entry and the server prunes past the deletes
  (the silent device expired) comes back: it loads a snapshot, never diffs
  past the gap, the deleted key and entry stay deleted, and what it wrote
  offline reaches the others.
* A server that offers only an older snapshot than its index allows is
  caught, named, and nothing of it is applied; the shard is held back.
* Once the server pruned, a device drops its own records below the pruned
  start that its snapshot covers, and still verifies and rebuilds.
"""

import os
import sqlite3
import subprocess
import time
import unittest

from device import Device, make_devices, server_url
from harness import Client, ServerProcess, pg_bindir


def token_of(device):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        return con.execute("SELECT value FROM meta WHERE name = 'sync.token'").fetchone()[0]
    finally:
        con.close()


def kv_state(device):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        return con.execute("SELECT ns, key, value, deleted, hlc, hex(host) FROM kv "
                           "ORDER BY ns, key").fetchall()
    finally:
        con.close()


def history_state(device):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        return con.execute("SELECT hex(id), time, command, deleted, hlc, hex(host) FROM history "
                           "ORDER BY hex(id)").fetchall()
    finally:
        con.close()


def shard_starts(device):
    return {(h, t): (s, e) for h, t, s, e in device.shards()}


class SnapshotTest(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self, args=["--device-expiry", "3s", "--prune-interval-ms",
                                                "0"], hooks=True)

    def prune(self, device):
        c = Client(self.server.port, token=token_of(device), timeout=30)
        try:
            r = c.post("/api/v1/test/prune", {})
        finally:
            c.close()
        self.assertEqual(r.status, 200, r)
        return r.json

    def remote_shards(self, device):
        c = Client(self.server.port, token=token_of(device), timeout=30)
        try:
            r = c.get("/api/v1/index")
        finally:
            c.close()
        self.assertEqual(r.status, 200, r)
        return {(s["host"], s["tag"]): (s["start"], s["end"]) for s in r.json["shards"]}

    def test_a_new_device_starts_from_the_snapshot_and_pulls_the_tail(self):
        a, = make_devices(self, self.server, 1, names=["a"])
        for i in range(60):
            a.run("kv", "set", "ns", "k%d" % (i % 12), "v%d" % i)
        a.run("kv", "del", "ns", "k3")
        a.sync()
        snap = a.run("snapshot", "kv")
        self.assertIn("61 records covered", snap.text)
        self.assertIn("uploaded 1 snapshot", snap.text)
        for i in range(5):
            a.run("kv", "set", "ns", "tail%d" % i, "t%d" % i)
        a.sync()

        b = Device(self, "b", key=a.key_export())
        b.login(server_url(self.server), a_user(a), a.password)
        rep = b.sync()
        loaded = [s for s in rep["snapshots"] if s["action"] == "loaded"]
        self.assertEqual([s["tag"] for s in loaded], ["kv"], rep)
        self.assertEqual(loaded[0]["covered"], 61)
        self.assertEqual(rep["downloaded"], 5, "only the tail above the frontier")
        self.assertEqual(kv_state(b), kv_state(a), "identical to the device that replayed all")
        self.assertEqual(shard_starts(b)[(a.host.replace("-", "").upper(), "kv")], (61, 66))
        b.verify()
        b.run("rebuild", "kv")
        self.assertEqual(kv_state(b), kv_state(a))
        self.assertEqual(b.run("kv", "get", "ns", "k3", expect=1).out, b"")

    def test_a_device_offline_through_pruning_never_skips_a_delete(self):
        a, b, c = make_devices(self, self.server, 3, names=["a", "b", "c"])
        a.run("kv", "set", "ns", "doomed", "here")
        a.run("history", "add", "--", "echo", "doomed-entry")
        a.sync()
        b.sync()
        c.sync()
        self.assertEqual(c.run("kv", "get", "ns", "doomed").out, b"here\n")
        entries = c.run("history", "search", "doomed-entry").text
        self.assertIn("doomed-entry", entries)

        # c goes silent. a deletes the key and the history entry, writes more.
        hid = history_ids(a, "doomed-entry")
        self.assertEqual(len(hid), 1)
        a.run("kv", "del", "ns", "doomed")
        a.run("history", "delete", hid[0])
        for i in range(10):
            a.run("kv", "set", "ns", "k%d" % i, "v%d" % i)
        # While offline, c writes something of its own.
        c.run("kv", "set", "ns", "offline", "written by c")
        a.sync()
        b.sync()
        time.sleep(3.5)  # c is past --device-expiry: it no longer holds the floor
        a.sync()
        b.sync()
        a.run("snapshot")
        a.sync()
        b.sync()
        self.prune(a)
        remote = self.remote_shards(a)
        a_kv = remote[(a.host, "kv")]
        self.assertGreater(a_kv[0], 1, "the server pruned a's kv shard past the delete")
        self.assertGreater(remote[(a.host, "history")][0], 1)

        # c returns: it must load the snapshot, not diff past the pruned delete.
        r = c.run("sync", "--json")
        rep = r.json
        self.assertEqual(sorted(s["tag"] for s in rep["snapshots"] if s["action"] == "loaded"),
                         ["history", "kv"], rep)
        self.assertFalse(rep["partial"], rep)
        self.assertEqual(c.run("kv", "get", "ns", "doomed", expect=1).out, b"")
        self.assertNotIn("doomed-entry", c.run("history", "search", "doomed-entry").text)
        self.assertEqual(c.run("kv", "get", "ns", "k9").out, b"v9\n")
        self.assertEqual(c.run("kv", "get", "ns", "offline").out, b"written by c\n")
        c.verify()
        a.sync()
        self.assertEqual(a.run("kv", "get", "ns", "offline").out, b"written by c\n")
        self.assertEqual(kv_state(a), kv_state(c))
        self.assertEqual(history_state(a), history_state(c))

    def test_an_older_snapshot_than_the_index_allows_is_refused(self):
        a, = make_devices(self, self.server, 1, names=["a"])
        for i in range(10):
            a.run("kv", "set", "ns", "k%d" % i, "old%d" % i)
        a.sync()
        a.run("snapshot", "kv")
        old = self.snapshots(a)[0]
        for i in range(10):
            a.run("kv", "set", "ns", "k%d" % i, "new%d" % i)
        a.sync()
        a.run("snapshot", "kv")
        a.sync()
        self.prune(a)
        start = self.remote_shards(a)[(a.host, "kv")][0]
        self.assertEqual(start, 20)
        self.drop_snapshots_but(a, old["id"])
        self.assertEqual([s["id"] for s in self.snapshots(a)], [old["id"]])

        d = Device(self, "d", key=a.key_export())
        d.login(server_url(self.server), a_user(a), a.password)
        r = d.run("sync", "--json", expect=3)
        rep = r.json
        self.assertEqual(rep["snapshots"], [])
        held = [h for h in rep["held"] if h["tag"] == "kv"]
        self.assertEqual(len(held), 1, rep)
        self.assertIn("older snapshot than its index allows", held[0]["message"])
        self.assertEqual(kv_state(d), [], "nothing of it was applied")
        d.verify()

    def test_a_device_compacts_its_own_store_below_the_pruned_start(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        for i in range(30):
            a.run("kv", "set", "ns", "k%d" % (i % 5), "v%d" % i)
        a.sync()
        b.sync()
        a.run("snapshot", "kv")
        a.sync()
        b.sync()
        self.prune(a)
        self.assertEqual(self.remote_shards(a)[(a.host, "kv")][0], 30)
        before = kv_state(a)
        rep = a.sync()
        self.assertEqual(rep["compacted"], 30)
        self.assertEqual(shard_starts(a)[(a.host.replace("-", "").upper(), "kv")], (30, 30))
        a.verify()
        a.run("rebuild", "kv")
        self.assertEqual(kv_state(a), before)

    # -- helpers reading the server's records of snapshots --

    def snapshots(self, device):
        c = Client(self.server.port, token=token_of(device), timeout=30)
        try:
            r = c.get("/api/v1/snapshots?tag=kv")
        finally:
            c.close()
        self.assertEqual(r.status, 200, r)
        return r.json["snapshots"]

    def drop_snapshots_but(self, device, keep):
        """A server that lost (or hides) its newest snapshots: removed from its database."""
        for s in self.snapshots(device):
            if s["id"] == keep:
                continue
            hexid = s["id"].replace("-", "")
            stmts = ["DELETE FROM %s WHERE id = %s" % (t, "x'%s'" % hexid if self.sqlite()
                                                       else "'\\x%s'::bytea" % hexid)
                     for t in ("snapshot_chunks", "snapshot_frontier", "snapshots")]
            if self.sqlite():
                con = sqlite3.connect(self.server.db.url, timeout=30)
                try:
                    for st in stmts:
                        con.execute(st)
                    con.commit()
                finally:
                    con.close()
            else:
                psql = os.path.join(pg_bindir(), "psql")
                out = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                                      self.server.db.url.replace("postgres:///", "postgresql:///"),
                                      "-c", "; ".join(stmts)], capture_output=True, timeout=60)
                self.assertEqual(out.returncode, 0, out.stderr)

    def sqlite(self):
        return self.server.db.name == "sqlite"


def a_user(device):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        return con.execute("SELECT value FROM meta WHERE name = 'sync.user'").fetchone()[0]
    finally:
        con.close()


def history_ids(device, text):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        rows = con.execute("SELECT id FROM history WHERE deleted = 0 AND command LIKE ?",
                           ("%" + text + "%",)).fetchall()
    finally:
        con.close()
    return [str(uuid_of(r[0])) for r in rows]


def uuid_of(b):
    import uuid
    return uuid.UUID(bytes=bytes(b))


if __name__ == "__main__":
    unittest.main()
