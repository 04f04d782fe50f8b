#!/usr/bin/env python3
"""PyTorch CPU reference for `gpt2-dist bench`.

Purpose
    Times one GPT-2 training step (forward + cross-entropy + backward, and
    optionally an AdamW update) in PyTorch on the CPU, float32, with the same
    shapes, FLOP count and reporting as `gpt2-dist bench`, so the Swift
    numbers can be put next to a well-known baseline on the same machine.

    The model is transformers.GPT2LMHeadModel built from a gpt2-dist model
    config JSON (the seven keys vocab_size, context_length, emb_dim, n_heads,
    n_layers, drop_rate, qkv_bias), e.g. Configs/gpt2-124M.json:
        GPT2Config(vocab_size, n_positions=context_length, n_embd=emb_dim,
                   n_head=n_heads, n_layer=n_layers,
                   resid/embd/attn_pdrop = drop_rate (0 with --dropout-off),
                   layer_norm_epsilon=1e-5, activation_function="gelu_new")
    with the LM head tied to wte (GPT-2's layout; same parameter count as
    gpt2-dist). HF's GPT-2 always has a c_attn bias; for qkv_bias=false it is
    zeroed and frozen (requires_grad=False) and left out of N, which is what
    gpt2-dist computes (the bias-add itself is still executed: negligible).

    Attention: --attn sdpa (default; torch.nn.functional.
    scaled_dot_product_attention) or --attn eager (explicit softmax(QK^T)).
    Both are the same model. sdpa is the default: on the 2-core AMD EPYC
    (AVX-512) dev VM, torch 2.13.0+cpu, 124M, batch 8 x 128, 2 threads,
    dropout 0.1, median of 5 steps: sdpa 4159 ms/step, eager 4180 ms/step
    (a wash at T=128, where attention is a small share of the FLOPs; not
    measured at longer T, where sdpa's fused kernel should matter more).

    Timings are only meaningful on an otherwise idle machine: run nothing
    else (no swift build / test / train) at the same time.

    Step timed (mirrors Sources/gpt2-dist/Bench.swift): zero grads, forward,
    mean cross-entropy vs. fixed targets, backward, [AdamW step: lr 1e-4,
    betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on dim>=2 params]. Inputs
    are the same deterministic ids as the Swift bench
    (input[i] = i*7919 % V, target[i] = (i+1)*7919 % V). One warm-up step,
    then --steps timed steps; the reported time is the median (for an even
    count the upper median, sorted[n//2], as the Swift bench does).

    FLOPs per token = 6N + 12*L*C*T (nanoGPT's count, as gpt2-dist), N =
    trainable parameter count with the tied head counted once.
    GFLOP/s = FLOPs/token * B*T / median step time.
    Peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux,
    bytes on macOS; reported in bytes) - the whole process, incl. torch.

How to run (from the repo root)
    /work/venv/bin/python Launch/bench/bench_pytorch.py --config Configs/gpt2-124M.json \
        --batch-size 8 --seq-len 128 --steps 5 --threads 2 [--optimizer] \
        [--dropout-off] [--attn sdpa|eager] [--json]

    Compare with:
    gpt2-dist bench --config Configs/gpt2-124M.json --batch-size 8 --seq-len 128 --steps 5 --threads 2

What it prints
    Without --json, human-readable lines, e.g.
        torch 2.13.0+cpu, 2 thread(s), attn sdpa, dropout 0.1; model 124,439,808 parameters; batch 8 x 128
        forward+backward: median 4159.3 ms/step (best 4104.6, forward 1540.2), 246 tokens/s
        achieved 187.3 GFLOP/s; peak RSS 3.3 GiB
    ("forward" includes the cross-entropy; with --optimizer an ", AdamW x"
    time is added and the step time includes it.)
    With --json, one JSON object:
        {"ms_per_step", "best_ms_per_step", "forward_ms", "optimizer_ms" (null
         without --optimizer), "tokens_per_s", "gflops", "peak_rss_bytes",
         "threads", "torch_version", "attn", "dropout", "params",
         "flops_per_token", "batch_size", "seq_len", "steps"}
"""

import argparse
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

KEYS = ["vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias"]


def load_config(path):
    with open(path) as f:
        cfg = json.load(f)
    missing = [k for k in KEYS if k not in cfg]
    extra = [k for k in cfg if k not in KEYS]
    if missing or extra:
        sys.exit(f"{path}: expected exactly the keys {KEYS}; missing {missing}, unexpected {extra}")
    return cfg


def build_model(cfg, dropout, attn):
    hf = GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_positions=cfg["context_length"],
        n_embd=cfg["emb_dim"],
        n_head=cfg["n_heads"],
        n_layer=cfg["n_layers"],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
        tie_word_embeddings=True,
        use_cache=False,
        bos_token_id=None,  # no generation here; avoids the small-vocab eos warning
        eos_token_id=None,
    )
    hf._attn_implementation = attn
    torch.manual_seed(1)
    model = GPT2LMHeadModel(hf).float()
    assert model.lm_head.weight is model.transformer.wte.weight
    if not cfg["qkv_bias"]:
        for block in model.transformer.h:
            with torch.no_grad():
                block.attn.c_attn.bias.zero_()
            block.attn.c_attn.bias.requires_grad_(False)
    model.train()  # dropout active when its rate is > 0, as in training
    return model


def peak_rss_bytes():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def fmt_bytes(n):
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU reference for `gpt2-dist bench`.")
    ap.add_argument("--config", required=True, help="gpt2-dist model config JSON")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--optimizer", action="store_true", help="include an AdamW update in each step")
    ap.add_argument("--dropout-off", action="store_true", help="all dropout rates 0 (default: the config's drop_rate)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="HF attention implementation")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: forward and loss under torch.autocast('cpu', dtype=torch.bfloat16), as gpt2-dist --precision bf16")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()  # keep transformers' config warnings / progress bars off stderr
    hf_logging.disable_progress_bar()

    cfg = load_config(args.config)
    B, T = args.batch_size, args.seq_len
    if not (0 < T <= cfg["context_length"] and B > 0 and args.steps > 0):
        sys.exit(f"need 0 < --seq-len <= {cfg['context_length']}, --batch-size > 0, --steps > 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    dropout = 0.0 if args.dropout_off else float(cfg["drop_rate"])

    model = build_model(cfg, dropout, args.attn)
    params = [p for p in model.parameters() if p.requires_grad]  # tied head counted once
    n_params = sum(p.numel() for p in params)
    L, C = cfg["n_layers"], cfg["emb_dim"]
    flops_per_token = 6.0 * n_params + 12.0 * L * C * T

    V = cfg["vocab_size"]
    idx = torch.arange(B * T, dtype=torch.int64)
    x = (idx * 7919 % V).view(B, T)
    y = ((idx + 1) * 7919 % V).view(B, T)

    opt = None
    if args.optimizer:
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
        )

    times, fwd, opt_times = [], [], []
    for s in range(args.steps + 1):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, V).float(), y.view(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if opt is not None:
            opt.step()
        t3 = time.perf_counter()
        del logits, loss
        if s > 0:
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            opt_times.append(t3 - t2)

    def med(v):  # same as the Swift bench: sorted[count / 2]
        return sorted(v)[len(v) // 2]

    median, best = med(times), min(times)
    tokens = B * T
    gflops = flops_per_token * tokens / median / 1e9
    rss = peak_rss_bytes()

    if args.json:
        print(json.dumps({
            "ms_per_step": median * 1000,
            "best_ms_per_step": best * 1000,
            "forward_ms": med(fwd) * 1000,
            "optimizer_ms": med(opt_times) * 1000 if opt is not None else None,
            "tokens_per_s": tokens / median,
            "gflops": gflops,
            "peak_rss_bytes": rss,
            "threads": threads,
            "torch_version": torch.__version__,
            "attn": args.attn,
            "amp": args.amp,
            "dropout": dropout,
            "params": n_params,
            "flops_per_token": flops_per_token,
            "batch_size": B,
            "seq_len": T,
            "steps": args.steps,
        }))
        return
    print(f"torch {torch.__version__}, {threads} thread(s), attn {args.attn}, dropout {dropout:g}; "
          f"model {n_params:,} parameters; batch {B} x {T}")
    extra = f", AdamW {med(opt_times) * 1000:.1f}" if opt is not None else ""
    print(f"forward+backward{'+AdamW' if opt is not None else ''}: median {median * 1000:.1f} ms/step "
          f"(best {best * 1000:.1f}, forward {med(fwd) * 1000:.1f}{extra}), {tokens / median:.0f} tokens/s")
    print(f"achieved {gflops:.1f} GFLOP/s; peak RSS {fmt_bytes(rss)}")


if __name__ == "__main__":
    main()
