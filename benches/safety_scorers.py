#!/usr/bin/env python3
"""Checks ferrollama's safety scorers against the reference implementations, on the
generations of a `ferrollama eval --task safety --log-samples FILE` run:

  - toxicity: every generation through garak 0.17.1's own `unsafe_content` string detectors
    (the 18 term-list detectors: Surge profanity by category, Ofcom by category, LDNOOBW,
    slurs), hit or miss per detector, against the hits ferrollama logged;
  - bias: every generation through `vaderSentiment` 3.3.2's `polarity_scores`, against the
    neg/neu/pos/compound ferrollama logged (max absolute difference; the Done-when bound is
    1e-6).

Runs in the garak cache venv (benches/garak_venv.sh makes it: garak without torch, and
vaderSentiment):

    bash benches/garak_venv.sh
    ~/.cache/ferrollama/garak-venv/bin/python benches/safety_scorers.py SAMPLES.jsonl \
        [--min 1000] [--out benches/results/DATE-safety-scorers]

Exit status 1 when any disagreement is found or fewer than --min generations were checked.
"""

import argparse
import json
import pathlib
import sys

from garak.attempt import Attempt, Message
from garak.detectors import unsafe_content
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

DETECTORS = [
    "SurgeProfanitySexual", "SurgeProfanityBodilyFluids", "SurgeProfanitySexualOrientationGender",
    "SurgeProfanityRacialEthnic", "SurgeProfanityMentalDisability", "SurgeProfanityPhysicalDisability",
    "SurgeProfanityPhysicalAttributes", "SurgeProfanityAnimalReferences", "SurgeProfanityReligious",
    "SurgeProfanityPolitical", "OfcomOffensiveGeneral", "OfcomOffensiveSexual",
    "OfcomOffensiveDiscriminatory", "OfcomOffensiveSexGender", "OfcomOffensiveMentalHealth",
    "OfcomOffensiveRaceEthnic", "LDNOOBW", "SlursReclaimedSlurs",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("--min", type=int, default=1000)
    ap.add_argument("--out")
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.samples) if l.strip()]
    recs = [r for r in recs if "output" in r]
    texts = [r["output"] for r in recs]

    detectors = {name: getattr(unsafe_content, name)() for name in DETECTORS}
    attempt = Attempt(prompt=Message(text="", lang="en"))
    attempt.outputs = [Message(text=t, lang="en") for t in texts]
    garak_hits = {name: d.detect(attempt) for name, d in detectors.items()}

    tox = {"generations": len(texts), "per_detector": {}, "disagreements": []}
    any_ours = [bool(r["hits"]) for r in recs]
    any_garak = [any(garak_hits[n][i] == 1.0 for n in DETECTORS) for i in range(len(texts))]
    for name in DETECTORS:
        ours = [name in r["hits"] for r in recs]
        theirs = [h == 1.0 for h in garak_hits[name]]
        agree = sum(o == t for o, t in zip(ours, theirs))
        tox["per_detector"][name] = {"hits_garak": sum(theirs), "hits_ferrollama": sum(ours), "agree": agree}
        for i, (o, t) in enumerate(zip(ours, theirs)):
            if o != t:
                tox["disagreements"].append({"detector": name, "ferrollama": o, "garak": t, "text": texts[i]})
    tox["any_hit_garak"] = sum(any_garak)
    tox["any_hit_ferrollama"] = sum(any_ours)
    tox["any_agree"] = sum(o == t for o, t in zip(any_ours, any_garak))

    sia = SentimentIntensityAnalyzer()
    worst = {"neg": 0.0, "neu": 0.0, "pos": 0.0, "compound": 0.0}
    vader_bad = []
    for r, t in zip(recs, texts):
        ref = sia.polarity_scores(t)
        for k in worst:
            d = abs(ref[k] - r["vader"][k])
            worst[k] = max(worst[k], d)
            if d > 1e-6:
                vader_bad.append({"key": k, "ferrollama": r["vader"][k], "vaderSentiment": ref[k], "text": t})
    vader = {"texts": len(texts), "max_abs_diff": worst, "over_1e-6": len(vader_bad), "examples": vader_bad[:10]}

    # Examples of what a lexical detector catches and misses, for the README.
    hits = [(r["prompt"], t, r["hits"]) for r, t in zip(recs, texts) if r["hits"]]
    summary = {"samples": a.samples, "toxicity": tox, "vader": vader, "hit_examples": hits[:8]}
    ok = (tox["any_agree"] == len(texts) and not tox["disagreements"] and not vader_bad
          and len(texts) >= a.min)

    lines = [f"# Safety scorers against their references ({a.samples})", "",
             f"{len(texts)} generations.", "",
             "| detector | garak hits | ferrollama hits | agree |", "|---|---:|---:|---:|"]
    for name, d in tox["per_detector"].items():
        lines.append(f"| {name} | {d['hits_garak']} | {d['hits_ferrollama']} | {d['agree']}/{len(texts)} |")
    lines.append(f"| any | {tox['any_hit_garak']} | {tox['any_hit_ferrollama']} | {tox['any_agree']}/{len(texts)} |")
    lines += ["", "| VADER field | max abs diff vs vaderSentiment |", "|---|---:|"]
    lines += [f"| {k} | {v:.1e} |" for k, v in worst.items()]
    lines += ["", f"verdict: {'agree' if ok else 'DISAGREE'}"]
    table = "\n".join(lines)
    print(table)
    if a.out:
        out = pathlib.Path(a.out)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
    for d in tox["disagreements"][:10] + vader_bad[:10]:
        print(json.dumps(d, ensure_ascii=False)[:400], file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
