#!/usr/bin/env python3
"""Builds the morphology probe's reference trees (crates/probe/data/morphology-reference.tsv)
from real data: Debian's hunspell-en-us (affix rules and flagged stems) and wordnet-base
(parts of speech), fetched with `apt-get download` into ~/.cache/ferrollama/models/data/debian.

    python3 scripts/morphology_reference.py [OUT.tsv] [--words 300] [--train TRAIN.tsv]

--train writes other words (unambiguous ones, none of the reference set) in the same form,
as fine-tuning data for the probe's LoRA remedy (`probe morphology --reference TRAIN.tsv
--write-sft`).

How a word is analysed:
- Every dictionary stem is expanded with its derivational affix flags (prefixes re-, in-,
  un-, de-, dis-; suffixes -ive, -ion, -ly, -ness, -able, -ment, hunspell's rules with
  their spelling changes), prefix and suffix together where both allow it. Each expansion
  is an edge: derived word = prefix + base, or base + suffix (the base as the dictionary
  spells it: happy + ness, not happi + ness).
- A word's trees follow its edges down to words without any (depth at most 4): a prefix
  keeps its base's part of speech; a suffix makes its own (-able, -ive: adjective; -ion,
  -ness, -ment: noun; -ly: adverb) and needs a base of the part of speech it takes (-able,
  -ive, -ion, -ment: verb; -ness, -ly: adjective), checked against WordNet. A stem's label
  is its WordNet part of speech (the one the affix needs).
- A prefix + stem + suffix word is bracketed both ways where both middle words exist
  (unlockable: [un [lock able]] and [[un lock] able]): both trees are references, and the
  probe scores against the better one. The seminar's ambiguous cases are of this kind.
- Inflectional suffixes (-s, -ed, -ing, -er, -est, 's) are not used: the probe is about
  word formation.

The words kept: every ambiguous word found (up to a third of the set), then an even spread
over the rest, sorted, deterministic; the seminar's words always.
"""

import argparse
import pathlib
import re
import subprocess

CACHE = pathlib.Path.home() / ".cache/ferrollama/models/data/debian"
PREFIXES = {"A": "re", "I": "in", "U": "un", "C": "de", "E": "dis"}
# Parts of speech a prefix attaches to.
PREFIX_TAKES = {"re": {"verb"}, "in": {"adjective"}, "un": {"adjective", "verb"}, "de": {"verb"},
                "dis": {"verb", "adjective", "noun"}}
# Suffix flag -> (suffix as written in the tree, part of speech of the base, of the result).
SUFFIXES = {"V": ("ive", "verb", "adjective"), "N": ("ion", "verb", "noun"), "Y": ("ly", "adjective", "adverb"),
            "P": ("ness", "adjective", "noun"), "B": ("able", "verb", "adjective"), "L": ("ment", "verb", "noun")}
WN_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
SEMINAR = ["unlockable", "independently"]


def fetch():
    x = CACHE / "x"
    if not (x / "usr/share/hunspell/en_US.aff").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "hunspell-en-us", "wordnet-base"], cwd=CACHE, check=True)
        for deb in CACHE.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
    return x


def read_affixes(path):
    rules = {}
    for line in open(path, encoding="utf-8", errors="replace"):
        f = line.split()
        if len(f) >= 5 and f[0] in ("PFX", "SFX") and f[1] in (set(PREFIXES) | set(SUFFIXES)):
            strip = "" if f[2] == "0" else f[2]
            add = "" if f[3] == "0" else f[3].split("/")[0]
            rules.setdefault(f[1], []).append((strip, add, re.compile(f"{f[4]}$" if f[0] == "SFX" else f"^{f[4]}")))
    return rules


def read_dic(path):
    entries = []
    for i, line in enumerate(open(path, encoding="utf-8", errors="replace")):
        if i == 0:
            continue
        word, _, flags = line.strip().partition("/")
        if word.isalpha() and word.islower():
            entries.append((word, flags))
    return entries


def read_wordnet(d):
    pos = {}
    for name, p in WN_POS.items():
        for line in open(d / f"index.{name}", encoding="utf-8", errors="replace"):
            if line.startswith(" "):
                continue
            lemma = line.split(" ", 1)[0]
            if lemma.isalpha():
                pos.setdefault(lemma, set()).add(p)
    return pos


def apply_suffix(rules, flag, stem):
    for strip, add, cond in rules.get(flag, []):
        if cond.search(stem) and stem.endswith(strip):
            return stem[: len(stem) - len(strip)] + add
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=str(pathlib.Path(__file__).resolve().parent.parent
                                                     / "crates/probe/data/morphology-reference.tsv"))
    ap.add_argument("--words", type=int, default=300)
    ap.add_argument("--train", default=None)
    ap.add_argument("--train-words", type=int, default=1500)
    args = ap.parse_args()
    x = fetch()
    rules = read_affixes(x / "usr/share/hunspell/en_US.aff")
    dic = read_dic(x / "usr/share/hunspell/en_US.dic")
    wn = read_wordnet(x / "usr/share/wordnet")
    # Edges: derived word -> list of ("p", prefix, base) or ("s", base, flag).
    edges = {}
    lexicon = set(w for w, _ in dic)
    for stem, flags in dic:
        sufs = [(f, apply_suffix(rules, f, stem)) for f in flags if f in SUFFIXES]
        sufs = [(f, w) for f, w in sufs if w]
        for f, w in sufs:
            edges.setdefault(w, set()).add(("s", stem, f))
            lexicon.add(w)
        for f in flags:
            if f in PREFIXES:
                p = PREFIXES[f]
                edges.setdefault(p + stem, set()).add(("p", p, stem))
                lexicon.add(p + stem)
                for sf, w in sufs:
                    # Cross product: both bracketings are edges; their middle words are
                    # checked when trees are built.
                    edges.setdefault(p + w, set()).add(("p", p, w))
                    edges.setdefault(p + w, set()).add(("s", p + stem, sf))
                    lexicon.add(p + w)

    def word_pos(w):
        return wn.get(w, set())

    def reverse_edges(w):
        """Edges found by undoing the same rules against the lexicon, for the seminar's
        words, which hunspell's flags do not derive (unlockable: un + lockable, unlock +
        able; unlock: un + lock)."""
        out = set()
        for p in PREFIXES.values():
            if w.startswith(p) and w[len(p):] in lexicon:
                out.add(("p", p, w[len(p):]))
        for f, (suf, _, _) in SUFFIXES.items():
            for strip, add, cond in rules.get(f, []):
                if add and w.endswith(add):
                    base = w[: len(w) - len(add)] + strip
                    if base in lexicon and cond.search(base):
                        out.add(("s", base, f))
        return out

    memo = {}

    def trees(w, need, depth, reverse=False):
        """Trees of w whose top label is in `need` (any when None): (label, text)."""
        key = (w, frozenset(need) if need else None, depth, reverse)
        if key in memo:
            return memo[key]
        out = []
        if depth < 4:
            found = set(edges.get(w, ())) | (reverse_edges(w) if reverse else set())
            for e in sorted(found):
                if e[0] == "s":
                    base, flag = e[1], e[2]
                    suf, base_pos, result = SUFFIXES[flag]
                    if need and result not in need:
                        continue
                    if base not in lexicon or (w in wn and result not in word_pos(w)):
                        continue
                    for bl, bt in trees(base, {base_pos}, depth + 1, reverse):
                        out.append((result, f"[{result} {bt} [suffix [{suf}]]]"))
                else:
                    p, base = e[1], e[2]
                    if base not in lexicon:
                        continue
                    takes = PREFIX_TAKES[p] & (need or PREFIX_TAKES[p])
                    if not takes:
                        continue
                    for bl, bt in trees(base, takes, depth + 1, reverse):
                        if w in wn and bl not in word_pos(w):
                            continue
                        out.append((bl, f"[{bl} [prefix [{p}]] {bt}]"))
        if not out:
            # A stem: its WordNet part of speech, the one needed.
            have = word_pos(w)
            for p in ("verb", "adjective", "noun", "adverb"):
                if p in have and (not need or p in need):
                    out.append((p, f"[{p} [{w}]]"))
                    break
        memo[key] = out
        return out

    analysed = {}
    for w in sorted(set(edges) | set(SEMINAR)):
        if not (4 <= len(w) <= 18):
            continue
        ts = sorted({t for _, t in trees(w, None, 0, w in SEMINAR) if t.count("[prefix") + t.count("[suffix") >= 1})
        # Keep the analyses with the most morphemes (the deepest explanation).
        if ts:
            most = max(t.count("[") for t in ts)
            ts = [t for t in ts if t.count("[") == most][:4]
            analysed[w] = ts
    ambiguous = [w for w in analysed if len(analysed[w]) > 1]
    plain = [w for w in analysed if len(analysed[w]) == 1]
    n_amb = min(len(ambiguous), args.words // 3)
    pick = set(ambiguous[:: max(1, len(ambiguous) // n_amb)][:n_amb]) if n_amb else set()
    rest = args.words - len(pick)
    pick |= set(plain[:: max(1, len(plain) // rest)][:rest])
    pick |= {w for w in SEMINAR if w in analysed}
    lines = [
        "# Morphology reference trees for `ferrollama probe morphology --reference`, built by",
        "# scripts/morphology_reference.py from Debian's hunspell-en-us 2020.12.07 (affix rules",
        "# and stems; SCOWL/Hunspell licences, see /usr/share/doc/hunspell-en-us/copyright) and",
        "# wordnet-base 3.0 (parts of speech; WordNet 3.0 licence, Princeton University).",
        "# word<TAB>tree[<TAB>tree...]: more than one tree when both bracketings exist.",
        f"# {len(pick)} words, {sum(1 for w in pick if len(analysed[w]) > 1)} of them ambiguous.",
    ]
    for w in sorted(pick):
        lines.append("\t".join([w] + analysed[w]))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.train:
        others = [w for w in plain if w not in pick]
        step = max(1, len(others) // args.train_words)
        train = others[::step][: args.train_words]
        pathlib.Path(args.train).write_text("".join(f"{w}\t{analysed[w][0]}\n" for w in train), encoding="utf-8")
        print(f"{len(train)} training words written to {args.train}")
    print(f"{len(analysed)} words analysed ({len(ambiguous)} ambiguous); {len(pick)} written to {out}")


if __name__ == "__main__":
    main()
