#!/usr/bin/env python3
"""The Llama 2 pretraining recipe in PyTorch, replayed on a ferrollama run's own initial
weights and batches, to check ferrollama's per-step losses and to compare speed.

    ferrollama train --preset 260k --steps 20 --dump-reference 20 --out RUN ...
    python benches/train_reference.py RUN            # losses: max relative difference
    python benches/train_reference.py RUN --compile  # also torch.compile + fused AdamW

Reads RUN/config.toml (the hyper-parameters), RUN/hf/config.json or the preset shape
from RUN/reference/init.safetensors, RUN/reference/batches.safetensors, and
RUN/metrics.jsonl. Prints a JSON object and a table. Install torch into a cache venv
outside the repo (the README, "Training", gives the pip command).

The model is written here from the Llama 2 paper (RMSNorm before attention and the MLP,
SwiGLU, rotate-half RoPE as Hugging Face checkpoints store Q/K, grouped-query attention),
not copied from any implementation.
"""

import argparse
import json
import math
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def shape_from_weights(w):
    """Model shape inferred from the tensor names and shapes of an HF-named state dict."""
    layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("model.layers."))
    vocab, hidden = w["model.embed_tokens.weight"].shape
    q = w["model.layers.0.self_attn.q_proj.weight"].shape[0]
    kv = w["model.layers.0.self_attn.k_proj.weight"].shape[0]
    ffn = w["model.layers.0.mlp.gate_proj.weight"].shape[0]
    return dict(vocab=vocab, hidden=hidden, layers=layers, q=q, kv=kv, ffn=ffn,
                tied="lm_head.weight" not in w)


class Llama(torch.nn.Module):
    def __init__(self, w, heads, eps, theta, seq_len):
        super().__init__()
        s = shape_from_weights(w)
        self.s, self.heads, self.eps = s, heads, eps
        self.hd = s["q"] // heads
        self.kv_heads = s["kv"] // self.hd
        self.params = torch.nn.ParameterDict(
            {k.replace(".", "__"): torch.nn.Parameter(v.clone().float()) for k, v in w.items()})
        inv = 1.0 / theta ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd)
        ang = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def p(self, name):
        return self.params[name.replace(".", "__")]

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, t):
        x1, x2 = x.chunk(2, dim=-1)
        return x * self.cos[:t] + torch.cat([-x2, x1], -1) * self.sin[:t]

    def forward(self, tokens):
        b, t = tokens.shape
        x = F.embedding(tokens, self.p("model.embed_tokens.weight"))
        for i in range(self.s["layers"]):
            pre = f"model.layers.{i}"
            h = self.norm(x, self.p(f"{pre}.input_layernorm.weight"))
            q = (h @ self.p(f"{pre}.self_attn.q_proj.weight").T).view(b, t, self.heads, self.hd).transpose(1, 2)
            k = (h @ self.p(f"{pre}.self_attn.k_proj.weight").T).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
            v = (h @ self.p(f"{pre}.self_attn.v_proj.weight").T).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
            q, k = self.rope(q, t), self.rope(k, t)
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(b, t, -1)
            x = x + y @ self.p(f"{pre}.self_attn.o_proj.weight").T
            h = self.norm(x, self.p(f"{pre}.post_attention_layernorm.weight"))
            g = h @ self.p(f"{pre}.mlp.gate_proj.weight").T
            u = h @ self.p(f"{pre}.mlp.up_proj.weight").T
            x = x + (F.silu(g) * u) @ self.p(f"{pre}.mlp.down_proj.weight").T
        x = self.norm(x, self.p("model.norm.weight"))
        head = self.p("model.embed_tokens.weight") if self.s["tied"] else self.p("lm_head.weight")
        return x @ head.T


def lr_at(step, c):
    """Linear warm-up, cosine decay to min_lr_ratio of the peak (as ferrollama's schedule)."""
    peak, warm, total = c["lr"], c["warmup"], c["steps"]
    floor = peak * c["min_lr_ratio"]
    if step < warm:
        return peak * (step + 1) / warm
    if step >= total or total <= warm:
        return floor
    p = (step - warm) / (total - warm)
    return floor + 0.5 * (1 + math.cos(math.pi * p)) * (peak - floor)


def clip_exact(params, max_norm):
    """Clipping by the global norm summed in f64, as ferrollama does. torch's
    clip_grad_norm_ sums in f32: on the 15m preset its norm of the 32000 x 288 embedding
    gradient is 3e-5 off, and the clipped steps drift apart from there."""
    total = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in params if p.grad is not None))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)


def replay(run, compile_model, fused, exact_clip=True):
    c = tomllib.loads((run / "config.toml").read_text())
    heads = json.loads((run / "hf/config.json").read_text())["num_attention_heads"] \
        if (run / "hf/config.json").exists() else PRESET_HEADS[c["preset"]]
    w = load_file(run / "reference/init.safetensors")
    batches = load_file(run / "reference/batches.safetensors")
    xs, ys = batches["inputs"], batches["targets"]
    steps, accum = xs.shape[0], xs.shape[1]
    model = Llama(w, heads, 1e-5, 10000.0, c["seq_len"])
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    o = c.get("optim", {})
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.get("weight_decay", 0.1)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=c["lr"], betas=(o.get("beta1", 0.9), o.get("beta2", 0.95)), eps=o.get("eps", 1e-5),
        fused=fused)
    fwd = torch.compile(model) if compile_model else model
    losses, times = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, c)
        total = 0.0
        for m in range(accum):
            logits = fwd(xs[step, m])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys[step, m].reshape(-1))
            (loss / accum).backward()
            total += loss.item()
        clip = c.get("grad_clip", 1.0)
        if clip > 0 and exact_clip:
            clip_exact(params, clip)
        elif clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(total / accum)
    return c, losses, times


PRESET_HEADS = {"260k": 8, "15m": 6, "42m": 8, "110m": 12}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile + fused AdamW")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ours = [json.loads(l) for l in (a.run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    c, losses, _ = replay(a.run, False, False)
    # Speed with torch's own clipping, as a PyTorch user would run it.
    _, _, times = replay(a.run, False, False, exact_clip=False)
    n = min(len(losses), len(ours))
    rel = [abs(ours[i]["loss"] - losses[i]) / abs(losses[i]) for i in range(n)]
    tokens = c["batch_tokens"]
    # The first step pays for allocation and warm-up on both sides; rates skip it.
    def rate(ts):
        ts = ts[1:] if len(ts) > 1 else ts
        return tokens * len(ts) / sum(ts)
    ours_rate = [m["tokens_per_s"] for m in ours[1:n]] or [ours[0]["tokens_per_s"]]
    result = {
        "run": str(a.run), "preset": c["preset"], "steps_compared": n,
        "max_rel_loss_diff": max(rel), "losses_torch": losses[:n],
        "losses_ferrollama": [m["loss"] for m in ours[:n]],
        "torch_eager_tokens_per_s": rate(times),
        "ferrollama_tokens_per_s": sum(ours_rate) / len(ours_rate),
        "torch_version": torch.__version__, "threads": a.threads,
    }
    if a.compile:
        _, _, ctimes = replay(a.run, True, True, exact_clip=False)
        result["torch_compiled_fused_tokens_per_s"] = rate(ctimes[2:] if len(ctimes) > 3 else ctimes)
    print(json.dumps(result))
    print(f"\n{'step':>5} {'ferrollama':>12} {'torch':>12} {'rel diff':>10}")
    for i in range(n):
        print(f"{i + 1:>5} {ours[i]['loss']:>12.6f} {losses[i]:>12.6f} {rel[i]:>10.2e}")
    print(f"\nmax relative difference {max(rel):.2e} over {n} steps")
    print(f"tokens/s: ferrollama {result['ferrollama_tokens_per_s']:.0f}, "
          f"torch eager {result['torch_eager_tokens_per_s']:.0f}"
          + (f", torch compiled+fused {result['torch_compiled_fused_tokens_per_s']:.0f}"
             if a.compile else ""))
    sys.exit(0 if max(rel) < 1e-4 else 1)


if __name__ == "__main__":
    main()
