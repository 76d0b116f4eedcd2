#!/usr/bin/env python3
"""Ratios of recsync's figures to the peers' and checks against the targets.

Reads the JSON lines of one bench/run.sh run on stdin (recsync's own lines
and the PouchDB and Hypercore peers' lines) and prints, for the given N,
one line per comparable figure:

  {"bench":"ratio","what":"push","peer":"pouchdb","n":100000,"recsync":51000,
   "peer_value":2010,"unit":"records/s","ratio":25.37,"better":"higher"}

ratio is recsync / peer; "better" says which way is good for that figure.
A peer line that says its run went wrong (ok false, fewer documents or
blocks than N, write failures, live timeouts or mismatches, no samples)
gives no ratio; instead one line says which comparison was withheld and why:

  {"bench":"ratio_withheld","what":"pull","peer":"pouchdb","n":100000,
   "reason":"b_doc_count 99000 < n 100000"}

Then one {"bench":"target",...} line per target of DESIGN.md with "met".
Ratios and targets use the SQLite server's figures (recsyncd's default);
when the run also measured a PostgreSQL server, one line per figure sets
the two side by side (ratio is postgres / sqlite):

  {"bench":"backends","what":"push","n":100000,"unit":"records/s",
   "sqlite":131000,"postgres":98000,"ratio":0.748,"better":"higher"}

Usage: ratios.py N < results.jsonl
"""
import json
import sys

# (our what, peer, peer metric, peer field, unit, better)
COMPARE = [
    ("write", "pouchdb", "write", "docs_per_s", "records/s", "higher"),
    ("write", "hypercore", "write", "docs_per_s", "records/s", "higher"),
    ("push", "pouchdb", "push", "docs_per_s", "records/s", "higher"),
    ("pull", "pouchdb", "pull", "docs_per_s", "records/s", "higher"),
    ("pull", "hypercore", "pull", "docs_per_s", "records/s", "higher"),
    # PouchDB's no-op and incremental figures are A push + B pull, as ours.
    ("noop_push_pull", "pouchdb", "noop", "ms", "ms", "lower"),
    # Hypercore's no-op is one device (B) opening a connection and finding nothing.
    ("noop", "hypercore", "noop", "ms", "ms", "lower"),
    ("incr", "pouchdb", "incr", "ms", "ms", "lower"),
    ("incr", "hypercore", "incr", "ms", "ms", "lower"),
    ("live_p50", "pouchdb", "live", "median_ms", "ms", "lower"),
    ("live_p99", "pouchdb", "live", "p99_ms", "ms", "lower"),
    ("live_p50", "hypercore", "live", "median_ms", "ms", "lower"),
    ("live_p99", "hypercore", "live", "p99_ms", "ms", "lower"),
    # PouchDB's devices A and B share one process: its peak is of both.
    ("rss_client_pull", "pouchdb", "resources", "bench_max_rss_mb", "MiB", "lower"),
    ("rss_client_pull", "hypercore", "resources", "device_b_max_rss_mb", "MiB", "lower"),
    ("rss_client_push", "hypercore", "resources", "device_a_max_rss_mb", "MiB", "lower"),
    ("rss_server", "pouchdb", "resources", "server_peak_rss_mb", "MiB", "lower"),
]

# (our what, target, better) from DESIGN.md's Targets table.
TARGETS = [
    ("push", 50000, "higher"),
    ("pull", 50000, "higher"),
    ("noop", 5, "lower"),
    ("incr", 15, "lower"),
    ("live_p50", 2, "lower"),
    ("live_p99", 10, "lower"),
    ("index_rps", 20000, "higher"),
    ("rss_client_push", 64, "lower"),
    ("rss_client_pull", 64, "lower"),
]


# Peer fields that count what a run moved: each must reach N.
PEER_COUNTS = ["docs", "a_doc_count", "server_doc_count", "b_doc_count", "a_length", "b_length",
               "b_contiguous_length"]
# Peer fields that count what went wrong: each must be 0.
PEER_FAULTS = ["errors", "doc_write_failures", "timeouts", "content_mismatches"]


def peer_problem(obj, n):
    """Why a peer's line cannot be compared (a run that failed or fell
    short), or None when it can."""
    if obj.get("ok") is False:
        return "the peer's run reports ok false"
    if obj.get("content_sha256_ok") is False:
        return "the peer's pulled content does not match what was written"
    # incr moves its own batch, not N; its docs count is checked by its ok.
    for field in PEER_COUNTS if obj.get("metric") in ("write", "push", "pull") else []:
        v = obj.get(field)
        if isinstance(v, (int, float)) and v < n:
            return "%s %s < n %d" % (field, v, n)
    for field in PEER_FAULTS:
        v = obj.get(field)
        if isinstance(v, (int, float)) and v > 0:
            return "%s %s" % (field, v)
    if obj.get("metric") == "live" and not obj.get("samples"):
        return "no live samples"
    return None


# Figures measured on both backends, in the order they are printed.
BACKENDS = [
    ("push", "records/s", "higher"),
    ("pull", "records/s", "higher"),
    ("noop", "ms", "lower"),
    ("noop_push_pull", "ms", "lower"),
    ("incr", "ms", "lower"),
    ("index_rps", "requests/s", "higher"),
    ("rss_client_push", "MiB", "lower"),
    ("rss_client_pull", "MiB", "lower"),
    ("rss_server_sync", "MiB", "lower"),
    ("rss_server", "MiB", "lower"),
]


def main():
    n = int(sys.argv[1])
    ours = {}  # (what, n) -> value, SQLite server
    pg = {}  # (what, n) -> value, PostgreSQL server
    peers = {}  # (peer, metric) -> object, for this n
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        bench = obj.get("bench")
        if bench == "recsync" and "what" in obj:
            into = pg if obj.get("backend") == "postgres" else ours
            into[(obj["what"], obj.get("n"))] = obj["value"]
        elif bench in ("pouchdb", "hypercore") and obj.get("n") == n and "metric" in obj:
            peers[(bench, obj["metric"])] = obj

    # Live figures do not depend on N; take them whatever N they carry.
    for (what, size), value in list(ours.items()):
        if what.startswith("live_"):
            ours.setdefault((what, n), value)

    for what, peer, metric, field, unit, better in COMPARE:
        mine = ours.get((what, n))
        line = peers.get((peer, metric), {})
        theirs = line.get(field)
        if mine is None or not theirs:
            continue
        problem = peer_problem(line, n)
        if problem:
            print(json.dumps({"bench": "ratio_withheld", "what": what, "peer": peer, "n": n,
                              "reason": problem}, separators=(",", ":")))
            continue
        print(json.dumps({"bench": "ratio", "what": what, "peer": peer, "n": n,
                          "recsync": round(mine, 3), "peer_value": theirs, "unit": unit,
                          "ratio": round(mine / theirs, 3), "better": better},
                         separators=(",", ":")))

    for what, unit, better in BACKENDS:
        lite, post = ours.get((what, n)), pg.get((what, n))
        if lite is None or post is None:
            continue
        print(json.dumps({"bench": "backends", "what": what, "n": n, "unit": unit,
                          "sqlite": round(lite, 3), "postgres": round(post, 3),
                          "ratio": round(post / lite, 3) if lite else None, "better": better},
                         separators=(",", ":")))

    sizes = sorted({k[1] for k in ours})
    for what, target, better in TARGETS:
        for size in sizes:
            mine = ours.get((what, size))
            if mine is None or (what.startswith("live_") and size != n):
                continue
            met = mine >= target if better == "higher" else mine < target
            print(json.dumps({"bench": "target", "what": what, "n": size, "value": round(mine, 3),
                              "target": (">= " if better == "higher" else "< ") + str(target),
                              "met": met}, separators=(",", ":")))


if __name__ == "__main__":
    main()
