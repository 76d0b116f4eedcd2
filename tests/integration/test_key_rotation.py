"""Key rotation with epochs (issue 14, item 3): `recsync key rotate`.

- Three devices, one retired in the rotation: the two others converge on
  what was written before and after; the retired one, holding its old key
  and the server's whole database, opens none of the records written after
  (tests/tools/rs_tryopen really decrypts every envelope with the key);
  after pruning no record under the old key is left on the server. A device
  joining after the rotation with the current key reads everything.
- A device offline through a rotation comes back, opens its sealed copy of
  the new key, and what it wrote offline under the old key reaches the
  others.
- The old key and the server's database tell nothing of the new key
  (part of the first test: every record is tried).
- Two devices rotating at the same time end on one key: the new key of the
  rotation record with the highest (hlc, host).
- A rotation names the devices that published no key and does nothing.
- A store made by 0.1.0 (and by RECSYNC_PREV_BIN, when set) gets its device
  key pair when opened.

Runs on SQLite and (CTest: integration.pg.test_key_rotation) on PostgreSQL:
each test starts its own ServerProcess(.
"""

import base64
import binascii
import os
import shutil
import sqlite3
import subprocess
import time
import unittest

from device import Device, make_devices, new_user, server_url
from harness import REPO, ServerProcess, backend_name, make_tempdir, no_server, pg_bindir, recsync_bin

ROTATE_TIMEOUT = 60.0


def tryopen_bin():
    return os.path.join(os.path.dirname(recsync_bin()), "rs_tryopen")


def key_bytes(text):
    """The 32 bytes of a key's text form rsk1:base64url(key || checksum)."""
    b64 = text.strip()[len("rsk1:"):]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))[:32]


def key_list(dev):
    return dev.run("key", "list", "--json").json


def current_key(dev):
    keys = [k for k in key_list(dev)["keys"] if k["current"]]
    dev.test.assertEqual(len(keys), 1, "one current key")
    return keys[0]["id"]


def kv_state(dev):
    return dev.run("kv", "list").text


class Base(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(tryopen_bin()):
            self.fail("rs_tryopen is not built next to recsync: %s" % tryopen_bin())
        self.server = ServerProcess(self, args=["--prune-interval-ms", "0"], hooks=True)
        self.url = server_url(self.server)

    # -- the server's database, as a thief with a copy of it reads it --

    def server_rows(self, sql_sqlite, sql_pg):
        if backend_name() == "postgres":
            out = subprocess.run([os.path.join(pg_bindir(), "psql"), "-X", "-q", "-At", "-F", " ", "-d",
                                  self.server.db.url.replace("postgres:///", "postgresql:///"), "-c", sql_pg],
                                 capture_output=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            return [l for l in out.stdout.decode().splitlines() if l]
        con = sqlite3.connect("file:%s?mode=ro" % self.server.db.url, uri=True, timeout=30)
        try:
            return [" ".join(str(v) for v in row) for row in con.execute(sql_sqlite).fetchall()]
        finally:
            con.close()

    def server_records(self):
        """Every record of every user: 'HOST TAG IDX ID HLC VERSION DATA' in hex."""
        return self.server_rows(
            "SELECT lower(hex(host)), tag, idx, lower(hex(id)), hlc, version, lower(hex(data)) "
            "FROM records ORDER BY host, tag, idx",
            "SELECT encode(host, 'hex'), tag, idx, encode(id, 'hex'), hlc, version, encode(data, 'hex') "
            "FROM records ORDER BY host, tag, idx")

    def server_key_ids(self):
        """The key id every envelope and snapshot chunk on the server names."""
        recs = self.server_rows("SELECT lower(hex(substr(data, 5, 8))) FROM records",
                                "SELECT encode(substring(data from 5 for 8), 'hex') FROM records")
        chunks = self.server_rows("SELECT lower(hex(substr(data, 5, 8))) FROM snapshot_chunks",
                                  "SELECT encode(substring(data from 5 for 8), 'hex') FROM snapshot_chunks")
        return recs, chunks

    def tryopen(self, key_text, rows):
        """[(position, opened, key id, plaintext bytes)] for every row, opened with key_text only."""
        p = subprocess.run([tryopen_bin(), key_text.strip()], input=("\n".join(rows) + "\n").encode(),
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.decode().splitlines()
        self.assertEqual(len(out), len(rows), "rs_tryopen answered every record")
        res = []
        for row, line in zip(rows, out):
            parts = line.split()
            res.append((tuple(row.split()[:3]), parts[0] == "open", parts[1],
                        binascii.unhexlify(parts[2]) if parts[0] == "open" and len(parts) > 2 else b""))
        return res

    def prune(self):
        r = self.server.client().post("/api/v1/test/prune", {})
        self.assertEqual(r.status, 200, r)
        return r.json

    def rotate(self, dev, *args):
        return dev.run("key", "rotate", "--yes", *args, timeout=ROTATE_TIMEOUT)

    def assert_reveals_nothing(self, opened, new_key_text):
        """No plaintext opened with the old key carries the new key in any encoding."""
        k = key_bytes(new_key_text)
        forms = [k, k.hex().encode(), base64.b64encode(k), base64.urlsafe_b64encode(k).rstrip(b"="),
                 new_key_text.strip().encode()[5:25]]
        for pos, ok, kid, plain in opened:
            if ok:
                for f in forms:
                    self.assertNotIn(f, plain, "record %s opened under the old key carries the new key" % (pos,))


class Rotation(Base):
    def test_three_devices_one_retired_in_the_rotation(self):
        a, b, c = make_devices(self, self.server, 3, names=["a", "b", "c"])
        for d in (a, b, c):
            d.run("kv", "set", "s", "before-" + d.name, "v-" + d.name)
            d.sync(extra=["--checkpoint"])  # a checkpoint publishes the device's public key
        for d in (a, b, c):
            d.sync()
        old_key, old_id = a.key_export(), current_key(a)
        before = {tuple(r.split()[:3]) for r in self.server_records()}

        out = self.rotate(a, "--retire", c.host).text
        self.assertIn(b.host, out)
        self.assertIn(key_list(b)["device_key"], out, "b's fingerprint is shown")
        self.assertIn("retired in the same step", out)
        self.assertRegex(out.split("retired in the same step")[1], c.host)
        new_key, new_id = a.key_export(), current_key(a)
        self.assertNotEqual(new_id, old_id)
        self.assertEqual({k["id"] for k in key_list(a)["keys"]}, {old_id, new_id}, "a keeps the old key")

        b.sync()
        self.assertEqual(current_key(b), new_id, "b picked up the new key at its sync")
        self.assertEqual(b.key_export(), new_key)
        for d in (a, b):
            d.run("kv", "set", "s", "after-" + d.name, "w-" + d.name)
            d.sync()
        for d in (a, b):
            d.sync()
        state = kv_state(a)
        for k in ("before-a", "before-b", "before-c", "after-a", "after-b"):
            self.assertIn(k, state)
        self.assertEqual(kv_state(b), state, "a and b converge")
        err = c.sync(expect=1).err.decode()
        self.assertIn("retired", err)

        # The retired device's old key against every record of the server's database.
        rows = self.server_records()
        res = self.tryopen(old_key, rows)
        rotation = [(pos, row) for (pos, ok, kid, plain), row in zip(res, rows) if b'"kind":"rotation"' in plain]
        self.assertEqual(len(rotation), 1, "the rotation record")
        rot_hlc = int(rotation[0][1].split()[4])
        # Written after the rotation: a higher HLC than the rotation record (the HLC orders causally).
        after = {tuple(r.split()[:3]) for r in rows if int(r.split()[4]) > rot_hlc}
        self.assertGreaterEqual(len(after), 3, "records were written after the rotation")
        self.assertTrue(before.isdisjoint(after))
        opened_after = [(pos, plain) for pos, ok, kid, plain in res if ok and pos in after]
        self.assertEqual(opened_after, [], "records written after the rotation open under the retired "
                                           "device's key")
        opened_after = [(pos, plain) for pos, ok, kid, plain in res if ok and pos not in before]
        # The rotation record itself is sealed under the old key (the devices still on it
        # must read it); it carries only sealed boxes. Nothing else written after opens.
        self.assertEqual([p for p, plain in opened_after if b'"kind":"rotation"' not in plain], [],
                         "records written after the rotation open under the retired device's key")
        self.assertEqual(len(opened_after), 1, "exactly the rotation record opens")
        self.assertNotIn(c.host.encode(), opened_after[0][1].split(b'"retired"')[0],
                         "the retired device got no copy of the new key")
        # Someone holding only the old key and the database learns nothing of the new key:
        # no plaintext carries it, no record sealed under it opens with the old key.
        self.assert_reveals_nothing(res, new_key)
        self.assertTrue(any(kid == new_id for _, _, kid, _ in res), "records under the new key exist")
        self.assertEqual([pos for pos, ok, kid, _ in res if ok and kid == new_id], [],
                         "a record under the new key opened with the old key")
        self.assertTrue(any(ok for pos, ok, kid, plain in res if pos in before),
                        "the old key does open the records from before (the helper really decrypts)")
        res_new = self.tryopen(new_key, rows)
        self.assertTrue(all(ok for _, ok, kid, _ in res_new if kid == new_id),
                        "the new key opens what it sealed (the helper is not broken)")

        # A device joining now with the current key reads records under both keys.
        d = Device(self, "d", key=new_key)
        d.login(self.url, a.user, a.password)
        d.sync()
        self.assertEqual(kv_state(d), state)
        self.assertEqual({k["id"] for k in key_list(d)["keys"]}, {old_id, new_id},
                         "the joining device learned the older key from the keyring record")
        d.verify()

        # Every remaining device acks; the prune pass leaves nothing under the old key.
        for dev in (a, b, d, a, b, d):
            dev.sync()
        r = self.prune()
        self.assertGreater(r["records_pruned"], 0, r)
        recs, chunks = self.server_key_ids()
        self.assertGreater(len(recs) + len(chunks), 0)
        self.assertNotIn(old_id, recs, "a record under the old key is left on the server after pruning")
        self.assertNotIn(old_id, chunks, "a snapshot under the old key is left on the server")
        for dev in (a, b, d):
            dev.verify()

    def test_a_device_that_published_no_key_is_named_and_nothing_is_done(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        a.run("kv", "set", "s", "k", "v")
        a.sync()
        b.sync()  # no checkpoint yet: b has published no key
        old_id = current_key(a)
        r = a.run("key", "rotate", "--yes", expect=1)
        self.assertIn("published no key", r.err.decode())
        self.assertIn(b.host, r.text)
        self.assertEqual(current_key(a), old_id)
        self.assertFalse([x for x in a.records() if x[1] == "rs.keys"], "no rotation was written")
        b.sync(extra=["--checkpoint"])
        self.rotate(a)
        self.assertNotEqual(current_key(a), old_id)
        b.sync()
        self.assertEqual(current_key(b), current_key(a))

    def test_a_device_offline_through_a_rotation_comes_back(self):
        a, b, c = make_devices(self, self.server, 3, names=["a", "b", "c"])
        for d in (a, b, c):
            d.sync(extra=["--checkpoint"])
        old_id = current_key(c)
        c.run("kv", "set", "s", "offline-1", "x")  # c is offline from here
        self.rotate(a)
        new_id = current_key(a)
        a.run("kv", "set", "s", "after-a", "y")
        a.sync()
        b.sync()
        b.run("kv", "set", "s", "after-b", "z")
        b.sync()
        c.run("kv", "set", "s", "offline-2", "x2")
        self.assertEqual(current_key(c), old_id, "offline, c still writes under the old key")
        rep = c.sync()
        self.assertGreaterEqual(rep["uploaded"], 2, rep)
        self.assertEqual(current_key(c), new_id, "c opened its sealed copy of the new key")
        c.run("kv", "set", "s", "back", "w")
        c.sync()
        for d in (a, b, c, a, b):
            d.sync()
        state = kv_state(a)
        for k in ("offline-1", "offline-2", "after-a", "after-b", "back"):
            self.assertIn(k, state)
        self.assertEqual(kv_state(b), state)
        self.assertEqual(kv_state(c), state)
        for d in (a, b, c):
            d.verify()
        # c's offline records are under the old key, its later ones under the new.
        ids = {}
        for r in c.records():
            if r[0].lower() == c.host.replace("-", "") and r[1] == "kv":
                ids[r[2]] = bytes(r[6][4:12]).hex()
        self.assertEqual(sorted(ids.values()), sorted([old_id, old_id, new_id]), ids)

    def test_two_devices_rotating_at_the_same_time_agree(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        for d in (a, b, a, b):
            d.run("kv", "set", "s", "k-" + d.name, "v")
            d.sync(extra=["--checkpoint"])
        old_id = current_key(a)
        # Both plan (and sync) before either rotates: each waits at its confirmation.
        procs = []
        for d in (a, b):
            env = dict(os.environ, RECSYNC_PASSWORD=d.password)
            p = subprocess.Popen([recsync_bin(), "--dir", d.dir, "key", "rotate"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            d.procs.append(p)
            procs.append(p)
            line = p.stdout.readline().decode()
            self.assertIn("current key %s" % old_id, line, "%s planned against the old key" % d.name)
        for p in procs:
            p.stdin.write(b"yes\n")
            p.stdin.flush()
        for p, d in zip(procs, (a, b)):
            out, err = p.communicate(timeout=ROTATE_TIMEOUT)
            self.assertEqual(p.returncode, 0, "%s: %r %r" % (d.name, out, err))
        a.run("kv", "set", "s", "racing-a", "1")
        b.run("kv", "set", "s", "racing-b", "2")
        for d in (a, b, a, b):
            d.sync()
        # The rule, computed here from the rotations a's store holds: highest (hlc, host).
        con = sqlite3.connect("file:%s?mode=ro" % a.db_path, uri=True)
        try:
            rots = con.execute("SELECT hlc, lower(hex(host)), lower(hex(new_id)) FROM key_rotations").fetchall()
        finally:
            con.close()
        self.assertEqual(len(rots), 2, rots)
        winner = max(rots, key=lambda r: (r[0], r[1]))[2]
        self.assertEqual(current_key(a), winner)
        self.assertEqual(current_key(b), winner)
        ids = {r[2] for r in rots}
        for d in (a, b):
            self.assertEqual({k["id"] for k in key_list(d)["keys"]}, ids | {old_id},
                             "%s keeps the losing key" % d.name)
        a.run("kv", "set", "s", "agreed", "3")
        a.sync()
        b.sync()
        self.assertEqual(kv_state(a), kv_state(b))
        for k in ("racing-a", "racing-b", "agreed", "k-a", "k-b"):
            self.assertIn(k, kv_state(b))
        for d in (a, b):
            d.verify()
        last = [r for r in a.records() if r[1] == "kv" and r[0].lower() == a.host.replace("-", "")][-1]
        self.assertEqual(bytes(last[6][4:12]).hex(), winner, "new records are sealed under the agreed key")


@no_server
class Upgrade(unittest.TestCase):
    def test_a_store_made_by_0_1_0_gets_a_device_key_pair(self):
        src = os.path.join(REPO, "tests", "fixtures", "store-0.1.0")
        dst = os.path.join(make_tempdir(self), "store")
        shutil.copytree(src, dst)
        r = subprocess.run([recsync_bin(), "--dir", dst, "key", "list", "--json"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        import json
        first = json.loads(r.stdout)
        self.assertRegex(first["device_key"], r"^[0-9a-f]{4}(-[0-9a-f]{4}){3}$")
        self.assertEqual(len(first["keys"]), 1)
        self.assertTrue(first["keys"][0]["current"])
        self.assertGreater(first["keys"][0]["records"], 0)
        again = json.loads(subprocess.run([recsync_bin(), "--dir", dst, "key", "list", "--json"],
                                          capture_output=True, timeout=60).stdout)
        self.assertEqual(again, first, "the key pair is made once and kept")
        v = subprocess.run([recsync_bin(), "--dir", dst, "verify"], capture_output=True, timeout=60)
        self.assertEqual(v.returncode, 0, v.stderr)

    def test_a_store_made_by_a_previous_build_gets_a_device_key_pair(self):
        # RECSYNC_PREV_BIN: a recsync built from main before key rotation (skipped without).
        prev = os.environ.get("RECSYNC_PREV_BIN")
        if not prev or not os.path.exists(prev):
            self.skipTest("RECSYNC_PREV_BIN (a recsync of the previous build) is not set")
        import json
        dst = os.path.join(make_tempdir(self), "store")
        for args in (["init"], ["kv", "set", "s", "k", "v"], ["kv", "set", "s", "k2", "v2"]):
            r = subprocess.run([prev, "--dir", dst] + args, capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
        keys = json.loads(subprocess.run([recsync_bin(), "--dir", dst, "key", "list", "--json"],
                                         capture_output=True, timeout=60, check=True).stdout)
        self.assertRegex(keys["device_key"], r"^[0-9a-f]{4}(-[0-9a-f]{4}){3}$")
        self.assertEqual(keys["keys"][0]["records"], 2)
        v = subprocess.run([recsync_bin(), "--dir", dst, "verify"], capture_output=True, timeout=60)
        self.assertEqual(v.returncode, 0, v.stderr)
        r = subprocess.run([recsync_bin(), "--dir", dst, "kv", "get", "s", "k2"], capture_output=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, b"v2"))


if __name__ == "__main__":
    unittest.main()
