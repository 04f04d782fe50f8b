#!/usr/bin/env python3
"""Reference for gpt2-dist's `eval --task hellaswag`: per-ending log-likelihoods from transformers.

Writes into Tests/Fixtures/hellaswag/:
  requests.jsonl.gz         the first 250 items of HellaSwag's validation requests (data/eval/hellaswag/requests.jsonl.gz,
                            from Launch/fetch-data; MIT), their conditional lines only, as the task file format has them
  hf/                       a small GPT-2 with GPT-2's vocabulary (n_embd 8, 2 layers, 2 heads, 64 positions, so rows
                            longer than 65 tokens (55 of the 1000) are cut as lm-evaluation-harness cuts them), seeded, with weights
                            scaled up so that endings differ clearly in likelihood
  expected.safetensors      loglik [items, 4] (float64): the summed log-probability of each ending given its context;
                            gold [items] (int64)

Scoring as lm-evaluation-harness's loglikelihood: whitespace ending the context moves to the continuation; context
and continuation are encoded apart (GPT-2 BPE from data/gpt2's encoder.json and vocab.bpe); the row is the last
n_positions + 1 tokens of both; the continuation's tokens are scored at the row's last positions.

Run from the repo root with torch 2.13.0 and transformers (python3 -m venv V && V/bin/pip install torch==2.13.0
transformers):  V/bin/python Tests/Fixtures/make_hellaswag_fixtures.py
"""
import gzip, json, os

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

ITEMS, POSITIONS = 250, 64
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
here = os.path.join(root, "Tests", "Fixtures", "hellaswag")
os.makedirs(here, exist_ok=True)

lines, docs = [], []
with gzip.open(os.path.join(root, "data", "eval", "hellaswag", "requests.jsonl.gz"), "rt", encoding="utf-8") as f:
    for line in f:
        r = json.loads(line)
        if r["doc_id"] >= 1_000_000:
            continue
        if r["doc_id"] not in docs:
            if len(docs) == ITEMS:
                continue
            docs.append(r["doc_id"])
        lines.append(line)
with gzip.GzipFile(os.path.join(here, "requests.jsonl.gz"), "wb", mtime=0) as f:
    f.write("".join(lines).encode("utf-8"))

torch.manual_seed(0)
torch.set_num_threads(1)
config = GPT2Config(vocab_size=50257, n_positions=POSITIONS, n_embd=8, n_layer=2, n_head=2, activation_function="gelu_new",
                    resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, tie_word_embeddings=True)
model = GPT2LMHeadModel(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.mul_(25)  # std 0.5: a random model whose endings differ in likelihood by more than rounding
model.save_pretrained(os.path.join(here, "hf"), safe_serialization=True)

tok = GPT2Tokenizer(os.path.join(root, "data", "gpt2", "encoder.json"), os.path.join(root, "data", "gpt2", "vocab.bpe"))
items = {}
for line in lines:
    r = json.loads(line)
    items.setdefault(r["doc_id"], {"gold": r["label"], "endings": {}})["endings"][r["idx"]] = r["request"]
loglik, gold = [], []
with torch.no_grad():
    for doc in docs:
        item = items[doc]
        row = []
        for i in range(len(item["endings"])):
            context, continuation = item["endings"][i]["context"], item["endings"][i]["continuation"]
            spaces = len(context) - len(context.rstrip(" "))
            if spaces:
                continuation, context = context[-spaces:] + continuation, context[:-spaces]
            ctx, cont = tok.encode(context), tok.encode(continuation)
            whole = (ctx + cont)[-(POSITIONS + 1):]
            inputs = torch.tensor([whole[:-1]])
            logp = torch.log_softmax(model(input_ids=inputs).logits[0].double(), dim=-1)
            n = min(len(cont), len(whole) - 1)
            targets = whole[-n:]
            row.append(sum(logp[len(whole) - 1 - n + k, t].item() for k, t in enumerate(targets)))
        loglik.append(row)
        gold.append(item["gold"])
save_file({"loglik": torch.tensor(loglik, dtype=torch.float64), "gold": torch.tensor(gold, dtype=torch.int64)},
          os.path.join(here, "expected.safetensors"), metadata={"torch": torch.__version__})
acc = sum(max(range(4), key=lambda i: r[i]) == g for r, g in zip(loglik, gold)) / len(gold)
print(f"wrote {len(docs)} items; the fixture model's acc {acc:.3f} (torch {torch.__version__})")
