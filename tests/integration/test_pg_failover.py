"""PostgreSQL failover under load: a primary and a streaming standby (two
real clusters in this test's temporary directory, the standby synchronous:
synchronous_standby_names on the primary), recsyncd on a libpq multi-host
URL (host=PRIMARY,STANDBY&target_session_attrs=read-write). Devices push
and pull through an honest faultproxy.FaultProxy that notes every upload
the server answered 200; the primary is SIGKILLed (postmaster and every
backend) mid-load, the standby promoted a moment later. recsyncd must
reconnect by itself (no restart); clients see 503 meanwhile and carry on;
every acknowledged record is there afterwards, none twice.

Runs in integration.pg.test_pg_failover (RS_TEST_BACKEND=postgres); under
the SQLite backend it is skipped and says so."""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from device import Device, new_user
from faultproxy import FaultProxy
from harness import Client, PostgresCluster, ServerProcess, backend_name, pg_bindir

DEVICES = 4
LOAD_BOUND = 30.0  # seconds of load at most before the kill and after the promotion (4 uploads each)
DOWN = 1.5  # seconds between the kill and the promotion


def norm(uuid_text):
    return uuid_text.replace("-", "").upper()


def children(pid):
    """PIDs whose parent is `pid` (a postmaster's backends and helpers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


class Node(PostgresCluster):
    """One cluster of the pair: a datadir and socket directory under
    `parent`, started with `conf` settings; stopped by PID in a cleanup."""

    def __init__(self, test, parent, name, conf):
        self.bindir = pg_bindir()
        self.dir = os.path.join(parent, name)
        os.mkdir(self.dir)
        self.datadir = os.path.join(self.dir, "data")
        self.logpath = os.path.join(self.dir, "postgres.log")
        self.pid = None
        self.counter = 0
        self.conf = conf
        self.runas = []
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.runas = ["runuser", "-u", "postgres", "--"]
        test.addCleanup(self.destroy)

    def start(self):
        opts = ("-k %s -c listen_addresses='' -c fsync=off -c max_connections=200 -c shared_buffers=32MB %s"
                % (self.dir, " ".join("-c %s" % c for c in self.conf)))
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logpath, "-w",
                   "-t", "60", "-o", opts, "start"], timeout=70)
        with open(os.path.join(self.datadir, "postmaster.pid")) as f:
            self.pid = int(f.readline().strip())

    def sigkill(self):
        """SIGKILL to the postmaster and every child of it, by PID: a crash."""
        pids = [self.pid] + children(self.pid)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._psql_close()
        self.pid = None
        return len(pids)

    def destroy(self):
        self._psql_close()
        self.stop("immediate")


class Failover(unittest.TestCase):
    def test_primary_killed_standby_promoted_nothing_acknowledged_lost(self):
        if backend_name() != "postgres":
            self.skipTest("a PostgreSQL test: it runs in integration.pg.test_pg_failover")
        if pg_bindir() is None:
            self.skipTest("PostgreSQL binaries not found")
        seed = os.environ.get("RS_TEST_SEED", "failover")
        parent = tempfile.mkdtemp(prefix="rs-pg-failover-")
        os.chmod(parent, 0o755)
        self.addCleanup(shutil.rmtree, parent, True)

        primary = Node(self, parent, "primary", ["synchronous_standby_names='standby1'", "wal_level=replica",
                                                  "max_wal_senders=4"])
        primary._init_datadir()
        primary.start()
        standby = Node(self, parent, "standby", ["hot_standby=on"])
        standby._run([os.path.join(standby.bindir, "pg_basebackup"), "-h", primary.dir, "-U", "postgres",
                      "-D", standby.datadir, "-X", "stream", "-R", "--no-sync"], timeout=120)
        with open(os.path.join(standby.datadir, "postgresql.auto.conf"), "a") as f:
            f.write("primary_conninfo = 'host=%s user=postgres application_name=standby1'\n" % primary.dir)
        standby.start()
        deadline = time.monotonic() + 30
        while primary.psql("SELECT sync_state FROM pg_stat_replication").strip() != "sync":
            self.assertLess(time.monotonic(), deadline, "the standby never became synchronous")
            time.sleep(0.1)
        primary.psql("CREATE DATABASE rs_failover")

        class Db:
            name = "postgres"
            url = ("postgres:///rs_failover?host=%s,%s&user=postgres&target_session_attrs=read-write"
                   % (primary.dir, standby.dir))

        server = ServerProcess(self, db=Db())
        proxy = FaultProxy(self, server.port)
        user, password = new_user(), "pw-failover"
        first = Device(self, "d0")
        first.register(proxy.url, user, password)
        key = first.key_export()
        devices = [first]
        for i in range(1, DEVICES):
            d = Device(self, "d%d" % i, key=key)
            d.login(proxy.url, user, password)
            devices.append(d)

        lock = threading.Lock()
        written = {}
        phase = {"now": "before"}
        outcomes = {"before": [0, 0], "down": [0, 0], "after": [0, 0]}  # [ok, failed]
        errors = []
        stop = threading.Event()

        def worker(i, d):
            rng = random.Random("%s-%d" % (seed, i))
            while not stop.is_set():
                n = rng.randint(1, 20)
                try:
                    d.append_lines("notes", ["%s-%d" % (d.name, rng.getrandbits(32)) for _ in range(n)])
                    at = phase["now"]
                    r = d.sync(page=rng.choice([None, 5]), expect=None)
                except AssertionError as e:
                    errors.append(str(e))
                    return
                with lock:
                    written[d.host] = written.get(d.host, 0) + n
                    if isinstance(r, dict):
                        outcomes[at][0] += 1
                    elif r.rc == 1:
                        outcomes[at][1] += 1
                    else:
                        errors.append("%s: sync exited %d: %r" % (d.name, r.rc, r))

        def wait_acked(n):
            """Until the server has acknowledged n uploads in all (bounded)."""
            deadline = time.monotonic() + LOAD_BOUND
            while time.monotonic() < deadline:
                with proxy.lock:
                    if proxy.acked_posts >= n:
                        return
                time.sleep(0.05)

        threads = [threading.Thread(target=worker, args=(i, d)) for i, d in enumerate(devices)]
        for t in threads:
            t.start()
        try:
            wait_acked(4)
            time.sleep(random.Random(seed).uniform(0.0, 0.5))
            with proxy.lock:
                acked_before_kill = proxy.acked_posts
            killed = primary.sigkill()
            phase["now"] = "down"
            time.sleep(DOWN)
            standby._run([os.path.join(standby.bindir, "pg_ctl"), "-D", standby.datadir, "-w", "-t", "60",
                          "promote"], timeout=70)
            phase["now"] = "after"
            with proxy.lock:
                acked_at_promotion = proxy.acked_posts
            wait_acked(acked_at_promotion + 4)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(errors, [])
        self.assertTrue(server.running(), "recsyncd died with its primary")

        for _ in range(2):
            for d in devices:
                for attempt in range(10):
                    r = d.sync(expect=None)
                    if isinstance(r, dict):
                        break
                    time.sleep(0.5)
                else:
                    self.fail("%s: no sync succeeded after the promotion: %r" % (d.name, r))

        with proxy.lock:
            acked = {norm(x) for x in proxy.acked}
            statuses = dict(proxy.statuses)
            acked_posts = proxy.acked_posts
        reference = devices[0].records()
        ids = [row[3] for row in reference]
        duplicates = len(ids) - len(set(ids))
        self.assertEqual(duplicates, 0)
        self.assertEqual(acked - set(ids), set(), "acknowledged records lost in the failover")
        for d in devices[1:]:
            self.assertEqual(d.records(), reference)
        devices[0].verify()
        shards = {(h, t): (s, e) for h, t, s, e in devices[0].shards()}
        for host, n in written.items():
            self.assertEqual(shards.get((norm(host), "notes")), (0, n))
        # The promoted standby holds it all, as the server reads it.
        c = Client(server.port, token=None, timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(c.get("/healthz").status, 200)
        print("pg failover (seed %r): primary killed (%d processes) after %d acknowledged uploads, promoted after "
              "%d; syncs ok/failed before %s, while down %s, after %s; answers %s; uploads acknowledged %d "
              "(%d records), records found %d, duplicates %d" % (
                  seed, killed, acked_before_kill, acked_at_promotion, outcomes["before"], outcomes["down"],
                  outcomes["after"], " ".join("%s=%d" % kv for kv in sorted(statuses.items())), acked_posts,
                  len(acked), len(ids), duplicates), file=sys.stderr)
        self.assertGreater(acked_before_kill, 0, "nothing was acknowledged before the kill")
        self.assertGreater(statuses.get("503", 0), 0, "no client saw a 503 while the primary was gone")
        self.assertGreater(outcomes["after"][0], 0, "no sync succeeded after the promotion")
        self.assertGreater(acked_posts, acked_at_promotion, "nothing acknowledged after the promotion")


if __name__ == "__main__":
    unittest.main()
