#!/usr/bin/env python3
"""Two builds of ferrollama side by side on the default model, to show a change did not
make decoding slower: `ferrollama bench` (pp512 and tg128: the model's forward pass alone)
and `ferrollama generate --json -n 128 --ignore-eos` (the whole decode loop: engine,
sampler, detokenizer), alternated A B, B A, ... so that both see the same machine.

    python3 benches/compare_builds.py OLD_BINARY NEW_BINARY [--pairs 3] [--out benches/results]

Build the old one from an earlier commit with its own target directory, e.g.
    git worktree add /tmp/old COMMIT && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target \\
        cargo build --release -p ferrollama)
Prints each run, the medians and the new / old ratios as JSON and a table, and writes
benches/results/DATE-builds.{md,json}. Wall-clock figures on a shared VM move by 10 % from
run to run; `--callgrind` adds what does not: instructions per generated token (one thread,
valgrind's callgrind, the difference between 48 and 16 generated tokens over 32).
"""

import argparse
import datetime
import json
import pathlib
import os
import re
import statistics
import subprocess
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
PROMPT = "The history of the printing press begins"


def run(binary):
    bench = json.loads(subprocess.run([binary, "bench", "-p", "512", "-n", "128", "-r", "3", "-t", "2", "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    pp = next(r["avg_ts"] for r in bench if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in bench if r["n_gen"] > 0)
    g = json.loads(subprocess.run([binary, "generate", "--json", "-n", "128", "--ignore-eos", "--temperature", "0",
                                   "-p", PROMPT], check=True, capture_output=True, text=True).stdout)
    gen = len(g["ids"]) / (g["generate_ms"] / 1e3)
    return {"pp512": pp, "tg128": tg, "generate": gen}


def instructions(binary, n):
    """Instructions valgrind counts for `generate -n N` on one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg", binary, "generate",
                              "-n", str(n), "--ignore-eos", "--temperature", "0", "-p", PROMPT],
                             check=True, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": "1"})
    return int(re.search(r"I\s+refs:\s+([0-9,]+)", out.stderr).group(1).replace(",", ""))


def per_token_instructions(binary):
    return (instructions(binary, 48) - instructions(binary, 16)) / 32


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "benches/results")
    ap.add_argument("--callgrind", action="store_true", help="also count instructions per generated token")
    a = ap.parse_args()
    runs = {"old": [], "new": []}
    for i in range(a.pairs):
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        for who in order:
            r = run(getattr(a, who))
            runs[who].append(r)
            print(who, {k: round(v, 1) for k, v in r.items()}, flush=True)
    keys = ["pp512", "tg128", "generate"]
    med = {w: {k: statistics.median(r[k] for r in runs[w]) for k in keys} for w in runs}
    cpuinfo = open("/proc/cpuinfo").read()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "avx512": "avx512f" in cpuinfo,
              "pairs": a.pairs, "runs": runs, "median": med,
              "ratio_new_over_old": {k: med["new"][k] / med["old"][k] for k in keys}}
    table = ["| tokens/s | old | new | new / old |", "|---|---:|---:|---:|"]
    table += [f"| {k} | {med['old'][k]:.1f} | {med['new'][k]:.1f} | {report['ratio_new_over_old'][k]:.3f} |" for k in keys]
    if a.callgrind:
        ins = {w: per_token_instructions(getattr(a, w)) for w in ("old", "new")}
        report["instructions_per_token"] = ins
        table.append(f"| instructions per generated token (callgrind, 1 thread) | {ins['old'] / 1e6:.2f} M "
                     f"| {ins['new'] / 1e6:.2f} M | {ins['new'] / ins['old']:.4f} |")
    print(json.dumps(report, indent=2))
    md = "\n".join([f"# Two builds, {report['date']} ({cpu}, 2 threads, {a.pairs} alternated pairs, medians)", "",
                    f"old: `{a.old}`; new: `{a.new}`. pp512 and tg128 from `ferrollama bench -r 3`; "
                    "generate: `generate --json -n 128 --ignore-eos --temperature 0`, generated tokens per second.", ""]
                   + table) + "\n"
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{report['date']}-builds"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
