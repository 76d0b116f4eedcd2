"""Integration-test harness for recsync (standard library only).

What it gives a test (a unittest.TestCase):

* Binaries: ``recsyncd_bin()`` / ``recsync_bin()`` from $RECSYNCD_BIN /
  $RECSYNC_BIN (CTest sets both), else <repo>/build/bin/.
* Databases: ``make_database(test)`` returns a fresh, empty database for
  the backend named by $RS_TEST_BACKEND (default ``sqlite``). A backend is a
  class with ``url`` (what ``recsyncd --db`` takes) and ``writing()`` (is a
  write transaction open in it now) registered in ``DATABASES``; a PostgreSQL one (a real server in a temporary directory)
  is added there by ``register_database('postgres', cls)``.
* ``ServerProcess(test, ...)``: the real recsyncd on 127.0.0.1, port 0 by
  default. It reads the ``recsyncd listening on 127.0.0.1:<port>`` line
  with a bounded timeout, waits for ``/healthz``, and is stopped by PID in
  a cleanup registered with ``test.addCleanup``, pass or fail (SIGTERM,
  then SIGKILL after a bound; a non-zero exit on SIGTERM, such as a
  sanitizer report, fails the test). ``kill()`` SIGKILLs it,
  ``start()`` starts it again on the same database (and, by default, the
  same port).
* ``Client``: a keep-alive HTTP/JSON client with timeouts; ``Response``
  has ``status``, ``headers``, ``body`` and ``json``.
* ``Account``: a registered user with one device (host id and token).
* ``SSEReader``: an event stream over a raw socket with bounded reads
  (``next_event(timeout)``), chunked transfer decoding, heartbeat counting.
* ``@no_server``: a test class that starts no recsyncd runs on SQLite only
  (skipped, and reported so, in the PostgreSQL repeat of its module).
* Records for raw-HTTP tests: ``make_record`` / ``make_records`` craft
  records whose ``data`` is random bytes behind the envelope magic.

Every wait in here has a deadline; nothing blocks forever.
"""

import base64
import fcntl
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import sqlite3
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

ENVELOPE_MAGIC = b"RSE2"  # format 2: the sealed plaintext starts with the chain's previous head
ENVELOPE_OVERHEAD = 4 + 8 + 24 + 32 + 16 + 24 + 16
CHAIN_BYTES = 32
DEFAULT_MAX_PAYLOAD = 1024 * 1024

# RS_TEST_TIME_SCALE (default 1) multiplies the bounds on how long a step
# may take (hang detectors, and the few "one transaction, not 100k" speed
# bounds) for builds that run slower: tests/CMakeLists.txt sets it for a
# ThreadSanitizer build (5-15x slower CPU-bound work than ASan).
TIME_SCALE = float(os.environ.get("RS_TEST_TIME_SCALE", "1"))
START_TIMEOUT = 20.0 * TIME_SCALE  # seconds to print the port line and answer /healthz
STOP_TIMEOUT = 15.0 * TIME_SCALE  # seconds to exit after SIGTERM before SIGKILL
HTTP_TIMEOUT = 30.0 * TIME_SCALE


def recsyncd_bin():
    """Path of the recsyncd binary under test."""
    return os.environ.get("RECSYNCD_BIN") or os.path.join(REPO, "build", "bin", "recsyncd")


def recsync_bin():
    """Path of the recsync CLI under test."""
    return os.environ.get("RECSYNC_BIN") or os.path.join(REPO, "build", "bin", "recsync")


def backend_name():
    return os.environ.get("RS_TEST_BACKEND", "sqlite")


def no_server(cls):
    """Class decorator for a test class that starts no recsyncd (client-only
    checks in a module that also has server tests). The PostgreSQL repeat of
    the module (tests/CMakeLists.txt) would run the same client code against
    nothing that differs, so there its tests are skipped, and reported as
    skipped; they run in the module's SQLite runs (ASan and TSan)."""
    if backend_name() == "postgres":
        return unittest.skip("starts no recsyncd: runs in the SQLite run of this module")(cls)
    return cls


def make_tempdir(test, prefix="recsync-test-"):
    """A temporary directory removed when the test ends."""
    path = tempfile.mkdtemp(prefix=prefix)
    test.addCleanup(shutil.rmtree, path, True)
    return path


# ---- databases --------------------------------------------------------------


class SqliteDatabase:
    """A SQLite file in a temporary directory; ``url`` is its path."""

    name = "sqlite"

    def __init__(self, test):
        self.dir = make_tempdir(test, "recsyncd-db-")
        self.url = os.path.join(self.dir, "server.db")

    # SQLite's WAL write lock: byte 120 of the -shm file, a POSIX lock.
    WAL_WRITE_LOCK = 120
    FLOCK = "hhqqi4x"  # struct flock on Linux x86_64 and aarch64

    def writing(self):
        """True when a write transaction (or a checkpoint) holds the
        database's write lock now. Asks with F_GETLK, so it never takes
        the lock or delays the writer."""
        try:
            fd = os.open(self.url + "-shm", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            ask = struct.pack(self.FLOCK, fcntl.F_WRLCK, os.SEEK_SET, self.WAL_WRITE_LOCK, 1, 0)
            return struct.unpack(self.FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, ask))[0] != fcntl.F_UNLCK
        finally:
            os.close(fd)


DATABASES = {"sqlite": SqliteDatabase}


def register_database(name, cls):
    """Adds a backend: ``cls(test)`` must make a fresh, empty database with
    a ``url`` for ``recsyncd --db`` and clean it up through test.addCleanup."""
    DATABASES[name] = cls


class PostgresCluster:
    """A real PostgreSQL server in a temporary directory, one per test
    process (so one per test module), listening only on a Unix socket in
    that directory. Started lazily by the first PostgresDatabase; stopped
    (pg_ctl stop, then SIGKILL of the postmaster by PID) and removed at
    interpreter exit, pass or fail. The binaries run as the ``postgres``
    system user when the tests run as root (initdb refuses root)."""

    _instance = None
    START_TIMEOUT = 60

    def __init__(self):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise unittest.SkipTest("PostgreSQL binaries (initdb, pg_ctl) not found")
        self.dir = tempfile.mkdtemp(prefix="rs-pg-")
        self.datadir = os.path.join(self.dir, "data")
        self.logpath = os.path.join(self.dir, "postgres.log")
        self.pid = None
        self.counter = 0
        self.runas = []
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.runas = ["runuser", "-u", "postgres", "--"]
        import atexit
        atexit.register(self.destroy)
        # SIGTERM (ctest's timeout, a CI cancel) runs the exit handlers too.
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(self.destroy() or 143))
        self._init_datadir()
        self.start()

    def _init_datadir(self):
        """initdb once per machine and PostgreSQL version (a template kept in
        the temp directory, made under a temporary name and renamed into
        place so parallel test processes never see half of one), then a
        copy of it per cluster: initdb costs seconds, a copy milliseconds."""
        version = os.path.basename(os.path.dirname(self.bindir))
        template = os.path.join(tempfile.gettempdir(), "recsync-pg-template-%d-%s" % (os.geteuid(), version))
        if not os.path.exists(os.path.join(template, "PG_VERSION")):
            work = tempfile.mkdtemp(prefix="recsync-pg-template-")
            if self.runas:
                import pwd
                pw = pwd.getpwnam("postgres")
                os.chown(work, pw.pw_uid, pw.pw_gid)
            self._run([os.path.join(self.bindir, "initdb"), "-D", os.path.join(work, "data"), "-A", "trust",
                       "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"], timeout=120)
            try:
                os.rename(os.path.join(work, "data"), template)
            except OSError:
                pass  # another process made it first
            shutil.rmtree(work, True)
        self._run(["cp", "-a", template, self.datadir], timeout=120)

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _run(self, cmd, timeout=60, check=True):
        p = subprocess.run(self.runas + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError("%s failed (%d): %s\nlog:\n%s" % (cmd[0], p.returncode,
                                 p.stdout.decode("utf-8", "replace"), self.log()))
        return p

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read()[-5000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def start(self):
        """Starts the server (again) and waits until it accepts connections."""
        opts = ("-k %s -c listen_addresses='' -c fsync=off -c full_page_writes=off "
                "-c max_connections=400 -c shared_buffers=32MB" % self.dir)
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logpath, "-w",
                   "-t", str(self.START_TIMEOUT), "-o", opts, "start"], timeout=self.START_TIMEOUT + 10)
        with open(os.path.join(self.datadir, "postmaster.pid")) as f:
            self.pid = int(f.readline().strip())

    def stop(self, mode="fast"):
        """Stops the server (pg_ctl stop -m MODE), SIGKILL by PID past the bound."""
        if self.pid is None:
            return
        try:
            self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "-t", "30",
                       "stop"], timeout=40, check=False)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.kill(self.pid, 0)
            os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.2)
        except ProcessLookupError:
            pass
        self.pid = None

    def destroy(self):
        self._psql_close()
        self.stop("immediate")
        shutil.rmtree(self.dir, True)

    def psql(self, sql):
        """Runs `sql` in database postgres through one long-lived psql
        session (spawning psql per statement costs more than the statement);
        returns its output. A session lost to a server restart is replaced
        once."""
        for attempt in (0, 1):
            try:
                return self._psql_once(sql)
            except (BrokenPipeError, EOFError, OSError):
                self._psql_close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    _psql_proc = None

    def _psql_once(self, sql):
        if self._psql_proc is None or self._psql_proc.poll() is not None:
            self._psql_proc = subprocess.Popen(
                [os.path.join(self.bindir, "psql"), "-X", "-q", "-At", "-h", self.dir, "-U", "postgres",
                 "-d", "postgres"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        marker = "__rs_done_%s__" % secrets.token_hex(4)
        self._psql_proc.stdin.write(("%s;\n\\echo %s\n" % (sql, marker)).encode())
        self._psql_proc.stdin.flush()
        out = b""
        fd = self._psql_proc.stdout.fileno()
        deadline = time.monotonic() + 60
        while marker.encode() + b"\n" not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                self._psql_close()
                raise AssertionError("psql did not answer %r in time: %r" % (sql, out))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("psql exited: %r" % out)
                out += chunk
        text = out.decode("utf-8", "replace").replace(marker + "\n", "")
        if "ERROR:" in text or "FATAL:" in text or "server closed" in text:
            if "server closed" in text or "FATAL:" in text:
                raise EOFError(text)
            raise AssertionError("psql %r failed: %s" % (sql, text))
        return text

    def _psql_close(self):
        if self._psql_proc is not None:
            if self._psql_proc.poll() is None:
                self._psql_proc.kill()
            self._psql_proc.wait(timeout=10)
            self._psql_proc.stdin.close()
            self._psql_proc.stdout.close()
            self._psql_proc = None

    def url(self, dbname):
        return "postgres:///%s?host=%s&user=postgres" % (dbname, self.dir)


def pg_bindir():
    """The newest /usr/lib/postgresql/<v>/bin with initdb, or $RS_PG_BIN."""
    env = os.environ.get("RS_PG_BIN")
    if env:
        return env if os.path.exists(os.path.join(env, "initdb")) else None
    import glob
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


class PostgresDatabase:
    """A fresh, empty database in this process's PostgresCluster; ``url`` is its postgres:// URL; ``cluster`` stops
    and starts the server (for outage tests)."""

    name = "postgres"

    def __init__(self, test):
        self.cluster = PostgresCluster.get()
        self.cluster.counter += 1
        self.dbname = "rs_%d_%d" % (os.getpid(), self.cluster.counter)
        # FILE_COPY: a copy of the template's files, faster than WAL-logging
        # every block. Databases are not dropped: the cluster goes at exit.
        self.cluster.psql("CREATE DATABASE %s STRATEGY FILE_COPY" % self.dbname)
        self.url = self.cluster.url(self.dbname)

    def writing(self):
        """True when a transaction on this database has written rows it has
        not committed yet (a backend with a transaction id)."""
        n = self.cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' "
                              "AND backend_xid IS NOT NULL" % self.dbname)
        return n.strip() != "0"


register_database("postgres", PostgresDatabase)


def make_database(test):
    """A fresh database for the backend named by $RS_TEST_BACKEND."""
    name = backend_name()
    if name not in DATABASES:
        raise unittest.SkipTest("RS_TEST_BACKEND=%s: no such backend in harness.py" % name)
    return DATABASES[name](test)


# ---- HTTP -------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict, lower-case names
        self.body = body

    @property
    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:300])


class Client:
    """HTTP/1.1 keep-alive client for one server, with a timeout on every call.

    ``token`` (if given) is sent as ``Authorization: Token <token>``.
    Bodies: dict/list are sent as JSON, str/bytes as they are."""

    def __init__(self, port, host="127.0.0.1", token=None, timeout=HTTP_TIMEOUT):
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, token=None, headers=None):
        hdrs = {}
        tok = token if token is not None else self.token
        if tok:
            hdrs["Authorization"] = "Token " + tok
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode()
        if headers:
            hdrs.update(headers)
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed; retry once on a new one.
                self.close()
                if attempt:
                    raise
                continue
            out = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
            if r.will_close:
                self.close()
            return out
        raise AssertionError("unreachable")

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)


# ---- the server -------------------------------------------------------------


class ServerProcess:
    """The real recsyncd, started on 127.0.0.1 with a database of its own.

    ``args`` are extra command-line options. ``fast`` adds --argon2-fast,
    ``hooks`` adds --test-hooks. ``register_rate`` (default "off": tests make
    many accounts from 127.0.0.1) sets --register-rate unless ``args`` do;
    None keeps the server's default. The process is stopped in a cleanup."""

    def __init__(self, test, args=(), db=None, port=0, fast=True, hooks=False, start=True,
                 register_rate="off"):
        self.test = test
        self.db = db if db is not None else make_database(test)
        self.args = list(args)
        if register_rate is not None and "--register-rate" not in self.args:
            self.args += ["--register-rate", register_rate]
        if fast:
            self.args.append("--argon2-fast")
        if hooks:
            self.args.append("--test-hooks")
        self.port = port
        self.proc = None
        self.logdir = make_tempdir(test, "recsyncd-log-")
        self.starts = 0
        test.addCleanup(self._cleanup)
        if start:
            self.start()

    # -- lifecycle --

    def start(self, port=None):
        """Starts recsyncd (again) on the same database; port None reuses
        the last port bound (0 the first time)."""
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError("recsyncd is already running (pid %d)" % self.proc.pid)
        listen_port = self.port if port is None else port
        self.starts += 1
        self.logpath = os.path.join(self.logdir, "recsyncd.%d.log" % self.starts)
        cmd = [recsyncd_bin(), "--db", self.db.url, "--listen", "127.0.0.1:%d" % listen_port]
        cmd += self.args
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        self.port = self._read_port(time.monotonic() + START_TIMEOUT)
        self._wait_healthy(time.monotonic() + START_TIMEOUT)
        return self

    def _read_port(self, deadline):
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError("recsyncd printed no port line in time; log:\n" + self.log())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                rc = self.proc.wait(timeout=5)
                raise AssertionError("recsyncd exited (%s) before listening; log:\n%s" % (rc, self.log()))
            buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        prefix = "recsyncd listening on 127.0.0.1:"
        if not line.startswith(prefix):
            self.kill()
            raise AssertionError("unexpected first line from recsyncd: %r" % line)
        return int(line[len(prefix):])

    def _wait_healthy(self, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                c = Client(self.port, timeout=2)
                r = c.get("/healthz")
                c.close()
                if r.status == 200:
                    return
                last = r
            except OSError as e:
                last = e
            time.sleep(0.02)
        self.kill()
        raise AssertionError("recsyncd /healthz did not answer 200 in time (%r); log:\n%s" % (last, self.log()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Sends `sig` (SIGKILL by default) to the process by PID and reaps it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_pipe()
        return self.proc.returncode

    def stop(self):
        """SIGTERM and wait (SIGKILL past the bound); returns the exit status."""
        return self.kill(signal.SIGTERM)

    def _close_pipe(self):
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
            self.proc.stdout = None

    def _cleanup(self):
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self._close_pipe()
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
            self._close_pipe()
            raise AssertionError("recsyncd did not exit within %ss of SIGTERM; log:\n%s" % (STOP_TIMEOUT, self.log()))
        self._close_pipe()
        if rc != 0:
            raise AssertionError("recsyncd exited with %d on SIGTERM; log:\n%s" % (rc, self.log()))

    def log(self):
        """recsyncd's stderr of the latest start (tail)."""
        try:
            with open(self.logpath, "rb") as f:
                return f.read()[-20000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    # -- talking to it --

    def blob(self, uuid_text):
        """A UUID as a blob literal of this server's SQL (for sql())."""
        h = uuid_text.replace("-", "")
        return "x'%s'" % h if self.db.name == "sqlite" else "'\\x%s'::bytea" % h

    def sql(self, *stmts):
        """Runs statements on the server's own database in one transaction, as a
        server operator (or attacker) editing it would: tamper tests."""
        if self.db.name == "sqlite":
            con = sqlite3.connect(self.db.url, timeout=30)
            try:
                for st in stmts:
                    con.execute(st)
                con.commit()
            finally:
                con.close()
            return
        psql = os.path.join(pg_bindir(), "psql")
        out = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                              self.db.url.replace("postgres:///", "postgresql:///"),
                              "-c", "BEGIN; " + "; ".join(stmts) + "; COMMIT"],
                             capture_output=True, timeout=60)
        self.test.assertEqual(out.returncode, 0, out.stderr)

    def client(self, token=None, timeout=HTTP_TIMEOUT):
        c = Client(self.port, token=token, timeout=timeout)
        self.test.addCleanup(c.close)
        return c

    def register(self, username=None, password=None, host=None):
        """Registers a user with one device; asserts 201; returns an Account."""
        acct = Account(self, username or "user-" + secrets.token_hex(4), password or "pw-" + secrets.token_hex(8),
                       host or new_host())
        r = self.client().post("/api/v1/register", acct.credentials())
        self.test.assertEqual(r.status, 201, r)
        acct.token = r.json["token"]
        return acct

    def metrics(self):
        r = self.client().get("/metrics")
        self.test.assertEqual(r.status, 200, r)
        return r.body.decode()

    def sse(self, token, **kw):
        reader = SSEReader(self.port, token, **kw)
        self.test.addCleanup(reader.close)
        return reader


class Account:
    """A user and one of its devices (host id) with that device's token."""

    def __init__(self, server, username, password, host, token=None):
        self.server = server
        self.username = username
        self.password = password
        self.host = host
        self.token = token

    def credentials(self, host=None):
        return {"username": self.username, "password": self.password, "host": host or self.host}

    def login(self, host=None):
        """Logs in (as a second device when `host` differs); asserts 200; returns an Account."""
        h = host or self.host
        r = self.server.client().post("/api/v1/login", self.credentials(h))
        self.server.test.assertEqual(r.status, 200, r)
        return Account(self.server, self.username, self.password, h, r.json["token"])

    def client(self):
        return self.server.client(token=self.token)

    def index(self):
        r = self.client().get("/api/v1/index")
        self.server.test.assertEqual(r.status, 200, r)
        return r.json

    def shard_end(self, tag, host=None):
        for s in self.index()["shards"]:
            if s["host"] == (host or self.host) and s["tag"] == tag:
                return s["end"]
        return 0

    def upload(self, records, **kw):
        return self.client().post("/api/v1/records", {"records": records}, **kw)

    def page(self, host, tag, start=None, limit=None):
        q = "/api/v1/records?host=%s&tag=%s" % (host, tag)
        if start is not None:
            q += "&start=%d" % start
        if limit is not None:
            q += "&limit=%d" % limit
        return self.client().get(q)


# ---- records ----------------------------------------------------------------


def new_host():
    """A random host id (canonical UUID text)."""
    return str(uuid.uuid4())


def new_record_id():
    """A UUIDv7-shaped record id."""
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


def make_envelope(payload_size=64):
    """Random bytes shaped like a sealed (format 2) envelope of a `payload_size` payload."""
    return ENVELOPE_MAGIC + os.urandom(ENVELOPE_OVERHEAD - len(ENVELOPE_MAGIC) + CHAIN_BYTES +
                                       payload_size)


_hlc_last = [0]


def next_hlc():
    """A strictly increasing clock text (16 hex digits)."""
    h = max(int(time.time() * 1000) << 16, _hlc_last[0] + 1)
    _hlc_last[0] = h
    return "%016x" % h


def make_record(host, tag, idx, payload_size=64, version=1, envelope=None):
    """One record as the wire carries it."""
    env = envelope if envelope is not None else make_envelope(payload_size)
    return {
        "id": new_record_id(),
        "host": host,
        "tag": tag,
        "idx": idx,
        "hlc": next_hlc(),
        "version": version,
        "data": base64.b64encode(env).decode(),
    }


def make_records(host, tag, start, count, payload_size=64):
    return [make_record(host, tag, start + i, payload_size) for i in range(count)]


# ---- event streams ----------------------------------------------------------


class Event:
    def __init__(self, id, event, data):
        self.id = id
        self.event = event
        self.data = data

    @property
    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return "<Event id=%r %s %s>" % (self.id, self.event, self.data)


class SSEReader:
    """GET /api/v1/events over a raw socket, read with deadlines.

    After construction ``status`` and ``headers`` are set; a non-200
    answer's body is in ``body`` (and ``json``). ``next_event(timeout)``
    returns the next Event, or None when nothing came in time; raises
    EOFError when the server ended the stream. Comment lines (heartbeats)
    are counted in ``comments``."""

    def __init__(self, port, token, last_event_id=None, after=None, host="127.0.0.1", timeout=10.0):
        path = "/api/v1/events"
        if after is not None:
            path += "?after=%d" % after
        self.sock = socket.create_connection((host, port), timeout=timeout)
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Accept: text/event-stream"]
        if token:
            lines.append("Authorization: Token " + token)
        if last_event_id is not None:
            lines.append("Last-Event-ID: %s" % last_event_id)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw = b""
        self.data = b""
        self.eof = False
        self.comments = 0
        self.retry = None
        self.body = b""
        self._read_head(time.monotonic() + timeout)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.raw += chunk
        return True

    def _read_head(self, deadline):
        while b"\r\n\r\n" not in self.raw:
            if not self._recv(deadline):
                raise AssertionError("no HTTP response head from the event stream in time (eof=%s)" % self.eof)
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        if self.status != 200:
            n = int(self.headers.get("content-length", "0"))
            while len(self.raw) < n and self._recv(deadline):
                pass
            self.body = self.raw[:n]
            self.raw = self.raw[n:]

    @property
    def json(self):
        return json.loads(self.body.decode())

    def _decode(self):
        if not self.chunked:
            self.data += self.raw
            self.raw = b""
            return
        while True:
            end = self.raw.find(b"\r\n")
            if end < 0:
                return
            size = int(self.raw[:end].split(b";")[0], 16)
            if size == 0:
                self.eof = True
                self.raw = b""
                return
            if len(self.raw) < end + 2 + size + 2:
                return
            self.data += self.raw[end + 2:end + 2 + size]
            self.raw = self.raw[end + 2 + size + 2:]

    def _next_block(self, deadline):
        while True:
            self._decode()
            if b"\n\n" in self.data:
                block, self.data = self.data.split(b"\n\n", 1)
                return block.decode()
            if self.eof:
                raise EOFError("event stream ended")
            if not self._recv(deadline):
                if self.eof:
                    continue
                return None

    def _next_item(self, deadline):
        """The next block parsed: an Event, "comment" for a block of only
        comments (a heartbeat), or None at the deadline."""
        block = self._next_block(deadline)
        if block is None:
            return None
        ev_id, ev_type, data = None, "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                ev_id = int(value)
            elif field == "event":
                ev_type = value
            elif field == "data":
                data.append(value)
            elif field == "retry":
                self.retry = int(value)
        if data:
            return Event(ev_id, ev_type, "\n".join(data))
        return "comment"

    def next_event(self, timeout=10.0):
        """The next event (id, event, data), or None if none arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            item = self._next_item(deadline)
            if item is None or isinstance(item, Event):
                return item

    def events(self, count, timeout=10.0):
        """Exactly `count` events, failing if they do not all arrive within `timeout`."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < count:
            ev = self.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                raise AssertionError("got %d of %d events in %.1fs: %r" % (len(out), count, timeout, out))
            out.append(ev)
        return out

    def wait_comments(self, count, timeout=10.0):
        """Reads until `count` comment lines (heartbeats) have been seen in
        total; returns the events seen meanwhile."""
        deadline = time.monotonic() + timeout
        seen = []
        while self.comments < count:
            item = self._next_item(deadline)
            if item is None:
                raise AssertionError("saw %d of %d heartbeats in %.1fs" % (self.comments, count, timeout))
            if isinstance(item, Event):
                seen.append(item)
        return seen
