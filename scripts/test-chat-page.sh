#!/usr/bin/env bash
# Headless-Chromium test of the browser chat page served by `ferrollama serve`.
#
#   scripts/test-chat-page.sh [FERROLLAMA_BIN]     # default target/release/ferrollama
#   scripts/test-chat-page.sh --mock               # against tests/browser/mock_server.py
#
# Starts `FERROLLAMA_BIN serve --port 0 $SERVE_ARGS` (the default model from the
# cache), waits for its `listening on http://127.0.0.1:PORT` line on stderr,
# runs tests/browser/chat_page.mjs against it and stops the server on exit.
# Env: SERVE_ARGS (extra server flags), SCREENSHOT (default target/chat-page.png),
# CHROMIUM (default /usr/bin/chromium), and what chat_page.mjs reads
# (API_KEY, REPLY_TIMEOUT_MS, SCREENSHOT_NARROW).
# Needs node >= 20 and npm; installs Debian's chromium if missing and run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bin=${1:-target/release/ferrollama}
export SCREENSHOT=${SCREENSHOT:-$root/target/chat-page.png}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
mkdir -p "$(dirname "$SCREENSHOT")"

if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" = /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
        echo "test-chat-page: installing Debian's chromium" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq chromium >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
    else
        echo "test-chat-page: no chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)" >&2
        exit 1
    fi
fi

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

if [ "$bin" = --mock ]; then
    server=(python3 tests/browser/mock_server.py --port 0)
else
    if [ ! -x "$bin" ]; then
        echo "test-chat-page: no server binary at $bin (cargo build --release first)" >&2
        exit 1
    fi
    # A two-document store, so that the page's chat with documents is tested too.
    docs=$(mktemp -d)
    echo "The capital of the made-up land of Quorvia is the city of Zelmont." > "$docs/quorvia.txt"
    echo "Photosynthesis turns light, water and carbon dioxide into sugar." > "$docs/plants.txt"
    "$bin" rag index --db "$docs.db" "$docs" >&2
    export RAG_QUESTION="What is the capital of Quorvia?" RAG_SOURCE="quorvia.txt"
    # shellcheck disable=SC2206  # SERVE_ARGS is split into words on purpose
    server=("$bin" serve --port 0 --rag-db "$docs.db" ${SERVE_ARGS:-})
fi

# shellcheck source=scripts/serve-lib.sh
. scripts/serve-lib.sh
trap 'exit 130' INT TERM
echo "test-chat-page: starting ${server[*]}" >&2
start_server "${server[@]}"
url=$serve_url
echo "test-chat-page: server at $url" >&2

status=0
SERVER_URL=$url node tests/browser/chat_page.mjs || status=$?
[ "$status" = 0 ] || server_tail
[ -n "${docs:-}" ] && rm -rf "$docs" "$docs.db" "$docs.db-wal" "$docs.db-shm"
exit "$status"
