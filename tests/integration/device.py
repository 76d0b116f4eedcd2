"""Devices for the sync tests: each is a recsync store in a temporary
directory, driven only through the real ``recsync`` CLI (``--dir``), with a
timeout on every command.

* ``Device(test, name)``: ``init`` (or ``key import`` of another device's
  key with ``key=``), then ``register`` / ``login`` / ``append`` /
  ``sync`` / ``status`` / ``log`` / ``cat`` / ``verify``; ``run`` for any
  other command line. A command that exits other than ``expect`` fails the
  test with its stderr.
* ``popen_sync`` starts ``recsync sync`` in the background (for SIGKILL
  tests); every such process is killed by PID in a cleanup.
* ``records()`` / ``shards()`` / ``dump()`` read the store's SQLite file
  directly (read-only) to compare stores row for row.
* ``make_devices(test, server, n)``: n devices of one user sharing one key.
"""

import json
import os
import secrets
import signal
import sqlite3
import subprocess

from harness import TIME_SCALE, make_tempdir, recsync_bin

CLI_TIMEOUT = 180.0 * TIME_SCALE  # seconds for one CLI command; a hang fails the test


class Result:
    def __init__(self, args, rc, out, err):
        self.args = args
        self.rc = rc
        self.out = out
        self.err = err

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")

    @property
    def json(self):
        return json.loads(self.out.decode())

    def __repr__(self):
        return "<recsync %s: rc=%s stdout=%r stderr=%r>" % (
            " ".join(self.args), self.rc, self.out[-2000:], self.err[-2000:])


def server_url(server):
    return "http://127.0.0.1:%d" % server.port


class Device:
    """One device: a store in its own temporary directory."""

    def __init__(self, test, name="dev", key=None, init=True, password=None):
        self.test = test
        self.name = name
        self.dir = os.path.join(make_tempdir(test, "recsync-%s-" % name), "store")
        self.password = password
        self.procs = []
        test.addCleanup(self._kill_all)
        if init:
            if key is None:
                self.run("init")
            else:
                self.run("key", "import", input=key.encode())
        self._host = None

    # -- running the CLI --

    def run(self, *args, input=None, expect=0, timeout=CLI_TIMEOUT, env=None):
        """Runs ``recsync --dir DIR ARGS``; asserts its exit status is
        ``expect`` (None: any) and returns a Result."""
        cmd = [recsync_bin(), "--dir", self.dir] + [str(a) for a in args]
        full_env = dict(os.environ)
        full_env.pop("RECSYNC_PASSWORD", None)
        if self.password is not None:
            full_env["RECSYNC_PASSWORD"] = self.password
        if env:
            full_env.update(env)
        if os.environ.get("RS_PG_REPEAT") == "1" and "ASAN_OPTIONS" in full_env:
            # The PostgreSQL repeat of a module: the same client code was leak-checked in
            # its SQLite run (tests/CMakeLists.txt); memory errors are still caught.
            full_env["ASAN_OPTIONS"] += ":detect_leaks=0"
        try:
            p = subprocess.run(cmd, input=input if input is not None else b"", capture_output=True,
                               timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("%s: recsync %s did not finish in %ss; stderr: %r" % (
                self.name, " ".join(map(str, args)), timeout, e.stderr))
        r = Result([str(a) for a in args], p.returncode, p.stdout, p.stderr)
        if expect is not None and r.rc != expect:
            raise AssertionError("%s: expected exit %s, got %r" % (self.name, expect, r))
        return r

    def popen_sync(self, *extra):
        """``recsync sync --json`` in the background; killed by PID in cleanup."""
        env = dict(os.environ)
        if self.password is not None:
            env["RECSYNC_PASSWORD"] = self.password
        p = subprocess.Popen([recsync_bin(), "--dir", self.dir, "sync", "--json"] + list(extra),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=env)
        self.procs.append(p)
        return p

    def _kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass

    # -- commands --

    def key_export(self):
        return self.run("key", "export").text.strip()

    def register(self, url, user, password, expect=0):
        self.password = password
        return self.run("register", "--server", url, "--user", user, expect=expect)

    def login(self, url, user, password, expect=0):
        self.password = password
        return self.run("login", "--server", url, "--user", user, expect=expect)

    def append(self, tag, payload):
        """One record; returns its id."""
        if isinstance(payload, str):
            payload = payload.encode()
        return self.run("append", tag, input=payload).text.strip()

    def append_lines(self, tag, lines):
        """One record per line, in one transaction; returns their ids."""
        data = "".join(l + "\n" for l in lines).encode()
        ids = self.run("append", tag, "--lines", input=data).text.split()
        self.test.assertEqual(len(ids), len(lines), "append --lines printed one id per line")
        return ids

    def sync(self, page=None, expect=0, extra=()):
        """``sync --json``; returns the report (dict) on success, the Result otherwise."""
        args = ["sync", "--json"]
        if page is not None:
            args += ["--page-records", str(page)]
        r = self.run(*args, *extra, expect=expect)
        return r.json if r.rc == 0 else r

    def status(self, expect=0, timeout_ms=None):
        args = ["status", "--json"]
        if timeout_ms is not None:
            args += ["--timeout-ms", str(timeout_ms)]
        return self.run(*args, expect=expect).json

    def log(self, tag=None):
        args = ["log", "--json"] + (["--tag", tag] if tag else [])
        return [json.loads(l) for l in self.run(*args).text.splitlines() if l.strip()]

    def ids(self, tag=None):
        return [r["id"] for r in self.log(tag)]

    def cat(self, rid):
        return self.run("cat", rid).out

    def verify(self):
        return self.run("verify")

    def setting(self, name):
        """A setting of the store's meta table (sync.token, sync.user, ...), or None."""
        con = self._connect()
        try:
            row = con.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        finally:
            con.close()
        return row[0] if row else None

    @property
    def token(self):
        return self.setting("sync.token")

    @property
    def user(self):
        return self.setting("sync.user")

    @property
    def host(self):
        if self._host is None:
            self._host = self.status()["host"]
        return self._host

    # -- reading the store's file --

    @property
    def db_path(self):
        return os.path.join(self.dir, "store.db")

    def _connect(self):
        return sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True, timeout=30)

    def records(self):
        """Every record row (host, tag, idx, id, hlc, version, data) in key order."""
        con = self._connect()
        try:
            return con.execute("SELECT hex(host), tag, idx, hex(id), hlc, version, data FROM records "
                               "ORDER BY host, tag, idx").fetchall()
        finally:
            con.close()

    def shards(self):
        con = self._connect()
        try:
            return con.execute("SELECT hex(host), tag, start, end FROM shards ORDER BY host, tag").fetchall()
        finally:
            con.close()

    def dump(self):
        """The whole database as SQL text, for 'nothing changed' comparisons."""
        con = self._connect()
        try:
            return "\n".join(con.iterdump())
        finally:
            con.close()


def new_user():
    return "user-" + secrets.token_hex(4)


def make_devices(test, server, n, user=None, password=None, names=None):
    """n devices of one user sharing one key: the first inits and registers,
    the others import its key and log in."""
    user = user or new_user()
    password = password or "pw-" + secrets.token_hex(8)
    names = names or ["dev%d" % i for i in range(n)]
    first = Device(test, names[0])
    first.register(server_url(server), user, password)
    devices = [first]
    key = first.key_export()
    for name in names[1:]:
        d = Device(test, name, key=key)
        d.login(server_url(server), user, password)
        devices.append(d)
    return devices


def shard_counts(report):
    """{(host, tag): (uploaded, downloaded)} from a sync --json report."""
    return {(s["host"], s["tag"]): (s["uploaded"], s["downloaded"]) for s in report["shards"]}
