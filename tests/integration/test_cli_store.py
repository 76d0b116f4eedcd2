"""The recsync command line on the local store, as a user types it.

Drives the real binary ($RECSYNC_BIN) against temporary directories:
init and the key, append (one record and --lines bulk), log, cat, verify,
exit statuses and --help. The store's database is changed behind the
binary's back with Python's sqlite3 module where a test needs it.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# RS_TEST_TIME_SCALE: see harness.py (this module does not import it).
TIME_SCALE = float(os.environ.get("RS_TEST_TIME_SCALE", "1"))
RUN_TIMEOUT = 300.0 * TIME_SCALE  # seconds for any one command, bulk appends under sanitizers included
# The bulk append: 100k lines; 20k in a ThreadSanitizer build (tests/CMakeLists.txt sets
# RS_TEST_SANITIZER), where `append` runs on one thread (nothing for TSan to watch but the
# same code) at 5-15x ASan's cost. The 100k run is the ASan leg's.
BULK = 20000 if os.environ.get("RS_TEST_SANITIZER") == "thread" else 100000
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ENVELOPE_OVERHEAD = 4 + 8 + 24 + 32 + 16 + 24 + 16


def recsync_bin():
    return os.environ.get("RECSYNC_BIN") or os.path.join(REPO, "build", "bin", "recsync")


class CliTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="recsync-cli-")
        self.addCleanup(shutil.rmtree, self.root, True)

    def dir(self, name):
        return os.path.join(self.root, name)

    def run_cli(self, store_dir, *args, stdin=b"", expect=None, env=None):
        """Runs recsync with --dir; checks the exit status when `expect` is given."""
        cmd = [recsync_bin()]
        if store_dir is not None:
            cmd += ["--dir", store_dir]
        cmd += list(args)
        full_env = dict(os.environ)
        full_env.pop("RECSYNC_DIR", None)
        full_env["HOME"] = self.root
        full_env["XDG_DATA_HOME"] = os.path.join(self.root, "xdg")
        if env:
            full_env.update(env)
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=RUN_TIMEOUT,
                              env=full_env)
        if expect is not None and proc.returncode != expect:
            self.fail("%s exited %d, want %d\nstdout: %s\nstderr: %s" % (
                " ".join(args), proc.returncode, expect, proc.stdout[-2000:],
                proc.stderr[-2000:].decode(errors="replace")))
        return proc

    def init(self, name):
        d = self.dir(name)
        self.run_cli(d, "init", expect=0)
        return d

    def init_key_id(self, name):
        """Initializes a store; returns its dir and the key id init printed."""
        d = self.dir(name)
        out = self.run_cli(d, "init", expect=0).stdout.decode()
        m = re.search(r"^key ([0-9a-f]{16})\b", out, re.M)
        self.assertIsNotNone(m, out)
        return d, m.group(1)

    def key_export(self, d):
        out = self.run_cli(d, "key", "export", expect=0).stdout.decode()
        self.assertTrue(out.startswith("rsk1:"), out)
        return out.strip()

    def append(self, d, tag, payload):
        out = self.run_cli(d, "append", tag, stdin=payload, expect=0).stdout.decode().strip()
        self.assertRegex(out, UUID_RE)
        return out

    def log_json(self, d, *args):
        out = self.run_cli(d, "log", "--json", *args, expect=0).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def db(self, d):
        conn = sqlite3.connect(os.path.join(d, "store.db"), timeout=10)
        self.addCleanup(conn.close)
        return conn

    # ---- init and the key ----------------------------------------------------

    def test_init_twice_refuses_and_keeps_the_first_key(self):
        d = self.dir("a")
        first = self.run_cli(d, "init", expect=0).stdout.decode()
        self.assertIn(d, first)
        key = self.key_export(d)
        host = self.run_cli(d, "log", "--json", expect=0)  # opens fine
        self.assertEqual(host.stdout, b"")
        again = self.run_cli(d, "init", expect=1)
        self.assertIn(d, again.stderr.decode())
        self.assertEqual(again.stdout, b"")
        self.assertEqual(self.key_export(d), key)
        self.assertEqual(os.stat(os.path.join(d, "key")).st_mode & 0o777, 0o600)

    def test_key_from_one_dir_opens_the_first_dirs_records_in_another(self):
        a, a_key_id = self.init_key_id("a")
        ids = [self.append(a, "notes", b"first note\n"), self.append(a, "notes", b"\x00bin\xff")]
        key = self.key_export(a)
        b = self.dir("b")
        out = self.run_cli(b, "key", "import", stdin=(key + "\n").encode(), expect=0)
        self.assertIn(b, out.stdout.decode())
        self.assertEqual(self.key_export(b), key)
        # Move a's records into b's store as sync would, rows as they are.
        src, dst = self.db(a), self.db(b)
        rows = src.execute("SELECT host, tag, idx, id, hlc, version, data, head FROM records") \
            .fetchall()
        shards = src.execute("SELECT host, tag, start, end, head FROM shards").fetchall()
        dst.executemany("INSERT INTO records(host, tag, idx, id, hlc, version, data, head) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        dst.executemany("INSERT INTO shards(host, tag, start, end, head) VALUES (?, ?, ?, ?, ?)",
                        shards)
        dst.commit()
        self.assertEqual(self.run_cli(b, "cat", ids[0], expect=0).stdout, b"first note\n")
        self.assertEqual(self.run_cli(b, "cat", ids[1], expect=0).stdout, b"\x00bin\xff")
        self.run_cli(b, "verify", expect=0)
        # A store under another key names both keys and prints nothing.
        c, c_key_id = self.init_key_id("c")
        other = self.db(c)
        other.executemany("INSERT INTO records(host, tag, idx, id, hlc, version, data, head) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        other.executemany("INSERT INTO shards(host, tag, start, end, head) "
                          "VALUES (?, ?, ?, ?, ?)", shards)
        other.commit()
        res = self.run_cli(c, "cat", ids[0], expect=1)
        self.assertEqual(res.stdout, b"")
        err = res.stderr.decode()
        self.assertIn(ids[0], err)
        self.assertIn(a_key_id, err)
        self.assertIn(c_key_id, err)
        self.run_cli(c, "verify", expect=1)

    def test_key_import_into_a_store_with_records_under_another_key_is_refused(self):
        a = self.init("a")
        self.append(a, "kv", b"x")
        before = self.key_export(a)
        other = self.key_export(self.init("b"))
        res = self.run_cli(a, "key", "import", stdin=other.encode(), expect=1)
        self.assertIn("cannot open", res.stderr.decode())
        self.assertEqual(self.key_export(a), before)

    def test_key_import_of_a_mistyped_key_is_refused_and_creates_nothing(self):
        key = self.key_export(self.init("a"))
        i = len(key) // 2
        typo = key[:i] + ("A" if key[i] != "A" else "B") + key[i + 1:]
        for bad in (typo, key[:-3], "rsk1:", "not a key at all"):
            d = self.dir("fresh")
            res = self.run_cli(d, "key", "import", stdin=bad.encode(), expect=1)
            self.assertIn("key", res.stderr.decode())
            self.run_cli(d, "log", expect=1)
            self.assertFalse(os.path.exists(os.path.join(d, "store.db")))

    # ---- verify --------------------------------------------------------------

    def test_verify_fails_naming_the_record_after_one_byte_changes(self):
        d = self.init("a")
        self.run_cli(d, "append", "notes", "--lines",
                     stdin=b"".join(b"note number %d\n" % i for i in range(5)), expect=0)
        ok = self.run_cli(d, "verify", expect=0)
        self.assertIn("5 records", ok.stdout.decode())
        target = self.log_json(d)[3]
        conn = self.db(d)
        rid = uuid.UUID(target["id"]).bytes
        data = bytearray(conn.execute("SELECT data FROM records WHERE id = ?", (rid,)).fetchone()[0])
        data[len(data) - 5] ^= 0x01
        conn.execute("UPDATE records SET data = ? WHERE id = ?", (bytes(data), rid))
        conn.commit()
        res = self.run_cli(d, "verify", expect=1)
        err = res.stderr.decode()
        self.assertIn(target["id"], err)
        self.assertIn("idx 3", err)
        for other in self.log_json(d):
            if other["id"] != target["id"]:
                self.assertNotIn(other["id"], err)
        res = self.run_cli(d, "cat", target["id"], expect=1)
        self.assertEqual(res.stdout, b"")

    # ---- append, log, cat ----------------------------------------------------

    def test_append_lines_of_100k_is_one_transaction(self):
        d = self.init("a")
        lines = b"".join(b"%06d %s\n" % (i, b"x" * 193) for i in range(BULK))
        start = time.monotonic()
        res = self.run_cli(d, "append", "bulk", "--lines", stdin=lines, expect=0)
        elapsed = time.monotonic() - start
        ids = res.stdout.decode().split()
        self.assertEqual(len(ids), BULK)
        self.assertEqual(len(set(ids)), BULK)
        # 100k transactions would take minutes; one takes seconds even under sanitizers.
        self.assertLess(elapsed, 120.0 * TIME_SCALE)
        conn = self.db(d)
        self.assertEqual(conn.execute("SELECT count(*), min(idx), max(idx) FROM records").fetchone(),
                         (BULK, 0, BULK - 1))
        self.assertEqual(self.run_cli(d, "cat", ids[BULK - 1], expect=0).stdout,
                         b"%06d " % (BULK - 1) + b"x" * 193)

    def test_append_lines_with_a_failing_line_appends_nothing(self):
        d = self.init("a")
        self.append(d, "bulk", b"kept")
        # The last of 20,001 lines is beyond the 1 MiB bound: the whole batch goes.
        lines = b"".join(b"line %d\n" % i for i in range(20000)) + b"y" * (1024 * 1024 + 1) + b"\n"
        res = self.run_cli(d, "append", "bulk", "--lines", stdin=lines, expect=1)
        self.assertIn("line 20001", res.stderr.decode())
        self.assertEqual(res.stdout, b"")  # no id of a record that was rolled back
        self.assertEqual(len(self.log_json(d)), 1)
        self.run_cli(d, "verify", expect=0)
        # The next append continues the shard where it was.
        self.append(d, "bulk", b"next")
        self.assertEqual([r["idx"] for r in self.log_json(d)], [0, 1])

    def test_append_lines_makes_one_record_per_line(self):
        d = self.init("a")
        res = self.run_cli(d, "append", "t", "--lines", stdin=b"a\n\nccc", expect=0)
        ids = res.stdout.decode().split()
        self.assertEqual(len(ids), 3)
        self.assertEqual([self.run_cli(d, "cat", i, expect=0).stdout for i in ids],
                         [b"a", b"", b"ccc"])

    def test_log_json_lines_carry_the_record_fields(self):
        d = self.init("a")
        payloads = {"kv": [b"1", b"22"], "notes": [b"333", b"", b"55555"]}
        for tag, items in payloads.items():
            for p in items:
                self.append(d, tag, p)
        recs = self.log_json(d)
        self.assertEqual(len(recs), 5)
        hosts = {r["host"] for r in recs}
        self.assertEqual(len(hosts), 1)
        for r in recs:
            for field in ("id", "host", "tag", "idx", "hlc", "size"):
                self.assertIn(field, r)
            self.assertRegex(r["id"], UUID_RE)
            self.assertRegex(r["host"], UUID_RE)
            self.assertRegex(r["hlc"], r"^[0-9a-f]{16}$")
            self.assertIsInstance(r["idx"], int)
            self.assertEqual(r["size"], len(payloads[r["tag"]][r["idx"]]))
            self.assertEqual(self.run_cli(d, "cat", r["id"], expect=0).stdout,
                             payloads[r["tag"]][r["idx"]])
        self.assertEqual(len({r["hlc"] for r in recs}), 5)
        notes = self.log_json(d, "--tag", "notes")
        self.assertEqual([r["idx"] for r in notes], [0, 1, 2])
        self.assertEqual({r["tag"] for r in notes}, {"notes"})
        # The plain form has the same fields, space separated.
        plain = self.run_cli(d, "log", "--tag", "kv", expect=0).stdout.decode().splitlines()
        self.assertEqual(len(plain), 2)
        kv = self.log_json(d, "--tag", "kv")
        self.assertEqual(plain[1].split(), [kv[1]["id"], kv[1]["host"], "kv", "1", kv[1]["hlc"],
                                            "2"])

    def test_cat_of_an_unknown_id_exits_1_naming_it(self):
        d = self.init("a")
        self.append(d, "kv", b"x")
        missing = str(uuid.uuid4())
        res = self.run_cli(d, "cat", missing, expect=1)
        self.assertEqual(res.stdout, b"")
        self.assertIn(missing, res.stderr.decode())

    def test_store_size_bound_is_checked_at_append(self):
        d = self.init("a")
        self.run_cli(d, "append", "big", stdin=b"z" * (1024 * 1024 + 1), expect=1)
        rid = self.append(d, "big", b"z" * (1024 * 1024))
        self.assertEqual(self.log_json(d)[0]["size"], 1024 * 1024)
        self.assertEqual(len(self.run_cli(d, "cat", rid, expect=0).stdout), 1024 * 1024)

    # ---- exit statuses and help ----------------------------------------------

    def test_exit_status_is_0_1_or_2(self):
        d = self.init("a")
        rid = self.append(d, "kv", b"x")
        missing = self.dir("nothing-here")
        usage = [
            (), ("no-such-command",), ("--no-such-option", "log"), ("init", "extra"),
            ("append",), ("append", "Bad Tag"), ("append", "a", "b"), ("append", "kv", "--bogus"),
            ("log", "extra"), ("log", "--tag", "Bad Tag"), ("cat",), ("cat", "not-a-uuid"),
            ("cat", rid, rid), ("key",), ("key", "rename"), ("key", "rotate", "extra"),
            ("verify", "extra"),
        ]
        for args in usage:
            res = self.run_cli(d, *args)
            self.assertEqual(res.returncode, 2, "%r: %s" % (args, res.stderr))
            self.assertNotEqual(res.stderr, b"", args)
        res = self.run_cli(None, "--dir")
        self.assertEqual(res.returncode, 2)
        failures = [
            (missing, ("log",)), (missing, ("cat", rid)), (missing, ("verify",)),
            (missing, ("key", "export")), (missing, ("append", "kv")), (d, ("init",)),
            (d, ("cat", str(uuid.uuid4()))),
        ]
        for where, args in failures:
            res = self.run_cli(where, *args)
            self.assertEqual(res.returncode, 1, "%r: %s" % (args, res.stderr))
            self.assertTrue(res.stderr.startswith(b"recsync: "), res.stderr)
        self.assertFalse(os.path.exists(os.path.join(missing, "store.db")))
        for args in (("log",), ("cat", rid), ("verify",), ("key", "export")):
            self.assertEqual(self.run_cli(d, *args).returncode, 0, args)

    def test_default_dir_comes_from_recsync_dir_then_xdg(self):
        d = self.dir("from-env")
        self.run_cli(None, "init", expect=0, env={"RECSYNC_DIR": d})
        self.assertTrue(os.path.exists(os.path.join(d, "store.db")))
        self.run_cli(None, "init", expect=0)
        self.assertTrue(os.path.exists(os.path.join(self.root, "xdg", "recsync", "store.db")))

    def test_help_on_every_command_exits_0(self):
        for args in (("--help",), ("-h",)):
            res = self.run_cli(None, *args, expect=0)
            self.assertIn(b"usage", res.stdout)
        missing = self.dir("no-store")
        for cmd in (["init"], ["key"], ["key", "export"], ["append"], ["append", "kv"], ["log"],
                    ["cat"], ["verify"], ["rebuild"]):
            for flag in ("--help", "-h"):
                res = self.run_cli(missing, *(cmd + [flag]))
                self.assertEqual(res.returncode, 0, "%s %s: %s" % (cmd, flag, res.stderr))
                self.assertIn(b"usage: recsync", res.stdout, cmd)
                self.assertIn(cmd[0].encode(), res.stdout)
        # --help does nothing else: no store was made.
        self.assertFalse(os.path.exists(missing))

    def test_status_help_exits_0(self):
        res = self.run_cli(self.dir("x"), "status", "--help")
        if b"unknown command" in res.stderr:
            self.skipTest("this build has no status command")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn(b"usage", res.stdout)


if __name__ == "__main__":
    unittest.main()
