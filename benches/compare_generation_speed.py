#!/usr/bin/env python3
"""Generation throughput of an evaluation, side by side: `ferrollama eval` against
lm-evaluation-harness driving llama-cpp-python (`lm_eval --model gguf`, the way the harness
runs a GGUF model: one `/v1/completions` request per prompt to llama-cpp-python's OpenAI
server, `python -m llama_cpp.server`, 2 threads), on the same GGUF (default: the default
model, Q4_1) and the same exported task file: the harness's nq_open prompts (0-shot, greedy,
stop at newline, period or comma) with `max_gen_toks: 32`, the first N validation questions.

lm-eval's gguf backend sends no `max_tokens`, so the server's default (16) bounds its
generations, and it asks for 10 log-probabilities per token; ferrollama generates up to 32
tokens: at least as much work. Runs alternate (ferrollama, lm-eval, ...); medians. The
generations of the two are compared too, for information only: the server applies its own
default repeat penalty (1.1) to the harness's temperature-0 requests, so they are not
plain greedy decoding, and stop at 16 tokens.

Venvs as benches/compare_eval_speed.py (hf-venv with lm-eval, llamacpp-venv with
`llama-cpp-python[server]==0.3.36`).

    python3 benches/compare_generation_speed.py [--model GGUF] [--limit 500] [--runs 2]
        [--batch-size 8]

Writes benches/results/DATE-generation-speed.{md,json}.
"""

import argparse
import datetime
import glob
import json
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_cpp_build  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = llama_cpp_build.HOME
CACHE = HOME.parent
BIN = REPO / "target/release/ferrollama"
WORK = CACHE / "bench" / "generation-speed"


def task_file():
    """The exported nq_open task with max_gen_toks 32, under its own name."""
    tasks = WORK / "tasks"
    subprocess.run([str(BIN), "eval", "--task", "nq_open", "--export-tasks", str(tasks)],
                   check=True, capture_output=True)
    src = (tasks / "fl_nq_open.yaml").read_text()
    out = src.replace('task: "fl_nq_open"', 'task: "fl_nq_open_32"')
    out = re.sub(r"max_gen_toks: \d+", "max_gen_toks: 32", out)
    assert "fl_nq_open_32" in out and "max_gen_toks: 32" in out
    (tasks / "fl_nq_open_32.yaml").write_text(out)
    return tasks


def ours(args, tasks, run):
    log = WORK / f"ours-{run}.jsonl"
    t0 = time.time()
    subprocess.run([str(BIN), "eval", "--model", args.model, "--task", str(tasks / "fl_nq_open_32.yaml"),
                    "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--log-samples", str(log)],
                   check=True, capture_output=True)
    secs = time.time() - t0
    gens = {}
    for line in open(log):
        d = json.loads(line)
        gens[d["doc_id"]] = d["resps"][0][0]
    return secs, gens


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def theirs(args, tasks, run):
    """lm-eval's gguf backend against a fresh llama-cpp-python server (its start-up, like
    ferrollama's model load, is inside the time)."""
    port = free_port()
    t0 = time.time()
    server = subprocess.Popen([str(CACHE / "llamacpp-venv/bin/python"), "-m", "llama_cpp.server", "--model", args.model,
                               "--n_threads", "2", "--n_threads_batch", "2", "--n_ctx", "2048",
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        out = WORK / f"lm-eval-{run}"
        subprocess.run([str(CACHE / "hf-venv/bin/lm_eval"), "--model", "gguf",
                        "--model_args", f"base_url=http://127.0.0.1:{port},max_length=2048",
                        "--tasks", "fl_nq_open_32", "--include_path", str(tasks), "--limit", str(args.limit),
                        "--log_samples", "--output_path", str(out)],
                       check=True, capture_output=True)
        secs = time.time() - t0
    finally:
        server.terminate()
        server.wait()
    sfile = sorted(glob.glob(str(out / "**" / "samples_fl_nq_open_32_*.jsonl"), recursive=True))[-1]
    gens = {}
    for line in open(sfile):
        d = json.loads(line)
        gens[d["doc_id"]] = d["resps"][0][0]
    return secs, gens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    tasks = task_file()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    simd = "AVX-512" if " avx512f " in flags else "AVX2"
    o_times, t_times = [], []
    for run in range(args.runs):
        s, og = ours(args, tasks, run)
        o_times.append(s)
        print(f"run {run}: ferrollama {s:.1f} s", file=sys.stderr, flush=True)
        s, tg = theirs(args, tasks, run)
        t_times.append(s)
        print(f"run {run}: lm-eval + llama-cpp-python {s:.1f} s", file=sys.stderr, flush=True)
    # lm-eval's gguf backend strips its generations; compare stripped texts.
    same = sum(1 for k in tg if og.get(k, "").strip() == tg[k].strip())
    o, t = statistics.median(o_times), statistics.median(t_times)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "simd": simd, "threads": 2,
              "model": pathlib.Path(args.model).name, "prompts": args.limit, "batch_size": args.batch_size,
              "ferrollama_seconds": o_times, "lm_eval_llama_cpp_python_seconds": t_times,
              "ferrollama_prompts_per_s": args.limit / o, "lm_eval_prompts_per_s": args.limit / t,
              "speedup": t / o, "same_generation": same, "compared": len(tg)}
    md = "\n".join([
        f"# Generation throughput of an evaluation ({report['date']})", "",
        f"CPU: {cpu} ({simd}), 2 threads. Model: {report['model']}. The harness's nq_open prompts, first "
        f"{args.limit} validation questions, 0-shot, greedy, max_gen_toks 32 (lm-eval's gguf backend: the "
        f"server's default of 16); wall time including model load, medians of {args.runs} alternated runs.", "",
        "| tool | seconds (runs) | prompts/s |", "|---|---|---:|",
        f"| ferrollama eval (--batch-size {args.batch_size}) | {o:.1f} ({', '.join(f'{x:.1f}' for x in o_times)}) | {args.limit / o:.2f} |",
        f"| lm-eval --model gguf + llama-cpp-python server | {t:.1f} ({', '.join(f'{x:.1f}' for x in t_times)}) | {args.limit / t:.2f} |",
        "", f"ferrollama / lm-eval: **{t / o:.2f}x**. Same generation (stripped): {same} of {len(tg)} "
        "(for information: llama-cpp-python's server applies its default repeat penalty, 1.1, to the "
        "harness's temperature-0 requests and stops at 16 tokens).", ""])
    print(md)
    out = REPO / "benches/results" / f"{report['date']}-generation-speed"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
