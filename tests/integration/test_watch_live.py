"""recsync watch against the real recsyncd: a watching device receives the
other's writes (also two writers, one held inside its transaction while the
other commits a later seq: both arrive, in seq order), pushes writes made by other processes on its own store
without a sync, rides through a SIGKILL and restart of the server with no
record missed or applied twice, and recovers from a cursor the server no
longer keeps (410 resync_required) by resyncing."""

import base64
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import unittest

from device import make_devices
from harness import ServerProcess, recsync_bin

WAIT = 20.0  # seconds any awaited line may take; a hang fails the test


class Watcher:
    """`recsync watch --json` on a device's store, its stdout (JSON lines)
    and stderr (state lines) read by threads. Killed by PID in a cleanup."""

    def __init__(self, test, device):
        self.test = test
        self.device = device
        self.proc = subprocess.Popen(
            [recsync_bin(), "--dir", device.dir, "watch", "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        test.addCleanup(self._kill)
        self.cond = threading.Condition()
        self.out = []
        self.err = []
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, pipe, into):
        for line in iter(pipe.readline, b""):
            with self.cond:
                into.append(line.decode().rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for t in self.threads:
            t.join(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def wait_err(self, text, count=1, timeout=WAIT):
        """Waits until `count` stderr lines contain `text`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(text in l for l in self.err) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._pending():
                    self.test.fail("recsync watch printed %d x %r within %.0f s; stderr: %s"
                                   % (count, text, timeout, self.err))
                self.cond.wait(min(left, 0.5))

    def _pending(self):
        return any(t.is_alive() for t in self.threads)

    def batches(self):
        with self.cond:
            return [json.loads(l) for l in self.out]

    def wait_end(self, kind, host, tag, end, timeout=WAIT):
        """Waits for a `kind` ("downloaded"/"uploaded") line of shard
        (host, tag) reaching `end`; returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        with self.cond:
            while not any(kind in b and b["host"] == host and b["tag"] == tag and b["end"] >= end
                          for b in map(json.loads, self.out)):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.test.fail("no %s line of %s/%s up to %d within %.0f s; stdout: %s; stderr: %s"
                                   % (kind, host, tag, end, timeout, self.out, self.err))
                self.cond.wait(min(left, 0.5))
        return time.monotonic() - start

    def stop(self):
        """SIGTERM: the watch must end by itself with status 0."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=WAIT)
        for t in self.threads:
            t.join(timeout=5)
        self.test.assertEqual(rc, 0, "recsync watch exited %d on SIGTERM; stderr: %s" % (rc, self.err))


def uuid_text(hexstr):
    h = hexstr.lower()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def wire_records(device, tag):
    """The device's records of `tag` as an upload body carries them, and its token."""
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        rows = con.execute("SELECT hex(host), tag, idx, hex(id), hlc, version, data FROM records "
                           "WHERE tag = ? ORDER BY idx", (tag,)).fetchall()
        token = con.execute("SELECT value FROM meta WHERE name = 'sync.token'").fetchone()[0]
    finally:
        con.close()
    return [{"id": uuid_text(r[3]), "host": uuid_text(r[0]), "tag": r[1], "idx": r[2],
             "hlc": "%016x" % r[4], "version": r[5], "data": base64.b64encode(r[6]).decode()}
            for r in rows], token


def assert_tiled(test, batches, kind, host, tag, end):
    """The `kind` lines of shard (host, tag) cover [0, end) once each, in order."""
    ranges = [(b["start"], b["end"]) for b in batches
              if kind in b and b["host"] == host and b["tag"] == tag]
    at = 0
    for start, stop in ranges:
        test.assertEqual(start, at, "%s ranges of %s/%s: %s" % (kind, host, tag, ranges))
        test.assertGreater(stop, start, ranges)
        at = stop
    test.assertEqual(at, end, "%s ranges of %s/%s: %s" % (kind, host, tag, ranges))
    seqs = [b["seq"] for b in batches if kind in b and b["host"] == host and b["tag"] == tag]
    test.assertEqual(seqs, sorted(seqs), "seqs out of order: %s" % seqs)


class WatchLive(unittest.TestCase):
    def assert_same(self, a, b, count):
        ra = a.records()
        self.assertEqual(len(ra), count)
        self.assertEqual(len({r[3] for r in ra}), count, "a record id appears twice")
        self.assertEqual(b.records(), ra)
        a.verify()
        b.verify()

    def test_watcher_receives_writes_and_pushes_other_processes_writes(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        w = Watcher(self, b)
        w.wait_err("watching")

        a.append_lines("notes", ["a-%d" % i for i in range(5)])
        a.sync()
        w.wait_end("downloaded", a.host, "notes", 5, timeout=10)
        a.append("notes", b"a-5")
        a.sync()
        w.wait_end("downloaded", a.host, "notes", 6, timeout=10)

        # B's own writes, by other processes, reach the server with no sync on B.
        b.append_lines("todo", ["b-%d" % i for i in range(3)])
        w.wait_end("uploaded", b.host, "todo", 3, timeout=10)
        b.append("todo", b"b-3")
        w.wait_end("uploaded", b.host, "todo", 4, timeout=10)
        report = a.sync()
        self.assertEqual(report["downloaded"], 4, report)

        w.stop()
        batches = w.batches()
        assert_tiled(self, batches, "downloaded", a.host, "notes", 6)
        assert_tiled(self, batches, "uploaded", b.host, "todo", 4)
        self.assertEqual(sum(x["downloaded"] for x in batches if "downloaded" in x), 6, batches)
        self.assert_same(a, b, 10)

    def test_two_watchers_propagate_both_ways(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        wa, wb = Watcher(self, a), Watcher(self, b)
        wa.wait_err("watching")
        wb.wait_err("watching")
        for i in range(10):
            a.append("x", b"a-%d" % i)
            b.append("y", b"b-%d" % i)
        wb.wait_end("downloaded", a.host, "x", 10)
        wa.wait_end("downloaded", b.host, "y", 10)
        wa.stop()
        wb.stop()
        assert_tiled(self, wb.batches(), "downloaded", a.host, "x", 10)
        assert_tiled(self, wa.batches(), "downloaded", b.host, "y", 10)
        self.assert_same(a, b, 20)

    def test_stalled_writer_and_later_commit_both_arrive_in_seq_order(self):
        server = ServerProcess(self, hooks=True)
        slow, fast, b = make_devices(self, server, 3, names=["slow", "fast", "b"])
        w = Watcher(self, b)
        w.wait_err("watching")
        slow.append_lines("s", ["s-0", "s-1"])
        records, token = wire_records(slow, "s")
        answer = {}

        def upload():
            client = server.client(token=token, timeout=30)
            started = time.monotonic()
            try:
                answer["r"] = client.post("/api/v1/records", {"records": records},
                                          headers={"X-Recsync-Test-Stall-Ms": "1500"})
                answer["s"] = time.monotonic() - started
            finally:
                client.close()

        t = threading.Thread(target=upload)
        t.start()
        try:
            time.sleep(0.3)  # the slow upload now holds its write transaction open
            fast.append("f", b"f-0")
            fast.sync()
        finally:
            t.join(timeout=WAIT)
        self.assertFalse(t.is_alive(), "the stalled upload never answered")
        self.assertEqual(answer["r"].status, 200, answer["r"])
        self.assertGreaterEqual(answer["s"], 1.4, "the upload was not held in its transaction")
        w.wait_end("downloaded", slow.host, "s", 2)
        w.wait_end("downloaded", fast.host, "f", 1)
        w.stop()
        got = [x for x in w.batches() if "downloaded" in x]
        seqs = [x["seq"] for x in got]
        self.assertEqual(seqs, sorted(seqs), got)
        self.assertEqual(len(set(seqs)), len(seqs), got)
        self.assertEqual(sum(x["downloaded"] for x in got), 3, got)
        self.assertEqual(len(b.records()), 3)
        b.verify()

    def test_rides_through_server_kill_and_restart(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        w = Watcher(self, b)
        w.wait_err("watching")
        a.append_lines("notes", ["a-%d" % i for i in range(4)])
        a.sync()
        w.wait_end("downloaded", a.host, "notes", 4)

        server.kill(signal.SIGKILL)
        w.wait_err("retrying in")
        # Written while the server is down: pushed once it is back.
        b.append_lines("todo", ["b-%d" % i for i in range(2)])
        a.append_lines("notes", ["a-%d" % i for i in range(4, 7)])
        time.sleep(0.3)
        self.assertIsNone(w.proc.poll(), "recsync watch died with the server: %s" % w.err)
        server.start()
        w.wait_err("watching", count=2)
        a.sync()
        w.wait_end("downloaded", a.host, "notes", 7)
        w.wait_end("uploaded", b.host, "todo", 2)
        a.sync()
        b.append("todo", b"b-2")
        w.wait_end("uploaded", b.host, "todo", 3)
        a.sync()

        w.stop()
        batches = w.batches()
        assert_tiled(self, batches, "downloaded", a.host, "notes", 7)
        assert_tiled(self, batches, "uploaded", b.host, "todo", 3)
        self.assert_same(a, b, 10)
        self.assertEqual(a.log(), b.log())

    def test_unknown_token_ends_the_watch_with_status_1(self):
        server = ServerProcess(self)
        (b,) = make_devices(self, server, 1, names=["b"])
        port = server.port
        server.kill(signal.SIGKILL)
        ServerProcess(self, port=port)  # a fresh server on the same port: b's token is unknown
        w = Watcher(self, b)
        rc = w.proc.wait(timeout=WAIT)
        for t in w.threads:
            t.join(timeout=5)
        self.assertEqual(rc, 1, w.err)
        self.assertTrue(any("401" in l and "unauthorized" in l for l in w.err), w.err)
        self.assertEqual(w.out, [])

    def test_old_cursor_gets_410_and_watch_resyncs(self):
        args = ["--event-retention", "2", "--retention-interval-ms", "100"]
        server = ServerProcess(self, args=args)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        w = Watcher(self, b)
        w.wait_err("watching")
        a.append("notes", b"a-0")
        a.sync()
        w.wait_end("downloaded", a.host, "notes", 1)

        # B sleeps through a restart and more events than the server keeps.
        os.kill(w.proc.pid, signal.SIGSTOP)
        try:
            server.kill(signal.SIGKILL)
            server.start()
            for i in range(1, 6):
                a.append("notes", b"a-%d" % i)
                a.sync()
            deadline = time.monotonic() + WAIT
            while "recsyncd_events_pruned_total 0" in server.metrics():
                self.assertLess(time.monotonic(), deadline, "retention never pruned")
                time.sleep(0.1)
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
        w.wait_err("no longer keeps the events")
        w.wait_err("synced 5 records")
        w.wait_err("watching", count=2)
        a.append("notes", b"a-6")
        a.sync()
        w.wait_end("downloaded", a.host, "notes", 7)
        w.stop()
        self.assert_same(a, b, 7)


if __name__ == "__main__":
    unittest.main()
