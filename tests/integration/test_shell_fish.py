"""A real fish in tmux with `recsync init fish | source` and nothing else in
its config: typed commands reach a second device with exit status and
duration, ignore rules hold, and Ctrl-R through fzf picks the other
device's command without running it (shellterm.py has the details)."""

import unittest

from shellterm import ShellHooks


class FishShell(ShellHooks):
    def test_fish(self):
        name = self.typed_commands_reach_the_other_device("fish")
        self.ctrl_r_picks_a_command_of_the_other_device(name)
        self.without_the_agent_hooks_fall_back_to_processes(name)


if __name__ == "__main__":
    unittest.main()
