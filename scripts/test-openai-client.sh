#!/usr/bin/env bash
# Runs tests/openai/test_openai_client.py (the official `openai` Python client) against
# `ferrollama serve` started here with an API key.
#
#   scripts/test-openai-client.sh [FERROLLAMA_BIN] [TEST_NAME...]
#
# FERROLLAMA_BIN defaults to target/release/ferrollama; SERVE_ARGS adds arguments to
# `serve` (e.g. SERVE_ARGS="--model M.gguf --ctx 2048"). The client goes into a venv
# beside the model cache, made once: ${FERROLLAMA_HOME:-~/.cache/ferrollama/models}/../openai-venv.
# Exits with the test's status.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$repo/target/release/ferrollama}
shift || true
[ -x "$bin" ] || { echo "no ferrollama binary at $bin (cargo build --release -p ferrollama)" >&2; exit 2; }

home=${FERROLLAMA_HOME:-$HOME/.cache/ferrollama/models}
venv=$home/../openai-venv
req=$repo/tests/openai/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
    mkdir -p "$home"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
fi

key=test-key
# shellcheck source=scripts/serve-lib.sh
. "$repo/scripts/serve-lib.sh"
# shellcheck disable=SC2086 # SERVE_ARGS is split on purpose
start_server "$bin" serve --port 0 --api-key "$key" ${SERVE_ARGS:-}
url=$serve_url

status=0
OPENAI_BASE_URL=${url%/}/v1 OPENAI_API_KEY=$key FERROLLAMA_EXPECT_AUTH=1 \
    "$venv/bin/python" "$repo/tests/openai/test_openai_client.py" "$@" || status=$?
[ "$status" -eq 0 ] || server_tail
exit "$status"
