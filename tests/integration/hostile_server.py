"""A hostile recsync server for the tests: a proxy on 127.0.0.1 in front of
a real recsyncd that forwards every request and, in the mode a test sets,
corrupts the answers the way a broken or malicious server would. Proxying
keeps the pages realistic (real envelopes, real ids and clocks); only what
a mode changes is wrong.

* ``HostileProxy(test, upstream_port)``: started at once, stopped in a
  cleanup. ``url`` is what ``recsync login --server`` takes. ``page_mode``
  corrupts the pages of one shard (``target`` = (host, tag)), ``index_mode``
  the index, ``event_mode`` the event stream, ``redirect`` answers every
  request but the login with a redirect to that URL. All ``None``: an honest
  proxy (event streams relayed byte for byte).
* ``connections`` counts accepted TCP connections, ``requests`` the
  (method, path) of each request, ``event_streams`` the GETs of
  /api/v1/events.

Page modes (``PAGE_MODES``), each applied to every page of the target
shard the client asks for:
  hole          the second record of the page left out
  other_shard   the same range of another shard (``other``) instead
  wrong_idx     the second record's idx moved up by 5
  replayed      a page from idx > 0 answered with the shard's first page
  relabelled    the second record carries the first one's id and data under
                its own header (a replay of data under another header)
  swapped       the first two records' data swapped
  too_many      more records than the limit asked for (the page twice)
  empty         no records (an index that promised more lies)
  truncated     the JSON cut in half (Content-Length matching the cut)
  short_body    Content-Length of the whole page, half of it sent, then close
  giant         an endless body (bytes until the client gives up)
  deep          JSON nested 100000 deep
  garbage       bytes that are not JSON

Index modes: ``inflate`` (the target shard ends 1000 records later than
it does), ``own_ahead`` (the shard of ``own_host`` ends 5 records later),
``seq_back`` (seq 0).

Event modes: ``long_line`` (200, then a line over 64 KiB), ``endless_data``
(data lines forever, never a blank line), ``garbage`` (an event whose data
is not JSON), ``seq_back`` (a valid-looking event of the target shard with
seq 1), ``lying`` (an event announcing 1000 records more of the target
shard than exist), ``own_lie`` (an event claiming records of ``own_host``'s
shard that were never written), ``binary`` (random bytes), ``redirect``
(a 302 to file:///etc/passwd instead of the stream). ``drop_streams()``
ends the relayed (honest) streams open now.
"""

import http.client
import http.server
import json
import os
import resource
import select
import signal
import socket
import socketserver
import sqlite3
import subprocess
import threading
import time
import urllib.parse

from device import Device, new_user, server_url
from harness import TIME_SCALE, ServerProcess, recsync_bin

PAGE_MODES = ["hole", "other_shard", "wrong_idx", "replayed", "relabelled", "swapped", "too_many",
              "empty", "truncated", "short_body", "giant", "deep", "garbage"]
EVENT_MODES = ["long_line", "endless_data", "garbage", "seq_back", "lying", "own_lie", "binary", "redirect"]

PAGE = 50  # records per page the victims ask for
NOTES = 120  # the source's records of the target shard: three pages
SYNC_SECONDS = 30.0 * TIME_SCALE  # a hostile sync must end within this (harness.TIME_SCALE)
RSS_BOUND_KB = 384 << 10  # the most a recsync process may hold (KiB): the 64 MiB answer bound, under ASan (182 MiB measured)
UPSTREAM_TIMEOUT = 30.0
GIANT_LIMIT = 200 << 20  # an endless body stops here even if nobody hangs up
STREAM_SECONDS = 30.0  # a hostile event stream ends after this at the latest


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, proxy):
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self):
        conn, addr = super().get_request()
        with self.proxy.lock:
            self.proxy.connections += 1
        return conn, addr


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.server.proxy._handle(self, "GET", b"")

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.server.proxy._handle(self, "POST", self.rfile.read(n))

    # -- answering --

    def answer(self, status, body, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def answer_json(self, status, obj):
        self.answer(status, json.dumps(obj).encode())


class HostileProxy:
    def __init__(self, test, upstream_port):
        self.test = test
        self.upstream_port = upstream_port
        self.page_mode = None
        self.index_mode = None
        self.event_mode = None
        self.redirect = None
        self.target = None  # (host, tag) whose pages and events are corrupted
        self.other = None  # (host, tag) the other_shard mode answers with
        self.own_host = None
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []
        self.event_streams = 0
        self.stream_generation = 0
        self.stopping = threading.Event()
        self.server = _Server(self)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        test.addCleanup(self.close)

    def close(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def honest(self):
        self.page_mode = self.index_mode = self.event_mode = self.redirect = None

    def drop_streams(self):
        """Ends every relayed event stream open now (the client sees the server close it)."""
        with self.lock:
            self.stream_generation += 1

    def count(self, path_prefix):
        with self.lock:
            return sum(1 for _, p in self.requests if p.startswith(path_prefix))

    # -- forwarding --

    def upstream(self, method, path, body=b"", headers=None):
        """One request to the real server: (status, content type, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.request(method, path, body=body if method == "POST" else None, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type", "application/json"), r.read()
        finally:
            conn.close()

    @staticmethod
    def _forward_headers(h):
        out = {}
        for k in ("Authorization", "Content-Type", "Last-Event-ID", "Accept"):
            if h.get(k) is not None:
                out[k] = h.get(k)
        return out

    def _handle(self, h, method, body):
        path = h.path
        with self.lock:
            self.requests.append((method, path))
        fwd = self._forward_headers(h.headers)
        url = urllib.parse.urlsplit(path)
        if self.redirect and url.path not in ("/api/v1/login", "/api/v1/register"):
            h.answer(302, b"moved\n", "text/plain", [("Location", self.redirect)])
            return
        if url.path == "/api/v1/events":
            with self.lock:
                self.event_streams += 1
            if self.event_mode:
                self._hostile_events(h)
            else:
                self._relay_events(h, path, fwd)
            return
        status, ctype, data = self.upstream(method, path, body, fwd)
        if status == 200 and url.path == "/api/v1/index" and self.index_mode:
            data = json.dumps(self._lie_index(json.loads(data))).encode()
        if status == 200 and url.path == "/api/v1/boot" and self.index_mode:
            boot = json.loads(data)
            boot["index"] = self._lie_index(boot["index"])
            data = json.dumps(boot).encode()
        if status == 200 and url.path == "/api/v1/records" and method == "GET" and self.page_mode:
            q = urllib.parse.parse_qs(url.query)
            if self.target is None or (q["host"][0], q["tag"][0]) == self.target:
                page = json.loads(data)
                if self._hostile_page(h, q, fwd, page):
                    return
                data = json.dumps(page).encode()
        h.answer(status, data, ctype)

    # -- the index --

    def _lie_index(self, index):
        mode = self.index_mode
        for s in index["shards"]:
            if mode == "inflate" and (s["host"], s["tag"]) == self.target:
                s["end"] += 1000
            if mode == "own_ahead" and s["host"] == self.own_host:
                s["end"] += 5
        if mode == "seq_back":
            index["seq"] = 0
        return index

    # -- pages --

    def _page(self, host, tag, start, limit, fwd):
        p = "/api/v1/records?host=%s&tag=%s&start=%d&limit=%d" % (host, tag, start, limit)
        status, _, data = self.upstream("GET", p, b"", fwd)
        assert status == 200, (status, data)
        return json.loads(data)

    def _hostile_page(self, h, q, fwd, page):
        """Answers the page request itself; False to send `page` (changed in place) as usual."""
        mode = self.page_mode
        recs = page["records"]
        start = int(q.get("start", ["0"])[0])
        limit = int(q.get("limit", ["1000"])[0])
        if mode == "hole" and len(recs) > 1:
            del recs[1]
        elif mode == "other_shard":
            other = self._page(self.other[0], self.other[1], start, limit, fwd)
            page["records"] = other["records"]
        elif mode == "wrong_idx" and len(recs) > 1:
            recs[1]["idx"] += 5
        elif mode == "replayed" and start > 0:
            page["records"] = self._page(q["host"][0], q["tag"][0], 0, limit, fwd)["records"]
        elif mode == "relabelled" and len(recs) > 1:
            recs[1]["id"], recs[1]["data"] = recs[0]["id"], recs[0]["data"]
        elif mode == "swapped" and len(recs) > 1:
            recs[0]["data"], recs[1]["data"] = recs[1]["data"], recs[0]["data"]
        elif mode == "too_many":
            page["records"] = recs + recs
        elif mode == "empty":
            page["records"] = []
        elif mode == "truncated":
            data = json.dumps(page).encode()
            h.answer(200, data[:len(data) // 2])
            return True
        elif mode == "short_body":
            data = json.dumps(page).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return True
        elif mode == "giant":
            self._giant(h)
            return True
        elif mode == "deep":
            h.answer(200, b"[" * 100000 + b"]" * 100000)
            return True
        elif mode == "garbage":
            h.answer(200, b"\x00\xff<html>not a page</html>" + os.urandom(512))
            return True
        return False

    def _giant(self, h):
        """A page that never ends: no length, bytes until the client hangs up."""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        chunk = b'{"records":[' + b" " * (1 << 20)
        sent = 0
        try:
            while sent < GIANT_LIMIT and not self.stopping.is_set():
                h.wfile.write(chunk)
                sent += len(chunk)
                chunk = b" " * (1 << 20)
        except OSError:
            pass

    # -- event streams --

    def _relay_events(self, h, path, fwd):
        """The real server's stream, byte for byte, until either side closes."""
        h.close_connection = True
        generation = self.stream_generation
        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=UPSTREAM_TIMEOUT)
        try:
            lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % self.upstream_port, "Connection: close"]
            lines += ["%s: %s" % kv for kv in fwd.items()]
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            down = h.connection
            while not self.stopping.is_set() and generation == self.stream_generation:
                ready, _, _ = select.select([up, down], [], [], 0.05)
                if up in ready:
                    data = up.recv(65536)
                    if not data:
                        return
                    down.sendall(data)
                if down in ready and not down.recv(65536):
                    return
        except OSError:
            return
        finally:
            up.close()

    def _hostile_events(self, h):
        """A 200 event stream that turns bad as `event_mode` says."""
        mode = self.event_mode
        h.close_connection = True
        if mode == "redirect":
            h.answer(302, b"moved\n", "text/plain", [("Location", "file:///etc/passwd")])
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Connection", "close")
        h.end_headers()
        last = int(h.headers.get("Last-Event-ID") or 0)
        host, tag = self.target or ("00000000-0000-0000-0000-000000000000", "x")

        def event(seq, start, end, ev_host=host, ev_tag=tag):
            data = json.dumps({"host": ev_host, "tag": ev_tag, "start": start, "end": end, "seq": seq})
            return ("id: %d\nevent: records\ndata: %s\n\n" % (seq, data)).encode()

        out = [b"retry: 1000\n: stream after %d\n\n" % last]
        if mode == "long_line":
            out.append(b"data: " + b"x" * (70 << 10) + b"\n\n")
        elif mode == "garbage":
            out.append(b"id: %d\nevent: records\ndata: {not json at all\n\n" % (last + 1))
        elif mode == "seq_back":
            out.append(event(1, 0, 1))
        elif mode == "lying":
            out.append(event(last + 1, 0, 1000000))
        elif mode == "own_lie":
            out.append(event(last + 1, 0, 1000000, self.own_host, "notes"))
        elif mode == "binary":
            out.append(os.urandom(4096) + b"\n\n")
        deadline = time.monotonic() + STREAM_SECONDS
        try:
            for part in out:
                h.wfile.write(part)
            h.wfile.flush()
            line = b"data: " + b"y" * 1000 + b"\n"
            while time.monotonic() < deadline and not self.stopping.is_set():
                if mode == "endless_data":
                    h.wfile.write(line * 64)
                else:
                    # Hold the stream open: the client is the one to give up.
                    ready, _, _ = select.select([h.connection], [], [], 0.1)
                    if ready and not h.connection.recv(4096):
                        return
        except OSError:
            return


def store_host(device):
    """The device's host id, read from its store."""
    con = sqlite3.connect("file:%s?mode=ro" % device.db_path, uri=True, timeout=30)
    try:
        return con.execute("SELECT value FROM meta WHERE name = 'host'").fetchone()[0]
    finally:
        con.close()


class HostileWorld:
    """A mixin for unittest.TestCase: ``start_world()`` starts the real
    recsyncd, a source device with two shards (``notes``, three pages,
    and ``todo``) synced to it, and a HostileProxy in front of it aimed at
    the source's ``notes``. ``victim(name)`` makes another device of the
    user that talks to the proxy; the assertions below judge what a hostile
    answer did to it."""

    def start_world(self):
        self.server = ServerProcess(self)
        self.user, self.password = new_user(), "pw-hostile"
        self.source = Device(self, "source")
        self.source.register(server_url(self.server), self.user, self.password)
        self.source.append_lines("notes", ["note %d" % i for i in range(NOTES)])
        self.source.append_lines("todo", ["todo %d" % i for i in range(PAGE + 10)])
        self.source.sync()
        self.proxy = HostileProxy(self, self.server.port)
        self.proxy.target = (self.source.host, "notes")
        self.proxy.other = (self.source.host, "todo")
        self.key = self.source.key_export()
        self.victims = []
        self.logged = {json.dumps(e, sort_keys=True) for e in self.source.log()}  # log --json lines of the writers

    def victim(self, name):
        """A second device of the user, logged in through the proxy, with one record of its own."""
        d = Device(self, name, key=self.key)
        d._host = store_host(d)  # as `status` would say, without a round trip
        d.login(self.proxy.url, self.user, self.password)
        d.append("mine", "own record of " + name)
        self.proxy.own_host = d.host
        self.victims.append(d)
        self.logged.update(json.dumps(e, sort_keys=True) for e in d.log() if e["host"] == d.host)
        return d

    def truth(self):
        """{(host, tag, idx): row} of every record written by the source and the victims."""
        rows = {(r[0], r[1], r[2]): r for r in self.source.records()}
        for v in self.victims:
            own = v.host.replace("-", "").upper()
            rows.update({(r[0], r[1], r[2]): r for r in v.records() if r[0] == own})
        return rows

    def hostile_sync(self, d, want):
        """Syncs through the hostile proxy: must fail with `want` in stderr,
        in bounded time; returns stderr."""
        t0 = time.monotonic()
        r = d.sync(page=PAGE, expect=None)
        took = time.monotonic() - t0
        err = r.err.decode("utf-8", "replace") if hasattr(r, "err") else ""
        self.assertIn(getattr(r, "rc", 0), (1, 3), "a hostile sync must fail (1) or be partial (3): %r" % (r,))
        self.assertIn(want, err)
        self.assertLess(took, SYNC_SECONDS, "the sync took %.1f s" % took)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.assertLess(rss, RSS_BOUND_KB, "a child process reached %d KiB" % rss)
        return err

    def assert_nothing_wrong(self, d):
        """Every record d holds is one its writer wrote, at its idx; d's
        copies of the source's shards start at 0 without a gap; log --json
        lists nothing else; verify passes."""
        truth = self.truth()
        src_host = self.source.host.replace("-", "").upper()
        for r in d.records():
            self.assertEqual(r, truth.get((r[0], r[1], r[2])), "a record nobody wrote: %r" % (r[:5],))
        for tag in ("notes", "todo"):
            idxs = [r[2] for r in d.records() if r[0] == src_host and r[1] == tag]
            self.assertEqual(idxs, list(range(len(idxs))), "shard %s kept with a gap: %s" % (tag, idxs))
        for e in d.log():
            self.assertIn(json.dumps(e, sort_keys=True), self.logged)
        self.assertIn("ok: ", d.verify().text)

    def assert_heals(self, d):
        """With the server honest again the next sync completes: d holds
        every record of the source's shards, as the source does."""
        self.proxy.honest()
        d.sync(page=PAGE)
        src_host = self.source.host.replace("-", "").upper()
        # Row for row the source's records (so they open as its do; verify ran before).
        self.assertEqual([r for r in d.records() if r[0] == src_host],
                         [r for r in self.source.records() if r[0] == src_host])


class Watcher:
    """`recsync watch --json` on a device's store; its stdout and stderr
    lines collected by threads, its resident memory (VmRSS) sampled every
    20 ms. Killed by PID in a cleanup."""

    def __init__(self, test, device):
        self.test = test
        env = dict(os.environ)
        if device.password is not None:
            env["RECSYNC_PASSWORD"] = device.password
        self.proc = subprocess.Popen([recsync_bin(), "--dir", device.dir, "watch", "--json"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        test.addCleanup(self._kill)
        self.cond = threading.Condition()
        self.out, self.err = [], []
        self.max_rss_kb = 0
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
                        threading.Thread(target=self._sample, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, pipe, into):
        for line in iter(pipe.readline, b""):
            with self.cond:
                into.append(line.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _sample(self):
        while self.proc.poll() is None:
            try:
                with open("/proc/%d/status" % self.proc.pid) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    def _kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for t in self.threads:
            t.join(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def stderr(self):
        with self.cond:
            return "\n".join(self.err)

    def wait_err(self, text, timeout=20.0, after=0):
        """Waits for a stderr line (from line `after` on) containing `text`; returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.err[after:]:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.threads[1].is_alive()):
                    self.test.fail("recsync watch printed no %r in %.0f s; stderr:\n%s"
                                   % (text, timeout, "\n".join(self.err[-40:])))
                self.cond.wait(min(left, 0.2))

    def wait_out(self, pred, timeout=20.0):
        """Waits for a stdout JSON line for which pred(obj) holds; returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.out:
                    obj = json.loads(line)
                    if pred(obj):
                        return obj
                left = deadline - time.monotonic()
                if left <= 0:
                    self.test.fail("no such watch line in %.0f s; stdout: %s; stderr:\n%s"
                                   % (timeout, self.out, "\n".join(self.err[-40:])))
                self.cond.wait(min(left, 0.2))

    def stop(self, timeout=20.0):
        """SIGTERM; returns the exit status (waits at most `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        for t in self.threads:
            t.join(timeout=5)
        return rc
