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
    # shellcheck disable=SC2206  # SERVE_ARGS is split into words on purpose
    server=("$bin" serve --port 0 ${SERVE_ARGS:-})
fi

log=$(mktemp "${TMPDIR:-/tmp}/ferrollama-serve.XXXXXX")
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "test-chat-page: starting ${server[*]}" >&2
"${server[@]}" </dev/null >/dev/null 2>"$log" &
pid=$!

url=
for _ in $(seq 1 1200); do       # 120 s in 0.1 s steps
    url=$(sed -n 's#.*listening on \(http://127\.0\.0\.1:[0-9][0-9]*\).*#\1#p' "$log" | head -n1)
    [ -n "$url" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "test-chat-page: server exited before listening; its stderr:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "test-chat-page: no 'listening on http://127.0.0.1:PORT' line within 120 s; stderr so far:" >&2
    cat "$log" >&2
    exit 1
fi
echo "test-chat-page: server at $url" >&2

status=0
SERVER_URL=$url node tests/browser/chat_page.mjs || status=$?
if [ "$status" != 0 ]; then
    echo "test-chat-page: server stderr (last 40 lines):" >&2
    tail -n 40 "$log" >&2
fi
exit "$status"
