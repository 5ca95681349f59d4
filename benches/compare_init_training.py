#!/usr/bin/env python3
"""Continued pretraining from a real checkpoint, measured: `ferrollama train --init` on the
default model and a corpus it has not seen, scored before and after on a held-out part of
that corpus, by `ferrollama perplexity` and by llama.cpp's own `llama-perplexity` (built
from the llama-cpp-python 0.3.36 sdist by benches/llama_cpp_build.py).

    python3 benches/compare_init_training.py [--steps 30] [--lr 5e-5] [--ctx 256]

The corpus is The Devil's Dictionary (Ambrose Bierce, public domain), Debian's package
`dict-devil`, fetched with `apt-get download` into $FERROLLAMA_HOME/corpus/devil; its
first 90 % (cut at a paragraph) is trained on, the rest held out. Runs:
  1. `train --init default --steps 0`: the default model dequantized to f32, exported.
  2. `train --init default --steps N` on the training part.
Each exported model.gguf is scored on the held-out part by both tools; the script prints
the perplexities, the relative differences and the drop, as JSON and a table, and writes
benches/results/DATE-init-training.{md,json}.
"""

import argparse
import datetime
import json
import pathlib
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_cpp_build  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = llama_cpp_build.HOME
BIN = REPO / "target/release/ferrollama"


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def corpus():
    """(train file, held-out file) of The Devil's Dictionary."""
    d = HOME / "corpus" / "devil"
    train, held = d / "devil-train.txt", d / "devil-heldout.txt"
    if train.exists() and held.exists():
        return train, held
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "dict-devil"], cwd=tmp, check=True, capture_output=True)
        deb = next(pathlib.Path(tmp).glob("dict-devil_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp + "/x"], check=True)
        dz = pathlib.Path(tmp) / "x/usr/share/dictd/devil.dict.dz"
        text = subprocess.run(["zcat", str(dz)], check=True, capture_output=True).stdout.decode("utf-8", "replace")
    text = text[text.index("The Internet Wiretap"):]  # drop dictd's own header entries
    cut = text.index("\n\n", int(len(text) * 0.9))
    train.write_text(text[:cut])
    held.write_text(text[cut:])
    return train, held


def ours(model, text, ctx):
    return json.loads(sh(BIN, "perplexity", "--json", "-m", model, "-c", ctx, "-f", text))["ppl"]


def llama_cpp(tool, model, text, ctx):
    out = subprocess.run([str(tool), "-m", str(model), "-f", str(text), "-c", str(ctx), "-t", "2"],
                         check=True, capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if not m:
        sys.exit(f"llama-perplexity printed no estimate:\n{out.stderr[-2000:]}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--work", type=pathlib.Path, default=HOME.parent / "bench" / "init-training")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "benches/results")
    a = ap.parse_args()
    train, held = corpus()
    tool = llama_cpp_build.ensure_tool("llama-perplexity")
    sh("cargo", "build", "--release", "-q", "-p", "ferrollama", cwd=REPO)
    common = ["--init", "default", "--data", train, "--seq-len", 256, "--batch-tokens", 2048,
              "--micro-batch", 8, "--warmup", a.warmup, "--lr", a.lr, "--eval-every", 10]
    rows = []
    for steps in (0, a.steps):
        run = a.work / f"steps-{steps}"
        sh(BIN, "train", *common, "--steps", steps, "--out", run)
        model = run / "model.gguf"
        f, l = ours(model, held, a.ctx), llama_cpp(tool, model, held, a.ctx)
        rows.append({"steps": steps, "ferrollama": f, "llama_cpp": l, "relative_difference": (f - l) / l})
        print(f"steps {steps}: ferrollama {f:.4f}, llama-perplexity {l:.4f}", file=sys.stderr)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    report = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "avx512": "avx512f" in open("/proc/cpuinfo").read(),
        "corpus": "The Devil's Dictionary (dict-devil), 90 % trained, 10 % held out",
        "ctx": a.ctx,
        "lr": a.lr,
        "runs": rows,
        "perplexity_drop": 1 - rows[1]["ferrollama"] / rows[0]["ferrollama"],
    }
    print(json.dumps(report, indent=2))
    table = ["| steps | ferrollama perplexity | llama-perplexity | relative difference |", "|---:|---:|---:|---:|"]
    table += [f"| {r['steps']} | {r['ferrollama']:.4f} | {r['llama_cpp']:.4f} | {100 * r['relative_difference']:+.3f} % |"
              for r in rows]
    md = "\n".join([f"# Training from the default model, {report['date']} ({cpu})", "",
                    f"`python3 benches/compare_init_training.py --steps {a.steps} --lr {a.lr}`: "
                    f"held-out perplexity at context {a.ctx} of the exported model.gguf, "
                    f"down {100 * report['perplexity_drop']:.1f} % after {a.steps} steps.", ""] + table) + "\n"
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{report['date']}-init-training"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
