#!/usr/bin/env python3
"""A stand-in for `ferrollama serve`, for developing the chat page and its test.

Standard library only. Serves crates/server/static/index.html at GET /, fakes
GET /v1/models and a streaming POST /v1/chat/completions (OpenAI shape), and
prints `listening on http://127.0.0.1:PORT` to stderr like the real server.

    python3 tests/browser/mock_server.py [--port 0] [--delay 0.03] [--api-key KEY]
"""
import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.path.join(HERE, "..", "..", "crates", "server", "static", "index.html")
MODEL = "mock-llama-1b-q8_0"

SHORT = ("Here are three colors:\n\n1. Red\n2. Green\n3. Blue\n\n"
         "(Markup such as <b>bold</b> & <script>x</script> must show as text.)")
LONG = ("Once upon a time, a lighthouse keeper named Ada kept the lamp burning on a "
        "rocky island far from the coast. Every night she climbed the spiral stairs, "
        "trimmed the wick and polished the lens until it shone. ") * 20


def pieces(text):
    """Splits text into token-like pieces (words with their leading whitespace)."""
    out, cur = [], ""
    for ch in text:
        if ch.isspace() and cur and not cur.isspace():
            out.append(cur)
            cur = ""
        cur += ch
    if cur:
        out.append(cur)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-ferrollama"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("mock: " + (fmt % args) + "\n")

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, message, typ="invalid_request_error", code=None):
        self.send_json(status, {"error": {"message": message, "type": typ, "code": code}})

    def authorized(self):
        key = self.server.api_key
        if not key:
            return True
        if self.headers.get("Authorization", "") == "Bearer " + key:
            return True
        self.error(401, "invalid API key", "authentication_error", "invalid_api_key")
        return False

    def do_GET(self):
        if self.path in ("/", "/index.html"):
            with open(PAGE, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/v1/models":
            if self.authorized():
                self.send_json(200, {"object": "list", "data": [
                    {"id": MODEL, "object": "model", "created": 0, "owned_by": "ferrollama"}]})
        else:
            self.error(404, "not found: " + self.path, "not_found_error")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            self.error(404, "not found: " + self.path, "not_found_error")
            return
        if not self.authorized():
            return
        try:
            req = json.loads(raw)
        except ValueError as e:
            self.error(400, "invalid JSON body: %s" % e)
            return
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            self.error(400, "'messages' must be a non-empty array")
            return
        last = str(msgs[-1].get("content", ""))
        if "trigger error" in last.lower():
            self.error(400, "mock error requested by the prompt")
            return
        max_tokens = int(req.get("max_tokens") or 256)
        toks = pieces(LONG if "story" in last.lower() else SHORT)
        finish = "stop"
        if len(toks) > max_tokens:
            toks, finish = toks[:max_tokens], "length"
        if not req.get("stream"):
            self.send_json(200, {
                "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(toks)},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(toks),
                          "total_tokens": 10 + len(toks)}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": MODEL}

        def event(obj):
            data = ("data: " + json.dumps(obj) + "\n\n").encode()
            # Write in two parts so the client sees events split mid-line.
            half = len(data) // 2
            self.wfile.write(data[:half])
            self.wfile.flush()
            self.wfile.write(data[half:])
            self.wfile.flush()

        try:
            time.sleep(self.server.delay * 3)  # "prompt processing"
            for i, t in enumerate(toks):
                delta = {"content": t}
                if i == 0:
                    delta["role"] = "assistant"
                event(dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": None}]))
                time.sleep(self.server.delay)
            event(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
            opts = req.get("stream_options") or {}
            if opts.get("include_usage"):
                event(dict(base, choices=[], usage={
                    "prompt_tokens": 10, "completion_tokens": len(toks),
                    "total_tokens": 10 + len(toks)}))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            if self.server.verbose:
                sys.stderr.write("mock: client went away\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.03, help="seconds between streamed pieces")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.delay, srv.api_key, srv.verbose = args.delay, args.api_key, args.verbose
    sys.stderr.write("listening on http://127.0.0.1:%d\n" % srv.server_address[1])
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
