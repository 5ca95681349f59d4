#!/usr/bin/env python3
"""The fine-tuning demonstration task: write an ISO date (1987-11-23) in words
(November 23, 1987), a skill with one right answer that a program checks exactly.

Writes into OUT (default: sft-demo/):
  train.jsonl     conversations to fine-tune on (`prompt` + `completion`)
  heldout.jsonl   the held-out questions, none of whose dates is in train.jsonl
  date_words.yaml an lm-evaluation-harness task file for `ferrollama eval` (and lm_eval):
                  greedy generation, exact match of the whole answer
  train_pairs.jsonl, heldout_pairs.jsonl
                  preference pairs for `ferrollama dpo` on the same questions: the right
                  answer chosen, a wrong one rejected (one of the mistakes models make with
                  this task, drawn with the seed), `margin` 1 for a wrong form (a leading
                  zero, the day first, the ISO date echoed, ...) and 3 for a wrong date

With --own-samples SAMPLES (a `ferrollama rs` round's samples.jsonl: answers the model
itself sampled for train.jsonl's prompts) it writes instead own_pairs.jsonl: for each
training prompt, each wrong sampled answer paired with a right one (if the model found one),
margin 1 when the wrong answer holds the right month name, day and year (a wrong form) and 3
otherwise: preference pairs from the model's own samples ranked by the exact check, the
mistakes it really makes. Only training prompts are used.

Why it is a fair test: the answers are computed, not written by a model; the held-out dates
never occur in training (checked below), so a model must learn the rule (month names, no
leading zeros, the order of the parts), not memorise answers; the prompt says what is wanted
without showing the format, which is what fine-tuning teaches. Standard library only; the
same seed gives the same files.
"""

import argparse
import calendar
import datetime
import json
import os
import random
import re

PROMPT = "Write the date {iso} in words."


def dates(rng, n, exclude):
    """n distinct dates from 1900-2099 not in `exclude`."""
    start = datetime.date(1900, 1, 1).toordinal()
    end = datetime.date(2099, 12, 31).toordinal()
    out = []
    seen = set(exclude)
    while len(out) < n:
        d = datetime.date.fromordinal(rng.randint(start, end))
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def record(d):
    words = f"{calendar.month_name[d.month]} {d.day}, {d.year}"
    return {"prompt": PROMPT.format(iso=d.isoformat()), "completion": words}


def mistake(rng, d):
    """A wrong answer for date d and how wrong it is (1: the form, 3: the date itself)."""
    month, day, year = calendar.month_name[d.month], d.day, d.year
    forms = [f"{month} {day:02d}, {year}" if day < 10 else f"{month} {day} {year}",
             f"{d.month} {day}, {year}", f"{day} {month} {year}", d.isoformat(),
             f"{calendar.month_abbr[d.month]}. {day}, {year}", f"{month} {day}th, {year}"]
    wrong = [f"{calendar.month_name[d.month % 12 + 1]} {day}, {year}",
             f"{month} {day % 28 + 1}, {year}", f"{month} {day}, {year + rng.choice([-1, 1, 10])}"]
    k = rng.randrange(len(forms) + len(wrong))
    return (forms[k], 1) if k < len(forms) else (wrong[k - len(forms)], 3)


def pair(rng, d):
    r = record(d)
    rejected, margin = mistake(rng, d)
    assert rejected != r["completion"]
    return {"prompt": r["prompt"], "chosen": r["completion"], "rejected": rejected, "margin": margin}


TASK = """task: date_words
dataset_path: json
dataset_kwargs:
  data_files:
    test: heldout.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{completion}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
filter_list:
  - name: strip
    filter:
      - function: regex
        regex_pattern: "^\\\\s*(.*?)\\\\s*$"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def own_pairs(out, samples_path):
    """Pairs from a model's own sampled answers to the training prompts, judged exactly."""
    with open(os.path.join(out, "train.jsonl")) as f:
        prompts = [json.loads(l) for l in f]
    pairs, seen = [], 0
    with open(samples_path) as f:
        for line in f:
            rec = json.loads(line)
            p = prompts[rec["prompt"]]
            truth = p["completion"]
            texts = list(dict.fromkeys(a["text"].strip() for a in rec["answers"]))
            seen += len(texts)
            right = [t for t in texts if t == truth]
            if not right:
                continue
            month, rest = truth.split(" ", 1)
            day, year = rest.split(", ")
            for wrong in (t for t in texts if t != truth):
                form_only = month in wrong and re.search(rf"\b0?{day}\b", wrong) and year in wrong
                pairs.append({"prompt": p["prompt"], "chosen": truth, "rejected": wrong,
                              "margin": 1 if form_only else 3})
    with open(os.path.join(out, "own_pairs.jsonl"), "w") as f:
        for q in pairs:
            f.write(json.dumps(q) + "\n")
    print(f"{out}/own_pairs.jsonl: {len(pairs)} pairs from {seen} distinct sampled answers")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="sft-demo")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--seed", type=int, default=20231)
    ap.add_argument("--own-samples", help="a `ferrollama rs` samples.jsonl: write own_pairs.jsonl from it")
    a = ap.parse_args()
    if a.own_samples:
        return own_pairs(a.out, a.own_samples)
    rng = random.Random(a.seed)
    held = dates(rng, a.heldout, [])
    train = dates(rng, a.train, held)
    assert not set(held) & set(train)
    os.makedirs(a.out, exist_ok=True)
    for name, ds in (("train.jsonl", train), ("heldout.jsonl", held)):
        with open(os.path.join(a.out, name), "w") as f:
            for d in ds:
                f.write(json.dumps(record(d)) + "\n")
    for name, ds in (("train_pairs.jsonl", train), ("heldout_pairs.jsonl", held)):
        with open(os.path.join(a.out, name), "w") as f:
            for d in ds:
                f.write(json.dumps(pair(rng, d)) + "\n")
    with open(os.path.join(a.out, "date_words.yaml"), "w") as f:
        f.write(TASK)
    print(f"{a.out}: {len(train)} training and {len(held)} held-out questions, task date_words.yaml")


if __name__ == "__main__":
    main()
