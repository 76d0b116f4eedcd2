# recsync shell history for fish. Load it from ~/.config/fish/config.fish with:
#   recsync init fish | source
# Each command is recorded when it starts and completed (exit status,
# duration) when it ends. The hooks append a line to this shell's spool
# file (builtins: no fork), which a `recsync history agent` started with
# the shell records; without an agent, each hook starts a recsync process in
# the background. Either way the prompt never waits for the store, a lock or
# the network.
# RECSYNC_HISTIGNORE (patterns separated by ':') and a leading space keep a
# command out; RECSYNC_SYNC_INTERVAL (seconds, default 300, 0: after every
# command) paces the background sync.
set -g __recsync_agent 0
set -g __recsync_spool ""
set -l __recsync_out ($__recsync_bin history agent --pid $fish_pid 2>/dev/null | string split \t)
if test (count $__recsync_out) -eq 3
    set -gx RECSYNC_SESSION $__recsync_out[1]
    set -g __recsync_agent $__recsync_out[2]
    set -g __recsync_spool $__recsync_out[3]
else
    set -gx RECSYNC_SESSION ($__recsync_bin history session 2>/dev/null)
end

# $argv[1] with backslashes, newlines and tabs escaped (for the spool).
function __recsync_escape
    string replace -a -- \\ \\\\ $argv[1] | string replace -a -- \t \\t | string join \\n
end

# Whether the agent is there to read the spool: the spool exists (the agent
# removes it when it exits) and the agent runs (not a zombie), read with
# builtins from /proc where there is one.
function __recsync_has_agent
    if test -n "$__recsync_spool"; and test -e "$__recsync_spool"
        if not test -d /proc/$fish_pid
            return 0
        end
        if read -l stat </proc/$__recsync_agent/stat 2>/dev/null
            and not string match -q -r '\) Z' -- $stat
            return 0
        end
    end
    set -g __recsync_spool ""
    return 1
end
set -g __recsync_seq 0
set -g __recsync_active 0
set -g __recsync_cmd ""
set -g __recsync_cwd ""

function __recsync_preexec --on-event fish_preexec
    set -g __recsync_active 1
    set -g __recsync_seq (math $__recsync_seq + 1)
    set -g __recsync_cmd $argv[1]
    set -g __recsync_cwd $PWD
    if __recsync_has_agent
        printf 'S\t%s\t\t%s\t%s\n' $__recsync_seq (__recsync_escape $PWD) \
            (__recsync_escape $argv[1]) >>$__recsync_spool
        return 0
    end
    $__recsync_bin history start --session $RECSYNC_SESSION --seq $__recsync_seq \
        --cwd $__recsync_cwd -- $argv[1] </dev/null >/dev/null 2>&1 &
    disown $last_pid 2>/dev/null
end

function __recsync_postexec --on-event fish_postexec
    set -l exit_status $status
    test "$__recsync_active" = 1; or return 0
    set -g __recsync_active 0
    if __recsync_has_agent
        printf 'E\t%s\t%s\t\t%s\n' $__recsync_seq $exit_status $CMD_DURATION >>$__recsync_spool
        return 0
    end
    $__recsync_bin history end --session $RECSYNC_SESSION --seq $__recsync_seq \
        --exit $exit_status --duration-ms $CMD_DURATION --cwd $__recsync_cwd \
        -- $__recsync_cmd </dev/null >/dev/null 2>&1 &
    disown $last_pid 2>/dev/null
end

# Ctrl-R: the synced history through fzf, newest first, each command once;
# the chosen one goes on the command line, not run. Without fzf, fish's own
# search stays on Ctrl-R.
function __recsync_search
    set -l selected ($__recsync_bin history list --unique --commands --print0 2>/dev/null | fzf --read0 --height=40% --tiebreak=index --no-multi --query=(commandline -b) | string collect)
    if test -n "$selected"
        commandline -r -- $selected
    end
    commandline -f repaint
end

if not set -q RECSYNC_NO_CTRL_R; and type -q fzf
    bind \cr __recsync_search
    bind -M insert \cr __recsync_search 2>/dev/null
end
