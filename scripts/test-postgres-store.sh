#!/usr/bin/env bash
# The PostgreSQL store against a real server: starts a private PostgreSQL (Debian's, installed
# when absent) in a temporary directory, listening on 127.0.0.1 at a free port only, runs the
# store's tests against it, then indexes and searches through `ferrollama rag` with
# --db postgres://..., and stops the server (also on failure).
#
#   bash scripts/test-postgres-store.sh target/release/ferrollama
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/ferrollama}

pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pgbin)" ]; then
    apt-get install -y -qq postgresql >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
fi
PG=$(pgbin)

dir=$(mktemp -d)
chmod 755 "$dir"
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PG/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >/dev/null
stop() { as_pg "$PG/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap stop EXIT
as_pg "$PG/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
as_pg "$PG/createdb" -h 127.0.0.1 -p "$port" -U postgres ferrollama_test
url="postgres://postgres@127.0.0.1:$port/ferrollama_test"

FERROLLAMA_TEST_POSTGRES=$url cargo test --release -p ferrollama-rag --test postgres_store -- --ignored

# The command line on the same server: index, search by each method, index again (nothing
# changes), and the answer's source is the document that holds it.
docs=$(mktemp -d)
echo "The capital of the made-up land of Quorvia is the city of Zelmont." > "$docs/quorvia.txt"
echo "Photosynthesis turns light, water and carbon dioxide into sugar." > "$docs/plants.txt"
"$bin" rag index --db "$url" "$docs"
for method in dense bm25 hybrid; do
    top=$("$bin" rag search --db "$url" --method $method --json -k 1 "What is Quorvia's capital city?")
    echo "$method: $top" | cut -c1-160
    case "$top" in *quorvia.txt*) ;; *) echo "FAIL: $method did not find quorvia.txt"; exit 1;; esac
done
again=$("$bin" rag index --db "$url" "$docs" 2>&1)
case "$again" in *"2 unchanged"*) ;; *) echo "FAIL: re-index changed something: $again"; exit 1;; esac
rm -rf "$docs"
echo "postgres store: ok"
