"""recsyncd records: upload validation, ownership, holes, conflicts, limits, idempotence, paging."""

import base64
import http.client
import json
import socket
import unittest

from harness import (DEFAULT_MAX_PAYLOAD, ENVELOPE_OVERHEAD, ServerProcess, make_envelope, make_record,
                     make_records, new_host)


def read_shard(test, acct, host, tag, limit):
    """Pages through a shard; checks each page; returns the records in order."""
    out = []
    start = 0
    for _ in range(10000):
        r = acct.page(host, tag, start=start, limit=limit)
        test.assertEqual(r.status, 200, r)
        page = r.json
        test.assertLessEqual(len(page["records"]), limit)
        for i, rec in enumerate(page["records"]):
            test.assertEqual(rec["idx"], start + i, page)
            test.assertEqual((rec["host"], rec["tag"]), (host, tag))
        out += page["records"]
        if page["next"] is None:
            return out
        test.assertGreater(len(page["records"]), 0, "a page that is not the last must not be empty")
        test.assertEqual(page["next"], start + len(page["records"]))
        start = page["next"]
    test.fail("paging did not end")


class RecordTests(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)
        self.alice = self.server.register("alice", "pw")

    def assert_index_unchanged(self, acct, before):
        self.assertEqual(acct.index(), before)

    def test_upload_then_download_round_trips_every_field(self):
        recs = make_records(self.alice.host, "kv", 0, 5, payload_size=300)
        r = self.alice.upload(recs)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"accepted": 5, "inserted": 5, "seq": 5})
        self.assertEqual(self.alice.index(),
                         {"shards": [{"host": self.alice.host, "tag": "kv", "start": 0, "end": 5}], "seq": 5})
        got = read_shard(self, self.alice, self.alice.host, "kv", 100)
        self.assertEqual(got, recs)

    def test_seq_is_one_per_record_and_per_user(self):
        r = self.alice.upload(make_records(self.alice.host, "kv", 0, 3))
        self.assertEqual(r.json["seq"], 3)
        r = self.alice.upload(make_records(self.alice.host, "history", 0, 2))
        self.assertEqual(r.json["seq"], 5)
        bob = self.server.register("bob", "pw")
        r = bob.upload(make_records(bob.host, "kv", 0, 1))
        self.assertEqual(r.json["seq"], 1)
        self.assertEqual(self.alice.index()["seq"], 5)

    def test_users_see_only_their_own_records(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 4))
        bob = self.server.register("bob", "pw")
        self.assertEqual(bob.index(), {"shards": [], "seq": 0})
        r = bob.page(self.alice.host, "kv", start=0)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"records": [], "next": None})
        r = self.server.client(bob.token).get("/api/v1/boot")
        self.assertEqual(r.json["index"]["shards"], [])
        self.assertEqual(r.json["user"], "bob")

    def test_a_device_cannot_upload_into_another_devices_shard(self):
        second = self.alice.login(host=new_host())
        self.alice.upload(make_records(self.alice.host, "kv", 0, 2))
        before = self.alice.index()
        r = second.upload(make_records(self.alice.host, "kv", 2, 1))
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json["error"], "forbidden")
        self.assertIn("%s/kv" % self.alice.host, r.json["message"])
        # Even a new shard of another host, and even mixed with the device's own records.
        r = second.upload(make_records(second.host, "kv", 0, 1) + make_records(self.alice.host, "new", 0, 1))
        self.assertEqual(r.status, 403, r)
        self.assertIn("records[1]", r.json["message"])
        self.assert_index_unchanged(self.alice, before)

    def test_holes_are_refused_naming_shard_and_expected_idx(self):
        r = self.alice.upload(make_records(self.alice.host, "kv", 1, 2))
        self.assertEqual(r.status, 409, r)
        self.assertEqual(r.json["error"], "hole")
        self.assertIn("%s/kv" % self.alice.host, r.json["message"])
        self.assertIn("expects idx 0", r.json["message"])
        self.alice.upload(make_records(self.alice.host, "kv", 0, 3))
        before = self.alice.index()
        r = self.alice.upload(make_records(self.alice.host, "kv", 3, 2) + make_records(self.alice.host, "kv", 6, 1))
        self.assertEqual(r.status, 409, r)
        self.assertIn("expects idx 5", r.json["message"])
        self.assert_index_unchanged(self.alice, before)

    def test_a_different_record_at_a_taken_idx_is_a_conflict(self):
        recs = make_records(self.alice.host, "kv", 0, 3)
        self.alice.upload(recs)
        before = self.alice.index()
        other = make_record(self.alice.host, "kv", 1)
        r = self.alice.upload([recs[0], other, make_record(self.alice.host, "kv", 3)])
        self.assertEqual(r.status, 409, r)
        self.assertEqual(r.json["error"], "conflict")
        msg = r.json["message"]
        self.assertIn(self.alice.host, msg)
        self.assertIn("kv", msg)
        self.assertIn("idx 1", msg)
        # Same id and data but another clock is still a different record.
        changed = dict(recs[2], hlc="%016x" % (int(recs[2]["hlc"], 16) + 1))
        r = self.alice.upload([changed])
        self.assertEqual(r.status, 409, r)
        self.assertIn("idx 2", r.json["message"])
        self.assert_index_unchanged(self.alice, before)
        self.assertEqual(read_shard(self, self.alice, self.alice.host, "kv", 10), recs)

    def test_a_batch_is_all_or_nothing_across_shards(self):
        good = make_records(self.alice.host, "kv", 0, 3)
        bad = make_records(self.alice.host, "history", 1, 1)  # a hole in the second shard
        r = self.alice.upload(good + bad)
        self.assertEqual(r.status, 409, r)
        self.assertEqual(self.alice.index(), {"shards": [], "seq": 0})
        r = self.alice.page(self.alice.host, "kv", start=0)
        self.assertEqual(r.json["records"], [])

    def test_a_retried_batch_is_accepted_once(self):
        recs = make_records(self.alice.host, "kv", 0, 10)
        first = self.alice.upload(recs)
        self.assertEqual(first.status, 200, first)
        again = self.alice.upload(recs)
        self.assertEqual(again.status, 200, again)
        self.assertEqual(again.json, {"accepted": 10, "inserted": 0, "seq": first.json["seq"]})
        more = make_records(self.alice.host, "kv", 10, 5)
        overlap = self.alice.upload(recs[7:] + more)
        self.assertEqual(overlap.json, {"accepted": 8, "inserted": 5, "seq": 15})
        self.assertEqual(read_shard(self, self.alice, self.alice.host, "kv", 4), recs + more)
        self.assertEqual(self.alice.shard_end("kv"), 15)

    def test_an_empty_batch_answers_the_current_seq(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 2))
        r = self.alice.upload([])
        self.assertEqual(r.json, {"accepted": 0, "inserted": 0, "seq": 2})

    def test_malformed_bodies_are_400_naming_the_field_and_change_nothing(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 2))
        before = self.alice.index()
        ok = make_record(self.alice.host, "kv", 2)
        c = self.alice.client()
        raw_cases = [
            ("", "invalid JSON"),
            ("{\"records\": [", "invalid JSON"),
            ("[]", "not a JSON object"),
            ("{}", "records: missing"),
            ("{\"records\": {}}", "records: not an array"),
            ("{\"records\": [1]}", "records[0]: not an object"),
        ]
        for body, expect in raw_cases:
            r = c.post("/api/v1/records", body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertEqual(r.json["error"], "invalid")
            self.assertIn(expect, r.json["message"])
        field_cases = [
            ("id", None, "missing"), ("id", "nope", "not a UUID"), ("id", 7, "not a UUID"),
            ("host", None, "missing"), ("host", self.alice.host.upper() + "0", "not a UUID"),
            ("tag", None, "missing"), ("tag", "Bad Tag", "not a tag"), ("tag", "", "not a tag"),
            ("tag", "x" * 65, "not a tag"), ("tag", 3, "not a tag"),
            ("idx", None, "missing"), ("idx", -1, "not a non-negative integer"),
            ("idx", "2", "not a non-negative integer"), ("idx", 2.5, "not a non-negative integer"),
            ("hlc", None, "missing"), ("hlc", "123", "not a clock"), ("hlc", "zz" * 8, "not a clock"),
            ("hlc", 5, "not a clock"),
            ("version", None, "missing"), ("version", -2, "not a non-negative integer"),
            ("version", 2 ** 32, "out of range"), ("version", "1", "not a non-negative integer"),
            ("data", None, "missing"), ("data", 5, "not a base64 string"), ("data", "!!!!", "not standard base64"),
            ("data", base64.urlsafe_b64encode(b"\xfb\xff" * 100).decode(), "not standard base64"),
            ("data", base64.b64encode(b"RSE1short").decode(), "not a sealed envelope"),
            ("data", base64.b64encode(b"XXXX" + bytes(ENVELOPE_OVERHEAD)).decode(), "not a sealed envelope"),
        ]
        for field, value, expect in field_cases:
            bad = dict(make_record(self.alice.host, "kv", 3))
            if value is None:
                del bad[field]
            else:
                bad[field] = value
            r = self.alice.upload([ok, bad])
            self.assertEqual(r.status, 400, (field, value, r))
            self.assertEqual(r.json["message"].split(":")[0], "records[1].%s" % field, r.json)
            self.assertIn(expect, r.json["message"])
        self.assert_index_unchanged(self.alice, before)

    def test_unknown_fields_are_ignored(self):
        rec = dict(make_record(self.alice.host, "kv", 0), future="field")
        r = self.alice.client().post("/api/v1/records", {"records": [rec], "also": 1})
        self.assertEqual(r.status, 200, r)

    def test_get_parameters_are_validated(self):
        c = self.alice.client()
        h = self.alice.host
        for q, expect in [("tag=kv", "host: missing"), ("host=x&tag=kv", "host:"), ("host=%s" % h, "tag: missing"),
                          ("host=%s&tag=BAD" % h, "tag:"), ("host=%s&tag=kv&start=-1" % h, "start:"),
                          ("host=%s&tag=kv&start=1x" % h, "start:"), ("host=%s&tag=kv&limit=0" % h, "limit:"),
                          ("host=%s&tag=kv&limit=99999999999999999999999" % h, "limit:")]:
            r = c.get("/api/v1/records?" + q)
            self.assertEqual(r.status, 400, (q, r))
            self.assertTrue(r.json["message"].startswith(expect), (q, r.json))

    def test_paging_returns_every_record_once_around_page_boundaries(self):
        limits = [1, 2, 3, 7, 100]
        counts = sorted({0} | {n for l in limits for n in (l - 1, l, l + 1, 2 * l - 1, 2 * l, 2 * l + 1) if n >= 0})
        shards = {}
        for n in counts:
            tag = "n%d" % n
            recs = make_records(self.alice.host, tag, 0, n, payload_size=16)
            for i in range(0, n, 500):
                r = self.alice.upload(recs[i:i + 500])
                self.assertEqual(r.status, 200, r)
            shards[tag] = recs
        for limit in limits:
            for n in counts:
                got = read_shard(self, self.alice, self.alice.host, "n%d" % n, limit)
                self.assertEqual([g["idx"] for g in got], list(range(n)), (limit, n))
                self.assertEqual(got, shards["n%d" % n])
        # Starting mid-shard, at the end and past it.
        r = self.alice.page(self.alice.host, "n15", start=13, limit=7)
        self.assertEqual([x["idx"] for x in r.json["records"]], [13, 14])
        self.assertIsNone(r.json["next"])
        r = self.alice.page(self.alice.host, "n15", start=8, limit=7)  # ends exactly at the end
        self.assertEqual([x["idx"] for x in r.json["records"]], list(range(8, 15)))
        self.assertIsNone(r.json["next"])
        r = self.alice.page(self.alice.host, "n15", start=7, limit=7)
        self.assertEqual(r.json["next"], 14)
        for start in (15, 16, 1000):
            r = self.alice.page(self.alice.host, "n15", start=start, limit=7)
            self.assertEqual(r.json, {"records": [], "next": None}, start)

    def test_page_without_limit_uses_the_default(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 1001, payload_size=8))
        r = self.alice.client().get("/api/v1/records?host=%s&tag=kv" % self.alice.host)
        self.assertEqual(len(r.json["records"]), 1000)
        self.assertEqual(r.json["next"], 1000)


class LimitTests(unittest.TestCase):
    def test_record_size_bound_is_enforced(self):
        server = ServerProcess(self, args=["--body-max", str(4 << 20)])
        acct = server.register()
        r = acct.upload([make_record(acct.host, "kv", 0, payload_size=DEFAULT_MAX_PAYLOAD)])
        self.assertEqual(r.status, 200, r)
        r = acct.upload([make_record(acct.host, "kv", 1, payload_size=DEFAULT_MAX_PAYLOAD + 1)])
        self.assertEqual(r.status, 413, r)
        self.assertEqual(r.json["error"], "too_big")
        self.assertIn("records[0].data", r.json["message"])
        self.assertEqual(acct.shard_end("kv"), 1)

    def test_max_payload_option_and_nothing_stored_on_refusal(self):
        server = ServerProcess(self, args=["--max-payload", "1000"])
        acct = server.register()
        recs = make_records(acct.host, "kv", 0, 3, payload_size=1000)
        recs.append(make_record(acct.host, "kv", 3, payload_size=1001))
        r = acct.upload(recs)
        self.assertEqual(r.status, 413, r)
        self.assertIn("records[3]", r.json["message"])
        self.assertEqual(acct.index()["shards"], [])

    def test_oversized_bodies_are_413_and_change_nothing(self):
        server = ServerProcess(self, args=["--body-max", "65536"])
        acct = server.register()
        acct.upload(make_records(acct.host, "kv", 0, 2))
        before = acct.index()
        recs = make_records(acct.host, "kv", 2, 200, payload_size=400)
        body = json.dumps({"records": recs}).encode()
        self.assertGreater(len(body), 65536)
        r = acct.client().post("/api/v1/records", body)
        self.assertEqual(r.status, 413, r)
        self.assertEqual(r.json["error"], "too_big")
        # The same without a Content-Length (chunked): refused or cut off, never stored.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/api/v1/records", body=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                         headers={"Authorization": "Token " + acct.token}, encode_chunked=True)
            resp = conn.getresponse()
            self.assertEqual(resp.status, 413)
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            pass
        finally:
            conn.close()
        self.assertEqual(acct.index(), before)
        self.assertEqual(server.client().get("/healthz").status, 200)

    def test_uploads_are_refused_before_their_body_is_read(self):
        server = ServerProcess(self, args=["--body-max", "65536"])
        acct = server.register()
        for headers, status in ((["Content-Length: 10000000", "Authorization: Token " + acct.token], 413),
                                (["Content-Length: 60000"], 401),
                                (["Content-Length: 60000", "Authorization: Token " + "0" * 96], 401)):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            self.addCleanup(sock.close)
            head = ["POST /api/v1/records HTTP/1.1", "Host: x", "Content-Type: application/json"] + headers
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())  # and no body at all
            answer = sock.recv(4096).decode()
            self.assertTrue(answer.startswith("HTTP/1.1 %d" % status), (headers, answer))

    def test_page_max_caps_the_limit(self):
        server = ServerProcess(self, args=["--page-max", "50"])
        acct = server.register()
        acct.upload(make_records(acct.host, "kv", 0, 120, payload_size=8))
        r = acct.page(acct.host, "kv", start=0, limit=100)
        self.assertEqual(len(r.json["records"]), 50)
        self.assertEqual(r.json["next"], 50)

    def test_pages_are_bounded_by_bytes(self):
        server = ServerProcess(self, args=["--page-bytes", "8192"])
        acct = server.register()
        recs = make_records(acct.host, "kv", 0, 40, payload_size=900)
        recs.append(make_record(acct.host, "kv", 40, payload_size=20000))  # alone exceeds a page
        recs += make_records(acct.host, "kv", 41, 5, payload_size=900)
        self.assertEqual(acct.upload(recs).status, 200)
        pages = 0
        start = 0
        got = []
        while start is not None:
            r = acct.page(acct.host, "kv", start=start, limit=1000)
            self.assertEqual(r.status, 200, r)
            n = len(r.json["records"])
            self.assertGreater(n, 0)
            if n > 1:
                self.assertLessEqual(len(r.body), 8192 + 64)
            got += r.json["records"]
            start = r.json["next"]
            pages += 1
            self.assertLess(pages, 100)
        self.assertEqual(got, recs)
        self.assertGreater(pages, 5)


if __name__ == "__main__":
    unittest.main()
