#!/usr/bin/env python3
"""A safety run on the default model, measured by refusal rates (scripts/safety_data.py:
harmful prompts from Do-Not-Answer and HarmBench, benign ones from Natural Questions, the
refusal rule stated there; prompts split once, the held-out ones never trained on).

  1. The model's own answers to the training prompts (`ferrollama data sample`, 4 each at
     temperature 1) and to the held-out prompts, judged by the rule: preference pairs
     (harmful: a refusal over a compliance; benign: the reverse).
  2. A safety reward model on the training pairs (`reward train --lora-rank 16`), its
     pairwise accuracy on the held-out pairs.
  3. Targeted context distillation on the harmful training prompts (`data distill` with
     Llama 2's generic safety pre-prompt as a system message, greedy; kept where the safety
     reward model scores the answer above the plain one), plus the model's own greedy
     answers to the benign training prompts (so that helpfulness is trained on as well).
  4. SFT on those (`sft --lora-rank 16`, 1 epoch).
  5. Refusal rates on the held-out prompts (greedy answers), before and after.

With `--written-refusals` the safety reward model is trained also on written refusals
paired with the model's own complying answers (scripts/safety_data.py --written-refusals),
100 steps, in bench/safety-demo-written (reusing the prompts and sampled answers); the
distilled answers are sampled with the pre-prompt and three demonstrations
(benches/safety_examples.json: two refusals, one plain answer), since the default model
refuses *less* with the bare pre-prompt (greedy, on the first 50 held-out harmful and 30
benign prompts: harmful refused 0.14 plain, 0.10 with the pre-prompt, 0.64 with the
demonstrations too; benign 0.00, 0.00, 0.03).

    python3 benches/safety_demo.py [--written-refusals]

Writes benches/results/DATE-safety-demo.{md,json} (or DATE-safety-demo-written). Not run
by CI.
"""

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
WORK = CACHE / "bench/safety-demo"
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPROMPT = "You are a safe and responsible assistant."
REWARD = re.compile(r"step (\d+), held out: loss ([\d.]+), pairwise accuracy ([\d.]+), score margin ([-+\d.]+)")
sys.path.insert(0, str(REPO / "scripts"))
import safety_data  # noqa: E402


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def once(path, make):
    """Runs `make` unless `path` exists (the stage is done), returning its wall time."""
    path = pathlib.Path(path)
    stamp = path.with_name(path.name + ".seconds")
    if not path.exists():
        t0 = time.time()
        make()
        stamp.write_text(f"{time.time() - t0:.1f}\n")
    return float(stamp.read_text()) if stamp.exists() else None


def sample(model, prompts, out, k, temperature, max_new=96):
    return once(out, lambda: sh(BIN, "data", "sample", "--model", model, "--prompts", prompts, "--out", out,
                                "--samples", k, "--temperature", temperature, "--max-new-tokens", max_new))


def main():
    global WORK
    written = "--written-refusals" in sys.argv[1:]
    if written:
        base, WORK = WORK, WORK.with_name("safety-demo-written")
        WORK.mkdir(parents=True, exist_ok=True)
        for f in ("prompts_train.jsonl", "prompts_heldout.jsonl", "own_train.jsonl", "own_heldout.jsonl",
                  "own_train.jsonl.seconds", "own_heldout.jsonl.seconds", "before.jsonl", "before.jsonl.seconds",
                  ):
            if (base / f).exists() and not (WORK / f).exists():
                os.link(base / f, WORK / f)
    if not BIN.exists():
        sh("cargo", "build", "--release", cwd=REPO)
    MODEL.exists() or sh(BIN, "info", stdout=subprocess.DEVNULL)
    WORK.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    if not (WORK / "prompts_train.jsonl").exists():
        sh(sys.executable, REPO / "scripts/safety_data.py", "--out", WORK, "--per-kind", "500")
    secs = {}
    secs["sample train"] = sample(MODEL, WORK / "prompts_train.jsonl", WORK / "own_train.jsonl", 4, 1.0, 64)
    secs["sample held out"] = sample(MODEL, WORK / "prompts_heldout.jsonl", WORK / "own_heldout.jsonl", 4, 1.0, 64)
    for split in ("train", "heldout"):
        safety_data.pairs(WORK / f"own_{split}.jsonl", WORK / f"pairs_{split}.jsonl", written)
    rm = WORK / "safety-rm"
    secs["safety reward model"] = once(rm / "score.safetensors", lambda: (rm.mkdir(exist_ok=True), (rm / "train.log").write_text(sh(
        BIN, "reward", "train", "--data", WORK / "pairs_train.jsonl", "--val-data", WORK / "pairs_heldout.jsonl",
        "--seq-len", "160", "--batch-size", "8", "--micro-batch", "8",
        *(["--steps", "100"] if written else ["--epochs", "1"]), "--lora-rank", "16",
        "--eval-every", "1000", "--out", rm, capture_output=True, text=True).stderr)))
    held = [m.groups() for m in REWARD.finditer((rm / "train.log").read_text())]
    rm_before, rm_after = float(held[0][2]), float(held[-1][2])
    harmful = WORK / "harmful_train.jsonl"
    benign = WORK / "benign_train.jsonl"
    if not harmful.exists():
        recs = [json.loads(l) for l in open(WORK / "prompts_train.jsonl")]
        harmful.write_text("".join(json.dumps(r) + "\n" for r in recs if r["unsafe"]))
        benign.write_text("".join(json.dumps(r) + "\n" for r in recs if not r["unsafe"]))
    # The training answers' token limit (cut answers are left out of the SFT data).
    answer_tokens = 256 if written else 96
    distilled = WORK / "distilled.jsonl"
    secs["context distillation"] = once(distilled, lambda: sh(
        BIN, "data", "distill", "--prompts", harmful, "--out", distilled, "--preprompt", PREPROMPT,
        *(["--examples", REPO / "benches/safety_examples.json"] if written else []),
        "--reward", rm, "--max-new-tokens", answer_tokens))
    secs["benign answers"] = sample(MODEL, benign, WORK / "own_benign.jsonl", 1, 0.0, answer_tokens)
    mix = WORK / "safety_sft.jsonl"
    with open(mix, "w") as f:
        for l in open(distilled):
            f.write(l)
        for l in open(WORK / "own_benign.jsonl"):
            r = json.loads(l)
            a = r["answers"][0]
            if a["finished"]:
                f.write(json.dumps({"prompt": r["prompt"], "completion": a["text"]}) + "\n")
    n_distilled = sum(1 for _ in open(distilled))
    n_mix = sum(1 for _ in open(mix))
    sft = WORK / "sft"
    secs["SFT"] = once(sft / "model.gguf", lambda: sh(
        BIN, "sft", "--data", mix, "--out", sft, "--lora-rank", "16", "--epochs", "1", "--seq-len", "256",
        "--batch-size", "8", "--micro-batch", "8", stdout=subprocess.DEVNULL))
    sample(MODEL, WORK / "prompts_heldout.jsonl", WORK / "before.jsonl", 1, 0.0)
    sample(sft / "model.gguf", WORK / "prompts_heldout.jsonl", WORK / "after.jsonl", 1, 0.0)
    before = safety_data.rates(WORK / "before.jsonl")
    after = safety_data.rates(WORK / "after.jsonl")
    own = safety_data.rates(WORK / "own_train.jsonl")
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "seconds": secs, "safety_rm_accuracy": [rm_before, rm_after],
              "distilled_kept": n_distilled, "sft_records": n_mix, "before": before, "after": after,
              "own_train_rates": own}
    path = REPO / "benches/results" / f"{date}-safety-demo{'-written' if written else ''}"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    pairs_train = sum(1 for _ in open(WORK / "pairs_train.jsonl"))
    pairs_held = sum(1 for _ in open(WORK / "pairs_heldout.jsonl"))
    rate = lambda r: f"{r['rate']:.3f} ({r['refusals']}/{r['answers']})"
    lines = [f"# A safety run on the default model ({date})", "",
             f"CPU: {cpu}, 2 threads. Prompts: 400 harmful (Do-Not-Answer, HarmBench) and 400 benign (Natural "
             "Questions) to train on, 100 + 100 held out (`scripts/safety_data.py`, refusal rule stated there). "
             f"Safety reward model: {pairs_train} training pairs from the model's own answers (4 per prompt, "
             f"temperature 1){', and written refusals against its complying answers, 100 steps' if written else ', 1 epoch'}, "
             f"pairwise accuracy on {pairs_held} held-out pairs {rm_before:.3f} -> **{rm_after:.3f}**. "
             f"Targeted context distillation (pre-prompt \"{PREPROMPT}\" as a system message"
             f"{' and three demonstrations (benches/safety_examples.json)' if written else ''}, greedy, "
             f"{answer_tokens} tokens at most, cut answers left out): "
             f"{n_distilled} of 400 harmful prompts kept; SFT (LoRA 16, 1 epoch) on those and the model's own "
             f"greedy answers to the benign prompts ({n_mix} records). Refusal rates of greedy answers "
             "(96 tokens) to the held-out prompts:", "",
             "| model | harmful prompts refused | benign prompts refused |", "|---|---:|---:|",
             f"| the default model (Q4_1) | {rate(before['harmful'])} | {rate(before['benign'])} |",
             f"| after the safety run | {rate(after['harmful'])} | {rate(after['benign'])} |", "",
             "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items() if v is not None)]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
