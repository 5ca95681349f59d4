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

With `--part rs`: rejection-sampling fine-tuning from the short-SFT model against that
reward model (`ferrollama rs`, 4 answers per training prompt at temperature 1, the best
fine-tuned on with LoRA rank 16, 2 rounds): per round the held-out reward (one answer per
held-out prompt at temperature 1), the KL to the SFT model, and greedy exact match.

With `--part ppo`: PPO from the short-SFT model against the reward model trained also on
own-sample pairs (`ferrollama ppo --lora-rank 16`, 32 training prompts answered per
iteration at temperature 1, 2 passes of 8-answer steps each, KL coefficient 0.01): the
held-out reward and KL to the SFT model before and after, and greedy exact match.

    python3 benches/dpo_demo.py [--part dpo|reward|rs|ppo] [--sft-steps 4] [--rounds 2]
        [--iterations 25]

Writes benches/results/DATE-dpo-demo.{md,json} (or DATE-reward-demo, DATE-rs-demo,
DATE-ppo-demo). Not run by CI.
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


def sft_model(data, steps):
    """The short-SFT starting model (LoRA rank 16, `steps` steps of 4 conversations)."""
    sft = WORK / "sft"
    if not (sft / "model.gguf").exists() or json.loads((sft / "metrics.jsonl").read_text().splitlines()[-1])["step"] != steps:
        subprocess.run(["rm", "-rf", str(sft)], check=True)
        sh(BIN, "sft", "--data", data / "train.jsonl", "--seq-len", "512", "--batch-size", "4", "--micro-batch", "4",
           "--steps", str(steps), "--lora-rank", "16", "--out", sft, stdout=subprocess.DEVNULL,
           stderr=subprocess.DEVNULL)
    return sft / "model.gguf"


def rs_run(start, data, rm, out, a):
    """`ferrollama rs` from `start` against reward model `rm` into `out` (kept if done: the
    run's wall time is stored beside it in seconds.txt)."""
    if not (out / "seconds.txt").exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
        t0 = time.time()
        sh(BIN, "rs", "--model", start, "--prompts", data / "train.jsonl", "--val-data", data / "heldout.jsonl",
           "--reward", rm, "--out", out, "--rounds", str(a.rounds), "--samples", "4",
           "--max-new-tokens", "16", "--lora-rank", "16", "--epochs", "1", "--batch-size", "8", "--micro-batch", "8",
           "--seq-len", "128")
        (out / "seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    rounds = [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]
    return float((out / "seconds.txt").read_text()), rounds


def rs(data, task, cpu, a):
    """RS against the reward model of the synthetic pairs, then against one trained also on
    pairs from the SFT model's own samples (those of the first run's round 1)."""
    start = sft_model(data, a.sft_steps)
    if not (WORK / "reward" / "score.safetensors").exists():
        reward(data, cpu)
    runs = []
    secs, rounds = rs_run(start, data, WORK / "reward", WORK / "rs", a)
    runs.append(("synthetic pairs (400)", secs, rounds, WORK / "rs"))
    rm2 = WORK / "reward-own"
    sh(sys.executable, REPO / "scripts/date_task.py", "--out", data, "--own-samples",
       WORK / "rs" / "round-1" / "samples.jsonl")
    own = [json.loads(l) for l in (data / "own_pairs.jsonl").read_text().splitlines()]
    if not (rm2 / "score.safetensors").exists():
        both = data / "train_and_own_pairs.jsonl"
        both.write_text((data / "train_pairs.jsonl").read_text() + (data / "own_pairs.jsonl").read_text())
        p = sh(BIN, "reward", "train", "--data", both, "--val-data", data / "heldout_pairs.jsonl",
               "--seq-len", "128", "--batch-size", "8", "--micro-batch", "8", "--epochs", "1", "--lora-rank", "16",
               "--eval-every", "1000", "--out", rm2, capture_output=True, text=True)
        (rm2 / "train.log").write_text(p.stderr)
    held = [m.groups() for m in REWARD.finditer((rm2 / "train.log").read_text())]
    rm2_acc = float(held[-1][2])
    secs, rounds = rs_run(start, data, rm2, WORK / "rs-own", a)
    runs.append((f"synthetic + {len(own)} own-sample pairs", secs, rounds, WORK / "rs-own"))
    for _, _, rounds, out in runs:
        for r in rounds:
            model = start if r["round"] == 0 else out / f"round-{r['round']}" / "model.gguf"
            r["exact_match"] = exact_match(model, task)
            print(json.dumps(r), flush=True)
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "sft_steps": a.sft_steps, "own_pairs_reward_accuracy": rm2_acc,
              "runs": [{"reward_model": n, "seconds": s, "rounds": r} for n, s, r, _ in runs]}
    path = REPO / "benches/results" / f"{date}-rs-demo"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Rejection sampling on the date task ({date})", "",
             f"CPU: {cpu}, 2 threads. Start: the default model after {a.sft_steps} SFT steps (LoRA, merged). "
             "`ferrollama rs --samples 4 --max-new-tokens 16 --lora-rank 16 --epochs 1 --batch-size 8`: 400 "
             f"training prompts, 4 answers each at temperature 1, the best of each fine-tuned on, {a.rounds} rounds. "
             "Held out: 200 prompts whose dates never occur in training, one answer each at temperature 1 (reward, "
             "KL to the start), and greedy exact match (`ferrollama eval --apply-chat-template`). Reward models "
             "(`reward train --lora-rank 16 --epochs 1`): on the synthetic pairs only (held-out pairwise accuracy "
             f"0.950), and on those plus pairs from the SFT model's own round-1 samples judged by the exact check "
             f"({len(own)} pairs; {rm2_acc:.3f} on the held-out synthetic pairs).", "",
             "| reward model | time (s) | round | held-out reward (mean ± std) | KL to start (nats) | finished | sampled mean | kept mean | exact match |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, secs, rounds, _ in runs:
        for r in rounds:
            h = r["heldout"]
            em, se = r["exact_match"]
            opt = lambda d: "" if d is None else f"{d['mean']:.3f}"
            lines.append(f"| {name} | {secs:.0f} | {r['round']} | {h['reward']['mean']:.3f} ± {h['reward']['std']:.3f} | "
                         f"{h['kl']:.3f} | {h['finished']:.2f} | {opt(r['sampled'])} | {opt(r['kept'])} | "
                         f"{em:.3f} ± {se:.3f} |")
    lines += ["", "Rewards are each run's own model's scores: not comparable between the two runs."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ppo(data, task, cpu, a):
    """PPO from the short-SFT model against the reward model of `--part rs`'s second run."""
    start = sft_model(data, a.sft_steps)
    rm = WORK / "reward-own"
    if not (rm / "score.safetensors").exists():
        sys.exit("run `--part rs` first: PPO uses its reward model trained also on own-sample pairs")
    held = [m.groups() for m in REWARD.finditer((rm / "train.log").read_text())]
    rm_acc = float(held[-1][2])
    out = WORK / f"ppo-{a.iterations}-{a.ppo_lr:g}"
    flags = ["--rollouts", "32", "--minibatch", "8", "--ppo-epochs", "2", "--kl-coef", "0.01",
             "--max-new-tokens", "16", "--lora-rank", "16", "--lr", str(a.ppo_lr), "--micro-batch", "8",
             "--seq-len", "128", "--iterations", str(a.iterations)]
    if not (out / "seconds.txt").exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
        t0 = time.time()
        sh(BIN, "ppo", "--model", start, "--prompts", data / "train.jsonl", "--val-data", data / "heldout.jsonl",
           "--reward", rm, "--out", out, *flags)
        (out / "seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    secs = float((out / "seconds.txt").read_text())
    evals = [json.loads(l) for l in (out / "evals.jsonl").read_text().splitlines()]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    em = [exact_match(start, task), exact_match(out / "model.gguf", task)]
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "sft_steps": a.sft_steps, "reward_accuracy": rm_acc, "seconds": secs,
              "flags": flags, "evals": evals, "exact_match": em,
              "iterations": [{k: m[k] for k in ("iteration", "kl", "entropy", "clip_fraction", "approx_kl",
                                                "value_loss", "finished")} | {"reward": m["reward"]["mean"]}
                             for m in metrics]}
    path = REPO / "benches/results" / f"{date}-ppo-demo"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# PPO on the date task ({date})", "",
             f"CPU: {cpu}, 2 threads. Start: the default model after {a.sft_steps} SFT steps (LoRA, merged). "
             f"`ferrollama ppo {' '.join(flags)}` against the reward model trained on the synthetic and own-sample "
             f"pairs (held-out pairwise accuracy {rm_acc:.3f}), {secs:.0f} s. Held out: 200 prompts whose dates "
             "never occur in training, one answer each at temperature 1 (reward, KL to the SFT model summed over "
             "the answer's tokens), and greedy exact match (`ferrollama eval --apply-chat-template`).", "",
             "| model | held-out reward (mean ± std) | median | KL to start (nats) | finished | exact match |",
             "|---|---:|---:|---:|---:|---:|"]
    for e, (m, se) in zip(evals, em):
        h = e["heldout"]
        name = "the SFT model" if e["iteration"] == 0 else f"after {e['iteration']} PPO iterations"
        lines.append(f"| {name} | {h['reward']['mean']:.3f} ± {h['reward']['std']:.3f} | {h['reward']['median']:.3f} | "
                     f"{h['kl']:.3f} | {h['finished']:.2f} | {m:.3f} ± {se:.3f} |")
    lines += ["", "Per iteration (training answers): reward " +
              ", ".join(f"{m['reward']['mean']:.2f}" for m in metrics) + "; KL " +
              ", ".join(f"{m['kl']:.2f}" for m in metrics) + "."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft-steps", type=int, default=4)
    ap.add_argument("--part", choices=["dpo", "reward", "rs", "ppo"], default="dpo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--ppo-lr", type=float, default=1e-4)
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
    if a.part == "rs":
        return rs(data, task, cpu, a)
    if a.part == "ppo":
        return ppo(data, task, cpu, a)
    sft = sft_model(data, a.sft_steps).parent
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
