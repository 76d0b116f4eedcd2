"""`recsync sync` against a server whose index lies, or that redirects
(hostile_server.HostileProxy in front of the real recsyncd):

* an index announcing 1000 more records of a shard than its pages hold:
  the sync pulls what is there and stops naming the shard ("with 0
  records"); an index putting this device's own shard 5 records past the
  store's end: refused before anything moves ("this device's log ...");
* every answer a 302 to file://, ftp://, https:// or another http:// port:
  never followed (one request, no second), the message says where the
  redirect pointed, nothing is written.

Then, the server honest again, the next sync completes. The same checks
as test_hostile_server (hostile_server.HostileWorld); SQLite only."""

import json
import unittest

from hostile_server import PAGE, HostileWorld


class HostileIndex(HostileWorld, unittest.TestCase):
    def setUp(self):
        self.start_world()

    def test_an_index_that_lies(self):
        cases = [
            ("inflate", "with 0 records"),
            ("own_ahead", "this device's log"),
        ]
        for mode, want in cases:
            with self.subTest(mode=mode):
                d = self.victim(mode)
                d.sync(page=PAGE)  # its own shard is on the server, the others pulled
                self.source.append_lines("notes", ["later %s %d" % (mode, i) for i in range(3)])
                self.source.sync()
                self.logged.update(json.dumps(e, sort_keys=True) for e in self.source.log())
                self.proxy.index_mode = mode
                err = self.hostile_sync(d, want)
                host = self.source.host if mode == "inflate" else d.host
                self.assertIn(host, err, "the message does not name the shard")
                self.assert_nothing_wrong(d)
                self.assert_heals(d)

    def test_redirects_to_other_schemes_are_not_followed(self):
        for target in ("file:///etc/passwd", "ftp://127.0.0.1:1/x", "https://127.0.0.1:%d/" % self.server.port,
                       "http://127.0.0.1:%d/" % self.server.port):
            with self.subTest(location=target):
                d = self.victim("redirect")
                self.proxy.redirect = target
                before = self.proxy.count("/")
                err = self.hostile_sync(d, "302")
                self.assertIn(target, err, "the message does not say where the redirect pointed")
                self.assertEqual(self.proxy.count("/") - before, 1, "the client asked again after a redirect")
                self.assertEqual(len(d.records()), 1, "a redirected sync wrote records")
                self.assertIn("ok: ", d.verify().text)
                self.assert_heals(d)


if __name__ == "__main__":
    unittest.main()
