"""Damage never spreads, and one bad shard never stops a sync.

* A record damaged in a device's store (one byte of its ciphertext changed
  on disk) is never uploaded: the sync uploads the shard up to it, holds the
  shard back from it, names the record and how to repair it, and exits 3
  (partial). Every other device keeps syncing. ``recsync repair`` restores
  what the server holds, drops what never left the device (sealing the
  later records again), or cuts another device's shard back so the next
  sync downloads it again; ``verify`` passes afterwards and all devices
  converge.
* A shard that cannot be applied (another device's clock two hours ahead, a
  record on the server that does not open) is held back and named in the
  report (text and --json) while every other shard syncs, uploads included;
  the exit status is 3.
"""

import base64
import sqlite3
import unittest

from device import Device, make_devices, server_url, shard_counts
from harness import Account, ServerProcess, make_record

TWO_HOURS_MS = 2 * 3600 * 1000


def damage(device, host, tag, idx, offset=-5):
    """Flips one byte of the ciphertext of record (host, tag, idx) in the store's file."""
    con = sqlite3.connect(device.db_path, timeout=30)
    try:
        row = con.execute("SELECT data FROM records WHERE hex(host) = ? AND tag = ? AND idx = ?",
                          (host.replace("-", "").upper(), tag, idx)).fetchone()
        assert row is not None, "no record %s/%s idx %d to damage" % (host, tag, idx)
        data = bytearray(row[0])
        data[offset] ^= 0x01
        con.execute("UPDATE records SET data = ? WHERE hex(host) = ? AND tag = ? AND idx = ?",
                    (bytes(data), host.replace("-", "").upper(), tag, idx))
        con.commit()
    finally:
        con.close()


def payloads(device, tag="notes"):
    """The decrypted payloads of a device's records of `tag` on host order, idx order."""
    return [(r["host"], r["idx"], device.cat(r["id"])) for r in device.log(tag)]


def own(device, tag="notes"):
    return [p for h, _, p in payloads(device, tag) if h == device.host]


def remote_shard(device, server, tag="notes", host=None):
    tok = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True).execute(
        "SELECT value FROM meta WHERE name = 'sync.token'").fetchone()[0]
    r = server.client(token=tok).get("/api/v1/index")
    assert r.status == 200, r
    for s in r.json["shards"]:
        if s["host"] == (host or device.host) and s["tag"] == tag:
            return s["start"], s["end"]
    return None


class DamagedRecordTest(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def test_a_damaged_record_is_never_uploaded_and_repair_drops_only_it(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        a.append_lines("notes", ["n%d" % i for i in range(5)])
        a.sync()
        a.append_lines("notes", ["n%d" % i for i in range(5, 10)])
        damage(a, a.host, "notes", 7)
        v = a.run("verify", expect=1)
        self.assertIn("idx 7", v.err.decode())

        r = a.run("sync", "--json", expect=3)
        rep = r.json
        self.assertTrue(rep["partial"])
        self.assertEqual(rep["uploaded"], 2, "idx 5 and 6 go, 7 on does not")
        self.assertEqual(len(rep["held"]), 1, rep)
        held = rep["held"][0]
        self.assertEqual((held["host"], held["tag"], held["direction"], held["idx"],
                          held["error"]), (a.host, "notes", "upload", 7, "damaged"))
        err = r.err.decode()
        self.assertIn("idx 7", err)
        self.assertIn("recsync repair", err)
        self.assertIn("partial", err)
        self.assertEqual(remote_shard(a, self.server), (0, 7), "the server never got idx 7")

        # The other device is unaffected: it pulls what went and verifies.
        rb = b.sync()
        self.assertEqual(rb["downloaded"], 7)
        b.verify()

        # The text report names the shard too, and exits 3 again.
        t = a.run("sync", expect=3)
        self.assertIn("(partial)", t.text)
        self.assertIn("held back the upload of shard %s/notes from idx 7" % a.host,
                      t.err.decode())

        fixed = a.run("repair")
        self.assertIn("lost", fixed.text)
        self.assertIn("1 lost and dropped, 2 sealed again", fixed.text)
        a.verify()
        self.assertEqual(own(a), [b"n%d" % i for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)])
        ra = a.sync()
        self.assertEqual(ra["uploaded"], 2)
        self.assertFalse(ra["partial"])
        b.sync()
        b.verify()
        self.assertEqual(own(a), [p for h, _, p in payloads(b) if h == a.host])
        self.assertEqual(a.records(), b.records(), "both stores hold the same records")

    def test_a_record_is_checked_by_its_tag_or_else_its_head_before_upload(self):
        """Each record a store writes has a check tag (schema 4) that the
        upload checks its bytes against; a row without one (received from
        another device, or stored before tags) is checked by its chain head;
        a damaged tag only costs opening the record."""
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        a.append_lines("notes", ["t%d" % i for i in range(3)])
        a.sync()
        b.sync()
        a.append_lines("notes", ["t%d" % i for i in range(3, 8)])

        def tags(device):
            with sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True) as con:
                return con.execute("SELECT idx, chk FROM records WHERE tag = 'notes' "
                                   "ORDER BY idx").fetchall()
        mine = tags(a)
        self.assertEqual([i for i, _ in mine], list(range(8)))
        self.assertTrue(all(c is not None and len(c) == 8 for _, c in mine), mine)
        self.assertEqual(len(set(c for _, c in mine)), 8, "each record its own tag")
        # A record received from another device has none.
        self.assertEqual(tags(b), [(i, None) for i in range(3)])

        hexhost = a.host.replace("-", "").upper()
        with sqlite3.connect(a.db_path, timeout=30) as con:
            # idx 3: its tag damaged, its bytes intact; idx 5 on: rows as a store before tags.
            con.execute("UPDATE records SET chk = ? WHERE hex(host) = ? AND tag = 'notes' "
                        "AND idx = 3", (bytes(8), hexhost))
            con.execute("UPDATE records SET chk = NULL WHERE hex(host) = ? AND tag = 'notes' "
                        "AND idx >= 5", (hexhost,))
        damage(a, a.host, "notes", 6)
        rep = a.run("sync", "--json", expect=3).json
        self.assertEqual(rep["uploaded"], 3, "idx 3 (opened: it is intact), 4 and 5 go")
        self.assertEqual([(h["idx"], h["error"]) for h in rep["held"]], [(6, "damaged")])
        self.assertEqual(remote_shard(a, self.server), (0, 6))
        self.assertEqual(b.sync()["downloaded"], 3)
        b.verify()

    def test_repair_restores_an_uploaded_record_from_the_server(self):
        a, = make_devices(self, self.server, 1, names=["a"])
        a.append_lines("notes", ["x%d" % i for i in range(4)])
        a.sync()
        before = a.records()
        damage(a, a.host, "notes", 2)
        a.run("verify", expect=1)
        # Nothing of this device waits: the sync has nothing to do and says so.
        self.assertEqual(a.sync()["outcome"], "noop")
        r = a.run("repair")
        self.assertIn("restored from the server", r.text)
        a.verify()
        self.assertEqual(a.records(), before, "the store is byte for byte what it was")

    def test_repair_of_another_devices_record_downloads_it_again(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        a.append_lines("notes", ["y%d" % i for i in range(6)])
        a.sync()
        b.sync()
        damage(b, a.host, "notes", 3)
        b.run("verify", expect=1)
        r = b.run("repair")
        self.assertIn("cut back to idx 3", r.text)
        b.verify()
        self.assertEqual(len(payloads(b)), 3)
        self.assertEqual(b.sync()["downloaded"], 3)
        b.verify()
        self.assertEqual(a.records(), b.records())

    def test_repair_of_an_undamaged_store_changes_nothing(self):
        a, = make_devices(self, self.server, 1, names=["a"])
        a.append_lines("notes", ["z"])
        before = a.dump()
        r = a.run("repair")
        self.assertIn("nothing to repair", r.text)
        self.assertEqual(a.dump(), before)

    def test_repair_needs_the_server_before_dropping_own_records(self):
        a, = make_devices(self, self.server, 1, names=["a"])
        a.append_lines("notes", ["w0", "w1"])
        damage(a, a.host, "notes", 1)
        self.server.stop()
        before = a.dump()
        r = a.run("repair", expect=1)
        self.assertIn("needs its server", r.err.decode())
        self.assertEqual(a.dump(), before, "nothing dropped without the server's word")


class HeldShardTest(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def test_a_fast_clock_holds_back_one_shard_and_everything_else_syncs(self):
        a, b, fast = make_devices(self, self.server, 3, names=["a", "b", "fast"])
        ahead = {"RECSYNC_CLOCK_OFFSET_MS": str(TWO_HOURS_MS)}
        fast.run("kv", "set", "ns", "k", "from the future", env=ahead)
        fast.run("sync", "--json", env=ahead)
        b.run("kv", "set", "ns", "b", "from b")
        b.sync(expect=3)  # b is held back on the fast shard too, and uploads
        a.run("kv", "set", "ns", "a", "from a")

        r = a.run("sync", "--json", expect=3)
        rep = r.json
        counts = shard_counts(rep)
        self.assertEqual(counts[(a.host, "kv")], (1, 0), "a's own record was uploaded")
        self.assertEqual(counts[(b.host, "kv")], (0, 1), "b's shard was pulled")
        self.assertNotIn((fast.host, "kv"), counts)
        self.assertEqual([(h["host"], h["direction"], h["idx"], h["error"]) for h in rep["held"]],
                         [(fast.host, "download", 0, "clock")])
        self.assertIn("ahead", rep["held"][0]["message"])
        self.assertIn(fast.host, r.err.decode())
        self.assertEqual(a.run("kv", "get", "ns", "b").out, b"from b\n")
        self.assertEqual(a.run("kv", "get", "ns", "k", expect=1).out, b"")
        a.verify()
        b.sync(expect=3)
        self.assertEqual(b.run("kv", "get", "ns", "a").out, b"from a\n")

        # Once the wall clock catches up (here: this device's clock moved on),
        # the held shard syncs and the sync is whole again.
        r2 = a.run("sync", "--json", env=ahead)
        self.assertFalse(r2.json["partial"])
        self.assertEqual(shard_counts(r2.json)[(fast.host, "kv")], (0, 1))
        self.assertEqual(a.run("kv", "get", "ns", "k", env=ahead).out, b"from the future\n")

    def test_a_record_on_the_server_that_does_not_open_holds_back_its_shard_only(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        b.append_lines("notes", ["ok"])
        b.sync()
        # An old client (or a hostile one with the account's token) put a
        # record that does not open at idx 1 of b's shard.
        good = b.records()[0]
        tok = sqlite3.connect("file:%s?mode=ro" % b.db_path, uri=True).execute(
            "SELECT value FROM meta WHERE name = 'sync.token'").fetchone()[0]
        acct = Account(self.server, None, None, b.host, tok)
        bad = make_record(b.host, "notes", 1, envelope=bytes(good[6][:-1]) + b"\x00")
        self.assertEqual(acct.upload([bad]).status, 200)
        a.append_lines("notes", ["mine"])
        before_a = len(a.records())

        r = a.run("sync", "--json", "--page-records", "1", expect=3)
        rep = r.json
        self.assertEqual(rep["uploaded"], 1, "a's own record went")
        self.assertEqual(rep["downloaded"], 1, "b's idx 0 was applied, idx 1 was not")
        held = rep["held"]
        self.assertEqual([(h["host"], h["direction"], h["idx"], h["error"]) for h in held],
                         [(b.host, "download", 1, "damaged")])
        self.assertIn("does not open", held[0]["message"])
        self.assertEqual(len(a.records()), before_a + 1, "nothing of the refused page was kept")
        a.verify()


if __name__ == "__main__":
    unittest.main()
