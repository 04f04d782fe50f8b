#!/usr/bin/env python3
"""Generate tiny GPT-2 reference fixtures for the gpt2-dist Swift test suite.

What it makes (all under Tests/Fixtures/tiny-gpt2/, relative to this script):

  hf/config.json, hf/model.safetensors
      A tiny HuggingFace GPT2LMHeadModel (vocab 512, ctx 64, d 64, 2 layers,
      4 heads, gelu_new, no dropout, LayerNorm eps 1e-5) whose parameters are
      all randomized (seed 1234) so every code path sees non-trivial values.
      Saved with save_pretrained(safe_serialization=True). lm_head is tied
      to wte.

  tokens.bin
      llm.c token-shard format: 256 little-endian int32 header
      (magic 20240520, version 1, token count, zeros...), then the tokens as
      little-endian uint16. 4097 tokens from numpy default_rng(7) with a
      learnable bigram structure: next = (prev*7 + 3) % 512 with p=0.7,
      otherwise uniform in [0, 512).

  expected.safetensors  (float32 unless noted)
      Batch order (B=4, T=32): M = (ntokens-1) // (B*T); batch s starts at
      token (s % M)*B*T; row b: inputs = tokens[start+b*T : start+(b+1)*T],
      targets = the same window shifted by one token.

      batch0.inputs, batch0.targets   int64 [4,32]
      logits                          [4,32,512]   forward of batch 0
      loss                            [1]          mean CE over the 128 positions
      grad.<name>                     d loss / d param for every parameter
                                      (<name> = HF state-dict name without the
                                      "transformer." prefix, e.g. "wte.weight",
                                      "h.0.attn.c_attn.weight"; no lm_head, the
                                      wte grad includes the tied head's part)
      eval.loss                       [1]  mean of per-batch mean losses, s=0,1,2
      generate.prompt                 int64 [5]
      generate.greedy                 int64 [20]   new tokens only, greedy
      train.losses                    [10] loss of each step before its update
      train.grad_norms                [10] pre-clip global grad norm per step
      train.final.<name>              parameters after 10 AdamW steps
                                      (lr 1e-3, betas (0.9,0.95), eps 1e-8,
                                      wd 0.1 for dim>=2 params else 0,
                                      clip_grad_norm_ 1.0, step s uses batch s%M)

How to run (from the repo root; CPU only, float32, deterministic seeds):

    /work/venv/bin/python Tests/Fixtures/make_gpt2_fixtures.py

Requires torch, transformers, safetensors, numpy (see the venv setup:
python3 -m venv /work/venv && /work/venv/bin/pip install torch==2.13.0
transformers safetensors numpy).
"""

import json
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tiny-gpt2")
HF_DIR = os.path.join(OUT, "hf")

VOCAB = 512
B, T = 4, 32
NTOKENS = 4097
TRAIN_STEPS = 10
PREFIX = "transformer."


def make_config():
    return GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
    )


def load_model():
    # Eager attention: plain softmax(QK^T / sqrt(head_dim)) with a causal mask.
    model = GPT2LMHeadModel.from_pretrained(HF_DIR, attn_implementation="eager")
    model = model.float().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


def randomize_(model):
    torch.manual_seed(1234)
    ln_params = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            ln_params.add(id(mod.weight))
            ln_params.add(id(mod.bias))
    with torch.no_grad():
        # named_parameters() de-duplicates the tied lm_head.weight.
        for name, p in model.named_parameters():
            if name == "transformer.wte.weight":
                p.normal_(0.0, 0.1)
            elif name == "transformer.wpe.weight":
                p.normal_(0.0, 0.05)
            elif id(p) in ln_params:
                if name.endswith(".weight"):
                    p.copy_(1.0 + torch.randn_like(p) * 0.1)
                else:
                    p.normal_(0.0, 0.05)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.05)
            else:
                p.normal_(0.0, 0.08)


def make_tokens():
    rng = np.random.default_rng(7)
    toks = np.empty(NTOKENS, dtype=np.int64)
    toks[0] = rng.integers(0, VOCAB)
    for i in range(1, NTOKENS):
        if rng.random() < 0.7:
            toks[i] = (toks[i - 1] * 7 + 3) % VOCAB
        else:
            toks[i] = rng.integers(0, VOCAB)
    return toks


def write_tokens(path, toks):
    header = np.zeros(256, dtype="<i4")
    header[0] = 20240520
    header[1] = 1
    header[2] = len(toks)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())


def get_batch(toks, s):
    m = (len(toks) - 1) // (B * T)
    start = (s % m) * B * T
    buf = torch.from_numpy(toks[start:start + B * T + 1].copy()).long()
    return buf[:-1].view(B, T).clone(), buf[1:].view(B, T).clone()


def ce_loss(model, x, y):
    logits = model(input_ids=x).logits
    return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def short(name):
    assert name.startswith(PREFIX), name
    return name[len(PREFIX):]


def main():
    torch.set_default_dtype(torch.float32)
    os.makedirs(HF_DIR, exist_ok=True)
    out = {}

    # ---- model: build, randomize, save, reload ----
    cfg = make_config()
    model = GPT2LMHeadModel(cfg)
    randomize_(model)
    model.eval()
    model.save_pretrained(HF_DIR, safe_serialization=True)
    model = load_model()

    # ---- tokens ----
    toks = make_tokens()
    write_tokens(os.path.join(OUT, "tokens.bin"), toks)

    # ---- batch 0 forward / backward ----
    x, y = get_batch(toks, 0)
    out["batch0.inputs"] = x
    out["batch0.targets"] = y
    model.zero_grad(set_to_none=True)
    logits, loss = ce_loss(model, x, y)
    loss.backward()
    out["logits"] = logits.detach().float().contiguous()
    out["loss"] = loss.detach().float().reshape(1)
    for name, p in model.named_parameters():
        out["grad." + short(name)] = p.grad.detach().float().contiguous()
    model.zero_grad(set_to_none=True)

    # ---- eval loss over batches 0,1,2 ----
    with torch.no_grad():
        losses = [ce_loss(model, *get_batch(toks, s))[1].item() for s in range(3)]
    out["eval.loss"] = torch.tensor([sum(losses) / len(losses)], dtype=torch.float32)

    # ---- greedy generation ----
    prompt = torch.from_numpy(toks[100:105].copy()).long()
    with torch.no_grad():
        gen = model.generate(
            prompt.view(1, -1),
            attention_mask=torch.ones(1, 5, dtype=torch.long),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            num_beams=1,
            pad_token_id=0,
            eos_token_id=None,
            use_cache=True,
        )[0, 5:]
        assert gen.numel() == 20, gen
        seq = prompt.clone()
        for _ in range(20):
            nxt = model(input_ids=seq.view(1, -1)).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1)])
        manual = seq[5:]
    assert torch.equal(gen, manual), (gen, manual)
    out["generate.prompt"] = prompt
    out["generate.greedy"] = gen.clone()

    # ---- training parity: reload the same initial weights ----
    model = load_model()
    model.train()  # dropout is 0, so train/eval are identical
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    params = list(model.parameters())
    tl, tn = [], []
    for s in range(TRAIN_STEPS):
        xb, yb = get_batch(toks, s)
        opt.zero_grad(set_to_none=True)
        _, loss = ce_loss(model, xb, yb)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tl.append(loss.item())
        tn.append(norm.item())
    out["train.losses"] = torch.tensor(tl, dtype=torch.float32)
    out["train.grad_norms"] = torch.tensor(tn, dtype=torch.float32)
    for name, p in model.named_parameters():
        out["train.final." + short(name)] = p.detach().float().contiguous().clone()

    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(OUT, "expected.safetensors"))
    # (no metadata dict: safetensors serializes it in hash order, which would
    # make the file differ byte-wise between runs)

    print("loss", out["loss"].item(), "eval.loss", out["eval.loss"].item())
    print("train.losses", [round(v, 5) for v in tl])
    print("train.grad_norms", [round(v, 5) for v in tn])
    print("generate.prompt", prompt.tolist(), "greedy", gen.tolist())


if __name__ == "__main__":
    main()
