#!/usr/bin/env python3
"""DPO measured on the date task of scripts/date_task.py: preference pairs on the 400
training questions (the right answer chosen; a wrong one rejected: one of the mistakes
models make with dates, drawn with the seed) and 200 held-out questions whose dates never
occur in training. For each starting model, `ferrollama dpo --lora-rank 16` (1 epoch,
8 pairs a step, beta 0.1), then:

  - the held-out pairs' log-prob margin log p(chosen) - log p(rejected) and the share of
    pairs whose chosen answer is the more likely, before and after (printed by dpo);
  - held-out exact match of greedy answers (`ferrollama eval --apply-chat-template`),
    before and after.

Starting models: the default model itself, and the same after a short SFT (LoRA rank 16,
4 steps of 4 conversations: a model that has seen the task a little, as Llama 2's RLHF
starts from its SFT model); from the latter also DPO with `--nll-weight 0.2` (a negative
log-likelihood term on the chosen answers, as Llama 3's DPO).

With `--part reward`: a helpfulness reward model on the same pairs instead
(`ferrollama reward train --lora-rank 16`, 1 epoch, the pairs' margins used), its
held-out pairwise accuracy before and after training.

    python3 benches/dpo_demo.py [--part dpo|reward] [--sft-steps 4]

Writes benches/results/DATE-dpo-demo.{md,json} (or DATE-reward-demo.{md,json}). Not run
by CI.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
WORK = CACHE / "bench/dpo-demo"
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
DEFAULT_MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"
REWARD = re.compile(r"step (\d+), held out: loss ([\d.]+), pairwise accuracy ([\d.]+), score margin ([-+\d.]+)")
HELD = re.compile(r"step (\d+), held out: loss ([\d.]+), reward margin ([-+\d.]+) \(accuracy ([\d.]+)\), "
                  r"log-prob margin ([-+\d.]+) \(chosen more likely in ([\d.]+)\)")


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def exact_match(model, task):
    out = subprocess.run([str(BIN), "eval", "--model", str(model), "--task", task, "--json",
                          "--apply-chat-template"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)["results"]["date_words"]
    return r["exact_match,strip"], r["exact_match_stderr,strip"]


def dpo(model, data, out, extra=()):
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t0 = time.time()
    p = sh(BIN, "dpo", "--model", model, "--data", data / "train_pairs.jsonl", "--val-data",
           data / "heldout_pairs.jsonl", "--seq-len", "128", "--batch-size", "8", "--micro-batch", "8",
           "--epochs", "1", "--lora-rank", "16", "--eval-every", "1000", "--out", out, *extra,
           capture_output=True, text=True)
    secs = time.time() - t0
    held = [m.groups() for m in HELD.finditer(p.stderr)]
    first, last = held[0], held[-1]
    figures = lambda g: {"loss": float(g[1]), "reward_margin": float(g[2]), "reward_accuracy": float(g[3]),
                         "logp_margin": float(g[4]), "logp_accuracy": float(g[5])}
    return secs, figures(first), figures(last)


def reward(data, cpu):
    out = WORK / "reward"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t0 = time.time()
    p = sh(BIN, "reward", "train", "--data", data / "train_pairs.jsonl", "--val-data", data / "heldout_pairs.jsonl",
           "--seq-len", "128", "--batch-size", "8", "--micro-batch", "8", "--epochs", "1", "--lora-rank", "16",
           "--eval-every", "1000", "--out", out, capture_output=True, text=True)
    secs = time.time() - t0
    held = [m.groups() for m in REWARD.finditer(p.stderr)]
    (s0, l0, a0, m0), (s1, l1, a1, m1) = held[0], held[-1]
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "seconds": round(secs, 1), "steps": int(s1),
              "before": {"loss": float(l0), "accuracy": float(a0), "margin": float(m0)},
              "after": {"loss": float(l1), "accuracy": float(a1), "margin": float(m1)}}
    path = REPO / "benches/results" / f"{date}-reward-demo"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# A helpfulness reward model on the date task ({date})", "",
             f"CPU: {cpu}, 2 threads. 400 training pairs, 200 held-out pairs (dates never seen in training); "
             "`ferrollama reward train --lora-rank 16 --epochs 1 --batch-size 8` (lr 1e-4, margins 1 for a wrong form, "
             f"3 for a wrong date), {secs:.0f} s.", "",
             "| | held-out loss | pairwise accuracy | mean score margin |", "|---|---:|---:|---:|",
             f"| before training (random score head) | {float(l0):.4f} | {float(a0):.3f} | {float(m0):+.3f} |",
             f"| after {s1} steps | {float(l1):.4f} | {float(a1):.3f} | {float(m1):+.3f} |"]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft-steps", type=int, default=4)
    ap.add_argument("--part", choices=["dpo", "reward"], default="dpo")
    a = ap.parse_args()
    if not BIN.exists():
        sh("cargo", "build", "--release", cwd=REPO)
    DEFAULT_MODEL.exists() or sh(BIN, "info", stdout=subprocess.DEVNULL)
    data = WORK / "data"
    sh(sys.executable, REPO / "scripts/date_task.py", "--out", data, stdout=subprocess.DEVNULL)
    task = str(data / "date_words.yaml")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    if a.part == "reward":
        return reward(data, cpu)
    sft = WORK / "sft"
    subprocess.run(["rm", "-rf", str(sft)], check=True)
    sh(BIN, "sft", "--data", data / "train.jsonl", "--seq-len", "512", "--batch-size", "4", "--micro-batch", "4",
       "--steps", str(a.sft_steps), "--lora-rank", "16", "--out", sft, stdout=subprocess.DEVNULL,
       stderr=subprocess.DEVNULL)
    rows = []
    after_sft = f"after {a.sft_steps} SFT steps (LoRA, merged, f32)"
    runs = [("the default model (Q4_1)", "DPO", "from-base", DEFAULT_MODEL, ()),
            (after_sft, "DPO", "from-sft", sft / "model.gguf", ()),
            (after_sft, "DPO + 0.2 NLL on chosen", "from-sft-nll", sft / "model.gguf", ("--nll-weight", "0.2"))]
    measured = {}
    for label, method, name, model, extra in runs:
        if model not in measured:
            measured[model] = exact_match(model, task)
        before = measured[model]
        secs, first, last = dpo(model, data, WORK / name, extra)
        after = exact_match(WORK / name / "model.gguf", task)
        rows.append({"start": label, "method": method, "seconds": round(secs, 1), "before": first, "after": last,
                     "exact_match_before": before, "exact_match_after": after})
        print(json.dumps(rows[-1]), flush=True)
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "sft_steps": a.sft_steps, "rows": rows}
    out = REPO / "benches/results" / f"{date}-dpo-demo"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# DPO demonstration: the date task ({date})", "",
             f"CPU: {cpu}, 2 threads. 400 training pairs, 200 held-out pairs and questions; "
             "`ferrollama dpo --lora-rank 16 --epochs 1 --batch-size 8` (beta 0.1, lr 5e-5); exact match by "
             "`ferrollama eval --apply-chat-template` (greedy).", "",
             "| start | method | time (s) | held-out log-prob margin | chosen more likely | held-out reward accuracy | exact match |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, f = r["before"], r["after"]
        (eb, sb), (ea, sa) = r["exact_match_before"], r["exact_match_after"]
        lines.append(f"| {r['start']} | {r['method']} | {r['seconds']} | {b['logp_margin']:+.2f} -> {f['logp_margin']:+.2f} | "
                     f"{b['logp_accuracy']:.3f} -> {f['logp_accuracy']:.3f} | {b['reward_accuracy']:.3f} -> "
                     f"{f['reward_accuracy']:.3f} | {eb:.3f} ± {sb:.3f} -> {ea:.3f} ± {sa:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
