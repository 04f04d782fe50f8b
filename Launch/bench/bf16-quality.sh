#!/usr/bin/env bash
# Issue 19's quality check: the quickstart model and corpus trained 120 steps in fp32 and in bf16 (np 2, the same
# seed and data order), per-step train loss within 2% (relative) and the mean of the last 20 steps within 0.5%.
# Usage: Launch/bench/bf16-quality.sh [EXTRA TRAIN FLAGS...]   e.g. --embedding-lr-scale 1 (GPT-2's single rate)
# Reads the runs' records (gpt2-dist metrics), never their console lines. Needs data/shakespeare-complete
# (Launch/quickstart prepares it).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=.build/release/gpt2-dist
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in fp32 bf16; do
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 --oversubscribe $bin train \
    --run-config Configs/quickstart.run.json --out "$tmp/$p" --steps 120 --precision $p --threads 1 --eval-every 0 \
    --tensorboard false "$@" >"$tmp/$p.log" 2>&1 || { tail -3 "$tmp/$p.log" >&2; exit 1; }
  $bin metrics "$tmp/$p" >"$tmp/$p.csv"
done
python3 - "$tmp/fp32.csv" "$tmp/bf16.csv" "$*" <<'PY'
import csv, sys
a = [float(r["train_loss"]) for r in csv.DictReader(open(sys.argv[1]))]
b = [float(r["train_loss"]) for r in csv.DictReader(open(sys.argv[2]))]
rel = [abs(x - y) / x for x, y in zip(a, b)]
worst = max(range(len(rel)), key=rel.__getitem__)
m32, m16 = sum(a[-20:]) / 20, sum(b[-20:]) / 20
over = [i + 1 for i, r in enumerate(rel) if r > 0.02]
print(f"flags: {sys.argv[3] or '(the quickstart recipe)'}")
print(f"per step: worst {rel[worst]:.2%} at step {worst + 1}; steps over 2%: {over or 'none'} -> {'pass' if not over else 'FAIL'}")
print(f"last 20 steps: fp32 {m32:.4f}, bf16 {m16:.4f}, {abs(m32 - m16) / m32:.3%} apart -> {'pass' if abs(m32 - m16) / m32 <= 0.005 else 'FAIL'}")
PY
