#!/usr/bin/env python3
"""The seminar's dependency probe on UD English EWT test: the default model (or --model,
--lora) zero- and two-shot, with and without the grammar, beside spaCy's en_core_web_sm
on the same sentences (benches/spacy_parse.py), greedy, nothing else running.

    python3 benches/probe_dependency.py [--conllu TEST.conllu] [--limit 200]
        [--settings 0g,0f,2g,2f] [--lora DIR] [--name probe-dependency]

Settings: 0/2 = shots, g = grammar-constrained, f = free (unconstrained), a trailing c =
in the model's chat format (as `sft` trains), else as text to continue. Writes
benches/results/DATE-NAME.{md,json}; the answers, HTML reports and CoNLL-U outputs stay in
~/.cache/ferrollama/bench/probe/.
"""

import argparse
import datetime
import json
import pathlib
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/ferrollama"
WORK = pathlib.Path.home() / ".cache/ferrollama/bench/probe"
EWT = REPO.parent / "shared/data/ud-english-ewt"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conllu", default=str(EWT / "en_ewt-ud-test.conllu"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--settings", default="0g,0f,2g,2f")
    ap.add_argument("--model", default=None)
    ap.add_argument("--lora", default=None)
    ap.add_argument("--name", default="probe-dependency")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    spacy_out = WORK / f"spacy-{args.name}.conllu"
    subprocess.run(["python3", str(REPO / "benches/spacy_parse.py"), args.conllu, str(spacy_out),
                    "--limit", str(args.limit)], check=True)
    rows = []
    for s in args.settings.split(","):
        shots, mode = s[0], s[1]
        tag = f"{args.name}-{s}"
        cmd = [str(BIN), "probe", "dependency", "--conllu", args.conllu, "--limit", str(args.limit),
               "--shots", shots, "--json", "--compare", f"spacy={spacy_out}",
               "--html", str(WORK / f"{tag}.html"), "--answers", str(WORK / f"{tag}.jsonl"),
               "--output", str(WORK / f"{tag}.conllu")]
        if mode == "f":
            cmd.append("--no-grammar")
        if s.endswith("c"):
            cmd.append("--chat")
        if args.model:
            cmd += ["--model", args.model]
        if args.lora:
            cmd += ["--lora", args.lora]
        t = time.time()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        r["wall_s"] = time.time() - t
        r["setting"] = s
        rows.append(r)
        m = r["model"]
        print(f"{s}: parsed {m['parsed']}/{m['sentences']}, UPOS {m['upos_correct'] / m['words']:.3f}, "
              f"UAS {m['heads_correct'] / m['words']:.3f}, LAS {m['labelled_correct'] / m['words']:.3f}, {r['seconds']:.1f} s", flush=True)
    date = datetime.date.today().isoformat()
    res = REPO / "benches/results"
    (res / f"{date}-{args.name}.json").write_text(json.dumps({"cpu": cpu, "rows": rows, "args": vars(args)}, indent=1))
    lines = [f"# Dependency probe on {pathlib.Path(args.conllu).name}, first {args.limit} sentences of at most 40 words",
             "", f"CPU: {cpu}, 2 threads. Model: {args.model or 'default (SmolLM2-135M-Instruct Q4_1)'}"
             + (f", LoRA {args.lora}" if args.lora else "") + ". Greedy.", "",
             "| parser | setting | parsed | UPOS | UAS | LAS | time |", "|---|---|---:|---:|---:|---:|---:|"]
    def rate(s, k):
        return s[k] / s["words"] if s["words"] else 0.0
    for r in rows:
        m = r["model"]
        mode = ("grammar" if r["constrained"] else "free") + (", chat" if r.get("chat") else "")
        lines.append(f"| model | {r['shots']}-shot, {mode} | {100 * m['parsed'] / m['sentences']:.1f} % | "
                     f"{rate(m, 'upos_correct'):.3f} | {rate(m, 'heads_correct'):.3f} | {rate(m, 'labelled_correct'):.3f} | {r['seconds']:.1f} s |")
    sp = rows[0]["spacy"]
    lines.append(f"| spaCy en_core_web_sm 3.8.0 | gold words | {100 * sp['parsed'] / sp['sentences']:.1f} % | "
                 f"{rate(sp, 'upos_correct'):.3f} | {rate(sp, 'heads_correct'):.3f} | {rate(sp, 'labelled_correct'):.3f} | |")
    (res / f"{date}-{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
