#!/usr/bin/env bash
# Installs the Debian packages recsync builds, tests and benchmarks with.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

packages=(
    build-essential cmake pkg-config git
    libsqlite3-dev sqlite3 libsodium-dev libcurl4-openssl-dev libmicrohttpd-dev
    libjansson-dev libpq-dev libcmocka-dev postgresql
    python3 clang libclang-rt-dev valgrind wrk procps
    # bench/run.sh: hyperfine, and node for the PouchDB and Hypercore peers
    hyperfine nodejs
    # the shell history tests (tests/integration/test_shell_hooks.py) type into
    # real shells in tmux and search with fzf
    tmux zsh bash fish fzf util-linux
)
# Debian's nodejs leaves npm to its own package; NodeSource's provides it.
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
