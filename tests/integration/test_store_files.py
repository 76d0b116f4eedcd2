"""The store's files are readable by their owner only, whatever the umask
and the directory: store.db (the bearer token, the plaintext history), its
-wal and -shm (SQLite gives them the database's mode), and the key file.

Every recsync here runs with umask 000 in a directory that already exists
with mode 0755, the case where SQLite's default (0644) leaked the store to
every local user."""

import os
import select
import signal
import stat
import subprocess
import time
import unittest

from device import Device, new_user, server_url
from harness import ServerProcess, recsync_bin

WAIT = 20.0


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


class StoreFileModes(unittest.TestCase):
    def setUp(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)

    def device_in_open_dir(self, name, key=None):
        """A device whose store directory exists (0755) before init."""
        d = Device(self, name, init=False)
        os.mkdir(d.dir, 0o755)
        self.assertEqual(mode(d.dir), 0o755)
        if key is None:
            d.run("init")
        else:
            d.run("key", "import", input=key.encode())
        return d

    def assert_private(self, d, names):
        for name in names:
            path = os.path.join(d.dir, name)
            self.assertTrue(os.path.exists(path), "%s was not made" % path)
            self.assertEqual(mode(path), 0o600, "%s has mode %03o" % (path, mode(path)))

    def test_init_append_and_key_files_are_0600_under_umask_000(self):
        d = self.device_in_open_dir("a")
        self.assert_private(d, ["store.db", "key"])
        d.append("notes", "secret")
        self.assert_private(d, ["store.db", "key"])
        # A store made by key import, and a key replaced by import over a
        # leftover temporary file that others may write.
        other = Device(self, "other")
        e = self.device_in_open_dir("e", key=other.key_export())
        self.assert_private(e, ["store.db", "key"])
        f = self.device_in_open_dir("f")
        planted = os.path.join(f.dir, "key.tmp")
        with open(planted, "w") as fh:
            fh.write("x")
        os.chmod(planted, 0o666)
        f.run("key", "import", input=other.key_export().encode())
        self.assertEqual(f.key_export(), other.key_export())
        self.assert_private(f, ["store.db", "key"])

    def test_an_older_store_with_open_files_is_narrowed_on_open(self):
        d = self.device_in_open_dir("a")
        os.chmod(os.path.join(d.dir, "store.db"), 0o644)
        d.run("log")
        self.assert_private(d, ["store.db"])

    def test_wal_and_shm_of_a_running_watch_are_0600(self):
        server = ServerProcess(self)
        d = self.device_in_open_dir("w")
        d.register(server_url(server), new_user(), "pw-store-files")
        d.append("notes", "one")
        d.sync()
        env = dict(os.environ, RECSYNC_PASSWORD=d.password)
        p = subprocess.Popen([recsync_bin(), "--dir", d.dir, "watch"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

        def kill():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            p.stderr.close()
        self.addCleanup(kill)
        # The watch holds the store open: its -wal and -shm stay while it runs.
        err = b""
        deadline = time.monotonic() + WAIT
        while b"watching" not in err:
            left = deadline - time.monotonic()
            self.assertGreater(left, 0, "recsync watch never said it was watching: %r" % err)
            ready, _, _ = select.select([p.stderr], [], [], left)
            if ready:
                chunk = os.read(p.stderr.fileno(), 4096)
                self.assertTrue(chunk, "recsync watch exited: %r" % err)
                err += chunk
        d.append("notes", "two")  # a write while it watches
        self.assert_private(d, ["store.db", "store.db-wal", "store.db-shm", "key"])
        os.kill(p.pid, signal.SIGTERM)
        self.assertEqual(p.wait(timeout=WAIT), 0)


if __name__ == "__main__":
    unittest.main()
