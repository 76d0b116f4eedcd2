"""A copied store gets its own identity: `recsync reidentify`.

A store directory copied with `cp -a` (or restored from a backup) and
written to on both copies holds two histories of the same shards; sync
refuses the copy that syncs second, and its refusal names `recsync
reidentify`. Reidentify there gives that store a new host id and seals the
records the server does not hold again under it: afterwards both copies'
writes reach a third device, the kv and history states are identical on
all three, `verify` passes everywhere and no record is lost (counted by id
and content). Also: the copy that synced first and the original that is
refused (reidentify runs on whichever is refused), a copy that has not
diverged, running it twice, a logged-out store (refused, nothing changed),
and SIGKILLs while it runs (the store is as it was or reidentified)."""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
import unittest

from device import Device, make_devices, server_url
from harness import ServerProcess, recsync_bin


def copy_store(test, src, name):
    """`cp -a` of a device's store directory; a Device driving the copy."""
    dst = Device(test, name, init=False, password=src.password)
    subprocess.run(["cp", "-a", src.dir, dst.dir], check=True, timeout=60)
    return dst


def kv_state(d):
    return sorted(d.run("kv", "list", "--json", "--all").text.splitlines())


def history_state(d):
    return sorted(d.run("history", "list", "--json", "--all").text.splitlines())


def records_of(d, log=None):
    """{record id: (host, tag, hlc, payload size)} of every record but checkpoints."""
    return {r["id"]: (r["host"], r["tag"], r["hlc"], r["size"]) for r in log or d.log()
            if r["tag"] != "rs.checkpoint"}


def host_of(d):
    return d.setting("host")


def write(d, tag, kv=2, history=3):
    """kv sets of keys unique to `tag`, one of the shared key, history entries."""
    for i in range(kv):
        d.run("kv", "set", "ns", "%s-%d" % (tag, i), "value of %s %d" % (tag, i))
    d.run("kv", "set", "ns", "shared", "last written by " + tag)
    lines = "".join("echo %s %d\n" % (tag, i) for i in range(history))
    d.run("history", "import", "bash", "-", input=lines.encode())


CHECKPOINT = ("--checkpoint",)


class CopiedStore(unittest.TestCase):
    def test_copy_written_on_both_then_reidentified_converges_on_three(self):
        server = ServerProcess(self)
        orig, third = make_devices(self, server, 2, names=["orig", "third"])
        write(orig, "before")
        orig.sync(extra=CHECKPOINT)
        third.sync(extra=CHECKPOINT)
        write(orig, "unsynced", kv=1, history=1)  # in both copies, not uploaded before the copy
        copy = copy_store(self, orig, "copy")
        old_host = host_of(orig)
        self.assertEqual(host_of(copy), old_host)
        log = orig.log()
        common = records_of(orig, log)
        common_all = len(log)

        write(orig, "orig")
        orig.run("kv", "del", "ns", "before-0")
        first = [json.loads(l) for l in history_state(orig)]
        gone = [e["id"] for e in first if e["command"] == "echo before 0"][0]
        orig.run("history", "delete", gone)
        write(copy, "copy", kv=3, history=4)
        copy.run("kv", "del", "ns", "before-1")
        orig_recs, copy_recs = records_of(orig), records_of(copy)
        orig_written = set(orig_recs) - set(common)
        copy_written = set(copy_recs) - set(common)
        self.assertEqual(len(orig_written), 2 + 1 + 3 + 2)
        self.assertEqual(len(copy_written), 3 + 1 + 4 + 1)
        self.assertFalse(orig_written & copy_written)

        self.assertIn(orig.sync(extra=CHECKPOINT)["outcome"], ("push", "merge"))
        before = copy.dump()
        r = copy.sync(expect=1)
        err = r.err.decode()
        self.assertIn("recsync reidentify", err)
        self.assertIn("machine refused", err)
        self.assertEqual(copy.dump(), before, "a refused sync changed the store")
        # A checkpoint is written before the refusal: one more record of the copy's own.
        copy.sync(expect=1, extra=CHECKPOINT)
        copy_all = len(copy.log()) - common_all
        self.assertEqual(copy_all, len(copy_written) + 1)

        r = copy.run("reidentify", "--json").json
        new_host = r["new_host"]
        self.assertEqual(r["old_host"], old_host)
        self.assertNotEqual(new_host, old_host)
        self.assertEqual(host_of(copy), new_host)
        self.assertEqual(host_of(orig), old_host, "the original keeps its host id")
        self.assertEqual(r["resealed"], copy_all)
        self.assertEqual(r["kept"], common_all)
        self.assertEqual(r["sync"]["uploaded"], copy_all)
        self.assertGreaterEqual(r["sync"]["downloaded"], len(orig_written))
        self.assertGreaterEqual(orig.sync(extra=CHECKPOINT)["downloaded"], copy_all)
        third.sync(extra=CHECKPOINT)
        copy.sync(extra=CHECKPOINT)
        self.assertEqual(copy.sync()["outcome"], "noop")

        # Every record on every device: same ids, clocks and payload sizes as
        # written, the copy's under its new host id; verify opens them all.
        want = dict(common)
        want.update({i: orig_recs[i] for i in orig_written})
        want.update({i: (new_host,) + copy_recs[i][1:] for i in copy_written})
        for d in (orig, copy, third):
            d.verify()
            self.assertEqual(records_of(d), want, "%s: records lost, extra or changed" % d.name)

        kv, hist = kv_state(orig), history_state(orig)
        for d in (copy, third):
            self.assertEqual(kv_state(d), kv, "%s: kv differs" % d.name)
            self.assertEqual(history_state(d), hist, "%s: history differs" % d.name)
        got = {json.loads(l)["key"]: json.loads(l) for l in kv}
        for k in ("orig-1", "copy-2", "unsynced-0", "before-1"):
            self.assertIn(k, got)
        self.assertFalse(got["orig-1"]["deleted"] or got["copy-2"]["deleted"])
        self.assertTrue(got["before-0"]["deleted"], "the original's delete")
        self.assertTrue(got["before-1"]["deleted"], "the copy's delete")
        self.assertEqual(got["shared"]["value"], "last written by copy")
        self.assertEqual(got["shared"]["host"], new_host)
        entries = [json.loads(l) for l in hist]
        live = {e["command"] for e in entries if not e["deleted"]}
        self.assertTrue({"echo copy 3", "echo orig 2", "echo unsynced 0"} <= live)
        self.assertEqual(sum(1 for e in entries if e["deleted"]), 1, "the original's delete")
        self.assertNotIn("echo before 0", live)
        self.assertIn("echo before 1", live)

        # Running it again is safe: nothing to move, yet another id, nothing lost;
        # both keep writing and syncing.
        r2 = copy.run("reidentify", "--json").json
        self.assertEqual(r2["old_host"], new_host)
        self.assertNotIn(r2["new_host"], (old_host, new_host))
        self.assertEqual(r2["resealed"], 0)
        self.assertEqual(r2["sync"]["outcome"], "noop")
        orig.run("kv", "set", "ns", "later", "orig")
        copy.run("kv", "set", "ns", "later2", "copy")
        for d in (orig, copy, third, orig):
            d.sync()
        copy.verify()
        kv, recs = kv_state(orig), set(records_of(orig))
        for d in (copy, third):
            self.assertEqual(kv_state(d), kv)
            self.assertEqual(set(records_of(d)), recs)
        for d in (orig, copy, third):
            self.assertIsNone(d.status().get("alarm"), "%s: a fork alarm" % d.name)

    def test_original_refused_after_copy_uploaded_reidentifies_there(self):
        """The copy syncs first, uploading what it wrote (more than the
        original): the original is the one refused, and reidentify runs there."""
        server = ServerProcess(self)
        orig, third = make_devices(self, server, 2, names=["orig", "third"])
        write(orig, "before")
        orig.sync()
        copy = copy_store(self, orig, "copy")
        common = set(records_of(orig))
        write(copy, "copy", kv=3, history=3)
        self.assertEqual(copy.sync()["outcome"], "push")
        write(copy, "more", kv=0, history=1)  # written after its upload: the old id's too
        write(orig, "orig", kv=1, history=1)
        before = orig.dump()
        r = orig.sync(expect=1)
        self.assertIn("recsync reidentify", r.err.decode())
        self.assertIn("ends at idx", r.err.decode())
        self.assertEqual(orig.dump(), before)

        orig_div = set(records_of(orig)) - common
        r = orig.run("reidentify", "--json").json
        self.assertEqual(r["resealed"], len(orig_div))
        self.assertEqual(host_of(copy), r["old_host"], "the copy keeps the old id")
        copy.sync()
        third.sync()
        orig.sync()
        state = kv_state(third)
        for d in (orig, copy, third):
            d.verify()
            self.assertEqual(kv_state(d), state)
            self.assertEqual(set(records_of(d)), set(records_of(third)))
        self.assertTrue(orig_div <= set(records_of(third)))
        got = {json.loads(l)["key"] for l in state}
        self.assertTrue({"orig-0", "copy-2", "before-1", "shared"} <= got)
        self.assertEqual(len(history_state(third)), 3 + 3 + 1 + 1)

    def test_copy_that_has_not_diverged_and_logged_out_store(self):
        server = ServerProcess(self)
        (orig,) = make_devices(self, server, 1, names=["orig"])
        write(orig, "before")
        orig.sync()
        copy = copy_store(self, orig, "copy")
        r = copy.run("reidentify", "--json").json
        self.assertEqual(r["resealed"], 0)
        self.assertEqual(r["kept"], len(records_of(orig)))
        self.assertEqual(r["sync"]["uploaded"], 0)
        write(copy, "copy", kv=1, history=1)
        write(orig, "orig", kv=1, history=1)
        orig.sync()
        copy.sync()
        orig.sync()
        self.assertEqual(kv_state(orig), kv_state(copy))
        self.assertEqual(set(records_of(orig)), set(records_of(copy)))

        # Not logged in (never, or logged out): a clear error, nothing changed.
        fresh = Device(self, "fresh", key=orig.key_export(), password=orig.password)
        before = fresh.dump()
        err = fresh.run("reidentify", expect=1).err.decode()
        self.assertIn("not logged in", err)
        self.assertEqual(fresh.dump(), before)
        fresh.login(server_url(server), orig.user, orig.password)
        fresh.run("logout")
        before = fresh.dump()
        err = fresh.run("reidentify", expect=1).err.decode()
        self.assertIn("not logged in", err)
        self.assertIn("recsync login", err)
        self.assertEqual(fresh.dump(), before)
        # A wrong password: refused by the server; the store unchanged but for the note.
        before = copy.dump()
        err = copy.run("reidentify", expect=1, env={"RECSYNC_PASSWORD": "wrong"}).err.decode()
        self.assertIn("wrong user name or password", err)
        self.assertEqual(strip_note(copy.dump()), strip_note(before))


class KilledWhileReidentifying(unittest.TestCase):
    def test_sigkill_leaves_the_store_as_it_was_or_reidentified(self):
        """SIGKILL while the store is write-locked (the reidentify transaction,
        seen by trying to take the lock from here), at random points in it."""
        server = ServerProcess(self)
        orig, third = make_devices(self, server, 2, names=["orig", "third"])
        orig.append_lines("notes", ["common-%d" % i for i in range(200)])
        orig.sync()
        copy = copy_store(self, orig, "copy")
        orig.append_lines("notes", ["orig-%d" % i for i in range(50)])
        orig.sync()
        lines = ["copy-%05d-%s" % (i, "z" * (i % 40)) for i in range(KILL_RECORDS)]
        copy.append_lines("notes", lines)
        old = host_of(copy)
        ORIGINAL[0] = old
        before = copy.dump()
        pristine = copy_store(self, copy, "pristine")

        env = dict(os.environ, RECSYNC_PASSWORD=copy.password)
        cmd = [recsync_bin(), "--dir", copy.dir, "reidentify", "--no-sync", "--json"]
        # How long the write lock is held in an uninterrupted run, to spread the kills over it.
        probe = copy_store(self, pristine, "probe")
        p = subprocess.Popen([recsync_bin(), "--dir", probe.dir, "reidentify", "--no-sync"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
        probe.procs.append(p)
        locked_at = wait_locked(probe, p)
        p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0)
        span = time.monotonic() - locked_at
        rng = random.Random(os.environ.get("RS_TEST_SEED", "reidentify-kill"))
        outcomes = {"as it was": 0, "reidentified": 0}
        locked_kills = 0
        for n in range(KILLS):
            if n:
                shutil.rmtree(copy.dir)
                subprocess.run(["cp", "-a", pristine.dir, copy.dir], check=True, timeout=60)
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
            copy.procs.append(p)
            wait_locked(copy, p)
            if p.poll() is None:
                # Stratified over the lock's span: early kills land before the commit. The
                # first comes as soon as the lock is seen: the commit can come early in the
                # span (which runs to the process's exit), and a random point in the first
                # quarter once missed it on all four runs under CI load.
                if n:
                    time.sleep(span * 1.1 * (n + rng.random()) / KILLS)
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
                    locked_kills += 1
            p.communicate(timeout=60)
            copy.verify()
            if host_of(copy) == old:
                outcomes["as it was"] += 1
                # As it was, but for the note of the new id a rerun reuses.
                self.assertEqual(strip_note(copy.dump()), strip_note(before))
            else:
                outcomes["reidentified"] += 1
                self.assertEqual(len(own_rows(copy)), len(lines))
        print("\nreidentify SIGKILLed %d times after it took the write lock (held %.3f s to its "
              "exit uninterrupted): %r" % (locked_kills, span, outcomes))
        self.assertGreaterEqual(locked_kills, KILLS // 2,
                                "too few kills landed after the lock was taken")
        self.assertGreater(outcomes["as it was"], 0, "no kill landed before the commit")
        if host_of(copy) == old:
            copy.run("reidentify", "--no-sync")
        self.assertNotEqual(host_of(copy), old)
        self.assertEqual(len(own_rows(copy)), len(lines))
        copy.sync()
        orig.sync()
        third.sync()
        for d in (orig, copy, third):
            d.verify()
            self.assertEqual(len(d.log("notes")), 200 + 50 + len(lines))
        self.assertEqual(set(records_of(third)), set(records_of(copy)))


KILLS = 4
ORIGINAL = [None]  # the copy's host id before reidentify
KILL_RECORDS = 1200


def write_locked(d):
    """Whether another connection holds the store's write lock now."""
    con = sqlite3.connect(d.db_path, timeout=0)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        con.close()


def wait_locked(d, p):
    """Polls until process p holds the store's write lock after it noted the
    new host id (its transaction, not the note's), or ends; returns when."""
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and (
            d.setting("reidentify.host") is None and d.setting("host") == ORIGINAL[0]):
        time.sleep(0.002)
    while p.poll() is None and time.monotonic() < deadline and not write_locked(d):
        time.sleep(0.001)
    return time.monotonic()


def own_rows(d):
    host = d.setting("host").replace("-", "").upper()
    return [r for r in d.records() if r[0].upper() == host]


def strip_note(dump):
    return "\n".join(l for l in dump.splitlines() if "reidentify.host" not in l)


if __name__ == "__main__":
    unittest.main()
