"""A full disk under a device's store: a real tmpfs of a few MiB (mounted as
root; the test skips, saying why, where mounting is not allowed).

A pull that runs out of space stops with an error naming the disk and the
store's file, keeps every page it committed and nothing of the one that did
not fit (`verify` passes), an append on the full disk changes nothing, and
once there is room the next sync completes with the stores identical."""

import os
import subprocess
import unittest

from device import Device, new_user, server_url
from harness import ServerProcess, make_tempdir

MOUNT_TIMEOUT = 30


def mount_tmpfs(test, size):
    """A fresh tmpfs of `size` (mount syntax, "3m"), unmounted in a cleanup."""
    if os.geteuid() != 0:
        test.skipTest("mounting a tmpfs needs root")
    where = make_tempdir(test, "recsync-full-")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", where],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=MOUNT_TIMEOUT)
    if p.returncode != 0:
        test.skipTest("cannot mount a tmpfs here: %s" % p.stdout.decode("utf-8", "replace").strip())
    # Cleanups run last-in first-out: this one before make_tempdir removes the directory.
    test.addCleanup(subprocess.run, ["umount", "-l", where], timeout=MOUNT_TIMEOUT)
    return where


def remount(where, size):
    subprocess.run(["mount", "-o", "remount,size=%s" % size, where], check=True, timeout=MOUNT_TIMEOUT)


def fill(where):
    """Writes a file until the filesystem refuses more."""
    with open(os.path.join(where, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


class FullDiskTests(unittest.TestCase):
    def test_a_pull_onto_a_full_disk_fails_cleanly_and_resumes_once_there_is_room(self):
        server = ServerProcess(self)
        user, password = new_user(), "pw-full-disk"
        a = Device(self, "a")
        a.register(server_url(server), user, password)
        a.append_lines("notes", ["x" * 400 + str(i) for i in range(12000)])
        a.sync()

        where = mount_tmpfs(self, "3m")
        b = Device(self, "b", init=False)
        b.dir = os.path.join(where, "store")
        b.run("key", "import", input=a.key_export().encode())
        b.login(server_url(server), user, password)

        r = b.sync(page=1000, expect=1)
        err = r.err.decode()
        self.assertIn("disk is full", err)
        self.assertIn(os.path.join(b.dir, "store.db"), err)
        self.assertIn("nothing of it kept", err)
        self.assertIn("ok: ", b.verify().text)
        kept = b.records()
        self.assertGreater(len(kept), 0, "nothing was pulled before the disk filled up")
        self.assertLess(len(kept), 12000)
        self.assertEqual(len(kept) % 1000, 0, "a partial page was kept")
        self.assertEqual(kept, a.records()[:len(kept)])

        # An append on the full disk is refused and changes nothing. (8 MB:
        # more than the free pages and WAL the store already holds on the
        # 3 MiB disk, where small writes can still succeed.)
        fill(where)
        before = b.dump()
        r = b.run("append", "notes", "--lines", input=("z" * 800 + "\n").encode() * 10000, expect=1)
        self.assertIn("full", r.err.decode())
        self.assertEqual(b.dump(), before)
        self.assertIn("ok: ", b.verify().text)

        os.unlink(os.path.join(where, "filler"))
        remount(where, "64m")
        report = b.sync()
        self.assertEqual(report["outcome"], "pull")
        self.assertEqual(b.records(), a.records())
        self.assertEqual(b.verify().text.split()[1], "12000")


if __name__ == "__main__":
    unittest.main()
