#!/usr/bin/env python3
"""recsyncd under the floods of issue 12, timed from a client that is not
flooding: /healthz and a normal `recsync sync` while one address floods.

    bench/floods.py [--build DIR] [--conns N] [--phase-s S] [--body-phase-s S]
                    [--recsyncd PATH] [--recsync PATH] [--bench-sync PATH] [-- recsyncd options...]

DIR (default $BENCH_BUILD_DIR or <repo>/build-bench, as bench/run.sh
builds it) holds bin/recsyncd, bin/recsync and bin/bench_sync.

Phases, each against the same fresh recsyncd (SQLite in a temporary
directory, 127.0.0.1 port 0, its own default options unless given after --):

  quiet     nothing else runs (the reference figures)
  trickle   127.0.0.2 opens --conns connections (default 10000, scaled down
            to what RLIMIT_NOFILE allows; the soft limit is raised to the hard
            one) and sends one header line on each every 15 s, never ending
            its request; a connection the server closes is opened again, at
            most 500 a second
  register  127.0.0.3 runs 100 connections at once, each POST
            /api/v1/register announcing and sending 30 MiB, again and again
  chunked   the same without Content-Length (Transfer-Encoding: chunked)
  after     the floods stopped (RSS given back?)

While each runs, from 127.0.0.1: GET /healthz on a new connection every
20 ms (healthz_p50, _p99, _max, _failed); back to back, a normal sync in
process (bench_sync steady: device A appends 10 records, untimed, pushes
them and device B pulls them, after the process's first sync: sync_p50,
_p99, _max) and a whole `recsync sync` process of a third device after
appending 10 records (cli_sync_p50, _max, and its CPU time
cli_sync_cpu_p50, which a loaded machine does not inflate); and recsyncd's
VmRSS every 100 ms (rss_peak, rss_end).

stdout: one JSON line per figure, like bench/run.sh:
  {"bench":"floods","phase":"trickle","what":"healthz_p99","n":10000,"value":3.1,"unit":"ms"}
then one {"bench":"floods","phase":...,"what":"server",...} line with recsyncd's
refusal counters from /metrics (when it has them). Progress goes to stderr.
Every process this script starts is killed by PID on exit, pass or fail.
"""

import argparse
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCS = []
MIB = 1 << 20


def log(msg):
    sys.stderr.write("[floods.py %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def emit(phase, what, n, value, unit):
    print(json.dumps({"bench": "floods", "phase": phase, "what": what, "n": n, "value": value, "unit": unit}),
          flush=True)


def kill_all():
    for p in PROCS:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def vm_rss_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class Server:
    def __init__(self, exe, workdir, extra):
        self.logpath = os.path.join(workdir, "recsyncd.log")
        self.log = open(self.logpath, "wb")
        cmd = [exe, "--db", os.path.join(workdir, "server.db"), "--listen", "127.0.0.1:0"] + extra
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        PROCS.append(self.proc)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("recsyncd listening on 127.0.0.1:"):
            raise SystemExit("recsyncd did not start: %r (log %s)" % (line, self.logpath))
        self.port = int(line.rsplit(":", 1)[1])
        self.url = "http://127.0.0.1:%d" % self.port
        self.pid = self.proc.pid

    def metrics(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=("127.0.0.1", 0))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
        except OSError:
            return {}
        out = {}
        for line in data.decode("utf-8", "replace").splitlines():
            if line.startswith("recsyncd_") and "{" not in line:
                name, _, value = line.partition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out


class Device:
    """One device of a registered user, driven through the recsync CLI."""

    def __init__(self, exe, workdir, url):
        self.exe = exe
        self.dir = os.path.join(workdir, "device")
        self.env = dict(os.environ, RECSYNC_PASSWORD="bench-floods-password")
        self.run("init")
        self.run("register", "--server", url, "--user", "floods-%d" % os.getpid())
        self.counter = 0

    def run(self, *args, input=b"", timeout=60):
        return subprocess.run([self.exe, "--dir", self.dir] + list(args), input=input, capture_output=True,
                              timeout=timeout, env=self.env)

    def sync_once(self):
        """Appends 10 records (untimed), then times `recsync sync`: (wall ms, CPU ms, ok).
        CPU is user + system of the process: what a loaded machine does not inflate."""
        lines = "".join("floods record %d\n" % (self.counter + i) for i in range(10)).encode()
        self.counter += 10
        self.run("append", "bench", "--lines", input=lines)
        t0 = time.monotonic()
        p = subprocess.Popen([self.exe, "--dir", self.dir, "sync"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        PROCS.append(p)
        # Not reaped until wait4 returns, so the PID is still this child's when the timer fires.
        timer = threading.Timer(30, os.kill, (p.pid, signal.SIGKILL))
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        PROCS.remove(p)
        wall = (time.monotonic() - t0) * 1e3
        return wall, (ru.ru_utime + ru.ru_stime) * 1e3, p.returncode == 0


class Pair:
    """Devices A and B of one user, synced in-process by bench_sync (no CLI
    start-up in the figure): A appends 10 records (untimed), pushes them,
    B pulls them (bench_sync's "incr", after its no-op syncs warmed it up)."""

    def __init__(self, exe, workdir, url):
        self.exe = exe
        self.a, self.b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
        self.n = 1000
        for args in (["write", url, "floods-pair-%d" % os.getpid(), self.a, "1000"], ["push", self.a, "1000"],
                     ["pull", url, "floods-pair-%d" % os.getpid(), self.b, self.a, "1000"]):
            r = subprocess.run([exe] + args, capture_output=True, timeout=120)
            if r.returncode != 0:
                raise SystemExit("bench_sync %s failed: %s" % (args[0], r.stderr.decode()[-500:]))

    def sync_once(self):
        """bench_sync's figures ({"incr": ms, ...}), or None when the syncs failed."""
        try:
            r = subprocess.run([self.exe, "steady", self.a, self.b, str(self.n), "1", "10"], capture_output=True,
                               timeout=60)
        except subprocess.TimeoutExpired:
            return None
        self.n += 10
        if r.returncode != 0:
            return None
        out = {}
        for line in r.stdout.decode().splitlines():
            row = json.loads(line)
            out[row["what"]] = row["value"]
        return out


class Probe:
    """/healthz every 20 ms, syncs back to back (in-process and the CLI's),
    RSS every 100 ms, until stopped."""

    def __init__(self, server, device, pair):
        self.server = server
        self.device = device
        self.pair = pair
        self.stop = threading.Event()
        self.healthz, self.healthz_fail = [], 0
        self.syncs, self.sync_cpu, self.sync_fail = [], [], 0
        self.incr, self.pair_fail = [], 0
        self.rss = []

    def _healthz(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", self.server.port), timeout=10,
                                             source_address=("127.0.0.1", 0))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head = s.recv(64)
                s.close()
                if head.startswith(b"HTTP/1.1 200"):
                    self.healthz.append((time.monotonic() - t0) * 1e3)
                else:
                    self.healthz_fail += 1
            except OSError:
                self.healthz_fail += 1
            time.sleep(0.02)

    def _sync(self):
        while not self.stop.is_set():
            r = self.pair.sync_once()
            if r is not None and "incr" in r:
                self.incr.append(r["incr"])
            else:
                self.pair_fail += 1
            ms, cpu, ok = self.device.sync_once()
            if ok:
                self.syncs.append(ms)
                self.sync_cpu.append(cpu)
            else:
                self.sync_fail += 1
            self.stop.wait(0.1)

    def _rss(self):
        while not self.stop.is_set():
            v = vm_rss_mib(self.server.pid)
            if v is not None:
                self.rss.append(v)
            time.sleep(0.1)

    def __enter__(self):
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._healthz, self._sync, self._rss)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(40)

    def report(self, phase, n):
        r3 = lambda v: None if v is None else round(v, 3)
        emit(phase, "healthz_p50", n, r3(percentile(self.healthz, 0.5)), "ms")
        emit(phase, "healthz_p99", n, r3(percentile(self.healthz, 0.99)), "ms")
        emit(phase, "healthz_max", n, r3(max(self.healthz) if self.healthz else None), "ms")
        emit(phase, "healthz_ok", n, len(self.healthz), "requests")
        emit(phase, "healthz_failed", n, self.healthz_fail, "requests")
        emit(phase, "sync_p50", n, r3(percentile(self.incr, 0.5)), "ms")
        emit(phase, "sync_p99", n, r3(percentile(self.incr, 0.99)), "ms")
        emit(phase, "sync_max", n, r3(max(self.incr) if self.incr else None), "ms")
        emit(phase, "sync_ok", n, len(self.incr), "syncs")
        emit(phase, "sync_failed", n, self.pair_fail, "syncs")
        emit(phase, "cli_sync_p50", n, r3(percentile(self.syncs, 0.5)), "ms")
        emit(phase, "cli_sync_max", n, r3(max(self.syncs) if self.syncs else None), "ms")
        emit(phase, "cli_sync_cpu_p50", n, r3(percentile(self.sync_cpu, 0.5)), "ms")
        emit(phase, "cli_sync_ok", n, len(self.syncs), "syncs")
        emit(phase, "cli_sync_failed", n, self.sync_fail, "syncs")
        emit(phase, "rss_peak", n, r3(max(self.rss) if self.rss else None), "MiB")
        emit(phase, "rss_end", n, r3(self.rss[-1] if self.rss else None), "MiB")


def server_counters(server, phase, n):
    m = server.metrics()
    keep = ["recsyncd_connections", "recsyncd_connections_refused_total", "recsyncd_requests_cut_total",
            "recsyncd_bodies_refused_total", "recsyncd_bodies_busy_total", "recsyncd_body_bytes",
            "recsyncd_log_suppressed_total"]
    got = {k[len("recsyncd_"):]: int(m[k]) for k in keep if k in m}
    print(json.dumps({"bench": "floods", "phase": phase, "what": "server", "n": n, "value": got}), flush=True)


class Trickle:
    """`conns` connections from `source`, each sending a header line every
    `every` s and never finishing its request; reopened when closed."""

    def __init__(self, port, source, conns, every=15.0, reopen_per_s=500):
        self.port, self.source, self.conns, self.every = port, source, conns, every
        self.reopen_per_s = reopen_per_s
        self.stop = threading.Event()
        self.open_samples = []
        self.opened = 0
        self.closed_by_server = 0

    def _open(self, sel):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((self.source, 0))
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return False
        sel.register(s, selectors.EVENT_READ, [time.monotonic(), False])
        self.opened += 1
        return True

    def run(self):
        sel = selectors.DefaultSelector()
        want = self.conns
        budget_t, budget = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now - budget_t >= 1.0:
                    budget_t, budget = now, 0
                # Top up to `conns` open, within the reopen rate (the first fill is not limited).
                while len(sel.get_map()) < want and (self.opened < self.conns or budget < self.reopen_per_s):
                    if not self._open(sel):
                        break
                    if self.opened > self.conns:
                        budget += 1
                for key, _ in sel.select(timeout=0.05):
                    try:
                        data = key.fileobj.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        self.closed_by_server += 1
                now = time.monotonic()
                for key in list(sel.get_map().values()):
                    state = key.data
                    if now - state[0] >= (0 if not state[1] else self.every):
                        msg = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if not state[1] else b"X-Slow: 1\r\n"
                        try:
                            key.fileobj.send(msg)
                            state[0], state[1] = now, True
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError as e:
                            if e.errno == errno.ENOTCONN:  # still connecting
                                continue
                            sel.unregister(key.fileobj)
                            key.fileobj.close()
                            self.closed_by_server += 1
                self.open_samples.append(len(sel.get_map()))
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            sel.close()


def register_flood(port, source, conns, chunked, stop):
    """`conns` threads, each POSTing 30 MiB register bodies from `source` until `stop`."""
    statuses = {}
    lock = threading.Lock()
    piece = b"x" * MIB
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"

    def one():
        while not stop.is_set():
            status = "error"
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((source, 0))
                s.settimeout(30)
                s.connect(("127.0.0.1", port))
                head = b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                try:
                    if chunked:
                        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
                        for _ in range(30):
                            s.sendall(frame)
                        s.sendall(b"0\r\n\r\n")
                    else:
                        s.sendall(head + b"Content-Length: %d\r\n\r\n" % (30 * MIB))
                        for _ in range(30):
                            s.sendall(piece)
                except OSError:
                    pass
                try:
                    data = s.recv(64)
                    status = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
                except OSError:
                    status = "reset"
                s.close()
            except OSError:
                status = "connect_failed"
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
            stop.wait(0.1)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    return threads, statuses


def flood_child(kind, port, conns, seconds):
    """Runs one flood in this (child) process for `seconds`; prints its summary as JSON."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if kind == "trickle":
        t = Trickle(port, "127.0.0.2", conns)
        th = threading.Thread(target=t.run, daemon=True)
        th.start()
        time.sleep(seconds)
        t.stop.set()
        th.join(30)
        out = {"open_median": percentile(t.open_samples, 0.5), "closed_by_server": t.closed_by_server}
    else:
        stop = threading.Event()
        threads, statuses = register_flood(port, "127.0.0.3", conns, kind == "chunked", stop)
        time.sleep(seconds)
        stop.set()
        for th in threads:
            th.join(60)
        out = {"answers": statuses}
    print(json.dumps(out), flush=True)


class Flood:
    """A flood in a child process of its own (so its threads do not slow the
    probe's), started now and stopped (by PID) at the latest when left."""

    def __init__(self, kind, port, conns, seconds):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--flood", kind, "--port",
                                      str(port), "--conns", str(conns), "--phase-s", str(seconds)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        PROCS.append(self.proc)

    def result(self, timeout):
        try:
            out, _ = self.proc.communicate(timeout=timeout)
            return json.loads(out.decode() or "{}")
        except (subprocess.TimeoutExpired, ValueError):
            return {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("BENCH_BUILD_DIR", os.path.join(REPO, "build-bench")))
    ap.add_argument("--recsyncd")
    ap.add_argument("--recsync")
    ap.add_argument("--bench-sync")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--phase-s", type=float, default=40.0, help="length of the trickle phase (default 40)")
    ap.add_argument("--body-phase-s", type=float, default=15.0, help="length of each body flood (default 15)")
    ap.add_argument("--flood", choices=["trickle", "register", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("server_args", nargs="*")
    a = ap.parse_args()
    if a.flood:
        return flood_child(a.flood, a.port, a.conns, a.phase_s)
    recsyncd = a.recsyncd or os.path.join(a.build, "bin", "recsyncd")
    recsync = a.recsync or os.path.join(a.build, "bin", "recsync")
    bench_sync = a.bench_sync or os.path.join(a.build, "bin", "bench_sync")
    for exe in (recsyncd, recsync, bench_sync):
        if not os.access(exe, os.X_OK):
            raise SystemExit("missing %s (build it: cmake -S . -B %s -DCMAKE_BUILD_TYPE=Release && "
                             "cmake --build %s)" % (exe, a.build, a.build))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = min(a.conns, hard - 500)
    if conns < a.conns:
        log("RLIMIT_NOFILE hard limit %d: the trickle flood uses %d connections" % (hard, conns))
    work = tempfile.mkdtemp(prefix="recsync-floods-")
    try:
        server = Server(recsyncd, work, a.server_args)
        log("recsyncd pid %d on %s (%s)" % (server.pid, server.url, " ".join(a.server_args) or "default options"))
        device = Device(recsync, work, server.url)
        if not device.sync_once()[2]:
            raise SystemExit("the first recsync sync failed")
        pair = Pair(bench_sync, work, server.url)
        log("load average before the run: %s on %d cores" % (open("/proc/loadavg").read().split()[:3], os.cpu_count()))

        log("quiet: 10 s")
        with Probe(server, device, pair) as p:
            time.sleep(10)
        p.report("quiet", 0)

        log("trickle: %d connections from 127.0.0.2, a header line each every 15 s, for %.0f s" % (conns, a.phase_s))
        f = Flood("trickle", server.port, conns, a.phase_s + 3)
        time.sleep(3)
        with Probe(server, device, pair) as p:
            time.sleep(a.phase_s)
        r = f.result(60)
        p.report("trickle", conns)
        emit("trickle", "attacker_open_median", conns, r.get("open_median"), "connections")
        emit("trickle", "attacker_closed_by_server", conns, r.get("closed_by_server"), "connections")
        server_counters(server, "trickle", conns)

        for phase, chunked in (("register", False), ("chunked", True)):
            log("%s: 100 connections from 127.0.0.3, POST /api/v1/register of 30 MiB %s, for %.0f s"
                % (phase, "chunked" if chunked else "announced", a.body_phase_s))
            f = Flood(phase, server.port, 100, a.body_phase_s + 1)
            time.sleep(1)
            with Probe(server, device, pair) as p:
                time.sleep(a.body_phase_s)
            r = f.result(90)
            p.report(phase, 100)
            print(json.dumps({"bench": "floods", "phase": phase, "what": "answers", "n": 100,
                              "value": r.get("answers")}), flush=True)
            server_counters(server, phase, 100)

        log("after: 5 s with the floods stopped")
        with Probe(server, device, pair) as p:
            time.sleep(5)
        p.report("after", 0)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        with open(server.logpath, "rb") as f:
            lines = f.read().count(b"\n")
        emit("all", "server_log_lines", 0, lines, "lines")
    finally:
        kill_all()
        shutil.rmtree(work, True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
