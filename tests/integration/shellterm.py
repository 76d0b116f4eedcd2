"""What the shell tests (test_shell_zsh, test_shell_bash, test_shell_fish)
share. Shell history as a person uses it: a real zsh, bash and fish in tmux,
each started with a clean rc that only evals `recsync init SHELL`, HOME in
a temporary directory. Commands typed there reach a second device through
the real recsyncd (background sync after every command) with their exit
status and duration; a leading space and RECSYNC_HISTIGNORE keep commands
out; Ctrl-R through fzf picks a command the other device ran and puts it on
the command line without running it; a command still running when its
shell is SIGKILLed stays recorded; a background sync that fails is shown by
`recsync status`, not in the terminal.

A shell that is not installed (scripts/deps.sh installs all three) is
reported skipped (CTest: the module is skipped, tests/CMakeLists.txt). Every wait polls with a deadline; the tmux server and
everything in it is killed by PID in a cleanup.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import unittest  # noqa: F401 (ShellHooks is a TestCase)

from device import Device, make_devices
from harness import ServerProcess, make_tempdir, recsync_bin

PROMPT = "RSPROMPT> "
WAIT = 20.0  # seconds for anything the test waits on


def wait_until(what, predicate, timeout=WAIT, step=0.1):
    """Polls predicate() until it returns something true; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_gone(pid):
    """Whether pid has exited (gone, or a zombie not reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def sessions_seen(rows, commands):
    """The one session id of `commands` in rows ({command: entry})."""
    (session,) = {rows[c]["session"] for c in commands}
    return session


class Tmux:
    """A private tmux server (its own socket, no config) in a temporary directory."""

    def __init__(self, test, root):
        self.test = test
        self.sock = os.path.join(root, "tmux.sock")
        self.server_pid = None
        test.addCleanup(self.stop)

    def run(self, *args, check=True):
        p = subprocess.run(["tmux", "-S", self.sock, "-f", "/dev/null"] + list(args),
                           capture_output=True, timeout=10)
        if check and p.returncode != 0:
            raise AssertionError("tmux %s: %r" % (" ".join(args), p.stderr))
        return p.stdout.decode("utf-8", "replace")

    def start(self, name, argv, env, cwd):
        cmd = ["env", "-i"] + ["%s=%s" % kv for kv in sorted(env.items())] + argv
        self.run("new-session", "-d", "-s", name, "-x", "160", "-y", "40", "-c", cwd, "--", *cmd)
        if self.server_pid is None:
            self.server_pid = int(self.run("display-message", "-p", "-t", name, "#{pid}").strip())

    def pane_pid(self, name):
        return int(self.run("display-message", "-p", "-t", name, "#{pane_pid}").strip())

    def type(self, name, text, enter=True):
        self.run("send-keys", "-t", name, "-l", text)
        if enter:
            self.run("send-keys", "-t", name, "Enter")

    def keys(self, name, *keys):
        self.run("send-keys", "-t", name, *keys)

    def screen(self, name):
        return self.run("capture-pane", "-p", "-J", "-t", name, "-S", "-200", check=False)

    def stop(self):
        if self.server_pid is not None:
            try:
                os.kill(self.server_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.server_pid = None


SHELLS = {
    "zsh": {"rc": ".zshrc", "argv": ["zsh", "-i"]},
    "bash": {"rc": ".bashrc", "argv": ["bash", "--noprofile", "--rcfile", "{rc}", "-i"]},
    "fish": {"rc": ".config/fish/config.fish", "argv": ["fish", "-i"]},
}


def rc_text(shell, recsync):
    if shell == "fish":
        return ("set -g fish_greeting ''\n"
                "function fish_prompt; echo -n '%s'; end\n"
                "%s init fish | source\n" % (PROMPT, recsync))
    prompt = "PROMPT='%s'" % PROMPT if shell == "zsh" else "PS1='%s'" % PROMPT
    return '%s\neval "$(%s init %s)"\n' % (prompt, recsync, shell)


class ShellHooks(unittest.TestCase):
    """Base class: a server, two devices, a private tmux; not run itself."""

    def setUp(self):
        self.server = ServerProcess(self)
        self.a, self.b = make_devices(self, self.server, 2, names=["shell", "other"])
        self.root = make_tempdir(self, "recsync-shell-")
        self.tmux = Tmux(self, self.root)
        if shutil.which("tmux") is None:
            self.skipTest("tmux is not installed")
        self.addCleanup(self.wait_for_background_sync)

    def wait_for_background_sync(self):
        """Lets a background sync the hooks started finish before the store goes (bounded)."""
        lock = os.path.join(self.a.dir, "shell-sync.lock")
        if os.path.exists(lock):
            subprocess.run(["flock", "-w", "20", lock, "true"], timeout=30)

    def start_shell(self, shell, extra_env=None, name=None):
        """Starts `shell` in tmux session `name` (default: the shell's name), HOME name-home."""
        if shutil.which(shell) is None:
            self.skipTest("%s is not installed" % shell)
        name = name or shell
        home = os.path.join(self.root, name + "-home")
        spec = SHELLS[shell]
        rc = os.path.join(home, spec["rc"])
        os.makedirs(os.path.dirname(rc), exist_ok=True)
        with open(rc, "w") as f:
            f.write(rc_text(shell, recsync_bin()))
        env = {
            "HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
            "LANG": "C.UTF-8", "RECSYNC_DIR": self.a.dir, "RECSYNC_SYNC_INTERVAL": "0",
            "RECSYNC_HISTIGNORE": "ignoreme*:*\\:secret",
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "ZDOTDIR": home, "SHELL": shutil.which(shell),
        }
        env.update(extra_env or {})
        argv = [a.replace("{rc}", rc) for a in spec["argv"]]
        self.tmux.start(name, argv, env, home)
        self.wait_prompt(name, 1)
        return name

    def prompts(self, name):
        return [l for l in self.tmux.screen(name).splitlines() if l.startswith(PROMPT)]

    def wait_prompt(self, name, count):
        wait_until("%s: %d prompts" % (name, count), lambda: len(self.prompts(name)) >= count)

    def run_commands(self, name, commands):
        """Types each command and waits for the prompt after it."""
        n = len(self.prompts(name))
        for c in commands:
            self.tmux.type(name, c)
            n += 1
            self.wait_prompt(name, n)

    def entries(self, device):
        r = device.run("history", "list", "--json")
        return [json.loads(l) for l in r.text.splitlines()]

    def synced_entries(self, device, want, finished=True):
        """Syncs `device` until every command in `want` is there (finished if asked)."""
        def check():
            device.sync()
            rows = {e["command"]: e for e in self.entries(device)}
            if all(w in rows and (not finished or rows[w]["exit"] >= 0) for w in want):
                return rows
            return None
        return wait_until("%s to receive %r" % (device.name, want), check, step=0.3)

    def typed_commands_reach_the_other_device(self, shell):
        tag = secrets.token_hex(3)
        name = self.start_shell(shell)
        hello, fail, slow = ("echo hello-%s-%s" % (shell, tag), "sh -c 'exit 3' %s" % tag,
                             "sleep 0.4 && : %s-%s" % (shell, tag))
        self.run_commands(name, [hello, fail, slow, " echo spaced-%s" % tag,
                                 "ignoreme-%s" % tag, "echo not:secret"])
        try:
            rows = self.synced_entries(self.b, [hello, fail, slow])
        except AssertionError as e:
            raise AssertionError("%s\nrecorded on %s: %r\nscreen:\n%s" % (
                e, self.a.name, [(r["command"], r["exit"]) for r in self.entries(self.a)],
                self.tmux.screen(name)))
        self.assertEqual(rows[hello]["exit"], 0)
        self.assertEqual(rows[fail]["exit"], 3)
        self.assertGreaterEqual(rows[slow]["duration"], 400)
        self.assertLess(rows[slow]["duration"], 10000)
        self.assertEqual(rows[slow]["cwd"], os.path.join(self.root, shell + "-home"))
        sessions = {rows[c]["session"] for c in (hello, fail, slow)}
        self.assertEqual(len(sessions), 1, sessions)
        self.assertNotEqual(sessions.pop(), "")
        for c in rows:
            self.assertNotIn("spaced-" + tag, c)
            self.assertFalse(c.startswith("ignoreme-"), c)
            self.assertNotEqual(c, "echo not:secret")
        # Nothing from the hook reached the terminal.
        self.assertNotIn("recsync", self.tmux.screen(name))
        # The hooks appended to the session's spool, which its agent read.
        spool = os.path.join(self.a.dir, "spool", sessions_seen(rows, (hello,)))
        self.assertTrue(os.path.exists(spool), spool)
        return name

    def agent_pid(self, name):
        """The pid of the shell's `recsync history agent`, as the shell knows it."""
        marker = "AGENT-" + secrets.token_hex(3)
        self.run_commands(name, ["echo %s=$__recsync_agent" % marker])
        found = re.findall(r"^%s=(\d+)$" % marker, self.tmux.screen(name), re.M)
        self.assertTrue(found, "the shell printed its agent's pid")
        return int(found[-1])

    def without_the_agent_hooks_fall_back_to_processes(self, name):
        """Kills the shell's agent: the next commands are recorded by processes the hooks start."""
        pid = self.agent_pid(name)
        os.kill(pid, signal.SIGTERM)
        wait_until("the agent to exit", lambda: process_gone(pid))
        command = "echo after-the-agent-%s && false" % secrets.token_hex(3)
        self.run_commands(name, [command])
        rows = wait_until("the command recorded without an agent", lambda: [
            e for e in self.entries(self.a) if e["command"] == command and e["exit"] >= 0])
        self.assertEqual(rows[0]["exit"], 1)

    def ctrl_r_picks_a_command_of_the_other_device(self, name):
        marker = "from-other-" + secrets.token_hex(4)
        command = "echo %s" % marker
        self.b.run("history", "add", "--", command)
        self.b.sync()
        self.a.sync()
        if shutil.which("fzf") is None:
            self.skipTest("fzf is not installed")
        self.tmux.keys(name, "C-r")
        wait_until("fzf's list in %s" % name, lambda: re.search(
            r"^\s+\d+/\d+", self.tmux.screen(name), re.M))
        self.tmux.type(name, marker, enter=False)
        wait_until("fzf to filter to one entry in %s" % name,
                   lambda: re.search(r"^\s+1/\d+", self.tmux.screen(name), re.M))
        self.tmux.keys(name, "Enter")
        line = wait_until("the chosen command on %s's line" % name,
                          lambda: [l for l in self.prompts(name) if l.rstrip().endswith(command)])
        self.assertTrue(line)
        time.sleep(0.3)
        # Placed, not run: the marker is on the prompt line only, never printed alone.
        screen = self.tmux.screen(name).splitlines()
        self.assertNotIn(marker, [l.strip() for l in screen])
        self.assertEqual(len([e for e in self.entries(self.a) if e["command"] == command]), 1)
        self.tmux.keys(name, "C-u")
