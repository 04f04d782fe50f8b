#!/usr/bin/env python3
"""Benchmark of `gpt2-dist prepare` on a synthetic corpus larger than memory buffers (a benchmark, not a test).

    python3 Launch/bench/bench_prepare.py [--gb 2] [--dir /tmp/gpt2dist-bench-corpus] [--threads 2] [--check 50]

Makes (once, deterministic) a corpus of about --gb GB: a directory tree of .txt files (one document each) and one
large .jsonl file (one record per line), both assembled from random lines of the complete Shakespeare; runs
prepare on it, and reports MB/s, wall time and peak RSS. With tiktoken installed it then re-encodes --check
sampled documents and compares them with the ids in the shards (document d lives in the split and at the position
the manifest's validation rule gives).
"""
import argparse, json, os, random, resource, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_corpus(root, gb, seed=1):
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    src = os.path.join(REPO, "data/corpus/shakespeare_complete.txt")
    lines = open(src, encoding="utf-8").read().split("\n")
    rng = random.Random(seed)
    target = int(gb * 1e9)
    half = target // 2
    os.makedirs(os.path.join(root, "texts"), exist_ok=True)
    written, n = 0, 0
    # Half as text files of 20 KB - 2 MB, in 100 subdirectories.
    while written < half:
        size = rng.randint(20_000, 2_000_000)
        doc = "\n".join(rng.choices(lines, k=size // 30))
        sub = os.path.join(root, "texts", f"{n % 100:02d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"doc{n:06d}.txt"), "w", encoding="utf-8") as f:
            f.write(doc)
        written += len(doc.encode("utf-8"))
        n += 1
    # Half as one JSONL file of records of 500 B - 20 KB.
    with open(os.path.join(root, "records.jsonl"), "w", encoding="utf-8") as f:
        while written < target:
            block = []
            for _ in range(1000):
                k = rng.randint(15, 700)
                block.append(json.dumps({"id": n, "text": "\n".join(rng.choices(lines, k=k)), "meta": {"source": "synthetic"}}))
                n += 1
            s = "\n".join(block) + "\n"
            f.write(s)
            written += len(s.encode("utf-8"))
    open(done, "w").close()


def documents(root):
    """The corpus's documents in prepare's order (text files sorted by path, then JSONL records)."""
    texts = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "texts")) for f in fs if f.endswith(".txt"))
    return texts, os.path.join(root, "records.jsonl")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", default="/tmp/gpt2dist-bench-corpus")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", type=int, default=50)
    ap.add_argument("--bin", default=os.path.join(REPO, ".build/release/gpt2-dist"))
    a = ap.parse_args()
    t = time.time()
    make_corpus(a.dir, a.gb)
    texts, jsonl = documents(a.dir)
    total = sum(os.path.getsize(p) for p in texts) + os.path.getsize(jsonl)
    print(f"corpus: {len(texts)} text files + {os.path.basename(jsonl)}, {total / 1e9:.2f} GB (made/checked in {time.time() - t:.0f} s)")
    out = a.dir + "-shards"
    subprocess.run(["rm", "-rf", out], check=True)
    t = time.time()
    r = subprocess.run([a.bin, "prepare", "--text", os.path.join(a.dir, "texts"), jsonl, "--out", out,
                        "--vocab", os.path.join(REPO, "data/gpt2"), "--threads", str(a.threads)],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wall = time.time() - t
    print(r.stdout.strip())
    if r.returncode != 0:
        sys.exit(f"prepare failed ({r.returncode})")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"prepare: {total / 1e6 / wall:.1f} MB/s end to end ({wall:.1f} s for {total / 1e9:.2f} GB, {a.threads} threads), "
          f"peak RSS {peak:.0f} MiB")
    try:
        import numpy as np, tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        print("tiktoken/numpy not installed: token check skipped")
        return
    pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding("gpt2", pat_str=pat, mergeable_ranks=load_tiktoken_bpe(os.path.join(REPO, "data/gpt2/gpt2.tiktoken")),
                            special_tokens={"<|endoftext|>": 50256})
    m = json.load(open(os.path.join(out, "manifest.json")))
    f = m["val_fraction"]
    is_val = lambda d: int((d + 1) * f) > int(d * f)
    split = {s: np.concatenate([np.fromfile(os.path.join(out, sh["name"]), dtype=np.uint16, offset=1024)
                                for sh in m["shards"] if sh["split"] == s]) for s in ("train", "val")}
    starts = {s: np.flatnonzero(split[s] == 50256) for s in split}
    records = sum(1 for _ in open(jsonl, encoding="utf-8"))
    n_docs = len(texts) + records
    rng = random.Random(7)
    sample = sorted(rng.sample(range(n_docs), min(a.check, n_docs)))
    wanted = set(d - len(texts) for d in sample if d >= len(texts))
    record_text = {}
    with open(jsonl, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i in wanted:
                record_text[i] = json.loads(line)["text"]
    bad = 0
    for d in sample:
        s = "val" if is_val(d) else "train"
        k = sum(1 for e in range(d) if is_val(e) == (s == "val"))
        text = open(texts[d], encoding="utf-8").read() if d < len(texts) else record_text[d - len(texts)]
        lo = starts[s][k]
        hi = starts[s][k + 1] if k + 1 < len(starts[s]) else len(split[s])
        if split[s][lo + 1:hi].tolist() != enc.encode_ordinary(text):
            bad += 1
            print(f"document {d}: ids differ from tiktoken")
    print(f"tiktoken check: {len(sample) - bad}/{len(sample)} sampled documents identical")


if __name__ == "__main__":
    main()
