#!/usr/bin/env python3
"""HellaSwag throughput side by side: `ferrollama eval --task hellaswag --limit N` against
llama.cpp's own `llama-perplexity --hellaswag` (built from the llama-cpp-python 0.3.36
sdist by benches/llama_cpp_build.py; it batches up to 32 tasks per pass and shares each
context across its four endings, the fastest llama.cpp way to score HellaSwag), on the same
GGUF (default: the default model, Q4_1), 2 threads, alternating runs, medians.

The same N documents go to both (the harness's cleaned-up HellaSwag texts, written in
llama.cpp's six-lines-per-task format). llama.cpp scores acc_norm by its own rule (mean
token log-probability of `context + " " + ending`), so its accuracy is shown, not compared.

Then, once (it is slow), lm-evaluation-harness itself driving llama-cpp-python: `lm_eval
--model gguf` posting every (context, continuation) to llama-cpp-python's OpenAI server
(`python -m llama_cpp.server`, 2 threads) with `echo` and `logprobs`, the way the harness
runs GGUF models, on the same exported task file and the first `--lm-eval-docs` documents
(one HTTP request per continuation: a tenth of a document a second here, so 50 by default;
0 skips it). Both venvs live in ~/.cache/ferrollama (hf-venv from compare_lm_eval.py; llamacpp-venv
with `pip install llama-cpp-python[server]==0.3.36`, built from source with native flags).

    python3 benches/compare_eval_speed.py [--model GGUF] [--docs 500] [--runs 3]
        [--batch-size 8] [--lm-eval-docs 50]

Writes benches/results/DATE-eval-speed.{md,json}.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_cpp_build  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = llama_cpp_build.HOME
BIN = REPO / "target/release/ferrollama"
WORK = HOME.parent / "bench" / "eval"


def timed(cmd, env=None):
    t0 = time.time()
    r = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, env=env)
    return time.time() - t0, r.stdout + r.stderr, r.stdout


def lm_eval_gguf(args, tasks_dir):
    """Seconds lm-eval's gguf backend takes over llama-cpp-python's server."""
    import socket
    import urllib.request
    cache = HOME.parent
    server_py = cache / "llamacpp-venv/bin/python"
    lm_eval = cache / "hf-venv/bin/lm_eval"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(server_py), "-m", "llama_cpp.server", "--model", args.model, "--n_threads", "2",
                               "--n_threads_batch", "2", "--n_ctx", "2048", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(1)
        out = WORK / "lm-eval-gguf-out"
        secs, _, _ = timed([lm_eval, "--model", "gguf", "--model_args", f"base_url=http://127.0.0.1:{port},max_length=2048",
                            "--tasks", "fl_hellaswag", "--include_path", tasks_dir, "--num_fewshot", 0,
                            "--limit", args.lm_eval_docs, "--output_path", out])
        print(f"lm-eval + llama-cpp-python: {secs:.1f} s", file=sys.stderr)
        return secs
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lm-eval-docs", type=int, default=50)
    args = ap.parse_args()
    perplexity = llama_cpp_build.ensure_tool("llama-perplexity")
    tasks_dir = WORK / "tasks"
    subprocess.run([str(BIN), "eval", "--task", "hellaswag", "--export-tasks", str(tasks_dir)], check=True,
                   stdout=subprocess.DEVNULL)
    docs = [json.loads(l) for l in open(tasks_dir / "fl_hellaswag.validation.jsonl")][: args.docs]
    hs_file = WORK / f"hellaswag-{args.docs}.txt"
    with open(hs_file, "w") as f:
        for d in docs:
            f.write("\n".join([d["query"], str(int(d["label"]))] + d["choices"]) + "\n")
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    ours_cmd = [BIN, "eval", "--model", args.model, "--task", "hellaswag", "--limit", args.docs,
                "--batch-size", args.batch_size, "--json"]
    theirs_cmd = [perplexity, "-m", args.model, "-f", hs_file, "--hellaswag", "--hellaswag-tasks", args.docs, "-t", 2]
    ours, theirs = [], []
    ours_acc = theirs_acc = None
    for i in range(args.runs):
        s, _, out = timed(ours_cmd, env)
        ours.append(s)
        res = json.loads(out)["results"]["hellaswag"]
        ours_acc = (res["acc,none"], res["acc_norm,none"])
        s, text, _ = timed(theirs_cmd)
        theirs.append(s)
        m = re.findall(r"^%d\t([0-9.]+)%%" % args.docs, text, re.M)
        theirs_acc = float(m[-1]) / 100 if m else None
        print(f"run {i + 1}: ferrollama {ours[-1]:.1f} s, llama-perplexity {theirs[-1]:.1f} s", file=sys.stderr)
    lm_eval_secs = lm_eval_gguf(args, tasks_dir) if args.lm_eval_docs else None
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    simd = "AVX-512 (VNNI, BF16)" if "avx512_vnni" in flags and "avx512_bf16" in flags else ("AVX-512" if "avx512f" in flags else "AVX2")
    mo, mt = statistics.median(ours), statistics.median(theirs)
    report = {
        "date": datetime.date.today().isoformat(), "cpu": f"{cpu}, {os.cpu_count()} threads, {simd}",
        "model": pathlib.Path(args.model).name, "docs": args.docs, "batch_size": args.batch_size,
        "ferrollama_seconds": ours, "llama_perplexity_seconds": theirs,
        "ferrollama_docs_per_s": args.docs / mo, "llama_perplexity_docs_per_s": args.docs / mt,
        "speedup": mt / mo, "ferrollama_acc": ours_acc[0], "ferrollama_acc_norm": ours_acc[1],
        "llama_perplexity_acc_norm_own_rule": theirs_acc,
        "lm_eval_llama_cpp_python": None if lm_eval_secs is None else {
            "docs": args.lm_eval_docs, "seconds": lm_eval_secs, "docs_per_s": args.lm_eval_docs / lm_eval_secs},
    }
    fastest_peer = max([args.docs / mt] + ([args.lm_eval_docs / lm_eval_secs] if lm_eval_secs else []))
    report["speedup_vs_fastest_peer"] = (args.docs / mo) / fastest_peer
    md = "\n".join([
        f"# HellaSwag throughput ({report['date']})", "",
        f"CPU: {report['cpu']}. Model {report['model']}, first {args.docs} validation documents, 2 threads, "
        f"{args.runs} alternated runs, medians (wall time including model load).", "",
        "| tool | seconds | docs/s | acc_norm |", "|---|---:|---:|---:|",
        f"| ferrollama eval (batch {args.batch_size}) | {mo:.1f} | {args.docs / mo:.2f} | {ours_acc[1]:.4f} |",
        f"| llama-perplexity --hellaswag | {mt:.1f} | {args.docs / mt:.2f} | {theirs_acc} (own rule) |"]
        + ([f"| lm-eval + llama-cpp-python server ({args.lm_eval_docs} docs, one run) | {lm_eval_secs:.1f} | "
            f"{args.lm_eval_docs / lm_eval_secs:.2f} | |"] if lm_eval_secs else [])
        + ["", f"Speed-up over the fastest peer: **{report['speedup_vs_fastest_peer']:.2f}x** "
           f"(over llama-perplexity {mt / mo:.2f}x).", ""])
    print(json.dumps(report, indent=2))
    print(md)
    out = REPO / "benches/results" / f"{report['date']}-eval-speed"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
