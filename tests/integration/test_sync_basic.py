"""recsync sync between two and three devices through the real recsyncd:
the outcomes noop, push, pull and merge with per-shard counts, every record
arriving exactly once, the --json report's shape, status, and the account
commands' errors."""

import sqlite3
import unittest

from device import Device, make_devices, new_user, server_url, shard_counts
from harness import ServerProcess

REPORT_KEYS = {"outcome", "uploaded", "downloaded", "shards", "seq", "elapsed_ms", "partial",
               "held", "snapshots", "compacted"}
SHARD_KEYS = {"host", "tag", "uploaded", "downloaded"}


class SyncOutcomes(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def assert_report(self, report, outcome, uploaded, downloaded, shards):
        self.assertEqual(set(report), REPORT_KEYS, report)
        for s in report["shards"]:
            self.assertEqual(set(s), SHARD_KEYS, s)
        self.assertEqual(report["outcome"], outcome, report)
        self.assertEqual(report["uploaded"], uploaded, report)
        self.assertEqual(report["downloaded"], downloaded, report)
        self.assertEqual(shard_counts(report), shards, report)

    def assert_same_records(self, devices, expected_count):
        first = devices[0].records()
        self.assertEqual(len(first), expected_count)
        self.assertEqual(len({r[3] for r in first}), expected_count, "a record id appears twice")
        for d in devices[1:]:
            self.assertEqual(d.records(), first, "%s and %s differ" % (devices[0].name, d.name))
            self.assertEqual(d.shards(), devices[0].shards())

    def test_outcomes_and_counts_between_two_devices(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        self.assert_report(a.sync(), "noop", 0, 0, {})

        ids_a = a.append_lines("notes", ["a-%d" % i for i in range(3)])
        self.assert_report(a.sync(), "push", 3, 0, {(a.host, "notes"): (3, 0)})
        self.assert_report(b.sync(), "pull", 0, 3, {(a.host, "notes"): (0, 3)})
        self.assert_report(b.sync(), "noop", 0, 0, {})
        self.assert_report(a.sync(), "noop", 0, 0, {})

        ids_a += a.append_lines("notes", ["a-%d" % i for i in range(3, 5)])
        ids_b = b.append_lines("notes", ["b-%d" % i for i in range(4)])
        ids_b += b.append_lines("todo", ["t-0"])
        self.assert_report(a.sync(), "push", 2, 0, {(a.host, "notes"): (2, 0)})
        self.assert_report(b.sync(), "merge", 5, 2, {
            (a.host, "notes"): (0, 2), (b.host, "notes"): (4, 0), (b.host, "todo"): (1, 0)})
        self.assert_report(a.sync(), "pull", 0, 5, {(b.host, "notes"): (0, 4), (b.host, "todo"): (0, 1)})
        self.assert_report(a.sync(), "noop", 0, 0, {})
        self.assert_report(b.sync(), "noop", 0, 0, {})

        self.assert_same_records([a, b], 10)
        for d in (a, b):
            self.assertEqual(sorted(d.ids()), sorted(ids_a + ids_b))
            d.verify()
        lines = {rid: "a-%d" % i for i, rid in enumerate(ids_a)}
        lines.update({rid: "b-%d" % i for i, rid in enumerate(ids_b[:4])})
        lines[ids_b[4]] = "t-0"
        for rid, text in lines.items():
            self.assertEqual(b.cat(rid), text.encode())
            self.assertEqual(a.cat(rid), text.encode())

    def test_three_devices_converge(self):
        a, b, c = make_devices(self, self.server, 3, names=["a", "b", "c"])
        a.append_lines("kvish", ["a%d" % i for i in range(7)])
        b.append_lines("kvish", ["b%d" % i for i in range(5)])
        b.append_lines("other", ["o%d" % i for i in range(2)])
        c.append_lines("kvish", ["c%d" % i for i in range(9)])
        self.assertEqual(a.sync()["outcome"], "push")
        rb = b.sync()
        self.assertEqual((rb["outcome"], rb["uploaded"], rb["downloaded"]), ("merge", 7, 7))
        rc = c.sync()
        self.assertEqual((rc["outcome"], rc["uploaded"], rc["downloaded"]), ("merge", 9, 14))
        ra = a.sync()
        self.assertEqual((ra["outcome"], ra["uploaded"], ra["downloaded"]), ("pull", 0, 16))
        rb = b.sync()
        self.assertEqual((rb["outcome"], rb["uploaded"], rb["downloaded"]), ("pull", 0, 9))
        for d in (a, b, c):
            self.assertEqual(d.sync()["outcome"], "noop")
            d.verify()
        self.assert_same_records([a, b, c], 23)

    def test_human_report_names_outcome_and_shards(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        a.append_lines("notes", ["x", "y"])
        out = a.run("sync").text
        self.assertTrue(out.startswith("push: uploaded 2, downloaded 0"), out)
        self.assertIn("%s/notes" % a.host, out)
        out = b.run("sync").text
        self.assertTrue(out.startswith("pull: uploaded 0, downloaded 2"), out)


class Status(unittest.TestCase):
    def test_status_local_remote_and_unreachable(self):
        server = ServerProcess(self)
        solo = Device(self, "solo")
        st = solo.status()
        self.assertIsNone(st["server"])
        self.assertFalse(st["online"])
        self.assertIsNone(st["last_sync"])
        self.assertEqual(st["remote_source"], "none")

        a, b = make_devices(self, server, 2, names=["a", "b"])
        a.append_lines("notes", ["1", "2", "3"])
        st = a.status()
        self.assertEqual(st["server"], server_url(server))
        self.assertTrue(st["online"])
        self.assertIsNone(st["error"])
        self.assertEqual(st["remote_source"], "live")
        self.assertIsNone(st["last_sync"])
        self.assertEqual(st["host"], a.host)
        self.assertEqual(len(st["key"]), 16)
        [sh] = st["shards"]
        self.assertEqual((sh["host"], sh["tag"], sh["own"]), (a.host, "notes", True))
        self.assertEqual((sh["local_start"], sh["local_end"]), (0, 3))
        self.assertEqual((sh["remote_start"], sh["remote_end"]), (0, 0))
        self.assertEqual((sh["to_upload"], sh["to_download"]), (3, 0))

        a.sync()
        st = b.status()
        [sh] = st["shards"]
        self.assertEqual((sh["own"], sh["local_end"], sh["remote_end"]), (False, 0, 3))
        self.assertEqual((sh["to_upload"], sh["to_download"]), (0, 3))
        self.assertEqual(st["seq"], 3)

        b.sync()
        a.append("notes", "4")
        st = a.status()
        self.assertEqual(st["last_sync"]["outcome"], "push")
        self.assertEqual(st["last_sync"]["uploaded"], 3)
        self.assertEqual(st["shards"][0]["to_upload"], 1)

        server.stop()
        st = b.status(timeout_ms=1000)
        self.assertFalse(st["online"])
        self.assertIn(server_url(server), st["error"])
        self.assertEqual(st["remote_source"], "last_sync")
        self.assertEqual(st["last_sync"]["outcome"], "pull")
        self.assertEqual(st["last_sync"]["downloaded"], 3)
        [sh] = st["shards"]
        self.assertEqual((sh["local_end"], sh["remote_end"], sh["to_download"]), (3, 3, 0))
        text = b.run("status").text
        self.assertIn("UNREACHABLE", text)
        self.assertIn("as of the last sync", text)


class BadToken(unittest.TestCase):
    def test_unknown_token_is_an_error_not_unreachable(self):
        server = ServerProcess(self)
        a, = make_devices(self, server, 1, names=["a"])
        a.append("notes", "1")
        con = sqlite3.connect(a.db_path, timeout=30)
        with con:
            con.execute("UPDATE meta SET value = 'f00d' WHERE name = 'sync.token'")
        con.close()
        st = a.status()
        self.assertFalse(st["online"])
        self.assertIn("401", st["error"])
        self.assertIn("ERROR", a.run("status").text)
        before = a.dump()
        r = a.sync(expect=1)
        self.assertIn("401", r.err.decode())
        self.assertEqual(a.dump(), before)


class Accounts(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)
        self.url = server_url(self.server)

    def test_register_twice_and_wrong_password(self):
        user = new_user()
        a = Device(self, "a")
        a.register(self.url, user, "right-password")
        b = Device(self, "b", key=a.key_export())
        r = b.register(self.url, user, "right-password", expect=1)
        self.assertIn("409", r.err.decode())
        r = b.login(self.url, user, "wrong-password", expect=1)
        self.assertIn("401", r.err.decode())
        self.assertIsNone(b.status()["server"], "a failed login must not log the store in")
        b.login(self.url, user, "right-password")
        self.assertEqual(b.status()["user"], user)

    def test_password_from_stdin_when_not_a_terminal(self):
        d = Device(self, "d")
        d.run("register", "--server", self.url, "--user", new_user(), input=b"secret-from-stdin\n")
        self.assertEqual(d.sync()["outcome"], "noop")

    def test_sync_without_account_fails_clearly(self):
        d = Device(self, "d")
        r = d.sync(expect=1)
        self.assertIn("not logged in", r.err.decode())

    def test_usage_errors_exit_2(self):
        d = Device(self, "d")
        d.run("register", "--user", "x", expect=2)
        d.run("login", "--server", "ftp://x", "--user", "x", expect=2)
        d.run("sync", "--page-records", "0", expect=2)
        d.run("sync", "extra", expect=2)
        d.run("status", "--bogus", expect=2)


if __name__ == "__main__":
    unittest.main()
