"""Paging: page sizes 1, 2, 3, 7 and 100 with record counts on both sides of
each page boundary, both ways (upload and download), and a server whose page
bound is smaller than the client's: every record arrives exactly once, at
its idx, with its payload."""

import os
import unittest

from device import make_devices, shard_counts
from harness import ServerProcess, backend_name

PAGE_SIZES = (1, 2, 3, 7, 100)
# The PostgreSQL repeat (tests/CMakeLists.txt) runs the server's page queries at 1, 7 and 100 (and
# the server bound of 3 below); pages of 2 and 3 exercise the client's boundary arithmetic, the
# same code as on SQLite, where every size runs. They are reported as skipped subtests there.
PG_PAGE_SIZES = (1, 7, 100)
SANITIZER = os.environ.get("RS_TEST_SANITIZER", "")  # "thread" in a TSan build (tests/CMakeLists.txt)


def counts_around(page):
    """Record counts on both sides of the first two page boundaries."""
    return sorted({n for n in (page - 1, page, page + 1, 2 * page - 1, 2 * page, 2 * page + 1) if n > 0})


def cat(device, rid, leak_check=True):
    """`recsync cat RID` on `device`: the payload."""
    env = None
    if not leak_check and "ASAN_OPTIONS" in os.environ:
        env = {"ASAN_OPTIONS": os.environ["ASAN_OPTIONS"] + ":detect_leaks=0"}
    return device.run("cat", rid, env=env).out


class Pages(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def check_exchanges(self, page, counts, server_note=""):
        """For each n in `counts`, A and B each write n more records, then
        push, merge and pull in pages of `page`; after each round both hold
        the same records, each once, every shard contiguous. Later rounds
        start mid-page, so unaligned starts are covered too."""
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        ids_a, ids_b, lines_a, lines_b = [], [], [], []
        for n in counts:
            where = "page %d, %d records%s" % (page, n, server_note)
            base = len(ids_a)
            new_a = ["a-%d-%d" % (n, i) for i in range(n)]
            new_b = ["b-%d-%d" % (n, i) for i in range(n)]
            ids_a += a.append_lines("t", new_a)
            ids_b += b.append_lines("t", new_b)
            lines_a += new_a
            lines_b += new_b

            r = a.sync(page=page)
            self.assertEqual((r["outcome"], r["uploaded"], r["downloaded"]), ("push", n, 0), where)
            r = b.sync(page=page)
            self.assertEqual((r["outcome"], r["uploaded"], r["downloaded"]), ("merge", n, n), where)
            self.assertEqual(shard_counts(r), {(a.host, "t"): (0, n), (b.host, "t"): (n, 0)}, where)
            r = a.sync(page=page)
            self.assertEqual((r["outcome"], r["uploaded"], r["downloaded"]), ("pull", 0, n), where)
            self.assertEqual(a.sync(page=page)["outcome"], "noop", where)

            total = len(ids_a) + len(ids_b)
            rows_a, rows_b = a.records(), b.records()
            self.assertEqual(len(rows_a), total, where)
            self.assertEqual(rows_a, rows_b, where)
            self.assertEqual(len({row[3] for row in rows_a}), total, "an id twice: " + where)
            log = a.log()
            self.assertEqual(sorted(x["id"] for x in log), sorted(ids_a + ids_b), where)
            for host in (a.host, b.host):
                self.assertEqual(sorted(x["idx"] for x in log if x["host"] == host), list(range(len(ids_a))), where)
            idx_of = {x["id"]: x["idx"] for x in log}
            # Payloads at the first and last record of this round and at its page boundaries.
            picks = {base, base + n - 1} | {base + k for k in (page - 1, page, 2 * page - 1, 2 * page) if k < n}
            # The first round's `cat`s are leak-checked (ASan); later rounds run the same
            # `cat` code on other records, so they skip LeakSanitizer's exit scan (about half
            # of a short CLI process's cost under ASan) and keep every other check. In a TSan
            # build only the first round's payloads are read back: `cat` runs on one thread
            # (nothing for TSan to watch); every round's are checked in the ASan runs.
            leak_check = base == 0
            if not leak_check and SANITIZER == "thread":
                picks = set()
            for i in sorted(picks):
                self.assertEqual(cat(b, ids_a[i], leak_check), lines_a[i].encode(), where)
                self.assertEqual(cat(a, ids_b[i], leak_check), lines_b[i].encode(), where)
                self.assertEqual(idx_of[ids_b[i]], i, where)

    def test_page_sizes_at_boundaries(self):
        for page in PAGE_SIZES:
            with self.subTest(page=page):
                if backend_name() == "postgres" and page not in PG_PAGE_SIZES:
                    self.skipTest("pages of %d: client arithmetic, run on SQLite" % page)
                self.check_exchanges(page, counts_around(page))


class ServerPageBound(unittest.TestCase):
    def test_server_smaller_page_than_client(self):
        """recsyncd gives at most 3 records a page; the client asks for 7 and
        must follow the shorter pages without losing or repeating any."""
        self.server = ServerProcess(self, args=["--page-max", "3", "--page-default", "3"])
        Pages.check_exchanges(self, 7, (2, 3, 4, 7, 8, 10), server_note=" (server pages of 3)")


if __name__ == "__main__":
    unittest.main()
