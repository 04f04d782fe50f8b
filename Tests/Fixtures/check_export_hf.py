#!/usr/bin/env python3
"""Check a `gpt2-dist export-hf` directory with Hugging Face transformers.

Purpose
    Loads DIR (config.json + model.safetensors, as written by
    `gpt2-dist export-hf`) with GPT2LMHeadModel.from_pretrained(DIR) - the
    exact path a user of the export takes - runs batch 0 of a token file
    through it in float32 on the CPU, and reports the mean cross-entropy and
    the largest |logit|. With --expect-loss it is a pass/fail check.

    Batch 0, as gpt2-dist and Tests/Fixtures/make_gpt2_fixtures.py define it:
        inputs  = tokens[0 : B*T]      reshaped [B, T]
        targets = tokens[1 : B*T + 1]  reshaped [B, T]
    loss = mean cross-entropy over the B*T positions (no HF label shifting).

    Token file: llm.c .bin format - 256 little-endian int32 header
    (magic 20240520, version 1, token count, zeros), then the tokens as
    little-endian uint16. Needs at least B*T + 1 tokens.

How to run (from the repo root)
    /work/venv/bin/python Tests/Fixtures/check_export_hf.py DIR TOKENS.bin \
        [--batch-size 4] [--seq-len 32] [--attn eager|sdpa] \
        [--expect-loss X [--tol 1e-5]] [--json]

    Example (the tiny fixture; its known batch-0 loss is 6.617090225):
    /work/venv/bin/python Tests/Fixtures/check_export_hf.py \
        Tests/Fixtures/tiny-gpt2/hf Tests/Fixtures/tiny-gpt2/tokens.bin \
        --expect-loss 6.617090225

What it prints
    Without --json: one line
        loss 6.617090225 (batch 0, 4 x 32), max |logit| 1.234567; model 136,960 parameters
    and, with --expect-loss, a line "OK: ..." or "FAIL: ..." with the relative
    difference |loss - X| / |X| (|loss - X| if X is 0).
    With --json: {"loss": float, "max_abs_logit": float} (plus "expected",
    "rel_diff", "ok" with --expect-loss).
    Exit status: 0; 1 if --expect-loss is given and rel_diff > --tol;
    2 on bad input (wrong magic/version, too few tokens, token id >= vocab).
"""

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

MAGIC, VERSION = 20240520, 1


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def read_tokens(path):
    with open(path, "rb") as f:
        raw = f.read(256 * 4)
        header = np.frombuffer(raw, dtype="<i4") if len(raw) == 256 * 4 else np.zeros(0, dtype="<i4")
        if header.size != 256 or header[0] != MAGIC or header[1] != VERSION:
            fail(f"{path}: not an llm.c token file (need magic {MAGIC}, version {VERSION})")
        count = int(header[2])
        body = f.read(count * 2)
    if count < 0 or len(body) != count * 2:
        fail(f"{path}: header says {count} tokens, file holds {len(body) // 2}")
    toks = np.frombuffer(body, dtype="<u2")
    return toks


def main():
    ap = argparse.ArgumentParser(description="Check a gpt2-dist export-hf directory with transformers.")
    ap.add_argument("dir", help="directory with config.json + model.safetensors")
    ap.add_argument("tokens", help="llm.c .bin token file")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                    help="HF attention implementation (default eager: plain softmax(QK^T/sqrt(d)))")
    ap.add_argument("--expect-loss", type=float, default=None, help="exit 1 unless the loss matches this")
    ap.add_argument("--tol", type=float, default=1e-5, help="relative tolerance for --expect-loss")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()  # keep transformers' config warnings / progress bars off stderr
    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(args.dir, attn_implementation=args.attn).float().eval()
    V = model.config.vocab_size
    B, T = args.batch_size, args.seq_len
    if B <= 0 or T <= 0 or T > model.config.n_positions:
        fail(f"need --batch-size > 0 and 0 < --seq-len <= {model.config.n_positions}")

    toks = read_tokens(args.tokens)
    if toks.size < B * T + 1:
        fail(f"{args.tokens}: {toks.size} tokens, need at least B*T+1 = {B * T + 1}")
    buf = torch.from_numpy(toks[:B * T + 1].astype(np.int64))
    if int(buf.max()) >= V:
        fail(f"token id {int(buf.max())} >= vocab_size {V}")
    x, y = buf[:-1].view(B, T), buf[1:].view(B, T)

    with torch.no_grad():
        logits = model(input_ids=x).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item()
    max_abs = logits.abs().max().item()
    n_params = sum(p.numel() for p in model.parameters())

    out = {"loss": loss, "max_abs_logit": max_abs}
    ok = True
    if args.expect_loss is not None:
        diff = abs(loss - args.expect_loss)
        rel = diff / abs(args.expect_loss) if args.expect_loss != 0 else diff
        ok = rel <= args.tol
        out.update({"expected": args.expect_loss, "rel_diff": rel, "ok": ok})

    if args.json:
        print(json.dumps(out))
    else:
        print(f"loss {loss:.9f} (batch 0, {B} x {T}), max |logit| {max_abs:.6f}; model {n_params:,} parameters")
        if args.expect_loss is not None:
            verdict = "OK" if ok else "FAIL"
            print(f"{verdict}: expected {args.expect_loss:.9f}, relative difference {out['rel_diff']:.3g} "
                  f"(tolerance {args.tol:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
