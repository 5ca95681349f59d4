#!/usr/bin/env python3
"""LoRA in ferrollama against PyTorch + PEFT (PyPI `peft`, `transformers`, `torch`, CPU, in
the cache venv ~/.cache/ferrollama/hf-venv), on the default model as the f32 Hugging Face
directory `ferrollama convert` writes:

  1. an adapter trained by `ferrollama sft --lora-rank 8` (all projections, 3 steps on the
     date task) loads in PEFT and gives the same logits;
  2. an adapter made by PEFT (rank 8 on q_proj and v_proj, A and B random) loads in
     `ferrollama logits --lora` and gives the same logits;
  3. LoRA training speed, rank 16 on all projections, batch 8 x 256, AdamW, clipping:
     `ferrollama sft` against PEFT + PyTorch eager, alternated (A B, B A, ...), tokens/s
     of steps 2..N;
  4. peak RSS while training of `ferrollama sft` full fine-tuning, LoRA and QLoRA on the
     Q4_1 GGUF, same batch (VmHWM, as `sft` reports it before its export).

    python3 benches/compare_peft.py [--pairs 3] [--steps 6] [--skip-speed] [--skip-rss]

Writes benches/results/DATE-peft.{md,json}.
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

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
VENV = CACHE / "hf-venv"
WORK = CACHE / "bench/peft"
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
DEFAULT_MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"
SIDE = REPO / "benches/peft_side.py"
PROMPT = "The quick brown fox jumps over the lazy dog. Rust and Python both compute the same numbers"


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def ensure_venv():
    py = VENV / "bin/python"
    if not py.exists():
        sh(sys.executable, "-m", "venv", VENV)
    if subprocess.run([py, "-c", "import peft, transformers, torch"], capture_output=True).returncode:
        sh(VENV / "bin/pip", "install", "-q", "peft", "transformers", "torch", "safetensors")
    return py


def versions(py):
    code = "import peft, torch, transformers; print(peft.__version__, torch.__version__, transformers.__version__)"
    p, t, tr = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"peft": p, "torch": t, "transformers": tr}


def read_logits(py, path):
    code = ("import sys, json; from safetensors.numpy import load_file; d = load_file(sys.argv[1]); "
            "print(json.dumps({'shape': list(d['logits'].shape), 'tokens': d['tokens'].tolist() if 'tokens' in d else None}))")
    return json.loads(subprocess.run([py, "-c", code, path], capture_output=True, text=True, check=True).stdout)


def max_diff(py, a, b):
    code = ("import sys, numpy as np; from safetensors.numpy import load_file; "
            "x = load_file(sys.argv[1])['logits']; y = load_file(sys.argv[2])['logits']; "
            "assert x.shape == y.shape, (x.shape, y.shape); "
            "print(float(np.abs(x - y).max()), float(np.abs(y).max()))")
    d, m = subprocess.run([py, "-c", code, a, b], capture_output=True, text=True, check=True).stdout.split()
    return float(d), float(m)


def ours_logits(model, lora, out):
    sh(BIN, "logits", "--model", model, "--lora", lora, "--prompt", PROMPT, "--out", out,
       stdout=subprocess.DEVNULL)


def parity(py, hf_dir):
    rows = []
    data = WORK / "date"
    sh(sys.executable, REPO / "scripts/date_task.py", "--out", data, "--train", "64", "--heldout", "8",
       stdout=subprocess.DEVNULL)
    run = WORK / "ours-adapter-run"
    sh(BIN, "sft", "--model", hf_dir, "--data", data / "train.jsonl", "--val-data", data / "heldout.jsonl",
       "--lora-rank", "8", "--lora-targets", "all", "--steps", "3", "--lr", "1e-3", "--seq-len", "256",
       "--batch-size", "4", "--micro-batch", "4", "--out", run, stdout=subprocess.DEVNULL,
       stderr=subprocess.DEVNULL)
    ours = WORK / "ours-with-ours.safetensors"
    ours_logits(hf_dir, run / "adapter", ours)
    tokens = ",".join(str(t) for t in read_logits(py, ours)["tokens"])
    theirs = WORK / "peft-with-ours.safetensors"
    sh(py, SIDE, "logits", hf_dir, tokens, theirs, "--adapter", run / "adapter")
    d, m = max_diff(py, ours, theirs)
    rows.append({"adapter": "ferrollama sft, rank 8, all projections", "loaded_by": "PEFT",
                 "positions": len(tokens.split(",")), "max_abs_logit_diff": d, "max_abs_logit": m})
    peft_dir = WORK / "peft-adapter"
    sh(py, SIDE, "make-adapter", hf_dir, peft_dir, "--rank", "8", "--targets", "q_proj,v_proj")
    ours = WORK / "ours-with-peft.safetensors"
    ours_logits(hf_dir, peft_dir, ours)
    theirs = WORK / "peft-with-peft.safetensors"
    sh(py, SIDE, "logits", hf_dir, tokens, theirs, "--adapter", peft_dir)
    d, m = max_diff(py, ours, theirs)
    rows.append({"adapter": "PEFT, rank 8, q_proj + v_proj, random A and B", "loaded_by": "ferrollama",
                 "positions": len(tokens.split(",")), "max_abs_logit_diff": d, "max_abs_logit": m})
    # The base model alone, for scale: how far apart the two implementations are anyway.
    return rows


def speed_data():
    """Conversations whose answers run past 256 tokens: each row is one conversation cut at
    256, scored from the end of the prompt on (as PEFT's labels mask the prompt)."""
    text = (REPO / "README.md").read_text()
    words = text.split()
    path = WORK / "speed.jsonl"
    with open(path, "w") as f:
        for i in range(64):
            chunk = " ".join(words[(i * 97) % (len(words) - 400):][:400])
            f.write(json.dumps({"prompt": "Continue the text.", "completion": chunk}) + "\n")
    val = WORK / "speed-val.jsonl"
    val.write_text(json.dumps({"prompt": "Say hi.", "completion": "hi"}) + "\n")
    return path, val


def masked_prefix(model, data):
    out = subprocess.run([str(BIN), "sft", "--model", str(model), "--data", str(data), "--show-mask"],
                         capture_output=True, text=True, check=True).stdout
    total, learned = map(int, re.search(r"\((\d+) tokens, (\d+) learned", out).groups())
    return total - learned


def ours_speed(model, data, val, steps, extra, out):
    cmd = [str(BIN), "sft", "--model", str(model), "--data", str(data), "--val-data", str(val),
           "--seq-len", "256", "--batch-size", "8", "--micro-batch", "8", "--no-packing",
           "--steps", str(steps), "--checkpoint-every", str(steps), "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    # The peak while training (before the export at the end, which holds the merged
    # weights a second time), as `ferrollama sft` reports it from VmHWM.
    rss_mb = float(re.search(r"peak RSS during training: (\d+) MiB", res.stderr).group(1))
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r["tokens_per_s"] for r in rows], rss_mb


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    a = ap.parse_args()
    py = ensure_venv()
    WORK.mkdir(parents=True, exist_ok=True)
    if not BIN.exists():
        sh("cargo", "build", "--release", cwd=REPO)
    DEFAULT_MODEL.exists() or sh(BIN, "info", stdout=subprocess.DEVNULL)
    hf_dir = CACHE / "bench/eval/smollm2-f32-hf"
    if not (hf_dir / "model.safetensors").exists():
        sh(BIN, "convert", DEFAULT_MODEL, hf_dir, "--type", "f32", stdout=subprocess.DEVNULL)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, **versions(py),
              "model": "SmolLM2-135M-Instruct: f32 HF directory from ferrollama convert (parity, speed); the Q4_1 GGUF (RSS)"}
    report["parity"] = parity(py, hf_dir)
    for r in report["parity"]:
        print(json.dumps(r), flush=True)
    data, val = speed_data()
    if not a.skip_speed:
        masked = masked_prefix(hf_dir, data)
        lora = ["--lora-rank", "16", "--lora-targets", "all"]
        pairs = []
        for i in range(a.pairs):
            order = ["ours", "peft"] if i % 2 == 0 else ["peft", "ours"]
            got = {}
            for who in order:
                if who == "ours":
                    rates, rss = ours_speed(hf_dir, data, val, a.steps, lora, WORK / f"speed-ours-{i}")
                    got["ours"] = {"tokens_per_s": statistics.mean(rates[1:]), "peak_rss_mb": rss}
                else:
                    res = subprocess.run([str(py), str(SIDE), "train-speed", str(hf_dir), "--steps", str(a.steps),
                                          "--masked", str(masked)], capture_output=True, text=True, check=True)
                    j = json.loads(res.stdout.strip().splitlines()[-1])
                    got["peft"] = {"tokens_per_s": statistics.mean(j["tokens_per_s"][1:]),
                                   "peak_rss_mb": j["peak_rss_mb"]}
            got["ratio"] = got["ours"]["tokens_per_s"] / got["peft"]["tokens_per_s"]
            pairs.append(got)
            print(json.dumps(got), flush=True)
        report["speed"] = {"batch": "8 x 256", "rank": 16, "targets": "all 7 projections",
                           "masked_prompt_tokens": masked, "pairs": pairs,
                           "median_ratio": statistics.median(p["ratio"] for p in pairs)}
    if not a.skip_rss:
        rss = {}
        for name, extra in [("full", []), ("lora", ["--lora-rank", "16", "--lora-targets", "all"]),
                            ("qlora", ["--lora-rank", "16", "--lora-targets", "all", "--qlora"])]:
            rates, mb = ours_speed(DEFAULT_MODEL, data, val, 2, extra, WORK / f"rss-{name}")
            rss[name] = {"peak_rss_mb": round(mb), "tokens_per_s_step2": rates[-1]}
            print(name, json.dumps(rss[name]), flush=True)
        report["rss"] = rss
    out = REPO / "benches/results" / f"{report['date']}-peft"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# LoRA: ferrollama against PEFT {report['peft']} + PyTorch {report['torch']} ({report['date']})", "",
             f"CPU: {cpu}, 2 threads. Model: {report['model']}.", "",
             "| adapter | loaded by | positions | max abs logit diff | max abs logit |", "|---|---|---:|---:|---:|"]
    for r in report["parity"]:
        lines.append(f"| {r['adapter']} | {r['loaded_by']} | {r['positions']} | {r['max_abs_logit_diff']:.2e} | {r['max_abs_logit']:.1f} |")
    if "speed" in report:
        s = report["speed"]
        lines += ["", f"LoRA training, rank 16 on all projections, batch 8 x 256 ({s['masked_prompt_tokens']} prompt tokens a row unscored), tokens/s of steps 2..{a.steps}:", "",
                  "| pair | ferrollama | PEFT + PyTorch eager | ratio | peak RSS MB (ours / PEFT) |", "|---:|---:|---:|---:|---:|"]
        for i, p in enumerate(s["pairs"]):
            lines.append(f"| {i + 1} | {p['ours']['tokens_per_s']:.0f} | {p['peft']['tokens_per_s']:.0f} | {p['ratio']:.2f} | {p['ours']['peak_rss_mb']:.0f} / {p['peft']['peak_rss_mb']:.0f} |")
        lines.append(f"\nMedian ratio: {s['median_ratio']:.2f}")
    if "rss" in report:
        lines += ["", "Peak RSS while training, `ferrollama sft` on the Q4_1 GGUF, batch 8 x 256, 2 steps:", "",
                  "| mode | peak RSS MB | tokens/s (step 2) |", "|---|---:|---:|"]
        for k, v in report["rss"].items():
            lines.append(f"| {k} | {v['peak_rss_mb']} | {v['tokens_per_s_step2']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
