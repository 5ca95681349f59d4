#!/usr/bin/env python3
"""Training speed side by side: ferrollama and the PyTorch reference on the same preset,
weights and batches, alternated (A B, B A, ...) so that a busy machine slows both alike.
Prints a JSON object and a table: tokens/s of each run, the medians, and the ratio
ferrollama / PyTorch eager (median of the pairs). Not a test; run by hand.

    python benches/compare_train.py --preset 260k --tokenizer run/tokenizer.json \
        --seq-len 512 --micro-batch 16 --pairs 5
    python benches/compare_train.py --preset 15m \
        --tokenizer $FERROLLAMA_HOME/vocab/ggml-vocab-llama-spm.gguf --seq-len 256 --micro-batch 8

Uses the torch venv of benches/train_reference.py (run this script with its python).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_reference as ref  # noqa: E402


def ferrollama_run(a, out, dump):
    args = [a.bin, "train", "--preset", a.preset, "--tokenizer", a.tokenizer, "--out", str(out),
            "--steps", str(a.steps), "--warmup", "5", "--lr", "1e-3", "--seq-len", str(a.seq_len),
            "--batch-tokens", str(a.seq_len * a.micro_batch), "--micro-batch", str(a.micro_batch),
            "--eval-every", "0", "--checkpoint-every", str(a.steps)]
    if a.data:
        args += ["--data", a.data]
    if dump:
        args += ["--dump-reference", str(a.steps)]
    subprocess.run(args, check=True, capture_output=True)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    # Step 1 pays for first-touch allocation on both sides; rates skip it.
    return statistics.mean(r["tokens_per_s"] for r in rows[1:])


def torch_run(reference_dir):
    c, _, times = ref.replay(reference_dir, False, False, exact_clip=False)
    return c["batch_tokens"] * (len(times) - 1) / sum(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ferrollama")
    ap.add_argument("--preset", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", help="default: ferrollama's default corpus")
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--micro-batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="ferrollama-compare-train-"))
    reference = work / "reference-run"
    ferrollama_run(a, reference, dump=True)  # warm-up, and the weights/batches torch replays
    ours, theirs = [], []
    for i in range(a.pairs):
        order = ("ferrollama", "torch") if i % 2 == 0 else ("torch", "ferrollama")
        for who in order:
            if who == "ferrollama":
                ours.append(ferrollama_run(a, work / f"run-{i}", dump=False))
            else:
                theirs.append(torch_run(reference))
    ratios = [o / t for o, t in zip(ours, theirs)]
    result = {
        "date": time.strftime("%Y-%m-%d"), "preset": a.preset, "seq_len": a.seq_len,
        "micro_batch": a.micro_batch, "steps": a.steps, "pairs": a.pairs, "threads": a.threads,
        "ferrollama_tokens_per_s": ours, "torch_eager_tokens_per_s": theirs,
        "ratio_median": statistics.median(ratios), "torch_version": torch.__version__,
    }
    print(json.dumps(result))
    print(f"\n{'pair':>4} {'ferrollama':>11} {'torch eager':>12} {'ratio':>6}")
    for i, (o, t) in enumerate(zip(ours, theirs)):
        print(f"{i + 1:>4} {o:>11.0f} {t:>12.0f} {o / t:>6.2f}")
    print(f"\n{a.preset} {a.micro_batch} x {a.seq_len}: ferrollama / torch eager = "
          f"{statistics.median(ratios):.2f} (median of {a.pairs} pairs)")


if __name__ == "__main__":
    main()
