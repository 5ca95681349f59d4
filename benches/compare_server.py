#!/usr/bin/env python3
"""`ferrollama serve` against llama.cpp's `llama-server`: same model, same load, same client.

    python3 benches/compare_server.py [--levels 1,4,16] [--repeats 1] [--requests-per-client 8]
        [--model M.gguf] [--only llama-server|ferrollama] [--out benches/results]

For each client level and repeat it starts one server, runs benches/load_test.py's streaming
chat load at that level (max_tokens 64, temperature 0.7), stops it, then does the same with
the other; which goes first alternates between levels and repeats. llama-server runs with
`-m MODEL -t 2 -c CTX --parallel C`, ferrollama with `serve --model MODEL --parallel C --ctx CTX`
(CTX 8192). It prints, per level, tokens/s, TTFT and latency of both and the ratio
ferrollama / llama-server (median over repeats), and writes benches/results/DATE-server.md
and .json with the CPU, versions and every figure. It also measures the CPU time other
processes (builds, tests) take during each run; a run where they averaged more than
--max-other-load cores is left out of the medians when a clean run of the same pair exists.

llama-server is built once from the llama.cpp tree vendored in the llama-cpp-python 0.3.36
sdist (benches/llama_cpp_build.py: cmake from PyPI, `-DGGML_NATIVE=ON`, niced) into
~/.cache/ferrollama/bench/llama-tools/ (about 15 minutes
at -j1 on this 2-core machine; --jobs 2 when the machine is idle). ferrollama must already be
built (cargo build --release -p ferrollama). Not run by CI.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ beside the benches
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_cpp_build  # noqa: E402
import load_test  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", pathlib.Path.home() / ".cache/ferrollama/models"))
LLAMA_SERVER = llama_cpp_build.TOOLS_DIR / "llama-server"
FERROLLAMA = REPO / "target/release/ferrollama"
DEFAULT_MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_llama_server(jobs):
    return llama_cpp_build.ensure_tool("llama-server", jobs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process whose output goes to a log file; stopped on exit from the with-block."""

    def __init__(self, who, model, clients, ctx, threads, api_key=None):
        self.who, self.model, self.clients, self.ctx, self.threads = who, model, clients, ctx, threads
        self.log = tempfile.NamedTemporaryFile(prefix=f"{who}-", suffix=".log", delete=False)
        self.proc = None
        self.url = None

    def __enter__(self):
        if self.who == "llama-server":
            port = free_port()
            cmd = [str(LLAMA_SERVER), "-m", str(self.model), "-t", str(self.threads), "-c", str(self.ctx),
                   "--parallel", str(self.clients), "--host", "127.0.0.1", "--port", str(port)]
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
            self.url = f"http://127.0.0.1:{port}"
            self._wait_health()
        else:
            cmd = [str(FERROLLAMA), "serve", "--model", str(self.model), "--parallel", str(self.clients),
                   "--ctx", str(self.ctx), "--host", "127.0.0.1", "--port", "0"]
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.PIPE, text=True)
            self.url = self._wait_listening()
            self._wait_health()
        return self

    def _wait_listening(self, timeout=120):
        found = {}

        def pump():  # keeps reading stderr so the server never blocks on a full pipe
            for line in self.proc.stderr:
                self.log.write(line.encode())
                self.log.flush()
                m = re.search(r"listening on (http://\S+)", line)
                if m and "url" not in found:
                    found["url"] = m.group(1).rstrip("/")

        threading.Thread(target=pump, daemon=True).start()
        end = time.time() + timeout
        while time.time() < end:
            if "url" in found:
                return found["url"]
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"ferrollama serve printed no 'listening on' line (exit {self.proc.poll()}); log {self.log.name}")

    def _wait_health(self, timeout=120):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.who} exited with {self.proc.returncode}; log {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001 - 503 while loading, refused before listening
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.who} /health not 200 within {timeout} s; log {self.log.name}")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if exc[0] is None:
            os.unlink(self.log.name)
        return False


HZ = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """CPU-seconds the whole machine has spent busy since boot (all cores)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / HZ  # all but idle and iowait


def process_cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ  # utime + stime, every thread


def self_cpu_s():
    t = os.times()
    return t.user + t.system


def cpu_model():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def versions():
    v = {"llama.cpp": llama_cpp_build.LLAMA_CPP_PYTHON + " sdist (vendored llama.cpp)"}
    if LLAMA_SERVER.exists():
        out = subprocess.run([str(LLAMA_SERVER), "--version"], capture_output=True, text=True)
        m = re.search(r"version: (.+)", out.stdout + out.stderr)
        if m:
            v["llama-server"] = m.group(1)
    try:
        v["ferrollama"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True, check=True).stdout.strip()
        if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                          capture_output=True, text=True).stdout.strip():
            v["ferrollama"] += " + uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        pass
    return v


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


METRICS = ["tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "latency_ms_p50", "latency_ms_p99",
           "stream_tokens_per_s_p50", "mean_tokens_per_request", "errors"]


def main():
    global FERROLLAMA
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--requests-per-client", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t")
    ap.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL)
    ap.add_argument("--ferrollama", type=pathlib.Path, default=FERROLLAMA, help="the ferrollama binary")
    ap.add_argument("--only", choices=["llama-server", "ferrollama"], help="measure one server only")
    ap.add_argument("--jobs", type=int, default=1, help="parallel jobs for the one-time llama-server build")
    ap.add_argument("--max-other-load", type=float, default=0.15,
                    help="a run during which other processes used more cores than this on average is left out of "
                         "the medians when a clean run of the same server and level exists")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. what else ran)")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "benches/results")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    FERROLLAMA = a.ferrollama.resolve()
    who_all = [a.only] if a.only else ["llama-server", "ferrollama"]

    if "llama-server" in who_all:
        ensure_llama_server(a.jobs)
    if "ferrollama" in who_all and not FERROLLAMA.exists():
        sys.exit(f"no {FERROLLAMA}: cargo build --release -p ferrollama first")
    if not a.model.exists():
        sys.exit(f"no model at {a.model} (ferrollama fetches the default one on first use, e.g. `ferrollama info`)")

    runs = []  # one per (repeat, level, server)
    for rep in range(a.repeats):
        for li, n in enumerate(levels):
            order = who_all if (rep + li) % 2 == 0 else list(reversed(who_all))
            for who in order:
                load = os.getloadavg()[0]
                with Server(who, a.model, n, a.ctx, a.threads) as srv:
                    load_test.run_level(srv.url, 1, 1, a.max_tokens, a.temperature)  # warm-up, not counted
                    before = (machine_busy_s(), process_cpu_s(srv.proc.pid), self_cpu_s())
                    L = load_test.run_level(srv.url, n, a.requests_per_client, a.max_tokens, a.temperature)
                    after = (machine_busy_s(), process_cpu_s(srv.proc.pid), self_cpu_s())
                # CPU time other processes (builds, tests) took during the run: the machine's busy
                # time less the server's and this client's.
                other = (after[0] - before[0]) - (after[1] - before[1]) - (after[2] - before[2])
                L.pop("records")
                L.update(server=who, repeat=rep, loadavg_1m_before=load, server_cpu_s=after[1] - before[1],
                         other_cpu_s=max(other, 0.0), other_cores=max(other, 0.0) / L["wall_s"])
                L["clean"] = L["other_cores"] <= a.max_other_load
                runs.append(L)
                log(f"repeat {rep + 1}, {n} clients, {who}: {L['ok']} ok, {L['errors']} errors, "
                    f"{fmt(L['tokens_per_s'], '.1f')} tokens/s, TTFT p99 {fmt(L['ttft_ms_p99'])} ms "
                    f"(load before {load:.2f}, other processes {L['other_cores']:.2f} cores{'' if L['clean'] else ': not clean'})")
                for e in L["error_samples"]:
                    log(f"  error: {e}")

    summary = []
    for n in levels:
        row = {"clients": n}
        for who in who_all:
            rs = [r for r in runs if r["clients"] == n and r["server"] == who]
            clean = [r for r in rs if r["clean"]]
            row[who] = {m: median([r[m] for r in (clean or rs)]) for m in METRICS}
            row[who]["runs_used"] = f"{len(clean)} clean of {len(rs)}" if clean else f"all {len(rs)} (none clean)"
        if len(who_all) == 2:
            f, l = row["ferrollama"], row["llama-server"]
            row["ratio_tokens_per_s"] = ratio(f["tokens_per_s"], l["tokens_per_s"])
            row["ratio_ttft_ms_p99"] = ratio(f["ttft_ms_p99"], l["ttft_ms_p99"])
            row["ratio_latency_ms_p50"] = ratio(f["latency_ms_p50"], l["latency_ms_p50"])
        summary.append(row)

    date = datetime.date.today().isoformat()
    cpu = cpu_model()
    vers = versions()
    header = (f"{date}, {cpu}, {os.cpu_count()} CPUs; {a.repeats} repeat(s); per client {a.requests_per_client} streaming chat requests, "
              f"max_tokens {a.max_tokens}, temperature {a.temperature}; llama-server -t {a.threads} -c {a.ctx} --parallel C, "
              f"ferrollama serve --ctx {a.ctx} --parallel C; model {a.model.name}; versions: "
              + ", ".join(f"{k} {v}" for k, v in vers.items()))
    lines = [header]
    if a.note:
        lines += ["", a.note]
    lines += ["", "Medians over the clean repeats (other processes used at most "
              f"{a.max_other_load} cores during the run; all repeats if none was clean). TTFT and latency in ms; "
              "tokens/s = generated tokens of all clients / wall time.", ""]
    cols = "| clients | server | tokens/s | TTFT p50 / p99 | latency p50 / p99 | stream tok/s p50 | tokens/request | errors | runs |"
    lines += [cols, "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in summary:
        for who in who_all:
            m = row[who]
            lines.append(f"| {row['clients']} | {who} | {fmt(m['tokens_per_s'], '.1f')} | {fmt(m['ttft_ms_p50'])} / {fmt(m['ttft_ms_p99'])} | "
                         f"{fmt(m['latency_ms_p50'])} / {fmt(m['latency_ms_p99'])} | {fmt(m['stream_tokens_per_s_p50'], '.1f')} | "
                         f"{fmt(m['mean_tokens_per_request'], '.1f')} | {fmt(m['errors'])} | {m['runs_used']} |")
    if len(who_all) == 2:
        lines += ["", "| clients | ferrollama / llama-server tokens/s | TTFT p99 | latency p50 |", "|---:|---:|---:|---:|"]
        for row in summary:
            lines.append(f"| {row['clients']} | {fmt(row['ratio_tokens_per_s'], '.2f')} | {fmt(row['ratio_ttft_ms_p99'], '.2f')} | "
                         f"{fmt(row['ratio_latency_ms_p50'], '.2f')} |")
    lines += ["", "Other processes' CPU during each run, in cores (load average before it): " + ", ".join(
        f"{r['server']}@{r['clients']}: {r['other_cores']:.2f} ({r['loadavg_1m_before']:.2f})" for r in runs)]
    text = "\n".join(lines)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{date}-server.md").write_text(text + "\n")
    (a.out / f"{date}-server.json").write_text(json.dumps(
        {"date": date, "cpu": cpu, "versions": vers, "note": a.note, "args": {k: str(v) for k, v in vars(a).items()},
         "summary": summary, "runs": runs}, indent=1) + "\n")
    log(f"wrote {a.out / (date + '-server.md')} and .json")
    sys.exit(1 if any(r["errors"] for r in runs) else 0)


if __name__ == "__main__":
    main()
