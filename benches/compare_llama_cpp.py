#!/usr/bin/env python3
"""Side-by-side speed of ferrollama and llama.cpp on the same GGUF files, same machine.

For the default model (Q4_1) and its q8_0, q4_0, f16, bf16, q4_K and q6_K variants (made with
`ferrollama quantize`; the K-quant files hold K-quants where rows are whole 256-blocks and
llama-quantize's fallback, q5_0 or q8_0, elsewhere), it alternates the two runtimes, A B A B, for --pairs pairs, each
run measuring pp (one batched forward over a 512-token prompt) and tg (128 single-token
steps) with --threads threads after a warm-up, and prints the median ferrollama/llama.cpp
ratio of the pairs and each side's peak RSS, plus tg as a fraction of the memory-bandwidth
ceiling (bandwidth / bytes of weights read per token). llama.cpp comes from PyPI:
llama-cpp-python, built from source with this CPU's features into a cache venv (several
minutes the first time). Not run by CI.

`--peer llama-bench` measures llama.cpp with its own `llama-bench` binary instead (built with
cmake and native flags from the same release's source, see llama_cpp_build.py: no Python in
the loop, the fairest peer), on files quantized by llama.cpp's own `llama-quantize` from the
f16 file (q4_K as Q4_K_S, q6_K as Q6_K); peak RSS is then the process's, from wait4.

    python3 benches/compare_llama_cpp.py [--pairs 5] [--threads 2] [--types q4_1,q8_0,q4_0,f16,bf16,q4_K,q6_K]
                                         [--peer python|llama-bench]
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_cpp_build  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", pathlib.Path.home() / ".cache/ferrollama/models"))
VENV = HOME.parent / "bench" / "venv"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
BIN = REPO / "target/release/ferrollama"

# Runs inside the venv: one llama.cpp measurement, printed as JSON.
LLAMA_CPP_RUN = r"""
import json, random, resource, sys, time
from llama_cpp import Llama
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 16, n_threads=threads, n_threads_batch=threads,
            n_batch=512, n_ubatch=512, verbose=False)
rng = random.Random(1)
vocab = llm.n_vocab()
def pp():
    tokens = [rng.randrange(vocab) for _ in range(n_prompt)]
    llm.reset()
    t = time.perf_counter(); llm.eval(tokens); return n_prompt / (time.perf_counter() - t)
def tg():
    llm.reset()
    t = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([rng.randrange(vocab)])
    return n_gen / (time.perf_counter() - t)
pp(); tg()  # warm-up
print(json.dumps({"pp": pp(), "tg": tg(), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

# Runs inside the venv: aggregate read bandwidth of `threads` processes summing 1 GiB each.
BANDWIDTH_PROBE = r"""
import multiprocessing as mp, sys, time
import numpy as np
def reader(q, barrier):
    a = np.ones(1 << 27, dtype=np.float64)  # 1 GiB
    a.sum()
    barrier.wait()
    t = time.perf_counter(); reps = 5
    for _ in range(reps): a.sum()
    q.put(reps * a.nbytes / (time.perf_counter() - t))
if __name__ == "__main__":
    n = int(sys.argv[1]); q = mp.Queue(); b = mp.Barrier(n)
    ps = [mp.Process(target=reader, args=(q, b)) for _ in range(n)]
    [p.start() for p in ps]; rates = [q.get() for _ in ps]; [p.join() for p in ps]
    print(sum(rates) / 1e9)
"""


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw).stdout


def ensure_venv(llama_cpp=True):
    """The cache venv: numpy for the bandwidth probe, and llama-cpp-python for the Python peer."""
    py = VENV / "bin/python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not llama_cpp:
        if subprocess.run([str(py), "-c", "import numpy"], capture_output=True).returncode != 0:
            subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy"], check=True)
        return py
    probe = subprocess.run([str(py), "-c", "import llama_cpp, numpy"], capture_output=True)
    if probe.returncode != 0:
        print(f"installing {LLAMA_CPP_PYTHON} (builds llama.cpp from source) and numpy into {VENV}", file=sys.stderr)
        env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=ON")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python", LLAMA_CPP_PYTHON], check=True, env=env)
    return py


def model_files(types):
    sh("cargo", "build", "--release", "-q", "-p", "ferrollama", cwd=REPO)
    q4_1 = pathlib.Path(json.loads(sh(BIN, "info", "--json"))["file"])
    files = {}
    for t in types:
        path = q4_1 if t == "q4_1" else HOME / f"SmolLM2-135M-Instruct.{t}.bench.gguf"
        if not path.exists():
            sh(BIN, "quantize", q4_1, path, "--type", t)
        # One load first writes the packed-weights cache, so every measured run maps it.
        sh(BIN, "generate", "--model", path, "-p", "Hi", "-n", "1")
        files[t] = path
    return files


# llama-quantize's names for the types compared.
LLAMA_QUANTIZE_TYPES = {"q4_1": "Q4_1", "q8_0": "Q8_0", "q4_0": "Q4_0", "f16": "F16", "bf16": "BF16",
                        "q4_K": "Q4_K_S", "q6_K": "Q6_K", "q5_0": "Q5_0", "q5_1": "Q5_1"}


def llama_quantized_files(types):
    """Each type quantized by llama.cpp's llama-quantize from the default model's f16 file."""
    sh("cargo", "build", "--release", "-q", "-p", "ferrollama", cwd=REPO)
    q4_1 = pathlib.Path(json.loads(sh(BIN, "info", "--json"))["file"])
    f16 = HOME / "SmolLM2-135M-Instruct.f16.bench.gguf"
    if not f16.exists():
        sh(BIN, "quantize", q4_1, f16, "--type", "f16")
    quantize = llama_cpp_build.ensure_tool("llama-quantize")
    files = {}
    for t in types:
        path = HOME / f"SmolLM2-135M-Instruct.{t}.llama-quantize.gguf"
        if not path.exists():
            sh(quantize, f16, path, LLAMA_QUANTIZE_TYPES[t])
        sh(BIN, "generate", "--model", path, "-p", "Hi", "-n", "1")  # writes the packed cache
        files[t] = path
    return files


def run_ferrollama(path, threads, n_prompt, n_gen):
    records = json.loads(sh(BIN, "bench", "--model", path, "-p", n_prompt, "-n", n_gen, "-r", 1, "-t", threads, "--json"))
    pp = next(r for r in records if r["n_gen"] == 0)
    tg = next(r for r in records if r["n_prompt"] == 0)
    return {"pp": pp["avg_ts"], "tg": tg["avg_ts"], "peak_rss": pp["peak_rss_bytes"], "kernels": pp.get("kernels")}


def run_llama_bench(binary, path, threads, n_prompt, n_gen):
    """One llama-bench run (its own warm-up, one repetition of pp and tg), with its peak RSS."""
    cmd = [str(binary), "-m", str(path), "-p", str(n_prompt), "-n", str(n_gen), "-r", "1",
           "-t", str(threads), "-o", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    records = json.loads(out)
    pp = next(r for r in records if r["n_gen"] == 0)
    tg = next(r for r in records if r["n_prompt"] == 0)
    return {"pp": pp["avg_ts"], "tg": tg["avg_ts"], "peak_rss": usage.ru_maxrss * 1024}


def run_llama_cpp(py, path, threads, n_prompt, n_gen):
    return json.loads(sh(py, "-c", LLAMA_CPP_RUN, path, threads, n_prompt, n_gen))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="q4_1,q8_0,q4_0,f16,bf16,q4_K,q6_K")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "benches/results")
    ap.add_argument("--peer", choices=["python", "llama-bench"], default="python",
                    help="llama.cpp through llama-cpp-python, or its own llama-bench binary")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="with --peer llama-bench: avx2 runs both sides without AVX-512 (llama-bench built "
                         "with AVX2 only, ferrollama under FERROLLAMA_NO_AVX512=1), as on an AVX2-only CPU")
    a = ap.parse_args()
    if a.isa != "native" and a.peer != "llama-bench":
        ap.error("--isa needs --peer llama-bench")
    if a.isa == "avx2":
        os.environ["FERROLLAMA_NO_AVX512"] = "1"
    bench_binary = llama_cpp_build.ensure_tool("llama-bench", isa=a.isa) if a.peer == "llama-bench" else None
    py = ensure_venv(llama_cpp=bench_binary is None)
    files = (llama_quantized_files if bench_binary else model_files)(a.types.split(","))
    bandwidth = float(sh(py, "-c", BANDWIDTH_PROBE, a.threads))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    rows = []
    for t, path in files.items():
        pairs = []
        for i in range(a.pairs):
            # A B, then B A: neither runtime always runs on a warmer machine.
            order = ["ferrollama", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "ferrollama"]
            res = {}
            for who in order:
                if who == "ferrollama":
                    res[who] = run_ferrollama(path, a.threads, a.n_prompt, a.n_gen)
                elif bench_binary:
                    res[who] = run_llama_bench(bench_binary, path, a.threads, a.n_prompt, a.n_gen)
                else:
                    res[who] = run_llama_cpp(py, path, a.threads, a.n_prompt, a.n_gen)
            pairs.append(res)
            print(f"{t} pair {i + 1}: " + json.dumps(res), file=sys.stderr)
        tensor_bytes = json.loads(sh(BIN, "info", "--json", path))["tensor_bytes"]
        med = lambda who, k: statistics.median(p[who][k] for p in pairs)
        row = {
            "type": t,
            "file": str(path),
            "tensor_bytes": tensor_bytes,
            "pp_ratio": statistics.median(p["ferrollama"]["pp"] / p["llama.cpp"]["pp"] for p in pairs),
            "tg_ratio": statistics.median(p["ferrollama"]["tg"] / p["llama.cpp"]["tg"] for p in pairs),
            "pp_ferrollama": med("ferrollama", "pp"), "pp_llama_cpp": med("llama.cpp", "pp"),
            "tg_ferrollama": med("ferrollama", "tg"), "tg_llama_cpp": med("llama.cpp", "tg"),
            "rss_ferrollama": med("ferrollama", "peak_rss"), "rss_llama_cpp": med("llama.cpp", "peak_rss"),
            "tg_ceiling": bandwidth * 1e9 / tensor_bytes,
            "pairs": pairs,
        }
        rows.append(row)
    date = datetime.date.today().isoformat()
    kernels = rows[0]["pairs"][0]["ferrollama"].get("kernels") if rows else None
    build = "GGML_NATIVE" if a.isa == "native" else "AVX2, FMA, F16C, no AVX-512"
    peer = (f"llama.cpp = llama-bench built from the {LLAMA_CPP_PYTHON} sdist ({build}), files from llama-quantize"
            if bench_binary else f"llama.cpp = {LLAMA_CPP_PYTHON} (Python process: its RSS includes the interpreter)")
    header = (f"{date}, {cpu}, {a.threads} threads, {a.pairs} pairs, pp{a.n_prompt} / tg{a.n_gen}, "
              f"read bandwidth {bandwidth:.1f} GB/s; ferrollama kernels: {kernels}; {peer}")
    lines = [header, "", "| file | pp t/s ferrollama / llama.cpp | ratio | tg t/s ferrollama / llama.cpp | ratio | tg / bandwidth ceiling (ferrollama, llama.cpp) | peak RSS MiB ferrollama / llama.cpp |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['pp_ferrollama']:.1f} / {r['pp_llama_cpp']:.1f} | {r['pp_ratio']:.2f} | "
                     f"{r['tg_ferrollama']:.1f} / {r['tg_llama_cpp']:.1f} | {r['tg_ratio']:.2f} | "
                     f"{r['tg_ferrollama'] / r['tg_ceiling']:.2f}, {r['tg_llama_cpp'] / r['tg_ceiling']:.2f} | "
                     f"{r['rss_ferrollama'] / 2**20:.0f} / {r['rss_llama_cpp'] / 2**20:.0f} |")
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = (f"{date}-llama-bench" + ("" if a.isa == "native" else f"-{a.isa}")) if bench_binary else date
    (a.out / f"{stem}.md").write_text(table + "\n")
    (a.out / f"{stem}.json").write_text(json.dumps({"date": date, "cpu": cpu, "threads": a.threads, "peer": a.peer, "isa": a.isa,
                                                    "kernels": kernels,
                                                    "bandwidth_gbs": bandwidth, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
