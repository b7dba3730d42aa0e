#!/usr/bin/env bash
# make bench-gpu: everything a machine with a CUDA GPU should measure, in about 5 minutes.
#   1. make bench's table on cuda: plain loop and mnistlit, fp32 and bf16-mixed, and mnistlit
#      compiled (--model.compile true); one round of 3 epochs.
#   2. The speedrun command's wall time (start-up included) and its training seconds and test
#      accuracy, in fp32 and bf16-mixed.
# Needs the MNIST files in data/mnist (the GPU machine may have no network).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-dev/bin/python}  # the benchmarks' tools (make dev)
RUN=${RUN:-.venv/bin/python}  # the environment users run mnistlit in, for the command's wall time
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu tries the script out on a machine without a GPU

"$PY" -c "import torch, sys; sys.exit(0 if '$DEVICE' != 'cuda' or torch.cuda.is_available() else 'no CUDA GPU here')"
"$PY" benchmarks/run.py --device "$DEVICE" --rounds 1 --epochs 3 --compile

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
accelerator=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
echo
echo "| speedrun.yaml | command wall s | training s | test acc |"
echo "|---|---:|---:|---:|"
for precision in 32-true bf16-mixed; do
  run=(--config configs/speedrun.yaml --trainer.accelerator "$accelerator" --trainer.precision "$precision"
       --trainer.default_root_dir "$logs/$precision")
  started=$(date +%s.%N)
  "$RUN" -m mnistlit fit "${run[@]}" > "$logs/fit.out" 2>&1 || { tail -20 "$logs/fit.out"; exit 1; }
  ended=$(date +%s.%N)
  training=$("$PY" -c "import csv, sys; print(f'{sum(float(r[\"seconds\"]) for r in csv.DictReader(open(sys.argv[1]))):.1f}')" \
    "$logs/$precision/lightning_logs/version_0/history.csv")
  accuracy=$("$RUN" -m mnistlit test "${run[@]}" --ckpt_path last 2>/dev/null | grep -oE 'test_acc +[0-9.]+' | grep -oE '[0-9.]+$' | cut -c1-6)
  echo "| $precision | $("$PY" -c "print(f'{$ended - $started:.1f}')") | $training | $accuracy |"
done
