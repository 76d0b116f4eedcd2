"""Devices and accounts (issue 14): `recsync devices` (names, last seen,
how far behind), `devices retire` while the device's `watch` runs (it stops
with the retired message; its token fails on every endpoint, on a second
recsyncd process too on PostgreSQL), rejoining by logging in again,
`logout`, `account password` with a second device syncing on, `account
delete` (the database holds no row of the user afterwards, read table by
table), and a wrong key refused at login and at key import before
anything is written.

Runs on SQLite and (CTest: integration.pg.test_devices) on PostgreSQL."""

import json
import os
import re
import secrets
import sqlite3
import subprocess
import time
import unittest

from device import Device, new_user, server_url
from harness import Client, ServerProcess, backend_name, make_database
from test_watch_live import Watcher

CACHE_MS = 500  # --token-cache-ms: how long another process may still accept a revoked token
BEAT_MS = 500   # --heartbeat-ms: when open streams check their token again
FAST = ["--token-cache-ms", str(CACHE_MS), "--heartbeat-ms", str(BEAT_MS)]
KEY_ID = re.compile(r"\b[0-9a-f]{16}\b")


def token_of(device):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        row = con.execute("SELECT value FROM meta WHERE name = 'sync.token'").fetchone()
    finally:
        con.close()
    return row[0] if row else None


def devices(device):
    return {d["host"]: d for d in device.run("devices", "--json").json["devices"]}


def key_id(device):
    return device.run("status", "--json").json["key"]


def endpoint_calls(host):
    """Every authenticated endpoint: (method, path, body)."""
    snap = {"id": "0190f0e0-0000-7000-8000-000000000001", "tag": "kv", "frontier": [],
            "chunk": 0, "chunks": 1, "data": "AAAA"}
    return [
        ("GET", "/api/v1/index", None), ("GET", "/api/v1/boot", None),
        ("GET", "/api/v1/records?host=%s&tag=kv" % host, None), ("GET", "/api/v1/events?after=0", None),
        ("GET", "/api/v1/acks", None), ("GET", "/api/v1/snapshots", None),
        ("GET", "/api/v1/snapshot?id=%s&chunk=0" % snap["id"], None), ("GET", "/api/v1/devices", None),
        ("POST", "/api/v1/records", {"records": []}), ("POST", "/api/v1/acks", {"frontier": []}),
        ("POST", "/api/v1/snapshots", snap), ("POST", "/api/v1/devices/retire", {"host": host}),
        ("POST", "/api/v1/devices/rename", {"name": "x"}), ("POST", "/api/v1/logout", {}),
        ("POST", "/api/v1/account/password", {"password": "a", "new_password": "b"}),
        ("POST", "/api/v1/account/delete", {"password": "a", "confirm": "a"}),
    ]


class Base(unittest.TestCase):
    def setUp(self):
        self.db = make_database(self)
        self.server = ServerProcess(self, db=self.db, args=FAST)
        self.url = server_url(self.server)
        self.user, self.password = new_user(), "pw-" + secrets.token_hex(8)
        self.a = Device(self, "a")
        self.a.run("register", "--server", self.url, "--user", self.user, "--name", "laptop",
                   env={"RECSYNC_PASSWORD": self.password})
        self.a.password = self.password
        self.b = Device(self, "b", key=self.a.key_export())
        self.b.login(self.url, self.user, self.password)

    def assert_refused_everywhere(self, server, token, host, error):
        c = Client(server.port, token=token)
        self.addCleanup(c.close)
        for method, path, body in endpoint_calls(host):
            r = c.request(method, path, body=body)
            self.assertEqual(r.status, 401, "%s %s on port %d: %r" % (method, path, server.port, r))
            self.assertEqual(r.json["error"], error, "%s %s: %r" % (method, path, r))


class Devices(Base):
    def test_list_names_last_seen_behind_and_rename(self):
        self.a.append_lines("kv", ["one", "two", "three"])
        self.a.sync()
        devs = devices(self.a)
        self.assertEqual(set(devs), {self.a.host, self.b.host})
        self.assertEqual(devs[self.a.host]["name"], "laptop")
        self.assertTrue(devs[self.a.host]["current"])
        self.assertFalse(devs[self.b.host]["current"])
        self.assertEqual(devs[self.b.host]["name"], os.uname().nodename[:64])
        self.assertEqual(devs[self.b.host]["behind"], 3, devs)
        self.assertEqual(devs[self.a.host]["behind"], 0, devs)
        self.assertIsNone(devs[self.b.host]["retired_ms"])
        seen = devs[self.b.host]["last_seen_ms"]
        self.assertGreater(seen, 0)
        time.sleep(0.01)
        self.b.sync()  # applies and acks A's three records
        devs = devices(self.a)
        self.assertEqual(devs[self.b.host]["behind"], 0, devs)
        self.assertGreater(devs[self.b.host]["last_seen_ms"], seen)
        self.a.run("devices", "rename", self.b.host, "phone")
        self.assertEqual(devices(self.b)[self.b.host]["name"], "phone")
        self.b.run("devices", "rename", "tablet")
        self.assertEqual(devices(self.a)[self.b.host]["name"], "tablet")
        bad = self.a.run("devices", "rename", self.b.host, "a\tb", expect=1)
        self.assertIn("not valid", bad.err.decode())
        self.assertEqual(devices(self.a)[self.b.host]["name"], "tablet")
        text = self.a.run("devices").text
        self.assertIn("tablet", text)
        self.assertIn("(this device)", text)
        unknown = self.a.run("devices", "retire", "0190f0e0-0000-7000-8000-00000000abcd", expect=1)
        self.assertIn("no device", unknown.err.decode())


class Retire(Base):
    def test_retire_while_watch_runs_then_the_device_rejoins(self):
        self.b.sync()
        token = token_of(self.b)
        self.assertIsNotNone(token)
        w = Watcher(self, self.b)
        w.wait_err("watching")
        floor = Client(self.server.port, token=token_of(self.a))
        self.addCleanup(floor.close)
        self.assertEqual(floor.get("/api/v1/acks").json["devices"], 2)
        out = self.a.run("devices", "retire", self.b.host)
        self.assertIn("retired device %s" % self.b.host, out.text)
        rc = w.proc.wait(timeout=20)
        w.threads[1].join(timeout=5)
        self.assertNotEqual(rc, 0, w.err)
        err = "\n".join(w.err)
        self.assertIn("device_retired", err)
        self.assertIn("log in again", err)
        self.assert_refused_everywhere(self.server, token, self.b.host, "device_retired")
        # The retired device no longer holds the ack floor (nor the prune floor: same predicate).
        self.assertEqual(floor.get("/api/v1/acks").json["devices"], 1)
        self.assertIsNotNone(devices(self.a)[self.b.host]["retired_ms"])
        # Its sync says what happened and how to rejoin; it writes offline meanwhile.
        self.b.append_lines("kv", ["written while retired"])
        r = self.b.sync(expect=1)
        self.assertIn("retired", r.err.decode())
        self.assertIn("recsync login", r.err.decode())
        # Rejoin: logging in again makes it active; what it wrote offline reaches A.
        self.b.login(self.url, self.user, self.password)
        self.assertIsNone(devices(self.a)[self.b.host]["retired_ms"])
        self.assertEqual(self.b.sync()["uploaded"], 1)
        self.assertEqual(self.a.sync()["downloaded"], 1)
        self.assertEqual(self.a.records(), self.b.records())

    def test_a_retired_token_fails_on_a_second_process_and_its_stream_there_ends(self):
        if backend_name() != "postgres":
            self.skipTest("two recsyncd processes on one database: PostgreSQL only")
        second = ServerProcess(self, db=self.db, args=FAST)
        self.b.sync()
        token = token_of(self.b)
        # B's watch and its token cached on the second process; A retires B through the first.
        c2 = Client(second.port, token=token)
        self.addCleanup(c2.close)
        self.assertEqual(c2.get("/api/v1/index").status, 200)
        self.b.run("login", "--server", server_url(second), "--user", self.user)
        token = token_of(self.b)
        self.assertEqual(c2.get("/api/v1/index", token=token).status, 200)
        w = Watcher(self, self.b)
        w.wait_err("watching")
        t0 = time.monotonic()
        self.a.run("devices", "retire", self.b.host)
        rc = w.proc.wait(timeout=20)
        took = time.monotonic() - t0
        w.threads[1].join(timeout=5)
        self.assertNotEqual(rc, 0, w.err)
        self.assertIn("device_retired", "\n".join(w.err))
        self.assertLess(took, (CACHE_MS + 2 * BEAT_MS) / 1000.0 + 5, "the stream outlived the cache")
        time.sleep(CACHE_MS / 1000.0 + 0.2)
        for server in (self.server, second):
            self.assert_refused_everywhere(server, token, self.b.host, "device_retired")


class Accounts(Base):
    def test_logout_revokes_the_token_and_forgets_it(self):
        token = token_of(self.b)
        self.assertEqual(self.b.run("logout").text.strip(), "logged out")
        self.assertIsNone(token_of(self.b))
        c = Client(self.server.port, token=token)
        self.addCleanup(c.close)
        r = c.get("/api/v1/index")
        self.assertEqual((r.status, r.json["error"]), (401, "unauthorized"), r)
        self.assertIn("not logged in", self.b.sync(expect=1).err.decode())
        self.a.append_lines("kv", ["still works"])
        self.assertEqual(self.a.sync()["uploaded"], 1)
        self.b.login(self.url, self.user, self.password)
        self.assertEqual(self.b.sync()["downloaded"], 1)

    def test_password_change_while_a_second_device_syncs_on(self):
        self.b.sync()
        w = Watcher(self, self.b)
        w.wait_err("watching")
        new = "new-" + secrets.token_hex(8)
        wrong = self.a.run("account", "password", env={"RECSYNC_PASSWORD": "not-it",
                                                        "RECSYNC_NEW_PASSWORD": new}, expect=1)
        self.assertIn("401", wrong.err.decode())
        self.a.run("account", "password", env={"RECSYNC_NEW_PASSWORD": new})
        self.a.append_lines("kv", ["after the change"])
        self.a.sync()
        w.wait_end("downloaded", self.a.host, "kv", 1)
        self.assertIsNone(w.proc.poll(), "the watch stopped: %s" % w.err)
        self.b.append_lines("kv", ["b after the change"])
        w.wait_end("uploaded", self.b.host, "kv", 1)
        self.assertEqual(self.a.sync()["downloaded"], 1)
        w.stop()
        c = Device(self, "c", key=self.a.key_export())
        self.assertIn("401", c.login(self.url, self.user, self.password, expect=1).err.decode())
        c.login(self.url, self.user, new)
        self.assertEqual(c.sync()["downloaded"], 2)

    def test_account_delete_leaves_no_row_of_the_user(self):
        other = Device(self, "other")
        other.register(self.url, new_user(), "other-pw")
        other.append_lines("kv", ["someone else"])
        other.sync()
        for i in range(5):
            self.a.run("kv", "set", "ns", "k%d" % i, '"v%d"' % i)
        self.a.sync()
        self.b.run("kv", "set", "ns", "b", '"b1"')
        self.b.sync()
        self.a.sync()
        self.a.run("snapshot", "kv")
        uid = self.user_id()
        before = self.rows_of(uid)
        for table in ("users", "devices", "records", "events", "acks", "shards", "snapshots",
                      "snapshot_chunks", "snapshot_frontier"):
            self.assertGreater(before.get(table, 0), 0, "nothing in %s to delete: %r" % (table, before))
        # A wrong confirmation or password deletes nothing.
        r = self.a.run("account", "delete", env={"RECSYNC_CONFIRM": "someone"}, expect=1)
        self.assertIn("nothing deleted", r.err.decode())
        r = self.a.run("account", "delete", env={"RECSYNC_PASSWORD": "wrong", "RECSYNC_CONFIRM": self.user},
                       expect=1)
        self.assertEqual(self.rows_of(uid), before)
        # Password and confirmation from stdin, as a script would give them.
        r = self.a.run("account", "delete", input=("%s\n%s\n" % (self.password, self.user)).encode(),
                       env={"RECSYNC_PASSWORD": ""})
        self.assertIn("deleted account %s" % self.user, r.text)
        self.assertEqual(self.rows_of(uid), {}, "rows of the deleted user remain")
        for host in (self.a.host, self.b.host):
            self.assertEqual(self.count("SELECT count(*) FROM devices WHERE %s" % self.host_match(host)), 0)
        self.assertEqual(self.count("SELECT count(*) FROM users WHERE name = '%s'" % self.user), 0)
        self.assertGreater(self.rows_of(self.user_id(other_name=True)).get("records", 0), 0,
                           "the other user's records went too")
        self.assertIn("not logged in", self.a.sync(expect=1).err.decode())
        r = self.b.sync(expect=1)
        self.assertIn("401", r.err.decode())
        self.assertEqual(other.sync()["outcome"], "noop")

    # -- reading the server's database --

    def query(self, sql):
        if backend_name() == "postgres":
            cl = self.db.cluster
            out = subprocess.run([os.path.join(cl.bindir, "psql"), "-X", "-q", "-At", "-h", cl.dir, "-U",
                                  "postgres", "-d", self.db.dbname, "-c", sql],
                                 capture_output=True, timeout=60, check=True).stdout.decode()
            return [line.split("|") for line in out.splitlines() if line]
        con = sqlite3.connect("file:%s?mode=ro" % self.db.url, uri=True, timeout=30)
        try:
            return [[str(v) for v in row] for row in con.execute(sql).fetchall()]
        finally:
            con.close()

    def count(self, sql):
        return int(self.query(sql)[0][0])

    def host_match(self, host):
        h = host.replace("-", "")
        return "host = '\\x%s'::bytea" % h if backend_name() == "postgres" else "host = x'%s'" % h

    def user_id(self, other_name=False):
        rows = self.query("SELECT user_id, name FROM users")
        ids = [int(r[0]) for r in rows if (r[1] == self.user) != other_name]
        self.assertEqual(len(ids), 1, rows)
        return ids[0]

    def tables(self):
        if backend_name() == "postgres":
            rows = self.query("SELECT table_name FROM information_schema.columns WHERE table_schema = 'public'"
                              " AND column_name = 'user_id'")
        else:
            rows = self.query("SELECT m.name FROM sqlite_master m JOIN pragma_table_info(m.name) p"
                              " WHERE m.type = 'table' AND p.name = 'user_id'")
        names = sorted(r[0] for r in rows)
        self.assertIn("records", names)
        return names

    def rows_of(self, uid):
        """Rows of user `uid` in every table that has a user_id column (tables with none omitted)."""
        out = {}
        for t in self.tables():
            n = self.count("SELECT count(*) FROM %s WHERE user_id = %d" % (t, uid))
            if n:
                out[t] = n
        return out


class WrongKey(Base):
    def test_login_with_another_key_is_refused_before_anything_is_written(self):
        self.a.append_lines("kv", ["sealed under a's key"])
        self.a.sync()
        good = key_id(self.a)
        c = Device(self, "c", init=False)
        init = c.run("init").text
        mine = re.search(r"key ([0-9a-f]{16})", init).group(1)
        self.assertNotEqual(mine, good)
        r = c.login(self.url, self.user, self.password, expect=1)
        err = r.err.decode()
        self.assertIn("refusing to log in", err)
        self.assertEqual(set(KEY_ID.findall(err)) & {good, mine}, {good, mine}, err)
        self.assertIsNone(token_of(c))
        con = sqlite3.connect("file:%s?mode=ro" % c.db_path, uri=True)
        try:
            self.assertEqual(con.execute("SELECT count(*) FROM meta WHERE name LIKE 'sync.%'").fetchone()[0], 0)
        finally:
            con.close()
        # The server does not keep the device among those holding the floor.
        self.assertIsNotNone(devices(self.a)[c.host]["retired_ms"])
        # With the right key it joins.
        c2 = Device(self, "c2", key=self.a.key_export())
        c2.login(self.url, self.user, self.password)
        self.assertEqual(c2.sync()["downloaded"], 1)

    def test_key_import_into_a_logged_in_store_checks_the_servers_records(self):
        self.a.append_lines("kv", ["sealed under a's key"])
        self.a.sync()
        good = key_id(self.b)
        other = Device(self, "other")
        wrong_text = other.key_export()
        wrong = key_id_of_text(self, wrong_text)
        r = self.b.run("key", "import", input=wrong_text.encode(), expect=1)
        err = r.err.decode()
        self.assertIn("refusing to import key %s" % wrong, err)
        self.assertIn(good, err)
        self.assertEqual(key_id(self.b), good)
        self.assertEqual(self.b.sync()["downloaded"], 1)
        self.b.run("key", "import", input=self.a.key_export().encode())  # the same key: fine


def key_id_of_text(test, text):
    """The id of the key in `text` (a store importing its own key again prints it)."""
    d = Device(test, "probe", key=text)
    return re.search(r"imported key ([0-9a-f]{16})", d.run("key", "import", input=text.encode()).text).group(1)


if __name__ == "__main__":
    unittest.main()
