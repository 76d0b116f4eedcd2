"""Paging: page sizes 1, 2, 3, 7 and 100 with record counts on both sides of
each page boundary, both ways (upload and download), and a server whose page
bound is smaller than the client's: every record arrives exactly once, at
its idx, with its payload."""

import unittest

from device import make_devices, shard_counts
from harness import ServerProcess

PAGE_SIZES = (1, 2, 3, 7, 100)


def counts_around(page):
    """Record counts on both sides of the first two page boundaries."""
    return sorted({n for n in (page - 1, page, page + 1, 2 * page - 1, 2 * page, 2 * page + 1) if n > 0})


class Pages(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess(self)

    def check_exchange(self, page, n, server_note=""):
        """A and B each write n records, then push, merge and pull in pages
        of `page`; both end with the same 2n records, each once."""
        where = "page %d, %d records%s" % (page, n, server_note)
        a, b = make_devices(self, self.server, 2, names=["a", "b"])
        lines_a = ["a-%d-%d" % (n, i) for i in range(n)]
        lines_b = ["b-%d-%d" % (n, i) for i in range(n)]
        ids_a = a.append_lines("t", lines_a)
        ids_b = b.append_lines("t", lines_b)

        r = a.sync(page=page)
        self.assertEqual((r["outcome"], r["uploaded"], r["downloaded"]), ("push", n, 0), where)
        r = b.sync(page=page)
        self.assertEqual((r["outcome"], r["uploaded"], r["downloaded"]), ("merge", n, n), where)
        self.assertEqual(shard_counts(r), {(a.host, "t"): (0, n), (b.host, "t"): (n, 0)}, where)
        r = a.sync(page=page)
        self.assertEqual((r["outcome"], r["uploaded"], r["downloaded"]), ("pull", 0, n), where)
        self.assertEqual(a.sync(page=page)["outcome"], "noop", where)

        rows_a, rows_b = a.records(), b.records()
        self.assertEqual(len(rows_a), 2 * n, where)
        self.assertEqual(rows_a, rows_b, where)
        self.assertEqual(len({row[3] for row in rows_a}), 2 * n, "an id twice: " + where)
        for d in (a, b):
            log = d.log()
            self.assertEqual(len(log), 2 * n, where)
            self.assertEqual(sorted(x["id"] for x in log), sorted(ids_a + ids_b), where)
            for host in (a.host, b.host):
                self.assertEqual(sorted(x["idx"] for x in log if x["host"] == host), list(range(n)), where)
        # Payloads at and around every page boundary, on the receiving side.
        idx_of = {x["id"]: x["idx"] for x in a.log()}
        for i in sorted({0, n - 1} | {k for k in range(n) if k % page in (0, page - 1)})[:40]:
            self.assertEqual(b.cat(ids_a[i]), lines_a[i].encode(), where)
            self.assertEqual(a.cat(ids_b[i]), lines_b[i].encode(), where)
            self.assertEqual(idx_of[ids_b[i]], i, where)

    def test_page_sizes_at_boundaries(self):
        for page in PAGE_SIZES:
            for n in counts_around(page):
                with self.subTest(page=page, records=n):
                    self.check_exchange(page, n)


class ServerPageBound(unittest.TestCase):
    def test_server_smaller_page_than_client(self):
        """recsyncd gives at most 3 records a page; the client asks for 7 and
        must follow the shorter pages without losing or repeating any."""
        self.server = ServerProcess(self, args=["--page-max", "3", "--page-default", "3"])
        for n in (2, 3, 4, 7, 8, 10):
            with self.subTest(records=n):
                Pages.check_exchange(self, 7, n, server_note=" (server pages of 3)")


if __name__ == "__main__":
    unittest.main()
