#!/usr/bin/env python3
"""Perplexity of a model ferrollama trained and exported, in ferrollama and in llama.cpp.

Runs `ferrollama perplexity` on the run's model.gguf, then scores the same text the same
way in llama.cpp through llama-cpp-python (the bench venv of compare_llama_cpp.py, built
from source on first use): llama.cpp's own tokenizer reads the GGUF's vocabulary, the
token stream (with BOS) is cut into chunks of --ctx tokens, each chunk starts with BOS and
is evaluated in one batch, and the second half of each chunk is scored, as llama.cpp's
llama-perplexity does. Prints both perplexities, the token counts, their relative
difference as JSON and a table, and exits 1 if they differ by more than --limit.

    python3 benches/compare_export_perplexity.py RUN [--text FILE] [--ctx 256] [--limit 0.005]

The default text is the GNU GPL version 3 (/usr/share/common-licenses/GPL-3 on Debian),
English the fortune-trained models never saw.
"""

import argparse
import json
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_llama_cpp import BIN, REPO, ensure_venv, sh  # noqa: E402

# Runs inside the venv: llama-perplexity's scoring, printed as JSON.
LLAMA_CPP_PPL = r"""
import json, math, sys
import numpy as np
from llama_cpp import Llama
path, text_path, n_ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
            n_threads=2, n_threads_batch=2, verbose=False)
text = open(text_path, encoding="utf-8").read()
tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
bos = llm.token_bos()
first = n_ctx // 2
nll, count = 0.0, 0
for c in range(len(tokens) // n_ctx):
    chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
    chunk[0] = bos
    llm.reset()
    llm.eval(chunk)
    logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
    for j in range(first, n_ctx - 1):
        row = logits[j]
        m = row.max()
        lse = m + math.log(np.exp(row - m).sum())
        nll += lse - row[chunk[j + 1]]
        count += 1
print(json.dumps({"n_tokens": len(tokens), "n_chunks": len(tokens) // n_ctx, "n_scored": count,
                  "ppl": math.exp(nll / count), "first_tokens": tokens[:16]}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=pathlib.Path, help="a training run directory (with model.gguf)")
    ap.add_argument("--text", type=pathlib.Path, default=pathlib.Path("/usr/share/common-licenses/GPL-3"))
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--limit", type=float, default=0.005)
    a = ap.parse_args()
    model = a.run / "model.gguf"
    if not model.exists():
        sys.exit(f"{model}: not found (train a model first, or `ferrollama export {a.run}`)")
    py = ensure_venv()
    sh("cargo", "build", "--release", "-q", "-p", "ferrollama", cwd=REPO)
    ours = json.loads(sh(BIN, "perplexity", "--json", "-m", model, "-c", str(a.ctx), "-f", a.text))
    theirs = json.loads(subprocess.run([str(py), "-c", LLAMA_CPP_PPL, str(model), str(a.text), str(a.ctx)],
                                       check=True, capture_output=True, text=True).stdout)
    rel = abs(ours["ppl"] - theirs["ppl"]) / theirs["ppl"]
    report = {
        "model": str(model),
        "text": str(a.text),
        "ctx": a.ctx,
        "ferrollama": {k: ours[k] for k in ("n_tokens", "n_chunks", "n_scored", "ppl")},
        "llama_cpp": {k: theirs[k] for k in ("n_tokens", "n_chunks", "n_scored", "ppl")},
        "relative_difference": rel,
        "limit": a.limit,
    }
    print(json.dumps(report, indent=2))
    print()
    print("| | tokens | chunks | scored | perplexity |")
    print("|---|---:|---:|---:|---:|")
    for name in ("ferrollama", "llama_cpp"):
        r = report[name]
        print(f"| {name} | {r['n_tokens']} | {r['n_chunks']} | {r['n_scored']} | {r['ppl']:.4f} |")
    print(f"\nrelative difference {rel:.2e} (limit {a.limit})")
    sys.exit(0 if rel <= a.limit else 1)


if __name__ == "__main__":
    main()
