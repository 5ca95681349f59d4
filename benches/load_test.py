#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server: N concurrent streaming chat clients on loopback.

    python3 benches/load_test.py --url http://127.0.0.1:8080 [--clients 1,4,16]
        [--requests-per-client 8] [--max-tokens 64] [--temperature 0.7] [--model NAME]
        [--api-key KEY] [--json PATH]

For each client level in turn, that many threads start together; each sends
--requests-per-client chat completions (stream=true, stream_options.include_usage) one
after another, reading each stream to its end before the next. Prompts come from a fixed
list, chosen by client index and request number, so every run asks the same questions.
Per level: requests ok / failed, generated tokens (from the final usage chunk; counted
content chunks when a server sends none), aggregate generated tokens/s over the level's
wall time, time to first token and request latency p50/p99 in ms, and the median
per-stream decode rate. Prints a table, writes JSON with --json, exits 1 if any request
failed. Standard library only; traffic goes only to --url (meant for 127.0.0.1).
"""

import argparse
import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "What causes the seasons on Earth?",
    "Give me three tips for writing clean Python code.",
    "Explain how a hash table works in simple terms.",
    "Write a short poem about autumn leaves.",
    "What is the difference between a virus and a bacterium?",
    "How do I make a good cup of tea?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "Why is the sky blue?",
    "What are the benefits of regular exercise?",
    "Explain recursion to a ten-year-old.",
    "List some interesting facts about octopuses.",
    "How does a bicycle stay upright when moving?",
    "What should I pack for a weekend hiking trip?",
    "Describe the water cycle.",
    "What is a prime number? Give examples.",
    "Suggest a name for a small coffee shop and explain why.",
]


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Client:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, url, api_key, timeout):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            raise SystemExit(f"--url must be http://HOST:PORT, got {url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.base = u.path.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[: -len("/v1")]
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.conn = None
        self.reconnects = 0

    def _connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def stream_chat(self, body):
        """Sends one streaming chat request; returns a record of what came back."""
        rec = {"ok": False, "ttft": None, "latency": None, "tokens": 0, "content_chunks": 0,
               "usage": None, "finish_reason": None, "error": None}
        payload = json.dumps(body).encode()
        t0 = time.perf_counter()
        try:
            reused = self.conn is not None
            try:
                conn = self._connection()
                conn.request("POST", self.base + "/v1/chat/completions", body=payload, headers=self.headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the idle keep-alive connection without saying so (llama-server
                # does after a stream): one retry on a new connection, timed from the retry.
                self.close()
                self.reconnects += 1
                t0 = time.perf_counter()
                conn = self._connection()
                conn.request("POST", self.base + "/v1/chat/completions", body=payload, headers=self.headers)
                resp = conn.getresponse()
            if resp.status != 200:
                rec["error"] = f"HTTP {resp.status}: {resp.read()[:300].decode('utf-8', 'replace')}"
                self.close()
                return rec
            done = False
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event: lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec["error"] = f"error event: {json.dumps(chunk['error'])[:300]}"
                    break
                if chunk.get("usage"):
                    rec["usage"] = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        if rec["ttft"] is None:
                            rec["ttft"] = time.perf_counter() - t0
                        rec["content_chunks"] += 1
                    if choice.get("finish_reason"):
                        rec["finish_reason"] = choice["finish_reason"]
            # Drain whatever follows [DONE] (the chunked terminator) so the connection can be reused.
            if done:
                while resp.read(65536):
                    pass
            rec["latency"] = time.perf_counter() - t0
            if rec["error"] is None and not done:
                rec["error"] = "stream ended without data: [DONE]"
            if rec["error"] is not None or resp.will_close:
                self.close()
        except Exception as e:  # noqa: BLE001 - any failure is a failed request
            rec["error"] = f"{type(e).__name__}: {e}"
            self.close()
            return rec
        usage_tokens = (rec["usage"] or {}).get("completion_tokens")
        rec["tokens"] = usage_tokens if isinstance(usage_tokens, int) else rec["content_chunks"]
        rec["ok"] = rec["error"] is None
        return rec


def run_level(url, clients, requests_per_client=8, max_tokens=64, temperature=0.7, model=None,
              api_key=None, timeout=600.0, extra=None):
    """Runs one concurrency level; returns its summary dict (with per-request records)."""
    records = [[] for _ in range(clients)]
    reconnects = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def worker(i):
        c = Client(url, api_key, timeout)
        barrier.wait()
        for j in range(requests_per_client):
            body = {
                "messages": [{"role": "user", "content": PROMPTS[(i * requests_per_client + j) % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if model:
                body["model"] = model
            if extra:
                body.update(extra)
            rec = c.stream_chat(body)
            rec["client"], rec["request"] = i, j
            records[i].append(rec)
        c.close()
        reconnects[i] = c.reconnects

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    recs = [r for rs in records for r in rs]
    ok = [r for r in recs if r["ok"]]
    errors = [r for r in recs if not r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    lat = [r["latency"] * 1000 for r in ok]
    # Decode rate of one stream: tokens after the first over the time after the first.
    rates = [(r["tokens"] - 1) / (r["latency"] - r["ttft"]) for r in ok
             if r["ttft"] is not None and r["tokens"] > 1 and r["latency"] > r["ttft"]]
    return {
        "clients": clients,
        "requests": len(recs),
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": sorted({r["error"] for r in errors})[:5],
        "reconnects": sum(reconnects),
        "tokens": tokens,
        "tokens_from_usage": sum(1 for r in ok if r["usage"] is not None),
        "mean_tokens_per_request": tokens / len(ok) if ok else None,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p99": percentile(ttft, 99),
        "latency_ms_p50": percentile(lat, 50),
        "latency_ms_p99": percentile(lat, 99),
        "stream_tokens_per_s_p50": percentile(rates, 50),
        "records": recs,
    }


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def table(levels):
    lines = ["| clients | ok / errors | tokens | tokens/s | TTFT p50 / p99 ms | latency p50 / p99 ms | stream tok/s p50 | wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for L in levels:
        lines.append(f"| {L['clients']} | {L['ok']} / {L['errors']} | {L['tokens']} | {fmt(L['tokens_per_s'], '.1f')} | "
                     f"{fmt(L['ttft_ms_p50'])} / {fmt(L['ttft_ms_p99'])} | {fmt(L['latency_ms_p50'])} / {fmt(L['latency_ms_p99'])} | "
                     f"{fmt(L['stream_tokens_per_s_p50'], '.1f')} | {L['wall_s']:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8080 (a trailing /v1 is accepted)")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels, run in turn")
    ap.add_argument("--requests-per-client", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--model", help="model name to put in the requests (llama-server needs none)")
    ap.add_argument("--api-key")
    ap.add_argument("--timeout", type=float, default=600.0, help="socket timeout per read, s")
    ap.add_argument("--warmup", type=int, default=1, help="requests sent (and not counted) before the first level")
    ap.add_argument("--extra", type=json.loads, help='JSON object merged into every request body, e.g. \'{"ignore_eos": true}\'')
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    levels_wanted = [int(x) for x in a.clients.split(",") if x.strip()]
    common = dict(max_tokens=a.max_tokens, temperature=a.temperature, model=a.model,
                  api_key=a.api_key, timeout=a.timeout, extra=a.extra)
    if a.warmup > 0:
        w = run_level(a.url, 1, a.warmup, **common)
        if w["errors"]:
            print(f"warm-up failed: {w['error_samples']}", file=sys.stderr)
    levels = []
    for n in levels_wanted:
        L = run_level(a.url, n, a.requests_per_client, **common)
        levels.append(L)
        print(f"{n} clients: {L['ok']} ok, {L['errors']} errors, {fmt(L['tokens_per_s'], '.1f')} tokens/s, "
              f"TTFT p50 {fmt(L['ttft_ms_p50'])} ms, p99 {fmt(L['ttft_ms_p99'])} ms", file=sys.stderr)
        for e in L["error_samples"]:
            print(f"  error: {e}", file=sys.stderr)
    print(table(levels))
    if a.json:
        out = {"url": a.url, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "requests_per_client": a.requests_per_client,
               "max_tokens": a.max_tokens, "temperature": a.temperature, "model": a.model, "extra": a.extra,
               "levels": levels}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    sys.exit(1 if any(L["errors"] for L in levels) else 0)


if __name__ == "__main__":
    main()
