#!/usr/bin/env python3
"""The fine-tuning demonstration, measured: the date task of scripts/date_task.py (400
training questions, 200 held-out ones with dates never seen in training), the default
model before and after `ferrollama sft` (full fine-tuning), `--lora-rank 16`,
`--lora-rank 16 --qlora` on the Q4_1 file and on its f32 conversion (NF4), each scored by `ferrollama eval` on the held-out task file
(greedy, exact match, chat template applied); then the forgetting check: ARC-Easy and
HellaSwag (first 500 documents each, 0-shot) of the base model and of the LoRA model
(both f32: the base dequantized, the LoRA model exported merged).

    python3 benches/sft_demo.py [--epochs 1] [--skip-forgetting]

Writes benches/results/DATE-sft-demo.{md,json}.
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
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
WORK = CACHE / "bench/sft-demo"
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
DEFAULT_MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def evaluate(model, tasks, extra=()):
    out = subprocess.run([str(BIN), "eval", "--model", str(model), "--task", tasks, "--json", *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["results"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--skip-forgetting", action="store_true")
    a = ap.parse_args()
    if not BIN.exists():
        sh("cargo", "build", "--release", cwd=REPO)
    DEFAULT_MODEL.exists() or sh(BIN, "info", stdout=subprocess.DEVNULL)
    data = WORK / "data"
    sh(sys.executable, REPO / "scripts/date_task.py", "--out", data, stdout=subprocess.DEVNULL)
    task = str(data / "date_words.yaml")
    chat = ["--apply-chat-template"]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rows = []
    base = evaluate(DEFAULT_MODEL, task, chat)["date_words"]
    rows.append({"run": "base (the default model, Q4_1)", "seconds": 0, "exact_match": base["exact_match,strip"],
                 "stderr": base["exact_match_stderr,strip"]})
    print(json.dumps(rows[-1]), flush=True)
    common = ["--data", data / "train.jsonl", "--seq-len", "512", "--batch-size", "4", "--micro-batch", "4",
              "--epochs", str(a.epochs)]
    f32 = WORK / "base-f32.gguf"
    if not f32.exists():
        sh(BIN, "convert", DEFAULT_MODEL, f32, "--type", "f32", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = [("full fine-tuning, lr 5e-5", "full", ["--lr", "5e-5"]),
            ("LoRA rank 16, all projections, lr 2e-4", "lora", ["--lora-rank", "16"]),
            ("QLoRA rank 16 on the Q4_1 weights, lr 2e-4", "qlora", ["--lora-rank", "16", "--qlora"]),
            ("QLoRA rank 16, the f32 weights in NF4, lr 2e-4", "qlora-nf4",
             ["--lora-rank", "16", "--qlora", "--model", f32])]
    for label, name, extra in runs:
        out = WORK / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        t0 = time.time()
        sh(BIN, "sft", *common, *extra, "--out", out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        secs = time.time() - t0
        metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
        r = evaluate(out / "model.gguf", task, chat)["date_words"]
        rows.append({"run": label, "seconds": round(secs, 1), "steps": metrics[-1]["step"],
                     "val_loss": metrics[-1].get("val_loss"), "exact_match": r["exact_match,strip"],
                     "stderr": r["exact_match_stderr,strip"]})
        print(json.dumps(rows[-1]), flush=True)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "epochs": a.epochs, "rows": rows}
    if not a.skip_forgetting:
        forget = {}
        for label, model in [("base (f32)", f32), ("after LoRA (merged, f32)", WORK / "lora/model.gguf")]:
            res = evaluate(model, "arc_easy,hellaswag", ["--limit", "500"])
            forget[label] = {t: {m: res[t][f"{m},none"] for m in ("acc", "acc_norm")} for t in ("arc_easy", "hellaswag")}
            print(label, json.dumps(forget[label]), flush=True)
        report["forgetting"] = forget
    out = REPO / "benches/results" / f"{report['date']}-sft-demo"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Fine-tuning demonstration: the date task ({report['date']})", "",
             f"CPU: {cpu}, 2 threads. 400 training conversations (5 % held out for the loss), 200 held-out "
             f"questions scored by `ferrollama eval --apply-chat-template` (greedy, exact match); {a.epochs} epoch(s), "
             "rows of 512 tokens, 4 rows a step.", "",
             "| run | time (s) | steps | held-out loss | exact match |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        vl = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else ""
        lines.append(f"| {r['run']} | {r['seconds'] or ''} | {r.get('steps', '')} | {vl} | "
                     f"{r['exact_match']:.3f} ± {r['stderr']:.3f} |")
    if "forgetting" in report:
        lines += ["", "Forgetting check, first 500 documents, 0-shot:", "",
                  "| model | ARC-Easy acc | ARC-Easy acc_norm | HellaSwag acc | HellaSwag acc_norm |",
                  "|---|---:|---:|---:|---:|"]
        for label, v in report["forgetting"].items():
            lines.append(f"| {label} | {v['arc_easy']['acc']:.3f} | {v['arc_easy']['acc_norm']:.3f} | "
                         f"{v['hellaswag']['acc']:.3f} | {v['hellaswag']['acc_norm']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
