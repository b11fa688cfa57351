#!/usr/bin/env bash
# One command for a CUDA machine, within 8 minutes: `bash scripts/gpu_check.sh`.
# 1) the tests marked `cuda` (tests/test_cuda.py: bf16, fp16 + GradScaler, compile, flash SDPA,
#    KV-cache decoding, 1-GPU torchrun, resume on GPU; 2-GPU NCCL DDP where 2 GPUs are visible),
# 2) GPT-2 124M training throughput and MFU on one GPU (scripts/bench_gpu.py), as a table.
# No GPU: one line, exit 0. Python: $PYTHON, else .venv/bin/python, else python.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE=1
BUDGET_S=460  # the whole check; each stage is cut off by `timeout` so the total stays < 8 min
start=$SECONDS

if ! avail=$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null); then
  echo "gpu_check: '$PYTHON' cannot import torch; run 'make install' or set PYTHON" >&2
  exit 1
fi
if [ "$avail" != "True" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    # a GPU is there but this torch cannot use it: a CPU build, not a machine without a GPU
    echo "gpu_check: nvidia-smi lists a GPU but torch.cuda.is_available() is False (a CPU" \
      "build of torch?); reinstall with: make install TORCH_SPEC='torch>=2.4'" >&2
    exit 1
  fi
  echo "gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi

echo "== GPUs"
nvidia-smi -L 2>/dev/null || true
"$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                                   f"{torch.cuda.device_count()} GPU(s) visible")'
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
status=0

echo
echo "== 1/2 tests marked cuda: python -m pytest -q -m cuda tests/test_cuda.py"
if [ "$gpus" -ge 2 ]; then
  echo "($gpus GPUs: test_two_gpus_ddp_equal_one_gpu runs 2 NCCL ranks under torchrun)"
else
  echo "(1 GPU: the 2-GPU DDP test is skipped)"
fi
timeout -k 5 270 "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -rs || {
  rc=$?
  [ "$rc" -eq 124 ] && echo "gpu_check: the cuda tests ran past 270 s and were stopped"
  echo "gpu_check: cuda tests FAILED (exit $rc)"
  status=1
}

echo
echo "== 2/2 GPT-2 124M training throughput: python scripts/bench_gpu.py"
left=$((BUDGET_S - (SECONDS - start)))
[ "$left" -ge 1 ] || left=1  # `timeout 0` would mean no limit at all
timeout -k 5 "$left" "$PYTHON" scripts/bench_gpu.py || {
  rc=$?
  [ "$rc" -eq 124 ] && echo "gpu_check: the benchmark ran past the budget (${left} s left)"
  echo "gpu_check: benchmark FAILED (exit $rc)"
  status=1
}

echo
if [ "$status" -eq 0 ]; then
  echo "gpu_check: all passed in $((SECONDS - start)) s"
else
  echo "gpu_check: FAILED (see above) after $((SECONDS - start)) s"
fi
exit "$status"
