#!/usr/bin/env python3
"""Quantization quality as llama.cpp reports it, side by side: `ferrollama perplexity
--kl-base F16` against `llama-perplexity --kl-divergence` (llama.cpp's own tool, built from
the llama-cpp-python 0.3.36 sdist by benches/llama_cpp_build.py), for q8_0 and q4_0
variants of the default model against its f16 (all three made with `ferrollama convert` /
`quantize`; the f16 is the default Q4_1 file dequantized).

    python3 benches/compare_kl_divergence.py [--text FILE] [--ctx 512] [--types q8_0,q4_0]

Prints each tool's mean KLD, same-top-token share, PPL(Q)/PPL(base) and their relative
differences, as JSON and a table, and writes benches/results/DATE-kl-divergence.{md,json}.
The default text is tests/data/smollm2/ppl-text.txt (fortunes, as the perplexity test).
"""

import argparse
import datetime
import json
import pathlib
import re
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_cpp_build  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = llama_cpp_build.HOME
BIN = REPO / "target/release/ferrollama"
DEFAULT_MODEL = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sh(*cmd):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)


def llama_cpp(tool, model, base_kld, ctx):
    out = sh(tool, "-m", model, "-c", ctx, "-t", 2, "--kl-divergence-base", base_kld, "--kl-divergence")
    text = out.stdout + out.stderr
    grab = lambda pat: float(re.search(pat, text).group(1))  # noqa: E731
    return {
        "kld": grab(r"Mean\s+KLD:\s+([0-9.]+)"),
        "same_top": grab(r"Same top p:\s+([0-9.]+)") / 100,
        "ppl_ratio": grab(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([0-9.]+)"),
        "ppl": grab(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)"),
        "ppl_base": grab(r"Mean PPL\(base\)\s+:\s+([0-9.]+)"),
    }


def ours(model, base, text, ctx):
    r = json.loads(sh(BIN, "perplexity", "--json", "-m", model, "--kl-base", base, "-c", ctx, "-f", text).stdout)
    return {"kld": r["kld"]["mean"], "same_top": r["same_top"]["mean"], "ppl_ratio": r["ppl_ratio"],
            "ppl": r["ppl"]["mean"], "ppl_base": r["ppl_base"]["mean"], "seconds": r["seconds"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=pathlib.Path, default=REPO / "tests/data/smollm2/ppl-text.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--types", default="q8_0,q4_0")
    ap.add_argument("--work", type=pathlib.Path, default=HOME.parent / "bench" / "kl")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "benches/results")
    a = ap.parse_args()
    tool = llama_cpp_build.ensure_tool("llama-perplexity")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferrollama"], cwd=REPO, check=True)
    a.work.mkdir(parents=True, exist_ok=True)
    f16 = a.work / "f16.gguf"
    if not f16.exists():
        sh(BIN, "convert", DEFAULT_MODEL, f16, "--type", "f16")
    base_kld = a.work / "f16.kld"
    sh(tool, "-m", f16, "-f", a.text, "-c", a.ctx, "-t", 2, "--kl-divergence-base", base_kld)
    rows = []
    for ty in a.types.split(","):
        q = a.work / f"{ty}.gguf"
        if not q.exists():
            sh(BIN, "quantize", f16, q, "--type", ty)
        f, l = ours(q, f16, a.text, a.ctx), llama_cpp(tool, q, base_kld, a.ctx)
        rows.append({"type": ty, "ferrollama": f, "llama_cpp": l,
                     "kld_relative_difference": (f["kld"] - l["kld"]) / l["kld"]})
        print(ty, json.dumps(rows[-1]), file=sys.stderr)
    cpuinfo = open("/proc/cpuinfo").read()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu, "avx512": "avx512f" in cpuinfo,
              "text": str(a.text.relative_to(REPO) if a.text.is_relative_to(REPO) else a.text), "ctx": a.ctx,
              "rows": rows}
    print(json.dumps(report, indent=2))
    table = ["| type vs f16 | mean KLD ferrollama / llama.cpp | rel. diff | same top token | PPL(Q)/PPL(base) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        f, l = r["ferrollama"], r["llama_cpp"]
        table.append(f"| {r['type']} | {f['kld']:.6f} / {l['kld']:.6f} | {100 * r['kld_relative_difference']:+.2f} % "
                     f"| {100 * f['same_top']:.3f} / {100 * l['same_top']:.3f} % | {f['ppl_ratio']:.4f} / {l['ppl_ratio']:.4f} |")
    md = "\n".join([f"# KL divergence against llama-perplexity, {report['date']} ({cpu})", "",
                    f"`python3 benches/compare_kl_divergence.py`: default model variants against its f16 on "
                    f"`{report['text']}`, context {a.ctx}.", ""] + table) + "\n"
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{report['date']}-kl-divergence"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
