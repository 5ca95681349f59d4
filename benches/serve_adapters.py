#!/usr/bin/env python3
"""What serving LoRA adapters per request costs: `ferrollama serve` with and without them.

    python3 benches/serve_adapters.py [--rounds 3] [--clients 4] [--requests-per-client 4]
        [--rank 16] [--model M.gguf] [--out benches/results]

One streaming chat load (benches/load_test.py: CLIENTS clients, max_tokens 64,
temperature 0.7, ignore_eos so every request generates 64 tokens) against five setups,
in an order that rotates every round:

  plain      a server with no adapters (the baseline)
  base       a server holding one adapter (--lora-module tuned=DIR), requests naming the base
  adapter    the same server, requests naming the adapter
  mixed      the same server, half the clients naming the adapter, half the base, at once
  global     a server applying the adapter to every request (--lora DIR), unmerged

The adapter is a random rank-R one on all seven projections of the model (its values do
not change the cost), written in PEFT's layout into a temporary directory. Prints
generated tokens/s per setup (median over rounds) and its ratio to `plain`, and writes
benches/results/DATE-serve-adapters.md and .json with the CPU and every figure.
ferrollama must already be built (cargo build --release -p ferrollama). Not run by CI.
"""

import argparse
import datetime
import json
import pathlib
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import threading

sys.dont_write_bytecode = True  # no __pycache__ beside the benches
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_server import cpu_model  # noqa: E402
from load_test import run_level  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "ferrollama"
SETUPS = ["plain", "base", "adapter", "mixed", "global"]


def model_config(model):
    args = [str(BIN), "info", "--json"] + (["--model", model] if model else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    return info["file"], info["config"]


def write_adapter(dir, cfg, rank, seed=0):
    """A random PEFT adapter: A and B ~ U(-0.01, 0.01) on every projection of every block."""
    h, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h),
              "mlp.down_proj": (h, f)}
    rng = random.Random(seed)
    header, blobs, offset = {}, [], 0
    for layer in range(cfg["num_hidden_layers"]):
        for module, (rows, cols) in shapes.items():
            stem = f"base_model.model.model.layers.{layer}.{module}"
            for name, shape in ((f"{stem}.lora_A.weight", (rank, cols)), (f"{stem}.lora_B.weight", (rows, rank))):
                n = shape[0] * shape[1]
                blob = struct.pack(f"<{n}f", *(rng.uniform(-0.01, 0.01) for _ in range(n)))
                header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
                blobs.append(blob)
                offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(dir / "adapter_model.safetensors", "wb") as out:
        out.write(struct.pack("<Q", len(head)) + head)
        for b in blobs:
            out.write(b)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "lora_dropout": 0.0, "target_modules": [m.split(".")[1] for m in shapes], "bias": "none"}
    (dir / "adapter_config.json").write_text(json.dumps(config))


def start(model, extra):
    args = [str(BIN), "serve", "--port", "0", "--model", model, "--parallel", "4", "--ctx", "2048"] + extra
    p = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        if line.startswith("listening on "):
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, line.split("listening on ", 1)[1].strip()
    raise SystemExit(f"the server did not start: {args}")


def load(url, a, model):
    return run_level(url, a.clients, requests_per_client=a.requests_per_client, max_tokens=64,
                     temperature=0.7, model=model, extra={"ignore_eos": True})


def mixed(url, a, base_name):
    """Half the clients on the adapter, half on the base, started together."""
    half = max(a.clients // 2, 1)
    results = {}

    def run(name, model):
        results[name] = run_level(url, half, requests_per_client=a.requests_per_client, max_tokens=64,
                                  temperature=0.7, model=model, extra={"ignore_eos": True})
    threads = [threading.Thread(target=run, args=("adapter", "tuned")),
               threading.Thread(target=run, args=("base", base_name))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tokens = sum(r["tokens"] for r in results.values())
    wall = max(r["wall_s"] for r in results.values())
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "errors": sum(r["errors"] for r in results.values())}


def run_setup(setup, model, adapter, a):
    base_name = pathlib.Path(model).stem
    extra = {"plain": [], "global": ["--lora", str(adapter)]}.get(setup, ["--lora-module", f"tuned={adapter}"])
    p, url = start(model, extra)
    try:
        if setup == "mixed":
            r = mixed(url, a, base_name)
        else:
            r = load(url, a, {"adapter": "tuned", "base": base_name}.get(setup))
        return {k: r[k] for k in ("tokens", "wall_s", "tokens_per_s", "errors")}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--model", help="a GGUF file (default: the default model)")
    ap.add_argument("--out", default=str(REPO / "benches" / "results"))
    a = ap.parse_args()
    if not BIN.exists():
        raise SystemExit("build first: cargo build --release -p ferrollama")
    model, cfg = model_config(a.model)
    runs = {s: [] for s in SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = pathlib.Path(tmp)
        write_adapter(adapter, cfg, a.rank)
        for k in range(a.rounds):
            order = SETUPS[k % len(SETUPS):] + SETUPS[:k % len(SETUPS)]
            for s in order:
                r = run_setup(s, model, adapter, a)
                if r["errors"]:
                    raise SystemExit(f"{s}: {r['errors']} requests failed")
                runs[s].append(r)
                print(f"round {k + 1} {s:8} {r['tokens_per_s']:7.1f} tokens/s", file=sys.stderr)
    med = {s: statistics.median(r["tokens_per_s"] for r in runs[s]) for s in SETUPS}
    cpu = cpu_model()
    rows = [f"| {s} | {med[s]:.1f} | {med[s] / med['plain']:.3f} |" for s in SETUPS]
    md = "\n".join([
        f"# Serving LoRA adapters per request ({datetime.date.today()})", "",
        f"CPU: {cpu}, 2 threads. Model: {pathlib.Path(model).name}; a random rank-{a.rank} adapter "
        f"on all projections; {a.clients} streaming clients x {a.requests_per_client} requests of 64 "
        f"tokens (ignore_eos), 4 slots; median of {a.rounds} rounds, setups rotated.", "",
        "| setup | generated tokens/s | vs plain |", "|---|---:|---:|", *rows, ""])
    print(md)
    out = pathlib.Path(a.out)
    stem = out / f"{datetime.date.today()}-serve-adapters"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(
        {"cpu": cpu, "model": model, "rank": a.rank, "clients": a.clients,
         "requests_per_client": a.requests_per_client, "median_tokens_per_s": med, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
