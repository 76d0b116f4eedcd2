"""Convergence property test of the kv and history stores against a real
recsyncd, seeded and reproducible.

Each scenario: 3-5 devices of one user, one with a clock running behind
the others, random kv sets and deletes, history creates, deletes and imports
of one shared file, two devices writing one key in the same millisecond,
two devices importing or deleting history in the same millisecond, and
syncs of random subsets of devices in random orders. After a final round
of syncs (everyone pushes, then everyone pulls) every device's materialized
state -- tombstones and the winning write's clock and host included -- must
be identical, and equal to a reference computed from all records replayed
in (HLC, host) order. The reference orders records itself (the clock as a
number, then the host id's bytes), never through the library under test.

Two parts, both against the real server:

* ``test_scenarios_in_process``: the bulk (``RS_CONV_SCENARIOS``, default
  140), run by ``tests/test_convergence`` (tests/unit/test_convergence.c) in
  server mode: devices are stores in that process syncing through
  rs_register / rs_login / rs_sync over HTTP, with virtual clocks. Two
  processes share the seeds, one per core, each with a recsyncd of its own
  (--test-hooks, no prune thread: a pass runs when a scenario asks, so a
  seed replays the same). These scenarios also write snapshots (by hand,
  and through a low snapshot_every), run prune passes, add devices mid-way
  (they start from a snapshot) and take devices offline while the others
  prune past them (they come back through a snapshot, keeping what they
  wrote offline); the reference replays a log of every record ever written,
  kept by the test as each is written. The run fails unless snapshots were
  loaded and records pruned.
* ``test_scenarios_through_the_cli``: fewer (``RS_CONV_CLI_SCENARIOS``,
  default 4) end to end through the ``recsync`` command line, the clock
  behind set by ``RECSYNC_CLOCK_OFFSET_MS``, the same-millisecond pair
  started together under ``RECSYNC_CLOCK_PIN_MS``, and the reference
  computed here from ``log --json`` and ``cat``.

``RS_CONV_SEED`` sets the first seed. A failing scenario names its seed;
replay it with ``RS_CONV_ONLY=<seed>`` (either part).
"""

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid

from device import Device, make_devices, new_user, server_url
from harness import ServerProcess, recsync_bin

SEED = int(os.environ.get("RS_CONV_SEED", "20261123"))
# 140, not the 200 of before snapshots: a scenario now also writes and loads
# snapshots and runs prune passes (about 1.5x the CPU), and CI's budget is fixed.
SCENARIOS = int(os.environ.get("RS_CONV_SCENARIOS", "140"))
CLI_SCENARIOS = int(os.environ.get("RS_CONV_CLI_SCENARIOS", "4"))
ONLY = os.environ.get("RS_CONV_ONLY")
WORKERS = 2
IN_PROCESS_TIMEOUT = 480.0  # seconds for all in-process scenarios
CMD_TIMEOUT = 120.0

NAMESPACES = ["a", "b"]
KEYS = ["k0", "k1", "k2", "k3"]
COMMANDS = ["ls -la", "git status", "make test", "cd /tmp", "echo h\u00e9llo"]


def convergence_bin():
    """tests/test_convergence in the build that holds the recsync under test."""
    if os.environ.get("RS_CONVERGENCE_BIN"):
        return os.environ["RS_CONVERGENCE_BIN"]
    build = os.path.dirname(os.path.dirname(os.path.abspath(recsync_bin())))
    return os.path.join(build, "tests", "test_convergence")


def fast_tmpdir(test):
    """A temporary directory in memory when the machine has one (the stores
    fsync a lot), removed when the test ends."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="recsync-conv-", dir=base)
    test.addCleanup(shutil.rmtree, path, True)
    return path


def kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


class InProcess(unittest.TestCase):
    def test_scenarios_in_process(self):
        binary = convergence_bin()
        self.assertTrue(os.access(binary, os.X_OK),
                        "%s is missing: build the unit tests (cmocka) first" % binary)
        if ONLY:
            shares = [(int(ONLY), 1)]
        else:
            per = (SCENARIOS + WORKERS - 1) // WORKERS
            shares = [(SEED + i * per, min(per, SCENARIOS - i * per)) for i in range(WORKERS)]
        procs = []
        self.addCleanup(kill_all, procs)
        for first, count in shares:
            server = ServerProcess(self, hooks=True, args=["--prune-interval-ms", "0"])
            env = dict(os.environ, RS_CONV_SERVER=server_url(server), RS_CONV_SEED=str(first),
                       RS_CONV_SCENARIOS=str(count), TMPDIR=fast_tmpdir(self))
            env.pop("RS_CONV_ONLY", None)
            procs.append(subprocess.Popen([binary], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + IN_PROCESS_TIMEOUT
        outputs = []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_all(procs)
                self.fail("in-process scenarios did not finish in %ss" % IN_PROCESS_TIMEOUT)
            outputs.append(out.decode("utf-8", "replace"))
        total = 0
        tallies = {}
        for (first, count), p, out in zip(shares, procs, outputs):
            # The C program names a failing seed and how to replay it.
            self.assertEqual(p.returncode, 0, "scenarios from seed %d failed:\n%s" % (first, out))
            lines = [l for l in out.splitlines() if "scenarios converged" in l]
            self.assertEqual(len(lines), 1, out)
            done = int(lines[0].split("):", 1)[1].split()[0])
            self.assertEqual(done, count, lines[0])
            total += done
            print("\n  " + lines[0].strip(), end="")
            tally = [l for l in out.splitlines() if "records written; snapshots:" in l]
            self.assertEqual(len(tally), 1, out)
            print("\n  " + tally[0].strip(), end="")
            for name, pattern in (("loaded", r"(\d+) loaded"), ("pruned", r"(\d+) records pruned"),
                                  ("joined", r"(\d+) devices joined"),
                                  ("returned", r"(\d+) came back")):
                tallies[name] = tallies.get(name, 0) + int(re.search(pattern, tally[0]).group(1))
        print("\n  convergence: %d scenarios against recsyncd converged" % total)
        self.assertGreaterEqual(total, 1 if ONLY else SCENARIOS)
        if not ONLY and total >= 20:
            # The scenarios must have exercised what they claim to.
            for name in ("loaded", "pruned", "joined", "returned"):
                self.assertGreater(tallies[name], 0, "no scenario %s anything: %s" % (name, tallies))


# ---- end to end through the CLI ----------------------------------------------


def hlc_key(rec):
    """(HLC, host) order, computed here (not by the library under test): the
    clock as a number, then the host id's 16 bytes."""
    return (int(rec["hlc"], 16), uuid.UUID(rec["host"]).bytes)


def reference(device):
    """The state every device must hold, from device's records replayed in
    (HLC, host) order: ({(ns, key): row}, {id: row})."""
    records = sorted(device.log(), key=hlc_key)
    kv, history = {}, {}
    for rec in records:
        payload = json.loads(device.cat(rec["id"]).decode("utf-8"))
        if rec["tag"] == "kv":
            name = (payload["ns"], payload["key"])
            value = payload["value"] if payload["op"] == "set" else None
            kv[name] = (value, rec["hlc"], rec["host"])
        elif rec["tag"] == "history":
            eid = payload["id"]
            old = history.get(eid)
            if payload["op"] == "delete":
                history[eid] = ("deleted", rec["hlc"], rec["host"])
            elif old is None or old[0] != "deleted":
                history[eid] = (
                    "live", rec["hlc"], rec["host"], payload["command"], payload["time"],
                    payload.get("cwd", ""), payload.get("exit", -1), payload.get("duration", -1),
                    payload.get("session", ""), payload.get("hostname", ""))
    return kv, history


def kv_state(device, env):
    rows = device.run("kv", "list", "--json", "--all", env=env).text.splitlines()
    out = {}
    for line in rows:
        r = json.loads(line)
        out[(r["ns"], r["key"])] = (None if r["deleted"] else r["value"], r["hlc"], r["host"])
    return out


def history_state(device, env):
    rows = device.run("history", "list", "--json", "--all", env=env).text.splitlines()
    out = {}
    for line in rows:
        r = json.loads(line)
        if r["deleted"]:
            out[r["id"]] = ("deleted", r["hlc"], r["host"])
        else:
            out[r["id"]] = ("live", r["hlc"], r["host"], r["command"], r["time"], r["cwd"],
                            r["exit"], r["duration"], r["session"], r["hostname"])
    return out


class CliScenario:
    """One seeded scenario driven through the recsync command line."""

    def __init__(self, test, server, seed):
        self.test = test
        self.seed = seed
        self.rng = random.Random(seed)
        n = self.rng.randint(3, 5)
        self.devices = make_devices(test, server, n, user=new_user())
        behind = self.rng.randrange(n)
        self.env = {}
        for i, d in enumerate(self.devices):
            self.env[d.name] = ({"RECSYNC_CLOCK_OFFSET_MS": str(-self.rng.randint(1000, 120000))}
                                if i == behind else {})
        self.import_file = os.path.join(fast_tmpdir(test), "zsh_history")
        t = int(time.time()) - 100
        with open(self.import_file, "w") as f:
            f.write(": %d:1;ls\n: %d:0;ls\n: %d:2;vim notes\\\nmore\n" % (t, t, t + 50))
        self.steps = []

    def run(self, d, *args, **kw):
        return d.run(*args, env=self.env[d.name], **kw)

    def note(self, text):
        self.steps.append(text)

    def kv_set(self, d, step):
        ns, key = self.rng.choice(NAMESPACES), self.rng.choice(KEYS)
        self.note("%s: kv set %s %s" % (d.name, ns, key))
        self.run(d, "kv", "set", ns, key, "v%d-%s" % (step, d.name))

    def kv_del(self, d):
        live = [json.loads(l) for l in self.run(d, "kv", "list", "--json").text.splitlines()]
        if not live:
            return
        r = self.rng.choice(sorted((x["ns"], x["key"]) for x in live))
        self.note("%s: kv del %s %s" % (d.name, r[0], r[1]))
        self.run(d, "kv", "del", r[0], r[1])

    def same_ms_pair(self, step):
        a, b = self.rng.sample(self.devices, 2)
        ns, key = self.rng.choice(NAMESPACES), self.rng.choice(KEYS)
        pin = str(int(time.time() * 1000) + 1500)
        self.note("%s and %s: kv set %s %s at the same ms %s" % (a.name, b.name, ns, key, pin))
        procs = []
        try:
            for d in (a, b):
                procs.append(subprocess.Popen(
                    [recsync_bin(), "--dir", d.dir, "kv", "set", ns, key, "pair%d-%s" % (step, d.name)],
                    env=dict(os.environ, RECSYNC_CLOCK_PIN_MS=pin), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
            for p in procs:
                out, err = p.communicate(timeout=CMD_TIMEOUT)
                self.test.assertEqual(p.returncode, 0, err)
        finally:
            kill_all(procs)

    def same_ms_history(self):
        """Two devices import the shared file, delete one entry, or one
        imports while the other deletes, all in the same millisecond."""
        a, b = self.rng.sample(self.devices, 2)
        kind = self.rng.randrange(3)
        live = [json.loads(l)["id"] for l in self.run(a, "history", "list", "--json").text.splitlines()]
        eid = self.rng.choice(sorted(live)) if live else None
        if kind == 0:
            jobs = [(a, ["history", "import", "zsh", self.import_file]),
                    (b, ["history", "import", "zsh", self.import_file])]
        elif kind == 1 and eid:
            jobs = [(a, ["history", "delete", eid]), (b, ["history", "delete", eid])]
        elif kind == 2:
            jobs = [(b, ["history", "import", "zsh", self.import_file])]
            if eid:
                jobs.append((a, ["history", "delete", eid]))
        else:
            return
        pin = str(int(time.time() * 1000) + 1500)
        self.note("same ms %s: %s" % (pin, "; ".join("%s: %s" % (d.name, " ".join(c)) for d, c in jobs)))
        procs = []
        try:
            for d, cmd in jobs:
                procs.append(subprocess.Popen(
                    [recsync_bin(), "--dir", d.dir] + cmd,
                    env=dict(os.environ, RECSYNC_CLOCK_PIN_MS=pin), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
            for p in procs:
                out, err = p.communicate(timeout=CMD_TIMEOUT)
                # A delete of an entry b does not hold (yet) is refused and writes nothing.
                if kind == 1 and p.returncode == 1:
                    self.test.assertIn(b"no history entry", err)
                else:
                    self.test.assertEqual(p.returncode, 0, err)
        finally:
            kill_all(procs)

    def history_add(self, d, step):
        cmd = "%s #%d" % (self.rng.choice(COMMANDS), step)
        self.note("%s: history add %s" % (d.name, cmd))
        self.run(d, "history", "add", "--exit", str(self.rng.randrange(3)), "--duration",
                 str(self.rng.randrange(1000)), "--session", "s", "--", cmd)

    def history_delete(self, d):
        live = [json.loads(l)["id"] for l in self.run(d, "history", "list", "--json").text.splitlines()]
        if not live:
            return
        eid = self.rng.choice(sorted(live))
        self.note("%s: history delete %s" % (d.name, eid))
        self.run(d, "history", "delete", eid)

    def history_import(self, d):
        self.note("%s: history import" % d.name)
        self.run(d, "history", "import", "zsh", self.import_file)

    def sync(self, d):
        self.note("%s: sync" % d.name)
        self.run(d, "sync", "--json")

    def play(self):
        steps = self.rng.randint(6, 14)
        for step in range(steps):
            d = self.rng.choice(self.devices)
            pick = self.rng.randrange(100)
            if pick < 25:
                self.kv_set(d, step)
            elif pick < 35:
                self.kv_del(d)
            elif pick < 43:
                self.same_ms_pair(step)
            elif pick < 55:
                self.history_add(d, step)
            elif pick < 62:
                self.history_delete(d)
            elif pick < 67:
                self.history_import(d)
            elif pick < 72:
                self.same_ms_history()
            else:
                group = [x for x in self.devices if self.rng.random() < 0.5]
                self.rng.shuffle(group)
                for x in group:
                    self.sync(x)
        for _ in range(2):
            for d in self.devices:
                self.sync(d)

    def check(self):
        first = self.devices[0]
        ids = sorted(r["id"] for r in first.log())
        want_kv, want_history = reference(first)
        for d in self.devices:
            self.test.assertEqual(sorted(r["id"] for r in d.log()), ids,
                                  "%s holds other records than %s" % (d.name, first.name))
            self.test.assertEqual(kv_state(d, self.env[d.name]), want_kv, "kv state of %s" % d.name)
            self.test.assertEqual(history_state(d, self.env[d.name]), want_history,
                                  "history state of %s" % d.name)
        return len(ids)


class ThroughTheCli(unittest.TestCase):
    def test_scenarios_through_the_cli(self):
        server = ServerProcess(self)
        seeds = [int(ONLY)] if ONLY else [SEED + 100000 + i for i in range(CLI_SCENARIOS)]
        records = 0
        for seed in seeds:
            sc = None
            try:
                sc = CliScenario(self, server, seed)
                sc.play()
                records += sc.check()
            except AssertionError as e:
                steps = "\n".join(sc.steps) if sc else ""
                raise AssertionError("CLI scenario with seed %d failed (replay it with "
                                     "RS_CONV_ONLY=%d): %s\nsteps:\n%s" % (seed, seed, e, steps))
        print("\n  convergence: %d scenarios through the CLI converged (%d records)"
              % (len(seeds), records))
        self.assertGreater(records, 0)


if __name__ == "__main__":
    unittest.main()
