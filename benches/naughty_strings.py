#!/usr/bin/env python3
"""Every string of the Big List of Naughty Strings (npm `big-list-of-naughty-strings` 1.0.0,
MIT; fetched with `npm pack` into the cache) sent to `ferrollama serve` in every place a
client controls: message content, role, system prompt, model name, stop sequence, a
completion prompt, a GBNF grammar, a JSON schema, an embedding input, a header value, the
path and the query string.

    python3 benches/naughty_strings.py [--binary target/release/ferrollama] [--out PATH]

Each answer must be a 2xx, or a 4xx/5xx whose body is a JSON error with a message; a
503 (queue full) is allowed. A request that is not valid HTTP (a control character in a
header value) is refused by the HTTP parser itself with a bare 400 before any route runs:
those are counted apart. The server must answer /health after every 100 requests and
be alive at the end, with no panic in its log. Writes OUT.json and OUT.md.
"""

import argparse
import collections
import datetime
import http.client
import json
import pathlib
import subprocess
import sys
import tarfile
import urllib.parse

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from soak import start_server  # noqa: E402 - a sibling script

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path.home() / ".cache" / "ferrollama" / "bench" / "blns"
PACKAGE = "big-list-of-naughty-strings@1.0.0"


def strings():
    path = CACHE / "package" / "blns.json"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", PACKAGE], cwd=CACHE, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(CACHE / out) as t:
            t.extractall(CACHE, filter="data")
    return json.loads(path.read_text())


def requests(s):
    """(place, method, path, body, extra headers) for one naughty string."""
    chat = lambda **kw: {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **kw}
    q = urllib.parse.quote(s, safe="")
    return [
        ("content", "POST", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": s}], "max_tokens": 4}, {}),
        ("role", "POST", "/v1/chat/completions",
         {"messages": [{"role": s, "content": "Hi"}], "max_tokens": 4}, {}),
        ("system", "POST", "/v1/chat/completions",
         {"messages": [{"role": "system", "content": s}, {"role": "user", "content": "Hi"}],
          "max_tokens": 4}, {}),
        ("model", "POST", "/v1/chat/completions", chat(model=s), {}),
        ("stop", "POST", "/v1/chat/completions", chat(stop=[s]), {}),
        ("prompt", "POST", "/v1/completions", {"prompt": s, "max_tokens": 4}, {}),
        ("grammar", "POST", "/v1/completions", {"prompt": "x", "max_tokens": 4, "grammar": s}, {}),
        ("json_schema", "POST", "/v1/chat/completions",
         chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": s}}), {}),
        ("embedding", "POST", "/v1/embeddings", {"input": s}, {}),
        ("header", "POST", "/v1/chat/completions", chat(), {"X-Naughty": s}),
        ("path", "GET", "/v1/" + q, None, {}),
        ("query", "GET", "/v1/models?q=" + q, None, {}),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "ferrollama"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    naughty = strings()
    log_path = pathlib.Path("/tmp/ferrollama-naughty-server.log")
    server, port, log = start_server(
        [args.binary, "serve", "--port", "0", "--parallel", "4", "--max-tokens", "4",
         "--ctx", "2048"], log_path)
    statuses = collections.Counter()
    by_place = collections.defaultdict(collections.Counter)
    breaks, health = [], []
    n = 0
    for s in naughty:
        for place, method, path, body, headers in requests(s):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                data = None if body is None else json.dumps(body).encode()
                h = {"Content-Type": "application/json", **headers}
                try:
                    c.request(method, path, body=data, headers=h)
                except (ValueError, http.client.InvalidURL, UnicodeEncodeError):
                    # A string http.client itself refuses to send (a newline in a header).
                    by_place[place]["not sendable"] += 1
                    continue
                r = c.getresponse()
                raw = r.read()
                if r.status == 400 and not raw and r.getheader("content-length") == "0":
                    # Not HTTP (a control character in a header value): refused by the HTTP
                    # parser (hyper) before any route runs, with its bare 400, and closed.
                    statuses["400 (HTTP parser)"] += 1
                    by_place[place]["400 (HTTP parser)"] += 1
                    continue
                statuses[r.status] += 1
                by_place[place][r.status] += 1
                if r.status >= 400:
                    try:
                        assert json.loads(raw)["error"]["message"]
                    except Exception as e:  # noqa: BLE001
                        breaks.append(f"{place} {s!r}: {r.status} {raw[:120]!r} ({e})")
            except Exception as e:  # noqa: BLE001
                breaks.append(f"{place} {s!r}: {type(e).__name__}: {e}")
            finally:
                c.close()
            n += 1
            if n % 100 == 0:
                hc = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    hc.request("GET", "/health")
                    if hc.getresponse().status != 200:
                        health.append(n)
                except Exception:  # noqa: BLE001
                    health.append(n)
                hc.close()
    alive = server.poll() is None
    server.terminate()
    server.wait(timeout=60)
    log.flush()
    panics = [l for l in log_path.read_text(errors="replace").splitlines() if "panicked" in l]
    ok = alive and not breaks and not health and not panics
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "strings": len(naughty), "requests": n, "statuses": dict(statuses),
              "by_place": {k: dict(v) for k, v in by_place.items()}, "contract_breaks": breaks,
              "health_failures": health, "alive": alive, "panics": panics, "passed": ok}
    lines = [f"# Naughty strings against ferrollama serve, {report['date']}", "",
             f"{len(naughty)} strings of {PACKAGE} (MIT) in 12 places each: {n} requests.", "",
             "| place | answers by status |", "|---|---|"]
    for place, c in by_place.items():
        lines.append(f"| {place} | " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=str)) + " |")
    lines += ["", f"Errors without a JSON error body: {len(breaks)}"
              + (": " + "; ".join(breaks[:5]) if breaks else "") + ".",
              f"Health checks failed: {len(health)}; alive at the end: {alive}; panics in the log: "
              f"{len(panics)}. Result: {'PASSED' if ok else 'FAILED'}."]
    print("\n".join(lines))
    if args.out:
        out = pathlib.Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
