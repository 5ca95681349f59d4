# Shared by the scripts that test a running server (source it): start one, wait for its
# "listening on http://ADDR" line, stop it on exit.

# start_server CMD [ARGS...]: runs CMD with its stderr in $serve_log; sets $serve_pid, and
# $serve_url once the line appears. Exits 1 with the server's stderr if it dies first or
# prints nothing within 120 s.
start_server() {
    serve_log=$(mktemp "${TMPDIR:-/tmp}/ferrollama-serve.XXXXXX")
    "$@" </dev/null >/dev/null 2>"$serve_log" &
    serve_pid=$!
    trap stop_server EXIT
    serve_url=
    for _ in $(seq 1 1200); do # 120 s in 0.1 s steps
        serve_url=$(sed -n 's#.*listening on \(http://[0-9.]*:[0-9][0-9]*\).*#\1#p' "$serve_log" | head -n1)
        [ -n "$serve_url" ] && return 0
        if ! kill -0 "$serve_pid" 2>/dev/null; then
            echo "$1 exited before listening; its stderr:" >&2
            cat "$serve_log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$1 printed no 'listening on' line within 120 s; its stderr so far:" >&2
    cat "$serve_log" >&2
    exit 1
}

stop_server() {
    if [ -n "${serve_pid:-}" ] && kill -0 "$serve_pid" 2>/dev/null; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    rm -f "${serve_log:-}"
}

# The end of the server's stderr, after a failed test.
server_tail() {
    echo "--- last 40 lines of the server's stderr ---" >&2
    tail -n 40 "$serve_log" >&2
}
