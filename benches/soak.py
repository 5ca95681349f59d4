#!/usr/bin/env python3
"""Soak test: `ferrollama serve` on the loopback address for a bounded time under healthy
traffic mixed with every kind of hostile request, checking that every error is a
well-formed JSON error, that the server neither crashes nor deadlocks, and that its memory
stays flat.

    python3 benches/soak.py [--minutes 30] [--clients 16] [--binary target/release/ferrollama]
                            [--model PATH] [--out benches/results/DATE-soak]

The server runs with an API key, 4 slots, a queue of 8, 2 MiB bodies, at most 32 new
tokens, a 5 s header and body timeout and 256 connections. Each client thread loops over
request kinds drawn at random with fixed weights (seeded):

  healthy        chat completion, answered 200 (or 503 when the queue is full)
  stream         streamed chat completion read to `[DONE]`
  cancel         streamed completion closed after the first event
  completion     /v1/completions with a grammar
  malformed      truncated JSON                      -> 400
  bad_utf8       invalid UTF-8 inside a JSON string  -> 400
  wrong_types    fields of the wrong type            -> 400
  bad_params     n=1000, temperature=-1, ...         -> 400
  oversized      a 3 MiB body                        -> 413
  wrong_key      a wrong API key                     -> 401
  no_key         no API key                          -> 401
  not_found      an unknown route                    -> 404
  bad_method     GET on a POST route                 -> 405
  garbage        bytes that are not HTTP             -> 400 or closed
  slowloris      headers a byte at a time, never ended -> cut off at the timeout
  slow_body      a body that stops halfway           -> 408
  flood          20 requests at once (past the queue) -> 200 or 503

Every 4xx/5xx response must carry `{"error": {"message": ...}}` as JSON. RSS is sampled
every 5 s from /proc; "flat" compares the mean of the last minute with the mean of the
minute after warm-up (the first 10 % of the run). The server is asked /health every 10 s;
a failed health check or a dead process ends the run as a failure. Writes OUT.json and
OUT.md. Standard library only; traffic goes only to 127.0.0.1.
"""

import argparse
import collections
import datetime
import http.client
import json
import os
import pathlib
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = "soak-key"
WEIGHTS = {
    "healthy": 24, "stream": 10, "cancel": 6, "completion": 6, "malformed": 6,
    "bad_utf8": 4, "wrong_types": 4, "bad_params": 4, "oversized": 2, "wrong_key": 4,
    "no_key": 3, "not_found": 3, "bad_method": 3, "garbage": 3, "slowloris": 2,
    "slow_body": 2, "flood": 1,
}
PROMPTS = ["Why is the sky blue?", "Name three fruits.", "What is 2+2?",
           "Write a haiku about rain.", "Say hello in French."]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind = collections.Counter()
        self.by_status = collections.Counter()
        self.bad = []            # responses that broke the contract
        self.latency = []        # seconds, healthy requests answered 200

    def add(self, kind, status, ok=True, why=None, latency=None):
        with self.lock:
            self.by_kind[kind] += 1
            self.by_status[str(status)] += 1
            if not ok:
                self.bad.append(f"{kind}: {why}")
            if latency is not None:
                self.latency.append(latency)


def connect(port, timeout=60):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def check_error(kind, resp, body, stats, allowed):
    """A 4xx/5xx must be JSON with an error message; the status must be one expected."""
    status = resp.status
    ok, why = True, None
    if status not in allowed:
        ok, why = False, f"status {status} not in {sorted(allowed)}: {body[:200]!r}"
    elif status >= 400:
        try:
            msg = json.loads(body)["error"]["message"]
            if not isinstance(msg, str) or not msg:
                ok, why = False, "empty error message"
        except Exception as e:  # noqa: BLE001 - any failure is a contract break
            ok, why = False, f"error body not JSON ({e}): {body[:200]!r}"
    stats.add(kind, status, ok, why)


def post(port, path, body, headers=None, timeout=120):
    c = connect(port, timeout)
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    h.update(headers or {})
    c.request("POST", path, body=body, headers={k: v for k, v in h.items() if v is not None})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r, data


def chat_body(rng, stream=False, **extra):
    b = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
         "max_tokens": rng.randint(4, 32), "temperature": 0.7, "stream": stream}
    b.update(extra)
    return json.dumps(b).encode()


def raw(port, data, read_timeout=15, pace=None):
    """Sends bytes on a raw socket (a byte at a time every `pace` seconds if given);
    returns what came back before the server closed or the timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    got = b""
    try:
        if pace:
            for b in data:
                s.sendall(bytes([b]))
                time.sleep(pace)
        else:
            s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionError, OSError):
        pass
    finally:
        s.close()
    return got


def status_of(reply):
    m = re.match(rb"HTTP/1\.1 (\d{3})", reply)
    return int(m.group(1)) if m else None


def body_of(reply):
    i = reply.find(b"\r\n\r\n")
    return reply[i + 4:] if i >= 0 else b""


def one(kind, port, rng, stats, args):
    if kind == "healthy":
        t0 = time.time()
        r, data = post(port, "/v1/chat/completions", chat_body(rng))
        if r.status == 200:
            ok = bool(json.loads(data)["choices"])
            stats.add(kind, 200, ok, "no choices", latency=time.time() - t0)
        else:
            check_error(kind, r, data, stats, {503})
    elif kind in ("stream", "cancel"):
        c = connect(port)
        c.request("POST", "/v1/chat/completions", body=chat_body(rng, stream=True),
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = c.getresponse()
        if r.status != 200:
            check_error(kind, r, r.read(), stats, {503})
        elif kind == "cancel":
            r.fp.readline()
            c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
            stats.add(kind, 200)
        else:
            text = r.read().decode()
            stats.add(kind, 200, "data: [DONE]" in text, "stream did not end with [DONE]")
        c.close()
    elif kind == "completion":
        body = json.dumps({"prompt": "The colour of the sky is", "max_tokens": 8,
                           "grammar": 'root ::= " " [a-z]+ "."'}).encode()
        r, data = post(port, "/v1/completions", body)
        if r.status == 200:
            text = json.loads(data)["choices"][0]["text"]
            stats.add(kind, 200, re.fullmatch(r" [a-z]*\.?", text) is not None,
                      f"grammar not kept: {text!r}")
        else:
            check_error(kind, r, data, stats, {503})
    elif kind == "malformed":
        body = chat_body(rng)
        r, data = post(port, "/v1/chat/completions", body[: rng.randint(1, len(body) - 1)])
        check_error(kind, r, data, stats, {400})
    elif kind == "bad_utf8":
        body = b'{"messages": [{"role": "user", "content": "caf\xc3\x28 \xff\xfe"}]}'
        r, data = post(port, "/v1/chat/completions", body)
        check_error(kind, r, data, stats, {400})
    elif kind == "wrong_types":
        body = rng.choice([b'{"messages": "hello"}', b'{"messages": [{"role": 1}]}',
                           b'{"prompt": {"a": 1}}', b'[]', b'null', b'{"max_tokens": "ten"}'])
        path = rng.choice(["/v1/chat/completions", "/v1/completions"])
        r, data = post(port, path, body)
        check_error(kind, r, data, stats, {400})
    elif kind == "bad_params":
        extra = rng.choice([{"n": 1000}, {"temperature": -1}, {"top_p": 7}, {"max_tokens": -5},
                            {"logprobs": True, "top_logprobs": 99}, {"tools": [{"type": "function"}]},
                            {"response_format": {"type": "xml"}}, {"grammar": "root ::= ("},
                            {"messages": []}, {"max_tokens": -5}])
        body = json.loads(chat_body(rng))
        body.update(extra)
        r, data = post(port, "/v1/chat/completions", json.dumps(body).encode())
        check_error(kind, r, data, stats, {400})
    elif kind == "oversized":
        body = b'{"messages": [{"role": "user", "content": "' + b"a" * (3 << 20) + b'"}]}'
        try:
            r, data = post(port, "/v1/chat/completions", body)
            check_error(kind, r, data, stats, {413})
        except (ConnectionError, OSError):
            # The server may answer 413 and close before the client finished sending.
            stats.add(kind, "413-closed")
    elif kind in ("wrong_key", "no_key"):
        auth = "Bearer wrong" if kind == "wrong_key" else None
        r, data = post(port, "/v1/chat/completions", chat_body(rng), {"Authorization": auth})
        check_error(kind, r, data, stats, {401})
    elif kind == "not_found":
        r, data = post(port, "/v1/nothing/here", b"{}")
        check_error(kind, r, data, stats, {404})
    elif kind == "bad_method":
        c = connect(port)
        c.request("GET", "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
        r = c.getresponse()
        check_error(kind, r, r.read(), stats, {405})
        c.close()
    elif kind == "garbage":
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))) + b"\r\n\r\n"
        reply = raw(port, junk)
        st = status_of(reply)
        if st is None:
            stats.add(kind, "closed", not reply, f"not HTTP: {reply[:80]!r}")
        else:
            ok = 400 <= st < 500
            stats.add(kind, st, ok, f"status {st}")
    elif kind == "slowloris":
        t0 = time.time()
        reply = raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60,
                    read_timeout=30, pace=0.25)
        took = time.time() - t0
        st = status_of(reply)
        # Cut off by the header timeout (5 s), well before the sender would have finished.
        stats.add(kind, st or "closed", took < 20, f"held for {took:.1f} s")
    elif kind == "slow_body":
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"messages\"")
        reply = raw(port, head, read_timeout=30)
        st = status_of(reply)
        try:
            ok = st == 408 and json.loads(body_of(reply))["error"]["message"]
        except Exception:  # noqa: BLE001
            ok = False
        stats.add(kind, st or "closed", bool(ok), f"got {reply[:120]!r}")
    elif kind == "flood":
        threads = [threading.Thread(target=one, args=("healthy", port, random.Random(rng.random()), stats, args))
                   for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats.add(kind, "burst")


def client(i, port, deadline, stats, args, errors):
    rng = random.Random(args.seed * 1000 + i)
    kinds, weights = zip(*WEIGHTS.items())
    while time.time() < deadline:
        kind = rng.choices(kinds, weights)[0]
        try:
            one(kind, port, rng, stats, args)
        except Exception as e:  # noqa: BLE001 - a client-side failure is a finding too
            stats.add(kind, "client-error", False, f"{type(e).__name__}: {e}")
            errors.append(f"{kind}: {type(e).__name__}: {e}")


def rss_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def start_server(cmd, log_path):
    """Starts `ferrollama serve --port 0 ...`, reads the port it prints, and keeps copying
    its output to `log_path` (so a full pipe never blocks it). Returns (process, port, log)."""
    log = open(log_path, "w")
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=log, text=True)
    port = None
    for line in server.stderr:
        log.write(line)
        if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
            break
    if port is None:
        sys.exit(f"the server did not start; see {log_path}")
    threading.Thread(target=lambda: [log.write(l) for l in server.stderr], daemon=True).start()
    return server, port, log


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "ferrollama"))
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cmd = [args.binary, "serve", "--port", "0", "--api-key", KEY, "--parallel", "4",
           "--queue", "8", "--max-tokens", "32", "--ctx", "2048",
           "--header-timeout", "5", "--body-timeout", "5", "--max-connections", "256"]
    if args.model:
        cmd += ["--model", args.model]
    log_path = pathlib.Path("/tmp/ferrollama-soak-server.log")
    server, port, log = start_server(cmd, log_path)
    stats, errors = Stats(), []
    start = time.time()
    deadline = start + args.minutes * 60
    rss, health_failures = [], []
    threads = [threading.Thread(target=client, args=(i, port, deadline, stats, args, errors))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    next_health = start
    while time.time() < deadline:
        if server.poll() is not None:
            health_failures.append(f"server exited with {server.returncode}")
            break
        rss.append((time.time() - start, rss_mb(server.pid)))
        if time.time() >= next_health:
            next_health += 10
            try:
                c = connect(port, 30)
                c.request("GET", "/health")
                if c.getresponse().status != 200:
                    health_failures.append(f"health not 200 at {time.time() - start:.0f} s")
                c.close()
            except Exception as e:  # noqa: BLE001
                health_failures.append(f"health failed at {time.time() - start:.0f} s: {e}")
        time.sleep(5)
    for t in threads:
        t.join(timeout=120)
    alive = server.poll() is None
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        health_failures.append("the server did not stop within 60 s of SIGTERM")
    log.flush()
    panics = [l for l in log_path.read_text(errors="replace").splitlines() if "panicked" in l]
    total = args.minutes * 60
    warm = [m for t, m in rss if 0.1 * total <= t < 0.1 * total + 60]
    last = [m for t, m in rss if t >= total - 60]
    lat = sorted(stats.latency)
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": args.minutes, "clients": args.clients, "server": " ".join(cmd[1:]),
        "requests_by_kind": dict(stats.by_kind), "responses_by_status": dict(stats.by_status),
        "contract_breaks": stats.bad[:50], "contract_break_count": len(stats.bad),
        "rss_mb": {"start": rss[0][1] if rss else None,
                   "after_warmup": round(statistics.mean(warm), 1) if warm else None,
                   "end": round(statistics.mean(last), 1) if last else None,
                   "max": max(m for _, m in rss) if rss else None},
        "healthy_latency_ms": {"n": len(lat), "p50": pct(0.5), "p99": pct(0.99)},
        "alive_at_end": alive, "health_failures": health_failures, "panics": panics[:10],
    }
    ok = alive and not health_failures and not panics and not stats.bad
    if warm and last:
        ok = ok and report["rss_mb"]["end"] <= report["rss_mb"]["after_warmup"] * 1.10 + 20
    report["passed"] = ok
    lines = [f"# Server soak, {report['date']}", "",
             f"`python3 benches/soak.py --minutes {args.minutes} --clients {args.clients}`: "
             f"`ferrollama {report['server']}`.", "",
             "| requests by kind | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(stats.by_kind.items())]
    lines += ["", "| responses by status | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(stats.by_status.items())]
    r = report["rss_mb"]
    lines += ["", f"RSS MB: start {r['start']:.1f}, after warm-up {r['after_warmup']}, "
              f"end {r['end']}, max {r['max']:.1f}.",
              f"Healthy chat requests answered 200: {len(lat)}, latency p50 "
              f"{report['healthy_latency_ms']['p50']} ms, p99 {report['healthy_latency_ms']['p99']} ms.",
              f"Contract breaks (a status not expected, an error body not JSON): {len(stats.bad)}"
              + (": " + "; ".join(stats.bad[:5]) if stats.bad else "") + ".",
              f"Server alive at the end: {alive}; health-check failures: {len(health_failures)}; "
              f"panics in its log: {len(panics)}. Result: {'PASSED' if ok else 'FAILED'}."]
    print("\n".join(lines))
    if args.out:
        out = pathlib.Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
