"""recsyncd operations: healthz, metrics, routing errors, acks, keep-alive, command line."""

import os
import re
import subprocess
import time
import unittest

from harness import (ServerProcess, backend_name, make_database, make_records, make_tempdir, new_host,
                     recsyncd_bin)


def metric(text, name, labels=None):
    """The value of one sample, or None."""
    pattern = re.escape(name)
    if labels:
        pattern += r"\{" + ",".join('%s="%s"' % (k, re.escape(v)) for k, v in labels.items()) + r"\}"
    m = re.search(r"^" + pattern + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


class OpsTests(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def test_healthz(self):
        r = self.server.client().get("/healthz")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["status"], "ok")
        self.assertIn(r.json["backend"], ("sqlite", "postgres"))

    def test_metrics_count_requests_records_and_durations(self):
        acct = self.server.register()
        acct.upload(make_records(acct.host, "kv", 0, 7, payload_size=100))
        acct.page(acct.host, "kv", start=0, limit=3)
        acct.client().get("/api/v1/index")
        acct.client().get("/api/v1/index", token="0" * 96)
        text = self.server.metrics()
        self.assertEqual(metric(text, "recsyncd_requests_total", {"route": "register", "status": "201"}), 1)
        self.assertEqual(metric(text, "recsyncd_requests_total", {"route": "records_upload", "status": "200"}), 1)
        self.assertEqual(metric(text, "recsyncd_requests_total", {"route": "index", "status": "200"}), 1)
        self.assertEqual(metric(text, "recsyncd_requests_total", {"route": "index", "status": "401"}), 1)
        self.assertEqual(metric(text, "recsyncd_records_stored_total"), 7)
        self.assertEqual(metric(text, "recsyncd_bytes_stored_total"), 7 * (100 + 124 + 32))
        self.assertEqual(metric(text, "recsyncd_records_served_total"), 3)
        self.assertEqual(metric(text, "recsyncd_records"), 7)
        self.assertEqual(metric(text, "recsyncd_bytes"), 7 * 256)
        self.assertEqual(metric(text, "recsyncd_users"), 1)
        self.assertEqual(metric(text, "recsyncd_devices"), 1)
        self.assertEqual(metric(text, "recsyncd_shards"), 1)
        self.assertEqual(metric(text, "recsyncd_backend_up"), 1)
        self.assertEqual(metric(text, "recsyncd_request_duration_seconds_count", {"route": "index"}), 2)
        self.assertEqual(metric(text, "recsyncd_request_duration_seconds_bucket", {"route": "index", "le": "+Inf"}), 2)
        self.assertIn("# TYPE recsyncd_request_duration_seconds histogram", text)
        self.assertIsNotNone(metric(text, "recsyncd_retention_runs_total"))
        self.assertIsNotNone(metric(text, "recsyncd_events_pruned_total"))
        # Buckets are cumulative.
        buckets = [float(v) for v in re.findall(
            r'^recsyncd_request_duration_seconds_bucket\{route="records_upload",le="[^"]+"\} (\d+)$', text, re.M)]
        self.assertEqual(buckets, sorted(buckets))
        self.assertEqual(buckets[-1], 1)

    def test_sqlite_checkpoints_run_on_the_checkpointer_thread(self):
        """Past 1000 WAL pages the checkpointer (not a request) copies the WAL
        into the database: /metrics counts its runs and pages, and the main
        database file holds the uploaded bytes."""
        if backend_name() != "sqlite":
            self.skipTest("the WAL checkpointer belongs to the SQLite backend")
        acct = self.server.register()
        self.assertEqual(metric(self.server.metrics(), "recsyncd_sqlite_checkpoint_pages_total"), 0)
        # 2,400 records of 2,000 B: about 5 MB, well past 1000 pages of 4 KiB.
        for start in range(0, 2400, 400):
            acct.upload(make_records(acct.host, "kv", start, 400, payload_size=2000))
        deadline = time.monotonic() + 15
        pages = 0
        while time.monotonic() < deadline:
            text = self.server.metrics()
            pages = metric(text, "recsyncd_sqlite_checkpoint_pages_total") or 0
            if pages >= 1000:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(pages, 1000, "the checkpointer did not run:\n" + text)
        self.assertGreaterEqual(metric(text, "recsyncd_sqlite_checkpoints_total"), 1)
        self.assertEqual(metric(text, "recsyncd_sqlite_checkpoint_errors_total"), 0)
        self.assertGreater(metric(text, "recsyncd_sqlite_wal_pages"), 0)
        self.assertGreater(os.path.getsize(self.server.db.url), 4 * 1024 * 1024)

    def test_unknown_routes_and_methods(self):
        c = self.server.client()
        r = c.get("/api/v1/nothing")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json["error"], "not_found")
        self.assertIn("/api/v1/nothing", r.json["message"])
        r = c.request("DELETE", "/api/v1/records")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.json["error"], "method_not_allowed")
        self.assertEqual(r.headers["allow"], "GET, POST")
        r = c.get("/api/v1/login")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers["allow"], "POST")
        # The connection survived the errors (keep-alive).
        self.assertEqual(c.get("/healthz").status, 200)

    def test_connections_are_kept_alive(self):
        acct = self.server.register()
        c = acct.client()
        for _ in range(20):
            self.assertEqual(c.get("/api/v1/index").status, 200)
        self.assertIsNotNone(c.conn)  # never closed by the server

    def test_acks_floor_counts_every_device(self):
        a = self.server.register()
        b = a.login(host=new_host())
        a.upload(make_records(a.host, "kv", 0, 10))
        b.upload(make_records(b.host, "kv", 0, 4))
        r = a.client().get("/api/v1/acks")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["devices"], 2)
        self.assertEqual(sorted((f["host"], f["end"]) for f in r.json["frontier"]), sorted([(a.host, 0), (b.host, 0)]))
        r = a.client().post("/api/v1/acks", {"frontier": [{"host": a.host, "tag": "kv", "end": 10},
                                                          {"host": b.host, "tag": "kv", "end": 4}]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"acked": 2})
        floor = {f["host"]: f["end"] for f in a.client().get("/api/v1/acks").json["frontier"]}
        self.assertEqual(floor, {a.host: 0, b.host: 0})  # b has not acked: it holds the floor
        b.client().post("/api/v1/acks", {"frontier": [{"host": a.host, "tag": "kv", "end": 6},
                                                      {"host": b.host, "tag": "kv", "end": 4}]})
        floor = {f["host"]: f["end"] for f in b.client().get("/api/v1/acks").json["frontier"]}
        self.assertEqual(floor, {a.host: 6, b.host: 4})
        # A third device that never acked pulls the floor back to 0.
        a.login(host=new_host())
        floor = {f["host"]: f["end"] for f in a.client().get("/api/v1/acks").json["frontier"]}
        self.assertEqual(floor, {a.host: 0, b.host: 0})
        # Another user's view is separate.
        other = self.server.register()
        self.assertEqual(other.client().get("/api/v1/acks").json, {"frontier": [], "devices": 1})

    def test_malformed_acks_are_400(self):
        a = self.server.register()
        for body, expect in [({}, "frontier: missing"), ({"frontier": 3}, "frontier: not an array"),
                             ({"frontier": [{"host": a.host, "tag": "kv"}]}, "frontier[0].end"),
                             ({"frontier": [{"host": "x", "tag": "kv", "end": 1}]}, "frontier[0].host"),
                             ({"frontier": [{"host": a.host, "tag": "kv", "end": 1}] * 2}, "listed twice")]:
            r = a.client().post("/api/v1/acks", body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertIn(expect, r.json["message"])


class CommandLineTests(unittest.TestCase):
    def run_server(self, *args):
        return subprocess.run([recsyncd_bin()] + list(args), capture_output=True, text=True, timeout=30)

    def test_usage_errors_exit_2_and_touch_nothing(self):
        db = os.path.join(make_tempdir(self), "x.db")
        for args in ([], ["--db"], ["--db", db, "--threads", "0"], ["--db", db, "--event-retention", "5y"],
                     ["--db", db, "--bogus"], ["--db", db, "--listen", "nocolon"],
                     ["--db", db, "--listen", "127.0.0.1:70000"], ["--db", db, "extra"]):
            p = self.run_server(*args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn("usage:", p.stderr)
        self.assertFalse(os.path.exists(db))

    def test_help_and_version(self):
        p = self.run_server("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("--event-retention", p.stdout)
        p = self.run_server("--version")
        self.assertEqual(p.returncode, 0)
        self.assertTrue(p.stdout.startswith("recsyncd "))

    def test_unopenable_database_fails_with_a_message(self):
        p = self.run_server("--db", "/nonexistent-dir/x.db", "--listen", "127.0.0.1:0")
        self.assertEqual(p.returncode, 1)
        self.assertIn("/nonexistent-dir/x.db", p.stderr)

    def test_a_taken_port_fails_with_a_message(self):
        server = ServerProcess(self)
        p = self.run_server("--db", make_database(self).url, "--listen", "127.0.0.1:%d" % server.port)
        self.assertEqual(p.returncode, 1)
        self.assertIn("127.0.0.1:%d" % server.port, p.stderr)


if __name__ == "__main__":
    unittest.main()
