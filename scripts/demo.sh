#!/usr/bin/env bash
# The demo on the built-in MNIST sample. Until the default extractor ships, it trains a tiny
# backbone for a minute and samples from it.
set -euo pipefail
D=.venv/bin/diffclass
OUT=demo-out
mkdir -p $OUT
$D train-backbone mnist-sample:train --out $OUT/bb.ckpt --steps 60 --width 16 --overwrite
$D sample $OUT/bb.ckpt --out $OUT/samples.png --n 16 --ddim-steps 25 --overwrite
echo "demo finished: $OUT/samples.png"
