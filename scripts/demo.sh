#!/usr/bin/env bash
# `make demo`: the whole job on the built-in offline corpus, CPU, a few minutes.
# prepare (Python stdlib sources -> byte tokens) -> pretrain (configs/demo.yaml) -> sample -> eval.
set -euo pipefail
cd "$(dirname "$0")/.."
GPTKIT="${GPTKIT:-.venv/bin/gptkit}"
export HF_HUB_OFFLINE=1

echo "== 1/4 prepare: the built-in corpus -> data/demo"
if [ -f data/demo/meta.json ]; then
  echo "data/demo is already prepared (delete it or add --force to rebuild)"
else
  "$GPTKIT" prepare -c configs/demo.yaml
fi

echo "== 2/4 pretrain: configs/demo.yaml -> runs/demo"
if [ -d runs/demo/checkpoints ]; then
  echo "runs/demo exists: moving it to runs/demo.previous so this demo starts fresh"
  rm -rf runs/demo.previous && mv runs/demo runs/demo.previous
fi
"$GPTKIT" pretrain -c configs/demo.yaml

echo "== 3/4 sample: continue 'def ' with the trained model"
"$GPTKIT" sample runs/demo --prompt "def " --max-new-tokens 300 --temperature 0.7 --seed 1

echo
echo "== 4/4 eval: val loss, perplexity, bits per byte"
"$GPTKIT" eval runs/demo
