"""recsyncd live events: boot, SSE streams, resume, heartbeats, retention (410), stalled writers, restarts."""

import re
import threading
import time
import unittest

from harness import Client, ServerProcess, make_records, new_host


def check_contiguous(test, events, first_seq=None):
    """Events' seq ranges follow each other with no gap and no repeat; returns the last seq."""
    last = None
    for ev in events:
        d = ev.json
        test.assertEqual(ev.id, d["seq"])
        test.assertEqual(ev.event, "records")
        begin = d["seq"] - (d["end"] - d["start"]) + 1
        if last is None:
            if first_seq is not None:
                test.assertEqual(begin, first_seq, events)
        else:
            test.assertEqual(begin, last + 1, "gap or repeat after seq %d: %r" % (last, events))
        last = d["seq"]
    return last


class EventTests(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self, args=["--heartbeat-ms", "200"])
        self.alice = self.server.register("alice", "pw")

    def test_boot_gives_user_index_and_resume_point(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 3))
        r = self.alice.client().get("/api/v1/boot")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"user": "alice",
                                  "index": {"shards": [{"host": self.alice.host, "tag": "kv", "start": 0, "end": 3}],
                                            "seq": 3},
                                  "resume_point": 3})

    def test_a_stream_opened_at_the_resume_point_sees_each_later_batch_once(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 3))
        resume = self.alice.client().get("/api/v1/boot").json["resume_point"]
        sse = self.server.sse(self.alice.token, last_event_id=resume)
        self.assertEqual(sse.status, 200)
        self.assertEqual(sse.headers["content-type"], "text/event-stream")
        batch = make_records(self.alice.host, "kv", 3, 2)
        self.alice.upload(batch)
        self.alice.upload(make_records(self.alice.host, "kv", 5, 1) + make_records(self.alice.host, "history", 0, 4))
        evs = sse.events(3)
        self.assertEqual([e.json for e in evs], [
            {"host": self.alice.host, "tag": "kv", "start": 3, "end": 5, "seq": 5},
            {"host": self.alice.host, "tag": "kv", "start": 5, "end": 6, "seq": 6},
            {"host": self.alice.host, "tag": "history", "start": 0, "end": 4, "seq": 10},
        ])
        self.assertEqual([e.id for e in evs], [5, 6, 10])
        # A retried batch stores nothing and announces nothing.
        self.assertEqual(self.alice.upload(batch).json["inserted"], 0)
        self.assertIsNone(sse.next_event(0.5))

    def test_a_stream_without_cursor_starts_now(self):
        self.alice.upload(make_records(self.alice.host, "kv", 0, 3))
        sse = self.server.sse(self.alice.token)
        self.alice.upload(make_records(self.alice.host, "kv", 3, 1))
        ev = sse.next_event(5)
        self.assertEqual(ev.id, 4)

    def test_resume_after_last_event_id_or_after_parameter(self):
        seqs = []
        for i in range(5):
            seqs.append(self.alice.upload(make_records(self.alice.host, "kv", 2 * i, 2)).json["seq"])
        sse = self.server.sse(self.alice.token, last_event_id=seqs[1])
        evs = sse.events(3)
        self.assertEqual([e.id for e in evs], seqs[2:])
        check_contiguous(self, evs, first_seq=seqs[1] + 1)
        self.assertIsNone(sse.next_event(0.3))
        sse2 = self.server.sse(self.alice.token, after=0)
        self.assertEqual([e.id for e in sse2.events(5)], seqs)
        sse3 = self.server.sse(self.alice.token, last_event_id=seqs[-1])
        self.assertIsNone(sse3.next_event(0.3))

    def test_streams_carry_only_the_users_own_events(self):
        bob = self.server.register("bob", "pw")
        sse = self.server.sse(bob.token, after=0)
        self.alice.upload(make_records(self.alice.host, "kv", 0, 3))
        bob.upload(make_records(bob.host, "kv", 0, 1))
        ev = sse.next_event(5)
        self.assertEqual(ev.json["host"], bob.host)
        self.assertIsNone(sse.next_event(0.5))

    def test_idle_streams_get_heartbeats(self):
        sse = self.server.sse(self.alice.token)
        sse.wait_comments(1, timeout=5)  # the stream opens with a comment
        start = sse.comments
        t0 = time.monotonic()
        sse.wait_comments(start + 4, timeout=5)
        self.assertGreater(time.monotonic() - t0, 0.5)  # 200 ms apart, not a flood
        self.assertGreaterEqual(int(re.search(r"recsyncd_heartbeats_sent_total (\d+)", self.server.metrics()).group(1)), 4)

    def test_bad_requests_are_refused_before_streaming(self):
        sse = self.server.sse(None)
        self.assertEqual(sse.status, 401)
        self.assertEqual(sse.json["error"], "unauthorized")
        sse = self.server.sse(self.alice.token, last_event_id="abc")
        self.assertEqual(sse.status, 400)
        self.assertIn("Last-Event-ID", sse.json["message"])
        sse = self.server.sse(self.alice.token, last_event_id=5)  # beyond the user's seq
        self.assertEqual(sse.status, 410)
        self.assertEqual(sse.json["error"], "resync_required")

    def test_two_devices_of_one_user_share_one_stream(self):
        second = self.alice.login(host=new_host())
        sse = self.server.sse(second.token, after=0)
        self.alice.upload(make_records(self.alice.host, "kv", 0, 2))
        second.upload(make_records(second.host, "kv", 0, 3))
        evs = sse.events(2)
        self.assertEqual([e.json["host"] for e in evs], [self.alice.host, second.host])
        check_contiguous(self, evs, first_seq=1)

    def test_many_streams_each_get_every_event(self):
        streams = [self.server.sse(self.alice.token, after=0) for _ in range(200)]
        for i in range(3):
            self.alice.upload(make_records(self.alice.host, "kv", i, 1))
        for s in streams:
            self.assertEqual([e.id for e in s.events(3, timeout=20)], [1, 2, 3])
        self.assertRegex(self.server.metrics(), r"recsyncd_subscribers 200\b")

    def test_a_consumer_that_never_reads_does_not_hold_up_others(self):
        stuck = self.server.sse(self.alice.token, after=0)
        stuck.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
        reader = self.server.sse(self.alice.token, after=0)
        for i in range(60):
            self.alice.upload(make_records(self.alice.host, "kv", 20 * i, 20, payload_size=600))
        evs = reader.events(60, timeout=20)
        check_contiguous(self, evs, first_seq=1)
        t0 = time.monotonic()
        self.assertEqual(self.alice.client().get("/api/v1/index").status, 200)
        self.assertLess(time.monotonic() - t0, 2)


class TwoProcessTests(unittest.TestCase):
    def test_writes_through_another_process_reach_the_stream_within_a_heartbeat(self):
        # Two recsyncd on one database: the second's commits notify nobody in the first,
        # whose streams still poll at every heartbeat.
        first = ServerProcess(self, args=["--heartbeat-ms", "300"])
        if first.db.name != "sqlite":
            self.skipTest("the shared-file case is SQLite's")
        second = ServerProcess(self, db=first.db, args=["--heartbeat-ms", "300"])
        acct = first.register()
        sse = first.sse(acct.token, after=0)
        other = Client(second.port, token=acct.token)
        self.addCleanup(other.close)
        for i in range(3):
            r = other.post("/api/v1/records", {"records": make_records(acct.host, "kv", i, 1)})
            self.assertEqual(r.status, 200, r)
            t0 = time.monotonic()
            ev = sse.next_event(3)
            self.assertIsNotNone(ev, "no event within 3 s")
            self.assertEqual(ev.id, i + 1)
            self.assertLess(time.monotonic() - t0, 1.0)


class RetentionTests(unittest.TestCase):
    def test_old_cursor_gets_410_after_retention_and_a_fresh_resume_point_works(self):
        server = ServerProcess(self, args=["--event-retention", "2", "--retention-interval-ms", "50"])
        acct = server.register()
        for i in range(6):
            acct.upload(make_records(acct.host, "kv", i, 1))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r"recsyncd_events_pruned_total (\d+)", server.metrics())
            if m and int(m.group(1)) >= 4:
                break
            time.sleep(0.05)
        else:
            self.fail("retention did not prune in time:\n" + server.metrics())
        for cursor in (0, 1, 3):
            sse = server.sse(acct.token, last_event_id=cursor)
            self.assertEqual(sse.status, 410, cursor)
            self.assertEqual(sse.json["error"], "resync_required")
        sse = server.sse(acct.token, last_event_id=4)  # events 5 and 6 are kept
        self.assertEqual([e.id for e in sse.events(2)], [5, 6])
        boot = acct.client().get("/api/v1/boot").json
        self.assertEqual(boot["resume_point"], 6)
        self.assertEqual(boot["index"]["shards"][0]["end"], 6)  # records are not pruned with events
        sse = server.sse(acct.token, last_event_id=boot["resume_point"])
        self.assertEqual(sse.status, 200)
        acct.upload(make_records(acct.host, "kv", 6, 1))
        self.assertEqual(sse.next_event(5).id, 7)
        metrics = server.metrics()
        self.assertRegex(metrics, r"recsyncd_retention_runs_total [1-9]")
        self.assertRegex(metrics, r"recsyncd_streams_resync_total [3-9]")
        self.assertIn("recsyncd_retention_keep_events 2", metrics)

    def test_retention_by_age(self):
        server = ServerProcess(self, args=["--event-retention", "1s", "--retention-interval-ms", "100"])
        acct = server.register()
        acct.upload(make_records(acct.host, "kv", 0, 1))
        time.sleep(1.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sse = server.sse(acct.token, last_event_id=0)
            if sse.status == 410:
                break
            sse.close()
            time.sleep(0.1)
        else:
            self.fail("the 1 s old event was not pruned")
        acct.upload(make_records(acct.host, "kv", 1, 1))
        sse = server.sse(acct.token, last_event_id=1)
        self.assertEqual(sse.next_event(5).id, 2)


class WriterTests(unittest.TestCase):
    def test_stalled_writer_and_later_writer_both_arrive_in_seq_order(self):
        server = ServerProcess(self, hooks=True)
        a = server.register("alice", "pw")
        b = a.login(host=new_host())
        resume = a.client().get("/api/v1/boot").json["resume_point"]
        sse = server.sse(a.token, last_event_id=resume)
        results = {}

        def write(name, acct, recs, headers):
            c = Client(server.port, token=acct.token)
            try:
                results[name] = (c.post("/api/v1/records", {"records": recs}, headers=headers), time.monotonic())
            finally:
                c.close()

        t0 = time.monotonic()
        slow = threading.Thread(target=write, args=("slow", a, make_records(a.host, "kv", 0, 3),
                                                    {"X-Recsync-Test-Stall-Ms": "1500"}))
        slow.start()
        time.sleep(0.3)  # the slow writer is inside its transaction now
        fast = threading.Thread(target=write, args=("fast", b, make_records(b.host, "kv", 0, 2), {}))
        fast.start()
        # A subscriber that arrives while the slow writer holds its transaction.
        late = server.sse(a.token, last_event_id=resume)
        slow.join(20)
        fast.join(20)
        self.assertFalse(slow.is_alive() or fast.is_alive())
        (rs, t_slow), (rf, t_fast) = results["slow"], results["fast"]
        self.assertEqual((rs.status, rf.status), (200, 200), (rs, rf))
        self.assertGreaterEqual(t_slow - t0, 1.5)  # the stall happened
        # The later writer was held until the stalled one committed: commit order is seq order.
        self.assertGreaterEqual(t_fast, t_slow - 0.05)
        self.assertEqual(rs.json["seq"], 3)
        self.assertEqual(rf.json["seq"], 5)
        for stream in (sse, late):
            evs = stream.events(2, timeout=10)
            self.assertEqual([(e.json["host"], e.id) for e in evs], [(a.host, 3), (b.host, 5)])
            check_contiguous(self, evs, first_seq=resume + 1)

    def test_the_stall_hook_is_off_without_test_hooks(self):
        server = ServerProcess(self)
        a = server.register()
        t0 = time.monotonic()
        r = a.upload(make_records(a.host, "kv", 0, 1), headers={"X-Recsync-Test-Stall-Ms": "3000"})
        self.assertEqual(r.status, 200)
        self.assertLess(time.monotonic() - t0, 2.5)


class RestartTests(unittest.TestCase):
    def test_a_subscriber_across_kill_and_restart_sees_no_gap_and_no_repeat(self):
        server = ServerProcess(self, args=["--heartbeat-ms", "200"])
        acct = server.register()
        sse = server.sse(acct.token, after=0)
        seen = []
        stop = threading.Event()
        errors = []
        written = {"end": 0}

        def writer():
            c = None
            idx = 0
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                batch = make_records(acct.host, "kv", idx, 3)
                for _ in range(200):  # retry the same batch until the server takes it
                    try:
                        if c is None:
                            c = Client(server.port, token=acct.token, timeout=5)
                        r = c.post("/api/v1/records", {"records": batch})
                        if r.status == 200:
                            break
                        errors.append(r)
                        return
                    except OSError:
                        if c is not None:
                            c.close()
                        c = None
                        time.sleep(0.05)
                else:
                    errors.append("the server did not come back")
                    return
                idx += 3
                written["end"] = idx
                time.sleep(0.01)
            if c is not None:
                c.close()

        t = threading.Thread(target=writer)
        t.start()
        try:
            deadline = time.monotonic() + 20
            while len(seen) < 10 and time.monotonic() < deadline:
                ev = sse.next_event(2)
                if ev:
                    seen.append(ev)
            self.assertGreaterEqual(len(seen), 10)
            server.kill()
            sse.close()
            time.sleep(0.2)
            server.start()
            sse = server.sse(acct.token, last_event_id=seen[-1].id)
            self.assertEqual(sse.status, 200, sse.body)
            deadline = time.monotonic() + 20
            while len(seen) < 30 and time.monotonic() < deadline:
                ev = sse.next_event(2)
                if ev:
                    seen.append(ev)
        finally:
            stop.set()
            t.join(30)
        self.assertFalse(t.is_alive())
        self.assertEqual(errors, [])
        # Drain what the writer stored after we stopped counting.
        final = acct.index()["seq"]
        deadline = time.monotonic() + 10
        while seen[-1].id < final and time.monotonic() < deadline:
            ev = sse.next_event(2)
            if ev:
                seen.append(ev)
        self.assertEqual(check_contiguous(self, seen, first_seq=1), final)
        self.assertEqual(acct.shard_end("kv"), final)
        self.assertEqual(written["end"], final)

    def test_sigterm_ends_open_streams_and_exits_cleanly(self):
        server = ServerProcess(self)
        acct = server.register()
        streams = [server.sse(acct.token) for _ in range(3)]
        t0 = time.monotonic()
        self.assertEqual(server.stop(), 0, server.log())
        self.assertLess(time.monotonic() - t0, 5)
        for s in streams:
            with self.assertRaises(EOFError):
                for _ in range(10):
                    s.next_event(1)


if __name__ == "__main__":
    unittest.main()
