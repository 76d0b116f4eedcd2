"""recsyncd against one hostile client (issue 12, items 2, 3, 6 and the log
part of 10): connections per client address, the request deadline that
trickling cannot extend, bodies bounded per route and in total, 413 for a
chunked body over --body-max, and a log that stays whole lines at a bounded
rate under a flood.

Every test drives the real recsyncd over raw sockets with bounded waits.
"""

import http.client
import json
import os
import socket
import threading
import time
import unittest

from harness import ServerProcess, SSEReader, make_records

RECV_TIMEOUT = 5.0


def connect(port, source="127.0.0.1", timeout=RECV_TIMEOUT):
    """A TCP connection to recsyncd from loopback address `source`."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def closed_by_server(sock, wait):
    """True when the server has closed `sock` (end of input or a reset) within `wait` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(65536) == b""
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def read_response(sock, timeout=RECV_TIMEOUT):
    """Reads one HTTP response (Content-Length framed) from `sock`: (status, headers, body).
    Raises AssertionError when none arrives in time or the server closes first."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise AssertionError("no response head in %ss (got %r)" % (timeout, buf[:200]))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("no response head in %ss (got %r)" % (timeout, buf[:200]))
        if not chunk:
            raise AssertionError("server closed the connection without a response (got %r)" % buf[:200])
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        if time.monotonic() > deadline:
            raise AssertionError("response body incomplete after %ss" % timeout)
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def send_quietly(sock, data):
    """Sends what the server will take; it may refuse the rest by closing."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        return False


def chunked(piece, count):
    """`count` HTTP chunks of `piece`, then the last chunk."""
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    for _ in range(count):
        yield frame
    yield b"0\r\n\r\n"


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def metric(server, name, source="127.0.0.2"):
    """The value of an unlabelled metric, fetched from another loopback address."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=RECV_TIMEOUT, source_address=(source, 0))
    try:
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
    finally:
        c.close()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError("metric %s not found" % name)


def wait_quiet(server, timeout=5.0):
    """Waits until the only connection recsyncd holds is the /metrics request asking."""
    deadline = time.monotonic() + timeout
    while metric(server, "recsyncd_connections") != 1:
        if time.monotonic() > deadline:
            raise AssertionError("recsyncd still holds connections after %ss" % timeout)
        time.sleep(0.05)


def healthz_from(port, source, timeout=RECV_TIMEOUT):
    """GET /healthz on a new connection from `source`: the status, or an exception's name."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
        try:
            c.request("GET", "/healthz")
            return c.getresponse().status
        finally:
            c.close()
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__


class ConnectionLimitTests(unittest.TestCase):
    def test_connections_over_the_per_address_limit_are_refused_and_others_served(self):
        limit = 16
        server = ServerProcess(self, args=["--max-conns-per-ip", str(limit), "--request-deadline-s", "60"])
        wait_quiet(server)
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        # 40 slowloris connections from 127.0.0.1: a request line and one header, never finished.
        for _ in range(40):
            s = connect(server.port)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(0.5)
        closed = [s for s in socks if closed_by_server(s, 0.05)]
        self.assertEqual(len(closed), 40 - limit, "connections from one address past --max-conns-per-ip %d" % limit)
        # The address itself gets nothing more while its connections stay busy...
        self.assertNotEqual(healthz_from(server.port, "127.0.0.1", timeout=3), 200)
        # ...while another address is served at once.
        t0 = time.monotonic()
        self.assertEqual(healthz_from(server.port, "127.0.0.2"), 200)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertGreaterEqual(metric(server, "recsyncd_connections_refused_total"), 40 - limit + 1)
        log = server.log()
        self.assertIn("refused a connection from 127.0.0.1", log)
        # Once they close, the address has its room back.
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline:
            status = healthz_from(server.port, "127.0.0.1")
            if status == 200:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200)

    def test_idle_keep_alive_connections_make_room_for_new_ones(self):
        limit = 8
        server = ServerProcess(self, args=["--max-conns-per-ip", str(limit)])
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])
        # Twice the bound of kept-alive connections, each between requests: none is refused.
        for i in range(2 * limit):
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=RECV_TIMEOUT)
            c.request("GET", "/healthz")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 200, "keep-alive connection %d" % i)
            conns.append(c)
        # The newest ones are open; the oldest idle ones were closed to make room.
        self.assertEqual(metric(server, "recsyncd_connections_refused_total"), 0)
        c = conns[-1]
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 200)

    def test_event_streams_count_apart_from_connections(self):
        server = ServerProcess(self, args=["--max-conns-per-ip", "4", "--max-streams-per-ip", "6"])
        acct = server.register()
        readers = [server.sse(acct.token) for _ in range(6)]
        for r in readers:
            self.assertEqual(r.status, 200)
        # Six streams from one address; requests from it are still served.
        self.assertEqual(healthz_from(server.port, "127.0.0.1"), 200)
        # The seventh stream is refused with 503 and Retry-After.
        s = connect(server.port)
        self.addCleanup(s.close)
        s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Token %s\r\n\r\n" % acct.token.encode())
        status, headers, body = read_response(s)
        self.assertEqual(status, 503, body)
        self.assertIn("retry-after", headers)
        self.assertIn("--max-streams-per-ip", json.loads(body)["message"])


    def test_max_connections_bounds_all_connections_and_is_kept_under_the_open_file_limit(self):
        # One worker thread: libmicrohttpd splits the bound between its workers.
        server = ServerProcess(self, args=["--max-connections", "6", "--threads", "1", "--max-conns-per-ip", "0",
                                           "--request-deadline-s", "60"])
        self.assertEqual(metric(server, "recsyncd_connections_max"), 6)
        wait_quiet(server)
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(6):
            s = connect(server.port)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished: held open
            socks.append(s)
        time.sleep(0.3)
        self.assertNotEqual(healthz_from(server.port, "127.0.0.2", timeout=1.5), 200,
                            "a seventh connection past --max-connections 6")
        socks.pop().close()
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline and status != 200:
            status = healthz_from(server.port, "127.0.0.2", timeout=1.5)
        self.assertEqual(status, 200, "served once one of the six closed")
        # A bound the open-file limit cannot hold is lowered to what it can, and said.
        big = ServerProcess(self, args=["--max-connections", "10000000"])
        self.assertLess(metric(big, "recsyncd_connections_max"), 10000000)
        self.assertGreater(metric(big, "recsyncd_connections_max"), 16)
        self.assertIn("--max-connections 10000000 is more than the open-file limit", big.log())


class DeadlineTests(unittest.TestCase):
    def trickle_until_closed(self, sock, piece, every, most):
        """Sends `piece` every `every` seconds until the server closes `sock`;
        seconds from now until then, or None if still open after `most`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < most:
            if not send_quietly(sock, piece) or closed_by_server(sock, every):
                return time.monotonic() - t0
        return None

    def test_trickling_headers_or_body_is_cut_at_the_deadline(self):
        server = ServerProcess(self, args=["--request-deadline-s", "2", "--timeout-s", "60"])
        # Headers: a line every 0.3 s, each byte well inside the idle timeout.
        s = connect(server.port)
        self.addCleanup(s.close)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took = self.trickle_until_closed(s, b"X-Slow: 1\r\n", 0.3, 8)
        self.assertIsNotNone(took, "a client trickling headers kept its connection 8 s past a 2 s deadline")
        self.assertGreater(took, 1.5)
        self.assertLess(took, 3.5)
        # A body: Content-Length 1000, one byte every 0.3 s.
        s = connect(server.port)
        self.addCleanup(s.close)
        s.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        took = self.trickle_until_closed(s, b" ", 0.3, 8)
        self.assertIsNotNone(took, "a client trickling a body kept its connection 8 s past a 2 s deadline")
        self.assertLess(took, 3.5)
        self.assertGreaterEqual(metric(server, "recsyncd_requests_cut_total"), 2)
        # The server still answers.
        self.assertEqual(healthz_from(server.port, "127.0.0.1"), 200)

    def test_event_streams_and_idle_keep_alive_outlive_the_deadline(self):
        server = ServerProcess(self, args=["--request-deadline-s", "1", "--heartbeat-ms", "300"])
        acct = server.register()
        reader = server.sse(acct.token)
        self.assertEqual(reader.status, 200)
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=RECV_TIMEOUT)
        self.addCleanup(c.close)
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 200)
        time.sleep(2.5)
        # The stream still delivers heartbeats and events 2.5 deadlines later...
        reader.wait_comments(2, timeout=5)
        acct.upload(make_records(acct.host, "t", 0, 1))
        ev = reader.next_event(timeout=5)
        self.assertEqual(ev.event, "records")
        # ...and the kept-alive connection (idle, within --timeout-s) takes another request.
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 200)
        self.assertEqual(metric(server, "recsyncd_requests_cut_total"), 0)


class BodyTests(unittest.TestCase):
    def test_register_announcing_a_huge_body_gets_413_before_it_is_read(self):
        server = ServerProcess(self)
        s = connect(server.port)
        self.addCleanup(s.close)
        s.sendall(b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 31457280\r\n\r\n")
        status, headers, body = read_response(s, timeout=3)
        self.assertEqual(status, 413, body)
        err = json.loads(body)
        self.assertEqual(err["error"], "too_big")
        self.assertIn("31457280", err["message"])
        self.assertIn("65536", err["message"])
        self.assertIn("/api/v1/register", err["message"])

    def test_chunked_bodies_over_their_bound_get_413_json(self):
        server = ServerProcess(self, args=["--body-max", "1048576"])
        acct = server.register()
        cases = [
            ("/api/v1/records", b"Authorization: Token %s\r\n" % acct.token.encode(), 1048576),
            ("/api/v1/register", b"", 65536),
        ]
        for path, auth, bound in cases:
            with self.subTest(path=path):
                s = connect(server.port, timeout=15)
                self.addCleanup(s.close)
                s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                          b"Transfer-Encoding: chunked\r\n\r\n" % (path.encode(), auth))
                sent = 0
                for frame in chunked(b"x" * 65536, 512):  # 32 MiB
                    if not send_quietly(s, frame):
                        break  # answered (and closed) before the end of the body
                    sent += len(frame)
                status, headers, body = read_response(s, timeout=10)
                self.assertEqual(status, 413, body)
                self.assertEqual(headers.get("content-type"), "application/json")
                err = json.loads(body)
                self.assertEqual(err["error"], "too_big")
                self.assertIn(str(bound), err["message"])
                # Answered once the bound was passed, not after the whole 32 MiB: past the
                # bound the client could send only what the sockets' buffers hold.
                self.assertLess(sent, 16 << 20, "the server read on far past the bound")
        self.assertEqual(healthz_from(server.port, "127.0.0.1"), 200)

    def test_concurrent_big_unauthenticated_bodies_leave_rss_bounded(self):
        """16 chunked and 8 announced 24-30 MiB register bodies at once: the
        server must not hold them. Bound: peak VmRSS within 64 MiB of the
        idle server's (the old server held every body whole: +400 MiB)."""
        server = ServerProcess(self)
        pid = server.proc.pid
        base = vm_rss_kib(pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], vm_rss_kib(pid))
                except (OSError, AssertionError):
                    return
                time.sleep(0.02)

        statuses = []
        lock = threading.Lock()
        mib = b"x" * (1 << 20)

        def flood(chunked_body):
            s = connect(server.port, timeout=30)
            try:
                head = b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                if chunked_body:
                    s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
                    for frame in chunked(mib, 24):
                        if not send_quietly(s, frame):
                            break
                else:
                    s.sendall(head + b"Content-Length: %d\r\n\r\n" % (30 << 20))
                    for _ in range(30):
                        if not send_quietly(s, mib):
                            break
                try:
                    status = read_response(s, timeout=30)[0]
                except AssertionError as e:
                    status = str(e)[:80]
                with lock:
                    statuses.append(status)
            finally:
                s.close()

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=flood, args=(i < 16,)) for i in range(24)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        finally:
            stop.set()
            sampler.join(5)
        self.assertFalse(any(t.is_alive() for t in threads), "flood threads did not finish in time")
        grown_mib = (peak[0] - base) / 1024.0
        self.assertLess(grown_mib, 64, "recsyncd grew from %d to %d KiB holding unauthenticated bodies"
                        % (base, peak[0]))
        self.assertEqual(sorted(s for s in statuses if isinstance(s, int)), [413] * 24, statuses)
        self.assertEqual(metric(server, "recsyncd_body_bytes"), 0)

    def test_bodies_past_the_budget_get_503_with_retry_after(self):
        server = ServerProcess(self, args=["--body-max", "2097152", "--body-budget", "3145728"])
        acct = server.register()
        head = (b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Token %s\r\nContent-Length: 2000000\r\n\r\n" % acct.token.encode())
        # One upload holds 2 MB of a 3 MiB budget while it arrives.
        a = connect(server.port)
        self.addCleanup(a.close)
        a.sendall(head + b"[")
        time.sleep(0.3)
        # A second one is refused at once, before its body is read.
        b = connect(server.port)
        self.addCleanup(b.close)
        b.sendall(head)
        status, headers, body = read_response(b, timeout=3)
        self.assertEqual(status, 503, body)
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        err = json.loads(body)
        self.assertEqual(err["error"], "unavailable")
        self.assertIn("--body-budget", err["message"])
        self.assertGreaterEqual(metric(server, "recsyncd_body_bytes"), 2000000)
        # An upload without a token is refused before the budget is even consulted.
        n = connect(server.port)
        self.addCleanup(n.close)
        n.sendall(head.replace(b"Authorization: Token", b"X-No-Token:"))
        self.assertEqual(read_response(n, timeout=3)[0], 401)
        # When the first goes away, its bytes come back.
        a.close()
        deadline = time.monotonic() + 5
        while metric(server, "recsyncd_body_bytes") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(metric(server, "recsyncd_body_bytes"), 0)
        r = acct.upload(make_records(acct.host, "t", 0, 3))
        self.assertEqual(r.status, 200, r)


class LogTests(unittest.TestCase):
    def test_a_flood_of_bad_requests_logs_bounded_whole_lines(self):
        server = ServerProcess(self)
        bad = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
        per_thread, threads_n = 40, 16

        def flood():
            for _ in range(per_thread):
                try:
                    s = connect(server.port, timeout=5)
                    s.sendall(bad)
                    s.recv(4096)
                    s.close()
                except OSError:
                    pass

        t0 = time.monotonic()
        threads = [threading.Thread(target=flood) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - t0
        self.assertFalse(any(t.is_alive() for t in threads))
        time.sleep(1.5)  # the suppressed-lines summary comes within a second
        with open(server.logpath, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        self.assertTrue(text.endswith("\n"), "the log ends mid-line")
        lines = text.splitlines()
        for line in lines:
            self.assertTrue(line.startswith("recsyncd: "), "not a whole line: %r" % line[:200])
            self.assertEqual(line.count("recsyncd: "), 1, "two lines run together: %r" % line[:200])
        bound = 21 * (int(elapsed) + 3) + 5
        self.assertLessEqual(len(lines), bound, "%d log lines for %d bad requests in %.1f s"
                             % (len(lines), per_thread * threads_n, elapsed))
        self.assertTrue(any("lines suppressed" in line for line in lines), "no summary of suppressed lines")
        self.assertGreater(metric(server, "recsyncd_log_suppressed_total"), 0)


if __name__ == "__main__":
    unittest.main()
