"""Sync when things go wrong: the server down or unreachable, a device with
the wrong key, a store restored from an old copy, a response lost after the
server stored a batch (the client's retry and a raw replay), and the server
SIGKILLed in the middle of an upload."""

import base64
import os
import random
import shutil
import socket
import sqlite3
import threading
import time
import unittest

from device import Device, make_devices, new_user, server_url, shard_counts
from harness import Client, ServerProcess


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def token_of(device):
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        return con.execute("SELECT value FROM meta WHERE name = 'sync.token'").fetchone()[0]
    finally:
        con.close()


def remote_index(server, device):
    c = Client(server.port, token=token_of(device), timeout=10)
    try:
        r = c.get("/api/v1/index")
    finally:
        c.close()
    assert r.status == 200, r
    return {(s["host"], s["tag"]): (s["start"], s["end"]) for s in r.json["shards"]}


class LossyProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of recsyncd that forwards
    requests and responses (both with Content-Length) and, for the first
    `drop` POST /api/v1/records, reads the server's whole answer and then
    closes the client's connection instead of forwarding it: a response lost
    after the server committed the batch. Threads and sockets are bounded by
    timeouts and closed in cleanup."""

    TIMEOUT = 30.0

    def __init__(self, test, upstream_port, drop=1):
        self.upstream_port = upstream_port
        self.drop = drop
        self.posts = []  # bodies of every POST /api/v1/records seen
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()
        test.addCleanup(self.close)

    def close(self):
        self.stopping = True
        self.acceptor.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    @staticmethod
    def _read_message(sock, buf):
        """One HTTP message (head + Content-Length body) from sock; returns
        (head, body, rest) or None at EOF."""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        return head, rest[:length], rest[length:]

    def _serve(self, conn):
        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=self.TIMEOUT)
        conn.settimeout(self.TIMEOUT)
        cbuf, ubuf = b"", b""
        try:
            while not self.stopping:
                msg = self._read_message(conn, cbuf)
                if msg is None:
                    return
                head, body, cbuf = msg
                up.sendall(head + b"\r\n\r\n" + body)
                resp = self._read_message(up, ubuf)
                if resp is None:
                    return
                rhead, rbody, ubuf = resp
                if head.startswith(b"POST /api/v1/records "):
                    with self.lock:
                        self.posts.append(body)
                        lose = len(self.posts) <= self.drop
                    if lose:
                        return  # the server stored the batch; the client never hears
                conn.sendall(rhead + b"\r\n\r\n" + rbody)
        except OSError:
            return
        finally:
            conn.close()
            up.close()


class ServerDown(unittest.TestCase):
    def test_server_stopped_leaves_store_untouched(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        a.append_lines("notes", ["1", "2"])
        a.sync()
        b.append("notes", "b1")
        a.append("notes", "3")
        before_a, before_b = a.dump(), b.dump()
        server.stop()
        for d, before in ((a, before_a), (b, before_b)):
            t0 = time.monotonic()
            r = d.sync(expect=1)
            self.assertLess(time.monotonic() - t0, 30)
            err = r.err.decode()
            self.assertIn("cannot reach server %s" % server_url(server), err)
            self.assertEqual(r.out, b"", "nothing on stdout when sync fails")
            self.assertEqual(d.dump(), before, "a failed sync changed the store of " + d.name)
        self.assertFalse(a.status(timeout_ms=500)["online"])

    def test_nothing_listening(self):
        d = Device(self, "d")
        url = "http://127.0.0.1:%d" % free_port()
        r = d.run("register", "--server", url, "--user", new_user(), env={"RECSYNC_PASSWORD": "pw-123456"},
                  expect=1)
        self.assertIn("cannot reach server %s" % url, r.err.decode())
        self.assertIsNone(d.status()["server"], "a failed register must not write the account")


class WrongKey(unittest.TestCase):
    def test_device_with_another_key_is_refused_before_writing(self):
        server = ServerProcess(self)
        user, password = new_user(), "pw-wrongkey"
        a = Device(self, "a")
        a.register(server_url(server), user, password)
        # b logs in while the account holds no record to check its key against.
        b = Device(self, "b")  # its own, different key
        b.login(server_url(server), user, password)
        a.append_lines("notes", ["a1", "a2"])
        a.sync()
        index_before = remote_index(server, a)

        b.append_lines("notes", ["b1", "b2", "b3"])
        key_a, key_b = a.status()["key"], b.status()["key"]
        self.assertNotEqual(key_a, key_b)
        before = b.dump()
        r = b.sync(expect=1)
        err = r.err.decode()
        self.assertIn(key_a, err)
        self.assertIn(key_b, err)
        self.assertIn("Nothing was uploaded or written", err)
        self.assertEqual(b.dump(), before)
        self.assertEqual(remote_index(server, a), index_before, "the wrong-key device uploaded")

        # Once the account holds records, a device with another key is refused
        # at login already, naming both keys, and keeps no token.
        c = Device(self, "c")
        c.append("notes", "c1")
        before = c.dump()
        r = c.login(server_url(server), user, password, expect=1)
        self.assertIn(key_a, r.err.decode())
        self.assertIn(c.status()["key"], r.err.decode())
        self.assertEqual(c.dump(), before)
        self.assertEqual(remote_index(server, a), index_before)
        self.assertEqual(a.sync()["outcome"], "noop")


class RestoredCopy(unittest.TestCase):
    def test_store_restored_from_old_copy_is_refused(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        a.append_lines("notes", ["n%d" % i for i in range(5)])
        a.sync()
        backup = a.dir + ".backup"
        shutil.copytree(a.dir, backup)
        self.addCleanup(shutil.rmtree, backup, True)
        a.append_lines("notes", ["n%d" % i for i in range(5, 8)])
        a.sync()
        shutil.rmtree(a.dir)
        shutil.copytree(backup, a.dir)

        before = a.dump()
        r = a.sync(expect=1)
        err = r.err.decode()
        self.assertIn("restored from an old copy", err)
        self.assertIn("ends at idx 8", err)
        self.assertEqual(a.dump(), before)

        # Written to since the restore up to the server's end, then past it:
        # a second history either way.
        a.append_lines("notes", ["again%d" % i for i in range(3)])
        before = a.dump()
        r = a.sync(expect=1)
        self.assertIn("different record at idx 7", r.err.decode())
        self.assertEqual(a.dump(), before)
        a.append("notes", "again3")
        r = a.sync(expect=1)
        self.assertIn("different record at idx 7", r.err.decode())
        self.assertEqual(remote_index(server, b)[(a.host, "notes")], (0, 8))
        r = b.sync()
        self.assertEqual(r["downloaded"], 8)
        self.assertEqual(sorted(b.cat(i) for i in b.ids("notes")), sorted(("n%d" % i).encode() for i in range(8)))


class LostResponse(unittest.TestCase):
    def test_retried_batch_after_lost_response_is_accepted_once(self):
        server = ServerProcess(self)
        proxy = LossyProxy(self, server.port, drop=1)
        url = "http://127.0.0.1:%d" % proxy.port
        user, password = new_user(), "pw-lost"
        a = Device(self, "a")
        a.register(url, user, password)
        b = Device(self, "b", key=a.key_export())
        b.login(url, user, password)

        ids = a.append_lines("notes", ["x%d" % i for i in range(25)])
        r = a.sync(page=10)
        self.assertEqual((r["outcome"], r["uploaded"]), ("push", 25))
        self.assertEqual(len(proxy.posts), 4, "the first page was sent twice, then two more")
        self.assertEqual(proxy.posts[0], proxy.posts[1], "the retry carried the same batch")
        self.assertEqual(remote_index(server, a)[(a.host, "notes")], (0, 25))

        r = b.sync(page=10)
        self.assertEqual(r["downloaded"], 25)
        self.assertEqual(sorted(b.ids()), sorted(ids))
        self.assertEqual(len(b.records()), 25)

    def test_raw_replay_of_a_stored_batch(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        ids = a.append_lines("notes", ["r%d" % i for i in range(12)])
        a.sync()
        c = Client(server.port, token=token_of(a), timeout=10)
        self.addCleanup(c.close)
        page = c.get("/api/v1/records?host=%s&tag=notes&start=0&limit=100" % a.host)
        self.assertEqual(page.status, 200, page)
        records = page.json["records"]
        self.assertEqual(len(records), 12)
        for batch in (records, records[:5], records[5:]):
            r = c.post("/api/v1/records", {"records": batch})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json["accepted"], len(batch))
            self.assertEqual(r.json.get("inserted", 0), 0)
        self.assertEqual(remote_index(server, a)[(a.host, "notes")], (0, 12))
        # A different record at a taken idx is refused.
        forged = dict(records[3])
        data = bytearray(base64.b64decode(forged["data"]))
        data[-1] ^= 1
        forged["data"] = base64.b64encode(bytes(data)).decode()
        r = c.post("/api/v1/records", {"records": [forged]})
        self.assertEqual(r.status, 409, r)
        self.assertEqual(b.sync()["downloaded"], 12)
        self.assertEqual(sorted(b.ids()), sorted(ids))
        self.assertEqual(a.sync()["outcome"], "noop")


class ServerKilledMidUpload(unittest.TestCase):
    def test_sigkill_mid_upload_then_retry(self):
        server = ServerProcess(self)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        n, page = 20000, 100
        a.append_lines("bulk", ["line-%d" % i for i in range(n)])
        rng = random.Random(os.environ.get("RS_TEST_SEED", "mid-upload"))
        partial = 0
        for attempt in range(6):
            p = a.popen_sync("--page-records", str(page))
            # Wait until the upload is under way (the server's end moved), then kill.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and p.poll() is None:
                end = remote_index(server, b).get((a.host, "bulk"), (0, 0))[1]
                if end > 0:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.2))
            running = p.poll() is None
            server.kill()
            out, err = p.communicate(timeout=60)
            server.start()
            end = remote_index(server, b).get((a.host, "bulk"), (0, 0))[1]
            self.assertEqual(end % page, 0, "a partial page is visible: end %d" % end)
            if running and p.returncode != 0:
                self.assertEqual(p.returncode, 1, err)
                self.assertIn(server_url(server), err.decode())
            if 0 < end < n:
                partial += 1
            if end == n:
                break
        self.assertGreater(partial, 0, "no kill landed in the middle of the upload")
        r = a.sync(page=page)
        self.assertIn(r["outcome"], ("push", "noop"))
        self.assertEqual(remote_index(server, b)[(a.host, "bulk")], (0, n))
        r = b.sync()
        self.assertEqual(r["downloaded"], n)
        mine = [row for row in a.records() if row[1] == "bulk"]
        self.assertEqual([row for row in b.records() if row[1] == "bulk"], mine)
        b.verify()


if __name__ == "__main__":
    unittest.main()
