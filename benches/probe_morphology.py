#!/usr/bin/env python3
"""The seminar's morphology probe on the shipped reference set (301 words from
hunspell-en-us and WordNet, crates/probe/data/morphology-reference.tsv): the default model
(or --model, --lora) zero- and one-shot, with and without the grammar, greedy, nothing
else running.

    python3 benches/probe_morphology.py [--settings 0gc,0fc,1gc,1fc,1g,1f] [--lora DIR]
        [--name probe-morphology]

Settings: 0/1 = shots, g = grammar-constrained, f = free, trailing c = the model's chat
format. Writes benches/results/DATE-NAME.{md,json}; per-word answers stay in
~/.cache/ferrollama/bench/probe/.
"""

import argparse
import datetime
import json
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/ferrollama"
WORK = pathlib.Path.home() / ".cache/ferrollama/bench/probe"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default="0gc,0fc,1gc,1fc,1g,1f")
    ap.add_argument("--model", default=None)
    ap.add_argument("--lora", default=None)
    ap.add_argument("--name", default="probe-morphology")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rows = []
    for s in args.settings.split(","):
        cmd = [str(BIN), "probe", "morphology", "--shots", s[0], "--json"]
        if s[1] == "f":
            cmd.append("--no-grammar")
        if s.endswith("c"):
            cmd.append("--chat")
        if args.model:
            cmd += ["--model", args.model]
        if args.lora:
            cmd += ["--lora", args.lora]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        (WORK / f"{args.name}-{s}.json").write_text(json.dumps(r, indent=1))
        r.pop("results")
        r["setting"] = s
        rows.append(r)
        print(f"{s}: parsed {r['parsed']}/{r['words']}, exact {r['exact']}, bracket F1 {r['bracket_f1']:.3f}, "
              f"boundary F1 {r['boundary_f1']:.3f}, {r['seconds']:.1f} s", flush=True)
    date = datetime.date.today().isoformat()
    res = REPO / "benches/results"
    (res / f"{date}-{args.name}.json").write_text(json.dumps({"cpu": cpu, "rows": rows, "args": vars(args)}, indent=1))
    lines = [f"# Morphology probe on the shipped reference set ({rows[0]['words']} words)", "",
             f"CPU: {cpu}, 2 threads. Model: {args.model or 'default (SmolLM2-135M-Instruct Q4_1)'}"
             + (f", LoRA {args.lora}" if args.lora else "") + ". Greedy.", "",
             "| setting | trees parsed | exact | constituent P / R / F1 | boundary P / R / F1 | time |",
             "|---|---:|---:|---|---|---:|"]
    for r in rows:
        b, m = r["brackets"], r["boundaries"]
        pr = lambda c: (c["matched"] / c["predicted"] if c["predicted"] else 0, c["matched"] / c["reference"] if c["reference"] else 0)
        (bp, br), (mp, mr) = pr(b), pr(m)
        mode = f"{r['shots']}-shot, {'grammar' if r['constrained'] else 'free'}{', chat' if r['chat'] else ''}"
        lines.append(f"| {mode} | {100 * r['parsed'] / r['words']:.1f} % | {100 * r['exact'] / r['scored']:.1f} % | "
                     f"{bp:.3f} / {br:.3f} / {r['bracket_f1']:.3f} | {mp:.3f} / {mr:.3f} / {r['boundary_f1']:.3f} | {r['seconds']:.1f} s |")
    (res / f"{date}-{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
