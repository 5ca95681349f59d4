#!/usr/bin/env python3
"""Constrained against unconstrained decoding speed on the JSON-schema form of the
dependency probe: for each of the first N EWT test sentences, a JSON Schema that fixes
the tokens (`const`), allows one UPOS tag and one relation per token (`enum`, exactly n
items) and an integer or null head per token; the model (default: SmolLM2-135M-Instruct
Q4_1) answers greedy with `generate --json-schema`, then the same prompt runs
unconstrained for the same number of tokens (`--ignore-eos`). Runs alternate; tokens/s is
the sum of tokens over the sum of generation time (prompt time excluded, as the engine
reports it). Nothing else should run.

    python3 benches/grammar_speed.py [--sentences 20] [--rounds 2] [--model GGUF]

Writes benches/results/DATE-grammar-speed.{md,json}.
"""

import argparse
import datetime
import json
import pathlib
import subprocess
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/ferrollama"
EWT = REPO.parent / "shared/data/ud-english-ewt/en_ewt-ud-test.conllu"
UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X"]
LABELS = ["ROOT", "acl", "acomp", "advcl", "advmod", "agent", "amod", "appos", "attr", "aux", "auxpass",
          "case", "cc", "ccomp", "compound", "conj", "csubj", "csubjpass", "dative", "dep", "det", "dobj",
          "expl", "intj", "mark", "meta", "neg", "nmod", "npadvmod", "nsubj", "nsubjpass", "nummod", "oprd",
          "parataxis", "pcomp", "pobj", "poss", "preconj", "predet", "prep", "prt", "punct", "quantmod",
          "relcl", "xcomp"]
EXAMPLE = {"Token": ["I", "ate", "a", "sandwich"], "POS Tag": ["PRON", "VERB", "DET", "NOUN"],
           "Dependency": ["nsubj", "ROOT", "det", "dobj"], "Head": [1, None, 3, 1]}


def sentences(n):
    out, cur, text = [], [], None
    for line in open(EWT, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line:
            if cur and len(cur) <= 40:
                out.append((text, cur))
            cur, text = [], None
            if len(out) == n:
                break
            continue
        if line.startswith("# text ="):
            text = line.split("=", 1)[1].strip()
        elif not line.startswith("#"):
            cols = line.split("\t")
            if "-" not in cols[0] and "." not in cols[0]:
                cur.append(cols[1])
    return out


def schema(tokens):
    n = len(tokens)
    arr = lambda items: {"type": "array", "items": items, "minItems": n, "maxItems": n}
    return {"type": "object", "properties": {
        "Token": {"const": tokens},
        "POS Tag": arr({"enum": UPOS}),
        "Dependency": arr({"enum": LABELS}),
        "Head": arr({"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    }, "required": ["Token", "POS Tag", "Dependency", "Head"], "additionalProperties": False}


def generate(prompt, extra, model):
    cmd = [str(BIN), "generate", "-p", prompt, "--temperature", "0", "--json"] + extra
    if model:
        cmd += ["--model", model]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return len(r["ids"]), r["generate_ms"], r["text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    sents = sentences(args.sentences)
    tot = {"constrained": [0, 0.0], "free": [0, 0.0]}
    parsed = 0
    with tempfile.TemporaryDirectory() as d:
        for rnd in range(args.rounds):
            for i, (text, tokens) in enumerate(sents):
                f = pathlib.Path(d) / f"s{i}.json"
                f.write_text(json.dumps(schema(tokens)))
                prompt = (f"Sentence: \"I ate a sandwich\"\nAnalysis as JSON: {json.dumps(EXAMPLE)}\n\n"
                          f"Sentence: \"{text}\"\nAnalysis as JSON:")
                n, ms, out = generate(prompt, ["--json-schema", str(f), "-n", "1200"], args.model)
                if rnd == 0:
                    try:
                        json.loads(out)
                        parsed += 1
                    except ValueError:
                        pass
                tot["constrained"][0] += n
                tot["constrained"][1] += ms
                n2, ms2, _ = generate(prompt, ["--ignore-eos", "-n", str(n)], args.model)
                tot["free"][0] += n2
                tot["free"][1] += ms2
    c = tot["constrained"][0] / (tot["constrained"][1] / 1000)
    u = tot["free"][0] / (tot["free"][1] / 1000)
    date = datetime.date.today().isoformat()
    res = {"cpu": cpu, "sentences": len(sents), "rounds": args.rounds, "constrained_tok_s": c, "free_tok_s": u,
           "ratio": c / u, "tokens": tot, "json_parsed": f"{parsed}/{len(sents)}"}
    (REPO / f"benches/results/{date}-grammar-speed.json").write_text(json.dumps(res, indent=1))
    md = [f"# Constrained vs unconstrained decoding, JSON-schema dependency probe", "",
          f"CPU: {cpu}, 2 threads, default model Q4_1, greedy, batch 1. {len(sents)} EWT test sentences x {args.rounds} rounds, alternated.", "",
          "| decoding | tokens | seconds | tokens/s |", "|---|---:|---:|---:|",
          f"| JSON schema | {tot['constrained'][0]} | {tot['constrained'][1] / 1000:.2f} | {c:.1f} |",
          f"| unconstrained, same lengths | {tot['free'][0]} | {tot['free'][1] / 1000:.2f} | {u:.1f} |", "",
          f"Ratio {c / u:.3f}. Constrained answers that parse as JSON: {parsed}/{len(sents)}."]
    (REPO / f"benches/results/{date}-grammar-speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
