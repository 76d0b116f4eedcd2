"""A fault-injecting proxy for the tests: raw HTTP/1.1 over TCP on
127.0.0.1 between the real ``recsync`` and the real recsyncd, breaking the
transport the way networks and middleboxes do (the bytes it does pass are
the server's own). tests/integration/hostile_server.py (on main) is the
other kind: a server that answers with well-formed lies; this one never
forges content, it delays, cuts, resets, repeats and reorders.

``FaultProxy(test, upstream_port, seed=..., rate=...)`` starts at once and
is stopped in a cleanup. ``url`` is what ``recsync login --server`` takes.
While ``faults`` is True each request gets, with probability ``rate``, one
fault from ``kinds`` (default ``KINDS``), drawn from a seeded generator:

  delay          the request waits 50-600 ms before it is forwarded
  drop_mid_body  part of the request body goes to the server, then both
                 connections close (the server must not act on half a body)
  truncate       the server's whole answer is read, part of it is sent to
                 the client, then the connection closes
  reset_before   the client's connection is reset (RST) before anything
                 reaches the server
  reset_after    the server answers, the client's connection is reset
                 instead of the answer (an acknowledgement lost)
  duplicate      the request goes to the server twice (the second on a
                 fresh connection); the client gets the second answer
  replay_late    the request is answered normally and sent again, alone,
                 after later requests went through (a stale duplicate)
  reorder        the request is held until a request on another connection
                 has gone through (or 1 s passed): connections reordered

Counters (under ``lock``): ``injected`` {kind: n}; ``overtaken`` (reorders
where another request really went first); ``acked`` {record id: count} of
records in POST /api/v1/records bodies the server answered 200 (whether or
not the client heard it), ``acked_posts`` the number of such answers.

Bounds: at most MAX_CONNECTIONS client connections at once (more wait in
the listen queue), every socket has a timeout, every thread is joined in
close(). Upstream unreachable (recsyncd killed): the client's connection
is closed, as a dead server's would be.
"""

import json
import random
import socket
import struct
import threading
import time

KINDS = ["delay", "drop_mid_body", "truncate", "reset_before", "reset_after", "duplicate", "replay_late",
         "reorder"]

MAX_CONNECTIONS = 64
TIMEOUT = 30.0
MAX_MESSAGE = 256 << 20


class _Closed(Exception):
    pass


def _recv_more(sock, buf):
    chunk = sock.recv(65536)
    if not chunk:
        raise _Closed()
    buf += chunk
    if len(buf) > MAX_MESSAGE:
        raise _Closed()
    return buf


def read_message(sock, buf, response=False):
    """One HTTP/1.1 message from sock (head, then a Content-Length or chunked
    body; a response without either ends at EOF). Returns (head, raw, rest):
    head is the head's bytes without the blank line, raw the whole message as
    it came, rest what followed it. Raises _Closed at EOF mid-message."""
    while b"\r\n\r\n" not in buf:
        buf = _recv_more(sock, buf)
    head, rest = buf.split(b"\r\n\r\n", 1)
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if response and (head.split(b" ")[1:2] in ([b"204"], [b"304"])):
        length, chunked = 0, False
    if chunked:
        pos = 0
        while True:
            while b"\r\n" not in rest[pos:]:
                rest = _recv_more(sock, rest)
            line_end = rest.index(b"\r\n", pos)
            size = int(rest[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:
                while b"\r\n\r\n" not in rest[pos - 2:]:
                    rest = _recv_more(sock, rest)
                pos = rest.index(b"\r\n\r\n", pos - 2) + 4
                break
            while len(rest) < pos + size + 2:
                rest = _recv_more(sock, rest)
            pos += size + 2
        return head, head + b"\r\n\r\n" + rest[:pos], rest[pos:]
    while len(rest) < length:
        rest = _recv_more(sock, rest)
    return head, head + b"\r\n\r\n" + rest[:length], rest[length:]


def _body(raw):
    return raw.split(b"\r\n\r\n", 1)[1]


def _reset(sock):
    """Closes sock with an RST (SO_LINGER 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, test, upstream_port, seed=0, rate=0.3, kinds=None):
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.rate = rate
        self.kinds = list(kinds or KINDS)
        self.faults = False
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.injected = {k: 0 for k in KINDS}
        self.overtaken = 0
        self.acked = {}
        self.acked_posts = 0
        self.statuses = {}  # status code of each answer from the server -> count
        self.requests = 0
        self.forwarded = 0  # requests that reached the server, for reorder
        self.late = []  # requests to replay later
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.stopping = False
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()
        test.addCleanup(self.close)

    def close(self):
        self.stopping = True
        with self.cond:
            self.cond.notify_all()
        self.acceptor.join(10)
        self.sock.close()
        for t in self.threads:
            t.join(TIMEOUT + 5)

    def total_injected(self):
        with self.lock:
            return sum(self.injected.values())

    def _accept(self):
        while not self.stopping:
            if not self.slots.acquire(timeout=0.2):
                continue
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                self.slots.release()
                continue
            except OSError:
                self.slots.release()
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
            t.start()

    def _pick(self):
        with self.lock:
            self.requests += 1
            if not self.faults or self.rng.random() >= self.rate:
                return None, self.rng.random()
            kind = self.rng.choice(self.kinds)
            self.injected[kind] += 1
            return kind, self.rng.random()

    def _upstream(self):
        return socket.create_connection(("127.0.0.1", self.upstream_port), timeout=TIMEOUT)

    def _exchange(self, up, raw, ubuf):
        """Sends one request on `up`, returns (response raw, rest of ubuf)."""
        up.sendall(raw)
        with self.cond:
            self.forwarded += 1
            self.cond.notify_all()
        rhead, rraw, ubuf = read_message(up, ubuf, response=True)
        self._note(raw, rraw)
        return rraw, ubuf

    def _note(self, raw, rraw):
        """Counts the answer's status and the records of a POST /api/v1/records the server answered 200."""
        with self.lock:
            code = rraw[9:12].decode("ascii", "replace")
            self.statuses[code] = self.statuses.get(code, 0) + 1
        if not raw.startswith(b"POST /api/v1/records ") or not rraw.startswith(b"HTTP/1.1 200"):
            return
        try:
            recs = json.loads(_body(raw))["records"]
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.acked_posts += 1
            for r in recs:
                self.acked[r["id"]] = self.acked.get(r["id"], 0) + 1

    def _replay_late(self):
        """Sends the requests held for a late replay, each alone on a new connection."""
        with self.lock:
            late, self.late = self.late, []
        for raw in late:
            try:
                up = self._upstream()
                try:
                    self._exchange(up, raw, b"")
                finally:
                    up.close()
            except (OSError, _Closed, ValueError):
                pass

    def _serve(self, conn):
        conn.settimeout(TIMEOUT)
        up = None
        cbuf, ubuf = b"", b""
        try:
            while not self.stopping:
                head, raw, cbuf = read_message(conn, cbuf)
                kind, frac = self._pick()
                if self.late and kind != "replay_late":
                    self._replay_late()
                if kind == "reset_before":
                    _reset(conn)
                    conn = None
                    return
                if kind == "delay":
                    time.sleep(0.05 + 0.55 * frac)
                if kind == "reorder":
                    with self.cond:
                        seen = self.forwarded
                        end = time.monotonic() + 1.0
                        while self.forwarded == seen and not self.stopping and time.monotonic() < end:
                            self.cond.wait(end - time.monotonic())
                        if self.forwarded != seen:
                            self.overtaken += 1
                if up is None:
                    up = self._upstream()
                if kind == "drop_mid_body":
                    body_at = raw.index(b"\r\n\r\n") + 4
                    cut = body_at + int((len(raw) - body_at) * frac) if len(raw) > body_at else body_at // 2
                    up.sendall(raw[:max(1, cut)])
                    time.sleep(0.05)
                    _reset(up)
                    up = None
                    _reset(conn)
                    conn = None
                    return
                if kind == "duplicate":
                    first = self._upstream()
                    try:
                        self._exchange(first, raw, b"")
                    finally:
                        first.close()
                rraw, ubuf = self._exchange(up, raw, ubuf)
                if kind == "replay_late":
                    with self.lock:
                        self.late.append(raw)
                if kind == "reset_after":
                    _reset(conn)
                    conn = None
                    return
                if kind == "truncate":
                    conn.sendall(rraw[:max(1, int(len(rraw) * frac))])
                    return
                conn.sendall(rraw)
        except (OSError, _Closed, ValueError):
            return
        finally:
            if conn is not None:
                conn.close()
            if up is not None:
                up.close()
            self.slots.release()
