"""A server that cannot read the data cannot silently drop, reorder, roll
back or fork it either (hash chains, remembered heads, checkpoints).

Black-box: the real recsyncd, whose database the test edits between syncs
(SQL on the server's own tables, both backends), and the real recsync. For
each edit the test asserts which device detects it, when, and that the
error names the shard; a refused sync writes nothing, and the store keeps
refusing (its alarm) and `status` says so:

* truncating a shard (dropping its newest records): every device that saw
  them refuses at its next sync (the index ends below what it saw);
* deleting a middle record and renumbering the rest: devices that saw the
  shard refuse (its end went down); a new device refuses the record that
  now sits at the wrong idx (it does not open there);
* reordering two records: a new device refuses them (neither opens at the
  other's idx); devices that hold them already are unaffected (nothing of
  theirs changed) -- said, and asserted;
* two devices shown two histories of one shard (two databases behind one
  URL, a second copy of the writer's store writing the other history): the
  reader detects it at its first sync after the writer's checkpoint
  reaches it; with no checkpoint crossing, nobody can (asserted, the limit
  of what an untrusted server allows);
* a chain edited in a device's store with sqlite3: `verify` names the record.
The replay of an older snapshot than the index allows is in test_snapshots.
"""

import os
import shutil
import sqlite3
import threading
import unittest
import urllib.parse
import http.client
import http.server
import socket

from device import Device, make_devices, server_url
from harness import ServerProcess, make_database, make_tempdir


def where(server, host, tag):
    return "host = %s AND tag = '%s'" % (server.blob(host), tag)


class TamperTest(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def two(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        a.append_lines("notes", ["n%d" % i for i in range(6)])
        a.sync()
        self.assertEqual(b.sync()["downloaded"], 6)
        return a, b

    def assert_refused(self, device, *says):
        before = (device.records(), device.shards())
        r = device.run("sync", "--json", expect=1)
        err = r.err.decode()
        for s in says:
            self.assertIn(s, err)
        self.assertEqual((device.records(), device.shards()), before,
                         "a refused sync writes nothing (but its alarm)")
        # It keeps refusing, and status says so loudly.
        again = device.run("sync", expect=1).err.decode()
        self.assertIn("refusing to sync", again)
        st = device.run("status", "--json")
        self.assertIsNotNone(st.json["alarm"])
        self.assertIn("THE SERVER TAMPERED", device.run("status").text)
        return err

    def test_truncating_a_shard_is_a_rollback_for_every_device_that_saw_it(self):
        a, b = self.two()
        self.server.sql("DELETE FROM records WHERE %s AND idx >= 4" % where(self.server, a.host, "notes"),
                   "UPDATE shards SET end_idx = 4 WHERE %s" % where(self.server, a.host, "notes"))
        shard = "%s/notes" % a.host
        self.assert_refused(b, shard, "idx 4", "6", "rolled")
        self.assert_refused(a, shard, "idx 4", "rolled")

    def test_a_device_that_syncs_often_writes_a_checkpoint_every_ten_minutes(self):
        # Every 10 minutes of syncing: counted from the first sync, however often the device
        # syncs in between (counted from the last sync before, a device syncing more often
        # than that never wrote its first). The test hook moves the device's clock on.
        (a,) = make_devices(self, self.server, 1, names=["a"])

        def checkpoints_after(minutes):
            a.run("sync", "--json", env={"RECSYNC_CLOCK_OFFSET_MS": str(minutes * 60000)})
            return sum(end - start for host, tag, start, end in a.shards()
                       if tag == "rs.checkpoint" and host == a.host.replace("-", "").upper())

        self.assertEqual([checkpoints_after(m) for m in (0, 4, 8, 12, 16, 19, 23)],
                         [0, 0, 0, 1, 1, 1, 2])

    def test_deleting_and_renumbering_is_caught(self):
        a, b = self.two()
        w = where(self.server, a.host, "notes")
        self.server.sql("DELETE FROM records WHERE %s AND idx = 2" % w,
                   "UPDATE records SET idx = -idx WHERE %s AND idx > 2" % w,
                   "UPDATE records SET idx = -idx - 1 WHERE %s AND idx < 0" % w,
                   "UPDATE shards SET end_idx = 5 WHERE %s" % w)
        shard = "%s/notes" % a.host
        self.assert_refused(b, shard, "rolled")
        # A new device pulls: the record now at idx 2 does not open there.
        c = Device(self, "c", key=a.key_export())
        c.login(server_url(self.server), a.user, a.password)
        r = c.run("sync", "--json", "--page-records", "1", expect=3)
        held = r.json["held"]
        self.assertEqual([(h["host"], h["tag"], h["idx"], h["error"]) for h in held],
                         [(a.host, "notes", 2, "damaged")])
        self.assertIn("does not open", held[0]["message"])
        self.assertEqual(len([x for x in c.records() if x[1] == "notes"]), 2)
        c.verify()

    def test_reordering_two_records_is_caught_by_the_device_that_reads_them(self):
        a, b = self.two()
        w = where(self.server, a.host, "notes")
        self.server.sql("UPDATE records SET idx = -1 WHERE %s AND idx = 1" % w,
                   "UPDATE records SET idx = 1 WHERE %s AND idx = 2" % w,
                   "UPDATE records SET idx = 2 WHERE %s AND idx = -1" % w)
        # b already holds both: nothing of its changes, its sync has nothing to do.
        self.assertEqual(b.sync()["outcome"], "noop")
        c = Device(self, "c", key=a.key_export())
        c.login(server_url(self.server), a.user, a.password)
        r = c.run("sync", "--json", "--page-records", "1", expect=3)
        self.assertEqual([(h["idx"], h["error"]) for h in r.json["held"]], [(1, "damaged")])
        c.verify()

    def test_verify_names_a_record_whose_chain_was_edited_in_the_store(self):
        a, = make_devices(self, self.server, 1, names=["a"])
        ids = a.append_lines("notes", ["x%d" % i for i in range(4)])
        a.verify()
        con = sqlite3.connect(a.db_path)
        con.execute("UPDATE records SET head = zeroblob(32) WHERE idx = 2 AND tag = 'notes'")
        con.commit()
        con.close()
        r = a.run("verify", expect=1)
        self.assertIn(ids[2], r.err.decode())
        self.assertIn("chain head", r.err.decode())


FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                       "store-0.1.0")


def device_from_fixture(test, name, fixture):
    """A device whose store is a copy of the committed store `fixture`."""
    device = Device(test, name, init=False)
    shutil.copytree(fixture, device.dir)
    os.chmod(device.dir, 0o700)
    return device


class PreviousReleaseTest(unittest.TestCase):
    """A store made by recsync 0.1.0 (before chains) opens, verifies, keeps
    its state, and new records chain onto its old ones for every device."""

    def test_a_store_of_the_previous_release_migrates_to_chains(self):
        server = ServerProcess(self)
        old = device_from_fixture(self, "old", FIXTURE)
        with sqlite3.connect(os.path.join(old.dir, "store.db")) as con:
            self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], 1)
            self.assertEqual(con.execute("SELECT count(*) FROM records WHERE "
                                         "CAST(substr(data, 1, 4) AS TEXT) = 'RSE1'").fetchone()[0], 7)
        self.assertIn("7 records", old.verify().text)
        with sqlite3.connect(os.path.join(old.dir, "store.db")) as con:
            self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], 4)
            self.assertEqual(con.execute("SELECT count(*) FROM records WHERE head IS NULL")
                             .fetchone()[0], 0, "every old record got its head")
            self.assertEqual(con.execute("SELECT count(*) FROM records WHERE chk IS NULL")
                             .fetchone()[0], 7, "old records have no check tag: their head serves")
        self.assertEqual(old.run("kv", "get", "settings", "theme").out, b"dark\n")
        self.assertEqual(old.run("kv", "get", "settings", "font", expect=1).out, b"")
        self.assertIn("git status", old.run("history", "list").text)
        old.register(server_url(server), "olduser", "pw-old-store")
        self.assertEqual(old.sync()["uploaded"], 7)
        new_id = old.append("notes", "four")
        with sqlite3.connect("file:%s?mode=ro" % old.db_path, uri=True) as con:
            self.assertEqual(len(con.execute("SELECT chk FROM records WHERE tag = 'notes' AND "
                                             "idx = 3").fetchone()[0]), 8, "a new record has one")
        self.assertEqual(old.sync()["uploaded"], 1)
        # Another device pulls the old records and the chained one after them.
        b = Device(self, "b", key=old.key_export())
        b.login(server_url(server), "olduser", "pw-old-store")
        self.assertEqual(b.sync()["downloaded"], 8)
        b.verify()
        self.assertEqual(b.cat(new_id), b"four")
        self.assertEqual(b.run("kv", "get", "settings", "theme").out, b"dark\n")
        with sqlite3.connect("file:%s?mode=ro" % b.db_path, uri=True) as con:
            self.assertEqual(con.execute("SELECT CAST(substr(data, 1, 4) AS TEXT) FROM records WHERE "
                                         "tag = 'notes' ORDER BY idx").fetchall(),
                             [("RSE1",), ("RSE1",), ("RSE1",), ("RSE2",)])


FIXTURE_SCHEMA3 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                               "store-schema3")


class SchemaThreeTest(unittest.TestCase):
    """A store made before check tags (schema 3, fd2b488) opens, keeps its
    state, and its records, which have no tag, are checked by their chain
    heads before an upload: a damaged one is held back, the rest go."""

    def test_a_store_without_check_tags_is_checked_by_its_heads(self):
        server = ServerProcess(self)
        old = device_from_fixture(self, "s3", FIXTURE_SCHEMA3)
        with sqlite3.connect(os.path.join(old.dir, "store.db")) as con:
            self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], 3)
            cols = [r[1] for r in con.execute("PRAGMA table_info(records)")]
            self.assertNotIn("chk", cols)
        self.assertIn("7 records", old.verify().text)
        with sqlite3.connect(os.path.join(old.dir, "store.db")) as con:
            self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], 4)
            self.assertEqual(con.execute("SELECT count(*) FROM records WHERE chk IS NULL")
                             .fetchone()[0], 7)
            # One byte of the second notes record changed on disk.
            data = bytearray(con.execute("SELECT data FROM records WHERE tag = 'notes' AND "
                                         "idx = 1").fetchone()[0])
            data[-5] ^= 0x01
            con.execute("UPDATE records SET data = ? WHERE tag = 'notes' AND idx = 1",
                        (bytes(data),))
        self.assertEqual(old.run("kv", "get", "settings", "theme").out, b"dark\n")
        self.assertIn("git status", old.run("history", "list").text)
        old.register(server_url(server), "s3user", "pw-schema3")
        rep = old.run("sync", "--json", expect=3).json
        self.assertEqual(rep["uploaded"], 5, "settings 3, history 1, notes idx 0")
        self.assertEqual([(h["tag"], h["idx"], h["error"]) for h in rep["held"]],
                         [("notes", 1, "damaged")])


class ForkTest(unittest.TestCase):
    """Two databases behind one URL: the proxy sends device b's reads of
    shard a/notes to the second database, whose a/notes a copy of a's store
    wrote differently; everything else comes from the first."""

    def setUp(self):
        if make_database(self).name != "sqlite":
            self.skipTest("the second database is a copy of the first's SQLite file")

    def test_two_histories_of_a_shard_are_detected_once_checkpoints_cross(self):
        s1 = ServerProcess(self)
        a, b = make_devices(self, s1, 2, names=["a", "b"])
        proxy = ForkProxy(self, s1.port, s1.port, a.host)
        b.run("login", "--server", "http://127.0.0.1:%d" % proxy.port, "--user", a.user)
        a.append_lines("notes", ["same%d" % i for i in range(3)])
        a.sync()
        b.sync()
        # The second database: a copy of the first, now; a copy of a's store writes to it.
        s2db = make_database(self)
        src = sqlite3.connect(s1.db.url)
        dst = sqlite3.connect(s2db.url)
        src.backup(dst)
        src.close()
        dst.close()
        s2 = ServerProcess(self, db=s2db)
        a2dir = os.path.join(make_tempdir(self, "recsync-a2-"), "store")
        shutil.copytree(a.dir, a2dir)
        a2 = Device(self, "a2", init=False)
        a2.dir = a2dir
        a2.password = a.password
        a2.run("login", "--server", server_url(s2), "--user", a.user)
        a2.append_lines("notes", ["other%d" % i for i in range(3)])
        a2.sync()
        a.append_lines("notes", ["real%d" % i for i in range(3)])
        a.sync()

        proxy.port2 = s2.port
        # No checkpoint of a's has crossed yet: b cannot tell (fork consistency).
        rep = b.sync()
        self.assertEqual(rep["downloaded"], 3)
        seen = [p for h, _, p in payloads(b) if h == a.host]
        self.assertIn(b"other2", seen, "b was shown the second history")
        self.assertNotIn(b"real0", seen)
        # a writes a checkpoint; it reaches b through the first database.
        a.run("sync", "--checkpoint")
        r = b.run("sync", "--json", expect=1)
        err = r.err.decode()
        self.assertIn("%s/notes" % a.host, err)
        self.assertIn("different histories", err)
        self.assertIn(a.host, err)
        self.assertIsNotNone(b.run("status", "--json").json["alarm"])


class ForkProxy:
    """Forwards to server one, except b's view of a's notes shard: its index
    entry and its records come from server two."""

    def __init__(self, test, port1, port2, host):
        self.port1, self.port2, self.host = port1, port2, host
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def forward(self, port, method, body):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                c.request(method, self.path, body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                c.close()
                return r.status, r.getheader("Content-Type", "application/json"), data

            def answer(self, status, ctype, data):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                import json
                if self.path.startswith("/api/v1/records") and \
                        ("host=%s" % proxy.host) in self.path and "tag=notes" in self.path:
                    return self.answer(*self.forward(proxy.port2, "GET", None))
                status, ctype, data = self.forward(proxy.port1, "GET", None)
                if self.path == "/api/v1/index" and status == 200:
                    s2 = json.loads(self.forward(proxy.port2, "GET", None)[2])
                    other = {(s["host"], s["tag"]): s for s in s2["shards"]}
                    idx = json.loads(data)
                    for s in idx["shards"]:
                        if (s["host"], s["tag"]) == (proxy.host, "notes"):
                            s.update(other[(proxy.host, "notes")])
                    data = json.dumps(idx).encode()
                self.answer(status, ctype, data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                self.answer(*self.forward(proxy.port1, "POST", self.rfile.read(n)))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        test.addCleanup(self.close)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)




def payloads(device, tag="notes"):
    return [(r["host"], r["idx"], device.cat(r["id"])) for r in device.log(tag)]


if __name__ == "__main__":
    unittest.main()
