#!/usr/bin/env bash
# make demo: the whole pipeline on the built-in MNIST sample with the shipped extractor.
# 10 labels per class, the rest of the 4000 training digits unlabeled, scored on the 1000
# held-out test digits, next to raw pixels with the same head and the same labeled draw.
set -euo pipefail
D=".venv/bin/diffclass"
OUT=demo-out
HEAD="${DEMO_HEAD:-auto}"
mkdir -p "$OUT"

$D -q export --pixels --image-size 28 --channels 1 --out "$OUT/pixels.onnx" --overwrite
for split in train test; do
  $D featurize "mnist-sample:$split" "$OUT/$split.h5" --overwrite        # the shipped default extractor
  $D -q featurize "mnist-sample:$split" "$OUT/pixels-$split.h5" --model "$OUT/pixels.onnx" --overwrite
done
# fit logs what auto chose ("auto: semi (...)"); keep that line for the summary below.
fit() { $D fit "$1" --out "$2" --head "$HEAD" --per-class 10 --seed 0 --overwrite 2>&1 | tee /dev/stderr | sed -n 's/^auto: //p'; }
CHOICE=$(fit "$OUT/train.h5" "$OUT/head.skops")
PIXELS_CHOICE=$(fit "$OUT/pixels-train.h5" "$OUT/pixels-head.skops")
$D predict "$OUT/test.h5" --head "$OUT/head.skops" --out "$OUT/predictions.csv" --overwrite
$D show-predictions "$OUT/predictions.csv" --source mnist-sample:test --out "$OUT/predictions.png" --overwrite
$D -q export-classifier "$OUT/head.skops" --out "$OUT/classifier.onnx" --overwrite  # images -> probabilities

accuracy() { $D evaluate "$1" --head "$2" --json | .venv/bin/python -c "import json,sys; print(f\"{json.load(sys.stdin)['accuracy']:.3f}\")"; }
echo
echo "mnist-sample, 10 labels per class (seed 0), $HEAD head, 1000 held-out test digits:"
echo "  diffusion features (exports/mnist-sample-ddpm.onnx): accuracy $(accuracy "$OUT/test.h5" "$OUT/head.skops")"
echo "  raw pixels, same labeled draw:                        accuracy $(accuracy "$OUT/pixels-test.h5" "$OUT/pixels-head.skops")"
if [ "$HEAD" = auto ]; then
  echo "  auto chose, diffusion features: $CHOICE"
  echo "  auto chose, raw pixels:         $PIXELS_CHOICE"
fi
echo "  predictions: $OUT/predictions.csv, picture: $OUT/predictions.png"
echo "  the whole classifier in one ONNX file: $OUT/classifier.onnx (diffclass predict IMAGES --head $OUT/classifier.onnx)"
