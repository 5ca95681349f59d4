#!/usr/bin/env python3
"""Makes tests/data/spm-bpe-1k.model and spm-bpe-1k.expected.json with Google's SentencePiece.

Trains a small BPE `tokenizer.model` with the PyPI `sentencepiece` package on fortune-mod
text (BSD) and records the ids sentencepiece's own `encode` gives for a list of varied
strings. The model is trained the way Llama's tokenizer.model was (identity normalization,
whitespace kept as is, byte fallback, split digits): with those settings sentencepiece and
llama.cpp tokenize alike, so `tests/spm_model.rs` can demand equal ids.

usage (from crates/tokenizer):
    python3 -m venv /tmp/spmvenv && /tmp/spmvenv/bin/pip install sentencepiece==0.2.3
    /tmp/spmvenv/bin/python scripts/make_spm_fixture.py

    # optional: check a tokenizer.model exported by ferrollama (examples/gguf_to_spm.rs)
    # against llama.cpp's test vectors for that vocabulary
    /tmp/spmvenv/bin/python scripts/make_spm_fixture.py --check-export EXPORTED.model \
        tests/data/ggml-vocab-llama-spm.gguf.inp tests/data/ggml-vocab-llama-spm.gguf.out
"""
import argparse
import json
import os
import sys
import tempfile

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data")
TEXT = os.path.join(HERE, "..", "..", "..", "tests", "data", "smollm2", "ppl-text.txt")

# Strings covering what differs between tokenizers: whitespace runs at either end, newlines
# and tabs, digits, punctuation, accents, scripts absent from the training text (CJK, emoji:
# byte fallback), text that looks like control or byte pieces, and the empty string.
CASES = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    " \n ",
    "hello",
    "Hello",
    "HELLO",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  Hello   world  ",
    "     leading spaces",
    "trailing spaces     ",
    "A banker is a fellow who lends you his umbrella when the sun is shining",
    'Mark Twain, "The Disappearance of Literature"',
    "line one\nline two\n",
    "Hello\n\nworld",
    "tab\tseparated\tvalues",
    "ab\r\ncd",
    "1",
    "12",
    "1234567890",
    "3.14159",
    "version 2.0.1 (2024)",
    "$1,000,000",
    "I've been 'there', you're \"here\"",
    "e.g. i.e. etc.",
    "!!!???...",
    "café",
    "naïve résumé",
    "São Paulo, Zürich",
    "日本語",
    "こんにちは世界",
    "mixed 中文 and English",
    "🦙",
    "Hello 🦙 llama!",
    "👍🏽 emoji 😀😃",
    "<s> </s> <unk>",
    "<0x41>",
    "\u2581 a\u2581b",
    "\u00a0non-breaking",
    "\u216b \ufb01",
]


def train(text_path, out_dir):
    """Trains the model; returns the path of spm-bpe-1k.model."""
    out_dir = os.path.abspath(out_dir)
    with open(text_path, "rb") as f:
        text = f.read()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        # Train inside the temporary directory with relative names: the model records the
        # input and prefix paths in its trainer_spec, and those should not name this machine.
        os.chdir(tmp)
        with open("ppl-text.txt", "wb") as f:
            f.write(text)
        spm.SentencePieceTrainer.train(
            input="ppl-text.txt",
            model_prefix="spm-bpe-1k",
            model_type="bpe",
            vocab_size=1000,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        path = os.path.join(out_dir, "spm-bpe-1k.model")
        with open("spm-bpe-1k.model", "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        os.chdir(cwd)
    return path


def write_expected(model_path, out_dir):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    cases = [{"text": t, "ids": sp.encode(t)} for t in CASES]
    doc = {
        "model": os.path.basename(model_path),
        "made_by": f"scripts/make_spm_fixture.py with sentencepiece {spm.__version__}",
        "encode": "SentencePieceProcessor.encode(text): no BOS/EOS",
        "cases": cases,
    }
    path = os.path.join(out_dir, "spm-bpe-1k.expected.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {model_path} ({os.path.getsize(model_path)} bytes, {sp.vocab_size()} pieces) and {path} ({len(cases)} cases)")


def read_vectors(inp, out):
    """llama.cpp's .inp/.out test vectors, split as tests/common/mod.rs does."""
    texts = open(inp, encoding="utf-8", newline="").read().split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    ids = [[int(x) for x in line.split()] for line in open(out, encoding="utf-8").read().splitlines()]
    assert len(texts) == len(ids), (len(texts), len(ids))
    return list(zip(texts, ids))


def check_export(model_path, inp, out):
    """Loads a ferrollama-exported tokenizer.model and compares its ids with llama.cpp's."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    print(f"{model_path}: {sp.vocab_size()} pieces, unk {sp.unk_id()} bos {sp.bos_id()} eos {sp.eos_id()} pad {sp.pad_id()}")
    bad = 0
    cases = read_vectors(inp, out)
    for text, want in cases:
        got = sp.encode(text)
        if got != want:
            bad += 1
            print(f"DIFFERS {text!r}\n  llama.cpp     {want}\n  sentencepiece {got}")
    print(f"{len(cases) - bad} of {len(cases)} llama.cpp test strings encode identically")
    return bad == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=TEXT, help="training text (default: the fortune-mod ppl-text.txt)")
    ap.add_argument("--out", default=DATA, help="output directory (default: tests/data)")
    ap.add_argument("--check-export", nargs=3, metavar=("MODEL", "INP", "OUT"), help="check an exported model instead of training")
    args = ap.parse_args()
    if args.check_export:
        sys.exit(0 if check_export(*args.check_export) else 1)
    write_expected(train(args.text, args.out), args.out)


if __name__ == "__main__":
    main()
