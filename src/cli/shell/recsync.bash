# recsync shell history for bash. Load it from ~/.bashrc with:
#   eval "$(recsync init bash)"
# Each command is recorded when it starts and completed (exit status,
# duration) when it ends. The hooks append a line to this shell's spool
# file (builtins: no fork), which a `recsync history agent` started with
# the shell records; without an agent, each hook starts a recsync process in
# the background. Either way the prompt never waits for the store, a lock or
# the network.
# With bash-preexec (loaded before this), its preexec_functions and
# precmd_functions carry the hooks; without it, a DEBUG trap and the front
# of PROMPT_COMMAND do (a DEBUG trap set before this one is replaced: load
# bash-preexec to keep it). A command bash keeps out of its own history
# (HISTCONTROL=ignorespace/ignoredups, HISTIGNORE) is not recorded either;
# nor is one matching RECSYNC_HISTIGNORE or starting with a space.
# RECSYNC_SYNC_INTERVAL (seconds, default 300, 0: after every command)
# paces the background sync.
__recsync_agent=0
__recsync_spool=""
__recsync_out="$("$__recsync_bin" history agent --pid $$ 2>/dev/null)"
if [[ $__recsync_out == *$'\t'*$'\t'* ]]; then
    export RECSYNC_SESSION=${__recsync_out%%$'\t'*}
    __recsync_out=${__recsync_out#*$'\t'}
    __recsync_agent=${__recsync_out%%$'\t'*}
    __recsync_spool=${__recsync_out#*$'\t'}
else
    export RECSYNC_SESSION="$("$__recsync_bin" history session 2>/dev/null)"
fi
unset __recsync_out

# $1 with backslashes, newlines and tabs escaped, in REPLY (for the spool).
__recsync_escape() {
    REPLY=${1//\\/\\\\}
    REPLY=${REPLY//$'\n'/\\n}
    REPLY=${REPLY//$'\t'/\\t}
}

# Whether the agent is there to read the spool: the spool exists (the agent
# removes it when it exits) and the agent runs (not a zombie), read with
# builtins from /proc where there is one, else kill -0.
__recsync_has_agent() {
    local stat
    if [[ -n $__recsync_spool && -e $__recsync_spool ]]; then
        if [[ ! -d /proc/$$ ]]; then
            kill -0 "$__recsync_agent" 2>/dev/null && return 0
        elif { read -r stat <"/proc/$__recsync_agent/stat"; } 2>/dev/null; then
            stat=${stat##*) }
            [[ $stat != Z* ]] && return 0
        fi
    fi
    __recsync_spool=""
    return 1
}
__recsync_seq=0
__recsync_active=0
__recsync_cmd=""
__recsync_start=""
__recsync_cwd=""
__recsync_histno=""
__recsync_from_history=0
__recsync_empty=0

# The number bash gives its next history entry (no fork: prompt expansion).
__recsync_next_histno() {
    local p='\!'
    __recsync_n=${p@P}
}

# Starts `recsync history WHAT OPTIONS... -- COMMAND` in the background
# (one fork; the prompt does not wait for it). Without bash-preexec the
# command line is read from bash's history there, in the background.
__recsync_spawn() {
    local what=$1
    shift
    {
        (
            line=$__recsync_cmd
            if [[ $__recsync_from_history == 1 ]]; then
                line=$(HISTTIMEFORMAT='' builtin history 1)
                [[ $line =~ ^\ *[0-9]+[\ \*]\ (.*)$ ]] && line=${BASH_REMATCH[1]}
            fi
            exec "$__recsync_bin" history "$what" "$@" -- "$line"
        ) </dev/null >/dev/null 2>&1 &
    } 2>/dev/null
    disown $! 2>/dev/null
}

# $1: the command line (bash-preexec gives it; without, it is read later).
__recsync_preexec() {
    __recsync_from_history=$((!$#))
    __recsync_cmd=${1-}
    __recsync_active=1
    ((__recsync_seq++))
    __recsync_start=$EPOCHREALTIME
    __recsync_cwd=$PWD
    if __recsync_has_agent; then
        local cwd
        __recsync_escape "$PWD"
        cwd=$REPLY
        if [[ $__recsync_from_history == 1 ]]; then
            # The command line straight from bash's history into the spool: no fork.
            {
                printf 'H\t%s\t%s\t%s\n' "$__recsync_seq" "$__recsync_start" "$cwd"
                HISTTIMEFORMAT='' builtin history 1
                printf '\036\n'
            } >>"$__recsync_spool"
        else
            __recsync_escape "$__recsync_cmd"
            printf 'S\t%s\t%s\t%s\t%s\n' "$__recsync_seq" "$__recsync_start" "$cwd" "$REPLY" \
                >>"$__recsync_spool"
        fi
        return 0
    fi
    __recsync_spawn start --session "$RECSYNC_SESSION" --seq "$__recsync_seq" \
        --start "$__recsync_start" --cwd "$__recsync_cwd"
}

__recsync_precmd() {
    local exit_status=$?
    if [[ $__recsync_active == 1 ]]; then
        __recsync_active=0
        if __recsync_has_agent; then
            printf 'E\t%s\t%s\t%s\n' "$__recsync_seq" "$exit_status" "$EPOCHREALTIME" \
                >>"$__recsync_spool"
        else
            __recsync_spawn end --session "$RECSYNC_SESSION" --seq "$__recsync_seq" \
                --exit "$exit_status" --start "$__recsync_start" --end "$EPOCHREALTIME" \
                --cwd "$__recsync_cwd"
        fi
    fi
    __recsync_next_histno
    __recsync_histno=$__recsync_n
    # An empty history numbers its first entry as it numbered the prompt
    # (and only then is HISTCMD that number at the prompt, not one more).
    __recsync_empty=0
    [[ $HISTCMD == "$__recsync_n" ]] && __recsync_empty=1
    return $exit_status
}

# The DEBUG trap runs before every simple command, those of PROMPT_COMMAND
# and key bindings included: a command line was read when bash's history
# has grown since the prompt.
__recsync_debug() {
    [[ -n ${COMP_LINE-} || $__recsync_active == 1 || -z $__recsync_histno ]] && return 0
    __recsync_next_histno
    if [[ $__recsync_empty == 1 ]]; then
        # Rare (the first command of a new history): a fork to see if it was kept.
        [[ -n $(builtin fc -ln -1 2>/dev/null) ]] || return 0
        __recsync_empty=0
    elif [[ $__recsync_n == "$__recsync_histno" ]]; then
        return 0
    fi
    __recsync_histno=$__recsync_n
    __recsync_preexec
}

if [[ -n ${bash_preexec_imported-}${__bp_imported-} ]]; then
    preexec_functions+=(__recsync_preexec)
    precmd_functions+=(__recsync_precmd)
else
    if [[ $(declare -p PROMPT_COMMAND 2>/dev/null) == "declare -a"* ]]; then
        PROMPT_COMMAND=(__recsync_precmd "${PROMPT_COMMAND[@]}")
    else
        PROMPT_COMMAND="__recsync_precmd${PROMPT_COMMAND:+;$PROMPT_COMMAND}"
    fi
    trap '__recsync_debug' DEBUG
fi

# Ctrl-R: the synced history through fzf, newest first, each command once;
# the chosen one goes on the command line, not run. Without fzf, bash's own
# reverse search stays on Ctrl-R.
__recsync_search() {
    local selected
    selected="$("$__recsync_bin" history list --unique --commands --print0 2>/dev/null |
        fzf --read0 --height=40% --tiebreak=index --no-multi --query="$READLINE_LINE")"
    if [[ -n $selected ]]; then
        READLINE_LINE=$selected
        READLINE_POINT=${#selected}
    fi
}

if [[ $- == *i* && -z ${RECSYNC_NO_CTRL_R-} ]] && command -v fzf >/dev/null 2>&1; then
    bind -x '"\C-r": __recsync_search'
fi
