"""A real bash in tmux with `eval "$(recsync init bash)"` (its own DEBUG
trap, no bash-preexec) and nothing else in its rc: typed commands reach a
second device with exit status and duration, ignore rules hold, Ctrl-R
through fzf picks the other device's command without running it, and with
the server gone the failing background sync shows in `recsync status`, not
in the terminal (shellterm.py has the details)."""

import os
import shutil
import unittest

from shellterm import ShellHooks, wait_until


class BashShell(ShellHooks):
    def test_bash(self):
        name = self.typed_commands_reach_the_other_device("bash")
        self.ctrl_r_picks_a_command_of_the_other_device(name)
        self.without_the_agent_hooks_fall_back_to_processes(name)
        self.run_commands(name, ["bind -X"])
        self.assertIn('"\\C-r": "__recsync_search"', self.tmux.screen(name))
        # Without fzf on PATH, Ctrl-R stays bash's own reverse search.
        bare = os.path.join(self.root, "bin-without-fzf")
        os.makedirs(bare)
        for tool in ("bash", "sh"):
            os.symlink(shutil.which(tool), os.path.join(bare, tool))
        other = self.start_shell("bash", extra_env={"PATH": bare}, name="bash-without-fzf")
        self.run_commands(other, ["bind -q reverse-search-history", "bind -X"])
        screen = self.tmux.screen(other)
        self.assertIn('reverse-search-history can be invoked via "\\C-r"', screen)
        self.assertNotIn("__recsync_search", screen)
        # With the server gone, the background sync fails: kept for status, not printed.
        self.server.kill()
        self.run_commands(name, ["echo after-the-server-went"])
        out = wait_until("status to show the failed background sync", lambda: (
            lambda t: t if "FAILING" in t else None)(
                self.a.run("status", "--timeout-ms", "200", expect=None).text))
        self.assertIn("background sync (shell hook): FAILING since", out)
        self.assertNotIn("recsync", self.tmux.screen(name))


if __name__ == "__main__":
    unittest.main()
