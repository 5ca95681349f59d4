#!/usr/bin/env python3
"""Every built-in task of `ferrollama eval` on the default model (Q4_1) and its f16 (the
Q4_1 dequantized by `ferrollama convert`), 0-shot (GSM8K: the harness's 5-shot),
2 threads, one run each: documents, seconds (wall time with model load), metrics. Writes
benches/results/DATE-eval-tasks.{md,json}; the README's table is that file.

    python3 benches/eval_tasks.py [--limit 1000] [--mmlu-limit 1000] [--gsm8k-limit 100]
        [--models q4_1,f16] [--note TEXT]

--limit caps each task's documents (and each MMLU subject's); tasks with fewer run whole.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", pathlib.Path.home() / ".cache/ferrollama/models"))
BIN = REPO / "target/release/ferrollama"
TASKS = [("arc_easy", 0), ("arc_challenge", 0), ("hellaswag", 0), ("piqa", 0), ("boolq", 0), ("winogrande", 0),
         ("openbookqa", 0), ("sciq", 0), ("copa", 0), ("commonsense_qa", 0), ("social_iqa", 0), ("lambada", 0),
         ("mmlu", 0), ("gsm8k", 5)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--gsm8k-limit", type=int, default=100)
    ap.add_argument("--mmlu-limit", type=int, default=1000, help="documents per MMLU subject")
    ap.add_argument("--models", default="q4_1,f16")
    ap.add_argument("--note", default="", help="a line for the report (how the machine was loaded)")
    args = ap.parse_args()
    q41 = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"
    f16 = HOME / "SmolLM2-135M-Instruct.f16-from-q4_1.gguf"
    if not f16.exists():
        subprocess.run([BIN, "convert", q41, f16, "--type", "f16"], check=True, stdout=subprocess.DEVNULL)
    models = {"q4_1": q41, "f16": f16}
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    rows = []
    for tag in args.models.split(","):
        for task, shots in TASKS:
            limit = {"gsm8k": args.gsm8k_limit, "mmlu": args.mmlu_limit}.get(task, args.limit)
            t0 = time.time()
            res = subprocess.run([str(BIN), "eval", "--model", str(models[tag]), "--task", task, "--num-fewshot",
                                  str(shots), "--limit", str(limit), "--json"],
                                 check=True, capture_output=True, text=True, env=env)
            secs = time.time() - t0
            out = json.loads(res.stdout)
            r = out["results"][task]
            if task == "mmlu":
                n = sum(v["effective"] for v in out["n-samples"].values())
            else:
                n = out["n-samples"][task]["effective"]
            metrics = {k: v for k, v in r.items() if k != "alias" and "stderr" not in k}
            stderr = {k.replace("_stderr", ""): v for k, v in r.items() if "stderr" in k}
            row = {"model": tag, "task": task, "shots": shots, "docs": n, "seconds": round(secs, 1),
                   "metrics": metrics, "stderr": stderr}
            rows.append(row)
            print(json.dumps(row), flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "limit": args.limit, "rows": rows}
    lines = [f"# Built-in tasks on the default model ({report['date']})", "",
             f"CPU: {cpu}, 2 threads; at most {args.limit} documents a task, {args.mmlu_limit} an MMLU subject, "
             f"GSM8K {args.gsm8k_limit}. {args.note}", "",
             "| task | shots | docs | metric | Q4_1 | f16 | s (Q4_1 / f16) |", "|---|---:|---:|---|---:|---:|---|"]
    by = {(r["model"], r["task"]): r for r in rows}
    for task, shots in TASKS:
        a, b = by.get(("q4_1", task)), by.get(("f16", task))
        base = a or b
        if base is None:
            continue
        for i, k in enumerate(base["metrics"]):
            fmt = lambda r: "" if r is None else f"{r['metrics'][k]:.4f} ± {r['stderr'].get(k, 'N/A') if isinstance(r['stderr'].get(k), str) else format(r['stderr'].get(k), '.4f')}"  # noqa: E731
            name = k.replace(",none", "")
            lines.append(f"| {task if i == 0 else ''} | {shots if i == 0 else ''} | {base['docs'] if i == 0 else ''} | "
                         f"{name} | {fmt(a)} | {fmt(b)} | "
                         f"{(str(a['seconds']) if a else '-') + ' / ' + (str(b['seconds']) if b else '-') if i == 0 else ''} |")
    md = "\n".join(lines) + "\n"
    print(md)
    out = REPO / "benches/results" / f"{report['date']}-eval-tasks"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
