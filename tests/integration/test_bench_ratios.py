"""bench/ratios.py compares recsync only with peer runs that did what they
claim: a peer line with ok false, a count short of N (documents written,
pushed or pulled, blocks held), write failures, live timeouts or no live
samples gives no ratio but a "ratio_withheld" line saying why; a sound
line still gives its ratio."""

import json
import os
import subprocess
import sys
import unittest

from harness import REPO

N = 1000


def ratios(lines):
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "ratios.py"), str(N)],
                       input="\n".join(json.dumps(l) for l in lines).encode(), capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("ratios.py exited %d: %s" % (p.returncode, p.stderr.decode()))
    return [json.loads(l) for l in p.stdout.decode().splitlines() if l.strip()]


OURS = [{"bench": "recsync", "what": w, "n": N, "value": v}
        for w, v in (("write", 70000), ("push", 50000), ("pull", 60000), ("live_p50", 1.5), ("live_p99", 4.0))]


def peer(name, metric, **fields):
    return dict({"bench": name, "n": N, "metric": metric}, **fields)


class PeerRunsThatFailedGiveNoRatio(unittest.TestCase):
    def kinds(self, peer_lines):
        out = ratios(OURS + peer_lines)
        return {(l["what"], l["peer"]): l for l in out if l["bench"] in ("ratio", "ratio_withheld")}

    def test_sound_runs_are_compared(self):
        got = self.kinds([peer("pouchdb", "push", docs=N, docs_per_s=2000, ok=True, server_doc_count=N),
                          peer("hypercore", "pull", docs=N, docs_per_s=5000, ok=True, b_contiguous_length=N)])
        self.assertEqual(got[("push", "pouchdb")]["bench"], "ratio")
        self.assertEqual(got[("push", "pouchdb")]["ratio"], 25.0)
        self.assertEqual(got[("pull", "hypercore")]["ratio"], 12.0)

    def test_failed_or_short_runs_are_withheld_with_the_reason(self):
        cases = [
            (peer("pouchdb", "push", docs=N, docs_per_s=2000, ok=False, server_doc_count=N),
             ("push", "pouchdb"), "ok false"),
            (peer("pouchdb", "pull", docs=990, docs_per_s=2000, ok=True, b_doc_count=990),
             ("pull", "pouchdb"), "990 < n 1000"),
            (peer("hypercore", "pull", docs=N, docs_per_s=5000, b_contiguous_length=10),
             ("pull", "hypercore"), "b_contiguous_length 10"),
            (peer("pouchdb", "write", docs=N, docs_per_s=3000, errors=2, a_doc_count=N),
             ("write", "pouchdb"), "errors 2"),
            (peer("hypercore", "live", samples=100, timeouts=3, median_ms=2.0, p99_ms=9.0),
             ("live_p50", "hypercore"), "timeouts 3"),
            (peer("pouchdb", "live", samples=0, median_ms=2.0, p99_ms=9.0),
             ("live_p99", "pouchdb"), "no live samples"),
        ]
        for line, key, reason in cases:
            with self.subTest(key=key, reason=reason):
                got = self.kinds([line])
                self.assertEqual(got[key]["bench"], "ratio_withheld", got[key])
                self.assertIn(reason, got[key]["reason"])
                self.assertNotIn("ratio", got[key])


if __name__ == "__main__":
    unittest.main()
