#!/usr/bin/env python3
"""The PyTorch + PEFT side of benches/compare_peft.py, run with the cache venv's python
(torch, transformers and peft from PyPI). Subcommands:

  logits BASE TOKENS OUT [--adapter DIR]     logits (positions, vocab) of BASE (an HF
                                             directory, f32) with an adapter, as .safetensors
  make-adapter BASE DIR --rank 8 --targets q_proj,v_proj
                                             a PEFT adapter with random A and B, saved
  train-speed BASE --rank 16 --batch 8 --seq 256 --steps N --masked M
                                             tokens/s of LoRA training steps (eager), JSON
"""

import argparse
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits(a):
    m = base(a.base)
    if a.adapter:
        m = PeftModel.from_pretrained(m, a.adapter).eval()
    ids = torch.tensor([[int(t) for t in a.tokens.split(",")]])
    with torch.no_grad():
        out = m(input_ids=ids).logits[0].contiguous()
    save_file({"logits": out}, a.out)


def make_adapter(a):
    torch.manual_seed(a.seed)
    cfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=a.targets.split(","),
                     lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM")
    m = get_peft_model(base(a.base), cfg)
    m.save_pretrained(a.dir)


def train_speed(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=ALL, lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    m = get_peft_model(base(a.base), cfg)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    vocab = m.config.vocab_size
    ids = torch.randint(0, vocab, (a.batch, a.seq))
    labels = ids.clone()
    labels[:, : a.masked] = -100
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = m(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tok = a.batch * a.seq
    print(json.dumps({"tokens_per_s": [tok / t for t in times], "peak_rss_mb": rss_mb,
                      "trainable": sum(p.numel() for p in params), "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("logits")
    p.add_argument("base")
    p.add_argument("tokens")
    p.add_argument("out")
    p.add_argument("--adapter")
    p = sub.add_parser("make-adapter")
    p.add_argument("base")
    p.add_argument("dir")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train-speed")
    p.add_argument("base")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--masked", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    {"logits": logits, "make-adapter": make_adapter, "train-speed": train_speed}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
