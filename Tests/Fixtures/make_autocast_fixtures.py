#!/usr/bin/env python3
"""Reference for gpt2-dist's --precision bf16: the tiny fixture model under PyTorch's bf16 autocast.

Reads Tests/Fixtures/tiny-gpt2/hf (the model make_gpt2_fixtures.py wrote) and batch0.inputs/targets of
expected.safetensors, runs forward, cross-entropy and backward under torch.autocast("cpu", dtype=torch.bfloat16),
and writes Tests/Fixtures/tiny-gpt2/autocast-bf16.safetensors (float32):

  loss          [1]  mean cross-entropy of batch 0 under autocast
  grad.<name>        d loss / d param, HF state-dict names without "transformer." (as expected.safetensors)

Run from the repo root with torch 2.13.0 and transformers (python3 -m venv V && V/bin/pip install torch==2.13.0
transformers):  V/bin/python Tests/Fixtures/make_autocast_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny-gpt2")
torch.manual_seed(0)
torch.set_num_threads(1)
model = GPT2LMHeadModel.from_pretrained(os.path.join(here, "hf"), attn_implementation="eager").float()
model.eval()  # no dropout (the fixture model has none either)
batch = load_file(os.path.join(here, "expected.safetensors"))
x, y = batch["batch0.inputs"].long(), batch["batch0.targets"].long()
with torch.autocast("cpu", dtype=torch.bfloat16):
    logits = model(input_ids=x).logits
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
loss.backward()
out = {"loss": loss.detach().float().reshape(1)}
for name, p in model.named_parameters():
    if name == "lm_head.weight":
        continue  # tied to wte: its gradient is in wte's
    short = name[len("transformer."):] if name.startswith("transformer.") else name
    out["grad." + short] = p.grad.detach().float().contiguous()
save_file(out, os.path.join(here, "autocast-bf16.safetensors"), metadata={"torch": torch.__version__})
print(f"wrote autocast-bf16.safetensors: loss {out['loss'].item():.6f} (torch {torch.__version__})")
