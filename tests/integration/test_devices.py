"""Devices (issue 14): `recsync devices` (names, last seen, how far
behind), `devices retire` while the device's `watch` runs (it stops with
the retired message; its token fails on every endpoint, on a second
recsyncd process too on PostgreSQL), and rejoining by logging in again.
Accounts and the wrong key are in test_accounts.py.

Runs on SQLite and (CTest: integration.pg.test_devices) on PostgreSQL;
starts its servers with ServerProcess( through Base."""

import os
import re
import secrets
import sqlite3
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


if __name__ == "__main__":
    unittest.main()
