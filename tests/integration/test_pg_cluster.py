"""recsyncd on PostgreSQL: several processes on one database (events cross
processes through LISTEN/NOTIFY, one gap-free seq order per user), and
PostgreSQL stopped in the middle of a sync and started again (503 with a
clear error, recovery without restarting recsyncd, identical stores).

Runs only with RS_TEST_BACKEND=postgres (CTest: integration.pg.test_pg_cluster)."""

import secrets
import threading
import time
import unittest

from device import Device, make_devices, new_user, server_url
from harness import Client, ServerProcess, backend_name, make_database, make_records, new_host
from test_sync_faults import remote_index

# Long enough that a stream's heartbeat poll cannot explain a delivery: events
# that arrive faster than this came through NOTIFY.
HEARTBEAT_MS = 20000


def check_contiguous(test, events, first_seq):
    """Events' seq ranges follow each other from first_seq with no gap and no repeat."""
    last = first_seq - 1
    for ev in events:
        d = ev.json
        test.assertEqual(ev.id, d["seq"])
        test.assertEqual(d["seq"] - (d["end"] - d["start"]) + 1, last + 1,
                         "gap or repeat after seq %d: %r" % (last, events))
        last = d["seq"]
    return last


class PgTestCase(unittest.TestCase):
    def setUp(self):
        if backend_name() != "postgres":
            self.skipTest("PostgreSQL only (RS_TEST_BACKEND=postgres)")
        self.db = make_database(self)


class TwoProcesses(PgTestCase):
    def test_device_pushes_through_one_process_and_a_stream_on_the_other_sees_every_event(self):
        first = ServerProcess(self, db=self.db, args=["--heartbeat-ms", str(HEARTBEAT_MS)])
        second = ServerProcess(self, db=self.db, args=["--heartbeat-ms", str(HEARTBEAT_MS)])
        self.assertIn('"backend":"postgres"', first.client().get("/healthz").body.decode())
        user, password = new_user(), "pw-" + secrets.token_hex(8)
        a = Device(self, "a")
        a.register(server_url(first), user, password)
        b = Device(self, "b", key=a.key_export())
        b.login(server_url(second), user, password)
        watcher = Client(second.port)
        self.addCleanup(watcher.close)
        r = watcher.post("/api/v1/login", {"username": user, "password": password, "host": new_host()})
        self.assertEqual(r.status, 200, r)
        sse = second.sse(r.json["token"], after=0)
        self.assertEqual(sse.status, 200, sse.body)
        events = []
        for i in range(5):
            a.append_lines("kv", ["r%d-%d" % (i, j) for j in range(i + 1)])
            t0 = time.monotonic()
            report = a.sync()
            self.assertEqual(report["uploaded"], i + 1)
            ev = sse.next_event(5)
            self.assertIsNotNone(ev, "no event on the second process for batch %d" % i)
            self.assertLess(time.monotonic() - t0, HEARTBEAT_MS / 1000.0 / 2,
                            "event came by heartbeat poll, not NOTIFY")
            events.append(ev)
        self.assertEqual(check_contiguous(self, events, 1), 15)
        self.assertIsNone(sse.next_event(0.3), "an extra event")
        report = b.sync()
        self.assertEqual(report["downloaded"], 15)
        self.assertEqual(b.records(), a.records())

    def test_concurrent_writers_on_both_processes_give_one_gap_free_order(self):
        first = ServerProcess(self, db=self.db, args=["--heartbeat-ms", str(HEARTBEAT_MS)])
        second = ServerProcess(self, db=self.db, args=["--heartbeat-ms", str(HEARTBEAT_MS)])
        acct = first.register()
        h2 = new_host()
        login = Client(second.port)
        self.addCleanup(login.close)
        r = login.post("/api/v1/login", acct.credentials(h2))
        self.assertEqual(r.status, 200, r)
        token2 = r.json["token"]
        streams = [first.sse(token2, after=0), second.sse(acct.token, after=0)]
        batches, per = 20, 3
        errors = []

        def writer(port, token, host):
            c = Client(port, token=token)
            try:
                for i in range(batches):
                    r = c.post("/api/v1/records", {"records": make_records(host, "log", i * per, per)})
                    if r.status != 200:
                        errors.append(r)
                        return
            finally:
                c.close()

        threads = [threading.Thread(target=writer, args=(first.port, acct.token, acct.host)),
                   threading.Thread(target=writer, args=(second.port, token2, h2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "a writer hung")
        self.assertEqual(errors, [])
        total = 2 * batches * per
        seen = []
        for s in streams:
            evs = []
            deadline = time.monotonic() + 10
            last = 0
            while last < total and time.monotonic() < deadline:
                ev = s.next_event(max(0.1, deadline - time.monotonic()))
                if ev is None:
                    break
                evs.append(ev)
                last = ev.id
            self.assertEqual(check_contiguous(self, evs, 1), total)
            seen.append([(e.id, e.data) for e in evs])
        self.assertEqual(seen[0], seen[1], "both processes stream the same order")


class Outage(PgTestCase):
    def test_postgres_stopped_mid_sync_then_started_again(self):
        cluster = self.db.cluster
        self.addCleanup(lambda: cluster.pid is None and cluster.start())
        server = ServerProcess(self, db=self.db)
        a, b = make_devices(self, server, 2, names=["a", "b"])
        n, page = 20000, 100
        a.append_lines("bulk", ["line-%d" % i for i in range(n)])
        p = a.popen_sync("--page-records", str(page))
        deadline = time.monotonic() + 60
        end = 0
        while time.monotonic() < deadline and p.poll() is None:
            end = remote_index(server, b).get((a.host, "bulk"), (0, 0))[1]
            if end > 0:
                break
            time.sleep(0.01)
        self.assertIsNone(p.poll(), "the sync finished before PostgreSQL could be stopped")
        self.assertGreater(end, 0)
        cluster.stop("fast")
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 1, (out, err))
        msg = err.decode()
        self.assertIn(server_url(server), msg)
        self.assertRegex(msg, "(?i)unavailable|503", msg)
        # The server stays up and says it cannot serve.
        c = Client(server.port, timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(c.get("/healthz").status, 503)
        cluster.start()
        # It recovers by itself: no recsyncd restart.
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            status = c.get("/healthz").status
            if status == 200:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200)
        stored = remote_index(server, b)[(a.host, "bulk")][1]
        self.assertEqual(stored % page, 0, "a partial page is visible: end %d" % stored)
        self.assertLess(stored, n)
        r = a.sync(page=page)
        self.assertEqual(r["outcome"], "push")
        self.assertEqual(r["uploaded"], n - stored)
        self.assertEqual(remote_index(server, b)[(a.host, "bulk")], (0, n))
        r = b.sync()
        self.assertEqual(r["downloaded"], n)
        self.assertEqual(b.records(), a.records())
        self.assertEqual(b.shards(), a.shards())
        b.verify()

    def test_a_stream_resumes_after_postgres_restarts(self):
        cluster = self.db.cluster
        self.addCleanup(lambda: cluster.pid is None and cluster.start())
        server = ServerProcess(self, db=self.db, args=["--heartbeat-ms", str(HEARTBEAT_MS)])
        second = ServerProcess(self, db=self.db, args=["--heartbeat-ms", str(HEARTBEAT_MS)])
        acct = server.register()
        sse = second.sse(acct.token, after=0)
        c = acct.client()
        self.assertEqual(c.post("/api/v1/records", {"records": make_records(acct.host, "kv", 0, 2)}).status, 200)
        self.assertEqual(sse.next_event(5).id, 2)
        cluster.stop("fast")
        r = c.post("/api/v1/records", {"records": make_records(acct.host, "kv", 2, 2)})
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json["error"], "unavailable")
        cluster.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = c.post("/api/v1/records", {"records": make_records(acct.host, "kv", 2, 2)})
            if r.status != 503:
                break
            time.sleep(0.1)
        self.assertEqual(r.status, 200, r)
        # The second process's listener reconnected: the event arrives well before a heartbeat.
        ev = sse.next_event(HEARTBEAT_MS / 1000.0 / 2)
        self.assertIsNotNone(ev, "no event after PostgreSQL came back")
        self.assertEqual(ev.id, 4)
        self.assertEqual(ev.json["start"], 2)


if __name__ == "__main__":
    unittest.main()
