"""A real zsh in tmux with `eval "$(recsync init zsh)"` and nothing else in
its rc: typed commands reach a second device with exit status and
duration, ignore rules hold, Ctrl-R through fzf picks the other device's
command without running it, and a command running when zsh is SIGKILLed
stays recorded (shellterm.py has the details)."""

import os
import secrets
import signal
import subprocess
import unittest

from shellterm import ShellHooks, kill_pids, process_gone, wait_until


class ZshShell(ShellHooks):
    def test_zsh(self):
        name = self.typed_commands_reach_the_other_device("zsh")
        self.ctrl_r_picks_a_command_of_the_other_device(name)
        # A command running when its shell is SIGKILLed stays recorded, unfinished:
        # its agent reads the start from the spool and exits once the shell is gone.
        agent = self.agent_pid(name)
        tag = secrets.token_hex(3)
        self.tmux.type(name, "sleep 300 && : killed-%s" % tag)
        rows = wait_until("the running command's start record", lambda: [
            e for e in self.entries(self.a) if e["command"] == "sleep 300 && : killed-%s" % tag])
        self.assertEqual((rows[0]["exit"], rows[0]["duration"]), (-1, -1))
        shell_pid = self.tmux.pane_pid(name)
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(shell_pid)],
                                  capture_output=True, timeout=10).stdout.split()
        self.addCleanup(kill_pids, [int(p) for p in children])
        os.kill(shell_pid, signal.SIGKILL)
        wait_until("the agent to exit after its shell", lambda: process_gone(agent))
        self.assertEqual(os.listdir(os.path.join(self.a.dir, "spool")), [],
                         "the agent removed its spool once read")
        self.a.sync()
        rows = self.synced_entries(self.b, ["sleep 300 && : killed-%s" % tag], finished=False)
        self.assertEqual(rows["sleep 300 && : killed-%s" % tag]["exit"], -1)


if __name__ == "__main__":
    unittest.main()
