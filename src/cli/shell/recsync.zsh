# recsync shell history for zsh. Load it from ~/.zshrc with:
#   eval "$(recsync init zsh)"
# Each command is recorded when it starts and completed (exit status,
# duration) when it ends. The hooks append a line to this shell's spool
# file (a builtin: no fork), which a `recsync history agent` started with
# the shell records; without an agent, each hook starts a recsync process in
# the background. Either way the prompt never waits for the store, a lock or
# the network.
# RECSYNC_HISTIGNORE (patterns separated by ':') and a leading space keep a
# command out; RECSYNC_SYNC_INTERVAL (seconds, default 300, 0: after every
# command) paces the background sync.
zmodload zsh/datetime 2>/dev/null
typeset -gi __recsync_seq=0 __recsync_active=0 __recsync_agent=0
typeset -g __recsync_cmd="" __recsync_start="" __recsync_cwd="" __recsync_spool=""
() {
    local out
    out="$("$__recsync_bin" history agent --pid $$ 2>/dev/null)"
    if [[ $out == *$'\t'*$'\t'* ]]; then
        export RECSYNC_SESSION=${out%%$'\t'*}
        out=${out#*$'\t'}
        __recsync_agent=${out%%$'\t'*}
        __recsync_spool=${out#*$'\t'}
    else
        export RECSYNC_SESSION="$("$__recsync_bin" history session 2>/dev/null)"
    fi
}

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
            kill -0 $__recsync_agent 2>/dev/null && return 0
        elif { read -r stat </proc/$__recsync_agent/stat } 2>/dev/null; then
            stat=${stat##*) }
            [[ $stat != Z* ]] && return 0
        fi
    fi
    __recsync_spool=""
    return 1
}

__recsync_preexec() {
    __recsync_active=1
    (( __recsync_seq++ ))
    __recsync_cmd=$1
    __recsync_start=$EPOCHREALTIME
    __recsync_cwd=$PWD
    if __recsync_has_agent; then
        local cmd
        __recsync_escape "$1"
        cmd=$REPLY
        __recsync_escape "$PWD"
        print -r -- "S"$'\t'"$__recsync_seq"$'\t'"$__recsync_start"$'\t'"$REPLY"$'\t'"$cmd" \
            >>| $__recsync_spool
        return 0
    fi
    "$__recsync_bin" history start --session "$RECSYNC_SESSION" --seq "$__recsync_seq" \
        --start "$__recsync_start" --cwd "$__recsync_cwd" -- "$1" </dev/null >/dev/null 2>&1 &!
}

__recsync_precmd() {
    local exit_status=$?
    (( __recsync_active )) || return 0
    __recsync_active=0
    if __recsync_has_agent; then
        print -r -- "E"$'\t'"$__recsync_seq"$'\t'"$exit_status"$'\t'"$EPOCHREALTIME" \
            >>| $__recsync_spool
        return 0
    fi
    "$__recsync_bin" history end --session "$RECSYNC_SESSION" --seq "$__recsync_seq" \
        --exit "$exit_status" --start "$__recsync_start" --end "$EPOCHREALTIME" \
        --cwd "$__recsync_cwd" -- "$__recsync_cmd" </dev/null >/dev/null 2>&1 &!
}

autoload -Uz add-zsh-hook
add-zsh-hook preexec __recsync_preexec
add-zsh-hook precmd __recsync_precmd

# Ctrl-R: the synced history through fzf, newest first, each command once;
# the chosen one goes on the command line, not run. Without fzf, zsh's own
# search stays on Ctrl-R.
__recsync_search() {
    local selected
    selected="$("$__recsync_bin" history list --unique --commands --print0 2>/dev/null |
        fzf --read0 --height=40% --tiebreak=index --no-multi --query="$BUFFER")"
    if [[ -n $selected ]]; then
        BUFFER=$selected
        CURSOR=${#BUFFER}
    fi
    zle reset-prompt
}

if [[ -z ${RECSYNC_NO_CTRL_R-} ]] && (( $+commands[fzf] )); then
    zle -N __recsync_search
    bindkey '^R' __recsync_search
    bindkey -M vicmd '^R' __recsync_search 2>/dev/null
    bindkey -M viins '^R' __recsync_search 2>/dev/null
fi
