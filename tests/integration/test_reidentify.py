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


def user_records(d):
    """{record id: (tag, hlc, version)} of every record but checkpoints."""
    return {r["id"]: (r["tag"], r["hlc"]) for r in d.log() if r["tag"] != "rs.checkpoint"}


def contents(d, ids):
    """{id: decrypted payload} for `ids`."""
    return {i: d.cat(i) for i in ids}


def host_of(d):
    return d.setting("host")


def write(d, tag, n, kv_ns="ns"):
    """n kv sets of keys unique to `tag` plus one shared key, n history entries."""
    for i in range(n):
        d.run("kv", "set", kv_ns, "%s-%d" % (tag, i), "value of %s %d" % (tag, i))
        d.run("history", "add", "--cwd", "/w/" + tag, "--", "echo", tag, str(i))
    d.run("kv", "set", kv_ns, "shared", "last written by " + tag)


class CopiedStore(unittest.TestCase):
    def test_copy_written_on_both_then_reidentified_converges_on_three(self):
        server = ServerProcess(self)
        orig, third = make_devices(self, server, 2, names=["orig", "third"])
        write(orig, "before", 3)
        orig.sync()
        write(orig, "unsynced", 2)  # in both copies, never uploaded before the copy
        copy = copy_store(self, orig, "copy")
        old_host = host_of(orig)
        self.assertEqual(host_of(copy), old_host)
        common = user_records(orig)

        write(orig, "orig", 4)
        orig.run("kv", "del", "ns", "before-0")
        first = [json.loads(l) for l in history_state(orig)]
        orig.run("history", "delete", [e["id"] for e in first if e["command"] == "echo before 0"][0])
        write(copy, "copy", 5)
        copy.run("kv", "del", "ns", "before-1")
        orig_written = set(user_records(orig)) - set(common)
        copy_written = set(user_records(copy)) - set(common)
        self.assertTrue(orig_written and copy_written)
        self.assertFalse(orig_written & copy_written)
        expect_content = contents(orig, sorted(set(common) | orig_written))
        expect_content.update(contents(copy, sorted(copy_written)))

        self.assertEqual(orig.sync()["outcome"], "push")
        before = copy.dump()
        r = copy.sync(expect=1)
        err = r.err.decode()
        self.assertIn("recsync reidentify", err)
        self.assertIn("machine refused", err)
        self.assertEqual(copy.dump(), before, "a refused sync changed the store")

        r = copy.run("reidentify", "--json").json
        self.assertEqual(r["old_host"], old_host)
        self.assertNotEqual(r["new_host"], old_host)
        self.assertEqual(host_of(copy), r["new_host"])
        self.assertEqual(host_of(orig), old_host, "the original keeps its host id")
        self.assertEqual(r["resealed"], len(copy_written))
        self.assertEqual(r["sync"]["uploaded"], len(copy_written))
        self.assertGreaterEqual(r["sync"]["downloaded"], len(orig_written))
        self.assertEqual(orig.sync()["downloaded"], len(copy_written))
        third.sync()
        self.assertEqual(copy.sync()["outcome"], "noop")

        for d in (orig, copy, third):
            d.verify()
        want = set(common) | orig_written | copy_written
        for d in (orig, copy, third):
            recs = user_records(d)
            self.assertEqual(set(recs), want, "%s: records lost or extra" % d.name)
            self.assertEqual(len(recs), len(common) + len(orig_written) + len(copy_written))
        self.assertEqual(contents(third, sorted(want)), expect_content, "content differs")
        # Same ids and clocks on every device, the copy's under its new host id.
        logs = [{r["id"]: (r["host"], r["tag"], r["hlc"]) for r in d.log()
                 if r["tag"] != "rs.checkpoint"} for d in (orig, copy, third)]
        self.assertEqual(logs[0], logs[1])
        self.assertEqual(logs[0], logs[2])
        self.assertEqual({logs[0][i][0] for i in copy_written}, {r["new_host"]})
        self.assertEqual({logs[0][i][0] for i in orig_written}, {old_host})

        kv = kv_state(orig)
        hist = history_state(orig)
        self.assertEqual(kv_state(copy), kv)
        self.assertEqual(kv_state(third), kv)
        self.assertEqual(history_state(copy), hist)
        self.assertEqual(history_state(third), hist)
        # Both sides' writes are there, each delete too.
        got = {json.loads(l)["key"]: json.loads(l) for l in kv}
        for k in ("orig-3", "copy-4", "unsynced-1", "before-2"):
            self.assertFalse(got[k]["deleted"], k)
        self.assertTrue(got["before-0"]["deleted"])
        self.assertTrue(got["before-1"]["deleted"])
        self.assertEqual(got["shared"]["value"], "last written by copy")
        self.assertEqual(got["shared"]["host"], r["new_host"])
        commands = {json.loads(l)["command"] for l in hist if not json.loads(l)["deleted"]}
        self.assertIn("echo copy 4", commands)
        self.assertIn("echo orig 3", commands)
        self.assertEqual(sum(1 for l in hist if json.loads(l)["deleted"]), 1)

        # Both keep writing and syncing.
        orig.run("kv", "set", "ns", "later", "orig")
        copy.run("kv", "set", "ns", "later2", "copy")
        for d in (orig, copy, third, orig, copy):
            d.sync()
        self.assertEqual(kv_state(third), kv_state(orig))
        self.assertEqual(kv_state(copy), kv_state(orig))

        # Running it again is safe: nothing to move, yet another id, nothing lost.
        r2 = copy.run("reidentify", "--json").json
        self.assertEqual(r2["old_host"], r["new_host"])
        self.assertNotIn(r2["new_host"], (old_host, r["new_host"]))
        self.assertEqual(r2["resealed"], 0)
        copy.run("kv", "set", "ns", "after-twice", "x")
        for d in (copy, orig, third):
            d.sync()
            d.verify()
        self.assertEqual(kv_state(third), kv_state(copy))
        self.assertEqual(kv_state(orig), kv_state(copy))
        self.assertEqual(history_state(third), history_state(copy))
        self.assertEqual(set(user_records(third)), set(user_records(copy)))
        self.assertEqual(set(user_records(orig)), set(user_records(copy)))
        for d in (orig, copy, third):
            self.assertIsNone(d.status().get("alarm"), "%s: a fork alarm" % d.name)

    def test_original_refused_after_copy_uploaded_reidentifies_there(self):
        """The copy syncs first, uploading what it wrote (more than the
        original): the original is the one refused, and reidentify runs there."""
        server = ServerProcess(self)
        orig, third = make_devices(self, server, 2, names=["orig", "third"])
        write(orig, "before", 2)
        orig.sync()
        copy = copy_store(self, orig, "copy")
        common = set(user_records(orig))
        write(copy, "copy", 4)
        self.assertEqual(copy.sync()["outcome"], "push")
        write(copy, "copy-more", 1)  # written after its upload: stays under the old id too
        write(orig, "orig", 2)
        before = orig.dump()
        r = orig.sync(expect=1)
        self.assertIn("recsync reidentify", r.err.decode())
        self.assertIn("ends at idx", r.err.decode())
        self.assertEqual(orig.dump(), before)

        orig_div = set(user_records(orig)) - common
        r = orig.run("reidentify", "--json").json
        self.assertEqual(r["resealed"], len(orig_div))
        self.assertEqual(copy.sync()["outcome"], "merge")
        third.sync()
        orig.sync()
        for d in (orig, copy, third):
            d.verify()
        self.assertEqual(kv_state(third), kv_state(orig))
        self.assertEqual(kv_state(copy), kv_state(orig))
        self.assertEqual(history_state(copy), history_state(third))
        self.assertEqual(set(user_records(third)), set(user_records(copy)))
        self.assertTrue(orig_div <= set(user_records(third)))
        got = {json.loads(l)["key"] for l in kv_state(third)}
        self.assertTrue({"orig-1", "copy-3", "copy-more-0", "before-1"} <= got)
        self.assertEqual(host_of(copy), r["old_host"], "the copy kept the old id")

    def test_copy_that_has_not_diverged_and_logged_out_store(self):
        server = ServerProcess(self)
        (orig,) = make_devices(self, server, 1, names=["orig"])
        write(orig, "before", 2)
        orig.sync()
        copy = copy_store(self, orig, "copy")
        r = copy.run("reidentify", "--json").json
        self.assertEqual(r["resealed"], 0)
        self.assertEqual(r["kept"], len(orig.log()))
        self.assertEqual(r["sync"]["uploaded"], 0)
        write(copy, "copy", 1)
        write(orig, "orig", 1)
        orig.sync()
        copy.sync()
        orig.sync()
        self.assertEqual(kv_state(orig), kv_state(copy))
        self.assertEqual(set(user_records(orig)), set(user_records(copy)))

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
        # A wrong password: refused by the server, the store unchanged but for the note.
        before = {row for row in copy.records()}
        host = host_of(copy)
        err = copy.run("reidentify", expect=1, env={"RECSYNC_PASSWORD": "wrong"}).err.decode()
        self.assertIn("wrong user name or password", err)
        self.assertEqual(host_of(copy), host)
        self.assertEqual({row for row in copy.records()}, before)


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
        before = copy.dump()
        pristine = copy_store(self, copy, "pristine")

        env = dict(os.environ, RECSYNC_PASSWORD=copy.password)
        cmd = [recsync_bin(), "--dir", copy.dir, "reidentify", "--no-sync", "--json"]
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
            deadline = time.monotonic() + 60
            while p.poll() is None and time.monotonic() < deadline and not write_locked(copy):
                time.sleep(0.002)
            if p.poll() is None:
                time.sleep(rng.uniform(0, 0.12))
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
        print("\nreidentify SIGKILLed %d times in its transaction: %r" % (locked_kills, outcomes))
        self.assertGreaterEqual(locked_kills, KILLS // 2, "too few kills landed in the transaction")
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
        self.assertEqual(set(user_records(third)), set(user_records(copy)))


KILLS = 5
KILL_RECORDS = 3000


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


def own_rows(d):
    host = d.setting("host").replace("-", "").upper()
    return [r for r in d.records() if r[0].upper() == host]


def strip_note(dump):
    return "\n".join(l for l in dump.splitlines() if "reidentify.host" not in l)


if __name__ == "__main__":
    unittest.main()
