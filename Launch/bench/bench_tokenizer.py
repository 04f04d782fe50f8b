#!/usr/bin/env python3
"""tiktoken's single-thread encode throughput on a text file, to compare with `gpt2-dist bench-tokenizer`.

  pip install tiktoken   # offline is fine: the vocabulary file is given
  python3 Launch/bench/bench_tokenizer.py data/corpus/shakespeare_1mb.txt [--vocab data/gpt2/gpt2.tiktoken]
"""
import argparse, time
import tiktoken, tiktoken.load

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ap = argparse.ArgumentParser()
ap.add_argument("text")
ap.add_argument("--vocab", default="data/gpt2/gpt2.tiktoken")
ap.add_argument("--repeats", type=int, default=5)
a = ap.parse_args()
enc = tiktoken.Encoding("gpt2", pat_str=PATTERN, mergeable_ranks=tiktoken.load.load_tiktoken_bpe(a.vocab),
                        special_tokens={"<|endoftext|>": 50256})
text = open(a.text, encoding="utf-8", newline="").read()
mb = len(text.encode("utf-8")) / 1e6
best = float("inf")
for _ in range(a.repeats):
    t = time.perf_counter(); ids = enc.encode_ordinary(text); best = min(best, time.perf_counter() - t)
print(f"tiktoken {tiktoken.__version__}, 1 thread: {len(ids)} tokens, {best*1000:.1f} ms, {mb/best:.1f} MB/s")
