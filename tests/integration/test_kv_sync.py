"""The kv store through the recsync command line: its output and exit
statuses, and, through the real recsyncd, the issue's acceptance: concurrent
sets converge on the higher HLC whatever order devices sync in, a delete
reaches the other device and stays when an older set arrives later, and
records this build cannot apply (an unknown tag, a newer kv version) are
synced and kept, not applied."""

import json
import time
import unittest

from device import Device, make_devices
from harness import ServerProcess, no_server

V2_PAYLOAD = '{"op":"set","ns":"ns","key":"k","value":"from v2","expires":4102444800000}'


def own_last(device, tag="kv"):
    """(hlc, host) of the device's newest record of `tag`."""
    mine = [r for r in device.log(tag) if r["host"] == device.host]
    return (mine[-1]["hlc"], mine[-1]["host"])


def kv_rows(device, env=None):
    return [json.loads(l) for l in
            device.run("kv", "list", "--json", "--all", env=env).text.splitlines()]


@no_server
class KvCommandLine(unittest.TestCase):
    def setUp(self):
        self.d = Device(self, "solo")

    def test_get_of_a_missing_key_exits_1_and_prints_nothing(self):
        r = self.d.run("kv", "get", "ns", "nope", expect=1)
        self.assertEqual(r.out, b"")
        self.assertIn("nope", r.err.decode())
        self.d.run("kv", "set", "ns", "k", "v")
        self.d.run("kv", "del", "ns", "k")
        r = self.d.run("kv", "get", "ns", "k", expect=1)
        self.assertEqual(r.out, b"")
        r = self.d.run("kv", "del", "ns", "k", expect=1)
        self.assertIn("'k'", r.err.decode())

    def test_set_get_list_and_values_with_spaces_and_newlines(self):
        self.d.run("kv", "set", "ns", "k", "hello world")
        self.d.run("kv", "set", "ns", "multi", "line one\nline two")
        self.d.run("kv", "set", "other", "x", "")
        self.assertEqual(self.d.run("kv", "get", "ns", "k").out, b"hello world\n")
        self.assertEqual(self.d.run("kv", "get", "ns", "multi").out, b"line one\nline two\n")
        self.assertEqual(self.d.run("kv", "get", "other", "x").out, b"\n")
        self.assertEqual(self.d.run("kv", "list", "ns").text,
                         "k\thello world\nmulti\tline one\\nline two\n")
        self.assertEqual(self.d.run("kv", "list").text,
                         "ns\tk\thello world\nns\tmulti\tline one\\nline two\nother\tx\t\n")
        rows = [json.loads(l) for l in self.d.run("kv", "list", "--json", "ns").text.splitlines()]
        self.assertEqual([(r["key"], r["value"], r["deleted"]) for r in rows],
                         [("k", "hello world", False), ("multi", "line one\nline two", False)])
        self.d.run("kv", "set", "ns", "k", "again")
        self.assertEqual(self.d.run("kv", "get", "ns", "k").out, b"again\n")
        # Four sets, one record each; the payload names the write.
        kv = self.d.log("kv")
        self.assertEqual(len(kv), 4)
        self.assertEqual(json.loads(self.d.cat(kv[-1]["id"])),
                         {"op": "set", "ns": "ns", "key": "k", "value": "again"})

    def test_usage_errors_exit_2(self):
        for args in (["kv"], ["kv", "set", "ns", "k"], ["kv", "get", "ns"],
                     ["kv", "frobnicate"], ["kv", "set", "", "k", "v"],
                     ["kv", "list", "a", "b"], ["kv", "list", "--all"]):
            r = self.d.run(*args, expect=2)
            self.assertEqual(r.out, b"", args)
        self.assertEqual(self.d.log("kv"), [])


class KvSync(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def test_concurrent_sets_converge_on_the_higher_hlc_whatever_the_sync_order(self):
        for order in ("ab", "ba"):
            a, b = make_devices(self, self.server, 2, names=["a-" + order, "b-" + order])
            a.run("kv", "set", "ns", "k", "from a")
            b.run("kv", "set", "ns", "k", "from b")
            wa, wb = own_last(a), own_last(b)
            want = b"from a\n" if wa > wb else b"from b\n"
            first, second = (a, b) if order == "ab" else (b, a)
            first.sync()
            second.sync()
            first.sync()
            for d in (a, b):
                self.assertEqual(d.run("kv", "get", "ns", "k").out, want,
                                 "%s after syncing %s" % (d.name, order))
                row = kv_rows(d)[0]
                self.assertEqual((row["hlc"], row["host"]), max(wa, wb))

    def test_sets_in_the_same_millisecond_go_to_the_higher_host(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        # A millisecond just ahead of both clocks, well within the drift bound.
        pin = {"RECSYNC_CLOCK_PIN_MS": str(int(time.time() * 1000) + 2000)}
        a.run("kv", "set", "ns", "k", "from a", env=pin)
        b.run("kv", "set", "ns", "k", "from b", env=pin)
        wa, wb = own_last(a), own_last(b)
        self.assertEqual(wa[0], wb[0], "the pinned clocks give equal HLCs")
        want = b"from a\n" if a.host > b.host else b"from b\n"
        a.sync()
        b.sync()
        a.sync()
        self.assertEqual(a.run("kv", "get", "ns", "k").out, want)
        self.assertEqual(b.run("kv", "get", "ns", "k").out, want)

    def test_a_delete_reaches_the_other_device_and_survives_an_older_set(self):
        a, b, c = make_devices(self, self.server, 3, names=["a", "b", "c"])
        behind = {"RECSYNC_CLOCK_OFFSET_MS": "-60000"}
        a.run("kv", "set", "ns", "k", "v1")
        a.sync()
        b.sync()
        self.assertEqual(b.run("kv", "get", "ns", "k").out, b"v1\n")
        b.run("kv", "del", "ns", "k")
        b.sync()
        a.sync()
        r = a.run("kv", "get", "ns", "k", expect=1)
        self.assertEqual(r.out, b"")
        # c's clock runs a minute behind: its set is older than b's delete.
        c.run("kv", "set", "ns", "k", "older", env=behind)
        self.assertLess(own_last(c), own_last(b))
        c.run("sync", "--json", env=behind)
        a.sync()
        b.sync()
        for d in (a, b, c):
            r = d.run("kv", "get", "ns", "k", expect=1, env=behind if d is c else None)
            self.assertEqual(r.out, b"", d.name)
            row = kv_rows(d)[0]
            self.assertTrue(row["deleted"], d.name)
            self.assertEqual((row["hlc"], row["host"]), own_last(b))
        # A set newer than the delete brings the key back everywhere.
        a.run("kv", "set", "ns", "k", "v2")
        a.sync()
        b.sync()
        self.assertEqual(b.run("kv", "get", "ns", "k").out, b"v2\n")

    def test_an_unknown_tag_is_synced_and_kept_not_applied(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        rid = a.append("future.tag", '{"op":"set","ns":"ns","key":"k","value":"x"}')
        a.sync()
        r = b.run("sync", "--json")
        self.assertNotIn(b"warning", r.err)
        self.assertIn(rid, b.ids())
        self.assertEqual(b.cat(rid), b'{"op":"set","ns":"ns","key":"k","value":"x"}')
        b.run("kv", "get", "ns", "k", expect=1)
        b.verify()

    def test_a_newer_kv_version_is_kept_named_and_not_applied(self):
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        r = a.run("append", "kv", "--version", "2", input=V2_PAYLOAD.encode())
        rid = r.text.strip()
        self.assertIn(rid, r.err.decode(), "the writing device warns too")
        a.run("kv", "set", "ns", "other", "v1")
        a.sync()
        r = b.run("sync", "--json")
        err = r.err.decode()
        self.assertIn(rid, err)
        self.assertIn("version 2", err)
        self.assertIn(rid, b.ids())
        self.assertEqual(b.cat(rid).decode(), V2_PAYLOAD)
        b.run("kv", "get", "ns", "k", expect=1)
        self.assertEqual(b.run("kv", "get", "ns", "other").out, b"v1\n")
        # A rebuild by the same build keeps it unapplied and says so again.
        r = b.run("rebuild", "kv")
        self.assertIn(rid, r.err.decode())
        b.run("kv", "get", "ns", "k", expect=1)
        b.verify()


if __name__ == "__main__":
    unittest.main()
