#!/usr/bin/env python3
"""pass@1 of the default model (or --model) on the code tasks, greedy, each program run in
ferrollama's sandbox, with the time each task took (generation + running the programs;
Rust MBPP also checks its reference solutions first), and the generative QA tasks with
their scores; one task at a time, nothing else running.

    python3 benches/eval_code_tasks.py [--model GGUF] [--tasks humaneval,mbpp,mbpp_rust]
        [--limit N] [--name code-tasks]

Any generation task runs the same way (`--tasks squad,coqa,... --name qa-tasks`).
Writes benches/results/DATE-NAME.{md,json} (the samples logs stay in
~/.cache/ferrollama/bench/code-tasks/).
"""

import argparse
import datetime
import json
import pathlib
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/ferrollama"
WORK = pathlib.Path.home() / ".cache/ferrollama/bench/code-tasks"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--tasks", default="humaneval,mbpp,mbpp_rust")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--name", default="code-tasks")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rows = []
    for task in args.tasks.split(","):
        cmd = [str(BIN), "eval", "--task", task, "--json", "--log-samples", str(WORK / f"{task}.jsonl")]
        if args.model:
            cmd += ["--model", args.model]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        t0 = time.time()
        r = subprocess.run(cmd, check=True, capture_output=True, text=True)
        secs = time.time() - t0
        res = json.loads(r.stdout)["results"][task]
        notes = [l for l in r.stderr.splitlines() if "left out" in l or "reference solutions" in l]
        verdicts = {}
        for line in open(WORK / f"{task}.jsonl"):
            for v in json.loads(line).get("execution", []):
                kind = v["result"].split(" (")[0]
                verdicts[kind] = verdicts.get(kind, 0) + 1
        metrics = {k: v for k, v in res.items() if "," in k and "stderr" not in k and k != "alias"}
        row = {"task": task, "seconds": round(secs, 1), "metrics": metrics,
               "stderr": {k: v for k, v in res.items() if "_stderr," in k}, "notes": notes,
               "results": verdicts}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "model": args.model or "default (SmolLM2-135M-Instruct Q4_1)",
              "rows": rows}
    lines = [f"# {args.name}: greedy generation ({report['date']})", "",
             f"CPU: {cpu}, 2 threads. Model: {report['model']}. Limit: {args.limit or 'none'}. "
             "Code runs in ferrollama's sandbox, 2 programs at a time.", "",
             "| task | metric | value | problems' results | seconds |", "|---|---|---:|---|---:|"]
    for r in rows:
        for k, v in r["metrics"].items():
            se = r["stderr"].get(k.replace(",", "_stderr,"), None)
            res = ", ".join(f"{n} {c}" for c, n in sorted(r["results"].items(), key=lambda x: -x[1])) or "-"
            lines.append(f"| {r['task']} | {k} | {v:.4f}" + (f" ± {se:.4f}" if isinstance(se, float) else "")
                         + f" | {res} | {r['seconds']} |")
    for r in rows:
        for n in r["notes"]:
            lines.append(f"\n{n}")
    md = "\n".join(lines) + "\n"
    print(md)
    out = REPO / "benches/results" / f"{report['date']}-{args.name}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
