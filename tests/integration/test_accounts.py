"""Accounts (issue 14): `logout`, `account password` with a second
device syncing on, `account delete` (the database holds no row of the user
afterwards, read table by table), and a wrong key refused at login and at
key import before anything is written.

Runs on SQLite and (CTest: integration.pg.test_accounts) on PostgreSQL.
The servers come from test_devices.Base, which calls ServerProcess(."""

import os
import re
import secrets
import sqlite3
import subprocess
import unittest

from device import Device, new_user
from harness import Client, backend_name
from test_devices import KEY_ID, Base, devices, key_id, token_of
from test_watch_live import Watcher


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
