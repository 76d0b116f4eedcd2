"""Shell history through the command line, no server: `init SHELL` next to
the store's `init`, imports from standard input, a pipe, a FIFO, fish and
Atuin's history.db, and the search filters users expect."""

import json
import os
import sqlite3
import subprocess
import threading
import time
import unittest

from device import Device
from harness import make_tempdir, recsync_bin


def rows(device, *args):
    return [json.loads(l) for l in device.run("history", *args, "--json").text.splitlines()]


class InitShell(unittest.TestCase):
    def test_init_prints_hooks_and_still_creates_stores(self):
        d = Device(self, "init", init=False)
        for shell, needle in (("zsh", "add-zsh-hook preexec"), ("bash", "trap '__recsync_debug' DEBUG"),
                              ("fish", "--on-event fish_preexec")):
            out = d.run("init", shell).text
            self.assertIn(needle, out)
            self.assertIn(recsync_bin(), out.splitlines()[0])
        self.assertFalse(os.path.exists(d.dir), "init SHELL made no store")
        self.assertIn("RECSYNC_NO_CTRL_R=1", d.run("init", "bash", "--no-ctrl-r").text)
        for args in (["init", "tcsh"], ["init", "zsh", "extra"]):
            r = d.run(*args, expect=2)
            self.assertEqual(r.out, b"")
        self.assertIn("zsh|bash|fish", d.run("init", "zsh", "--help").text)
        self.assertIn("initialized store", d.run("init").text)
        self.assertTrue(os.path.exists(os.path.join(d.dir, "store.db")))
        d.run("init", expect=1)  # a second store init still refuses


class Imports(unittest.TestCase):
    def setUp(self):
        self.d = Device(self, "imports")
        self.tmp = make_tempdir(self)

    def test_stdin_pipe_and_fifo(self):
        text = b": 1700000000:2;from stdin\nundated after\n"
        out = self.d.run("history", "import", "zsh", "-", input=text).text
        self.assertIn("imported 2 entries from standard input", out)
        self.assertIn("imported 0 entries", self.d.run("history", "import", "zsh", "-", input=text).text)
        got = rows(self.d, "list")
        self.assertEqual([(r["command"], r["time"]) for r in got],
                         [("undated after", 1700000000001), ("from stdin", 1700000000000)])

        # A pipe from another process.
        p = subprocess.run("printf '#1700000100\\npiped one\\n' | %s --dir %s history import bash -"
                           % (recsync_bin(), self.d.dir), shell=True, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"imported 1 entries", p.stdout)

        # A FIFO whose writer comes after the import started.
        fifo = os.path.join(self.tmp, "fifo")
        os.mkfifo(fifo)

        def writer():
            time.sleep(0.3)
            with open(fifo, "wb") as f:
                f.write(b"- cmd: from a fifo\n  when: 1700000200\n")
        t = threading.Thread(target=writer)
        t.start()
        try:
            out = self.d.run("history", "import", "fish", fifo, timeout=30).text
        finally:
            t.join(timeout=30)
        self.assertIn("imported 1 entries", out)
        self.assertEqual(rows(self.d, "list", "--limit", "1")[0]["command"], "from a fifo")

    def test_a_fifo_nobody_writes_fails_in_bounded_time(self):
        fifo = os.path.join(self.tmp, "fifo")
        os.mkfifo(fifo)
        t0 = time.monotonic()
        r = self.d.run("history", "import", "zsh", fifo, expect=1, timeout=60)
        self.assertLess(time.monotonic() - t0, 30)
        self.assertIn(fifo, r.err.decode())
        self.assertIn("nothing opened the FIFO for writing", r.err.decode())
        self.assertEqual(self.d.log("history"), [])

    def test_atuin_history_db(self):
        db = os.path.join(self.tmp, "history.db")
        con = sqlite3.connect(db)
        con.executescript(
            "create table history (id text primary key, timestamp integer not null,"
            " duration integer not null, exit integer not null, command text not null,"
            " cwd text not null, session text not null, hostname text not null,"
            " deleted_at integer, unique(timestamp, cwd, command));"
            "insert into history values ('01', 1700000000500000000, 1500000000, 2, 'make test',"
            " '/src', 'sess', 'laptop:alice', NULL);"
            "insert into history values ('02', 1700000001000000000, 0, 0, 'rm secret',"
            " '/', 'sess', 'laptop:alice', 1700000002000000000);")
        con.commit()
        con.close()
        self.assertIn("imported 1 entries", self.d.run("history", "import", "atuin", db).text)
        self.assertIn("imported 0 entries", self.d.run("history", "import", "atuin", db).text)
        (r,) = rows(self.d, "list")
        self.assertEqual((r["command"], r["time"], r["duration"], r["exit"], r["cwd"], r["session"],
                          r["hostname"]),
                         ("make test", 1700000000500, 1500, 2, "/src", "sess", "laptop"))
        bad = os.path.join(self.tmp, "not.db")
        with open(bad, "w") as f:
            f.write("plain text, not SQLite")
        r = self.d.run("history", "import", "atuin", bad, expect=1)
        self.assertIn(bad, r.err.decode())

    def test_filters(self):
        add = lambda *a: self.d.run("history", "add", *a)
        add("--cwd", "/src", "--exit", "0", "--session", "s1", "--time", "1700000000000", "--", "make")
        add("--cwd", "/src", "--exit", "2", "--session", "s1", "--time", "1700000060000", "--", "make")
        add("--cwd", "/tmp", "--exit", "0", "--session", "s2", "--time", "1700000120000", "--", "ls")
        cmds = lambda *a: [r["command"] + ":" + str(r["exit"]) for r in rows(self.d, *a)]
        self.assertEqual(cmds("list", "--cwd", "/src"), ["make:2", "make:0"])
        self.assertEqual(cmds("list", "--session", "s2"), ["ls:0"])
        self.assertEqual(cmds("list", "--exit", "0"), ["ls:0", "make:0"])
        self.assertEqual(cmds("list", "--unique"), ["ls:0", "make:2"])
        self.assertEqual(cmds("search", "--unique", "--exit", "0", "ak"), ["make:0"])
        self.assertEqual(cmds("list", "--since", "@1700000060", "--until", "@1700000060"), ["make:2"])
        self.assertEqual(cmds("list", "--since", "1h"), [])
        host = rows(self.d, "list")[0]["hostname"]
        self.assertEqual(len(cmds("list", "--host", host)), 3)
        self.assertEqual(cmds("list", "--host", host + "-not"), [])
        out = self.d.run("history", "list", "--commands", "--print0", "--unique").out
        self.assertEqual(out, b"ls\0make\0")
        for bad in (["--since", "yesterday-ish"], ["--exit", "x"], ["--since", "@5", "--until", "@4"],
                    ["--json", "--commands"]):
            self.assertEqual(self.d.run("history", "list", *bad, expect=2).out, b"")


if __name__ == "__main__":
    unittest.main()
