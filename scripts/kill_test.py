#!/usr/bin/env python3
"""Kills training runs with SIGKILL at random moments and checks that resuming them ends with
the files an uninterrupted run writes, bit for bit.

    python3 scripts/kill_test.py [--kills 50] [--seed 1] [--binary target/release/ferrollama]
                                 [--kinds train,sft,...] [--out benches/results/DATE-kill-test]

Every kind of training the CLI has (pretraining, full SFT, LoRA SFT, a reward model, DPO,
rejection sampling, PPO) runs once straight through on small settings, checkpointing every
step; then, per kind, runs are started, killed at a time drawn uniformly over the straight
run's duration, and started again with `--resume`, until the kind's share of the kills has
landed; the run then finishes and its outputs (model.gguf, the Hugging Face export, the
adapter, the reward head, the last checkpoint, every step's loss) are compared with the
straight run's. A kill that finds a checkpoint half written (a `*.tmp` left behind) is
counted as such: those are the kills a crash-safe writer exists for.

Writes OUT.json and OUT.md; exits non-zero on any difference.
"""

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny" / "tiny-260k-q8_0.gguf"
WORDS = ["cat", "dog", "sun", "tree", "boat", "rain", "star", "fish"]


def write_data(d):
    sft = d / "sft.jsonl"
    pairs = d / "pairs.jsonl"
    corpus = d / "corpus.txt"
    with open(sft, "w") as f:
        for i in range(48):
            w = WORDS[i % 8]
            f.write(json.dumps({"prompt": f"Say {w} twice, {i}.", "completion": f"{w} {w}"}) + "\n")
    with open(pairs, "w") as f:
        for i in range(48):
            w = WORDS[i % 8]
            f.write(json.dumps({"prompt": f"Tell me about the {w}, {i}.",
                                "chosen": f"The {w} is kind.", "rejected": f"The {w} is bad.",
                                "margin": 1}) + "\n")
    s = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "A lazy afternoon by the river: the dog sleeps while the fox watches.",
         "In 1984 the weather was cold, and in 2023 it was warmer than ever.",
         "Small models learn quickly when the text repeats what they have seen."]
    corpus.write_text("\n%\n".join(f"{s[i % 4]} {s[(i // 4 + 1) % 4]}" for i in range(120)))
    return sft, pairs, corpus


def kinds(sft, pairs, corpus, reward_dir):
    """Arguments of each kind of run (without --out / --resume)."""
    tiny = str(TINY)
    tune = ["--batch-size", "4", "--micro-batch", "2", "--seq-len", "48", "--checkpoint-every", "1"]
    return {
        "train": ["train", "--preset", "260k", "--vocab-size", "300", "--separator", "%",
                  "--seq-len", "32", "--batch-tokens", "128", "--micro-batch", "2",
                  "--warmup", "10", "--eval-every", "0", "--checkpoint-every", "1",
                  "--lr", "1e-3", "--steps", "60", "--data", str(corpus)],
        "sft": ["sft", "--model", tiny, "--data", str(sft), "--steps", "30", "--lr", "1e-3", *tune],
        "sft-lora": ["sft", "--model", tiny, "--data", str(sft), "--lora-rank", "4",
                     "--lora-targets", "q,v,down", "--steps", "40", "--lr", "1e-2", *tune],
        "reward": ["reward", "train", "--model", tiny, "--data", str(pairs), "--lora-rank", "4",
                   "--steps", "24", "--lr", "3e-3", *tune],
        "dpo": ["dpo", "--model", tiny, "--data", str(pairs), "--lora-rank", "4",
                "--steps", "24", "--lr", "3e-3", *tune],
        "rs": ["rs", "--model", tiny, "--prompts", str(pairs), "--reward", str(reward_dir),
               "--safety-reward", str(reward_dir), "--rounds", "2", "--samples", "2",
               "--max-new-tokens", "12", "--stop", ".", "--lora-rank", "4", "--steps", "4",
               "--batch-size", "4", "--micro-batch", "4", "--seq-len", "48",
               "--val-fraction", "0.25"],
        "ppo": ["ppo", "--model", tiny, "--prompts", str(pairs), "--reward", str(reward_dir),
                "--safety-reward", str(reward_dir), "--iterations", "4", "--rollouts", "4",
                "--minibatch", "2", "--max-new-tokens", "12", "--lora-rank", "4"],
    }


def fingerprint(out):
    """Hashes of every output that must not depend on interruptions: weights, exports,
    configs, the last checkpoint, and each step's metrics without their timings."""
    got = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if not p.is_file() or ".tmp" in rel or rel.endswith((".png", ".svg", ".log")):
            continue
        if rel.startswith("checkpoints/") and "/" in rel[len("checkpoints/"):]:
            # Only the checkpoint `latest` names is the run's result; how many older ones
            # remain depends on the retention policy, not on interruptions.
            latest = (out / "checkpoints" / "latest").read_text().strip()
            if not rel.startswith(f"checkpoints/{latest}/"):
                continue
        data = p.read_bytes()
        if rel.endswith((".json", ".jsonl", ".toml")):
            # Settings files name the run directory; where it lies is not the result.
            data = data.replace(str(out).encode(), b"<out>")
        if rel.endswith("state.json"):
            # A checkpoint's settings digest covers paths (the run directory's among them).
            state = json.loads(data)
            state.pop("settings", None)
            data = json.dumps(state, sort_keys=True).encode()
        if rel.endswith(".jsonl"):
            rows = []
            for line in data.decode().splitlines():
                row = json.loads(line)
                for k in list(row):
                    if "per_s" in k or k.endswith("seconds") or k in ("elapsed", "time"):
                        del row[k]
                rows.append(row)
            data = json.dumps(rows, sort_keys=True).encode()
        got[rel] = hashlib.sha256(data).hexdigest()
    return got


def run(binary, args, out, resume, log):
    cmd = [binary, *args, "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, stdout=log, stderr=log)


def half_written(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tmp"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "ferrollama"))
    p.add_argument("--kinds", default="train,sft,sft-lora,reward,dpo,rs,ppo")
    p.add_argument("--out", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = pathlib.Path(tempfile.mkdtemp(prefix="ferrollama-kill-"))
    sft, pairs, corpus = write_data(work)
    reward_dir = work / "reward-model"
    chosen = [k for k in args.kinds.split(",") if k]
    # The reward model that rs and ppo score with: trained once, straight.
    if {"rs", "ppo"} & set(chosen):
        base = kinds(sft, pairs, corpus, reward_dir)["reward"]
        subprocess.run([args.binary, *base, "--out", str(reward_dir)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    all_kinds = kinds(sft, pairs, corpus, reward_dir)
    unknown = [k for k in chosen if k not in all_kinds]
    if unknown:
        sys.exit(f"unknown kinds: {unknown}")
    share = {k: args.kills // len(chosen) + (i < args.kills % len(chosen))
             for i, k in enumerate(chosen)}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "kills": args.kills, "seed": args.seed, "kinds": []}
    failed = False
    for kind in chosen:
        a = all_kinds[kind]
        # Every run directory is called `run`: exports take their model name from it.
        straight = work / kind / "straight" / "run"
        log = open(work / f"{kind}.log", "w")
        t0 = time.time()
        if run(args.binary, a, straight, False, log).wait() != 0:
            sys.exit(f"{kind}: the straight run failed; see {work / (kind + '.log')}")
        duration = time.time() - t0
        want = fingerprint(straight)
        kills, mid_write, trials, resumes, diffs = [], 0, 0, 0, []
        while len(kills) < share[kind] or trials == 0:
            trials += 1
            out = work / kind / f"killed-{trials}" / "run"
            resume = False
            while True:
                child = run(args.binary, a, out, resume, log)
                resumes += resume
                resume = True
                if len(kills) >= share[kind]:
                    rc = child.wait()
                    break
                at = rng.uniform(0.02, 1.0) * duration
                try:
                    rc = child.wait(timeout=at)
                    break  # finished before the kill
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    partial = half_written(out)
                    mid_write += bool(partial)
                    kills.append({"at_s": round(at, 3), "half_written": partial})
            if rc != 0:
                failed = True
                diffs.append(f"trial {trials}: exit code {rc}")
                continue
            got = fingerprint(out)
            for name in sorted(set(want) | set(got)):
                if want.get(name) != got.get(name):
                    failed = True
                    diffs.append(f"trial {trials}: {name} differs")
        entry = {"kind": kind, "straight_s": round(duration, 2), "kills": len(kills),
                 "mid_checkpoint_write": mid_write, "trials": trials, "resumes": resumes,
                 "files_compared": len(want), "differences": diffs, "kill_log": kills}
        report["kinds"].append(entry)
        print(f"{kind}: {len(kills)} kills ({mid_write} mid-write) over {trials} runs, "
              f"{resumes} resumes, {len(want)} files compared: "
              f"{'IDENTICAL' if not diffs else '; '.join(diffs)}", flush=True)
    total = sum(k["kills"] for k in report["kinds"])
    lines = [f"# Kill test, {report['date']}", "",
             f"`python3 scripts/kill_test.py --kills {args.kills} --seed {args.seed}`: "
             f"{total} SIGKILLs, each run resumed with `--resume` until done, outputs compared "
             "with an uninterrupted run's.", "",
             "| kind | straight run s | kills | mid checkpoint write | runs | resumes | files compared | result |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for k in report["kinds"]:
        lines.append(f"| {k['kind']} | {k['straight_s']} | {k['kills']} | {k['mid_checkpoint_write']} | "
                     f"{k['trials']} | {k['resumes']} | {k['files_compared']} | "
                     f"{'bit-identical' if not k['differences'] else 'DIFFERS: ' + '; '.join(k['differences'])} |")
    print("\n".join(lines))
    if args.out:
        out = pathlib.Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if args.keep or failed:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
