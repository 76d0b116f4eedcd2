# recsync shell history for fish. Load it from ~/.config/fish/config.fish with:
#   recsync init fish | source
# Each command is recorded when it starts and completed (exit status,
# duration) when it ends, by a recsync process started in the background:
# the prompt never waits for the store, a lock or the network.
# RECSYNC_HISTIGNORE (patterns separated by ':') and a leading space keep a
# command out; RECSYNC_SYNC_INTERVAL (seconds, default 300, 0: after every
# command) paces the background sync.
set -gx RECSYNC_SESSION ($__recsync_bin history session 2>/dev/null)
set -g __recsync_seq 0
set -g __recsync_active 0
set -g __recsync_cmd ""
set -g __recsync_cwd ""

function __recsync_preexec --on-event fish_preexec
    set -g __recsync_active 1
    set -g __recsync_seq (math $__recsync_seq + 1)
    set -g __recsync_cmd $argv[1]
    set -g __recsync_cwd $PWD
    $__recsync_bin history start --session $RECSYNC_SESSION --seq $__recsync_seq \
        --cwd $__recsync_cwd -- $argv[1] </dev/null >/dev/null 2>&1 &
    disown $last_pid 2>/dev/null
end

function __recsync_postexec --on-event fish_postexec
    set -l exit_status $status
    test "$__recsync_active" = 1; or return 0
    set -g __recsync_active 0
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
