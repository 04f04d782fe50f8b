#!/usr/bin/env bash
# Interleaved: gpt2-dist fp32, gpt2-dist bf16 (native), gpt2-dist bf16 emulated, PyTorch fp32, PyTorch autocast bf16.
# PYTHON: a Python with torch==2.13.0 and transformers (e.g. a venv). Usage: side-by-side.sh [BATCH] [SEQ_LEN] [STEPS]
cd "$(dirname "$0")/../.."   # the repository root
B=${1:-8} T=${2:-128} STEPS=${3:-3}
for round in 1 2; do
  for p in fp32 bf16; do
    env -u OPENBLAS_CORETYPE .build/release/gpt2-dist bench --config Configs/gpt2-124M.json --batch-size $B --seq-len $T --steps $STEPS --optimizer --threads 2 --precision $p --json 2>/dev/null | python3 -c "import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index('{'):]); print('gpt2-dist', d['precision'], d.get('bf16_engine') or '-', round(d['ms_per_step']), round(d['tokens_per_s'],1), round(d['mfu']*100,1), round(d['sgemm_peak_gflops']), round(d['peak_rss_bytes']/2**20))"
  done
  GPT2DIST_BF16_ENGINE=emulated env -u OPENBLAS_CORETYPE .build/release/gpt2-dist bench --config Configs/gpt2-124M.json --batch-size $B --seq-len $T --steps $STEPS --optimizer --threads 2 --precision bf16 --json 2>/dev/null | python3 -c "import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index('{'):]); print('gpt2-dist', d['precision'], d.get('bf16_engine'), round(d['ms_per_step']), round(d['tokens_per_s'],1), round(d['mfu']*100,1), round(d['sgemm_peak_gflops']), round(d['peak_rss_bytes']/2**20))"
  for amp in off bf16; do
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ${PYTHON:-python3} Launch/bench/bench_pytorch.py --config Configs/gpt2-124M.json --batch-size $B --seq-len $T --steps $STEPS --optimizer --threads 2 --amp $amp --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('pytorch', d['amp'], '-', round(d['ms_per_step']), round(d['tokens_per_s'],1), '-', '-', round(d['peak_rss_bytes']/2**20))"
  done
done
