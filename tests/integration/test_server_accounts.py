"""recsyncd accounts: register, login, tokens, hosts bound to users, throttling."""

import time
import unittest

from harness import ServerProcess, new_host


class AccountTests(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self, args=["--login-delay-ms", "400"])

    def test_register_returns_201_with_a_working_token(self):
        acct = self.server.register("alice", "correct horse")
        self.assertEqual(len(acct.token), 96)
        r = acct.client().get("/api/v1/index")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"shards": [], "seq": 0})

    def test_register_taken_name_is_409_and_creates_nothing(self):
        self.server.register("alice", "pw1")
        host = new_host()
        r = self.server.client().post("/api/v1/register", {"username": "alice", "password": "pw2", "host": host})
        self.assertEqual(r.status, 409, r)
        self.assertEqual(r.json["error"], "exists")
        self.assertIn("alice", r.json["message"])
        # The refused host is still free for another user.
        self.server.register("bob", "pw", host=host)

    def test_login_with_right_password_gives_a_new_token_and_retires_the_old(self):
        acct = self.server.register("alice", "pw")
        again = acct.login()
        self.assertNotEqual(again.token, acct.token)
        self.assertEqual(self.server.client(again.token).get("/api/v1/index").status, 200)
        r = self.server.client(acct.token).get("/api/v1/index")
        self.assertEqual(r.status, 401, r)

    def test_a_cached_token_is_retired_at_once_by_a_new_login(self):
        acct = self.server.register("alice", "pw")
        old = self.server.client(acct.token)
        for _ in range(3):  # authenticated, so now in the token cache
            self.assertEqual(old.get("/api/v1/index").status, 200)
        again = acct.login()
        self.assertEqual(old.get("/api/v1/index").status, 401)
        new = self.server.client(again.token)
        self.assertEqual(new.get("/api/v1/index").status, 200)
        # The cached id with another secret is refused.
        r = self.server.client(again.token[:32] + "f" * 64).get("/api/v1/index")
        self.assertEqual(r.status, 401, r)
        self.assertEqual(new.get("/api/v1/index").status, 200)

    def test_another_process_drops_a_replaced_token_within_its_cache_time(self):
        """Two recsyncd processes on one database: a login through one
        retires the old token on the other after at most --token-cache-ms,
        and at once with the cache off."""
        for cache_ms, wait_s in (("300", 0.6), ("0", 0.0)):
            first = ServerProcess(self, args=["--token-cache-ms", cache_ms])
            second = ServerProcess(self, db=first.db, args=["--token-cache-ms", cache_ms])
            acct = first.register("alice" + cache_ms, "pw")
            on_second = second.client(acct.token)
            self.assertEqual(on_second.get("/api/v1/index").status, 200)
            again = acct.login()
            time.sleep(wait_s)
            self.assertEqual(on_second.get("/api/v1/index").status, 401, "cache %s ms" % cache_ms)
            self.assertEqual(second.client(again.token).get("/api/v1/index").status, 200)

    def test_second_device_logs_in_with_its_own_host(self):
        acct = self.server.register("alice", "pw")
        second = acct.login(host=new_host())
        self.assertEqual(self.server.client(second.token).get("/api/v1/index").status, 200)
        self.assertEqual(self.server.client(acct.token).get("/api/v1/index").status, 200)

    def test_wrong_password_is_401_with_a_message(self):
        acct = self.server.register("alice", "pw")
        r = self.server.client().post("/api/v1/login", {"username": "alice", "password": "nope", "host": acct.host})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.json["error"], "unauthorized")
        self.assertIn("alice", r.json["message"])

    def test_unknown_user_is_401(self):
        r = self.server.client().post("/api/v1/login", {"username": "ghost", "password": "pw", "host": new_host()})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.json["error"], "unauthorized")

    def test_missing_unknown_and_malformed_tokens_are_401(self):
        acct = self.server.register("alice", "pw")
        c = self.server.client()
        for path in ("/api/v1/index", "/api/v1/boot", "/api/v1/acks", "/api/v1/records?host=%s&tag=kv" % acct.host):
            r = c.get(path)
            self.assertEqual(r.status, 401, (path, r))
            self.assertIn("Authorization", r.json["message"])
        forged = ("0" * 32) + acct.token[32:]
        for headers in ({"Authorization": "Token " + forged},
                        {"Authorization": "Token " + acct.token[:32] + "f" * 64},
                        {"Authorization": "Token abc"},
                        {"Authorization": "Bearer " + acct.token}):
            r = c.get("/api/v1/index", headers=headers)
            self.assertEqual(r.status, 401, (headers, r))
            self.assertEqual(r.json["error"], "unauthorized")
        r = c.post("/api/v1/records", {"records": []}, headers={"Authorization": "Token " + forged})
        self.assertEqual(r.status, 401, r)

    def test_host_bound_to_another_user_is_refused(self):
        alice = self.server.register("alice", "pw")
        r = self.server.client().post("/api/v1/register", {"username": "bob", "password": "pw", "host": alice.host})
        self.assertEqual(r.status, 403, r)
        self.assertIn(alice.host, r.json["message"])
        # Nothing was created: the name bob is still free.
        self.server.register("bob", "pw")
        r = self.server.client().post("/api/v1/login", {"username": "bob", "password": "pw", "host": alice.host})
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json["error"], "forbidden")
        # Alice's token still works: the refused login did not steal her device.
        self.assertEqual(alice.client().get("/api/v1/index").status, 200)

    def test_malformed_credentials_are_400_naming_the_field(self):
        c = self.server.client()
        cases = [
            ({"password": "pw", "host": new_host()}, "username"),
            ({"username": "has space", "password": "pw", "host": new_host()}, "username"),
            ({"username": "a" * 65, "password": "pw", "host": new_host()}, "username"),
            ({"username": "ok", "host": new_host()}, "password"),
            ({"username": "ok", "password": "", "host": new_host()}, "password"),
            ({"username": "ok", "password": 5, "host": new_host()}, "password"),
            ({"username": "ok", "password": "pw"}, "host"),
            ({"username": "ok", "password": "pw", "host": "not-a-uuid"}, "host"),
            ({"username": "ok", "password": "pw", "host": "00000000-0000-0000-0000-000000000000"}, "host"),
        ]
        for body, field in cases:
            for path in ("/api/v1/register", "/api/v1/login"):
                r = c.post(path, body)
                self.assertEqual(r.status, 400, (path, body, r))
                self.assertTrue(r.json["message"].startswith(field), (body, r.json))
        r = c.post("/api/v1/register", "{not json")
        self.assertEqual(r.status, 400, r)
        self.assertIn("invalid JSON", r.json["message"])

    def test_failed_logins_are_slowed_per_user(self):
        acct = self.server.register("alice", "pw")
        c = self.server.client()
        bad = {"username": "alice", "password": "wrong", "host": acct.host}
        for _ in range(3):
            self.assertEqual(c.post("/api/v1/login", bad).status, 401)
        # Past the free failures even the right password must wait.
        r = c.post("/api/v1/login", acct.credentials())
        self.assertEqual(r.status, 429, r)
        self.assertEqual(r.json["error"], "too_many_attempts")
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        # Another user is not slowed by alice's failures.
        self.server.register("bob", "pw").login()
        time.sleep(0.5)
        self.assertEqual(c.post("/api/v1/login", acct.credentials()).status, 200)
        # Success cleared the counter.
        self.assertEqual(c.post("/api/v1/login", bad).status, 401)
        self.assertEqual(c.post("/api/v1/login", acct.credentials()).status, 200)
        metrics = self.server.metrics()
        self.assertRegex(metrics, r"recsyncd_login_throttled_total [1-9]")
        self.assertRegex(metrics, r"recsyncd_login_failures_total [4-9]")

    def test_failed_logins_are_slowed_per_address(self):
        # Guessing across many names from one address: past 10 failures the address waits.
        c = self.server.client()
        users = [self.server.register("user%d" % i, "pw") for i in range(4)]
        for u in users[:3]:
            for _ in range(3):  # within each name's free failures
                r = c.post("/api/v1/login", {"username": u.username, "password": "wrong", "host": u.host})
                self.assertEqual(r.status, 401, r)
        r = c.post("/api/v1/login", {"username": "ghost", "password": "wrong", "host": new_host()})
        self.assertEqual(r.status, 401, r)  # the tenth failure
        r = c.post("/api/v1/login", users[3].credentials())
        self.assertEqual(r.status, 429, r)
        self.assertIn("127.0.0.1", r.json["message"])
        time.sleep(0.5)
        self.assertEqual(c.post("/api/v1/login", users[3].credentials()).status, 200)

    def test_delay_doubles_with_each_further_failure(self):
        acct = self.server.register("alice", "pw")
        c = self.server.client()
        bad = {"username": "alice", "password": "wrong", "host": acct.host}
        for _ in range(3):
            self.assertEqual(c.post("/api/v1/login", bad).status, 401)
        time.sleep(0.45)  # 400 ms after the third failure
        self.assertEqual(c.post("/api/v1/login", bad).status, 401)
        time.sleep(0.45)  # the fourth failure needs 800 ms
        self.assertEqual(c.post("/api/v1/login", bad).status, 429)
        time.sleep(0.45)
        self.assertEqual(c.post("/api/v1/login", acct.credentials()).status, 200)


if __name__ == "__main__":
    unittest.main()
